"""The :class:`Edit` artifact: new weights plus everything needed to apply, revert, save and check them.

An edit is data (ROME's ``weights_copy``, diffusers' LoRA fuse/unfuse). It names every parameter it touches by
its pipeline-level dotted path (``text_encoder.encoder.layers.0.self_attn.out_proj.weight``,
``unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight``) and stores, per parameter:

* the new tensor,
* the base tensor it replaces (so :meth:`Edit.revert` is bit-exact even for an edit loaded from disk onto a
  freshly loaded model), or the fact that the parameter was *absent* (a neuron edit may give a bias-free
  projection a bias; reverting removes it again),
* sha256 hashes of both (dtype, shape and bytes), which decide whether the edit may be applied or reverted.

On disk an edit is a directory with ``edit.safetensors`` (tensors ``new/<param>`` and ``base/<param>``) and
``edit.json`` (method, request, config, family, hashes, stats, diffloc version, and the hash of all of it). Nothing
is pickled; :mod:`diffloc.editing.edit_format` reads both files strictly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffloc.atomic import check_writable_dir, json_text, publish_tree, staging_dir
from diffloc.editing.edit_format import (
    ABSENT,
    FORMAT,
    FORMAT_VERSION,
    HASH_KEY,
    check_tensors,
    metadata_hash,
    read_metadata,
)
from diffloc.errors import EditError
from diffloc.models.base import LoadedModel

WEIGHTS_FILE = "edit.safetensors"
#: transformers 4's wrapper module inside ``CLIPTextModel`` (absent in transformers 5)
CLIP_WRAPPER = "text_model."
META_FILE = "edit.json"


def tensor_hash(tensor: torch.Tensor | None) -> str:
    """sha256 of a tensor's dtype, shape and bytes (``"absent"`` for ``None``)."""
    if tensor is None:
        return ABSENT
    t = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameter_hashes(model: LoadedModel) -> dict[str, str]:
    """:func:`tensor_hash` of every parameter of every pipeline component, by ``component.parameter`` path
    (check that nothing changed, e.g. that computing an edit left the model as it was)."""
    return {
        f"{name}.{pname}": tensor_hash(param)
        for name, component in model.pipe.components.items()
        if isinstance(component, nn.Module)
        for pname, param in component.named_parameters()
    }


def resolve_parameter(model: LoadedModel, key: str) -> tuple[nn.Module, str]:
    """The module owning a pipeline-level parameter path and the parameter's attribute name.

    Raises:
        EditError: the component or module does not exist in this model.
    """
    component, _, rest = key.partition(".")
    module_path, _, attr = rest.rpartition(".")
    root = getattr(model.pipe, component, None)
    if not isinstance(root, nn.Module) or not attr:
        raise EditError(f"edit parameter {key!r} names no module of this {model.family} pipeline")
    module = None
    for path in _spellings(module_path):
        try:
            module = root.get_submodule(path) if path else root
            break
        except AttributeError:
            continue
    if module is None:
        raise EditError(f"edit parameter {key!r} names no module of this {model.family} pipeline")
    if attr not in module._parameters:
        raise EditError(f"edit parameter {key!r}: module {type(module).__name__} has no parameter slot {attr!r}")
    return module, attr


def _spellings(module_path: str) -> list[str]:
    """A module path as recorded, then in the other transformers major's CLIP naming: transformers 4 wraps
    ``CLIPTextModel`` in ``text_model.``, transformers 5 does not, so an edit computed under one applies
    under the other."""
    if module_path.startswith(CLIP_WRAPPER):
        return [module_path, module_path.removeprefix(CLIP_WRAPPER)]
    return [module_path, CLIP_WRAPPER + module_path]


def current_tensor(model: LoadedModel, key: str) -> torch.Tensor | None:
    """The model's current value of a parameter (``None`` when the slot is empty, like a missing bias)."""
    module, attr = resolve_parameter(model, key)
    return module._parameters[attr]


