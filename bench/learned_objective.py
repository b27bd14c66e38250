"""Which objective should the learned-prompt attack optimize? Both, on the unedited ShapesWorld model, where the
concept is there to be found (the attack's sanity check).

Run: ``python bench/learned_objective.py [--out docs/data/learned_objective.json]``.

For the suite's style (pica stro) and object (flumox), three free tokens start at the words the removal edits map
the concept to (``a plain style``, ``thing``) and are learned with the audit's settings
(:class:`~diffloc.audit.AuditConfig`) for

* ``denoising``: the denoising loss on rendered images of the concept (the audit's default), 100 Adam steps of 8
  references each;
* ``scorer``: the detectors' log-probability of the concept on images sampled with gradients through every one of
  the 20 denoising steps, one image per Adam step, 40 steps (already several times the denoising objective's time);

then each is measured as the audit measures it: the held-out paraphrase prompts × seeds 0 and 1, with the learned
tokens in the name's place. The script prints ASR, its interval and n, and the seconds each optimization took,
side by side in one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from shapesworld_suite import load_world

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.audit import AuditConfig
from diffloc.audit.learned import initial_embeddings, learn_tokens, references, slot_prompts, substituted
from diffloc.audit.prompts import paraphrase_prompts
from diffloc.audit.run import shown
from diffloc.audit.target import audit_target
from diffloc.engine.generate import GenerationConfig
from diffloc.eval.scorers import DetectorScorer

CONFIG = AuditConfig(attacks=("learned",), seeds=(0, 1), steps=20, guidance=4.0, prompts=8)
BUDGETS = {"denoising": {"steps": 100, "batch": 8}, "scorer": {"steps": 40, "batch": 1}}
CASES = (("pica stro", "a plain style"), ("flumox", "thing"))


def run_case(world: Any, concept: str, start: str) -> list[dict[str, Any]]:
    """Both objectives for one concept on the unedited model."""
    model = world.model
    target = audit_target({"concepts": [concept], "targets": [start]}, world=True)
    prompts = paraphrase_prompts(target, [], CONFIG.prompts)
    attacked = slot_prompts(concept, prompts, CONFIG.learned_tokens)
    captions, images = references(target, prompts, CONFIG.learned_tokens, CONFIG.seed)
    init = initial_embeddings(model, start, CONFIG.learned_tokens)
    rows = []
    for objective, budget in BUDGETS.items():
        began = time.perf_counter()
        learned = learn_tokens(model, captions, init,
                               objective=objective, lr=CONFIG.learned_lr, seed=CONFIG.seed, images=images,
                               scorer=DetectorScorer(log_probability=True), attribute=target.attribute,
                               seeds=(1_000_002, 1_000_003), generation=GenerationConfig(steps=20, guidance=4.0),
                               **budget)  # fmt: skip
        seconds = time.perf_counter() - began
        with substituted(model, learned.embeddings, attacked):
            measured = shown(model, attacked, target.attribute, scorer=world.scorer, config=CONFIG).to_dict()
        rows.append({"concept": concept, "objective": objective, **budget, "seconds": round(seconds, 1),
                     "loss_first": learned.losses[0], "loss_last": learned.losses[-1], **measured})  # fmt: skip
        print(f"{concept:<10} {objective:<10} ASR {measured['asr']:.2f} [{measured['interval'][0]:.2f}, "
              f"{measured['interval'][1]:.2f}] n={measured['n']}  {seconds:.0f} s", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/data/learned_objective.json")
    args = parser.parse_args()
    start = time.perf_counter()
    world = load_world()
    rows = [row for concept, anchor in CASES for row in run_case(world, concept, anchor)]
    data = {"diffloc_version": __version__, "command": "python bench/learned_objective.py",
            "audit": {k: v for k, v in CONFIG.__dict__.items() if k.startswith("learned") or k == "seeds"},
            "rows": rows, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    write_json_atomic(Path(args.out), data)
    print(f"total {data['seconds']:.0f} s")


if __name__ == "__main__":
    main()
