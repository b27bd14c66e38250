"""Stable Diffusion 1.x / 2.x (and SD-1 fine-tunes such as OpenJourney)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffloc.models.base import Conditioning, TextEncoderSpec
from diffloc.models.unet import UNetAdapter


class StableDiffusionAdapter(UNetAdapter):
    """SD-1.x / SD-2.x: one CLIP text encoder, ``last_hidden_state`` as the context.

    SD-1 and SD-2 share one code path; the family label comes from the UNet config (SD-2 uses linear
    projections in its transformers), not from a model name.
    """

    family = "sd1"
    pipeline_classes = ("StableDiffusionPipeline",)

    def __init__(self, family: str | None = None) -> None:
        if family is not None:
            self.family = family

    @classmethod
    def detect_family(cls, pipe: Any) -> str:
        """``sd2`` when the UNet uses linear projections (SD-2.x), else ``sd1``."""
        config = getattr(pipe, cls.denoiser_component).config
        return "sd2" if bool(getattr(config, "use_linear_projection", False)) else "sd1"

    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        return [TextEncoderSpec("text", "text_encoder", "tokenizer")]

    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        spec = self.text_encoders(pipe)[0]
        ids = self.tokenize(pipe, spec, prompts).to(pipe.text_encoder.device)
        hidden = pipe.text_encoder(ids)[0]  # (rows, tokens, dim) after the final layer norm
        return Conditioning(hidden)

    def text_state(self, pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
        """The context tensor the denoiser reads (``last_hidden_state``)."""
        return self.encode(pipe, prompts).hidden
