"""Benchmark: one causal-trace sweep computed in this process vs by Ray workers, side by side in one run.

Run: ``python bench/scale_out.py [--ray ADDRESS] [--ray-workers N] [--model shapesworld] [--device cpu]
[--prompts 4] [--seeds 2] [--steps 20] [--sites "unet.xattn.*"] [--threads 2]``

The sweep is a UNet trace of ``--prompts`` ShapesWorld style prompts × ``--seeds`` seeds (one item each),
scored with the shipped detectors. Arm 1 computes it in this process (``--threads`` torch threads, the model on
``--device``); arm 2 hands the same items to Ray workers (one GPU each where the cluster has GPUs, else one
CPU each), counting Ray's start, every worker's model load and the items' round trip through the output
directory. Printed: both wall times, the speed-up, and whether the two results are identical (they must be).
With k GPUs and many more items than workers, expect close to k×; on a 2-core CPU the workers share the
cores the single process used, so expect about 1× or less.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

from diffloc.eval.scorers import DetectorScorer
from diffloc.models.registry import load
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.ray_executor import RayExecutor
from diffloc.world.vocab import STYLES

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", default=None, metavar="ADDRESS", help="Ray cluster to join (default: start here)")
    parser.add_argument("--ray-workers", type=int, default=None, help="most workers (default: per GPU, else CPU)")
    parser.add_argument("--model", default="shapesworld")
    parser.add_argument("--device", default="cpu", help="device of the single-process arm (workers use a GPU each)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sites", default="unet.xattn.*")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    style = next(iter(STYLES))
    prompts = [f"a red {shape} in the style of {style}" for shape in SHAPES][: args.prompts]
    config = TraceConfig(seeds=tuple(range(args.seeds)), steps=args.steps, guidance=4.0, max_batch=32, bootstrap=0)
    model = load(args.model, device=args.device)
    scorer = DetectorScorer()
    sweep = {"scorer": scorer, "sites": args.sites, "config": config}
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        single = causal_trace(model, prompts, style, f"in the style of {style}", out=f"{scratch}/one", **sweep)
        one = time.perf_counter() - start
        start = time.perf_counter()
        with RayExecutor(args.ray, workers=args.ray_workers) as executor:
            spread = causal_trace(model, prompts, style, f"in the style of {style}", out=f"{scratch}/ray",
                                  executor=executor, **sweep)  # fmt: skip
        ray_time = time.perf_counter() - start
    items = len(prompts) * args.seeds
    print(f"sweep: {items} items x {len(single.labels) + 2} runs, {args.steps} steps, model {args.model}")
    arms = [(f"this process ({args.device}, {args.threads} threads)", one), ("Ray workers", ray_time)]
    for name, seconds in arms:
        print(f"  {name:<36} {seconds:8.1f} s")
    print(f"  speed-up {one / ray_time:.2f}x")
    print(f"  results identical: {bool(np.array_equal(single.scores, spread.scores))}")


if __name__ == "__main__":
    main()
