"""FLUX.1 (dev, schnell): CLIP-L for the pooled vector, T5-XXL for the text stream, packed 2x2 latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffloc.errors import ConfigError
from diffloc.models.base import Conditioning, TextEncoderSpec
from diffloc.models.mmdit import MMDiTAdapter

#: FluxPipeline's default ``max_sequence_length``: T5 prompts are padded to this many tokens.
FLUX_T5_TOKENS = 512


class FluxAdapter(MMDiTAdapter):
    """FLUX.1, as ``FluxPipeline`` conditions and samples it.

    The text stream is T5's tokens only; CLIP-L contributes its pooled output (``pooled_projections``), which
    enters the time embedding. Latents ``(B, C, H, W)`` are packed into ``(H/2)(W/2)`` tokens of ``4C`` channels
    for the transformer, with position ids (rows and columns for the image, zeros for the text) for its rotary
    embedding, and unpacked after. FLUX.1-dev embeds the guidance scale (``guidance_embeds``): it is passed to
    the transformer and no classifier-free guidance rows are run; schnell takes none.
    """

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    pack = 2

    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        return [
            TextEncoderSpec("text", "text_encoder", "tokenizer"),
            TextEncoderSpec("text2", "text_encoder_2", "tokenizer_2"),
        ]

    def context_encoders(self, pipe: Any) -> list[Any]:
        return self.text_encoders(pipe)[1:]

    def max_tokens(self, pipe: Any, spec: TextEncoderSpec) -> int:
        if spec.component == "text_encoder_2":
            return FLUX_T5_TOKENS
        return super().max_tokens(pipe, spec)

    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        clip_spec, t5_spec = self.text_encoders(pipe)
        clip, t5 = pipe.text_encoder, pipe.text_encoder_2
        pooled = clip(self.tokenize(pipe, clip_spec, prompts).to(clip.device)).pooler_output
        hidden = t5(self.tokenize(pipe, t5_spec, prompts).to(t5.device))[0]
        return Conditioning(hidden, {"pooled_projections": pooled.to(device=hidden.device, dtype=hidden.dtype)})

    def sigmas(self, steps: int) -> list[float] | None:
        """FluxPipeline's sigmas: evenly spaced from 1 down to ``1/steps``."""
        return [float(s) for s in np.linspace(1.0, 1.0 / steps, steps)]

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        """Latent sides rounded down to even cells (two per packed token), as the pipeline does."""
        f = self.pixels_per_latent(pipe) * self.pack
        if height < f or width < f:
            raise ConfigError(f"image size {height}x{width} is too small for FLUX; each side must be >= {f} pixels")
        return self.in_channels(pipe), self.pack * (height // f), self.pack * (width // f)

    def guidance_embedded(self, pipe: Any) -> bool:
        return bool(self.denoiser(pipe).config.get("guidance_embeds", False))

    def guidance_kwargs(self, pipe: Any, rows: int, guidance: float) -> dict[str, Any]:
        if not self.guidance_embedded(pipe):
            return {}
        net = self.denoiser(pipe)
        return {"guidance": torch.full((rows,), float(guidance), device=net.device, dtype=torch.float32)}

    def predict_noise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, kwargs: Any) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pack
        tokens = (
            x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        )
        rows = torch.arange(h // p, device=x.device, dtype=x.dtype)
        cols = torch.arange(w // p, device=x.device, dtype=x.dtype)
        img_ids = torch.stack(
            [torch.zeros(h // p, w // p, device=x.device, dtype=x.dtype), *torch.meshgrid(rows, cols, indexing="ij")],
            dim=-1,
        ).reshape(-1, 3)
        text = kwargs["encoder_hidden_states"]
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype)
        timestep = (t.expand(b) if t.dim() == 0 else t).to(x.dtype) / 1000
        guidance = kwargs.get("guidance")
        if guidance is not None:
            kwargs = {**kwargs, "guidance": guidance[:b]}
        out = self.denoiser(pipe)(
            hidden_states=tokens, timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, return_dict=False, **kwargs
        )[0]
        return out.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
