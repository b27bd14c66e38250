"""Real checkpoints, when their weights are on local disk (skipped otherwise).

Point ``DIFFLOC_SD15``, ``DIFFLOC_SDXL``, ``DIFFLOC_IF`` or ``DIFFLOC_PIXART`` (PixArt-α or -Σ) at a local diffusers
directory (or a model id already in the Hugging Face cache) to run these; nothing is ever downloaded.
"""

from __future__ import annotations

import os

import pytest

from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ModelLoadError
from diffloc.models.registry import load
from diffloc.sites import SiteKind

pytestmark = pytest.mark.slow

CASES = {
    "DIFFLOC_SD15": ("sd1", 16, "unet.xattn.8", "up_blocks.1.attentions.1.transformer_blocks.0.attn2"),
    "DIFFLOC_SDXL": ("sdxl", 70, "unet.xattn.45", "up_blocks.0.attentions.1.transformer_blocks.1.attn2"),
    "DIFFLOC_IF": ("if", None, None, None),
    "DIFFLOC_PIXART": ("pixart", 28, "transformer.xattn.13", "transformer_blocks.13.attn2"),
}


@pytest.mark.parametrize("variable", sorted(CASES))
def test_real_checkpoint_sites_and_one_step(variable):
    source = os.environ.get(variable)
    if not source:
        pytest.skip(f"{variable} not set: no local weights")
    try:
        model = load(source)
    except ModelLoadError as exc:
        pytest.skip(f"{variable}={source!r} not available locally: {exc}")
    family, n_xattn, name, path = CASES[variable]
    assert model.family == family
    if n_xattn is not None:
        assert len(model.sites.denoiser_sites(SiteKind.XATTN)) == n_xattn
        assert model.sites.get(name).module_path == path
    images = generate(model, "a photo of a cat", config=GenerationConfig(steps=1))
    assert images.isfinite().all()
