"""Hostile inputs through the ``diffloc`` entry point, in-process: every refusal is one line naming the value,
exits 1 or 2, prints no traceback and leaves no file behind; outputs never collide or hold non-finite numbers.

The corpus (hostile_corpus.py) is refused before any model loads, except the few inputs whose harm only shows
while running (a guidance or noise that overflows, a window wider than the model), which stop at their first
generation; the whole corpus takes seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hostile_corpus import CASES, LEGACY_EDIT, Case

from diffloc.cli.main import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "refusals.md"


@pytest.fixture(scope="module")
def bin_model(tmp_path_factory) -> Path:
    """A tiny SD-1 pipeline directory whose UNet and VAE weights are pickled ``.bin`` files only."""
    from diffloc.models.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("bin_model")
    build_tiny_pipeline("sd1").save_pretrained(path, safe_serialization=False)
    assert list((path / "unet").glob("*.bin")) and not list((path / "unet").glob("*.safetensors"))
    return path


@pytest.fixture(scope="module")
def bin_clip(tiny_clip_dir, tmp_path_factory) -> Path:
    """The tiny CLIP directory with its weights as a pickled ``pytorch_model.bin`` instead of safetensors."""
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("bin_clip")
    for file in Path(tiny_clip_dir).iterdir():
        if file.suffix == ".safetensors":
            torch.save(load_file(file), path / "pytorch_model.bin")
        else:
            (path / file.name).write_bytes(file.read_bytes())
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse refuses usage errors by exiting
        return int(exit_info.code or 0)


def _expand(text: str, tmp: Path, request) -> str:
    for name in ("bin_model", "bin_clip"):
        if "{" + name + "}" in text:
            text = text.replace("{" + name + "}", str(request.getfixturevalue(name)))
    return text.replace("{tmp}", str(tmp)).replace("{edit}", str(LEGACY_EDIT))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_line_and_creates_nothing(case: Case, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)  # a default output path would land here and be seen
    if case.setup is not None:
        case.setup(tmp_path)
    argv = [_expand(arg, tmp_path, request) for arg in case.argv]
    before = _files(tmp_path)
    code = _run(argv)
    err = capsys.readouterr().err
    assert code in (1, 2), f"exit {code}: {err}"
    assert "Traceback" not in err
    # progress bars redraw with carriage returns and clear themselves; what stays is one line
    assert err.count("\n") == 1, err
    line = err.rsplit("\r", 1)[-1].strip()
    assert line.startswith("diffloc: error: "), err
    for word in case.words:
        assert _expand(word, tmp_path, request) in line, line
    assert _files(tmp_path) == before, "a refused command created files"


def test_corpus_covers_each_failure_class():
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES), "duplicate case ids"
    for prefix in ("seed", "steps", "guidance", "noise", "lam", "max-batch", "window", "threshold", "suite-", "edit-",
                   "out-", "bin-weights", "twice", "non-finite", "shard", "ray-workers", "restore-from",
                   "validation-overlaps"):  # fmt: skip
        assert any(prefix in i for i in ids), prefix


def test_refusals_doc_matches_the_corpus():
    """Every case docs/refusals.md names is in the corpus, and every corpus case is named there."""
    named = set(re.findall(r"`case:([^`]+)`", DOCS.read_text(encoding="utf-8")))
    ids = {c.id for c in CASES}
    assert named - ids == set(), f"documented but not in the corpus: {sorted(named - ids)}"
    assert ids - named == set(), f"in the corpus but not documented: {sorted(ids - named)}"


# -- what must succeed -----------------------------------------------------------------------------------------
COLLIDING_PROMPTS = [
    "A cat",
    "a cat",
    "a cat!",
    "a cat 🐱",
    "a cat 🐶",
    "a very long prompt that goes on and on about a cat sitting on a mat, ending with red",
    "a very long prompt that goes on and on about a cat sitting on a mat, ending with blue",
]


def test_prompts_that_slug_alike_get_their_own_files(tmp_path):
    args = ["generate", "--model", "tiny-sd1", "--steps", "1", "--seed", "0", "--seed", "1", "--out", str(tmp_path)]
    for prompt in COLLIDING_PROMPTS:
        args += ["--prompt", prompt]
    assert main(args) == 0
    settings = json.loads((tmp_path / "generate.json").read_text())
    names = [image["file"] for image in settings["images"]]
    assert len(names) == len(set(names)) == 2 * len(COLLIDING_PROMPTS)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(names)
    assert [(i["prompt"], i["seed"]) for i in settings["images"]] == [(p, s) for p in COLLIDING_PROMPTS for s in (0, 1)]
    assert all(name.startswith(("a-cat", "a-very-long-prompt")) for name in names)  # still readable


def test_largest_seed_generates(tmp_path):
    args = ["generate", "--model", "tiny-sd1", "--prompt", "x", "--steps", "1", "--seed", str(2**63 - 1)]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "generate.json").read_text())["images"][0]["seed"] == 2**63 - 1


def test_largest_seed_traces(tmp_path):
    # corruption noise is seeded from the seed (seed * 1000003 + salt): folded into the generator's range
    args = ["trace", "unet", "--model", "shapesworld", "--prompt", "a red circle in the style of van goo", "--subject",
            "van goo", "--attribute", "in the style of van goo", "--seeds", str(2**63 - 1), "--steps", "1",
            "--sites", "unet.xattn.1", "--bootstrap", "0", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert [item["seed"] for item in json.loads((tmp_path / "result.json").read_text())["items"]] == [2**63 - 1]


def test_bin_weights_load_with_the_flag(bin_model, tmp_path):
    out = tmp_path / "o"
    assert main(["generate", "--model", str(bin_model), "--allow-bin", "--prompt", "x", "--steps", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert len(list(out.glob("*.png"))) == 1
