"""Arguments shared by the sweep commands (trace, locogen)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any, TypeVar

from diffloc.cli.model_args import (
    add_max_batch_argument,
    add_model_arguments,
    check_model_arguments,
    placeholder_max_batch,
    resolve_max_batch,
)
from diffloc.models.registry import default_guidance
from diffloc.tracing.config import SweepConfig

_Config = TypeVar("_Config", bound=SweepConfig)


def add_sweep_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """Model, scorer, seeds, sampling and output options."""
    parser.add_argument("--model", default="shapesworld", help="diffusers dir, cached id, shapesworld, tiny-sd1…")
    parser.add_argument("--prompt", action="append", required=True, help="prompt showing the attribute (repeatable)")
    parser.add_argument("--attribute", required=True, help="text the scorer measures, e.g. 'in the style of van goo'")
    add_scorer_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds per prompt (default 0 1 2 3)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="CFG scale (default: the model's — 4 for shapesworld — else 7.5)"
    )
    add_max_batch_argument(parser, default=16)
    parser.add_argument(
        "--bootstrap", type=int, default=2000,
        help="bootstrap resamples of the 95%% interval over items (prompt × seed; at least 3 items); 0: no interval",
    )  # fmt: skip
    parser.add_argument("--out", default=default_out, help=f"output directory (default {default_out}/); reruns resume")
    add_model_arguments(parser)


def add_scorer_arguments(parser: argparse.ArgumentParser) -> None:
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


def noise_value(text: str) -> float | str:
    """``--noise``: a std >= 0, or ``auto`` (calibrated so the corruption halves the attribute's score in every
    image)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0 or 'auto'") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"noise must be a finite number >= 0 or 'auto', got {text!r}")
    return value


def sweep_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """Keyword arguments of :class:`SweepConfig` from parsed options."""
    guidance = default_guidance(args.model, args.guidance)
    fields = {
        "seeds": tuple(args.seeds), "steps": args.steps, "guidance": guidance,
        "max_batch": placeholder_max_batch(args), "bootstrap": args.bootstrap,
    }  # fmt: skip
    SweepConfig(**fields)  # validate early, before loading a model
    check_model_arguments(args)
    return fields


def fit_max_batch(args: argparse.Namespace, config: _Config, model: Any) -> _Config:
    """``config`` with ``--max-batch auto`` resolved for the loaded model (unchanged for a number)."""
    return replace(config, max_batch=resolve_max_batch(args, model, guidance=config.guidance))
