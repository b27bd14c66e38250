"""Tiny random-weight SD3 and FLUX.1 pipelines with the real depths, built in-process (see :mod:`diffloc.models.tiny`).

The transformer is the published full-size config (:mod:`diffloc.models.full_configs`: SD3-medium's 24 joint
blocks, FLUX.1-dev's 19 double-stream and 38 single-stream blocks) with only widths shrunk; the text encoders
keep their kinds (CLIP-L and CLIP-G with projections and T5 for SD3, CLIP-L and T5 for FLUX) at tiny widths, the
VAE has the real 16 latent channels, scale and shift, and the schedulers are the checkpoints' own. Weights are a
pure function of ``(family, seed)``, as for the UNet families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from diffloc.errors import ConfigError
from diffloc.models.full_configs import full_size_transformer_config
from diffloc.models.registry import MMDIT_FAMILIES
from diffloc.models.tiny import _T5_WIDTH, _clip_config, _if_tokenizer, _init, _t5_encoder, _vae, clip_tokenizer

# Text widths first: SD3's CLIP-L + CLIP-G (768 + 1280) are zero-padded to T5's 4096.
_SD3_CLIP_L, _SD3_CLIP_G = 8, 16  # hidden and projection widths (768 and 1280 in the real encoders)
_FLUX_CLIP_L = 16  # FLUX reads CLIP-L's pooled output, 768 wide
_HEADS, _HEAD_DIM = 2, 8  # 24 heads of 64 (SD3-medium) / 128 (FLUX.1) in the real transformers

_TINY_TRANSFORMER_OVERRIDES: dict[str, dict[str, Any]] = {
    "sd3": {
        "sample_size": 16,
        "attention_head_dim": _HEAD_DIM,
        "num_attention_heads": _HEADS,
        "joint_attention_dim": _T5_WIDTH,
        "caption_projection_dim": _HEADS * _HEAD_DIM,
        "pooled_projection_dim": _SD3_CLIP_L + _SD3_CLIP_G,
        "pos_embed_max_size": 16,
    },
    "flux": {
        "attention_head_dim": _HEAD_DIM,
        "num_attention_heads": _HEADS,
        "joint_attention_dim": _T5_WIDTH,
        "pooled_projection_dim": _FLUX_CLIP_L,
        "axes_dims_rope": [2, 2, 4],  # sums to the head width, as (16, 56, 56) sums to 128
    },
}
# The checkpoints' VAE latent settings (16 channels, scale and shift, no quantization convolutions).
_VAE_LATENT: dict[str, dict[str, Any]] = {
    "sd3": {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609},
    "flux": {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159},
}
# The checkpoints' scheduler_config.json values.
_SCHEDULERS: dict[str, dict[str, Any]] = {
    "sd3": {"num_train_timesteps": 1000, "shift": 3.0},
    "flux": {
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
}


def tiny_transformer_config(family: str) -> dict[str, Any]:
    """The tiny transformer config of ``family``: the full-size config with shrunk widths.

    Raises:
        ConfigError: not a joint-attention family.
    """
    config = full_size_transformer_config(family)
    config.update(_TINY_TRANSFORMER_OVERRIDES[family])
    return config


def _vae_latent(family: str) -> dict[str, Any]:
    return {**_VAE_LATENT[family], "use_quant_conv": False, "use_post_quant_conv": False}


def _build_sd3(seed: int) -> StableDiffusion3Pipeline:
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
    config_l = _clip_config(tokenizer, _SD3_CLIP_L, "quick_gelu", projection_dim=_SD3_CLIP_L)
    config_g = _clip_config(tokenizer_2, _SD3_CLIP_G, "gelu", projection_dim=_SD3_CLIP_G)
    tokenizer_3 = _if_tokenizer()
    config = tiny_transformer_config("sd3")
    return StableDiffusion3Pipeline(
        transformer=_init(seed, "sd3", "transformer", lambda: SD3Transformer2DModel.from_config(config)),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(_SCHEDULERS["sd3"]),
        vae=_vae("sd3", seed, **_vae_latent("sd3")),
        text_encoder=_init(seed, "sd3", "text_encoder", lambda: CLIPTextModelWithProjection(config_l)),
        tokenizer=tokenizer,
        text_encoder_2=_init(seed, "sd3", "text_encoder_2", lambda: CLIPTextModelWithProjection(config_g)),
        tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(len(tokenizer_3), seed, "sd3", "text_encoder_3"),
        tokenizer_3=tokenizer_3,
    )


def _build_flux(seed: int) -> FluxPipeline:
    tokenizer = clip_tokenizer()
    config_l = _clip_config(tokenizer, _FLUX_CLIP_L, "quick_gelu")
    tokenizer_2 = _if_tokenizer()
    config = tiny_transformer_config("flux")
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(_SCHEDULERS["flux"]),
        vae=_vae("flux", seed, **_vae_latent("flux")),
        text_encoder=_init(seed, "flux", "text_encoder", lambda: CLIPTextModel(config_l)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(tokenizer_2), seed, "flux", "text_encoder_2"),
        tokenizer_2=tokenizer_2,
        transformer=_init(seed, "flux", "transformer", lambda: FluxTransformer2DModel.from_config(config)),
    )


_BUILDERS: dict[str, Callable[[int], DiffusionPipeline]] = {"sd3": _build_sd3, "flux": _build_flux}


def build_tiny_mmdit_pipeline(family: str, *, seed: int = 0) -> DiffusionPipeline:
    """Build a tiny random-weight ``sd3`` or ``flux`` pipeline on the CPU in float32, offline, in eval mode.

    The default sample is 16x16 latents (128 px); FLUX's transformer is FLUX.1-dev's (guidance embedded).

    Raises:
        ConfigError: not a joint-attention family.
    """
    if family not in _BUILDERS:
        raise ConfigError(f"no tiny joint-attention model {family!r}; valid: {', '.join(MMDIT_FAMILIES)}")
    pipe = _BUILDERS[family](seed)
    for module in pipe.components.values():
        if hasattr(module, "eval"):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
