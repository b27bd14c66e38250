"""An edit applies wherever its base is: under either transformers major, and says which dtype it needs."""

from __future__ import annotations

import pytest
import torch

from diffloc.editing import Edit, EditRequest, compute_edit
from diffloc.errors import EditError
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline


def _other_clip_naming(key: str) -> str:
    component, _, rest = key.partition(".")
    if not component.startswith("text_encoder"):
        return key
    return (
        f"{component}.{rest.removeprefix('text_model.')}"
        if rest.startswith("text_model.")
        else f"{component}.text_model.{rest}"
    )


def test_an_edit_applies_under_the_other_transformers_clip_naming():
    model = load(build_tiny_pipeline("sd1"))
    edit = compute_edit(model, EditRequest(concepts=("cat",), targets=("dog",)), method="quickfix")
    renamed = Edit(
        method=edit.method, family=edit.family,
        weights={_other_clip_naming(k): v for k, v in edit.weights.items()},
        originals={_other_clip_naming(k): v for k, v in edit.originals.items()},
    )  # fmt: skip
    assert set(renamed.weights) != set(edit.weights)
    with renamed.applied(model):
        assert edit.is_applied(model) and renamed.is_applied(model)
    assert not edit.is_applied(model)


def test_an_edit_names_the_dtype_it_was_computed_in():
    model = load(build_tiny_pipeline("sd1"))
    edit = compute_edit(model, EditRequest(concepts=("cat",), targets=("dog",)), method="quickfix")
    half = load(build_tiny_pipeline("sd1"), dtype="bfloat16")
    with pytest.raises(
        EditError, match=r"computed on a float32 model but .* is bfloat16; load the model with --dtype float32"
    ):
        edit.apply(half)
    assert all(p.dtype == torch.bfloat16 for p in half.pipe.text_encoder.parameters())
