"""Device memory of one batch row of a cross-attention diffusion transformer (PixArt), for ``--max-batch auto``.

A transformer keeps one token sequence alive between blocks (``tokens × width``), so a row's peak is inside
a block, in its feed-forward: the residual stream, the modulated normalised input, the first projection
(``4 × width`` for PixArt's GELU MLP) and its activation (another ``4 × width``): ``10 × width`` per token.
Attention never holds the ``tokens × tokens`` scores (PyTorch's fused attention kernels), and the caption
(at most a few hundred tokens) is small beside the image tokens. The input latents and the output (twice the
input channels with a learned variance) are counted too. ``bench/full_size.py`` prints this estimate next to
the peak it measures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Working set of a transformer block's feed-forward, in multiples of its width (see the module docstring).
DIT_BLOCK_FACTOR = 10


def dit_row_elements(config: Mapping[str, Any], latent_height: int, latent_width: int) -> int:
    """Peak activation elements of one batch row of a ``PixArtTransformer2DModel``-style network."""
    patch = int(config["patch_size"])
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    tokens = (latent_height // patch) * (latent_width // patch)
    channels = int(config["in_channels"])
    out_channels = int(config.get("out_channels") or channels)
    io = (channels + out_channels) * latent_height * latent_width
    return int(DIT_BLOCK_FACTOR * width * tokens + io)
