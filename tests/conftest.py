"""Shared fixtures: tiny pipelines of every real architecture, built in-process and offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest
import torch

from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline

# Tiny models gain nothing from intra-op threads, and oversubscribed cores make torch 10-100x slower.
torch.set_num_threads(1)
FAMILIES = ("sd1", "sd2", "sdxl", "if")


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


@pytest.fixture(params=FAMILIES)
def tiny_model(request):
    """Each family's tiny model in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")
