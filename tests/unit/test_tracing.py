"""Causal tracing and LocoGen invariants on tiny models of every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import PixelScorer

from diffloc.errors import ConfigError, PromptError, UnknownSiteError
from diffloc.sites import SiteKind
from diffloc.tracing.causal import causal_trace, trace_text
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.locogen import locogen, windows_for
from diffloc.tracing.results import TraceResult, WindowResult

PROMPT = "a house in the style of van gogh"
FAST = {"seeds": (0,), "steps": 2, "guidance": 5.0, "max_batch": 6, "bootstrap": 0}


def test_restore_all_gives_clean_and_none_gives_corrupted(tiny_model):
    denoiser = [s.name for s in tiny_model.sites.denoiser_sites()]
    result = causal_trace(
        tiny_model, PROMPT, "van gogh", "van gogh style", scorer=PixelScorer(),
        sites=[denoiser, denoiser[:1]], config=TraceConfig(noise=2.0, **FAST),
    )  # fmt: skip
    assert abs(result.clean_score - result.corrupt_score) > 1e-4
    everything = result.labels.index("+".join(denoiser))
    assert result.scores[everything] == pytest.approx(result.clean_score, abs=1e-5)
    assert result.indirect_effect[everything] == pytest.approx(1.0, abs=1e-2)


def test_zero_noise_makes_corrupted_equal_clean(tiny_sd1):
    result = causal_trace(
        tiny_sd1,
        PROMPT,
        "van gogh",
        "x",
        scorer=PixelScorer(),
        sites="unet.xattn.8",
        config=TraceConfig(noise=0.0, **FAST),
    )
    assert result.corrupt_score == pytest.approx(result.clean_score, abs=1e-5)


def test_default_noise_is_three_embedding_stds(tiny_sd1):
    result = causal_trace(
        tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites="unet.xattn.8", config=TraceConfig(**FAST)
    )
    std = tiny_sd1.module("text.embed").weight.float().std().item()
    assert result.noise == pytest.approx(3 * std, rel=1e-6)


def test_trace_is_reproducible_and_round_trips(tiny_sd1, tmp_path):
    kwargs = dict(scorer=PixelScorer(), sites="unet.xattn.*", config=TraceConfig(noise=1.0, **FAST))
    a = causal_trace(tiny_sd1, [PROMPT, "van gogh painting of a tree"], "van gogh", "x", **kwargs)
    b = causal_trace(tiny_sd1, [PROMPT, "van gogh painting of a tree"], "van gogh", "x", **kwargs)
    np.testing.assert_array_equal(a.scores, b.scores)
    # the 16 selected layers, and the two text-blind controls (res.0, sattn.0) in front
    assert len(a.scores) == 18 and len(a.items) == 2 and a.controls == ["unet.res.0", "unet.sattn.0"]
    assert a.labels[2:] == [f"unet.xattn.{i}" for i in range(16)]
    a.save(tmp_path / "r")
    loaded = TraceResult.load(tmp_path / "r")
    np.testing.assert_array_equal(loaded.scores, a.scores)
    assert loaded.labels == a.labels and loaded.meta["subject"] == "van gogh"


def test_resumed_sweep_skips_finished_items(tiny_sd1, tmp_path):
    kwargs = dict(
        scorer=PixelScorer(),
        sites="unet.xattn.*",
        config=TraceConfig(noise=1.0, seeds=(0, 1), steps=2, guidance=5.0, max_batch=9, bootstrap=0),
    )
    first = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", out=tmp_path, **kwargs)
    assert first.meta["items_computed"] == 2
    items = sorted((tmp_path / "items").glob("*.json"))
    (items[1]).unlink()  # as if killed before the second item finished
    stamp = items[0].stat().st_mtime_ns
    second = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", out=tmp_path, **kwargs)
    assert (second.meta["items_computed"], second.meta["items_reused"]) == (1, 1)
    assert items[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.scores, second.scores)


def test_text_trace_grid_and_full_restore(tiny_model):
    from diffloc.engine.generate import generate_runs
    from diffloc.engine.interventions import Restore, Run
    from diffloc.sites import SiteKind
    from diffloc.tracing.batching import generation_config
    from diffloc.tracing.corruption import corruption

    config = TraceConfig(noise=2.0, **FAST)
    result = trace_text(tiny_model, "van gogh", "van gogh", "x", scorer=PixelScorer(), config=config)
    n_tokens = len(result.tokens)
    assert result.scores.shape[1:] == (4, n_tokens) and result.scores.shape[0] == len(result.labels)
    assert result.labels[:3] == ["text.layer", "text.attn", "text.mlp"]
    # the prompt's tokens (BOS, subject, EOS), then the padding slots restored together as one row
    prompt_tokens = len(tiny_model.pipe.tokenizer("van gogh").input_ids)
    limit = tiny_model.adapter.max_tokens(tiny_model.pipe, tiny_model.adapter.text_encoders(tiny_model.pipe)[0])
    assert n_tokens == prompt_tokens + 1 and result.tokens[-1] == f"<pad ×{limit - prompt_tokens}>"
    # the UNet reads the padding slots, which have attended to the corrupted subject: restoring them matters
    # (at some layer: SD-XL reads the penultimate one, so its last layer's restore changes nothing); PixArt masks
    # the padding out of T5's attention and the transformer's cross-attention, so restoring it changes nothing
    padding_effect = np.nanmax(np.abs(result.scores[0, :, -1] - result.corrupt_score))
    assert padding_effect == 0.0 if tiny_model.family == "pixart" else padding_effect > 1e-6
    # Restoring every state of the last layers the pipeline reads (SD-XL reads the penultimate layer and pools the
    # last) gives the clean score: the trace's rows sit between its corrupted and clean ends.
    layers = [s for s in tiny_model.sites if s.kind is SiteKind.TEXT_LAYER]
    last = tuple(s.name for s in layers if s.index >= max(t.index for t in layers if t.component == s.component) - 1)
    item = result.items[0]
    corrupt = corruption(tiny_model, result.subject_range, config, item["seed"])
    runs = [Run(prompt="van gogh", seed=item["seed"], interventions=(corrupt, Restore(sites=last, source=1))),
            Run(prompt="van gogh", seed=item["seed"])]  # fmt: skip
    restored = PixelScorer().score(generate_runs(tiny_model, runs, config=generation_config(config)), ["x", "x"])
    assert float(restored[0]) == pytest.approx(result.clean_score, abs=1e-5)
    assert abs(result.clean_score - result.corrupt_score) > 1e-4


def test_text_trace_skips_only_states_the_corruption_cannot_reach(tiny_model):
    """On a left-to-right encoder (CLIP) the states before the subject are not generated; every cell still reads
    what generating it gives. T5 (IF) attends both ways and skips nothing."""
    from diffloc.models.text_sites import attends_left_only

    config = TraceConfig(noise=2.0, **FAST)
    # one state kind: the skip is decided per token, the same for every kind
    kwargs = dict(scorer=PixelScorer(), config=config, kinds=("attn",))
    fast = trace_text(tiny_model, PROMPT, "van gogh", "x", **kwargs)
    causal = tiny_model.family not in ("if", "pixart")  # T5 attends both ways
    assert attends_left_only(tiny_model.pipe.text_encoder) is causal
    assert fast.meta["unreached_tokens"] == (fast.subject_range[0] if causal else 0) and fast.subject_range[0] > 2
    if not causal:
        return  # nothing skipped: the trace is the full one
    full = trace_text(tiny_model, PROMPT, "van gogh", "x", skip_unreached=False, **kwargs)
    assert full.meta["unreached_tokens"] == 0
    np.testing.assert_allclose(fast.scores, full.scores, atol=1e-5)
    # the skipped cells are the corrupted run's own score; some reached cells differ from it
    start = fast.subject_range[0]
    assert np.all(fast.scores[:, :, :start] == fast.corrupt_score)
    assert np.nanmax(np.abs(full.scores[:, :, start:] - full.corrupt_score)) > 1e-6


def test_locogen_windows_and_modes(tiny_model, tmp_path):
    n_xattn = len(tiny_model.sites.denoiser_sites(SiteKind.XATTN))
    m = max(2, n_xattn // 2)  # SD-XL's 70 layers: fewer windows keep the test fast
    config = LocoGenConfig(window=m, **FAST)
    result = locogen(tiny_model, PROMPT, "a painting", "x", scorer=PixelScorer(), config=config, out=tmp_path)
    assert len(result.windows) == n_xattn - m + 1 and all(len(w) == m for w in result.windows)
    assert result.best_index == int(np.argmin(result.scores))
    loaded = WindowResult.load(tmp_path)
    assert loaded.best_sites == result.best_sites
    update = LocoGenConfig(window=m, mode="update", **FAST)
    again = locogen(tiny_model, PROMPT, "a painting", "x", scorer=PixelScorer(), config=update, out=tmp_path)
    assert again.best_index == int(np.argmax(again.scores))


def test_locogen_swapping_to_the_same_prompt_changes_nothing(tiny_sd1):
    result = locogen(tiny_sd1, PROMPT, PROMPT, "x", scorer=PixelScorer(), config=LocoGenConfig(window=4, **FAST))
    np.testing.assert_allclose(result.scores, result.original_score, atol=1e-5)


def test_reference_preset_windows(tiny_sd1):
    windows = windows_for(tiny_sd1, LocoGenConfig(preset="reference", **FAST))
    assert len(windows) == 16
    assert windows[0] == ["unet.xattn.0", "unet.xattn.1", "unet.xattn.2"]
    assert windows[13] == ["unet.xattn.13", "unet.xattn.14", "unet.xattn.15"]
    assert windows[14] == ["unet.xattn.14"] and windows[15] == ["unet.xattn.15"]


def test_bad_inputs(tiny_sd1):
    scorer = PixelScorer()
    with pytest.raises(PromptError, match="subject 'monet' does not occur"):
        causal_trace(tiny_sd1, PROMPT, "monet", "x", scorer=scorer, config=TraceConfig(**FAST))
    with pytest.raises(ConfigError, match="empty attribute"):
        causal_trace(tiny_sd1, PROMPT, "van gogh", " ", scorer=scorer, config=TraceConfig(**FAST))
    with pytest.raises(ConfigError, match="window 17 is larger than the model's 16 cross-attention layers"):
        locogen(tiny_sd1, PROMPT, "a painting", "x", scorer=scorer, config=LocoGenConfig(window=17, **FAST))
    with pytest.raises(UnknownSiteError, match="empty site selection"):
        causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=scorer, sites=[], config=TraceConfig(**FAST))
    with pytest.raises(UnknownSiteError, match="denoiser tracing takes denoiser sites"):
        causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=scorer, sites="text.attn.0", config=TraceConfig(**FAST))
    with pytest.raises(ConfigError, match="noise must be a finite number >= 0, got -1"):
        TraceConfig(noise=-1.0)
    with pytest.raises(ConfigError, match="max_batch"):
        TraceConfig(max_batch=1)
    assert torch.is_tensor(tiny_sd1.module("text.embed").weight)


def test_resumed_items_are_keyed_by_the_current_weights(tiny_sd1, tmp_path):
    """An edited model (different weights) must not reuse the base model's stored items."""
    kwargs = dict(scorer=PixelScorer(), sites="unet.xattn.8", config=TraceConfig(noise=1.0, **FAST), out=tmp_path)
    causal_trace(tiny_sd1, PROMPT, "van gogh", "x", **kwargs)
    weight = tiny_sd1.module("unet.xattn.8.k").weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)
        edited = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", **kwargs)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert (edited.meta["items_computed"], edited.meta["items_reused"]) == (1, 0)
    again = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", **kwargs)
    assert (again.meta["items_computed"], again.meta["items_reused"]) == (0, 1)


