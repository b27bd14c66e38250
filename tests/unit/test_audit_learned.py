"""The learned-prompt attack's optimization on a tiny model: it runs with either objective, touches no weight, flag
or hook, and repeats exactly under a fixed seed."""

from __future__ import annotations

import pytest
import torch

from diffloc.audit.learned import (
    PLACEHOLDER,
    initial_embeddings,
    learn_tokens,
    placeholder_id,
    slot_prompts,
    substituted,
)
from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ConfigError
from diffloc.eval.scorers import DetectorScorer

CAPTIONS = slot_prompts("flumox", ["a flumox", "a picture of a flumox", "a dog"], 2)


def _hooks(model) -> int:
    modules = [m for c in ("unet", "text_encoder", "vae") for m in getattr(model.pipe, c).modules()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def _state(model, digest):
    flags = {n: p.requires_grad for c in ("unet", "text_encoder") for n, p in getattr(model.pipe, c).named_parameters()}
    return digest(model), flags, _hooks(model)


def test_placeholders_take_the_concepts_place_and_must_survive_tokenization(tiny_sd1):
    assert [f"a {PLACEHOLDER} {PLACEHOLDER}", f"a picture of a {PLACEHOLDER} {PLACEHOLDER}"] == CAPTIONS
    assert placeholder_id(tiny_sd1, CAPTIONS, 2) == tiny_sd1.pipe.tokenizer(PLACEHOLDER).input_ids[1]
    with pytest.raises(ConfigError, match="placeholders"):
        placeholder_id(tiny_sd1, CAPTIONS, 3)


def test_denoising_objective_runs_leaves_the_model_as_it_was_and_repeats(tiny_sd1, weights_digest):
    before = _state(tiny_sd1, weights_digest)
    images = torch.rand((len(CAPTIONS), 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    init = initial_embeddings(tiny_sd1, "a dog", 2)
    runs = [learn_tokens(tiny_sd1, CAPTIONS, init, objective="denoising", steps=4, lr=1e-2, batch=2, seed=7,
                         images=images) for _ in range(2)]  # fmt: skip
    assert _state(tiny_sd1, weights_digest) == before
    first, second = runs
    assert torch.equal(first.embeddings, second.embeddings) and first.losses == second.losses
    assert len(first.losses) == 4 and not torch.equal(first.embeddings, init)
    other = learn_tokens(tiny_sd1, CAPTIONS, init, objective="denoising", steps=4, lr=1e-2, batch=2, seed=8,
                         images=images)  # fmt: skip
    assert not torch.equal(other.embeddings, first.embeddings)
    # the learned tokens change what the model draws for the placeholders, and only while substituted
    config = GenerationConfig(steps=2, guidance=1.0, height=64, width=64)
    plain = generate(tiny_sd1, CAPTIONS[:1], seeds=[0], config=config)
    with substituted(tiny_sd1, first.embeddings * 50, CAPTIONS):
        swapped = generate(tiny_sd1, CAPTIONS[:1], seeds=[0], config=config)
    assert not torch.equal(plain, swapped) and torch.equal(plain, generate(tiny_sd1, CAPTIONS[:1], seeds=[0],
                                                                           config=config))  # fmt: skip
    assert _state(tiny_sd1, weights_digest) == before


def test_scorer_objective_differentiates_through_the_sampler_and_repeats(tiny_sd1, weights_digest):
    before = _state(tiny_sd1, weights_digest)
    init = initial_embeddings(tiny_sd1, "thing", 2)
    generation = GenerationConfig(steps=2, guidance=2.0, height=64, width=64)
    settings = {"objective": "scorer", "steps": 2, "lr": 1e-2, "batch": 1, "seed": 0, "attribute": "a flumox",
                "seeds": (5, 6), "generation": generation}  # fmt: skip
    first = learn_tokens(tiny_sd1, CAPTIONS, init, scorer=DetectorScorer(log_probability=True), **settings)
    second = learn_tokens(tiny_sd1, CAPTIONS, init, scorer=DetectorScorer(log_probability=True), **settings)
    assert torch.equal(first.embeddings, second.embeddings) and not torch.equal(first.embeddings, init)
    assert _state(tiny_sd1, weights_digest) == before
    with pytest.raises(ConfigError, match="differentiable scorer"):
        learn_tokens(tiny_sd1, CAPTIONS, init, scorer=object(), **settings)
    with pytest.raises(ConfigError, match="reference image"):
        learn_tokens(tiny_sd1, CAPTIONS, init, objective="denoising", steps=1, lr=1e-2, batch=1, seed=0)
