"""Where does a restore read its clean value? The UNet trace of every ShapesWorld case under both restore sources.

Run: ``python bench/restore_sources.py`` (single-threaded; about 15 minutes on an idle machine) writes
``docs/data/restore_sources.json``; ``python scripts/findings_tables.py`` prints the comparison table that
``docs/findings.md`` quotes from it.

For each case of the shipped suite, traced as ``diffloc demo`` traces it (the case's first two prompts × seeds
0 and 1, the corruption calibrated by ``--noise auto``'s rule; no validation items, since no causal sites are
selected here), the UNet causal trace over every site is run twice on the same items and noise:

* ``same-latent``: a restored site reads the clean-text value computed on the restored run's own latent, so a
  restore changes only what the text contributes through that site;
* ``trajectory``: a restored site reads the clean run's value at that step, computed on the clean run's latent
  (the papers' wording), so every restore also carries the clean trajectory's latent.

Control sites (before the first cross-attention, so they cannot read the text) must show no effect under a
mediation-correct source; any effect they show under ``trajectory`` is the latent, not the text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.engine.sources import RESTORE_SOURCES
from diffloc.eval.scorers import DetectorScorer
from diffloc.eval.suite import load_suite, shipped_suite_path
from diffloc.models.registry import load
from diffloc.tracing.calibrate import calibrate_noise
from diffloc.tracing.causal import causal_trace
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.results import TraceResult, json_values
from diffloc.workflows.demo import DemoConfig

OUT = Path("docs/data/restore_sources.json")


def _entry(result: TraceResult) -> dict:
    """The numbers of one trace that the findings quote."""
    return {
        "clean": result.clean_score, "corrupted": result.corrupt_score, "n_items": result.n_items,
        "labels": list(result.labels), "indirect_effect": [float(v) for v in result.indirect_effect],
        "interval": json_values(result.interval),  # [lower per site, upper per site]
        "controls": list(result.controls), "control_effects": result.control_effects,
        "controls_flagged": result.controls_flagged, "selection": result.selection,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"result JSON (default {OUT})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load("shapesworld")
    scorer = DetectorScorer()
    suite = load_suite(shipped_suite_path("shapesworld"))
    # 20 steps, the model's sampling recipe: the committed comparison was measured there
    demo = DemoConfig(guidance=suite.guidance, steps=20)
    sweep = {"steps": demo.steps, "guidance": demo.guidance, "max_batch": demo.max_batch, "bootstrap": demo.bootstrap}
    cases = {}
    for case in suite.cases:
        prompts = list(case.prompts[: demo.trace_prompts])
        base = TraceConfig(seeds=demo.trace_seeds, **sweep)  # type: ignore[arg-type]
        noise = calibrate_noise(model, prompts, case.concept, case.attribute, scorer=scorer, config=base)
        entry = {"prompts": prompts, "seeds": list(demo.trace_seeds),
                 "noise": noise.to_dict(), "sources": {}}  # fmt: skip
        for source in RESTORE_SOURCES:
            config = TraceConfig(seeds=demo.trace_seeds, noise=noise.noise, restore_from=source, **sweep)  # type: ignore[arg-type]
            result = causal_trace(model, prompts, case.concept, case.attribute, scorer=scorer, config=config)
            entry["sources"][source] = _entry(result)
            flagged = " (controls flagged)" if result.controls_flagged else ""
            controls = ", ".join(f"{k} {v:+.2f}" for k, v in result.control_effects.items())
            print(f"{case.name} {source}: clean {result.clean_score:.2f} corrupted {result.corrupt_score:.2f}; "
                  f"controls {controls}{flagged}", flush=True)  # fmt: skip
        cases[case.name] = entry
    summary = {
        "diffloc_version": __version__, "command": " ".join(["python", *sys.argv]), "model": "shapesworld",
        "cases": cases, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    write_json_atomic(args.out, summary)
    print(f"wrote {args.out} ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
