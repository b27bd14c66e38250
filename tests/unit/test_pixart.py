"""PixArt-α/Σ: the site table against the real block structure, fidelity to diffusers' pipelines, the padding mask,
the micro-conditions, and every algorithm on tiny-pixart (the tiny-family tests cover the rest)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel
from support import assert_estimates_agree, finish_order, float_floor, score_changes

from diffloc.cli.main import main
from diffloc.editing import Edit, EditRequest, LocoEditConfig, NeuronConfig, QuickFixConfig, compute_edit
from diffloc.editing.edit import parameter_hashes as model_hashes
from diffloc.editing.neurons import compute_ablation
from diffloc.engine.generate import GenerationConfig, generate, generate_runs, initial_latents
from diffloc.engine.interventions import Run, SwapContext
from diffloc.errors import ConfigError
from diffloc.eval.scorers import DetectorScorer
from diffloc.models.base import CONTEXT_MASK
from diffloc.models.full_configs import full_size_transformer_config
from diffloc.models.memory import estimate
from diffloc.models.pixart import PIXART_EDIT_CAVEATS, PixArtAdapter
from diffloc.models.registry import load
from diffloc.models.structure import load_structure
from diffloc.models.tiny import build_tiny_pipeline
from diffloc.models.tiny_pixart import tiny_pixart_config
from diffloc.models.transformer_sites import transformer_sites
from diffloc.sites import SiteKind
from diffloc.tracing.causal import causal_trace, trace_text
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.locogen import locogen
from diffloc.tracing.results import TraceResult

PROMPT = "a red circle in the style of van gogh"
REQUEST = EditRequest(concepts=("cat",), targets=("dog",))
CFG = GenerationConfig(steps=3, guidance=4.5)
KINDS = (SiteKind.SATTN, SiteKind.XATTN, SiteKind.XATTN_K, SiteKind.XATTN_V, SiteKind.FF, SiteKind.BLOCK)


def _meta_transformer() -> PixArtTransformer2DModel:
    with torch.device("meta"):
        return PixArtTransformer2DModel.from_config(full_size_transformer_config("pixart"))


def test_site_table_is_the_real_block_structure():
    """28 blocks of the published config, each giving sattn, xattn (+ .k/.v), ff and block in execution order."""
    full = _meta_transformer()
    assert full.inner_dim == 1152 and full.caption_projection.linear_1.in_features == 4096  # T5-XXL's width
    sites = transformer_sites(full)
    assert [s.kind for s in sites] == list(KINDS) * 28
    assert [s.name for s in sites if s.kind is SiteKind.XATTN] == [f"transformer.xattn.{n}" for n in range(28)]
    by_name = {s.name: s for s in sites}
    assert by_name["transformer.sattn.0"].module_path == "transformer_blocks.0.attn1"
    assert by_name["transformer.xattn.27"].module_path == "transformer_blocks.27.attn2"
    assert by_name["transformer.xattn.13.k"].module_path == "transformer_blocks.13.attn2.to_k"
    assert by_name["transformer.xattn.13.v"].module_path == "transformer_blocks.13.attn2.to_v"
    assert by_name["transformer.ff.5"].module_path == "transformer_blocks.5.ff"
    assert by_name["transformer.block.27"].module_path == "transformer_blocks.27"
    assert by_name["transformer.xattn.13.k"].block == "transformer_blocks.13" and by_name["transformer.ff.5"].index == 5
    assert all(s.resolution == 64 and s.component == "transformer" for s in sites)  # 128 latents / patch 2
    assert full.get_submodule("transformer_blocks.13.attn2.to_k").in_features == 1152


def test_tiny_pixart_keeps_everything_but_the_widths():
    tiny, full = tiny_pixart_config(), full_size_transformer_config("pixart")
    changed = {k for k in full if tiny[k] != full[k]}
    assert changed == {"num_attention_heads", "attention_head_dim", "cross_attention_dim", "caption_channels",
                       "sample_size"}  # fmt: skip
    assert tiny["num_layers"] == 28 and tiny["out_channels"] == 2 * tiny["in_channels"]


def test_site_order_equals_a_recording_pass_with_projections(tiny_pixart):
    """Forward hooks on every real module of the table (the .k/.v projections too) record the table's order; a
    layer's .k/.v projections run inside it, so they finish just before it (the table lists them after it, as the
    UNet's does)."""
    sites = tiny_pixart.sites.denoiser_sites(projections=True)
    seen = finish_order(tiny_pixart, sites)
    finished: list[str] = []
    for site in sites:
        if site.kind is SiteKind.XATTN:
            finished += [f"{site.name}.k", f"{site.name}.v"]
        if not site.kind.is_projection:
            finished.append(site.name)
    assert seen == finished


