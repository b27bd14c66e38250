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

LocoEdit's statistics (``positions="subject+eos"``) also keep the request's *target* prompts encoded (the anchor in
every template, :attr:`PreservedStatistics.targets`): a later edit that maps another concept to the same target in
the same templates reads them instead of encoding them again (the same rows, up to float rounding), which halves
its text-encoder work. An edit with another target simply encodes its own.

Statistics can be saved and loaded across processes (``stats.save(path, model)``, ``PreservedStatistics.load(path,
model)``: one safetensors file, no pickle). On disk the in-process fingerprint means nothing, so a saved file
records a sha256 of every parameter the states are read through, and loading checks it against the model (so
saving and loading each read the whole text encoder's bytes once).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffloc.atomic import write_atomic
from diffloc.editing.closed_form import PreservedGram
from diffloc.editing.states import EncodedPrompt
from diffloc.errors import EditError
from diffloc.models.base import LoadedModel

#: Format tag of a saved statistics file (safetensors metadata ``format``).
STATISTICS_FORMAT = "diffloc-preserved-statistics/1"

Fingerprint = tuple[tuple[str, int, int], ...]


def state_fingerprint(model: LoadedModel, denoiser: bool = False) -> Fingerprint:
    """(name, storage address, in-place version) of every parameter that text states are read through.

    That is every text encoder of the pipeline and the denoiser's context projection, where it has one (IF's
    ``unet.encoder_hid_proj``, SD3/FLUX's ``context_embedder``); with ``denoiser`` the whole denoiser too (a joint
    block's text stream has passed the blocks before it). Costs microseconds (no tensor data is read).
    """
    return tuple((name, param.data_ptr(), int(param._version)) for name, param in _read_through(model, denoiser))


def _read_through(model: LoadedModel, denoiser: bool = False) -> list[tuple[str, torch.Tensor]]:
    pipe = model.pipe
    modules = [(spec.component, getattr(pipe, spec.component)) for spec in model.adapter.text_encoders(pipe)]
    if denoiser:
        modules.append((model.adapter.denoiser_component, model.denoiser))
    else:
        projection = model.adapter.context_projection(pipe)
        if projection is not None:
            modules.append(projection)
    return [(f"{prefix}.{name}", p) for prefix, module in modules for name, p in module.named_parameters()]


def content_hash(model: LoadedModel, denoiser: bool = False) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the parameters of :func:`state_fingerprint`."""
    from diffloc.editing.edit import tensor_hash

    digest = hashlib.sha256()
    for name, param in _read_through(model, denoiser):
        digest.update(f"{name}={tensor_hash(param)};".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PreservedStatistics:
    """The preservation statistics of one method, model state and preservation set.

    Attributes:
        method: the editing method they are for (``quickfix``, ``locoedit``, ``joint-kv`` or ``context``).
        scope: what they depend on besides the weights (preserved concepts, templates, preserved prompts, the
            method settings that choose key positions or record them).
        grams: per input space (a text encoder component for Diff-QuickFix, ``"context"`` for LocoEdit and the
            ``context_embedder`` edit, each edited joint attention ``transformer.attn.N`` for joint-kv).
        seconds: wall time it took to compute them.
        fingerprint: :func:`state_fingerprint` of the model they were computed on.
        targets: the request's target prompts encoded (LocoEdit, ``positions="subject+eos"``), keyed by
            ``(prompt, target)``; edits that map to the same target in the same templates reuse them.
    """

    method: str
    scope: Mapping[str, Any]
    grams: Mapping[str, PreservedGram]
    seconds: float
    fingerprint: Fingerprint = field(repr=False, default=())
    targets: Mapping[tuple[str, str], EncodedPrompt] = field(repr=False, default_factory=dict)
    #: whether the preserved states pass through the denoiser (joint-kv): its weights are fingerprinted too
    reads_denoiser: bool = False

    @property
    def rows(self) -> int:
        """Preserved key vectors summarised (summed over input spaces)."""
        return sum(g.rows for g in self.grams.values())

    def save(self, path: str | Path, model: LoadedModel) -> Path:
        """Write the statistics of ``model`` to one safetensors file, atomically.

        ``model`` must be the one they were computed on (checked by fingerprint); its content hash is stored.

        Raises:
            EditError: the statistics are stale for ``model``.
        """
        from safetensors.torch import save_file

        from diffloc import __version__

        self._check_fresh(model)
        tensors: dict[str, torch.Tensor] = {}
        for space, gram in self.grams.items():
            tensors[f"{space}/gram"] = gram.gram.detach().cpu().contiguous()
            tensors[f"{space}/row_sum"] = gram.row_sum.detach().cpu().contiguous()
        for i, encoded in enumerate(self.targets.values()):
            tensors[f"targets/{i}"] = encoded.context.detach().cpu().contiguous()
        header = {
            "method": self.method,
            "scope": dict(self.scope),
            "rows": {space: g.rows for space, g in self.grams.items()},
            "targets": [[prompt, subject, e.position] for (prompt, subject), e in self.targets.items()],
            "seconds": self.seconds,
            "weights_sha256": content_hash(model, self.reads_denoiser),
            "reads_denoiser": self.reads_denoiser,
            "family": model.family,
            "diffloc_version": __version__,
        }
        metadata = {"format": STATISTICS_FORMAT, "header": json.dumps(header)}
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path, model: LoadedModel) -> PreservedStatistics:
        """Load statistics saved by :meth:`save` for use on ``model`` (whose weights must hash the same).

        Raises:
            EditError: not a statistics file, unreadable, or computed on other text-encoder weights.
        """
        from safetensors import safe_open

        source = Path(path)
        if not source.is_file():
            raise EditError(f"preserved statistics file {str(source)!r} does not exist")
        try:
            with safe_open(str(source), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            if metadata.get("format") != STATISTICS_FORMAT:
                raise ValueError(f"format {metadata.get('format')!r}, expected {STATISTICS_FORMAT!r}")
            header = json.loads(metadata["header"])
            grams = {
                space: PreservedGram(gram=tensors[f"{space}/gram"], row_sum=tensors[f"{space}/row_sum"], rows=int(n))
                for space, n in header["rows"].items()
            }
            targets = {
                (str(prompt), str(subject)): EncodedPrompt(context=tensors[f"targets/{i}"], position=int(position))
                for i, (prompt, subject, position) in enumerate(header.get("targets", []))
            }
        except Exception as exc:  # truncated, foreign or hand-edited file
            raise EditError(f"cannot read preserved statistics {str(source)!r}: {exc}") from None
        denoiser = bool(header.get("reads_denoiser", False))
        if header["weights_sha256"] != content_hash(model, denoiser):
            raise EditError(
                f"preserved statistics {str(source)!r} were computed on other text-encoder weights "
                f"(sha256 {header['weights_sha256'][:12]}…); recompute them for this model"
            )
        return cls(method=header["method"], scope=header["scope"], grams=grams, seconds=float(header["seconds"]),
                   fingerprint=state_fingerprint(model, denoiser), targets=targets,
                   reads_denoiser=denoiser)  # fmt: skip

    def _check_fresh(self, model: LoadedModel) -> None:
        now = state_fingerprint(model, self.reads_denoiser)
        if now != self.fingerprint:
            changed = next(
                (a[0] for a, b in zip(self.fingerprint, now, strict=False) if a != b),
                "the parameter list",
            )
            raise EditError(
                f"preserved statistics are stale: {changed} changed since they were computed (an edit applied?); "
                "recompute them with preservation_statistics on the current model"
            )

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
        self._check_fresh(model)


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
    *,
    reads_denoiser: bool = False,
) -> tuple[PreservedStatistics, str]:
    """The statistics an edit uses and where they came from: ``given`` (checked against this edit) →
    ``"precomputed"``, else ``grams(model, request, config)`` computed now, with its timing, scope and the
    model's fingerprint (``reads_denoiser``: the denoiser's weights too) → ``"computed"``."""
    if given is not None:
        given.check(model, method, scope(request, config))
        return given, "precomputed"
    fingerprint = state_fingerprint(model, reads_denoiser)
    start = time.perf_counter()
    computed = grams(model, request, config)
    stats = PreservedStatistics(
        method=method,
        scope=dict(scope(request, config)),
        grams=dict(computed),
        seconds=round(time.perf_counter() - start, 6),
        fingerprint=fingerprint,
        reads_denoiser=reads_denoiser,
    )
    return stats, "computed"
