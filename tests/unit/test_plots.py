"""Report figures: every UNet bar named, score axes from 0, grid labels that fit over 32 px images."""

from __future__ import annotations

import numpy as np
import torch

from diffloc.report.plots import image_strip, plot_denoiser_trace, plot_windows
from diffloc.tracing.results import TraceResult, WindowResult

LABELS = [f"unet.{kind}.{i}" for i in range(20) for kind in ("res", "sattn", "xattn", "ff")]


def _trace(scores):
    return TraceResult(kind="unet", scores=np.asarray(scores, dtype=float), labels=LABELS[: len(scores)],
                       clean_score=0.9, corrupt_score=0.1, subject_range=(1, 2), noise=1.0)  # fmt: skip


def test_every_unet_bar_is_labelled():
    figure = plot_denoiser_trace(_trace(np.linspace(0.1, 0.8, len(LABELS))))
    ax = figure.axes[0]
    shown = [t.get_text() for t in ax.get_xticklabels()]
    assert shown == [label.removeprefix("unet.") for label in LABELS]
    assert ax.get_ylim()[0] == 0.0  # effects all >= 0: the axis starts at 0, the clean line (1) is in view
    assert ax.get_ylim()[1] > 1.0


def test_a_negative_effect_stays_visible():
    ax = plot_denoiser_trace(_trace([0.5, -0.3, 0.2])).axes[0]
    assert ax.get_ylim()[0] < -0.3


def test_window_scores_start_at_zero():
    result = WindowResult(windows=[["unet.xattn.0", "unet.xattn.1"], ["unet.xattn.1", "unet.xattn.2"]],
                          scores=np.array([0.62, 0.7]), original_score=0.75, mode="remove")  # fmt: skip
    ax = plot_windows(result).axes[0]
    low, high = ax.get_ylim()
    assert low == 0.0 and high > 0.75


def test_grid_labels_of_small_images_are_wrapped_and_images_unsmoothed():
    prompts = ["a striped blue square in the style of van goo on a black background", "a zorblin"]
    labels = [f"{when}: {p}" for when in ("before", "after") for p in prompts]
    figure = image_strip(torch.rand(4, 3, 32, 32), labels, columns=2)
    titles = [ax.get_title() for ax in figure.axes]
    assert all(len(line) <= 24 for title in titles for line in title.splitlines())
    assert [" ".join(t.split()) for t in titles] == labels  # wrapped, nothing cut
    assert all(ax.get_images()[0].get_interpolation() == "nearest" for ax in figure.axes)
    assert min(t.get_fontsize() for ax in figure.axes for t in [ax.title]) >= 7
