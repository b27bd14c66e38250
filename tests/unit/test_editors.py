"""Editors on every tiny family: no mutation while computing, efficacy sanity, and one-line errors."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch

from diffloc.editing import EditRequest, LocoEditConfig, NeuronConfig, QuickFixConfig, compute_edit
from diffloc.editing.edit import parameter_hashes as model_hashes
from diffloc.editing.neurons import z_scores
from diffloc.editing.quickfix import IF_NOTE
from diffloc.editing.registry import get_method
from diffloc.editing.states import context_at_subjects, encode_context, subject_positions
from diffloc.editors import EDITORS
from diffloc.engine.hooks import record
from diffloc.errors import ConfigError, DifflocError, PromptError, UnknownSiteError
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline

REQUEST = EditRequest(concepts=("cat",), targets=("dog",))
XATTN = "unet.xattn.1"
#: the same cross-attention layer of each denoiser family
XATTN_OF = {"pixart": "transformer.xattn.1"}


#: settings the tiny models need beyond an editor's defaults (their projections have fewer than 50 channels)
TINY_SETTINGS = {"neurons": {"top_n": 3}}


def _config(method: str, family: str = "sd1"):
    """The method's config from the editor table: its defaults, one cross-attention site where it takes sites."""
    spec = EDITORS[method]
    sites = {"sites": (XATTN_OF.get(family, XATTN),)} if spec.takes_sites else {}
    return get_method(method).config_class(**sites, **TINY_SETTINGS.get(method, {}))


@pytest.mark.parametrize("method", sorted(EDITORS))
def test_the_editor_table_agrees_with_each_config_class(method):
    entry, spec = get_method(method), EDITORS[method]
    assert entry.spec is spec and entry.summary == spec.summary
    names = {f.name for f in fields(entry.config_class)}
    assert spec.takes_sites == ("sites" in names)
    assert spec.weighs_preservation == ("preserve_weight" in names)
    assert (spec.statistics is None) == (entry.statistics is None)
    defaults = {f.name: f.default for f in fields(entry.config_class)}
    for option in spec.options:
        assert option.field in names, option.flag
        assert option.default == defaults[option.field], option.flag


@pytest.mark.parametrize("method", sorted(EDITORS))
def test_every_method_on_every_family(tiny_model, method):
    before = model_hashes(tiny_model)
    if EDITORS[method].families and tiny_model.family not in EDITORS[method].families:
        with pytest.raises(ConfigError, match=f"defined for .* only, not {tiny_model.family}") as info:
            compute_edit(tiny_model, REQUEST, method=method, config=_config(method, tiny_model.family))
        assert "\n" not in str(info.value) and model_hashes(tiny_model) == before
        return
    edit = compute_edit(tiny_model, REQUEST, method=method, config=_config(method, tiny_model.family))
    assert model_hashes(tiny_model) == before, "computing an edit changed the model"
    assert edit.family == tiny_model.family and edit.method == method
    with edit.applied(tiny_model):
        assert model_hashes(tiny_model) != before
    assert model_hashes(tiny_model) == before
    if tiny_model.family in ("if", "pixart"):
        assert edit.notes, "the T5 caveat must be stated in the result"


def test_quickfix_edits_every_text_encoder_of_sdxl(tiny_sdxl):
    edit = compute_edit(tiny_sdxl, REQUEST, method="quickfix")
    assert {k.split(".")[0] for k in edit.parameters} == {"text_encoder", "text_encoder_2"}
    assert all(k.endswith("layers.0.self_attn.out_proj.weight") for k in edit.parameters)
    assert edit.stats["sites"] == ["text.attn.0", "text2.attn.0"]


def test_edited_layers_names_each_layer_once():
    from diffloc.editing.locoedit import edited_layers

    sites = ["unet.xattn.8.k", "unet.xattn.8.v", "unet.xattn.9.v", "text.attn.0"]
    assert edited_layers(sites) == ["unet.xattn.8", "unet.xattn.9", "text.attn.0"]


