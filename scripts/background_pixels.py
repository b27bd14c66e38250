"""What a ShapesWorld model draws behind a shape, read two ways: the mean colour of the image's corners (a flat
background is the same everywhere; the shape is centred and never reaches them) and the detectors' background label.

    python scripts/background_pixels.py [--model shapesworld-dit|shapesworld|DIR] [--background grey] [--seeds 8]

For each held-out plain and object prompt with that background (the prompts of ``diffloc world eval``), the
images of seeds 0 .. N-1 at the evaluation's steps and guidance: one line per prompt with each seed's corner grey
level (the mean of the three channels, 0-255; the world's backgrounds are white 245, grey 128, black 15) and a
``*`` where the detectors' background head reads another background. Prints a Markdown table and a summary line.
The model card of ShapesWorld-DiT quotes it: where the image and the head disagree, which one is wrong (why
``world eval`` reads the background from the corners, :mod:`diffloc.world.pixels`, with the head's reading
reported beside it).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

from diffloc.models.registry import load
from diffloc.world import captions, pixels, vocab
from diffloc.world.detectors import detect, predicted_labels
from diffloc.world.evaluate import EvalConfig, attributes_scored, generate


def corner_level(images: torch.Tensor) -> torch.Tensor:
    """Mean grey level (0-255) of the corners of each ``(n, 3, H, W)`` image (:func:`pixels.corner_colour`)."""
    return pixels.corner_colour(images).mean(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapesworld-dit")
    parser.add_argument("--background", default="grey", choices=tuple(vocab.BACKGROUNDS))
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1 per prompt (default 8, as the card)")
    args = parser.parse_args()
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    torch.set_num_threads(1)
    pipe = load(args.model).pipe
    config = EvalConfig(seeds=args.seeds)
    prompts = [p for p in captions.heldout_prompts()
               if attributes_scored(p.group) and p.labels.get("background") == args.background]  # fmt: skip
    seeds = list(range(args.seeds))
    print(f"model: {args.model}; held-out prompts with a {args.background} background "
          f"(rendered at {sum(vocab.BACKGROUNDS[args.background]) / 3:.0f}); corner grey level per seed, "
          "* where the detectors read another background\n")  # fmt: skip
    print("| prompt | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|" + "---|" * len(seeds))
    levels: list[float] = []
    missed: list[float] = []
    for prompt in prompts:
        images = generate(pipe, [prompt.prompt] * len(seeds), seeds, steps=config.steps, guidance=config.guidance)
        read = [labels["background"] for labels in predicted_labels(detect(images))]
        cells = []
        for level, label in zip(corner_level(images).tolist(), read, strict=True):
            levels.append(level)
            if label != args.background:
                missed.append(level)
            cells.append(f"{level:.0f}" + ("" if label == args.background else f" * {label}"))
        print(f"| {prompt.prompt} | " + " | ".join(cells) + " |")
    span = f"{min(missed):.0f}-{max(missed):.0f}" if missed else "none"
    print(f"\n{len(levels)} images: corner level {min(levels):.0f}-{max(levels):.0f}; the detectors read another "
          f"background in {len(missed)}, whose corners are at {span}")  # fmt: skip


if __name__ == "__main__":
    main()
