"""What several unit-test files share: a deterministic pixel scorer and the order sites' forwards finish in."""

from __future__ import annotations

import torch

from diffloc.engine.generate import GenerationConfig, generate
from diffloc.engine.hooks import patch
from diffloc.errors import ConfigError


class PixelScorer:
    """A deterministic test scorer: the image projected on a fixed random unit direction.

    Its meaning is irrelevant to the invariants tested with it (they hold for any deterministic scorer); on
    ShapesWorld the real detectors score images.
    """

    name = "pixel-test"

    def score(self, images, texts):
        assert len(texts) == images.shape[0]
        flat = images.flatten(1).double()
        direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return (flat @ (direction / direction.norm())).float()

    def check(self, text):
        if not text.strip():
            raise ConfigError("empty attribute text")


def finish_order(model, sites) -> list[str]:
    """The names of ``sites`` in the order their modules' forwards first finish in a one-step generation."""
    seen: list[str] = []

    def make(name):
        def hook(module, args, kwargs, output):
            if name not in seen:
                seen.append(name)

        return hook

    with patch(model, outputs={s.name: make(s.name) for s in sites}, first=False):
        generate(model, "a red circle", config=GenerationConfig(steps=1, guidance=1.0))
    return seen
