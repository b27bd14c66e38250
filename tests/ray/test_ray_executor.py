"""Sweeps on a local Ray (2 CPUs): identical to one process; a killed worker or driver loses and repeats nothing.

Run by CI's Ray step (``pip install -e ".[ray]"`` then ``pytest -m ray tests/ray``); skipped without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from diffloc.eval.scorers import ClipScorer  # noqa: E402
from diffloc.models.registry import load  # noqa: E402
from diffloc.tracing.causal import causal_trace  # noqa: E402
from diffloc.tracing.config import LocoGenConfig, TraceConfig  # noqa: E402
from diffloc.tracing.locogen import locogen  # noqa: E402
from diffloc.tracing.ray_executor import RayExecutor  # noqa: E402
from diffloc.tracing.results import TraceResult  # noqa: E402
from diffloc.tracing.store import Job, run_jobs  # noqa: E402

PROMPTS = ["a house in the style of van gogh", "van gogh painting of a tree"]
SUITE = """
seeds: [0, 1]
steps: 2
guidance: 5.0
max_batch: 3
unrelated: [a red circle, a blue square]
cases:
  - name: style-vg
    kind: style
    concept: van gogh
    target: a painting
    mode: remove
    attribute: van gogh style
    prompts: [a house in the style of van gogh, a tree in the style of van gogh]
    heldout: [van gogh painting of a boat]
    neighbours:
      - {prompt: a house in the style of monet, attribute: monet style}
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    # Workers import this module's helpers by value: tests/ is not on their path.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return load("tiny-sd1")  # by name: each worker builds the same seeded model


def test_trace_locogen_and_eval_on_ray_equal_one_process(local_ray, model, tiny_clip_dir, tmp_path):
    from diffloc.editing import EditRequest, compute_edit
    from diffloc.eval.suite import evaluate, load_suite

    scorer = ClipScorer.from_dir(tiny_clip_dir)
    trace = {"scorer": scorer, "sites": "unet.xattn.*", "config": TraceConfig(seeds=(0, 1), steps=2, guidance=5.0,
                                                                              max_batch=9)}  # fmt: skip
    window = {"scorer": scorer, "config": LocoGenConfig(seeds=(0, 1), steps=2, guidance=5.0, max_batch=16, window=4)}
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "suite.yaml")
    edit = compute_edit(model, EditRequest(concepts=("van gogh",), targets=("a painting",)), method="quickfix")
    single_trace = causal_trace(model, PROMPTS, "van gogh", "van gogh style", out=tmp_path / "t1", **trace)
    single_windows = locogen(model, PROMPTS, "a painting", "van gogh style", **window)
    single_eval = evaluate(model, edit, suite, scorer=scorer)
    with RayExecutor() as executor:
        on_ray = causal_trace(model, PROMPTS, "van gogh", "van gogh style", out=tmp_path / "t2", executor=executor,
                              **trace)  # fmt: skip
        windows = locogen(model, PROMPTS, "a painting", "van gogh style", out=tmp_path / "w", executor=executor,
                          **window)  # fmt: skip
        report = evaluate(model, edit, suite, scorer=scorer, out=tmp_path / "e", executor=executor)
    np.testing.assert_array_equal(on_ray.scores, single_trace.scores)
    assert on_ray.items == single_trace.items and on_ray.meta["items_computed"] == 4
    stored = {p.name: json.loads(p.read_text()) for p in (tmp_path / "t1" / "items").glob("*.json")}
    assert stored == {p.name: json.loads(p.read_text()) for p in (tmp_path / "t2" / "items").glob("*.json")}
    np.testing.assert_array_equal(windows.scores, single_windows.scores)
    assert report.cases == single_eval.cases and report.fidelity == single_eval.fidelity
    # 4 prompts x 2 seeds in batches of 3, unedited and edited; 2 unrelated x 2 seeds for fidelity
    assert len(list((tmp_path / "e" / "items").glob("*.json"))) == 3 + 3 + 2


