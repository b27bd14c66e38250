"""Choose a corruption strength that actually removes the attribute (``noise="auto"``).

ROME's default (3 × the std of the token-embedding matrix) is a convention, not a guarantee: on a model whose
trained token rows are larger than the untouched rest of a 49k vocabulary (ShapesWorld), or whose encoder
is robust to a noisy subject, the corrupted image still shows the attribute and every indirect effect then
divides by ~0. :func:`calibrate_noise` generates, for each prompt and seed, the clean run and one corrupted
run per candidate multiplier (all in shared batches), and picks the smallest multiplier under which *every*
(prompt, seed)'s corrupted score falls by at least ``min_drop`` × its clean score. (A mean over items is not
enough: on ShapesWorld 6× halved the mean of two style prompts by removing the style from one and leaving the
other untouched, and every restored run of the untouched one then measured only how restoring a clean
activation into a noisy run disturbs it.) The whole table is returned so the choice is on record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diffloc.engine.interventions import CorruptTokens, Run
from diffloc.errors import ConfigError
from diffloc.models.base import LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.batching import score_runs
from diffloc.tracing.causal import _prompts
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.corruption import embedding_noise

logger = logging.getLogger(__name__)

#: candidate multipliers of the token-embedding std, tried in this order
DEFAULT_MULTIPLIERS: tuple[float, ...] = (3.0, 6.0, 12.0, 24.0, 48.0)


@dataclass(frozen=True, kw_only=True)
class NoiseCalibration:
    """Outcome of :func:`calibrate_noise`.

    Attributes:
        noise: the chosen corruption std (pass it as ``TraceConfig(noise=...)``).
        multiplier: the chosen multiplier of ``embedding_std``.
        embedding_std: std of the token-embedding matrix.
        clean: mean clean score.
        corrupted: mean corrupted score per multiplier tried (JSON keys are strings).
        reached: whether the chosen multiplier met ``min_drop`` for every item (if none did: the one that met
            it for the most items, then the lowest mean score).
        min_drop: the required drop as a fraction of each item's clean score.
        items_dropped: per multiplier, how many (prompt, seed) items met ``min_drop``.
        n_items: the number of (prompt, seed) items.
    """

    noise: float
    multiplier: float
    embedding_std: float
    clean: float
    corrupted: dict[str, float] = field(default_factory=dict)
    reached: bool = True
    min_drop: float = 0.5
    items_dropped: dict[str, int] = field(default_factory=dict)
    n_items: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dict(self.__dict__)


def calibrate_noise(
    model: LoadedModel,
    prompts: str | Sequence[str],
    subject: str,
    attribute: str,
    *,
    scorer: Scorer,
    config: TraceConfig | None = None,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    min_drop: float = 0.5,
) -> NoiseCalibration:
    """Pick the smallest noise multiplier that lowers the attribute's score by ``min_drop`` × clean.

    Uses ``config``'s seeds, sampling settings, batch size and noise seed (its ``noise`` is ignored).

    Raises:
        ConfigError: no multipliers, a multiplier <= 0, or ``min_drop`` outside (0, 1].
        PromptError: empty prompts or a subject missing from a prompt.
    """
    config = config or TraceConfig()
    mults = [float(m) for m in multipliers]
    if not mults or any(not m > 0 for m in mults):
        raise ConfigError(f"noise multipliers must be a non-empty list of numbers > 0, got {list(multipliers)!r}")
    if not 0 < min_drop <= 1:
        raise ConfigError(f"min_drop must be in (0, 1] (a fraction of the clean score), got {min_drop!r}")
    prompt_list = _prompts(prompts)
    scorer.check(attribute)
    base = embedding_noise(model, TraceConfig(noise_multiplier=1.0))
    clean_scores: list[float] = []
    per_mult: list[list[float]] = [[] for _ in mults]
    for prompt in prompt_list:
        positions = model.adapter.find_subject(model.pipe, prompt, subject)
        for seed in config.seeds:
            corrupted = [
                Run(prompt=prompt, seed=seed, interventions=(
                    CorruptTokens(positions=positions, std=m * base, noise_seed=config.noise_seed + seed),))
                for m in mults
            ]  # fmt: skip
            shared, scores, _ = score_runs(
                model, corrupted, attribute=attribute, scorer=scorer, config=config,
                shared=[Run(prompt=prompt, seed=seed, label="clean")],
            )  # fmt: skip
            clean_scores.append(shared[0])
            for i, score in enumerate(scores):
                per_mult[i].append(score)
    clean = sum(clean_scores) / len(clean_scores)
    means = [sum(s) / len(s) for s in per_mult]
    dropped = [items_dropped(clean_scores, scores, min_drop) for scores in per_mult]
    chosen, reached = choose_multiplier(means, dropped, len(clean_scores))
    if not reached:
        logger.warning(
            "no noise multiplier in %s lowered %r by %.0f%% of its clean score in every one of %d images; "
            "using %g× (%d of them; mean score %.3f, clean %.3f)",
            mults, attribute, 100 * min_drop, len(clean_scores), mults[chosen], dropped[chosen], means[chosen], clean,
        )  # fmt: skip
    return NoiseCalibration(
        noise=mults[chosen] * base, multiplier=mults[chosen], embedding_std=base, clean=clean,
        corrupted={f"{m:g}": round(v, 6) for m, v in zip(mults, means, strict=True)}, reached=reached,
        min_drop=min_drop, items_dropped={f"{m:g}": n for m, n in zip(mults, dropped, strict=True)},
        n_items=len(clean_scores),
    )  # fmt: skip


def items_dropped(clean: Sequence[float], corrupted: Sequence[float], min_drop: float) -> int:
    """How many items' corrupted score is at most ``(1 - min_drop)`` × their own clean score."""
    return sum(1 for c, x in zip(clean, corrupted, strict=True) if x <= c * (1 - min_drop))


def choose_multiplier(means: Sequence[float], dropped: Sequence[int], n_items: int) -> tuple[int, bool]:
    """Index of the first multiplier under which all ``n_items`` dropped, and ``True``; if there is none, the
    one under which the most dropped (ties: lowest mean score, then the earlier one), and ``False``."""
    chosen = next((i for i, n in enumerate(dropped) if n == n_items), None)
    if chosen is not None:
        return chosen, True
    return min(range(len(means)), key=lambda i: (-dropped[i], means[i], i)), False
