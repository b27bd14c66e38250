"""Choose a corruption strength that actually removes the attribute (``noise="auto"``).

ROME's default (3 × the std of the token-embedding matrix) is a convention, not a guarantee: on a model whose
trained token rows are larger than the untouched rest of a 49k vocabulary (ShapesWorld), or whose encoder
is robust to a noisy subject, the corrupted image still shows the attribute and every indirect effect then
divides by ~0. :func:`calibrate_noise` generates, for each prompt and seed, the clean run and one corrupted
run per candidate multiplier (all in shared batches), and picks the smallest multiplier whose mean corrupted
score falls by at least ``min_drop`` × the clean score. The whole table is returned so the choice is on
record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diffloc.engine.interventions import CorruptTokens, Run
from diffloc.errors import ConfigError
from diffloc.eval.scorers import Scorer
from diffloc.models.base import LoadedModel
from diffloc.tracing.batching import score_runs
from diffloc.tracing.causal import _prompts, embedding_noise
from diffloc.tracing.config import TraceConfig

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
        reached: whether the chosen multiplier met ``min_drop`` (if not: the one with the lowest score).
        min_drop: the required drop as a fraction of the clean score.
    """

    noise: float
    multiplier: float
    embedding_std: float
    clean: float
    corrupted: dict[str, float] = field(default_factory=dict)
    reached: bool = True
    min_drop: float = 0.5

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
    table = {f"{m:g}": round(v, 6) for m, v in zip(mults, means, strict=True)}
    chosen = next((i for i, v in enumerate(means) if v <= clean * (1 - min_drop)), None)
    reached = chosen is not None
    if chosen is None:
        chosen = min(range(len(mults)), key=lambda i: (means[i], mults[i]))
        logger.warning(
            "no noise multiplier in %s lowered %r by %.0f%% of its clean score %.3f; using %g× (score %.3f)",
            mults, attribute, 100 * min_drop, clean, mults[chosen], means[chosen],
        )  # fmt: skip
    return NoiseCalibration(
        noise=mults[chosen] * base, multiplier=mults[chosen], embedding_std=base, clean=clean,
        corrupted=table, reached=reached, min_drop=min_drop,
    )  # fmt: skip
