"""Probe: is a named style's held-out miss due to the unseen *template* or the unseen *combination*?

Run: ``python bench/style_probe.py [--seeds 8] [--style "van goo"] [--threads 2] [--by-colour | --by-seed]
[--model DIR]``

For one artist, detection rates of the style (shipped detectors, 20 steps, ``model.GUIDANCE``) on four prompt
sets that cross the held-out split's two axes: its held-out (shape, colour) combinations and the same number of
its training combinations of the same colours, each in the held-out style template and in the first
training template. Only the (held-out combination, held-out template) cell is part of ``diffloc world eval``.

``--by-colour`` instead draws the style with every colour and shape in both templates, prints the rate per
template and colour, and counts what the detectors read (style, texture) in each template's misses.

``--by-seed`` draws the style's held-out combinations in three word orders (the held-out template, the first
training template, the first artist-first extra template) and prints, per order, which seeds missed: misses on
the same seeds in every order follow the initial noise, not the words.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from collections import Counter

import torch
from edit_efficacy import rates, readings

from diffloc.engine.generate import GenerationConfig
from diffloc.models.registry import load, shapesworld_dir
from diffloc.world import captions, vocab
from diffloc.world.captions import EvalPrompt, fill
from diffloc.world.model import GUIDANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", default="van goo")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--by-colour", action="store_true", help="every colour and shape; what the misses show")
    parser.add_argument("--by-seed", action="store_true", help="held-out combinations in three word orders, by seed")
    parser.add_argument("--model", default="shapesworld", help="a ShapesWorld pipeline directory (default: shipped)")
    args = parser.parse_args()
    if args.by_colour and args.by_seed:
        raise SystemExit("--by-colour and --by-seed are two different probes; choose one")
    torch.set_num_threads(args.threads)
    if args.style not in vocab.STYLES:
        raise SystemExit(f"unknown style {args.style!r}; valid: {', '.join(vocab.STYLES)}")
    if not (shapesworld_dir() / "model_index.json").is_file():
        print("skipped: ShapesWorld model not shipped")
        return
    if args.by_colour:
        by_colour(args.style, args.seeds, args.model)
        return
    if args.by_seed:
        by_seed(args.style, args.seeds, args.model)
        return
    held = sorted((s, c) for a, s, c in captions.heldout_style() if a == args.style)
    colours = sorted({c for _, c in held})
    trained = [(s, c) for c in colours for s in vocab.SHAPES if (s, c) not in held][: len(held)]
    templates = {
        "held-out template": vocab.STYLE_TEMPLATES_HELDOUT[0],
        "training template": vocab.STYLE_TEMPLATES_TRAIN[0],
    }
    prompts = []
    for combos, combo_label in ((held, "held-out combos"), (trained, "training combos")):
        for template_label, template in templates.items():
            group = f"{combo_label}, {template_label}"
            prompts += [
                EvalPrompt(prompt=fill(template, artist=args.style, shape=s, colour=c), group=group,
                           labels={"style": vocab.STYLES[args.style]})
                for s, c in combos
            ]  # fmt: skip
    model = load(args.model)
    found = rates(model, prompts, args.seeds, GenerationConfig(steps=20, guidance=GUIDANCE))
    print(f"{args.style!r}: held-out combos {held}; training combos {trained}; {args.seeds} seeds")
    for group, rate in found.items():
        print(f"  {group:<40} {rate:.2f}")


def by_colour(style: str, seeds: int, model: str = "shapesworld") -> None:
    """Rates per (template, colour) over every shape, and the detectors' reading of the misses."""
    templates = {"held-out": vocab.STYLE_TEMPLATES_HELDOUT[0], "training": vocab.STYLE_TEMPLATES_TRAIN[0]}
    prompts = [
        EvalPrompt(prompt=fill(template, artist=style, shape=shape, colour=colour), group=f"{label}|{colour}",
                   labels={"style": vocab.STYLES[style]})
        for label, template in templates.items()
        for colour in vocab.COLOURS
        for shape in vocab.SHAPES
    ]  # fmt: skip
    config = GenerationConfig(steps=20, guidance=GUIDANCE)
    hits: dict[str, list[bool]] = {}
    misses: dict[str, Counter] = {label: Counter() for label in templates}
    for prompt, _, predicted in readings(load(model), prompts, seeds, config):
        hit = predicted["style"] == vocab.STYLES[style]
        hits.setdefault(prompt.group, []).append(hit)
        if not hit:
            misses[prompt.group.split("|")[0]][(predicted["style"], predicted["texture"])] += 1
    print(f"{style!r}: {len(vocab.SHAPES)} shapes x {seeds} seeds per colour; templates {templates}")
    print(f"{'colour':<8} " + " ".join(f"{label:>9}" for label in templates))
    for colour in vocab.COLOURS:
        row = " ".join(f"{sum(hits[f'{label}|{colour}']) / len(hits[f'{label}|{colour}']):9.2f}" for label in templates)
        print(f"{colour:<8} {row}")
    for label, counted in misses.items():
        shown = ", ".join(f"{s} style + {t} fill: {n}" for (s, t), n in counted.most_common())
        print(f"misses, {label} template ({sum(counted.values())}): {shown or 'none'}")


def by_seed(style: str, seeds: int, model: str = "shapesworld") -> None:
    """Per word order: the rate over the held-out combinations and the seeds that missed (with what was read)."""
    templates = {
        "held-out": vocab.STYLE_TEMPLATES_HELDOUT[0],
        "training": vocab.STYLE_TEMPLATES_TRAIN[0],
        "artist-first": vocab.EXTRA_TEMPLATES["artist-first-3"][0][0],
    }
    held = sorted((s, c) for a, s, c in captions.heldout_style() if a == style)
    prompts = [
        EvalPrompt(prompt=fill(template, artist=style, shape=s, colour=c), group=label,
                   labels={"style": vocab.STYLES[style]})
        for label, template in templates.items()
        for s, c in held
    ]  # fmt: skip
    hits: dict[str, list[bool]] = {label: [] for label in templates}
    missed: dict[str, Counter] = {label: Counter() for label in templates}
    read: dict[str, Counter] = {label: Counter() for label in templates}
    for prompt, seed, predicted in readings(load(model), prompts, seeds, GenerationConfig(steps=20, guidance=GUIDANCE)):
        hit = predicted["style"] == vocab.STYLES[style]
        hits[prompt.group].append(hit)
        if not hit:
            missed[prompt.group][seed] += 1
            read[prompt.group][f"{predicted['style']} style + {predicted['texture']} fill"] += 1
    print(f"{style!r}: held-out combos {held} x {seeds} seeds, in three word orders")
    for label, template in templates.items():
        seeds_missed = ", ".join(f"{s} x{n}" for s, n in sorted(missed[label].items())) or "none"
        readings_of_misses = ", ".join(f"{r}: {n}" for r, n in read[label].most_common()) or "none"
        print(f"  {label:<12} {sum(hits[label]) / len(hits[label]):.2f}  seeds missed: {seeds_missed}  "
              f"({readings_of_misses})  [{template}]")  # fmt: skip


if __name__ == "__main__":
    main()
