"""``diffloc sites MODEL``: the table of canonical sites of a model."""

from __future__ import annotations

import argparse
import json
import sys

from diffloc.cli.sweep_args import add_allow_bin_argument
from diffloc.cli.tables import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc sites``."""
    parser = subparsers.add_parser(
        "sites",
        help="list the canonical sites (name, module path, kind, resolution) of a model",
        description=(
            "List every traceable/editable site of a model in forward execution order. A pipeline directory is "
            "read from its config files only (modules built on the meta device, no weights loaded)."
        ),
    )
    parser.add_argument(
        "model", nargs="?", default="shapesworld", help="diffusers dir, cached id, shapesworld, tiny-sd1…"
    )
    add_allow_bin_argument(parser)
    parser.add_argument("--select", default="*", help="site names or globs, comma-separated (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List sites."""
    from diffloc.models.registry import TINY_PREFIX, load, resolve_source
    from diffloc.models.structure import load_structure
    from diffloc.models.weight_files import check_pipeline_weights

    tiny = args.model.startswith(TINY_PREFIX)  # built in-process; anything else is read from its configs
    if tiny:
        model = load(args.model, device="cpu")
    else:
        path = resolve_source(args.model)
        check_pipeline_weights(path, allow_pickle=args.allow_bin)  # as every command that reads the weights would
        model = load_structure(path, source=args.model)
    sites = list(model.sites) if args.select in ("*", "") else model.sites.select(args.select)
    rows = [
        {
            "name": s.name,
            "module_path": s.full_path,
            "kind": s.kind.value,
            "resolution": s.resolution or "",
        }
        for s in sites
    ]
    if args.json:
        json.dump({"model": args.model, "family": model.family, "sites": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"# {args.model}: family {model.family}, {len(rows)} sites")
    print(format_table(list(rows[0]), [list(r.values()) for r in rows]))
    return 0
