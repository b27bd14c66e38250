"""Strict loading of YAML/dict configuration into frozen dataclasses: unknown keys, missing fields and values of
the wrong type raise a one-line :class:`ConfigError` that names the file and the field.

Types are read from the dataclass's annotations: ``str``, ``int``, ``float``, ``bool``, ``tuple[X, ...]``
(a YAML list), nested dataclasses (a YAML mapping, loaded recursively), ``X | None`` and ``Any``. Ranges are
the dataclass's own ``__post_init__`` checks (:mod:`diffloc.validate`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffloc.errors import ConfigError, DifflocError, close_matches, one_of

T = TypeVar("T")
_SHOWN = 60


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file.

    Raises:
        ConfigError: missing file or invalid YAML (one line, with the file name).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{str(file)!r} is not valid YAML{where}") from None


def shown(value: Any) -> str:
    """A value's type and a short repr for messages: ``int 5``, ``str 'lots'``."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= _SHOWN else text[: _SHOWN - 1] + '…'}"


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (lists become tuples, mappings nested dataclasses).

    Raises:
        ConfigError: ``"<where> must be <what the hint allows>, got <type> <value>"``.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (types.UnionType, typing.Union):
        for option in args:
            try:
                return check_type(value, option, where)
            except ConfigError:
                continue
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, list | tuple):
            return tuple(check_type(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    elif origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if isinstance(value, Mapping):
            return value
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_dict(hint, value, where=where)
    elif hint is type(None):
        if value is None:
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where} must be {_describe(hint)}, got {shown(value)}")


def check_fields(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation (for ``__post_init__``), so a
    config built in Python is as strict as one loaded from a file.

    Raises:
        ConfigError: naming the first field of the wrong type.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_type(getattr(obj, f.name), hints.get(f.name, Any), f.name)


def from_dict(cls: type[T], data: Any, *, where: str) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, refusing unknown keys, missing required ones and values
    of the wrong type. ``where`` names the place in the file for messages (``suite.yaml: cases[0]``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}{close_matches(str(key), fields) or '; valid: ' + one_of(fields)}"
            )
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required field {missing[0]!r}")
    hints = typing.get_type_hints(cls)
    values = {key: check_type(value, hints.get(key, Any), f"{where}: {key}") for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None
    except (DifflocError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
