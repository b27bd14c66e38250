"""``diffloc edit``: compute Diff-QuickFix, LocoEdit and neuron edits into edit directories, or show one.

Examples::

    diffloc edit quickfix --model shapesworld --concept "van goo" --target "a plain style" --out edits/qf
    diffloc edit locoedit --model shapesworld --concept "van goo" --target "a plain style" --sites unet.xattn.4 --out e
    diffloc edit locoedit --concept "pica stro" --target "a plain style" --window runs/locogen \\
        --widen "in the style of pica stro" --out edits/loco
    diffloc edit locoedit --concept "pica stro" --target "a plain style" --sites "unet.xattn.*" \\
        --preserve "mo nettle" --stats stats/keep-mo-nettle.safetensors --out edits/pica  # reused next time
    diffloc edit neurons --model tiny-sd1 --concept cat --target dog --sites unet.xattn.8 --top-n 20 --out e
    diffloc edit neurons --concept "pica stro" --target "a plain style" --sites unet.xattn.8,unet.xattn.9 \\
        --mode paper --out no-pica.json   # the paper's ablation: an intervention file, not an edit
    diffloc edit show edits/qf
    diffloc generate --edit edits/qf --prompt "a red circle in the style of van goo"
    diffloc edit export edits/qf --out shapesworld-no-van-goo   # a plain diffusers folder
    diffloc generate --ablation no-pica.json --prompt "a red circle in the style of pica stro"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from diffloc.cli.model_args import add_model_arguments, check_model_arguments, load_model
from diffloc.cli.progress import progress_bar
from diffloc.cli.sweep_args import add_allow_bin_argument, add_scorer_arguments
from diffloc.cli.tables import format_table
from diffloc.editors import EDITORS, EditorOption
from diffloc.errors import ConfigError, DifflocError
from diffloc.validate import guidance_arg, positive_arg, steps_arg


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="shapesworld", help="diffusers dir, cached id, shapesworld, tiny-sd1…")
    parser.add_argument(
        "--concept", action="append", required=True, help="concept to edit (repeat for a multi-concept edit)"
    )
    parser.add_argument(
        "--target",
        action="append",
        required=True,
        help="what the concept becomes: one target for all concepts, or one per --concept",
    )
    parser.add_argument("--preserve", action="append", default=[], help="concept to keep unchanged (repeatable)")
    parser.add_argument(
        "--preserve-prompt", action="append", default=[],
        help="whole prompt whose text states must not change, every position (repeatable; quickfix, locoedit, "
        "joint-kv, context)",
    )  # fmt: skip
    parser.add_argument(
        "--template", action="append", default=[], help="extra prompt template with one '{}' (repeatable)"
    )
    parser.add_argument(
        "--no-default-templates", action="store_true", help="use only --template prompts, not the method's defaults"
    )
    parser.add_argument(
        "--preserve-weight", type=positive_arg("preserve_weight"), default=1.0,
        help="weight of the preserved pairs against the edited ones in the solve (UCE's scale; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--stats", default=None, metavar="FILE",
        help="preservation statistics file: reused if it exists (checked against the model and the preservation "
        "set), else computed and written there for the next edit (quickfix, locoedit, joint-kv, context; needs "
        "--preserve*)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="edit directory to write (edit.safetensors + edit.json)")
    add_allow_bin_argument(parser)
    add_model_arguments(parser)


def _sites(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--sites", help="cross-attention sites, comma-separated names or globs (e.g. unet.xattn.8,9)")
    where.add_argument("--window", help="a saved LocoGen result directory: edit its best window")


def _add_option(parser: argparse.ArgumentParser, option: EditorOption) -> None:
    """An editor's option as an argparse option, stored under its config field."""
    if option.switch:
        action = "store_false" if option.default else "store_true"
        parser.add_argument(option.flag, dest=option.field, action=action, help=option.help)
        return
    parser.add_argument(
        option.flag, dest=option.field, type=option.parse or str, choices=option.choices, default=option.default,
        help=option.help,
    )  # fmt: skip


