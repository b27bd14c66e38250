"""``diffloc trace unet|text``: causal tracing with plots, resumable."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from diffloc.atomic import check_writable_dir, write_json_atomic
from diffloc.cli.model_args import fit_max_batch, load_model
from diffloc.cli.progress import progress_bar
from diffloc.cli.scale_args import executor_from_args
from diffloc.cli.sweep_args import add_sweep_arguments, noise_value, sweep_kwargs
from diffloc.engine.sources import RESTORE_SOURCES
from diffloc.errors import ConfigError, PromptError
from diffloc.sites import TEXT_STATE_KINDS
from diffloc.tracing.methods import (
    DEFAULT_TOP_K,
    DIRECTIONS,
    METHODS,
    check_exact_only,
    check_method,
)
from diffloc.validate import check_fraction, cli_type, count_arg, seed_arg

if TYPE_CHECKING:
    from diffloc.models.base import LoadedModel
    from diffloc.tracing.results import TraceResult

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc trace``."""
    parser = subparsers.add_parser("trace", help="causal tracing of the UNet or the text encoder")
    kinds = parser.add_subparsers(dest="target", metavar="unet|text", required=True)
    for target, default_out in (("unet", "out/trace-unet"), ("text", "out/trace-text")):
        sub = kinds.add_parser(
            target,
            help=f"trace {'UNet sites' if target == 'unet' else 'text-encoder states (layer × token × kind)'}",
            description=(
                "Corrupt the subject's token embeddings with Gaussian noise (or, with --substitute, replace them "
                "with other words'), restore one component's clean output, and score how much of the attribute "
                "comes back. Writes result.json/.npz and PNG plots."
            ),
        )
        add_sweep_arguments(sub, default_out=default_out)
        sub.add_argument("--subject", required=True, help="words of the prompt to corrupt, e.g. 'van goo'")
        sub.add_argument(
            "--noise", type=noise_value, default=None,
            help="noise std, or 'auto': the smallest multiple (3, 6, 12, 24, 48) of the token-embedding std "
            "that halves the attribute's score in every traced image (default: 3 × token-embedding std)",
        )  # fmt: skip
        sub.add_argument(
            "--substitute", default=None, metavar="TEXT",
            help="corrupt by symmetric token replacement instead of noise: the subject's tokens read as TEXT, words "
            "of the same token count (e.g. --subject red --substitute blue)",
        )  # fmt: skip
        sub.add_argument(
            "--validation-prompt", action="append", default=[], metavar="PROMPT",
            help="prompt of the validation items (repeatable) that choose the causal-site threshold; they must not "
            "repeat a traced (prompt, seed)",
        )  # fmt: skip
        sub.add_argument(
            "--validation-seeds", type=seed_arg, nargs="+", default=None,
            help="seeds of the validation items (default: --seeds)",
        )  # fmt: skip
        sub.add_argument(
            "--method", choices=METHODS, default="exact",
            help="exact (default: one restored run per site), attribution (every site estimated from one backward "
            "pass per batch of items; needs a differentiable scorer) or screen (estimated, the --top-k highest "
            "restored exactly)",
        )  # fmt: skip
        sub.add_argument(
            "--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
            help=f"sites --method screen restores exactly (default {DEFAULT_TOP_K})",
        )  # fmt: skip
        sub.add_argument(
            "--direction", choices=DIRECTIONS, default=DIRECTIONS[0],
            help="restore (default: the corrupted run gets one site's clean value; is the site enough?) or remove "
            "(the clean run gets one site's corrupted value; is the site needed?); remove is traced exactly only",
        )  # fmt: skip
        sub.add_argument(
            "--fraction", type=cli_type(check_fraction, float), default=1.0, metavar="F",
            help="patch this share of the way from a site's own value to the source's, in (0, 1] (default 1: the "
            "whole value); below 1 tells apart sites that each move a saturating score fully; exact method only",
        )  # fmt: skip
        if target == "unet":
            sub.add_argument(
                "--no-attention-fix", dest="attention_fix", action="store_false",
                help="estimate cross-attention key sites (.k) to first order through the softmax, without AtP*'s "
                "fix (the layer's exact output with the clean keys); gradient methods only",
            )  # fmt: skip
            sub.add_argument(
                "--gradient-dropout", type=count_arg("--gradient-dropout", low=0), default=0, metavar="L",
                help="also rank sites by AtP*'s gradient dropout over L layers of the denoiser (L more backward "
                "passes; screen confirms the top of that ranking); 0 (default) off, else at least 2",
            )  # fmt: skip
            sub.add_argument(
                "--sites", default=None,
                help="denoiser sites/globs, comma-separated (default: every denoiser layer, unet.* on a UNet)",
            )  # fmt: skip
            sub.add_argument(
                "--restore-from", choices=RESTORE_SOURCES, default="same-latent",
                help="where a restore reads the clean value: same-latent (default; the clean text on the restored "
                "run's own latent) or trajectory (the clean run's activation on the clean latent)",
            )  # fmt: skip
        else:
            sub.add_argument(
                "--kinds", nargs="+", default=list(TEXT_STATE_KINDS), choices=TEXT_STATE_KINDS, help="state kinds"
            )
            sub.add_argument(
                "--encoder", default=None, metavar="PREFIX",
                help="trace one text encoder on its own tokens (text, text2, text3); required where the encoders "
                "tokenize differently (SD3, FLUX)",
            )  # fmt: skip
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Trace and write results and plots."""
    from diffloc.eval.scorers import scorer_for
    from diffloc.tracing.causal import causal_trace, trace_text
    from diffloc.tracing.config import TraceConfig
    from diffloc.tracing.selection import check_disjoint
    from diffloc.tracing.statistics import check_items

    check_method(args.method, args.top_k)
    check_exact_only(args.method, direction=args.direction, fraction=args.fraction)
    auto = args.noise == "auto"
    extra: dict[str, object] = {"direction": args.direction, "fraction": args.fraction}
    if args.target == "unet":
        extra["restore_from"] = args.restore_from
    if args.validation_seeds is not None:
        extra["validation_seeds"] = tuple(args.validation_seeds)
    if args.substitute is not None:
        if auto:
            raise ConfigError("--noise auto calibrates the noise; --substitute corrupts without noise, give one")
        extra["substitute"] = args.substitute
    config = TraceConfig(noise=None if auto else args.noise, **sweep_kwargs(args), **extra)  # type: ignore[arg-type]
    if args.target == "text" and len(args.prompt) != 1:
        raise PromptError(
            f"text tracing takes one prompt (token positions differ between prompts); got {len(args.prompt)}"
        )
    check_items(len(args.prompt) * len(config.seeds), config.intervals)
    validation = [(p, s) for p in args.validation_prompt for s in (config.validation_seeds or config.seeds)]
    check_disjoint([(p, s) for p in args.prompt for s in config.seeds], validation)
    out = check_writable_dir(args.out)  # created by the first file written
    with executor_from_args(args) as executor:
        model = load_model(args)
        config = fit_max_batch(args, config, model)
        scorer = scorer_for(args.model, args.clip, detectors=args.detectors, allow_pickle=args.allow_bin,
                            device=model.device)  # fmt: skip
        if auto:
            from diffloc.tracing.calibrate import calibrate_noise

            calibration = calibrate_noise(
                model, args.prompt, args.subject, args.attribute, scorer=scorer, config=config
            )
            write_json_atomic(out / "noise.json", calibration.to_dict())
            config = replace(config, noise=calibration.noise)
            print(
                f"noise {calibration.noise:.4g} ({calibration.multiplier:g} × embedding std "
                f"{calibration.embedding_std:.4g}); "
                f"clean {calibration.clean:.3f}, corrupted by multiplier: "
                + ", ".join(f"{k}× {v:.3f}" for k, v in calibration.corrupted.items())
            )
        with progress_bar(f"trace {args.target}", unit="run") as progress:
            if args.target == "unet":
                sites = None if args.sites is None else args.sites.split(",")
                result = causal_trace(
                    model, args.prompt, args.subject, args.attribute, scorer=scorer, sites=sites,
                    config=config, validation_prompts=args.validation_prompt, out=out, progress=progress,
                    executor=executor, method=args.method, top_k=args.top_k, attention_fix=args.attention_fix,
                    gradient_dropout=args.gradient_dropout,
                )  # fmt: skip
            else:
                result = trace_text(
                    model, args.prompt[0], args.subject, args.attribute, scorer=scorer, kinds=args.kinds,
                    config=config, validation_prompts=args.validation_prompt, out=out, progress=progress,
                    executor=executor, method=args.method, top_k=args.top_k, encoder=args.encoder,
                )  # fmt: skip
    _write_plots(model, result, out)
    print(f"wrote {out / 'result.json'} and {out / 'trace.png'}")
    return 0


def _write_plots(model: LoadedModel, result: TraceResult, out: Path) -> None:
    """``trace.png`` (and for the UNet ``strip.png``: the first item's clean, corrupted and best restored runs)."""
    from diffloc.report.plots import image_strip, plot_denoiser_trace, plot_step_effects, plot_text_trace, save_figure
    from diffloc.tracing.causal import first_item_images
    from diffloc.tracing.results import DENOISER_TRACE

    if result.kind == DENOISER_TRACE:
        save_figure(plot_denoiser_trace(result), out / "trace.png")
        images = first_item_images(model, result)
        labels = ["clean", "corrupted", *(name for name, _ in result.top(images.shape[0] - 2, include_controls=False))]
        save_figure(image_strip(images, labels), out / "strip.png")
        if result.step_effects is not None:
            save_figure(plot_step_effects(result), out / "steps.png")
    else:
        save_figure(plot_text_trace(result), out / "trace.png")
    for line in summary_lines(result):
        print(line)


def summary_lines(result: TraceResult) -> list[str]:
    """What a trace found, in a few lines: scores, top sites with intervals, controls, selection."""
    from diffloc.tracing.results import DENOISER_TRACE
    from diffloc.tracing.screen import UNRELIABLE_ERROR

    substitute = (result.meta.get("config") or {}).get("substitute")
    subject = result.meta.get("subject", "")
    corruption = f"'{subject}' replaced by '{substitute}'" if substitute else f"noise std {result.noise:.4g}"
    lines = [
        f"{result.n_items} items; clean {result.clean_score:.3f}  corrupted {result.corrupt_score:.3f}  "
        f"restore source: {result.restore_from}  method: {result.method}"
        + (
            "  direction: remove (the clean run with each site's corrupted value)"
            if result.direction == "remove"
            else ""
        )
        + (f"  fraction: {result.fraction:g} of each value patched" if result.fraction != 1 else ""),
        f"corruption: {corruption}",
    ]
    if result.method != "exact":
        confirmed = result.meta.get("confirmed") or []
        lines.append(
            "scores are attribution estimates (first-order), "
            + (f"except {len(confirmed)} confirmed exactly: {', '.join(confirmed)}" if confirmed else "none exact")
        )
        error = result.meta.get("confirmed_error")
        if error is not None:
            flag = (
                f"  FLAGGED: above {UNRELIABLE_ERROR}, the estimates rank poorly here"
                if error > UNRELIABLE_ERROR
                else ""
            )
            lines.append(f"estimates of the confirmed sites missed their exact scores by {error:.2f} of the gap{flag}")
    if result.kind == DENOISER_TRACE:
        effect = result.indirect_effect
        top = []
        for name, value in result.top(5, include_controls=False):
            i = result.labels.index(name)
            ci = "" if result.interval is None else f" [{result.interval[0, i]:.2f}, {result.interval[1, i]:.2f}]"
            estimate = " (estimate)" if result.marks[i] == "estimate" else ""
            top.append(f"{name} {value:.2f}{ci}{estimate}")
        measure = "effect of removing" if result.direction == "remove" else "indirect effect"
        lines.append(f"top sites ({measure}, 95% interval): " + ", ".join(top))
        if result.controls:
            controls = ", ".join(f"{c} {effect[result.labels.index(c)]:.3f}" for c in result.controls)
            flag = "  FLAGGED: a control moved more than 0.1" if result.controls_flagged else ""
            lines.append(f"controls (text-blind sites): {controls}{flag}")
        else:
            lines.append("controls: none (text reaches the time embedding, so every site can read it)")
    if result.selection is not None:
        sel = result.selection
        rule = "mean patched score < tau" if result.direction == "remove" else "mean restored score >= tau"
        lines.append(
            f"causal ({rule} {sel['tau']:.3f}, chosen on {len(sel['validation_items'])} "
            f"validation items): {', '.join(sel['causal'][:10]) or 'none'}"
        )
    return lines
