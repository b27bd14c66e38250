"""``diffloc edit export``: the edited model as a plain diffusers folder that makes the images diffloc makes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffloc.cli.main import main
from diffloc.models.registry import shapesworld_dir

PROMPT = "a red circle in the style of van goo"
STEPS, GUIDANCE, SEED = 4, 4.0, 3

# Runs in a fresh interpreter that never imports diffloc: what a user of the exported folder has.
PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import sys
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt=[sys.argv[3]], generator=[torch.Generator().manual_seed(int(sys.argv[4]))],
                  num_inference_steps=int(sys.argv[5]), guidance_scale=float(sys.argv[6]), output_type="pt").images
    assert not [name for name in sys.modules if name.split(".")[0] == "diffloc"], "diffloc was imported"
    torch.save(images.float().cpu(), sys.argv[2])
    """
)

# docs/editing.md's recipe: apply edit.safetensors to the base with plain diffusers.
RECIPE = textwrap.dedent(
    """
    import sys
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    pipe = DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
    for key, value in load_file(sys.argv[2] + "/edit.safetensors").items():
        if key.startswith("new/"):
            component, _, name = key.removeprefix("new/").partition(".")
            getattr(pipe, component).get_parameter(name).data.copy_(value)
    pipe.save_pretrained(sys.argv[3])
    """
)


def _plain(*args: object) -> None:
    # One thread, as this process runs (conftest): with more, CPU kernels split reductions differently and the
    # float images drift by ~2e-4, beyond the tolerance that checks them against diffloc's.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", *map(str, args)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _digest(folder: Path) -> dict[str, str]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def quickfix_edit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edits") / "qf"
    code = main(["edit", "quickfix", "--model", "shapesworld", "--concept", "van goo", "--target", "a plain style",
                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_export_loads_in_plain_diffusers_and_makes_the_same_images(quickfix_edit, tmp_path, capsys):
    before = _digest(shapesworld_dir())
    exported = tmp_path / "exported"
    assert main(["edit", "export", str(quickfix_edit), "--out", str(exported)]) == 0
    assert "DiffusionPipeline.from_pretrained" in capsys.readouterr().out
    assert (exported / "model_index.json").is_file() and list((exported / "unet").glob("*.safetensors"))
    assert not list(exported.rglob("*.bin")) and (exported.stat().st_mode & 0o777) == 0o777 & ~_umask()
    assert _digest(shapesworld_dir()) == before  # the base model's files are never written

    plain_out = tmp_path / "plain.pt"
    _plain(PLAIN_DIFFUSERS, exported, plain_out, PROMPT, SEED, STEPS, GUIDANCE)
    plain = torch.load(plain_out)

    generated = tmp_path / "generated"
    assert main(["generate", "--model", "shapesworld", "--edit", str(quickfix_edit), "--prompt", PROMPT,
                 "--seed", str(SEED), "--steps", str(STEPS), "--guidance", str(GUIDANCE), "--device", "cpu",
                 "--out", str(generated)]) == 0  # fmt: skip
    png = next(generated.glob("*.png"))
    diffloc_image = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert plain.shape == (1, *diffloc_image.shape)
    # PNGs hold 8 bits: the same image reads back within one quantisation step
    torch.testing.assert_close(plain[0], diffloc_image, rtol=0, atol=1 / 255 + 1e-4)
    # and the float images agree far below that
    from diffloc.editing import Edit
    from diffloc.engine.generate import GenerationConfig, generate
    from diffloc.models.registry import load

    model = load("shapesworld", device="cpu")
    with Edit.load(quickfix_edit).applied(model):
        ours = generate(model, PROMPT, seeds=SEED, config=GenerationConfig(steps=STEPS, guidance=GUIDANCE))
    torch.testing.assert_close(plain, ours, rtol=0, atol=1e-4)

    unedited = tmp_path / "unedited.pt"
    _plain(PLAIN_DIFFUSERS, shapesworld_dir(), unedited, PROMPT, SEED, STEPS, GUIDANCE)
    assert (torch.load(unedited) - plain).abs().max() > 0.05  # the export carries the edit


def test_readme_recipe_applies_the_edit_like_the_export(quickfix_edit, tmp_path):
    exported, applied = tmp_path / "exported", tmp_path / "applied"
    assert main(["edit", "export", str(quickfix_edit), "--out", str(exported)]) == 0
    _plain(RECIPE, shapesworld_dir(), quickfix_edit, applied)
    from safetensors.torch import load_file

    for component in ("text_encoder", "unet"):
        ours = load_file(str(next((exported / component).glob("*.safetensors"))))
        theirs = load_file(str(next((applied / component).glob("*.safetensors"))))
        strip = {k.removeprefix("text_model."): v for k, v in theirs.items()}
        for key, value in ours.items():
            assert torch.equal(value, strip[key.removeprefix("text_model.")]), key


def test_export_refuses_to_overwrite(quickfix_edit, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["edit", "export", str(quickfix_edit), "--out", str(busy)]) == 1
    err = capsys.readouterr().err.strip()
    assert "exists and is not an empty directory" in err and "\n" not in err
    assert (busy / "keep.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1

    base = tmp_path / "base"
    shutil.copytree(shapesworld_dir(), base)
    before = _digest(base)
    assert main(["edit", "export", str(quickfix_edit), "--model", str(base), "--out", str(base / "edited")]) == 1
    assert "lies inside the base model" in capsys.readouterr().err
    assert _digest(base) == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
