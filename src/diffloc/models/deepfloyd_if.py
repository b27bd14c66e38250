"""DeepFloyd IF stage I: T5 text encoder, pixel-space UNet reading text through add_k/add_v_proj."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from diffloc.models.base import DECODE_BATCH, Conditioning, TextEncoderSpec
from diffloc.models.unet import UNetAdapter
from diffloc.models.unet_sites import UNET_BLOCKS

#: IFPipeline.encode_prompt pads and truncates T5 prompts to this many tokens.
IF_MAX_TOKENS = 77
#: What an edit means on IF, per method (saved in the edit's notes).
IF_EDIT_CAVEATS: dict[str, tuple[str, ...]] = {
    "locoedit": (
        "DeepFloyd IF: LocoEdit is applied, but the ICML 2024 paper reports it is limited on IF because the T5 "
        "encoder is bidirectional (subject states depend on the whole prompt).",
    ),
}


class DeepFloydIFAdapter(UNetAdapter):
    """IF stage I (64×64 pixels). The UNet predicts noise and a learned variance (6 channels).

    Cross-attention sites are IF's joint attention modules; their text keys/values are
    ``add_k_proj``/``add_v_proj``. The T5 encoder is bidirectional, so subject states depend on the
    whole prompt (the ICML paper's stated limitation for LocoEdit on IF).
    """

    family = "if"
    pipeline_classes = ("IFPipeline",)

    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        return [TextEncoderSpec("text", "text_encoder", "tokenizer")]

    site_table = replace(UNET_BLOCKS, kv_names=("add_k_proj", "add_v_proj"))

    def edit_caveats(self, method: str) -> tuple[str, ...]:
        return IF_EDIT_CAVEATS.get(method, ())

    def max_tokens(self, pipe: Any, spec: TextEncoderSpec) -> int:
        return IF_MAX_TOKENS

    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        spec = self.text_encoders(pipe)[0]
        tokenizer = pipe.tokenizer
        limit = self.max_tokens(pipe, spec)
        self.tokenize(pipe, spec, prompts)  # length check with a clear error
        batch = tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        device = pipe.text_encoder.device
        hidden = pipe.text_encoder(batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device))[0]
        return Conditioning(hidden)

    def pixels_per_latent(self, pipe: Any) -> int:
        return 1

    def decode(self, pipe: Any, latents: torch.Tensor, *, batch: int = DECODE_BATCH) -> torch.Tensor:
        """Stage I samples in pixel space: no decoder, so ``batch`` has nothing to bound."""
        return (latents.float() / 2 + 0.5).clamp(0, 1)
