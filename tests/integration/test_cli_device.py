"""``--device``, ``--dtype`` and ``--variant`` on the commands that load a model: plumbing and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from diffloc.cli.main import main
from diffloc.models.tiny import build_tiny_pipeline

GENERATE = ["generate", "--model", "tiny-sd1", "--prompt", "a cat", "--steps", "1"]


def _one_line_error(capsys, code: int) -> str:
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and "\n" not in err
    return err


def test_generate_records_where_it_ran(tmp_path):
    assert main([*GENERATE, "--device", "cpu", "--dtype", "bfloat16", "--out", str(tmp_path)]) == 0
    settings = json.loads((tmp_path / "generate.json").read_text())
    assert (settings["device"], settings["dtype"]) == ("cpu", "bfloat16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize(
    "command",
    [
        GENERATE,
        ["trace", "unet", "--model", "tiny-sd1", "--prompt", "a cat", "--subject", "cat", "--attribute", "cat"],
        ["edit", "quickfix", "--model", "tiny-sd1", "--concept", "cat", "--target", "dog"],
        ["demo", "--model", "tiny-sd1"],
    ],
)
def test_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "out"
    err = _one_line_error(capsys, main([*command, "--device", "cuda", "--out", str(out)]))
    assert "CUDA is not available" in err and "--device cpu" in err
    assert not out.exists()


def test_unknown_dtype_is_one_line(tmp_path, capsys):
    err = _one_line_error(capsys, main([*GENERATE, "--dtype", "float64", "--out", str(tmp_path / "o")]))
    assert "unknown dtype 'float64'; valid: float32, float16, bfloat16" in err


def test_missing_variant_files_are_one_line(tmp_path, capsys):
    build_tiny_pipeline("sd1").save_pretrained(tmp_path / "m")
    command = ["generate", "--model", str(tmp_path / "m"), "--prompt", "a cat", "--steps", "1"]
    err = _one_line_error(capsys, main([*command, "--variant", "fp16", "--out", str(tmp_path / "o")]))
    assert "has no 'fp16' weights" in err and "use no --variant" in err
    build_tiny_pipeline("sd1").save_pretrained(tmp_path / "v", variant="fp16")
    command[2] = str(tmp_path / "v")
    err = _one_line_error(capsys, main([*command, "--out", str(tmp_path / "o")]))
    assert "load with --variant fp16" in err
    assert main([*command, "--variant", "fp16", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0


def test_decode_batch_is_checked_and_used(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # refused by the parser: status 2
        main([*GENERATE, "--decode-batch", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and "\n" not in err
    assert "--decode-batch" in err and "got 0" in err
    assert not (tmp_path / "o").exists()
    assert main([*GENERATE, "--prompt", "a dog", "--decode-batch", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 2
