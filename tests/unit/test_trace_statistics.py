"""Intervals over items and the causal-site threshold, checked against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffloc.errors import ConfigError
from diffloc.tracing.selection import check_disjoint, choose_threshold, select_sites
from diffloc.tracing.statistics import IntervalConfig, check_items, effect_interval, mean_interval


def _exact_bootstrap(values: np.ndarray) -> np.ndarray:
    """Every resample of 3 items with its probability (27 equally likely ordered draws)."""
    return np.asarray([values[list(draw)].mean() for draw in itertools.product(range(3), repeat=3)])


def test_mean_interval_matches_the_exact_bootstrap_distribution():
    values = np.array([0.0, 1.0, 5.0])
    exact = _exact_bootstrap(values)
    interval = mean_interval(values, IntervalConfig(resamples=20000, confidence=0.9, seed=3))
    lo, hi = np.percentile(exact, [5, 95])
    # the Monte Carlo percentiles land on the exact distribution's support near its percentiles
    assert interval[0] == pytest.approx(lo, abs=0.35) and interval[1] == pytest.approx(hi, abs=0.35)
    assert exact.min() <= interval[0] <= interval[1] <= exact.max()


def test_effect_interval_is_a_ratio_of_resampled_means():
    clean = np.array([1.0, 1.0, 1.0, 1.0])
    corrupted = np.array([0.0, 0.0, 0.0, 0.0])
    restored = np.array([[0.5, 1.0], [0.5, 0.0], [0.5, 1.0], [0.5, 0.0]])
    interval = effect_interval(clean, corrupted, restored, IntervalConfig(resamples=4000, seed=1))
    assert interval.shape == (2, 2)
    # site 0 restores half of the attribute in every item: no spread
    assert interval[:, 0] == pytest.approx([0.5, 0.5])
    # site 1 restores fully in two items of four: its interval spans around 0.5 and stays inside [0, 1]
    assert 0.0 <= interval[0, 1] < 0.5 < interval[1, 1] <= 1.0


def test_intervals_are_reproducible_and_off_when_asked():
    values = np.random.default_rng(0).normal(size=(10, 4))
    a = mean_interval(values, IntervalConfig(seed=5))
    assert np.array_equal(a, mean_interval(values, IntervalConfig(seed=5)))
    assert mean_interval(values, IntervalConfig(resamples=0)) is None
    assert effect_interval(values[:, 0], values[:, 1], values, IntervalConfig(resamples=0)) is None


def test_too_few_items_for_an_interval():
    with pytest.raises(ConfigError, match="2 items are too few for a bootstrap interval; give at least 3"):
        check_items(2, IntervalConfig())
    check_items(2, IntervalConfig(resamples=0))
    with pytest.raises(ConfigError, match="confidence must be a number in"):
        IntervalConfig(confidence=1.5)
    with pytest.raises(ConfigError, match="bootstrap resamples must be an integer >= 0"):
        IntervalConfig(resamples=-1)


def test_threshold_separates_clean_from_corrupted():
    tau, acc = choose_threshold([0.9, 0.8, 1.0], [0.1, 0.3, 0.2])
    assert acc == 1.0 and tau == pytest.approx((0.3 + 0.8) / 2)
    # overlapping scores: the best balanced accuracy, in the middle of the widest gap that achieves it
    tau, acc = choose_threshold([0.9, 0.2, 1.0, 0.8], [0.1, 0.3, 0.0, 0.05])
    assert acc == pytest.approx(0.875) and tau == pytest.approx((0.3 + 0.8) / 2)
    with pytest.raises(ConfigError, match="corruption does not lower the attribute"):
        choose_threshold([0.1, 0.2], [0.5, 0.6])


def test_select_sites_applies_tau_to_the_test_items():
    validation = [{"prompt": "v", "seed": s, "clean": 1.0, "corrupted": 0.0} for s in range(3)]
    test = [{"prompt": "t", "seed": s} for s in range(2)]
    restored = np.array([[0.9, 0.2, 0.6], [0.7, 0.1, 0.5]])
    chosen = select_sites(["a", "b", "c"], restored, validation, test)
    assert chosen.tau == pytest.approx(0.5) and chosen.causal == ["a", "c"]
    assert chosen.restored_means == pytest.approx({"a": 0.8, "b": 0.15, "c": 0.55})
    with pytest.raises(ConfigError, match=r"validation and test items overlap \(1 shared, e\.g\. prompt 't' seed 1\)"):
        check_disjoint([("t", 0), ("t", 1)], [("t", 1), ("v", 0)])
