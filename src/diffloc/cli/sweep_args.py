"""Arguments shared by the sweep commands (trace, locogen), the seeds option of every command, and the scorer and
weight-format options.

Imports nothing heavy at module level: ``--help`` must not load torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffloc.cli.model_args import (
    add_max_batch_argument,
    add_model_arguments,
    check_model_arguments,
    placeholder_max_batch,
)
from diffloc.cli.scale_args import add_scale_arguments
from diffloc.errors import ConfigError
from diffloc.models.weight_files import check_clip_weights
from diffloc.validate import check_model_steps, check_noise, count_arg, guidance_arg, seed_arg, steps_arg


def add_seeds_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    default: Sequence[int],
    help: str,
    aliases: Sequence[str] = (),
) -> None:
    """``--seeds S [S ...]`` (also repeatable, ``--seeds 0 --seeds 1``), plus older spellings as ``aliases``
    (``--seed``); read the value with :func:`seeds_of`."""
    shown = " ".join(str(s) for s in default)
    parser.add_argument(
        "--seeds", *aliases, dest="seeds", type=seed_arg, nargs="+", action="extend", default=None, metavar="SEED",
        help=f"{help} (default {shown})",
    )  # fmt: skip
    parser.set_defaults(seeds_default=tuple(default))


def seeds_of(args: argparse.Namespace) -> tuple[int, ...]:
    """The seeds given, else the command's default."""
    return tuple(args.seeds) if args.seeds else tuple(args.seeds_default)


def add_sweep_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """Model, scorer, seeds, sampling and output options."""
    parser.add_argument("--model", default="shapesworld", help="diffusers dir, cached id, shapesworld, tiny-sd1…")
    add_allow_bin_argument(parser)
    parser.add_argument("--prompt", action="append", required=True, help="prompt showing the attribute (repeatable)")
    parser.add_argument("--attribute", required=True, help="text the scorer measures, e.g. 'in the style of van goo'")
    add_scorer_arguments(parser)
    add_seeds_argument(parser, default=(0, 1, 2, 3), help="seeds per prompt, each one item of the sweep")
    parser.add_argument("--steps", type=steps_arg, default=20, help="denoising steps (default 20)")
    parser.add_argument(
        "--guidance", type=guidance_arg, default=None,
        help="CFG scale (default: the model's — 4 for shapesworld — else 7.5)",
    )  # fmt: skip
    add_max_batch_argument(parser, default=16)
    parser.add_argument(
        "--bootstrap", type=count_arg("bootstrap", low=0), default=2000,
        help="bootstrap resamples of the 95%% interval over items (prompt × seed; at least 3 items); 0: no interval",
    )  # fmt: skip
    parser.add_argument("--out", default=default_out, help=f"output directory (default {default_out}/); reruns resume")
    add_scale_arguments(parser)
    add_model_arguments(parser)


def add_scorer_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--clip DIR`` (CLIP-score) or ``--detectors`` (ShapesWorld's detectors, for a ShapesWorld model you
    trained and exported yourself); neither: detectors for ``shapesworld``, an error for other models."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--clip", default=None, help="local CLIP directory for CLIP-score (default for shapesworld: detectors)"
    )
    group.add_argument(
        "--detectors",
        action="store_true",
        help="score with ShapesWorld's detectors (a model trained by 'diffloc world')",
    )


def add_allow_bin_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-bin``: read pickled ``.bin`` weights where a model or CLIP directory has no safetensors."""
    parser.add_argument(
        "--allow-bin", action="store_true",
        help="also read legacy pickled .bin weights (model and --clip directories); refused by default because "
        "unpickling runs code from the file: convert them to safetensors instead where you can",
    )  # fmt: skip


def noise_value(text: str) -> float | str:
    """``--noise``: a std >= 0, or ``auto`` (calibrated so the corruption halves the attribute's score in every
    image)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0 or 'auto'") from None
    try:
        return check_noise(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None


def sweep_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """Keyword arguments of :class:`~diffloc.tracing.config.SweepConfig` from parsed options, checked against the
    model's scheduler and with the ``--clip`` directory's weight format checked, all before a model loads."""
    from diffloc.models.registry import default_guidance
    from diffloc.tracing.config import SweepConfig

    guidance = default_guidance(args.model, args.guidance)
    fields = {
        "seeds": seeds_of(args), "steps": args.steps, "guidance": guidance,
        "max_batch": placeholder_max_batch(args), "bootstrap": args.bootstrap,
    }  # fmt: skip
    SweepConfig(**fields)  # validate early, before loading a model
    check_model_arguments(args)
    check_model_steps(args.model, args.steps, "--steps")
    if args.clip is not None:
        check_clip_weights(args.clip, allow_pickle=args.allow_bin)
    return fields
