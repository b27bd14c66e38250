"""``diffloc generate``: seeded generation to PNG + a JSON of the settings."""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from diffloc import __version__
from diffloc.atomic import check_writable_dir, write_json_atomic
from diffloc.cli.model_args import add_model_arguments, check_model_arguments, load_model
from diffloc.cli.progress import progress_bar
from diffloc.cli.sweep_args import add_allow_bin_argument, add_seeds_argument, seeds_of
from diffloc.errors import PromptError
from diffloc.output_names import RunFiles, image_name
from diffloc.validate import check_model_steps, count_arg, guidance_arg, image_side_arg, steps_arg


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc generate``."""
    parser = subparsers.add_parser(
        "generate",
        help="generate images from prompts (seeded, deterministic on CPU)",
        description="Generate one image per (prompt, seed) and write PNGs plus a JSON of the settings.",
    )
    parser.add_argument("--model", default="shapesworld", help="diffusers dir, cached id, shapesworld, tiny-sd1…")
    add_allow_bin_argument(parser)
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    add_seeds_argument(
        parser, default=(0,), help="seeds in [0, 2**63 - 1], one image per prompt and seed", aliases=("--seed",)
    )
    parser.add_argument(
        "--steps", type=steps_arg, default=20, help="denoising steps, at most the scheduler's (default 20)"
    )
    parser.add_argument(
        "--guidance",
        type=guidance_arg,
        default=None,
        help="classifier-free guidance scale (default: the model's — 4 for shapesworld — else 7.5)",
    )
    parser.add_argument(
        "--height", type=image_side_arg("height"), default=None, help="image height in pixels (default: model's)"
    )
    parser.add_argument(
        "--width", type=image_side_arg("width"), default=None, help="image width in pixels (default: model's)"
    )
    parser.add_argument("--out", default="out", help="output directory (default: out/)")
    parser.add_argument(
        "--decode-batch", type=count_arg("decode_batch"), default=None,
        help="images per VAE decode call (memory bound; default: GenerationConfig's, 4)",
    )  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument(
        "--edit", default=None, help="edit directory (from 'diffloc edit'): generate with the edit applied"
    )
    parser.add_argument(
        "--ablation", default=None, metavar="FILE",
        help="neuron ablation file (from 'diffloc edit neurons --mode paper'): set its channels in the conditional "
        "branch of every image",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate and save."""
    from diffloc.editing.ablation import NeuronAblation
    from diffloc.editing.edit import Edit
    from diffloc.engine.generate import GenerationConfig, generate
    from diffloc.images import save_png
    from diffloc.models.registry import default_guidance

    guidance = default_guidance(args.model, args.guidance)
    decode = {} if args.decode_batch is None else {"decode_batch": args.decode_batch}
    config = GenerationConfig(steps=args.steps, guidance=guidance, height=args.height, width=args.width, **decode)
    check_model_arguments(args)
    check_model_steps(args.model, args.steps, "--steps")
    for prompt in args.prompt:
        if not prompt.strip():
            raise PromptError("empty prompt; give the text to generate with --prompt")
    seeds = seeds_of(args)
    prompts = [p for p in args.prompt for _ in seeds]
    seed_list = [s for _ in args.prompt for s in seeds]
    names = RunFiles(args.out)  # every file name is claimed before any work: a repeated input is refused now
    paths = [
        names.claim(image_name(p, s), f"prompt {p!r} with seed {s}") for p, s in zip(prompts, seed_list, strict=True)
    ]
    edit = Edit.load(args.edit) if args.edit else None
    ablation = NeuronAblation.load(args.ablation) if args.ablation else None
    out = check_writable_dir(args.out)  # created by the first file written
    model = load_model(args)
    if edit is not None:
        edit.check_base(model)  # refuse before generating anything
    interventions = ablation.interventions() if ablation is not None else ()
    start = time.perf_counter()
    with ExitStack() as stack:
        if edit is not None:
            stack.enter_context(edit.applied(model))
        if ablation is not None:
            ablation.check_model(model)  # on the weights it will run with (an edit's included)
        with progress_bar(f"generating {len(prompts)} image(s)") as progress:
            images = generate(
                model, prompts, seeds=seed_list, config=config, progress=progress, interventions=interventions
            )
    elapsed = time.perf_counter() - start
    files = []
    for image, prompt, seed, path in zip(images, prompts, seed_list, paths, strict=True):
        save_png(image, path)
        files.append({"prompt": prompt, "seed": seed, "file": path.name})
    settings = {
        "diffloc_version": __version__,
        "model": args.model,
        "family": model.family,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "steps": config.steps,
        "guidance": config.guidance,
        "height": int(images.shape[2]),
        "width": int(images.shape[3]),
        "scheduler": type(model.pipe.scheduler).__name__,
        "seconds": round(elapsed, 3),
        "images": files,
    }
    if edit is not None:
        settings["edit"] = {
            "dir": str(args.edit),
            "method": edit.method,
            "request": dict(edit.request),
            "base": edit.base,
            "parameters": edit.parameters,
        }
    if ablation is not None:
        settings["ablation"] = {
            "file": str(args.ablation),
            "request": dict(ablation.request),
            "sites": [s.site for s in ablation.sites],
            "channels": ablation.num_channels,
        }
    write_json_atomic(out / "generate.json", settings)
    for f in files:
        print(out / f["file"])
    return 0
