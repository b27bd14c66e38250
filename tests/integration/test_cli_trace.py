"""``diffloc trace`` / ``diffloc locogen`` end to end on a tiny model, including kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from diffloc.cli.main import main
from diffloc.eval.scorers import ClipScorer
from diffloc.tracing.results import TraceResult, WindowResult

PROMPT = "a house in the style of van gogh"
FAST = ["--seeds", "0", "--steps", "2", "--guidance", "5", "--max-batch", "12", "--bootstrap", "0"]


def test_clip_scorer_mechanics_on_a_tiny_random_clip(tiny_clip_dir):
    scorer = ClipScorer.from_dir(tiny_clip_dir)  # random weights: checks shapes and plumbing only
    images = torch.rand(3, 3, 40, 40)
    scores = scorer.score(images, ["a red circle"] * 3)
    assert scores.shape == (3,) and scores.abs().max() <= 1.0 + 1e-5
    assert not torch.equal(scores, scorer.score(images, ["a blue square"] * 3))


def test_trace_unet_cli_writes_results_and_plots(tmp_path, tiny_clip_dir, capsys):
    code = main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", "van gogh",
                 "--attribute", "van gogh style", "--clip", str(tiny_clip_dir), "--sites", "unet.xattn.*",
                 "--out", str(tmp_path), *FAST])  # fmt: skip
    assert code == 0
    result = TraceResult.load(tmp_path)
    assert result.kind == "unet" and len(result.labels) == 18 and result.controls == ["unet.res.0", "unet.sattn.0"]
    assert result.restore_from == "same-latent"
    assert (tmp_path / "trace.png").stat().st_size > 0 and (tmp_path / "strip.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "top sites" in out and "restore source: same-latent" in out and "controls (text-blind sites)" in out
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["restore_from"] == "same-latent" and set(saved["control_effects"]) == set(result.controls)


def _trace_one_site(out, clip, *extra) -> int:
    """``diffloc trace unet`` of ``unet.xattn.8`` on the tiny model, one fast item."""
    return main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--clip", str(clip), "--sites",
                 "unet.xattn.8", "--out", str(out), *FAST, *extra])  # fmt: skip


def test_trace_cli_corrupts_by_substitution(tmp_path, tiny_clip_dir, capsys):
    code = _trace_one_site(tmp_path, tiny_clip_dir, "--subject", "house", "--substitute", "tree", "--attribute",
                           "a house")  # fmt: skip
    assert code == 0
    result = TraceResult.load(tmp_path)
    assert result.noise == 0.0 and result.meta["config"]["substitute"] == "tree"
    assert "corruption: 'house' replaced by 'tree'" in capsys.readouterr().out


def test_trace_cli_removes_instead_of_restoring(tmp_path, tiny_clip_dir, capsys):
    code = _trace_one_site(tmp_path, tiny_clip_dir, "--subject", "van gogh", "--direction", "remove", "--attribute",
                           "van gogh style")  # fmt: skip
    assert code == 0
    result = TraceResult.load(tmp_path)
    assert result.direction == "remove" and result.meta["config"]["direction"] == "remove"
    (item,) = result.items
    site = result.labels.index("unet.xattn.8")
    gap = item["clean"] - item["corrupted"]
    assert result.indirect_effect[site] == pytest.approx((item["clean"] - item["scores"][site]) / gap)
    out = capsys.readouterr().out
    assert "direction: remove" in out and "top sites (effect of removing" in out
    assert (tmp_path / "strip.png").stat().st_size > 0


def test_trace_cli_patches_part_of_the_way(tmp_path, tiny_clip_dir, capsys):
    code = _trace_one_site(tmp_path / "half", tiny_clip_dir, "--subject", "van gogh", "--fraction", "0.5",
                           "--attribute", "van gogh style")  # fmt: skip
    assert code == 0
    half = TraceResult.load(tmp_path / "half")
    assert half.fraction == 0.5 and half.meta["config"]["fraction"] == 0.5
    assert "fraction: 0.5 of each value patched" in capsys.readouterr().out
    assert _trace_one_site(tmp_path / "full", tiny_clip_dir, "--subject", "van gogh", "--attribute",
                           "van gogh style") == 0  # fmt: skip
    full = TraceResult.load(tmp_path / "full")
    site = half.labels.index("unet.xattn.8")
    assert full.fraction == 1.0 and half.items[0]["clean"] == pytest.approx(full.items[0]["clean"], abs=1e-6)
    assert abs(half.items[0]["scores"][site] - full.items[0]["scores"][site]) > 1e-6  # the half patch differs


def test_trace_cli_intervals_validation_and_restore_source(tmp_path, tiny_clip_dir, capsys):
    args = ["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", "van gogh",
            "--attribute", "van gogh style", "--clip", str(tiny_clip_dir), "--sites", "unet.xattn.8",
            "--steps", "2", "--guidance", "5", "--seeds", "0", "1", "2", "--noise", "3",
            "--restore-from", "trajectory", "--validation-prompt", "a van gogh tree", "--validation-seeds", "5", "6",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    result = TraceResult.load(tmp_path)
    assert result.restore_from == "trajectory" and result.n_items == 3 and result.interval.shape == (2, 3)
    assert result.selection["validation_items"][0]["prompt"] == "a van gogh tree"
    assert [v["seed"] for v in result.selection["validation_items"]] == [5, 6]
    assert "causal (mean restored score >= tau" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--restore-from", "clean"], "invalid choice: 'clean'"),
        (["--seeds", "0", "1"], "2 items are too few for a bootstrap interval"),
        (["--seeds", "0", "1", "2", "--validation-prompt", PROMPT, "--validation-seeds", "2"],
         "validation and test items overlap"),
    ],
)  # fmt: skip
def test_trace_cli_refuses_bad_statistics_settings(tmp_path, extra, message, capsys):
    args = ["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", "van gogh",
            "--attribute", "van gogh style", "--steps", "2", "--out", str(tmp_path / "o"), *extra]  # fmt: skip
    if "invalid choice" in message:  # argparse's own refusal (exit 2)
        with pytest.raises(SystemExit):
            main(args)
    else:
        assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_trace_text_and_locogen_cli(tmp_path, tiny_clip_dir):
    assert main(["trace", "text", "--model", "tiny-sd1", "--prompt", "a van gogh house", "--subject", "van gogh",
                 "--attribute", "van gogh style", "--clip", str(tiny_clip_dir), "--kinds", "attn",
                 "--noise", "auto", "--out", str(tmp_path / "t"), *FAST]) == 0  # fmt: skip
    text = TraceResult.load(tmp_path / "t")
    assert text.scores.shape[0] == 1
    calibration = json.loads((tmp_path / "t" / "noise.json").read_text())
    assert text.noise == pytest.approx(calibration["noise"]) and calibration["multiplier"] in (3, 6, 12, 24, 48)
    assert main(["locogen", "--model", "tiny-sd1", "--prompt", PROMPT, "--target", "a painting",
                 "--attribute", "van gogh style", "--clip", str(tiny_clip_dir), "--window", "3",
                 "--out", str(tmp_path / "l"), *FAST]) == 0  # fmt: skip
    windows = WindowResult.load(tmp_path / "l")
    assert len(windows.windows) == 14 and (tmp_path / "l" / "windows.png").is_file()


def _trace_cmd(out, clip_dir):
    return [sys.executable, "-m", "diffloc.cli.main", "trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT,
            "--prompt", "van gogh painting of a tree", "--subject", "van gogh", "--attribute", "van gogh style",
            "--clip", str(clip_dir), "--sites", "unet.xattn.1*", "--seeds", "0", "1", "--steps", "2",
            "--guidance", "5", "--max-batch", "9", "--out", str(out)]  # fmt: skip


def test_kill_9_mid_sweep_then_rerun_equals_uninterrupted(tmp_path, tiny_clip_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _trace_cmd(killed, tiny_clip_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list((killed / "items").glob("*.json"))) < 1:
        if proc.poll() is not None:
            pytest.fail("the sweep finished before it could be killed; make it longer")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (killed / "items").glob("*.json")}
    assert 1 <= len(finished) < 4 and not (killed / "result.json").exists()
    assert subprocess.run(_trace_cmd(killed, tiny_clip_dir), env=env, capture_output=True).returncode == 0
    assert all((killed / "items" / name).stat().st_mtime_ns == stamp for name, stamp in finished.items())
    resumed = json.loads((killed / "result.json").read_text())
    assert resumed["meta"]["items_reused"] == len(finished)
    assert resumed["meta"]["items_computed"] == 4 - len(finished)
    # The uninterrupted reference runs the same sweep in-process (same function the command calls).
    from diffloc.models.registry import load
    from diffloc.tracing.causal import causal_trace
    from diffloc.tracing.config import TraceConfig

    fresh = causal_trace(
        load("tiny-sd1"), [PROMPT, "van gogh painting of a tree"], "van gogh", "van gogh style",
        scorer=ClipScorer.from_dir(tiny_clip_dir), sites=["unet.xattn.1*"],
        config=TraceConfig(seeds=(0, 1), steps=2, guidance=5.0, max_batch=9),
    )  # fmt: skip
    np.testing.assert_array_equal(TraceResult.load(killed).scores, fresh.scores)


def test_a_shapesworld_model_given_by_path_is_scored_with_detectors(tmp_path, capsys):
    from diffloc.world.model import shipped_model_dir

    model_dir = str(shipped_model_dir())  # as a user's own export would be given: a directory, not 'shapesworld'
    args = ["trace", "unet", "--model", model_dir, "--prompt", "a red circle in the style of pica stro",
            "--subject", "pica stro", "--attribute", "in the style of pica stro", "--sites", "unet.xattn.0",
            "--out", str(tmp_path / "ok"), *FAST]  # fmt: skip
    assert main([*args, "--detectors"]) == 0
    result = TraceResult.load(tmp_path / "ok")
    assert result.meta["scorer"] == "shapesworld-detectors"
    capsys.readouterr()
    assert main(args) == 1  # no scorer for a directory without --clip/--detectors: a one-line error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--detectors" in err[0] and "Traceback" not in err[0]
