"""ShapesWorld-DiT: a tiny DiT run trains on the shipped autoencoder and frozen text encoder, resumes bit-exactly,
exports a PixArtAlphaPipeline that diffusers and diffloc load alike, and traces and edits like any PixArt model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import PixArtAlphaPipeline
from safetensors.torch import load_file
from support import assert_same_checkpoint

from diffloc.cli.main import main
from diffloc.editing import EditRequest, QuickFixConfig, compute_edit
from diffloc.engine.generate import GenerationConfig, generate, initial_latents
from diffloc.errors import ConfigError
from diffloc.eval.scorers import DetectorScorer
from diffloc.models.base import CONTEXT_MASK
from diffloc.models.pixart import PIXART_CLIP_EDIT_CAVEATS
from diffloc.models.registry import load
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.world import dit, model
from diffloc.world.train import TrainConfig, export_run, train

TINY_DIT = {
    "denoiser": "dit",
    "n_examples": 64,
    "steps": 4,
    "batch_size": 4,
    "checkpoint_every": 2,
    "warmup_steps": 1,
    "text_layers": 6,  # the shipped text encoder's architecture (width 96, 4 heads)
    "dit_width": 16,
    "dit_layers": 2,
    "dit_heads": 2,
    "text_from": "shapesworld",
    "vae_from": "shapesworld",
    "freeze_text": True,
    "zero_snr": True,
}
PROMPTS = ["a red circle", "a blue striped square on a black background in the style of van goo", ""]


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dit") / "run"
    summary = train(TrainConfig(**TINY_DIT), run)
    return run, summary, export_run(run, run.parent / "export")


def test_padding_mask_is_the_tokenizers_and_trimming_keeps_the_states():
    tokenizer = model.load_tokenizer()
    batch = tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(dit.padding_mask(batch.input_ids), batch.attention_mask)
    encoder = model.load_pipeline().text_encoder
    mask = batch.attention_mask
    with torch.no_grad():
        full = dit.text_states(encoder, batch.input_ids, mask)
        ids, trimmed_mask = dit.trim_padding(batch.input_ids, mask)
        trimmed = dit.text_states(encoder, ids, trimmed_mask)
    assert ids.shape[1] == int(mask.sum(dim=1).max()) < 77
    real = mask[:, : ids.shape[1]].bool()
    torch.testing.assert_close(trimmed[real], full[:, : ids.shape[1]][real], rtol=0, atol=1e-5)


def test_dit_run_trains_the_transformer_on_the_frozen_shipped_text_encoder(dit_run):
    run, summary, _ = dit_run
    assert summary["step"] == TINY_DIT["steps"]
    ckpt = load_file(str(run / "checkpoint.safetensors"))
    shipped = model.load_pipeline()
    for key, value in shipped.text_encoder.state_dict().items():  # frozen at its float16-rounded weights
        assert torch.equal(ckpt["text_encoder." + key], value.half().float()), key
    fresh = dit.build_transformer(width=16, layers=2, heads=2, caption_channels=96)
    assert {"transformer." + k for k in fresh.state_dict()} <= ckpt.keys()
    # the optimizer holds the transformer's parameters only
    n = len(list(fresh.parameters()))
    assert {int(k.split(".")[1]) for k in ckpt if k.startswith("optim.")} == set(range(n))
    vae = load_file(str(run / "vae.safetensors"))
    assert all(torch.equal(v, shipped.vae.state_dict()[k]) for k, v in vae.items())


def test_dit_resume_is_bit_exact(dit_run, tmp_path):
    run, _, _ = dit_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("vae.safetensors", "cache.safetensors"):
        shutil.copy(run / name, resumed / name)
    assert train(TrainConfig(**TINY_DIT), resumed, max_minutes=0.0)["step"] == 1
    assert train(TrainConfig(**TINY_DIT), resumed, resume=True)["step"] == TINY_DIT["steps"]
    assert_same_checkpoint(run / "checkpoint.safetensors", resumed / "checkpoint.safetensors")


def test_encoded_latents_are_laid_out_as_the_cache_reads_them_back():
    """An encoder that hands back channels-last latents: the run that encodes them must train on the layout the
    cache gives a resumed run (NCHW-contiguous), or the two take different convolution kernels and drift apart."""
    from types import SimpleNamespace

    from diffloc.world.train import encode_latents

    class ChannelsLastEncoder:
        def encode(self, images):
            mean = images[:, :4].contiguous(memory_format=torch.channels_last)
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))

    images = torch.randn(5, 4, 16, 16)
    latents = encode_latents(ChannelsLastEncoder(), images, batch_size=2)
    assert latents.is_contiguous() and torch.equal(latents, images)


def test_export_loads_as_a_pixart_alpha_pipeline_and_in_diffloc(dit_run):
    _, _, export = dit_run
    index = json.loads((export / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtAlphaPipeline" and index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert not (export / "unet").exists()
    text_file = load_file(str(export / "text_encoder" / "model.safetensors"))
    assert all(k.startswith("text_model.") for k in text_file)
    assert {v.dtype for v in text_file.values() if v.is_floating_point()} == {torch.float16}
    pipe = PixArtAlphaPipeline.from_pretrained(str(export), local_files_only=True)
    assert pipe.text_encoder.dtype == torch.float32 and pipe.transformer.config.out_channels == 4
    shipped = model.load_pipeline().text_encoder.state_dict()
    for key, value in pipe.text_encoder.state_dict().items():  # the trained weights, not a re-initialisation
        assert torch.equal(value, shipped[key].half().float()), key

    loaded = load(str(export))
    assert loaded.family == "pixart" and loaded.adapter.causal_text
    cond = loaded.adapter.encode(loaded.pipe, PROMPTS)
    assert cond.hidden.shape[1] == 77
    assert torch.equal(cond.added[CONTEXT_MASK], dit.padding_mask(model.load_tokenizer()(
        PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids))  # fmt: skip
    assert loaded.sites.select("text.attn.*")[0].module_path.endswith("encoder.layers.0.self_attn")
    ours = generate(loaded, "a red circle", seeds=3, config=GenerationConfig(steps=4, guidance=4.0))
    latents = initial_latents(loaded.adapter.latent_shape(loaded.pipe, 32, 32), [3], loaded.device, loaded.dtype)
    theirs = pipe(["a red circle"], num_inference_steps=4, guidance_scale=4.0, latents=latents, output_type="pt",
                  **dit.sampling_options(pipe)).images  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_trace_and_quickfix_run_on_the_export(dit_run, tmp_path):
    _, _, export = dit_run
    loaded = load(str(export))
    config = TraceConfig(seeds=(0,), steps=2, guidance=4.0, noise=2.0, bootstrap=0, max_batch=8)
    prompt = "a red circle in the style of van goo"
    result = causal_trace(loaded, prompt, "van goo", "a red circle", scorer=DetectorScorer(), out=tmp_path,
                          sites="transformer.block.*", config=config)  # fmt: skip
    assert result.controls == ["transformer.sattn.0"]
    assert result.labels[1:] == ["transformer.block.0", "transformer.block.1"]
    request = EditRequest(concepts=("van goo",), targets=("a plain style",))
    edit = compute_edit(loaded, request, method="quickfix", config=QuickFixConfig())
    (name,) = edit.parameters  # CLIP's layer-0 attention output, as on Stable Diffusion
    assert name.startswith("text_encoder.") and name.endswith("encoder.layers.0.self_attn.out_proj.weight")
    assert set(PIXART_CLIP_EDIT_CAVEATS["quickfix"]) <= set(edit.notes)


def test_warm_start_from_a_dit_export_and_refusals(dit_run, tmp_path):
    _, _, export = dit_run
    warm = {k: v for k, v in TINY_DIT.items() if k not in ("text_from", "vae_from")}
    config = TrainConfig(**{**warm, "seed": 1, "lr": 1e-12, "init_from": str(export)})
    assert train(config, tmp_path / "warm", max_minutes=0.0)["step"] == 1
    ckpt = load_file(str(tmp_path / "warm" / "checkpoint.safetensors"))
    init = model.load_pipeline(export)
    for key, value in init.transformer.state_dict().items():
        assert torch.allclose(ckpt["transformer." + key], value, atol=1e-8), key
    with pytest.raises(ConfigError, match="has a dit denoiser"):
        train(TrainConfig(**{**warm, "denoiser": "unet", "text_width": 96, "init_from": str(export)}), tmp_path / "u")
    with pytest.raises(ConfigError, match="another architecture"):
        train(TrainConfig(**{**warm, "dit_width": 24, "init_from": str(export)}), tmp_path / "w")
    with pytest.raises(ConfigError, match="has a unet denoiser"):
        train(TrainConfig(**{**warm, "init_from": "shapesworld"}), tmp_path / "s")
    for bad in ({"denoiser": "foo"}, {"freeze_unet": True}, {"dit_width": 18, "dit_heads": 4},
                {"text_from": None, "vae_from": None}, {"init_from": "shapesworld"}):  # fmt: skip
        with pytest.raises(ConfigError):
            TrainConfig(**{**TINY_DIT, **bad})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--denoiser", "foo"], "argument --denoiser: 'foo' is not a denoiser; valid: unet, dit"),
        (["--denoiser", "dit", "--freeze-unet"], "freeze_unet applies to the UNet denoiser"),
        (["--dit-layers", "8"], "--dit-layers applies to --denoiser dit, not unet"),
        (["--denoiser", "dit", "--text-layers", "3"], "--text-layers 3 is for a fresh text encoder"),
        (["--train-text"], "--train-text applies to --denoiser dit"),
    ],
)
def test_bad_denoiser_options_are_one_line_errors(argv, message, tmp_path, capsys):
    try:
        code = main(["world", "train", "--out", str(tmp_path / "run"), *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_shipped_dit_fits_its_size_and_reads_a_fine_tune_of_the_unet_models_text_encoder():
    from safetensors import safe_open

    from diffloc.models.registry import shapesworld_dir

    directory = shapesworld_dir("shapesworld-dit")
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    assert size <= 30 * 2**20, size
    loaded = load("shapesworld-dit")
    assert loaded.family == "pixart" and loaded.adapter.causal_text
    config = loaded.pipe.transformer.config
    assert config.num_layers >= 8 and config.norm_type == "ada_norm_single" and config.out_channels == 4
    assert config.patch_size == 2 and config.caption_channels == 96
    shipped = model.load_pipeline()
    # the UNet model's encoder and tokenizer, fine-tuned with the transformer (the card's training log), stored in
    # float16
    mine, theirs = loaded.pipe.text_encoder.config, shipped.text_encoder.config
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(mine, field) == getattr(theirs, field), field
    assert loaded.pipe.tokenizer.get_vocab() == shipped.tokenizer.get_vocab()
    with safe_open(str(directory / "text_encoder" / "model.safetensors"), "pt") as stored:
        names = list(stored.keys())  # a safetensors handle is not iterable
        assert {stored.get_slice(k).get_dtype() for k in names} == {"F16"}
    for key, value in loaded.pipe.vae.state_dict().items():
        assert torch.equal(value, shipped.vae.state_dict()[key]), key
    assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"
    ev = json.loads((directory / "eval.json").read_text())
    assert ev["config"]["seeds"] == 8 and ev["config"]["split"] == "heldout" and ev["n_images"] == 576
