"""Pure metric functions over scores and images (no model access)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffloc.errors import ConfigError


def detection_rate(scores: torch.Tensor | Sequence[float], threshold: float = 0.5) -> float:
    """Fraction of images whose score exceeds ``threshold`` (a detector probability reads as detected)."""
    values = torch.as_tensor(scores, dtype=torch.float64)
    if values.numel() == 0:
        raise ConfigError("no scores to rate; the prompt set is empty")
    return float((values > threshold).double().mean())


def mean_score(scores: torch.Tensor | Sequence[float]) -> float:
    """Mean of scores (CLIP-score style metrics)."""
    values = torch.as_tensor(scores, dtype=torch.float64)
    if values.numel() == 0:
        raise ConfigError("no scores to average; the prompt set is empty")
    return float(values.mean())


def removal_efficacy(before: float, after: float) -> float:
    """Points of detection removed, as a fraction of what was there: ``(before - after) / before``."""
    return 0.0 if before <= 0 else (before - after) / before


def retention(before: float, after: float) -> float:
    """Fraction of an unedited detection rate kept after the edit (1.0 = untouched; capped at 1). When the
    unedited model never showed the attribute nothing could be lost: 1.0 (the capped limit of ``after / 0``,
    where an infinity would not be JSON)."""
    if before <= 0:
        return 1.0
    return min(1.0, after / before)


def pixel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute pixel difference of two image batches ``(n, 3, H, W)`` in ``[0, 1]``."""
    if a.shape != b.shape:
        raise ConfigError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().mean())


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (``(nan, nan)`` for ``n == 0``)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))
