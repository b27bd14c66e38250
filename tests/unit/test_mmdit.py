"""What the joint-attention families (SD3, FLUX.1) share: site tables against the real configs, execution order,
sampling equal to the diffusers pipelines, restores of both streams, per-encoder corruption."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from support import PixelScorer, assert_estimates_agree, finish_order, float_floor, score_changes

from diffloc.editing.edit import Edit
from diffloc.editing.edit import parameter_hashes as model_hashes
from diffloc.editing.registry import compute_edit, get_method
from diffloc.editing.requests import EditRequest
from diffloc.editing.stream_states import stream_positions
from diffloc.editors import EDITORS, JOINT_ATTENTION_FAMILIES
from diffloc.engine.generate import GenerationConfig, generate, generate_runs, initial_latents
from diffloc.engine.hooks import record
from diffloc.engine.interventions import Restore, Run
from diffloc.errors import ConfigError, DifflocError, UnknownSiteError
from diffloc.eval.scorers import DetectorScorer
from diffloc.models.full_configs import full_size_transformer_config
from diffloc.models.mmdit_sites import mmdit_sites, stream_inputs
from diffloc.models.registry import MMDIT_FAMILIES, default_guidance, load
from diffloc.models.tiny_mmdit import build_tiny_mmdit_pipeline, tiny_transformer_config
from diffloc.sites import SiteKind, SiteRole
from diffloc.tracing.causal import causal_trace, trace_text
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.corruption import corruption, subject_ranges
from diffloc.tracing.locogen import locogen, windows_for
from diffloc.tracing.results import WindowResult

PROMPT = "a red circle in the style of van gogh"
CFG = GenerationConfig(steps=2, guidance=4.0)
ROW_ATOL = 1e-5  # rows of one CPU batch agree to ~1e-6 (kernel blocking)
_CLASSES = {"sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}


def _meta(family: str, config: dict):
    with torch.device("meta"):
        return _CLASSES[family].from_config(config)


def _counts(sites) -> dict[str, int]:
    kinds = [s.kind.value for s in sites]
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


REAL_COUNTS = {
    # SD3-medium: 24 joint blocks; the last one is context_pre_only (no text output, no text MLP)
    "sd3": {"attn": 24, "attn_k": 24, "attn_v": 24, "context": 1, "ff": 24, "ff_context": 23, "joint": 24,
            "joint_context": 23, "time_text": 1},
    # FLUX.1: 19 double-stream + 38 single-stream blocks
    "flux": {"attn": 19, "attn_k": 19, "attn_v": 19, "context": 1, "ff": 19, "ff_context": 19, "joint": 19,
             "joint_context": 19, "single": 38, "single_context": 38, "time_text": 1},
}  # fmt: skip


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_full_size_site_counts_and_paths(family):
    sites = mmdit_sites(_meta(family, full_size_transformer_config(family)))
    assert _counts(sites) == REAL_COUNTS[family]
    by_name = {s.name: s for s in sites}
    assert by_name["transformer.attn.5"].module_path == "transformer_blocks.5.attn"
    assert by_name["transformer.attn.5.k"].module_path == "transformer_blocks.5.attn.add_k_proj"
    assert by_name["transformer.attn.5.v"].module_path == "transformer_blocks.5.attn.add_v_proj"
    assert by_name["transformer.ff_context.3"].module_path == "transformer_blocks.3.ff_context"
    assert by_name["transformer.joint.7"].module_path == "transformer_blocks.7"
    assert by_name["transformer.context"].module_path == "context_embedder"
    if family == "sd3":
        assert "transformer.joint_context.23" not in by_name and "transformer.joint.23" in by_name
    else:
        assert by_name["transformer.single.37"].module_path == "single_transformer_blocks.37"
        assert by_name["transformer.single_context.0"].kind is SiteKind.SINGLE_CONTEXT


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_tiny_config_changes_widths_only(family):
    full, tiny = full_size_transformer_config(family), tiny_transformer_config(family)
    depth = ("num_layers", "num_single_layers", "patch_size", "in_channels", "guidance_embeds", "qk_norm")
    assert {k: full.get(k) for k in depth} == {k: tiny.get(k) for k in depth}


def test_tiny_site_table_equals_full_size(tiny_mmdit):
    family = tiny_mmdit.family
    full = mmdit_sites(_meta(family, full_size_transformer_config(family)))
    tiny = tiny_mmdit.sites.denoiser_sites(projections=True)
    assert [(s.name, s.module_path, s.kind) for s in tiny] == [(s.name, s.module_path, s.kind) for s in full]


def test_site_order_equals_execution_order(tiny_mmdit):
    """A hook on every site records the order their forwards finish (a block's two streams finish together:
    image stream, then text stream, as the table lists them)."""
    _check_execution_order(tiny_mmdit)


def test_sd35_second_attention_is_a_site_in_execution_order():
    """SD3.5's blocks 0..12 add an image-only attention (attn2) and RMS-normalise queries and keys."""
    pipe = build_tiny_mmdit_pipeline("sd3")
    config = {**tiny_transformer_config("sd3"), "dual_attention_layers": (0, 1, 2), "qk_norm": "rms_norm"}
    pipe.transformer = SD3Transformer2DModel.from_config(config).eval()
    model = load(pipe)
    assert [s.module_path for s in model.sites.denoiser_sites(SiteKind.SATTN)] == [
        f"transformer_blocks.{i}.attn2" for i in range(3)
    ]
    _check_execution_order(model)


