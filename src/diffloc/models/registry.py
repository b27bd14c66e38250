"""Resolve a model reference, pick its adapter by pipeline class, and load it offline."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from diffloc.errors import CheckpointError, ConfigError, ModelLoadError, UnsupportedModelError, one_of
from diffloc.models.base import LoadedModel, ModelAdapter
from diffloc.models.compat import pipeline_dtype_keyword
from diffloc.models.deepfloyd_if import DeepFloydIFAdapter
from diffloc.models.flux import FluxAdapter
from diffloc.models.pixart import PixArtAdapter
from diffloc.models.placement import (
    check_variant,
    check_weight_files,
    resolve_device,
    resolve_dtype,
    weighted_components,
)
from diffloc.models.sd import StableDiffusionAdapter
from diffloc.models.sd3 import StableDiffusion3Adapter
from diffloc.models.sdxl import StableDiffusionXLAdapter
from diffloc.models.weight_files import check_pipeline_weights

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "if", "pixart")
#: Joint-attention (MMDiT) families: SD3/SD3.5 and FLUX.1.
MMDIT_FAMILIES = ("sd3", "flux")
FAMILIES += MMDIT_FAMILIES
#: ``tiny-<family>`` names a seeded random tiny model of that family's real architecture.
TINY_PREFIX = "tiny-"
#: Optional file in a pipeline directory with the sampler settings its model was evaluated at.
SAMPLER_FILE = "diffloc_sampler.json"
#: Classifier-free guidance of Stable Diffusion's own pipelines, used when a model names none.
SD_GUIDANCE = 7.5
#: The guidance of the joint-attention pipelines' defaults: SD3's classifier-free 7.0, FLUX.1-dev's embedded 3.5.
JOINT_ATTENTION_GUIDANCE = {"sd3": 7.0, "flux": 3.5}
_ADAPTERS: tuple[type[ModelAdapter], ...] = (
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    DeepFloydIFAdapter,
    StableDiffusion3Adapter,
    FluxAdapter,
    PixArtAdapter,
)
#: Optional components that diffloc never uses; not loading them saves memory and time.
_SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor", "watermarker", "image_encoder")


#: Models shipped inside the package, by the name :func:`load` resolves: the ShapesWorld UNet model and the
#: ShapesWorld-DiT (a PixArt-α-structured transformer on the same world, autoencoder and text encoder).
SHIPPED_MODELS = ("shapesworld", "shapesworld-dit")


def shapesworld_dir(name: str = "shapesworld") -> Path:
    """Directory of a shipped ShapesWorld pipeline (:data:`SHIPPED_MODELS`)."""
    return Path(__file__).resolve().parent.parent / "assets" / name


def supported_pipeline_classes() -> list[str]:
    """Pipeline class names diffloc has adapters for."""
    return [name for cls in _ADAPTERS for name in cls.pipeline_classes]


def adapter_for(pipe_or_class: Any, family: str | None = None) -> ModelAdapter:
    """The adapter for a pipeline (or pipeline class name), optionally forcing the family label.

    Raises:
        UnsupportedModelError: no adapter handles this pipeline class, or the family is unknown.
    """
    if family is not None and family not in FAMILIES:
        raise UnsupportedModelError(f"unknown family {family!r}; valid: {one_of(FAMILIES)}")
    class_name = pipe_or_class if isinstance(pipe_or_class, str) else type(pipe_or_class).__name__
    for cls in _ADAPTERS:
        if class_name in cls.pipeline_classes:
            if cls is StableDiffusionAdapter:
                if family is not None and family not in ("sd1", "sd2"):
                    raise UnsupportedModelError(f"family {family!r} does not match pipeline class {class_name}")
                label = family or (
                    StableDiffusionAdapter.detect_family(pipe_or_class) if not isinstance(pipe_or_class, str) else "sd1"
                )
                return StableDiffusionAdapter(label)
            if cls is PixArtAdapter and not isinstance(pipe_or_class, str):
                adapter: ModelAdapter = PixArtAdapter.for_pipeline(pipe_or_class)
            else:
                adapter = cls()
            if family is not None and family != adapter.family:
                raise UnsupportedModelError(f"family {family!r} does not match pipeline class {class_name}")
            return adapter
    raise UnsupportedModelError(
        f"pipeline class {class_name!r} is not supported; supported: {one_of(supported_pipeline_classes())}"
    )


def default_guidance(model: str | Path, given: float | None = None) -> float:
    """Guidance scale to sample ``model`` at: ``given`` when it is not ``None`` (a user's ``--guidance``), else
    the model's default.

    The ``guidance`` of the pipeline directory's ``diffloc_sampler.json`` (ShapesWorld ships 4.0, chosen on its
    validation split; ``diffloc world train`` exports write it), else the pipeline's own default for SD3 (7.0)
    and FLUX.1 (dev: 3.5, embedded; schnell: none), else Stable Diffusion's 7.5 — also for the other tiny models
    and sources that do not resolve (loading them reports the error).

    Raises:
        ConfigError: the file exists but does not hold ``{"guidance": <number >= 0>}``.
    """
    if given is not None:
        return given
    text = str(model)
    if text.startswith(TINY_PREFIX):
        return JOINT_ATTENTION_GUIDANCE.get(text[len(TINY_PREFIX) :], SD_GUIDANCE)  # tiny-flux is FLUX.1-dev
    try:
        path = resolve_source(text)
    except ModelLoadError:
        return SD_GUIDANCE
    file = path / SAMPLER_FILE
    if not file.is_file():
        return _pipeline_guidance(path)
    try:
        value = json.loads(file.read_text())["guidance"]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError(f'{str(file)!r} must hold {{"guidance": <number >= 0>}}; fix or delete it')
    return float(value)


def _pipeline_guidance(path: Path) -> float:
    """The guidance scale a pipeline directory's own pipeline class samples at by default."""
    try:
        class_name = pipeline_class_name(path)
    except ModelLoadError:
        return SD_GUIDANCE
    if class_name == "FluxPipeline":
        try:
            embedded = bool(json.loads((path / "transformer" / "config.json").read_text()).get("guidance_embeds"))
        except (OSError, ValueError):
            return SD_GUIDANCE
        return JOINT_ATTENTION_GUIDANCE["flux"] if embedded else 0.0  # schnell is sampled without guidance
    if class_name == "StableDiffusion3Pipeline":
        return JOINT_ATTENTION_GUIDANCE["sd3"]
    return SD_GUIDANCE


