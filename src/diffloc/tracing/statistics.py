"""Intervals over items: bootstrap of the normalized indirect effect and of mean scores.

An *item* is one (prompt, seed) of a sweep. The indirect effect of a restore is a ratio of means over items,
``(mean restored - mean corrupted) / (mean clean - mean corrupted)``, so a resample draws whole items (with
their clean, corrupted and restored scores together) and recomputes that ratio: the interval then reflects
both how much restores vary between items and how much the clean–corrupted gap does. Percentile intervals,
drawn from a fixed seed so a result is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diffloc.errors import ConfigError

#: fewest items a bootstrap interval is computed from: with fewer, every resample repeats the same few items
#: and the "interval" states a certainty the data cannot give
MIN_ITEMS = 3


@dataclass(frozen=True, kw_only=True)
class IntervalConfig:
    """How intervals are computed.

    Attributes:
        resamples: bootstrap resamples; 0 computes no interval (a quick look, recorded as such).
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling.
    """

    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 0:
            raise ConfigError(f"bootstrap resamples must be an integer >= 0 (0: no interval), got {self.resamples!r}")
        if not (isinstance(self.confidence, int | float) and 0 < self.confidence < 1):
            raise ConfigError(f"confidence must be a number in (0, 1), e.g. 0.95, got {self.confidence!r}")


def check_items(n_items: int, config: IntervalConfig, what: str = "items") -> None:
    """Refuse an interval from fewer than :data:`MIN_ITEMS` items.

    Raises:
        ConfigError: ``config.resamples > 0`` and ``n_items < MIN_ITEMS``.
    """
    if config.resamples and n_items < MIN_ITEMS:
        raise ConfigError(
            f"{n_items} {what} are too few for a bootstrap interval; give at least {MIN_ITEMS} "
            "(more prompts or seeds), or turn intervals off (bootstrap 0)"
        )


def _resample_weights(n_items: int, config: IntervalConfig) -> np.ndarray:
    """``(resamples, n_items)`` weights: how often each item is drawn, divided by ``n_items``."""
    rng = np.random.default_rng(config.seed)
    draws = rng.integers(0, n_items, size=(config.resamples, n_items))
    counts = np.zeros((config.resamples, n_items))
    np.add.at(counts, (np.arange(config.resamples)[:, None], draws), 1.0)
    return counts / n_items


def _percentiles(samples: np.ndarray, confidence: float) -> np.ndarray:
    """``(2, …)`` lower and upper percentile over axis 0, ignoring resamples that are undefined (NaN)."""
    tail = 100 * (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        out = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return np.asarray(out)


def effect_interval(
    clean: np.ndarray, corrupted: np.ndarray, restored: np.ndarray, config: IntervalConfig, *, remove: bool = False
) -> np.ndarray | None:
    """Bootstrap interval of the normalized indirect effect per restore.

    Args:
        clean, corrupted: ``(n_items,)`` scores.
        restored: ``(n_items, …)`` scores of each restore.
        config: resamples, confidence, seed.
        remove: the scores are of clean runs with a corrupted value patched in (a ``remove`` trace): the effect is
            ``(clean - patched) / (clean - corrupted)``.

    Returns:
        ``(2, …)`` lower and upper bounds (NaN where every resample had no clean–corrupted gap), or ``None``
        when ``config.resamples == 0``.
    """
    if not config.resamples:
        return None
    clean, corrupted = np.asarray(clean, float), np.asarray(corrupted, float)
    restored = np.asarray(restored, float)
    n = clean.shape[0]
    check_items(n, config)
    weights = _resample_weights(n, config)  # (B, n)
    flat = restored.reshape(n, -1)
    clean_m, corrupt_m = weights @ clean, weights @ corrupted  # (B,)
    gap = clean_m - corrupt_m
    with np.errstate(invalid="ignore", divide="ignore"):
        moved = clean_m[:, None] - weights @ flat if remove else weights @ flat - corrupt_m[:, None]
        effects = moved / gap[:, None]
    effects[np.abs(gap) < 1e-12] = np.nan
    return _percentiles(effects, config.confidence).reshape((2, *restored.shape[1:]))


def mean_interval(values: np.ndarray, config: IntervalConfig) -> np.ndarray | None:
    """Bootstrap interval of the mean over items: ``values`` ``(n_items, …)`` -> ``(2, …)`` (or ``None``)."""
    if not config.resamples:
        return None
    values = np.asarray(values, float)
    n = values.shape[0]
    check_items(n, config)
    means = _resample_weights(n, config) @ values.reshape(n, -1)
    return _percentiles(means, config.confidence).reshape((2, *values.shape[1:]))


def finite_or_none(value: float) -> float | None:
    """``value`` for JSON, or ``None`` when it is NaN/inf (JSON has no NaN)."""
    return value if math.isfinite(value) else None
