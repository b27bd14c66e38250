"""``diffloc demo``: localize, edit and evaluate on ShapesWorld (or any model + suite + CLIP) into report.html."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from diffloc.atomic import ensure_writable_dir
from diffloc.cli.model_args import (
    add_max_batch_argument,
    add_model_arguments,
    check_model_arguments,
    load_model,
    placeholder_max_batch,
    resolve_max_batch,
)
from diffloc.cli.sweep_args import add_scorer_arguments, noise_value
from diffloc.demo import DemoConfig, run_demo
from diffloc.editing.locoedit import edited_layers
from diffloc.engine.interventions import RESTORE_SOURCES
from diffloc.eval.scorers import scorer_for
from diffloc.eval.suite import load_suite, shipped_suite_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="trace, edit (Diff-QuickFix, LocoEdit) and evaluate every case of a suite; writes report.html",
        description="The end-to-end demo. Reruns skip finished stages; a killed run resumes where it stopped.",
    )
    parser.add_argument("--model", default="shapesworld", help="model (default: the shipped ShapesWorld)")
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped ShapesWorld suite)")
    add_scorer_arguments(parser)
    parser.add_argument("--out", default="demo-out", help="output directory (default demo-out/)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps for tracing (default 20)")
    parser.add_argument(
        "--trace-seeds", type=int, nargs="+", default=None, help="seeds for tracing/LocoGen (default 0 1)"
    )
    parser.add_argument(
        "--text-seeds", type=int, nargs="+", default=None, help="seeds for the text-encoder trace (default 0 1 2)"
    )
    parser.add_argument(
        "--restore-from", choices=RESTORE_SOURCES, default="same-latent",
        help="where UNet restores read the clean value (default same-latent; trajectory: the clean run's)",
    )  # fmt: skip
    parser.add_argument(
        "--bootstrap", type=int, default=2000,
        help="bootstrap resamples of the 95%% intervals over items (each trace needs at least 3 items); 0: none",
    )  # fmt: skip
    add_max_batch_argument(parser, default=32)
    parser.add_argument(
        "--noise", type=noise_value, default="auto",
        help="corruption std, or 'auto' (default): per case, the smallest multiple of the token-embedding std "
        "that halves the attribute's score in every traced image",
    )  # fmt: skip
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from tqdm import tqdm

    suite = load_suite(args.suite or shipped_suite_path("shapesworld"))
    seeds: dict[str, Any] = {}
    if args.trace_seeds is not None:
        seeds["trace_seeds"] = tuple(args.trace_seeds)
    if args.text_seeds is not None:
        seeds["text_seeds"] = tuple(args.text_seeds)
    config = DemoConfig(steps=args.steps, max_batch=placeholder_max_batch(args), guidance=suite.guidance,
                        noise=args.noise, restore_from=args.restore_from, bootstrap=args.bootstrap,
                        **seeds)  # fmt: skip
    config.check_items(suite)
    check_model_arguments(args)
    out = ensure_writable_dir(args.out)
    model = load_model(args)
    config = replace(config, max_batch=resolve_max_batch(args, model, guidance=config.guidance))
    scorer = scorer_for(args.model, args.clip, detectors=args.detectors, device=model.device)
    start = time.perf_counter()
    bar = tqdm(total=len(suite.cases) * 7, desc="demo", unit="stage", leave=False)

    def progress(stage: str, done: int, total: int) -> None:
        bar.set_postfix_str(stage)
        bar.n = done
        bar.refresh()

    try:
        summary = run_demo(model, suite, scorer, out, config=config, progress=progress)
    finally:
        bar.close()
    for name, entry in summary["cases"].items():
        for method, ev in entry["eval"].items():
            key = "target" if entry["mode"] == "update" else "concept"
            eff = ev["efficacy"]
            layers = edited_layers(entry["edits"][method]["sites"])
            print(f"{name:<16} {method:<9} efficacy {eff[key + '_before']:.2f} -> {eff[key + '_after']:.2f}  "
                  f"edited {', '.join(layers) if len(layers) <= 4 else f'{len(layers)} layers'}; "
                  f"LocoGen window {','.join(entry['locogen']['best_sites'])}")  # fmt: skip
    print(f"wrote {out / 'report.html'} in {time.perf_counter() - start:.0f} s")
    return 0
