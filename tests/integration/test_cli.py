"""The ``diffloc`` command: tables, generation artifacts, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diffloc.cli.main import main


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffloc.cli.main", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_sites_table(capsys):
    assert main(["sites", "tiny-sd1", "--select", "unet.xattn.*"]) == 0
    out = capsys.readouterr().out
    assert "unet.xattn.8 " in out and "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn2" in out
    assert "16 sites" in out


def test_sites_json(capsys):
    assert main(["sites", "tiny-sdxl", "--select", "unet.xattn.45", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sites"][0]["module_path"] == "unet.up_blocks.0.attentions.1.transformer_blocks.1.attn2"


def test_generate_writes_png_and_settings(tmp_path, capsys):
    code = main(
        [
            "generate",
            "--model",
            "tiny-sd1",
            "--prompt",
            "a red circle",
            "--seed",
            "1",
            "--seed",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    settings = json.loads((tmp_path / "generate.json").read_text())
    assert [i["seed"] for i in settings["images"]] == [1, 2]
    assert all((tmp_path / i["file"]).stat().st_size > 0 for i in settings["images"])
    assert settings["steps"] == 2 and settings["family"] == "sd1"
    assert settings["guidance"] == 7.5  # no sampler file: Stable Diffusion's default
    assert not list(tmp_path.glob(".*.tmp"))


def test_generate_defaults_to_the_models_guidance(tmp_path):
    from diffloc.world.model import GUIDANCE

    out = tmp_path / "sw"
    assert (
        main(["generate", "--model", "shapesworld", "--prompt", "a red circle", "--steps", "2", "--out", str(out)]) == 0
    )
    assert json.loads((out / "generate.json").read_text())["guidance"] == GUIDANCE
    out = tmp_path / "given"
    args = ["generate", "--model", "shapesworld", "--prompt", "a red circle", "--steps", "2", "--guidance", "2"]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "generate.json").read_text())["guidance"] == 2.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sites", "./missing-dir"], "model directory './missing-dir' does not exist"),
        (["sites", "tiny-sd1", "--select", "unet.xatn.8"], "unknown site 'unet.xatn.8'; did you mean unet.xattn.8"),
        (
            ["generate", "--model", "tiny-sd1", "--prompt", "x", "--steps", "-3"],
            "steps must be a positive integer, got -3",
        ),
        (
            ["generate", "--model", "tiny-sd1", "--prompt", "x", "--guidance", "-1"],
            "guidance must be a finite number >= 0",
        ),
        (["generate", "--model", "tiny-sd1", "--prompt", "  "], "empty prompt"),
        (
            ["generate", "--model", "tiny-sd1", "--prompt", "red " * 90, "--steps", "1"],
            "tokens long; text_encoder accepts at most 77",
        ),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message, tmp_path, capsys):
    # In-process (an escaping exception fails the test); test_unwritable_out_is_refused checks the same
    # one-line error through the real entry point in a subprocess.
    try:
        code = main([*args, "--out", str(tmp_path)] if args[0] == "generate" else list(args))
    except SystemExit as exit_info:  # a value the argument parser refuses: a usage error
        code = exit_info.code
    stderr = capsys.readouterr().err
    assert code == (2 if message.startswith(("steps", "guidance")) else 1), stderr
    errors = [line for line in stderr.splitlines() if line.startswith("diffloc: error: ")]
    assert len(errors) == 1 and message in errors[0], stderr


def test_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    result = _cli("generate", "--model", "tiny-sd1", "--prompt", "x", "--out", str(blocker))
    errors = [line for line in result.stderr.splitlines() if line.startswith("diffloc: error: ")]
    assert result.returncode == 1 and len(errors) == 1 and "exists and is not a directory" in errors[0]
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "keep me"


def test_help_everywhere(capsys):
    result = _cli("--help")  # the real entry point once; every subcommand in-process
    assert result.returncode == 0 and "usage: diffloc" in result.stdout
    for args in (
        ["sites", "--help"],
        ["generate", "--help"],
        ["edit", "locoedit", "--help"],
        ["trace", "unet", "--help"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0 and "usage: diffloc" in capsys.readouterr().out


HEAVY = ("torch", "matplotlib", "numpy", "diffusers", "transformers", "safetensors", "PIL", "tqdm")
HELP_PROBE = """
import json, sys
from diffloc.cli.main import main
heavy = {heavy!r}
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit:
        pass
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    if loaded:
        print(json.dumps({{"command": args, "loaded": loaded[:5]}}))
        break
else:
    print(json.dumps({{"command": None, "loaded": []}}))
"""


def _every_command(parser, prefix=()):
    """The argument lists of every (sub)command, e.g. ``["edit", "locoedit"]``."""
    import argparse

    found = [list(prefix)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _every_command(sub, (*prefix, name))
    return found


def test_help_of_every_command_imports_no_heavy_library():
    """``--help`` answers from argparse alone: torch, matplotlib, diffusers… load only when a command runs."""
    from diffloc.cli.main import build_parser

    commands = [[*c, "--help"] for c in _every_command(build_parser())]
    assert len(commands) > 15 and ["world", "eval", "--help"] in commands
    probe = subprocess.run([sys.executable, "-c", HELP_PROBE.format(heavy=HEAVY), json.dumps(commands)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == {"command": None, "loaded": []}


def test_a_commands_outputs_are_0644_and_0755_under_umask_0022(tmp_path):
    import stat

    previous = os.umask(0o022)  # the process's umask, restored below: the commands run in this process
    try:
        commands = (
            ["generate", "--model", "tiny-sd1", "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path / "g")],
            ["edit", "quickfix", "--model", "tiny-sd1", "--concept", "cat", "--target", "dog",
             "--out", str(tmp_path / "e")],
        )  # fmt: skip
        for args in commands:
            assert main(args) == 0
    finally:
        os.umask(previous)
    written = list(tmp_path.rglob("*"))
    assert len(written) >= 6
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.parametrize(
    ("args", "seeds"),
    [(["generate", "--prompt", "x"], (0,)), (["generate", "--prompt", "x", "--seed", "3", "--seed", "1"], (3, 1)),
     (["generate", "--prompt", "x", "--seeds", "3", "1"], (3, 1)),
     (["trace", "unet", "--prompt", "x", "--subject", "x", "--attribute", "x"], (0, 1, 2, 3)),
     (["locogen", "--prompt", "x", "--target", "y", "--attribute", "x", "--seeds", "5"], (5,)),
     (["demo"], (0, 1)), (["demo", "--trace-seeds", "1", "2"], (1, 2)), (["demo", "--seeds", "1", "2"], (1, 2)),
     (["reproduce", "--model", "m", "--clip", "c", "--trace-seeds", "4"], (4,))],
)  # fmt: skip
def test_seeds_are_seeds_everywhere_and_old_spellings_still_work(args, seeds):
    from diffloc.cli.main import build_parser
    from diffloc.cli.sweep_args import seeds_of

    assert seeds_of(build_parser().parse_args(args)) == seeds
    world = build_parser().parse_args(["world", "train", "--out", "r", "--seed", "7"])
    assert world.seed == 7 and build_parser().parse_args(["world", "train", "--out", "r", "--seeds", "7"]).seed == 7
