"""Canonical names for every place one can trace or edit.

A :class:`Site` names one module of a pipeline with a stable, family-independent name such as
``unet.xattn.8`` (the ninth cross-attention layer in execution order) or ``text.attn.0`` (the first
self-attention block of the text encoder). Adapters build the per-family table that maps these names to
real module paths; everything else in diffloc speaks only in site names.

Naming scheme (indices are 0-based, in forward execution order within their kind):

=================  =========================================================================
``unet.res.i``      ResNet block output (``*.resnets.*``)
``unet.sattn.i``    self-attention output (``attn1``)
``unet.xattn.i``    cross-attention output (``attn2``; DeepFloyd IF: the joint attention)
``unet.xattn.i.k``  cross-attention key projection (``to_k``; IF: ``add_k_proj``)
``unet.xattn.i.v``  cross-attention value projection (``to_v``; IF: ``add_v_proj``)
``unet.ff.i``       feed-forward output
``text.embed``      token embeddings of the (first) text encoder
``text.layer.i``    residual stream after encoder layer ``i``
``text.attn.i``     self-attention output of layer ``i``
``text.mlp.i``      MLP output of layer ``i``
``text2.*``         the same for SD-XL's second text encoder
=================  =========================================================================

Joint-attention transformers (SD3, FLUX; :mod:`diffloc.models.mmdit_sites`) name their blocks
``transformer.joint.i`` (image stream out of joint block ``i``), ``transformer.joint_context.i`` (its text
stream), ``transformer.attn.i`` (the joint attention's image-stream output) with ``.k``/``.v`` (its text-side
``add_k_proj``/``add_v_proj``), ``transformer.ff.i`` / ``transformer.ff_context.i`` (image / text MLP),
``transformer.context`` (``context_embedder``: the text stream entering block 0), ``transformer.time_text`` (the
time embedding with the pooled text added, which modulates every block) and FLUX's single-stream
``transformer.single.i`` / ``transformer.single_context.i``.

A cross-attention diffusion transformer (PixArt; :mod:`diffloc.models.transformer_sites`) names the UNet's kinds
under ``transformer.`` (PixArt: ``transformer.sattn.i``,
``transformer.xattn.i`` with ``.k``/``.v`` and ``transformer.ff.i`` are block ``i``'s ``attn1``, ``attn2`` and
``ff``) and adds ``transformer.block.i``, the residual stream after block ``i`` (kind ``block``).

Every site has a *role*: ``denoiser`` (a module of the network that predicts the noise) or ``text`` (a text
encoder). Code selects sites by role and kind (:meth:`SiteRegistry.denoiser_sites`,
:meth:`SiteRegistry.text_sites`), never by a name prefix: names are stable identifiers for users and saved
results, and only a family's site table decides them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from diffloc.errors import UnknownSiteError, close_matches, one_of


class SiteRole(StrEnum):
    """Which network a site belongs to: the denoiser (UNet, transformer) or a text encoder."""

    DENOISER = "denoiser"
    TEXT = "text"


class SiteKind(StrEnum):
    """What a site computes; decides how interventions address its channels."""

    RES = "res"
    SATTN = "sattn"
    XATTN = "xattn"
    XATTN_K = "xattn_k"
    XATTN_V = "xattn_v"
    FF = "ff"
    BLOCK = "block"  # a diffusion transformer block's output (token sequence)
    TEXT_EMBED = "text_embed"
    TEXT_LAYER = "text_layer"
    TEXT_ATTN = "text_attn"
    TEXT_MLP = "text_mlp"
    # joint-attention transformers (SD3, FLUX): see diffloc.models.mmdit_sites
    CONTEXT = "context"
    TIME_TEXT = "time_text"
    JOINT = "joint"
    JOINT_CONTEXT = "joint_context"
    ATTN = "attn"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"
    FF_CONTEXT = "ff_context"
    SINGLE = "single"
    SINGLE_CONTEXT = "single_context"

    @property
    def channel_dim(self) -> int:
        """Dimension holding channels in this site's output: 1 for conv feature maps, else last (token
        sequences, a transformer block's output included)."""
        return 1 if self is SiteKind.RES else -1

    @property
    def role(self) -> SiteRole:
        """The network sites of this kind belong to."""
        return SiteRole.TEXT if self in _TEXT_KINDS else SiteRole.DENOISER

    @property
    def is_projection(self) -> bool:
        """Whether this is a key/value projection sub-site of an attention layer reading text (``.k``/``.v``)."""
        return self in (SiteKind.XATTN_K, SiteKind.XATTN_V) or self in JOINT_PROJECTION_KINDS

    @property
    def output_index(self) -> int:
        """Which element of a module's tuple output is this site's tensor (a joint block returns the text
        stream first and the image stream second; see :data:`IMAGE_STREAM_KINDS`)."""
        return 1 if self in IMAGE_STREAM_KINDS else 0


