"""Site table of a joint-attention diffusion transformer (MMDiT: SD3/SD3.5's ``SD3Transformer2DModel``, FLUX.1's
``FluxTransformer2DModel``), in forward execution order.

An MMDiT block carries two streams: the image tokens and the text tokens. Both enter one joint attention (the
text side through ``add_q_proj``/``add_k_proj``/``add_v_proj``), then each has its own MLP; the block returns
``(text stream, image stream)``. FLUX.1 follows its 19 joint ("double-stream") blocks with 38 single-stream
blocks that process the concatenated tokens and return the same pair.

Sites, for joint block ``i`` (0-based, execution order)::

    transformer.attn.i            joint attention, image-stream output (element 0 of its (image, text) output)
    transformer.attn.i.k / .v     the text-side key/value projections (add_k_proj / add_v_proj)
    transformer.sattn.i           SD3.5's second, image-only attention (``attn2``; only where the block has it)
    transformer.ff.i              image-stream MLP
    transformer.ff_context.i      text-stream MLP (SD3's last block has none: its text output is unused)
    transformer.joint.i           block output, image stream
    transformer.joint_context.i   block output, text stream (absent where the block has no text output)

``transformer.time_text`` (``time_text_embed``: the timestep embedding plus the pooled text, which modulates
every block of both streams) and ``transformer.context`` (``context_embedder``: the text stream entering the
first block) run before the blocks; FLUX's single blocks give ``transformer.single.i`` (image tokens) and
``transformer.single_context.i`` (text tokens). The table is data (:class:`MMDiTBlockTable`); a test checks
it against a recording forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from diffloc.sites import Site, SiteKind


@dataclass(frozen=True, kw_only=True)
class MMDiTBlockTable:
    """How a joint-attention transformer's modules map to sites.

    Attributes:
        prefix: first part of every site name.
        component: pipeline attribute holding the network.
        time_text: the module adding the pooled text to the timestep embedding.
        context: the module projecting the text encoders' output into the text stream (before block 0).
        joint_blocks, single_blocks: attributes listing the joint and (FLUX) single-stream blocks; they run in
            this order.
        joint_children: modules of a joint block that are sites, with their kinds, in execution order.
        kv_names: the text-side key/value projections inside the joint attention (``.k``/``.v``).
    """

    prefix: str = "transformer"
    component: str = "transformer"
    time_text: str = "time_text_embed"
    context: str = "context_embedder"
    joint_blocks: str = "transformer_blocks"
    single_blocks: str = "single_transformer_blocks"
    joint_children: tuple[tuple[str, SiteKind], ...] = (
        ("attn", SiteKind.ATTN),
        ("attn2", SiteKind.SATTN),
        ("ff", SiteKind.FF),
        ("ff_context", SiteKind.FF_CONTEXT),
    )
    kv_names: tuple[str, str] = ("add_k_proj", "add_v_proj")


#: The table of diffusers' SD3 and FLUX.1 transformers.
MMDIT_BLOCKS = MMDiTBlockTable()


def _has_text_output(block: Any) -> bool:
    """Whether a joint block returns a text stream (SD3's last block is ``context_pre_only``: it does not)."""
    return not bool(getattr(block, "context_pre_only", False))


def _blocks(transformer: Any, table: MMDiTBlockTable) -> Iterator[tuple[str, Any, bool]]:
    """(path, block, is_single) of every block in execution order."""
    for i, block in enumerate(getattr(transformer, table.joint_blocks)):
        yield f"{table.joint_blocks}.{i}", block, False
    for i, block in enumerate(getattr(transformer, table.single_blocks, None) or []):
        yield f"{table.single_blocks}.{i}", block, True


def mmdit_sites(transformer: Any, table: MMDiTBlockTable = MMDIT_BLOCKS, resolution: int = 0) -> list[Site]:
    """All sites of a joint-attention transformer in execution order, as ``table`` describes them.

    Args:
        transformer: an ``SD3Transformer2DModel`` or ``FluxTransformer2DModel`` (on any device, ``meta`` too).
        table: the block structure.
        resolution: tokens per side of the image stream at the model's default size (recorded on every site).
    """
    counters = {kind: 0 for kind in SiteKind}
    sites: list[Site] = []

    def add(kind: SiteKind, path: str, block: str, name: str | None = None, index: int | None = None) -> int:
        idx = counters[kind] if index is None else index
        if index is None:
            counters[kind] += 1
        sites.append(
            Site(
                name=name or f"{table.prefix}.{kind.value}.{idx}",
                component=table.component,
                module_path=path,
                kind=kind,
                index=idx,
                block=block,
                resolution=resolution,
            )
        )
        return idx

    for attr, kind in ((table.time_text, SiteKind.TIME_TEXT), (table.context, SiteKind.CONTEXT)):
        add(kind, attr, "", name=f"{table.prefix}.{kind.value}")
    for n, (path, block, single) in enumerate(_blocks(transformer, table)):
        if single:
            add(SiteKind.SINGLE, path, path)
            add(SiteKind.SINGLE_CONTEXT, path, path)
            continue
        for attr, kind in table.joint_children:
            child = getattr(block, attr, None)
            if child is None:
                continue
            child_path = f"{path}.{attr}"
            idx = add(kind, child_path, path, name=f"{table.prefix}.{kind.value}.{n}", index=n)
            if kind is SiteKind.ATTN:
                for proj, proj_kind, suffix in zip(
                    table.kv_names, (SiteKind.ATTN_K, SiteKind.ATTN_V), "kv", strict=True
                ):
                    if getattr(child, proj, None) is not None:
                        name = f"{table.prefix}.{kind.value}.{idx}.{suffix}"
                        add(proj_kind, f"{child_path}.{proj}", path, name=name, index=idx)
        add(SiteKind.JOINT, path, path, name=f"{table.prefix}.{SiteKind.JOINT.value}.{n}", index=n)
        if _has_text_output(block):
            add(SiteKind.JOINT_CONTEXT, path, path, name=f"{table.prefix}.{SiteKind.JOINT_CONTEXT.value}.{n}", index=n)
    return sites


def stream_inputs(sites: list[Site]) -> dict[str, str]:
    """For each block site (``transformer.joint.N``, ``transformer.single.N``), the site whose output is the text
    stream entering that block: ``transformer.context`` for the first block, else the previous block's text
    output. Restoring those outputs patches the text stream entering a window of blocks."""
    inputs: dict[str, str] = {}
    previous: str | None = None
    for site in sites:
        if site.kind is SiteKind.CONTEXT:
            previous = site.name
        elif site.kind in (SiteKind.JOINT, SiteKind.SINGLE) and previous is not None:
            inputs[site.name] = previous
        elif site.kind in (SiteKind.JOINT_CONTEXT, SiteKind.SINGLE_CONTEXT):
            previous = site.name
    return inputs
