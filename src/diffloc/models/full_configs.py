"""Published UNet configurations of the full-size checkpoints diffloc supports, written as data.

These are the values of the ``unet/config.json`` files of the real checkpoints (private ``_``-prefixed keys
dropped). They serve two purposes:

* building the UNet on the ``meta`` device (no weights, no download) to derive module names and layer counts
  that the tiny test models must reproduce;
* being the template that :mod:`diffloc.models.tiny` shrinks, so a tiny model cannot drift from the real block
  structure: it overrides widths only.

Sources: ``runwayml/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-2-1``,
``stabilityai/stable-diffusion-xl-base-1.0`` and ``DeepFloyd/IF-I-XL-v1.0``; for the diffusion transformers
(``transformer/config.json``), ``PixArt-alpha/PixArt-XL-2-1024-MS``.
"""

from __future__ import annotations

import copy
from typing import Any

from diffloc.errors import ConfigError, close_matches

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

# runwayml/stable-diffusion-v1-5 (written by diffusers 0.6.0; every later key takes its default).
_SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": list(_SD_DOWN),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": list(_SD_UP),
}

# stabilityai/stable-diffusion-2-1 (768-v): linear projections, per-block head counts (head dim 64), upcast.
_SD21_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "cross_attention_dim": 1024,
    "down_block_types": list(_SD_DOWN),
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "resnet_time_scale_shift": "default",
    "sample_size": 96,
    "up_block_types": list(_SD_UP),
    "upcast_attention": True,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-xl-base-1.0: three levels, 1/2/10 transformer layers, text+time micro-conditioning.
_SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# DeepFloyd/IF-I-XL-v1.0 (stage I, 64 px pixel space): model_channels 704 x (1, 2, 3, 4), attention at
# 32/16/8 px, T5-XXL states (4096) projected to 2816, attention pooling into the time embedding, learned
# variance (6 output channels), scale-shift ResNets with up/down-sampling ResNets.
_IF_I_XL_UNET: dict[str, Any] = {
    "act_fn": "gelu",
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 64,
    "block_out_channels": [704, 1408, 2112, 2816],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2816,
    "cross_attention_norm": "group_norm",
    "down_block_types": [
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": 4096,
    "encoder_hid_dim_type": "text_proj",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 3,
    "layers_per_block": 3,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 6,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "scale_shift",
    "sample_size": 64,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": [
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ],
    "upcast_attention": False,
    "use_linear_projection": False,
}

FULL_UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": _SD15_UNET,
    "sd2": _SD21_UNET,
    "sdxl": _SDXL_UNET,
    "if": _IF_I_XL_UNET,
}
"""Family name -> published UNet config. Read through :func:`full_size_unet_config`, which copies."""

FAMILIES: tuple[str, ...] = tuple(FULL_UNET_CONFIGS)
"""The UNet families diffloc has tiny and full-size configurations for, in a stable order."""

# PixArt-alpha/PixArt-XL-2-1024-MS (transformer/config.json): 28 blocks of width 16 x 72 = 1152, patch 2,
# T5-XXL states (4096) projected to 1152 by caption_projection, adaLN-single, learned variance (8 = 2 x 4
# output channels). sample_size 128 (1024 px) turns on the resolution / aspect-ratio micro-conditions.
_PIXART_ALPHA_1024: dict[str, Any] = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "attention_type": "default",
    "caption_channels": 4096,
    "cross_attention_dim": 1152,
    "dropout": 0.0,
    "in_channels": 4,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 128,
    "upcast_attention": False,
}

DIT_FAMILIES: tuple[str, ...] = ("pixart",)
"""The cross-attention diffusion-transformer families whose tiny models :mod:`diffloc.models.tiny` builds."""


def check_family(family: str) -> str:
    """Return ``family`` unchanged if it is a known family.

    Raises:
        ConfigError: ``family`` is not one of :data:`FAMILIES`; the message names the value and the choices.
    """
    known = FAMILIES + DIT_FAMILIES
    if family not in known:
        raise ConfigError(
            f"unknown model family {family!r}; valid families: {', '.join(known)}{close_matches(str(family), known)}"
        )
    return family


def full_size_unet_config(family: str) -> dict[str, Any]:
    """Return the published UNet config of the full-size checkpoint of ``family`` (a fresh deep copy).

    The result can be instantiated without weights::

        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(full_size_unet_config("sd1"))

    Args:
        family: one of ``"sd1"`` (SD-1.5), ``"sd2"`` (SD-2.1), ``"sdxl"`` (SD-XL base 1.0),
            ``"if"`` (DeepFloyd IF-I-XL v1.0).

    Returns:
        A dict of ``UNet2DConditionModel`` constructor arguments.

    Raises:
        ConfigError: unknown ``family``.
    """
    if check_family(family) not in FULL_UNET_CONFIGS:
        raise ConfigError(f"{family!r} is not a UNet family; valid: {', '.join(FAMILIES)}")
    return copy.deepcopy(FULL_UNET_CONFIGS[family])


# --- joint-attention transformers (SD3, FLUX.1) -----------------------------------------------------------
# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json: 24 joint blocks, 1536 wide.
_SD3_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}
# black-forest-labs/FLUX.1-dev, transformer/config.json: 19 double-stream + 38 single-stream blocks, 3072 wide.
_FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

FULL_TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "sd3": _SD3_MEDIUM_TRANSFORMER,
    "flux": _FLUX1_DEV_TRANSFORMER,
    "pixart": _PIXART_ALPHA_1024,
}
"""Transformer family -> published transformer config (SD3-medium, FLUX.1-dev, PixArt-α XL-2 1024-MS); read
through :func:`full_size_transformer_config`, which copies."""


def full_size_transformer_config(family: str) -> dict[str, Any]:
    """The published transformer config of ``family`` (``sd3``: SD3-medium, ``flux``: FLUX.1-dev, ``pixart``:
    PixArt-α XL-2 1024-MS), a fresh copy.

    Raises:
        ConfigError: not a transformer family.
    """
    if family not in FULL_TRANSFORMER_CONFIGS:
        raise ConfigError(
            f"no transformer config for family {family!r}; valid: {', '.join(FULL_TRANSFORMER_CONFIGS)}"
            f"{close_matches(str(family), FULL_TRANSFORMER_CONFIGS)}"
        )
    return copy.deepcopy(FULL_TRANSFORMER_CONFIGS[family])
