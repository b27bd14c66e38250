"""Executors without Ray: shards of a job array add up to one run; what a worker process would receive."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from support import PixelScorer

from diffloc.errors import ConfigError, DifflocError, SweepIncomplete
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.executors import ModelRef, ShardExecutor, WorkerSetup, check_same_weights, parse_shard
from diffloc.tracing.locogen import locogen
from diffloc.tracing.results import TraceResult
from diffloc.tracing.store import Job, run_jobs

PROMPTS = ["a house in the style of van gogh", "van gogh painting of a tree"]
CONFIG = TraceConfig(seeds=(0, 1), steps=2, guidance=5.0, max_batch=9)


def _trace(model, out=None, executor=None):
    return causal_trace(model, PROMPTS, "van gogh", "van gogh style", scorer=PixelScorer(),
                        sites=["unet.xattn.3", "unet.xattn.8"], config=CONFIG, out=out, executor=executor)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "words"),
    [("2/2", "index runs from 0 to 1"), ("-1/2", "index runs from 0 to 1"), ("0/0", ">= 1"), ("1", "is not I/N"),
     ("a/b", "is not I/N"), ("0/2/3", "is not I/N")],
)  # fmt: skip
def test_bad_shards_are_one_line_errors(text, words):
    with pytest.raises(ConfigError, match=words) as info:
        parse_shard(text)
    assert "\n" not in str(info.value)


def test_shards_of_a_job_array_add_up_to_one_run(tiny_sd1, tmp_path):
    single = _trace(tiny_sd1)
    with pytest.raises(SweepIncomplete) as first:
        _trace(tiny_sd1, tmp_path, parse_shard("0/2"))
    assert (first.value.computed, first.value.reused, first.value.missing) == (2, 0, 2)
    assert not (tmp_path / "result.json").exists() and len(list((tmp_path / "items").glob("*.json"))) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "items").glob("*.json")}
    second = _trace(tiny_sd1, tmp_path, parse_shard("1/2"))  # the last shard finds every item: assembles
    assert (second.meta["items_computed"], second.meta["items_reused"]) == (2, 2)
    assembled = _trace(tiny_sd1, tmp_path)  # the final plain run recomputes nothing
    assert (assembled.meta["items_computed"], assembled.meta["items_reused"]) == (0, 4)
    assert all((tmp_path / "items" / name).stat().st_mtime_ns == t for name, t in stamps.items())
    for result in (second, assembled, TraceResult.load(tmp_path)):
        np.testing.assert_array_equal(result.scores, single.scores)
        assert result.items == single.items


def test_a_shard_computes_every_other_item_and_a_rerun_of_it_nothing(tiny_sd1, tmp_path):
    config = LocoGenConfig(seeds=(0, 1, 2), steps=2, guidance=5.0, max_batch=16, window=14)
    shard = ShardExecutor(1, 2)
    run = {"scorer": PixelScorer(), "config": config, "out": tmp_path, "executor": shard}
    with pytest.raises(SweepIncomplete) as first:
        locogen(tiny_sd1, PROMPTS[0], "a painting", "x", **run)
    assert (first.value.computed, first.value.missing) == (1, 2)  # items 0, 1, 2: shard 1 owns item 1
    with pytest.raises(SweepIncomplete) as again:
        locogen(tiny_sd1, PROMPTS[0], "a painting", "x", **run)
    assert (again.value.computed, again.value.reused, again.value.missing) == (0, 1, 2)


def test_a_shard_needs_an_output_directory(tiny_sd1):
    with pytest.raises(ConfigError, match="shared output directory"):
        run_jobs([Job(spec={}, runs=1, compute=dict)], None, model=tiny_sd1, scorer=PixelScorer(),
                 executor=ShardExecutor(0, 2))  # fmt: skip


def test_a_worker_loads_the_model_by_reference_and_checks_its_weights():
    from diffloc.editing import EditRequest, compute_edit
    from diffloc.models.registry import load

    model = load("tiny-sd1")
    setup = WorkerSetup.of(model, PixelScorer())
    assert setup.model == ModelRef("tiny-sd1", (("dtype", torch.float32), ("family", None)))
    again = setup.model.load("cpu")
    check_same_weights(again, setup.weights)
    assert isinstance(setup.scorer(), PixelScorer)  # a scorer without reference() travels as it is
    edit = compute_edit(model, EditRequest(concepts=("van gogh",), targets=("a painting",)), method="quickfix")
    with edit.applied(model):
        edited = WorkerSetup.of(model, PixelScorer())
    with pytest.raises(DifflocError, match="differs from the caller's at text_encoder"):
        check_same_weights(again, edited.weights)


def test_workers_read_pickled_weights_only_where_the_caller_allowed_them(tmp_path, tiny_clip_dir):
    """A model or CLIP directory read with ``allow_pickle`` (``--allow-bin``) is read the same way by workers;
    one read without it keeps refusing pickles in workers too."""
    from diffloc.eval.scorers import ClipScorer
    from diffloc.models.registry import load
    from diffloc.models.tiny import build_tiny_pipeline

    build_tiny_pipeline("sd1").save_pretrained(tmp_path, safe_serialization=False)
    model = load(tmp_path, allow_pickle=True)
    ref = ModelRef.of(model)
    assert dict(ref.options)["allow_pickle"] is True
    check_same_weights(ref.load("cpu"), model.weight_sums())
    assert dict(ModelRef.of(load("shapesworld")).options)["allow_pickle"] is False
    for allowed in (False, True):
        rebuilt = WorkerSetup.of(model, ClipScorer.from_dir(tiny_clip_dir, allow_pickle=allowed)).scorer()
        assert rebuilt.allow_pickle is allowed


def test_what_workers_cannot_rebuild_is_refused(tiny_sd1, tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    from diffloc.eval.scorers import ClipScorer, DetectorScorer

    with pytest.raises(ConfigError, match="not from a pipeline object"):
        ModelRef.of(tiny_sd1)
    from_dir = ClipScorer.from_dir(tiny_clip_dir)
    rebuilt = WorkerSetup.of(_named(tiny_sd1), from_dir).scorer()
    assert isinstance(rebuilt, ClipScorer) and rebuilt.directory == from_dir.directory
    in_memory = ClipScorer(CLIPModel.from_pretrained(tiny_clip_dir), AutoTokenizer.from_pretrained(tiny_clip_dir))
    with pytest.raises(ConfigError, match=r"ClipScorer\.from_dir"):
        WorkerSetup.of(_named(tiny_sd1), in_memory)
    assert DetectorScorer().reference() is DetectorScorer


def _named(model):
    """The same model as if loaded by name (tests reuse the session's tiny pipeline)."""
    from dataclasses import replace

    return replace(model, source="tiny-sd1")


def test_cli_shards_then_assembly(tmp_path, tiny_clip_dir, capsys):
    from diffloc.cli.main import main

    args = ["locogen", "--model", "tiny-sd1", "--prompt", PROMPTS[0], "--target", "a painting", "--attribute",
            "van gogh style", "--clip", str(tiny_clip_dir), "--window", "14", "--seeds", "0", "1", "--steps", "2",
            "--guidance", "5", "--max-batch", "16", "--bootstrap", "0"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "shards"), "--shard", "0/2"]) == 0
    said = capsys.readouterr().out
    assert "shard 0/2 computed 1 of the sweep's 2 items" in said and "rerun without --shard" in said
    assert not (tmp_path / "shards" / "result.json").exists()
    assert main([*args, "--out", str(tmp_path / "shards"), "--shard", "1/2"]) == 0
    assert main([*args, "--out", str(tmp_path / "shards")]) == 0
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    from diffloc.tracing.results import WindowResult

    sharded, single = WindowResult.load(tmp_path / "shards"), WindowResult.load(tmp_path / "single")
    np.testing.assert_array_equal(sharded.scores, single.scores)
    assert sharded.meta["items_computed"] == 0 and sharded.meta["items_reused"] == 2


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--shard", "2/2"], "shard 2/2 is out of range"), (["--ray-workers", "2"], "--ray-workers applies with --ray"),
     (["--shard", "0/2", "--ray"], "not allowed with argument")],
)  # fmt: skip
def test_cli_scale_out_errors_are_one_line(tmp_path, capsys, extra, words):
    from diffloc.cli.main import main

    args = ["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPTS[0], "--subject", "van gogh",
            "--attribute", "x", "--out", str(tmp_path), *extra]  # fmt: skip
    try:
        code = main(args)
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and words in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "items").exists()


def test_ray_missing_is_a_one_line_error_naming_the_extra(tmp_path, capsys, monkeypatch):
    from diffloc.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPTS[0], "--subject", "van gogh",
                 "--attribute", "x", "--out", str(tmp_path), "--ray"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == (
        'diffloc: error: --ray needs Ray, which is not installed here; install it with pip install "diffloc[ray]"'
    )


def test_a_model_directory_reaches_workers_by_its_absolute_path(tiny_sd1, tmp_path, monkeypatch):
    from dataclasses import replace

    (tmp_path / "my-sd").mkdir()
    monkeypatch.chdir(tmp_path)
    assert ModelRef.of(replace(tiny_sd1, source="my-sd")).source == str(tmp_path / "my-sd")
    assert ModelRef.of(replace(tiny_sd1, source="shapesworld")).source == "shapesworld"
