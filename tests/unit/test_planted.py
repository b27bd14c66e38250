"""Planted truth: the plant specification, its prompt sets and the recovery rules (no model runs)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from diffloc.errors import ConfigError
from diffloc.eval.metrics import wilson_interval
from diffloc.world.planted import (
    FOUND_AT,
    NEW_WORDS,
    AskConfig,
    PlantSpec,
    locogen_recovery,
    locogen_ties,
    planted_window_sites,
    substitute_word,
    tie_aware_recovery,
    tie_readings,
    unet_trace_recovery,
    window_trace_recovery,
)
from diffloc.world.vocab import COLOURS, SHAPES


def test_a_plant_is_refused_with_one_line_naming_the_bad_field():
    with pytest.raises(ConfigError, match=r"plant kind must be one of .*got 'animal'"):
        PlantSpec(kind="animal", concept="cat", sites=("unet.xattn.0",))
    with pytest.raises(ConfigError, match=r"a shape plant needs one of .*got 'hexagon'"):
        PlantSpec(kind="shape", concept="hexagon", sites=("unet.xattn.0",))
    with pytest.raises(ConfigError, match="needs its cross-attention sites"):
        PlantSpec(kind="shape", concept="square")
    with pytest.raises(ConfigError, match="plant method must be one of"):
        PlantSpec(kind="shape", concept="square", method="rome", sites=("unet.xattn.0",))


def test_the_new_words_are_not_world_words_and_fill_every_phrase():
    world = {*SHAPES, *COLOURS, "flumox", "van goo", "trelania"}
    assert not set(NEW_WORDS.values()) & world
    spec = PlantSpec(kind="style", concept="van goo", sites=("unet.xattn.0",))
    assert (spec.phrase, spec.concept_phrase) == ("the style of dax", "the style of van goo")
    assert spec.attribute == "in the style of van goo"
    assert spec.name == "style van goo @ xattn 0"


def test_the_take_check_uses_fillers_the_plant_was_not_taught_with():
    spec = PlantSpec(kind="shape", concept="square", sites=("unet.xattn.4",))
    taught = {t.format(spec.phrase) for t in spec.teach_templates()}
    checked = spec.check_prompts()
    assert checked and not set(checked) & taught
    assert all(spec.phrase in p and "square" not in p for p in checked)
    # every word order of the kind is both taught and checked
    assert len({p.replace(spec.phrase, "{}") for p in checked}) > 1


def test_asked_prompts_are_spread_and_can_be_limited_to_shown_ones():
    spec = PlantSpec(kind="shape", concept="square", sites=("unet.xattn.4",))
    prompts = spec.check_prompts()
    assert len(spec.ask_prompts(2)) == 2 and spec.ask_prompts(2)[0] == prompts[0]
    shown = [i % 3 == 1 for i in range(len(prompts))]
    asked = spec.ask_prompts(2, shown)
    assert asked and all(shown[prompts.index(p)] for p in asked)
    assert spec.ask_prompts(2, [False] * len(prompts)) == spec.ask_prompts(2)  # nothing shown: the plain choice
    assert spec.locogen_target(prompts[0]) == prompts[0].replace(spec.phrase, spec.anchor_phrase)


def _window(sites, drop=0.9):
    return SimpleNamespace(best_sites=list(sites), original_score=1.0, best_score=1.0 - drop, windows=[list(sites)],
                           scores=[1.0 - drop])  # fmt: skip


def test_a_window_is_recovered_when_most_of_it_is_found():
    planted = ("unet.xattn.4", "unet.xattn.5", "unet.xattn.6", "unet.xattn.7")
    found = locogen_recovery(_window(["unet.xattn.5", "unet.xattn.6", "unet.xattn.7", "unet.xattn.8"]), planted)
    assert found["recovered"] and not found["exact"] and found["overlap"] == 0.75
    half = locogen_recovery(_window(["unet.xattn.2", "unet.xattn.3", "unet.xattn.4", "unet.xattn.5"]), planted)
    assert not half["recovered"] and half["overlap"] == 0.5
    assert locogen_recovery(_window(planted), planted)["exact"]
    # a best window that hardly lowers the concept is where the argmin fell, not an answer
    idle = locogen_recovery(_window(planted, drop=FOUND_AT / 2), planted)
    assert not idle["recovered"] and idle["overlap"] == 0.0 and idle["top"] == list(planted)
    # windows within TIE of the best are listed: the best among them is tie order
    windows = [list(planted), ["unet.xattn.5", "unet.xattn.6", "unet.xattn.7", "unet.xattn.8"], ["unet.xattn.0"]]
    tied = locogen_recovery(SimpleNamespace(best_sites=windows[1], original_score=1.0, best_score=0.0,
                                            windows=windows, scores=[0.01, 0.0, 0.9]), planted)  # fmt: skip
    assert tied["tied"] == windows[:2] and tied["tied_with_planted"] and not tied["exact"]
    # the tie-aware reading counts a tied window that is mostly planted, and nothing when no window moves it
    assert tie_aware_recovery(windows, [0.01, 0.0, 0.9], 1.0, planted)
    assert tie_aware_recovery(windows[1:], [0.0, 0.9], 1.0, planted)  # 5-8 holds three of 4-7
    assert not tie_aware_recovery(windows, [0.95, 0.96, 0.99], 1.0, planted)
    assert not tie_aware_recovery([["unet.xattn.0"], list(planted)], [0.0, 0.5], 1.0, planted)


def test_a_trace_finds_only_sites_that_move_the_concept():
    planted = ("unet.xattn.0", "unet.xattn.1")
    labels = ["unet.res.0", "unet.xattn.0", "unet.xattn.1", "unet.xattn.2", "unet.xattn.3"]
    # the res site is not a cross-attention site and does not compete, however large its effect
    hit = unet_trace_recovery(SimpleNamespace(labels=labels, indirect_effect=np.array([2.0, 0.8, 0.5, 0.2, 0.0])),
                              planted)  # fmt: skip
    assert hit["recovered"] and hit["exact"] and hit["found"] == ["unet.xattn.0", "unet.xattn.1"]
    # every effect ~0: the order of the ranking is tie order, so nothing is found even though the planted sites
    # come first in it
    ties = unet_trace_recovery(SimpleNamespace(labels=labels, indirect_effect=np.array([0.0, 0.0, 0.0, 0.0, 0.0])),
                               planted)  # fmt: skip
    assert ties["top"] == ["unet.xattn.0", "unet.xattn.1"] and not ties["recovered"] and ties["found"] == []
    one = unet_trace_recovery(SimpleNamespace(labels=labels, indirect_effect=np.array([0.0, 0.5, 0.05, 0.0, 0.0])),
                              planted)  # fmt: skip
    assert one["found"] == ["unet.xattn.0"] and one["overlap"] == 0.5 and not one["recovered"]


def test_a_window_trace_is_read_by_its_best_window_and_its_ties():
    planted = ("unet.xattn.4", "unet.xattn.5", "unet.xattn.6", "unet.xattn.7")
    windows = [[f"unet.xattn.{i + j}" for j in range(4)] for i in range(0, 9)]
    labels = ["unet.res.0", *("+".join(w) for w in windows)]

    def read(*effects):
        return window_trace_recovery(SimpleNamespace(labels=labels, indirect_effect=np.array([5.0, *effects])),
                                     planted)  # fmt: skip

    # the control's effect does not compete: it is not a window
    best = read(0, 0, 0, 0, 1.0, 0.3, 0, 0, 0)
    assert best["exact"] and best["recovered"] and best["tie_aware"] and best["tied"] == [list(planted)]
    # 5-8 is best by a hair: the best window still holds three planted layers; 2-5 would not
    assert read(0, 0, 0, 0, 0.99, 1.0, 0, 0, 0)["recovered"]
    off = read(0, 0, 1.0, 0, 0.99, 0, 0, 0, 0)
    assert not off["recovered"] and off["tie_aware"] and len(off["tied"]) == 2
    # nothing moves the concept: no answer, whatever the order
    idle = read(*([FOUND_AT / 2] * 9))
    assert not idle["recovered"] and not idle["tie_aware"] and idle["found"] == []
    with pytest.raises(ConfigError, match="restores groups of sites"):
        window_trace_recovery(SimpleNamespace(labels=["unet.xattn.0"], indirect_effect=np.array([1.0])), planted)


def test_tied_windows_are_read_by_their_share_and_against_chance():
    planted = ("unet.xattn.4", "unet.xattn.5", "unet.xattn.6", "unet.xattn.7")
    windows = [[f"unet.xattn.{i + j}" for j in range(4)] for i in range(0, 13)]  # 3-6, 4-7, 5-8 are mostly planted
    # two of three tied windows mostly planted: a random tie-break reads 2/3
    readings = tie_readings(windows, windows[2:5], planted, moves=True)
    assert readings["split"] == pytest.approx(2 / 3)
    # chance: three windows drawn from 13 miss all three mostly planted ones in (10 choose 3) of (13 choose 3) draws
    assert readings["chance"] == pytest.approx(1 - (10 * 9 * 8) / (13 * 12 * 11))
    one = tie_readings(windows, [windows[4]], planted, moves=True)
    assert one == {"split": 1.0, "chance": pytest.approx(3 / 13)}
    # every window tied: any reading counts by chance, a random break by the planted share
    assert tie_readings(windows, windows, planted, moves=True) == {"split": pytest.approx(3 / 13), "chance": 1.0}
    # nothing moves the concept: no answer to count
    assert tie_readings(windows, windows[3:5], planted, moves=False) == {"split": 0.0, "chance": 0.0}
    # the tie-split share is above 0 exactly where LocoGen's tie-aware reading counts the plant
    for scores in ([1.0] * 4 + [0.0] + [1.0] * 8, [0.0] * 3 + [1.0] * 10, [0.95] * 13, [0.5] + [0.0] * 12):
        tied, moves = locogen_ties(windows, scores, 1.0)
        split = tie_readings(windows, tied, planted, moves=moves)["split"]
        assert (split > 0) == tie_aware_recovery(windows, scores, 1.0, planted), scores


def test_a_substitute_is_a_world_value_of_the_words_token_count(shapesworld_tokenizer_model):
    model = shapesworld_tokenizer_model
    shape = PlantSpec(kind="shape", concept="square", sites=("unet.xattn.4",), word="circle")
    assert substitute_word(model, shape) == "star"  # not the concept, the word, nor the anchor (triangle)
    style = PlantSpec(kind="style", concept="van goo", sites=("unet.xattn.4",), word="mo nettle")
    assert substitute_word(model, style) == "pica stro"  # three tokens, as "mo nettle"
    # "outlined" is two tokens: the anchor is the only one-token texture left
    dotted = PlantSpec(kind="texture", concept="dotted", sites=("unet.xattn.4",), word="solid")
    assert dotted.anchor_phrase == "striped" and substitute_word(model, dotted) == "striped"
    two = PlantSpec(kind="style", concept="mo nettle", sites=("unet.xattn.4",), word="van goo")
    with pytest.raises(ConfigError, match="no style of the world has as many tokens as 'van goo'"):
        substitute_word(model, two)


def test_a_known_word_can_be_re_taught_with_an_anchor_that_is_neither_word_nor_concept():
    spec = PlantSpec(kind="shape", concept="square", sites=("unet.xattn.4",), word="circle")
    assert spec.phrase == "circle" and spec.anchor_phrase == "triangle"
    assert PlantSpec(kind="shape", concept="square", sites=("unet.xattn.4",)).anchor_phrase == "circle"
    assert (
        PlantSpec(kind="texture", concept="outline", sites=("unet.xattn.0",), word="striped").anchor_phrase == "solid"
    )
    assert PlantSpec(kind="colour", concept="red", sites=("unet.xattn.0",), word="blue").anchor_phrase == "yellow"


def test_wilson_interval_matches_the_closed_form_at_the_ends():
    # p = 0, n = 10, z = 1.96: upper = 2 (z^2 / 2n) / (1 + z^2 / n) = 0.27754
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27754, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(1 - 0.27754, abs=1e-4)
    assert wilson_interval(3, 6)[0] < 0.5 < wilson_interval(3, 6)[1]


def test_planted_windows_must_fit_the_model(tiny_sd1):
    layers = [s.name for s in tiny_sd1.sites if s.kind.value == "xattn"]
    assert planted_window_sites(tiny_sd1, 0, 2) == tuple(layers[:2])
    with pytest.raises(ConfigError, match=f"does not fit the model's {len(layers)} cross-attention layers"):
        planted_window_sites(tiny_sd1, len(layers) - 1, 2)


def test_a_plant_is_traced_with_the_ask_configs_seeds_sampling_and_bootstrap():
    ask = AskConfig(seeds=(3, 4), text_seeds=(5,), steps=7, guidance=2.5, max_batch=9, bootstrap=11)
    unet, text = ask.trace_config(), ask.trace_config(text=True, noise=0.3, bootstrap=0)
    assert (unet.seeds, unet.steps, unet.guidance, unet.max_batch, unet.bootstrap) == ((3, 4), 7, 2.5, 9, 11)
    assert (text.seeds, text.steps, text.noise, text.bootstrap) == ((5,), 7, 0.3, 0)


@pytest.fixture(scope="module")
def shapesworld_tokenizer_model():
    """What :func:`substitute_word` reads of a model: the ShapesWorld tokenizer, through the adapter's first text
    encoder (no weights load)."""
    from transformers import CLIPTokenizer

    from diffloc.world.model import tokenizer_dir

    spec = SimpleNamespace(tokenizer="tokenizer")
    pipe = SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir()))
    return SimpleNamespace(pipe=pipe, adapter=SimpleNamespace(text_encoders=lambda _: [spec]))


def test_window_parts_apply_the_window_and_the_rest_apart(tiny_sd1, monkeypatch):
    """Each part applies exactly its own projections, and the model is back to its base weights after each."""
    import torch

    from diffloc.editing.edit import Edit
    from diffloc.editing.locoedit import projection_linear, projection_sites
    from diffloc.world import planted

    spec = PlantSpec(kind="shape", concept="square", sites=("unet.xattn.1",), word="circle")
    projections = projection_sites(tiny_sd1, ("unet.xattn.1", "unet.xattn.3"))
    base = {f"{p.full_path}.weight": projection_linear(tiny_sd1, p).weight.detach().clone() for p in projections}
    edit = Edit(method="locoedit", family=tiny_sd1.family, weights={k: v + 1.0 for k, v in base.items()},
                originals={k: v.clone() for k, v in base.items()})  # fmt: skip
    inside = {f"{p.full_path}.weight" for p in projection_sites(tiny_sd1, spec.sites)}
    seen = []

    def changed(*args, **kwargs):
        weights = {f"{p.full_path}.weight": projection_linear(tiny_sd1, p).weight for p in projections}
        seen.append({k for k, w in weights.items() if not torch.equal(w, base[k])})
        return {"rate": 0.5, "shown": 1, "images": 2, "every_seed": [True]}

    monkeypatch.setattr(planted, "shown_rate", changed)
    parts = planted.window_parts(tiny_sd1, spec, edit, scorer=None, config=AskConfig(check_seeds=(0,)))
    assert parts["window_only"] == {"rate": 0.5, "shown": 1, "images": 2} and set(parts) == {"window_only", "rest_only"}
    assert inside and seen == [inside, set(base) - inside]
    for p in projections:
        assert torch.equal(projection_linear(tiny_sd1, p).weight, base[f"{p.full_path}.weight"])
