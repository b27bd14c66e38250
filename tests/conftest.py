"""Shared fixtures: tiny pipelines of every real architecture, built in-process and offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from diffloc.models.registry import load  # noqa: E402
from diffloc.models.tiny import build_tiny_pipeline  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
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
