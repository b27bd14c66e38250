"""Atomic file writes: write to a temporary file in the same directory, then rename over the target.

A crash or ``kill -9`` mid-write leaves either the old file or the new one, never a torn file. Temporary
files and folders are private while they are written (``mkstemp``/``mkdtemp`` make them 0600/0700); they get
the mode the user's umask gives new files and folders (0644/0755 under 0022) before they are renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffloc.errors import DifflocError, NonFiniteError


def _creatable(path: Path, what: str) -> None:
    """Raise unless ``path`` (absent) could be created: its nearest existing ancestor is a writable directory."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise DifflocError(f"cannot create {what} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DifflocError(f"cannot create {what} {str(path)!r}: directory {str(parent)!r} is not writable")


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Check, without creating anything, that ``path`` is a writable directory or could be created as one.

    Commands call this before they load a model, and let the first file they write create the directory, so a
    refused or failed command leaves nothing behind.

    Raises:
        DifflocError: it exists as a file, or it (or the directory it would be created in) is not writable.
    """
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise DifflocError(f"{what} {str(out)!r} exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise DifflocError(f"{what} {str(out)!r} is not writable")
    else:
        _creatable(out, what)
    return out


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check, without creating anything, that a file could be written atomically at ``path``.

    Raises:
        DifflocError: it is a directory, its directory is not writable, or a parent is a file.
    """
    out = Path(path)
    if out.is_dir():
        raise DifflocError(f"{what} {str(out)!r} is a directory; give a file path")
    if out.parent.exists():
        if not out.parent.is_dir():
            raise DifflocError(f"cannot create {what} {str(out)!r}: {str(out.parent)!r} is a file, not a directory")
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise DifflocError(f"cannot write {what} {str(out)!r}: directory {str(out.parent)!r} is not writable")
    else:
        _creatable(out, what)
    return out


def current_umask() -> int:
    """The process's umask: read from ``/proc`` where there is one (changing nothing), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(*, directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (0666) or folder (0777) under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def staging_dir(parent: str | Path, prefix: str) -> Path:
    """A new temporary folder in ``parent``, to be filled, passed to :func:`publish_tree` and renamed into place."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def publish_tree(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes of new files and folders under the umask (``mkdtemp`` and
    libraries that write through their own temporary files, such as safetensors, leave them private)."""
    file_mode, dir_mode = public_mode(), public_mode(directory=True)
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)


def write_atomic(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move the temporary file to ``path`` (with the umask's mode)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, public_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def non_finite_key(obj: Any, where: str = "") -> str | None:
    """The key path (``cases.style.efficacy.removed``) of the first NaN or infinite number in ``obj``, or ``None``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(the value itself)"
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = non_finite_key(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON, refusing NaN and infinities (which are not JSON).

    Raises:
        NonFiniteError: naming the key that holds the non-finite number.
    """
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        key = non_finite_key(obj)
        if key is None:
            raise
        raise NonFiniteError(f"refusing to write a non-finite number (NaN or infinity) at {key!r}") from None


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON; a NaN or infinity anywhere in it is refused, nothing written.

    Raises:
        NonFiniteError: naming the file and the key that holds the non-finite number.
    """
    try:
        text = json_text(obj)
    except NonFiniteError as exc:
        raise NonFiniteError(f"{str(path)!r}: {exc}") from None
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
