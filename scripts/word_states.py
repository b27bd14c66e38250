"""Where a ShapesWorld text encoder puts a word: distances between the context states of two prompts that differ
in one word, at that word's own token, at the first end-of-text token, and over the padding after it.

    python scripts/word_states.py [--model shapesworld|shapesworld-dit|DIR]

Prints a Markdown table. The pairs ask two questions findings.md quotes: does the encoder tell two words it was
never taught apart (the planted-truth benchmark's new words), and does a colour word change its own state or only
the states after it (what a denoiser that reads some positions and not others can see)?
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

from diffloc.editing.states import padded_context, subject_positions
from diffloc.models.registry import load
from diffloc.world.dit import PIPELINE_INDEX

#: (what the pair compares, prompt, its word, other prompt, its word): each pair differs in that one word
PAIRS = (
    ("two untaught words", "a dax on a black background", "dax", "a kiki on a black background", "kiki"),
    ("two untaught words", "a zib", "zib", "a wug", "wug"),
    ("an untaught word, a shape", "a dax on a black background", "dax", "a circle on a black background", "circle"),
    ("two shapes", "a square on a black background", "square", "a circle on a black background", "circle"),
    ("two colours", "a solid red circle on a grey background", "red", "a solid blue circle on a grey background",
     "blue"),
    ("two colours", "a red circle", "red", "a blue circle", "blue"),
)  # fmt: skip


def distances(model, first: str, word: str, second: str, other: str) -> tuple[float, float, float, float]:
    """(‖state‖ at the word, distance at the word's last token, at the first end-of-text token, mean over the
    padding after it), in the context the denoiser reads. The two prompts have the same number of tokens, so
    every position pairs with itself."""
    lengths = [len(model.pipe.tokenizer(p).input_ids) for p in (first, second)]
    if lengths[0] != lengths[1]:
        raise SystemExit(f"{first!r} and {second!r} have {lengths[0]} and {lengths[1]} tokens; a pair needs equal "
                         "counts")  # fmt: skip
    context = padded_context(model, [first, second])
    at = subject_positions(model, [first, second], [word, other])[0]
    gap = (context[0] - context[1]).norm(dim=-1)
    eos = lengths[0] - 1
    return float(context[0, at].norm()), float(gap[at]), float(gap[eos]), float(gap[eos + 1 :].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapesworld")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    masked = type(model.pipe).__name__ == PIPELINE_INDEX["_class_name"]  # a ShapesWorld-DiT
    note = " (it reads BOS, the words and the first end-of-text token only, never the padding)" if masked else ""
    print(f"model: {args.model}{note}\n")
    print("| pair | prompts | state norm at the word | distance at the word | at the first end-of-text | "
          "padding (mean) |\n|---|---|---|---|---|---|")  # fmt: skip
    for label, first, word, second, other in PAIRS:
        norm, at_word, at_eos, padding = distances(model, first, word, second, other)
        print(f'| {label} | "{first}" / "{second}" | {norm:.2f} | {at_word:.2f} | {at_eos:.2f} | {padding:.2f} |')


if __name__ == "__main__":
    main()
