"""Tiny random-weight pipelines with the real block structure of each supported family, built in-process.

Tests and demos need every family (SD-1, SD-2, SD-XL, DeepFloyd IF) without a GPU, a network or a model hub.
:func:`build_tiny_pipeline` builds a float32 CPU pipeline whose UNet is the published full-size config
(:mod:`diffloc.models.full_configs`) with only its *widths* shrunk: block types, layers per block,
transformer depth, projection style, conditioning type and output channels are the real ones, so module
names and layer counts (16 cross-attention layers for SD-1/2, 70 for SD-XL, ...) equal the real model's.
Text encoders are tiny too but keep the real kind (CLIP with the real 49408-token vocabulary and BPE
tokenizer shipped in ``diffloc/assets``, or T5 with a small offline Unigram tokenizer) and activation.

Weights are a pure function of ``(family, seed)``: each component is initialised under its own seed
derived from both, inside a forked RNG, so building never disturbs the caller's random state and the
same seed gives bit-identical weights.

Example::

    pipe = build_tiny_pipeline("sd1", seed=0)
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]  # (128, 128, 3)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    IFPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from diffloc.models.compat import t5_unigram_tokenizer
from diffloc.models.full_configs import FAMILIES, check_family, full_size_unet_config

__all__ = ["FAMILIES", "TINY_IF_WORDS", "build_tiny_pipeline", "clip_tokenizer", "tiny_unet_config"]

logger = logging.getLogger(__name__)

_M = TypeVar("_M", bound=torch.nn.Module)

# --- widths -----------------------------------------------------------------------------------------------
# Text widths first: the UNet's cross-attention width must equal what the text side delivers.
_SD1_TEXT = 32  # SD-1.5: CLIP ViT-L/14, 768
_SD2_TEXT = 48  # SD-2.1: OpenCLIP ViT-H/14, 1024 (deliberately != SD-1's, as in the real models)
_SDXL_TEXT_1 = 32  # SD-XL encoder 1: CLIP ViT-L/14, 768
_SDXL_TEXT_2 = 64  # SD-XL encoder 2: OpenCLIP ViT-bigG/14, 1280
_SDXL_POOLED = 32  # projection_dim of encoder 2 (1280 in the real model)
_SDXL_TIME_DIM = 8  # addition_time_embed_dim (256 in the real model)
_T5_WIDTH = 32  # IF: T5-v1.1-XXL, 4096

# Only widths (and the default sample size) differ from the published configs. Head counts follow each
# config's convention: SD-1 gives a head *count* (8), SD-2/SD-XL per-block counts that keep the head width
# constant (64 there, 8 here), IF a head *width* (64 there, 8 here).
_TINY_UNET_OVERRIDES: dict[str, dict[str, Any]] = {
    "sd1": {
        "block_out_channels": [16, 32, 64, 64],
        "attention_head_dim": 2,
        "cross_attention_dim": _SD1_TEXT,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "sd2": {
        "block_out_channels": [16, 32, 64, 64],
        "attention_head_dim": [2, 4, 8, 8],
        "cross_attention_dim": _SD2_TEXT,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "sdxl": {
        "block_out_channels": [16, 32, 64],
        "attention_head_dim": [2, 4, 8],
        "cross_attention_dim": _SDXL_TEXT_1 + _SDXL_TEXT_2,
        "norm_num_groups": 8,
        "sample_size": 16,
        "addition_time_embed_dim": _SDXL_TIME_DIM,
        # six micro-conditioning numbers (original size, crop, target size), each embedded, plus pooled text
        "projection_class_embeddings_input_dim": 6 * _SDXL_TIME_DIM + _SDXL_POOLED,
    },
    "if": {
        "block_out_channels": [16, 32, 48, 64],  # 704 x (1, 2, 3, 4) in the real model
        "attention_head_dim": 8,
        "cross_attention_dim": 64,  # equals the last block width, as 2816 does
        "encoder_hid_dim": _T5_WIDTH,
        "addition_embed_type_num_heads": 4,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
}

# --- schedulers: the checkpoints' own scheduler_config.json values ---------------------------------------
_SD_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
}
_SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "sd1": (  # runwayml/stable-diffusion-v1-5
        PNDMScheduler,
        {**_SD_BETAS, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1},
    ),
    "sd2": (  # stabilityai/stable-diffusion-2-1 (768-v)
        DDIMScheduler,
        {
            **_SD_BETAS,
            "clip_sample": False,
            "prediction_type": "v_prediction",
            "set_alpha_to_one": False,
            "steps_offset": 1,
        },
    ),
    "sdxl": (  # stabilityai/stable-diffusion-xl-base-1.0
        EulerDiscreteScheduler,
        {
            **_SD_BETAS,
            "interpolation_type": "linear",
            "prediction_type": "epsilon",
            "steps_offset": 1,
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
        },
    ),
    "if": (  # DeepFloyd/IF-I-XL-v1.0
        DDPMScheduler,
        {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "squaredcos_cap_v2",
            "trained_betas": None,
            "clip_sample": True,
            "clip_sample_range": 1.0,
            "dynamic_thresholding_ratio": 0.95,
            "prediction_type": "epsilon",
            "sample_max_value": 1.5,
            "thresholding": True,
            "variance_type": "learned_range",
        },
    ),
    "pixart": (  # PixArt-alpha/PixArt-XL-2-1024-MS: DPM-Solver++ (order 2) at its defaults, no learned variance
        DPMSolverMultistepScheduler,
        {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "trained_betas": None,
            "solver_order": 2,
            "prediction_type": "epsilon",
            "algorithm_type": "dpmsolver++",
            "variance_type": None,
        },
    ),
}

# --- the IF tokenizer's word list -------------------------------------------------------------------------
_IF_WORD_TEXT = """
a an the of in on at with and or by for from to into over under above below near behind next
is are this that its his her their one two three four five many some no not very
photo photograph picture image painting drawing sketch illustration render portrait landscape
style styled art artwork painted drawn made detailed realistic simple plain abstract
van gogh monet picasso rembrandt vermeer dali warhol kahlo hokusai klimt
red green blue yellow purple orange pink brown black white grey gray gold silver colorful
dark light bright pale
circle square triangle star diamond cross heart shape shapes ring line lines dot dots stripe stripes
solid striped dotted outline outlined filled checkered pastel earthy contour pattern texture
small large big tiny huge tall short round flat old new beautiful
background foreground canvas center left right top bottom
house car tree dog cat bird horse cow fish flower flowers mountain river lake sea ocean sky sun moon
city street road bridge building tower castle church boat ship train plane bicycle
man woman person people child boy girl face hand eyes hair
apple banana fruit table chair cup bottle book clock lamp window door
snoopy mickey mouse pikachu r2d2 eiffel statue liberty president flag country capital
thing object item blank
sitting standing running walking flying swimming eating holding
night day morning evening sunset sunrise winter summer spring autumn snow rain
"""
#: Whole words of the tiny IF tokenizer (each one Unigram piece ``"▁word"``). Anything else is spelled
#: with single-character pieces, so no ASCII text maps to ``<unk>``.
TINY_IF_WORDS: tuple[str, ...] = tuple(_IF_WORD_TEXT.split())
_IF_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()&/+#%*="


def tiny_unet_config(family: str) -> dict[str, Any]:
    """Return the tiny UNet config of ``family``: the full-size config with shrunk widths.

    Raises:
        ConfigError: unknown ``family``.
    """
    config = full_size_unet_config(family)
    config.update(_TINY_UNET_OVERRIDES[family])
    return config


def scheduler_config(family: str) -> dict[str, Any]:
    """The scheduler config of the tiny ``family`` model (its checkpoint's own), without building anything.

    Raises:
        KeyError: unknown ``family``.
    """
    return dict(_SCHEDULERS[family][1])


def build_tiny_pipeline(family: str, *, seed: int = 0) -> DiffusionPipeline:
    """Build a tiny random-weight pipeline of ``family`` on the CPU in float32, offline.

    Args:
        family: ``"sd1"`` (:class:`~diffusers.StableDiffusionPipeline`, SD-1.5 layout), ``"sd2"`` (same
            class, SD-2.1 layout: linear projections, v-prediction, "!" padding), ``"sdxl"``
            (:class:`~diffusers.StableDiffusionXLPipeline`, two text encoders) or ``"if"``
            (:class:`~diffusers.IFPipeline`, DeepFloyd IF stage I with a T5 encoder).
        seed: weights are a pure function of ``(family, seed)``.

    Returns:
        The pipeline in eval mode with its progress bar disabled; safety checker, feature extractor and
        watermarker are ``None``. The default sample is 16x16 latents (128 px) for SD/SD-XL and 16 px for IF.

    Raises:
        ConfigError: unknown ``family``.
    """
    builder = _BUILDERS[check_family(family)]
    pipe = builder(seed)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    logger.debug("built tiny %s pipeline (seed %d)", family, seed)
    return pipe


# --- components -------------------------------------------------------------------------------------------
@contextmanager
def _seeded(seed: int, family: str, component: str) -> Iterator[None]:
    """Run a block under a seed derived from (seed, family, component), restoring the caller's RNG after.

    Seeding each component separately keeps its weights independent of build order and of the others.
    """
    digest = hashlib.sha256(f"diffloc-tiny:{family}:{component}:{seed}".encode()).digest()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        yield


def _init(seed: int, family: str, component: str, factory: Callable[[], _M]) -> _M:
    with _seeded(seed, family, component):
        return factory()


def _unet(family: str, seed: int) -> UNet2DConditionModel:
    config = tiny_unet_config(family)
    return _init(seed, family, "unet", lambda: UNet2DConditionModel.from_config(config))


def _vae(family: str, seed: int, **latent: Any) -> AutoencoderKL:
    """A 4-level KL autoencoder (spatial factor 8 and 4 latent channels, like every SD VAE; ``latent`` overrides
    the latent settings: SD3's and FLUX's have 16 channels, a shift and no quantization convolutions)."""
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 16, 32, 32],  # [128, 256, 512, 512] in the real VAE
        "layers_per_block": 1,  # 2 in the real VAE; the VAE is never traced
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 128,
        # SD-1/2 latents are scaled by 0.18215; the SD-XL VAE by 0.13025.
        "scaling_factor": 0.13025 if family == "sdxl" else 0.18215,
        **latent,
    }
    return _init(seed, family, "vae", lambda: AutoencoderKL.from_config(config))


def _clip_config(tokenizer: CLIPTokenizer, width: int, act: str, projection_dim: int = 32) -> CLIPTextConfig:
    """A 4-layer CLIP text config whose vocabulary, positions and special ids come from ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),  # 49408, the real CLIP vocabulary
        hidden_size=width,
        intermediate_size=2 * width,
        projection_dim=projection_dim,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,  # 77
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def clip_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """The CLIP BPE tokenizer from the files diffloc ships (ids equal the real SD tokenizers').

    ``pad_token=None`` keeps SD-1's padding with EOS (49407); ``"!"`` gives SD-2's / SD-XL-2's (id 0).
    """
    kwargs: dict[str, Any] = {} if pad_token is None else {"pad_token": pad_token}
    folder = resources.files("diffloc").joinpath("assets", "clip_tokenizer")
    with resources.as_file(folder) as path:
        return CLIPTokenizer.from_pretrained(path, local_files_only=True, **kwargs)