def test_noise_is_calibrated_on_every_item_not_the_mean():
    """Two items, clean 1.0 each: 6x halves the mean (1.0 and 0.0) but leaves one item untouched."""
    from diffloc.tracing.calibrate import choose_multiplier, items_dropped

    clean = [1.0, 1.0]
    per_mult = [[1.0, 1.0], [1.0, 0.0], [0.1, 0.0], [0.0, 0.0]]  # 3x, 6x, 12x, 24x
    dropped = [items_dropped(clean, scores, 0.5) for scores in per_mult]
    means = [sum(s) / 2 for s in per_mult]
    assert dropped == [0, 1, 2, 2]
    assert choose_multiplier(means, dropped, 2) == (2, True)
    # none drops every item: the most items, then the lowest mean
    assert choose_multiplier([0.9, 0.5, 0.4], [0, 1, 1], 2) == (2, False)
    assert choose_multiplier([0.9, 0.8], [0, 0], 2) == (1, False)


def test_noise_calibration_picks_the_first_multiplier_that_halves_the_score(tiny_sd1):
    from diffloc.tracing.calibrate import calibrate_noise

    class PositiveScorer(PixelScorer):
        def score(self, images, texts):
            return torch.sigmoid(super().score(images, texts) / 10)

    config = TraceConfig(**FAST)
    mults = (0.5, 8.0, 64.0)
    cal = calibrate_noise(
        tiny_sd1, PROMPT, "van gogh", "x", scorer=PositiveScorer(), config=config, multipliers=mults, min_drop=0.01
    )
    table = [cal.corrupted[f"{m:g}"] for m in mults]
    passing = [m for m, v in zip(mults, table, strict=True) if v <= cal.clean * 0.99]
    expected = passing[0] if passing else mults[table.index(min(table))]
    assert cal.multiplier == expected and cal.reached == bool(passing)
    std = tiny_sd1.module("text.embed").weight.float().std().item()
    assert cal.noise == pytest.approx(expected * std, rel=1e-6)
    # the calibration's numbers are the trace's own clean and corrupted runs at that noise
    trace = causal_trace(
        tiny_sd1, PROMPT, "van gogh", "x", scorer=PositiveScorer(), sites="unet.xattn.8",
        config=TraceConfig(noise=cal.noise, **FAST),
    )  # fmt: skip
    assert trace.clean_score == pytest.approx(cal.clean, abs=1e-5)
    assert trace.corrupt_score == pytest.approx(cal.corrupted[f"{expected:g}"], abs=1e-5)
    with pytest.raises(ConfigError, match="multipliers must be a non-empty list"):
        calibrate_noise(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), multipliers=(3.0, -1.0))
    with pytest.raises(ConfigError, match="min_drop must be in"):
        calibrate_noise(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), min_drop=0.0)
    with pytest.raises(PromptError, match="subject 'monet' does not occur"):
        calibrate_noise(tiny_sd1, PROMPT, "monet", "x", scorer=PixelScorer(), config=config)