def _check_execution_order(model) -> None:
    sites = [s for s in model.sites if not s.kind.is_projection]
    assert finish_order(model, sites) == [s.name for s in sites]


def test_sampling_equals_the_diffusers_pipeline(tiny_mmdit):
    """The sampler (flow matching, FLUX's packing and guidance embedding) gives the pipeline's own image."""
    model = tiny_mmdit
    ours = generate(model, "a red circle", seeds=0, config=GenerationConfig(steps=3, guidance=3.5))
    latents = initial_latents(model.adapter.latent_shape(model.pipe, 128, 128), [0], model.device, model.dtype)
    if model.family == "flux":
        b, c, h, w = latents.shape
        latents = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    theirs = model.pipe(
        "a red circle", num_inference_steps=3, guidance_scale=3.5, latents=latents, output_type="pt", height=128,
        width=128,
    ).images  # fmt: skip
    torch.testing.assert_close(ours, theirs.cpu(), rtol=0, atol=0)


def test_text_reaches_the_time_embedding_so_no_controls(tiny_mmdit):
    assert tiny_mmdit.adapter.text_in_time_embedding(tiny_mmdit.pipe)
    assert tiny_mmdit.adapter.text_blind_sites(tiny_mmdit.pipe, tiny_mmdit.sites) == []


def _corrupt(model, std=2.0):
    return corruption(model, subject_ranges(model, [PROMPT], "van gogh")[PROMPT], TraceConfig(noise=std), 1)


@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_restoring_every_denoiser_site_gives_the_clean_image(tiny_mmdit, source):
    sites = tuple(s.name for s in tiny_mmdit.sites.denoiser_sites())
    corrupt = _corrupt(tiny_mmdit)
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=sites, source=0, restore_from=source))),
    ]
    clean, corrupted, restored = generate_runs(tiny_mmdit, runs, config=CFG)
    assert (clean - corrupted).abs().max() > 100 * ROW_ATOL
    torch.testing.assert_close(restored, clean, rtol=0, atol=ROW_ATOL)


@pytest.mark.parametrize("kind", [SiteKind.JOINT, SiteKind.JOINT_CONTEXT])
def test_a_restore_writes_the_chosen_stream(tiny_mmdit, kind):
    """Restoring a block's image stream changes only the image tokens it hands on, its text stream only the text."""
    site = tiny_mmdit.sites.denoiser_sites(kind)[3]
    corrupt = _corrupt(tiny_mmdit)
    restore = Restore(sites=(site.name,), source=0, restore_from="trajectory")
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt, restore))]
    config = GenerationConfig(steps=1, guidance=1.0)
    with record(tiny_mmdit, [site.name]) as seen:
        generate_runs(tiny_mmdit, runs, config=config)
    clean, restored = seen[site.name][0]
    torch.testing.assert_close(restored, clean, rtol=0, atol=0)
    text_tokens = {"sd3": 77 + 256, "flux": 512}[tiny_mmdit.family]
    assert clean.shape[0] == (8 * 8 if kind is SiteKind.JOINT else text_tokens)  # 16x16 latents, 2x2 per token


