"""The gradient methods of the trace API: ``attribution`` (every restore estimated) and ``screen`` (every restore
estimated, the ``top_k`` highest confirmed by exact restores).

Items are computed and stored like an exact trace's (resumable, under their own kind), and come back in the
same form (``clean``, ``corrupted``, ``scores`` per restore), so :func:`~diffloc.tracing.causal.causal_trace` and
:func:`~diffloc.tracing.causal.trace_text` summarize them with the same code. Which scores are estimates is
returned as a mask (:attr:`TraceResult.exact_mask`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from diffloc.differentiable import check_autograd, require_gradient_scorer
from diffloc.engine.interventions import CorruptTokens, Restore
from diffloc.errors import ConfigError
from diffloc.models.base import LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.attribution import Item, estimate_text_items, estimate_unet_items
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.executors import Executor
from diffloc.tracing.grad_drop import GRADIENT_DROPOUT
from diffloc.tracing.key_fix import ATTENTION_FIX, fixed_key_sites
from diffloc.tracing.methods import check_method
from diffloc.tracing.results import DENOISER_TRACE, TEXT_TRACE
from diffloc.tracing.store import ItemStore, Job, run_jobs

#: ``spec(kind, prompt, seed, **extra)``: what defines one stored item (the trace's own spec function)
SpecFn = Callable[..., dict[str, object]]
#: ``compute(restores) -> partial`` of the exact trace's item function for one item's restores
ExactFn = Callable[[Sequence[Restore]], Any]


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """What a gradient-method trace shares with the exact one: the model, scorer, settings and the storage.

    Attributes:
        items: ``(prompt, seed, corruption)`` of every test item, in order.
        spec: builds the stored-item key (the exact trace's, so keys name the model, weights and settings).
        exact: builds the exact item function for a list of restores (``screen``'s confirmation).
        validation: the exact trace's validation jobs (clean and corrupted runs only; they choose τ).
    """

    model: LoadedModel
    scorer: Scorer
    attribute: str
    config: TraceConfig
    items: list[tuple[str, int, CorruptTokens]]
    spec: SpecFn
    exact: Callable[[str, int, CorruptTokens, Sequence[Restore]], Any]
    validation: list[Job] = field(default_factory=list)
    out: str | Path | None = None
    progress: Callable[[int, int], None] | None = None
    executor: Executor | None = None


@dataclass(frozen=True, kw_only=True)
class Estimated:
    """Items of a gradient-method trace, in the exact trace's form, and what marks them."""

    items: list[dict[str, Any]]
    validated: list[dict[str, Any]]
    store: ItemStore
    exact_mask: np.ndarray  # (n_restores,) True where an exact restore measured the score
    step_deltas: np.ndarray | None  # (n_restores, steps) mean estimated score change per step (UNet)
    meta: dict[str, Any]


def check_gradient_method(scorer: Scorer, method: str, top_k: int, n_restores: int) -> None:
    """Refuse what a gradient method cannot do, before any work: one line each.

    Raises:
        ConfigError: unknown method, ``top_k`` < 1 or above the number of restores (screen), a scorer without
            ``score_grad``, or autograd off in the calling context.
    """
    check_method(method, top_k)
    if method == "exact":
        return
    if method == "screen" and top_k > n_restores:
        raise ConfigError(f"top_k {top_k} exceeds the {n_restores} traced sites; give top_k <= {n_restores}")
    require_gradient_scorer(scorer, method)
    check_autograd(method)


def estimate_unet(
    sweep: Sweep, groups: Sequence[Sequence[str]], labels: Sequence[str], method: str, top_k: int,
    *, attention_fix: bool = True, gradient_dropout: int = 0,
) -> Estimated:  # fmt: skip
    """Attribution items of a UNet trace (every group, per step), and for ``screen`` the top ``top_k`` groups
    restored exactly. ``attention_fix``: estimate key sites through their layer's exact output
    (:mod:`diffloc.tracing.key_fix`); ``gradient_dropout`` = L > 0: rank the groups (which ``screen`` confirms)
    by AtP*'s gradient dropout over L layers (:mod:`diffloc.tracing.grad_drop`). The fixes applied are recorded
    in ``meta["attribution_fixes"]``."""
    fixed = bool(fixed_key_sites(sweep.model, [name for group in groups for name in group])) and attention_fix
    dropout = {"dropout": gradient_dropout} if gradient_dropout else {}
    jobs = [
        Job(
            spec=_batch_spec(sweep, "unet-attribution", batch, sites=[list(g) for g in groups], fixes=fixed, **dropout),
            runs=2 * len(batch),
            compute=partial(
                estimate_unet_items,
                items=batch,
                groups=[tuple(g) for g in groups],
                attribute=sweep.attribute,
                config=sweep.config,
                attention_fix=attention_fix,
                gradient_dropout=gradient_dropout,
            ),
        )
        for batch in _batches(sweep)
    ]
    items, validated, store = _run(sweep, jobs)
    steps = np.mean([it.pop("step_deltas") for it in items], axis=0)
    ranking = np.mean([it.pop("dropout") for it in items], axis=0) if gradient_dropout else None
    restores = [Restore(sites=tuple(g), source=0, restore_from=sweep.config.restore_from) for g in groups]
    estimated = _confirm(
        sweep, items, validated, store, labels, restores, method, top_k, DENOISER_TRACE, steps, ranking
    )
    estimated.meta["attribution_fixes"] = [ATTENTION_FIX] * fixed + [GRADIENT_DROPOUT] * bool(gradient_dropout)
    if ranking is not None:
        estimated.meta["gradient_dropout"] = {
            "layers": gradient_dropout,
            "ranking": {label: float(v) for label, v in zip(labels, ranking, strict=True)},
        }
    return estimated


def estimate_text(
    sweep: Sweep, cells: Sequence[tuple[str, int]], spans: Sequence[tuple[int, int]], labels: Sequence[str],
    method: str, top_k: int,
) -> Estimated:  # fmt: skip
    """Attribution items of a text trace (every site × token span), and for ``screen`` the top ``top_k`` cells
    restored exactly."""
    jobs = [
        Job(
            spec=_batch_spec(sweep, "text-attribution", batch, cells=[list(c) for c in cells], spans=list(spans)),
            runs=2 * len(batch),
            compute=partial(
                estimate_text_items,
                items=batch,
                cells=list(cells),
                spans=list(spans),
                attribute=sweep.attribute,
                config=sweep.config,
            ),
        )
        for batch in _batches(sweep)
    ]
    items, validated, store = _run(sweep, jobs)
    restores = [Restore(sites=(site,), source=0, positions=spans[span]) for site, span in cells]
    return _confirm(sweep, items, validated, store, labels, restores, method, top_k, TEXT_TRACE, None)


def _batches(sweep: Sweep) -> list[list[Item]]:
    """The test items in batches of at most ``max_batch // 2`` (at least 1): each batch is one corrupted sampling
    chain with autograd and one backward pass, whose rows (×2 with guidance) and stored site values grow with it."""
    size = max(1, sweep.config.max_batch // 2)
    return [sweep.items[i : i + size] for i in range(0, len(sweep.items), size)]


def _batch_spec(sweep: Sweep, kind: str, batch: Sequence[Item], **extra: object) -> dict[str, object]:
    """The stored key of one batch: the trace's spec of its first item, naming every (prompt, seed) it holds."""
    prompt, seed, _ = batch[0]
    return sweep.spec(kind, prompt, seed, batch=[[p, s] for p, s, _ in batch], **extra)


def _run(sweep: Sweep, jobs: list[Job]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], ItemStore]:
    """Run the estimate batches and the validation items; the batches come back as their items, in order."""
    all_items, store = run_jobs(
        [*jobs, *sweep.validation], sweep.out, sweep.progress, model=sweep.model, scorer=sweep.scorer,
        executor=sweep.executor,
    )  # fmt: skip
    items = [item for batch in all_items[: len(jobs)] for item in batch["items"]]
    return items, all_items[len(jobs) :], store


def _confirm(
    sweep: Sweep, items: list[dict[str, Any]], validated: list[dict[str, Any]], store: ItemStore,
    labels: Sequence[str], restores: Sequence[Restore], method: str, top_k: int, kind: str,
    steps: np.ndarray | None, ranking: np.ndarray | None = None,
) -> Estimated:  # fmt: skip
    """For ``screen``: restore the ``top_k`` restores ranked highest exactly, on every item, and write their
    measured scores over the estimates (the estimates stay in each item's ``estimates``). The ranking is
    ``ranking`` where given (gradient dropout's magnitudes), else the mean estimate."""
    mask = np.zeros(len(labels), bool)
    meta: dict[str, Any] = {"method": method}
    for item in items:
        item["estimates"] = list(item["scores"])
    if method == "screen":
        order = ranking if ranking is not None else np.mean([it["scores"] for it in items], axis=0)
        top = [int(i) for i in np.argsort(-order, kind="stable")[:top_k]]
        jobs = [
            Job(
                spec=sweep.spec(f"{kind}-screen", prompt, seed, confirmed=[labels[i] for i in top]),
                runs=len(top) + 2,
                compute=sweep.exact(prompt, seed, corrupt, [restores[i] for i in top]),
            )
            for prompt, seed, corrupt in sweep.items
        ]
        exact_items, exact_store = run_jobs(
            jobs, sweep.out, sweep.progress, model=sweep.model, scorer=sweep.scorer, executor=sweep.executor
        )
        for item, exact in zip(items, exact_items, strict=True):
            for j, i in enumerate(top):
                item["scores"][i] = exact["scores"][j]
        mask[top] = True
        store.computed += exact_store.computed
        store.reused += exact_store.reused
        meta.update(top_k=top_k, confirmed=[labels[i] for i in top], confirmed_error=confirmed_error(items, top))
    return Estimated(items=items, validated=validated, store=store, exact_mask=mask, step_deltas=steps, meta=meta)


#: a screen whose estimates of the confirmed sites miss their exact scores by more than this share of the clean -
#: corrupted gap on average is flagged: its ranking of the unconfirmed sites is not to be trusted
UNRELIABLE_ERROR = 0.25


def confirmed_error(items: Sequence[dict[str, Any]], confirmed: Sequence[int]) -> float | None:
    """How far the estimates of the confirmed restores were from their exact scores: the mean over items and
    confirmed restores of ``|estimate - exact| / |clean - corrupted|`` (items with no gap left out; ``None`` if
    none has one). The screen's check on itself: where first order is poor here, it is poor for the ranking too.
    """
    errors = [
        abs(item["estimates"][i] - item["scores"][i]) / abs(item["clean"] - item["corrupted"])
        for item in items
        if abs(item["clean"] - item["corrupted"]) > 1e-12
        for i in confirmed
    ]
    return float(np.mean(errors)) if errors else None


def step_effects(estimated: Estimated, clean: float, corrupted: float) -> np.ndarray | None:
    """The mean per-step score changes normalized like the indirect effect (by the clean - corrupted gap)."""
    if estimated.step_deltas is None:
        return None
    gap = clean - corrupted
    return np.zeros_like(estimated.step_deltas) if abs(gap) < 1e-12 else estimated.step_deltas / gap