def test_quickfix_reference_pair_count_and_if_note(tiny_sd1, tiny_if):
    edit = compute_edit(tiny_sd1, EditRequest(concepts=("van gogh",), targets=("painting",)), method="quickfix")
    assert edit.stats["key_value_pairs"]["text_encoder"]["edit"] == 291  # as the reference notebook prints
    single = compute_edit(
        tiny_sd1, EditRequest(concepts=("van gogh",), targets=("painting",)), config=QuickFixConfig(use_eos=False)
    )
    assert single.stats["key_value_pairs"]["text_encoder"]["edit"] == 4
    assert IF_NOTE in compute_edit(tiny_if, REQUEST, method="quickfix").notes


def _final_state(model, prompt, subject):
    return context_at_subjects(model, [prompt], [subject])[0]


def _layer0_attention(model, prompt, subject):
    """Output of site text.attn.0 (what Diff-QuickFix edits) at the last subject token."""
    position = subject_positions(model, [prompt], [subject])[0]
    with record(model, ["text.attn.0"]) as store:
        model.adapter.encode(model.pipe, [prompt])
    return store["text.attn.0"][0][0, position]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "if"])
def test_quickfix_moves_held_out_concept_states_towards_target(request, family):
    # Random tiny models carry no knowledge, so efficacy is checked where the edit acts: the layer-0 attention
    # output at the concept's last token, on a template the edit never saw.
    model = request.getfixturevalue(f"tiny_{family}")
    prompt, target = "a drawing of cat", "a drawing of dog"
    c0 = _layer0_attention(model, prompt, "cat")
    t0 = _layer0_attention(model, target, "dog")
    edit = compute_edit(model, REQUEST)
    with edit.applied(model):
        c1 = _layer0_attention(model, prompt, "cat")
    bound = 0.8 if family == "if" else 0.5  # T5 is bidirectional: context changes the subject state more
    assert (c1 - t0).norm() < bound * (c0 - t0).norm()


@pytest.fixture(scope="module")
def biased_sd1():
    """A tiny SD-1 whose layer-0 out_proj has a non-zero bias (the tiny init leaves biases at zero)."""
    model = load(build_tiny_pipeline("sd1", seed=0))
    with torch.no_grad():
        bias = model.module("text.attn.0").out_proj.bias
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
    return model


def test_quickfix_faithful_puts_the_bias_into_the_targets(biased_sd1):
    tiny_sd1 = biased_sd1
    clean = compute_edit(tiny_sd1, REQUEST, config=QuickFixConfig(use_eos=False))
    faithful = compute_edit(tiny_sd1, REQUEST, config=QuickFixConfig(use_eos=False, faithful=True))
    key = clean.parameters[0]
    bias = tiny_sd1.module("text.attn.0").out_proj.bias.detach()
    h = _layer0_attention(tiny_sd1, "a photo of dog", "dog")  # W0 h_t + b
    assert "faithful" in " ".join(faithful.notes) and not clean.notes
    # faithful weights send concept keys to W0 h_t + b, so the layer outputs W0 h_t + 2b
    with faithful.applied(tiny_sd1):
        out_faithful = _layer0_attention(tiny_sd1, "a photo of cat", "cat")
    with clean.applied(tiny_sd1):
        out_clean = _layer0_attention(tiny_sd1, "a photo of cat", "cat")
    assert (out_clean - h).norm() < 0.1 * h.norm()
    assert (out_faithful - (h + bias)).norm() < 0.1 * h.norm()
    assert not torch.equal(faithful.weights[key], clean.weights[key])


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "if"])
def test_locoedit_maps_concept_keys_values_towards_target(request, family):
    model = request.getfixturevalue(f"tiny_{family}")
    # a prompt the edit never saw; the concept's last token is followed by more words
    prompt, target = "cat on a table", "dog on a table"
    c = _final_state(model, prompt, "cat")
    t = _final_state(model, target, "dog")
    k_site, v_site = model.kv_sites(XATTN)
    with torch.no_grad():
        target_out = {s.name: model.module(s)(t) for s in (k_site, v_site)}
        before = {s.name: (model.module(s)(c) - target_out[s.name]).norm() for s in (k_site, v_site)}
    edit = compute_edit(model, REQUEST, method="locoedit", config=LocoEditConfig(sites=(XATTN,)))
    with edit.applied(model), torch.no_grad():
        after = {s.name: (model.module(s)(c) - target_out[s.name]).norm() for s in (k_site, v_site)}
    # CLIP is causal, so the words after the subject do not change its state; T5 (IF) is bidirectional
    bound = 0.9 if family == "if" else 0.1
    for name in before:
        assert after[name] < bound * before[name], name


