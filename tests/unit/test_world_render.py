"""ShapesWorld renders and captions: deterministic, consistent with their labels, strict on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from diffloc.errors import ConfigError, DifflocError, PromptError
from diffloc.world import captions, vocab
from diffloc.world.render import SIZE, Scene, render, render_batch, shape_mask


def test_world_is_large_enough():
    assert len(vocab.SHAPES) >= 6 and len(vocab.COLOURS) >= 6
    assert len(vocab.TEXTURES) >= 4 and len(vocab.BACKGROUNDS) >= 3
    assert len(vocab.STYLES) >= 4 and len(vocab.OBJECTS) >= 4 and len(vocab.FACTS) >= 4


def test_render_is_deterministic_per_seed():
    scene = Scene(shape="star", colour="purple", texture="dotted", background="grey")
    a, b = render(scene, seed=7), render(scene, seed=7)
    assert a.dtype == np.uint8 and a.shape == (SIZE, SIZE, 3)
    assert np.array_equal(a, b)
    # the seed drives a jitter, so some other seed gives other pixels
    assert any(not np.array_equal(a, render(scene, seed=s)) for s in range(8, 20))


def test_training_examples_are_deterministic():
    first = captions.training_examples(200, seed=3)
    second = captions.training_examples(200, seed=3)
    assert first == second
    assert np.array_equal(
        render_batch([e.scene for e in first], [e.seed for e in first]),
        render_batch([e.scene for e in second], [e.seed for e in second]),
    )
    assert first != captions.training_examples(200, seed=4)


def test_mix_sets_the_share_of_caption_kinds():
    examples = captions.training_examples(2000, seed=0, mix=(0.0, 0.5, 0.0, 0.5))
    assert not any(e.scene.kind == "object" for e in examples)
    # style anchors ("in a plain style") are plain scenes drawn from the style share: 20% of it
    plain = [e for e in examples if e.scene.kind == "plain"]
    assert all(vocab.STYLE_ANCHOR in e.caption for e in plain) and 0.07 < len(plain) / len(examples) < 0.13
    share = sum(e.scene.kind == "fact" for e in examples) / len(examples)
    assert 0.45 < share < 0.55
    assert captions.training_examples(50, seed=0) == captions.training_examples(50, seed=0, mix=captions.DEFAULT_MIX)


@pytest.mark.parametrize("colour", list(vocab.COLOURS))
def test_solid_render_pixels_match_labels(colour):
    scene = Scene(shape="square", colour=colour, texture="solid", background="black")
    img = render(scene, seed=0)
    assert tuple(img[SIZE // 2, SIZE // 2]) == vocab.COLOURS[colour]
    assert tuple(img[0, 0]) == vocab.BACKGROUNDS["black"]


def test_textures_paint_different_fractions_of_the_shape():
    painted = {}
    for texture in vocab.TEXTURES:
        img = render(Scene(shape="circle", colour="red", texture=texture, background="white"), seed=0)
        painted[texture] = int((img == np.array(vocab.COLOURS["red"], dtype=np.uint8)).all(-1).sum())
    assert painted["solid"] > painted["striped"] > 0
    assert painted["solid"] > painted["dotted"] > 0
    assert painted["solid"] > painted["outline"] > 0
    assert len(set(painted.values())) == 4


def test_fill_phase_shifts_the_pattern_and_nothing_else():
    scene = Scene(kind="style", shape="square", colour="red", style="checkered")
    base, shifted = render(scene, seed=3), render(scene, seed=3, phase=(0, 4))
    red = np.array(vocab.COLOURS["red"], dtype=np.uint8)
    on_base, on_shifted = (base == red).all(-1), (shifted == red).all(-1)
    # one cell over is the complementary checkerboard: inside the shape the painted cells swap
    inside = on_base | on_shifted
    assert not (on_base & on_shifted).any() and inside.sum() > 100
    assert np.array_equal(render(scene, seed=3, phase=(8, 8)), base)  # the checkerboard repeats every 8 px
    assert np.array_equal(
        render(Scene(shape="circle", colour="blue"), 0, phase=(3, 5)), render(Scene(shape="circle", colour="blue"), 0)
    )  # solid fills have no phase
    with pytest.raises(ConfigError, match="pass one phase per scene"):
        render_batch([scene], [0], [(0, 0), (1, 1)])


def test_shapes_have_distinct_masks():
    masks = [shape_mask(s, 16, 16, 11) for s in vocab.SHAPES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).sum() > 20, (vocab.SHAPES[i], vocab.SHAPES[j])


def test_styles_and_facts_render_their_own_look():
    plain = render(Scene(shape="circle", colour="blue"), seed=0)
    for artist, look in vocab.STYLES.items():
        styled = render(Scene(kind="style", shape="circle", colour="blue", style=look), seed=0)
        assert not np.array_equal(plain, styled), artist
    flags = [render(Scene(kind="fact", fact=c), seed=0) for c in [*vocab.FACTS, vocab.FACT_ANCHOR]]
    assert len({f.tobytes() for f in flags}) == len(flags)
    # facts are fixed images: the seed does not matter
    assert np.array_equal(render(Scene(kind="fact", fact="zorbia"), 1), render(Scene(kind="fact", fact="zorbia"), 2))


def test_labels_mark_what_a_style_overrides():
    labels = Scene(kind="style", shape="star", colour="red", style="checkered").labels()
    assert labels["texture"] is None and labels["style"] == "checkered" and labels["shape"] == "star"
    labels = Scene(kind="style", shape="star", colour="red", style="pastel").labels()
    assert labels["background"] is None and labels["texture"] == "solid"
    assert Scene(kind="fact", fact="quelland").labels()["shape"] is None


@pytest.mark.parametrize(
    ("field", "value"), [("shape", "hexagon"), ("colour", "magenta"), ("texture", "wavy"), ("background", "red")]
)
def test_unknown_attribute_value_is_a_one_line_error(field, value):
    with pytest.raises(ConfigError) as info:
        Scene(**{field: value})
    message = str(info.value)
    assert "\n" not in message and value in message and "valid:" in message
    assert isinstance(info.value, DifflocError)


def test_heldout_combinations_and_templates_never_train():
    held = captions.heldout_plain()
    assert len(held) >= 30
    examples = captions.training_examples(4000, seed=0)
    seen = {(e.scene.shape, e.scene.colour, e.scene.texture, e.scene.background) for e in examples
            if e.scene.kind == "plain"}  # fmt: skip
    assert not (seen & held)
    train_captions = {e.caption for e in examples}
    heldout = captions.heldout_prompts()
    assert {p.group.split(":")[0] for p in heldout} == {"plain", "style", "object", "fact"}
    assert not (train_captions & {p.prompt for p in heldout})


def test_extra_templates_add_word_orders_but_never_a_heldout_one():
    heldout_templates = {*vocab.STYLE_TEMPLATES_HELDOUT, *vocab.OBJECT_TEMPLATES_HELDOUT}
    for name, (style, objects) in vocab.EXTRA_TEMPLATES.items():
        assert not heldout_templates & {*style, *objects}, name
        assert not {*style, *objects} & {*vocab.STYLE_TEMPLATES_TRAIN, *vocab.OBJECT_TEMPLATES_TRAIN}, name
    # "none" is the shipped draw exactly; a named set draws its templates, never a held-out prompt
    assert captions.training_examples(300, seed=5, extra="none") == captions.training_examples(300, seed=5)
    extra = captions.training_examples(3000, seed=5, mix=(0.0, 0.6, 0.4, 0.0), extra="artist-first-3+bg-first-2")
    texts = {e.caption for e in extra}
    assert any(c.startswith("art by ") for c in texts)
    assert any(c.startswith("the black background behind") for c in texts)
    assert not texts & {p.prompt for p in captions.heldout_prompts()}
    assert any(p.prompt.startswith("art by ") for p in captions.validation_prompts(300, extra="artist-first-2"))
    assert not any(p.prompt.startswith("art by ") for p in captions.validation_prompts(300))
    with pytest.raises(ConfigError, match="unknown extra templates 'more'; valid: none, artist-first-2"):
        captions.training_examples(10, seed=0, extra="more")
    from diffloc.world.evaluate import EvalConfig

    with pytest.raises(ConfigError, match="validation split only"):
        EvalConfig(extra_templates="artist-first-2")


def test_validation_prompts_come_from_training_and_are_labelled():
    prompts = captions.validation_prompts(200)
    assert len(prompts) == 200 and prompts == captions.validation_prompts(200)
    heldout = {p.prompt for p in captions.heldout_prompts()}
    assert not heldout & {p.prompt for p in prompts}
    groups = {p.group for p in prompts}
    assert "plain" in groups and {g.split(":")[0] for g in groups} == {"plain", "style", "object", "fact"}
    for p in prompts:
        asked = captions.parse_caption(p.prompt)  # what the words ask for must agree with the labels
        assert all(p.labels[k] == v for k, v in asked.items() if k in p.labels), p
        assert vocab.STYLE_ANCHOR not in p.prompt and vocab.FACT_ANCHOR not in p.prompt


def test_eval_config_names_a_bad_split():
    from diffloc.world.evaluate import EvalConfig

    assert EvalConfig().split == "heldout"
    with pytest.raises(ConfigError, match="unknown split 'test'; valid: heldout, validation"):
        EvalConfig(split="test")


def test_parse_caption_matches_scene_labels():
    for example in captions.training_examples(500, seed=1):
        truth = example.scene.labels()
        for attribute, value in captions.parse_caption(example.caption).items():
            assert truth[attribute] == value, example.caption


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_caption_is_an_error(text):
    with pytest.raises(PromptError, match="empty caption"):
        captions.parse_caption(text)


def test_caption_naming_nothing_is_an_error():
    with pytest.raises(PromptError, match="names no ShapesWorld"):
        captions.parse_caption("a photo of a cat")


def test_articles_are_fixed():
    assert captions.fill("a {colour} {shape}", colour="orange", shape="star") == "an orange star"
    with pytest.raises(PromptError):
        captions.fill("{x}", x="")
