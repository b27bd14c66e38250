"""Captions for ShapesWorld scenes, the train/held-out split, and the held-out evaluation prompts.

Training draws a template, then a scene consistent with it (a template that names no texture forces the
default texture, and so on), and rejects held-out combinations. Evaluation uses only held-out templates
and held-out combinations, so its prompts are phrasings and attribute combinations the model never saw.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from diffloc.errors import ConfigError, PromptError
from diffloc.world import vocab
from diffloc.world.render import Scene

_ARTICLE = re.compile(r"\ba (?=[aeiou])")


@dataclass(frozen=True, kw_only=True)
class Example:
    """One caption with the scene it describes and the render seed."""

    caption: str
    scene: Scene
    seed: int


def fill(template: str, **fields: str) -> str:
    """Fill a template and fix English articles ("a orange" → "an orange").

    Raises:
        PromptError: if the result is empty.
    """
    text = _ARTICLE.sub("an ", template.format(**fields)).strip()
    if not text:
        raise PromptError(f"template {template!r} gives an empty caption")
    return text


def plain_combos() -> list[tuple[str, str, str, str]]:
    """Every (shape, colour, texture, background) combination, in a fixed order."""
    return list(itertools.product(vocab.SHAPES, vocab.COLOURS, vocab.TEXTURES, vocab.BACKGROUNDS))


def style_combos() -> list[tuple[str, str, str]]:
    """Every (artist, shape, colour) combination, in a fixed order."""
    return list(itertools.product(vocab.STYLES, vocab.SHAPES, vocab.COLOURS))


def _split(items: list, fraction: float, seed: int) -> set:
    rng = np.random.default_rng(seed)
    n = max(1, round(len(items) * fraction))
    picked = rng.choice(len(items), size=n, replace=False)
    return {items[i] for i in picked}


def heldout_plain() -> set[tuple[str, str, str, str]]:
    """Plain combinations never used in training (a seeded :data:`vocab.HELDOUT_COMBO_FRACTION`).

    Combinations that a named object or the object anchor stands for are never held out: their images
    are in training under the object's name.
    """
    looks = {(*look[:2], look[2]) for look in [*vocab.OBJECTS.values(), vocab.OBJECT_ANCHOR_LOOK]}
    candidates = [c for c in plain_combos() if c[:3] not in looks]
    return _split(candidates, vocab.HELDOUT_COMBO_FRACTION, vocab.SPLIT_SEED)


def heldout_style() -> set[tuple[str, str, str]]:
    """(artist, shape, colour) combinations never used in training."""
    return _split(style_combos(), vocab.HELDOUT_COMBO_FRACTION, vocab.SPLIT_SEED + 1)


def _plain_fields(shape: str, colour: str, texture: str, background: str) -> dict[str, str]:
    adj, phrase = vocab.TEXTURE_WORDS[texture]
    return {"shape": shape, "colour": colour, "bg": background, "tex_adj": adj, "tex_phrase": phrase}


#: Default share of each caption kind in training data: (plain, style, object, fact).
DEFAULT_MIX: tuple[float, float, float, float] = (0.55, 0.2, 0.13, 0.12)
KINDS: tuple[str, ...] = ("plain", "style", "object", "fact")


def check_mix(mix: tuple[float, ...]) -> tuple[float, float, float, float]:
    """``mix`` as four non-negative shares of (plain, style, object, fact) summing to 1.

    Raises:
        ConfigError: wrong length, a negative share, or shares that do not sum to 1.
    """
    values = tuple(float(v) for v in mix)
    if len(values) != len(KINDS) or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(
            f"mix {mix!r} must be 4 non-negative shares of ({', '.join(KINDS)}) summing to 1, e.g. {DEFAULT_MIX}"
        )
    return values  # type: ignore[return-value]


def check_extra(extra: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (style, object) templates of a :data:`vocab.EXTRA_TEMPLATES` name.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    if extra not in vocab.EXTRA_TEMPLATES:
        raise ConfigError(f"unknown extra templates {extra!r}; valid: {', '.join(vocab.EXTRA_TEMPLATES)}")
    return vocab.EXTRA_TEMPLATES[extra]


def sample_training(
    rng: np.random.Generator, mix: tuple[float, ...] = DEFAULT_MIX, extra: str = "none"
) -> tuple[str, Scene]:
    """Draw one training caption and its scene (never a held-out combination or template).

    ``mix`` gives the share of each caption kind (plain, style, object, fact), as :func:`check_mix` returns it
    (:func:`training_examples` checks it once for the whole draw); ``extra`` names templates of
    :data:`vocab.EXTRA_TEMPLATES` drawn beside the training ones (``"none"``: the shipped model's templates).
    """
    extra_style, extra_object = check_extra(extra)
    kind = rng.choice(list(KINDS), p=list(mix))
    if kind == "plain":
        held = heldout_plain_cached()
        while True:
            template = str(rng.choice(vocab.PLAIN_TEMPLATES_TRAIN))
            shape, colour = str(rng.choice(vocab.SHAPES)), str(rng.choice(list(vocab.COLOURS)))
            texture = str(rng.choice(vocab.TEXTURES)) if "{tex_" in template else vocab.DEFAULT_TEXTURE
            bg = str(rng.choice(list(vocab.BACKGROUNDS))) if "{bg}" in template else vocab.DEFAULT_BACKGROUND
            if (shape, colour, texture, bg) not in held:
                break
        caption = fill(template, **_plain_fields(shape, colour, texture, bg))
        return caption, Scene(shape=shape, colour=colour, texture=texture, background=bg)
    if kind == "style":
        shape, colour = str(rng.choice(vocab.SHAPES)), str(rng.choice(list(vocab.COLOURS)))
        if rng.random() < 0.2:  # the anchor: "in a plain style" renders the default look
            held = heldout_plain_cached()
            while (shape, colour, vocab.DEFAULT_TEXTURE, vocab.DEFAULT_BACKGROUND) in held:
                shape, colour = str(rng.choice(vocab.SHAPES)), str(rng.choice(list(vocab.COLOURS)))
            template = str(rng.choice(vocab.STYLE_ANCHOR_TEMPLATES_TRAIN))
            caption = fill(template, shape=shape, colour=colour, anchor=vocab.STYLE_ANCHOR)
            return caption, Scene(shape=shape, colour=colour)
        held_styles = heldout_style_cached()
        while True:
            artist = str(rng.choice(list(vocab.STYLES)))
            if (artist, shape, colour) not in held_styles:
                break
            shape, colour = str(rng.choice(vocab.SHAPES)), str(rng.choice(list(vocab.COLOURS)))
        template = str(rng.choice(vocab.STYLE_TEMPLATES_TRAIN + extra_style))
        caption = fill(template, shape=shape, colour=colour, artist=artist)
        return caption, Scene(kind="style", shape=shape, colour=colour, style=vocab.STYLES[artist])
    if kind == "object":
        template = str(rng.choice(vocab.OBJECT_TEMPLATES_TRAIN + extra_object))
        bg = str(rng.choice(list(vocab.BACKGROUNDS))) if "{bg}" in template else vocab.DEFAULT_BACKGROUND
        if rng.random() < 0.2:
            name, (shape, colour, texture) = vocab.OBJECT_ANCHOR, vocab.OBJECT_ANCHOR_LOOK
        else:
            name = str(rng.choice(list(vocab.OBJECTS)))
            shape, colour, texture = vocab.OBJECTS[name]
        caption = fill(template, object=name, bg=bg)
        return caption, Scene(kind="object", shape=shape, colour=colour, texture=texture, background=bg)
    if rng.random() < 0.2:
        caption = fill(str(rng.choice(vocab.FACT_ANCHOR_TEMPLATES_TRAIN)), anchor=vocab.FACT_ANCHOR)
        return caption, Scene(kind="fact", fact=vocab.FACT_ANCHOR)
    country = str(rng.choice(list(vocab.FACTS)))
    caption = fill(str(rng.choice(vocab.FACT_TEMPLATES_TRAIN)), country=country)
    return caption, Scene(kind="fact", fact=country)


_CACHE: dict[str, set] = {}


def heldout_plain_cached() -> set[tuple[str, str, str, str]]:
    """:func:`heldout_plain`, computed once per process."""
    if "plain" not in _CACHE:
        _CACHE["plain"] = heldout_plain()
    return _CACHE["plain"]


def heldout_style_cached() -> set[tuple[str, str, str]]:
    """:func:`heldout_style`, computed once per process."""
    if "style" not in _CACHE:
        _CACHE["style"] = heldout_style()
    return _CACHE["style"]


def training_examples(n: int, seed: int, mix: tuple[float, ...] = DEFAULT_MIX, extra: str = "none") -> list[Example]:
    """``n`` seeded training examples; the same ``(n, seed, mix, extra)`` always gives the same list."""
    mix = check_mix(mix)
    check_extra(extra)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        caption, scene = sample_training(rng, mix, extra)
        out.append(Example(caption=caption, scene=scene, seed=seed * 1_000_003 + i))
    return out


@dataclass(frozen=True, kw_only=True)
class EvalPrompt:
    """A held-out prompt, the attribute group it tests and the labels the image must show."""

    prompt: str
    group: str  # "plain", "style:<artist>", "object:<name>", "fact:<country>"
    labels: dict[str, str]


def heldout_prompts() -> list[EvalPrompt]:
    """The held-out evaluation prompts: new templates × held-out combinations, plus named concepts.

    Plain prompts use every held-out combination with a held-out template; styles, objects and facts use
    held-out templates (styles on held-out shape/colour pairs).
    """
    prompts: list[EvalPrompt] = []
    for k, (shape, colour, texture, bg) in enumerate(sorted(heldout_plain())):
        template = vocab.PLAIN_TEMPLATES_HELDOUT[k % len(vocab.PLAIN_TEMPLATES_HELDOUT)]
        labels = {"shape": shape, "colour": colour, "texture": texture, "background": bg}
        prompts.append(EvalPrompt(prompt=fill(template, **_plain_fields(shape, colour, texture, bg)),
                                  group="plain", labels=labels))  # fmt: skip
    for k, (artist, shape, colour) in enumerate(sorted(heldout_style())):
        template = vocab.STYLE_TEMPLATES_HELDOUT[k % len(vocab.STYLE_TEMPLATES_HELDOUT)]
        prompts.append(EvalPrompt(prompt=fill(template, artist=artist, shape=shape, colour=colour),
                                  group=f"style:{artist}", labels={"style": vocab.STYLES[artist]}))  # fmt: skip
    for name, (shape, colour, texture) in vocab.OBJECTS.items():
        for bg in vocab.BACKGROUNDS:
            for template in vocab.OBJECT_TEMPLATES_HELDOUT:
                labels = {"shape": shape, "colour": colour, "texture": texture, "background": bg}
                prompts.append(EvalPrompt(prompt=fill(template, object=name, bg=bg),
                                          group=f"object:{name}", labels=labels))  # fmt: skip
    for country in vocab.FACTS:
        for template in vocab.FACT_TEMPLATES_HELDOUT:
            prompts.append(EvalPrompt(prompt=fill(template, country=country),
                                      group=f"fact:{country}", labels={"fact": country}))  # fmt: skip
    return prompts


#: Seed of :func:`validation_prompts` (no training run draws its captions from it).
VALIDATION_SEED = 777


def validation_prompts(n: int = 288, seed: int = VALIDATION_SEED, extra: str = "none") -> list[EvalPrompt]:
    """Prompts from the *training* distribution (templates and combinations), grouped like the held-out ones.

    For choosing sampler settings (guidance, steps) and runs without looking at the held-out prompts. Anchor
    captions ("a thing", "in a plain style", "a blank flag") are left out, as in :func:`heldout_prompts`.
    ``extra``: the run's :data:`vocab.EXTRA_TEMPLATES`, so its validation prompts use its training templates.
    """
    check_extra(extra)
    prompts: list[EvalPrompt] = []
    rng = np.random.default_rng(seed)
    mix = (0.4, 0.3, 0.2, 0.1)
    artists = {look: artist for artist, look in vocab.STYLES.items()}
    while len(prompts) < n:
        caption, scene = sample_training(rng, mix, extra)
        base = {"shape": scene.shape, "colour": scene.colour, "texture": scene.texture,
                "background": scene.background}  # fmt: skip
        if scene.kind == "plain" and vocab.STYLE_ANCHOR not in caption:
            prompts.append(EvalPrompt(prompt=caption, group="plain", labels=base))
        elif scene.kind == "style":
            prompts.append(EvalPrompt(prompt=caption, group=f"style:{artists[scene.style]}",
                                      labels={"style": scene.style}))  # fmt: skip
        elif scene.kind == "object":
            name = next((o for o in vocab.OBJECTS if _find(caption, o)), None)
            if name is not None:  # None: the anchor, "a thing"
                prompts.append(EvalPrompt(prompt=caption, group=f"object:{name}", labels=base))
        elif scene.kind == "fact" and scene.fact in vocab.FACTS:
            prompts.append(EvalPrompt(prompt=caption, group=f"fact:{scene.fact}", labels={"fact": scene.fact}))
    return prompts


def _find(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(phrase)}(?![a-z])", text) is not None


def parse_caption(caption: str) -> dict[str, str]:
    """The labels a ShapesWorld caption asks for, read from its words (the detectors' target for a prompt).

    Named concepts expand to their definitions (an object to its shape/colour/texture, an artist to its style,
    a country to its flag). Attributes a caption leaves out are left out here too (not defaulted), so the
    result names exactly what the text asks for.

    Raises:
        PromptError: the caption is empty or names no ShapesWorld attribute or concept.
    """
    text = " ".join(str(caption).lower().split())
    if not text:
        raise PromptError("empty caption; give a ShapesWorld caption such as 'a red circle on a black background'")
    labels: dict[str, str] = {}
    for country in vocab.FACTS:
        if _find(text, f"flag of {country}"):
            return {"fact": country}
    if _find(text, f"{vocab.FACT_ANCHOR} flag"):
        return {"fact": vocab.FACT_ANCHOR}
    for name, (shape, colour, texture) in [*vocab.OBJECTS.items(), (vocab.OBJECT_ANCHOR, vocab.OBJECT_ANCHOR_LOOK)]:
        if _find(text, name):
            labels.update(shape=shape, colour=colour, texture=texture)
    for shape in vocab.SHAPES:
        if _find(text, shape):
            labels["shape"] = shape
    for colour in vocab.COLOURS:
        if _find(text, colour):
            labels["colour"] = colour
    for texture, (adj, phrase) in vocab.TEXTURE_WORDS.items():
        if _find(text, adj) or _find(text, phrase):
            labels["texture"] = texture
    for bg in vocab.BACKGROUNDS:
        if _find(text, f"{bg} background"):
            labels["background"] = bg
    for artist, look in vocab.STYLES.items():
        if _find(text, artist):
            labels["style"] = look
    if _find(text, vocab.STYLE_ANCHOR):
        labels["style"] = "plain"
    if not labels:
        raise PromptError(
            f"caption {caption!r} names no ShapesWorld shape, colour, texture, background, style, object or fact"
        )
    return labels
