"""Findings, not mechanics, on the shipped ShapesWorld model: controls read ~0 under the mediation-correct restore
source (and not under the trajectory one)."""

from __future__ import annotations

import pytest

from diffloc.eval.scorers import DetectorScorer
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig

SAMPLING = {"steps": 20, "guidance": 4.0, "max_batch": 32}


@pytest.fixture(scope="module")
def shapesworld():
    from diffloc.models.registry import load

    return load("shapesworld")


def test_controls_read_zero_under_same_latent_and_not_under_trajectory(shapesworld):
    """ "a flumox" (seeds 0 and 1) at 12x noise, the case that exposed the trajectory confound: restoring a site
    before the first cross-attention changes nothing on the run's own latent, while the clean trajectory's latent
    moves the score through the same sites (they never read the text)."""
    effects = {}
    for source in ("same-latent", "trajectory"):
        config = TraceConfig(seeds=(0, 1), noise_multiplier=12.0, restore_from=source, bootstrap=0, **SAMPLING)
        result = causal_trace(shapesworld, ["a flumox"], "flumox", "a flumox", scorer=DetectorScorer(),
                              sites="unet.xattn.0", config=config)  # fmt: skip
        assert result.clean_score > 0.9 and result.clean_score - result.corrupt_score > 0.3
        effects[source] = result.control_effects
        assert result.controls_flagged is (source == "trajectory")
    assert set(effects["same-latent"]) == {"unet.res.0", "unet.sattn.0"}
    assert all(abs(v) <= 1e-4 for v in effects["same-latent"].values())
    assert max(abs(v) for v in effects["trajectory"].values()) > 0.1
