"""Editing acceptance on ShapesWorld: style removal (Diff-QuickFix, LocoEdit) and a fact update (LocoEdit).

Run: ``python bench/edit_efficacy.py [--seeds 4] [--styles "van goo,mo nettle" | all] [--sites locogen]
[--out runs/edit_efficacy.json] [--preserve --preserve-weight 10] [--positions subject+eos --target-mode
template]`` (one style, the best drawn, by default: each removed style costs two held-out evaluations,
~1-2 min per seed here).

Measured with the shipped detectors on the *held-out* prompts of ``diffloc.world.captions.heldout_prompts``
(templates and attribute combinations the model never saw), every prompt × ``--seeds`` seeds:

* style removal: for each named style and each method, the edit maps the artist ("pica stro") to the anchor
  style phrase ("a plain style"). Reported: the style's detection rate before/after (drop in points; the bar
  is >= 80), and the ratio after/before of the detection rate of plain prompts (all four attributes right)
  and of every other named style (the bar is >= 0.9 each);
* fact update (LocoEdit): the country ("marnovia") is mapped to another country ("trelania"); reported: how
  often the held-out prompts of the old fact now show the new fact's flag (the bar is >= 0.8; the other facts
  must keep >= 0.9 of their rates), and the same on the training phrasings the edit was computed on (efficacy);
  both × ``--fact-seeds``. The window *size* is chosen on a development pair (``--dev-fact quelland
  --dev-new-fact marnovia``): around the development pair's own LocoGen window, the smallest size in (2, 4,
  8, 16) whose edit passes on the development fact's held-out prompt. The test pair's LocoGen window is
  widened to that size (``fact_update``, judged). Beside it, not judged: the leave-one-template-out widening
  below (``fact_update_template_check``) and every cross-attention layer (``fact_update_all_layers``).

LocoEdit's sites: each concept's LocoGen window (the smallest whose prompt *swap* controls the concept), widened by
``diffloc.workflows.widening.locoedit_search`` until the *edit* generalizes: computed without one edit template and
checked on the concept in that template, it must move the concept 90% of the way (averaged over 8 such folds;
seeds 100 and 101; no held-out prompt is used); ``--no-widen`` edits the LocoGen window as found.

Edit prompts use ShapesWorld's *training* phrasings (the from-scratch text encoder knows no other words):
the concept alone plus the training style/fact templates filled with a few shape/colour pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

from diffloc.atomic import write_json_atomic
from diffloc.editing import Edit, EditRequest, LocoEditConfig, QuickFixConfig, compute_edit
from diffloc.editing.locoedit import edited_layers
from diffloc.engine.generate import GenerationConfig, generate
from diffloc.models.base import LoadedModel
from diffloc.models.registry import load, shapesworld_dir
from diffloc.world.model import GUIDANCE

#: (shape, colour) pairs used to fill the training templates of the edit prompts
FILL_PAIRS = (("circle", "red"), ("square", "blue"), ("triangle", "green"), ("star", "yellow"))


def preserve_captions() -> tuple[str, ...]:
    """Plain captions in training phrasings kept by ``--preserve``: the shipped suite's (none is a held-out
    prompt, so the measured specificity is not the preservation itself)."""
    from diffloc.eval.suite import load_suite, shipped_suite_path

    return load_suite(shipped_suite_path("shapesworld")).cases[0].preserve_prompts


def style_templates() -> tuple[str, ...]:
    """Edit templates for an artist: the artist alone and the training style templates, filled."""
    from diffloc.world import vocab

    out = ["{}"]
    for template in vocab.STYLE_TEMPLATES_TRAIN:
        for shape, colour in FILL_PAIRS:
            out.append(template.format(colour=colour, shape=shape, artist="{}"))
    return tuple(out)


def style_template_sets() -> dict[str, tuple[str, ...]]:
    """Edit template sets of decreasing size, keyed by their size: the 13 of :func:`style_templates`; the artist
    alone and each training phrasing once (4, one shape/colour fill each); the artist alone and the first
    phrasing (2).

    ``bench/edit_templates.py`` and ``bench/edit_speed.py`` compare them: a LocoEdit with
    ``positions="subject+eos"`` runs every template through the text encoder at the padded length, so the
    template count sets its per-edit time.
    """
    from diffloc.world import vocab

    each = tuple(
        t.format(colour=colour, shape=shape, artist="{}")
        for t, (shape, colour) in zip(vocab.STYLE_TEMPLATES_TRAIN, FILL_PAIRS, strict=False)
    )
    return {str(len(v)): v for v in (style_templates(), ("{}", *each), ("{}", each[0]))}


#: The preserved style-removal recipe the speed benches time (``edit_speed.py``, ``edit_profile.py``,
#: ``edit_templates.py``): this bench's ``--preserve --preserve-weight 10 --positions subject+eos --target-mode
#: template``, LocoEdit on all 16 cross-attention layers.
REMOVAL_CONFIGS = {
    "quickfix": QuickFixConfig(preserve_weight=10.0),
    "locoedit": LocoEditConfig(
        sites="unet.xattn.*", positions="subject+eos", target_mode="template", preserve_weight=10.0
    ),
}


def removal_request(style: str, templates: tuple[str, ...] | None = None) -> EditRequest:
    """The preserved removal of ``style``: mapped to the anchor style in ``templates`` (default
    :func:`style_templates`), the other styles and :func:`preserve_captions` kept."""
    from diffloc.world import vocab

    return EditRequest(
        concepts=(style,), targets=(vocab.STYLE_ANCHOR,), templates=templates or style_templates(),
        default_templates=False, preserve=tuple(s for s in vocab.STYLES if s != style),
        preserve_prompts=preserve_captions(),
    )  # fmt: skip


def fact_templates() -> tuple[str, ...]:
    """Edit templates for a country: the country alone and the training fact templates."""
    from diffloc.world import vocab

    return ("{}", *(t.replace("{country}", "{}") for t in vocab.FACT_TEMPLATES_TRAIN))


def readings(model: LoadedModel, prompts, seeds: int, config: GenerationConfig, batch: int = 32):
    """Every (prompt, seed) image generated in batches and read back: yields ``(prompt, seed, predicted labels)``."""
    from diffloc.world.detectors import detect, predicted_labels

    jobs = [(p, s) for p in prompts for s in range(seeds)]
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        images = generate(model, [p.prompt for p, _ in chunk], seeds=[s for _, s in chunk], config=config)
        for (prompt, seed), predicted in zip(chunk, predicted_labels(detect(images)), strict=True):
            yield prompt, seed, predicted


def rates(model: LoadedModel, prompts, seeds: int, config: GenerationConfig, batch: int = 32) -> dict[str, float]:
    """Detection rate per prompt group: the share of images whose predicted labels all match."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for prompt, _, predicted in readings(model, prompts, seeds, config, batch):
        hits[prompt.group].append(all(predicted[k] == v for k, v in prompt.labels.items()))
    return {group: sum(v) / len(v) for group, v in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapesworld")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--fact-seeds", type=int, default=16, help="seeds per fact prompt (few held-out prompts)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--guidance", type=float, default=GUIDANCE, help=f"CFG scale (default {GUIDANCE}, as diffloc world eval)"
    )
    parser.add_argument("--styles", default="pica stro", help="comma-separated artists, or 'all' (default: pica stro)")
    parser.add_argument(
        "--sites", default="locogen",
        help="LocoEdit sites (names/globs), or 'locogen' (default): each concept's best LocoGen window of 2",
    )  # fmt: skip
    parser.add_argument(
        "--no-widen", action="store_true",
        help="LocoEdit the LocoGen window as found, without widening it until the edit generalizes",
    )  # fmt: skip
    parser.add_argument("--fact", default="marnovia", help="not zorbia: the model draws it for unknown countries")
    parser.add_argument("--new-fact", default="trelania")
    parser.add_argument("--dev-fact", default="quelland", help="development pair that chooses the window size")
    parser.add_argument("--dev-new-fact", default="marnovia")
    parser.add_argument("--no-eos", action="store_true", help="Diff-QuickFix: map only the last subject token")
    parser.add_argument("--lam", type=float, default=0.01, help="ridge strength of every solve")
    parser.add_argument(
        "--preserve", action="store_true",
        help="preserve, in the same solve, the other named concepts of the kind and the shipped "
        "suite's plain training captions (none of them evaluated) — UCE-style preservation",
    )  # fmt: skip
    parser.add_argument("--preserve-weight", type=float, default=1.0, help="weight of the preserved pairs")
    parser.add_argument(
        "--fact-preserve", choices=("same", "on", "off"), default="same",
        help="preservation in the fact update: as --preserve (default), or on/off for the fact only",
    )  # fmt: skip
    parser.add_argument("--positions", default="subject", choices=("subject", "subject+eos"), help="LocoEdit keys")
    parser.add_argument("--target-mode", default="bare", choices=("bare", "template"), help="LocoEdit values")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/edit_efficacy.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "shapesworld" and not (shapesworld_dir() / "model_index.json").is_file():
        print("skipped: ShapesWorld model not shipped")
        return
    from diffloc.world import captions, vocab
    from diffloc.world.detectors import shipped_detector

    try:
        shipped_detector()
    except Exception as exc:  # the detector file is shipped separately from the pipeline
        print(f"skipped: ShapesWorld detectors not available ({exc})")
        return
    model = load(args.model)
    config = GenerationConfig(steps=args.steps, guidance=args.guidance)
    heldout = captions.heldout_prompts()
    scored = [p for p in heldout if p.group == "plain" or p.group.startswith("style:")]
    styles = list(vocab.STYLES) if args.styles == "all" else [s.strip() for s in args.styles.split(",") if s.strip()]
    report: dict = {"command": "python bench/edit_efficacy.py " + " ".join(sys.argv[1:]), "seeds": args.seeds}
    start = time.perf_counter()
    base = rates(model, scored, args.seeds, config)
    report["unedited"] = base
    if min(base.values()) < 0.5:
        print("warning: some unedited detection rates are below 0.5; the model is not trained enough to judge edits")
    print(f"unedited ({time.perf_counter() - start:.0f} s): " + ", ".join(f"{g} {r:.2f}" for g, r in base.items()))
    quickfix = QuickFixConfig(lam=args.lam, use_eos=not args.no_eos, preserve_weight=args.preserve_weight)

    def loco(sites: object) -> LocoEditConfig:
        return LocoEditConfig(
            sites=sites,
            lam_k=args.lam,
            lam_v=args.lam,
            positions=args.positions,
            target_mode=args.target_mode,
            preserve_weight=args.preserve_weight,
        )

    def sites_for(prompt: str, target_prompt: str, attribute: str, mode: str) -> object:
        """``--sites``, or with ``locogen`` the smallest LocoGen window (2, 4, 8, 16) that controls the concept."""
        if args.sites != "locogen":
            return args.sites
        from diffloc.eval.scorers import scorer_for
        from diffloc.tracing.config import LocoGenConfig
        from diffloc.tracing.locogen import locogen_search

        sweep = LocoGenConfig(
            seeds=(0, 1), window=2, mode=mode, steps=args.steps, guidance=args.guidance, max_batch=32, bootstrap=0
        )
        found = locogen_search(
            model, [prompt], target_prompt, attribute, scorer=scorer_for("shapesworld", None), config=sweep
        )
        print(f"LocoGen window for {attribute!r}: {', '.join(found.best_sites)} (score {found.best_score:.2f})")
        return found.best_sites

    def widened(request: EditRequest, loco_config: LocoEditConfig, attribute: str, mode: str) -> Edit:
        """LocoEdit on the LocoGen window widened until the edit generalizes (``--no-widen``: as found)."""
        if args.no_widen:
            return compute_edit(model, request, method="locoedit", config=loco_config)
        from diffloc.eval.scorers import scorer_for
        from diffloc.workflows.widening import WidenConfig, locoedit_search

        edit = locoedit_search(
            model, request, loco_config, attribute=attribute, mode=mode, scorer=scorer_for("shapesworld", None),
            search=WidenConfig(generation=config),
        )  # fmt: skip
        found = edit.stats["window_search"]
        steps = ", ".join(f"{len(r['window'])} layers {r['score']:.2f}" for r in found["tried"])
        print(
            f"LocoEdit widening for {attribute!r} (template left out; unedited {found['unedited_score']:.2f}): {steps}"
        )
        return edit

    report["removal"] = {}
    print(
        f"{'method':<9} {'style':<12} {'before':>6} {'after':>6} {'drop pts':>8} {'plain kept':>10} "
        f"{'others kept (min)':>17}"
    )
    for style in styles:
        others = tuple(s for s in vocab.STYLES if s != style) if args.preserve else ()
        request = EditRequest(
            concepts=(style,), targets=(vocab.STYLE_ANCHOR,), templates=style_templates(), default_templates=False,
            preserve=others, preserve_prompts=preserve_captions() if args.preserve else (),
        )  # fmt: skip
        sites = sites_for(
            f"a red circle in the style of {style}", f"a red circle in {vocab.STYLE_ANCHOR}",
            f"in the style of {style}", "remove",
        )  # fmt: skip
        for method, method_config in (("quickfix", quickfix), ("locoedit", loco(sites))):
            if method == "locoedit":
                edit = widened(request, method_config, f"in the style of {style}", "remove")
            else:
                edit = compute_edit(model, request, method=method, config=method_config)
            with edit.applied(model):
                after = rates(model, scored, args.seeds, config)
            group = f"style:{style}"
            others = {g: after[g] / base[g] if base[g] else float("nan") for g in base if g not in (group, "plain")}
            row = {
                "sites": list(edit.stats["sites"]),
                "window_search": edit.stats.get("window_search"),
                "before": base[group],
                "after": after[group],
                "drop_points": 100 * (base[group] - after[group]),
                "plain_kept": after["plain"] / base["plain"] if base["plain"] else float("nan"),
                "others_kept": others,
                "edit_seconds": edit.stats.get("seconds"),
                "passed": None,
            }
            row["passed"] = (
                row["drop_points"] >= 80 and row["plain_kept"] >= 0.9 and all(v >= 0.9 for v in others.values())
            )
            report["removal"][f"{method}:{style}"] = row
            print(
                f"{method:<9} {style:<12} {row['before']:6.2f} {row['after']:6.2f} {row['drop_points']:8.1f} "
                f"{row['plain_kept']:10.2f} {min(others.values(), default=float('nan')):17.2f}"
                f"  {'PASS' if row['passed'] else 'FAIL'}"
            )
    # Fact update. The LocoGen window where a prompt swap moves a fact is narrow, and the leave-one-template-out
    # check cannot see past the fact's three training phrasings, so the window *size* of the fact update is
    # chosen on a development pair (its held-out prompt; never the test fact's) and then used on the test pair.
    fact_preserve = args.preserve if args.fact_preserve == "same" else args.fact_preserve == "on"

    def fact_case(old: str, new: str) -> tuple[str, str, list, EditRequest]:
        """(group of the update, group of the edit phrasings, prompts to score, edit request) of old -> new."""
        key = f"update:{old}->{new}"
        prompts = [
            captions.EvalPrompt(prompt=p.prompt, group=key, labels={"fact": new})
            for p in heldout
            if p.group == f"fact:{old}"
        ] + [p for p in heldout if p.group.startswith("fact:") and p.group != f"fact:{old}"]
        # efficacy: the training phrasings the edit was computed on (the bar is judged on the held-out one)
        trained = f"{key}:edit-phrasings"
        prompts += [
            captions.EvalPrompt(prompt=t.format(country=old), group=trained, labels={"fact": new})
            for t in vocab.FACT_TEMPLATES_TRAIN
        ]
        request = EditRequest(
            concepts=(old,), targets=(new,), templates=fact_templates(), default_templates=False,
            preserve=tuple(f for f in vocab.FACTS if f != old) if fact_preserve else (),
            preserve_prompts=preserve_captions() if fact_preserve else (),
        )  # fmt: skip
        return key, trained, prompts, request

    def fact_row(edit: Edit, case: tuple[str, str, list, EditRequest], new: str, before: dict[str, float]) -> dict:
        key, trained, prompts, _ = case
        with edit.applied(model):
            after = rates(model, prompts, args.fact_seeds, config)
        kept = {g: after[g] / before[g] if before[g] else float("nan") for g in before if g not in (key, trained)}
        layers = len(edited_layers(edit.stats["sites"]))
        row = {
            "sites": list(edit.stats["sites"]), "layers": layers, "window_search": edit.stats.get("window_search"),
            "preserve": fact_preserve, "prompts": [p.prompt for p in prompts if p.group == key],
            "before": before[key], "after": after[key], "other_facts_before": {g: before[g] for g in kept},
            "other_facts_kept": kept, "new_fact_own_rate": before.get(f"fact:{new}", float("nan")),
            "edit_phrasings_before": before[trained], "edit_phrasings_after": after[trained],
            "edit_seconds": edit.stats.get("seconds"),
            "passed": after[key] >= 0.8 and min(kept.values(), default=1.0) >= 0.9,
        }  # fmt: skip
        print(
            f"fact update {key} ({layers} layers): new fact shown {before[key]:.2f} -> {after[key]:.2f} (bar >= 0.80); "
            f"other facts kept (min) {min(kept.values(), default=float('nan')):.2f}; unedited {new} on its own "
            f"held-out prompts {row['new_fact_own_rate']:.2f}; on the {len(vocab.FACT_TEMPLATES_TRAIN)} edit "
            f"phrasings {before[trained]:.2f} -> {after[trained]:.2f}  {'PASS' if row['passed'] else 'FAIL'}"
        )
        return row

    from diffloc.tracing.locogen import xattn_layers
    from diffloc.workflows.widening import WidenConfig, widen_window

    layers_all = xattn_layers(model)

    def fact_window(old: str, new: str) -> tuple[str, ...]:
        return tuple(sites_for(f"the flag of {old}", f"the flag of {new}", f"the flag of {new}", "update"))

    # 1. development pair: the smallest size (around its own LocoGen window) whose edit passes on its held-out prompt
    dev_case = fact_case(args.dev_fact, args.dev_new_fact)
    dev_key, _, dev_prompts, dev_request = dev_case
    dev_before = rates(model, dev_prompts, args.fact_seeds, config)
    dev_window = fact_window(args.dev_fact, args.dev_new_fact)
    sizes = [n for n in WidenConfig().sizes if len(dev_window) <= n <= len(layers_all)] or [len(layers_all)]
    report["fact_dev"] = {"pair": dev_key, "locogen_window": list(dev_window), "sizes": {}}
    chosen = sizes[-1]
    for size in sizes:
        sites = widen_window(dev_window, size, layers_all)
        row = fact_row(compute_edit(model, dev_request, method="locoedit", config=loco(sites)),
                       dev_case, args.dev_new_fact, dev_before)  # fmt: skip
        report["fact_dev"]["sizes"][str(size)] = row
        if row["passed"]:
            chosen = size
            break
    report["fact_dev"]["chosen_size"] = chosen
    print(f"fact update window size chosen on the development pair {dev_key}: {chosen} layers")
    # 2. test pair (the bar): its own LocoGen window widened to the chosen size
    case = fact_case(args.fact, args.new_fact)
    key, _, fact_prompts, request = case
    before = rates(model, fact_prompts, args.fact_seeds, config)
    window = fact_window(args.fact, args.new_fact)
    judged = compute_edit(model, request, method="locoedit", config=loco(widen_window(window, chosen, layers_all)))
    report["fact_update"] = {"locogen_window": list(window), **fact_row(judged, case, args.new_fact, before)}
    # for comparison (not judged): the leave-one-template-out widening, and every layer
    report["fact_update_template_check"] = fact_row(
        widened(request, loco(window), f"the flag of {args.new_fact}", "update"), case, args.new_fact, before
    )
    report["fact_update_all_layers"] = fact_row(
        compute_edit(model, request, method="locoedit", config=loco("unet.xattn.*")), case, args.new_fact, before
    )
    report["seconds"] = time.perf_counter() - start
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    print(
        json.dumps({**{k: v.get("passed") for k, v in report["removal"].items()}, key: report["fact_update"]["passed"]})
    )


if __name__ == "__main__":
    main()