@dataclass(frozen=True, kw_only=True)
class Edit:
    """A computed model edit: apply, revert bit-exactly, save, load.

    Attributes:
        method: the editor that made it (``quickfix``, ``locoedit``, ``neurons``).
        family: model family of the base (``sd1``, ``sd2``, ``sdxl``, ``if``).
        weights: new tensor per parameter path.
        originals: base tensor per parameter path; ``None`` when the base has no such parameter.
        request: the edit request as a dict (see :class:`~diffloc.editing.requests.EditRequest`).
        config: the method's config as a dict.
        stats: numbers about the computation (pairs used, solve seconds, parameters touched …).
        notes: caveats a user should read (e.g. the T5 limitation, the untouched SD-XL pooled embedding).
        version: diffloc version that computed it.

    Example:
        >>> edit = compute_edit(model, EditRequest(concepts=("van gogh",), targets=("a painting",)))
        >>> with edit.applied(model):
        ...     images = generate(model, "a house in the style of van gogh")
        >>> edit.save("edits/no-van-gogh"); same = Edit.load("edits/no-van-gogh")
    """

    method: str
    family: str
    weights: Mapping[str, torch.Tensor]
    originals: Mapping[str, torch.Tensor | None]
    request: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    version: str = ""

    def __post_init__(self) -> None:
        if not self.weights:
            raise EditError("an edit must change at least one parameter")
        if set(self.weights) != set(self.originals):
            raise EditError("edit weights and originals name different parameters")
        for key, new in self.weights.items():
            old = self.originals[key]
            if old is not None and (old.shape != new.shape or old.dtype != new.dtype):
                raise EditError(
                    f"edit parameter {key!r}: new {tuple(new.shape)} {new.dtype} does not match base "
                    f"{tuple(old.shape)} {old.dtype}"
                )
        if not self.version:
            from diffloc import __version__

            object.__setattr__(self, "version", __version__)

    # -- identity --------------------------------------------------------------------------------
    # Hashes are computed on first use (tensors are never mutated by an Edit), so computing an edit does not
    # pay for hashing megabytes it may never apply or save.
    @cached_property
    def _base_hashes(self) -> dict[str, str]:
        return {k: tensor_hash(v) for k, v in self.originals.items()}

    @cached_property
    def _new_hashes(self) -> dict[str, str]:
        return {k: tensor_hash(v) for k, v in self.weights.items()}

    @property
    def base(self) -> dict[str, Any]:
        """The base this edit applies to: family and the hash of every touched base tensor."""
        return {"family": self.family, "tensors": dict(self._base_hashes)}

    @property
    def result_hashes(self) -> dict[str, str]:
        """Hash of every touched tensor after the edit is applied."""
        return dict(self._new_hashes)

    @property
    def parameters(self) -> list[str]:
        """Touched parameter paths, in a stable order."""
        return list(self.weights)

    @property
    def num_values(self) -> int:
        """How many scalar weights the edit writes."""
        return sum(int(t.numel()) for t in self.weights.values())

    # -- state checks ----------------------------------------------------------------------------
    def _check_family(self, model: LoadedModel) -> None:
        if model.family != self.family:
            raise EditError(f"this {self.method} edit was computed for a {self.family} model, not {model.family}")

    def is_applied(self, model: LoadedModel) -> bool:
        """Whether every touched parameter currently holds the edit's new value."""
        self._check_family(model)
        return all(tensor_hash(current_tensor(model, k)) == h for k, h in self.result_hashes.items())

    def check_base(self, model: LoadedModel) -> None:
        """Raise :class:`EditError` unless every touched parameter equals the recorded base.

        Raises:
            EditError: naming the first parameter that differs (another edit applied, another checkpoint …).
        """
        self._check_family(model)
        for key, expected in self.base["tensors"].items():
            found = current_tensor(model, key)
            made_in = self.weights[key].dtype
            if found is not None and found.dtype != made_in:
                wanted = str(made_in).removeprefix("torch.")
                raise EditError(
                    f"this {self.method} edit was computed on a {wanted} model but {key} is "
                    f"{str(found.dtype).removeprefix('torch.')}; load the model with --dtype {wanted}"
                )
            if tensor_hash(found) != expected:
                if tensor_hash(found) == self.result_hashes[key]:
                    raise EditError(f"this {self.method} edit is already applied ({key} holds the edited value)")
                raise EditError(
                    f"cannot apply {self.method} edit: {key} differs from the base it was computed on "
                    f"(base sha256 {expected[:12]}…, model {tensor_hash(found)[:12]}…); wrong model or another "
                    "edit is applied"
                )

    # -- apply / revert --------------------------------------------------------------------------
    def apply(self, model: LoadedModel) -> None:
        """Write the new weights into the model (checks every base hash first; all or nothing).

        Raises:
            EditError: the model's touched tensors are not the recorded base.
        """
        self.check_base(model)
        _write(model, self.weights)

    def revert(self, model: LoadedModel) -> None:
        """Restore the base tensors bit-exactly (removing parameters the edit added).

        Raises:
            EditError: the model does not currently hold this edit's weights (not applied, or another edit
                was applied on top and must be reverted first).
        """
        self._check_family(model)
        for key, expected in self.result_hashes.items():
            found = tensor_hash(current_tensor(model, key))
            if found != expected:
                raise EditError(
                    f"cannot revert {self.method} edit: {key} does not hold this edit's weights (not applied, "
                    "or an edit applied later must be reverted first)"
                )
        _write(model, self.originals)

    @contextmanager
    def applied(self, model: LoadedModel) -> Iterator[LoadedModel]:
        """Apply for the duration of a ``with`` block; revert on exit, also on error."""
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    # -- persistence -----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The JSON side of the artifact, ending with the hash of everything before it."""
        params = {}
        for key, new in self.weights.items():
            params[key] = {
                "shape": list(new.shape),
                "dtype": str(new.dtype).removeprefix("torch."),
                "numel": int(new.numel()),
                "base_sha256": self.base["tensors"][key],
                "new_sha256": self.result_hashes[key],
            }
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "family": self.family,
            "diffloc_version": self.version,
            "request": dict(self.request),
            "config": dict(self.config),
            "stats": dict(self.stats),
            "notes": list(self.notes),
            "parameters": params,
        }
        # through JSON first, so the hash is of what a reader will parse (tuples become lists)
        meta = json.loads(json_text(meta))
        meta[HASH_KEY] = metadata_hash(meta)
        return meta

    @staticmethod
    def check_output(directory: str | Path) -> Path:
        """Check, creating nothing, that an edit could be saved to ``directory`` (before computing one).

        Raises:
            EditError: it is a file, or a non-empty directory that holds no edit.
            DifflocError: it (or the directory it would be created in) is not writable.
        """
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise EditError(f"edit output {str(target)!r} exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not (target / META_FILE).is_file():
            raise EditError(f"edit output {str(target)!r} is a non-empty directory that holds no edit; refusing")
        # saving assembles the edit beside the target and renames it into place
        check_writable_dir(target.parent if target.exists() else target, "edit output directory")
        return target

    def save(self, directory: str | Path) -> Path:
        """Write ``edit.safetensors`` + ``edit.json`` into ``directory`` atomically (temp dir, then rename).

        An existing edit directory at that path is replaced only after the new one is complete.
        """
        from safetensors.torch import save_file

        target = self.check_output(directory)
        meta = json_text(self.metadata())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(target.parent, f".{target.name}.")
        try:
            tensors: dict[str, torch.Tensor] = {}
            for key, new in self.weights.items():
                tensors[f"new/{key}"] = new.detach().to("cpu").contiguous().clone()
                old = self.originals[key]
                if old is not None:
                    tensors[f"base/{key}"] = old.detach().to("cpu").contiguous().clone()
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            (tmp / META_FILE).write_text(meta, encoding="utf-8")
            publish_tree(tmp)
            if target.exists():
                old_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                os.replace(target, old_dir / "edit")
                os.replace(tmp, target)
                shutil.rmtree(old_dir, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | Path) -> Edit:
        """Load an edit saved by :meth:`save`, checking every field of ``edit.json`` and every tensor against its
        recorded hash (format 2 also checks the hash of ``edit.json`` itself; format 1 edits still load).

        Raises:
            EditError: one line naming the file and the field: missing files, another format or version, a
                missing or mistyped field, a relabelled edit, or tensors that do not match their hashes.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory)
        meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
        if not meta_path.is_file() or not weights_path.is_file():
            raise EditError(f"{str(path)!r} is not an edit directory (needs {META_FILE} and {WEIGHTS_FILE})")
        meta = read_metadata(meta_path)
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as exc:
            raise EditError(f"{weights_path} is unreadable: {exc}") from None
        check_tensors(meta, tensors, weights_path)
        weights: dict[str, torch.Tensor] = {}
        originals: dict[str, torch.Tensor | None] = {}
        for key, info in meta["parameters"].items():
            weights[key] = tensors[f"new/{key}"]
            originals[key] = tensors.get(f"base/{key}")
            for label, tensor, expected in (
                ("new", weights[key], info["new_sha256"]),
                ("base", originals[key], info["base_sha256"]),
            ):
                if tensor_hash(tensor) != expected:
                    raise EditError(f"{weights_path}: the {label} tensor of {key} does not match its recorded hash")
        return cls(
            method=meta["method"],
            family=meta["family"],
            weights=weights,
            originals=originals,
            request=meta.get("request", {}),
            config=meta.get("config", {}),
            stats=meta.get("stats", {}),
            notes=tuple(meta.get("notes", ())),
            version=meta.get("diffloc_version", ""),
        )

    def summary(self) -> str:
        """Human-readable description: method, base, and every touched parameter."""
        lines = [
            f"{self.method} edit for a {self.family} model (diffloc {self.version})",
            f"request: {json.dumps(dict(self.request))}",
            f"parameters: {len(self.weights)} tensors, {self.num_values:,} values",
        ]
        for key, new in self.weights.items():
            base = self.base["tensors"][key]
            dtype = str(new.dtype).removeprefix("torch.")
            origin = "absent (added by the edit)" if base == ABSENT else f"sha256 {base[:16]}"
            lines.append(f"  {key}  {tuple(new.shape)} {dtype} {new.numel():,} values  base {origin}")
        lines += [f"stats: {json.dumps(dict(self.stats))}"] if self.stats else []
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _write(model: LoadedModel, values: Mapping[str, torch.Tensor | None]) -> None:
    """Set parameters in place (``None`` empties a slot; a value in an empty slot creates a parameter)."""
    with torch.no_grad():
        for key, value in values.items():
            module, attr = resolve_parameter(model, key)
            param = module._parameters[attr]
            if value is None:
                module.register_parameter(attr, None)
            elif param is None:
                like = next(module.parameters())
                module.register_parameter(
                    attr, nn.Parameter(value.to(device=like.device).clone(), requires_grad=like.requires_grad)
                )
            else:
                param.copy_(value.to(device=param.device))


def snapshot(model: LoadedModel, keys: list[str]) -> dict[str, torch.Tensor | None]:
    """Detached copies of the model's current values of ``keys`` (``None`` for empty slots)."""
    out: dict[str, torch.Tensor | None] = {}
    for key in keys:
        tensor = current_tensor(model, key)
        out[key] = None if tensor is None else tensor.detach().clone()
    return out
