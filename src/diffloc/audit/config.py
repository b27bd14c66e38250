"""Settings of an erasure audit."""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffloc.errors import ConfigError
from diffloc.validate import check_count, check_seeds

#: what the learned-prompt attack's free tokens are optimized for (:mod:`diffloc.audit.learned`)
OBJECTIVES = ("denoising", "scorer")
#: every attack an audit knows, in the order it runs them
ATTACKS = ("paraphrase", "spelling", "description", "learned", "revert", "finetune")


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
        learned_steps, learned_tokens, learned_lr, learned_batch: the learned-prompt attack's budget: Adam steps,
            free tokens in the concept's place, learning rate, and examples per step.
        learned_objective: what the free tokens are optimized for: ``denoising`` (the denoising loss on rendered
            images of the concept; ShapesWorld) or ``scorer`` (the scorer's log-probability through the sampler).
        seed: seeds the fine-tune and learned-prompt attacks' data and noise.
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
    learned_steps: int = 100
    learned_tokens: int = 3
    learned_lr: float = 5e-3
    learned_batch: int = 8
    learned_objective: str = "denoising"
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
        for name in ("finetune_lr", "learned_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("learned_steps", "learned_tokens", "learned_batch"):
            check_count(name, getattr(self, name))
        if self.learned_objective not in OBJECTIVES:
            raise ConfigError(f"learned_objective must be one of {', '.join(OBJECTIVES)}, got "
                              f"{self.learned_objective!r}")  # fmt: skip

    @property
    def finetune_steps(self) -> tuple[int, ...]:
        """The fine-tune attack's step counts: ``budget // 20``, ``budget // 4`` and ``budget`` (each >= 1,
        repeats dropped)."""
        return tuple(sorted({max(1, self.budget // 20), max(1, self.budget // 4), self.budget}))
