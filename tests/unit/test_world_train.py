"""ShapesWorld training is seeded and resumable: an interrupted + resumed run equals an uninterrupted one."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from support import assert_same_checkpoint

from diffloc.errors import CheckpointError, ConfigError
from diffloc.world.train import TrainConfig, train

TINY = {
    "n_examples": 64,
    "vae_steps": 2,
    "vae_batch_size": 8,
    "steps": 4,
    "batch_size": 4,
    "checkpoint_every": 2,
    "warmup_steps": 1,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
    "unet_channels": (8, 16, 16, 16),
    "unet_heads": (1, 1, 1, 1),
}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    summary = train(TrainConfig(**TINY), run)
    return run, summary


def test_resumed_run_equals_uninterrupted_run(straight_run, tmp_path):
    run, summary = straight_run
    assert summary["step"] == 4
    # Both runs start from the same cached VAE + latents (as every resume does), so only the UNet stage is
    # compared; a VAE trained in the same process can shift later conv results by float rounding.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for directory in (straight, resumed):
        directory.mkdir()
        for name in ("vae.safetensors", "cache.safetensors"):
            shutil.copy(run / name, directory / name)
    assert train(TrainConfig(**TINY), straight)["step"] == 4
    first = train(TrainConfig(**TINY), resumed, max_minutes=0.0)  # stops after one step, with a checkpoint
    assert first["step"] == 1
    second = train(TrainConfig(**TINY), resumed, resume=True)
    assert second["step"] == 4
    assert_same_checkpoint(straight / "checkpoint.safetensors", resumed / "checkpoint.safetensors")


def test_existing_checkpoint_is_not_overwritten_without_resume(straight_run):
    run, _ = straight_run
    before = (run / "checkpoint.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="exists; pass resume"):
        train(TrainConfig(**TINY), run)
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_changed_recipe_is_refused(straight_run, tmp_path):
    run, _ = straight_run
    shutil.copy(run / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="different recipe"):
        train(TrainConfig(**{**TINY, "lr": 1e-2}), tmp_path)


def test_a_latent_cache_of_other_examples_is_refused(straight_run, tmp_path):
    """A cache copied into a fresh run directory is reused only for the examples it was encoded from."""
    run, _ = straight_run
    for name in ("vae.safetensors", "cache.safetensors"):
        shutil.copy(run / name, tmp_path / name)
    before = (tmp_path / "cache.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"holds other examples \(seed 0; this run: seed 3\)") as info:
        train(TrainConfig(**{**TINY, "seed": 3}), tmp_path)
    assert "\n" not in str(info.value)
    assert (tmp_path / "cache.safetensors").read_bytes() == before and not (tmp_path / "config.json").exists()


def test_truncated_checkpoint_is_a_one_line_error(straight_run, tmp_path):
    run, _ = straight_run
    for name in ("vae.safetensors", "cache.safetensors", "config.json"):
        shutil.copy(run / name, tmp_path / name)
    data = (run / "checkpoint.safetensors").read_bytes()
    (tmp_path / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        train(TrainConfig(**TINY), tmp_path, resume=True)
    assert "\n" not in str(info.value) and "checkpoint.safetensors" in str(info.value)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == data[: len(data) // 2]


def test_run_made_before_a_field_existed_resumes_with_its_default(straight_run, tmp_path):
    import json

    run, _ = straight_run
    for name in ("vae.safetensors", "cache.safetensors", "checkpoint.safetensors"):
        shutil.copy(run / name, tmp_path / name)
    old = json.loads((run / "config.json").read_text())
    del old["mix"]  # as written by a version without the field
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert train(TrainConfig(**TINY), tmp_path, resume=True)["step"] == TINY["steps"]
    with pytest.raises(ConfigError, match="different recipe \\(mix\\)"):
        train(TrainConfig(**{**TINY, "mix": (0.4, 0.4, 0.1, 0.1)}), tmp_path, resume=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("caption_dropout", 1.5), ("unet_channels", (8, 16)), ("mix", (0.5, 0.5, 0.5, 0.5)),
     ("mix", (1.2, -0.2, 0.0, 0.0)), ("mix", (0.5, 0.5)), ("extra_templates", "artist-first-9")],
)  # fmt: skip
def test_bad_config_values(field, value):
    with pytest.raises(ConfigError):
        TrainConfig(**{**TINY, field: value})


def test_negative_time_budget_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="max_minutes must be >= 0, got -1"):
        train(TrainConfig(**TINY), tmp_path / "run", max_minutes=-1.0)
    assert not (tmp_path / "run").exists()


def test_warm_start_begins_from_an_exported_pipeline(straight_run, tmp_path):
    from diffloc.world.model import load_pipeline
    from diffloc.world.train import export_run

    run, _ = straight_run
    exported = export_run(run, tmp_path / "pipe")
    from diffloc.models.registry import default_guidance
    from diffloc.world.model import GUIDANCE

    assert default_guidance(exported) == GUIDANCE  # the export names the guidance CLI commands default to
    init = load_pipeline(exported)
    warm = tmp_path / "warm"
    # One step at a negligible learning rate: the checkpoint holds the initial pipeline's weights (another
    # seed, so a fresh initialisation would differ everywhere).
    config = TrainConfig(**{**TINY, "seed": 1, "lr": 1e-12, "init_from": str(exported)})
    summary = train(config, warm, max_minutes=0.0)
    assert summary["step"] == 1
    vae = load_file(str(warm / "vae.safetensors"))
    assert all(torch.equal(v, init.vae.state_dict()[k]) for k, v in vae.items())
    cache = load_file(str(warm / "cache.safetensors"))
    assert float(cache["scaling"]) == pytest.approx(init.vae.config.scaling_factor, rel=1e-6)
    ckpt = load_file(str(warm / "checkpoint.safetensors"))
    for prefix, module in (("unet.", init.unet), ("text_encoder.", init.text_encoder)):
        for key, value in module.state_dict().items():
            assert torch.allclose(ckpt[prefix + key].float(), value.float(), atol=1e-8), prefix + key
    params = [*init.unet.parameters(), *init.text_encoder.parameters()]
    assert len([k for k in ckpt if k.startswith("ema.")]) == len(params)
    for i, p in enumerate(params):  # the EMA starts at the initial weights too
        assert torch.allclose(ckpt[f"ema.{i}"], p.detach(), atol=1e-8), i


def test_warm_start_checks_the_architecture_and_the_path(straight_run, tmp_path):
    from diffloc.world.train import export_run

    run, _ = straight_run
    exported = export_run(run, tmp_path / "pipe")
    for change in ({"text_width": 32}, {"unet_heads": (1, 1, 2, 2)}):
        with pytest.raises(ConfigError, match="another architecture") as info:
            train(TrainConfig(**{**TINY, **change, "init_from": str(exported)}), tmp_path / "a")
        assert "\n" not in str(info.value)
        assert not list((tmp_path / "a").iterdir())  # refused before anything was written
    with pytest.raises(ConfigError, match="not a directory"):
        train(TrainConfig(**{**TINY, "init_from": str(tmp_path / "nope")}), tmp_path / "b")


def test_freeze_unet_trains_the_text_encoder_only(straight_run, tmp_path):
    from diffloc.world.model import load_pipeline
    from diffloc.world.train import export_run

    run, _ = straight_run
    exported = export_run(run, tmp_path / "pipe")
    init = load_pipeline(exported)
    config = TrainConfig(**{**TINY, "seed": 1, "lr": 1e-2, "init_from": str(exported), "freeze_unet": True})
    train(config, tmp_path / "frozen")
    ckpt = load_file(str(tmp_path / "frozen" / "checkpoint.safetensors"))
    unet = init.unet.state_dict()
    assert all(torch.equal(ckpt["unet." + k], v) for k, v in unet.items())  # bit-identical UNet
    moved = [k for k, v in init.text_encoder.state_dict().items() if not torch.equal(ckpt["text_encoder." + k], v)]
    assert moved  # the text encoder was trained
    for i, p in enumerate(init.unet.parameters()):  # nor does the UNet's EMA
        assert torch.equal(ckpt[f"ema.{i}"], p.detach()), i
    # The optimizer holds the text encoder's parameters only (its state is indexed over them).
    n_text = len(list(init.text_encoder.parameters()))
    assert {int(k.split(".")[1]) for k in ckpt if k.startswith("optim.")} == set(range(n_text))


def test_grown_text_encoder_starts_as_the_warm_start_and_trains(straight_run, tmp_path):
    from diffloc.world import model
    from diffloc.world.model import load_pipeline
    from diffloc.world.train import _load_init, _warm_start, export_run

    run, _ = straight_run
    exported = export_run(run, tmp_path / "pipe")
    config = TrainConfig(**{**TINY, "seed": 2, "init_from": str(exported), "text_layers": 3, "grow_text_layers": 2})
    init = _load_init(config)
    grown = model.build_text_encoder(width=16, layers=3, heads=2)
    _warm_start(config, init, model.build_unet(channels=(8, 16, 16, 16), heads=(1, 1, 1, 1), context_dim=16), grown)
    ids = init.tokenizer(["a red circle in the style of van goo", "a zorblin"], padding="max_length",
                         max_length=77, return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(grown(ids)[0], init.text_encoder(ids)[0], rtol=0, atol=1e-6)
    train(config, tmp_path / "grown")
    pipe = load_pipeline(export_run(tmp_path / "grown", tmp_path / "grown-pipe"))
    assert pipe.text_encoder.config.num_hidden_layers == 3
    # the CLI grows from the warm start's own depth (a grown export grows further), not the recipe default
    from diffloc.cli.world import _init_recipe

    assert _init_recipe(str(tmp_path / "grown-pipe")) == (3, False) and _init_recipe(str(exported)) == (1, False)
    assert _init_recipe(str(tmp_path / "nowhere")) == (TrainConfig().text_layers, False)
    with pytest.raises(ConfigError, match="needs init_from"):
        TrainConfig(**{**TINY, "text_layers": 3, "grow_text_layers": 2})
    with pytest.raises(ConfigError, match="another architecture"):  # 1 + 1 layers is not this warm start's 1
        _load_init(TrainConfig(**{**TINY, "init_from": str(exported), "text_layers": 3, "grow_text_layers": 1}))


def test_vae_from_takes_the_autoencoder_only(straight_run, tmp_path):
    from diffloc.world.model import load_pipeline
    from diffloc.world.train import export_run

    run, _ = straight_run
    exported = export_run(run, tmp_path / "pipe")
    given = load_pipeline(exported)
    config = TrainConfig(**{**TINY, "seed": 3, "lr": 1e-12, "vae_from": str(exported), "threads": 2})
    threads = torch.get_num_threads()
    assert train(config, tmp_path / "fresh", max_minutes=0.0)["step"] == 1
    assert torch.get_num_threads() == threads != 2  # the recipe's threads are the run's, not the process's after
    vae = load_file(str(tmp_path / "fresh" / "vae.safetensors"))
    assert vae.keys() == given.vae.state_dict().keys()
    assert all(torch.equal(v, given.vae.state_dict()[k]) for k, v in vae.items())  # no VAE stage
    cache = load_file(str(tmp_path / "fresh" / "cache.safetensors"))
    assert float(cache["scaling"]) == pytest.approx(given.vae.config.scaling_factor, rel=1e-6)
    ckpt = load_file(str(tmp_path / "fresh" / "checkpoint.safetensors"))
    for prefix, module in (("unet.", given.unet), ("text_encoder.", given.text_encoder)):
        weights = [(k, v) for k, v in module.state_dict().items() if k.endswith("weight") and v.dim() > 1]
        assert weights and not any(torch.allclose(ckpt[prefix + k], v) for k, v in weights)  # random, not copied
    # resuming needs neither the directory nor a second read of it: the run keeps its own copy
    shutil.rmtree(tmp_path / "pipe")
    assert train(config, tmp_path / "fresh", resume=True)["step"] == TINY["steps"]


def test_vae_from_refuses_a_warm_start_and_a_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="exclusive"):
        TrainConfig(**{**TINY, "vae_from": "shapesworld", "init_from": "shapesworld"})
    with pytest.raises(ConfigError, match=r"vae_from .* is not a directory") as info:
        train(TrainConfig(**{**TINY, "vae_from": str(tmp_path / "nope")}), tmp_path / "run")
    assert "\n" not in str(info.value)


def test_zero_snr_run_learns_v_and_exports_its_scheduler(straight_run, tmp_path):
    """A zero-terminal-SNR run: its target is diffusers' v (the scheduler recovers x0 from it exactly), its
    last timestep is pure noise, and its export samples with that scheduler."""
    from diffloc.world import model
    from diffloc.world.model import load_pipeline
    from diffloc.world.train import _scheduler, export_run, training_target

    config = TrainConfig(**{**TINY, "zero_snr": True})
    scheduler = _scheduler(config)
    assert float(scheduler.alphas_cumprod[-1]) == 0.0
    scheduler.set_timesteps(20)
    default = model.build_scheduler()
    default.set_timesteps(20)
    assert int(scheduler.timesteps[0]) == 999 and int(default.timesteps[0]) == 951  # where sampling starts
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 16, 16, generator=gen)
    for t in (10, 500, 900):
        a = scheduler.alphas_cumprod[t].float()
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        step = scheduler.step(training_target(config, x0, noise, a), t, noisy)
        torch.testing.assert_close(step.pred_original_sample, x0, rtol=0, atol=1e-4)
    assert torch.equal(training_target(TrainConfig(**TINY), x0, noise, a), noise)  # ε runs: unchanged

    run, _ = straight_run
    warm = TrainConfig(**{**TINY, "zero_snr": True, "init_from": str(export_run(run, tmp_path / "eps"))})
    assert train(warm, tmp_path / "v")["step"] == TINY["steps"]
    pipe = load_pipeline(export_run(tmp_path / "v", tmp_path / "v-pipe"))
    cfg = pipe.scheduler.config
    assert (cfg.prediction_type, cfg.timestep_spacing, cfg.rescale_betas_zero_snr) == ("v_prediction", "trailing", True)
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="pt").images
    assert torch.isfinite(image).all()
    assert load_pipeline(tmp_path / "eps").scheduler.config.prediction_type == "epsilon"
    # a v-prediction init is refused to an epsilon run (its weights would be trained towards the wrong target)
    with pytest.raises(ConfigError, match=r"predicts v on the zero-terminal-SNR schedule; .* needs zero_snr=True"):
        train(TrainConfig(**{**TINY, "init_from": str(tmp_path / "v-pipe")}), tmp_path / "wrong")
    assert not (tmp_path / "wrong" / "checkpoint.safetensors").exists()
