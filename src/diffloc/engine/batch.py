"""Where each run lives in a denoiser batch (ROME's row-0-clean convention made an object)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchLayout:
    """Rows of one denoiser call carrying ``runs`` runs, optionally doubled for classifier-free guidance, plus
    ``shadows`` conditional-only rows.

    With CFG the batch is ``[uncond_0 … uncond_{R-1}, cond_0 … cond_{R-1}, shadow_0 … shadow_{S-1}]``;
    interventions touch only the conditional half, because the unconditional branch carries no prompt. A
    *shadow* row follows one run's latent at every step with another run's text and no interventions of its
    own: it computes the clean-text value of every site on that run's own latent (the ``same-latent`` restore
    source); its prediction is discarded.
    """

    runs: int
    cfg: bool
    shadows: int = 0

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"a batch needs at least one run, got {self.runs}")
        if self.shadows < 0:
            raise ValueError(f"shadow rows must be >= 0, got {self.shadows}")

    @property
    def guided_rows(self) -> int:
        """Rows whose prediction drives a run (the CFG halves, without shadows)."""
        return self.runs * (2 if self.cfg else 1)

    @property
    def size(self) -> int:
        """Rows in the denoiser batch."""
        return self.guided_rows + self.shadows

    def cond(self, run: int) -> int:
        """Batch row of run ``run``'s conditional branch."""
        if not 0 <= run < self.runs:
            raise IndexError(f"run {run} outside 0..{self.runs - 1}")
        return run + (self.runs if self.cfg else 0)

    def uncond(self, run: int) -> int:
        """Batch row of run ``run``'s unconditional branch (CFG only)."""
        if not self.cfg:
            raise IndexError("a batch without classifier-free guidance has no unconditional rows")
        if not 0 <= run < self.runs:
            raise IndexError(f"run {run} outside 0..{self.runs - 1}")
        return run

    def shadow(self, index: int) -> int:
        """Batch row of shadow ``index``."""
        if not 0 <= index < self.shadows:
            raise IndexError(f"shadow {index} outside 0..{self.shadows - 1}")
        return self.guided_rows + index

    def cond_rows(self, runs: list[int] | range) -> torch.Tensor:
        """Batch rows of the conditional branches of ``runs`` as a long tensor."""
        return torch.tensor([self.cond(r) for r in runs], dtype=torch.long)
