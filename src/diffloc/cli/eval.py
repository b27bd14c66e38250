"""``diffloc eval``: measure a saved edit on a suite (efficacy, generalization, specificity, fidelity)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffloc.atomic import ensure_writable_dir
from diffloc.cli.progress import progress_bar
from diffloc.cli.scale_args import add_scale_arguments, executor_from_args
from diffloc.cli.sweep_args import add_scorer_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc eval``."""
    parser = subparsers.add_parser("eval", help="evaluate a saved edit on a suite YAML")
    parser.add_argument("--model", default="shapesworld", help="the unedited model the edit was computed on")
    parser.add_argument("--edit", required=True, help="edit directory (from 'diffloc edit …')")
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped ShapesWorld suite)")
    parser.add_argument("--case", action="append", default=None, help="only these case names (repeatable)")
    add_scorer_arguments(parser)
    parser.add_argument(
        "--out", default="out/eval", help="output directory (default out/eval/); reruns resume, and the unedited "
        "model's images are reused by every edit evaluated into the same directory",
    )  # fmt: skip
    add_scale_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and write ``report.json``."""
    from diffloc.editing.edit import Edit
    from diffloc.eval.scorers import scorer_for
    from diffloc.eval.suite import evaluate, load_suite, shipped_suite_path
    from diffloc.models.registry import load

    suite = load_suite(args.suite or shipped_suite_path("shapesworld"))
    if args.case:
        for name in args.case:
            suite.case(name)
    edit = Edit.load(args.edit)
    out = ensure_writable_dir(args.out)
    with executor_from_args(args) as executor:
        model = load(args.model)
        edit.check_base(model)
        scorer = scorer_for(args.model, args.clip, detectors=args.detectors)
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
