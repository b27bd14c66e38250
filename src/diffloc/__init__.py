"""diffloc: localize and edit visual knowledge in text-to-image diffusion models.

Public API (imported lazily so ``import diffloc`` and ``diffloc --help`` stay fast)::

    import diffloc
    model = diffloc.load("shapesworld")            # or a local SD/SD-XL/IF directory, or "tiny-sd1"
    model.sites.select("unet.xattn.*")              # canonical sites in execution order
    images = diffloc.generate(model, "a red circle", seeds=[0, 1])
    runs = [diffloc.Run(prompt=p), diffloc.Run(prompt=p, interventions=(diffloc.CorruptTokens(...),))]
    images = diffloc.generate_runs(model, runs)    # one batched pass per step for all runs
    trace = diffloc.causal_trace(model, prompt, "van goo", "in the style of van goo", scorer=diffloc.DetectorScorer())
    edit = diffloc.compute_edit(model, diffloc.EditRequest(concepts=("van goo",), targets=("a plain style",)))
    with edit.applied(model): ...
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "diffloc.models.registry",
    "LoadedModel": "diffloc.models.base",
    "Conditioning": "diffloc.models.base",
    "Site": "diffloc.sites",
    "SiteKind": "diffloc.sites",
    "SiteRegistry": "diffloc.sites",
    "GenerationConfig": "diffloc.engine.generate",
    "generate": "diffloc.engine.generate",
    "generate_runs": "diffloc.engine.generate",
    "Run": "diffloc.engine.interventions",
    "CorruptTokens": "diffloc.engine.interventions",
    "Restore": "diffloc.engine.interventions",
    "SwapContext": "diffloc.engine.interventions",
    "SetChannels": "diffloc.engine.interventions",
    "patch": "diffloc.engine.hooks",
    "record": "diffloc.engine.hooks",
    "causal_trace": "diffloc.tracing.causal",
    "trace_text": "diffloc.tracing.causal",
    "locogen": "diffloc.tracing.locogen",
    "TraceConfig": "diffloc.tracing.config",
    "LocoGenConfig": "diffloc.tracing.config",
    "TraceResult": "diffloc.tracing.results",
    "WindowResult": "diffloc.tracing.results",
    "compute_edit": "diffloc.editing.registry",
    "Edit": "diffloc.editing.edit",
    "NeuronConfig": "diffloc.editing.neurons",
    "compute_ablation": "diffloc.editing.neurons",
    "NeuronAblation": "diffloc.editing.ablation",
    "EditRequest": "diffloc.editing.requests",
    "evaluate": "diffloc.eval.suite",
    "load_suite": "diffloc.eval.suite",
    "EvalReport": "diffloc.eval.suite",
    "DetectorScorer": "diffloc.eval.scorers",
    "ClipScorer": "diffloc.eval.scorers",
    "DifflocError": "diffloc.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffloc' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
