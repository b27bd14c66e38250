"""Preservation statistics computed once and reused by every later edit (MEMIT-style precomputed key statistics).

A closed-form edit with a preservation set (concepts to keep in every template, whole prompts to keep) spends
most of its time encoding the preserved prompts: on ShapesWorld's style removal they are ~5,300 of ~6,200 key
rows. Those rows enter the solve only through their Gram matrix (:class:`~diffloc.editing.closed_form.
PreservedGram`), which depends on the model and the preservation set but not on the concept being edited, so
it can be computed once and passed to every edit of that model::

    stats = preservation_statistics(model, request, method="locoedit", config=config)
    edit = compute_edit(model, request, method="locoedit", config=config, preserved=stats)  # same W*, faster

An edit refuses statistics computed for another preservation set (preserved concepts, their templates,
preserved prompts, the settings that pick key positions) or for other text-encoder weights: every parameter
the preserved states are read through is fingerprinted by storage and torch's in-place version counter, which
every in-place write through torch (``Edit.apply``, ``load_state_dict``, an optimizer step) advances. Writes that
bypass autograd's version tracking (assigning through ``param.data``) are not seen; recompute the statistics
after such a change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffloc.editing.closed_form import PreservedGram
from diffloc.errors import EditError
from diffloc.models.base import LoadedModel

Fingerprint = tuple[tuple[str, int, int], ...]


def state_fingerprint(model: LoadedModel) -> Fingerprint:
    """(name, storage address, in-place version) of every parameter that text states are read through.

    That is every text encoder of the pipeline and, for IF, the UNet's ``encoder_hid_proj``. Costs
    microseconds (no tensor data is read).
    """
    pipe = model.pipe
    modules = [(spec.component, getattr(pipe, spec.component)) for spec in model.adapter.text_encoders(pipe)]
    projection = getattr(pipe.unet, "encoder_hid_proj", None)
    if projection is not None:
        modules.append(("unet.encoder_hid_proj", projection))
    return tuple(
        (f"{prefix}.{name}", param.data_ptr(), int(param._version))
        for prefix, module in modules
        for name, param in module.named_parameters()
    )


@dataclass(frozen=True)
class PreservedStatistics:
    """The preservation statistics of one method, model state and preservation set.

    Attributes:
        method: the editing method they are for (``quickfix`` or ``locoedit``).
        scope: what they depend on besides the weights (preserved concepts, templates, preserved prompts, the
            method settings that choose key positions).
        grams: per input space (a text encoder component for Diff-QuickFix, ``"context"`` for LocoEdit).
        seconds: wall time it took to compute them.
        fingerprint: :func:`state_fingerprint` of the model they were computed on.
    """

    method: str
    scope: Mapping[str, Any]
    grams: Mapping[str, PreservedGram]
    seconds: float
    fingerprint: Fingerprint = field(repr=False, default=())

    @property
    def rows(self) -> int:
        """Preserved key vectors summarised (summed over input spaces)."""
        return sum(g.rows for g in self.grams.values())

    def check(self, model: LoadedModel, method: str, scope: Mapping[str, Any]) -> None:
        """Raise a one-line :class:`EditError` unless these statistics fit this edit of this model."""
        if method != self.method:
            raise EditError(f"preserved statistics were computed for method {self.method!r}, not {method!r}")
        for name in sorted(set(scope) | set(self.scope)):
            if scope.get(name) != self.scope.get(name):
                raise EditError(
                    f"preserved statistics were computed for another {name} ({_short(self.scope.get(name))} vs this "
                    f"request's {_short(scope.get(name))}); compute them for this request with preservation_statistics"
                )
        now = state_fingerprint(model)
        if now != self.fingerprint:
            changed = next(
                (a[0] for a, b in zip(self.fingerprint, now, strict=False) if a != b),
                "the parameter list",
            )
            raise EditError(
                f"preserved statistics are stale: {changed} changed since they were computed (an edit applied?); "
                "recompute them with preservation_statistics on the current model"
            )


def preservation_scope(request: Any, default_templates: tuple[str, ...], **settings: Any) -> dict[str, Any]:
    """What a method's statistics depend on besides the weights: the preserved concepts, the templates they are
    filled into (none when no concept is preserved), the preserved prompts, and the method's ``settings`` that
    choose key positions."""
    return {
        "preserved concepts": list(request.preserve),
        "templates": list(request.all_templates(default_templates)) if request.preserve else [],
        "preserved prompts": list(request.preserve_prompts),
        **settings,
    }


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolved(
    method: str,
    model: LoadedModel,
    request: Any,
    config: Any,
    scope: Callable[[Any, Any], Mapping[str, Any]],
    grams: Callable[[LoadedModel, Any, Any], Mapping[str, PreservedGram]],
    given: PreservedStatistics | None,
) -> tuple[PreservedStatistics, str]:
    """The statistics an edit uses and where they came from: ``given`` (checked against this edit) →
    ``"precomputed"``, else ``grams(model, request, config)`` computed now, with its timing, scope and the
    model's fingerprint → ``"computed"``."""
    if given is not None:
        given.check(model, method, scope(request, config))
        return given, "precomputed"
    fingerprint = state_fingerprint(model)
    start = time.perf_counter()
    computed = grams(model, request, config)
    stats = PreservedStatistics(
        method=method,
        scope=dict(scope(request, config)),
        grams=dict(computed),
        seconds=round(time.perf_counter() - start, 6),
        fingerprint=fingerprint,
    )
    return stats, "computed"
