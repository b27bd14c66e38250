"""The editing entry point :func:`compute_edit` and the registry of editing methods.

Each method is a small module with a frozen config dataclass and a ``compute(model, request, config) -> Edit``
function. Methods register here by name; :func:`compute_edit` validates the name and the config type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diffloc.editing.edit import Edit
from diffloc.editing.locoedit import LocoEditConfig, compute_locoedit
from diffloc.editing.neurons import NeuronConfig, compute_neurons
from diffloc.editing.quickfix import QuickFixConfig, compute_quickfix
from diffloc.editing.requests import EditRequest
from diffloc.errors import ConfigError, close_matches, one_of
from diffloc.models.base import LoadedModel


@dataclass(frozen=True)
class EditMethod:
    """A registered editing method: its config class and compute function."""

    name: str
    config_class: type
    compute: Callable[[LoadedModel, EditRequest, Any], Edit]
    summary: str


METHODS: dict[str, EditMethod] = {}


def register_method(method: EditMethod) -> None:
    """Add (or replace) an editing method in the registry."""
    METHODS[method.name] = method


register_method(
    EditMethod("quickfix", QuickFixConfig, compute_quickfix, "Diff-QuickFix: text encoder layer-0 attention output")
)
register_method(
    EditMethod("locoedit", LocoEditConfig, compute_locoedit, "LocoEdit: cross-attention K/V of localized layers")
)
register_method(EditMethod("neurons", NeuronConfig, compute_neurons, "neuron ablation in cross-attention K/V"))


def get_method(name: str) -> EditMethod:
    """The registered method called ``name``.

    Raises:
        ConfigError: no such method (the message lists the valid ones).
    """
    try:
        return METHODS[name]
    except KeyError:
        hint = close_matches(name, METHODS) or f"; valid: {one_of(METHODS)}"
        raise ConfigError(f"unknown edit method {name!r}{hint}") from None


def compute_edit(
    model: LoadedModel,
    request: EditRequest,
    *,
    method: str = "quickfix",
    config: Any = None,
) -> Edit:
    """Compute an edit of ``model`` with a registered method; the model is never modified.

    Args:
        model: the loaded model (with any earlier edits applied: the new edit's base is the current weights).
        request: concepts, targets, templates and concepts to preserve.
        method: ``quickfix``, ``locoedit`` or ``neurons``.
        config: the method's config (``QuickFixConfig``, ``LocoEditConfig``, ``NeuronConfig``); ``None``
            uses the defaults where the method has them (LocoEdit and neurons need sites).

    Returns:
        The :class:`Edit`; apply it with ``edit.apply(model)`` or ``with edit.applied(model): ...``.

    Raises:
        ConfigError, PromptError, UnknownSiteError, EditError: one-line explanations; the model is unchanged.

    Example:
        >>> request = EditRequest(concepts=("van gogh",), targets=("a painting",))
        >>> edit = compute_edit(model, request, method="locoedit", config=LocoEditConfig(sites=("unet.xattn.8",)))
    """
    entry = get_method(method)
    if not isinstance(request, EditRequest):
        raise ConfigError(f"request must be an EditRequest, got {type(request).__name__}")
    if config is None:
        try:
            config = entry.config_class()
        except TypeError:
            raise ConfigError(f"method {method!r} needs a {entry.config_class.__name__} (e.g. its sites)") from None
    if not isinstance(config, entry.config_class):
        raise ConfigError(f"method {method!r} takes a {entry.config_class.__name__}, got {type(config).__name__}")
    return entry.compute(model, request, config)