def _item(model, scorer, advance, *, prompt, seed):
    """A small real item: one generated image's score."""
    from diffloc.engine.generate import GenerationConfig, generate

    image = generate(model, prompt, seeds=seed, config=GenerationConfig(steps=2, guidance=5.0))
    advance(1)
    return {"prompt": prompt, "seed": seed, "score": float(scorer.score(image, ["van gogh style"])[0])}


def _killed_once(marker, inner, **kwargs):
    """Kill the worker process computing this item the first time (``kill -9`` mid-item), then compute it."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return inner(**kwargs)


def test_a_worker_killed_mid_item_is_replaced_and_nothing_is_recomputed(local_ray, model, tiny_clip_dir, tmp_path):
    scorer = ClipScorer.from_dir(tiny_clip_dir)
    plain = [Job(spec={"prompt": p, "seed": s}, runs=1, compute=partial(_item, prompt=p, seed=s))
             for p in PROMPTS for s in (0, 1, 2)]  # fmt: skip
    marker = tmp_path / "killed"
    jobs = [Job(j.spec, 1, partial(_killed_once, str(marker), j.compute)) if i == 3 else j for i, j in enumerate(plain)]
    expected, _ = run_jobs(plain, None, model=model, scorer=scorer)
    with RayExecutor(workers=2) as executor:
        items, store = run_jobs(jobs, tmp_path, model=model, scorer=scorer, executor=executor)
        assert marker.is_file() and int(marker.read_text()) != os.getpid()  # a worker really died
        assert items == expected and (store.computed, store.reused) == (6, 0)
        stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "items").glob("*.json")}
        again, store = run_jobs(jobs, tmp_path, model=model, scorer=scorer, executor=executor)
    assert again == expected and (store.computed, store.reused) == (0, 6)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "items").glob("*.json")} == stamps


def _trace_cmd(out, clip_dir, address):
    return [sys.executable, "-m", "diffloc.cli.main", "trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--subject", "van gogh", "--attribute", "van gogh style", "--clip", str(clip_dir),
            "--sites", "unet.xattn.*", "--seeds", "0", "1", "2", "--steps", "3", "--guidance", "5",
            "--max-batch", "9", "--out", str(out), "--ray", address]  # fmt: skip


def _settled(directory, seconds=3.0, limit=60.0):
    """The item files once none has appeared for ``seconds`` (workers of a killed driver are stopped by Ray)."""
    deadline, last, since = time.time() + limit, None, time.time()
    while time.time() < deadline:
        now = {p.name: p.stat().st_mtime_ns for p in directory.glob("*.json")}
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= seconds:
            return now
        time.sleep(0.2)
    pytest.fail("items kept appearing after the driver was killed")


def test_cli_driver_killed_mid_sweep_then_rerun_loses_and_recomputes_nothing(local_ray, model, tiny_clip_dir,
                                                                            tmp_path):  # fmt: skip
    address = local_ray.get_runtime_context().gcs_address  # the CLI joins this test's cluster
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen(_trace_cmd(out, tiny_clip_dir, address), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "items").glob("*.json"))) < 1:
        if proc.poll() is not None:
            pytest.fail("the sweep finished before it could be killed; make it longer")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _settled(out / "items")
    assert 1 <= len(finished) < 6 and not (out / "result.json").exists()
    done = subprocess.run(_trace_cmd(out, tiny_clip_dir, address), env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert all((out / "items" / name).stat().st_mtime_ns == stamp for name, stamp in finished.items())
    resumed = TraceResult.load(out)
    assert resumed.meta["items_reused"] == len(finished) and resumed.meta["items_computed"] == 6 - len(finished)
    config = TraceConfig(seeds=(0, 1, 2), steps=3, guidance=5.0, max_batch=9)
    fresh = causal_trace(model, PROMPTS, "van gogh", "van gogh style", scorer=ClipScorer.from_dir(tiny_clip_dir),
                         sites="unet.xattn.*", config=config)  # fmt: skip
    np.testing.assert_array_equal(resumed.scores, fresh.scores)
