"""What the UNet families (SD-1, SD-2, SD-XL, DeepFloyd IF) share: the denoiser is a diffusers
``UNet2DConditionModel`` at ``pipe.unet``, called with the text as ``encoder_hidden_states``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffloc.models.base import Conditioning, ModelAdapter
from diffloc.models.memory import unet_row_elements
from diffloc.models.unet_sites import UNET_BLOCKS, UNetBlockTable, unet_sites
from diffloc.sites import Site


class UNetAdapter(ModelAdapter):
    """A family whose denoiser is a ``UNet2DConditionModel`` (sites by :data:`site_table`)."""

    denoiser_component = "unet"
    #: the UNet's block structure as sites (DeepFloyd IF: the text K/V projections are ``add_k_proj``/``add_v_proj``)
    site_table: UNetBlockTable = UNET_BLOCKS

    def denoiser_sites(self, pipe: Any) -> list[Site]:
        return unet_sites(self.denoiser(pipe), self.site_table)

    def denoiser_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.hidden}
        if cond.added:
            kwargs["added_cond_kwargs"] = dict(cond.added)
        return kwargs

    def predict_noise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
        return self.denoiser(pipe)(x, t, **kwargs).sample

    def context_projection(self, pipe: Any) -> tuple[str, nn.Module] | None:
        projection = getattr(self.denoiser(pipe), "encoder_hid_proj", None)
        return None if projection is None else (f"{self.denoiser_component}.encoder_hid_proj", projection)

    def in_channels(self, pipe: Any) -> int:
        return int(self.denoiser(pipe).config.in_channels)

    def sample_size(self, pipe: Any) -> int:
        return int(self.denoiser(pipe).config.sample_size)

    def row_elements(self, pipe: Any, latent_height: int, latent_width: int) -> int:
        return unet_row_elements(dict(self.denoiser(pipe).config), latent_height, latent_width)

    def text_in_time_embedding(self, pipe: Any) -> bool:
        config = self.denoiser(pipe).config
        return any("text" in str(config.get(key) or "") for key in ("addition_embed_type", "class_embed_type"))
