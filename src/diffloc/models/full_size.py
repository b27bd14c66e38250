"""Full-size SD-1.5, SD-2.1, SD-XL and PixArt-α pipelines with random weights, built offline from the published
configs.

What full size costs (time, memory) can be measured without downloading a checkpoint: the UNet is the
published config of :mod:`diffloc.models.full_configs`, the text encoders and the VAE are the published
CLIP and ``AutoencoderKL`` configs below, the tokenizers are the CLIP files diffloc ships. The weights are
PyTorch's default initialisation (what ``from_config`` gives), so images are noise and scores meaningless;
shapes, module names, FLOPs and memory are the real ones. ``bench/full_size.py`` uses this.

The UNet is created on the ``meta`` device, cast, and only then given storage and initialised, so an
SD-XL UNet in bfloat16 never needs its float32 size in memory; so is PixArt-α's T5-XXL encoder (4.8 B parameters,
19 GB in float32), whose RMS-norm scales, which no ``reset_parameters`` covers, start at one. PixArt's tokenizer is
the tiny T5 Unigram tokenizer of ``tiny-pixart`` (its ids fit T5's 32128-row embedding): the prompt's token count
differs from the real SentencePiece model's, the padded length (120) and every tensor shape do not.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from diffloc.errors import ConfigError
from diffloc.models.full_configs import full_size_unet_config

logger = logging.getLogger(__name__)

#: Families with a full-size random builder (DeepFloyd IF's pixel-space cascade is not built).
FULL_SIZE_FAMILIES = ("sd1", "sd2", "sdxl", "pixart")

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
_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "pixart": 0.18215}
# google/t5-v1_1-xxl's encoder (PixArt-α's text encoder, as DeepFloyd IF's).
_T5_XXL: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False, "tie_word_embeddings": False, "pad_token_id": 0,
    "eos_token_id": 1,
}  # fmt: skip
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


def _t5_xxl(dtype: torch.dtype, device: torch.device, seed: int) -> Any:
    """T5-XXL's encoder built on the meta device, cast, then given storage and initialised (norm scales: one)."""
    from transformers import T5Config, T5EncoderModel

    model_class: Any = T5EncoderModel  # transformers types its constructor through a decorator mypy misreads
    with torch.device("meta"):
        encoder = model_class(T5Config(**_T5_XXL))
    encoder = encoder.to(dtype=dtype).to_empty(device=device)
    _seeded_init(encoder, seed)
    with torch.no_grad():
        for module in encoder.modules():
            if not hasattr(module, "reset_parameters"):
                for param in module.parameters(recurse=False):
                    param.fill_(1.0)  # T5LayerNorm's scale: what a fresh T5 starts with
    return encoder.eval()


def _pixart(vae: Any, dtype: torch.dtype, device: torch.device, seed: int) -> Any:
    """PixArt-α XL-2 1024-MS: the published transformer (built where it runs: its position table is a buffer that
    a meta-device build would lose), T5-XXL, the SD VAE and DPM-Solver++."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    from diffloc.models.full_configs import full_size_transformer_config
    from diffloc.models.pixart import PIXART_MAX_TOKENS
    from diffloc.models.tiny import _if_tokenizer, scheduler_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            transformer = PixArtTransformer2DModel.from_config(full_size_transformer_config("pixart"))
    with torch.device("cpu"):  # the scheduler keeps its tables on the CPU, whatever device builds the rest
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config("pixart"))
    return PixArtAlphaPipeline(
        tokenizer=_if_tokenizer(max_length=PIXART_MAX_TOKENS["PixArtAlphaPipeline"]),
        text_encoder=_t5_xxl(dtype, device, seed + 2), vae=vae, transformer=transformer.to(dtype=dtype).eval(),
        scheduler=scheduler,
    )  # fmt: skip


def build_full_size_pipeline(
    family: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> Any:
    """A full-size pipeline of ``family`` (``sd1``, ``sd2``, ``sdxl``, ``pixart``) with random weights, on
    ``device`` in ``dtype``, built offline.

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
        image_size = 8 * (128 if family == "pixart" else full_size_unet_config(family)["sample_size"])
        vae = AutoencoderKL(**_VAE, scaling_factor=_SCALING[family], sample_size=image_size)
    if family == "pixart":
        pipe: Any = _pixart(vae, dtype, target, seed)
        pipe.to(device=target, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        logger.info("built a random full-size %s pipeline in %s on %s", family, dtype, target)
        return pipe
    scheduler = DDIMScheduler(**_SCHEDULER, prediction_type="v_prediction" if family == "sd2" else "epsilon")
    unet = _unet(family, dtype, target, seed)
    if family == "sdxl":
        tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
        pipe = StableDiffusionXLPipeline(
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
