"""Site tables: counts equal the real models', order equals execution order, selection and errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from support import finish_order

from diffloc.errors import UnknownSiteError
from diffloc.models.deepfloyd_if import DeepFloydIFAdapter
from diffloc.models.full_configs import full_size_transformer_config, full_size_unet_config
from diffloc.models.transformer_sites import transformer_sites
from diffloc.models.unet_sites import unet_sites
from diffloc.sites import SiteKind, SiteRole, short_label

REAL_COUNTS = {  # (xattn, sattn, ff, res) of the real checkpoints (paper-algorithms.md section 1)
    "sd1": (16, 16, 16, 22),
    "sd2": (16, 16, 16, 22),
    "sdxl": (70, 70, 70, 17),
}


def _counts(sites):
    kinds = [s.kind for s in sites]
    return tuple(kinds.count(k) for k in (SiteKind.XATTN, SiteKind.SATTN, SiteKind.FF, SiteKind.RES))


def _meta_unet(family: str) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(full_size_unet_config(family))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_counts_match_the_papers(family):
    assert _counts(unet_sites(_meta_unet(family))) == REAL_COUNTS[family]


def test_full_size_sd15_layer_indices():
    sites = {s.name: s for s in unet_sites(_meta_unet("sd1"))}
    assert sites["unet.xattn.8"].module_path == "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
    assert sites["unet.xattn.6"].module_path == "mid_block.attentions.0.transformer_blocks.0.attn2"
    assert sites["unet.xattn.8.k"].module_path.endswith("attn2.to_k")
    assert sites["unet.xattn.6"].resolution == 8 and sites["unet.xattn.0"].resolution == 64


def test_full_size_sdxl_layer_indices():
    sites = {s.name: s for s in unet_sites(_meta_unet("sdxl"))}
    assert sites["unet.xattn.45"].module_path == "up_blocks.0.attentions.1.transformer_blocks.1.attn2"
    assert sites["unet.xattn.15"].module_path == "down_blocks.2.attentions.1.transformer_blocks.1.attn2"
    assert sites["unet.xattn.69"].block == "up_blocks.1"


def test_full_size_if_uses_add_kv_projections():
    sites = unet_sites(_meta_unet("if"), DeepFloydIFAdapter.site_table)
    xattn = [s for s in sites if s.kind is SiteKind.XATTN]
    assert xattn, "IF-I has joint attention layers"
    assert all(s.module_path.endswith(".attentions." + s.module_path.rsplit(".", 1)[-1]) for s in xattn)
    k_sites = [s for s in sites if s.kind is SiteKind.XATTN_K]
    assert len(k_sites) == len(xattn) and all(s.module_path.endswith("add_k_proj") for s in k_sites)


def _meta_denoiser_sites(model):
    """The full-size denoiser's sites of ``model``'s family, from its published config on the meta device."""
    if model.family == "pixart":
        with torch.device("meta"):
            return transformer_sites(PixArtTransformer2DModel.from_config(full_size_transformer_config("pixart")))
    return unet_sites(_meta_unet(model.family), model.adapter.site_table)


def test_tiny_counts_equal_full_size(tiny_model):
    tiny = tiny_model.sites.denoiser_sites(projections=True)
    full = _meta_denoiser_sites(tiny_model)
    assert _counts(tiny) == _counts(full)
    assert [(s.name, s.module_path, s.kind) for s in tiny] == [(s.name, s.module_path, s.kind) for s in full]


def test_site_order_equals_execution_order(tiny_model):
    """Register a hook on every site and compare the order in which their forwards finish."""
    sites = [s for s in tiny_model.sites if s.kind not in (SiteKind.XATTN_K, SiteKind.XATTN_V)]
    # Text encoders run first; SD-XL's second encoder after the first.
    assert finish_order(tiny_model, sites) == [s.name for s in sites]


def test_text_sites_resolved_without_prefix_assumption(tiny_sd1, tiny_sdxl):
    assert tiny_sd1.sites.get("text.attn.0").module_path.endswith("encoder.layers.0.self_attn")
    assert tiny_sdxl.sites.get("text2.mlp.0").component == "text_encoder_2"


def test_select_glob_list_and_predicate(tiny_sd1):
    sites = tiny_sd1.sites
    assert [s.name for s in sites.select("unet.xattn.*")] == [f"unet.xattn.{i}" for i in range(16)]
    assert len(sites.select("unet.xattn.*.k")) == 16
    assert [s.name for s in sites.select("unet.xattn.10, unet.xattn.2")] == ["unet.xattn.2", "unet.xattn.10"]
    assert len(sites.select(lambda s: s.resolution == 2)) > 0


def test_unknown_site_errors_name_close_matches(tiny_sd1):
    with pytest.raises(UnknownSiteError, match=r"unknown site 'unet\.xatn\.8'.*unet\.xattn\.8"):
        tiny_sd1.sites.get("unet.xatn.8")
    with pytest.raises(UnknownSiteError, match="matches no site"):
        tiny_sd1.sites.select("unet.cross.*")
    with pytest.raises(UnknownSiteError, match="empty site selection"):
        tiny_sd1.sites.select("")


def test_role_helpers_select_what_the_name_globs_did(tiny_model):
    sites, net = tiny_model.sites, tiny_model.adapter.denoiser_component  # the denoiser's site prefix
    names = lambda chosen: [s.name for s in chosen]  # noqa: E731
    assert names(sites.denoiser_sites()) == names(sites.select(f"{net}.*"))
    assert names(sites.denoiser_sites(SiteKind.XATTN)) == names(sites.select(f"{net}.xattn.*"))
    assert names(sites.denoiser_sites(SiteKind.XATTN_K)) == names(sites.select(f"{net}.xattn.*.k"))
    assert names(sites.denoiser_sites(projections=True)) == [s.name for s in sites if s.name.startswith(f"{net}.")]
    assert names(sites.text_sites()) == [s.name for s in sites if s.name.split(".")[0] in ("text", "text2")]
    assert names(sites.text_sites(SiteKind.TEXT_EMBED)) == names(sites.select("text*.embed"))
    assert {s.role for s in sites.denoiser_sites(projections=True)} == {SiteRole.DENOISER}
    assert all(s.component == tiny_model.adapter.denoiser_component for s in sites.denoiser_sites(projections=True))
    assert tiny_model.denoiser is getattr(tiny_model.pipe, tiny_model.adapter.denoiser_component)


def test_short_label_drops_the_network_prefix_of_site_names():
    assert short_label("unet.xattn.8") == "xattn.8"
    assert short_label("unet.xattn.8.k") == "xattn.8.k"
    assert short_label("unet.res.1+unet.res.2") == "res.1+res.2"
    assert short_label("clean") == "clean"
