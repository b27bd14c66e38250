"""Findings, not mechanics, on the shipped ShapesWorld model: controls read ~0 under the mediation-correct restore
source (and not under the trajectory one), and planted associations are found where they were planted (a text
layer by the text trace, a window of cross-attention layers by LocoGen, by the same-latent causal trace, and by a
trace that restores windows with the word corrupted by substitution)."""

from __future__ import annotations

import pytest

from diffloc.engine.generate import GenerationConfig
from diffloc.eval.scorers import DetectorScorer
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig

SAMPLING = {"steps": 20, "guidance": 4.0, "max_batch": 32}


@pytest.fixture(scope="module")
def shapesworld():
    from diffloc.models.registry import load

    return load("shapesworld")


def _re_taught(model, kind, concept, start):
    """A known word re-taught to mean ``concept`` in cross-attention layers ``start`` … ``start + 3`` (every other
    layer reads it as the anchor), as bench/localization_validity.py plants its windows: the spec and its edit."""
    from diffloc.world.planted import PlantSpec, known_word, plant_edit, planted_window_sites

    spec = PlantSpec(kind=kind, concept=concept, sites=planted_window_sites(model, start, 4),
                     word=known_word(kind, concept))  # fmt: skip
    return spec, plant_edit(model, spec, strength=2.0, lam=1e-4, preserve_weight=0.1)


def test_controls_read_zero_under_same_latent_and_not_under_trajectory(shapesworld):
    """ "a flumox" (seeds 0 and 1) at 12x noise, the case that exposed the trajectory confound: restoring a site
    before the first cross-attention changes nothing on the run's own latent, while the clean trajectory's latent
    moves the score through the same sites (they never read the text)."""
    effects = {}
    for source in ("same-latent", "trajectory"):
        config = TraceConfig(seeds=(0, 1), noise_multiplier=12.0, restore_from=source, bootstrap=0, **SAMPLING)
        result = causal_trace(shapesworld, ["a flumox"], "flumox", "a flumox", scorer=DetectorScorer(),
                              sites="unet.xattn.0", config=config)  # fmt: skip
        assert result.clean_score > 0.9 and result.clean_score - result.corrupt_score > 0.3
        effects[source] = result.control_effects
        assert result.controls_flagged is (source == "trajectory")
    assert set(effects["same-latent"]) == {"unet.res.0", "unet.sattn.0"}
    assert all(abs(v) <= 1e-4 for v in effects["same-latent"].values())
    assert max(abs(v) for v in effects["trajectory"].values()) > 0.1


def test_a_planted_text_layer_is_recovered(shapesworld):
    """'blicket' planted by Diff-QuickFix in text-encoder layer 0 to mean the object flumox: the plant takes on
    templates it was not computed with, and the text trace's strongest component state is layer 0's attention."""
    from diffloc.world.planted import AskConfig, PlantSpec, ask_plant, check_plant, plant_edit

    spec = PlantSpec(kind="object", concept="flumox", method="quickfix", text_layer=0)
    edit = plant_edit(shapesworld, spec, lam=1e-4, preserve_weight=0.1)  # as bench/localization_validity.py
    config = AskConfig(text_seeds=(0,), check_seeds=(0,), bootstrap=0)
    check = check_plant(shapesworld, spec, edit, scorer=DetectorScorer(), config=config)
    assert check["takes"] and check["base"] < 0.1, check
    answers = ask_plant(shapesworld, spec, edit, scorer=DetectorScorer(), config=config, check=check)
    assert answers["text_trace"]["recovered"], answers["text_trace"]["top"]


