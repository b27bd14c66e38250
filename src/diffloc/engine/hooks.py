"""Scoped forward hooks on sites: installed on entry, always removed on exit (even on error)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from diffloc.models.base import LoadedModel
from diffloc.sites import Site

#: ``fn(module, args, kwargs, output) -> new output or None``
OutputHook = Callable[[nn.Module, tuple, dict, Any], Any]
#: ``fn(module, args, kwargs) -> (args, kwargs) or None``
InputHook = Callable[[nn.Module, tuple, dict], Any]


def primary(output: Any, index: int = 0) -> torch.Tensor:
    """The main tensor of a module output: element ``index`` of a tuple (0, as CLIP/T5 attention return; a
    joint-attention block's image stream is 1, :attr:`~diffloc.sites.SiteKind.output_index`), else the output."""
    return output[index] if isinstance(output, tuple) else output


def with_primary(output: Any, tensor: torch.Tensor, index: int = 0) -> Any:
    """``output`` with its main tensor (element ``index`` of a tuple) replaced by ``tensor`` (structure kept)."""
    return (*output[:index], tensor, *output[index + 1 :]) if isinstance(output, tuple) else tensor


@contextmanager
def patch(
    model: LoadedModel,
    outputs: Mapping[str, OutputHook] | Mapping[Site, OutputHook] | None = None,
    inputs: Mapping[str, InputHook] | Mapping[Site, InputHook] | None = None,
    *,
    first: bool = True,
) -> Iterator[None]:
    """Install output hooks and input (pre-)hooks on sites for the duration of the block.

    Hooks receive keyword arguments (``with_kwargs=True``) because diffusers passes
    ``encoder_hidden_states`` by keyword. Every handle is removed in ``finally``.

    With ``first=True`` (the default for interventions) the hooks run before hooks already on the module.
    This matters: transformers 5 collects ``output_hidden_states`` with its own persistent forward hooks,
    so an intervention registered after them would be invisible in ``hidden_states`` (SD-XL reads those).

    Example:
        >>> with patch(model, outputs={"unet.xattn.8": lambda m, a, k, out: out * 0}):
        ...     images = generate(...)
    """
    handles: list[Any] = []
    try:
        for site, pre in (inputs or {}).items():
            handles.append(model.module(site).register_forward_pre_hook(pre, with_kwargs=True, prepend=first))
        for site, post in (outputs or {}).items():
            handles.append(model.module(site).register_forward_hook(post, with_kwargs=True, prepend=first))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record(model: LoadedModel, sites: Sequence[str | Site]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record each call's main output tensor at ``sites`` (detached copies), keyed by site name."""
    store: dict[str, list[torch.Tensor]] = {}

    def make(name: str, index: int) -> OutputHook:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            store.setdefault(name, []).append(primary(output, index).detach().clone())

        return hook

    resolved = [model.site(s) for s in sites]
    # Observers run last, so they see every intervention's effect.
    with patch(model, outputs={s.name: make(s.name, s.kind.output_index) for s in resolved}, first=False):
        yield store


def installed_hook_count(model: LoadedModel) -> int:
    """Number of forward (pre-)hooks currently installed on any pipeline module (for leak tests)."""
    total = 0
    for component in model.pipe.components.values():
        if isinstance(component, nn.Module):
            for module in component.modules():
                total += len(module._forward_hooks) + len(module._forward_pre_hooks)
    return total
