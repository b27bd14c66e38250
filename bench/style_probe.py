"""Probe: is a named style's held-out miss due to the unseen *template* or the unseen *combination*?

Run: ``python bench/style_probe.py [--seeds 8] [--style "van goo"] [--threads 2]``

For one artist, detection rates of the style (shipped detectors, 20 steps, ``model.GUIDANCE``) on four prompt
sets that cross the held-out split's two axes: its held-out (shape, colour) combinations and the same number of
its training combinations of the same colours, each in the held-out style template and in the first
training template. Only the (held-out combination, held-out template) cell is part of ``diffloc world eval``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from edit_efficacy import rates

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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.style not in vocab.STYLES:
        raise SystemExit(f"unknown style {args.style!r}; valid: {', '.join(vocab.STYLES)}")
    if not (shapesworld_dir() / "model_index.json").is_file():
        print("skipped: ShapesWorld model not shipped")
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
    model = load("shapesworld")
    found = rates(model, prompts, args.seeds, GenerationConfig(steps=20, guidance=GUIDANCE))
    print(f"{args.style!r}: held-out combos {held}; training combos {trained}; {args.seeds} seeds")
    for group, rate in found.items():
        print(f"  {group:<40} {rate:.2f}")


if __name__ == "__main__":
    main()
