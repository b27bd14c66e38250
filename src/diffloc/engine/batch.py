"""Where each run lives in a UNet batch (ROME's row-0-clean convention made an object)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchLayout:
    """Rows of one UNet call carrying ``runs`` runs, optionally doubled for classifier-free guidance.

    With CFG the batch is ``[uncond_0 … uncond_{R-1}, cond_0 … cond_{R-1}]``; interventions touch only the
    conditional half, because the unconditional branch carries no prompt.
    """

    runs: int
    cfg: bool

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"a batch needs at least one run, got {self.runs}")

    @property
    def size(self) -> int:
        """Rows in the UNet batch."""
        return self.runs * (2 if self.cfg else 1)

    def cond(self, run: int) -> int:
        """Batch row of run ``run``'s conditional branch."""
        if not 0 <= run < self.runs:
            raise IndexError(f"run {run} outside 0..{self.runs - 1}")
        return run + (self.runs if self.cfg else 0)

    def cond_rows(self, runs: list[int] | range) -> torch.Tensor:
        """Batch rows of the conditional branches of ``runs`` as a long tensor."""
        return torch.tensor([self.cond(r) for r in runs], dtype=torch.long)
