"""Atomic file writes: write to a temporary file in the same directory, then rename over the target.

A crash or ``kill -9`` mid-write leaves either the old file or the new one, never a torn file. Temporary
files and folders are private while they are written (``mkstemp``/``mkdtemp`` make them 0600/0700); they get
the mode the user's umask gives new files and folders (0644/0755 under 0022) before they are renamed into place.
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


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
