"""``diffloc demo``: localize, edit and evaluate on ShapesWorld (or any model + suite + CLIP) into report.html."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from diffloc.atomic import check_writable_dir
from diffloc.cli.model_args import (
    add_max_batch_argument,
    add_model_arguments,
    check_model_arguments,
    fit_max_batch,
    load_model,
    placeholder_max_batch,
)
from diffloc.cli.scale_args import add_scale_arguments, executor_from_args
from diffloc.cli.sweep_args import (
    add_allow_bin_argument,
    add_scorer_arguments,
    add_seeds_argument,
    noise_value,
    seeds_of,
)
from diffloc.engine.sources import RESTORE_SOURCES
from diffloc.models.weight_files import check_clip_weights
from diffloc.validate import check_model_steps, count_arg, seed_arg, steps_arg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="trace, edit (Diff-QuickFix, LocoEdit) and evaluate every case of a suite; writes report.html",
        description="The end-to-end demo. Reruns skip finished stages; a killed run resumes where it stopped.",
    )
    parser.add_argument("--model", default="shapesworld", help="model (default: the shipped ShapesWorld)")
    add_allow_bin_argument(parser)
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped ShapesWorld suite)")
    add_scorer_arguments(parser)
    parser.add_argument("--out", default="demo-out", help="output directory (default demo-out/)")
    parser.add_argument(
        "--steps",
        type=steps_arg,
        default=10,
        help="denoising steps of the localization stages; evaluation uses the suite's (default 10)",
    )
    add_seeds_argument(parser, default=(0, 1), help="seeds for tracing and LocoGen (evaluation uses the suite's)",
                       aliases=("--trace-seeds",))  # fmt: skip
    parser.add_argument(
        "--text-seeds", type=seed_arg, nargs="+", default=None, help="seeds for the text-encoder trace (default 0 1 2)"
    )
    parser.add_argument(
        "--restore-from", choices=RESTORE_SOURCES, default="same-latent",
        help="where UNet restores read the clean value (default same-latent; trajectory: the clean run's)",
    )  # fmt: skip
    parser.add_argument(
        "--bootstrap", type=count_arg("bootstrap", low=0), default=2000,
        help="bootstrap resamples of the 95%% intervals over items (each trace needs at least 3 items); 0: none",
    )  # fmt: skip
    parser.add_argument(
        "--no-step-map", dest="step_map", action="store_false",
        help="skip the site × step map (attribution patching on the UNet trace's items, one backward pass per "
        "batch; runs where the scorer is differentiable)",
    )  # fmt: skip
    parser.add_argument(
        "--no-audit", dest="audit", action="store_false",
        help="skip the small audit of every edit (prompt attacks and location revival; 'diffloc audit' is the "
        "full one)",
    )  # fmt: skip
    add_max_batch_argument(parser, default=32)
    parser.add_argument(
        "--noise", type=noise_value, default="auto",
        help="corruption std, or 'auto' (default): per case, the smallest multiple of the token-embedding std "
        "that halves the attribute's score in every traced image",
    )  # fmt: skip
    add_scale_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from tqdm import tqdm

    from diffloc.editing.locoedit import edited_layers
    from diffloc.eval.scorers import scorer_for
    from diffloc.eval.suite import load_suite, shipped_suite_path
    from diffloc.workflows.demo import DemoConfig, run_demo

    suite_path = Path(args.suite) if args.suite else shipped_suite_path("shapesworld")
    suite = load_suite(suite_path)
    seeds: dict[str, Any] = {"trace_seeds": seeds_of(args)}
    if args.text_seeds is not None:
        seeds["text_seeds"] = tuple(args.text_seeds)
    config = DemoConfig(steps=args.steps, max_batch=placeholder_max_batch(args), guidance=suite.guidance,
                        noise=args.noise, restore_from=args.restore_from, bootstrap=args.bootstrap,
                        step_map=args.step_map, audit=args.audit, **seeds)  # fmt: skip
    config.check_items(suite)
    check_model_arguments(args)
    check_model_steps(args.model, args.steps, "--steps")
    check_model_steps(args.model, suite.steps, f"{suite_path.name}: steps")
    out = check_writable_dir(args.out)  # created by the first file written
    if args.clip is not None:
        check_clip_weights(args.clip, allow_pickle=args.allow_bin)
    with executor_from_args(args) as executor:
        model = load_model(args)
        config = fit_max_batch(args, config, model)
        scorer = scorer_for(args.model, args.clip, detectors=args.detectors, allow_pickle=args.allow_bin,
                            device=model.device)  # fmt: skip
        start = time.perf_counter()
        bar = tqdm(total=len(suite.cases) * 7, desc="demo", unit="stage", leave=False)

        def progress(stage: str, done: int, total: int) -> None:
            bar.set_postfix_str(stage)
            bar.n = done
            bar.refresh()

        try:
            summary = run_demo(model, suite, scorer, out, config=config, progress=progress, executor=executor)
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
