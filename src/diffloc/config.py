"""Strict loading of YAML/dict configuration into frozen dataclasses: unknown keys and missing fields raise."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffloc.errors import ConfigError, close_matches, one_of

T = TypeVar("T")


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
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{str(file)!r} is not valid YAML{where}") from None


def from_dict(cls: type[T], data: Any, *, where: str) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, refusing unknown keys and missing required ones.

    Lists become tuples (configs are immutable). ``where`` names the place in the file for messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
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
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