def resolve_source(model: str | Path) -> Path:
    """Turn a shipped model's name (:data:`SHIPPED_MODELS`), a local directory or a cached hub id into a pipeline
    directory.

    Raises:
        ModelLoadError: missing directory, not a diffusers pipeline, or an id absent from the local cache.
    """
    text = str(model)
    if text in SHIPPED_MODELS:
        path = shapesworld_dir(text)
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"the model {text!r} is not installed at {path}; run 'diffloc world train'")
        return path
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{text!r} is a file; expected a diffusers pipeline directory with model_index.json")
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{text!r} is not a diffusers pipeline directory (no model_index.json in it)")
        return path
    looks_like_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_id:
        try:
            from huggingface_hub import snapshot_download

            cached = Path(snapshot_download(text, local_files_only=True))
        except Exception:
            raise ModelLoadError(
                f"model {text!r} is neither a local directory nor in the local Hugging Face cache "
                "(diffloc never downloads; fetch it first on a machine with network)"
            ) from None
        if (cached / "model_index.json").is_file():
            return cached
        raise ModelLoadError(f"cached model {text!r} is not a diffusers pipeline (no model_index.json)")
    raise ModelLoadError(
        f"model directory {text!r} does not exist; give a diffusers directory, a cached id, or 'shapesworld'"
    )