def _pipeline_image(model, prompt, seed, steps, guidance):
    """What diffusers' own pipeline gives from the latent diffloc starts from."""
    pipe = model.pipe
    latents = initial_latents(model.adapter.latent_shape(pipe, *model.adapter.default_size(pipe)), [seed],
                              model.device, model.dtype)  # fmt: skip
    return pipe([prompt], num_inference_steps=steps, guidance_scale=guidance, latents=latents, output_type="pt",
                clean_caption=False, use_resolution_binning=False).images  # fmt: skip


def test_sampling_equals_the_pixart_alpha_pipeline(tiny_pixart):
    ours = generate(tiny_pixart, "a red circle", seeds=3, config=GenerationConfig(steps=5, guidance=4.5))
    torch.testing.assert_close(ours, _pipeline_image(tiny_pixart, "a red circle", 3, 5, 4.5), rtol=0, atol=1e-5)


def test_sigma_reads_300_tokens_and_equals_its_pipeline():
    alpha = build_tiny_pipeline("pixart", seed=0)
    tokenizer = alpha.tokenizer
    tokenizer.model_max_length = 300
    sigma = load(PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=alpha.text_encoder, vae=alpha.vae,
                                     transformer=alpha.transformer, scheduler=alpha.scheduler))  # fmt: skip
    assert sigma.family == "pixart"
    cond = sigma.adapter.encode(sigma.pipe, ["a red circle", "a blue square on a hill"])
    assert cond.hidden.shape[1] == 300 and cond.added[CONTEXT_MASK].shape == (2, 300)
    assert cond.added[CONTEXT_MASK].sum(dim=1).tolist() == [len(tokenizer(p).input_ids) for p in
                                                             ("a red circle", "a blue square on a hill")]  # fmt: skip
    ours = generate(sigma, "a red circle", seeds=1, config=CFG)
    torch.testing.assert_close(ours, _pipeline_image(sigma, "a red circle", 1, 3, 4.5), rtol=0, atol=1e-5)


def test_micro_conditions_follow_the_sampled_size():
    """PixArt-α at 1024 px embeds the resolution and aspect ratio with the timestep (``use_additional_conditions``);
    the conditioning carries them per row, for the size actually sampled, as PixArtAlphaPipeline builds them."""
    pipe = build_tiny_pipeline("pixart", seed=0)
    config = {**tiny_pixart_config(), "use_additional_conditions": True}
    torch.manual_seed(0)
    pipe.transformer = PixArtTransformer2DModel.from_config(config).eval()
    adapter = PixArtAdapter()
    cond = adapter.encode(pipe, ["a red circle", "a cat"])
    assert (
        cond.added["resolution"].tolist() == [[128.0, 128.0]] * 2 and cond.added["aspect_ratio"].tolist() == [[1.0]] * 2
    )
    wide = adapter.for_size(cond, 128, 256)
    assert (
        wide.added["resolution"].tolist() == [[128.0, 256.0]] * 2 and wide.added["aspect_ratio"].tolist() == [[0.5]] * 2
    )
    x, t = torch.randn(2, 4, 16, 32), torch.tensor(500)
    with torch.no_grad():
        ours = adapter.predict_noise(pipe, x, t, adapter.denoiser_kwargs(wide))
        theirs = pipe.transformer(x, encoder_hidden_states=wide.hidden, timestep=t.expand(2),
                                  encoder_attention_mask=cond.added[CONTEXT_MASK], added_cond_kwargs={
                                      "resolution": torch.tensor([[128.0, 256.0]] * 2),
                                      "aspect_ratio": torch.tensor([[0.5]] * 2)}).sample  # fmt: skip
    assert ours.shape == (2, 8, 16, 32)  # noise and the learned variance
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not adapter.text_in_time_embedding(pipe)  # micro-conditions are the image's size, never the text