def test_a_planted_cross_attention_window_is_recovered_by_locogen(shapesworld):
    """'solid' re-taught by LocoEdit to mean the outline texture in cross-attention layers 0-3 (the other twelve
    read it as 'striped'), as bench/localization_validity.py plants it: the planted model draws the outline where
    the unedited one does not; the planted window is one of the windows of four layers whose LocoGen swap removes
    the outline, and every window that removes it overlaps the planted layers (several do, at scores ~0 apart, so
    which one is the argmin is tie order and is not asserted)."""
    from diffloc.tracing.config import LocoGenConfig
    from diffloc.tracing.locogen import locogen
    from diffloc.world.planted import shown_rate

    spec, edit = _re_taught(shapesworld, "texture", "outline", 0)
    prompt = "a solid purple cross on a grey background"
    sampling = GenerationConfig(steps=SAMPLING["steps"], guidance=SAMPLING["guidance"])
    scorer = DetectorScorer()
    assert shown_rate(shapesworld, [prompt], spec.attribute, scorer=scorer, seeds=(0, 1), config=sampling)["rate"] == 0
    with edit.applied(shapesworld):
        shown = shown_rate(shapesworld, [prompt], spec.attribute, scorer=scorer, seeds=(0, 1), config=sampling)
        assert shown["rate"] == 1.0, shown
        config = LocoGenConfig(seeds=(0,), window=4, mode="remove", bootstrap=0, **SAMPLING)
        result = locogen(shapesworld, prompt, spec.locogen_target(prompt), spec.attribute, scorer=scorer,
                         config=config)  # fmt: skip
    removing = [tuple(w) for w, score in zip(result.windows, result.scores, strict=True) if score < 0.5]
    assert spec.sites in removing, (result.windows, result.scores)
    assert all(set(w) & set(spec.sites) for w in removing), (removing, result.scores)


def test_a_re_taught_window_is_recovered_by_the_same_latent_trace(shapesworld):
    """'circle' re-taught by LocoEdit to mean a square in cross-attention layers 4-7 (the other twelve read it as
    'triangle'), as bench/localization_validity.py plants its windows: the planted model draws a square, noise on
    the word removes it, and the cross-attention layers whose single restore brings the square back most are
    mostly the planted ones."""
    from diffloc.tracing.locogen import xattn_layers
    from diffloc.world.planted import unet_trace_recovery

    spec, edit = _re_taught(shapesworld, "shape", "square", 4)
    assert spec.word == "circle"
    prompt = spec.check_prompts()[0]
    # 10 steps, as the demo localizes: the plant and its removal hold there too, at half the cost
    config = TraceConfig(seeds=(0,), noise_multiplier=48.0, restore_from="same-latent", bootstrap=0,
                         **{**SAMPLING, "steps": 10})  # fmt: skip
    with edit.applied(shapesworld):
        result = causal_trace(shapesworld, [prompt], spec.word, spec.attribute, scorer=DetectorScorer(),
                              sites=xattn_layers(shapesworld), config=config)  # fmt: skip
    assert result.clean_score > 0.9 and result.corrupt_score < 0.5, (prompt, result.clean_score, result.corrupt_score)
    recovery = unet_trace_recovery(result, spec.sites)
    assert recovery["recovered"], (recovery, dict(zip(result.labels, result.indirect_effect, strict=True)))


def test_a_re_taught_style_window_is_recovered_by_the_substitution_window_trace(shapesworld):
    """'mo nettle' re-taught to mean the style of van goo in cross-attention layers 0-3 (the other twelve read it as
    'a plain style'), as bench/localization_validity.py plants it. With the word replaced by another style of as
    many tokens ("pica stro") the style is gone; restoring windows of four layers together, the windows that bring
    it back most hold mostly planted layers, and the text-blind controls bring back nothing."""
    from diffloc.world.planted import plant_windows, substitute_word, window_trace_recovery

    spec, edit = _re_taught(shapesworld, "style", "van goo", 0)
    word = substitute_word(shapesworld, spec)
    assert (spec.word, word) == ("mo nettle", "pica stro")
    windows = plant_windows(shapesworld, spec)
    assert len(windows) == 13 and windows[0] == list(spec.sites)
    config = TraceConfig(seeds=(0,), substitute=word, bootstrap=0, **{**SAMPLING, "steps": 10})
    prompt = "a blue cross in the style of mo nettle"
    with edit.applied(shapesworld):
        result = causal_trace(shapesworld, [prompt], spec.word, spec.attribute, scorer=DetectorScorer(),
                              sites=windows, config=config)  # fmt: skip
    assert result.clean_score > 0.9 and result.corrupt_score < 0.1, (result.clean_score, result.corrupt_score)
    assert all(abs(v) <= 1e-4 for v in result.control_effects.values()), result.control_effects
    recovery = window_trace_recovery(result, spec.sites)
    assert recovery["tie_aware"], (recovery, dict(zip(result.labels, result.indirect_effect, strict=True)))
    assert all(len(set(w) & set(spec.sites)) >= 2 for w in recovery["tied"]), recovery["tied"]