def test_corruption_lands_on_the_subject_in_each_encoder(tiny_mmdit):
    model = tiny_mmdit
    ranges = subject_ranges(model, [PROMPT], "van gogh")[PROMPT]
    embeds = [s.name for s in model.sites.text_sites(SiteKind.TEXT_EMBED)]
    assert list(ranges) == embeds
    t5 = embeds[-1]
    assert ranges["text.embed"][0] == ranges[t5][0] + 1  # CLIP puts BOS first, T5 does not
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(_corrupt(model),))]
    with record(model, embeds) as seen:
        generate_runs(model, runs, config=GenerationConfig(steps=1, guidance=1.0))
    for name in embeds:
        out = seen[name][0]
        changed = (out[1] - out[0]).abs().amax(-1).nonzero().flatten().tolist()
        start, end = ranges[name]
        assert changed == list(range(start, end)), name


def test_stream_inputs_chain_the_blocks(tiny_mmdit):
    inputs = stream_inputs(list(tiny_mmdit.sites))
    assert inputs["transformer.joint.0"] == "transformer.context"
    assert inputs["transformer.joint.1"] == "transformer.joint_context.0"
    if tiny_mmdit.family == "flux":
        assert inputs["transformer.single.0"] == "transformer.joint_context.18"
        assert inputs["transformer.single.5"] == "transformer.single_context.4"
    assert all(tiny_mmdit.sites.get(v).role is SiteRole.DENOISER for v in inputs.values())


# --- LocoGen ------------------------------------------------------------------------------------------------
FAST = {"seeds": (0,), "steps": 2, "guidance": 4.0, "max_batch": 8, "bootstrap": 0}


def test_locogen_cross_attention_window_asks_for_the_text_stream(tiny_mmdit, tiny_sd1):
    with pytest.raises(ConfigError, match=r"no cross-attention layers.*variant 'text-stream'") as info:
        locogen(tiny_mmdit, PROMPT, "a painting", "x", scorer=PixelScorer(), config=LocoGenConfig(**FAST))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"needs a joint-attention family.*'cross-attention'"):
        windows_for(tiny_sd1, LocoGenConfig(variant="text-stream", **FAST))


@pytest.mark.parametrize("variant", ["text-stream", "prompt-injection"])
def test_locogen_windows_of_blocks(tiny_mmdit, variant, tmp_path):
    blocks = [s.name for s in tiny_mmdit.sites.denoiser_sites((SiteKind.JOINT, SiteKind.SINGLE))]
    m = len(blocks) - 3  # four windows keep the test fast
    config = LocoGenConfig(window=m, variant=variant, **FAST)
    result = locogen(tiny_mmdit, PROMPT, "a painting", "x", scorer=PixelScorer(), config=config, out=tmp_path)
    assert result.windows == [blocks[j : j + m] for j in range(4)]
    assert result.meta["variant"] == variant and variant.split("-")[0] in result.meta["intervention"]
    assert ("target" in result.items[0]) == (variant == "text-stream")
    assert not np.allclose(result.scores, result.original_score, atol=1e-5)
    assert WindowResult.load(tmp_path).meta["variant"] == variant


def test_text_stream_patch_from_the_same_prompt_changes_nothing(tiny_sd3):
    config = LocoGenConfig(window=8, variant="text-stream", **FAST)
    result = locogen(tiny_sd3, PROMPT, PROMPT, "x", scorer=PixelScorer(), config=config)
    np.testing.assert_allclose(result.scores, result.original_score, atol=1e-5)


# --- editors ------------------------------------------------------------------------------------------------
REQUEST = EditRequest(concepts=("van gogh",), targets=("a painting",), preserve=("monet",))


