"""A tiny random-weight PixArt-α pipeline with the real block structure, built in-process (``tiny-pixart``).

The transformer is the published PixArt-α XL-2 1024-MS config (:mod:`diffloc.models.full_configs`) with only
its widths and default sample size shrunk: 28 ``BasicTransformerBlock`` s with ``attn1``/``attn2``/``ff``,
adaLN-single, ``caption_projection`` from the T5 width, patch 2 and the learned-variance output are the real
ones, so module names and site counts
(28 blocks, 28 cross-attention layers) equal the real model's. The T5 encoder and tokenizer are the tiny
ones of ``tiny-if`` (gated-GELU T5 v1.1, offline Unigram tokenizer) at PixArt-α's 120-token prompt length, the
VAE the tiny SD autoencoder, the scheduler the DPM-Solver++ multistep sampler PixArt ships with.

At its small sample size the transformer embeds the timestep alone, as PixArt-α at 256 and 512 px and PixArt-Σ
do (diffusers turns the resolution and aspect-ratio micro-conditions on at a sample size of 128, the 1024 px
α model, and the pipeline passes them only then). Weights are a pure function of the seed, as for every tiny
family (:mod:`diffloc.models.tiny`).
"""

from __future__ import annotations

from typing import Any

from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

from diffloc.models.full_configs import full_size_transformer_config
from diffloc.models.pixart import PIXART_MAX_TOKENS
from diffloc.models.tiny import _T5_WIDTH, _if_tokenizer, _init, _scheduler, _t5_encoder, _vae

#: Widths and sample size of the tiny transformer; everything else is the published config. Two heads of 12
#: (16 of 72 in the real model): the width must divide by 3, as 1152 does, because the micro-conditions embed
#: into thirds of it; cross-attention width equals the transformer width, as 1152 does.
_TINY_PIXART_OVERRIDES: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": _T5_WIDTH,  # T5-XXL's 4096 in the real model
    "sample_size": 16,  # 128 latents (1024 px) in the real model
}


def tiny_pixart_config() -> dict[str, Any]:
    """The tiny transformer config: the full-size PixArt-α config with shrunk widths."""
    config = full_size_transformer_config("pixart")
    config.update(_TINY_PIXART_OVERRIDES)
    return config


def build_tiny_pixart(seed: int) -> PixArtAlphaPipeline:
    """A tiny PixArt-α pipeline (float32, CPU) whose weights are a pure function of ``seed``."""
    tokenizer = _if_tokenizer(max_length=PIXART_MAX_TOKENS["PixArtAlphaPipeline"])
    config = tiny_pixart_config()
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(len(tokenizer), seed, family="pixart"),
        vae=_vae("pixart", seed),
        transformer=_init(seed, "pixart", "transformer", lambda: PixArtTransformer2DModel.from_config(config)),
        scheduler=_scheduler("pixart"),
    )
