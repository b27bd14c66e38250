"""``diffloc eval``: measure a saved edit or neuron ablation on a suite (efficacy, generalization, specificity,
fidelity)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffloc.atomic import ensure_writable_dir
from diffloc.cli.sweep_args import add_scorer_arguments
from diffloc.eval.scorers import scorer_for
from diffloc.eval.suite import evaluate, load_suite, shipped_suite_path
from diffloc.models.registry import load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc eval``."""
    parser = subparsers.add_parser("eval", help="evaluate a saved edit on a suite YAML")
    parser.add_argument("--model", default="shapesworld", help="the unedited model the edit was computed on")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--edit", help="edit directory (from 'diffloc edit …')")
    what.add_argument(
        "--ablation", metavar="FILE", help="neuron ablation file (from 'diffloc edit neurons --mode paper')"
    )
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped ShapesWorld suite)")
    parser.add_argument("--case", action="append", default=None, help="only these case names (repeatable)")
    add_scorer_arguments(parser)
    parser.add_argument("--out", default="out/eval", help="output directory (default out/eval/)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and write ``report.json``."""
    from diffloc.editing.ablation import NeuronAblation
    from diffloc.editing.edit import Edit

    suite = load_suite(args.suite or shipped_suite_path("shapesworld"))
    if args.case:
        for name in args.case:
            suite.case(name)
    edit = Edit.load(args.edit) if args.edit else NeuronAblation.load(args.ablation)
    out = ensure_writable_dir(args.out)
    model = load(args.model)
    if isinstance(edit, Edit):
        edit.check_base(model)
    else:
        edit.check_model(model)
    report = evaluate(
        model, edit, suite, scorer=scorer_for(args.model, args.clip, detectors=args.detectors), cases=args.case
    )
    path = report.save(Path(out) / "report.json")
    for name, case in report.cases.items():
        eff = case["efficacy"]
        print(
            f"{name}: concept {eff['concept_before']:.2f} -> {eff['concept_after']:.2f}; fidelity {report.fidelity:.4f}"
        )
    print(f"wrote {path}")
    return 0
