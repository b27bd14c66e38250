"""AtP*'s attention-saturation fix for key sites: where attribution linearizes through a softmax.

Attribution patching estimates a restore as ``< a_clean - a_corrupt, d score / d a >``. For a *key* site that
reads the text (a cross-attention's ``….xattn.N.k``, a joint attention's text-side ``transformer.attn.N.k``) the
restored value enters a softmax: first order through it is poor exactly where a restore matters, when one subject
token's keys move the attention weights far (the softmax saturates; Kramár et al. 2024, "AtP*"). The fix computes
the attention layer's output with the clean keys exactly (one more call of that attention module, without
gradients) and linearizes only from there on:

    < attn(q, k_clean, v) - attn(q, k_corrupt, v),  d score / d attn_out >.

A joint attention (SD3, FLUX.1) takes one softmax over the image and the text keys together and returns both
streams, ``(image, text)``: the text keys move both outputs, so the difference is taken, and linearized from, on
every tensor the layer returns. Value (``.v``) sites need no fix (the attention output is linear in the values),
nor do output sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffloc.engine.hooks import OutputHook, patch, primary, with_primary
from diffloc.models.base import LoadedModel
from diffloc.sites import SiteKind

#: the fix's name in results (``meta["attribution_fixes"]``)
ATTENTION_FIX = "attention-saturation"
#: key sites the fix applies to: their layer is the site named without the ``.k`` suffix
KEY_KINDS = frozenset({SiteKind.XATTN_K, SiteKind.ATTN_K})


def fixed_key_sites(model: LoadedModel, sites: Sequence[str]) -> dict[str, str]:
    """``{key site: its attention layer's site}`` for the key sites among ``sites`` (the ones the fix applies to)."""
    return {name: name.rsplit(".", 1)[0] for name in sites if model.site(name).kind in KEY_KINDS}


def weighted(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight * delta`` with ``weight`` (one value per row, or per row and token) broadcast over ``delta``'s
    trailing dimensions, in ``delta``'s dtype and device."""
    scale = weight.to(device=delta.device, dtype=delta.dtype)
    return scale.view(*scale.shape, *([1] * (delta.ndim - scale.ndim))) * delta


def _write_rows(rows: Sequence[int], values: torch.Tensor) -> OutputHook:
    """An output hook that replaces rows ``rows`` of the output by ``values``."""
    index = list(rows)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        out = primary(output)
        where = torch.as_tensor(index, device=out.device)
        return with_primary(output, out.index_put((where,), values.to(device=out.device, dtype=out.dtype)))

    return hook


def _tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor a module returns (one, or each element of a tuple: a joint attention's image and text
    streams)."""
    items = output if isinstance(output, tuple) else (output,)
    return [item for item in items if isinstance(item, torch.Tensor)]


def _add_rows(output: Any, index: Sequence[int], terms: Sequence[tuple[torch.Tensor, list[torch.Tensor]]]) -> Any:
    """``output`` with ``sum(weight * delta)`` added to rows ``index`` of each of its tensors (``terms``: one
    ``(weight, deltas)`` per key site, a delta per tensor of the output)."""
    items = list(output) if isinstance(output, tuple) else [output]
    positions = [i for i, item in enumerate(items) if isinstance(item, torch.Tensor)]
    for n, position in enumerate(positions):
        out = items[position]
        here = out[index]
        for weight, deltas in terms:
            here = here + weighted(weight, deltas[n])
        items[position] = out.index_put((torch.as_tensor(index, device=out.device),), here)
    return tuple(items) if isinstance(output, tuple) else items[0]


def key_fix_hook(
    model: LoadedModel,
    rows: Sequence[int],
    terms: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    inner: OutputHook | None = None,
) -> OutputHook:
    """An output hook on an attention layer adding, for each ``(key site, weight, clean keys)`` of ``terms``,
    ``weight[i] * (out_with_clean_keys - out)[rows[i]]`` (difference detached, ``weight`` zero) to every tensor the
    layer returns: its gradient is the fixed estimate of restoring that key site. ``inner`` (the layer's own probe)
    is applied as well.
    """
    index = list(rows)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        outs = _tensors(output)
        deltas = []
        for key_site, weight, clean in terms:
            # forward() itself, not the module call: this layer's own hooks (this one) must not run again
            with torch.no_grad(), patch(model, outputs={key_site: _write_rows(index, clean)}):
                fixed = _tensors(module.forward(*args, **kwargs))
            deltas.append((weight, [(f[index] - o[index]).detach() for f, o in zip(fixed, outs, strict=True)]))
        if inner is not None:
            output = inner(module, args, kwargs, output)
        return _add_rows(output, index, deltas)

    return hook


def with_key_fix(
    model: LoadedModel,
    rows: Sequence[int],
    probes: Mapping[str, OutputHook],
    weights: Mapping[str, torch.Tensor],
    clean: Mapping[str, torch.Tensor],
) -> dict[str, OutputHook]:
    """``probes`` with every key site's probe replaced by the fixed estimate on its attention layer.

    Args:
        probes: site name -> the plain attribution probe (key sites included; they are dropped here).
        weights: site name -> its zero probe weights (one per row).
        clean: site name -> the value a restore would write at this step.
    """
    keys = fixed_key_sites(model, list(probes))
    hooks = {name: hook for name, hook in probes.items() if name not in keys}
    by_layer: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for key_site, layer in keys.items():
        by_layer.setdefault(layer, []).append((key_site, weights[key_site], clean[key_site]))
    for layer, terms in by_layer.items():
        hooks[layer] = key_fix_hook(model, rows, terms, inner=hooks.get(layer))
    return hooks