def _edit_config(method: str):
    sites = {"sites": ("transformer.joint.2", "transformer.attn.5.k")} if EDITORS[method].takes_sites else {}
    steps = {"steps": 1} if method == "joint-kv" else {}
    return get_method(method).config_class(**sites, **steps)


@pytest.mark.parametrize("method", sorted(m for m, spec in EDITORS.items() if "sd3" in spec.families))
def test_each_edit_applies_reverts_and_round_trips(tiny_mmdit, method, tmp_path):
    model = tiny_mmdit
    before = model_hashes(model)
    prompt_config = GenerationConfig(steps=1, guidance=1.0)
    clean = generate(model, PROMPT, config=prompt_config)
    edit = compute_edit(model, REQUEST, method=method, config=_edit_config(method))
    assert model_hashes(model) == before, "computing an edit changed the model"
    assert edit.family == model.family and edit.notes
    if method == "joint-kv":
        assert edit.stats["sites"] == [
            "transformer.attn.2.k", "transformer.attn.2.v", "transformer.attn.5.k"
        ]  # fmt: skip
        assert all(k.endswith(("add_k_proj.weight", "add_v_proj.weight")) for k in edit.weights)
    else:
        assert list(edit.weights) == ["transformer.context_embedder.weight"]
    with edit.applied(model):
        assert model_hashes(model) != before
        edited = generate(model, PROMPT, config=prompt_config)
    assert model_hashes(model) == before
    assert not torch.equal(edited, clean)
    edit.save(tmp_path / "edit")
    loaded = Edit.load(tmp_path / "edit")
    with loaded.applied(model):
        torch.testing.assert_close(generate(model, PROMPT, config=prompt_config), edited, rtol=0, atol=0)
    assert model_hashes(model) == before


def test_context_edit_maps_the_concept_tokens_onto_the_target(tiny_mmdit):
    """After the edit, context_embedder gives the concept's last token (each segment) what it gave the target's."""
    model = tiny_mmdit
    config = get_method("context").config_class(lam=1e-4)
    edit = compute_edit(
        model, EditRequest(concepts=("van gogh",), targets=("a painting",)), method="context", config=config
    )
    prompts, subjects = ["van gogh", "a painting"], ["van gogh", "a painting"]
    positions = stream_positions(model, prompts, subjects)
    with torch.no_grad():
        hidden = model.adapter.encode(model.pipe, prompts).hidden
        layer = model.module("transformer.context")
        target = layer(hidden[1, positions[1]])
        before = layer(hidden[0, positions[0]])
        with edit.applied(model):
            after = layer(hidden[0, positions[0]])
    assert (after - target).norm() < 0.05 * (before - target).norm()


def test_editors_not_defined_here_say_so_in_one_line(tiny_mmdit, tiny_sd1):
    with pytest.raises(UnknownSiteError, match=r"joint attention.*'joint-kv'") as info:
        compute_edit(
            tiny_mmdit,
            REQUEST,
            method="locoedit",
            config=get_method("locoedit").config_class(sites=("transformer.joint.1",)),
        )
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="defined for sd3, flux only, not sd1"):
        compute_edit(tiny_sd1, REQUEST, method="context")
    if tiny_mmdit.family == "flux":
        with pytest.raises(UnknownSiteError, match=r"single-stream block.*not defined"):
            compute_edit(
                tiny_mmdit,
                REQUEST,
                method="joint-kv",
                config=_edit_config("joint-kv").__class__(sites="transformer.single.0"),
            )


# --- causal tracing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_causal_trace_of_both_streams(tiny_mmdit, source):
    every = [s.name for s in tiny_mmdit.sites.denoiser_sites()]
    sites = ["transformer.joint.4", "transformer.joint_context.4", "transformer.ff_context.2", every]
    config = TraceConfig(noise=2.0, restore_from=source, **FAST)
    result = causal_trace(tiny_mmdit, PROMPT, "van gogh", "x", scorer=PixelScorer(), sites=sites, config=config)
    assert result.labels[:3] == sites[:3] and result.controls == []
    assert result.clean_score != pytest.approx(result.corrupt_score, abs=1e-4)
    assert result.scores[-1] == pytest.approx(result.clean_score, abs=1e-4)  # every site restored: the clean run
    embeds = [s.name for s in tiny_mmdit.sites.text_sites(SiteKind.TEXT_EMBED)]
    assert list(result.meta["subject_ranges"]) == embeds


