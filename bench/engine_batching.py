"""Benchmark: N interventions packed into one batch vs the same N as separate generations.

Run: ``python bench/engine_batching.py [--n 16] [--steps 20] [--repeats 3]``

Both arms run here, side by side, on a tiny SD-1 model (real SD-1.5 block structure, random weights), for
two workloads:

* **trace** — causal tracing: the subject tokens are corrupted and each intervention restores one UNet
  site from the clean run. A separate generation must carry its own clean run (as the reference loop
  does); the batch carries the clean run once for all N.
* **ablate** — each intervention ablates 8 channels of a different site and needs no source row, so a
  separate generation is a plain batch of one. Batching then only amortizes per-call overhead; on a CPU,
  where the UNet is compute-bound, expect less than for tracing.

Prints best-of-repeats wall times and ratios; the issue's target is >= 5x for N = 16.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.interventions import CorruptTokens, Restore, Run, SetChannels
from diffloc.models.registry import load


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load("tiny-sd1")
    config = GenerationConfig(steps=args.steps, guidance=7.5)
    sites = [s.name for s in model.sites if s.component == "unet" and s.kind.value in ("res", "sattn", "xattn", "ff")]
    prompt = "a painting of a house in the style of van gogh"
    chosen = [sites[(i * len(sites)) // args.n] for i in range(args.n)]
    corrupt = CorruptTokens(positions=model.adapter.find_subject(model.pipe, prompt, "van gogh"), std=0.5)
    clean = Run(prompt=prompt, seed=0)
    traced = [Run(prompt=prompt, seed=0, interventions=(corrupt, Restore(sites=(s,), source=0))) for s in chosen]
    ablated = [
        Run(prompt=prompt, seed=0, interventions=(SetChannels(site=s, channels=tuple(range(8))),)) for s in chosen
    ]
    workloads = {
        "trace": (
            lambda: generate_runs(model, [clean, *traced], config=config)[1:],
            lambda: torch.cat([generate_runs(model, [clean, r], config=config)[1:] for r in traced]),
        ),
        "ablate": (
            lambda: generate_runs(model, ablated, config=config),
            lambda: torch.cat([generate_runs(model, [r], config=config) for r in ablated]),
        ),
    }
    print(f"model: tiny-sd1 (SD-1.5 block structure), {args.steps} steps, CFG 7.5, {args.threads} thread(s)")
    print(f"N = {args.n} interventions at {len(set(chosen))} distinct UNet sites")
    print(f"{'workload':<8} {'separate (s)':>13} {'batched (s)':>12} {'speed-up':>9}  max |diff|")
    for name, (batched, separate) in workloads.items():
        max_diff = (batched() - separate()).abs().max().item()  # warm-up and equivalence check
        t_batched = best_of(batched, args.repeats)
        t_separate = best_of(separate, args.repeats)
        print(f"{name:<8} {t_separate:13.3f} {t_batched:12.3f} {t_separate / t_batched:8.2f}x  {max_diff:.1e}")
    print("target: >= 5x for N = 16 (issue 2)")


if __name__ == "__main__":
    main()
