"""Offline loading: round trips, family detection, and one-line errors for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffloc.errors import CheckpointError, ModelLoadError, UnsupportedModelError
from diffloc.models.registry import adapter_for, load
from diffloc.models.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def saved_sd1(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_sd1")
    build_tiny_pipeline("sd1", seed=0).save_pretrained(path)
    return path


def test_local_directory_round_trip(saved_sd1, tiny_sd1):
    model = load(saved_sd1)
    assert model.family == "sd1" and model.source == str(saved_sd1)
    assert model.sites.names == tiny_sd1.sites.names
    a = dict(model.pipe.unet.named_parameters())
    b = dict(tiny_sd1.pipe.unet.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_family_detected_from_config_not_name(tiny_sd2, tiny_sdxl, tiny_if):
    assert (tiny_sd2.family, tiny_sdxl.family, tiny_if.family) == ("sd2", "sdxl", "if")


@pytest.mark.parametrize("family", ["sd2", "sdxl", "if"])
def test_other_families_round_trip_offline(family, tmp_path):
    build_tiny_pipeline(family, seed=1).save_pretrained(tmp_path)
    assert load(tmp_path).family == family


def test_missing_directory():
    with pytest.raises(ModelLoadError, match=r"model directory '\./no/such/dir' does not exist"):
        load("./no/such/dir")


def test_directory_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a diffusers pipeline directory"):
        load(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load(tmp_path / "f.txt")


def test_uncached_hub_id_is_refused_without_network():
    with pytest.raises(ModelLoadError, match=r"not in the local Hugging Face cache|neither a local directory"):
        load("nobody-here/no-such-model-xyz")


def test_unsupported_pipeline_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(
        UnsupportedModelError, match="'KandinskyV22Pipeline' is not supported; supported: StableDiffusionPipeline"
    ):
        load(tmp_path)
    with pytest.raises(UnsupportedModelError, match="unknown family 'kandinsky'"):
        adapter_for("StableDiffusionPipeline", "kandinsky")
    with pytest.raises(UnsupportedModelError, match="family 'sd3' does not match pipeline class"):
        adapter_for("StableDiffusionPipeline", "sd3")


def test_nan_weights_are_detected_at_load(saved_sd1, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(saved_sd1, bad)
    weights = next((bad / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name][..., 0] = float("nan")
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=rf"non-finite values \(NaN/Inf\) in unet\.{name}"):
        load(bad)
    assert not torch.isnan(load_file(next((saved_sd1 / "unet").glob("*.safetensors")))[name]).any()


def test_truncated_weights_give_one_line_error(saved_sd1, tmp_path):
    bad = tmp_path / "trunc"
    shutil.copytree(saved_sd1, bad)
    weights = next((bad / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="could not load StableDiffusionPipeline") as info:
        load(bad)
    assert "\n" not in str(info.value)


def test_unknown_tiny_model():
    with pytest.raises(ModelLoadError, match="unknown tiny model 'tiny-kandinsky'; valid: tiny-sd1"):
        load("tiny-kandinsky")


def test_public_api_resolves():
    import diffloc

    missing = [name for name in diffloc.__all__ if not hasattr(diffloc, name)]
    assert missing == []


def test_default_guidance_is_the_models_own(saved_sd1, tmp_path):
    from diffloc.errors import ConfigError
    from diffloc.models.registry import SAMPLER_FILE, SD_GUIDANCE, default_guidance
    from diffloc.world.model import GUIDANCE

    assert default_guidance("shapesworld") == GUIDANCE == 4.0
    assert default_guidance("tiny-sd1") == SD_GUIDANCE == 7.5
    assert default_guidance(saved_sd1) == SD_GUIDANCE  # no sampler file
    assert default_guidance(tmp_path / "missing") == SD_GUIDANCE  # load() reports the bad source itself
    own = tmp_path / "own"
    shutil.copytree(saved_sd1, own)
    (own / SAMPLER_FILE).write_text(json.dumps({"guidance": 3}))
    assert default_guidance(own) == 3.0
    for bad in ('{"guidance": -1}', '{"steps": 20}', "not json", '{"guidance": true}'):
        (own / SAMPLER_FILE).write_text(bad)
        with pytest.raises(ConfigError, match=r'must hold \{"guidance": <number >= 0>\}'):
            default_guidance(own)
    assert default_guidance(own, 2.5) == 2.5  # a given scale wins (the CLI's --guidance), the file is not read
    assert default_guidance("shapesworld", 0.0) == 0.0
