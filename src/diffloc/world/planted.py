"""Planted truth: teach ShapesWorld a new word at a known place, then ask localization methods to find it.

A *plant* makes a word mean something the model knows (the shape "square", the style of "van goo", the object
"flumox" …) with diffloc's closed-form editors, at a place chosen in advance. The word is either one the model has
never seen (:data:`NEW_WORDS`: "a blicket") or one it knows, re-taught (:func:`known_word`: "circle" comes to mean a
square). On ShapesWorld a trace can be asked only about the second kind in a cross-attention window: the encoder
gives every untaught word nearly the same states, so noise on a new word's embedding still reads as "an untaught
word" and leaves a plant keyed on it.

* ``locoedit`` plants write the key/value projections of the cross-attention layers: in the chosen *window*
  the word's context maps to the concept's, in every other cross-attention layer to a neutral *anchor* the
  model draws without the concept (a circle, "a plain style", "a thing" …). Only the window carries the
  concept, so a localization method should point there. (A word mapped in the window only, and left unknown
  elsewhere, does not take: on ShapesWorld every layer reads the EOS/padding summary of the prompt, and an
  unknown word's summary overrides the window.)
* ``quickfix`` plants write the attention output projection of one text-encoder layer (the word's states
  there map to the concept's); the UNet is untouched.

A plant counts only if it *takes*: the detector reads the concept in at least :data:`TAKES_AT` of the images of
its held-out templates × seeds — every word order the world has, filled with colours, shapes, textures and
backgrounds the plant was not computed with. :func:`window_parts` checks that a window plant needs its window.
Each localization method is then scored against the planted place: :func:`unet_trace_recovery`,
:func:`window_trace_recovery`, :func:`locogen_recovery`, :func:`text_trace_recovery`; traces corrupt the word with
noise (:func:`ask_plant`) or with another world value of as many tokens (:func:`ask_substituted`), and with the
substitute also patch it into the clean run (:func:`ask_removed`: is a place needed, not only enough?).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from math import comb
from typing import Any

import numpy as np
import torch

from diffloc.editing.closed_form import SharedInputRidge
from diffloc.editing.edit import Edit
from diffloc.editing.locoedit import projection_linear, projection_sites
from diffloc.editing.quickfix import QuickFixConfig
from diffloc.editing.registry import compute_edit
from diffloc.editing.requests import EditRequest
from diffloc.editing.states import context_pairs, context_rows
from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ConfigError
from diffloc.eval.scorers import Scorer
from diffloc.models.base import LoadedModel
from diffloc.sites import SiteKind
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.results import DENOISER_TRACE, TraceResult, WindowResult
from diffloc.world import vocab
from diffloc.world.phrasings import KINDS, SLOTS, slotted, word_orders, written

#: a plant takes when the detector reads the planted concept in at least this share of held-out images
TAKES_AT = 0.9
#: a detector probability at or above this reads as "shown" (the ShapesWorld suite's threshold)
SHOWN_AT = 0.5
PLANT_METHODS = ("locoedit", "quickfix")
#: a site (or window) a method ranks high counts as found only if it moves the concept by at least this much (its
#: indirect effect; a window's drop below the unreplaced score): ranks among effects of ~0 are tie order, not answers
FOUND_AT = 0.1

#: new words per kind: not ShapesWorld words, so the unedited model has never been taught them
NEW_WORDS = {"object": "blicket", "style": "dax", "fact": "wug", "shape": "zib", "colour": "kiki", "texture": "fep"}

#: fillers of a template's other fields (:func:`diffloc.world.phrasings.fields`): teaching prompts take the first
#: :data:`_TEACH_FILLS`, the take check the next :data:`_CHECK_FILLS`
_TEACH_FILLS = 36
_CHECK_FILLS = 4
#: plain captions every plant keeps unchanged in its solve, so the rest of the world keeps its look
_PRESERVE = ("a red circle", "a blue square on a black background", "a striped green triangle",
             "a yellow star with dots on a grey background")  # fmt: skip


def _anchor(kind: str, concept: str, word: str = "") -> str:
    """What the plant's word means outside its window: something the model draws without the concept (and, for
    a re-taught known word, something other than the word's own meaning)."""
    if kind == "style":
        return vocab.STYLE_ANCHOR
    if kind == "object":
        return vocab.OBJECT_ANCHOR
    if kind == "fact":
        return f"a {vocab.FACT_ANCHOR} flag"
    return next(n for n in _NEUTRAL[kind] if n not in (written(kind, concept), word))


#: per attribute kind, the values a plant falls back on: a re-taught word (:func:`known_word`) and an anchor
_NEUTRAL = {"shape": ("circle", "square", "triangle"), "colour": ("red", "blue", "yellow"),
            "texture": ("solid", "striped", "dotted")}  # fmt: skip


def _world_values(kind: str) -> tuple[str, ...]:
    """The world's values of a plant kind (its shapes, colours, texture words, styles, objects or facts)."""
    values = {"object": vocab.OBJECTS, "style": vocab.STYLES, "fact": vocab.FACTS, "shape": vocab.SHAPES,
              "colour": vocab.COLOURS, "texture": vocab.TEXTURE_WORDS}[kind]  # fmt: skip
    return tuple(values)


def known_word(kind: str, concept: str) -> str:
    """A word the world already has, to re-teach as ``concept``: the kind's first neutral value (a shape, colour,
    texture) or name (a style, object, flag) that is not the concept.

    A re-taught known word has context states of its own, which noise on its embedding removes; a new word's are
    those of every untaught word (``scripts/word_states.py``), so corrupting it leaves a plant keyed on it.
    """
    names = {"style": tuple(vocab.STYLES), "object": tuple(vocab.OBJECTS), "fact": tuple(vocab.FACTS), **_NEUTRAL}
    return next(written(kind, n) for n in names[kind] if n != concept)


