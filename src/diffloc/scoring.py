"""The scorer protocol: ``score(images, texts) -> (n,)``, how much each image shows its text.

Tracing, editing workflows and evaluation only see this protocol, so ShapesWorld's exact detectors and a CLIP
score are interchangeable. It sits below every method package (the implementations live in
:mod:`diffloc.eval.scorers`, which re-exports it), so ``tracing`` needs nothing from ``eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores images against texts."""

    name: str

    def score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Score ``(n,)`` of image ``i`` against ``texts[i]``; images ``(n, 3, H, W)`` in ``[0, 1]``."""
        ...

    def check(self, text: str) -> None:
        """Raise a :class:`~diffloc.errors.DifflocError` if ``text`` is not something this scorer can score."""
        ...
