"""Probes behind two readings of the demo on ShapesWorld (docs/findings.md, "Localization and editing").

Run: ``python bench/demo_probes.py [--threads 2] [--suite FILE]``

1. *Text spans*: which restored spans of the text encoder bring a concept back once its subject tokens are
   corrupted — the subject tokens at layer 0, every real token (BOS..EOS) at the last layer, the padding slots
   after EOS at the last layer, and layer 0 from the subject to the end. The demo's first trace item of each
   case (its first prompt, seed 0), corrupted at the noise the demo calibrated for its text trace.
2. *Edit templates*: Diff-QuickFix of each removal case with the case's own prompts as templates, and with the
   concept alone (``{}``) in front of them, as the demo does; efficacy and held-out rates after, and the
   neighbours' retention (the suite's preservation set, weight 10, as the demo).

Both use the shipped detectors, 20 steps and the suite's guidance. Needs the shipped ShapesWorld model.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from diffloc.editing import EditRequest, QuickFixConfig, compute_edit
from diffloc.engine.interventions import CorruptTokens, Restore, Run
from diffloc.eval.scorers import scorer_for
from diffloc.eval.suite import ConceptCase, EvalSuite, evaluate, load_suite, measure, shipped_suite_path
from diffloc.models.base import LoadedModel
from diffloc.models.registry import load
from diffloc.tracing.batching import score_runs
from diffloc.tracing.calibrate import calibrate_noise
from diffloc.tracing.config import TraceConfig
from diffloc.workflows.demo import edit_templates


def text_spans(model: LoadedModel, suite: EvalSuite, scorer, case: ConceptCase) -> None:
    """Score the corrupted run with each restored span (one prompt, seed 0)."""
    prompt = case.prompts[0]
    config = TraceConfig(seeds=(0,), steps=suite.steps, guidance=suite.guidance, max_batch=suite.max_batch, bootstrap=0)
    noise = calibrate_noise(model, prompt, case.concept, case.attribute, scorer=scorer, config=config)
    start, end = model.adapter.find_subject(model.pipe, prompt, case.concept)
    spec = model.adapter.text_encoders(model.pipe)[0]
    n_real = len(getattr(model.pipe, spec.tokenizer)(prompt).input_ids)
    limit = model.adapter.max_tokens(model.pipe, spec)
    last = max(s.index for s in model.sites if s.name.startswith("text.layer."))
    spans = {
        "subject tokens, layer 0": ("text.layer.0", (start, end)),
        f"BOS..EOS, layer {last}": (f"text.layer.{last}", (0, n_real)),
        f"padding after EOS, layer {last}": (f"text.layer.{last}", (n_real, limit)),
        "subject..end, layer 0": ("text.layer.0", (start, limit)),
    }
    corrupt = CorruptTokens(positions=(start, end), std=noise.noise, noise_seed=config.noise_seed)
    runs = [Run(prompt=prompt, seed=0, interventions=(corrupt,))]
    runs += [Run(prompt=prompt, seed=0, interventions=(corrupt, Restore(sites=(site,), positions=span)))
             for site, span in spans.values()]  # fmt: skip
    shared, scores, _ = score_runs(model, runs, attribute=case.attribute, scorer=scorer, config=config,
                                   shared=[Run(prompt=prompt, seed=0, label="clean")])  # fmt: skip
    print(f"{case.name}: {prompt!r}, noise {noise.multiplier:g}x; clean {shared[0]:.2f}, corrupted {scores[0]:.2f}")
    for label, score in zip(spans, scores[1:], strict=True):
        print(f"  restore {label:<28} {score:.2f}")


def edit_templates_probe(model: LoadedModel, suite: EvalSuite, scorer, case: ConceptCase) -> None:
    """Diff-QuickFix with the case's prompts as templates, with and without the concept alone in front."""
    before = measure(model, suite, scorer, [case])
    with_bare = edit_templates(case)
    for label, templates in (("case prompts", with_bare[1:]), ("{} + case prompts", with_bare)):
        request = EditRequest(concepts=(case.concept,), targets=(case.target,), templates=templates,
                              default_templates=False, preserve=case.preserve,
                              preserve_prompts=case.preserve_prompts)  # fmt: skip
        edit = compute_edit(model, request, method="quickfix", config=QuickFixConfig(preserve_weight=10.0))
        report = evaluate(model, edit, suite, scorer=scorer, cases=[case.name], before=before).cases[case.name]
        own, held = report["efficacy"], report["generalization"]
        kept = min(n["retention"] for n in report["specificity"] if n["retention"] is not None)
        print(f"{case.name} quickfix, {label:<18} own {own['concept_before']:.2f} -> {own['concept_after']:.2f}, "
              f"held-out {held['concept_before']:.2f} -> {held['concept_after']:.2f}, neighbours kept (min) "
              f"{kept:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suite", default=None, help="suite YAML (default: the shipped ShapesWorld suite)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite or shipped_suite_path("shapesworld"))
    model = load("shapesworld")
    scorer = scorer_for("shapesworld", None)
    print("1. text spans")
    for case in suite.cases:
        text_spans(model, suite, scorer, case)
    print("2. edit templates")
    for case in suite.cases:
        if case.mode == "remove":
            edit_templates_probe(model, suite, scorer, case)


if __name__ == "__main__":
    main()
