"""The demo's timestep stage: where in the denoising chain each site carries the attribute.

Exact patching cannot afford a site × step map (70 sites × 20 steps = 1,400 restored chains per item), so the
stage estimates it by attribution patching (:mod:`diffloc.tracing.attribution`) on the UNet trace's own items,
corruption and restore source: one corrupted chain with autograd and one backward pass per batch of items. The
per-site sums of the map are compared with the exact trace (:mod:`diffloc.tracing.agreement`), so the report says
how far the estimate can be trusted on this case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffloc.differentiable import GradientScorer
from diffloc.models.base import LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.agreement import agreement
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.executors import Executor
from diffloc.tracing.results import TraceResult

#: where a case's step map is written, under the case's trace directory
STEP_MAP_DIR = "attribution"


def gradient_scorer(scorer: Scorer) -> Scorer | None:
    """The scorer attribution differentiates: the ShapesWorld detectors' log-probability (a probability saturates
    at 0 and 1, where its gradient vanishes), another differentiable scorer as it is, or ``None`` (no stage)."""
    variant = getattr(scorer, "with_log_probability", None)
    if callable(variant):
        return variant()
    return scorer if isinstance(scorer, GradientScorer) else None


def step_map(
    model: LoadedModel,
    exact: TraceResult,
    scorer: Scorer,
    config: TraceConfig,
    out: Path,
    *,
    executor: Executor | None = None,
) -> TraceResult | None:
    """The site × step attribution map of ``exact``'s items (same prompts, sites, seeds, corruption and restore
    source), saved under ``out``; ``None`` when the scorer is not differentiable."""
    grad = gradient_scorer(scorer)
    if grad is None:
        return None
    return causal_trace(
        model, list(exact.meta["prompts"]), exact.meta["subject"], exact.meta["attribute"], scorer=grad,
        sites=[label.split("+") for label in exact.labels], config=config, out=out, executor=executor,
        method="attribution",
    )  # fmt: skip


def step_map_entry(exact: TraceResult, mapped: TraceResult) -> dict[str, Any]:
    """What the report shows of a step map: its scorer, restore source and items, and its agreement with
    ``exact`` (Spearman correlation of per-site effects, top-5 recall)."""
    return {"scorer": mapped.meta.get("scorer"), "restore_from": mapped.restore_from, "items": mapped.n_items,
            **agreement(exact, mapped)}  # fmt: skip
