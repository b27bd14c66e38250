"""Which weight files diffloc reads: safetensors, and pickled ``.bin`` files only when the user allows them.

A pickled checkpoint (``.bin``, ``.pt``, ``.ckpt``) is read through torch's unpickler, which can run code from
the file; safetensors holds only tensors. A model or CLIP directory whose component has safetensors is read from
them (never from a ``.bin`` beside them); one with only pickled weights is refused unless ``allow_pickle``
(``--allow-bin``) says the user trusts it.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffloc.errors import CheckpointError

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
ALLOW_HINT = "pass --allow-bin (diffloc.load(..., allow_pickle=True)) if you trust the file"


def _pickled_only(directory: Path) -> list[str]:
    """Names of the pickled weight files in ``directory`` when it holds no safetensors, else ``[]``."""
    files = [f for f in directory.iterdir() if f.is_file()] if directory.is_dir() else []
    if any(f.name.endswith(SAFE_SUFFIX) for f in files):
        return []
    return sorted(f.name for f in files if f.suffix in PICKLE_SUFFIXES)


def check_pipeline_weights(path: str | Path, *, allow_pickle: bool = False) -> bool:
    """Refuse a pipeline directory with a component stored only as pickled weights, unless ``allow_pickle``.

    Returns:
        Whether every component with weights has safetensors (then load with ``use_safetensors=True``).

    Raises:
        CheckpointError: a component has only pickled weights and ``allow_pickle`` is off (names the flag).
    """
    root = Path(path)
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        return True  # loading reports the unreadable index
    pickled = {
        name: files
        for name in (index if isinstance(index, dict) else {})
        if not name.startswith("_") and (files := _pickled_only(root / name))
    }
    if pickled and not allow_pickle:
        name, files = next(iter(pickled.items()))
        raise CheckpointError(
            f"model directory {str(root)!r}: {name} holds only pickled weights ({', '.join(files)}), which loading "
            f"would unpickle; convert them to safetensors, or {ALLOW_HINT}"
        )
    return not pickled


def check_clip_weights(path: str | Path, *, allow_pickle: bool = False) -> bool:
    """As :func:`check_pipeline_weights` for a CLIP directory saved with ``save_pretrained``."""
    root = Path(path)
    pickled = _pickled_only(root)
    if pickled and not allow_pickle:
        raise CheckpointError(
            f"CLIP directory {str(root)!r} holds only pickled weights ({', '.join(pickled)}), which loading would "
            f"unpickle; convert them to safetensors, or {ALLOW_HINT}"
        )
    return not pickled
