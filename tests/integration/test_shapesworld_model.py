"""The shipped ShapesWorld pipeline: standard diffusers layout, loads offline, generates, real SD layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffloc.errors import CheckpointError, ModelLoadError
from diffloc.world import model

SHIPPED = model.shipped_model_dir()


@pytest.fixture(scope="module")
def pipe():
    return model.load_pipeline()


def test_layout_is_a_standard_sd_pipeline():
    index = json.loads((SHIPPED / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (SHIPPED / component).is_dir(), component
    total = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert total <= 50 * 1024 * 1024, total
    assert not list(SHIPPED.rglob("*.bin")) and not list(SHIPPED.rglob("*.pt"))


def test_loads_offline_and_generates_in_a_fresh_process(tmp_path):
    code = (
        "import torch; from diffusers import StableDiffusionPipeline\n"
        f"p = StableDiffusionPipeline.from_pretrained({str(SHIPPED)!r}, local_files_only=True)\n"
        "p.set_progress_bar_config(disable=True)\n"
        "im = p('a red circle', num_inference_steps=2, generator=torch.Generator().manual_seed(0),"
        " output_type='pt').images\n"
        "print(tuple(im.shape))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(1, 3, 32, 32)"


def test_unet_has_sd15_block_structure(pipe):
    config = pipe.unet.config
    assert config.down_block_types == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config.up_block_types == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert config.layers_per_block == 2
    xattn = [n for n, _ in pipe.unet.named_modules() if n.endswith("attn2")]
    assert len(xattn) == 16
    assert pipe.text_encoder.config.num_hidden_layers >= 4
    assert pipe.text_encoder.config.hidden_act == "quick_gelu"


def test_shipped_scheduler_is_the_one_the_weights_were_trained_on(pipe):
    """The shipped weights predict v on a zero-terminal-SNR schedule; an epsilon scheduler would
    sample them into noise, so the exported scheduler must carry every field of that schedule."""
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    for field, value in model.ZERO_SNR_SCHEDULE.items():
        assert pipe.scheduler.config[field] == value, field


def test_text_encoder_carries_the_trained_weights(pipe):
    """Keys are in SD's layout (``text_model.*``) and every loaded tensor equals the file's, not a re-init."""
    config = json.loads((SHIPPED / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["CLIPTextModel"]
    stored = load_file(str(SHIPPED / "text_encoder" / "model.safetensors"))
    assert stored and all(k.startswith("text_model.") for k in stored)
    loaded = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    for key, value in stored.items():
        assert torch.equal(loaded[key.removeprefix("text_model.")], value), key
    token_embedding = stored["text_model.embeddings.token_embedding.weight"]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, token_embedding)


def test_generation_is_seeded_and_sized(pipe):
    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return pipe("a blue square", num_inference_steps=3, generator=g, output_type="pt").images

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (1, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _copy(tmp_path):
    target = tmp_path / "shapesworld"
    shutil.copytree(SHIPPED, target)
    return target


def test_truncated_weights_are_a_one_line_error(tmp_path):
    copy = _copy(tmp_path)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError) as info:
        model.load_pipeline(copy)
    message = str(info.value)
    assert "\n" not in message and "diffusion_pytorch_model.safetensors" in message
    assert (SHIPPED / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != weights.read_bytes()


def test_corrupted_header_is_a_one_line_error(tmp_path):
    copy = _copy(tmp_path)
    weights = copy / "text_encoder" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        model.load_pipeline(copy)


def test_missing_weights_and_non_pipeline_dirs(tmp_path):
    copy = _copy(tmp_path)
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="'vae'"):
        model.load_pipeline(copy)
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        model.load_pipeline(tmp_path / "nowhere")


def _cli(argv: list[str]) -> int:
    from diffloc.cli.main import main

    try:
        return main(argv)
    except SystemExit as exit_info:  # a value the argument parser refuses: a usage error, status 2
        return int(exit_info.code or 0)


def test_cli_rejects_bad_eval_arguments(capsys):
    assert _cli(["world", "eval", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and "--seeds" in err and "\n" not in err
    assert _cli(["world", "eval", "--split", "test"]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown split 'test'; valid: heldout, validation" in err and "\n" not in err
    assert _cli(["world", "eval", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "argument --threads: threads must be a positive integer, got 0" in err and "\n" not in err
    assert _cli(["world", "eval", "--guidance", "nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert "guidance must be a finite number >= 0, got nan" in err and "\n" not in err


def test_cli_samples_and_detector_training_check_their_numbers_before_working(capsys, tmp_path):
    out = tmp_path / "grid.png"
    assert _cli(["world", "samples", "--out", str(out), "--guidance", "nan"]) == 2  # drew NaN-guided grids
    err = capsys.readouterr().err.strip()
    assert "guidance must be a finite number >= 0, got nan" in err and "\n" not in err
    assert not out.exists()
    weights = tmp_path / "det.safetensors"
    assert _cli(["world", "detectors", "--train", "--steps", "0", "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and "steps must be a positive integer, got 0" in err and "\n" not in err
    assert not weights.exists()


@pytest.mark.parametrize(("mix", "named"), [("1,2", "mix (1.0, 2.0)"), ("a,b,c,d", "--mix 'a,b,c,d'")])
def test_cli_rejects_a_bad_training_mix_before_writing(capsys, tmp_path, mix, named):
    from diffloc.cli.main import main

    assert main(["world", "train", "--out", str(tmp_path / "run"), "--mix", mix]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and named in err and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "named", "status"),
    [(["--examples", "0"], "examples must be a positive integer, got 0", 2),
     (["--vae-from", "shapesworld", "--init-from", "shapesworld"], "vae_from and init_from are exclusive", 1),
     (["--text-layers", "0"], "text_layers must be a positive integer, got 0", 2),
     (["--text-layers", "6", "--init-from", "shapesworld"], "--text-layers 6 is for a run from scratch", 1),
     (["--max-minutes", "-1"], "max_minutes must be a finite number >= 0, got -1.0", 2),
     (["--max-minutes", "nan"], "max_minutes must be a finite number >= 0, got nan", 2)],
)  # fmt: skip
def test_cli_training_set_size_and_vae_source_reach_the_recipe(capsys, tmp_path, extra, named, status):
    assert _cli(["world", "train", "--out", str(tmp_path / "run"), *extra]) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and named in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_diffloc_load_gives_sd15_site_table():
    import diffloc

    loaded = diffloc.load("shapesworld")
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"
    xattn = [s.name for s in loaded.sites.select("unet.xattn.*") if s.name.count(".") == 2]
    assert xattn == [f"unet.xattn.{i}" for i in range(16)]


def test_detectors_vae_source_takes_the_shorthand_and_refuses_a_missing_directory(capsys, tmp_path):
    from diffloc.cli.main import main

    assert model.pipeline_dir("shapesworld", "--vae-from") == model.shipped_model_dir()
    weights = tmp_path / "det.safetensors"
    missing = tmp_path / "nowhere"
    assert main(["world", "detectors", "--train", "--weights", str(weights), "--vae-from", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffloc: error:") and f"--vae-from {str(missing)!r} is not a directory" in err
    assert "\n" not in err and not weights.exists()


def test_eval_runs_at_the_thread_count_asked_and_records_it(monkeypatch, tmp_path, capsys):
    from diffloc.cli.main import main
    from diffloc.world import evaluate

    seen = []

    def fake_evaluate(pipe, config, *, detector=None, progress=None):
        seen.append(torch.get_num_threads())
        return {"passed": True, "config": {}}

    torch.set_num_threads(2)
    monkeypatch.setattr(evaluate, "evaluate_model", fake_evaluate)
    assert main(["world", "eval", "--threads", "1", "--out", str(tmp_path / "eval.json")]) == 0
    capsys.readouterr()
    assert seen == [1] and json.loads((tmp_path / "eval.json").read_text())["threads"] == 1
    assert torch.get_num_threads() == 2  # the process's count, given back


def test_cli_text_layers_reach_a_from_scratch_recipe(monkeypatch, tmp_path, capsys):
    from diffloc.cli.main import main
    from diffloc.world import train

    seen = []
    monkeypatch.setattr(train, "train", lambda config, out, **kw: seen.append(config) or {"step": 0})
    out = str(tmp_path / "run")
    assert main(["world", "train", "--out", out, "--vae-from", "shapesworld", "--text-layers", "6"]) == 0
    capsys.readouterr()
    assert [(c.text_layers, c.vae_from) for c in seen] == [(6, "shapesworld")]


def test_cli_warm_start_takes_its_init_text_depth(monkeypatch, tmp_path, capsys):
    """A warm start from a 6-layer export builds a 6-layer recipe, not the default 4 (which would be refused)."""
    from diffloc.cli.main import main
    from diffloc.world import train

    init = tmp_path / "deep"
    (init / "text_encoder").mkdir(parents=True)
    (init / "text_encoder" / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    seen = []
    monkeypatch.setattr(train, "train", lambda config, out, **kw: seen.append(config) or {"step": 0})
    for n, grow in enumerate((None, "2")):
        extra = ["--grow-text-layers", grow] if grow else []
        assert main(["world", "train", "--out", str(tmp_path / f"run{n}"), "--init-from", str(init), *extra]) == 0
    capsys.readouterr()
    assert [(c.text_layers, c.grow_text_layers) for c in seen] == [(6, 0), (8, 2)]


def test_cli_warm_start_keeps_its_init_schedule(monkeypatch, tmp_path, capsys):
    """The shipped model predicts v on the zero-SNR schedule: a warm start from it trains v without --zero-snr
    (training it towards epsilon would ruin it); an epsilon init stays epsilon unless --zero-snr switches it."""
    from diffloc.cli.main import main
    from diffloc.world import train

    eps = tmp_path / "eps"
    shutil.copytree(SHIPPED / "text_encoder", eps / "text_encoder")
    (eps / "scheduler").mkdir()
    (eps / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    seen = []
    monkeypatch.setattr(train, "train", lambda config, out, **kw: seen.append(config) or {"step": 0})
    for n, (init, extra) in enumerate((("shapesworld", []), (str(eps), []), (str(eps), ["--zero-snr"]))):
        assert main(["world", "train", "--out", str(tmp_path / f"run{n}"), "--init-from", init, *extra]) == 0
    capsys.readouterr()
    assert [c.zero_snr for c in seen] == [True, False, True]


def test_eval_prints_a_table_and_json_on_request(monkeypatch, tmp_path, capsys):
    from diffloc.cli.main import main
    from diffloc.world import evaluate

    shipped = json.loads((model.shipped_model_dir() / "eval.json").read_text())
    shipped["concepts"]["style:van goo"] = 0.5
    shipped["concept_counts"]["style:van goo"].update(right=12, misses={"style=plain": 12})
    monkeypatch.setattr(evaluate, "evaluate_model", lambda pipe, config, **kw: {**shipped, "passed": False})
    assert main(["world", "eval", "--threads", "1"]) == 1  # below the bar: exit 1, as before
    table = capsys.readouterr().out
    assert main(["world", "eval", "--threads", "1", "--json"]) == 1
    raw = json.loads(capsys.readouterr().out)
    assert raw["concepts"]["style:van goo"] == 0.5 and raw["threads"] == 1
    lines = table.splitlines()
    assert "FAILED" in lines[0] and "576 images" in lines[0]
    row = next(line for line in lines if line.startswith("style:van goo"))
    assert row.split()[2:] == ["12/24", "0.500", "0.90", "below", "style=plain", "x12"]
    pixels, head = (f"{shipped[key]['background']:.3f}" for key in ("attributes", "attributes_by_detector"))
    assert next(line for line in lines if line.startswith("background ")).split()[1:] == [pixels, "0.95", "ok"]
    assert next(line for line in lines if line.startswith("background (")).split()[3:] == [head, "not", "scored"]
