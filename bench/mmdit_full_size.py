"""Benchmark: SD3-medium and FLUX.1-dev transformers at full size — sites and memory, random weights.

Run: ``python bench/mmdit_full_size.py [--device cpu|cuda] [--size N] [--families sd3,flux] [--dtype bfloat16]
[--sites-only] [--max-blocks K]``

For each family the published transformer config (:mod:`diffloc.models.full_configs`) is built on the ``meta``
device for its site table (counts per kind, printed), then, where its weights fit in the device's free memory,
with random weights in ``--dtype`` on ``--device``: one forward pass of a batch of ``--rows`` rows at ``--size``
pixels (random text stream of the pipeline's length: SD3 77 + 256 tokens, FLUX 512) is timed and its peak
memory (above the weights) printed beside the per-row estimate ``--max-batch auto`` plans with
(:func:`diffloc.models.mmdit.mmdit_row_elements`). The text encoders and the VAE are not built (T5-XXL alone is
4.7 B parameters); the transformer is what a trace or an edit runs at every step.

``--max-blocks K`` keeps the published width, heads and every other setting but builds only the first ``K`` blocks
of each stack (FLUX: ``K`` double- and ``K`` single-stream blocks), for a transformer whose weights do not fit
(FLUX.1-dev is 22 GiB in bfloat16). Under ``inference_mode`` each block's activations are freed before the next
block runs, so the forward pass's peak above the weights is one block's working set and does not grow with depth;
the same command at full depth and at ``K`` blocks on SD3-medium shows by how much that holds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from memory_probe import peak_memory

from diffloc.models.flux import FLUX_T5_TOKENS
from diffloc.models.full_configs import full_size_transformer_config
from diffloc.models.full_size import _seeded_init
from diffloc.models.memory import free_bytes
from diffloc.models.mmdit import mmdit_row_elements
from diffloc.models.mmdit_sites import mmdit_sites
from diffloc.models.placement import DTYPES, resolve_device
from diffloc.models.sd3 import SD3_T5_TOKENS

CLASSES: dict[str, Any] = {"sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}
TEXT_TOKENS = {"sd3": 77 + SD3_T5_TOKENS, "flux": FLUX_T5_TOKENS}
PACK = {"sd3": 1, "flux": 2}  # FLUX packs 2x2 latents into one token before its transformer
FIT = 0.85


def _inputs(family: str, config: dict[str, Any], rows: int, size: int, device: torch.device, dtype: torch.dtype):
    latent = size // 8
    text = torch.randn(rows, TEXT_TOKENS[family], config["joint_attention_dim"], device=device, dtype=dtype)
    pooled = torch.randn(rows, config["pooled_projection_dim"], device=device, dtype=dtype)
    if family == "sd3":
        x = torch.randn(rows, config["in_channels"], latent, latent, device=device, dtype=dtype)
        t = torch.full((rows,), 500.0, device=device)
        return {"hidden_states": x, "encoder_hidden_states": text, "pooled_projections": pooled, "timestep": t}
    side = latent // 2
    x = torch.randn(rows, side * side, config["in_channels"], device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    img_ids = torch.cat([torch.zeros(side * side, 1), grid], 1).to(device=device, dtype=dtype)
    txt_ids = torch.zeros(TEXT_TOKENS[family], 3, device=device, dtype=dtype)
    return {"hidden_states": x, "encoder_hidden_states": text, "pooled_projections": pooled,
            "timestep": torch.full((rows,), 0.5, device=device), "img_ids": img_ids, "txt_ids": txt_ids,
            "guidance": torch.full((rows,), 3.5, device=device)}  # fmt: skip


def run(
    family: str,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    rows: int,
    forward: bool = True,
    max_blocks: int | None = None,
) -> None:
    config = full_size_transformer_config(family)
    if max_blocks is not None:
        depth = {key: min(config[key], max_blocks) for key in ("num_layers", "num_single_layers") if key in config}
        print(f"{family}: published width, {depth} blocks (--max-blocks {max_blocks})")
        config.update(depth)
    with torch.device("meta"):
        net = CLASSES[family].from_config(config)
    sites = mmdit_sites(net)
    params = sum(p.numel() for p in net.parameters())
    kinds = Counter(s.kind.value for s in sites)
    print(f"{family}: {len(sites)} denoiser sites ({dict(sorted(kinds.items()))}); {params / 1e9:.2f} B parameters")
    weights = params * torch.finfo(dtype).bits // 8
    if not forward:
        return
    free = free_bytes(device)
    if free is not None and weights > FIT * free:
        print(f"  skipped the forward pass: {weights / 2**30:.1f} GiB of weights, {free / 2**30:.1f} GiB free")
        return
    start = time.perf_counter()
    net = net.to(dtype=dtype).to_empty(device=device)
    _seeded_init(net, 0)
    net.eval()
    print(f"  built on {device} in {dtype}: {weights / 2**30:.2f} GiB in {time.perf_counter() - start:.1f} s")
    inputs = _inputs(family, config, rows, size, device, dtype)
    patch = config["patch_size"] * PACK[family]
    image_tokens = (size // 8 // patch) ** 2
    estimate = rows * mmdit_row_elements(config, image_tokens, TEXT_TOKENS[family]) * torch.finfo(dtype).bits // 8
    with torch.inference_mode():
        net(**inputs)  # warm-up: kernels and workspaces
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with peak_memory(device) as peak:
            net(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    print(
        f"  forward, {rows} rows at {size} px ({image_tokens} image + {TEXT_TOKENS[family]} text tokens): "
        f"{seconds:.2f} s; peak {peak.mib:.0f} MiB, estimate {estimate / 2**20:.0f} MiB "
        f"(measured/estimate {peak.mib * 2**20 / estimate:.2f})"
    )
    del net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    parser.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default: 1024 on a GPU, 256 on a CPU)"
    )
    parser.add_argument("--families", default="sd3,flux")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--rows", type=int, default=2, help="batch rows of the forward pass (default 2: one CFG pair)")
    parser.add_argument("--sites-only", action="store_true", help="print the site tables only (no weights built)")
    parser.add_argument(
        "--max-blocks", type=int, default=None, help="build only the first K blocks of each stack (default: all)"
    )
    args = parser.parse_args(argv)
    if args.max_blocks is not None and args.max_blocks < 1:
        parser.error(f"--max-blocks must be at least 1, got {args.max_blocks}")
    device = resolve_device(args.device)
    size = args.size or (1024 if device.type == "cuda" else 256)
    print(
        f"torch {torch.__version__} on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    for family in args.families.split(","):
        run(family, device, DTYPES[args.dtype], size, args.rows, not args.sites_only, args.max_blocks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