def test_the_lightweight_editor_table_knows_the_joint_attention_families():
    assert JOINT_ATTENTION_FAMILIES == MMDIT_FAMILIES
    assert all(EDITORS[name].families == MMDIT_FAMILIES for name in ("joint-kv", "context"))


def test_default_guidance_is_each_pipelines_own(tmp_path):
    assert default_guidance("tiny-sd3") == 7.0 and default_guidance("tiny-flux") == 3.5
    assert default_guidance("tiny-flux", 1.0) == 1.0


def test_flux_dev_guidance_is_an_input_not_cfg_rows(tiny_flux):
    """FLUX.1-dev embeds the guidance scale: every denoiser call has one row per run, and the scale changes the
    image through the embedding."""
    rows: list[int] = []
    handle = tiny_flux.denoiser.register_forward_pre_hook(
        lambda m, a, k: rows.append(k["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        low = generate(tiny_flux, PROMPT, config=GenerationConfig(steps=2, guidance=1.5))
        high = generate(tiny_flux, PROMPT, config=GenerationConfig(steps=2, guidance=6.0))
    finally:
        handle.remove()
    assert rows == [1, 1, 1, 1] and not torch.equal(low, high)


def test_quickfix_on_a_stream_family_is_one_line(tiny_mmdit):
    with pytest.raises(DifflocError) as info:
        compute_edit(tiny_mmdit, REQUEST, method="quickfix")
    assert "tokenize" in str(info.value) and "\n" not in str(info.value)


# --- attribution patching -----------------------------------------------------------------------------------
#: small enough that a restore acts linearly on the score (at 0.005 the image-stream blocks' restores already curve
#: by ~10% on tiny-sd3), large enough that restores move the score well past float32's floor (see float_floor)
LINEAR = TraceConfig(seeds=(0,), steps=2, guidance=4.0, noise=0.002, bootstrap=0, max_batch=80)
ABSENT = "a blue diamond"  # absent from the images: a smooth (unsaturated) log-probability


@pytest.fixture(scope="module")
def logp():
    return DetectorScorer(log_probability=True)


def _every_kind(model) -> list[str]:
    """Sites of both streams, the text-side key/value projections included: every kind on SD3; on FLUX the ones
    its blocks compute differently (rotary attention, single-stream blocks)."""
    shared = ["transformer.time_text", "transformer.context", "transformer.attn.3.k", "transformer.attn.3.v",
              "transformer.joint.3", "transformer.joint_context.3"]  # fmt: skip
    if model.family == "flux":
        return [*shared, "transformer.single.3", "transformer.single_context.3"]
    return [*shared, "transformer.attn.3", "transformer.ff.3", "transformer.ff_context.3", "transformer.joint.10",
            "transformer.joint_context.10"]  # fmt: skip


def test_screen_of_both_streams_equals_exact_patching_where_restores_are_linear(tiny_mmdit, logp):
    """The screen's estimate of every site kind (image and text stream, the joint attention's text keys through
    the saturation fix) agrees with exact patching; its confirmed sites carry exact patching's numbers."""
    # FLUX: one step (its sites cost 3x SD3's; the kinds it shares with SD3 are traced over two steps there) and half
    # the corruption (its context embedder curves by 20% at 2e-3 with one generation of random text encoders)
    config = replace(LINEAR, steps=1, noise=0.001) if tiny_mmdit.family == "flux" else LINEAR
    kwargs = dict(scorer=logp, sites=_every_kind(tiny_mmdit), config=config)
    exact = causal_trace(tiny_mmdit, PROMPT, "van gogh", ABSENT, **kwargs)
    screen = causal_trace(tiny_mmdit, PROMPT, "van gogh", ABSENT, method="screen", top_k=2, **kwargs)
    assert screen.labels == exact.labels and screen.meta["attribution_fixes"] == ["attention-saturation"]
    assert screen.meta["subject_ranges"] == exact.meta["subject_ranges"]
    floor = float_floor(exact, screen)
    assert floor < 1e-3 * abs(exact.clean_score)  # the two traces computed the same runs
    want = score_changes(exact)
    # every restore of at least 5% of the largest: which sites stand out depends on the random weights' draw
    assert assert_estimates_agree(want, score_changes(screen, estimates=True), share=0.05, floor=floor) >= 5
    confirmed = [screen.labels.index(name) for name in screen.meta["confirmed"]]
    assert np.flatnonzero(screen.marks == "exact").tolist() == sorted(confirmed)
    np.testing.assert_allclose(score_changes(screen)[confirmed], want[confirmed], rtol=0, atol=floor)


def test_the_attention_fix_reaches_both_outputs_of_joint_attention(tiny_sd3, logp):
    """Joint attention takes one softmax over image and text keys and returns both streams. Far from linear
    (noise 0.5), first order through the softmax misses the text-key restores by ~16% here;
    the layer's exact output with the clean keys, on both of its outputs, brings the estimate within a few %."""
    config = replace(LINEAR, noise=0.5, steps=1)
    kwargs = dict(scorer=logp, sites="transformer.attn.[0258].k", config=config)
    exact = score_changes(causal_trace(tiny_sd3, PROMPT, "van gogh", ABSENT, **kwargs))
    fixed = causal_trace(tiny_sd3, PROMPT, "van gogh", ABSENT, method="attribution", **kwargs)
    plain = causal_trace(tiny_sd3, PROMPT, "van gogh", ABSENT, method="attribution", attention_fix=False, **kwargs)
    assert len(exact) == 4 and plain.meta["attribution_fixes"] == []

    def error(result) -> float:
        return float(np.abs(score_changes(result) - exact).mean() / np.abs(exact).mean())

    assert error(fixed) < 0.05 and error(fixed) < error(plain) / 5


#: per family, a corruption where text restores act linearly and still stand out of the float floor, for the
#: random text encoders of either transformers generation CI runs (they draw the same distributions in another
#: order): SD3's CLIP-G misses by 20% at 5e-4 under one of them, FLUX's T5 by 60% at 4e-3; at these scales both
#: stay within a fraction of the floor
TEXT_NOISE = {"sd3": 0.0001, "flux": 0.0005}


def test_text_traces_follow_one_encoders_tokens(tiny_mmdit, logp):
    """Without ``encoder`` the encoders' token grids differ and the trace refuses. Traced alone, each encoder is
    on its own tokens (T5: no BOS), and the gradient estimate of every layer × token agrees with exact patching.
    SD3 traces all three encoders; FLUX its T5 (its CLIP-L is SD3's first encoder)."""
    specs = tiny_mmdit.adapter.text_encoders(tiny_mmdit.pipe)
    t5 = specs[-1].prefix
    with pytest.raises(ConfigError, match=f"tokenize differently.*{t5}"):
        trace_text(tiny_mmdit, "van gogh", "van gogh", "x", scorer=PixelScorer(), config=LINEAR, kinds=("layer",))
    config = replace(LINEAR, steps=1, noise=TEXT_NOISE[tiny_mmdit.family])
    for spec in specs if tiny_mmdit.family == "sd3" else specs[-1:]:
        kwargs = dict(scorer=logp, config=config, kinds=("layer",), encoder=spec.prefix)
        exact = trace_text(tiny_mmdit, "van gogh", "van gogh", ABSENT, **kwargs)
        estimated = trace_text(tiny_mmdit, "van gogh", "van gogh", ABSENT, method="attribution", **kwargs)
        assert exact.labels == estimated.labels == [f"{spec.prefix}.layer"]
        assert exact.meta["encoder"] == estimated.meta["encoder"] == spec.prefix
        assert exact.meta["subject_ranges"] == estimated.meta["subject_ranges"]
        start, end = exact.subject_range
        assert exact.tokens[start:end] == ["van", "gogh"] and (start == 0) == (spec.prefix == t5)
        floor = float_floor(exact, estimated)
        assert assert_estimates_agree(score_changes(exact), score_changes(estimated), floor=floor) >= 5, spec.prefix
