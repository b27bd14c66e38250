"""``diffloc audit``: try to bring back the concept a saved edit erased, and report each attack's success rate."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from diffloc.atomic import check_writable_dir
from diffloc.cli.model_args import add_model_arguments, check_model_arguments, load_model
from diffloc.cli.sweep_args import add_allow_bin_argument, add_scorer_arguments, add_seeds_argument, seeds_of
from diffloc.models.weight_files import check_clip_weights
from diffloc.validate import check_model_steps, count_arg, guidance_arg, positive_arg, steps_arg

#: the attacks of diffloc.audit.config.ATTACKS (repeated here: the parser must not import torch)
_ATTACK_NAMES = ("paraphrase", "spelling", "description", "learned", "revert", "finetune")
#: diffloc.audit.config.OBJECTIVES, repeated for the same reason
_OBJECTIVES = ("denoising", "scorer")


def _attacks_arg(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in _ATTACK_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown attack {(unknown or [text])[0]!r}; choose from {', '.join(_ATTACK_NAMES)} (comma-separated)"
        )
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc audit``."""
    parser = subparsers.add_parser("audit", help="attack a saved edit: does the erased concept come back?")
    parser.add_argument("edit", help="edit directory (from 'diffloc edit …')")
    parser.add_argument("--model", default="shapesworld", help="the unedited model the edit was computed on")
    add_allow_bin_argument(parser)
    parser.add_argument("--concept", default=None, help="which of the edit's concepts to audit (if it has several)")
    parser.add_argument("--attribute", default=None,
                        help="what shows the erased concept to the scorer (needed for updates and for CLIP; "
                             "ShapesWorld removals name it themselves)")  # fmt: skip
    parser.add_argument("--attacks", type=_attacks_arg, default=_ATTACK_NAMES,
                        help=f"comma-separated attacks (default all: {','.join(_ATTACK_NAMES)})")  # fmt: skip
    parser.add_argument("--budget", type=count_arg("--budget"), default=200,
                        help="fine-tune attack's largest step count; it also stops at budget/20 and budget/4 "
                             "(default 200)")  # fmt: skip
    parser.add_argument("--learned-steps", type=count_arg("--learned-steps"), default=100,
                        help="learned-prompt attack's optimization steps (default 100)")  # fmt: skip
    parser.add_argument("--learned-tokens", type=count_arg("--learned-tokens"), default=3,
                        help="free tokens put in the concept's place (default 3)")  # fmt: skip
    parser.add_argument("--learned-lr", type=positive_arg("--learned-lr"), default=5e-3,
                        help="learned-prompt attack's Adam learning rate (default 0.005)")  # fmt: skip
    parser.add_argument("--learned-objective", choices=_OBJECTIVES, default="denoising",
                        help="what the free tokens are learned for: the denoising loss on rendered images of the "
                             "concept (ShapesWorld) or the scorer through the sampler (default denoising)")  # fmt: skip
    parser.add_argument(
        "--prompts", type=count_arg("--prompts"), default=12, help="prompts per prompt attack (default 12)"
    )
    add_seeds_argument(parser, default=(0, 1, 2, 3), help="seeds of every attacked prompt")
    parser.add_argument("--steps", type=steps_arg, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance", type=guidance_arg, default=None,
                        help="CFG scale (default: the model's — 4 for shapesworld — else 7.5)")  # fmt: skip
    parser.add_argument("--max-batch", type=count_arg("--max-batch", low=2), default=32,
                        help="most rows per denoiser call (default 32)")  # fmt: skip
    add_scorer_arguments(parser)
    parser.add_argument("--out", default="out/audit", help="output directory (default out/audit/)")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Audit the edit and write ``audit.json``."""
    from diffloc.audit import AuditConfig, audit
    from diffloc.editing.edit import Edit
    from diffloc.eval.scorers import scorer_for
    from diffloc.models.registry import default_guidance

    edit = Edit.load(args.edit)
    config = AuditConfig(attacks=args.attacks, seeds=seeds_of(args), steps=args.steps, prompts=args.prompts,
                         guidance=default_guidance(args.model, args.guidance), max_batch=args.max_batch,
                         budget=args.budget, learned_steps=args.learned_steps, learned_tokens=args.learned_tokens,
                         learned_lr=args.learned_lr, learned_objective=args.learned_objective)  # fmt: skip
    check_model_arguments(args)
    check_model_steps(args.model, args.steps, "--steps")
    out = check_writable_dir(args.out)
    if args.clip is not None:
        check_clip_weights(args.clip, allow_pickle=args.allow_bin)
    model = load_model(args)
    edit.check_base(model)
    scorer = scorer_for(args.model, args.clip, detectors=args.detectors, allow_pickle=args.allow_bin,
                        device=model.device)  # fmt: skip
    start = time.perf_counter()
    report = audit(model, edit, scorer=scorer, config=config, concept=args.concept, attribute=args.attribute,
                   out=out)  # fmt: skip
    print(f"audit of {edit.method} edit: {report.target.attribute!r}")
    for attack in report.attacks:
        print(_row(attack.to_dict()))
    print(f"wrote {Path(out) / 'audit.json'} in {time.perf_counter() - start:.0f} s")
    return 0


def _asr(entry: dict | None) -> str:
    if entry is None:
        return "-"
    low, high = entry["interval"]
    return f"{entry['asr']:.2f} [{low:.2f}, {high:.2f}] (n={entry['n']})"


def _row(attack: dict) -> str:
    """One attack as a line: ASR after the edit (and without it), or per dial setting."""
    name = f"  {attack['name']:<12}"
    if attack["skipped"]:
        return f"{name}skipped: {attack['skipped']}"
    if attack["rows"]:
        dial = "fraction" if attack["name"] == "revert" else "steps"
        rows = "; ".join(f"{r[dial]:g} {dial}: {_asr(r)}" for r in attack["rows"])
        return f"{name}{rows}"
    return f"{name}edited {_asr(attack['edited'])}; unedited {_asr(attack['unedited'])}"
