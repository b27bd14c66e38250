"""Conversions between image tensors and PIL images/PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffloc.atomic import write_atomic


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``(n, 3, H, W)`` floats in ``[0, 1]`` -> list of RGB PIL images."""
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a, mode="RGB") for a in arr]


def save_png(image: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Atomically save one image (``(3, H, W)`` tensor or PIL) as PNG."""
    pil = to_pil(image.unsqueeze(0))[0] if isinstance(image, torch.Tensor) else image
    return write_atomic(path, lambda tmp: pil.save(tmp, format="PNG"))


def grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """Tile ``(n, 3, H, W)`` images into one ``(3, rows*H, columns*W)`` image (blank cells black)."""
    n, c, h, w = images.shape
    rows = (n + columns - 1) // columns
    canvas = torch.zeros(c, rows * h, columns * w, dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, columns)
        canvas[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
    return canvas
