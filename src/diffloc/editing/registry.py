"""The editing entry point :func:`compute_edit` and the registry of editing methods.

Each method is a small module with a frozen config dataclass and a ``compute(model, request, config) -> Edit``
function, listed in the editor table :data:`diffloc.editors.EDITORS` (which the command line reads too); the
table's entries are resolved into :data:`METHODS` here, by name; :func:`compute_edit` validates the name and the
config type. Methods with a preservation set also give a ``statistics(model, request, config)`` function, whose result
(:func:`preservation_statistics`) ``compute`` accepts as a fourth argument.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diffloc.editing.edit import Edit
from diffloc.editing.preserved import PreservedStatistics
from diffloc.editing.requests import EditRequest
from diffloc.editors import EDITORS, EditorSpec
from diffloc.errors import ConfigError, close_matches, one_of
from diffloc.models.base import LoadedModel


@dataclass(frozen=True)
class EditMethod:
    """A registered editing method: its config class, compute function and (optional) statistics function, and
    the :class:`~diffloc.editors.EditorSpec` it was made from (``None`` for one registered in code only)."""

    name: str
    config_class: type
    compute: Callable[..., Edit]
    summary: str
    statistics: Callable[[LoadedModel, EditRequest, Any], PreservedStatistics] | None = None
    spec: EditorSpec | None = None


METHODS: dict[str, EditMethod] = {}


def register_method(method: EditMethod) -> None:
    """Add (or replace) an editing method in the registry."""
    METHODS[method.name] = method


def _resolve(spec: EditorSpec) -> EditMethod:
    """The :class:`EditMethod` of a table entry (its module imported)."""
    module = importlib.import_module(spec.module)
    statistics = None if spec.statistics is None else getattr(module, spec.statistics)
    return EditMethod(
        spec.name, getattr(module, spec.config), getattr(module, spec.compute), spec.summary, statistics, spec
    )


for _spec in EDITORS.values():
    register_method(_resolve(_spec))


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


def _checked(request: EditRequest, method: str, config: Any) -> tuple[EditMethod, Any]:
    """The method entry and the config (its defaults for ``None``), both validated."""
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
    return entry, config


def applies(spec: EditorSpec, family: str) -> bool:
    """Whether the editor ``spec`` is defined for ``family``."""
    return not spec.families or family in spec.families


def check_family(entry: EditMethod, model: LoadedModel) -> None:
    """Refuse (one line) a method on a family it is not defined for (:attr:`EditorSpec.families`).

    Raises:
        ConfigError: the method is defined for other families only.
    """
    if entry.spec is not None and not applies(entry.spec, model.family):
        families = entry.spec.families
        defined = [name for name, each in METHODS.items() if each.spec is None or applies(each.spec, model.family)]
        raise ConfigError(
            f"edit method {entry.name!r} is defined for {', '.join(families)} only, not {model.family}; "
            f"for {model.family} use one of {one_of(defined)}"
        )


def compute_edit(
    model: LoadedModel,
    request: EditRequest,
    *,
    method: str = "quickfix",
    config: Any = None,
    preserved: PreservedStatistics | None = None,
) -> Edit:
    """Compute an edit of ``model`` with a registered method; the model is never modified.

    Args:
        model: the loaded model (with any earlier edits applied: the new edit's base is the current weights).
        request: concepts, targets, templates and concepts to preserve.
        method: ``quickfix``, ``locoedit`` or ``neurons``.
        config: the method's config (``QuickFixConfig``, ``LocoEditConfig``, ``NeuronConfig``); ``None``
            uses the defaults where the method has them (LocoEdit and neurons need sites).
        preserved: the request's preservation statistics from :func:`preservation_statistics` on this model,
            to reuse across edits (the same weights up to float rounding; the preserved prompts are not encoded
            again, nor, for LocoEdit with ``positions="subject+eos"``, the target prompts they hold).

    Returns:
        The :class:`Edit`; apply it with ``edit.apply(model)`` or ``with edit.applied(model): ...``.

    Raises:
        ConfigError, PromptError, UnknownSiteError, EditError: one-line explanations; the model is unchanged.

    Example:
        >>> request = EditRequest(concepts=("van gogh",), targets=("a painting",))
        >>> edit = compute_edit(model, request, method="locoedit", config=LocoEditConfig(sites=("unet.xattn.8",)))
    """
    entry, config = _checked(request, method, config)
    check_family(entry, model)
    if preserved is None:
        return entry.compute(model, request, config)
    if entry.statistics is None:
        raise ConfigError(f"method {method!r} has no preservation set; it takes no preserved statistics")
    if not isinstance(preserved, PreservedStatistics):
        raise ConfigError(f"preserved must be PreservedStatistics, got {type(preserved).__name__}")
    return entry.compute(model, request, config, preserved)


def preservation_statistics(
    model: LoadedModel, request: EditRequest, *, method: str = "quickfix", config: Any = None
) -> PreservedStatistics:
    """The preservation statistics of ``request`` for ``method``, computed once to reuse across edits.

    They depend on the model's text-encoder weights, the preserved concepts, the templates, the preserved
    prompts and the settings that choose key positions — not on the concepts edited, their targets, λ, ω or
    (LocoEdit) the sites. An edit with other preservation inputs, or on changed weights, refuses them.

    Raises:
        ConfigError: an unknown method, one without a preservation set, or a request that preserves nothing.

    Example:
        >>> stats = preservation_statistics(model, request, method="quickfix")
        >>> for concept in ("van gogh", "monet"):
        ...     edit = compute_edit(model, replace(request, concepts=(concept,)), preserved=stats)
    """
    entry, config = _checked(request, method, config)
    check_family(entry, model)
    if entry.statistics is None:
        valid = one_of([name for name, entry in METHODS.items() if entry.statistics is not None])
        raise ConfigError(f"method {method!r} has no preservation set; valid: {valid}")
    if not request.preserve and not request.preserve_prompts:
        raise ConfigError("the request preserves nothing (no preserve= concepts or preserve_prompts=); no statistics")
    return entry.statistics(model, request, config)
