"""ShapesWorld model architecture, export in the real SD layout, and safe loading.

The model is a standard :class:`~diffusers.StableDiffusionPipeline`: a small ``AutoencoderKL`` (32×32 RGB
↔ 16×16×4 latents), a ``UNet2DConditionModel`` with SD-1.5's block structure at tiny width (three
cross-attention down blocks, a plain down block, a cross-attention mid block, a plain up block and three
cross-attention up blocks; two layers per down block → 16 cross-attention layers, like SD-1.5), a causal
``CLIPTextModel`` and the CLIP tokenizer with Stable Diffusion's exact ids.

The text encoder is always written in the real SD layout (``text_model.*`` keys): transformers 5 saves
without that prefix, which transformers 4 would silently re-initialise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffloc.atomic import publish_tree, staging_dir, write_atomic
from diffloc.errors import CheckpointError, ConfigError, ModelLoadError
from diffloc.models.registry import SAMPLER_FILE, SHIPPED_MODELS

logger = logging.getLogger(__name__)

TEXT_PREFIX = "text_model."
LATENT_SIZE = 16
IMAGE_SIZE = 32
#: Classifier-free guidance the ShapesWorld model is evaluated and used with, chosen on the validation split
#: (training templates, not the held-out ones): ``diffloc world eval --split validation --seeds 2 --guidance G``
#: for G = 4, 5 — 4 read back best; at 7.5 the detectors read grey backgrounds as black more often (model card).
GUIDANCE = 4.0


def assets_dir() -> Path:
    """Directory of the files shipped inside the package (``diffloc/assets``)."""
    return Path(str(resources.files("diffloc") / "assets"))


def shipped_model_dir() -> Path:
    """Directory of the shipped ShapesWorld pipeline (``diffloc/assets/shapesworld``)."""
    return assets_dir() / "shapesworld"


def pipeline_dir(value: str, field: str) -> Path:
    """The ShapesWorld pipeline directory a user named (a shipped model's name: its directory).

    Raises:
        ConfigError: ``value`` is not a directory (the message names ``field``).
    """
    path = assets_dir() / value if value in SHIPPED_MODELS else Path(value)
    if not path.is_dir():
        raise ConfigError(f"{field} {str(path)!r} is not a directory; give a ShapesWorld pipeline directory")
    return path


def tokenizer_dir() -> Path:
    """Directory of the shipped CLIP tokenizer files (SD's exact vocabulary and merges)."""
    return assets_dir() / "clip_tokenizer"


def load_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer with Stable Diffusion's ids (BOS 49406, EOS 49407, 49408 tokens), offline."""
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)


def text_encoder_config(*, width: int, layers: int, heads: int) -> CLIPTextConfig:
    """A causal CLIP text encoder config with SD's vocabulary, special ids and 77 positions."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        projection_dim=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_text_encoder(*, width: int = 96, layers: int = 4, heads: int = 4) -> CLIPTextModel:
    """A freshly initialised ShapesWorld text encoder."""
    return CLIPTextModel(text_encoder_config(width=width, layers=layers, heads=heads))


def build_unet(
    *, channels: tuple[int, ...] = (32, 64, 64, 64), heads: tuple[int, ...] = (1, 2, 2, 2), context_dim: int = 96
) -> UNet2DConditionModel:
    """SD-1.5's UNet block structure at tiny width, on 16×16×4 latents (16 cross-attention layers)."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=2,
        cross_attention_dim=context_dim,
        attention_head_dim=heads,
        norm_num_groups=8,
    )


def build_vae() -> AutoencoderKL:
    """A small KL autoencoder: 32×32 RGB ↔ 16×16×4 latents, no mid-block attention."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


#: The schedule of a ``zero_snr`` run (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
#: flawed"): betas rescaled so the last timestep is exactly pure noise, v-prediction (ε cannot be predicted
#: there) and trailing timesteps, so 20-step sampling starts at that last step. The default ε schedule samples
#: 20 steps from step 951, where a training image keeps 7.5 % of its amplitude (alpha-bar 0.0056): started
#: from pure noise, the first steps read that missing signal into the seed's noise.
ZERO_SNR_SCHEDULE: dict[str, object] = {
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}


def build_scheduler(**overrides: object) -> DDIMScheduler:
    """The noise schedule used in training and the pipeline's default sampler (cosine betas, ε; ``overrides``
    replace fields, e.g. :data:`ZERO_SNR_SCHEDULE`)."""
    config = {
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    config.update(overrides)
    return DDIMScheduler(**config)


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def _atomic_write_text(text: str, path: Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_text_encoder_sd_layout(model: CLIPTextModel, directory: Path, *, half: bool = False) -> None:
    """Write ``config.json`` + ``model.safetensors`` with SD's ``text_model.*`` keys (loads in transformers 4 and 5).

    ``half``: store the floating-point tensors in float16 (the config still declares float32, the dtype the
    encoder is loaded and run in).
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        if half and value.is_floating_point():
            value = value.half()
        state[key if key.startswith(TEXT_PREFIX) else TEXT_PREFIX + key] = value
    _atomic_save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["CLIPTextModel"]
    config["model_type"] = "clip_text_model"
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    _atomic_write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", directory / "config.json")


