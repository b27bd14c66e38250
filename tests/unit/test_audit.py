"""Erasure audit pieces that need no sampling: targets, attack prompts, config, the revert dial."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffloc.audit.config import ATTACKS, AuditConfig
from diffloc.audit.prompts import (
    description_gap,
    description_prompts,
    paraphrase_prompts,
    spelling_prompts,
    spelling_variants,
)
from diffloc.audit.revival import clean_examples, reverted
from diffloc.audit.target import audit_target
from diffloc.editing.edit import Edit
from diffloc.errors import ConfigError
from diffloc.world import vocab

LEGACY_EDIT = Path(__file__).resolve().parent.parent / "data" / "edit-v1-quickfix-tiny-sd1"


def test_a_shapesworld_removal_names_its_attribute_and_an_update_must_be_named():
    style = audit_target({"concepts": ["pica stro"], "targets": ["a plain style"]}, world=True)
    assert (style.attribute, style.kind) == ("in the style of pica stro", "style")
    assert audit_target({"concepts": ["flumox"], "targets": ["thing"]}, world=True).attribute == "a flumox"
    with pytest.raises(ConfigError, match=r"updates 'trelania' to 'quelland'.*--attribute.*the flag of trelania"):
        audit_target({"concepts": ["trelania"], "targets": ["quelland"]}, world=True)
    named = audit_target({"concepts": ["trelania"], "targets": ["quelland"]}, world=True,
                         attribute="the flag of trelania")  # fmt: skip
    assert named.attribute == "the flag of trelania"
    with pytest.raises(ConfigError, match="--attribute"):
        audit_target({"concepts": ["van gogh"], "targets": ["a painting"]}, world=False)
    with pytest.raises(ConfigError, match=r"2 concepts.*--concept"):
        audit_target({"concepts": ["flumox", "zorblin"], "targets": ["thing", "thing"]}, world=True)
    assert audit_target({"concepts": ["flumox", "zorblin"], "targets": ["thing", "thing"]}, world=True,
                        concept="zorblin").attribute == "a zorblin"  # fmt: skip


def test_attack_prompts_avoid_the_edits_own_and_respell_the_name():
    target = audit_target({"concepts": ["pica stro"], "targets": ["a plain style"]}, world=True)
    everything = paraphrase_prompts(target, [], 100)
    seen = everything[:3]
    kept = paraphrase_prompts(target, seen, 100)
    assert not set(seen) & set(kept) and len(kept) == len(everything) - 3
    assert all("the style of pica stro" in p for p in kept)
    # every word order of the kind is asked, held-out ones included
    assert any(p.startswith("in the style of pica stro,") for p in kept) and len(paraphrase_prompts(target, [], 4)) == 4
    variants = spelling_variants("pica stro")
    assert "pica stro" not in variants and {"picastro", "pica-stro", "pica stro's"} <= set(variants)
    assert all(len(v.replace(" ", "")) >= 7 for v in variants)
    respelt = spelling_prompts(target, 50)
    assert all("pica stro," not in p for p in respelt) and {v for v in variants if any(v in p for p in respelt)}
    # the world describes an object's look, not a style's or a flag's
    flumox = audit_target({"concepts": ["flumox"], "targets": ["thing"]}, world=True)
    shape, colour, _ = vocab.OBJECTS["flumox"]
    looks = description_prompts(flumox, 6)
    assert looks and all(shape in p and colour in p and "flumox" not in p for p in looks)
    assert description_prompts(target, 6) == [] and "style" in (description_gap(target) or "")


def test_config_refuses_bad_budgets_and_attacks_and_spreads_the_finetune_steps():
    assert AuditConfig().finetune_steps == (10, 50, 200)
    assert AuditConfig(budget=3).finetune_steps == (1, 3)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match="budget"):
            AuditConfig(budget=bad)
    for knob, bad in (("learned_steps", 0), ("learned_tokens", -1), ("learned_batch", True), ("learned_lr", 0.0),
                      ("learned_lr", float("nan")), ("learned_objective", "clip")):  # fmt: skip
        with pytest.raises(ConfigError, match=knob):
            AuditConfig(**{knob: bad})
    with pytest.raises(ConfigError, match="revive"):
        AuditConfig(attacks=("revive",))
    with pytest.raises(ConfigError, match="fractions"):
        AuditConfig(revert_fractions=(0.0,))


def test_the_cli_offers_exactly_the_libraries_attacks():
    from diffloc.audit.config import OBJECTIVES
    from diffloc.cli.audit import _ATTACK_NAMES, _OBJECTIVES

    assert _ATTACK_NAMES == ATTACKS and _OBJECTIVES == OBJECTIVES


def test_revert_moves_the_edited_tensors_back_by_the_fraction():
    edit = Edit.load(LEGACY_EDIT)
    for key, new in edit.weights.items():
        base = edit.originals[key]
        assert torch.equal(reverted(edit, 1.0).weights[key], base)
        assert torch.equal(reverted(edit, 0.0).weights[key], new)
        half = reverted(edit, 0.5).weights[key].double()
        torch.testing.assert_close(half, (new.double() + base.double()) / 2)
    with pytest.raises(ConfigError, match="fraction"):
        reverted(edit, 1.5)
    # a parameter the edit adds (a bias the layer did not have) goes back towards zero, what its absence computes
    added = Edit(method="neurons", family="sd1", weights={"unet.x.bias": torch.full((3,), 2.0)},
                 originals={"unet.x.bias": None})  # fmt: skip
    assert torch.equal(reverted(added, 0.25).weights["unet.x.bias"], torch.full((3,), 1.5))


def test_finetune_data_never_shows_the_erased_concept():
    from diffloc.eval.scorers import DetectorScorer

    detectors = DetectorScorer()
    for concept, target in (("flumox", "thing"), ("pica stro", "a plain style"), ("trelania", "a blank flag")):
        erased = audit_target({"concepts": [concept], "targets": [target]}, world=True)
        captions, images = clean_examples(erased, 64, seed=3)
        assert len(captions) == 64 and images.shape[0] == 64 and images.min() >= -1 and images.max() <= 1
        assert not any(concept in c for c in captions)
        assert float(detectors.score((images + 1) / 2, [erased.attribute] * 64).max()) < 0.5
