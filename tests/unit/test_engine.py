"""Engine invariants: empty interventions, full restores, context swaps, hook hygiene, determinism."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from support import corrupt_subject

from diffloc.engine.generate import GenerationConfig, generate, generate_runs
from diffloc.engine.hooks import installed_hook_count, patch
from diffloc.engine.interventions import CorruptTokens, Restore, Run, SetChannels, SwapContext, compile_runs
from diffloc.errors import ConfigError, PromptError, UnknownSiteError
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline
from diffloc.sites import SiteKind

CFG = GenerationConfig(steps=2, guidance=5.0)
# Rows of one batch are computed by the same kernels but, on CPU, a row's result can depend on its position
# in the batch at the 1e-6 level (oneDNN blocking). Comparisons *across rows* therefore use this tolerance;
# comparisons of the same row with and without a no-op intervention are bit-exact.
ROW_ATOL = 1e-5
PROMPT = "a red circle in the style of van gogh"


def _corrupt(model, std=2.0, seed=1):
    return corrupt_subject(model, PROMPT, std=std, noise_seed=seed)


def test_empty_intervention_equals_clean_bit_exactly(tiny_model):
    denoiser = tuple(s.name for s in tiny_model.sites.denoiser_sites(projections=True))
    plain = [Run(prompt=PROMPT, seed=3), Run(prompt="a blue square", seed=4)]
    empty = [
        Run(prompt=PROMPT, seed=3, interventions=(Restore(sites=(), source=1),)),
        # Hooks installed everywhere that copy a run onto itself and set no channel: a no-op that exercises them.
        Run(
            prompt="a blue square",
            seed=4,
            interventions=(Restore(sites=denoiser, source=1), SetChannels(site=denoiser[0], channels=())),
        ),
    ]
    assert torch.equal(generate_runs(tiny_model, plain, config=CFG), generate_runs(tiny_model, empty, config=CFG))
    # A lone run equals the same run generated beside another one (up to row-position rounding).
    alone = generate(tiny_model, PROMPT, seeds=3, config=CFG)
    torch.testing.assert_close(alone[0], generate_runs(tiny_model, plain, config=CFG)[0], rtol=0, atol=ROW_ATOL)


def test_same_seed_gives_identical_images_across_calls(tiny_sd1):
    a = generate(tiny_sd1, PROMPT, seeds=5, config=CFG)
    b = generate(tiny_sd1, PROMPT, seeds=5, config=CFG)
    c = generate(tiny_sd1, PROMPT, seeds=6, config=CFG)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_corruption_changes_the_image_and_zero_noise_does_not(tiny_model):
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_model),)),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_model, std=0.0),)),
    ]
    clean, corrupt, zero = generate_runs(tiny_model, runs, config=CFG)
    assert (clean - corrupt).abs().max() > 100 * ROW_ATOL
    torch.testing.assert_close(zero, clean, rtol=0, atol=ROW_ATOL)


def test_restoring_every_unet_site_reproduces_the_clean_image(tiny_model):
    denoiser = tuple(s.name for s in tiny_model.sites.denoiser_sites())
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_model),)),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_model), Restore(sites=denoiser, source=0))),
    ]
    clean, corrupt, restored = generate_runs(tiny_model, runs, config=CFG)
    assert not torch.equal(clean, corrupt)
    torch.testing.assert_close(restored, clean, rtol=0, atol=ROW_ATOL)


def test_restoring_no_site_keeps_the_corrupted_image(tiny_sd1):
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_sd1),)),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_sd1), Restore(sites=(), source=0))),
    ]
    _, corrupt, restored = generate_runs(tiny_sd1, runs, config=CFG)
    torch.testing.assert_close(restored, corrupt, rtol=0, atol=ROW_ATOL)


def test_restoring_the_last_text_layers_reproduces_clean(tiny_model):
    # SD-XL reads the penultimate layer (and pools the last), so restore the last two layers of each encoder.
    layers = [s for s in tiny_model.sites if s.kind is SiteKind.TEXT_LAYER]
    last = tuple(s.name for s in layers if s.index >= max(t.index for t in layers if t.component == s.component) - 1)
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(_corrupt(tiny_model), Restore(sites=last, source=0))),
    ]
    clean, restored = generate_runs(tiny_model, runs, config=CFG)
    torch.testing.assert_close(restored, clean, rtol=0, atol=ROW_ATOL)


# Not SD-XL (pooled text embedding) nor IF (addition_embed_type "text" pools the context into the time
# embedding): there text also enters outside cross-attention, and a swap keeps the run's own prompt there.
# PixArt: text enters through cross-attention alone, and each swapped layer reads the other prompt under its own
# padding mask (a shorter prompt than PROMPT).
@pytest.mark.parametrize("family", ["sd1", "sd2", "pixart"])
def test_swapping_every_cross_attention_context_equals_generating_the_other_prompt(family, request):
    model = request.getfixturevalue(f"tiny_{family}")
    other = "a blue square"
    xattn = tuple(s.name for s in model.sites.denoiser_sites(SiteKind.XATTN))
    runs = [
        Run(prompt=other, seed=2),
        Run(prompt=PROMPT, seed=2, interventions=(SwapContext(sites=xattn, prompt=other),)),
    ]
    target, swapped = generate_runs(model, runs, config=CFG)
    torch.testing.assert_close(swapped, target, rtol=0, atol=ROW_ATOL)


def test_if_context_swap_changes_the_image(tiny_if):
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(SwapContext(sites=("unet.xattn.3",), prompt="a blue square"),)),
    ]
    clean, swapped = generate_runs(tiny_if, runs, config=CFG)
    assert (clean - swapped).abs().max() > 100 * ROW_ATOL


def test_a_projection_swap_under_a_normalized_context_is_refused(tiny_if):
    """IF's cross-attention normalizes its context before .k/.v: swapping one projection is not a context swap."""
    run = Run(prompt=PROMPT, seed=0, interventions=(SwapContext(sites=("unet.xattn.0.k",), prompt="a blue square"),))
    with pytest.raises(ConfigError, match=r"'unet.xattn.0.k': this attention normalizes its context.*'unet.xattn.0'"):
        compile_runs(tiny_if, [run])


