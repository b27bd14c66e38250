"""Where a model runs: the device, the parameter dtype and the weight-file variant, checked before loading.

Defaults follow what a GPU user expects: ``cuda`` when a CUDA device is visible, else ``cpu``; ``float16`` on
CUDA, ``float32`` elsewhere. Every bad value gets a one-line :class:`~diffloc.errors.ConfigError` that names
the fix (``--device cpu``, a CUDA build of torch, ``--variant fp16`` …).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from diffloc.errors import ConfigError, ModelLoadError, close_matches

#: dtype names accepted by ``--dtype`` / ``dtype=``, with the usual short spellings.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
#: device types ``--device`` accepts (with an optional ``:index``), plus ``auto``.
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
#: suffixes of weight files diffusers and transformers read
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_WEIGHT_FILE = re.compile(r"^(?P<stem>.+?)(?:-\d{5}-of-\d{5})?(?:\.(?P<variant>[A-Za-z0-9_]+))?\.(?:safetensors|bin)$")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (a CPU build of torch never does)."""
    return bool(torch.cuda.is_available())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: ``None``/``"auto"`` gives ``cuda`` when available, else ``cpu``.

    Raises:
        ConfigError: an unknown device, or one this machine does not have (the message names the fix).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if cuda_available() else "cpu")
    text = str(device).strip().lower()
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in DEVICE_TYPES:
        raise ConfigError(
            f"unknown device {str(device)!r}; valid: auto, cpu, cuda, cuda:N, mps, xpu"
            f"{close_matches(text, ('auto', *DEVICE_TYPES))}"
        )
    if resolved.type == "cuda":
        if not cuda_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"device {text!r} asked for, but CUDA is not available (torch {torch.__version__} is {build}, "
                "or no GPU is visible); use --device cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"device {text!r} asked for, but only {count} CUDA device(s) are visible (cuda:0..)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {text!r} asked for, but MPS is not available here; use --device cpu")
    elif resolved.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"device {text!r} asked for, but no XPU is available here; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The parameter dtype: ``None`` gives ``float16`` on CUDA and ``float32`` elsewhere.

    Raises:
        ConfigError: a dtype other than float32, float16 or bfloat16 (or their short spellings).
    """
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; valid: {', '.join(DTYPES)}")
        return dtype
    text = str(dtype).strip().lower().removeprefix("torch.")
    name = _DTYPE_ALIASES.get(text, text)
    if name not in DTYPES:
        raise ConfigError(
            f"unknown dtype {str(dtype)!r}; valid: {', '.join(DTYPES)} (or fp32, fp16, bf16)"
            f"{close_matches(name, DTYPES)}"
        )
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``"float16"`` for ``torch.float16`` (the spelling ``--dtype`` takes)."""
    return str(dtype).removeprefix("torch.")


def check_variant(variant: str | None) -> str | None:
    """``None`` or a plain variant name (``fp16``, ``bf16`` …): the part between the stem and ``.safetensors``.

    Raises:
        ConfigError: the name holds anything but letters, digits and ``_``.
    """
    if variant is None or variant == "":
        return None
    if not re.fullmatch(r"[A-Za-z0-9_]+", variant):
        raise ConfigError(f"variant {variant!r} is not a weight-file variant name like fp16 or bf16")
    return variant


def file_variant(name: str) -> tuple[bool, str | None]:
    """Whether a file name is a weight file (or a sharded weights index), and its variant (``None``: plain).

    ``diffusion_pytorch_model.fp16.safetensors`` is variant ``fp16``; shards
    (``model-00001-of-00002.fp16.safetensors``) and their index (``model.safetensors.index.fp16.json``) too.
    """
    index = re.fullmatch(r".+\.(?:safetensors|bin)\.index(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json", name)
    if index:
        return True, index.group("variant")
    match = _WEIGHT_FILE.match(name)
    return (True, match.group("variant")) if match else (False, None)


def weight_files(component_dir: Path, variant: str | None) -> list[Path]:
    """The ``.safetensors`` weight files of one variant (``None``: the plain files) in a component folder."""
    if not component_dir.is_dir():
        return []
    return sorted(
        f
        for f in component_dir.iterdir()
        if f.name.endswith(".safetensors") and file_variant(f.name) == (True, variant)
    )


def weight_variants(component_dir: Path) -> set[str | None]:
    """The variants of the weight files in a component folder (``None`` for the plain files)."""
    if not component_dir.is_dir():
        return set()
    return {variant for is_weight, variant in map(file_variant, (f.name for f in component_dir.iterdir())) if is_weight}


def check_weight_files(path: Path, variant: str | None, components: list[str]) -> None:
    """Refuse, in one line, a pipeline folder whose weight files do not match the asked-for variant.

    Args:
        path: the pipeline directory.
        variant: the ``--variant`` (``None``: the plain files).
        components: the weighted components that will be loaded (``unet``, ``vae``, ``text_encoder`` …).

    Raises:
        ModelLoadError: a component has no weights of that variant; the message says which variants exist
            (a folder holding only ``*.fp16.safetensors`` says to load with ``--variant fp16``).
    """
    for component in components:
        present = weight_variants(path / component)
        if not present or variant in present:
            continue  # no weights at all: the loader reports it; or the variant is there
        others = sorted(v for v in present if v is not None)
        if variant is None:
            raise ModelLoadError(
                f"{component} in {str(path)!r} has only {', '.join(others)} weights (e.g. *.{others[0]}.safetensors); "
                f"load with --variant {others[0]} (variant={others[0]!r})"
            )
        plain = None in present
        offer = ", ".join(
            ([] if not plain else ["no --variant (the plain files)"]) + [f"--variant {v}" for v in others]
        )
        raise ModelLoadError(
            f"{component} in {str(path)!r} has no {variant!r} weights (*.{variant}.safetensors); use {offer}"
        )


def weighted_components(path: Path) -> list[str]:
    """Components of a pipeline folder's ``model_index.json`` that are torch modules with weight files."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path / 'model_index.json'} is unreadable ({exc})") from None
    out = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            continue
        if (path / name).is_dir() and weight_variants(path / name):
            out.append(name)
    return out
