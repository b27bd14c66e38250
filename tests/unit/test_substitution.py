"""Corruption by symmetric token replacement: a substituted run is the run of the prompt with the substitute in the
subject's place, in every text encoder, and a trace with it corrupts by nothing else."""

from __future__ import annotations

import pytest
import torch

from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.hooks import record
from diffloc.engine.interventions import CorruptTokens, Run
from diffloc.errors import ConfigError, PromptError
from diffloc.sites import SiteKind
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.corruption import corruption, encoder_noise, replacement_ids, subject_ranges

PROMPT = "a red circle in the style of van gogh"
SUBSTITUTED = "a blue circle in the style of van gogh"
CFG = GenerationConfig(steps=2, guidance=5.0)
ROW_ATOL = 1e-5  # rows of one CPU batch agree to ~1e-6 (kernel blocking); see test_engine


class Projection:
    """The image's projection on a fixed random direction: needs no detector, and unlike the mean pixel it moves
    visibly when a random model's text changes."""

    name = "projection"

    def score(self, images, texts):
        flat = images.flatten(1).float()
        direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0))
        return flat @ direction / flat.shape[1] ** 0.5

    def score_grad(self, images, texts):
        return self.score(images, texts)

    def check(self, text):
        return None


def _substituted(model, prompt=PROMPT, subject="red", substitute="blue", seed=0):
    config = TraceConfig(substitute=substitute, bootstrap=0)
    ranges = subject_ranges(model, [prompt], subject)[prompt]
    ids = replacement_ids(model, [prompt], subject, substitute)[prompt]
    return corruption(model, ranges, config, seed, ids)


def test_a_substituted_run_is_the_substitute_prompts_run(tiny_model):
    """Independent of the hook: the prompt written with "blue" gives the same embeddings and the same image."""
    embeds = [s.name for s in tiny_model.sites if s.kind is SiteKind.TEXT_EMBED]
    corrupt = _substituted(tiny_model)
    assert corrupt.std == 0.0 and {site for site, _ in corrupt.replacements} == set(embeds)
    runs = [Run(prompt=SUBSTITUTED, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,))]
    with record(tiny_model, embeds) as seen:
        images = generate_runs(tiny_model, runs, config=CFG)
    for name in embeds:
        written, replaced = seen[name][0][0], seen[name][0][1]
        torch.testing.assert_close(replaced, written, rtol=0, atol=0)
    torch.testing.assert_close(images[1], images[0], rtol=0, atol=ROW_ATOL)
    clean = generate_runs(tiny_model, [Run(prompt=PROMPT, seed=0)], config=CFG)[0]
    assert (clean - images[0]).abs().max() > 1e-3  # the substitute changes the image: the check above can fail


def test_a_substitute_of_another_token_count_is_refused(tiny_sd1):
    with pytest.raises(PromptError, match=r"substitute 'van gogh' does not line up with subject 'red'.* 1 tokens"):
        replacement_ids(tiny_sd1, [PROMPT], "red", "van gogh")
    # shorter: CLIP pads with its end-of-text token, so only the substitute's own range can tell
    with pytest.raises(PromptError, match=r"substitute 'blue' does not line up with subject 'van gogh'.* 2 tokens"):
        replacement_ids(tiny_sd1, [PROMPT], "van gogh", "blue")
    assert replacement_ids(tiny_sd1, [PROMPT], "red", None) == {}


def test_substitute_settings_are_checked_and_keep_noise_items_keys():
    with pytest.raises(ConfigError, match=r"noise 0\.5 and substitute 'blue' are two corruptions"):
        TraceConfig(noise=0.5, substitute="blue")
    with pytest.raises(ConfigError, match="substitute must be a non-empty text"):
        TraceConfig(substitute="  ")
    assert "substitute" not in TraceConfig().item_dict()
    assert TraceConfig(substitute="blue").item_dict()["substitute"] == "blue"


def test_replacement_ids_must_match_the_corrupted_positions():
    with pytest.raises(ConfigError, match=r"2 replacement tokens for text\.embed's 1 corrupted positions"):
        CorruptTokens(positions=(2, 3), std=0.0, replacements=(("text.embed", (5, 6)),))


def test_a_trace_corrupted_by_substitution(tiny_sd1):
    """The corrupted score is the substitute prompt's score; no noise is recorded; text-blind controls restore
    nothing under same-latent; restoring every site gives the clean score."""
    config = TraceConfig(seeds=(0,), steps=2, guidance=5.0, bootstrap=0, substitute="blue")
    assert set(encoder_noise(tiny_sd1, config).values()) == {0.0}
    sites = ["unet.xattn.0", "unet.xattn.8", [s.name for s in tiny_sd1.sites.denoiser_sites()]]
    result = causal_trace(tiny_sd1, PROMPT, "red", "x", scorer=Projection(), sites=sites, config=config)
    written = generate_runs(tiny_sd1, [Run(prompt=SUBSTITUTED, seed=0), Run(prompt=PROMPT, seed=0)],
                            config=GenerationConfig(steps=2, guidance=5.0))  # fmt: skip
    scores = Projection().score(written, ["x", "x"])
    assert result.corrupt_score == pytest.approx(float(scores[0]), abs=1e-5)
    assert result.clean_score == pytest.approx(float(scores[1]), abs=1e-5)
    assert abs(result.clean_score - result.corrupt_score) > 1e-4
    assert result.noise == 0.0 and result.meta["config"]["substitute"] == "blue"
    assert result.controls and all(abs(v) <= 1e-4 for v in result.control_effects.values())
    assert result.indirect_effect[result.labels.index("+".join(sites[2]))] == pytest.approx(1.0, abs=1e-3)


def test_the_gradient_path_reads_the_same_substituted_run(tiny_sd1):
    """Attribution corrupts through the same engine: its measured clean and corrupted scores are the exact trace's."""
    config = TraceConfig(seeds=(0,), steps=2, guidance=5.0, bootstrap=0, substitute="blue")
    sites = ["unet.xattn.0", "unet.xattn.8"]
    exact = causal_trace(tiny_sd1, PROMPT, "red", "x", scorer=Projection(), sites=sites, config=config)
    estimated = causal_trace(tiny_sd1, PROMPT, "red", "x", scorer=Projection(), sites=sites, config=config,
                             method="attribution")  # fmt: skip
    assert estimated.corrupt_score == pytest.approx(exact.corrupt_score, abs=1e-4)
    assert estimated.clean_score == pytest.approx(exact.clean_score, abs=1e-4)