#: Text-side key/value projections of joint attention (``add_k_proj``/``add_v_proj``; ``transformer.attn.N.k``).
JOINT_PROJECTION_KINDS = frozenset({SiteKind.ATTN_K, SiteKind.ATTN_V})
#: Block outputs whose image stream is the second element of the block's ``(text, image)`` output.
IMAGE_STREAM_KINDS = frozenset({SiteKind.JOINT, SiteKind.SINGLE})
#: Denoiser sites whose output is the text stream of a joint-attention transformer, one row per token.
TEXT_STREAM_KINDS = frozenset({SiteKind.CONTEXT, SiteKind.JOINT_CONTEXT, SiteKind.FF_CONTEXT, SiteKind.SINGLE_CONTEXT})
_TEXT_KINDS = frozenset({SiteKind.TEXT_EMBED, SiteKind.TEXT_LAYER, SiteKind.TEXT_ATTN, SiteKind.TEXT_MLP})
#: Kinds that read the text context inside the denoiser: a cross-attention layer and its key/value projections.
CROSS_ATTENTION_KINDS = frozenset({SiteKind.XATTN, SiteKind.XATTN_K, SiteKind.XATTN_V})


#: The text-encoder states a text trace restores: ``text.layer.N`` (the layer's output), ``.attn``, ``.mlp``.
TEXT_STATE_KINDS = ("layer", "attn", "mlp")


@dataclass(frozen=True, kw_only=True)
class Site:
    """One traceable/editable module of a pipeline.

    Attributes:
        name: canonical name, e.g. ``unet.xattn.8``.
        component: pipeline attribute holding the module (``unet``, ``text_encoder``, ``text_encoder_2``).
        module_path: dotted path inside ``component`` (as ``get_submodule`` takes it).
        kind: what the module computes.
        index: position in forward execution order among sites of the same kind and component.
        block: the UNet block it lives in (``down_blocks.1``, ``mid_block`` …) or ``""``.
        resolution: latent side length at the model's default sample size (0 for text sites).
    """

    name: str
    component: str
    module_path: str
    kind: SiteKind
    index: int
    block: str = ""
    resolution: int = 0

    @property
    def role(self) -> SiteRole:
        """``denoiser`` or ``text`` (decided by :attr:`kind`)."""
        return self.kind.role

    @property
    def full_path(self) -> str:
        """``component.module_path``: the module's path from the pipeline."""
        return f"{self.component}.{self.module_path}"


def short_label(label: str) -> str:
    """A label for plots and tables without the network prefix of its site names: ``unet.xattn.8`` gives
    ``xattn.8``, a group ``unet.res.1+unet.res.2`` gives ``res.1+res.2``; a label that is no site name
    (``clean``) is unchanged."""
    return "+".join(part.split(".", 1)[1] if part.count(".") >= 2 else part for part in label.split("+"))