def test_padding_is_hidden_from_cross_attention(tiny_pixart):
    """Changing the T5 states at padded positions changes nothing: the mask hides them, as in the pipeline."""
    adapter, pipe = tiny_pixart.adapter, tiny_pixart.pipe
    cond = adapter.encode(pipe, ["a red circle"])
    real = int(cond.added[CONTEXT_MASK].sum())
    noisy = cond.hidden.clone()
    noisy[:, real:] += 10 * torch.randn_like(noisy[:, real:])
    x, t = torch.randn(1, 4, 16, 16), torch.tensor(700)
    with torch.no_grad():
        a = adapter.predict_noise(pipe, x, t, adapter.denoiser_kwargs(cond))
        b = adapter.predict_noise(pipe, x, t, adapter.denoiser_kwargs(type(cond)(noisy, cond.added)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_controls_are_the_first_self_attention(tiny_pixart):
    assert tiny_pixart.adapter.text_blind_sites(tiny_pixart.pipe, tiny_pixart.sites) == ["transformer.sattn.0"]


@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_causal_trace_of_blocks_round_trips_and_marks_its_control(tiny_pixart, source, tmp_path):
    config = TraceConfig(seeds=(0,), steps=2, guidance=4.5, noise=2.0, bootstrap=0, max_batch=8, restore_from=source)
    result = causal_trace(tiny_pixart, PROMPT, "van gogh", "a red circle", scorer=DetectorScorer(), out=tmp_path,
                          sites="transformer.block.*", config=config)  # fmt: skip
    assert result.labels[0] == "transformer.sattn.0" and result.controls == ["transformer.sattn.0"]
    assert result.labels[1:] == [f"transformer.block.{n}" for n in range(28)]
    loaded = TraceResult.load(tmp_path)
    np.testing.assert_array_equal(loaded.scores, result.scores)
    assert loaded.labels == result.labels and loaded.restore_from == source


def test_screen_equals_exact_patching_through_the_transformer_and_t5(tiny_pixart):
    """At small noise a restore acts linearly on the score: the screen's gradient estimate of every cross-attention
    layer's effect and of its keys' (through the attention-saturation fix, under the padding mask) agrees with exact
    patching to 5 % where the effect is at least a tenth of the largest of its kind, its confirmed layers carry the
    exact numbers, and so does T5's every layer × token."""
    scorer = DetectorScorer(log_probability=True)
    config = TraceConfig(seeds=(0,), steps=3, guidance=4.0, noise=0.05, bootstrap=0, max_batch=80)
    kwargs = dict(scorer=scorer, sites=["transformer.xattn.*", "transformer.xattn.2*.k"], config=config)
    before = model_hashes(tiny_pixart)
    exact = causal_trace(tiny_pixart, PROMPT, "van gogh", "a blue diamond", **kwargs)
    screen = causal_trace(tiny_pixart, PROMPT, "van gogh", "a blue diamond", method="screen", top_k=2, **kwargs)
    assert model_hashes(tiny_pixart) == before
    assert screen.labels == exact.labels and screen.meta["attribution_fixes"] == ["attention-saturation"]
    floor = float_floor(exact, screen)
    want, got = score_changes(exact), score_changes(screen, estimates=True)
    keys = np.array([label.endswith(".k") for label in exact.labels])
    assert assert_estimates_agree(want[~keys], got[~keys], floor=floor) >= 10
    assert assert_estimates_agree(want[keys], got[keys], floor=floor) >= 4
    confirmed = [screen.labels.index(name) for name in screen.meta["confirmed"]]
    assert np.flatnonzero(screen.marks == "exact").tolist() == sorted(confirmed)
    np.testing.assert_allclose(score_changes(screen)[confirmed], want[confirmed], rtol=0, atol=floor)
    text = {"scorer": scorer, "config": replace(config, steps=1, noise=0.0005), "kinds": ("layer",)}
    exact = trace_text(tiny_pixart, "van gogh", "van gogh", "a blue diamond", **text)
    estimated = trace_text(tiny_pixart, "van gogh", "van gogh", "a blue diamond", method="attribution", **text)
    assert exact.tokens[:3] == ["van", "gogh", "</s>"]
    floor = float_floor(exact, estimated)
    assert assert_estimates_agree(score_changes(exact), score_changes(estimated), floor=floor) >= 5


def test_locogen_swaps_windows_of_cross_attention(tiny_pixart):
    config = LocoGenConfig(window=14, seeds=(0,), steps=2, guidance=4.5, max_batch=8, bootstrap=0)
    result = locogen(tiny_pixart, PROMPT, "a painting", "a red circle", scorer=DetectorScorer(), config=config)
    assert len(result.windows) == 15 and result.windows[0][0] == "transformer.xattn.0"


def test_a_projection_alone_cannot_be_swapped_where_padding_is_masked(tiny_pixart):
    run = Run(prompt=PROMPT, interventions=(SwapContext(sites=("transformer.xattn.3.k",), prompt="a dog"),))
    with pytest.raises(ConfigError, match=r"hides each prompt's padding.*swap the whole layer 'transformer.xattn.3'"):
        generate_runs(tiny_pixart, [run], config=CFG)


EDIT_CONFIGS = {
    "quickfix": QuickFixConfig(),
    "locoedit": LocoEditConfig(sites=("transformer.xattn.1", "transformer.xattn.20")),
    "neurons": NeuronConfig(sites=("transformer.xattn.1",), top_n=3),
}


@pytest.mark.parametrize("method", sorted(EDIT_CONFIGS))
def test_each_edit_applies_reverts_and_round_trips_bit_exactly(tiny_pixart, method, tmp_path):
    before = model_hashes(tiny_pixart)
    edit = compute_edit(tiny_pixart, REQUEST, method=method, config=EDIT_CONFIGS[method])
    assert model_hashes(tiny_pixart) == before
    for caveat in PIXART_EDIT_CAVEATS[method]:
        assert caveat in edit.notes
    with edit.applied(tiny_pixart):
        during = model_hashes(tiny_pixart)
        changed = {k for k in set(during) | set(before) if during.get(k) != before.get(k)}
        assert changed == set(edit.parameters)
    assert model_hashes(tiny_pixart) == before
    loaded = Edit.load(edit.save(tmp_path / method))
    assert loaded.family == "pixart" and loaded.result_hashes == edit.result_hashes
    with loaded.applied(tiny_pixart):
        assert model_hashes(tiny_pixart) == during
    assert model_hashes(tiny_pixart) == before
    if method == "locoedit":
        assert all(k.startswith("transformer.transformer_blocks.") and ".attn2.to_" in k for k in edit.parameters)
    if method == "quickfix":
        assert list(edit.parameters) == ["text_encoder.encoder.block.0.layer.0.SelfAttention.o.weight"]


def test_paper_neuron_ablation_is_refused_in_one_line(tiny_pixart):
    with pytest.raises(ConfigError, match=r"mode='paper' reads the last padding slot.*pixart.*use mode='weights'"):
        compute_ablation(tiny_pixart, REQUEST, NeuronConfig(sites=("transformer.xattn.1",), top_n=3, mode="paper"))


def test_a_saved_pipeline_loads_offline_and_its_structure_from_configs(tiny_pixart, tmp_path, capsys):
    build_tiny_pipeline("pixart", seed=0).save_pretrained(tmp_path)
    loaded = load(tmp_path, device="cpu")
    assert loaded.family == "pixart" and loaded.fingerprint() == tiny_pixart.fingerprint()
    assert loaded.sites.names == tiny_pixart.sites.names
    for weights in tmp_path.rglob("*.safetensors"):
        weights.unlink()
    structure = load_structure(tmp_path)
    assert structure.family == "pixart"
    assert len(structure.sites.denoiser_sites(SiteKind.BLOCK)) == 28
    assert main(["sites", "tiny-pixart", "--select", "transformer.xattn.*"]) == 0
    out = capsys.readouterr().out
    assert "family pixart, 28 sites" in out and "transformer_blocks.27.attn2" in out


def test_memory_estimate_scales_with_the_token_count(tiny_pixart):
    small, large = estimate(tiny_pixart, height=64, width=64), estimate(tiny_pixart, height=128, width=128)
    assert large.row_bytes == pytest.approx(4 * small.row_bytes, rel=0.01)


def test_full_size_pixart_has_the_published_structure():
    """Built on the meta device (no weights): PixArt-α XL-2's 0.6 B-parameter transformer and T5-XXL's encoder."""
    from diffloc.models.base import LoadedModel
    from diffloc.models.full_size import build_full_size_pipeline

    with torch.device("meta"):
        pipe = build_full_size_pipeline("pixart", device="meta")
    adapter = PixArtAdapter()
    model = LoadedModel(pipe=pipe, adapter=adapter, sites=adapter.build_sites(pipe))
    assert (
        len(model.sites.denoiser_sites(SiteKind.XATTN)) == 28 and len(model.sites.text_sites(SiteKind.TEXT_LAYER)) == 24
    )
    assert sum(p.numel() for p in pipe.transformer.parameters()) == 611_349_152
    assert model.module("transformer.xattn.0.k").in_features == 1152 and pipe.text_encoder.config.d_model == 4096
    assert model.adapter.default_size(pipe) == (1024, 1024)
    est = estimate(model)  # 4096 image tokens of width 1152 per row
    assert est.row_bytes == 4 * (10 * 1152 * 4096 + (4 + 8) * 128 * 128)
