"""Preservation statistics: computed once, reused by later edits with the same result, refused when they do
not fit (another preservation set, another method, changed weights)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffloc.editing import (
    EditRequest,
    LocoEditConfig,
    NeuronConfig,
    PreservedStatistics,
    QuickFixConfig,
    compute_edit,
    preservation_statistics,
)
from diffloc.editing.context_edit import ContextEditConfig
from diffloc.editing.edit import parameter_hashes as model_hashes
from diffloc.editing.joint_kv import JointKVConfig
from diffloc.editing.states import EncodedPrompt
from diffloc.errors import ConfigError, EditError
from diffloc.sites import SiteKind

REQUEST = EditRequest(
    concepts=("cat",), targets=("dog",), preserve=("house",), preserve_prompts=("a red car on a hill",)
)
CONFIGS = {
    "quickfix": QuickFixConfig(preserve_weight=3.0),
    "locoedit": LocoEditConfig(sites=("unet.xattn.1",), positions="subject+eos", target_mode="template"),
}


def _config_for(model, method):
    """``CONFIGS[method]`` with its cross-attention layer named in ``model``'s denoiser."""
    config = CONFIGS[method]
    if method != "locoedit":
        return config
    return replace(config, sites=(model.sites.denoiser_sites(SiteKind.XATTN)[1].name,))


def _assert_same_weights(a, b):
    assert a.parameters == b.parameters
    for key in a.parameters:
        torch.testing.assert_close(a.weights[key], b.weights[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["quickfix", "locoedit"])
def test_reused_statistics_give_the_fresh_edit(tiny_model, method):
    config = _config_for(tiny_model, method)
    before = model_hashes(tiny_model)
    stats = preservation_statistics(tiny_model, REQUEST, method=method, config=config)
    assert model_hashes(tiny_model) == before, "computing statistics changed the model"
    assert isinstance(stats, PreservedStatistics) and stats.rows > 0 and stats.seconds >= 0
    # another concept, target and λ with the same preservation set: exactly what a fresh edit computes
    other = replace(REQUEST, concepts=("bird",), targets=("fish",))
    other_config = replace(config, **({"lam": 0.05} if method == "quickfix" else {"lam_k": 0.05}))
    fresh = compute_edit(tiny_model, other, method=method, config=other_config)
    reused = compute_edit(tiny_model, other, method=method, config=other_config, preserved=stats)
    _assert_same_weights(fresh, reused)
    assert fresh.stats["preserved_statistics"]["source"] == "computed"
    assert reused.stats["preserved_statistics"]["source"] == "precomputed"
    preserve_rows = reused.stats["preserve_pairs" if method == "locoedit" else "key_value_pairs"]
    assert preserve_rows, preserve_rows


def test_locoedit_statistics_serve_any_sites(tiny_sd1):
    stats = preservation_statistics(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"])
    config = replace(CONFIGS["locoedit"], sites=("unet.xattn.0", "unet.xattn.2"))
    fresh = compute_edit(tiny_sd1, REQUEST, method="locoedit", config=config)
    _assert_same_weights(fresh, compute_edit(tiny_sd1, REQUEST, method="locoedit", config=config, preserved=stats))


def test_locoedit_statistics_keep_the_target_prompts_for_edits_to_that_target(tiny_model):
    config = _config_for(tiny_model, "locoedit")
    stats = preservation_statistics(tiny_model, REQUEST, method="locoedit", config=config)
    assert stats.targets and {target for _, target in stats.targets} == {"dog"}
    same_target = replace(REQUEST, concepts=("bird",))  # another concept mapped to the same target
    fresh = compute_edit(tiny_model, same_target, method="locoedit", config=config)
    reused = compute_edit(tiny_model, same_target, method="locoedit", config=config, preserved=stats)
    _assert_same_weights(fresh, reused)
    assert fresh.stats["preserved_statistics"]["target_prompts_reused"] == 0
    assert reused.stats["preserved_statistics"]["target_prompts_reused"] == len(stats.targets)
    # the kept target rows are what the edit reads: other rows give other weights
    zeroed = {
        k: EncodedPrompt(context=torch.zeros_like(e.context), position=e.position) for k, e in stats.targets.items()
    }
    tampered = compute_edit(tiny_model, same_target, method="locoedit", config=config,
                            preserved=replace(stats, targets=zeroed))  # fmt: skip
    assert any(not torch.allclose(tampered.weights[k], fresh.weights[k]) for k in fresh.parameters)
    # an edit to another target encodes its own
    other = compute_edit(tiny_model, replace(REQUEST, targets=("fish",)), method="locoedit", config=config,
                         preserved=stats)  # fmt: skip
    assert other.stats["preserved_statistics"]["target_prompts_reused"] == 0
    # the last-token recipe keeps no target prompts (its states are read at the prompts' own length)
    subject = replace(config, positions="subject")
    assert not preservation_statistics(tiny_model, REQUEST, method="locoedit", config=subject).targets


def test_faithful_quickfix_reuses_statistics(tiny_sd1):
    config = QuickFixConfig(faithful=True)
    stats = preservation_statistics(tiny_sd1, REQUEST, method="quickfix", config=config)
    fresh = compute_edit(tiny_sd1, REQUEST, method="quickfix", config=config)
    _assert_same_weights(fresh, compute_edit(tiny_sd1, REQUEST, method="quickfix", config=config, preserved=stats))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"preserve": ("tree",)}, "another preserved concepts"),
        ({"preserve_prompts": ()}, "another preserved prompts"),
        ({"templates": ("{} on a table",)}, "another templates"),
    ],
)
def test_statistics_for_another_preservation_set_are_refused(tiny_sd1, change, words):
    stats = preservation_statistics(tiny_sd1, REQUEST, method="quickfix")
    with pytest.raises(EditError, match=words):
        compute_edit(tiny_sd1, replace(REQUEST, **change), method="quickfix", preserved=stats)


