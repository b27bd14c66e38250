"""Stable Diffusion 3 / 3.5: CLIP-L, CLIP-G and T5-XXL text encoders, an MMDiT denoiser, flow matching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffloc.models.base import Conditioning, TextEncoderSpec
from diffloc.models.mmdit import MMDiTAdapter, encoder_rows

#: StableDiffusion3Pipeline's default ``max_sequence_length``: T5 prompts are padded to this many tokens.
SD3_T5_TOKENS = 256


class StableDiffusion3Adapter(MMDiTAdapter):
    """SD3/SD3.5, as ``StableDiffusion3Pipeline.encode_prompt`` builds the conditioning.

    The text stream is the two CLIP encoders' penultimate hidden states concatenated on features, zero-padded to
    T5's width, followed along the sequence by T5's tokens: ``77 + 256`` tokens, so a subject appears twice, at
    its CLIP position and at ``77 +`` its T5 position (:meth:`subject_ranges`). The pooled vector is the two CLIP
    encoders' projected pooled outputs concatenated. Without a T5 encoder (``text_encoder_3=None``) its tokens are
    zeros, as the pipeline does.
    """

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)

    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        specs = [
            TextEncoderSpec("text", "text_encoder", "tokenizer"),
            TextEncoderSpec("text2", "text_encoder_2", "tokenizer_2"),
        ]
        if getattr(pipe, "text_encoder_3", None) is not None:
            specs.append(TextEncoderSpec("text3", "text_encoder_3", "tokenizer_3"))
        return specs

    def max_tokens(self, pipe: Any, spec: TextEncoderSpec) -> int:
        if spec.component == "text_encoder_3":
            return SD3_T5_TOKENS
        return super().max_tokens(pipe, spec)

    def token_offsets(self, pipe: Any) -> dict[str, int]:
        """Where each encoder's tokens start in the text stream, by embedding site (the CLIP encoders share
        positions ``0..76``, T5's follow)."""
        clip = self.max_tokens(pipe, self.text_encoders(pipe)[0])
        return {
            f"{spec.prefix}.embed": clip if spec.component == "text_encoder_3" else 0
            for spec in self.text_encoders(pipe)
        }

    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        specs = self.text_encoders(pipe)
        clip_states, pooled = [], []
        for spec in specs[:2]:
            out = encoder_rows(getattr(pipe, spec.component), self.tokenize(pipe, spec, prompts))
            clip_states.append(out.hidden_states[-2])  # SD3 reads the penultimate layer
            pooled.append(out[0])  # text_embeds of CLIPTextModelWithProjection
        clip = torch.cat(clip_states, dim=-1)
        width = int(self.denoiser(pipe).config.joint_attention_dim)
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        if len(specs) > 2:
            t5 = getattr(pipe, specs[2].component)
            t5_states = t5(self.tokenize(pipe, specs[2], prompts).to(t5.device))[0].to(clip.dtype)
        else:
            t5_states = clip.new_zeros((len(prompts), SD3_T5_TOKENS, width))
        hidden = torch.cat([clip, t5_states.to(clip.device)], dim=-2)
        return Conditioning(hidden, {"pooled_projections": torch.cat(pooled, dim=-1)})

    def predict_noise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, kwargs: Any) -> torch.Tensor:
        timestep = t.expand(x.shape[0]) if t.dim() == 0 else t
        return self.denoiser(pipe)(hidden_states=x, timestep=timestep, return_dict=False, **kwargs)[0]
