"""Matplotlib figures for tracing results. Each function returns a Figure; nothing touches global state.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so library use never
opens windows or changes rcParams.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from diffloc.atomic import write_atomic
from diffloc.models.registry import MMDIT_FAMILIES
from diffloc.sites import short_label
from diffloc.tracing.results import TraceResult, WindowResult

_KIND_COLOURS = {"res": "#4c72b0", "sattn": "#dd8452", "xattn": "#55a868", "ff": "#c44e52"}
#: joint-attention transformers (SD3, FLUX): block outputs blue, attention green, MLPs red, text stream purple
_JOINT_COLOURS = {"joint": "#4c72b0", "single": "#64b5cd", "attn": "#55a868", "sattn": "#dd8452", "ff": "#c44e52",
                  "joint_context": "#8172b3", "single_context": "#b47cc7", "ff_context": "#937860",
                  "context": "#da8bc3", "time_text": "#8c8c8c"}  # fmt: skip


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Atomically save a figure as PNG."""
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def plot_denoiser_trace(result: TraceResult) -> Figure:
    """Indirect effect of restoring each denoiser site (bars coloured by kind, in execution order)."""
    effect = result.indirect_effect
    kinds = [label.split(".")[1] if label.count(".") >= 1 and "+" not in label else "group" for label in result.labels]
    joint = any(k in _JOINT_COLOURS and k not in _KIND_COLOURS for k in kinds)
    figure = Figure(figsize=(max(6.0, 0.16 * len(effect) + 2), 3.8))
    ax = figure.add_subplot()
    errors = None
    if result.interval is not None:  # asymmetric error bars from the bootstrap interval
        errors = np.abs(np.stack([effect - result.interval[0], result.interval[1] - effect]))
        errors = np.nan_to_num(errors)
    palette = _JOINT_COLOURS if joint else _KIND_COLOURS
    bars = ax.bar(
        range(len(effect)), effect, color=[palette.get(k, "#8172b3") for k in kinds], width=0.85,
        yerr=errors, error_kw={"elinewidth": 0.6, "capsize": 0, "ecolor": "#333333"},
    )  # fmt: skip
    for label, bar in zip(result.labels, bars, strict=True):
        if label in result.controls:
            bar.set_hatch("////")
            bar.set_edgecolor("black")
    removes = result.direction == "remove"
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="corrupted" if removes else "clean")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":", label="clean" if removes else "corrupted")
    handles, _ = ax.get_legend_handles_labels()
    legend = {k: c for k, c in _JOINT_COLOURS.items() if k in kinds} if joint else _KIND_COLOURS
    handles += [Patch(color=colour, label=kind) for kind, colour in legend.items()]
    if result.controls:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="control (text-blind)"))
    ax.set_xticks(range(len(effect)))  # every bar named: the reader looks for a layer by name
    ax.set_xticklabels([short_label(label) for label in result.labels], rotation=90, fontsize=6)
    ax.set_xlim(-0.6, len(effect) - 0.4)
    _from_zero(ax, [*effect, 1.0, *([] if errors is None else (effect + errors[1]).tolist())])
    ax.set_ylabel(
        "effect of removing\n(clean − patched) / (clean − corr)"
        if removes
        else "indirect effect\n(restored − corr) / (clean − corr)"
    )
    meta = result.meta
    interval = "" if result.interval is None else ", bars: 95% bootstrap interval"
    flag = "  CONTROLS MOVED" if result.controls_flagged else ""
    substitute = (meta.get("config") or {}).get("substitute")
    replaced = f" (replaced by '{substitute}')" if substitute else ""
    ax.set_title(
        f"{'Denoiser' if meta.get('family') in MMDIT_FAMILIES else 'UNet'} causal trace: "
        f"'{meta.get('subject', '')}'{replaced} → {meta.get('attribute', '')!r}  "
        f"(clean {result.clean_score:.3f}, corrupted {result.corrupt_score:.3f}, {result.n_items} items; "
        f"{_direction_note(result)}{interval}{_method_note(result)}){flag}",
        fontsize=9, pad=22,
    )  # fmt: skip
    ax.legend(handles=handles, fontsize=7, ncol=6, loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    return figure


def _direction_note(result: TraceResult) -> str:
    """Which way the trace patched, and from where."""
    dose = f"; {result.fraction:g} of each value patched" if result.fraction != 1 else ""
    if result.direction == "remove":
        return f"removed: the clean run with each site's corrupted value, from {result.restore_from}{dose}"
    return f"restore from {result.restore_from}{dose}"


def _method_note(result: TraceResult) -> str:
    """How the scores were made, when not all exact (attribution estimates, a screen's confirmed sites)."""
    if result.method == "exact":
        return ""
    exact = int((result.marks == "exact").sum())
    error = result.meta.get("confirmed_error")
    missed = f" (their estimates off by {error:.2f} of the gap)" if error is not None else ""
    return f"; {result.method}: estimates" + (f", {exact} confirmed exactly{missed}" if exact else "")


def plot_text_trace(result: TraceResult) -> Figure:
    """Heat maps (layer × token) of the indirect effect, one panel per text state kind."""
    effect = result.indirect_effect
    n_kinds = effect.shape[0]
    figure = Figure(figsize=(3.2 * n_kinds + 1, 0.28 * len(result.tokens) + 1.8))
    start, end = result.subject_range
    for k in range(n_kinds):
        ax = figure.add_subplot(1, n_kinds, k + 1)
        data = effect[k].T  # (tokens, layers)
        image = ax.imshow(
            data, cmap="Purples", aspect="auto", vmin=min(0.0, np.nanmin(data)), vmax=max(1.0, np.nanmax(data))
        )
        ax.set_title(result.labels[k], fontsize=9)
        ax.set_xlabel("layer")
        if result.interval is not None and np.isfinite(data).any():
            # the strongest cell of each panel, with its interval over items
            token, layer = np.unravel_index(np.nanargmax(data), data.shape)
            low, high = result.interval[0, k, layer, token], result.interval[1, k, layer, token]
            ax.annotate(f"{data[token, layer]:.2f}\n[{low:.2f}, {high:.2f}]", (layer, token), ha="center",
                        va="center", fontsize=6, color="#c44e52")  # fmt: skip
        ax.set_yticks(range(len(result.tokens)))
        ax.set_yticklabels(
            [f"{t}*" if start <= i < end else t for i, t in enumerate(result.tokens)] if k == 0 else [], fontsize=7
        )
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.suptitle(
        f"Text-encoder causal trace ('*' = subject tokens; clean {result.clean_score:.3f}, "
        f"corrupted {result.corrupt_score:.3f}; {result.n_items} items"
        + ("; removed: the clean run with each state's corrupted value" if result.direction == "remove" else "")
        + (f"; {result.fraction:g} of each value patched" if result.fraction != 1 else "")
        + ("; red: strongest cell, 95% interval" if result.interval is not None else "")
        + _method_note(result)
        + ")",
        fontsize=9,
    )
    return figure


def plot_windows(result: WindowResult) -> Figure:
    """LocoGen curve: attribute score per window start, the unswapped score, and the chosen window."""
    figure = Figure(figsize=(6.5, 3.2))
    ax = figure.add_subplot()
    blocks = result.meta.get("variant", "cross-attention") != "cross-attention"  # joint-attention windows
    # block windows run on from the joint into the single-stream blocks: number them in execution order
    starts = list(range(len(result.windows))) if blocks else [int(w[0].split(".")[2]) for w in result.windows]
    ax.plot(starts, result.scores, marker="o", color="#4c72b0", label="window reads target prompt")
    if result.interval is not None:
        ax.fill_between(starts, result.interval[0], result.interval[1], color="#4c72b0", alpha=0.2,
                        label=f"95% interval ({result.n_items} items)")  # fmt: skip
    ax.axhline(result.original_score, color="black", ls="--", lw=0.8, label="original (no swap)")
    best = result.best_index
    ax.scatter([starts[best]], [result.scores[best]], s=140, facecolors="none", edgecolors="#c44e52", lw=2,
               label=f"chosen: {', '.join(short_label(s) for s in result.best_sites)}")  # fmt: skip
    ax.set_xlabel("first block of the window" if blocks else "first cross-attention layer of the window")
    ax.set_ylabel("attribute score")
    _from_zero(ax, [*result.scores, result.original_score, *([] if result.interval is None else result.interval[1])])
    meta = result.meta
    ax.set_title(
        f"LocoGen ({result.mode}): → {meta.get('target_prompt', '')!r}, score {meta.get('attribute', '')!r}", fontsize=9
    )
    ax.legend(fontsize=7)
    return figure


def _from_zero(ax: Axes, values: Sequence[float]) -> None:
    """Start a score axis at 0 (lower only when a value is negative) and leave room above the highest value."""
    finite = [float(v) for v in values if np.isfinite(v)] or [0.0]
    low, high = min(0.0, *finite), max(finite)
    ax.set_ylim(low - 0.05 * (high - low) if low < 0 else 0.0, high + 0.08 * (high - low or 1.0))


#: characters per label line in :func:`image_strip` (a cell is ~1.7 in wide)
_LABEL_WIDTH = 24


def image_strip(images: torch.Tensor, labels: Sequence[str], *, columns: int = 10) -> Figure:
    """Images ``(n, 3, H, W)`` in a labelled grid.

    Small images (ShapesWorld's 32 px) are drawn with square pixels (no smoothing) at a cell size that keeps
    each label, wrapped to lines of at most ~24 characters, readable above its own image.
    """
    n = images.shape[0]
    rows = (n + columns - 1) // columns
    cols = min(columns, n)
    wrapped = [textwrap.fill(short_label(label), _LABEL_WIDTH) for label in labels]
    lines = max((label.count("\n") + 1 for label in wrapped), default=1)
    figure = Figure(figsize=(1.7 * cols, (1.6 + 0.14 * lines) * rows))
    for i in range(n):
        ax = figure.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        ax.set_title(wrapped[i], fontsize=7, linespacing=1.1)
        ax.axis("off")
    figure.subplots_adjust(wspace=0.08, hspace=0.1 + 0.08 * lines)
    return figure


def plot_step_effects(result: TraceResult, *, limit: int = 24) -> Figure:
    """Site × step heat map of an attribution trace: the estimated indirect effect of restoring each site at one
    denoising step alone (a row sums to the site's estimate). Shows the ``limit`` sites with the largest
    |estimate| (controls excluded), in execution order.

    Raises:
        DifflocError: the result holds no site × step map (an exact trace, or a text trace).
    """
    from diffloc.errors import DifflocError

    if result.step_effects is None:
        raise DifflocError("this result has no site × step map; trace with method 'attribution' or 'screen'")
    steps = np.asarray(result.step_effects, float)  # (sites, steps)
    candidates = [i for i, label in enumerate(result.labels) if label not in result.controls]
    largest = sorted(candidates, key=lambda i: -abs(float(steps[i].sum())))[:limit]
    rows = sorted(largest)
    data = steps[rows]
    figure = Figure(figsize=(max(5.0, 0.3 * steps.shape[1] + 3), 0.26 * len(rows) + 1.6))
    ax = figure.add_subplot()
    bound = float(np.abs(data).max()) or 1.0
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([short_label(result.labels[i]) for i in rows], fontsize=7)
    ax.set_xlabel("denoising step (0 = noisiest)")
    ax.set_title(
        f"Attribution by step: '{result.meta.get('subject', '')}' → {result.meta.get('attribute', '')!r} "
        f"(estimates, {result.n_items} items; restore from {result.restore_from})",
        fontsize=9,
    )  # fmt: skip
    figure.colorbar(image, ax=ax, label="estimated indirect effect")
    return figure
