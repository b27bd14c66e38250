"""PixArt-α and PixArt-Σ: a T5 text encoder and a cross-attention diffusion transformer (adaLN-single).

What the adapter reproduces of diffusers' ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``:

* the prompt is tokenized by T5 as the pipeline does (padded and truncated to 120 tokens for α, 300 for Σ, the
  pipelines' ``max_sequence_length``), encoded with the attention mask that hides the padding, and the same
  mask goes to the transformer (``encoder_attention_mask``), whose cross-attention reads only real tokens;
  the mask travels in :attr:`Conditioning.added` under :data:`~diffloc.models.base.CONTEXT_MASK`, so taking,
  concatenating and swapping rows keeps each prompt's own mask. The pipeline lowercases prompts (and cleans
  captions when ``bs4`` and ``ftfy`` are installed); diffloc tokenizes prompts as given, as for DeepFloyd IF,
  so give them in lowercase to match it;
* the T5 states pass through the transformer's ``caption_projection`` (a two-layer MLP to the transformer's
  width) once before the blocks: that is the context cross-attention reads (:meth:`context_projection`);
* the timestep is embedded by adaLN-single (timestep only; PixArt-α at 1024 px adds the image's resolution and
  aspect ratio, ``use_additional_conditions``), never the text, so text reaches the blocks through
  cross-attention alone and the first block's self-attention is a control of a causal trace;
* the output holds a learned variance beside the noise (``out_channels = 2 × in_channels``); the sampler drops
  it as the pipeline does for PixArt's DPM-Solver, whose ``variance_type`` is unset.

A PixArt-α pipeline may hold a causal CLIP text encoder and tokenizer instead of T5 (ShapesWorld-DiT,
:mod:`diffloc.world.dit`): the prompt then takes the encoder's own 77 positions (call the pipeline with
``max_sequence_length=77``), the tokenizer's mask covers BOS, the words and the first EOS, and the text sites
are CLIP's (``text.attn.i`` = ``encoder.layers.i.self_attn``, as on Stable Diffusion). A causal encoder's
states at the real tokens do not depend on the padding, so the mask changes only the padded states, which the
transformer never reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffloc.models.base import CONTEXT_MASK, Conditioning, ModelAdapter, TextEncoderSpec
from diffloc.models.text_sites import attends_left_only
from diffloc.models.transformer_memory import dit_row_elements
from diffloc.models.transformer_sites import PIXART_BLOCKS, DiTBlockTable, transformer_sites
from diffloc.sites import Site

#: ``max_sequence_length`` of PixArtAlphaPipeline (α) and PixArtSigmaPipeline (Σ).
PIXART_MAX_TOKENS = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}
#: Micro-conditions of PixArt-α at 1024 px, per row: ``(height, width)`` and ``height / width``.
MICRO_CONDITIONS = ("resolution", "aspect_ratio")

_T5_BIDIRECTIONAL = (
    "PixArt: the T5 text encoder is bidirectional, so every token's state depends on the whole prompt (on CLIP "
    "models only on the tokens before it): states collected from template prompts move with the words around "
    "the concept, and the edit generalises less across prompts."
)
#: What an edit means on PixArt, per method (saved in the edit's notes).
PIXART_EDIT_CAVEATS: dict[str, tuple[str, ...]] = {
    "quickfix": (
        _T5_BIDIRECTIONAL,
        "PixArt: the edited layer-0 attention output feeds every later T5 layer of every token; padding positions "
        "(mapped with use_eos) are hidden from the transformer's cross-attention, so only the subject and EOS "
        "positions change what the transformer reads.",
    ),
    "locoedit": (
        _T5_BIDIRECTIONAL,
        "PixArt: the edited to_k/to_v read caption_projection(T5 states); padding positions are hidden from "
        "cross-attention by the pipeline's mask.",
    ),
    "neurons": (_T5_BIDIRECTIONAL,),
}
#: What an edit means on a PixArt-α pipeline with a causal CLIP text encoder, per method.
PIXART_CLIP_EDIT_CAVEATS: dict[str, tuple[str, ...]] = {
    "quickfix": (
        "PixArt (CLIP text encoder): the edited layer-0 attention output feeds every later CLIP layer at its own "
        "and later positions; padding positions (mapped with use_eos) are hidden from the transformer's "
        "cross-attention, so only the subject and EOS positions change what the transformer reads.",
    ),
    "locoedit": (
        "PixArt (CLIP text encoder): the edited to_k/to_v read caption_projection(CLIP states); padding positions "
        "are hidden from cross-attention by the pipeline's mask.",
    ),
}


class PixArtAdapter(ModelAdapter):
    """PixArt-α / PixArt-Σ (family ``pixart``): sites by :data:`site_table`, conditioning = T5 states + mask."""

    family = "pixart"
    pipeline_classes = tuple(PIXART_MAX_TOKENS)
    denoiser_component = "transformer"
    #: the transformer's block structure as sites
    site_table: DiTBlockTable = PIXART_BLOCKS

    def __init__(self, *, causal_text: bool = False) -> None:
        #: whether the pipeline's text encoder is a causal CLIP encoder (ShapesWorld-DiT) rather than T5
        self.causal_text = causal_text

    @classmethod
    def for_pipeline(cls, pipe: Any) -> PixArtAdapter:
        """The adapter of a loaded pipeline (``causal_text`` read from its text encoder)."""
        encoder = getattr(pipe, "text_encoder", None)
        return cls(causal_text=encoder is not None and attends_left_only(encoder))

    # -- structure -------------------------------------------------------------------------------
    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        return [TextEncoderSpec("text", "text_encoder", "tokenizer")]

    def denoiser_sites(self, pipe: Any) -> list[Site]:
        return transformer_sites(self.denoiser(pipe), self.site_table)

    # -- text ------------------------------------------------------------------------------------
    def max_tokens(self, pipe: Any, spec: TextEncoderSpec) -> int:
        """The pipeline's ``max_sequence_length`` for T5; a CLIP encoder's own positions (77)."""
        if attends_left_only(getattr(pipe, spec.component)):
            return super().max_tokens(pipe, spec)
        return PIXART_MAX_TOKENS.get(type(pipe).__name__, PIXART_MAX_TOKENS["PixArtAlphaPipeline"])

    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        spec = self.text_encoders(pipe)[0]
        limit = self.max_tokens(pipe, spec)
        self.tokenize(pipe, spec, prompts)  # length check with a clear error
        batch = pipe.tokenizer(
            list(prompts), padding="max_length", max_length=limit, truncation=True, add_special_tokens=True,
            return_tensors="pt",
        )  # fmt: skip
        device = pipe.text_encoder.device
        mask = batch.attention_mask.to(device)
        hidden = pipe.text_encoder(batch.input_ids.to(device), attention_mask=mask)[0]
        added: dict[str, torch.Tensor] = {CONTEXT_MASK: mask}
        if self._micro_conditioned(pipe):
            added.update(_micro_conditions(*self.default_size(pipe), len(prompts), hidden))
        return Conditioning(hidden, added)

    def for_size(self, cond: Conditioning, height: int, width: int) -> Conditioning:
        """PixArt-α at 1024 px: the resolution and aspect ratio of the image actually sampled."""
        if "resolution" not in cond.added:
            return cond
        return Conditioning(cond.hidden, {**cond.added, **_micro_conditions(height, width, len(cond), cond.hidden)})

    def _micro_conditioned(self, pipe: Any) -> bool:
        return bool(getattr(self.denoiser(pipe), "use_additional_conditions", False))

    # -- denoiser --------------------------------------------------------------------------------
    def denoiser_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        return {
            "encoder_hidden_states": cond.hidden,
            "encoder_attention_mask": cond.added.get(CONTEXT_MASK),
            "added_cond_kwargs": {key: cond.added.get(key) for key in MICRO_CONDITIONS},
        }

    def predict_noise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
        timestep = torch.as_tensor(t, device=x.device)
        if timestep.ndim == 0:  # adaLN-single embeds one timestep per row, as the pipeline expands it
            timestep = timestep.expand(x.shape[0])
        return self.denoiser(pipe)(x, timestep=timestep, **kwargs).sample

    def context_projection(self, pipe: Any) -> tuple[str, nn.Module] | None:
        projection = getattr(self.denoiser(pipe), "caption_projection", None)
        return None if projection is None else (f"{self.denoiser_component}.caption_projection", projection)

    def in_channels(self, pipe: Any) -> int:
        return int(self.denoiser(pipe).config.in_channels)

    def latent_cells_per_token(self, pipe: Any) -> int:
        return int(self.denoiser(pipe).config.patch_size)

    def sample_size(self, pipe: Any) -> int:
        size = self.denoiser(pipe).config.sample_size
        return int(size[0] if isinstance(size, list | tuple) else size)

    def row_elements(self, pipe: Any, latent_height: int, latent_width: int) -> int:
        return dit_row_elements(dict(self.denoiser(pipe).config), latent_height, latent_width)

    def text_in_time_embedding(self, pipe: Any) -> bool:
        """Never: adaLN-single embeds the timestep (and α-1024's resolution and aspect ratio), not the text."""
        return False

    def reads_padding(self, pipe: Any) -> bool:
        """Never: the pipeline's mask hides the padding from cross-attention."""
        return False

    def edit_caveats(self, method: str) -> tuple[str, ...]:
        return (PIXART_CLIP_EDIT_CAVEATS if self.causal_text else PIXART_EDIT_CAVEATS).get(method, ())


def _micro_conditions(height: int, width: int, rows: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """``resolution`` ``(rows, 2)`` and ``aspect_ratio`` ``(rows, 1)`` as PixArtAlphaPipeline builds them."""
    resolution = torch.tensor([[height, width]], dtype=like.dtype, device=like.device).expand(rows, -1).clone()
    ratio = torch.tensor([[height / width]], dtype=like.dtype, device=like.device).expand(rows, -1).clone()
    return {"resolution": resolution, "aspect_ratio": ratio}
