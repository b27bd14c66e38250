"""``--ray [ADDRESS]`` and ``--shard I/N``: who computes a sweep's items (commands and benches share these)."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from diffloc.tracing.executors import parse_shard
from diffloc.validate import cli_type, count_arg

if TYPE_CHECKING:
    from diffloc.tracing.executors import Executor

#: ``type=`` of ``--shard``: ``I/N`` with ``0 <= I < N``, refused by the parser otherwise
shard_arg = cli_type(parse_shard, str)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ray [ADDRESS]``, ``--ray-workers N`` and ``--shard I/N`` (``--ray`` and ``--shard`` exclusive)."""
    group = parser.add_argument_group("scale-out (items are written to --out, which every worker must share)")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="compute the sweep's items as Ray tasks, one GPU each when there are GPUs; ADDRESS joins a cluster "
        "(e.g. auto, ray://head:10001), none starts Ray here (needs: pip install \"diffloc[ray]\")",
    )  # fmt: skip
    where.add_argument(
        "--shard", type=shard_arg, default=None, metavar="I/N",
        help="compute only shard I of N of each sweep (job arrays: I = $SLURM_ARRAY_TASK_ID); afterwards one "
        "run without --shard assembles the result from --out without recomputing",
    )  # fmt: skip
    group.add_argument("--ray-workers", type=count_arg("ray_workers"), default=None, metavar="N",
                       help="with --ray: most workers (default: one per GPU of the cluster, else per CPU)")  # fmt: skip


def executor_from_args(args: argparse.Namespace) -> AbstractContextManager[Executor | None]:
    """The executor the options ask for, as a context manager that stops Ray workers on exit (``None``: this
    process). Call before loading the model, so a missing Ray fails at once.

    Raises:
        ConfigError: ``--ray-workers`` without ``--ray`` (a malformed or out-of-range ``--shard`` or
            ``--ray-workers`` is refused by the parser).
        DifflocError: ``--ray`` without Ray installed (names the extra to install).
    """
    from diffloc.errors import ConfigError

    if args.ray_workers is not None and args.ray is None:
        raise ConfigError("--ray-workers applies with --ray")
    if args.shard is not None:
        return nullcontext(args.shard)
    if args.ray is not None:
        from diffloc.tracing.ray_executor import RayExecutor

        executor: Any = RayExecutor(args.ray or None, workers=args.ray_workers)
        return executor
    return nullcontext(None)
