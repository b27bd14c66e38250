"""VAE decoding (chunks, float32 upcast) and device-independent noise."""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler

from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ConfigError
from diffloc.models.base import DECODE_BATCH
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline


def _tiny_vae(force_upcast: bool) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        force_upcast=force_upcast,
    )  # fmt: skip


def _decoder_input_dtypes(vae: AutoencoderKL) -> tuple[list[torch.dtype], object]:
    seen: list[torch.dtype] = []
    handle = vae.decoder.conv_in.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))
    return seen, handle


@pytest.mark.parametrize("force_upcast, compute", [(True, torch.float32), (False, torch.bfloat16)])
def test_half_precision_vae_decodes_in_float32_when_its_config_asks(force_upcast, compute):
    model = load(build_tiny_pipeline("sd1"))
    pipe = model.pipe
    pipe.vae = _tiny_vae(force_upcast).to(torch.bfloat16)
    before = {n: p.clone() for n, p in pipe.vae.named_parameters()}
    seen, handle = _decoder_input_dtypes(pipe.vae)
    try:
        images = model.adapter.decode(pipe, torch.randn(3, 4, 8, 8, dtype=torch.bfloat16))
    finally:
        handle.remove()
    assert seen and set(seen) == {compute}
    assert images.dtype == torch.float32 and images.shape == (3, 3, 16, 16)
    # the VAE is back in bfloat16, bit for bit
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, before[n]) for n, p in pipe.vae.named_parameters())


def test_decode_runs_in_chunks_with_the_same_result():
    model = load(build_tiny_pipeline("sd1"))
    latents = torch.randn(5, 4, 16, 16)
    seen, handle = _decoder_input_dtypes(model.pipe.vae)
    try:
        chunked = model.adapter.decode(model.pipe, latents, batch=2)
    finally:
        handle.remove()
    assert len(seen) == 3  # 2 + 2 + 1 images
    whole = model.adapter.decode(model.pipe, latents, batch=5)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    assert DECODE_BATCH == 4
    with pytest.raises(ConfigError, match="decode_batch must be a positive integer"):
        GenerationConfig(decode_batch=0)


def test_stochastic_scheduler_noise_comes_from_per_row_cpu_generators(monkeypatch):
    pipe = build_tiny_pipeline("sd1")
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    model = load(pipe)
    devices: list[str] = []
    step = EulerAncestralDiscreteScheduler.step

    @functools.wraps(step)  # keeps the signature the engine reads to pass generators
    def recording_step(self, *args, **kwargs):
        devices.extend(g.device.type for g in kwargs["generator"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(EulerAncestralDiscreteScheduler, "step", recording_step)
    images = generate(model, ["a cat"] * 3, seeds=[4, 4, 5], config=GenerationConfig(steps=3, guidance=7.5))
    assert devices and set(devices) == {"cpu"}  # drawn on the CPU whatever the model's device: same on a GPU
    # equal seeds share their step noise (up to float rounding of a batch row), another seed does not
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-5)
    assert (images[0] - images[2]).abs().max() > 1e-2
