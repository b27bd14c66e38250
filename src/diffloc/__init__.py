"""diffloc: localize and edit visual knowledge in text-to-image diffusion models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