class SiteRegistry(Sequence[Site]):
    """Ordered, immutable collection of sites with name lookup and glob selection.

    Order is execution order (text encoders first, then the UNet down → mid → up), never a string sort.
    """

    def __init__(self, sites: Iterable[Site]) -> None:
        self._sites: tuple[Site, ...] = tuple(sites)
        self._by_name = {s.name: s for s in self._sites}
        if len(self._by_name) != len(self._sites):
            raise ValueError("duplicate site names in registry")

    def __len__(self) -> int:
        return len(self._sites)

    def __getitem__(self, i):
        return self._sites[i]

    def __iter__(self) -> Iterator[Site]:
        return iter(self._sites)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        """All site names in execution order."""
        return [s.name for s in self._sites]

    def get(self, name: str) -> Site:
        """Return the site called ``name``.

        Raises:
            UnknownSiteError: no such site; the message lists close matches.
        """
        try:
            return self._by_name[name]
        except KeyError:
            hint = close_matches(name, self._by_name) or f"; valid sites include {one_of(self.names, 8)}"
            raise UnknownSiteError(f"unknown site {name!r}{hint}") from None

    def of_role(
        self, role: SiteRole, kind: SiteKind | Iterable[SiteKind] | None = None, *, projections: bool = False
    ) -> list[Site]:
        """Sites of ``role`` in execution order, of the kind(s) ``kind`` when given.

        Without ``kind`` the key/value projection sub-sites (``.k``/``.v``) are left out unless ``projections``
        is true, as a ``unet.*`` glob leaves them out; a ``kind`` naming them selects them.
        """
        kinds = {kind} if isinstance(kind, SiteKind) else None if kind is None else set(kind)
        return [
            s
            for s in self._sites
            if s.role is role and (s.kind in kinds if kinds is not None else projections or not s.kind.is_projection)
        ]

    def denoiser_sites(
        self, kind: SiteKind | Iterable[SiteKind] | None = None, *, projections: bool = False
    ) -> list[Site]:
        """The denoiser's sites (``kind=SiteKind.XATTN``: its cross-attention layers); see :meth:`of_role`."""
        return self.of_role(SiteRole.DENOISER, kind, projections=projections)

    def text_sites(self, kind: SiteKind | Iterable[SiteKind] | None = None) -> list[Site]:
        """The text encoders' sites, every encoder in order; see :meth:`of_role`."""
        return self.of_role(SiteRole.TEXT, kind)

    def select(self, spec: str | Sequence[str] | Callable[[Site], bool]) -> list[Site]:
        """Select sites by glob (``"unet.xattn.*"``), comma list, list of names/globs, or predicate.

        Globs match whole names (``unet.*`` is every UNet layer) but reach the ``.k``/``.v`` projection
        sub-sites only when the pattern has as many parts: ``unet.xattn.*`` gives the 16 layers, and
        ``unet.xattn.*.k`` their key projections. Result keeps registry order.

        Raises:
            UnknownSiteError: a name or pattern matches nothing, or the selection is empty.
        """
        if callable(spec):
            chosen = [s for s in self._sites if spec(s)]
            if not chosen:
                raise UnknownSiteError("site predicate selected no site")
            return chosen
        patterns = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
        patterns = [p for p in patterns if p]
        if not patterns:
            raise UnknownSiteError(f"empty site selection {spec!r}; e.g. 'unet.xattn.*' or 'text.attn.0'")
        wanted: set[str] = set()
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                depth = max(2, pattern.count("."))
                hits = [
                    s.name for s in self._sites if s.name.count(".") <= depth and fnmatch.fnmatchcase(s.name, pattern)
                ]
                if not hits:
                    kinds = sorted({".".join(n.split(".")[:2]) + ".*" for n in self.names})
                    raise UnknownSiteError(f"site pattern {pattern!r} matches no site; try one of {one_of(kinds)}")
                wanted.update(hits)
            else:
                wanted.add(self.get(pattern).name)
        return [s for s in self._sites if s.name in wanted]
