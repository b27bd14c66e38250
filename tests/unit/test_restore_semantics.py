"""What a restore reads and writes: the restore source, controls, CFG halves, token positions, corruption."""

from __future__ import annotations

import pytest
import torch
from support import corrupt_subject

from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.hooks import patch, record
from diffloc.engine.interventions import Restore, Run
from diffloc.errors import ConfigError
from diffloc.sites import SiteKind
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.corruption import encoder_noise

CFG = GenerationConfig(steps=3, guidance=5.0)
ROW_ATOL = 1e-5  # rows of one CPU batch agree to ~1e-6 (kernel blocking); see test_engine
PROMPT = "a red circle in the style of van gogh"


def _corrupt(model, std=2.0):
    return corrupt_subject(model, PROMPT, std=std, noise_seed=1)


def _runs(model, site, source):
    corrupt = _corrupt(model)
    return [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=(site,), source=0, restore_from=source))),
    ]


class _UnetInputs:
    """Records the latent rows the UNet is called with, at every step."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __enter__(self):
        self.handle = self.model.pipe.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, module, args, kwargs):
        self.calls.append((args[0] if args else kwargs["sample"]).detach().clone())

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_which_latent_a_restore_reads(tiny_sd1, source):
    """same-latent: an extra conditional row follows the restored run's latent, and the restored site takes that
    row's value; trajectory: no extra row, the site takes the clean run's value (computed on the clean latent)."""
    site = "unet.xattn.8"
    runs = _runs(tiny_sd1, site, source)
    with _UnetInputs(tiny_sd1) as inputs, record(tiny_sd1, [site]) as seen:
        generate_runs(tiny_sd1, runs, config=CFG)
    rows = 2 * len(runs) + (1 if source == "same-latent" else 0)
    assert all(x.shape[0] == rows for x in inputs.calls)
    clean_row, restored_row = len(runs), len(runs) + 2  # conditional rows of runs 0 and 2
    for step, (x, out) in enumerate(zip(inputs.calls, seen[site], strict=True)):
        if source == "same-latent":
            torch.testing.assert_close(x[-1], x[restored_row], rtol=0, atol=0)  # the shadow follows run 2
            torch.testing.assert_close(out[restored_row], out[-1], rtol=0, atol=0)
        else:
            torch.testing.assert_close(out[restored_row], out[clean_row], rtol=0, atol=0)
        if step > 0:  # the restored run's latent has left the clean trajectory
            assert not torch.equal(x[restored_row], x[clean_row])


def test_a_restore_leaves_the_unconditional_rows_untouched(tiny_model):
    site = next(s.name for s in tiny_model.sites if s.kind is SiteKind.XATTN)
    for source in ("same-latent", "trajectory"):
        runs = _runs(tiny_model, site, source)
        plain = [runs[0], runs[1], Run(prompt=PROMPT, seed=0, interventions=runs[1].interventions)]
        with record(tiny_model, [site]) as restored:
            generate_runs(tiny_model, runs, config=CFG)
        with record(tiny_model, [site]) as unrestored:
            generate_runs(tiny_model, plain, config=CFG)
        n = len(runs)
        first_restored, first_plain = restored[site][0], unrestored[site][0]
        # step 0 (every run on the same latent): each unconditional row as without the restore; the restored
        # run's conditional row changed
        torch.testing.assert_close(first_restored[:n], first_plain[:n], rtol=0, atol=ROW_ATOL)
        assert not torch.allclose(first_restored[n + 2], first_plain[n + 2], atol=1e-4)
        # every step: the other runs' rows, both halves, as without the restore
        for a, b in zip(restored[site], unrestored[site], strict=True):
            for row in (0, 1, n, n + 1):
                torch.testing.assert_close(a[row], b[row], rtol=0, atol=ROW_ATOL)


@pytest.mark.parametrize("source", ["same-latent", "trajectory"])
def test_restoring_every_unet_site_reproduces_the_clean_image(tiny_model, source):
    sites = tuple(s.name for s in tiny_model.sites.denoiser_sites())
    corrupt = _corrupt(tiny_model)
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=sites, source=0, restore_from=source))),
    ]
    clean, corrupted, restored = generate_runs(tiny_model, runs, config=CFG)
    assert (clean - corrupted).abs().max() > 100 * ROW_ATOL
    torch.testing.assert_close(restored, clean, rtol=0, atol=ROW_ATOL)


def test_controls_restore_nothing_under_same_latent(tiny_model):
    """Sites before the first cross-attention cannot read the text: restoring them on the run's own latent is a
    no-op. SD-XL and IF feed pooled text into the time embedding, so there no site is text-blind; PixArt's
    adaLN-single embeds the timestep alone, and its first block's self-attention runs before any cross-attention."""
    controls = tiny_model.adapter.text_blind_sites(tiny_model.pipe, tiny_model.sites)
    if tiny_model.family in ("sdxl", "if"):
        assert controls == []
        return
    assert controls == (["transformer.sattn.0"] if tiny_model.family == "pixart" else ["unet.res.0", "unet.sattn.0"])
    corrupt = _corrupt(tiny_model)
    runs = [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,))]
    runs += [Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=(c,), source=0))) for c in controls]
    runs += [
        Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=(c,), source=0, restore_from="trajectory")))
        for c in controls
    ]
    clean, corrupted, *restored = generate_runs(tiny_model, runs, config=CFG)
    gap = (clean - corrupted).abs().max()
    assert gap > 100 * ROW_ATOL
    for image in restored[: len(controls)]:
        assert (image - corrupted).abs().max() <= 1e-4 * gap
    # the clean trajectory's latent comes along with a trajectory restore: the ResNet before any text moves it (a
    # PixArt block's self-attention is gated by adaLN-single, small at random init: it moves the image less)
    share = 1e-4 if tiny_model.family == "pixart" else 0.1
    assert (restored[len(controls)] - corrupted).abs().max() > share * gap


