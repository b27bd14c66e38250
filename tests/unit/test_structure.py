"""Site tables from config files alone (meta device), the full-size builders, and the memory estimate."""

from __future__ import annotations

import pytest
import torch

from diffloc.cli.main import main
from diffloc.errors import ConfigError
from diffloc.models.memory import auto_max_batch, estimate
from diffloc.models.registry import load
from diffloc.models.structure import load_structure
from diffloc.models.tiny import build_tiny_pipeline


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "if"])
def test_structure_from_configs_equals_the_loaded_model_and_reads_no_weights(family, tmp_path):
    build_tiny_pipeline(family, seed=0).save_pretrained(tmp_path)
    loaded = load(tmp_path, device="cpu")
    for weights in tmp_path.rglob("*.safetensors"):
        weights.unlink()  # nothing below may read a weight
    structure = load_structure(tmp_path)
    assert structure.family == loaded.family == family
    assert [(s.name, s.full_path, s.kind) for s in structure.sites] == [
        (s.name, s.full_path, s.kind) for s in loaded.sites
    ]
    params = [p for c in structure.pipe.components.values() if c is not None for p in c.parameters()]
    assert params and {p.device.type for p in params} == {"meta"}


def test_sites_command_lists_a_checkpoint_without_its_weights(tmp_path, capsys):
    build_tiny_pipeline("sdxl", seed=0).save_pretrained(tmp_path)
    for weights in tmp_path.rglob("*.safetensors"):
        weights.unlink()
    assert main(["sites", str(tmp_path), "--select", "unet.xattn.*"]) == 0
    out = capsys.readouterr().out
    assert "family sdxl, 70 sites" in out and "unet.xattn.69" in out


def test_full_size_pipelines_have_the_published_site_counts():
    from diffloc.models.full_size import build_full_size_pipeline
    from diffloc.models.registry import adapter_for

    for family, xattn, text_layers, unet_params in (("sd1", 16, 12, 859_520_964), ("sdxl", 70, 12 + 32, 2_567_463_684)):
        with torch.device("meta"):
            pipe = build_full_size_pipeline(family, device="meta")
        sites = adapter_for(pipe).build_sites(pipe)
        assert len(sites.select("unet.xattn.*")) == xattn
        assert len([s for s in sites if s.name.split(".")[1] == "layer"]) == text_layers
        assert sum(p.numel() for p in pipe.unet.parameters()) == unet_params


def test_estimate_grows_with_size_and_dtype_and_auto_batch_fits_the_free_memory(monkeypatch):
    model = load("tiny-sd1", device="cpu")
    small, large = estimate(model, height=64, width=64), estimate(model, height=128, width=128)
    assert 3.5 < large.row_bytes / small.row_bytes <= 4 and large.decode_image_bytes == 4 * small.decode_image_bytes
    half = estimate(load("tiny-sd1", device="cpu", dtype="bfloat16"), height=128, width=128)
    assert half.row_bytes * 2 == large.row_bytes
    assert half.decode_image_bytes == large.decode_image_bytes and half.decode_upcast_bytes > 0  # force_upcast

    budget = large.batch_bytes(40, cfg=True)  # the share of free memory auto plans with (HEADROOM = 0.8)
    monkeypatch.setattr("diffloc.models.memory.free_bytes", lambda device: int(budget / 0.8) + 1)
    model_at_128 = load(build_tiny_pipeline("sd1"))  # default size 128 px
    choice = auto_max_batch(model_at_128, cfg=True)
    assert choice.runs == 32  # the largest power of two that fits: 40 runs fit, 64 do not
    assert large.batch_bytes(64, cfg=True) > budget
    monkeypatch.setattr("diffloc.models.memory.free_bytes", lambda device: large.batch_bytes(1, cfg=True))
    with pytest.raises(ConfigError, match=r"--max-batch auto: two runs need about .* GiB but only"):
        auto_max_batch(model, cfg=True)


def test_max_batch_auto_on_the_command_line(tmp_path, capsys, tiny_clip_dir):
    code = main([
        "trace", "unet", "--model", "tiny-sd1", "--prompt", "a cat", "--subject", "cat", "--attribute", "cat",
        "--clip", str(tiny_clip_dir), "--steps", "1", "--seeds", "0", "--sites", "unet.xattn.0",
        "--max-batch", "auto", "--device", "cpu", "--dtype", "float32", "--bootstrap", "0",
        "--out", str(tmp_path / "t"),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--max-batch auto: " in captured.out and "runs per batch" in captured.out
    assert (tmp_path / "t" / "result.json").is_file()
