"""Full-size SD-1.5, SD-2.1 and SD-XL pipelines with random weights, built offline from the published configs.

What full size costs (time, memory) can be measured without downloading a checkpoint: the UNet is the
published config of :mod:`diffloc.models.full_configs`, the text encoders and the VAE are the published
CLIP and ``AutoencoderKL`` configs below, the tokenizers are the CLIP files diffloc ships. The weights are
PyTorch's default initialisation (what ``from_config`` gives), so images are noise and scores meaningless;
shapes, module names, FLOPs and memory are the real ones. ``bench/full_size.py`` uses this.

The UNet is created on the ``meta`` device, cast, and only then given storage and initialised, so an
SD-XL UNet in bfloat16 never needs its float32 size in memory.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from diffloc.errors import ConfigError
from diffloc.models.full_configs import full_size_unet_config

logger = logging.getLogger(__name__)

#: Families with a full-size random builder (DeepFloyd IF's T5-XXL alone would be 4.8 B parameters).
FULL_SIZE_FAMILIES = ("sd1", "sd2", "sdxl")

# openai/clip-vit-large-patch14's text tower (SD-1.x, SD-XL's first encoder).
_CLIP_L: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                           "num_hidden_layers": 12, "hidden_act": "quick_gelu", "projection_dim": 768}  # fmt: skip
# OpenCLIP ViT-H/14 (SD-2.x; the pipeline uses 23 of its 24 layers, as the published config says).
_CLIP_H: dict[str, Any] = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                           "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512}  # fmt: skip
# OpenCLIP ViT-bigG/14 (SD-XL's second encoder, with its 1280-wide pooled projection).
_CLIP_BIGG: dict[str, Any] = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                              "num_hidden_layers": 32, "hidden_act": "gelu", "projection_dim": 1280}  # fmt: skip
# The Stable Diffusion KL autoencoder (same layout for SD-1.x, 2.x and XL; only the latent scaling differs).
_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "force_upcast": True,
}  # fmt: skip
_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                              "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                              "steps_offset": 1}  # fmt: skip


def _seeded_init(module: torch.nn.Module, seed: int) -> None:
    """Default PyTorch initialisation of every layer, under ``seed``, without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in module.modules():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset) and any(True for _ in child.parameters(recurse=False)):
                reset()


def _unet(family: str, dtype: torch.dtype, device: torch.device, seed: int) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(full_size_unet_config(family))
    unet = unet.to(dtype=dtype).to_empty(device=device)
    _seeded_init(unet, seed)
    return unet.eval()


def _clip(kind: str, settings: dict[str, Any], tokenizer: Any, seed: int) -> Any:
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **settings,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(transformers, kind)(config).eval()


def build_full_size_pipeline(
    family: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> Any:
    """A full-size pipeline of ``family`` (``sd1``, ``sd2``, ``sdxl``) with random weights, on ``device`` in
    ``dtype``, built offline in seconds.

    Raises:
        ConfigError: another family.
    """
    if family not in FULL_SIZE_FAMILIES:
        raise ConfigError(f"no full-size builder for family {family!r}; valid: {', '.join(FULL_SIZE_FAMILIES)}")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from diffloc.models.tiny import clip_tokenizer

    target = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        image_size = 8 * full_size_unet_config(family)["sample_size"]
        vae = AutoencoderKL(**_VAE, scaling_factor=_SCALING[family], sample_size=image_size)
    scheduler = DDIMScheduler(**_SCHEDULER, prediction_type="v_prediction" if family == "sd2" else "epsilon")
    unet = _unet(family, dtype, target, seed)
    if family == "sdxl":
        tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
        pipe: Any = StableDiffusionXLPipeline(
            vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
            text_encoder=_clip("CLIPTextModel", _CLIP_L, tokenizer, seed + 2),
            text_encoder_2=_clip("CLIPTextModelWithProjection", _CLIP_BIGG, tokenizer_2, seed + 3),
            add_watermarker=False,
        )  # fmt: skip
    else:
        tokenizer = clip_tokenizer() if family == "sd1" else clip_tokenizer(pad_token="!")
        settings = _CLIP_L if family == "sd1" else _CLIP_H
        pipe = StableDiffusionPipeline(
            vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer,
            text_encoder=_clip("CLIPTextModel", settings, tokenizer, seed + 2),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.to(device=target, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    logger.info("built a random full-size %s pipeline in %s on %s", family, dtype, target)
    return pipe
