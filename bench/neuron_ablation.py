"""Does neuron ablation remove a ShapesWorld concept? The weight edit and the paper's mode, side by side.

Run: ``python bench/neuron_ablation.py`` (about 30 minutes on one thread; resumable: finished rows are kept under
``--cache``, default ``runs/neuron_ablation``) writes ``docs/data/neuron_ablation.json`` and prints the Markdown
table that ``docs/findings.md`` quotes; ``--table`` prints it from the JSON alone.

For the suite's two removal cases (style pica stro → "a plain style", object flumox → "thing"; the fact case is
an update, which ablating channels cannot make):

* channels are detected on the case's edit templates (the concept alone and the case's prompts, as the demo's
  edits use): concept prompts against the target in the same templates plus the case's preserved concepts
  (the other concepts of its kind) as neutral prompts;
* in two windows: LocoGen's window for the case (found as ``diffloc demo`` finds it) and all 16 cross-attention
  layers;
* the top N channels of every K and V projection by |z| are mean-ablated, for N in 3, 10, 30, 50 and every
  channel. ShapesWorld's projections are 64 channels wide (32 in ``xattn.0–1`` and ``xattn.13–15``), SD-1's
  1280: the paper's 50 of 1280 (3.9 %) is about 3 of 64, and N is capped at a projection's width (a 32-wide
  projection ablates all 32 at N = 50), so the larger N remove most of a layer's keys and values;
* in both modes of ``diffloc.editing.neurons``: ``weights`` (read at the subject's last token, written into
  the weights, every CFG row) and ``paper`` (read at the last padding slot, set in the conditional branch at
  every token position while generating);
* as a control, the paper's ablation of as many channels per projection drawn at random (seeded): does the
  z-score pick channels that matter, or does removing that many channels of those layers do it anyway?
* each evaluated with ``diffloc.eval.suite.evaluate`` on the suite's seeds (0–3): concept rate on the case's
  prompts (efficacy) and held-out prompts (generalization), neighbours keeping ≥ 0.9 of their rate
  (specificity), pixel change on unrelated prompts.

Every number is deterministic (fixed seeds, one thread), so rerunning the command reproduces the JSON exactly.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from shapesworld_suite import World, arm_summary, cached, edit_request, fmt, load_world, locogen_window, short_window

from diffloc.atomic import write_json_atomic
from diffloc.editing import Edit, EditRequest, NeuronAblation, NeuronConfig, compute_ablation, compute_edit
from diffloc.editing.ablation import ChannelAblation
from diffloc.editing.locoedit import projection_linear, projection_sites
from diffloc.eval.measure import measure
from diffloc.eval.suite import ConceptCase, evaluate
from diffloc.tracing.locogen import xattn_layers

OUT = Path("docs/data/neuron_ablation.json")
CASES = ("style-pica-stro", "object-flumox")
TOP_N: tuple[int | str, ...] = (3, 10, 30, 50, "all")
MODES = ("weights", "paper")
#: the control: the paper's ablation of as many channels per projection, drawn at random (seeded)
RANDOM = "paper-random"
RANDOM_SEED = 0


def _merge_edits(parts: list[Edit]) -> Edit:
    """One :class:`Edit` holding the per-projection neuron edits (they touch disjoint parameters)."""
    first = parts[0]
    return replace(
        first,
        weights={k: v for p in parts for k, v in p.weights.items()},
        originals={k: v for p in parts for k, v in p.originals.items()},
        stats={"channels": {k: v for p in parts for k, v in p.stats["channels"].items()}},
    )


def _merge_ablations(parts: list[NeuronAblation]) -> NeuronAblation:
    """One :class:`NeuronAblation` holding the per-projection ablations."""
    return replace(
        parts[0],
        sites=tuple(s for p in parts for s in p.sites),
        base={k: v for p in parts for k, v in p.base.items()},
        stats={"z": {k: v for p in parts for k, v in p.stats["z"].items()}},
    )


def _random_channels(ablation: NeuronAblation, count: int, rng: random.Random) -> NeuronAblation:
    """``count`` channels drawn at random from an every-channel ablation, each with its own neutral mean."""
    site = ablation.sites[0]
    keep = sorted(rng.sample(range(len(site.channels)), count))
    chosen = ChannelAblation(site=site.site, channels=tuple(site.channels[i] for i in keep),
                             values=tuple(site.values[i] for i in keep))  # fmt: skip
    return replace(ablation, sites=(chosen,), stats={"z": {}})


def neuron_intervention(
    world: World, request: EditRequest, layers: list[str], top_n: int | str, mode: str
) -> Edit | NeuronAblation:
    """Mean-ablate the top ``top_n`` channels (capped at each projection's width; ``"all"``: every channel) of
    every K/V projection of ``layers``, as a weight edit, the paper's ablation, or (``RANDOM``) the paper's
    ablation of as many channels drawn at random."""
    parts = []
    rng = random.Random(RANDOM_SEED)
    for proj in projection_sites(world.model, tuple(layers)):
        width = projection_linear(world.model, proj).out_features
        count = width if top_n == "all" else min(int(top_n), width)
        if mode == RANDOM:
            every = compute_ablation(world.model, request, NeuronConfig(sites=(proj.name,), top_n=width, mode="paper"))
            parts.append(_random_channels(every, count, rng))
        elif mode == "paper":
            parts.append(compute_ablation(world.model, request, NeuronConfig(sites=(proj.name,), top_n=count,
                                                                             mode=mode)))  # fmt: skip
        else:
            config = NeuronConfig(sites=(proj.name,), top_n=count, mode=mode)
            parts.append(compute_edit(world.model, request, method="neurons", config=config))
    if mode == "weights":
        return _merge_edits([p for p in parts if isinstance(p, Edit)])
    return _merge_ablations([p for p in parts if isinstance(p, NeuronAblation)])


def run_case(world: World, case: ConceptCase, before: Any, cache: Path) -> dict[str, Any]:
    """Every (window, N, mode) row of one case."""
    window = locogen_window(world, case)
    windows = {"locogen": list(window.best_sites), "all": xattn_layers(world.model)}
    request = edit_request(case, preserve_prompts=False)  # neuron edits take preserved concepts, not captions
    rows = []
    for label, layers in windows.items():
        for top_n in TOP_N:
            for mode in (*MODES, RANDOM) if top_n != "all" else MODES:

                def evaluated(layers: list[str] = layers, top_n: int | str = top_n, mode: str = mode) -> dict[str, Any]:
                    ablation = neuron_intervention(world, request, layers, top_n, mode)
                    report = evaluate(world.model, ablation, world.suite, scorer=world.scorer, cases=[case.name],
                                      before=before)  # fmt: skip
                    channels = (
                        ablation.num_channels
                        if isinstance(ablation, NeuronAblation)
                        else sum(len(c) for c in ablation.stats["channels"].values())
                    )
                    return {"channels": channels, **arm_summary(report, case)}

                key = {"case": case.name, "layers": layers, "top_n": top_n, "mode": mode, "request": request.to_dict(),
                       "weights": world.model.fingerprint(), "suite": repr(world.suite)}  # fmt: skip
                path = cache / "rows" / case.name / f"{short_window(layers)}-{top_n}-{mode}.json"
                result = cached(path, key, evaluated)
                rows.append({"window": label, "layers": layers, "top_n": top_n, "mode": mode, **result})
                print(f"  {case.name} {short_window(layers):12s} N={top_n!s:4s} {mode:7s} own "
                      f"{fmt(result['efficacy']['after'])} held-out {fmt(result['generalization']['after'])} kept "
                      f"{result['neighbours_kept']}/{result['neighbours']}", file=sys.stderr, flush=True)  # fmt: skip
    return {
        "concept": case.concept, "target": case.target, "neutral_concepts": list(case.preserve),
        "templates": list(request.templates),
        "locogen": {"window": list(window.best_sites), "best_score": window.best_score,
                    "original_score": window.original_score, "search": window.meta["window_search"]["tried"]},
        "rows": rows,
    }  # fmt: skip


def table(data: dict[str, Any]) -> str:
    """The Markdown table of a result file: both modes side by side per (case, window, N)."""
    lines = [
        "| case | ablated layers | N per projection (channels) | weights: own / held-out / neighbours kept "
        "| paper: own / held-out / neighbours kept | control, paper mode on N random channels |",
        "|---|---|---|---|---|---|",
    ]
    for name, case in data["cases"].items():
        first = case["rows"][0]
        unedited = f"{fmt(first['efficacy']['before'])} / {fmt(first['generalization']['before'])} / all"
        lines.append(f"| {name} | unedited | — | {unedited} | {unedited} | {unedited} |")
        by_key = {(r["window"], str(r["top_n"]), r["mode"]): r for r in case["rows"]}
        for window in ("locogen", "all"):
            for top_n in dict.fromkeys(str(r["top_n"]) for r in case["rows"]):
                cells = []
                for mode in (*MODES, RANDOM):
                    r = by_key.get((window, top_n, mode))
                    cells.append("= paper" if r is None else _cell(r))
                r = by_key[(window, top_n, MODES[0])]
                layers = f"LocoGen's `{short_window(r['layers'])}`" if window == "locogen" else "all 16"
                lines.append(f"| {name} | {layers} | {top_n} ({r['channels']}) | {' | '.join(cells)} |")
    return "\n".join(lines)


def _cell(row: dict[str, Any]) -> str:
    """``own / held-out / neighbours kept`` after the ablation."""
    own, held = fmt(row["efficacy"]["after"]), fmt(row["generalization"]["after"])
    return f"{own} / {held} / {row['neighbours_kept']} of {row['neighbours']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"result JSON (default {OUT})")
    parser.add_argument("--cache", type=Path, default=Path("runs/neuron_ablation"),
                        help="finished rows, reused on rerun")  # fmt: skip
    parser.add_argument("--case", action="append", default=None, help=f"only these cases (default {', '.join(CASES)})")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit (no model run)")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    start = time.perf_counter()
    world = load_world()
    chosen = [world.suite.case(name) for name in (args.case or CASES)]
    before = measure(world.model, world.suite, world.scorer, chosen)
    data = {
        "command": "python bench/neuron_ablation.py",
        "model": world.model.source,
        "weights": world.model.fingerprint(),
        "scorer": world.scorer.name,
        "suite": {"seeds": list(world.suite.seeds), "steps": world.suite.steps, "guidance": world.suite.guidance},
        "ablation": "mean",
        "top_n": list(TOP_N),
        "random_seed": RANDOM_SEED,
        "cases": {case.name: run_case(world, case, before, args.cache) for case in chosen},
    }
    write_json_atomic(args.out, data)
    print(table(data))
    print(f"\nwrote {args.out}; wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
