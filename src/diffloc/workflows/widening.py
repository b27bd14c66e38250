"""Widen a LocoEdit window until the *edit* works, not just the LocoGen swap.

LocoGen finds the smallest window of cross-attention layers where feeding another prompt moves the attribute.
A closed-form edit of those layers is weaker than that swap: it maps a handful of key states, and an unseen
phrasing produces states it did not map. On ShapesWorld (``docs/findings.md``) LocoGen puts a style in 4
layers, where LocoEdit removes it from the edit's own prompts but only partly from held-out phrasings.

:func:`locoedit_search` grows the window (keeping the starting window inside it) through ``sizes`` and stops at
the first size whose edit generalizes, judged without any held-out prompt by leaving one template out: for each
of (at most ``max_folds``) templates, the edit is computed from the other templates and checked on the concept
in the left-out one, with seeds LocoGen did not use. A window works when the attribute moved ``min_effect`` (0.9)
of the way, averaged over the folds. The returned edit is computed from every template.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from diffloc.editing.edit import Edit
from diffloc.editing.locoedit import (
    LocoEditConfig,
    compute_locoedit,
    locoedit_statistics,
    preserved_scope,
    site_names,
)
from diffloc.editing.preserved import PreservedStatistics
from diffloc.editing.requests import LOCOEDIT_TEMPLATES, EditRequest
from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ConfigError, UnknownSiteError
from diffloc.models.base import LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.locogen import check_window_search, moved_enough, xattn_layers
from diffloc.validate import check_count, check_seeds

logger = logging.getLogger(__name__)

MODES = ("remove", "update")


@dataclass(frozen=True, kw_only=True)
class WidenConfig:
    """How :func:`locoedit_search` judges a window.

    Attributes:
        sizes: window sizes to try, smallest first (capped at the number of cross-attention layers; sizes
            smaller than the starting window are skipped).
        min_effect: share of the way the edit must move the attribute (remove: ``after <= (1 - m) * before``;
            update: ``after >= before + m * (1 - before)``).
        seeds: generation seeds of the check (by default not LocoGen's 0 and 1).
        max_folds: at most this many templates are left out in turn (evenly spread).
        generation: sampler settings of the check.
    """

    sizes: tuple[int, ...] = (2, 4, 8, 16)
    min_effect: float = 0.9
    seeds: tuple[int, ...] = (100, 101)
    max_folds: int = 8
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "seeds", check_seeds(self.seeds))
        check_window_search(self.sizes, self.min_effect)
        check_count("max_folds", self.max_folds)


def widen_window(window: Sequence[str], size: int, layers: Sequence[str]) -> tuple[str, ...]:
    """The ``size`` consecutive layers of ``layers`` that contain ``window``, centred on it where the ends allow.

    Raises:
        UnknownSiteError: a window name is not one of ``layers``.
        ConfigError: the window's layers are not consecutive.
    """
    index = {name: i for i, name in enumerate(layers)}
    missing = [name for name in window if name not in index]
    if missing:
        raise UnknownSiteError(
            f"{missing[0]!r} is not a cross-attention layer name; expected one of {layers[0]} … {layers[-1]}"
        )
    positions = sorted(index[name] for name in window)
    if positions != list(range(positions[0], positions[-1] + 1)):
        raise ConfigError(f"window {list(window)!r} is not consecutive cross-attention layers; cannot widen it")
    size = min(max(size, len(positions)), len(layers))
    grow = size - len(positions)
    start = min(max(positions[0] - grow // 2, 0), len(layers) - size)
    return tuple(layers[start : start + size])


def _spread(items: list[str], limit: int) -> list[str]:
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def folds(request: EditRequest, limit: int) -> list[tuple[EditRequest, list[str]]]:
    """Leave-one-template-out folds: (the request without template t, the concepts filled into t).

    At most ``limit`` templates are left out (evenly spread). With a single template there is nothing to
    leave out, and the one fold is the whole request checked on its own prompts.
    """
    templates = list(request.all_templates(LOCOEDIT_TEMPLATES))
    if len(templates) == 1:
        return [(request, [templates[0].format(c) for c in request.concepts])]
    out = []
    for left_out in _spread(templates, limit):
        rest = tuple(t for t in templates if t != left_out)
        out.append(
            (replace(request, templates=rest, default_templates=False), [left_out.format(c) for c in request.concepts])
        )
    return out


def _score(model: LoadedModel, prompts: list[str], attribute: str, scorer: Scorer, search: WidenConfig) -> float:
    jobs = [(p, s) for p in prompts for s in search.seeds]
    images = generate(model, [p for p, _ in jobs], seeds=[s for _, s in jobs], config=search.generation)
    return float(scorer.score(images, [attribute] * len(jobs)).mean())


def locoedit_search(
    model: LoadedModel,
    request: EditRequest,
    config: LocoEditConfig,
    *,
    attribute: str,
    mode: str,
    scorer: Scorer,
    search: WidenConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    preserved: PreservedStatistics | None = None,
) -> Edit:
    """The LocoEdit edit on the smallest window (from ``search.sizes``) around ``config.sites`` that works.

    Args:
        model: the loaded model (not modified: each candidate edit is applied only while it is checked).
        request: the edit request; its templates are left out in turn (at most ``search.max_folds``).
        config: LocoEdit settings; ``config.sites`` is the starting window (consecutive cross-attention layers,
            e.g. a LocoGen result's best window).
        attribute: the scorer text of what should go away (``mode="remove"``, e.g. "in the style of pica
            stro") or appear (``"update"``, e.g. "the flag of trelania").
        mode: ``"remove"`` or ``"update"``.
        scorer: probability-like scorer (in [0, 1]; e.g. the ShapesWorld detectors).
        search: sizes, threshold, seeds (default :class:`WidenConfig`).
        progress: called with (windows tried, windows at most).
        preserved: the whole request's preservation statistics (e.g. loaded from a file), used for the returned
            edit; each fold leaves a template out, so its preserved rows differ and it computes its own.

    Returns:
        The first edit that moves the attribute enough, else the widest tried. ``edit.stats["window_search"]``
        records the unedited score of the check prompts and every window tried with its leave-one-out score.

    Raises:
        ConfigError: a bad mode, search setting or non-consecutive window; the scorer's own error for an
            attribute it cannot score. UnknownSiteError: a site that is not a cross-attention layer.
        EditError: ``preserved`` was computed for another request or other weights.
    """
    search = search or WidenConfig()
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    scorer.check(attribute)
    if preserved is not None:  # refused before any generation, not after the whole search
        preserved.check(model, "locoedit", preserved_scope(request, config))
    layers = xattn_layers(model)
    start = widen_window(site_names(config.sites), 1, layers)
    sizes = list(dict.fromkeys(min(m, len(layers)) for m in search.sizes if m >= len(start)))
    if not sizes:
        sizes = [len(start)]
    checks = folds(request, search.max_folds)
    prompts = [p for _, fold_prompts in checks for p in fold_prompts]
    with torch.no_grad():
        before = _score(model, prompts, attribute, scorer, search)
    tried: list[dict[str, Any]] = []
    # The preserved rows do not depend on the sites: each fold's statistics serve every window size.
    fold_stats = [locoedit_statistics(model, fold_request, config) for fold_request, _ in checks]
    for i, size in enumerate(sizes):
        window = replace(config, sites=widen_window(start, size, layers))
        scores = []
        for (fold_request, fold_prompts), stats in zip(checks, fold_stats, strict=True):
            # each fold's edit never saw the phrasing it is checked on
            fold_edit = compute_locoedit(model, fold_request, window, stats)
            with fold_edit.applied(model), torch.no_grad():
                scores.append(_score(model, fold_prompts, attribute, scorer, search) * len(fold_prompts))
        after = sum(scores) / len(prompts)
        ok = moved_enough(mode, before, after, search.min_effect)
        tried.append({"window": list(window.sites), "score": after, "works": ok})
        if progress is not None:
            progress(i + 1, len(sizes))
        if ok:
            break
        logger.info("locoedit on %d layers: %r at %.3f (unedited %.3f); widening", size, attribute, after, before)
    edit = compute_locoedit(model, request, window, preserved)
    found = {
        "start": list(start), "attribute": attribute, "mode": mode, "min_effect": search.min_effect,
        "seeds": list(search.seeds), "prompts": prompts, "unedited_score": before, "tried": tried,
    }  # fmt: skip
    return replace(edit, stats={**edit.stats, "window_search": found})
