"""``diffloc reproduce``: the papers' protocol on your own Stable Diffusion (local weights, a GPU advised).

LocoGen windows (m = 2, as the released ``loco_edit.py`` and neuron scripts use), causal tracing of the UNet
and the text encoder, Diff-QuickFix and LocoEdit on Van Gogh-style prompts, scored with a local CLIP model,
into the same report as ``diffloc demo``. Tested here on tiny random configs only: the numbers it prints on a
tiny model mean nothing; on real SD-1.x/2.x weights they are the measurement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
from diffloc.cli.sweep_args import add_allow_bin_argument, add_seeds_argument, seeds_of
from diffloc.models.weight_files import check_clip_weights
from diffloc.validate import check_model_steps, count_arg, steps_arg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc reproduce``."""
    parser = subparsers.add_parser(
        "reproduce",
        help="the papers' protocol (LocoGen, Diff-QuickFix, LocoEdit on Van Gogh) with CLIP-score",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--model", required=True, help="local diffusers directory or cached id of SD weights")
    parser.add_argument(
        "--clip", required=True, help="local CLIP directory (e.g. a saved openai/clip-vit-base-patch16)"
    )
    add_allow_bin_argument(parser)
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped van-gogh suite)")
    parser.add_argument("--out", default="reproduce-out", help="output directory (default reproduce-out/)")
    parser.add_argument("--steps", type=steps_arg, default=None, help="denoising steps (default: the suite's, 50)")
    add_seeds_argument(parser, default=(0, 1, 2, 3), help="seeds for tracing and LocoGen (evaluation uses the "
                       "suite's)", aliases=("--trace-seeds",))  # fmt: skip
    add_max_batch_argument(parser, default=8)
    parser.add_argument(
        "--bootstrap", type=count_arg("bootstrap", low=0), default=2000,
        help="bootstrap resamples of the 95%% intervals over items (at least 3 items); 0: no interval",
    )  # fmt: skip
    add_scale_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the protocol."""
    from diffloc.eval.scorers import ClipScorer
    from diffloc.eval.suite import load_suite, shipped_suite_path
    from diffloc.workflows.demo import DemoConfig, run_demo

    suite_path = Path(args.suite) if args.suite else shipped_suite_path("van-gogh")
    suite = load_suite(suite_path)
    config = DemoConfig(trace_seeds=seeds_of(args), text_seeds=seeds_of(args),
                        steps=args.steps or suite.steps, guidance=suite.guidance, max_batch=placeholder_max_batch(args),
                        locogen_window=2, trace_prompts=2, bootstrap=args.bootstrap,
                        # the papers' protocol: ROME's 3x noise, a fixed window, LocoEdit at the subject token, each
                        # editor with its reference templates (the Diff-QuickFix notebook's four, loco_edit.py's)
                        noise=None, locogen_widen=False, locoedit_widen=False, locoedit_positions="subject",
                        locoedit_target_mode="bare", preserve_weight=1.0, edit_templates="reference")  # fmt: skip
    check_model_arguments(args)
    check_model_steps(args.model, config.steps, "--steps" if args.steps else f"{suite_path.name}: steps")
    check_model_steps(args.model, suite.steps, f"{suite_path.name}: steps")
    out = check_writable_dir(args.out)  # created by the first file written
    check_clip_weights(args.clip, allow_pickle=args.allow_bin)
    with executor_from_args(args) as executor:
        model = load_model(args)
        config = fit_max_batch(args, config, model)
        scorer = ClipScorer.from_dir(args.clip, allow_pickle=args.allow_bin, device=model.device)
        summary = run_demo(model, suite, scorer, out, config=config, executor=executor)
    for name, entry in summary["cases"].items():
        print(f"{name}: LocoGen window {', '.join(entry['locogen']['best_sites'])}")
    print(f"wrote {out / 'report.html'}")
    return 0