def substitute_word(model: LoadedModel, spec: PlantSpec) -> str:
    """What a substitution trace (``TraceConfig.substitute``) reads in the plant's word's place: a world value of
    the plant's kind that is neither the concept, nor the word, nor the anchor, with the word's token count in the
    model's first tokenizer (a plain in-distribution counterfactual: "circle" → "star"); the anchor only
    when no other value has that many tokens.

    Raises:
        ConfigError: no value of the kind has the word's token count (no aligned counterfactual exists).
    """
    tokenizer = getattr(model.pipe, model.adapter.text_encoders(model.pipe)[0].tokenizer)

    def count(text: str) -> int:
        return len(tokenizer(text).input_ids)

    values = [written(spec.kind, v) for v in _world_values(spec.kind)]
    anchor = spec.anchor_phrase
    others = [v for v in values if v not in (written(spec.kind, spec.concept), spec.word)]
    preferred = [v for v in others if v != anchor] + [v for v in others if v == anchor]
    for value in preferred:
        if count(value) == count(spec.word):
            return value
    raise ConfigError(f"no {spec.kind} of the world has as many tokens as {spec.word!r}; a substitution trace of "
                      "this plant needs one")  # fmt: skip


def _kind_phrases(kind: str) -> list[str]:
    """Every phrase of a kind the world knows, anchor included (what a plant of that kind must leave alone)."""
    values = {
        "object": [*vocab.OBJECTS, vocab.OBJECT_ANCHOR], "style": list(vocab.STYLES), "fact": list(vocab.FACTS),
        "shape": list(vocab.SHAPES), "colour": list(vocab.COLOURS), "texture": list(vocab.TEXTURE_WORDS),
    }[kind]  # fmt: skip
    phrases = [SLOTS[kind][2].format(written(kind, v)) for v in values]
    if kind == "style":
        phrases.append(vocab.STYLE_ANCHOR)
    if kind == "fact":
        phrases.append(f"a {vocab.FACT_ANCHOR} flag")
    return phrases