def _if_tokenizer(max_length: int = 77) -> Any:
    """A T5-style Unigram tokenizer over :data:`TINY_IF_WORDS`, built offline (no sentencepiece model), whose
    ``model_max_length`` is ``max_length`` (the pipeline's prompt length: 77 for IF, 120 for PixArt-α).

    Ids follow T5: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; a ``</s>`` is appended to every sequence.
    Whole words score higher than their spelling, so a known word is always one token.
    """
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -10.0)]
    pieces += [(f"▁{word}", -5.0) for word in dict.fromkeys(TINY_IF_WORDS)]
    pieces += [(f"▁{char}", -11.0) for char in _IF_CHARS]
    pieces += [(char, -12.0) for char in _IF_CHARS]
    first: dict[str, float] = {}
    for piece, score in pieces:  # "a" is both a word and a letter: keep the first (word) entry
        first.setdefault(piece, score)
    return t5_unigram_tokenizer(list(first.items()), model_max_length=max_length)


def _t5_encoder(vocab_size: int, seed: int, family: str = "if", component: str = "text_encoder") -> T5EncoderModel:
    # generic PretrainedConfig keys, which T5Config's typed signature does not list
    encoder_only: dict[str, Any] = {"tie_word_embeddings": False, "decoder_start_token_id": 0}
    config = T5Config(
        vocab_size=-(-vocab_size // 64) * 64,  # padded like T5's 32128 embedding rows for 32100 pieces
        d_model=_T5_WIDTH,
        d_kv=8,
        d_ff=2 * _T5_WIDTH,
        num_layers=4,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
        **encoder_only,
    )
    return _init(seed, family, component, lambda: T5EncoderModel(config))


# --- pipelines --------------------------------------------------------------------------------------------
def _scheduler(family: str) -> Any:
    cls, config = _SCHEDULERS[family]
    return cls.from_config(config)


def _build_sd(family: str, seed: int) -> StableDiffusionPipeline:
    if family == "sd1":  # CLIP ViT-L/14: quick_gelu, pads with EOS
        tokenizer = clip_tokenizer()
        text_config = _clip_config(tokenizer, _SD1_TEXT, "quick_gelu")
    else:  # OpenCLIP ViT-H/14: gelu, pads with "!"
        tokenizer = clip_tokenizer(pad_token="!")
        text_config = _clip_config(tokenizer, _SD2_TEXT, "gelu")
    return StableDiffusionPipeline(
        vae=_vae(family, seed),
        text_encoder=_init(seed, family, "text_encoder", lambda: CLIPTextModel(text_config)),
        tokenizer=tokenizer,
        unet=_unet(family, seed),
        scheduler=_scheduler(family),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sd1(seed: int) -> StableDiffusionPipeline:
    return _build_sd("sd1", seed)


def _build_sd2(seed: int) -> StableDiffusionPipeline:
    return _build_sd("sd2", seed)


def _build_sdxl(seed: int) -> StableDiffusionXLPipeline:
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
    config_1 = _clip_config(tokenizer, _SDXL_TEXT_1, "quick_gelu")
    config_2 = _clip_config(tokenizer_2, _SDXL_TEXT_2, "gelu", projection_dim=_SDXL_POOLED)
    return StableDiffusionXLPipeline(
        vae=_vae("sdxl", seed),
        text_encoder=_init(seed, "sdxl", "text_encoder", lambda: CLIPTextModel(config_1)),
        text_encoder_2=_init(seed, "sdxl", "text_encoder_2", lambda: CLIPTextModelWithProjection(config_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_unet("sdxl", seed),
        scheduler=_scheduler("sdxl"),
        add_watermarker=False,  # invisible-watermark is not a dependency, and tests compare pixels
    )


def _build_if(seed: int) -> IFPipeline:
    tokenizer = _if_tokenizer()
    return IFPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(len(tokenizer), seed),
        unet=_unet("if", seed),
        scheduler=_scheduler("if"),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def _build_pixart(seed: int) -> DiffusionPipeline:
    from diffloc.models.tiny_pixart import build_tiny_pixart  # it builds on this module's components

    return build_tiny_pixart(seed)


_BUILDERS: dict[str, Callable[[int], DiffusionPipeline]] = {
    "sd1": _build_sd1,
    "sd2": _build_sd2,
    "sdxl": _build_sdxl,
    "if": _build_if,
    "pixart": _build_pixart,
}
