"""``diffloc locogen``: find the window of cross-attention layers that controls an attribute."""

from __future__ import annotations

import argparse

from diffloc.atomic import check_writable_dir
from diffloc.cli.model_args import fit_max_batch, load_model
from diffloc.cli.progress import progress_bar
from diffloc.cli.scale_args import executor_from_args
from diffloc.cli.sweep_args import add_sweep_arguments, sweep_kwargs
from diffloc.tracing.methods import LOCOGEN_VARIANTS
from diffloc.validate import check_fraction, cli_type, count_arg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc locogen``."""
    parser = subparsers.add_parser(
        "locogen",
        help="LocoGen: which window of cross-attention layers controls an attribute",
        description=(
            "Feed each window of --window consecutive cross-attention layers the --target prompt (the other "
            "layers keep the original), score the attribute, and pick the window. Writes result.json/.npz and "
            "windows.png; reruns resume."
        ),
    )
    add_sweep_arguments(parser, default_out="out/locogen")
    parser.add_argument("--target", required=True, help="prompt the window reads instead, e.g. 'a painting'")
    parser.add_argument("--window", type=count_arg("window"), default=2, help="window size m (default 2)")
    parser.add_argument("--mode", choices=("remove", "update"), default="remove", help="remove: lowest score wins")
    parser.add_argument("--preset", choices=("diffloc", "reference"), default="diffloc",
                        help="reference: the released script's windows of 3 shrinking at the end")  # fmt: skip
    parser.add_argument("--intervention", choices=LOCOGEN_VARIANTS, default=LOCOGEN_VARIANTS[0],
                        help="cross-attention (UNet families); on SD3/FLUX text-stream (activation patching of the "
                        "text stream entering each block of the window) or prompt-injection")  # fmt: skip
    parser.add_argument("--fraction", type=cli_type(check_fraction, float), default=1.0, metavar="F",
                        help="move each window this share of the way to the target, in (0, 1] (default 1: the "
                        "target's states); below 1 tells apart windows a full swap moves equally")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the window sweep and write results."""
    from diffloc.eval.scorers import scorer_for
    from diffloc.report.plots import plot_windows, save_figure
    from diffloc.tracing.config import LocoGenConfig
    from diffloc.tracing.locogen import locogen

    settings = {
        "window": args.window,
        "mode": args.mode,
        "preset": args.preset,
        "variant": args.intervention,
        "fraction": args.fraction,
    }
    config = LocoGenConfig(**settings, **sweep_kwargs(args))  # type: ignore[arg-type]
    out = check_writable_dir(args.out)  # created by the first file written
    with executor_from_args(args) as executor:
        model = load_model(args)
        config = fit_max_batch(args, config, model)
        scorer = scorer_for(args.model, args.clip, detectors=args.detectors, allow_pickle=args.allow_bin,
                            device=model.device)  # fmt: skip
        with progress_bar("locogen", unit="run") as progress:
            result = locogen(model, args.prompt, args.target, args.attribute, scorer=scorer, config=config, out=out,
                             progress=progress, executor=executor)  # fmt: skip
    save_figure(plot_windows(result), out / "windows.png")
    print(f"original {result.original_score:.3f}  best window {', '.join(result.best_sites)}: {result.best_score:.3f}")
    print(f"wrote {out / 'result.json'} and {out / 'windows.png'}")
    return 0
