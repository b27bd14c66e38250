"""What the joint-attention families (SD3/SD3.5, FLUX.1) share: the denoiser is an MMDiT at ``pipe.transformer``
sampled by flow matching, the text reaches it as a token stream (``encoder_hidden_states``) and a pooled vector
(``pooled_projections``, which enters the time embedding and so every block).

Latents stay ``(batch, channels, height, width)`` everywhere in diffloc; a family that feeds its transformer
packed tokens (FLUX) packs and unpacks inside :meth:`~diffloc.models.base.ModelAdapter.predict_noise`, so the
sampler and every intervention are the same as for a UNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from diffloc.models.base import Conditioning, ModelAdapter
from diffloc.models.mmdit_sites import MMDIT_BLOCKS, MMDiTBlockTable, mmdit_sites
from diffloc.sites import Site

#: Working set of one MMDiT block per token, in multiples of its width: the two streams' normalised and
#: modulated copies, q, k, v, the attention output and the residuals (``~12``) and the MLP's 4x hidden
#: activation with its GELU (``8``); attention never holds the ``tokens x tokens`` scores (fused kernels).
MMDIT_TOKEN_FACTOR = 20

#: What an edit means on a joint-attention family, per method (saved in the edit's notes).
MMDIT_EDIT_CAVEATS: dict[str, tuple[str, ...]] = {
    "locoedit": (
        "joint attention: the edited add_k_proj/add_v_proj read the block's text stream, which earlier blocks "
        "have mixed with the image tokens and which is modulated by the time embedding; keys were collected "
        "at the sampler's timesteps on a fixed latent. The pooled text (pooled_projections) is untouched.",
    ),
    "context": (
        "joint attention: context_embedder maps the text encoders' output into the text stream once, before "
        "block 0, so the edit reaches every block; the pooled text (pooled_projections) is untouched.",
    ),
}


def mmdit_row_elements(config: Any, image_tokens: int, text_tokens: int) -> int:
    """Peak activation elements of one batch row of a joint-attention transformer: ``MMDIT_TOKEN_FACTOR`` x its
    width per token of both streams (``bench/mmdit_full_size.py`` prints it beside measured peaks)."""
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    return MMDIT_TOKEN_FACTOR * width * (image_tokens + text_tokens)


def flow_shift(image_tokens: int, config: Any) -> float:
    """The time shift ``mu`` of a flow-matching scheduler with dynamic shifting: linear in the image's token
    count between ``base_shift`` at ``base_image_seq_len`` tokens and ``max_shift`` at ``max_image_seq_len``."""
    base_len = float(config.get("base_image_seq_len", 256))
    max_len = float(config.get("max_image_seq_len", 4096))
    base, top = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
    slope = (top - base) / (max_len - base_len)
    return image_tokens * slope + base - slope * base_len


class MMDiTAdapter(ModelAdapter):
    """A family whose denoiser is a joint-attention transformer (sites by :data:`site_table`)."""

    denoiser_component = "transformer"
    shared_token_positions = False
    site_table: MMDiTBlockTable = MMDIT_BLOCKS
    #: image pixels per transformer token along one side, over the VAE's factor (FLUX packs 2x2 latents)
    pack: int = 1

    def denoiser_sites(self, pipe: Any) -> list[Site]:
        return mmdit_sites(self.denoiser(pipe), self.site_table, self.tokens_per_side(pipe))

    def tokens_per_side(self, pipe: Any) -> int:
        """Image tokens per side at the default size."""
        return self.sample_size(pipe) // self.patch_size(pipe)

    def patch_size(self, pipe: Any) -> int:
        """Latent cells per image token along one side."""
        return int(getattr(self.denoiser(pipe).config, "patch_size", 1) or 1) * self.pack

    def latent_cells_per_token(self, pipe: Any) -> int:
        return self.patch_size(pipe)

    def subject_ranges(self, pipe: Any, prompt: str, subject: str) -> dict[str, tuple[int, int]]:
        """Each encoder's own range: CLIP puts a BOS token first, T5 none, and their subwords differ."""
        return {
            f"{spec.prefix}.embed": self.find_subjects(pipe, [prompt], [subject], spec)[0]
            for spec in self.text_encoders(pipe)
        }

    def token_offsets(self, pipe: Any) -> dict[str, int]:
        """Where each context encoder's tokens start in the text stream, by embedding site."""
        return {f"{spec.prefix}.embed": 0 for spec in self.context_encoders(pipe)}

    def denoiser_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        return {"encoder_hidden_states": cond.hidden, "pooled_projections": cond.added["pooled_projections"]}

    def context_projection(self, pipe: Any) -> tuple[str, nn.Module] | None:
        name = self.site_table.context
        return f"{self.denoiser_component}.{name}", getattr(self.denoiser(pipe), name)

    def text_in_time_embedding(self, pipe: Any) -> bool:
        """Always: the pooled text embedding (``pooled_projections``) is added to the time embedding, which
        modulates every block of both streams. A causal trace of these families has no text-blind controls."""
        return True

    def edit_caveats(self, method: str) -> tuple[str, ...]:
        return MMDIT_EDIT_CAVEATS.get(method, ())

    # -- sampling --------------------------------------------------------------------------------------
    def set_timesteps(self, pipe: Any, scheduler: Any, steps: int, latent_shape: Sequence[int], device: Any) -> None:
        """Flow matching: the scheduler's sigmas (FLUX: ``1 … 1/steps``), time-shifted by the image's token
        count when the scheduler shifts dynamically (FLUX)."""
        kwargs: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting"):
            patch = self.patch_size(pipe)
            tokens = (latent_shape[-2] // patch) * (latent_shape[-1] // patch)
            kwargs["mu"] = flow_shift(tokens, scheduler.config)
        sigmas = self.sigmas(steps)
        if sigmas is not None:
            kwargs["sigmas"] = sigmas
        scheduler.set_timesteps(steps, device=device, **kwargs)

    def sigmas(self, steps: int) -> list[float] | None:
        """The sigmas a family's pipeline passes to its scheduler (``None``: the scheduler's own)."""
        return None

    def initial_noise_scale(self, scheduler: Any) -> float:
        """Flow matching starts from unit Gaussian noise (sigma 1)."""
        return 1.0

    def scale_model_input(self, scheduler: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flow matching feeds the latent unscaled."""
        return x

    # -- sizes -----------------------------------------------------------------------------------------
    def in_channels(self, pipe: Any) -> int:
        return int(self.denoiser(pipe).config.in_channels) // (self.pack * self.pack)

    def sample_size(self, pipe: Any) -> int:
        """Latent side of the default image: the VAE's default sample size over its downsampling factor."""
        return int(pipe.vae.config.sample_size) // self.pixels_per_latent(pipe)

    def row_elements(self, pipe: Any, latent_height: int, latent_width: int) -> int:
        """Peak activation elements of one row (:func:`mmdit_row_elements`)."""
        patch = self.patch_size(pipe)
        image = (latent_height // patch) * (latent_width // patch)
        text = sum(self.max_tokens(pipe, spec) for spec in self.context_encoders(pipe))
        return mmdit_row_elements(self.denoiser(pipe).config, image, text)

    def context_encoders(self, pipe: Any) -> list[Any]:
        """The text encoders whose tokens make up the text stream (in sequence order)."""
        return self.text_encoders(pipe)


def encoder_rows(encoder: Any, ids: torch.Tensor) -> Any:
    """Run a text encoder on token ids (on its own device) with its hidden states."""
    return encoder(ids.to(encoder.device), output_hidden_states=True)
