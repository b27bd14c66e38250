"""Site table of a cross-attention diffusion transformer (PixArt-α/Σ), in forward execution order.

The block structure is data (:class:`DiTBlockTable`, :data:`PIXART_BLOCKS`), beside the UNet's
(:mod:`diffloc.models.unet_sites`): which list holds the transformer blocks, and which modules of a block
are a site of which kind. A diffusers ``PixArtTransformer2DModel`` runs its ``transformer_blocks`` in list
order, and each ``BasicTransformerBlock`` (``ada_norm_single``) runs ``attn1`` (self-attention over the image
tokens), ``attn2`` (cross-attention to the projected T5 states; its ``to_k``/``to_v`` run inside it) and
``ff``; the block's output, the residual stream after it, finishes last. So block ``N`` gives, in order,
``transformer.sattn.N``, ``transformer.xattn.N`` (then ``.k``, ``.v``), ``transformer.ff.N`` and
``transformer.block.N``. A test checks this order against a recording forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffloc.sites import Site, SiteKind


@dataclass(frozen=True, kw_only=True)
class DiTBlockTable:
    """How a diffusion transformer's modules map to sites.

    Attributes:
        prefix: first part of every site name (``transformer`` gives ``transformer.xattn.8``).
        component: pipeline attribute holding the network.
        blocks: attribute listing the transformer blocks, in execution order.
        block_sites: modules of a block that are sites, with their kinds, in execution order; the block itself
            (kind ``block``) follows them.
        kv_names: attributes of the text key/value projections inside a cross-attention module (the ``.k`` and
            ``.v`` sub-sites).
    """

    prefix: str = "transformer"
    component: str = "transformer"
    blocks: str = "transformer_blocks"
    block_sites: tuple[tuple[str, SiteKind], ...] = (
        ("attn1", SiteKind.SATTN),
        ("attn2", SiteKind.XATTN),
        ("ff", SiteKind.FF),
    )
    kv_names: tuple[str, str] = ("to_k", "to_v")

    def __post_init__(self) -> None:
        if not self.prefix or not self.component or not self.blocks:
            raise ValueError("a block table needs a prefix, a component and a blocks attribute")


#: The table of diffusers' ``PixArtTransformer2DModel`` (PixArt-α and PixArt-Σ).
PIXART_BLOCKS = DiTBlockTable()


def transformer_sites(transformer: Any, table: DiTBlockTable = PIXART_BLOCKS) -> list[Site]:
    """All sites of a cross-attention transformer (sattn, xattn + .k/.v, ff, block) in execution order.

    Args:
        transformer: a ``PixArtTransformer2DModel`` (or any network whose ``table.blocks`` lists blocks with the
            table's children).
        table: the block structure.
    """
    size = transformer.config.sample_size
    side = int(size[0] if isinstance(size, list | tuple) else size)
    resolution = side // int(transformer.config.patch_size)  # tokens per side at the default sample size
    sites: list[Site] = []

    def add(kind: SiteKind, path: str, block: str, index: int, name: str | None = None) -> None:
        sites.append(
            Site(
                name=name or f"{table.prefix}.{kind.value}.{index}",
                component=table.component,
                module_path=path,
                kind=kind,
                index=index,
                block=block,
                resolution=resolution,
            )
        )

    for n, block in enumerate(getattr(transformer, table.blocks)):
        block_path = f"{table.blocks}.{n}"
        for attr, kind in table.block_sites:
            child = getattr(block, attr, None)
            if child is None:
                continue
            add(kind, f"{block_path}.{attr}", block_path, n)
            if kind is SiteKind.XATTN:
                k_name, v_name = table.kv_names
                if getattr(child, k_name, None) is not None:
                    base = f"{table.prefix}.{SiteKind.XATTN.value}.{n}"
                    add(SiteKind.XATTN_K, f"{block_path}.{attr}.{k_name}", block_path, n, f"{base}.k")
                    add(SiteKind.XATTN_V, f"{block_path}.{attr}.{v_name}", block_path, n, f"{base}.v")
        add(SiteKind.BLOCK, block_path, block_path, n)
    return sites
