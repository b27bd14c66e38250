"""Every way ShapesWorld's captions can phrase a concept: its templates by kind, with one slot for the concept's
phrase and the other fields filled from a fixed shuffled list.

Shared by the planted-truth benchmark (which teaches a new word in these phrasings) and the erasure audit (which
asks an edited model for an erased concept in phrasings the edit never saw).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache

import numpy as np

from diffloc.world import vocab
from diffloc.world.captions import fill

#: concept kinds a phrase can stand for
KINDS = ("object", "style", "fact", "shape", "colour", "texture")

#: per kind: the template field the phrase fills, how templates write that field, and how a phrase is written
#: around a word (``{}``): a style is "the style of {}" in "in the style of …", a fact "the flag of {}"
SLOTS: dict[str, tuple[str, str, str]] = {
    "object": ("object", "{object}", "{}"),
    "style": ("artist", "the style of {artist}", "the style of {}"),
    "fact": ("country", "the flag of {country}", "the flag of {}"),
    "shape": ("shape", "{shape}", "{}"),
    "colour": ("colour", "{colour}", "{}"),
    "texture": ("tex_adj", "{tex_adj}", "{}"),
}
_TRAIN = {
    "object": vocab.OBJECT_TEMPLATES_TRAIN, "style": vocab.STYLE_TEMPLATES_TRAIN, "fact": vocab.FACT_TEMPLATES_TRAIN,
    "shape": vocab.PLAIN_TEMPLATES_TRAIN, "colour": vocab.PLAIN_TEMPLATES_TRAIN, "texture": vocab.PLAIN_TEMPLATES_TRAIN,
}  # fmt: skip
_HELDOUT = {
    "object": vocab.OBJECT_TEMPLATES_HELDOUT, "style": vocab.STYLE_TEMPLATES_HELDOUT,
    "fact": vocab.FACT_TEMPLATES_HELDOUT, "shape": vocab.PLAIN_TEMPLATES_HELDOUT,
    "colour": vocab.PLAIN_TEMPLATES_HELDOUT, "texture": vocab.PLAIN_TEMPLATES_HELDOUT,
}  # fmt: skip


@cache
def _fillers() -> tuple[tuple[str, str, str, str], ...]:
    """Every (colour, shape, texture, background), shuffled by a fixed seed."""
    combos = list(itertools.product(vocab.COLOURS, vocab.SHAPES, vocab.TEXTURE_WORDS, vocab.BACKGROUNDS))
    order = np.random.default_rng(vocab.SPLIT_SEED).permutation(len(combos))
    return tuple(combos[i] for i in order)


def fields(i: int) -> dict[str, str]:
    """The ``i``-th filler of every field a ShapesWorld template has."""
    colour, shape, texture, background = _fillers()[i]
    adj, phrase = vocab.TEXTURE_WORDS[texture]
    return {"colour": colour, "shape": shape, "tex_adj": adj, "tex_phrase": phrase, "bg": background}


def word_orders(kind: str) -> tuple[str, ...]:
    """Every word order the world has for a kind: its training templates, then its held-out ones."""
    return (*_TRAIN[kind], *_HELDOUT[kind])


def held_out_orders(kind: str) -> tuple[str, ...]:
    """The word orders of a kind that no training caption uses."""
    return tuple(_HELDOUT[kind])


def slotted(kind: str, templates: Sequence[str], fills: range) -> tuple[str, ...]:
    """Templates with one ``{}`` slot for a phrase of ``kind``, the other fields filled by ``fills`` (articles
    fixed as in training captions, except before the slot, whose word is not known yet)."""
    field, written_as, _ = SLOTS[kind]
    out: list[str] = []
    for template in templates:
        if written_as not in template:
            continue
        template_with_slot = template.replace(written_as, "{slot}")
        for i in fills:
            out.append(fill(template_with_slot, **{**fields(i), field: "", "slot": "{}"}).replace("an {}", "a {}"))
    return tuple(dict.fromkeys(out))


def written(kind: str, concept: str) -> str:
    """A concept as a prompt writes it (a texture by its adjective: ``outline`` -> ``outlined``)."""
    return vocab.TEXTURE_WORDS[concept][0] if kind == "texture" else concept


def phrase(kind: str, word: str) -> str:
    """The phrase a word stands in for its kind (``the style of {word}``, ``the flag of {word}``, ``{word}``)."""
    return SLOTS[kind][2].format(word)


def kind_of(concept: str) -> str | None:
    """The kind of a named ShapesWorld concept (``style``, ``object``, ``fact``), or ``None``."""
    for kind, names in (("style", vocab.STYLES), ("object", vocab.OBJECTS), ("fact", vocab.FACTS)):
        if concept in names:
            return kind
    return None