def test_locoedit_preserve_keeps_other_concepts(tiny_sd1):
    keep = _final_state(tiny_sd1, "a photo in the style of house", "house")
    k_site, _ = tiny_sd1.kv_sites(XATTN)
    module = tiny_sd1.module(k_site)
    with torch.no_grad():
        base = module(keep)
    moved = {}
    for preserve in ((), ("house",)):
        request = EditRequest(concepts=("cat", "bird"), targets=("dog", "fish"), preserve=preserve)
        edit = compute_edit(tiny_sd1, request, method="locoedit", config=LocoEditConfig(sites=(XATTN,)))
        assert edit.stats["key_value_pairs"] == 8 and edit.stats["preserve_pairs"] == 4 * len(preserve)
        with edit.applied(tiny_sd1), torch.no_grad():
            moved[preserve] = float((module(keep) - base).norm() / base.norm())
    assert moved[("house",)] < 0.2 * moved[()], moved


def test_locoedit_accepts_window_results_and_single_projections(tiny_sd1):
    window = SimpleNamespace(best_sites=["unet.xattn.8", "unet.xattn.9"])
    edit = compute_edit(tiny_sd1, REQUEST, method="locoedit", config=LocoEditConfig(sites=window))
    assert edit.stats["sites"] == ["unet.xattn.8.k", "unet.xattn.8.v", "unet.xattn.9.k", "unet.xattn.9.v"]
    only_v = compute_edit(tiny_sd1, REQUEST, method="locoedit", config=LocoEditConfig(sites="unet.xattn.8.v"))
    assert len(only_v.parameters) == 1 and only_v.parameters[0].endswith("attn2.to_v.weight")


def test_z_scores_by_hand():
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    n = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    z = z_scores(s, n)
    assert z[0].item() == pytest.approx(2.0 / (1.0 / 2) ** 0.5)
    assert z[1].item() == pytest.approx(-1.0 / (1.0 / 2) ** 0.5)


def test_causal_shortcut_matches_full_padding(tiny_sd1, tiny_sdxl):
    for model in (tiny_sd1, tiny_sdxl):
        prompts = ["a photo of cat", "cat"]
        positions = subject_positions(model, prompts, ["cat", "cat"])
        short = encode_context(model, prompts)
        full = model.adapter.encode(model.pipe, prompts).hidden
        assert short.shape[1] < full.shape[1]
        for row, pos in enumerate(positions):
            torch.testing.assert_close(short[row, : pos + 1], full[row, : pos + 1], rtol=1e-4, atol=1e-5)


BAD = [
    (lambda: QuickFixConfig(lam=0), ConfigError, "lam"),
    (lambda: QuickFixConfig(lam=-0.5), ConfigError, "lam"),
    (lambda: LocoEditConfig(sites=(XATTN,), lam_v=0.0), ConfigError, "lam_v"),
    (lambda: EditRequest(concepts=(), targets=("dog",)), PromptError, "no concept"),
    (lambda: EditRequest(concepts=("cat",), targets=("dog",), templates=("a {} and {}",)), PromptError, "exactly one"),
    (lambda: EditRequest(concepts=("cat", "bird"), targets=("a", "b", "c")), ConfigError, "targets"),
    (lambda: NeuronConfig(sites=(XATTN,), top_n=0), ConfigError, "top_n"),
    (lambda: LocoEditConfig(sites=()), ConfigError, "no cross-attention"),
]


@pytest.mark.parametrize("make, error, words", BAD)
def test_bad_configs_raise_one_line(make, error, words):
    with pytest.raises(error, match=words) as info:
        make()
    assert "\n" not in str(info.value)


