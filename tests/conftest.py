"""Shared fixtures: tiny pipelines of every real architecture, built in-process and offline."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest
import torch

from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline
from diffloc.threads import torch_threads

# Tiny models gain nothing from intra-op threads, and oversubscribed cores make torch 10-100x slower.
torch.set_num_threads(1)
FAMILIES = ("sd1", "sd2", "sdxl", "if", "pixart")


@pytest.fixture(autouse=True)
def _threads_as_they_were():
    """Every test leaves torch at the thread count it found. A count left behind (``--threads`` of an in-process
    command, a fixture's) changes the summation order of every later test in the process, so float comparisons
    against another process would pass or fail by test order."""
    with torch_threads(torch.get_num_threads()):
        yield


def _tiny(family: str):
    return load(build_tiny_pipeline(family, seed=0))


@pytest.fixture(scope="session")
def tiny_sd1():
    return _tiny("sd1")


@pytest.fixture(scope="session")
def tiny_sd2():
    return _tiny("sd2")


@pytest.fixture(scope="session")
def tiny_sdxl():
    return _tiny("sdxl")


@pytest.fixture(scope="session")
def tiny_if():
    return _tiny("if")


@pytest.fixture(scope="session")
def tiny_sd3():
    return load("tiny-sd3", device="cpu")


@pytest.fixture(scope="session")
def tiny_flux():
    return load("tiny-flux", device="cpu")


@pytest.fixture(params=("sd3", "flux"))
def tiny_mmdit(request):
    """Each joint-attention family's tiny model in turn (SD3, FLUX.1)."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def tiny_pixart():
    return _tiny("pixart")


@pytest.fixture(params=FAMILIES)
def tiny_model(request):
    """Each family's tiny model in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny *random* CLIPModel saved locally: exercises the CLIP-score mechanics, measures nothing."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from diffloc.models.tiny import clip_tokenizer

    path = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "eos_token_id": 49407,
        "bos_token_id": 49406,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(path)
    tokenizer: CLIPTokenizer = clip_tokenizer()
    tokenizer.save_pretrained(path)
    return path


def _weights_digest(model) -> str:
    """SHA-256 of every UNet, text-encoder and VAE tensor's bytes: equal only for bit-identical weights."""
    digest = hashlib.sha256()
    for component in ("unet", "text_encoder", "vae"):
        for name, tensor in getattr(model.pipe, component).state_dict().items():
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def weights_digest():
    """The function that hashes a loaded model's weights bit-exactly (audits must leave them as they were)."""
    return _weights_digest
