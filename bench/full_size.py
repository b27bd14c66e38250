"""Benchmark: what full size costs — SD-1.5, SD-XL and PixArt-α with random weights, every step a user runs.

Run: ``python bench/full_size.py [--device cpu|cuda] [--size N] [--families sd1,sdxl,pixart]
[--dtypes float32,bfloat16]`` (PixArt-α is not in the default families: with its T5-XXL encoder its weights are
20.3 GiB in float32 and 10.2 GiB in bfloat16)

Both pipelines are built offline from their published configs (:mod:`diffloc.models.full_size`: real
module structure and parameter counts, random weights), so no checkpoint is downloaded. For each family
and dtype it runs and times:

* **build** the pipeline (its weights' size is printed);
* **sites**: the site table;
* **denoiser forward** (the UNet, PixArt's transformer), one batch of 8 rows (4 runs with classifier-free
  guidance, as below), **VAE decode** of 4 images, and **generate** those 4 runs for 2 steps: peak memory
  measured against the estimate ``--max-batch auto`` plans with (:mod:`diffloc.models.memory`); the ratio must
  stay within 30 %;
* **trace**: a 2-step causal trace of 2 cross-attention sites (clean, corrupted and 2 restored runs in one batch);
* **quickfix** (Diff-QuickFix) and **locoedit** (LocoEdit on 2 cross-attention layers), computed.

Peak memory is tensor memory allocated by the step above what was held before it (weights excluded): the
CUDA allocator's count on a GPU, an exact count of live tensor storage on the CPU (``memory_probe``). The
process's peak resident memory is printed at the end. On the CPU the default image is 256 px (``--size``
gives the real 512/1024) so both families finish in minutes; the size used is printed. A family/dtype
whose weights would not fit in the free memory is skipped with the reason.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch
from memory_probe import peak_memory, peak_rss_mib
from trace_speed import ImageMeanScorer

from diffloc.editing import EditRequest, LocoEditConfig, compute_edit
from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.interventions import Run
from diffloc.models.full_size import build_full_size_pipeline
from diffloc.models.memory import estimate, free_bytes
from diffloc.models.placement import DTYPES, resolve_device
from diffloc.models.registry import load
from diffloc.sites import SiteKind
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig

#: Full resolution of each family, used on a GPU.
NATIVE_SIZE = {"sd1": 512, "sdxl": 1024, "pixart": 1024}
CPU_SIZE = 256
RUNS = 4  # clean, corrupted and two restored runs: one trace item of 2 sites
STEPS = 2
PROMPT = "a photo of a cat on a sofa"
#: weights plus build-time copies must fit in this share of the free memory
FIT = 0.85


def weight_bytes(family: str, dtype: torch.dtype) -> int:
    """Bytes of a full-size pipeline's weights, counted on the meta device."""
    with torch.device("meta"):
        pipe = build_full_size_pipeline(family, dtype=dtype, device="meta")
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def row(family: str, dtype: str, step: str, seconds: float, peak_mib: float | None, estimate_mib: float | None) -> None:
    peak = "" if peak_mib is None else f"{peak_mib:9.0f}"
    est = "" if estimate_mib is None else f"{estimate_mib:9.0f}"
    ratio = f"{estimate_mib / peak_mib:6.2f}" if estimate_mib and peak_mib else ""
    print(f"{family:<5} {dtype:<9} {step:<34} {seconds:8.1f} {peak:>9} {est:>9} {ratio:>6}", flush=True)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB) of one call."""
    start = time.perf_counter()
    with peak_memory(device) as peak:
        result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start, peak.mib


def bench(family: str, dtype_name: str, device: torch.device, size: int) -> list[float]:
    """Run every step of one family in one dtype; return the estimate/measured ratios."""
    dtype = DTYPES[dtype_name]
    needed = weight_bytes(family, dtype)
    free = free_bytes(device)
    if needed > FIT * free:
        print(f"{family:<5} {dtype_name:<9} skipped: weights {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
        return []
    start = time.perf_counter()
    pipe = build_full_size_pipeline(family, dtype=dtype, device=device)
    model = load(pipe)
    step = f"build (weights {needed / 2**30:.2f} GiB)"
    print(f"{family:<5} {dtype_name:<9} {step:<34} {time.perf_counter() - start:8.1f}", flush=True)
    sites, seconds, _ = timed(device, lambda: model.adapter.build_sites(model.pipe))
    row(family, dtype_name, f"sites ({len(sites)})", seconds, None, None)

    est = estimate(model, height=size, width=size)
    ratios = []
    rows = 2 * RUNS
    cond = model.adapter.encode(model.pipe, [PROMPT] * rows)
    channels, lat_h, lat_w = model.adapter.latent_shape(model.pipe, size, size)
    latents = torch.randn(rows, channels, lat_h, lat_w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.inference_mode():
        kwargs, t = model.adapter.denoiser_kwargs(cond), torch.tensor(999, device=device)
        call = lambda: model.adapter.predict_noise(model.pipe, latents, t, kwargs)  # noqa: E731
        _, seconds, peak = timed(device, call)
        row(family, dtype_name, f"denoiser forward, {rows} rows", seconds, peak, rows * est.row_bytes / 2**20)
        ratios.append(rows * est.row_bytes / 2**20 / peak)
        decode = lambda: model.adapter.decode(model.pipe, latents[:RUNS], batch=RUNS)  # noqa: E731
        _, seconds, peak = timed(device, decode)
        expected = (est.decode_upcast_bytes + RUNS * est.decode_image_bytes) / 2**20
        row(family, dtype_name, f"VAE decode, {RUNS} images", seconds, peak, expected)
        ratios.append(expected / peak)
    config = GenerationConfig(steps=STEPS, guidance=7.5, height=size, width=size)
    runs = [Run(prompt=PROMPT, seed=i) for i in range(RUNS)]
    _, seconds, peak = timed(device, lambda: generate_runs(model, runs, config=config))
    expected = est.batch_bytes(RUNS, cfg=True) / 2**20
    row(family, dtype_name, f"generate {RUNS} runs, {STEPS} steps", seconds, peak, expected)
    ratios.append(expected / peak)

    xattn = [s.name for s in model.sites.denoiser_sites(SiteKind.XATTN)]
    picked = [xattn[len(xattn) // 2], xattn[len(xattn) // 2 + 1]]
    trace = TraceConfig(seeds=(0,), steps=STEPS, guidance=7.5, max_batch=16, height=size, width=size, bootstrap=0)
    scorer = ImageMeanScorer()
    _, seconds, peak = timed(
        device, lambda: causal_trace(model, PROMPT, "cat", "cat", scorer=scorer, sites=picked, config=trace)
    )
    row(family, dtype_name, f"trace, {STEPS} steps, 2 sites", seconds, peak, None)
    request = EditRequest(concepts=("cat",), targets=("dog",))
    _, seconds, peak = timed(device, lambda: compute_edit(model, request, method="quickfix"))
    row(family, dtype_name, "quickfix", seconds, peak, None)
    loco = LocoEditConfig(sites=",".join(picked))
    _, seconds, peak = timed(device, lambda: compute_edit(model, request, method="locoedit", config=loco))
    row(family, dtype_name, f"locoedit ({', '.join(picked)})", seconds, peak, None)
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--size", type=int, default=None, help=f"image side in px (default {CPU_SIZE} on cpu, native on cuda)"
    )
    parser.add_argument("--families", default="sd1,sdxl", help="comma-separated: sd1, sdxl, pixart (default sd1,sdxl)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: all cores)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for name in dtypes:
        if name not in DTYPES:
            parser.error(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    for family in families:
        if family not in NATIVE_SIZE:
            parser.error(f"unknown family {family!r}; valid: {', '.join(NATIVE_SIZE)}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# full-size bench: device {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"{'family':<5} {'dtype':<9} {'step':<34} {'seconds':>8} {'peak MiB':>9} {'est. MiB':>9} {'est/pk':>6}")
    ratios: list[float] = []
    for family in families:
        size = args.size or (NATIVE_SIZE[family] if device.type == "cuda" else CPU_SIZE)
        note = " (the cpu default; --size N for the native size)" if size != NATIVE_SIZE[family] else ""
        print(f"# {family} at {size}x{size} px{note}")
        for dtype in dtypes:
            ratios += bench(family, dtype, device, size)
    print(f"# peak resident memory of the process: {peak_rss_mib():.0f} MiB")
    worst = max((abs(r - 1) for r in ratios), default=0.0)
    print(f"# memory estimate vs measured: worst {worst:.0%} off (target <= 30%): {'PASS' if worst <= 0.3 else 'FAIL'}")
    return 0 if worst <= 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())
