"""Attribution patching and the screen: agreement with exact patching where restores act linearly, a gradient path
that leaves the model as it found it, the estimate/exact marks, and the refusals."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from support import assert_estimates_agree, float_floor, score_changes

from diffloc.cli.main import main
from diffloc.engine.hooks import installed_hook_count
from diffloc.errors import ConfigError
from diffloc.eval.scorers import DetectorScorer
from diffloc.tracing.causal import causal_trace, trace_text
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.results import TraceResult

PROMPT = "a red circle in the style of van gogh"
SUBJECT = "van gogh"
ATTRIBUTE = "a blue diamond"  # absent from the images: its log-probability is a smooth (unsaturated) logit margin
#: noise small enough that a restore moves each site's activation a little: the score is then linear in it
LINEAR = TraceConfig(seeds=(0,), steps=3, guidance=4.0, noise=0.005, bootstrap=0, max_batch=80)
RELATIVE = 0.05


def assert_agree(exact: TraceResult, estimated: TraceResult, share: float = 0.1) -> int:
    """Estimated and exact score changes agree to :data:`RELATIVE`, plus the precision an exact change is measured
    to (:func:`float_floor`), on every restore whose exact change is at least ``share`` of the largest; returns how
    many were compared."""
    return assert_estimates_agree(score_changes(exact), score_changes(estimated), share=share, rtol=RELATIVE,
                                  floor=float_floor(exact, estimated))  # fmt: skip


def _subset(result: TraceResult, keep: list[int]) -> TraceResult:
    return replace(result, scores=np.asarray(result.scores)[keep], labels=[result.labels[i] for i in keep])


@pytest.fixture(scope="module")
def logp():
    return DetectorScorer(log_probability=True)


def _frozen_state(model):
    flags = {
        f"{name}.{p_name}": (param.requires_grad, param.grad is None)
        for name, component in model.pipe.components.items()
        if isinstance(component, torch.nn.Module)
        for p_name, param in component.named_parameters()
    }
    return model.fingerprint(), flags, installed_hook_count(model)


def test_unet_attribution_equals_exact_patching_where_restores_are_linear(tiny_sd1, logp):
    kwargs = dict(scorer=logp, sites="unet.*", config=LINEAR)
    exact = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, **kwargs)
    estimated = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution", **kwargs)
    assert estimated.labels == exact.labels
    assert estimated.clean_score == pytest.approx(exact.clean_score, abs=1e-4)
    assert estimated.corrupt_score == pytest.approx(exact.corrupt_score, abs=1e-4)
    assert assert_agree(exact, estimated) >= 10
    steps = estimated.step_effects
    assert steps is not None and steps.shape[0] == len(exact.labels) and steps.shape[1] >= LINEAR.steps
    np.testing.assert_allclose(steps.sum(1), estimated.indirect_effect, rtol=1e-6, atol=1e-9)
    controls = [estimated.labels.index(c) for c in estimated.controls]
    assert np.abs(estimated.indirect_effect[controls]).max() < 1e-3  # text-blind: nothing to restore on the same latent


def test_trajectory_attribution_matches_trajectory_patching(tiny_sd1, logp):
    config = TraceConfig(**{**LINEAR.to_dict(), "restore_from": "trajectory"})
    kwargs = dict(scorer=logp, sites="unet.xattn.*", config=config)
    exact = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, **kwargs)
    estimated = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution", **kwargs)
    assert estimated.restore_from == "trajectory"
    # The controls (text-blind, before the first cross-attention) carry only the clean trajectory's latent under this
    # source; restoring the UNet's first layer perturbs everything after it, and first order misses ~6-11% of that
    # effect at every noise from 5e-4 to 8e-3 (not shrinking like a curvature term). Compared: the sites that read text.
    keep = [i for i, label in enumerate(exact.labels) if label not in exact.controls]
    assert assert_agree(_subset(exact, keep), _subset(estimated, keep)) >= 5


def test_text_attribution_equals_exact_patching_where_restores_are_linear(tiny_sd1, logp):
    exact = trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR)
    estimated = trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR, method="attribution")
    assert estimated.scores.shape == exact.scores.shape
    assert np.array_equal(np.isnan(estimated.scores), np.isnan(exact.scores))
    # Text restores move the score by 1e-4..5e-3 here, and a float32 sampling chain measures an exact restore to
    # about 1e-5: only the larger cells are measured well enough to hold either method to 5%.
    assert assert_agree(exact, estimated, share=0.4) >= 3


@pytest.mark.parametrize("trace", ["unet", "text"])
def test_items_estimated_in_one_batch_equal_items_estimated_alone(tiny_sd1, logp, trace):
    """Items share one corrupted chain and one backward pass; each item's estimates are still its own."""
    config = TraceConfig(**{**LINEAR.to_dict(), "seeds": (0, 1, 2), "noise": 0.3})
    # a text trace takes one prompt (its items are the seeds); a UNet trace takes several
    prompts = [PROMPT, "a green square in the style of van gogh"] if trace == "unet" else PROMPT
    run = partial(causal_trace, sites="unet.xattn.*") if trace == "unet" else trace_text
    together = run(tiny_sd1, prompts, SUBJECT, ATTRIBUTE, scorer=logp, config=config, method="attribution")
    alone = run(tiny_sd1, prompts, SUBJECT, ATTRIBUTE, scorer=logp, config=replace(config, max_batch=2),
                method="attribution")  # fmt: skip
    assert len(together.items) == len(alone.items) == (6 if trace == "unet" else 3)
    for a, b in zip(together.items, alone.items, strict=True):
        assert (a["prompt"], a["seed"]) == (b["prompt"], b["seed"])
        np.testing.assert_allclose(np.nan_to_num(a["scores"]), np.nan_to_num(b["scores"]), rtol=1e-3, atol=1e-4)
    spread = np.ptp([np.nan_to_num(it["scores"]) for it in together.items], axis=0)
    assert spread.max() > 1e-3  # the items differ, so a mixed-up batch would show


