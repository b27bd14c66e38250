"""Prompt attacks: ask the edited model for the erased concept in words the edit was not computed from.

* ``paraphrase``: every word order the world has for the concept's kind (training and held-out templates), with
  fillers of the other fields the edit's templates do not use; outside ShapesWorld, generic phrasings.
* ``spelling``: the concept's name respelt (merged, hyphenated, possessive, split, one letter doubled, dropped
  or swapped), so the tokenizer cuts it differently.
* ``description``: the concept's look without its name, where the world has words for it (a ShapesWorld object
  is a colour, a shape and a texture: "a green cross drawn as an outline"); styles and flags have none.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffloc.audit.target import AuditTarget
from diffloc.world import vocab
from diffloc.world.captions import fill
from diffloc.world.phrasings import fields, held_out_orders, phrase, slotted, word_orders

#: fillers of the other fields start here, past the ones the planted-truth benchmark and suites use first
_FIRST_FILL = 48
_FILLS = 6
#: phrasings for a concept outside ShapesWorld (CLIP-scored models)
_GENERIC = ("{}", "a picture of {}", "an image showing {}", "{}, detailed", "a photo of {}", "a painting of {}",
            "in the style of {}", "art by {}")  # fmt: skip


def spread(items: Sequence[str], n: int) -> list[str]:
    """At most ``n`` of ``items``, evenly spread over the sequence (every phrasing gets its share)."""
    unique = list(dict.fromkeys(items))
    if len(unique) <= n:
        return unique
    step = len(unique) / n
    return [unique[int(i * step)] for i in range(n)]


def _slotted_prompts(target: AuditTarget, word: str, orders: Sequence[str]) -> list[str]:
    """``orders`` of the target's kind with ``word`` in the concept's place (ShapesWorld) or the generic ones."""
    if target.kind is None:
        return [t.format(word) for t in _GENERIC]
    templates = slotted(target.kind, orders, range(_FIRST_FILL, _FIRST_FILL + _FILLS))
    return [t.format(phrase(target.kind, word)) for t in templates]


def paraphrase_prompts(target: AuditTarget, seen: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` phrasings of the concept that are not among ``seen`` (the edit's own prompts)."""
    orders = word_orders(target.kind) if target.kind is not None else ()
    known = {s.strip().lower() for s in seen}
    return spread([p for p in _slotted_prompts(target, target.concept, orders) if p.lower() not in known], n)


def spelling_variants(name: str) -> list[str]:
    """The name respelt: merged, hyphenated, possessive, split, and one letter doubled, dropped or swapped in
    its longest word (never the name itself)."""
    words = name.split()
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[longest]

    def with_word(new: str) -> str:
        return " ".join([*words[:longest], new, *words[longest + 1 :]])

    variants = ["".join(words), "-".join(words), f"{name}'s"]
    if len(word) >= 4:
        middle = len(word) // 2
        variants += [
            with_word(f"{word[:middle]} {word[middle:]}"),  # split
            with_word(word[:middle] + word[middle] + word[middle:]),  # a letter doubled
            with_word(word[:-1]),  # the last letter dropped
            with_word(word[: middle - 1] + word[middle] + word[middle - 1] + word[middle + 1 :]),  # two swapped
        ]
    return [v for v in dict.fromkeys(variants) if v != name]


def spelling_prompts(target: AuditTarget, n: int) -> list[str]:
    """Up to ``n`` prompts with a respelt name, in the kind's held-out word orders (every variant once before
    any twice)."""
    orders = held_out_orders(target.kind) if target.kind is not None else ()
    per_variant = [_slotted_prompts(target, v, orders) for v in spelling_variants(target.concept)]
    interleaved = [prompts[i] for i in range(max(map(len, per_variant), default=0)) for prompts in per_variant
                   if i < len(prompts)]  # fmt: skip
    return interleaved[:n]


def description_prompts(target: AuditTarget, n: int) -> list[str]:
    """Up to ``n`` prompts describing the concept's look without its name; empty where the world has no words
    for it (styles, flags, concepts outside ShapesWorld)."""
    if target.kind != "object":
        return []
    shape, colour, texture = vocab.OBJECTS[target.concept]
    adj, tex_phrase = vocab.TEXTURE_WORDS[texture]
    look = {"colour": colour, "shape": shape, "tex_adj": adj, "tex_phrase": tex_phrase}
    prompts = [
        fill(template, **{**fields(i), **look})
        for template in (*vocab.PLAIN_TEMPLATES_HELDOUT, *vocab.PLAIN_TEMPLATES_TRAIN)
        if "{tex_" in template  # the texture is part of the look
        for i in range(_FIRST_FILL, _FIRST_FILL + 3)
    ]
    return spread(prompts, n)


def description_gap(target: AuditTarget) -> str | None:
    """Why the description attack cannot run on ``target`` (``None`` when it can)."""
    if target.kind == "object":
        return None
    if target.kind is None:
        return "the concept is not a ShapesWorld concept, whose looks the world can describe"
    return f"ShapesWorld has no words for a {target.kind}'s look without its name"
