"""A pipeline's module structure from its config files alone: the denoiser and text encoders built on the
``meta`` device, so the site table of a multi-gigabyte checkpoint costs no weight reads and no memory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from diffloc.errors import ModelLoadError
from diffloc.models.base import LoadedModel

logger = logging.getLogger(__name__)

#: The text encoders the site table is built from (with the family adapter's denoiser).
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


def _meta_component(path: Path, name: str, library: str, class_name: str) -> Any:
    """One component built from its config on the meta device (no weights)."""
    folder = path / name
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{name} of {str(path)!r} has no config.json; the pipeline folder is incomplete")
    try:
        if library == "diffusers":
            import diffusers

            cls: Any = getattr(diffusers, class_name)
            with torch.device("meta"):
                return cls.from_config(cls.load_config(folder))
        if library == "transformers":
            import transformers

            cls = getattr(transformers, class_name)
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            with torch.device("meta"):
                return cls(config)
    except (AttributeError, OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"cannot build {name} ({library}.{class_name}) of {str(path)!r} from its config: {exc}".splitlines()[0]
        ) from None
    raise ModelLoadError(f"{name} of {str(path)!r} comes from {library!r}; diffloc reads diffusers and transformers")


def load_structure(path: Path, *, family: str | None = None, source: str | None = None) -> LoadedModel:
    """The pipeline at ``path`` with its denoiser and text encoders on the ``meta`` device (configs only).

    Good for everything that needs names and shapes — the site table, the family — and nothing that
    computes: the returned model has no weights and no tokenizer, VAE or scheduler.

    Raises:
        ModelLoadError: a structural component's config is missing or unreadable.
        UnsupportedModelError: the pipeline class has no adapter.
    """
    from diffloc.models.registry import adapter_for, pipeline_class_name
    from diffloc.models.sd import StableDiffusionAdapter

    class_name = pipeline_class_name(path)
    denoiser = adapter_for(class_name, family).denoiser_component  # unsupported classes fail before anything is built
    index = json.loads((path / "model_index.json").read_text())
    parts: dict[str, Any] = {}
    for name in (denoiser, *TEXT_COMPONENTS):
        spec = index.get(name)
        if isinstance(spec, list) and len(spec) == 2 and spec[0] is not None:
            parts[name] = _meta_component(path, name, str(spec[0]), str(spec[1]))
        elif name in index:
            parts[name] = None
    if parts.get(denoiser) is None:
        raise ModelLoadError(f"{str(path)!r} has no {denoiser}; its {class_name} needs one to denoise")
    pipe = SimpleNamespace(**parts, components=parts)
    if family is None and class_name in StableDiffusionAdapter.pipeline_classes:
        family = StableDiffusionAdapter.detect_family(pipe)
    adapter = adapter_for(class_name, family)
    logger.info("built the structure of %s (%s) from configs on the meta device", class_name, adapter.family)
    return LoadedModel(pipe=pipe, adapter=adapter, sites=adapter.build_sites(pipe), source=source or str(path))
