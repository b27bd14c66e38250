"""What the ShapesWorld editing benchmarks share (not a benchmark itself).

Used by ``bench/neuron_ablation.py`` and ``bench/localization_helps_edit.py``: the shipped model, suite and
detectors; each case's LocoGen window found as ``diffloc demo`` finds it; the case's edit request as the demo
builds it; a resumable per-arm cache; and the summary of one evaluated arm. Single-threaded on purpose (the
machine is shared; torch's intra-op threads only oversubscribe it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

from diffloc.atomic import write_json_atomic
from diffloc.editing import EditRequest
from diffloc.eval.scorers import DetectorScorer
from diffloc.eval.suite import ConceptCase, EvalReport, EvalSuite, load_suite, shipped_suite_path
from diffloc.models.base import LoadedModel
from diffloc.models.registry import load
from diffloc.tracing.config import LocoGenConfig
from diffloc.tracing.locogen import locogen_search
from diffloc.tracing.results import WindowResult
from diffloc.workflows.demo import DemoConfig, edit_templates

#: LocoGen sweeps, shared by the benchmarks (each item is keyed by the model's weights and the sweep settings)
LOCOGEN_CACHE = Path("runs/shapesworld-locogen")
#: a neighbour is "kept" when it keeps at least this fraction of its unedited detection rate (as findings.md)
KEPT = 0.9


@dataclass(frozen=True)
class World:
    """The shipped ShapesWorld model, its suite and its detectors."""

    model: LoadedModel
    suite: EvalSuite
    scorer: DetectorScorer


def load_world() -> World:
    """Load the shipped model, suite and detectors, single-threaded."""
    torch.set_num_threads(1)
    return World(
        model=load("shapesworld"), suite=load_suite(shipped_suite_path("shapesworld")), scorer=DetectorScorer()
    )


def locogen_window(world: World, case: ConceptCase, cache: Path = LOCOGEN_CACHE) -> WindowResult:
    """The case's LocoGen window exactly as ``diffloc demo`` finds it (its first two prompts × the demo's trace
    seeds; window sizes 2, 4, 8, 16 until one controls the attribute); sweeps resume from ``cache``."""
    # 20 steps, the suite's own: the committed results were measured there
    demo = DemoConfig(guidance=world.suite.guidance, max_batch=world.suite.max_batch, steps=20)
    attribute = case.target_attribute if case.mode == "update" else case.attribute
    config = LocoGenConfig(seeds=demo.trace_seeds, window=demo.locogen_window, mode=case.mode, steps=demo.steps,
                           guidance=demo.guidance, max_batch=demo.max_batch, bootstrap=demo.bootstrap)  # fmt: skip
    sizes = tuple(k * demo.locogen_window for k in (1, 2, 4, 8))
    prompts = list(case.prompts[: demo.trace_prompts])
    return locogen_search(world.model, prompts, case.target_prompt, attribute, scorer=world.scorer, config=config,
                          sizes=sizes, out=cache / case.name)  # fmt: skip


def edit_request(case: ConceptCase, *, preserve_prompts: bool = True) -> EditRequest:
    """The case's edit request as the demo builds it (its own templates, the suite's preservation set)."""
    return EditRequest(concepts=(case.concept,), targets=(case.target,), templates=edit_templates(case),
                       default_templates=False, preserve=case.preserve,
                       preserve_prompts=case.preserve_prompts if preserve_prompts else ())  # fmt: skip


def locoedit_request(case: ConceptCase) -> EditRequest:
    """:func:`edit_request` with LocoEdit's target where the case names one (``locoedit_target``)."""
    request = edit_request(case)
    return replace(request, targets=(case.locoedit_target,)) if case.locoedit_target else request


def short_window(sites: list[str]) -> str:
    """``xattn.11–14`` for a contiguous window of cross-attention sites."""
    layers = [int(s.rsplit(".", 1)[1]) for s in sites]
    return f"xattn.{layers[0]}" if len(layers) == 1 else f"xattn.{layers[0]}–{layers[-1]}"


def cached(path: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s JSON result, stored at ``path`` with ``key``; reused when the key matches (resume)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == digest:
            return dict(stored["result"])
    result = compute()
    write_json_atomic(path, {"key": digest, "result": result})
    return result


def arm_summary(report: EvalReport, case: ConceptCase) -> dict[str, Any]:
    """One evaluated arm of a case: the concept (or, for an update, the new fact) on the edit's own prompts
    and on held-out prompts before → after, neighbours kept, and the pixel change on unrelated prompts."""
    entry = report.cases[case.name]
    key = ("target_before", "target_after") if case.mode == "update" else ("concept_before", "concept_after")
    spec = entry["specificity"]
    return {
        "efficacy": {"before": entry["efficacy"][key[0]], "after": entry["efficacy"][key[1]]},
        "generalization": {"before": entry["generalization"][key[0]], "after": entry["generalization"][key[1]]},
        "neighbours_kept": sum(1 for n in spec if n["retention"] >= KEPT),
        "neighbours": len(spec),
        "neighbour_retention": round(sum(min(1.0, n["retention"]) for n in spec) / len(spec), 4),
        "fidelity": round(report.fidelity, 4),
    }


def fmt(value: float | None) -> str:
    """Two decimals, or an em dash for a missing value."""
    return "—" if value is None else f"{value:.2f}"
