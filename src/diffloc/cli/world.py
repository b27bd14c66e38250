"""``diffloc world``: ShapesWorld — render data, train and export the model, train/measure detectors, evaluate.

Sub-commands:

* ``render``     write a grid of sample training renders with their captions
* ``train``      train (or ``--resume``) the text-to-image model in a run directory; ``--export`` writes a pipeline
* ``export``     export a run's checkpoint as a pipeline directory (StableDiffusionPipeline; PixArtAlphaPipeline
                 for a ``--denoiser dit`` run)
* ``detectors``  measure detector accuracy on clean renders (``--train`` trains and saves them first)
* ``eval``       generate the held-out prompts with several seeds and read them back (JSON)
* ``samples``    write a sample grid PNG of a model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from diffloc.atomic import check_writable_dir, check_writable_file, write_atomic, write_json_atomic
from diffloc.cli.model_args import add_model_arguments
from diffloc.cli.tables import format_table
from diffloc.errors import ConfigError
from diffloc.validate import (
    check_number,
    check_steps,
    count_arg,
    guidance_arg,
    nonnegative_arg,
    positive_arg,
    scheduler_dir_steps,
    seed_arg,
    steps_arg,
)

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc world`` and its sub-commands."""
    parser = subparsers.add_parser("world", help="ShapesWorld: data, model training, detectors, evaluation")
    sub = parser.add_subparsers(dest="world_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("render", help="write a grid of sample training renders and their captions")
    p.add_argument("--out", default="shapesworld-data.png", help="PNG path (captions go to a .txt next to it)")
    p.add_argument("--n", type=count_arg("n"), default=64, help="number of renders (default 64)")
    p.add_argument("--seeds", "--seed", dest="seed", type=seed_arg, default=0, metavar="SEED",
                   help="the one seed that draws the renders (default 0)")  # fmt: skip
    p.set_defaults(func=run_render)

    p = sub.add_parser("train", help="train or resume the ShapesWorld text-to-image model")
    p.add_argument("--out", required=True, help="run directory (checkpoints, caches, log)")
    p.add_argument(
        "--steps", type=count_arg("steps"), default=None, help="total UNet steps (default: the shipped recipe)"
    )
    p.add_argument("--seeds", "--seed", dest="seed", type=seed_arg, default=0, metavar="SEED",
                   help="the one seed of the training run: data, initial weights, noise (default 0)")  # fmt: skip
    p.add_argument(
        "--examples", type=count_arg("examples"), default=None,
        help="captioned renders in the training set (default: the shipped recipe's 50,000)",
    )  # fmt: skip
    p.add_argument(
        "--lr", type=positive_arg("lr"), default=None, help="peak learning rate (default: the shipped recipe)"
    )
    p.add_argument(
        "--warmup", type=count_arg("warmup", low=0), default=None, help="warm-up steps (default: the shipped recipe)"
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="warm start: begin from this ShapesWorld pipeline's VAE, UNet and text encoder",
    )
    p.add_argument(
        "--mix",
        default=None,
        help="shares of plain,style,object,fact captions, e.g. 0.45,0.35,0.1,0.1 (default: the shipped recipe)",
    )
    p.add_argument("--threads", type=count_arg("threads"), default=None, help="torch threads (default 1)")
    p.add_argument(
        "--freeze-unet", action="store_true",
        help="train the text encoder only (with --init-from: the warm start's UNet stays as it is)",
    )  # fmt: skip
    p.add_argument(
        "--zero-snr", action="store_true",
        help="v-prediction on a zero-terminal-SNR schedule sampled with trailing steps (exported with the model): "
        "pure noise then carries no image signal for the first steps to read; a warm start from such a model "
        "(the shipped one) keeps it without the flag",
    )  # fmt: skip
    p.add_argument(
        "--extra-templates", default=None,
        help="extra training word orders, a name of diffloc.world.vocab.EXTRA_TEMPLATES (default none)",
    )  # fmt: skip
    p.add_argument(
        "--grow-text-layers", type=count_arg("grow_text_layers", low=0), default=None,
        help="with --init-from: append this many identity-initialised layers to its text encoder",
    )  # fmt: skip
    p.add_argument(
        "--text-layers", type=count_arg("text_layers"), default=None,
        help="from scratch: text-encoder depth (default 4, TrainConfig's; a warm start keeps its own)",
    )  # fmt: skip
    p.add_argument(
        "--vae-from", default=None, metavar="DIR",
        help="from scratch with this ShapesWorld pipeline's VAE (and latent scaling) instead of training one; "
        "UNet and text encoder start random ('shapesworld': the shipped one; not with --init-from)",
    )  # fmt: skip
    p.add_argument(
        "--denoiser", default="unet", type=_denoiser_arg,
        help="unet (SD-1.5 structure; default) or dit (PixArt-α-structured transformer, exported as a "
        "PixArtAlphaPipeline; from scratch it takes the shipped model's VAE and, frozen, its text encoder unless "
        "--vae-from / --text-from / --train-text say otherwise)",
    )  # fmt: skip
    p.add_argument("--dit-width", type=count_arg("dit_width"), default=None,
                   help="dit: transformer width (default 128)")  # fmt: skip
    p.add_argument("--dit-layers", type=count_arg("dit_layers"), default=None,
                   help="dit: transformer blocks (default 8)")  # fmt: skip
    p.add_argument("--dit-heads", type=count_arg("dit_heads"), default=None,
                   help="dit: attention heads (default 4)")  # fmt: skip
    p.add_argument(
        "--text-from", default=None, metavar="DIR",
        help="start from this ShapesWorld pipeline's text encoder ('shapesworld': the shipped one; 'none': a "
        "random one trained jointly; default: none for unet, shapesworld for dit)",
    )  # fmt: skip
    p.add_argument(
        "--train-text", action="store_true",
        help="fine-tune the --text-from (or warm start's) text encoder with the denoiser (dit's default: frozen)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument(
        "--max-minutes", type=nonnegative_arg("max_minutes"), default=None,
        help="stop, with a checkpoint, at the first step ending past this much wall time (resumable; 0: after "
        "one step; data preparation is never interrupted)",
    )  # fmt: skip
    p.add_argument("--export", default=None, help="export the result as a pipeline into this directory")
    p.set_defaults(func=run_train)

    p = sub.add_parser("export", help="export a run's checkpoint (EMA weights) as a pipeline directory")
    p.add_argument("--run", required=True, help="run directory made by 'diffloc world train'")
    p.add_argument("--out", required=True, help="pipeline directory to write")
    p.set_defaults(func=run_export)

    p = sub.add_parser("detectors", help="measure detector accuracy on clean renders (optionally train them)")
    p.add_argument("--weights", default=None, help="detector weights (default: shipped)")
    p.add_argument("--train", action="store_true", help="train detectors and write them to --weights")
    p.add_argument(
        "--vae-from",
        default=None,
        metavar="DIR",
        help="pipeline dir whose VAE round trip augments training ('shapesworld': the shipped one)",
    )
    p.add_argument(
        "--steps", type=count_arg("steps"), default=None, help="training steps (default: the shipped recipe)"
    )
    p.add_argument("--n", type=count_arg("n"), default=3000, help="clean renders to measure on (default 3000)")
    p.add_argument("--out", default=None, help="write the accuracy JSON here")
    p.set_defaults(func=run_detectors)

    p = sub.add_parser("eval", help="held-out prompts × seeds → detectors (background: corner colour) → accuracy JSON")
    p.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    p.add_argument("--detectors", default=None, help="detector weights (default: shipped)")
    p.add_argument("--seeds", type=count_arg("seeds"), default=4, metavar="N",
                   help="seeds per prompt: 0 .. N-1 (default 4)")  # fmt: skip
    p.add_argument("--steps", type=steps_arg, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=guidance_arg, default=None, help="CFG scale (default: the eval recipe's)")
    p.add_argument("--split", default="heldout", help="heldout (the acceptance bar; default) or validation "
                   "(training templates, for choosing sampler settings)")  # fmt: skip
    p.add_argument("--extra-templates", default=None, help="validation split: the run's extra training "
                   "templates (diffloc.world.vocab.EXTRA_TEMPLATES; default none)")  # fmt: skip
    p.add_argument("--threads", type=count_arg("threads"), default=2, help="torch threads (default 2; the "
                   "20-step time in the JSON is measured at this count and recorded beside it)")  # fmt: skip
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--json", action="store_true", help="print the JSON instead of a table")
    add_model_arguments(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("samples", help="write a sample grid PNG of a model")
    p.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--guidance", type=guidance_arg, default=None)
    add_model_arguments(p)
    p.set_defaults(func=run_samples)


def run_render(args: argparse.Namespace) -> int:
    """``diffloc world render``."""
    import math

    import torch

    from diffloc.images import grid, save_png
    from diffloc.world import captions
    from diffloc.world.render import render_batch

    check_writable_file(args.out, "--out")
    examples = captions.training_examples(args.n, args.seed)
    images = torch.from_numpy(render_batch([e.scene for e in examples], [e.seed for e in examples]))
    columns = math.ceil(math.sqrt(args.n))
    save_png(grid(images.permute(0, 3, 1, 2).float() / 255, columns), args.out)
    Path(args.out).with_suffix(".txt").write_text("\n".join(e.caption for e in examples) + "\n")
    print(f"wrote {args.out} ({args.n} renders, {columns} per row) and its captions")
    return 0


class _Bars:
    """tqdm bars per training stage, driven by the library's progress callback."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        from tqdm import tqdm

        if stage not in self.bars:
            self.bars[stage] = tqdm(total=total, initial=step - 1, desc=stage, unit="step", dynamic_ncols=True)
        bar = self.bars[stage]
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _init_recipe(init_from: str, flag: str = "--init-from") -> tuple[int, bool]:
    """The warm start's text-encoder depth and whether it predicts v on the zero-terminal-SNR schedule (the
    recipe's defaults where they cannot be read: the warm start is then refused in one line by ``train``)."""
    from diffloc.world import model
    from diffloc.world.train import TrainConfig

    try:
        directory: Path | None = model.pipeline_dir(init_from, flag)
    except ConfigError:
        directory = None

    def read(part: str, key: str) -> Any:
        if directory is None or not (directory / part).is_file():
            return None
        try:
            return json.loads((directory / part).read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    layers = read("text_encoder/config.json", "num_hidden_layers")
    prediction = read("scheduler/scheduler_config.json", "prediction_type")
    return (int(layers) if isinstance(layers, int) else TrainConfig().text_layers), prediction == "v_prediction"


def _denoiser_arg(text: str) -> str:
    """``--denoiser``: one of :data:`diffloc.world.train.DENOISERS`."""
    from diffloc.world.train import DENOISERS

    if text not in DENOISERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a denoiser; valid: {', '.join(DENOISERS)}")
    return text


def _dit_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The DiT recipe fields of ``diffloc world train`` (the shipped model's VAE and frozen text encoder by
    default); raises a one-line error for a DiT option without ``--denoiser dit``."""
    dit_options = {"--dit-width": args.dit_width, "--dit-layers": args.dit_layers, "--dit-heads": args.dit_heads}
    if args.denoiser != "dit":
        given = [name for name, value in dit_options.items() if value is not None]
        if given:
            raise ConfigError(f"{given[0]} applies to --denoiser dit, not {args.denoiser}")
        fields: dict[str, Any] = {}
    else:
        fields = {"denoiser": "dit"}
        for name, value in dit_options.items():
            if value is not None:
                fields[name[2:].replace("-", "_")] = value
        if args.init_from is None:
            if args.vae_from is None:
                fields["vae_from"] = "shapesworld"
            if args.text_from is None:
                fields["text_from"] = "shapesworld"
    text_from = args.text_from if args.text_from is not None else fields.get("text_from")
    if args.text_layers is not None and text_from not in (None, "none"):
        raise ConfigError(
            f"--text-layers {args.text_layers} is for a fresh text encoder; --text-from {text_from} keeps its own "
            "(--text-from none trains a fresh one)"
        )
    if text_from is not None and text_from != "none":
        fields["text_from"] = text_from
        layers, _ = _init_recipe(text_from, "--text-from")
        fields["text_layers"] = layers
    frozen_by_default = args.denoiser == "dit" and ("text_from" in fields or args.init_from is not None)
    if frozen_by_default and not args.train_text:
        fields["freeze_text"] = True
    elif args.train_text and not frozen_by_default:
        raise ConfigError("--train-text applies to --denoiser dit, whose text encoder is otherwise frozen")
    return fields


def _mix(text: str) -> tuple[float, ...]:
    """``--mix``: four comma-separated finite shares >= 0."""
    try:
        shares = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--mix {text!r} is not 4 comma-separated numbers, e.g. 0.45,0.35,0.1,0.1") from None
    for share in shares:
        check_number(f"each share of --mix {text!r}", share, low=0.0)
    return shares


def run_train(args: argparse.Namespace) -> int:
    """``diffloc world train``."""
    from diffloc.world.train import TrainConfig, export_run, train

    check_writable_dir(args.out, "run directory")
    if args.export:
        check_writable_dir(args.export, "--export directory")
    fields: dict[str, Any] = {"seed": args.seed}
    if args.mix is not None:
        fields["mix"] = _mix(args.mix)
    if args.threads is not None:
        fields["threads"] = args.threads
    if args.freeze_unet:
        fields["freeze_unet"] = True
    if args.zero_snr:
        fields["zero_snr"] = True
    if args.extra_templates is not None:
        fields["extra_templates"] = args.extra_templates
    if args.text_layers is not None:
        if args.init_from is not None:
            raise ConfigError(
                f"--text-layers {args.text_layers} is for a run from scratch; a warm start keeps its text "
                "encoder's depth (--grow-text-layers adds layers to it)"
            )
        fields["text_layers"] = args.text_layers
    if args.grow_text_layers:
        fields["grow_text_layers"] = args.grow_text_layers
    fields.update(_dit_fields(args))
    if args.init_from is not None:  # the warm start's own depth, plus any grown layers, and its own schedule
        layers, zero_snr = _init_recipe(args.init_from)
        fields["text_layers"] = layers + (args.grow_text_layers or 0)
        if zero_snr:
            fields["zero_snr"] = True
    for name, value in (("steps", args.steps), ("n_examples", args.examples), ("lr", args.lr),
                        ("warmup_steps", args.warmup), ("init_from", args.init_from),
                        ("vae_from", args.vae_from)):  # fmt: skip
        if value is not None:
            fields[name] = value
    bars = _Bars()
    try:
        summary = train(TrainConfig(**fields), args.out, resume=args.resume, max_minutes=args.max_minutes,
                        progress=bars)  # fmt: skip
    finally:
        bars.close()
    print(json.dumps(summary))
    if args.export:
        export_run(args.out, args.export)
        print(f"exported to {args.export}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``diffloc world export``."""
    from diffloc.world.train import export_run

    check_writable_dir(args.out, "--out directory")
    print(f"exported to {export_run(args.run, args.out)}")
    return 0


def run_detectors(args: argparse.Namespace) -> int:
    """``diffloc world detectors``."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from diffloc.world import detectors, model

    weights = Path(args.weights) if args.weights else model.shipped_model_dir() / detectors.DETECTOR_FILE
    if args.out:
        check_writable_file(args.out, "--out")
    if args.train:
        check_writable_file(weights, "--weights")
        config = detectors.DetectorTrainConfig(**({} if args.steps is None else {"steps": args.steps}))
        reconstruct = None
        if args.vae_from:
            vae = model.load_pipeline(model.pipeline_dir(args.vae_from, "--vae-from")).vae

            def reconstruct(x: torch.Tensor) -> torch.Tensor:
                z = vae.encode(x * 2 - 1).latent_dist.mean
                return (vae.decode(z).sample + 1) / 2

        with tqdm(desc="detectors", unit="step", dynamic_ncols=True) as bar:

            def progress(step: int, total: int, loss: float) -> None:
                bar.total = total
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            det = detectors.train_detector(config, reconstruct=reconstruct, progress=progress)
        state = {k: v.contiguous() for k, v in det.state_dict().items()}
        write_atomic(weights, lambda tmp: save_file(state, str(tmp)))
    else:
        det = detectors.load_detector(weights)
    accuracy = detectors.measure_accuracy(det, n=args.n)
    any_phase = detectors.measure_accuracy(det, n=args.n, any_phase=True)
    result = {"weights": weights.name, "n_renders": args.n, "accuracy": accuracy, "min": min(accuracy.values()),
              "accuracy_any_fill_phase": any_phase, "min_any_fill_phase": min(any_phase.values())}  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_json_atomic(args.out, result)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``diffloc world eval``."""
    from tqdm import tqdm

    from diffloc.threads import torch_threads
    from diffloc.world import detectors, model
    from diffloc.world.evaluate import EvalConfig, evaluate_model

    pipeline = model.pipeline_dir(args.model, "--model") if args.model else model.shipped_model_dir()
    check_steps(args.steps, limit=scheduler_dir_steps(pipeline), name="--steps")
    if args.out:
        check_writable_file(args.out, "--out")
    fields = {"seeds": args.seeds, "steps": args.steps, "split": args.split}
    if args.extra_templates is not None:
        fields["extra_templates"] = args.extra_templates
    if args.guidance is not None:
        fields["guidance"] = args.guidance
    config = EvalConfig(**fields)
    pipe = model.load_pipeline(args.model, device=args.device, dtype=args.dtype, variant=args.variant)
    det = detectors.load_detector(args.detectors) if args.detectors else detectors.shipped_detector()
    det = detectors.on_device(det, pipe.device)
    with torch_threads(args.threads), tqdm(desc="eval", unit="img", dynamic_ncols=True, file=sys.stderr,
                                           leave=False) as bar:  # fmt: skip

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = evaluate_model(pipe, config, detector=det, progress=progress)
    result["threads"] = args.threads
    result["model"] = "shapesworld (shipped)" if args.model is None else str(args.model)
    result["command"] = "diffloc " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("diffloc") else None
    print(json.dumps(result, indent=2) if args.json else eval_table(result))
    if args.out:
        write_json_atomic(args.out, result)
    return 0 if result["passed"] else 1


def eval_table(result: dict[str, Any]) -> str:
    """``world eval``'s result as tables: accuracy per attribute and per named concept against the bar, what
    the misses were read as, and the time per image."""
    bar = result.get("thresholds", {})
    config = result.get("config", {})
    verdict = "passed" if result.get("passed") else "FAILED"
    lines = [f"{result.get('model', 'model')}: {config.get('split', '')} split, {result.get('n_prompts', '?')} prompts "
             f"x {config.get('seeds', '?')} seeds = {result.get('n_images', '?')} images, {config.get('steps', '?')} "
             f"steps, guidance {config.get('guidance', '?')}: {verdict}", ""]  # fmt: skip

    def mark(value: float, threshold: float | None) -> str:
        return "" if threshold is None else ("ok" if value >= threshold else "below")

    def level(threshold: float | None) -> str:
        return "" if threshold is None else f"{threshold:.2f}"

    rows = [[name, f"{value:.3f}", level(bar.get(name)), mark(value, bar.get(name))]
            for name, value in result.get("attributes", {}).items()]  # fmt: skip
    rows += [[f"{name} (detectors' head)", f"{value:.3f}", "", "not scored"]
             for name, value in result.get("attributes_by_detector", {}).items()]  # fmt: skip
    lines.append(format_table(["attribute", "accuracy", "bar", ""], rows, right=(1, 2)))
    rows = []
    for name, value in result.get("concepts", {}).items():
        counts = result.get("concept_counts", {}).get(name, {})
        misses = ", ".join(f"{k} x{n}" for k, n in counts.get("misses", {}).items())
        rows.append([name, f"{counts.get('right', '?')}/{counts.get('images', '?')}", f"{value:.3f}",
                     level(bar.get("concept")), mark(value, bar.get("concept")), misses])  # fmt: skip
    lines += ["", format_table(["concept", "right", "accuracy", "bar", "", "misses read as"], rows, right=(1, 2, 3))]
    if "seconds_per_image_20_steps" in result:
        lines += ["", f"{result['seconds_per_image_20_steps']:.3f} s per 20-step image at {result.get('threads', '?')} "
                  "thread(s)"]  # fmt: skip
    return "\n".join(lines)


def run_samples(args: argparse.Namespace) -> int:
    """``diffloc world samples``: rows = prompts of each kind, columns = seeds."""
    from diffloc.images import grid, save_png
    from diffloc.world import model, vocab
    from diffloc.world.evaluate import EvalConfig, generate

    guidance = EvalConfig(**({} if args.guidance is None else {"guidance": args.guidance})).guidance  # checked
    check_writable_file(args.out, "--out")
    pipe = model.load_pipeline(args.model, device=args.device, dtype=args.dtype, variant=args.variant)
    prompts = [f"a {t} {c} {s} on a {b} background" for s, c, t, b in [
        ("circle", "red", "solid", "white"), ("square", "blue", "striped", "black"),
        ("triangle", "green", "dotted", "grey"), ("star", "yellow", "outlined", "black"),
        ("diamond", "purple", "solid", "grey"), ("cross", "orange", "striped", "white")]]  # fmt: skip
    prompts += [f"a red circle in the style of {a}" for a in vocab.STYLES]
    prompts += [f"a {o}" for o in vocab.OBJECTS] + [f"the flag of {c}" for c in vocab.FACTS]
    seeds = list(range(6))
    images = generate(pipe, [p for p in prompts for _ in seeds], seeds * len(prompts), steps=20, guidance=guidance)
    save_png(grid(images, len(seeds)), args.out)
    Path(args.out).with_suffix(".txt").write_text("\n".join(prompts) + "\n")
    print(f"wrote {args.out}: {len(prompts)} prompts (rows) × {len(seeds)} seeds (columns)")
    return 0
