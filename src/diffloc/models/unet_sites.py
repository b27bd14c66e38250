"""Site table of a diffusers ``UNet2DConditionModel``, in forward execution order.

The block structure is data (:class:`UNetBlockTable`, :data:`UNET_BLOCKS`): which containers hold the blocks
in which order, which lists of a block hold its ResNets and attentions, and which modules of a transformer layer
are a site of which kind. :func:`unet_sites` walks a UNet by that table. Another block structure (a diffusion
transformer's) is another table beside this one.

The order is derived from how diffusers' blocks run, not from ``named_modules()`` (which lists
``up_blocks`` before ``mid_block`` and each block's attentions before its resnets) and never from sorting
names as strings (which breaks at two-digit indices). Within a block, resnet ``i`` runs before attention
``i``; in a mid block (one more resnet than attentions) resnet 0 runs first, then attention ``i`` and
resnet ``i + 1``. Inside a ``Transformer2DModel`` each transformer block runs ``attn1``, ``attn2``,
``ff``. A test checks this table against a recording forward pass for every family.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from diffloc.sites import Site, SiteKind


@dataclass(frozen=True, kw_only=True)
class UNetBlockTable:
    """How a UNet's modules map to sites.

    Attributes:
        prefix: first part of every site name (``unet`` gives ``unet.xattn.8``).
        component: pipeline attribute holding the network.
        down, mid, up: attributes holding the down blocks (a list), the mid block (one block or ``None``) and
            the up blocks (a list); they run in this order.
        resnets, attentions: attributes of a block listing its ResNets (kind ``res``) and attentions.
        layers: attribute of an attention listing its transformer layers; an attention without it is one bare
            attention module (DeepFloyd IF), a cross-attention site.
        layer_sites: modules of a transformer layer that are sites, with their kinds, in execution order.
        kv_names: attributes of the text key/value projections inside a cross-attention module (the ``.k`` and
            ``.v`` sub-sites).
        downsamplers, upsamplers: attributes whose presence halves / doubles the resolution after a block.
    """

    prefix: str = "unet"
    component: str = "unet"
    down: str = "down_blocks"
    mid: str = "mid_block"
    up: str = "up_blocks"
    resnets: str = "resnets"
    attentions: str = "attentions"
    layers: str = "transformer_blocks"
    layer_sites: tuple[tuple[str, SiteKind], ...] = (
        ("attn1", SiteKind.SATTN),
        ("attn2", SiteKind.XATTN),
        ("ff", SiteKind.FF),
    )
    kv_names: tuple[str, str] = ("to_k", "to_v")
    downsamplers: str = "downsamplers"
    upsamplers: str = "upsamplers"


#: The table of diffusers' UNet2DConditionModel (SD-1, SD-2, SD-XL; IF overrides ``kv_names``).
UNET_BLOCKS = UNetBlockTable()


def _blocks(unet: Any, table: UNetBlockTable) -> Iterator[tuple[str, nn.Module]]:
    for i, block in enumerate(getattr(unet, table.down)):
        yield f"{table.down}.{i}", block
    if getattr(unet, table.mid, None) is not None:
        yield table.mid, getattr(unet, table.mid)
    for i, block in enumerate(getattr(unet, table.up)):
        yield f"{table.up}.{i}", block


def _block_children(prefix: str, block: nn.Module, table: UNetBlockTable) -> Iterator[tuple[str, nn.Module, bool]]:
    """(path, module, is_resnet) of a block's resnets and attentions in execution order."""
    resnets = list(getattr(block, table.resnets, []) or [])
    attentions = list(getattr(block, table.attentions, []) or [])
    res, att = f"{prefix}.{table.resnets}", f"{prefix}.{table.attentions}"
    if attentions and len(resnets) == len(attentions) + 1:  # mid-block layout
        yield f"{res}.0", resnets[0], True
        for i, attn in enumerate(attentions):
            yield f"{att}.{i}", attn, False
            yield f"{res}.{i + 1}", resnets[i + 1], True
        return
    for i, resnet in enumerate(resnets):
        yield f"{res}.{i}", resnet, True
        if i < len(attentions):
            yield f"{att}.{i}", attentions[i], False


def _resolutions(unet: Any, table: UNetBlockTable) -> dict[str, int]:
    """Latent side length each block runs at, for the model's default sample size."""
    size = unet.config.sample_size
    side = int(size[0] if isinstance(size, list | tuple) else size)
    out: dict[str, int] = {}
    for i, block in enumerate(getattr(unet, table.down)):
        out[f"{table.down}.{i}"] = side
        if getattr(block, table.downsamplers, None):
            side //= 2
    out[table.mid] = side
    for i, block in enumerate(getattr(unet, table.up)):
        out[f"{table.up}.{i}"] = side
        if getattr(block, table.upsamplers, None):
            side *= 2
    return out


def unet_sites(unet: Any, table: UNetBlockTable = UNET_BLOCKS) -> list[Site]:
    """All UNet sites (res, sattn, xattn + .k/.v, ff) in execution order, as ``table`` describes them.

    Args:
        unet: a ``UNet2DConditionModel``.
        table: the block structure (DeepFloyd IF's has ``kv_names=("add_k_proj", "add_v_proj")``).
    """
    counters = {kind: 0 for kind in SiteKind}
    sites: list[Site] = []
    resolution = _resolutions(unet, table)

    def add(kind: SiteKind, path: str, block: str, name: str | None = None) -> None:
        idx = counters[kind]
        counters[kind] += 1
        sites.append(
            Site(
                name=name or f"{table.prefix}.{kind.value}.{idx}",
                component=table.component,
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
        k_name, v_name = table.kv_names
        if getattr(module, k_name, None) is not None:
            add(SiteKind.XATTN_K, f"{path}.{k_name}", block, f"{table.prefix}.{SiteKind.XATTN.value}.{idx}.k")
            add(SiteKind.XATTN_V, f"{path}.{v_name}", block, f"{table.prefix}.{SiteKind.XATTN.value}.{idx}.v")

    for block_path, block in _blocks(unet, table):
        for path, module, is_res in _block_children(block_path, block, table):
            if is_res:
                add(SiteKind.RES, path, block_path)
                continue
            layers = getattr(module, table.layers, None)
            if layers is None:
                # A bare attention module (DeepFloyd IF's SimpleCrossAttn blocks): self + text jointly.
                add_xattn(path, module, block_path)
                continue
            for t, layer in enumerate(layers):
                for attr, kind in table.layer_sites:
                    child = getattr(layer, attr, None)
                    if child is None:
                        continue
                    child_path = f"{path}.{table.layers}.{t}.{attr}"
                    if kind is SiteKind.XATTN:
                        add_xattn(child_path, child, block_path)
                    else:
                        add(kind, child_path, block_path)
    return sites
