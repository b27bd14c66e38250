"""Benchmark: tracing and LocoGen, reference-style loops vs diffloc, measured side by side in one run.

Run: ``python bench/trace_speed.py [--model shapesworld] [--steps 20] [--threads 2]``

* **P1** full UNet causal trace of one (prompt, seed): the reference-style loop (one generation per
  restored site, each with its own clean run, text re-encoded per call) vs :func:`causal_trace`.
* **P2** :func:`causal_trace` vs the same number of UNet rows run as plain batched generations with no hooks
  (the engine's overhead; target <= 1.15x).
* **P3** LocoGen sweep (windows of 2): reference-style (one generation per window; the 16 per-layer prompts
  plus c and "" encoded per image, and every to_k/to_v hook copying its weight and recomputing E·Wᵀ at every
  step) vs :func:`locogen`.
Peak RSS is sampled per arm. Targets from the issue: P1 >= 10x, P2 <= 1.15x, P3 >= 10x.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import psutil
import torch
import torch.nn.functional as F

from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.hooks import patch
from diffloc.engine.interventions import CorruptTokens, Restore, Run
from diffloc.models.registry import load
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.corruption import embedding_noise
from diffloc.tracing.locogen import locogen, windows_for


class ImageMeanScorer:
    """Cheap stand-in scorer so the benchmark times generation, not scoring (both arms score alike)."""

    name = "bench-mean"

    def score(self, images, texts):
        return images.mean(dim=(1, 2, 3))

    def check(self, text):
        return None


def measured(fn):
    """(seconds, peak RSS in MiB) of one call, RSS sampled every 20 ms."""
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        stop.set()
        thread.join()
    return elapsed, peak[0] / 2**20


def reference_trace(model, prompt, subject_range, noise, sites, gen):
    corrupt = CorruptTokens(positions=subject_range, std=noise)
    for site in sites:  # one generation per site, its own clean run, text encoded again each call
        generate_runs(
            model,
            [Run(prompt=prompt), Run(prompt=prompt, interventions=(corrupt, Restore(sites=(site,), source=0)))],
            config=gen,
        )


def plain_rows(model, prompt, n_runs, max_batch, gen):
    for start in range(0, n_runs, max_batch):
        generate_runs(model, [Run(prompt=prompt)] * min(max_batch, n_runs - start), config=gen)


def reference_locogen(model, prompt, target, windows, gen):
    pipe, adapter = model.pipe, model.adapter
    xattn = [s.name for s in model.sites.select("unet.xattn.*")]
    for window in windows:
        per_layer = [target if name in window else prompt for name in xattn]
        embeds = {name: adapter.encode(pipe, [p]).hidden[0] for name, p in zip(xattn, per_layer, strict=True)}
        adapter.encode(pipe, [prompt]), adapter.encode(pipe, [""])  # c and "" as the script encodes them

        def make(name, embeds=embeds):
            def hook(module, args, kwargs, output):
                weight = module.weight.detach().clone()  # the script copies the weight in every call
                out = output.clone()
                out[out.shape[0] // 2 :] = F.linear(embeds[name], weight)  # conditional half
                return out

            return hook

        hooks = {f"{name}.{p}": make(name) for name in xattn for p in ("k", "v")}
        with patch(model, outputs=hooks):
            generate_runs(model, [Run(prompt=prompt)], config=gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapesworld")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model)
    prompt, subject, target = "a red circle in the style of van goo", "van goo", "a red circle in a plain style"
    if args.model.startswith("tiny-"):
        prompt, subject, target = "a house in the style of van gogh", "van gogh", "a painting"
    gen = GenerationConfig(steps=args.steps, guidance=7.5)
    config = TraceConfig(seeds=(0,), steps=args.steps, guidance=7.5, max_batch=args.max_batch, bootstrap=0)
    sites = [s.name for s in model.sites.select("unet.*")]
    subject_range = model.adapter.find_subject(model.pipe, prompt, subject)
    noise = embedding_noise(model, config)
    scorer = ImageMeanScorer()
    generate_runs(model, [Run(prompt=prompt)], config=GenerationConfig(steps=1))  # warm-up

    ref_t, ref_m = measured(lambda: reference_trace(model, prompt, subject_range, noise, sites, gen))
    ours_t, ours_m = measured(lambda: causal_trace(model, prompt, subject, "x", scorer=scorer, config=config))
    n_runs = len(sites) + 2 + (len(sites) + 1) // (args.max_batch - 1)  # clean repeats once per extra batch
    plain_t, plain_m = measured(lambda: plain_rows(model, prompt, n_runs, args.max_batch, gen))
    lg_config = LocoGenConfig(
        seeds=(0,), steps=args.steps, guidance=7.5, max_batch=args.max_batch, window=2, bootstrap=0
    )
    windows = windows_for(model, lg_config)
    lref_t, lref_m = measured(lambda: reference_locogen(model, prompt, target, windows, gen))
    lours_t, lours_m = measured(lambda: locogen(model, prompt, target, "x", scorer=scorer, config=lg_config))

    print(f"model {args.model} ({model.family}), {len(sites)} UNet sites, {len(windows)} LocoGen windows, "
          f"{args.steps} steps, CFG, {args.threads} thread(s), max batch {args.max_batch} runs")  # fmt: skip
    print(f"{'':4} {'arm':<46} {'seconds':>9} {'peak RSS MiB':>13}")
    rows = [
        ("P1", "reference-style trace (1 generation / site)", ref_t, ref_m),
        ("P1", "diffloc causal_trace", ours_t, ours_m),
        ("P2", f"plain batched generation, {n_runs} runs, no hooks", plain_t, plain_m),
        ("P3", "reference-style LocoGen (1 generation / window)", lref_t, lref_m),
        ("P3", "diffloc locogen", lours_t, lours_m),
    ]
    for tag, name, seconds, rss in rows:
        print(f"{tag:4} {name:<46} {seconds:9.2f} {rss:13.0f}")
    print(f"P1 speed-up        {ref_t / ours_t:6.2f}x   (target >= 10x)")
    print(f"P2 trace overhead  {ours_t / plain_t:6.2f}x   (target <= 1.15x)")
    print(f"P3 speed-up        {lref_t / lours_t:6.2f}x   (target >= 10x)")


if __name__ == "__main__":
    main()
