"""Site table of a diffusers ``UNet2DConditionModel``, in forward execution order.

The order is derived from how diffusers' blocks run, not from ``named_modules()`` (which lists
``up_blocks`` before ``mid_block`` and each block's attentions before its resnets) and never from sorting
names as strings (which breaks at two-digit indices). Within a block, resnet ``i`` runs before attention
``i``; in a mid block (one more resnet than attentions) resnet 0 runs first, then attention ``i`` and
resnet ``i + 1``. Inside a ``Transformer2DModel`` each transformer block runs ``attn1``, ``attn2``,
``ff``. A test checks this table against a recording forward pass for every family.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from diffloc.sites import Site, SiteKind


def _blocks(unet: Any) -> Iterator[tuple[str, nn.Module]]:
    for i, block in enumerate(unet.down_blocks):
        yield f"down_blocks.{i}", block
    if getattr(unet, "mid_block", None) is not None:
        yield "mid_block", unet.mid_block
    for i, block in enumerate(unet.up_blocks):
        yield f"up_blocks.{i}", block


def _block_children(prefix: str, block: nn.Module) -> Iterator[tuple[str, nn.Module, bool]]:
    """(path, module, is_resnet) of a block's resnets and attentions in execution order."""
    resnets = list(getattr(block, "resnets", []) or [])
    attentions = list(getattr(block, "attentions", []) or [])
    if attentions and len(resnets) == len(attentions) + 1:  # mid-block layout
        yield f"{prefix}.resnets.0", resnets[0], True
        for i, attn in enumerate(attentions):
            yield f"{prefix}.attentions.{i}", attn, False
            yield f"{prefix}.resnets.{i + 1}", resnets[i + 1], True
        return
    for i, res in enumerate(resnets):
        yield f"{prefix}.resnets.{i}", res, True
        if i < len(attentions):
            yield f"{prefix}.attentions.{i}", attentions[i], False


def _resolutions(unet: Any) -> dict[str, int]:
    """Latent side length each block runs at, for the model's default sample size."""
    size = unet.config.sample_size
    side = int(size[0] if isinstance(size, list | tuple) else size)
    out: dict[str, int] = {}
    for i, block in enumerate(unet.down_blocks):
        out[f"down_blocks.{i}"] = side
        if getattr(block, "downsamplers", None):
            side //= 2
    out["mid_block"] = side
    for i, block in enumerate(unet.up_blocks):
        out[f"up_blocks.{i}"] = side
        if getattr(block, "upsamplers", None):
            side *= 2
    return out


def unet_sites(unet: Any, *, kv_names: tuple[str, str] = ("to_k", "to_v")) -> list[Site]:
    """All UNet sites (res, sattn, xattn + .k/.v, ff) in execution order.

    Args:
        unet: a ``UNet2DConditionModel``.
        kv_names: attribute names of the text key/value projections inside a cross-attention module
            (``to_k``/``to_v``; DeepFloyd IF: ``add_k_proj``/``add_v_proj``).
    """
    counters = {kind: 0 for kind in SiteKind}
    sites: list[Site] = []
    resolution = _resolutions(unet)

    def add(kind: SiteKind, path: str, block: str, name: str | None = None) -> None:
        idx = counters[kind]
        counters[kind] += 1
        sites.append(
            Site(
                name=name or f"unet.{kind.value}.{idx}",
                component="unet",
                module_path=path,
                kind=kind,
                index=idx,
                block=block,
                resolution=resolution.get(block, 0),
            )
        )

    def add_xattn(path: str, module: nn.Module, block: str) -> None:
        idx = counters[SiteKind.XATTN]
        add(SiteKind.XATTN, path, block)
        k_name, v_name = kv_names
        if getattr(module, k_name, None) is not None:
            add(SiteKind.XATTN_K, f"{path}.{k_name}", block, f"unet.xattn.{idx}.k")
            add(SiteKind.XATTN_V, f"{path}.{v_name}", block, f"unet.xattn.{idx}.v")

    for block_path, block in _blocks(unet):
        for path, module, is_res in _block_children(block_path, block):
            if is_res:
                add(SiteKind.RES, path, block_path)
                continue
            transformer_blocks = getattr(module, "transformer_blocks", None)
            if transformer_blocks is None:
                # A bare attention module (DeepFloyd IF's SimpleCrossAttn blocks): self + text jointly.
                add_xattn(path, module, block_path)
                continue
            for t, tb in enumerate(transformer_blocks):
                tb_path = f"{path}.transformer_blocks.{t}"
                add(SiteKind.SATTN, f"{tb_path}.attn1", block_path)
                if getattr(tb, "attn2", None) is not None:
                    add_xattn(f"{tb_path}.attn2", tb.attn2, block_path)
                add(SiteKind.FF, f"{tb_path}.ff", block_path)
    return sites
