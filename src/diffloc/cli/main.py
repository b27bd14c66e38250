"""Entry point of the ``diffloc`` command.

Each command lives in its own module exposing ``add_parser(subparsers)``; that function registers the
sub-command and sets ``func`` on its parser to a callable ``run(args) -> int``. Errors of the
:class:`~diffloc.errors.DifflocError` family are printed as one line, never as a traceback.

Command modules import torch, diffusers and matplotlib inside ``run``, never at module level, so that
``diffloc --help`` and every command's ``--help`` answer at once (a test checks no such module is loaded).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from diffloc import __version__
from diffloc.errors import DifflocError, SweepIncomplete

COMMAND_MODULES = ("sites", "generate", "trace", "locogen", "edit", "eval", "audit", "demo", "reproduce", "world")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, ``diffloc: error: <command>: argument --x: ...``
    (exit 2), like every other refusal; sub-command parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        """Print the error as one line and exit with status 2."""
        command = self.prog.removeprefix("diffloc").strip()
        self.exit(2, f"diffloc: error: {command + ': ' if command else ''}{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered command."""
    parser = OneLineParser(
        prog="diffloc",
        description="Localize and edit visual knowledge in text-to-image diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"diffloc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"diffloc.cli.{name}")
        module.add_parser(subparsers)
    return parser


def _quiet_third_party() -> None:
    # transformers/diffusers log optional-backend notices (e.g. torchvision absent) at import; a CLI user
    # can do nothing about them, so only their errors are shown.
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _no_library_progress_bars() -> None:
    # diffusers/transformers draw their own bars while loading weights; diffloc shows one bar per job.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 diffloc error, 2 usage error)."""
    _quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _no_library_progress_bars()
    try:
        return int(args.func(args) or 0)
    except SweepIncomplete as exc:  # one shard did its share: not an error, and no result to show yet
        print(f"diffloc: {exc}")
        return 0
    except DifflocError as exc:
        print(f"diffloc: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print("diffloc: error: out of memory; use fewer or smaller images (--max-batch, --height/--width)",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print("diffloc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (| head): no traceback, like any Unix tool
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
