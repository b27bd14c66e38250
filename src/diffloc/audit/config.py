"""Settings of an erasure audit."""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffloc.errors import ConfigError
from diffloc.validate import check_count, check_seeds

#: every attack an audit knows, in the order it runs them
ATTACKS = ("paraphrase", "spelling", "description", "revert", "finetune")


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """How hard an audit tries to bring an erased concept back.

    Attributes:
        attacks: which attacks run (:data:`ATTACKS`).
        seeds: seeds of every attacked prompt (ASR counts images: prompts × seeds).
        steps, guidance: sampling of every attacked image.
        max_batch: most rows per denoiser call.
        threshold: a score at or above it reads as "the concept is shown".
        prompts: most prompts per prompt attack (spread over its phrasings).
        budget: the fine-tune attack's largest step count; it also runs ``budget // 20`` and ``budget // 4``
            steps (default 200: 10, 50 and 200 steps).
        revert_fractions: the revert attack's fractions of the edit's weight change taken back.
        finetune_lr, finetune_batch: the fine-tune attack's AdamW learning rate and batch size.
        seed: seeds the fine-tune attack's data and noise.
    """

    attacks: tuple[str, ...] = ATTACKS
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int = 20
    guidance: float = 7.5
    max_batch: int = 32
    threshold: float = 0.5
    prompts: int = 12
    budget: int = 200
    revert_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    finetune_lr: float = 1e-4
    finetune_batch: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise ConfigError(f"audit attacks must be among {', '.join(ATTACKS)}, got {list(self.attacks)!r}")
        check_seeds(self.seeds, "seeds")
        check_count("steps", self.steps)
        check_count("max_batch", self.max_batch, low=2)
        check_count("prompts", self.prompts)
        check_count("finetune_batch", self.finetune_batch)
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"audit budget must be an integer >= 1 (fine-tune steps), got {self.budget!r}")
        if not (isinstance(self.threshold, int | float) and 0 < self.threshold < 1):
            raise ConfigError(f"audit threshold must be in (0, 1), got {self.threshold!r}")
        bad = [f for f in self.revert_fractions if not (isinstance(f, int | float) and 0 < f <= 1)]
        if bad or not self.revert_fractions:
            raise ConfigError(f"revert fractions must be numbers in (0, 1], got {list(self.revert_fractions)!r}")
        if not (isinstance(self.finetune_lr, int | float) and math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise ConfigError(f"finetune_lr must be a finite number > 0, got {self.finetune_lr!r}")

    @property
    def finetune_steps(self) -> tuple[int, ...]:
        """The fine-tune attack's step counts: ``budget // 20``, ``budget // 4`` and ``budget`` (each >= 1,
        repeats dropped)."""
        return tuple(sorted({max(1, self.budget // 20), max(1, self.budget // 4), self.budget}))
