"""The Edit artifact: apply/revert bit-exactness, persistence, base checks and stacking."""

from __future__ import annotations

import json

import pytest
import torch

from diffloc.editing import Edit, EditRequest, LocoEditConfig, NeuronConfig, QuickFixConfig, compute_edit
from diffloc.editing.edit import parameter_hashes as model_hashes
from diffloc.editing.edit_format import metadata_hash
from diffloc.errors import EditError
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline

REQUEST = EditRequest(concepts=("cat",), targets=("dog",))


def _edit(model, method: str) -> Edit:
    configs = {
        "quickfix": QuickFixConfig(),
        "locoedit": LocoEditConfig(sites=("unet.xattn.1", "unet.xattn.6")),
        "neurons": NeuronConfig(sites=("unet.xattn.1",), top_n=4),
    }
    return compute_edit(model, REQUEST, method=method, config=configs[method])


@pytest.fixture(scope="module")
def fresh_sd1():
    return load(build_tiny_pipeline("sd1", seed=0))


@pytest.mark.parametrize("method", ["quickfix", "locoedit", "neurons"])
def test_apply_revert_is_bit_exact(tiny_sd1, method):
    before = model_hashes(tiny_sd1)
    edit = _edit(tiny_sd1, method)
    assert model_hashes(tiny_sd1) == before, "computing an edit changed the model"
    edit.apply(tiny_sd1)
    try:
        during = model_hashes(tiny_sd1)
        changed = {k for k in set(during) | set(before) if during.get(k) != before.get(k)}
        assert changed == set(edit.parameters)
        assert edit.is_applied(tiny_sd1)
    finally:
        edit.revert(tiny_sd1)
    assert model_hashes(tiny_sd1) == before


def test_neuron_mean_ablation_adds_and_removes_a_bias(tiny_sd1):
    edit = _edit(tiny_sd1, "neurons")
    bias_keys = [k for k in edit.parameters if k.endswith(".bias")]
    assert bias_keys and all(edit.originals[k] is None for k in bias_keys)
    module = tiny_sd1.module("unet.xattn.1.k")
    assert module.bias is None
    with edit.applied(tiny_sd1):
        assert module.bias is not None
        ctx = torch.randn(2, 5, module.in_features)
        out = module(ctx)
        channels = edit.stats["channels"]["unet.xattn.1.k"]
        # ablated channels output one constant for every input
        assert torch.allclose(out[..., channels], out[0, 0, channels].expand_as(out[..., channels]))
    assert module.bias is None


def test_save_load_apply_equals_in_memory_apply(tiny_sd1, fresh_sd1, tmp_path):
    for method in ("quickfix", "locoedit", "neurons"):
        edit = _edit(tiny_sd1, method)
        with edit.applied(tiny_sd1):
            in_memory = model_hashes(tiny_sd1)
        directory = edit.save(tmp_path / method)
        assert sorted(p.name for p in directory.iterdir()) == ["edit.json", "edit.safetensors"]
        loaded = Edit.load(directory)
        assert loaded.base == edit.base and loaded.result_hashes == edit.result_hashes
        assert loaded.method == method and loaded.request == edit.request
        before = model_hashes(fresh_sd1)
        with loaded.applied(fresh_sd1):  # a separately built model with the same weights
            assert model_hashes(fresh_sd1) == in_memory
        assert model_hashes(fresh_sd1) == before


def test_metadata_describes_the_edit(tiny_sd1, tmp_path):
    edit = _edit(tiny_sd1, "locoedit")
    meta = json.loads((edit.save(tmp_path / "e") / "edit.json").read_text())
    assert meta["format"] == "diffloc-edit" and meta["method"] == "locoedit" and meta["family"] == "sd1"
    assert meta["request"]["concepts"] == ["cat"] and meta["config"]["sites"] == ["unet.xattn.1", "unet.xattn.6"]
    assert set(meta["parameters"]) == set(edit.parameters)
    assert all(len(p["base_sha256"]) == 64 for p in meta["parameters"].values())
    assert meta["diffloc_version"]
    assert "locoedit" in edit.summary() and "base" in edit.summary()


