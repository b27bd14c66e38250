"""Attribution patching vs exact patching: speed, agreement and memory, side by side in one run.

Run: ``python bench/attribution_speed.py [--out FILE] [--planted-only]`` (single-threaded; a few minutes on an idle
machine).

On the shipped ShapesWorld model, for each case of the shipped suite (its first ``--prompts`` prompts × seeds 0
and 1, the
corruption at ``--noise-multiplier`` × the token-embedding std, every UNet site, ``same-latent`` restores), the UNet
trace is made three ways on the same items:

* ``exact``: one restored sampling chain per site (72 runs per item);
* ``attribution``: every site × step estimated from one corrupted chain with autograd and one backward pass;
* ``screen``: the attribution, then the ``--top-k`` highest sites restored exactly;
* ``screen-gd``: the screen with AtP*'s gradient dropout over ``--gradient-dropout`` layers choosing the sites it
  confirms (``0`` leaves this arm out).

Printed per case and in total: wall time and its ratio to exact, top-5 recall of exact's top five sites (controls
excluded; beside it the tie-aware reading, which also counts a site whose exact effect is within
:data:`~diffloc.tracing.agreement.TIE` of exact's fifth, since where many restores bring the attribute all the way
back exact's top five is a pick among equals; every method's per-site effects are kept in the JSON), Spearman
correlation of per-site indirect effects with exact's, and the process's peak RSS once the
gradient path has run (measured before any exact trace; the model is included). Scores are the detectors'
log-probability of the attribute: its gradient does not vanish where the probability reads 0 or 1. Each case also
records its corruption curve: the mean corrupted log-probability at 3, 6 and 12 × the embedding std (what a
first-order estimate at the corrupted point has to bridge).

The same timing ratios are then measured on tiny-sdxl (its whole site table; a random model, so only the ratios
mean anything there).

Planted-window recovery: for every window plant of ``--planted`` (the planted-truth benchmark's JSON,
``bench/localization_validity.py``) that took, the plant is made again and attribution and the screen are asked
where it lives on the same items as that benchmark's exact traces (its prompts, seeds and sampling), scored by the
same rules, once per corruption that removed the concept there: noise (its calibrated std; the cross-attention
sites, :func:`~diffloc.world.planted.unet_trace_recovery`), and the substitute word (the cross-attention sites, and
windows of the planted size restored together, :func:`~diffloc.world.planted.window_trace_recovery`). The exact
traces' answers are read from that JSON. ``--planted-only`` asks only this and rewrites the ``planted`` part of
``--out``, keeping its timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import torch

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.eval.metrics import wilson_interval
from diffloc.eval.scorers import DetectorScorer
from diffloc.eval.suite import load_suite, shipped_suite_path
from diffloc.models.registry import load
from diffloc.models.tiny import build_tiny_pipeline
from diffloc.tracing.agreement import agreement, top_sites
from diffloc.tracing.calibrate import calibrate_noise
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.results import TraceResult

METHODS = ("exact", "attribution", "screen", "screen-gd")
#: noise multipliers of each case's corruption curve
CURVE = (3.0, 6.0, 12.0)


def peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _effects(result: TraceResult) -> dict[str, float]:
    """Per-site indirect effects, rounded for the JSON."""
    return {name: round(float(v), 4) for name, v in zip(result.labels, result.indirect_effect, strict=True)}


def compare(results: dict[str, TraceResult], seconds: dict[str, float]) -> dict[str, Any]:
    """Speed and agreement of each method against exact."""
    exact = results["exact"]
    agreements = {m: agreement(exact, results[m]) for m in METHODS if m in results}
    out: dict[str, Any] = {"exact_top5": top_sites(exact), "exact_top5_ties": agreements["exact"]["tied"]}
    for method, agree in agreements.items():
        out[method] = {
            "seconds": round(seconds[method], 2),
            "speedup": round(seconds["exact"] / seconds[method], 2),
            "top5": agree["top"],
            "top5_recall": agree["top_recall"],
            "top5_recall_ties": agree["top_recall_ties"],
            "spearman": agree["spearman"],
            "effects": _effects(results[method]),
            "exact_scores": int((results[method].marks == "exact").sum()),
            "confirmed_error": results[method].meta.get("confirmed_error"),
        }
    return out


def run_case(
    model: Any, prompt: str | list[str], subject: str, attribute: str, config: TraceConfig, top_k: int,
    dropout: int,
) -> dict:  # fmt: skip
    """The traces of one case (gradient methods first, so the RSS peak after them excludes exact's)."""
    scorer = DetectorScorer(log_probability=True)
    results: dict[str, TraceResult] = {}
    seconds: dict[str, float] = {}
    rss: dict[str, float] = {}
    arms = [("attribution", 0), ("screen", 0), *([("screen-gd", dropout)] if dropout else []), ("exact", 0)]
    for name, layers in arms:
        start = time.perf_counter()
        results[name] = causal_trace(
            model, prompt, subject, attribute, scorer=scorer, config=config, method=name.removesuffix("-gd"),
            top_k=top_k, gradient_dropout=layers,
        )  # fmt: skip
        seconds[name] = time.perf_counter() - start
        rss[name] = peak_rss_mib()
    entry = compare(results, seconds)
    entry.update(
        sites=len(results["exact"].labels), peak_rss_mib_after_gradient_path=round(max(rss.values()), 1),
        clean=results["exact"].clean_score, corrupted=results["exact"].corrupt_score,
    )  # fmt: skip
    return entry


def corruption_curve(model: Any, prompts: list[str], subject: str, attribute: str, config: TraceConfig) -> dict:
    """Mean clean and corrupted log-probability of the attribute at each multiplier of :data:`CURVE`."""
    calibration = calibrate_noise(
        model, prompts, subject, attribute, scorer=DetectorScorer(log_probability=True), config=config,
        multipliers=CURVE,
    )  # fmt: skip
    return {"clean": calibration.clean, "corrupted": dict(calibration.corrupted)}


def planted_recovery(records: list[dict], top_k: int) -> dict[str, Any]:
    """Attribution's and the screen's recovery of the planted windows, beside exact's (see the module docstring),
    per plant and in total with Wilson intervals: with the noise corruption on the plants whose noise removed the
    concept (the top level), and with the substitution on the plants whose substitute removed it (``substitute``:
    per-site traces, and ``substitute-windows``: windows of the planted size restored together)."""
    from localization_validity import LAM, PRESERVE_WEIGHT, STRENGTH, traced

    from diffloc.tracing.locogen import xattn_layers
    from diffloc.world.planted import (
        AskConfig,
        PlantSpec,
        plant_edit,
        plant_windows,
        unet_trace_recovery,
        window_trace_recovery,
    )

    model = load("shapesworld")
    scorer = DetectorScorer(log_probability=True)
    ask = AskConfig()
    layers = xattn_layers(model)
    arms: dict[str, list[dict[str, Any]]] = {"noise": [], "substitute": [], "substitute-windows": []}
    for record in records:
        answers = record.get("answers", {})
        if record["plant"]["method"] != "locoedit" or not record["check"]["takes"]:
            continue
        spec = PlantSpec(**{k: record["plant"][k] for k in ("kind", "concept", "method", "sites", "word", "name")})
        asks = []
        if traced(answers):
            asks.append(("noise", ask.trace_config(noise=answers["noise"]["noise"], bootstrap=0), layers,
                         answers["unet_trace/same-latent"], unet_trace_recovery))  # fmt: skip
        if answers.get("substitution", {}).get("removes"):
            config = ask.trace_config(substitute=answers["substitution"]["substitute"], bootstrap=0)
            asks.append(("substitute", config, layers, answers["unet_trace/substitute/same-latent"],
                         unet_trace_recovery))  # fmt: skip
            asks.append(("substitute-windows", config, plant_windows(model, spec), answers["window_trace/substitute"],
                         window_trace_recovery))  # fmt: skip
        edit = plant_edit(model, spec, strength=STRENGTH, lam=LAM, preserve_weight=PRESERVE_WEIGHT)
        for arm, config, sites, exact, recovery in asks:
            effects = {k: round(v, 4) for k, v in exact["effects"].items()}
            entry: dict[str, Any] = {"plant": spec.name, "exact": exact["recovered"], "exact_top": exact["top"],
                                     "exact_effects": effects}  # fmt: skip
            if "tie_aware" in exact:  # windows: any window tied for best counts
                entry["exact/tie-aware"] = exact["tie_aware"]
            with edit.applied(model):
                for method in ("attribution", "screen"):
                    result = causal_trace(model, answers["prompts"], spec.word, spec.attribute, scorer=scorer,
                                          sites=sites, config=config, method=method,
                                          top_k=min(top_k, len(sites)))  # fmt: skip
                    found = recovery(result, spec.sites)
                    entry[method] = found["recovered"]
                    if "tie_aware" in found:  # as for exact's answer
                        entry[f"{method}/tie-aware"] = found["tie_aware"]
                    entry[f"{method}_top"] = found["top"]
                    entry[f"{method}_effects"] = _effects(result)
            arms[arm].append(entry)
            print(f"planted ({arm}) {spec.name}: exact {entry['exact']}, attribution {entry['attribution']} "
                  f"{entry['attribution_top']}, screen {entry['screen']} {entry['screen_top']}",
                  flush=True)  # fmt: skip
    out: dict[str, Any] = {}
    for arm, plants in arms.items():
        total: dict[str, Any] = {}
        readings = ["exact", "attribution", "screen"]
        if plants and "exact/tie-aware" in plants[0]:
            readings += ["exact/tie-aware", "attribution/tie-aware", "screen/tie-aware"]
        for method in readings:
            hits = sum(bool(p[method]) for p in plants)
            low, high = wilson_interval(hits, len(plants)) if plants else (float("nan"), float("nan"))
            total[method] = {"recovered": hits, "plants": len(plants),
                             "rate": hits / len(plants) if plants else None, "interval": [low, high]}  # fmt: skip
            if plants:
                print(f"planted-window recovery ({arm}) {method:12s} {hits}/{len(plants)}  [{low:.2f}, {high:.2f}]")
        if arm == "noise":
            out.update({"plants": plants, "total": total})
        else:
            out[arm] = {"plants": plants, "total": total}
    return out


def print_row(name: str, entry: dict) -> None:
    """One table row per method."""
    for method in [m for m in METHODS if m in entry]:
        m = entry[method]
        marks = f"exact scores {m['exact_scores']:3d}/{entry['sites']}"
        print(f"{name:22s} {method:12s} {m['seconds']:8.1f} s {m['speedup']:6.1f}x  recall@5 {m['top5_recall']:.2f}  "
              f"(ties {m['top5_recall_ties']:.2f})  spearman {m['spearman']:+.2f}  {marks}", flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10, as the demo localizes)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per case, × seeds 0 and 1 (default 2)")
    parser.add_argument("--noise-multiplier", type=float, default=12.0, help="corruption, × embedding std (12)")
    parser.add_argument("--top-k", type=int, default=8, help="sites the screen confirms exactly (default 8)")
    parser.add_argument("--cases", type=int, default=3, help="ShapesWorld suite cases to trace (default all 3)")
    parser.add_argument(
        "--gradient-dropout",
        type=int,
        default=8,
        metavar="L",
        help="layers of the screen-gd arm's gradient dropout (default 8; 0 leaves the arm out)",
    )
    parser.add_argument("--planted", type=Path, default=Path("docs/data/localization_validity.json"),
                        help="the planted-truth benchmark's JSON whose window plants are asked (default: the committed "
                        "UNet run)")  # fmt: skip
    parser.add_argument("--planted-only", action="store_true",
                        help="ask only the planted windows and replace the 'planted' part of --out's JSON, keeping its "
                        "timings")  # fmt: skip
    args = parser.parse_args()
    if not args.planted.is_file():
        raise SystemExit(f"--planted {args.planted}: no such file (write it with bench/localization_validity.py)")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.planted_only:
        if args.out is None or not args.out.is_file():
            raise SystemExit("--planted-only updates an existing --out JSON; give the one to update")
        kept = json.loads(args.out.read_text())
        planted = planted_recovery(json.loads(args.planted.read_text())["plants"], kept["top_k"])
        kept["planted"] = {"source": str(args.planted), **planted,
                           "command": " ".join(["python", *sys.argv]),
                           "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        write_json_atomic(args.out, kept)
        print(f"wrote the planted part of {args.out}")
        return 0
    config = TraceConfig(seeds=(0, 1), steps=args.steps, guidance=4.0, noise_multiplier=args.noise_multiplier,
                         bootstrap=0, max_batch=32)  # fmt: skip
    model = load("shapesworld")
    suite = load_suite(shipped_suite_path("shapesworld"))
    print(f"{'case':22s} {'method':12s} {'time':>10s} {'vs exact':>7s}")
    cases = {}
    for case in suite.cases[: args.cases]:
        prompts = list(case.prompts[: args.prompts])
        entry = run_case(model, prompts, case.concept, case.attribute, config, args.top_k, args.gradient_dropout)
        entry["corruption_curve"] = corruption_curve(model, prompts, case.concept, case.attribute, config)
        cases[case.name] = entry
        print_row(case.name, entry)
        curve = entry["corruption_curve"]
        print(f"{case.name:22s} corrupted log-probability (clean {curve['clean']:.2f}): "
              + ", ".join(f"{k}x {v:.2f}" for k, v in curve["corrupted"].items()), flush=True)  # fmt: skip
    methods = [m for m in METHODS if m in next(iter(cases.values()))]
    totals = {m: sum(c[m]["seconds"] for c in cases.values()) for m in methods}
    summary = {
        method: {
            "seconds": round(totals[method], 1), "speedup": round(totals["exact"] / totals[method], 2),
            "top5_recall": float(np.mean([c[method]["top5_recall"] for c in cases.values()])),
            "top5_recall_ties": float(np.mean([c[method]["top5_recall_ties"] for c in cases.values()])),
            "spearman": float(np.mean([c[method]["spearman"] for c in cases.values()])),
        }
        for method in methods
    }  # fmt: skip
    rss = max(c["peak_rss_mib_after_gradient_path"] for c in cases.values())
    for method in methods:
        s = summary[method]
        print(f"{'ShapesWorld, all':22s} {method:12s} {s['seconds']:8.1f} s {s['speedup']:6.1f}x  "
              f"recall@5 {s['top5_recall']:.2f} (ties {s['top5_recall_ties']:.2f})  "
              f"spearman {s['spearman']:+.2f}")  # fmt: skip
    print(f"peak RSS after the gradient path (process, model included): {rss:.0f} MiB")
    tiny = load(build_tiny_pipeline("sdxl", seed=0))
    tiny_config = TraceConfig(seeds=(0,), steps=args.steps, guidance=4.0, noise_multiplier=args.noise_multiplier,
                              bootstrap=0, max_batch=32)  # fmt: skip
    sdxl = run_case(tiny, "a red circle in the style of van gogh", "van gogh", "a red circle", tiny_config, args.top_k,
                    args.gradient_dropout)  # fmt: skip
    print_row(f"tiny-sdxl ({sdxl['sites']} sites)", sdxl)
    planted = planted_recovery(json.loads(args.planted.read_text())["plants"], args.top_k)
    out = {
        "planted": {"source": str(args.planted), **planted},
        "diffloc_version": __version__, "command": " ".join(["python", *sys.argv]), "steps": args.steps,
        "noise_multiplier": args.noise_multiplier, "top_k": args.top_k, "gradient_dropout": args.gradient_dropout,
        "prompts": args.prompts, "seeds": [0, 1],
        "scorer": "shapesworld-detectors-logp",
        "cases": cases, "shapesworld": summary, "peak_rss_mib_after_gradient_path": rss, "tiny_sdxl": sdxl,
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    if args.out is not None:
        write_json_atomic(args.out, out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