def pipeline_class_name(path: Path) -> str:
    """``_class_name`` from a pipeline's ``model_index.json``."""
    try:
        index = json.loads((path / "model_index.json").read_text())
        return str(index["_class_name"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path / 'model_index.json'} is unreadable or has no _class_name ({exc})") from None


def check_finite(pipe: Any) -> None:
    """Raise :class:`CheckpointError` naming the first parameter holding NaN or Inf."""
    for component_name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        for name, param in component.named_parameters():
            if not torch.isfinite(param).all():
                raise CheckpointError(
                    f"non-finite values (NaN/Inf) in {component_name}.{name}; the checkpoint is corrupted"
                )


def _wrap(pipe: Any, family: str | None, *, source: str, options: dict[str, Any] | None = None) -> LoadedModel:
    adapter = adapter_for(pipe, family)
    check_finite(pipe)
    return LoadedModel(
        pipe=pipe, adapter=adapter, sites=adapter.build_sites(pipe), source=source, load_options=options or {}
    )


def load(
    model: str | Path | Any = "shapesworld",
    *,
    family: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    variant: str | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a text-to-image pipeline offline and wrap it with its adapter and site table.

    Args:
        model: ``"shapesworld"`` (the shipped default) or ``"shapesworld-dit"`` (the same world drawn by a
            PixArt-α-structured transformer); ``"tiny-sd1"``, ``"tiny-sd2"``, ``"tiny-sdxl"``,
            ``"tiny-if"``, ``"tiny-sd3"``, ``"tiny-flux"`` or ``"tiny-pixart"`` (seeded random tiny models of
            each real architecture, built in-process, for trying the mechanics); a local diffusers directory; an id
            present in the local Hugging Face cache; or an already-built diffusers pipeline object.
        family: force the family label (``sd1``, ``sd2``, ``sdxl``, ``if``, ``sd3``, ``flux``, ``pixart``);
            normally inferred from the pipeline class and config.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"`` … (``None``/``"auto"``: CUDA when available, else CPU). An
            in-memory pipeline stays where it is unless ``device`` or ``dtype`` is given.
        dtype: parameter dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (or the torch dtype; ``None``:
            float16 on CUDA, float32 elsewhere). A VAE whose config sets ``force_upcast`` still decodes in
            float32.
        variant: weight-file variant to read (``"fp16"`` reads ``*.fp16.safetensors``); ``None`` reads the
            plain files.
        allow_pickle: also read components stored only as pickled ``.bin`` weights (refused by default: unpickling
            can run code from the file; see :mod:`diffloc.models.weight_files`).

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ModelLoadError, UnsupportedModelError, CheckpointError: with a one-line explanation.
        ConfigError: an unknown or unavailable device, an unknown dtype, or a bad variant name.

    Example:
        >>> m = diffloc.load("shapesworld", device="cpu", dtype="float32")
        >>> m.sites.get("unet.xattn.8").module_path
    """
    variant = check_variant(variant)
    if not isinstance(model, str | Path):
        if variant is not None:
            raise ConfigError("variant applies to weight files on disk, not to an in-memory pipeline")
        if device is not None or dtype is not None:
            target = resolve_device(device)
            model.to(device=target, dtype=resolve_dtype(dtype, target))
        return _wrap(model, family, source="<in-memory>")
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    if isinstance(model, str) and model.startswith(TINY_PREFIX):
        tiny_family = model[len(TINY_PREFIX) :]
        if tiny_family not in FAMILIES:
            raise ModelLoadError(f"unknown tiny model {model!r}; valid: {one_of(TINY_PREFIX + f for f in FAMILIES)}")
        from diffloc.models.tiny import build_tiny_pipeline
        from diffloc.models.tiny_mmdit import build_tiny_mmdit_pipeline

        if variant is not None:
            raise ConfigError(f"variant applies to weight files on disk; {model} is built in-process, drop it")
        builder = build_tiny_mmdit_pipeline if tiny_family in MMDIT_FAMILIES else build_tiny_pipeline
        tiny: Any = builder(tiny_family)
        tiny.to(device=target_device, dtype=target_dtype)
        return _wrap(tiny, family, source=model, options={"family": family, "dtype": target_dtype})

    path = resolve_source(model)
    class_name = pipeline_class_name(path)
    adapter_for(class_name, family)  # fail fast on unsupported classes, before reading weights
    safe_only = check_pipeline_weights(path, allow_pickle=allow_pickle)
    import diffusers

    pipeline_cls: Any = getattr(diffusers, class_name)
    index = json.loads((path / "model_index.json").read_text())
    skip = {name: None for name in _SKIPPED_COMPONENTS if name in index}
    if "requires_safety_checker" in index or "safety_checker" in index:
        skip["requires_safety_checker"] = False  # type: ignore[assignment]
    check_weight_files(path, variant, [c for c in weighted_components(path) if c not in _SKIPPED_COMPONENTS])
    options: dict[str, Any] = {pipeline_dtype_keyword(): target_dtype, "local_files_only": True, **skip}
    if variant is not None:
        options["variant"] = variant
    try:
        if safe_only:
            options["use_safetensors"] = True  # never a .bin beside the safetensors
        pipe = pipeline_cls.from_pretrained(path, **options)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"could not load {class_name} from {str(path)!r}: {type(exc).__name__}: {first}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(target_device)
    check_finite(pipe)
    adapter = adapter_for(pipe, family)
    logger.info("loaded %s (%s) from %s on %s in %s", class_name, adapter.family, path, target_device, target_dtype)
    return LoadedModel(
        pipe=pipe, adapter=adapter, sites=adapter.build_sites(pipe), source=str(model),
        load_options={"family": family, "dtype": target_dtype, "variant": variant, "allow_pickle": allow_pickle},
    )  # fmt: skip