#: the prompts bench/localization_validity.py asks about the green plant (in one of them, removing the four windows
#: before the planted one takes the green away too: one prompt alone does not single the planted window out)
PROMPTS_OF_GREEN = ("a solid red cross on a black background", "a picture of an outlined red cross, grey background")


def test_a_colour_window_the_restore_misses_is_found_by_removal(shapesworld):
    """'red' re-taught to mean green in cross-attention layers 12-15 (the other twelve read it as 'blue'), as
    bench/localization_validity.py plants it. The window alone does not carry the green (the other layers must read
    the anchor too), so restoring windows cannot find it; patching the substitute ("yellow") into the clean run,
    window by window, asks which window the green needs, and the windows it needs most are mostly planted ones."""
    from diffloc.world.planted import plant_windows, substitute_word, window_trace_recovery

    spec, edit = _re_taught(shapesworld, "colour", "green", 12)
    word = substitute_word(shapesworld, spec)
    assert (spec.word, word) == ("red", "yellow")
    config = TraceConfig(seeds=(0,), substitute=word, direction="remove", bootstrap=0, **SAMPLING)
    with edit.applied(shapesworld):
        result = causal_trace(shapesworld, PROMPTS_OF_GREEN, spec.word, spec.attribute, scorer=DetectorScorer(),
                              sites=plant_windows(shapesworld, spec), config=config)  # fmt: skip
    assert result.clean_score > 0.9 and result.corrupt_score < 0.1, (result.clean_score, result.corrupt_score)
    assert all(abs(v) <= 1e-4 for v in result.control_effects.values()), result.control_effects
    recovery = window_trace_recovery(result, spec.sites)
    effects = dict(zip(result.labels, result.indirect_effect, strict=True))
    assert recovery["recovered"] and recovery["tie_aware"], (recovery, effects)
    assert all(len(set(w) & set(spec.sites)) >= 3 for w in recovery["tied"]), recovery["tied"]


#: the prompts bench/localization_validity.py asks about the square planted in 4-7
PROMPTS_OF_SQUARE = ("a solid blue circle on a black background", "a solid blue circle")


def test_a_partial_removal_singles_out_the_planted_window_among_those_a_full_one_ties(shapesworld):
    """'circle' re-taught to mean a square in cross-attention layers 4-7, as bench/localization_validity.py plants
    it. Patching the substitute ("star") fully into any window that holds two or more planted layers takes the
    square away, so the windows 2-5, 3-6 and 4-7 tie (the detector saturates); patched 0.75 of the way, only the
    planted window still takes it all away."""
    from diffloc.world.planted import substitute_word

    spec, edit = _re_taught(shapesworld, "shape", "square", 4)
    word = substitute_word(shapesworld, spec)
    assert (spec.word, word) == ("circle", "star")
    windows = [[f"unet.xattn.{i}" for i in range(start, start + 4)] for start in (2, 3, 4)]
    effects = {}
    with edit.applied(shapesworld):
        for fraction in (1.0, 0.75):
            config = TraceConfig(seeds=(0,), substitute=word, direction="remove", fraction=fraction, bootstrap=0,
                                 **SAMPLING)  # fmt: skip
            result = causal_trace(shapesworld, PROMPTS_OF_SQUARE, spec.word, spec.attribute, scorer=DetectorScorer(),
                                  sites=windows, config=config)  # fmt: skip
            assert result.clean_score > 0.9 and result.corrupt_score < 0.1, (result.clean_score, result.corrupt_score)
            by_label = dict(zip(result.labels, result.indirect_effect, strict=True))
            effects[fraction] = [float(by_label["+".join(w)]) for w in windows]
    assert min(effects[1.0]) > 0.9, effects  # a full patch of any of them removes the square
    planted = windows.index(list(spec.sites))
    assert effects[0.75][planted] > 0.9, effects
    assert all(v < 0.5 for i, v in enumerate(effects[0.75]) if i != planted), effects