BAD_COMPUTE = [
    ("quickfix", EditRequest(concepts=("cat",), targets=("dog",), templates=("{}s in a field",)), None, PromptError),
    ("locoedit", REQUEST, LocoEditConfig(sites=("unet.sattn.0",)), UnknownSiteError),
    ("locoedit", REQUEST, LocoEditConfig(sites=("text.attn.0",)), UnknownSiteError),
    ("locoedit", REQUEST, LocoEditConfig(sites=("unet.xattn.99",)), UnknownSiteError),
    ("neurons", REQUEST, NeuronConfig(sites=(XATTN,), top_n=100_000), ConfigError),
    ("nope", REQUEST, None, ConfigError),
    ("locoedit", REQUEST, None, ConfigError),
    ("locoedit", REQUEST, QuickFixConfig(), ConfigError),
]


@pytest.mark.parametrize("method, request_, config, error", BAD_COMPUTE)
def test_bad_inputs_leave_model_untouched(tiny_sd1, method, request_, config, error):
    before = model_hashes(tiny_sd1)
    with pytest.raises(error) as info:
        compute_edit(tiny_sd1, request_, method=method, config=config)
    assert isinstance(info.value, DifflocError) and "\n" not in str(info.value)
    assert model_hashes(tiny_sd1) == before


def test_concept_missing_from_template_names_the_prompt(tiny_sd1):
    request = EditRequest(concepts=("cat",), targets=("dog",), templates=("{}s in a field",))
    with pytest.raises(PromptError, match="cats in a field"):
        compute_edit(tiny_sd1, request, method="locoedit", config=LocoEditConfig(sites=(XATTN,)))


def test_locoedit_target_modes(tiny_sd1):
    bare = compute_edit(tiny_sd1, REQUEST, method="locoedit", config=LocoEditConfig(sites=(XATTN,)))
    templated = compute_edit(
        tiny_sd1, REQUEST, method="locoedit", config=LocoEditConfig(sites=(XATTN,), target_mode="template")
    )
    key = bare.parameters[0]
    assert not torch.equal(bare.weights[key], templated.weights[key])
    assert bare.config["target_mode"] == "bare"
    with pytest.raises(ConfigError, match="target_mode"):
        LocoEditConfig(sites=(XATTN,), target_mode="nope")


def test_locoedit_eos_positions_map_the_padding_states_too(tiny_sd1):
    request = EditRequest(concepts=("cat",), targets=("dog",), templates=("a photo of {}",), default_templates=False)
    config = LocoEditConfig(sites=(XATTN,), target_mode="template", positions="subject+eos", lam_k=1e-4)
    edit = compute_edit(tiny_sd1, request, method="locoedit", config=config)
    # "a photo of cat" = BOS a photo of cat EOS: the last subject token sits at position 4 of 77
    assert edit.stats["key_value_pairs"] == 77 - 4
    context = encode_context(tiny_sd1, ["a photo of cat", "a photo of dog"])  # full padding is not needed
    full = tiny_sd1.adapter.encode(tiny_sd1.pipe, ["a photo of cat", "a photo of dog"]).hidden
    assert torch.allclose(context[:, :6], full[:, :6], atol=1e-5)
    k_site, _ = tiny_sd1.kv_sites(XATTN)
    module = tiny_sd1.module(k_site)
    with torch.no_grad():
        goal = module(full[1, 5:])  # the target's EOS and padding keys
        before = (module(full[0, 5:]) - goal).norm()
        with edit.applied(tiny_sd1):
            after = (module(full[0, 5:]) - goal).norm()
    assert after < 0.5 * before
    subject_only = compute_edit(tiny_sd1, request, method="locoedit", config=LocoEditConfig(sites=(XATTN,)))
    assert subject_only.stats["key_value_pairs"] == 1
    with pytest.raises(ConfigError, match="positions must be one of subject, subject\\+eos, got 'eos'"):
        LocoEditConfig(sites=(XATTN,), positions="eos")


