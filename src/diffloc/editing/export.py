"""Write an edited model as a plain diffusers pipeline folder that loads without diffloc.

The edit is applied to the loaded base, the whole pipeline is saved with ``save_pretrained`` (safetensors)
into a staging folder next to the target, and the staging folder is renamed into place only when complete;
the edit is reverted afterwards, and the base model's own files are never written. CLIP text encoders are
saved with the ``text_model.`` key prefix of the published checkpoints, which transformers 4 and 5 both
read (transformers 5 saves without it, and transformers 4 would silently re-initialise such weights).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from diffloc.editing.edit import Edit
from diffloc.errors import EditError
from diffloc.models.base import LoadedModel

logger = logging.getLogger(__name__)

#: Provenance written next to ``model_index.json``: the edit's metadata and the base it was applied to.
PROVENANCE_FILE = "diffloc_edit.json"
_CLIP_PREFIX = "text_model."


def export_edited(model: LoadedModel, edit: Edit, out: str | Path) -> Path:
    """Save ``model`` with ``edit`` applied as a diffusers pipeline folder at ``out``.

    Args:
        model: the unedited base the edit was computed on (checked by hash before anything is written).
        edit: the edit to bake in.
        out: a new or empty directory; it must not be, or lie inside, the base model's folder.

    Returns:
        The written folder; ``DiffusionPipeline.from_pretrained(out)`` loads it.

    Raises:
        EditError: ``out`` is a file, a non-empty directory or inside the base; the model is not the edit's base.
    """
    target = check_export_target(out, model.source)
    edit.check_base(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with edit.applied(model):
            model.pipe.save_pretrained(staging, safe_serialization=True)
        for name, component in model.pipe.components.items():
            if type(component).__name__ == "CLIPTextModel":
                _prefix_clip_keys(staging / name)
        provenance = {"base": model.source, "family": model.family, "edit": edit.metadata()}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the rest was written under the umask
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s edit of %s to %s", edit.method, model.source, target)
    return target


def check_export_target(out: str | Path, base_source: str) -> Path:
    """Refuse an export target before any model loads: it must be a new or empty directory, writable, and not the
    base model's folder or inside it.

    Raises:
        EditError: ``out`` is a file, a non-empty directory or inside the base.
        DifflocError: ``out`` cannot be created or written.
    """
    from diffloc.atomic import check_writable_dir

    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EditError(f"export target {str(target)!r} exists and is not an empty directory; give a new --out")
    base = Path(base_source).expanduser()
    if base.is_dir():
        inside = target.resolve() == base.resolve() or base.resolve() in target.resolve().parents
        if inside:
            raise EditError(f"export target {str(target)!r} lies inside the base model {str(base)!r}; write elsewhere")
    check_writable_dir(target)
    return target


def _prefix_clip_keys(folder: Path) -> None:
    """Rewrite a CLIP text encoder's safetensors with ``text_model.``-prefixed keys (no-op when already so)."""
    from safetensors.torch import load_file, save_file

    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(file))
        if all(key.startswith(_CLIP_PREFIX) for key in tensors):
            continue
        renamed = {key if key.startswith(_CLIP_PREFIX) else _CLIP_PREFIX + key: t for key, t in tensors.items()}
        save_file(renamed, str(file), metadata={"format": "pt"})
    for index in folder.glob("*.safetensors.index.json"):
        data = json.loads(index.read_text())
        data["weight_map"] = {
            (k if k.startswith(_CLIP_PREFIX) else _CLIP_PREFIX + k): v for k, v in data.get("weight_map", {}).items()
        }
        index.write_text(json.dumps(data, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
