"""Traces in the ``remove`` direction: the clean run with one site's corrupted value, the effect measuring how much
of the attribute goes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import PixelScorer, corrupt_subject

from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.interventions import Restore, Run
from diffloc.errors import ConfigError
from diffloc.tracing.causal import causal_trace, trace_text
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.selection import select_sites
from diffloc.tracing.statistics import IntervalConfig, effect_interval

PROMPT = "a red circle in the style of van gogh"
CFG = GenerationConfig(steps=3, guidance=5.0)
ROW_ATOL = 1e-5  # rows of one CPU batch agree to ~1e-6 (kernel blocking); see test_engine
FAST = {"seeds": (0,), "steps": 3, "guidance": 5.0, "bootstrap": 0, "noise": 2.0, "max_batch": 16}


def _corrupt(model):
    return corrupt_subject(model, PROMPT)


@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_removing_every_unet_site_gives_the_corrupted_image(tiny_model, source):
    """The clean run with every site's corrupted value is the corrupted run (the mirror of a full restore)."""
    sites = tuple(s.name for s in tiny_model.sites.denoiser_sites())
    corrupt = _corrupt(tiny_model)
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
        Run(prompt=PROMPT, seed=0, interventions=(Restore(sites=sites, source=1, restore_from=source),)),
    ]
    clean, corrupted, removed = generate_runs(tiny_model, runs, config=CFG)
    assert (clean - corrupted).abs().max() > 100 * ROW_ATOL
    torch.testing.assert_close(removed, corrupted, rtol=0, atol=ROW_ATOL)


def test_a_remove_trace_measures_what_goes(tiny_sd1):
    """Its effects, recomputed from images made here without the trace: (clean - patched) / (clean - corrupted).
    Every site together removes everything (1); a control site removes nothing (0) on the run's own latent."""
    site = "unet.xattn.8"
    every = [s.name for s in tiny_sd1.sites.denoiser_sites()]
    result = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites=[site, every],
                          config=TraceConfig(direction="remove", **FAST))  # fmt: skip
    assert result.direction == "remove" and result.meta["config"]["direction"] == "remove"
    corrupt = _corrupt(tiny_sd1)
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
            Run(prompt=PROMPT, seed=0, interventions=(Restore(sites=(site,), source=1),))]  # fmt: skip
    clean, corrupted, patched = PixelScorer().score(generate_runs(tiny_sd1, runs, config=CFG), ["x"] * 3).tolist()
    assert abs(clean - corrupted) > 1e-3
    effect = dict(zip(result.labels, result.indirect_effect.tolist(), strict=True))
    # the trace's batches differ in size from these three runs' (kernel blocking moves scores by ~1e-5)
    assert effect[site] == pytest.approx((clean - patched) / (clean - corrupted), abs=1e-3)
    assert abs(effect[site] - 0.5) > 0.1  # a restore's reading, 1 - effect, would fail the check above
    assert effect["+".join(every)] == pytest.approx(1.0, abs=1e-4)
    assert result.controls and all(abs(v) <= 1e-4 for v in result.control_effects.values())
    restored = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites=[site],
                            config=TraceConfig(**FAST))  # fmt: skip
    assert restored.direction == "restore" and restored.clean_score == pytest.approx(result.clean_score, abs=1e-5)
    assert restored.corrupt_score == pytest.approx(result.corrupt_score, abs=1e-5)


def test_a_remove_text_trace_leaves_unreached_tokens_clean(tiny_sd1):
    """Tokens before the subject read the same states clean and corrupted: patching them changes nothing, so their
    cells hold the clean score (effect 0), not the corrupted one."""
    result = trace_text(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), kinds=("layer",),
                        config=TraceConfig(direction="remove", **FAST))  # fmt: skip
    start = result.subject_range[0]
    assert result.meta["unreached_tokens"] == start > 0
    np.testing.assert_allclose(result.indirect_effect[0, :, :start], 0.0, atol=1e-9)
    assert np.nanmax(np.abs(result.indirect_effect[0, :, start:])) > 0.01


def test_remove_intervals_and_selection_read_the_patched_scores():
    clean, corrupted = np.array([1.0, 0.9, 1.0, 0.8]), np.array([0.0, 0.1, 0.0, 0.2])
    patched = np.array([[0.0, 1.0], [0.1, 0.9], [0.0, 1.0], [0.2, 0.8]])  # site a removes all, b nothing
    interval = effect_interval(clean, corrupted, patched, IntervalConfig(resamples=200), remove=True)
    np.testing.assert_allclose(interval[:, 0], 1.0, atol=1e-9)
    np.testing.assert_allclose(interval[:, 1], 0.0, atol=1e-9)
    validation = [{"prompt": "v", "seed": s, "clean": 1.0, "corrupted": 0.0} for s in range(3)]
    test = [{"prompt": "t", "seed": s} for s in range(4)]
    removed = select_sites(["a", "b"], patched, validation, test, remove=True)
    restored = select_sites(["a", "b"], patched, validation, test)
    assert removed.causal == ["a"] and restored.causal == ["b"] and "< tau" in removed.rule


def test_remove_settings_are_checked_and_keep_restore_items_keys(tiny_sd1):
    with pytest.raises(ConfigError, match="direction must be one of restore, remove, got 'backward'"):
        TraceConfig(direction="backward")
    assert "direction" not in TraceConfig().item_dict()
    assert TraceConfig(direction="remove").item_dict()["direction"] == "remove"
    with pytest.raises(ConfigError, match="direction 'remove' is traced with method 'exact' only"):
        causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites="unet.xattn.8",
                     config=TraceConfig(direction="remove", **FAST), method="attribution")  # fmt: skip
