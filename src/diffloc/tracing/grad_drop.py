"""AtP*'s gradient dropout: attribution that cannot be cancelled away by paths of opposite sign.

A first-order estimate sums a site's effect over every path from it to the score. Where two paths carry large
effects of opposite sign, the sum is small and the site is ranked low although restoring it matters (Kramár et
al. 2024, "AtP*", call this cancellation). Gradient dropout repeats the backward pass ``L`` times, each time with
the gradient through one *layer* of the denoiser blocked, and ranks every site by

    (1 / (L - 1)) * sum over layers l of | estimate with layer l's gradient dropped |.

A layer here is a run of consecutive residual branches of the denoiser in execution order — the outputs of its
self-attention, cross-attention and feed-forward modules (joint attention and the text-stream MLP on SD3/FLUX)
and the second convolution of each ResNet block — so the gradient still reaches earlier sites around a dropped
layer through the skip connections, as it does around a transformer layer in the residual stream AtP* was
defined on. The forward pass is the same for all ``L`` backward passes (an identity whose backward reads which
layer is dropped), so the cost is ``L`` more backward passes, not ``L`` more sampling chains.

The values are magnitudes for ranking (which sites ``screen`` confirms exactly), not score changes: the signed
estimates stay the result's scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffloc.errors import ConfigError
from diffloc.models.base import LoadedModel
from diffloc.sites import SiteKind, SiteRole

#: the correction's name in results (``meta["attribution_fixes"]``)
GRADIENT_DROPOUT = "gradient-dropout"
#: the default number of layers the denoiser's residual branches are split into
DEFAULT_LAYERS = 8
#: site kinds whose module output is a residual branch (added to a stream that skips around it)
_BRANCH_KINDS = (SiteKind.SATTN, SiteKind.XATTN, SiteKind.FF, SiteKind.ATTN, SiteKind.FF_CONTEXT)


@dataclass
class DropState:
    """Which layer's gradient the next backward pass drops (``None``: none). Read by the gates at backward time."""

    blocked: int | None = None


class _Gate(torch.autograd.Function):
    """Identity forward; the backward passes the gradient on unless its layer is the one dropped."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, state: DropState, layer: int) -> torch.Tensor:
        ctx.state, ctx.layer = state, layer
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        return (torch.zeros_like(grad) if ctx.state.blocked == ctx.layer else grad), None, None


def branch_modules(model: LoadedModel) -> list[nn.Module]:
    """The denoiser's residual branches in execution order: attention and feed-forward site modules, and the
    ``conv2`` of each ResNet site."""
    modules: list[nn.Module] = []
    for site in model.sites:
        if site.role is not SiteRole.DENOISER:
            continue
        module = model.module(site)
        if site.kind in _BRANCH_KINDS:
            modules.append(module)
        elif site.kind is SiteKind.RES and isinstance(conv := getattr(module, "conv2", None), nn.Module):
            modules.append(conv)
    return list(dict.fromkeys(modules))


def dropout_layers(model: LoadedModel, layers: int = DEFAULT_LAYERS) -> list[list[nn.Module]]:
    """The residual branches split into ``min(layers, branches)`` runs of consecutive branches (sizes differing by
    at most one).

    Raises:
        ConfigError: ``layers`` < 2 (dropping the only layer leaves nothing to compare), or the denoiser has fewer
            than 2 residual branches.
    """
    if layers < 2:
        raise ConfigError(f"gradient dropout needs at least 2 layers, got {layers}; give 0 (off) or 2 or more")
    branches = branch_modules(model)
    if len(branches) < 2:
        raise ConfigError(
            f"gradient dropout: the {model.family} denoiser has {len(branches)} residual branch(es), it needs 2"
        )
    count = min(layers, len(branches))
    bounds = [round(i * len(branches) / count) for i in range(count + 1)]
    return [branches[bounds[i] : bounds[i + 1]] for i in range(count)]


def check_gradient_dropout(model: LoadedModel, method: str, layers: int) -> None:
    """Refuse, before any work, gradient dropout that cannot run: one line each.

    Raises:
        ConfigError: ``layers`` negative or 1, set with the exact method (it has no gradients), or more than the
            denoiser's residual branches can make 2 layers of.
    """
    if layers == 0:
        return
    if method == "exact":
        raise ConfigError(
            f"gradient dropout ({layers} layers) ranks attribution estimates; use it with method 'attribution' "
            "or 'screen', not 'exact'"
        )
    dropout_layers(model, layers)


def _gate_hook(state: DropState, layer: int) -> Any:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return tuple(_gated(o, state, layer) for o in output)
        return _gated(output, state, layer)

    return hook


def _gated(value: Any, state: DropState, layer: int) -> Any:
    if isinstance(value, torch.Tensor) and value.requires_grad:
        return _Gate.apply(value, state, layer)
    return value


@contextmanager
def gated(layers: Sequence[Sequence[nn.Module]]) -> Iterator[DropState]:
    """Put a gate on the output of every module of ``layers`` for the duration of the block (appended after the
    modules' other hooks, so a site's own probe is inside its gate); yields the state that picks the layer a
    backward pass drops."""
    state = DropState()
    handles = []
    try:
        for index, modules in enumerate(layers):
            for module in modules:
                handles.append(module.register_forward_hook(_gate_hook(state, index)))
        yield state
    finally:
        for handle in handles:
            handle.remove()


def dropout_magnitudes(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """AtP*'s ranking value from the estimates of each dropped layer (``L`` tensors of the same shape):
    ``sum_l |estimate_l| / (L - 1)``."""
    stacked = torch.stack([p.abs() for p in per_layer])
    return stacked.sum(0) / (len(per_layer) - 1)
