"""Device, dtype and weight-variant placement: defaults, plumbing to every component, one-line errors."""

from __future__ import annotations

import pytest
import torch

from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ConfigError, ModelLoadError
from diffloc.models.placement import resolve_device, resolve_dtype
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def _module_placements(model) -> set[tuple[str, torch.dtype]]:
    return {
        (p.device.type, p.dtype)
        for component in model.pipe.components.values()
        if isinstance(component, torch.nn.Module)
        for p in component.parameters()
    }


def test_defaults_follow_the_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected == resolve_device("auto").type
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    for spelling, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("Float32", torch.float32)):
        assert resolve_dtype(spelling, torch.device("cpu")) == dtype


@pytest.mark.parametrize(
    "device, words",
    [("gpu", "unknown device 'gpu'; valid: auto, cpu, cuda"), ("cuda:x", "unknown device")],
)
def test_unknown_device_is_refused(device, words):
    with pytest.raises(ConfigError, match=words) as info:
        resolve_device(device)
    assert "\n" not in str(info.value)


@needs_no_cuda
def test_cuda_without_cuda_names_the_fix():
    with pytest.raises(ConfigError, match=r"CUDA is not available .*use --device cpu, or install a CUDA build"):
        resolve_device("cuda")


@pytest.mark.parametrize("dtype", ["float64", "int8", "half-ish", torch.float64])
def test_unknown_dtype_is_refused(dtype):
    with pytest.raises(ConfigError, match=r"dtype .*valid: float32, float16, bfloat16") as info:
        resolve_dtype(dtype, torch.device("cpu"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_component_lands_on_the_requested_device_and_dtype(dtype):
    model = load("tiny-sd1", device="cpu", dtype=dtype)
    assert _module_placements(model) == {("cpu", getattr(torch, dtype))}
    assert model.device == torch.device("cpu")


def test_an_in_memory_pipeline_moves_only_when_asked():
    pipe = build_tiny_pipeline("sd1")
    assert _module_placements(load(pipe)) == {("cpu", torch.float32)}
    assert _module_placements(load(pipe, dtype="bfloat16")) == {("cpu", torch.bfloat16)}
    with pytest.raises(ConfigError, match="variant applies to weight files on disk"):
        load(pipe, variant="fp16")


def test_bfloat16_generates_what_float32_generates():
    config = GenerationConfig(steps=3, guidance=7.5)
    full = generate(load("tiny-sd1", device="cpu", dtype="float32"), ["a cat", "a dog"], seeds=[0, 1], config=config)
    half = generate(load("tiny-sd1", device="cpu", dtype="bfloat16"), ["a cat", "a dog"], seeds=[0, 1], config=config)
    assert half.dtype == torch.float32 and half.shape == full.shape and torch.isfinite(half).all()
    # same seeds, same noise: bfloat16's 8-bit mantissa moves pixels by a few percent, not the picture
    assert (half - full).abs().mean() < 0.05
    assert not torch.equal(half, full)


def test_variant_only_checkpoint_loads_with_its_variant_and_says_so_without(tmp_path):
    pipe = build_tiny_pipeline("sd1", seed=0)
    only_fp16 = tmp_path / "fp16-only"
    pipe.save_pretrained(only_fp16, variant="fp16")
    assert list((only_fp16 / "unet").glob("*.fp16.safetensors"))
    with pytest.raises(ModelLoadError, match=r"has only fp16 weights .*load with --variant fp16") as info:
        load(only_fp16, device="cpu")
    assert "\n" not in str(info.value)
    model = load(only_fp16, device="cpu", variant="fp16")
    reference = dict(pipe.unet.named_parameters())
    assert all(torch.equal(p, reference[n]) for n, p in model.pipe.unet.named_parameters())

    plain = tmp_path / "plain"
    pipe.save_pretrained(plain)
    with pytest.raises(ModelLoadError, match=r"has no 'fp16' weights .*use no --variant"):
        load(plain, device="cpu", variant="fp16")
    with pytest.raises(ConfigError, match="not a weight-file variant name"):
        load(plain, variant="../fp16")
