"""The on-disk format of an edit (``edit.json`` + ``edit.safetensors``), read strictly.

Every field of ``edit.json`` is checked for its type and meaning before anything is built from it, and every error
is one line naming the file and the field (``edit.json: format_version must be an integer, got str '1'``).

Format versions:

* 1: the tensors are covered by their sha256 hashes (recorded per parameter, checked on load); the method,
  request and config are not, so an old edit relabelled by hand is caught only where its config does not fit the
  claimed method.
* 2 (the format written): as 1, plus ``sha256``, the hash of every other field of ``edit.json`` (canonical JSON), which
  therefore covers the method, request, config, family, stats and the tensor hashes. It detects an ``edit.json``
  changed after it was saved; like any unsigned checksum it does not prove who saved it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from diffloc.atomic import non_finite_key
from diffloc.config import from_dict, shown
from diffloc.errors import ConfigError, EditError, NonFiniteError

FORMAT = "diffloc-edit"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: hash recorded for a parameter that does not exist in the base model (e.g. a bias the edit adds)
ABSENT = "absent"
HASH_KEY = "sha256"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def metadata_hash(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of every field of ``edit.json`` except :data:`HASH_KEY` itself."""
    body = {k: v for k, v in meta.items() if k != HASH_KEY}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise NonFiniteError(f"edit metadata holds a non-finite number at {non_finite_key(body)!r}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _need(condition: bool, file: Path, field: str, expected: str, value: Any) -> None:
    if not condition:
        raise EditError(f"{file}: {field} must be {expected}, got {shown(value)}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _require(file: Path, meta: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if key not in meta:
            raise EditError(f"{file}: missing required field {key!r}")


def read_metadata(file: Path) -> dict[str, Any]:
    """Parse and check ``edit.json``; returns it unchanged when every field is valid.

    Raises:
        EditError: unreadable or not JSON, another format or version, a missing or mistyped field, a request or
            config that does not fit the method, or (format 2) contents that no longer match their hash.
    """
    try:
        meta = json.loads(file.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except OSError as exc:
        raise EditError(f"{file} is unreadable: {exc.strerror}") from None
    except ValueError as exc:
        raise EditError(f"{file} is not valid JSON ({str(exc).splitlines()[0]})") from None
    _need(isinstance(meta, dict), file, "its top level", "a JSON object", meta)
    _require(file, meta, "format", "format_version")
    if meta.get("format") != FORMAT:
        raise EditError(f"{file} is not a diffloc edit (format {meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    _need(isinstance(version, int) and not isinstance(version, bool), file, "format_version", "an integer", version)
    if version not in READABLE_VERSIONS:
        raise EditError(
            f"{file} has format_version {version}; this diffloc reads {READABLE_VERSIONS[0]}-{READABLE_VERSIONS[-1]}"
            f"{' (a newer diffloc wrote it)' if version > FORMAT_VERSION else ''}"
        )
    if version >= 2:
        _require(file, meta, HASH_KEY)
        recorded = meta.get(HASH_KEY)
        _need(isinstance(recorded, str) and bool(_SHA256.match(recorded)), file, HASH_KEY, "a sha256 hex digest",
              recorded)  # fmt: skip
        if metadata_hash(meta) != recorded:
            raise EditError(
                f"{file}: its {HASH_KEY} does not match its contents (method, request, config, tensor hashes…); "
                "edit.json was changed after the edit was saved"
            )
    _check_fields(file, meta)
    return meta


def _check_fields(file: Path, meta: dict[str, Any]) -> None:
    from diffloc.editing.registry import get_method
    from diffloc.editing.requests import EditRequest
    from diffloc.models.registry import FAMILIES

    _require(file, meta, "method", "family", "parameters")
    for key in ("method", "family"):
        _need(isinstance(meta.get(key), str), file, key, "a string", meta.get(key))
    try:
        method = get_method(meta["method"])
    except ConfigError as exc:
        raise EditError(f"{file}: {exc}") from None
    if meta["family"] not in FAMILIES:
        raise EditError(f"{file}: family {meta['family']!r} is not one of {', '.join(FAMILIES)}")
    _need(isinstance(meta.get("diffloc_version", ""), str), file, "diffloc_version", "a string",
          meta.get("diffloc_version"))  # fmt: skip
    for key in ("request", "config", "stats"):
        _need(isinstance(meta.get(key, {}), dict), file, key, "a JSON object", meta.get(key))
    notes = meta.get("notes", [])
    _need(isinstance(notes, list) and all(isinstance(n, str) for n in notes), file, "notes", "a list of strings",
          notes)  # fmt: skip
    try:
        from_dict(EditRequest, meta.get("request", {}), where=f"{file}: request")
        from_dict(method.config_class, meta.get("config", {}), where=f"{file}: config of a {method.name} edit")
    except ConfigError as exc:
        raise EditError(str(exc)) from None
    _check_parameters(file, meta.get("parameters"))


def _check_parameters(file: Path, parameters: Any) -> None:
    _need(isinstance(parameters, dict) and bool(parameters), file, "parameters",
          "a non-empty object of parameter -> {shape, dtype, numel, base_sha256, new_sha256}", parameters)  # fmt: skip
    for key, info in parameters.items():
        where = f"parameters[{key!r}]"
        _need(isinstance(info, dict), file, where, "an object", info)
        shape = info.get("shape")
        _need(isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape), file, f"{where}.shape",
              "a list of sizes", shape)  # fmt: skip
        _need(
            isinstance(info.get("dtype"), str) and info["dtype"] in _DTYPES,
            file,
            f"{where}.dtype",
            f"one of {', '.join(_DTYPES)}",
            info.get("dtype"),
        )
        _need(info.get("numel") == math.prod(shape), file, f"{where}.numel", f"{math.prod(shape)} (its shape's size)",
              info.get("numel"))  # fmt: skip
        new, base = info.get("new_sha256"), info.get("base_sha256")
        _need(isinstance(new, str) and bool(_SHA256.match(new)), file, f"{where}.new_sha256", "a sha256 hex digest",
              new)  # fmt: skip
        _need(base == ABSENT or (isinstance(base, str) and bool(_SHA256.match(base))), file,
              f"{where}.base_sha256", f"a sha256 hex digest or {ABSENT!r}", base)  # fmt: skip


def check_tensors(meta: dict[str, Any], tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Check the safetensors file holds exactly the tensors ``edit.json`` lists, with their shapes and dtypes
    (their hashes are checked by the caller).

    Raises:
        EditError: a tensor is missing, unexpected, or of another shape or dtype than recorded.
    """
    expected = set()
    for key, info in meta["parameters"].items():
        expected.add(f"new/{key}")
        if info["base_sha256"] != ABSENT:
            expected.add(f"base/{key}")
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing:
        kind, key = missing[0].split("/", 1)
        raise EditError(f"{file} lacks the {kind} weights of {key}")
    if extra:
        raise EditError(f"{file} holds tensor {extra[0]!r}, which edit.json does not list")
    for name in sorted(expected):
        info = meta["parameters"][name.split("/", 1)[1]]
        tensor = tensors[name]
        if list(tensor.shape) != info["shape"] or tensor.dtype != _DTYPES[info["dtype"]]:
            raise EditError(
                f"{file}: tensor {name!r} is {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}, but "
                f"edit.json records shape {tuple(info['shape'])} and dtype {info['dtype']}"
            )
