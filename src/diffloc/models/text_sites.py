"""Site table of a text encoder (CLIP or T5), resolved from the module tree.

Paths are found by pattern, never by assuming a prefix: transformers 4 wraps CLIP in ``text_model.``,
transformers 5 does not, and T5 names its layers ``encoder.block.N``.
"""

from __future__ import annotations

import re

from torch import nn

from diffloc.errors import UnsupportedModelError
from diffloc.sites import Site, SiteKind

# (layer pattern, attention suffix, mlp suffix, embedding suffixes) per architecture style.
_CLIP = (re.compile(r"(?:^|\.)encoder\.layers\.(\d+)$"), "self_attn", "mlp", ("embeddings.token_embedding",))
_T5 = (
    re.compile(r"(?:^|\.)encoder\.block\.(\d+)$"),
    "layer.0.SelfAttention",
    "layer.1.DenseReluDense",
    ("encoder.embed_tokens",),
)


def text_sites(encoder: nn.Module, prefix: str, component: str) -> list[Site]:
    """Sites ``{prefix}.embed``, ``{prefix}.layer.i``, ``{prefix}.attn.i``, ``{prefix}.mlp.i``.

    Order: the embedding, then per layer attn, mlp, layer (the order they finish in a forward pass).

    Raises:
        UnsupportedModelError: the encoder has neither CLIP nor T5 structure.
    """
    # duplicates kept: older transformers tie T5's encoder.embed_tokens to the same module as `shared`
    names = dict(encoder.named_modules(remove_duplicate=False))
    for layer_re, attn_suffix, mlp_suffix, embed_suffixes in (_CLIP, _T5):
        layers = sorted(((int(m.group(1)), path) for path in names if (m := layer_re.search(path))), key=lambda x: x[0])
        if not layers:
            continue
        embed = next((p for p in names for suf in embed_suffixes if p == suf or p.endswith("." + suf)), None)
        if embed is None:
            break
        sites = [
            Site(
                name=f"{prefix}.embed",
                component=component,
                module_path=embed,
                kind=SiteKind.TEXT_EMBED,
                index=0,
            )
        ]
        for i, path in layers:
            for kind, suffix, label in (
                (SiteKind.TEXT_ATTN, attn_suffix, "attn"),
                (SiteKind.TEXT_MLP, mlp_suffix, "mlp"),
            ):
                sites.append(
                    Site(
                        name=f"{prefix}.{label}.{i}",
                        component=component,
                        module_path=f"{path}.{suffix}",
                        kind=kind,
                        index=i,
                    )
                )
            sites.append(
                Site(
                    name=f"{prefix}.layer.{i}",
                    component=component,
                    module_path=path,
                    kind=SiteKind.TEXT_LAYER,
                    index=i,
                )
            )
        return sites
    raise UnsupportedModelError(
        f"text encoder {type(encoder).__name__} of {component!r} has no CLIP ('encoder.layers.N') or T5 "
        "('encoder.block.N') layer structure"
    )


#: ``config.model_type`` of text encoders whose self-attention is causal (each token reads only earlier ones)
_LEFT_TO_RIGHT = frozenset({"clip_text_model"})


def attends_left_only(encoder: nn.Module) -> bool:
    """Whether every state of ``encoder`` at a position depends only on the tokens up to that position.

    True for CLIP's text encoders (causal mask); False for T5 (bidirectional) and for any encoder this table
    does not know, so a caller that skips work on this promise only ever skips it where it holds.
    """
    config = getattr(encoder, "config", None)
    return getattr(config, "model_type", None) in _LEFT_TO_RIGHT
