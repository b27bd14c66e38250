"""``diffloc sites MODEL``: the table of canonical sites of a model."""

from __future__ import annotations

import argparse
import json
import sys


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
    parser.add_argument("--select", default="*", help="site names or globs, comma-separated (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List sites."""
    from diffloc.models.registry import TINY_PREFIX, load, resolve_source
    from diffloc.models.structure import load_structure

    tiny = args.model.startswith(TINY_PREFIX)  # built in-process; anything else is read from its configs
    model = load(args.model, device="cpu") if tiny else load_structure(resolve_source(args.model), source=args.model)
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
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print(f"# {args.model}: family {model.family}, {len(rows)} sites")
    print("  ".join(k.ljust(widths[k]) for k in widths))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in widths))
    return 0