def test_swapping_k_and_v_projections_equals_swapping_the_layer(tiny_sd1):
    runs = [
        Run(prompt=PROMPT, seed=0, interventions=(SwapContext(sites=("unet.xattn.8",), prompt="a blue square"),)),
        Run(
            prompt=PROMPT,
            seed=0,
            interventions=(SwapContext(sites=("unet.xattn.8.k", "unet.xattn.8.v"), prompt="a blue square"),),
        ),
        Run(prompt=PROMPT, seed=0),
    ]
    layer, kv, clean = generate_runs(tiny_sd1, runs, config=CFG)
    torch.testing.assert_close(kv, layer, rtol=0, atol=ROW_ATOL)
    assert not torch.equal(layer, clean)


def test_set_channels_touches_only_its_run(tiny_sd1):
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(
            prompt=PROMPT,
            seed=0,
            interventions=(SetChannels(site="unet.xattn.8.v", channels=(0, 1, 2, 3), values=5.0),),
        ),
        Run(prompt=PROMPT, seed=0),
    ]
    a, b, c = generate_runs(tiny_sd1, runs, config=CFG)
    torch.testing.assert_close(a, c, rtol=0, atol=ROW_ATOL)
    assert (a - b).abs().max() > 100 * ROW_ATOL


def test_set_channels_on_resnet_uses_channel_dim(tiny_sd1):
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(SetChannels(site="unet.res.0", channels=(0,), values=0.0),)),
    ]
    a, b = generate_runs(tiny_sd1, runs, config=CFG)
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="out of range"):
        generate_runs(
            tiny_sd1,
            [Run(prompt=PROMPT, interventions=(SetChannels(site="unet.res.0", channels=(10_000,)),))],
            config=CFG,
        )


def test_no_hook_remains_after_an_exception(tiny_model):
    before = installed_hook_count(tiny_model)

    def boom(module, args, kwargs, output):
        raise RuntimeError("boom")

    xattn = [s.name for s in tiny_model.sites.denoiser_sites(SiteKind.XATTN)]
    with pytest.raises(RuntimeError, match="boom"), patch(tiny_model, outputs={xattn[3]: boom}):
        generate(tiny_model, PROMPT, config=CFG)
    assert installed_hook_count(tiny_model) == before
    # An engine-level failure (bad channel index raised inside a hook) leaves nothing behind either.
    with pytest.raises(ConfigError):
        generate_runs(
            tiny_model,
            [Run(prompt=PROMPT, interventions=(SetChannels(site=xattn[0], channels=(99_999,)),))],
            config=CFG,
        )
    assert installed_hook_count(tiny_model) == before