def test_locogen_search_widens_until_a_window_controls_the_attribute(tiny_sd1, tmp_path):
    from diffloc.tracing.locogen import controls, locogen_search

    class PositiveScorer(PixelScorer):
        def score(self, images, texts):
            return torch.sigmoid(super().score(images, texts) / 10)

    scorer, config = PositiveScorer(), LocoGenConfig(**FAST)
    never = locogen_search(
        tiny_sd1, PROMPT, "a painting", "x", scorer=scorer, config=config, sizes=(2, 99), min_effect=1.0, out=tmp_path
    )  # a score never reaches exactly 0, so every size is tried; 99 is capped at the 16 layers
    tried = never.meta["window_search"]["tried"]
    assert [t["window"] for t in tried] == [2, 16] and not any(t["controls"] for t in tried)
    assert len(never.windows) == 1 and len(never.windows[0]) == 16
    assert (tmp_path / "m2" / "result.json").is_file() and WindowResult.load(tmp_path).best_sites == never.best_sites
    direct = locogen(tiny_sd1, PROMPT, "a painting", "x", scorer=scorer, config=LocoGenConfig(window=2, **FAST))
    expected = controls(direct, 1e-9)
    found = locogen_search(tiny_sd1, PROMPT, "a painting", "x", scorer=scorer, config=config, sizes=(2, 16),
                           min_effect=1e-9)  # fmt: skip
    assert len(found.meta["window_search"]["tried"]) == (1 if expected else 2)
    with pytest.raises(ConfigError, match="window sizes must be"):
        locogen_search(tiny_sd1, PROMPT, "a painting", "x", scorer=scorer, config=config, sizes=())
    with pytest.raises(ConfigError, match="min_effect must be in"):
        locogen_search(tiny_sd1, PROMPT, "a painting", "x", scorer=scorer, config=config, min_effect=2.0)