def test_wrong_base_refused_and_model_untouched(tiny_sd1):
    other = load(build_tiny_pipeline("sd1", seed=1))
    edit = _edit(tiny_sd1, "locoedit")
    before = model_hashes(other)
    with pytest.raises(EditError, match=r"differs from the base.*") as info:
        edit.apply(other)
    assert "\n" not in str(info.value) and edit.parameters[0] in str(info.value)
    assert model_hashes(other) == before


def test_wrong_family_refused(tiny_sd1, tiny_sd2):
    edit = _edit(tiny_sd1, "quickfix")
    with pytest.raises(EditError, match="sd1 model, not sd2"):
        edit.apply(tiny_sd2)


def test_revert_without_apply_and_double_apply(tiny_sd1):
    edit = _edit(tiny_sd1, "quickfix")
    before = model_hashes(tiny_sd1)
    with pytest.raises(EditError, match="not applied"):
        edit.revert(tiny_sd1)
    with edit.applied(tiny_sd1), pytest.raises(EditError, match="already applied"):
        edit.apply(tiny_sd1)
    assert model_hashes(tiny_sd1) == before


def test_applied_reverts_on_error(tiny_sd1):
    edit = _edit(tiny_sd1, "locoedit")
    before = model_hashes(tiny_sd1)
    with pytest.raises(ValueError), edit.applied(tiny_sd1):
        raise ValueError("boom")
    assert model_hashes(tiny_sd1) == before


def test_stacked_edits_revert_in_reverse_order(tiny_sd1):
    before = model_hashes(tiny_sd1)
    first = _edit(tiny_sd1, "locoedit")
    first.apply(tiny_sd1)
    try:
        second = compute_edit(
            tiny_sd1,
            EditRequest(concepts=("house",), targets=("tree",)),
            method="locoedit",
            config=LocoEditConfig(sites=("unet.xattn.1",)),
        )
        shared = next(k for k in second.parameters if k in first.parameters)
        assert second.base["tensors"][shared] == first.result_hashes[shared]
        second.apply(tiny_sd1)
        with pytest.raises(EditError, match="reverted first"):
            first.revert(tiny_sd1)
        second.revert(tiny_sd1)
    finally:
        first.revert(tiny_sd1)
    assert model_hashes(tiny_sd1) == before
    with pytest.raises(EditError, match="differs from the base"):
        second.apply(tiny_sd1)  # its base was the first edit's result


def test_load_rejects_tampered_and_missing(tiny_sd1, tmp_path):
    edit = _edit(tiny_sd1, "quickfix")
    directory = edit.save(tmp_path / "e")
    meta = json.loads((directory / "edit.json").read_text())
    key = edit.parameters[0]
    meta["parameters"][key]["new_sha256"] = "0" * 64
    (directory / "edit.json").write_text(json.dumps(meta))
    with pytest.raises(EditError, match="its sha256 does not match its contents"):
        Edit.load(directory)  # the hash of edit.json covers the tensor hashes it records
    meta["sha256"] = metadata_hash(meta)  # edit.json consistent again, the tensor not
    (directory / "edit.json").write_text(json.dumps(meta))
    with pytest.raises(EditError, match="does not match its recorded hash"):
        Edit.load(directory)
    with pytest.raises(EditError, match="not an edit directory"):
        Edit.load(tmp_path / "nothing")


def test_save_replaces_an_edit_but_not_other_directories(tiny_sd1, tmp_path):
    a = _edit(tiny_sd1, "quickfix")
    b = _edit(tiny_sd1, "locoedit")
    a.save(tmp_path / "e")
    b.save(tmp_path / "e")
    assert Edit.load(tmp_path / "e").method == "locoedit"
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # no temp dirs left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(EditError, match="holds no edit"):
        a.save(tmp_path / "other")
