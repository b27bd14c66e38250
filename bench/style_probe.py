"""Probe: is a named style's held-out miss due to the unseen *template* or the unseen *combination*?

Run: ``python bench/style_probe.py [--seeds 8] [--style "van goo"] [--threads 2] [--by-colour]``

For one artist, detection rates of the style (shipped detectors, 20 steps, ``model.GUIDANCE``) on four prompt
sets that cross the held-out split's two axes: its held-out (shape, colour) combinations and the same number of
its training combinations of the same colours, each in the held-out style template and in the first
training template. Only the (held-out combination, held-out template) cell is part of ``diffloc world eval``.

``--by-colour`` instead draws the style with every colour and shape in both templates, prints the rate per
template and colour, and counts what the detectors read (style, texture) in each template's misses.
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
    parser.add_argument("--model", default="shapesworld", help="a ShapesWorld pipeline directory (default: shipped)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.style not in vocab.STYLES:
        raise SystemExit(f"unknown style {args.style!r}; valid: {', '.join(vocab.STYLES)}")
    if not (shapesworld_dir() / "model_index.json").is_file():
        print("skipped: ShapesWorld model not shipped")
        return
    if args.by_colour:
        by_colour(args.style, args.seeds, args.model)
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
    for prompt, predicted in readings(load(model), prompts, seeds, config):
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


if __name__ == "__main__":
    main()
