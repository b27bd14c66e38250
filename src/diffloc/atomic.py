"""Atomic file writes: write to a temporary file in the same directory, then rename over the target.

A crash or ``kill -9`` mid-write leaves either the old file or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffloc.errors import DifflocError


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check it is a writable directory.

    Raises:
        DifflocError: it exists as a file, or cannot be created or written.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DifflocError(f"output path {str(out)!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DifflocError(f"cannot create output directory {str(out)!r}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise DifflocError(f"output directory {str(out)!r} is not writable")
    return out


def write_atomic(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move the temporary file to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
