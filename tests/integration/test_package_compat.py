"""The shipped ShapesWorld checkpoint means the same under every supported transformers/diffusers release.

The reference outputs were written with the newest supported set (``scripts/text_encoder_reference.py``); CI
runs this file under that set and under the transformers 4 set, so a release that loads the text encoder
differently (a re-initialised weight, another attention path) fails here, not in a user's results.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffloc.models.compat import transformers_major

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "shapesworld_text_encoder.safetensors"
_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "text_encoder_reference.py"


def _script():
    spec = importlib.util.spec_from_file_location("text_encoder_reference", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_text_encoder_outputs_match_the_reference():
    assert transformers_major() in (4, 5)
    expected = load_file(str(REFERENCE))
    found = _script().text_encoder_outputs()
    assert torch.equal(found["input_ids"], expected["input_ids"])
    for key in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-5)


def test_shipped_model_loads_its_trained_weights_through_diffloc_load():
    from diffloc.models.registry import load

    model = load("shapesworld", device="cpu", dtype="float32")
    expected = load_file(str(REFERENCE))
    tokens = model.adapter.tokenize(model.pipe, model.adapter.text_encoders(model.pipe)[0], list(_script().PROMPTS))
    with torch.no_grad():
        hidden = model.pipe.text_encoder(tokens)[0]
    torch.testing.assert_close(hidden, expected["last_hidden_state"], rtol=0, atol=1e-5)
