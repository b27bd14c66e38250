"""Benchmark: where a ShapesWorld closed-form style removal spends its time, against ESD's per-edit budget.

Run: ``python bench/edit_profile.py [--repeats 20] [--threads 1] [--esd] [--templates 13|4|2]``

The request and settings are ``bench/edit_speed.py``'s (remove "pica stro", the other styles and the suite's
plain captions preserved, LocoEdit on all 16 layers with ``positions="subject+eos"``, ``target_mode="template"``),
with the preservation statistics computed once and reused, i.e. the per-edit cost of every further edit.
Printed, best of ``--repeats`` after a warm-up, each timed alone:

* the whole ``compute_edit`` with the statistics as ``preservation_statistics`` returns them (the preserved Gram
  and the target prompts encoded: every further removal to the same anchor), and with the Gram only (the target
  encoded by the edit: ``edit_speed.py``'s "gram s" column);
* the text-encoder pass over the concept prompts, and over the target prompts, at the pipeline's padded length
  — which ``positions="subject+eos"`` needs, because cross-attention reads the EOS and padding slots and a
  causal encoder fills each from the whole prefix;
* the tokenizer work of the subject lookup, and the shared ridge factorization plus applying it to every
  projection.

With ``--esd`` the tuned ESD-x recipe of ``edit_speed.py`` is run too (until the style's held-out detection rate
is as low as after the edit), and each part is printed as a share of the ≥ 1000× budget, ESD seconds / 1000.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

from diffloc.editing import compute_edit, preservation_statistics
from diffloc.editing.closed_form import SharedInputRidge
from diffloc.editing.locoedit import _key_value_states, projection_linear, projection_sites
from diffloc.editing.requests import LOCOEDIT_TEMPLATES
from diffloc.editing.states import subject_positions
from diffloc.models.registry import load, shapesworld_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--style", default="pica stro")
    parser.add_argument(
        "--templates", default="13", choices=("13", "4", "2"),
        help="edit template set, by size, of edit_efficacy.style_template_sets (default 13)",
    )  # fmt: skip
    parser.add_argument("--esd", action="store_true", help="also run the tuned ESD-x recipe for the budget")
    parser.add_argument("--seeds", type=int, default=4, help="with --esd: seeds per held-out prompt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (shapesworld_dir() / "model_index.json").is_file():
        print("skipped: ShapesWorld model not shipped")
        return
    from edit_efficacy import REMOVAL_CONFIGS, removal_request, style_template_sets
    from engine_batching import best_of

    model = load("shapesworld")
    request = removal_request(args.style, style_template_sets()[args.templates])
    loco = REMOVAL_CONFIGS["locoedit"]
    stats = preservation_statistics(model, request, method="locoedit", config=loco)
    gram_only = replace(stats, targets={})
    pairs = [p for p in request.pairs(LOCOEDIT_TEMPLATES) if not p.preserve]
    concept_prompts = list(dict.fromkeys(p.key_prompt for p in pairs))
    target_prompts = list(dict.fromkeys(p.value_prompt for p in pairs))
    keys, targets = _key_value_states(model, pairs, loco)
    projections = projection_sites(model, loco.sites)
    weights = [projection_linear(model, p).weight.detach() for p in projections]

    def solve() -> None:
        ridge = SharedInputRidge(keys, targets, loco.lam_k, preserved=stats.grams["context"], preserve_weight=10.0)
        for w0 in weights:
            ridge.apply(w0)

    def encoder(prompts: list[str]):
        def encode() -> None:
            with torch.no_grad():
                model.adapter.encode(model.pipe, prompts)

        return encode

    quick = REMOVAL_CONFIGS["quickfix"]
    quick_stats = preservation_statistics(model, request, method="quickfix", config=quick)

    def locoedit() -> None:
        compute_edit(model, request, method="locoedit", config=loco, preserved=stats)

    def locoedit_gram_only() -> None:
        compute_edit(model, request, method="locoedit", config=loco, preserved=gram_only)

    def quickfix() -> None:
        compute_edit(model, request, method="quickfix", config=quick, preserved=quick_stats)

    def lookup() -> None:  # what the edit looks up once the target is kept: the concept's positions
        subject_positions(model, [p.key_prompt for p in pairs], [p.key_subject for p in pairs])

    width = model.pipe.tokenizer.model_max_length
    parts = [
        ("LocoEdit, whole compute_edit", locoedit),
        (f"  text encoder: {len(concept_prompts)} concept prompts x {width} positions", encoder(concept_prompts)),
        ("  subject lookup (tokenizers)", lookup),
        (f"  ridge factorization + {len(weights)} projections", solve),
        ("LocoEdit, target encoded by the edit (Gram reused)", locoedit_gram_only),
        (f"  text encoder: {len(target_prompts)} target prompts x {width} positions", encoder(target_prompts)),
        ("Diff-QuickFix, whole compute_edit", quickfix),
    ]
    seconds = {}
    for label, fn in parts:
        fn()  # warm-up: allocator, caches
        seconds[label] = best_of(fn, args.repeats)
    budget = None
    if args.esd:
        budget = esd_budget(model, request, loco, stats, args.style, args.seeds)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} after a warm-up")
    print(
        f"removing {args.style!r} ({len(request.templates)} templates); "
        f"preservation statistics reused ({stats.rows} preserved rows, {len(stats.targets)} target prompts)"
    )
    header = f"{'part':<52} {'ms':>8}"
    if budget is not None:
        header += f" {'of ESD/1000':>12}"
    print(header)
    for label, value in seconds.items():
        line = f"{label:<52} {1000 * value:8.1f}"
        if budget is not None:
            line += f" {value / budget:11.0%}"
        print(line)
    if budget is not None:
        print(f"budget for >= 1000x: tuned ESD-x seconds / 1000 = {1000 * budget:.1f} ms")


def esd_budget(model, request, loco, stats, style: str, seeds: int) -> float:
    """Tuned ESD-x training seconds / 1000, run to LocoEdit's after-edit detection rate."""
    from edit_efficacy import rates
    from edit_speed import esd_recipes
    from esd_baseline import kv_snapshot, run_esd

    from diffloc.engine.generate import GenerationConfig
    from diffloc.world import captions
    from diffloc.world.model import GUIDANCE

    group = f"style:{style}"
    prompts = [p for p in captions.heldout_prompts() if p.group == group]
    generation = GenerationConfig(steps=20, guidance=GUIDANCE)
    edit = compute_edit(model, request, method="locoedit", config=loco, preserved=stats)
    with edit.applied(model):
        after = rates(model, prompts, seeds, generation)[group]
    _, tuned = esd_recipes(2000)[1]
    restore = kv_snapshot(model)
    try:
        esd = run_esd(
            model,
            [t.format(style) for t in request.templates],
            config=tuned,
            generation=generation,
            done=lambda: rates(model, prompts, seeds, generation)[group] <= after,
        )
    finally:
        restore()
    print(f"tuned ESD-x: {esd.steps} steps, {esd.train_seconds:.1f} s to reach rate {after:.2f}")
    return esd.train_seconds / 1000


if __name__ == "__main__":
    main()
