"""Stable Diffusion XL: two CLIP text encoders, pooled embedding and size/crop time ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffloc.models.base import Conditioning, TextEncoderSpec
from diffloc.models.unet import UNetAdapter

#: What an edit means on SD-XL, per method (saved in the edit's notes).
SDXL_EDIT_CAVEATS: dict[str, tuple[str, ...]] = {
    "locoedit": ("SD-XL: the pooled text embedding (text_embeds) is untouched; only cross-attention K/V change.",),
}


class StableDiffusionXLAdapter(UNetAdapter):
    """SD-XL base: context = concat of both encoders' penultimate hidden states; pooled from encoder 2.

    The pooled embedding (``text_embeds``) and the time ids travel in ``Conditioning.added``, so every
    intervention that swaps a row's context can decide which prompt the pooled vector comes from.
    """

    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)

    def edit_caveats(self, method: str) -> tuple[str, ...]:
        return SDXL_EDIT_CAVEATS.get(method, ())

    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        specs = []
        if pipe.text_encoder is not None:
            specs.append(TextEncoderSpec("text", "text_encoder", "tokenizer"))
        specs.append(TextEncoderSpec("text2", "text_encoder_2", "tokenizer_2"))
        return specs

    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        hidden_parts = []
        pooled = None
        for spec in self.text_encoders(pipe):
            encoder = getattr(pipe, spec.component)
            ids = self.tokenize(pipe, spec, prompts).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            hidden_parts.append(out.hidden_states[-2])  # SD-XL reads the penultimate layer
            if spec.component == "text_encoder_2":
                pooled = out[0]  # (rows, projection_dim): text_embeds of CLIPTextModelWithProjection
        hidden = torch.cat(hidden_parts, dim=-1)
        assert pooled is not None
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": self._time_ids(pipe, len(prompts), hidden)})

    def encode_unconditional(self, pipe: Any, rows: int) -> Conditioning:
        if bool(pipe.config.get("force_zeros_for_empty_prompt", True)):
            ref = self.encode(pipe, [""])
            return Conditioning(
                torch.zeros_like(ref.hidden).expand(rows, -1, -1).clone(),
                {
                    "text_embeds": torch.zeros_like(ref.added["text_embeds"]).expand(rows, -1).clone(),
                    "time_ids": ref.added["time_ids"].expand(rows, -1).clone(),
                },
            )
        return super().encode_unconditional(pipe, rows)

    def for_size(self, cond: Conditioning, height: int, width: int) -> Conditioning:
        """Time ids for the image size actually sampled (encoding assumes the default size)."""
        ids = _size_ids(height, width, len(cond), cond.added["time_ids"])
        return Conditioning(cond.hidden, {**cond.added, "time_ids": ids})

    def _time_ids(self, pipe: Any, rows: int, like: torch.Tensor) -> torch.Tensor:
        height, width = self.default_size(pipe)
        return _size_ids(height, width, rows, like)


def _size_ids(height: int, width: int, rows: int, like: torch.Tensor) -> torch.Tensor:
    # (original size, crop top-left, target size), as SD-XL was conditioned during training.
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=like.dtype, device=like.device)
    return ids.expand(rows, -1).clone()
