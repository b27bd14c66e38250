"""ShapesWorld-DiT: a PixArt-α-structured transformer denoiser on the ShapesWorld latents, exported in the
PixArt-α diffusers layout with a CLIP text encoder.

The transformer is diffusers' ``PixArtTransformer2DModel`` with PixArt's block structure at tiny width:
patch 2 on the 16×16×4 latents (64 tokens), adaLN-single timestep conditioning (timestep only, no resolution or
aspect-ratio micro-conditions at this sample size), per block self-attention, cross-attention to the text
states (after ``caption_projection``, a two-layer MLP from the text width to the transformer width) and a
GELU MLP; ``out_channels = in_channels``: no learned variance.

The text states come from a causal CLIP text encoder, read as ``PixArtAlphaPipeline`` reads its T5 encoder:
the prompt padded to 77 tokens (the pipeline's ``max_sequence_length=77``), encoded with the padding mask,
and the same mask hides the padding from the transformer's cross-attention. A causal encoder's states at
the real tokens do not depend on the padding, so with the shipped ShapesWorld text encoder, frozen, the DiT reads
the same per-token states as the shipped UNet — but not the padding, which the UNet's pipeline passes and in which
that encoder keeps much of a colour (``scripts/word_states.py``); fine-tuning the encoder with the transformer
(``--train-text``) lets it move what the transformer needs to the positions it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel
from transformers import CLIPTextModel

from diffloc.errors import ConfigError

#: ``max_sequence_length`` a ShapesWorld-DiT pipeline is called with: CLIP's 77 positions.
MAX_TOKENS = 77
#: The CLIP tokenizer's end-of-text id, which is also its padding id.
EOS_ID = 49407
#: Component layout of the exported ``PixArtAlphaPipeline`` (``model_index.json``).
PIPELINE_INDEX: dict[str, Any] = {
    "_class_name": "PixArtAlphaPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["diffusers", "PixArtTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def build_transformer(*, width: int, layers: int, heads: int, caption_channels: int) -> PixArtTransformer2DModel:
    """A freshly initialised PixArt-structured transformer on 16×16×4 latents.

    Raises:
        ConfigError: ``width`` is not divisible by ``heads``.
    """
    if width % heads:
        raise ConfigError(f"dit width {width} is not divisible by dit heads {heads}")
    return PixArtTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=4,
        out_channels=4,
        num_layers=layers,
        cross_attention_dim=width,
        sample_size=16,
        patch_size=2,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
        caption_channels=caption_channels,
    )


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """The CLIP tokenizer's attention mask of padded token ids ``(n, 77)``: 1 up to and including the first
    end-of-text token, 0 on the padding after it (which repeats that id)."""
    eos = ids == EOS_ID
    before = eos.long().cumsum(dim=1) - eos.long()  # end-of-text tokens strictly before each position
    return (before == 0).long()


def trim_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row of the batch reads. Exact for this model: the causal encoder's states at
    the real tokens do not depend on later positions, and the mask hides the padding from cross-attention."""
    length = int(mask.sum(dim=1).max())
    return ids[:, :length], mask[:, :length]


def text_states(text_encoder: CLIPTextModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the pipeline hands the transformer: the encoder's last hidden state under the padding mask."""
    return text_encoder(ids, attention_mask=mask)[0]


def predict(transformer: PixArtTransformer2DModel, noisy, t, context, mask) -> torch.Tensor:
    """The transformer's prediction as ``PixArtAlphaPipeline`` calls it (masked cross-attention)."""
    return transformer(noisy, encoder_hidden_states=context, encoder_attention_mask=mask, timestep=t).sample


def sampling_options(pipe: Any) -> dict[str, Any]:
    """Extra keywords a ShapesWorld pipeline is called with: for a ShapesWorld-DiT, CLIP's 77 tokens, no
    resolution binning (PixArt bins only its published sizes) and the captions as given; none for the UNet."""
    if type(pipe).__name__ != PIPELINE_INDEX["_class_name"]:
        return {}
    return {"max_sequence_length": MAX_TOKENS, "use_resolution_binning": False, "clean_caption": False}


def round_to_half(module: torch.nn.Module) -> None:
    """Round every floating-point parameter to float16 precision in place (kept as float32), so a module stored
    in float16 reloads bit-identical to the one trained with."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())


def transformer_architecture(transformer: PixArtTransformer2DModel) -> tuple[int, int, int, int]:
    """``(width, layers, heads, caption_channels)`` of a transformer, as the recipe names them."""
    config = transformer.config
    heads = int(config.num_attention_heads)
    return (heads * int(config.attention_head_dim), int(config.num_layers), heads, int(config.caption_channels))


def save_components(
    staging: Path,
    *,
    transformer: PixArtTransformer2DModel,
    vae: AutoencoderKL,
    scheduler: DDIMScheduler,
) -> dict[str, Any]:
    """Write the transformer, VAE and scheduler into ``staging``; returns the ``model_index.json`` entries."""
    transformer.save_pretrained(staging / "transformer", safe_serialization=True)
    vae.save_pretrained(staging / "vae", safe_serialization=True)
    scheduler.save_pretrained(staging / "scheduler")
    return dict(PIPELINE_INDEX)


def is_dit_dir(directory: Path) -> bool:
    """Whether a pipeline directory holds a ShapesWorld-DiT (a PixArt-α index with a transformer)."""
    index = directory / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == PIPELINE_INDEX["_class_name"]
    except (OSError, ValueError, AttributeError):
        return False
