"""``diffloc edit`` and ``diffloc generate --edit``: artifacts, round trips, and one-line errors."""

from __future__ import annotations

import json

import pytest

from diffloc.cli.main import main
from diffloc.editing import Edit
from diffloc.editors import EDITORS


def _edit(tmp_path, *args: str, model: str = "tiny-sd1") -> int:
    return main(["edit", *args, "--model", model, "--concept", "cat", "--target", "dog"])


#: arguments beyond the editor table's own (sites where an editor takes them), per method
EXTRA = {
    "quickfix": ["--preserve", "house", "--template", "a drawing of {}"],
    "locoedit": ["--lam-v", "0.1"],
    "neurons": ["--top-n", "5", "--ablation", "zero"],
    "joint-kv": ["--key-steps", "1"],
}


@pytest.mark.parametrize("method", sorted(EDITORS))
def test_edit_writes_a_loadable_artifact(tmp_path, capsys, method):
    family = EDITORS[method].families[0] if EDITORS[method].families else "sd1"
    layers = "transformer.joint.8,transformer.joint.9" if family in ("sd3", "flux") else "unet.xattn.8,unet.xattn.9"
    sites = ["--sites", layers] if EDITORS[method].takes_sites else []
    extra = [*sites, *EXTRA.get(method, [])]
    out = tmp_path / method
    assert _edit(tmp_path, method, *extra, "--out", str(out), model=f"tiny-{family}") == 0
    edit = Edit.load(out)
    assert edit.method == method and edit.family == family
    assert str(out) in capsys.readouterr().out
    assert main(["edit", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert edit.parameters[0] in shown and edit.base["tensors"][edit.parameters[0]][:16] in shown
    assert main(["edit", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == method


def test_generate_with_edit_records_it_and_changes_images(tmp_path, capsys):
    edit_dir = tmp_path / "e"
    assert _edit(tmp_path, "locoedit", "--sites", "unet.xattn.*", "--out", str(edit_dir)) == 0
    common = ["generate", "--model", "tiny-sd1", "--prompt", "a cat", "--steps", "2"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--edit", str(edit_dir), "--out", str(tmp_path / "edited")]) == 0
    settings = json.loads((tmp_path / "edited" / "generate.json").read_text())
    assert settings["edit"]["method"] == "locoedit" and settings["edit"]["base"]["family"] == "sd1"
    assert "edit" not in json.loads((tmp_path / "plain" / "generate.json").read_text())
    (image,) = settings["images"]
    assert image["file"].startswith("a-cat_seed0_")
    plain = (tmp_path / "plain" / image["file"]).read_bytes()
    edited = (tmp_path / "edited" / image["file"]).read_bytes()
    assert plain != edited


@pytest.mark.parametrize(
    "args, words",
    [
        (["quickfix", "--lam", "0"], "argument --lam: lam must be a finite number > 0 (ridge strength)"),
        (["locoedit", "--sites", "unet.sattn.1"], "cross-attention"),
        (["locoedit", "--sites", "unet.xattn.77"], "unknown site"),
        (["neurons", "--sites", "unet.xattn.8", "--top-n", "100000"], "exceeds"),
        (["quickfix", "--template", "{}s in a field", "--no-default-templates"], "cats in a field"),
        (["quickfix", "--stats", "s.safetensors"], "--stats needs a preservation set"),
        (["neurons", "--sites", "unet.xattn.8", "--preserve", "house", "--stats", "s"], "--stats applies to"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    out = tmp_path / "e"
    try:
        code = _edit(tmp_path, *args, "--out", str(out))
    except SystemExit as exit_info:  # a value the argument parser refuses (--lam 0): a usage error
        code = exit_info.code
    assert code == (2 if "--lam" in args else 1)
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and words in err and "\n" not in err
    assert not out.exists()


def test_generate_refuses_an_edit_for_another_model(tmp_path, capsys):
    edit_dir = tmp_path / "e"
    assert _edit(tmp_path, "quickfix", "--out", str(edit_dir)) == 0
    code = main(
        ["generate", "--model", "tiny-sd2", "--prompt", "a cat", "--edit", str(edit_dir), "--out", str(tmp_path / "g")]
    )
    assert code == 1
    assert "computed for a sd1 model" in capsys.readouterr().err
    assert main(["edit", "show", str(tmp_path / "missing")]) == 1
    assert "not an edit directory" in capsys.readouterr().err


def test_locoedit_from_a_saved_locogen_window(tmp_path, capsys):
    import numpy as np

    from diffloc.tracing.results import WindowResult

    windows = [["unet.xattn.7", "unet.xattn.8"], ["unet.xattn.8", "unet.xattn.9"]]
    result = WindowResult(windows=windows, scores=np.array([0.5, 0.1]), original_score=0.9, mode="remove")
    result.save(tmp_path / "window")
    out = tmp_path / "e"
    assert _edit(tmp_path, "locoedit", "--window", str(tmp_path / "window"), "--out", str(out)) == 0
    assert Edit.load(out).config["sites"] == ["unet.xattn.8", "unet.xattn.9"]
    assert _edit(tmp_path, "locoedit", "--window", str(tmp_path / "missing"), "--out", str(out)) == 1
    assert capsys.readouterr().err.count("\n") == 1


SHAPESWORLD_LOCO = [
    "edit", "locoedit", "--model", "shapesworld", "--concept", "pica stro", "--target", "a plain style",
    "--no-default-templates", "--template", "a red circle in the style of {}", "--template",
    "a picture of a blue square in the style of {}", "--sites", "unet.xattn.12,unet.xattn.13",
]  # fmt: skip


def test_locoedit_widen_records_the_windows_it_tried(tmp_path, capsys):
    out = tmp_path / "e"
    args = [*SHAPESWORLD_LOCO, "--widen", "in the style of pica stro", "--widen-steps", "4", "--widen-guidance", "4"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    found = Edit.load(out).stats["window_search"]
    assert found["start"] == ["unet.xattn.12", "unet.xattn.13"] and found["mode"] == "remove"
    assert found["prompts"] == [
        "a red circle in the style of pica stro",
        "a picture of a blue square in the style of pica stro",
    ]
    tried = found["tried"]
    assert [len(row["window"]) for row in tried] == [2, 4, 8, 16][: len(tried)]
    assert all(not row["works"] for row in tried[:-1])
    # the saved edit covers the last window tried, and the printed table shows every window
    assert Edit.load(out).config["sites"] == tried[-1]["window"]
    assert printed.count("layers): score") == len(tried)


def test_locoedit_widen_with_a_stats_file(tmp_path, capsys):
    stats = tmp_path / "keep.safetensors"
    args = [*SHAPESWORLD_LOCO, "--widen", "in the style of pica stro", "--widen-steps", "4", "--widen-guidance", "4",
            "--preserve", "mo nettle", "--stats", str(stats)]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "computed" in capsys.readouterr().out and stats.is_file()
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert f"reused from {stats}" in capsys.readouterr().out
    first, second = Edit.load(tmp_path / "a"), Edit.load(tmp_path / "b")
    assert first.stats["window_search"]["tried"] == second.stats["window_search"]["tried"]
    assert all(first.weights[k].equal(second.weights[k]) for k in first.parameters)


@pytest.mark.parametrize(
    "model_args, widen, words",
    [
        (SHAPESWORLD_LOCO, "in the style of nobody", "nobody"),
        (["edit", "locoedit", "--model", "tiny-sd1", "--concept", "cat", "--target", "dog", "--sites", "unet.xattn.8"],
         "a cat", "no default scorer"),
    ],
)  # fmt: skip
def test_locoedit_widen_bad_input_is_one_line(tmp_path, capsys, model_args, widen, words):
    out = tmp_path / "e"
    assert main([*model_args, "--widen", widen, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and not out.exists()


def test_stats_file_is_written_once_then_reused(tmp_path, capsys):
    stats = tmp_path / "stats" / "keep-house.safetensors"
    keep = ["--sites", "unet.xattn.8", "--preserve", "house", "--stats", str(stats)]
    assert _edit(tmp_path, "locoedit", *keep, "--out", str(tmp_path / "a")) == 0
    assert "computed" in capsys.readouterr().out and stats.is_file()
    written = stats.stat().st_mtime_ns
    assert _edit(tmp_path, "locoedit", *keep, "--out", str(tmp_path / "b")) == 0
    assert f"reused from {stats}" in capsys.readouterr().out and stats.stat().st_mtime_ns == written
    first, second = Edit.load(tmp_path / "a"), Edit.load(tmp_path / "b")
    assert all(first.weights[k].equal(second.weights[k]) for k in first.parameters)
    # another preservation set with the same file: one line, nothing written
    other = ["--sites", "unet.xattn.8", "--preserve", "tree", "--stats", str(stats), "--out", str(tmp_path / "c")]
    assert _edit(tmp_path, "locoedit", *other) == 1
    err = capsys.readouterr().err.strip()
    assert "another preserved concepts" in err and "\n" not in err
    assert not (tmp_path / "c").exists()


def test_paper_mode_neuron_ablation_file_through_generate_and_show(tmp_path, capsys):
    path = tmp_path / "abl.json"
    assert _edit(tmp_path, "neurons", "--sites", "unet.xattn.8", "--top-n", "5", "--mode", "paper",
                 "--out", str(path)) == 0  # fmt: skip
    meta = json.loads(path.read_text())
    assert meta["format"] == "diffloc-ablation" and meta["config"]["mode"] == "paper"
    assert [len(s["channels"]) for s in meta["sites"]] == [5, 5]
    capsys.readouterr()
    assert main(["edit", "show", str(path)]) == 0
    assert "unet.xattn.8.k: 5 channel(s)" in capsys.readouterr().out
    common = ["generate", "--model", "tiny-sd1", "--prompt", "a cat", "--steps", "2"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--ablation", str(path), "--out", str(tmp_path / "ablated")]) == 0
    settings = json.loads((tmp_path / "ablated" / "generate.json").read_text())
    assert settings["ablation"]["channels"] == 10 and settings["ablation"]["sites"] == ["unet.xattn.8.k",
                                                                                         "unet.xattn.8.v"]  # fmt: skip
    (plain,) = (tmp_path / "plain").glob("a-cat_seed0_*.png")
    assert plain.read_bytes() != (tmp_path / "ablated" / plain.name).read_bytes()
    capsys.readouterr()
    assert main([*common, "--model", "tiny-sd2", "--ablation", str(path), "--out", str(tmp_path / "g2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and "computed for a sd1 model, not sd2" in err and "\n" not in err
    assert _edit(tmp_path, "neurons", "--sites", "unet.xattn.8", "--mode", "paper", "--out", str(tmp_path)) == 1
    assert "is a directory; --mode paper writes one JSON file" in capsys.readouterr().err