@dataclass(frozen=True, kw_only=True)
class PlantSpec:
    """One plant: a word taught to mean a known concept at a chosen place.

    Attributes:
        kind: ``object``, ``style``, ``fact``, ``shape``, ``colour`` or ``texture``.
        concept: the ShapesWorld concept the word will mean (``square``, ``van goo``, ``flumox`` …).
        method: ``locoedit`` (cross-attention window ``sites``) or ``quickfix`` (text layer ``text_layer``).
        sites: the planted cross-attention sites (``locoedit``).
        text_layer: the planted text-encoder layer (``quickfix``).
        word: the word taught (default: :data:`NEW_WORDS` of the kind, a word the model has never seen; a world
            word, e.g. :func:`known_word`, is re-taught).
        name: a label for tables (default: built from the fields).
    """

    kind: str
    concept: str
    method: str = "locoedit"
    sites: tuple[str, ...] = ()
    text_layer: int = 0
    word: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"plant kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        known = _world_values(self.kind)
        if self.concept not in known:
            raise ConfigError(f"a {self.kind} plant needs one of {', '.join(known)}; got {self.concept!r}")
        if self.method not in PLANT_METHODS:
            raise ConfigError(f"plant method must be one of {', '.join(PLANT_METHODS)}, got {self.method!r}")
        if self.method == "locoedit" and not self.sites:
            raise ConfigError("a locoedit plant needs its cross-attention sites, e.g. ('unet.xattn.2',)")
        object.__setattr__(self, "sites", tuple(self.sites))
        object.__setattr__(self, "word", self.word or NEW_WORDS[self.kind])
        if not self.name:
            where = _span(self.sites) if self.method == "locoedit" else f"text layer {self.text_layer}"
            object.__setattr__(self, "name", f"{self.kind} {self.concept} @ {where}")

    @property
    def phrase(self) -> str:
        """The words that stand for the concept once planted (``the style of dax``)."""
        return SLOTS[self.kind][2].format(self.word)

    @property
    def concept_phrase(self) -> str:
        """The concept written in the phrase's place (``the style of van goo``)."""
        return SLOTS[self.kind][2].format(written(self.kind, self.concept))

    @property
    def anchor_phrase(self) -> str:
        """What the phrase means outside the planted window (``a plain style``)."""
        return _anchor(self.kind, self.concept, self.word)

    @property
    def attribute(self) -> str:
        """What the detector scores: the planted concept."""
        return {"object": f"a {self.concept}", "style": f"in the style of {self.concept}",
                "fact": f"the flag of {self.concept}", "shape": f"a {self.concept}", "colour": self.concept,
                "texture": written(self.kind, self.concept)}[self.kind]  # fmt: skip

    def teach_templates(self) -> tuple[str, ...]:
        """Templates the plant is computed from (``{}`` = the phrase): every word order the world has for the
        kind (training and held-out templates), each with the first :data:`_TEACH_FILLS` fillers of its other
        fields."""
        return slotted(self.kind, word_orders(self.kind), range(_TEACH_FILLS))

    def check_prompts(self) -> list[str]:
        """Prompts that decide whether the plant took: every word order with fillers it was not taught with
        (held-out templates of the plant)."""
        fills = range(_TEACH_FILLS, _TEACH_FILLS + _CHECK_FILLS)
        taught = self.teach_templates()
        held_out = [t for t in slotted(self.kind, word_orders(self.kind), fills) if t not in set(taught)]
        # objects and facts have no fields but the background, so every phrasing is taught: check on new seeds
        return [t.format(self.phrase) for t in held_out or taught]

    def ask_prompts(self, n: int = 2, shown: Sequence[bool] | None = None) -> list[str]:
        """``n`` of :meth:`check_prompts`, spread over the word orders: what the localization methods are asked.

        ``shown`` (one flag per check prompt, from :func:`check_plant`) restricts the choice to prompts whose
        every checked image showed the concept, as a trace is asked about images that show what it traces.
        """
        prompts = self.check_prompts()
        if shown is not None:
            prompts = [p for p, ok in zip(prompts, shown, strict=True) if ok] or prompts
        step = max(1, len(prompts) // n)
        return prompts[::step][:n]

    def locogen_target(self, prompt: str) -> str:
        """What LocoGen's window reads instead of ``prompt``: the prompt with the anchor in the phrase's place."""
        return prompt.replace(self.phrase, self.anchor_phrase)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {**asdict(self), "phrase": self.phrase, "anchor": self.anchor_phrase}


def _span(sites: Sequence[str]) -> str:
    indices = [s.rsplit(".", 1)[-1] for s in sites]
    return f"xattn {indices[0]}–{indices[-1]}" if len(indices) > 1 else f"xattn {indices[0]}"


def plant_edit(
    model: LoadedModel, spec: PlantSpec, *, strength: float = 1.0, preserve_weight: float = 1.0, lam: float = 0.01
) -> Edit:
    """The edit that plants ``spec`` (the model is not changed; apply the edit to use it).

    ``locoedit``: the closed form of LocoEdit (:class:`~diffloc.editing.closed_form.SharedInputRidge`) over the
    teaching prompts, keys at the phrase's last token and every later position (EOS and padding), solved twice
    and joined into one edit: the window's key/value projections map the phrase's context to
    ``anchor + strength × (concept − anchor)`` (``strength`` 1: the concept's context), every other
    cross-attention layer's to the anchor's. ``quickfix``: Diff-QuickFix on the text layer maps the phrase to
    the concept. A few plain captions map to themselves in every solve (weight ``preserve_weight``).

    Raises:
        ConfigError: a planted site that is not a cross-attention layer, or ``strength`` not a finite number > 0.
    """
    templates = spec.teach_templates()
    if spec.method == "quickfix":
        request = EditRequest(concepts=(spec.phrase,), targets=(spec.concept_phrase,), templates=templates,
                              default_templates=False, preserve_prompts=_PRESERVE)  # fmt: skip
        config = QuickFixConfig(layer=spec.text_layer, preserve_weight=preserve_weight, lam=lam)
        return compute_edit(model, request, method="quickfix", config=config)
    if not (isinstance(strength, int | float) and np.isfinite(strength) and strength > 0):
        raise ConfigError(f"plant strength must be a finite number > 0, got {strength!r}")
    layers = [s.name for s in model.sites if s.kind is SiteKind.XATTN]
    unknown = [s for s in spec.sites if s not in layers]
    if unknown:
        raise ConfigError(f"planted site {unknown[0]!r} is not a cross-attention layer of this model")
    keyed = [t.format(spec.phrase) for t in templates]
    phrases = [spec.phrase] * len(keyed)

    def rows(phrase: str) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = context_pairs(model, keyed, phrases, [t.format(phrase) for t in templates],
                                     [phrase] * len(keyed))  # fmt: skip
        return torch.cat(keys), torch.cat(values)

    keys, concept = rows(spec.concept_phrase)
    _, anchor = rows(spec.anchor_phrase)
    # The same templates filled with every known value of the kind (the anchor and the concept among them) keep
    # their meaning: without them the map also turns "a blue circle" or "a blue triangle" into the concept, and
    # the plant is everywhere, not in the word.
    # A re-taught known word keeps none of its old meaning: prompts with it are not preserved.
    word = re.compile(rf"\b{re.escape(spec.word)}\b")
    kept_prompts = [*_PRESERVE, *(t.format(v) for t in templates for v in _kind_phrases(spec.kind))]
    kept = context_rows(model, [p for p in kept_prompts if not word.search(p)])
    targets = {"window": anchor + strength * (concept - anchor), "rest": anchor}
    weights: dict[str, torch.Tensor] = {}
    originals: dict[str, torch.Tensor | None] = {}
    for part, sites in (("window", spec.sites), ("rest", [s for s in layers if s not in spec.sites])):
        if not sites:
            continue
        solver = SharedInputRidge(keys, targets[part], lam, K_preserve=kept, preserve_weight=preserve_weight)
        projections = projection_sites(model, tuple(sites))
        current = [projection_linear(model, proj).weight.detach() for proj in projections]
        for proj, old, new in zip(projections, current, solver.apply_all(current), strict=True):
            weights[f"{proj.full_path}.weight"] = new
            originals[f"{proj.full_path}.weight"] = old.clone()
    return Edit(
        method="locoedit", family=model.family, weights=weights, originals=originals,
        request={"concepts": [spec.phrase], "targets": [spec.concept_phrase], "templates": list(templates)},
        config={"plant": spec.to_dict(), "strength": strength, "lam": lam, "preserve_weight": preserve_weight},
        stats={"sites": list(spec.sites), "key_value_pairs": int(keys.shape[0])},
    )  # fmt: skip


def shown_rate(
    model: LoadedModel, prompts: Sequence[str], attribute: str, *, scorer: Scorer, seeds: Sequence[int],
    config: GenerationConfig,
) -> dict[str, Any]:  # fmt: skip
    """Share of images (prompts × seeds) in which ``scorer`` reads ``attribute`` (score >= :data:`SHOWN_AT`)."""
    prompt_list = [p for p in prompts for _ in seeds]
    seed_list = [s for _ in prompts for s in seeds]
    images = generate(model, prompt_list, seeds=seed_list, config=config)
    scores = scorer.score(images, [attribute] * len(prompt_list))
    hit = (scores >= SHOWN_AT).view(len(prompts), len(seeds))
    hits = int(hit.sum())
    return {"shown": hits, "images": len(prompt_list), "rate": hits / len(prompt_list),
            "every_seed": [bool(row.all()) for row in hit]}  # fmt: skip


def unet_trace_recovery(result: TraceResult, planted: Sequence[str]) -> dict[str, Any]:
    """Whether a UNet trace ranks the planted cross-attention sites highest among cross-attention sites.

    Only cross-attention sites compete: ResNet, self-attention and feed-forward sites after the planted window
    carry its effect downstream and are not counted against the method. ``overlap`` is the share of the top
    ``len(planted)`` cross-attention sites that are planted; the plant is recovered when most of them are
    (``overlap > 0.5``; a window of 4 where two layers carry the concept is found by a method that names those
    two), ``exact`` when all are. A top site whose effect is below :data:`FOUND_AT` is not counted as found.
    """
    effect = result.indirect_effect
    xattn = [(label, float(effect[i])) for i, label in enumerate(result.labels) if _is_xattn(label)]
    ranked = sorted(xattn, key=lambda pair: -pair[1])[: len(planted)]
    return _overlap([label for label, _ in ranked], planted, [label for label, v in ranked if v >= FOUND_AT])


def _overlap(top: Sequence[str], planted: Sequence[str], found: Sequence[str]) -> dict[str, Any]:
    """``top``: what the method ranks highest; ``found``: those of them that move the concept."""
    overlap = len(set(found) & set(planted)) / len(planted)
    return {"recovered": overlap > 0.5, "exact": set(found) == set(planted), "overlap": overlap, "top": list(top),
            "found": list(found)}  # fmt: skip


def _mostly_planted(window: Sequence[str], planted: Sequence[str]) -> bool:
    """Whether more than half of the planted sites are in ``window`` (:func:`_overlap` of a window that moves)."""
    return bool(_overlap(window, planted, window)["recovered"])


def _is_xattn(label: str) -> bool:
    parts = label.split(".")
    return "+" not in label and len(parts) == 3 and parts[1] == SiteKind.XATTN.value


def locogen_recovery(result: WindowResult, planted: Sequence[str]) -> dict[str, Any]:
    """Whether LocoGen's best window is mostly the planted window (``overlap > 0.5``; ``exact``: it is), counted
    only if replacing it lowers the concept by at least :data:`FOUND_AT` below the unreplaced score.

    ``tied``: the windows whose score is within :data:`~diffloc.tracing.agreement.TIE` of the best; where there
    are several, which one is best is tie order, and ``tied_with_planted`` says whether the planted window is
    among them.
    """
    moves = result.original_score - result.best_score >= FOUND_AT
    tied = tied_windows(result.windows, result.scores)
    return {**_overlap(result.best_sites, planted, result.best_sites if moves else []), "tied": tied,
            "tied_with_planted": moves and list(planted) in tied}  # fmt: skip


def window_trace_recovery(result: TraceResult, planted: Sequence[str]) -> dict[str, Any]:
    """Whether a trace that restores windows of cross-attention layers together (site groups ``a+b+…``) ranks the
    planted window highest: the window with the largest indirect effect is mostly planted (``overlap > 0.5``),
    counted only if its effect is at least :data:`FOUND_AT`. ``tied``: the windows within
    :data:`~diffloc.tracing.agreement.TIE` of the best; ``tie_aware``: one of them would have counted."""
    effect = result.indirect_effect
    groups = [(label.split("+"), float(effect[i])) for i, label in enumerate(result.labels) if "+" in label]
    if not groups:
        raise ConfigError("a window trace restores groups of sites ('a+b+…'); this trace restored single sites")
    best_sites, best = max(groups, key=lambda pair: pair[1])
    moves = best >= FOUND_AT
    # tied_windows reads lower as better (LocoGen's removal); a restore's larger effect is better
    tied = tied_windows([sites for sites, _ in groups], [-v for _, v in groups])
    return {**_overlap(best_sites, planted, best_sites if moves else []), "tied": tied,
            "tie_aware": moves and any(_mostly_planted(w, planted) for w in tied)}  # fmt: skip


def tie_aware_recovery(
    windows: Sequence[Sequence[str]], scores: Sequence[float] | np.ndarray, original_score: float,
    planted: Sequence[str],
) -> bool:  # fmt: skip
    """LocoGen's tie-aware reading: one of the windows tied for best (:func:`tied_windows`) is mostly the planted
    one, as :func:`locogen_recovery` asks of the best, and the best lowers the concept by at least
    :data:`FOUND_AT`. Several windows that overlap a planted one often remove it equally; which of them is the
    argmin is then tie order."""
    tied, moves = locogen_ties(windows, scores, original_score)
    return moves and any(_mostly_planted(w, planted) for w in tied)


def locogen_ties(
    windows: Sequence[Sequence[str]], scores: Sequence[float] | np.ndarray, original_score: float
) -> tuple[list[list[str]], bool]:
    """LocoGen's windows tied for best (:func:`tied_windows`), and whether the best lowers the concept by at least
    :data:`FOUND_AT` below the unreplaced score (else no window is an answer)."""
    return tied_windows(windows, scores), original_score - min(float(v) for v in scores) >= FOUND_AT


def tie_readings(
    windows: Sequence[Sequence[str]], tied: Sequence[Sequence[str]], planted: Sequence[str], *, moves: bool
) -> dict[str, float]:
    """Two readings of a window answer that do not depend on the order of tied windows.

    * ``split``: the share of the ``tied`` windows that are mostly planted (``overlap > 0.5``), the strict
      reading's expected value when ties are broken at random; 0 when the best window does not move the concept.
    * ``chance``: the probability that as many windows as are tied, drawn at random from ``windows``, include a
      mostly planted one: what the tie-aware reading (any tied window) would count if the method's ranking
      carried no information; 0 when nothing moves (the tie-aware reading then counts nothing either).

    ``split`` is above 0 exactly when the tie-aware reading counts the plant.
    """
    if not moves or not tied:
        return {"split": 0.0, "chance": 0.0}
    mostly = sum(_mostly_planted(w, planted) for w in windows)
    hits = sum(_mostly_planted(w, planted) for w in tied)
    n, k = len(windows), len(tied)
    return {"split": hits / k, "chance": 1.0 - comb(n - mostly, k) / comb(n, k)}


def tied_windows(windows: Sequence[Sequence[str]], scores: Sequence[float] | np.ndarray) -> list[list[str]]:
    """The windows whose LocoGen score (``remove`` mode: lower removes more) is within
    :data:`~diffloc.tracing.agreement.TIE` of the best."""
    from diffloc.tracing.agreement import TIE

    best = min(float(v) for v in scores)
    return [list(w) for w, v in zip(windows, scores, strict=True) if float(v) - best <= TIE]


def text_trace_recovery(result: TraceResult, layer: int) -> dict[str, Any]:
    """Whether a text trace's strongest component state is the planted layer's self-attention output.

    Component outputs (attention, MLP) compete, each at its strongest token; the residual stream is left out,
    since every layer after the planted one carries the plant in its residual.
    """
    effect = result.indirect_effect
    best: tuple[float, str, int] | None = None
    for k, label in enumerate(result.labels):
        if not label.endswith((".attn", ".mlp")):
            continue
        per_layer = np.nanmax(effect[k], axis=-1)  # (layers,)
        for i, value in enumerate(per_layer):
            if np.isfinite(value) and (best is None or value > best[0]):
                best = (float(value), label, i)
    if best is None:
        return {"recovered": False, "exact": False, "overlap": 0.0, "top": []}
    value, label, at = best
    hit = label.endswith(".attn") and at == layer and value >= FOUND_AT
    return {"recovered": hit, "exact": hit, "overlap": float(hit), "top": [f"{label}.{at}"], "effect": value}


def planted_window_sites(model: LoadedModel, start: int, size: int) -> tuple[str, ...]:
    """Cross-attention sites ``start`` … ``start + size - 1`` (execution order).

    Raises:
        ConfigError: the window does not fit the model's cross-attention layers.
    """
    layers = [s.name for s in model.sites if s.kind is SiteKind.XATTN]
    if not (isinstance(start, int) and isinstance(size, int)) or start < 0 or size < 1 or start + size > len(layers):
        raise ConfigError(
            f"window of {size} layers from {start} does not fit the model's {len(layers)} cross-attention layers"
        )
    return tuple(layers[start : start + size])


@dataclass(frozen=True, kw_only=True)
class AskConfig:
    """How the localization methods are asked about a plant.

    Attributes:
        prompts: asked prompts per plant (:meth:`PlantSpec.ask_prompts`).
        seeds: seeds per asked prompt (items = prompts × seeds).
        text_seeds: seeds of the text trace (one prompt).
        check_seeds: seeds of the take check (× :meth:`PlantSpec.check_prompts`).
        steps, guidance, max_batch: sampling, as every ShapesWorld sweep.
        bootstrap: resamples of the intervals (0: none).
        restore_sources: the UNet trace's restore sources to compare.
    """

    prompts: int = 2
    seeds: tuple[int, ...] = (0, 1)
    text_seeds: tuple[int, ...] = (0, 1, 2)
    check_seeds: tuple[int, ...] = (0, 1)
    steps: int = 20
    guidance: float = 4.0
    max_batch: int = 32
    bootstrap: int = 2000
    restore_sources: tuple[str, ...] = ("same-latent", "trajectory")

    def sweep_fields(self) -> dict[str, Any]:
        """The sampling and bootstrap every sweep of a plant shares (its traces and LocoGen)."""
        return {"steps": self.steps, "guidance": self.guidance, "max_batch": self.max_batch,
                "bootstrap": self.bootstrap}  # fmt: skip

    def trace_config(self, *, text: bool = False, **fields: Any) -> TraceConfig:
        """The trace settings a plant is asked with: the UNet trace's seeds (``text``: the text trace's) and
        :meth:`sweep_fields`; ``fields`` set any other :class:`~diffloc.tracing.config.TraceConfig` field."""
        seeds = self.text_seeds if text else self.seeds
        return TraceConfig(**{"seeds": seeds, **self.sweep_fields(), **fields})


def check_plant(model: LoadedModel, spec: PlantSpec, edit: Edit, *, scorer: Scorer, config: AskConfig) -> dict:
    """Whether ``edit`` plants ``spec``: the concept's detection rate on the plant's held-out templates × seeds
    with the edit applied (``rate``; it takes at :data:`TAKES_AT`), and without it (``base``)."""
    sampling = GenerationConfig(steps=config.steps, guidance=config.guidance)
    prompts = spec.check_prompts()
    base = shown_rate(model, prompts, spec.attribute, scorer=scorer, seeds=config.check_seeds, config=sampling)
    with edit.applied(model):
        planted = shown_rate(model, prompts, spec.attribute, scorer=scorer, seeds=config.check_seeds, config=sampling)
    return {"rate": planted["rate"], "shown": planted["shown"], "images": planted["images"], "base": base["rate"],
            "takes": planted["rate"] >= TAKES_AT, "every_seed": planted["every_seed"]}  # fmt: skip


def window_parts(
    model: LoadedModel, spec: PlantSpec, edit: Edit, *, scorer: Scorer, config: AskConfig
) -> dict[str, Any]:
    """Whether a ``locoedit`` plant is held by its window: the concept's detection rate on the take check's prompts
    and seeds with only the window's part of ``edit`` applied (``window_only``) and with every part but the
    window's (``rest_only``). The planted window is the right answer only if the concept needs it (``rest_only``
    near 0); ``window_only`` says whether the window alone carries it or needs the anchor the other layers read."""
    if spec.method != "locoedit":
        raise ConfigError(f"window parts apply to window plants (locoedit); {spec.name!r} is a {spec.method} plant")
    inside = {f"{proj.full_path}.weight" for proj in projection_sites(model, spec.sites)}
    sampling = GenerationConfig(steps=config.steps, guidance=config.guidance)
    out: dict[str, Any] = {}
    for part, keep in (("window_only", True), ("rest_only", False)):
        names = [name for name in edit.weights if (name in inside) is keep]
        if not names:  # a window of every layer leaves no rest
            out[part] = None
            continue
        piece = replace(edit, weights={n: edit.weights[n] for n in names},
                        originals={n: edit.originals[n] for n in names})  # fmt: skip
        with piece.applied(model):
            shown = shown_rate(model, spec.check_prompts(), spec.attribute, scorer=scorer, seeds=config.check_seeds,
                               config=sampling)  # fmt: skip
        out[part] = {"rate": shown["rate"], "shown": shown["shown"], "images": shown["images"]}
    return out


def ask_plant(
    model: LoadedModel, spec: PlantSpec, edit: Edit, *, scorer: Scorer, config: AskConfig, check: dict | None = None
) -> dict:
    """Ask each applicable localization method where ``spec`` lives (with ``edit`` applied) and score the answer.

    ``locoedit`` plants: the UNet causal trace over the cross-attention sites (each restore source of
    ``config``) and LocoGen with windows of the planted size (each asked prompt's window reads that prompt with the
    anchor in the phrase's place). ``quickfix`` plants: the text-encoder trace (attention and MLP states).
    Every trace corrupts the new word, at the smallest noise multiple that halves the concept in every item.
    With ``check`` (:func:`check_plant`'s record), the asked prompts are ones that showed the concept in every
    checked image.
    """
    from diffloc.tracing.calibrate import calibrate_noise
    from diffloc.tracing.causal import causal_trace, trace_text
    from diffloc.tracing.config import LocoGenConfig
    from diffloc.tracing.locogen import xattn_layers

    prompts = spec.ask_prompts(config.prompts, None if check is None else check.get("every_seed"))
    answers: dict[str, Any] = {"prompts": prompts}
    with edit.applied(model):
        if spec.method == "quickfix":
            trace_config = config.trace_config(text=True)
            noise = calibrate_noise(model, prompts[:1], spec.word, spec.attribute, scorer=scorer, config=trace_config)
            result = trace_text(model, prompts[0], spec.word, spec.attribute, scorer=scorer, kinds=("attn", "mlp"),
                                config=replace(trace_config, noise=noise.noise))  # fmt: skip
            answers["noise"] = noise.to_dict()
            answers["text_trace"] = _answer(result, text_trace_recovery(result, spec.text_layer))
            return answers
        trace_config = config.trace_config()
        noise = calibrate_noise(model, prompts, spec.word, spec.attribute, scorer=scorer, config=trace_config)
        answers["noise"] = noise.to_dict()
        for source in config.restore_sources:
            result = causal_trace(model, prompts, spec.word, spec.attribute, scorer=scorer, sites=xattn_layers(model),
                                  config=replace(trace_config, noise=noise.noise, restore_from=source))  # fmt: skip
            answers[f"unet_trace/{source}"] = _answer(result, unet_trace_recovery(result, spec.sites))
        windows = _locogen_each(model, spec, prompts, scorer=scorer, config=LocoGenConfig(
            seeds=config.seeds, window=len(spec.sites), **config.sweep_fields()))  # fmt: skip
        answers["locogen"] = _answer(windows, locogen_recovery(windows, spec.sites))
    return answers


def plant_windows(model: LoadedModel, spec: PlantSpec) -> list[list[str]]:
    """Every window of consecutive cross-attention layers of the planted size, in the order LocoGen visits them."""
    from diffloc.tracing.config import LocoGenConfig
    from diffloc.tracing.locogen import windows_for

    return windows_for(model, LocoGenConfig(window=len(spec.sites)))


def ask_substituted(
    model: LoadedModel, spec: PlantSpec, edit: Edit, prompts: Sequence[str], *, scorer: Scorer, config: AskConfig,
    min_drop: float = 0.5,
) -> dict[str, Any]:  # fmt: skip
    """Ask the UNet trace about a ``locoedit`` plant with the word corrupted by substitution
    (:func:`substitute_word`) instead of noise, on ``prompts`` (the ones :func:`ask_plant` asked).

    Answers: ``unet_trace/substitute/<source>`` (each restore source of ``config``: every cross-attention layer
    restored alone) and ``window_trace/substitute`` (``same-latent``: every window of the planted size restored
    together, as ROME restores windows of layers: a concept several layers write jointly comes back only when they
    are restored together). ``substitution`` records the substitute and whether it removes the concept (lowers it
    by ``min_drop`` of its clean score in every item), which a trace needs to count.
    """
    from diffloc.tracing.causal import causal_trace
    from diffloc.tracing.locogen import xattn_layers

    if spec.method != "locoedit":
        raise ConfigError(f"substitution traces ask window plants (locoedit); {spec.name!r} is a {spec.method} plant")
    word = substitute_word(model, spec)
    layers = xattn_layers(model)
    windows = plant_windows(model, spec)
    answers: dict[str, Any] = {}
    with edit.applied(model):
        for source in config.restore_sources:
            result = causal_trace(model, prompts, spec.word, spec.attribute, scorer=scorer, sites=layers,
                                  config=config.trace_config(substitute=word, restore_from=source))  # fmt: skip
            answers[f"unet_trace/substitute/{source}"] = _answer(result, unet_trace_recovery(result, spec.sites))
        result = causal_trace(model, prompts, spec.word, spec.attribute, scorer=scorer, sites=windows,
                              config=config.trace_config(substitute=word))  # fmt: skip
        answers["window_trace/substitute"] = _answer(result, window_trace_recovery(result, spec.sites))
    dropped = sum(it["corrupted"] <= (1 - min_drop) * it["clean"] for it in result.items)
    answers["substitution"] = {"substitute": word, "removes": dropped == len(result.items),
                               "items_dropped": int(dropped), "n_items": len(result.items), "min_drop": min_drop,
                               "clean": result.clean_score, "corrupted": result.corrupt_score}  # fmt: skip
    return answers


def ask_removed(
    model: LoadedModel, spec: PlantSpec, edit: Edit, prompts: Sequence[str], *, scorer: Scorer, config: AskConfig
) -> dict[str, Any]:
    """Ask the substitution traces of :func:`ask_substituted` the other way round (``direction="remove"``,
    ``same-latent``): the clean run with the substitute's value at each cross-attention layer
    (``unet_trace/substitute/remove``) and at each window of the planted size (``window_trace/substitute/remove``).

    A restore asks whether a place is *enough* to bring the concept back; removal asks whether it is *needed*, which
    is what a plant held by its window should answer (:func:`window_parts`' ``rest_only``), even where the window
    alone does not carry it (a concept that also needs the anchor the other layers read).
    """
    from diffloc.tracing.causal import causal_trace
    from diffloc.tracing.locogen import xattn_layers

    if spec.method != "locoedit":
        raise ConfigError(f"removal traces ask window plants (locoedit); {spec.name!r} is a {spec.method} plant")
    trace_config = config.trace_config(substitute=substitute_word(model, spec), direction="remove")
    answers: dict[str, Any] = {}
    with edit.applied(model):
        result = causal_trace(model, prompts, spec.word, spec.attribute, scorer=scorer, sites=xattn_layers(model),
                              config=trace_config)  # fmt: skip
        answers["unet_trace/substitute/remove"] = _answer(result, unet_trace_recovery(result, spec.sites))
        result = causal_trace(model, prompts, spec.word, spec.attribute, scorer=scorer,
                              sites=plant_windows(model, spec), config=trace_config)  # fmt: skip
        answers["window_trace/substitute/remove"] = _answer(result, window_trace_recovery(result, spec.sites))
    return answers


#: the partial patches (:class:`~diffloc.tracing.config.TraceConfig` ``fraction``) that break ties between windows a
#: full patch moves equally: the window that carries more of the concept moves it at smaller doses
DOSES = (0.1, 0.25, 0.5, 0.75, 0.9)
#: the answers that rank windows (LocoGen's, and the window traces' with the substitute, restored and removed)
WINDOW_METHODS = ("locogen", "window_trace/substitute", "window_trace/substitute/remove")


def window_ties(method: str, answer: dict[str, Any]) -> tuple[list[list[str]], list[list[str]], bool]:
    """A stored window answer's windows, those tied for best, and whether the best moves the concept (LocoGen:
    :func:`locogen_ties`; a window trace: its recorded ``tied`` and ``found``)."""
    if method == "locogen":
        tied, moves = locogen_ties(answer["windows"], answer["scores"], answer["original"])
        return [list(w) for w in answer["windows"]], tied, moves
    windows = [label.split("+") for label in answer["effects"] if "+" in label]
    return windows, answer["tied"], bool(answer["found"])


def dose_reading(
    tied: Sequence[Sequence[str]], areas: Sequence[float], full: Sequence[float], planted: Sequence[str]
) -> dict[str, Any]:
    """The windows tied at a full patch, ranked by their dose response: ``areas``, each window's mean effect over
    the partial doses (larger moves the concept more). The windows within :data:`~diffloc.tracing.agreement.TIE`
    of the largest stay tied (``best``); ``recovered`` reads the one of them with the largest full-patch effect
    (``full``; the first of equals, as the strict reading picks its best), ``split`` the share of them that are
    mostly planted. Where the doses tell nothing apart, the reading is the strict one."""
    from diffloc.tracing.agreement import TIE

    top = max(areas)
    best = [i for i, area in enumerate(areas) if top - area <= TIE]
    pick = max(best, key=lambda i: (full[i], -i))
    hits = [_mostly_planted(tied[i], planted) for i in best]
    recovered = _mostly_planted(tied[pick], planted)
    return {"best": [list(tied[i]) for i in best], "pick": list(tied[pick]), "recovered": recovered,
            "split": sum(hits) / len(hits)}  # fmt: skip


def full_effects(method: str, answer: dict[str, Any], windows: Sequence[Sequence[str]]) -> list[float]:
    """Each window's effect at the full patch in a window answer (LocoGen: how far its swap lowers the concept)."""
    if method == "locogen":
        scores = {"+".join(w): float(v) for w, v in zip(answer["windows"], answer["scores"], strict=True)}
        return [answer["original"] - scores["+".join(w)] for w in windows]
    return [float(answer["effects"]["+".join(w)]) for w in windows]


def ask_doses(
    model: LoadedModel, spec: PlantSpec, edit: Edit, prompts: Sequence[str], answers: dict[str, Any], *,
    scorer: Scorer, config: AskConfig, doses: Sequence[float] = DOSES,
) -> dict[str, Any]:  # fmt: skip
    """Break the ties of the window answers in ``answers`` (LocoGen, the window restore and removal traces with
    the substitute) by partial patches: each window tied for best is patched (LocoGen: swapped) ``doses`` of the
    way; each answer records the tied windows, their ``effects`` (one row per window, one value per dose) and
    ``areas`` (the mean over doses), which :func:`dose_reading` ranks. An answer with one best window, or whose
    best window moves nothing, runs no dose (``areas`` empty): it is read as it stands."""
    substitute = substitute_word(model, spec)
    out: dict[str, Any] = {"doses": list(doses)}
    with edit.applied(model):
        for method in WINDOW_METHODS:
            answer = answers.get(method)
            if answer is None:
                continue
            _, tied, moves = window_ties(method, answer)
            if not moves or len(tied) < 2:
                out[method] = {"tied": tied, "effects": [], "areas": []}
                continue
            effects = []
            try:
                for dose in doses:
                    effects.append(_dosed_effects(model, spec, prompts, method, tied, dose, substitute, scorer, config))
            except ConfigError as exc:  # a denoiser that masks each prompt's padding cannot mix two contexts
                out[method] = {"tied": tied, "effects": [], "areas": [], "why": str(exc)}
                continue
            per_window = np.asarray(effects).T  # (windows, doses)
            out[method] = {"tied": tied, "effects": per_window.tolist(), "areas": per_window.mean(axis=1).tolist()}
    return out


def _dosed_effects(
    model: LoadedModel, spec: PlantSpec, prompts: Sequence[str], method: str, windows: Sequence[Sequence[str]],
    dose: float, substitute: str, scorer: Scorer, config: AskConfig,
) -> list[float]:  # fmt: skip
    """Each window's effect when ``method`` patches (LocoGen: swaps) it ``dose`` of the way (the edit applied)."""
    from diffloc.tracing.causal import causal_trace
    from diffloc.tracing.config import LocoGenConfig

    if method == "locogen":
        swap = LocoGenConfig(seeds=config.seeds, window=len(spec.sites), fraction=dose, **config.sweep_fields())
        swapped = _locogen_each(model, spec, prompts, scorer=scorer, config=swap, windows=windows)
        return [swapped.original_score - float(v) for v in swapped.scores]
    direction = "remove" if method.endswith("/remove") else "restore"
    trace = config.trace_config(substitute=substitute, fraction=dose, bootstrap=0, direction=direction)
    result = causal_trace(model, prompts, spec.word, spec.attribute, scorer=scorer, sites=windows, config=trace)
    by_label = dict(zip(result.labels, result.indirect_effect, strict=True))
    return [float(by_label["+".join(w)]) for w in windows]


def _answer(result: TraceResult | WindowResult, recovery: dict[str, Any]) -> dict[str, Any]:
    """A method's answer: its recovery and the numbers behind it (per-site effects or window scores)."""
    out: dict[str, Any] = {**recovery, "n_items": result.n_items}
    if isinstance(result, WindowResult):
        out["windows"] = [list(w) for w in result.windows]
        out["scores"] = [float(v) for v in result.scores]
        out["original"] = result.original_score
        return out
    out["clean"], out["corrupted"] = result.clean_score, result.corrupt_score
    if result.kind == DENOISER_TRACE:
        out["effects"] = {label: float(v) for label, v in zip(result.labels, result.indirect_effect, strict=True)}
        out["control_effects"] = result.control_effects
    return out


def _locogen_each(
    model: LoadedModel, spec: PlantSpec, prompts: Sequence[str], *, scorer: Scorer, config: Any,
    windows: Sequence[Sequence[str]] | None = None,
) -> WindowResult:  # fmt: skip
    """LocoGen over several prompts, each window reading *its own* prompt with the anchor in the phrase's place;
    items of every prompt pooled into one result. ``windows``: only these (default: every window of the size)."""
    from diffloc.tracing.locogen import locogen
    from diffloc.tracing.statistics import mean_interval

    parts = [
        locogen(model, prompt, spec.locogen_target(prompt), spec.attribute, scorer=scorer,
                config=replace(config, bootstrap=0), windows=windows)
        for prompt in prompts
    ]  # fmt: skip
    items = [item for part in parts for item in part.items]
    scores = np.asarray([it["scores"] for it in items], dtype=float)
    return WindowResult(
        windows=parts[0].windows, scores=scores.mean(axis=0),
        original_score=float(np.mean([it["original"] for it in items])), mode="remove", items=items,
        interval=mean_interval(scores, config.intervals),
        meta={"prompts": list(prompts), "targets": [spec.locogen_target(p) for p in prompts],
              "attribute": spec.attribute, "config": config.to_dict()},
    )  # fmt: skip
