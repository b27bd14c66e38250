"""Attribution patching on the shipped ShapesWorld model: where a restore moves a site's activation a little (a small
corruption), the estimate of every site equals exact patching."""

from __future__ import annotations

import numpy as np
import pytest

from diffloc.eval.scorers import DetectorScorer
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig

#: about half the token-embedding std (0.018): every restore is then a small move of its site's activation
LINEAR = TraceConfig(seeds=(0,), steps=5, guidance=4.0, noise=0.01, bootstrap=0, max_batch=80)


@pytest.fixture(scope="module")
def shapesworld():
    from diffloc.models.registry import load

    return load("shapesworld")


def test_unet_attribution_equals_exact_patching_on_shapesworld(shapesworld):
    """ "a flumox" (a green outline cross) scored by the log-probability of "a blue diamond", which the image does
    not show: a logit margin, smooth where the probability of the flumox itself reads exactly 1.0 in float32."""
    scorer = DetectorScorer(log_probability=True)
    kwargs = dict(scorer=scorer, sites="unet.*", config=LINEAR)
    exact = causal_trace(shapesworld, "a flumox", "flumox", "a blue diamond", **kwargs)
    estimated = causal_trace(shapesworld, "a flumox", "flumox", "a blue diamond", method="attribution", **kwargs)
    want = np.asarray(exact.scores) - exact.corrupt_score
    got = np.asarray(estimated.scores) - estimated.corrupt_score
    big = np.abs(want) >= 0.1 * np.abs(want).max()
    assert big.sum() >= 10
    np.testing.assert_allclose(got[big], want[big], rtol=0.05, atol=0)
    assert set(estimated.marks) == {"estimate"} and estimated.step_effects is not None