def test_corruption_lands_only_on_the_subject_positions(tiny_model):
    embeds = [s.name for s in tiny_model.sites if s.kind is SiteKind.TEXT_EMBED]
    corrupt = _corrupt(tiny_model)
    start, end = corrupt.positions
    with record(tiny_model, embeds) as seen:
        generate_runs(tiny_model, [Run(prompt=PROMPT, seed=0), Run(prompt=PROMPT, seed=0, interventions=(corrupt,))],
                      config=GenerationConfig(steps=1, guidance=1.0))  # fmt: skip
    for name in embeds:
        clean, noisy = seen[name][0][0], seen[name][0][1]
        diff = (noisy - clean).abs().amax(dim=-1)  # (tokens,)
        assert torch.all(diff[start:end] > 0)
        assert torch.count_nonzero(diff[:start]) == 0 and torch.count_nonzero(diff[end:]) == 0


def test_a_text_restore_stays_at_its_positions(tiny_model):
    site = next(s.name for s in tiny_model.sites if s.kind is SiteKind.TEXT_LAYER and s.index == 0)
    corrupt = _corrupt(tiny_model)
    start, end = corrupt.positions
    runs = [
        Run(prompt=PROMPT, seed=0),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt,)),
        Run(prompt=PROMPT, seed=0, interventions=(corrupt, Restore(sites=(site,), source=0, positions=(start, end)))),
    ]
    with record(tiny_model, [site]) as seen:
        generate_runs(tiny_model, runs, config=GenerationConfig(steps=1, guidance=1.0))
    text_rows = seen[site][0]  # one text batch: clean, corrupted, restored (distinct rows: text-level runs)
    clean, corrupted, restored = text_rows[0], text_rows[1], text_rows[2]
    torch.testing.assert_close(restored[start:end], clean[start:end], rtol=0, atol=0)
    torch.testing.assert_close(restored[:start], corrupted[:start], rtol=0, atol=0)
    torch.testing.assert_close(restored[end:], corrupted[end:], rtol=0, atol=0)
    assert not torch.equal(clean[end:], corrupted[end:])  # later tokens attended to the noise (CLIP is causal)


def test_each_text_encoder_is_corrupted_in_its_own_scale(tiny_sdxl, tiny_sd1):
    config = TraceConfig(noise_multiplier=3.0, bootstrap=0)
    stds = encoder_noise(tiny_sdxl, config)
    assert set(stds) == {"text.embed", "text2.embed"}
    for name, value in stds.items():
        expected = 3.0 * tiny_sdxl.module(name).weight.float().std().item()
        assert value == pytest.approx(expected, rel=1e-6)
    # an absolute noise sets the first encoder's std; the second keeps the same multiple of its own
    absolute = encoder_noise(tiny_sdxl, TraceConfig(noise=0.5, bootstrap=0))
    weights = [tiny_sdxl.module(name).weight.detach().float() for name in ("text.embed", "text2.embed")]
    ratio = weights[1].std() / weights[0].std()
    assert absolute["text.embed"] == 0.5 and absolute["text2.embed"] == pytest.approx(0.5 * float(ratio), rel=1e-6)
    assert list(encoder_noise(tiny_sd1, config)) == ["text.embed"]


def test_sdxl_time_ids_follow_the_requested_size(tiny_sdxl):
    seen = []

    def grab(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

    handle = tiny_sdxl.pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        generate_runs(tiny_sdxl, [Run(prompt=PROMPT, seed=0)], config=GenerationConfig(steps=1, height=48, width=64))
    finally:
        handle.remove()
    assert seen and torch.equal(seen[0][0], torch.tensor([48.0, 64.0, 0.0, 0.0, 48.0, 64.0], dtype=seen[0].dtype))


def test_trace_records_its_restore_source_and_refuses_unknown_ones(tiny_sd1):
    class Mean:
        name = "mean"

        def score(self, images, texts):
            return images.flatten(1).mean(dim=1)

        def check(self, text):
            return None

    fast = {"seeds": (0,), "steps": 2, "guidance": 5.0, "bootstrap": 0}
    for source in ("same-latent", "trajectory"):
        result = causal_trace(tiny_sd1, PROMPT, "van gogh", "x", scorer=Mean(), sites="unet.xattn.8",
                              config=TraceConfig(noise=2.0, restore_from=source, **fast))  # fmt: skip
        assert result.restore_from == source and result.meta["restore_from"] == source
    with pytest.raises(ConfigError, match="restore_from must be one of same-latent, trajectory, got 'clean'"):
        TraceConfig(restore_from="clean")
    with pytest.raises(ConfigError, match="restore_from must be one of"):
        Restore(sites=("unet.res.0",), restore_from="x")


def test_a_patch_installed_beside_a_restore_sees_the_shadow_row(tiny_sd1):
    """Hooks see every row of the batch; the shadow row is appended after the guided rows."""
    rows = []
    with patch(tiny_sd1, outputs={"unet.res.3": lambda m, a, k, out: rows.append(out.shape[0])}):
        generate_runs(tiny_sd1, _runs(tiny_sd1, "unet.res.3", "same-latent"), config=CFG)
    assert set(rows) == {7}