def test_no_hook_or_state_left_behind(tiny_model):
    from diffloc.engine.hooks import installed_hook_count

    before = tiny_model.adapter.encode(tiny_model.pipe, ["a photo of cat"]).hidden
    hooks = installed_hook_count(tiny_model)  # after a first encode: transformers installs its own lazily
    compute_edit(tiny_model, REQUEST)  # quickfix stops the text encoder mid-forward
    if tiny_model.family not in ("if", "pixart"):  # the tiny T5 vocabulary splits "cats" into "cat" + "s"
        with pytest.raises(PromptError):
            compute_edit(tiny_model, EditRequest(concepts=("cat",), targets=("dog",), templates=("{}s in a field",)))
    assert installed_hook_count(tiny_model) == hooks
    assert torch.equal(tiny_model.adapter.encode(tiny_model.pipe, ["a photo of cat"]).hidden, before)


def test_multi_concept_quickfix_is_one_joint_solve(tiny_sd1):
    request = EditRequest(concepts=("cat", "bird"), targets=("dog", "fish"), preserve=("house",))
    edit = compute_edit(tiny_sd1, request, config=QuickFixConfig(use_eos=False))
    assert len(edit.parameters) == 1  # one weight, all concepts stacked into one solve
    assert edit.stats["key_value_pairs"]["text_encoder"] == {"edit": 8, "preserve": 4}
    pairs = [("a photo of cat", "cat", "a photo of dog", "dog"), ("a photo of bird", "bird", "a photo of fish", "fish")]
    before = {c: (_layer0_attention(tiny_sd1, p, c), _layer0_attention(tiny_sd1, tp, t)) for p, c, tp, t in pairs}
    keep = _layer0_attention(tiny_sd1, "a photo of house", "house")
    with edit.applied(tiny_sd1):
        for prompt, concept, _, _ in pairs:
            c0, t0 = before[concept]
            c1 = _layer0_attention(tiny_sd1, prompt, concept)
            assert (c1 - t0).norm() < 0.2 * (c0 - t0).norm(), concept
        assert (_layer0_attention(tiny_sd1, "a photo of house", "house") - keep).norm() < 0.05 * keep.norm()


@pytest.mark.parametrize("method", ["quickfix", "locoedit"])
def test_preserved_prompts_keep_their_states(tiny_sd1, method):
    kept_prompt = "a red house on a hill"
    config = LocoEditConfig(sites=(XATTN,), positions="subject+eos", target_mode="template")
    config = config if method == "locoedit" else QuickFixConfig()
    k_site, _ = tiny_sd1.kv_sites(XATTN)

    def states():
        if method == "quickfix":
            with record(tiny_sd1, ["text.attn.0"]) as store:
                tiny_sd1.adapter.encode(tiny_sd1.pipe, [kept_prompt])
            return store["text.attn.0"][0][0]
        with torch.no_grad():
            return tiny_sd1.module(k_site)(encode_context(tiny_sd1, [kept_prompt])[0])

    base = states()
    moved = {}
    for keep in ((), (kept_prompt,)):
        request = EditRequest(concepts=("cat",), targets=("dog",), preserve_prompts=keep)
        edit = compute_edit(tiny_sd1, request, method=method, config=config)
        assert EditRequest.from_dict(edit.request).preserve_prompts == keep
        with edit.applied(tiny_sd1):
            moved[keep] = float((states() - base).norm() / base.norm())
    # a compromise in a least-squares solve (the tiny encoder is 32 wide), not an exact constraint
    assert moved[(kept_prompt,)] < 0.6 * moved[()], moved
    with pytest.raises(ConfigError, match="neuron edits do not take preserve_prompts"):
        compute_edit(
            tiny_sd1, EditRequest(concepts=("cat",), targets=("dog",), preserve_prompts=("a house",)),
            method="neurons", config=NeuronConfig(sites=(XATTN,), top_n=2),
        )  # fmt: skip
    with pytest.raises(PromptError, match="empty preserved prompt"):
        EditRequest(concepts=("cat",), targets=("dog",), preserve_prompts=(" ",))
