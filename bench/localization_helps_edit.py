"""Does localization help the edit? LocoEdit on LocoGen's window vs random windows of the same size vs all layers.

Run: ``python bench/localization_helps_edit.py`` (about 25 minutes on one thread; resumable: finished arms are
kept under ``--cache``, default ``runs/localization_helps_edit``) writes ``docs/data/localization_helps_edit.json``
and prints the Markdown table that ``docs/findings.md`` quotes; ``--table`` prints it from the JSON alone.

For every case of the shipped ShapesWorld suite (style removal pica stro, object removal flumox, fact update
trelania → quelland):

1. LocoGen's window, found as ``diffloc demo`` finds it (the case's first two prompts × seeds 0, 1; windows of
   2 layers, widened to 4, 8, 16 until swapping one controls the attribute);
2. LocoEdit exactly as the demo configures it — ``positions="subject+eos"``, ``target_mode="template"``,
   λ_k = λ_v = 0.01, the case's own templates, its preservation set (other concepts of its kind and the plain
   captions) at ``preserve_weight=10`` — but on a fixed window, not widened: (a) LocoGen's window, (b) up to
   ``--random`` other contiguous windows of the same size, drawn with a fixed seed per case, (c) all 16
   cross-attention layers;
3. each edit evaluated with ``diffloc.eval.suite.evaluate`` on the suite's seeds (0–3): the concept (for the
   update, the new flag) on the edit's own prompts (efficacy) and on held-out prompts (generalization), the
   neighbours whose own attribute keeps ≥ 0.9 of its rate (specificity), the pixel change on unrelated prompts.

Every number is deterministic (fixed seeds, one thread), so rerunning the command reproduces the JSON exactly.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shapesworld_suite import (
    World,
    arm_summary,
    cached,
    fmt,
    load_world,
    locoedit_request,
    locogen_window,
    short_window,
)

from diffloc.atomic import write_json_atomic
from diffloc.editing import LocoEditConfig, compute_edit, preservation_statistics
from diffloc.eval.measure import measure
from diffloc.eval.suite import ConceptCase, evaluate
from diffloc.tracing.locogen import xattn_layers
from diffloc.workflows.demo import DemoConfig

OUT = Path("docs/data/localization_helps_edit.json")
RANDOM_WINDOWS = 5
#: per case, the seed of its random windows is this plus the case's index in the suite
RANDOM_SEED = 0
METRICS = ("efficacy", "generalization")


def random_windows(layers: list[str], chosen: list[str], count: int, seed: int) -> list[list[str]]:
    """Up to ``count`` contiguous windows of ``len(chosen)`` layers other than ``chosen``, in layer order."""
    size = len(chosen)
    others = [layers[i : i + size] for i in range(len(layers) - size + 1) if layers[i : i + size] != chosen]
    picked = random.Random(seed).sample(others, min(count, len(others)))
    return sorted(picked, key=lambda w: layers.index(w[0]))


def locoedit_config(sites: Any) -> LocoEditConfig:
    """LocoEdit as the demo configures it, on ``sites``."""
    demo = DemoConfig()
    return LocoEditConfig(sites=sites, positions=demo.locoedit_positions, target_mode=demo.locoedit_target_mode,
                          preserve_weight=demo.preserve_weight)  # fmt: skip


def run_case(world: World, case: ConceptCase, index: int, before: Any, cache: Path, count: int) -> dict[str, Any]:
    """Every arm of one case."""
    window = locogen_window(world, case)
    layers = xattn_layers(world.model)
    arms = [("locogen", list(window.best_sites))]
    arms += [("random", w) for w in random_windows(layers, list(window.best_sites), count, RANDOM_SEED + index)]
    arms.append(("all", layers))
    request = locoedit_request(case)
    stats: list[Any] = []  # the preservation statistics, computed on first need and shared by every arm

    def evaluated(sites: list[str]) -> dict[str, Any]:
        if not stats:
            stats.append(
                preservation_statistics(world.model, request, method="locoedit", config=locoedit_config(sites))
            )
        edit = compute_edit(world.model, request, method="locoedit", config=locoedit_config(sites), preserved=stats[0])
        report = evaluate(world.model, edit, world.suite, scorer=world.scorer, cases=[case.name], before=before)
        return arm_summary(report, case)

    rows = []
    for arm, sites in arms:
        key = {"case": case.name, "sites": sites, "request": request.to_dict(), "weights": world.model.fingerprint(),
               "config": repr(locoedit_config(sites)), "suite": repr(world.suite)}  # fmt: skip
        path = cache / "arms" / case.name / f"{short_window(sites)}.json"
        result = cached(path, key, lambda sites=sites: evaluated(sites))
        rows.append({"arm": arm, "window": sites, **result})
        print(f"  {case.name} {arm:8s} {short_window(sites):12s} own {fmt(result['efficacy']['after'])} held-out "
              f"{fmt(result['generalization']['after'])} kept {result['neighbours_kept']}/{result['neighbours']}",
              file=sys.stderr, flush=True)  # fmt: skip
    randoms = [r for r in rows if r["arm"] == "random"]
    return {
        "kind": case.kind, "mode": case.mode, "concept": case.concept, "target": request.targets[0],
        "locogen": {"window": list(window.best_sites), "best_score": window.best_score,
                    "original_score": window.original_score, "search": window.meta["window_search"]["tried"]},
        "window_size": len(window.best_sites),
        "arms": rows,
        "random": _spread(randoms) if randoms else None,
    }  # fmt: skip


def _spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and min–max over the random windows of each measured quantity."""

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values)}

    out: dict[str, Any] = {"windows": len(rows)}
    for metric in METRICS:
        out[metric] = stats([r[metric]["after"] for r in rows])
    out["neighbours_kept"] = stats([float(r["neighbours_kept"]) for r in rows])
    out["fidelity"] = stats([r["fidelity"] for r in rows])
    return out


