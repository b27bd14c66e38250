"""Rewrite the measured section of the ShapesWorld model card from ``eval.json``.

The card's "Status" section (accuracy tables and generation time) is generated, never typed, so its numbers
are the ones ``diffloc world eval`` wrote::

    diffloc world eval --out src/diffloc/assets/shapesworld/eval.json
    python scripts/update_model_card.py src/diffloc/assets/shapesworld
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

START = "## Status"
END = "## The world"


def _threads(ev: dict) -> str:
    """``"1 thread"`` / ``"2 threads"`` as the evaluation recorded them (its default, 2, where it did not)."""
    n = int(ev.get("threads", 2))
    return f"{n} thread" + ("s" if n != 1 else "")


def _misses(count: dict | None) -> str:
    """``"style=plain ×10 of 24 (seeds 2 ×3, 7 ×3)"`` for one concept's ``concept_counts`` entry ("—" when there
    is none; the seeds only where the eval recorded them)."""
    if not count:
        return "—"
    if not count["misses"]:
        return f"none of {count['images']}"
    wrong = ", ".join(f"{reading} ×{n}" for reading, n in count["misses"].items())
    seeds = count.get("missed_seeds")  # optional: eval.json files may lack it
    by_seed = f" (seeds {', '.join(f'{s} ×{n}' for s, n in seeds.items())})" if seeds else ""
    return f"{wrong} of {count['images']}{by_seed}"


def status_section(ev: dict) -> str:
    """The card's status section for one ``eval.json``."""
    cfg = ev["config"]
    by_detector = ev.get("attributes_by_detector", {})  # optional: eval.json files may lack it
    attributes = "\n".join(
        [f"| {name} | {rate:.1%} | ≥ {ev['thresholds'][name]:.0%} |" for name, rate in ev["attributes"].items()]
        + [f"| {name}, read by the detectors' head | {rate:.1%} | not scored |" for name, rate in by_detector.items()]
    )
    reading = (
        "\nThe background is read from the image's corners (`diffloc.world.pixels`: the world colour nearest to "
        "their mean),\nwhich every render fixes; the detectors' background head is shown beside it.\n"
        if by_detector
        else ""
    )
    counts = ev.get("concept_counts", {})  # optional: eval.json files may lack it
    concepts = "\n".join(
        f"| {name} | {rate:.1%} | ≥ {ev['thresholds']['concept']:.0%} | {_misses(counts.get(name))} |"
        for name, rate in ev["concepts"].items()
    )
    verdict = "meets" if ev["passed"] else "DOES NOT YET MEET"
    return f"""{START}: {verdict} the acceptance bar

Measured by `{ev["command"]}` ({ev["n_prompts"]} held-out prompts × {cfg["seeds"]} seeds =
{ev["n_images"]} images, {cfg["steps"]} DDIM steps, guidance {cfg["guidance"]}), full JSON in `eval.json`:

| attribute (plain + object prompts) | accuracy | bar |
|---|---|---|
{attributes}
{reading}
| named concept (held-out template) | accuracy | bar | misses read as |
|---|---|---|---|
{concepts}

One 20-step generation (batch 1, with CFG): **{ev["seconds_per_image_20_steps"]:.2f} s** on {_threads(ev)} of this
2-core CPU (best of 3 after warm-up; batched: {ev["seconds_per_image_batched"]:.2f} s per image).

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the shipped model directory (README.md + eval.json)")
    args = parser.parse_args()
    card_path = args.model_dir / "README.md"
    card = card_path.read_text(encoding="utf-8")
    ev = json.loads((args.model_dir / "eval.json").read_text(encoding="utf-8"))
    start, end = card.index(START), card.index(END)
    card_path.write_text(card[:start] + status_section(ev) + card[end:], encoding="utf-8")
    print(f"updated {card_path}")


if __name__ == "__main__":
    main()
