"""diffloc: localize and edit visual knowledge in text-to-image diffusion models.

Public API (imported lazily so ``import diffloc`` and ``diffloc --help`` stay fast); this example runs as
written (a test executes it)::

    import diffloc

    model = diffloc.load("shapesworld")  # or a local SD/SD-XL/IF directory, or "tiny-sd1"; device=, dtype=
    model.sites.select("unet.xattn.*")  # canonical sites in execution order
    fast = diffloc.GenerationConfig(steps=10, guidance=4.0)
    images = diffloc.generate(model, ["a red circle", "a blue square"], seeds=[0, 1], config=fast)

    prompt = "a red circle in the style of pica stro"
    corrupt = diffloc.CorruptTokens(positions=(1, 4), std=0.5)  # noise on the embeddings of tokens 1..3
    runs = [
        diffloc.Run(prompt=prompt),  # run 0: clean
        diffloc.Run(prompt=prompt, interventions=(corrupt,)),  # run 1: corrupted
        diffloc.Run(prompt=prompt, interventions=(corrupt, diffloc.Restore(sites=("unet.res.20",), source=0))),
    ]
    images = diffloc.generate_runs(model, runs, config=fast)  # one batched pass per step for all runs

    config = diffloc.TraceConfig(seeds=(0,), steps=10, guidance=4.0, noise_multiplier=12, bootstrap=0)
    trace = diffloc.causal_trace(
        model, prompt, "pica stro", "in the style of pica stro", scorer=diffloc.DetectorScorer(),
        sites="unet.res.*", config=config,
    )
    print(sorted(zip(trace.indirect_effect.tolist(), trace.labels), reverse=True)[:3])  # where the style returns

    request = diffloc.EditRequest(concepts=("pica stro",), targets=("a plain style",), preserve=("mo nettle",))
    edit = diffloc.compute_edit(model, request, method="quickfix")
    with edit.applied(model):  # the weights are restored on exit; edit.save(DIR) keeps the edit
        edited = diffloc.generate(model, prompt, config=fast)
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