def test_the_attention_fix_estimates_key_sites_through_their_layer_not_the_softmax(tiny_sd1, logp):
    """At a corruption that moves the keys far, first order through the softmax misses ~15% of a key restore;
    computing the layer's output with the clean keys exactly (AtP*'s fix) brings the estimate within a few %."""
    config = TraceConfig(**{**LINEAR.to_dict(), "noise": 0.5})
    kwargs = dict(scorer=logp, sites="unet.xattn.*.k", config=config)
    hooks = installed_hook_count(tiny_sd1)
    exact = score_changes(causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, **kwargs))
    fixed = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution", **kwargs)
    plain = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution", attention_fix=False, **kwargs)
    assert fixed.meta["attribution_fixes"] == ["attention-saturation"] and plain.meta["attribution_fixes"] == []
    assert installed_hook_count(tiny_sd1) == hooks

    def error(result: TraceResult) -> float:
        return float(np.abs(score_changes(result) - exact).mean() / np.abs(exact).mean())

    assert error(fixed) < 0.05 and error(fixed) < error(plain) / 3


def test_the_gradient_path_leaves_weights_flags_and_hooks_as_before(tiny_sd1, logp):
    before = _frozen_state(tiny_sd1)
    causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, sites="unet.xattn.*", config=LINEAR,
                 method="attribution")  # fmt: skip
    trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR, method="attribution")
    assert _frozen_state(tiny_sd1) == before
    assert before[2] == 0


def test_an_error_inside_the_gradient_path_restores_everything(tiny_sd1):
    class Failing(DetectorScorer):
        def score_grad(self, images, texts):
            raise RuntimeError("scorer failed")

    before = _frozen_state(tiny_sd1)
    with pytest.raises(RuntimeError, match="scorer failed"):
        causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=Failing(log_probability=True), sites="unet.xattn.0",
                     config=LINEAR, method="attribution")  # fmt: skip
    assert _frozen_state(tiny_sd1) == before