def export_pipeline(
    *,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    out_dir: Path,
    scheduler: DDIMScheduler | None = None,
) -> Path:
    """Write a complete StableDiffusionPipeline directory in the real SD layout.

    The directory is assembled next to ``out_dir`` and swapped in at the end, so a failure never leaves a
    half-written model. Extra files already in ``out_dir`` that are not pipeline components (model card,
    samples, detector weights, eval JSON) are carried over. ``scheduler``: the run's (default
    :func:`build_scheduler`).
    """

    def write(staging: Path) -> dict[str, Any]:
        unet.save_pretrained(staging / "unet", safe_serialization=True)
        vae.save_pretrained(staging / "vae", safe_serialization=True)
        (scheduler or build_scheduler()).save_pretrained(staging / "scheduler")
        return {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }

    return publish_pipeline(out_dir, write, text_encoder)


def publish_pipeline(
    out_dir: Path, write: Callable[[Path], dict[str, Any]], text_encoder: CLIPTextModel, *, half_text: bool = False
) -> Path:
    """Assemble a ShapesWorld pipeline directory next to ``out_dir`` and swap it in.

    ``write(staging)`` writes the denoiser, VAE and scheduler and returns the ``model_index.json`` contents;
    the text encoder (SD layout; ``half_text``: float16 storage), the CLIP tokenizer and the sampler file are
    added here. Extra files already in ``out_dir`` (model card, samples, detectors, eval JSON) are carried over;
    a failure never leaves a half-written model.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir.parent, f".{out_dir.name}-")
    try:
        index = write(staging)
        save_text_encoder_sd_layout(text_encoder, staging / "text_encoder", half=half_text)
        shutil.copytree(tokenizer_dir(), staging / "tokenizer")
        (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        # the guidance CLI commands default to for this model (diffloc.models.registry.default_guidance)
        (staging / SAMPLER_FILE).write_text(json.dumps({"guidance": GUIDANCE}) + "\n")
        publish_tree(staging)  # the written components get the umask's modes (the copied extras keep theirs)
        # every layout's components: an export over another layout's does not carry its denoiser over
        components = {"unet", "transformer", "vae", "text_encoder", "scheduler", "tokenizer", "model_index.json",
                      SAMPLER_FILE}  # fmt: skip
        if out_dir.exists():
            for item in out_dir.iterdir():
                if item.name not in components:
                    target = staging / item.name
                    if item.is_dir():
                        shutil.copytree(item, target)
                    else:
                        shutil.copy2(item, target)
            old = out_dir.with_name(f".{out_dir.name}-old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("exported ShapesWorld pipeline to %s", out_dir)
    return out_dir


def check_safetensors(path: Path) -> None:
    """Open every tensor of a safetensors file; raise a one-line :class:`CheckpointError` if it is bad.

    Raises:
        CheckpointError: missing, truncated or corrupted file, or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise CheckpointError(f"weights file {str(path)!r} has non-finite values in {key!r}")
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises several types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"weights file {str(path)!r} is truncated or corrupted ({reason})") from exc


def load_pipeline(
    model_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    variant: str | None = None,
):
    """Load a ShapesWorld pipeline offline after checking every weights file: a ``StableDiffusionPipeline``
    (UNet) or a ``PixArtAlphaPipeline`` (ShapesWorld-DiT, :mod:`diffloc.world.dit`), as its index names.

    Args:
        model_dir: a pipeline directory; ``None`` loads the shipped model.
        device: where to run (``None``: CUDA when available, else the CPU).
        dtype: parameter dtype (``None``: float16 on CUDA, float32 elsewhere).
        variant: weight-file variant (``"fp16"`` reads ``*.fp16.safetensors``).

    Raises:
        ModelLoadError: the directory is not a pipeline directory, or lacks the variant's weights.
        CheckpointError: a weights file is missing, truncated or corrupted.
        ConfigError: an unknown or unavailable device, or an unknown dtype.
    """
    from diffusers import PixArtAlphaPipeline, StableDiffusionPipeline

    from diffloc.models.compat import pipeline_dtype_keyword
    from diffloc.models.placement import (
        check_variant,
        check_weight_files,
        resolve_device,
        resolve_dtype,
        weight_files,
        weight_variants,
    )
    from diffloc.world.dit import is_dit_dir

    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    variant = check_variant(variant)
    directory = Path(model_dir) if model_dir is not None else shipped_model_dir()
    if not (directory / "model_index.json").is_file():
        raise ModelLoadError(f"{str(directory)!r} is not a diffusers pipeline directory (no model_index.json)")
    dit = is_dit_dir(directory)
    components = ("transformer" if dit else "unet", "vae", "text_encoder")
    check_weight_files(directory, variant, [c for c in components if weight_variants(directory / c)])
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    for component in components:
        files = weight_files(directory / component, variant)
        if not files:
            raise CheckpointError(f"component {component!r} of {str(directory)!r} has no {suffix} weights")
        for file in files:
            check_safetensors(file)
    options: dict[str, Any] = {pipeline_dtype_keyword(): torch_dtype}
    if variant:
        options["variant"] = variant
    if dit:
        pipe = PixArtAlphaPipeline.from_pretrained(str(directory), local_files_only=True, **options)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(directory), local_files_only=True, safety_checker=None, **options
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(target)