def _widen_arguments(parser: argparse.ArgumentParser) -> None:
    """LocoEdit's window widening (:mod:`diffloc.workflows.widening`)."""
    widen = parser.add_argument_group("widening (diffloc.workflows.widening): grow the window until the edit works")
    widen.add_argument(
        "--widen", metavar="ATTRIBUTE", default=None,
        help="scorer text of what the edit must remove or bring (e.g. 'in the style of van goo'); tries windows of "
        "2, 4, 8, 16 layers around --sites/--window and keeps the first whose edit moves it 90%% of the way",
    )  # fmt: skip
    widen.add_argument("--widen-mode", choices=("remove", "update"), default="remove", help="default remove")
    widen.add_argument("--widen-steps", type=steps_arg, default=20, help="denoising steps of the check (default 20)")
    widen.add_argument(
        "--widen-guidance",
        type=guidance_arg,
        default=None,
        help="CFG scale of the check (default: the model's — 4 for shapesworld — else 7.5)",
    )
    add_scorer_arguments(widen)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc edit`` and its sub-commands."""
    parser = subparsers.add_parser(
        "edit",
        help=f"compute a closed-form edit ({', '.join(EDITORS)}) or show a saved one",
        description="Compute model edits as revertible, saveable artifacts, or describe a saved edit.",
    )
    sub = parser.add_subparsers(dest="edit_command", metavar="METHOD")

    for entry in EDITORS.values():  # one sub-command per editor of the table, with its options
        editor = sub.add_parser(entry.name, help=entry.cli_help or entry.summary)
        _common(editor)
        if entry.takes_sites:
            _sites(editor)
        for option in entry.options:
            _add_option(editor, option)
        if entry.name == "locoedit":
            _widen_arguments(editor)
        editor.set_defaults(func=run_compute, method=entry.name)

    show = sub.add_parser("show", help="describe a saved edit or neuron ablation: what it touches, sizes, base hash")
    show.add_argument("edit_dir", help="edit directory, or a neuron ablation file (from --mode paper)")
    show.add_argument("--json", action="store_true", help="print the edit's JSON metadata instead of a table")
    show.set_defaults(func=run_show)

    export = sub.add_parser(
        "export",
        help="write the edited model as a plain diffusers folder (safetensors) that loads without diffloc",
        description=(
            "Apply a saved edit to its base model and save the whole pipeline with save_pretrained into a new "
            "folder; DiffusionPipeline.from_pretrained(OUT) loads it. The base model's files are never written."
        ),
    )
    export.add_argument("edit_dir", help="edit directory (from 'diffloc edit …')")
    export.add_argument("--out", required=True, help="new (or empty) folder to write the edited pipeline into")
    export.add_argument("--model", default="shapesworld", help="the unedited model the edit was computed on")
    export.add_argument("--variant", default=None, help="weight files of the base to read, e.g. fp16")
    add_allow_bin_argument(export)
    export.set_defaults(func=run_export)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _site_spec(args: argparse.Namespace) -> Any:
    if getattr(args, "window", None):
        from diffloc.tracing.results import WindowResult

        try:
            return WindowResult.load(args.window)
        except DifflocError:
            raise
        except Exception as exc:  # a corrupt or foreign directory
            raise DifflocError(f"cannot read LocoGen result {args.window!r}: {exc}") from None
    return args.sites


def _config(args: argparse.Namespace) -> Any:
    from diffloc.editing.registry import get_method

    entry = EDITORS[args.method]
    if not entry.weighs_preservation and args.preserve_weight != 1.0:
        weighing = ", ".join(name for name, each in EDITORS.items() if each.weighs_preservation)
        raise ConfigError(f"--preserve-weight applies to {weighing} (a {entry.name} edit solves nothing)")
    values = vars(args) | ({"sites": _site_spec(args)} if entry.takes_sites else {})
    return get_method(entry.name).config_class(**entry.config_kwargs(values))


def run_compute(args: argparse.Namespace) -> int:
    """Compute an edit and save it."""
    from diffloc.atomic import check_writable_file
    from diffloc.editing import Edit, EditRequest, compute_edit
    from diffloc.models.weight_files import check_clip_weights
    from diffloc.validate import check_model_steps

    request = EditRequest(
        concepts=tuple(args.concept),
        targets=tuple(args.target),
        templates=tuple(args.template),
        default_templates=not args.no_default_templates,
        preserve=tuple(args.preserve),
        preserve_prompts=tuple(args.preserve_prompt),
    )
    config = _config(args)  # validate before loading the model
    if args.stats is not None:
        if EDITORS[args.method].statistics is None:
            preserving = ", ".join(name for name, each in EDITORS.items() if each.statistics is not None)
            raise ConfigError(f"--stats applies to {preserving} (a {args.method} edit preserves nothing)")
        if not request.preserve and not request.preserve_prompts:
            raise ConfigError("--stats needs a preservation set: add --preserve or --preserve-prompt")
        if not Path(args.stats).is_file():
            check_writable_file(args.stats, "--stats file")
    check_model_arguments(args)
    if getattr(args, "widen", None):
        check_model_steps(args.model, args.widen_steps, "--widen-steps")
        if args.clip is not None:
            check_clip_weights(args.clip, allow_pickle=args.allow_bin)
    if getattr(args, "mode", "weights") == "paper":
        return _ablation(args, request, config)
    Edit.check_output(args.out)  # the work is not done for an edit that could not be saved
    model = load_model(args)
    if getattr(args, "widen", None):
        edit = _widened(args, model, request, config)
    elif args.stats is not None:
        edit = compute_edit(model, request, method=args.method, config=config,
                            preserved=_statistics(args.stats, model, request, args.method, config))  # fmt: skip
    else:
        edit = compute_edit(model, request, method=args.method, config=config)
    out = edit.save(args.out)
    print(f"{out}: {edit.method} edit of {len(edit.parameters)} tensor(s), {edit.num_values:,} values")
    return 0


def _ablation(args: argparse.Namespace, request: Any, config: Any) -> int:
    """``neurons --mode paper``: compute the neuron ablation and write it as a JSON intervention file."""
    from diffloc.atomic import check_writable_file
    from diffloc.editing import compute_ablation

    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out!r} is a directory; --mode paper writes one JSON file, e.g. no-style.json")
    check_writable_file(args.out, "--out")
    ablation = compute_ablation(load_model(args), request, config)
    out = ablation.save(args.out)
    print(f"{out}: neuron ablation (paper mode) of {ablation.num_channels} channel(s) in {len(ablation.sites)} "
          "projection(s); generate with: diffloc generate --ablation " + str(out))  # fmt: skip
    return 0


def _statistics(path: str, model: Any, request: Any, method: str, config: Any) -> Any:
    """``--stats``: the preservation statistics in ``path`` (checked by the edit), or computed and saved there."""
    from diffloc.editing import PreservedStatistics, preservation_statistics

    if Path(path).exists():
        stats = PreservedStatistics.load(path, model)
        print(f"preservation statistics: reused from {path} ({stats.rows:,} preserved rows)")
        return stats
    stats = preservation_statistics(model, request, method=method, config=config)
    stats.save(path, model)
    print(f"preservation statistics: computed in {stats.seconds:.2f} s ({stats.rows:,} rows), saved to {path}")
    return stats


def _widened(args: argparse.Namespace, model: Any, request: Any, config: Any) -> Any:
    """``--widen``: the LocoEdit edit on the smallest window around the given one that works.

    With ``--stats`` the file's statistics serve the final edit (the leave-one-template-out folds need their own).
    """
    from diffloc.engine.generate import GenerationConfig
    from diffloc.eval.scorers import scorer_for
    from diffloc.models.registry import default_guidance
    from diffloc.workflows.widening import WidenConfig, locoedit_search

    scorer = scorer_for(args.model, args.clip, detectors=args.detectors, allow_pickle=args.allow_bin,
                        device=model.device)  # fmt: skip
    guidance = default_guidance(args.model, args.widen_guidance)
    search = WidenConfig(generation=GenerationConfig(steps=args.widen_steps, guidance=guidance))
    preserved = None if args.stats is None else _statistics(args.stats, model, request, args.method, config)
    with progress_bar("windows") as bar:
        edit = locoedit_search(
            model, request, config, attribute=args.widen, mode=args.widen_mode, scorer=scorer, search=search,
            progress=bar, preserved=preserved,
        )  # fmt: skip
    found = edit.stats["window_search"]
    for row in found["tried"]:
        print(f"{row['window'][0]}..{row['window'][-1]} ({len(row['window'])} layers): score {row['score']:.3f} "
              f"(unedited {found['unedited_score']:.3f}){'  <- works' if row['works'] else ''}")  # fmt: skip
    return edit


def run_show(args: argparse.Namespace) -> int:
    """Print what a saved edit (or neuron ablation file) touches."""
    from diffloc.editing import Edit, NeuronAblation

    edit = NeuronAblation.load(args.edit_dir) if Path(args.edit_dir).is_file() else Edit.load(args.edit_dir)
    if args.json:
        json.dump(edit.metadata(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(edit.summary() if isinstance(edit, NeuronAblation) else edit_table(edit))
    return 0


def edit_table(edit: Any) -> str:
    """What an edit does and touches: its request, then one row per parameter (shape, values, how much the edit
    changes it relative to the base, the base tensor's hash), then its stats and notes."""
    request = edit.request
    lines = [f"{edit.method} edit of a {edit.family} model (diffloc {edit.version})"]
    for label, key in (("concepts", "concepts"), ("targets", "targets"), ("preserved", "preserve"),
                       ("preserved prompts", "preserve_prompts"), ("templates", "templates")):  # fmt: skip
        if request.get(key):
            lines.append(f"  {label + ':':<19}{'; '.join(str(v) for v in request[key])}")
    rows = []
    for key, new in edit.weights.items():
        base = edit.originals[key]
        change = "added" if base is None else f"{float((new - base).float().norm() / base.float().norm()):.2%}"
        shape = "x".join(str(d) for d in new.shape)
        rows.append([key, shape, str(new.dtype).removeprefix("torch."), f"{new.numel():,}", change,
                     edit.base["tensors"][key][:16]])  # fmt: skip
    lines += ["", format_table(["parameter", "shape", "dtype", "values", "change", "base sha256"], rows, right=(3, 4))]
    lines.append(f"{len(rows)} tensors, {edit.num_values:,} values; change = |new - base| / |base| (Frobenius)")
    scalars = {k: v for k, v in edit.stats.items() if isinstance(v, int | float | str | bool)}
    if scalars:
        lines += ["", format_table(["stat", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else v]
                                                       for k, v in scalars.items()])]  # fmt: skip
    lines += [f"note: {note}" for note in edit.notes]
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    """Bake a saved edit into a plain diffusers pipeline folder."""
    from diffloc.editing import Edit
    from diffloc.editing.export import check_export_target, export_edited
    from diffloc.models.registry import load

    edit = Edit.load(args.edit_dir)
    check_export_target(args.out, args.model)
    dtype = next(iter(edit.weights.values())).dtype  # the edit's base hashes hold in the dtype it was made in
    model = load(args.model, device="cpu", dtype=dtype, variant=args.variant, allow_pickle=args.allow_bin)
    out = export_edited(model, edit, args.out)
    print(f"{out}: {edit.method} edit of {args.model} as a diffusers pipeline; load it with "
          f"DiffusionPipeline.from_pretrained({str(out)!r})")  # fmt: skip
    return 0
