"""``diffloc generate``: seeded generation to PNG + a JSON of the settings."""

from __future__ import annotations

import argparse
import re
import time
from contextlib import ExitStack

from diffloc import __version__
from diffloc.atomic import ensure_writable_dir, write_json_atomic
from diffloc.cli.progress import progress_bar
from diffloc.editing.ablation import NeuronAblation
from diffloc.editing.edit import Edit
from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import PromptError
from diffloc.images import save_png
from diffloc.models.registry import default_guidance, load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diffloc generate``."""
    parser = subparsers.add_parser(
        "generate",
        help="generate images from prompts (seeded, deterministic on CPU)",
        description="Generate one image per (prompt, seed) and write PNGs plus a JSON of the settings.",
    )
    parser.add_argument("--model", default="shapesworld", help="diffusers dir, cached id, shapesworld, tiny-sd1…")
    parser.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    parser.add_argument("--seed", type=int, action="append", help="seed (repeat for several; default 0)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's — 4 for shapesworld — else 7.5)",
    )
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: model's)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: model's)")
    parser.add_argument("--out", default="out", help="output directory (default: out/)")
    parser.add_argument(
        "--edit", default=None, help="edit directory (from 'diffloc edit'): generate with the edit applied"
    )
    parser.add_argument(
        "--ablation", default=None, metavar="FILE",
        help="neuron ablation file (from 'diffloc edit neurons --mode paper'): set its channels in the conditional "
        "branch of every image",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "prompt"


def run(args: argparse.Namespace) -> int:
    """Generate and save."""
    guidance = default_guidance(args.model, args.guidance)
    config = GenerationConfig(steps=args.steps, guidance=guidance, height=args.height, width=args.width)
    for prompt in args.prompt:
        if not prompt.strip():
            raise PromptError("empty prompt; give the text to generate with --prompt")
    edit = Edit.load(args.edit) if args.edit else None
    ablation = NeuronAblation.load(args.ablation) if args.ablation else None
    out = ensure_writable_dir(args.out)
    model = load(args.model)
    if edit is not None:
        edit.check_base(model)  # refuse before generating anything
    seeds = args.seed or [0]
    prompts = [p for p in args.prompt for _ in seeds]
    seed_list = [s for _ in args.prompt for s in seeds]
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
    for image, prompt, seed in zip(images, prompts, seed_list, strict=True):
        path = save_png(image, out / f"{_slug(prompt)}_seed{seed}.png")
        files.append({"prompt": prompt, "seed": seed, "file": path.name})
    settings = {
        "diffloc_version": __version__,
        "model": args.model,
        "family": model.family,
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