def test_screen_confirms_the_top_k_exactly_and_marks_every_score(tiny_sd1, logp, tmp_path):
    kwargs = dict(scorer=logp, sites="unet.xattn.*", config=LINEAR)
    exact = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, **kwargs)
    screen = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="screen", top_k=3, out=tmp_path, **kwargs)
    estimated = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, method="attribution", **kwargs)
    confirmed = screen.meta["confirmed"]
    assert len(confirmed) == 3 and screen.method == "screen"
    marks = dict(zip(screen.labels, screen.marks, strict=True))
    assert {name for name, mark in marks.items() if mark == "exact"} == set(confirmed)
    for name in confirmed:  # the confirmed sites carry the exact trace's numbers
        i, j = screen.labels.index(name), exact.labels.index(name)
        assert screen.scores[i] == pytest.approx(exact.scores[j], abs=1e-4)
    errors = [abs(e - x) / abs(screen.clean_score - screen.corrupt_score) for e, x in zip(
        [estimated.scores[estimated.labels.index(n)] for n in confirmed],
        [screen.scores[screen.labels.index(n)] for n in confirmed], strict=True)]  # fmt: skip
    assert screen.meta["confirmed_error"] == pytest.approx(np.mean(errors), rel=1e-3, abs=1e-6)
    assert [name for name, _ in screen.top(3)] == sorted(
        confirmed, key=lambda n: -screen.indirect_effect[screen.labels.index(n)]
    )  # the confirmed sites lead, by their measured effect
    loaded = TraceResult.load(tmp_path)
    assert loaded.method == "screen" and loaded.meta["confirmed"] == confirmed
    assert np.array_equal(loaded.marks, screen.marks) and np.array_equal(loaded.exact_mask, screen.exact_mask)
    np.testing.assert_array_equal(loaded.step_effects, screen.step_effects)
    np.testing.assert_array_equal(loaded.scores, screen.scores)


def test_exact_results_mark_every_score_exact(tiny_sd1, logp, tmp_path):
    result = trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR, out=tmp_path)
    loaded = TraceResult.load(tmp_path)
    assert result.method == loaded.method == "exact" and loaded.step_effects is None
    assert set(loaded.marks.ravel()) == {"exact"}


def test_text_screen_marks_the_confirmed_cells(tiny_sd1, logp, tmp_path):
    screen = trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR, method="screen", top_k=2,
                        out=tmp_path)  # fmt: skip
    assert int((screen.marks == "exact").sum()) == 2 and len(screen.meta["confirmed"]) == 2
    assert np.array_equal(TraceResult.load(tmp_path).marks, screen.marks)


class _Opaque:
    """A scorer with no gradient (a stand-in for any black-box scorer)."""

    name = "opaque"

    def score(self, images, texts):
        return images.mean(dim=(1, 2, 3))

    def check(self, text):
        return None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "attribution", "scorer": _Opaque()}, "scorer 'opaque' has no score_grad"),
        ({"method": "screen", "top_k": 0}, "top_k must be an integer >= 1"),
        ({"method": "screen", "top_k": -2}, "top_k must be an integer >= 1"),
        ({"method": "screen", "top_k": 99}, "top_k 99 exceeds the 18 traced sites"),
        ({"method": "gradient"}, "method must be one of exact, attribution, screen"),
    ],
)
def test_bad_gradient_settings_are_refused_in_one_line(tiny_sd1, logp, kwargs, message):
    kwargs = {"scorer": logp, **kwargs}
    with pytest.raises(ConfigError, match=message) as info:
        causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, sites="unet.xattn.*", config=LINEAR, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("method", ["attribution", "screen"])
def test_autograd_off_is_refused_instead_of_returning_zeros(tiny_sd1, logp, context, method):
    with context(), pytest.raises(ConfigError, match="autograd is off"):
        causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, sites="unet.xattn.*", config=LINEAR,
                     method=method)  # fmt: skip
    with context(), pytest.raises(ConfigError, match="autograd is off"):
        trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR, method=method)