def test_bad_inputs_give_one_line_errors(tiny_sd1):
    with pytest.raises(ConfigError, match="steps must be a positive integer, got -1"):
        GenerationConfig(steps=-1)
    with pytest.raises(ConfigError, match="guidance must be a finite number >= 0, got -2"):
        GenerationConfig(guidance=-2.0)
    with pytest.raises(PromptError, match="tokens long; text_encoder accepts at most 77"):
        generate(tiny_sd1, "red " * 100, config=CFG)
    with pytest.raises(PromptError, match="subject 'monet' does not occur"):
        tiny_sd1.adapter.find_subject(tiny_sd1.pipe, PROMPT, "monet")
    with pytest.raises(ConfigError, match="restore source run 5 is outside the batch"):
        generate_runs(
            tiny_sd1, [Run(prompt=PROMPT, interventions=(Restore(sites=("unet.res.0",), source=5),))], config=CFG
        )
    with pytest.raises(UnknownSiteError, match="context swaps need"):
        generate_runs(
            tiny_sd1, [Run(prompt=PROMPT, interventions=(SwapContext(sites=("unet.res.0",), prompt="x"),))], config=CFG
        )
    with pytest.raises(ConfigError, match="noise std -1"):
        CorruptTokens(positions=(1, 2), std=-1)


def test_find_subject_returns_all_subject_tokens(tiny_sd1, tiny_if):
    tok = tiny_sd1.pipe.tokenizer
    start, end = tiny_sd1.adapter.find_subject(tiny_sd1.pipe, PROMPT, "Van Gogh")
    ids = tok(PROMPT).input_ids
    assert tok.decode(ids[start:end]).strip() == "van gogh"
    assert ids[0] == tok.bos_token_id and start > 0
    s2, e2 = tiny_if.adapter.find_subject(tiny_if.pipe, "a red circle", "circle")
    assert tiny_if.pipe.tokenizer.decode(tiny_if.pipe.tokenizer("a red circle").input_ids[s2:e2]).strip() == "circle"


def test_find_subject_prefers_whole_words(tiny_sd1):
    tok = tiny_sd1.pipe.tokenizer
    prompt = "a catalog with a cat"
    start, end = tiny_sd1.adapter.find_subject(tiny_sd1.pipe, prompt, "cat")
    assert tok.decode(tok(prompt).input_ids[start:end]).strip() == "cat" and end == len(tok(prompt).input_ids) - 1


def test_find_subjects_batch_equals_one_at_a_time(tiny_sd1):
    adapter, pipe = tiny_sd1.adapter, tiny_sd1.pipe
    prompts = [PROMPT, "a catalog with a cat", "a catalog, cat", "cat2 and a cat", PROMPT, "a dogcat with a cat"]
    subjects = ["van gogh", "cat", "cat", "cat", "Van Gogh", "dogcat"]
    batch = adapter.find_subjects(pipe, prompts, subjects)
    assert batch == [adapter.find_subject(pipe, p, s) for p, s in zip(prompts, subjects, strict=True)]
    tok = pipe.tokenizer
    for prompt, subject, (start, end) in zip(prompts, subjects, batch, strict=True):
        assert tok.decode(tok(prompt).input_ids[start:end]).strip() == subject.lower()
    with pytest.raises(PromptError, match="2 prompts but 1 subjects"):
        adapter.find_subjects(pipe, [PROMPT, PROMPT], ["van gogh"])
    with pytest.raises(PromptError, match="subject 'monet' does not occur in prompt"):
        adapter.find_subjects(pipe, [PROMPT, PROMPT], ["van gogh", "monet"])
    assert adapter.find_subjects(pipe, [], []) == []


def test_if_sampling_equals_the_if_pipeline():
    """IF's T5 reads the prompt under its padding mask and the UNet reads every position unmasked, as IFPipeline
    runs them: the text states equal the pipeline's, and so does a sample. The pipeline draws DDPM's per-step noise
    from the initial image's generator, diffloc from one per row, so the sample is compared under a deterministic
    scheduler built from the same config."""
    pipe = build_tiny_pipeline("if", seed=0)
    # deterministic; DDIM has no learned variance, so both drop the UNet's variance half
    pipe.scheduler = DDIMScheduler.from_config({**pipe.scheduler.config, "variance_type": "fixed_small"})
    model = load(pipe)
    prompts = ["a red circle", "a small blue square on a hill"]
    theirs, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, clean_caption=False)
    ours = model.adapter.encode(pipe, prompts).hidden
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=theirs.shape[1], return_tensors="pt").input_ids
    unmasked = pipe.text_encoder(ids)[0]  # T5 attends both ways: reading the padding moves every state
    assert (unmasked - theirs).abs().amax() > 100 * 1e-5
    height, width = model.adapter.default_size(pipe)
    ours_image = generate(model, prompts[0], seeds=3, config=GenerationConfig(steps=4, guidance=5.0))
    raw = pipe(prompts[0], num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
               height=height, width=width, output_type="pt", clean_caption=False).images  # fmt: skip
    torch.testing.assert_close(ours_image, (raw / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)  # stage I: pixels in [-1, 1]