def test_statistics_for_other_settings_or_methods_are_refused(tiny_sd1):
    loco = preservation_statistics(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"])
    with pytest.raises(EditError, match="another positions"):
        compute_edit(tiny_sd1, REQUEST, method="locoedit", config=replace(CONFIGS["locoedit"], positions="subject"),
                     preserved=loco)  # fmt: skip
    with pytest.raises(EditError, match="computed for method 'locoedit', not 'quickfix'"):
        compute_edit(tiny_sd1, REQUEST, method="quickfix", preserved=loco)
    quick = preservation_statistics(tiny_sd1, REQUEST, method="quickfix")
    with pytest.raises(EditError, match="another use_eos"):
        compute_edit(tiny_sd1, REQUEST, method="quickfix", config=QuickFixConfig(use_eos=False), preserved=quick)
    with pytest.raises(ConfigError, match="method 'neurons' has no preservation set"):
        compute_edit(tiny_sd1, REQUEST, method="neurons", config=NeuronConfig(sites=("unet.xattn.1",), top_n=2),
                     preserved=quick)  # fmt: skip
    with pytest.raises(ConfigError, match="preserves nothing"):
        preservation_statistics(tiny_sd1, EditRequest(concepts=("cat",), targets=("dog",)), method="quickfix")
    with pytest.raises(ConfigError, match="preserved must be PreservedStatistics, got dict"):
        compute_edit(tiny_sd1, REQUEST, method="quickfix", preserved={})


def test_statistics_go_stale_when_the_text_encoder_changes(tiny_sd1):
    stats = preservation_statistics(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"])
    text_edit = compute_edit(tiny_sd1, EditRequest(concepts=("bird",), targets=("fish",)), method="quickfix")
    before = model_hashes(tiny_sd1)
    with text_edit.applied(tiny_sd1), pytest.raises(EditError, match=r"stale: text_encoder.*out_proj.weight changed"):
        compute_edit(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"], preserved=stats)
    assert model_hashes(tiny_sd1) == before
    # a UNet edit does not touch the text states the statistics summarise
    unet_edit = compute_edit(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"])
    fresh = preservation_statistics(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"])
    with unet_edit.applied(tiny_sd1):
        compute_edit(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"], preserved=fresh)


@pytest.mark.parametrize("method", ["quickfix", "locoedit"])
def test_saved_statistics_load_and_give_the_same_edit(tiny_sd1, tmp_path, method):
    config = CONFIGS[method]
    stats = preservation_statistics(tiny_sd1, REQUEST, method=method, config=config)
    path = stats.save(tmp_path / "stats.safetensors", tiny_sd1)
    loaded = PreservedStatistics.load(path, tiny_sd1)
    assert loaded.method == method and loaded.rows == stats.rows and dict(loaded.scope) == dict(stats.scope)
    for space, gram in stats.grams.items():
        assert torch.equal(loaded.grams[space].gram, gram.gram)
        assert torch.equal(loaded.grams[space].row_sum, gram.row_sum)
    assert list(loaded.targets) == list(stats.targets)
    for pair, encoded in stats.targets.items():
        assert torch.equal(loaded.targets[pair].context, encoded.context)
        assert loaded.targets[pair].position == encoded.position
    same_target = compute_edit(tiny_sd1, replace(REQUEST, concepts=("bird",)), method=method, config=config,
                               preserved=loaded)  # fmt: skip
    if method == "locoedit":
        assert same_target.stats["preserved_statistics"]["target_prompts_reused"] == len(stats.targets)
    other = replace(REQUEST, concepts=("bird",), targets=("fish",))
    in_memory = compute_edit(tiny_sd1, other, method=method, config=config, preserved=stats)
    from_disk = compute_edit(tiny_sd1, other, method=method, config=config, preserved=loaded)
    for key in in_memory.parameters:
        assert torch.equal(in_memory.weights[key], from_disk.weights[key]), key
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers


def test_saved_statistics_refuse_other_weights_and_bad_files(tiny_sd1, tmp_path):
    stats = preservation_statistics(tiny_sd1, REQUEST, method="locoedit", config=CONFIGS["locoedit"])
    path = stats.save(tmp_path / "stats.safetensors", tiny_sd1)
    text_edit = compute_edit(tiny_sd1, EditRequest(concepts=("bird",), targets=("fish",)), method="quickfix")
    with text_edit.applied(tiny_sd1):
        with pytest.raises(EditError, match="other text-encoder weights") as info:
            PreservedStatistics.load(path, tiny_sd1)
        assert "\n" not in str(info.value)
        with pytest.raises(EditError, match="stale"):  # stale statistics are not written either
            stats.save(tmp_path / "stale.safetensors", tiny_sd1)
    assert not (tmp_path / "stale.safetensors").exists()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EditError, match="cannot read preserved statistics"):
        PreservedStatistics.load(truncated, tiny_sd1)
    with pytest.raises(EditError, match="does not exist"):
        PreservedStatistics.load(tmp_path / "nope.safetensors", tiny_sd1)
    # a file for another preservation set loads, and the edit refuses it
    loaded = PreservedStatistics.load(path, tiny_sd1)
    with pytest.raises(EditError, match="another preserved concepts"):
        compute_edit(tiny_sd1, replace(REQUEST, preserve=("tree",)), method="locoedit", config=CONFIGS["locoedit"],
                     preserved=loaded)  # fmt: skip


STREAM_CONFIGS = {
    "joint-kv": JointKVConfig(sites=("transformer.joint.2", "transformer.attn.5.k"), steps=1),
    "context": ContextEditConfig(),
}


# FLUX's joint blocks are SD3's to this editor (it records 10x longer there): joint-kv is checked on SD3
@pytest.mark.parametrize(("family", "method"), [("sd3", "joint-kv"), ("sd3", "context"), ("flux", "context")])
def test_stream_editors_reuse_statistics_with_the_same_edit(family, method, tmp_path, request):
    """The joint-attention editors read precomputed statistics like LocoEdit: the same weights as an edit that
    computes them; joint-kv's hold each block they were computed for and fingerprint the whole denoiser (a block's
    text stream has passed every block before it), so they survive a save and load and refuse other blocks and a
    changed denoiser."""
    model, config = request.getfixturevalue(f"tiny_{family}"), STREAM_CONFIGS[method]
    before = model_hashes(model)
    stats = preservation_statistics(model, REQUEST, method=method, config=config)
    assert model_hashes(model) == before and stats.rows > 0
    other = replace(REQUEST, concepts=("bird",), targets=("fish",))
    other_config = replace(config, **({"lam": 0.05} if method == "context" else {"lam_k": 0.05}))
    fresh = compute_edit(model, other, method=method, config=other_config)
    reused = compute_edit(model, other, method=method, config=other_config, preserved=stats)
    _assert_same_weights(fresh, reused)
    assert [e.stats["preserved_statistics"]["source"] for e in (fresh, reused)] == ["computed", "precomputed"]
    assert reused.stats["preserve_pairs"] > 0
    if method == "context":
        return
    assert sorted(stats.grams) == ["transformer.attn.2", "transformer.attn.5"] and stats.reads_denoiser
    subset = replace(config, sites=("transformer.attn.5.v",))
    _assert_same_weights(compute_edit(model, other, method=method, config=subset),
                         compute_edit(model, other, method=method, config=subset, preserved=stats))  # fmt: skip
    with pytest.raises(EditError, match=r"hold blocks transformer.attn.2, transformer.attn.5, not transformer.attn.7"):
        compute_edit(model, other, method=method, config=replace(config, sites=("transformer.joint.7",)),
                     preserved=stats)  # fmt: skip
    loaded = PreservedStatistics.load(stats.save(tmp_path / "stats.safetensors", model), model)
    _assert_same_weights(reused, compute_edit(model, other, method=method, config=other_config, preserved=loaded))
    context_edit = compute_edit(model, other, method="context")  # changes the text stream every block reads
    with context_edit.applied(model), pytest.raises(EditError, match=r"stale: transformer.context_embedder.weight"):
        compute_edit(model, other, method=method, config=other_config, preserved=loaded)
