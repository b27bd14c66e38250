"""Partial patches (``Restore.fraction``, ``TraceConfig.fraction``): a site's value moved part of the way to the
source's, so sites that a full patch moves equally (a saturating score) can be told apart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from support import PixelScorer, corrupt_subject

from diffloc.cli.main import main
from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.hooks import record
from diffloc.engine.interventions import Restore, Run, SwapContext
from diffloc.errors import ConfigError
from diffloc.sites import SiteKind
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.locogen import locogen
from diffloc.world.planted import dose_reading

PROMPT = "a red circle in the style of van gogh"
CFG = GenerationConfig(steps=3, guidance=5.0)
FAST = {"seeds": (0,), "steps": 3, "guidance": 5.0, "bootstrap": 0, "noise": 2.0, "max_batch": 16}


def _corrupt(model):
    return corrupt_subject(model, PROMPT)


def test_a_partial_text_restore_moves_its_positions_that_share_of_the_way(tiny_model):
    site = next(s.name for s in tiny_model.sites if s.kind is SiteKind.TEXT_LAYER and s.index == 0)
    corrupt = _corrupt(tiny_model)
    start, end = corrupt.positions
    patch = Restore(sites=(site,), source=0, positions=(start, end), fraction=0.25)
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
            Run(prompt=PROMPT, seed=0, interventions=(corrupt, patch))]  # fmt: skip
    with record(tiny_model, [site]) as seen:
        generate_runs(tiny_model, runs, config=GenerationConfig(steps=1, guidance=1.0))
    clean, corrupted, patched = seen[site][0][0], seen[site][0][1], seen[site][0][2]
    expected = corrupted[start:end] + 0.25 * (clean[start:end] - corrupted[start:end])
    torch.testing.assert_close(patched[start:end], expected, rtol=0, atol=1e-6)
    assert (patched[start:end] - corrupted[start:end]).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(patched[end:], corrupted[end:], rtol=0, atol=0)


@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_a_partial_unet_restore_mixes_its_own_value_with_the_sources(tiny_sd1, source):
    """At the first step every run shares the latent, so the restored run's own value is the corrupted run's: the
    patched output is 0.3 of the way from it to the clean value (the shadow row's, or the clean run's)."""
    site = "unet.xattn.8"
    corrupt = _corrupt(tiny_sd1)
    patch = Restore(sites=(site,), source=0, restore_from=source, fraction=0.3)
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
            Run(prompt=PROMPT, seed=0, interventions=(corrupt, patch))]  # fmt: skip
    with record(tiny_sd1, [site]) as seen:
        generate_runs(tiny_sd1, runs, config=CFG)
    out = seen[site][0]
    clean_row, corrupted_row, patched_row = len(runs), len(runs) + 1, len(runs) + 2  # conditional rows
    clean = out[-1] if source == "same-latent" else out[clean_row]
    expected = out[corrupted_row] + 0.3 * (clean - out[corrupted_row])
    torch.testing.assert_close(out[patched_row], expected, rtol=0, atol=1e-5)
    assert (out[patched_row] - out[corrupted_row]).abs().max() > 1e-3
    assert (out[patched_row] - clean).abs().max() > 1e-3


def test_a_partial_trace_measures_the_partial_patch(tiny_sd1):
    """The trace's effect at fraction 0.5, recomputed from images made here without the trace; fraction 1 is the
    default trace."""
    site = "unet.xattn.8"
    half = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites=[site],
                        config=TraceConfig(fraction=0.5, **FAST))  # fmt: skip
    assert half.fraction == 0.5 and half.meta["config"]["fraction"] == 0.5
    corrupt = _corrupt(tiny_sd1)
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
            Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=(site,), source=0, fraction=0.5))),
            Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=(site,), source=0)))]  # fmt: skip
    clean, corrupted, partial, full = PixelScorer().score(generate_runs(tiny_sd1, runs, config=CFG), ["x"] * 4).tolist()
    assert abs(clean - corrupted) > 1e-3 and abs(partial - full) > 1e-4
    assert dict(zip(half.labels, half.indirect_effect, strict=True))[site] == pytest.approx(
        (partial - corrupted) / (clean - corrupted), abs=1e-3
    )
    whole = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites=[site],
                         config=TraceConfig(**FAST))  # fmt: skip
    assert whole.fraction == 1.0
    assert dict(zip(whole.labels, whole.indirect_effect, strict=True))[site] == pytest.approx(
        (full - corrupted) / (clean - corrupted), abs=1e-3
    )


def test_fraction_settings_are_checked_and_keep_full_items_keys(tiny_sd1):
    for bad in (0, 0.0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match=r"fraction must be a finite number in \(0, 1\]"):
            TraceConfig(fraction=bad)
        with pytest.raises(ConfigError, match=r"fraction must be a finite number in \(0, 1\]"):
            Restore(sites=("unet.xattn.8",), fraction=bad)
    assert "fraction" not in TraceConfig().item_dict()
    assert TraceConfig(fraction=0.5).item_dict()["fraction"] == 0.5
    with pytest.raises(ConfigError, match=r"fraction 0\.5 is traced with method 'exact' only"):
        causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites="unet.xattn.8",
                     config=TraceConfig(fraction=0.5, **FAST), method="attribution")  # fmt: skip


def test_the_cli_refuses_a_fraction_outside_its_range_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", "van gogh", "--attribute",
              "x", "--fraction", "0", "--out", str(tmp_path / "t")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--fraction" in err[-1] and "(0, 1]" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_partial_swap_mixes_the_two_contexts(tiny_sd1):
    """A cross-attention layer swapped 0.4 of the way reads 0.4 of the other prompt's context: its key projection
    (linear) is 0.4 of the way from the original run's keys to the fully swapped run's, at every step."""
    layer, other = "unet.xattn.8", "a blue square"
    swaps = (SwapContext(sites=(layer,), prompt=other), SwapContext(sites=(layer,), prompt=other, fraction=0.4))
    runs = [Run(prompt=PROMPT, seed=0), *(Run(prompt=PROMPT, seed=0, interventions=(swap,)) for swap in swaps)]
    with record(tiny_sd1, [f"{layer}.k"]) as seen:
        generate_runs(tiny_sd1, runs, config=CFG)
    for keys in seen[f"{layer}.k"]:
        own, full, partial = keys[len(runs)], keys[len(runs) + 1], keys[len(runs) + 2]  # conditional rows
        assert (full - own).abs().max() > 1e-3
        torch.testing.assert_close(partial, own + 0.4 * (full - own), rtol=0, atol=1e-5)


def test_locogen_scores_only_the_windows_asked_at_a_partial_swap(tiny_sd1):
    windows = [["unet.xattn.2", "unet.xattn.3"], ["unet.xattn.6", "unet.xattn.7"]]
    config = LocoGenConfig(window=2, fraction=0.5, **{k: v for k, v in FAST.items() if k != "noise"})
    result = locogen(tiny_sd1, PROMPT, "a painting", "x", scorer=PixelScorer(), config=config, windows=windows)
    assert [list(w) for w in result.windows] == windows and result.meta["config"]["fraction"] == 0.5
    full = locogen(tiny_sd1, PROMPT, "a painting", "x", scorer=PixelScorer(), config=replace(config, fraction=1.0))
    assert len(full.windows) > 2 and "fraction" not in replace(config, fraction=1.0).item_dict()
    assert not np.allclose(result.scores, [full.scores[full.windows.index(w)] for w in windows], atol=1e-6)
    with pytest.raises(ConfigError, match=r"window \['unet\.xattn\.99'\] is not made of this model's"):
        locogen(tiny_sd1, PROMPT, "a painting", "x", scorer=PixelScorer(), config=config, windows=[["unet.xattn.99"]])


def test_the_dose_reading_ranks_tied_windows_by_their_mean_partial_effect():
    planted = ["l.4", "l.5", "l.6", "l.7"]
    tied = [["l.2", "l.3", "l.4", "l.5"], ["l.3", "l.4", "l.5", "l.6"], ["l.4", "l.5", "l.6", "l.7"]]
    reading = dose_reading(tied, [0.3, 0.3, 0.6], [1.0, 1.0, 1.0], planted)
    assert reading["best"] == [tied[2]] and reading["pick"] == tied[2] and reading["recovered"]
    assert reading["split"] == 1.0
    # within TIE of each other the doses tell nothing: the strict reading's pick (largest full effect, the first
    # of equals) stands, and the split counts the still-tied windows
    even = dose_reading(tied, [0.5, 0.5, 0.51], [1.0, 1.0, 1.0], planted)
    assert even["best"] == tied and even["pick"] == tied[0] and not even["recovered"]
    assert even["split"] == pytest.approx(2 / 3)
    assert dose_reading(tied, [0.5, 0.5, 0.51], [0.99, 0.995, 1.0], planted)["pick"] == tied[2]
