"""Tiny pipelines: real block structure, determinism, offline generation and save/load, full-size configs."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from diffloc.errors import ConfigError
from diffloc.models.full_configs import FAMILIES, full_size_unet_config
from diffloc.models.tiny import build_tiny_pipeline, tiny_unet_config

PROMPT = "a red circle in the style of van gogh"

# Module kinds whose names and order must match the full-size model exactly.
_STRUCTURAL = {"Attention", "BasicTransformerBlock", "FeedForward", "ResnetBlock2D", "Transformer2DModel"}


@pytest.fixture(scope="module")
def pipes() -> dict[str, DiffusionPipeline]:
    """One seed-0 pipeline per family, shared by the read-only tests of this module."""
    return {family: build_tiny_pipeline(family, seed=0) for family in FAMILIES}


def _meta_unet(family: str) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(full_size_unet_config(family))


def _structure(unet: torch.nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in unet.named_modules() if type(m).__name__ in _STRUCTURAL]


def _counts(unet: torch.nn.Module) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for name, _ in unet.named_modules():
        parts = name.split(".")
        if parts[-1] in ("attn1", "attn2", "ff"):
            counts[parts[-1]] += 1
        elif len(parts) >= 2 and parts[-2] == "resnets":
            counts["resnets"] += 1
    return counts


def _state(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    return {
        f"{component}.{key}": tensor
        for component, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for key, tensor in module.state_dict().items()
    }


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _generate(pipe: DiffusionPipeline, family: str) -> np.ndarray:
    kwargs = {"clean_caption": False} if family == "if" else {}
    generator = torch.Generator().manual_seed(0)
    out = pipe(PROMPT, num_inference_steps=2, output_type="np", generator=generator, **kwargs)
    return np.asarray(out.images)


# --- structure --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("sd1", {"attn1": 16, "attn2": 16, "ff": 16, "resnets": 22}),
        ("sd2", {"attn1": 16, "attn2": 16, "ff": 16, "resnets": 22}),
        ("sdxl", {"attn1": 70, "attn2": 70, "ff": 70, "resnets": 17}),
        ("if", {"resnets": 30}),  # IF's attention is one joint self+text Attention per block, no attn1/attn2
    ],
)
def test_layer_counts_match_the_real_model(pipes, family, expected):
    tiny, full = _counts(pipes[family].unet), _counts(_meta_unet(family))
    assert dict(tiny) == dict(full) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_unet_has_the_full_size_module_tree(pipes, family):
    assert _structure(pipes[family].unet) == _structure(_meta_unet(family))


def test_tiny_config_changes_widths_only():
    widths = {
        "block_out_channels",
        "attention_head_dim",
        "cross_attention_dim",
        "norm_num_groups",
        "sample_size",
        "encoder_hid_dim",
        "addition_embed_type_num_heads",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
    }
    for family in FAMILIES:
        full, tiny = full_size_unet_config(family), tiny_unet_config(family)
        assert full.keys() == tiny.keys()
        assert {key for key in full if full[key] != tiny[key]} <= widths


def test_if_attention_takes_text_through_added_kv(pipes):
    attentions = [m for m in pipes["if"].unet.modules() if isinstance(m, Attention)]
    full = [m for m in _meta_unet("if").modules() if isinstance(m, Attention)]
    assert len(attentions) == len(full) == 22
    assert all(m.add_k_proj is not None and m.add_v_proj is not None for m in attentions)
    unet = pipes["if"].unet.config
    assert (unet.out_channels, unet.encoder_hid_dim_type, unet.addition_embed_type) == (6, "text_proj", "text")
    assert unet.encoder_hid_dim == pipes["if"].text_encoder.config.d_model


# --- family specifics -------------------------------------------------------------------------------------
def test_sd1_and_sd2_differ_where_the_real_models_do(pipes):
    sd1, sd2 = pipes["sd1"], pipes["sd2"]
    assert sd1.unet.config.cross_attention_dim == sd1.text_encoder.config.hidden_size
    assert sd2.unet.config.cross_attention_dim == sd2.text_encoder.config.hidden_size
    assert sd1.unet.config.cross_attention_dim != sd2.unet.config.cross_attention_dim
    assert not sd1.unet.config.use_linear_projection and sd2.unet.config.use_linear_projection
    assert sd1.text_encoder.config.hidden_act == "quick_gelu" and sd2.text_encoder.config.hidden_act == "gelu"
    assert sd1.scheduler.config.prediction_type == "epsilon"
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    assert sd1.text_encoder.config.num_hidden_layers >= 2


def test_clip_tokenizers_pad_like_the_real_ones(pipes):
    eos = 49407
    ids = pipes["sd1"].tokenizer("a red circle").input_ids
    assert ids[0] == 49406 and ids[-1] == eos and len(ids) == 5
    assert pipes["sd1"].tokenizer.pad_token_id == eos
    assert pipes["sd2"].tokenizer.pad_token == "!" and pipes["sd2"].tokenizer.pad_token_id == 0
    assert pipes["sd2"].tokenizer("a red circle").input_ids == ids
    assert pipes["sdxl"].tokenizer.pad_token_id == eos
    assert pipes["sdxl"].tokenizer_2.pad_token_id == 0
    padded = pipes["sd2"].tokenizer("a red circle", padding="max_length", max_length=8).input_ids
    assert padded == [*ids, 0, 0, 0]


def test_sdxl_conditioning_widths_are_consistent(pipes):
    pipe = pipes["sdxl"]
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == hidden
    assert pipe.unet.config.addition_embed_type == "text_time"
    time_ids = 6 * pipe.unet.config.addition_time_embed_dim
    assert pipe.unet.add_embedding.linear_1.in_features == time_ids + pipe.text_encoder_2.config.projection_dim


def test_if_tokenizer_is_t5_like(pipes):
    tok = pipes["if"].tokenizer
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a red circle").input_ids
    assert len(ids) == 4 and ids[-1] == 1 and 2 not in ids  # one piece per known word, then </s>
    assert 2 not in tok("a zorblin named qx7").input_ids  # unknown words are spelled, not <unk>
    assert len(tok) <= pipes["if"].text_encoder.config.vocab_size


# --- determinism ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_a_function_of_the_seed(pipes, family):
    _assert_same_state(_state(pipes[family]), _state(build_tiny_pipeline(family, seed=0)))
    other = _state(build_tiny_pipeline(family, seed=1))
    unet_keys = [key for key in other if key.startswith("unet.")]
    assert not all(torch.equal(other[key], _state(pipes[family])[key]) for key in unet_keys)


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_pipeline("sd1", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'sd3'.*sd1, sd2, sdxl, if") as info:
        build_tiny_pipeline("sd3")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        full_size_unet_config("sd15")


# --- generation and save/load -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "shape"),
    [("sd1", (1, 128, 128, 3)), ("sd2", (1, 128, 128, 3)), ("sdxl", (1, 128, 128, 3)), ("if", (1, 16, 16, 3))],
)
def test_two_step_generation_offline(pipes, family, shape, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = _generate(pipes[family], family)
    assert images.shape == shape
    assert np.isfinite(images).all()
    np.testing.assert_array_equal(images, _generate(pipes[family], family))  # same seed, same image


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip_offline(pipes, family, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = pipes[family]
    pipe.save_pretrained(tmp_path)
    # accelerate is not a dependency; say so instead of letting diffusers warn about it
    loaded = DiffusionPipeline.from_pretrained(tmp_path, local_files_only=True, low_cpu_mem_usage=False)
    assert type(loaded) is type(pipe)
    _assert_same_state(_state(pipe), _state(loaded))
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    for name in ("tokenizer", "tokenizer_2"):
        if name in pipe.components:
            before, after = pipe.components[name], loaded.components[name]
            assert after.pad_token_id == before.pad_token_id
            assert after(PROMPT).input_ids == before(PROMPT).input_ids


# --- full-size configs ------------------------------------------------------------------------------------
def test_full_size_sd15_on_meta_device():
    unet = _meta_unet("sd1")
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # SD-1.5's published UNet size
    names = [name for name, _ in unet.named_modules() if name.endswith(".attn2")]
    assert len(names) == 16
    assert "up_blocks.1.attentions.1.transformer_blocks.0.attn2" in names
    assert "mid_block.attentions.0.transformer_blocks.0.attn2" in names
    assert unet.get_submodule(names[0]).to_k.in_features == 768


def test_full_size_configs_instantiate_on_meta_device():
    cross = {"sd1": 768, "sd2": 1024, "sdxl": 2048, "if": 2816}
    for family in FAMILIES:
        unet = _meta_unet(family)
        assert next(unet.parameters()).device.type == "meta"
        assert unet.config.cross_attention_dim == cross[family]
    full = full_size_unet_config("sd1")
    full["block_out_channels"][0] = 1
    assert full_size_unet_config("sd1")["block_out_channels"][0] == 320  # callers get a copy