def test_text_screen_refuses_more_cells_than_the_grid_has(tiny_sd1, logp):
    with pytest.raises(ConfigError, match=r"top_k 100000 exceeds the \d+ traced sites"):
        trace_text(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, config=LINEAR, method="screen", top_k=100000)


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "screen", "--top-k", "0"], "top_k must be an integer >= 1"),
    (["--method", "screen", "--top-k", "500"], "top_k 500 exceeds the 18 traced sites"),
])  # fmt: skip
def test_cli_refuses_bad_screen_sizes_in_one_line(tmp_path, tiny_clip_dir, capsys, flags, message):
    code = main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", SUBJECT, "--attribute",
                 "van gogh style", "--clip", str(tiny_clip_dir), "--sites", "unet.xattn.*", "--out", str(tmp_path),
                 "--seeds", "0", "--steps", "2", "--bootstrap", "0", *flags])  # fmt: skip
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after the progress bar, cleared
    assert code == 1 and err.startswith("diffloc: error:") and message in err and "\n" not in err


def test_cli_screen_with_a_clip_scorer_writes_marked_results(tmp_path, tiny_clip_dir, capsys):
    code = main(["trace", "unet", "--model", "tiny-sd1", "--prompt", PROMPT, "--subject", SUBJECT, "--attribute",
                 "van gogh style", "--clip", str(tiny_clip_dir), "--sites", "unet.xattn.*", "--out", str(tmp_path),
                 "--seeds", "0", "--steps", "2", "--bootstrap", "0", "--method", "screen", "--top-k", "2"])  # fmt: skip
    assert code == 0
    result = TraceResult.load(tmp_path)
    assert result.method == "screen" and int((result.marks == "exact").sum()) == 2
    assert "method: screen" in capsys.readouterr().out


def test_the_step_heatmap_renders_from_a_saved_attribution_result(tiny_sd1, logp, tmp_path):
    from diffloc.errors import DifflocError
    from diffloc.report.plots import plot_denoiser_trace, plot_step_effects, save_figure

    causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, sites="unet.xattn.*", config=LINEAR,
                 method="attribution", out=tmp_path)  # fmt: skip
    loaded = TraceResult.load(tmp_path)
    figure = plot_step_effects(loaded, limit=5)
    assert len(figure.axes[0].get_yticklabels()) == 5
    assert save_figure(figure, tmp_path / "steps.png").stat().st_size > 0
    assert "attribution: estimates" in plot_denoiser_trace(loaded).axes[0].get_title()
    exact = causal_trace(tiny_sd1, PROMPT, SUBJECT, ATTRIBUTE, scorer=logp, sites="unet.xattn.0", config=LINEAR)
    with pytest.raises(DifflocError, match="no site × step map"):
        plot_step_effects(exact)


def test_top_recall_counts_ties_with_exacts_top_five_only_in_its_tie_aware_reading():
    """Seven sites restore the whole attribute (1.00, 0.995 …): exact's top five is a pick among them, so a fast
    trace naming the other two is right to within the tie, and wrong by strict recall; a site below the tie is a
    miss in both readings. Controls never count."""
    from diffloc.tracing.agreement import agreement
    from diffloc.tracing.results import TraceResult

    labels = [f"unet.res.{i}" for i in range(10)]

    def trace(effects: list[float]) -> TraceResult:  # clean 1, corrupted 0: scores are the effects
        return TraceResult(kind="unet", scores=np.asarray(effects), labels=labels, clean_score=1.0, corrupt_score=0.0,
                           subject_range=(1, 2), noise=0.1, controls=["unet.res.9"])  # fmt: skip

    exact = trace([1.0, 1.0, 0.999, 0.998, 0.997, 0.996, 0.995, 0.5, 0.1, 2.0])
    fast = trace([0.0, 0.0, 0.0, 0.9, 0.9, 0.95, 0.97, 0.96, 0.2, 5.0])  # names 6, 7, 5, 3, 4
    agree = agreement(exact, fast)
    assert agree["exact_top"] == ["unet.res.0", "unet.res.1", "unet.res.2", "unet.res.3", "unet.res.4"]
    assert agree["tied"] == labels[:7] and set(agree["top"]) == {"unet.res.3", "unet.res.4", "unet.res.5",
                                                                   "unet.res.6", "unet.res.7"}  # fmt: skip
    assert agree["top_recall"] == pytest.approx(2 / 5) and agree["top_recall_ties"] == pytest.approx(4 / 5)
    strict = agreement(exact, fast, tie=0.0)
    assert strict["tied"] == labels[:5] and strict["top_recall_ties"] == strict["top_recall"]
