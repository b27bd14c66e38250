"""Options of every command that loads a model: where it runs and how much it batches.

``--device``, ``--dtype`` and ``--variant`` are passed to :func:`diffloc.models.registry.load` unchanged;
``--max-batch`` takes a number or ``auto`` (:mod:`diffloc.models.memory`). Nothing here imports torch, so
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any, TypeVar

#: a frozen config dataclass with ``max_batch`` and ``guidance`` fields (sweep, trace, LocoGen and demo configs)
_Config = TypeVar("_Config")

#: ``--max-batch auto``: the batch is chosen from the device's free memory after loading the model.
AUTO = "auto"


def add_model_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Add ``--device``, ``--dtype`` and ``--variant`` to a command's parser."""
    group = parser.add_argument_group("device and precision")
    group.add_argument("--device", default=None, help="cuda, cuda:N, cpu, mps (default: cuda when available, else cpu)")
    group.add_argument(
        "--dtype", default=None, help="float32, float16 or bfloat16 (default: float16 on cuda, float32 on cpu)"
    )
    group.add_argument(
        "--variant", default=None,
        help="weight files to read, e.g. fp16 for *.fp16.safetensors (default: the plain files)",
    )  # fmt: skip


def max_batch_value(text: str) -> int | str:
    """``--max-batch``: a whole number >= 2, or ``auto`` (chosen from free device memory after loading)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 2 or 'auto'") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"max batch must be >= 2 (a clean run plus one intervention), got {value}")
    return value


def add_max_batch_argument(parser: argparse.ArgumentParser, *, default: int) -> None:
    """``--max-batch N|auto``."""
    parser.add_argument(
        "--max-batch", type=max_batch_value, default=default,
        help=f"most runs per UNet batch, or 'auto': as many as fit the device's free memory (default {default})",
    )  # fmt: skip


def placeholder_max_batch(args: argparse.Namespace, fallback: int = 2) -> int:
    """``args.max_batch`` as a number for validating a config before the model is loaded (``auto``: ``fallback``,
    replaced by :func:`resolve_max_batch` once the model is there)."""
    value = args.max_batch
    return fallback if value == AUTO else int(value)


def load_model(args: argparse.Namespace) -> Any:
    """Load ``--model`` on ``--device`` in ``--dtype`` from the ``--variant`` files (pickled weights only with
    ``--allow-bin``, where the command has it)."""
    from diffloc.models.registry import load

    return load(
        args.model, device=args.device, dtype=args.dtype, variant=args.variant,
        allow_pickle=getattr(args, "allow_bin", False),
    )  # fmt: skip


def check_model_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad ``--device``/``--dtype``/``--variant`` in one line before any work is done."""
    from diffloc.models.placement import check_variant, resolve_device, resolve_dtype

    resolve_dtype(args.dtype, resolve_device(args.device))
    check_variant(args.variant)


def resolve_max_batch(args: argparse.Namespace, model: Any, *, guidance: float) -> int:
    """The number behind ``--max-batch``: the given one, or with ``auto`` the most runs whose UNet batch fits
    the device's free memory (:func:`diffloc.models.memory.auto_max_batch`), printed so a rerun can pin it."""
    if args.max_batch != AUTO:
        return int(args.max_batch)
    from diffloc.models.memory import auto_max_batch

    choice = auto_max_batch(model, cfg=guidance > 1.0)
    print(f"--max-batch auto: {choice.runs} runs per batch ({choice.describe()})")
    return choice.runs


def fit_max_batch(args: argparse.Namespace, config: _Config, model: Any) -> _Config:
    """``config`` with ``--max-batch auto`` resolved for the loaded model (unchanged for a number)."""
    return replace(config, max_batch=resolve_max_batch(args, model, guidance=config.guidance))  # type: ignore[type-var, attr-defined]
