"""``diffloc eval``: measure a saved edit or neuron ablation on a suite (efficacy, generalization, specificity,
fidelity)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffloc.atomic import check_writable_dir
from diffloc.cli.model_args import add_model_arguments, check_model_arguments, load_model
from diffloc.cli.progress import progress_bar
from diffloc.cli.scale_args import add_scale_arguments, executor_from_args
from diffloc.cli.sweep_args import add_allow_bin_argument, add_scorer_arguments
from diffloc.models.weight_files import check_clip_weights
from diffloc.validate import check_model_steps


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc eval``."""
    parser = subparsers.add_parser("eval", help="evaluate a saved edit on a suite YAML")
    parser.add_argument("--model", default="shapesworld", help="the unedited model the edit was computed on")
    add_allow_bin_argument(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--edit", help="edit directory (from 'diffloc edit …')")
    what.add_argument(
        "--ablation", metavar="FILE", help="neuron ablation file (from 'diffloc edit neurons --mode paper')"
    )
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped ShapesWorld suite)")
    parser.add_argument("--case", action="append", default=None, help="only these case names (repeatable)")
    add_scorer_arguments(parser)
    parser.add_argument(
        "--out", default="out/eval", help="output directory (default out/eval/); reruns resume, and the unedited "
        "model's images are reused by every edit evaluated into the same directory",
    )  # fmt: skip
    add_scale_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and write ``report.json``."""
    from diffloc.editing.ablation import NeuronAblation
    from diffloc.editing.edit import Edit
    from diffloc.eval.scorers import scorer_for
    from diffloc.eval.suite import evaluate, load_suite, shipped_suite_path

    suite_path = Path(args.suite) if args.suite else shipped_suite_path("shapesworld")
    suite = load_suite(suite_path)
    check_model_steps(args.model, suite.steps, f"{suite_path.name}: steps")
    if args.case:
        for name in args.case:
            suite.case(name)
    edit = Edit.load(args.edit) if args.edit else NeuronAblation.load(args.ablation)
    check_model_arguments(args)
    out = check_writable_dir(args.out)  # created by the first file written
    if args.clip is not None:
        check_clip_weights(args.clip, allow_pickle=args.allow_bin)
    with executor_from_args(args) as executor:
        model = load_model(args)
        if isinstance(edit, Edit):
            edit.check_base(model)
        else:
            edit.check_model(model)
        scorer = scorer_for(args.model, args.clip, detectors=args.detectors, allow_pickle=args.allow_bin,
                            device=model.device)  # fmt: skip
        with progress_bar("eval", unit="image") as progress:
            report = evaluate(model, edit, suite, scorer=scorer, cases=args.case, out=out, executor=executor,
                              progress=progress)  # fmt: skip
    path = report.save(Path(out) / "report.json")
    for name, case in report.cases.items():
        eff = case["efficacy"]
        print(
            f"{name}: concept {eff['concept_before']:.2f} -> {eff['concept_after']:.2f}; fidelity {report.fidelity:.4f}"
        )
    print(f"wrote {path}")
    return 0