def table(data: dict[str, Any]) -> str:
    """The Markdown table of a result file: one row per arm (random windows: mean and min–max)."""
    lines = [
        "| case | edited window | own prompts: before → after | held-out: before → after | neighbours kept "
        "(≥ 0.9) | pixel Δ unrelated |",
        "|---|---|---|---|---|---|",
    ]
    for name, case in data["cases"].items():
        rows = {r["arm"]: r for r in case["arms"]}
        first = case["arms"][0]
        n = first["neighbours"]
        for arm in ("locogen", "random", "all"):
            if arm == "random":
                spread = case["random"]
                if spread is None:
                    lines.append(
                        f"| {name} | random windows of {case['window_size']}: none (LocoGen's is all) | | | | |"
                    )
                    continue
                cells = [f"{fmt(first[m]['before'])} → {_range(spread[m])}" for m in METRICS]
                kept, fid = _range(spread["neighbours_kept"], 1), _range(spread["fidelity"], 3)
                label = f"{spread['windows']} random windows of {case['window_size']}: mean (min–max)"
                lines.append(f"| {name} | {label} | {cells[0]} | {cells[1]} | {kept} of {n} | {fid} |")
                continue
            row = rows[arm]
            label = f"LocoGen's `{short_window(row['window'])}`" if arm == "locogen" else "all 16 layers"
            cells = [f"{fmt(row[m]['before'])} → {fmt(row[m]['after'])}" for m in METRICS]
            lines.append(f"| {name} | {label} | {cells[0]} | {cells[1]} | {row['neighbours_kept']} of {n} | "
                         f"{row['fidelity']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def _range(spread: dict[str, float], digits: int = 2) -> str:
    return f"{spread['mean']:.{digits}f} ({spread['min']:.{digits}f}–{spread['max']:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"result JSON (default {OUT})")
    parser.add_argument("--cache", type=Path, default=Path("runs/localization_helps_edit"),
                        help="finished arms, reused on rerun")  # fmt: skip
    parser.add_argument("--random", type=int, default=RANDOM_WINDOWS, help="random windows per case (default 5)")
    parser.add_argument("--case", action="append", default=None, help="only these suite cases (repeatable)")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit (no model run)")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    start = time.perf_counter()
    world = load_world()
    before = measure(world.model, world.suite, world.scorer, list(world.suite.cases))
    chosen = [(i, c) for i, c in enumerate(world.suite.cases) if not args.case or c.name in args.case]
    cases = {c.name: run_case(world, c, i, before, args.cache, args.random) for i, c in chosen}
    data = {
        "command": "python bench/localization_helps_edit.py",
        "model": world.model.source,
        "weights": world.model.fingerprint(),
        "scorer": world.scorer.name,
        "suite": {"seeds": list(world.suite.seeds), "steps": world.suite.steps, "guidance": world.suite.guidance},
        "locoedit": {k: v for k, v in asdict(locoedit_config("unet.xattn.0")).items() if k != "sites"},
        "random_windows": args.random,
        "random_seed": RANDOM_SEED,
        "cases": cases,
    }
    write_json_atomic(args.out, data)
    print(table(data))
    print(f"\nwrote {args.out}; wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
