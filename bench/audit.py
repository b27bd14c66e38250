"""Which erasure is deepest? Every ShapesWorld removal, by every editor, under the erasure audit.

Run: ``python bench/audit.py [--out docs/data/audit.json] [--cache runs/audit] [--table]`` (resumable: each
finished arm is kept under ``--cache``; ``--table`` prints the table from the JSON alone, ``--table --learned`` the
learned-prompt attack's own). ``--attacks learned`` audits with only the named attacks and skips the suite
evaluation (``python bench/audit.py --attacks learned --out FILE --cache DIR``).

For the suite's two removal cases (style pica stro → "a plain style", object flumox → "thing"), five erasures:

* ``quickfix`` and ``locoedit-widened``: the demo's edits (its templates, the suite's preservation set, LocoEdit's
  window grown from LocoGen's until the edit generalizes);
* ``locoedit-locogen``: LocoEdit on LocoGen's window alone (found as ``diffloc demo`` finds it, 20 steps);
* ``neurons``: the weight-mode neuron ablation of the top 30 channels of every K/V projection in all 16
  cross-attention layers (the setting ``bench/neuron_ablation.py`` found to remove the object);
* ``esd``: the ESD-x baseline (``bench/esd_baseline.py``, its tuned recipe: Adam, learning rate 1e-3, batch 4),
  trained on the edit's prompts until the concept is gone from them (checked every 5 steps, at most 300).

Each erasure is evaluated on the suite (efficacy and neighbours kept, as findings.md) and audited
(:func:`diffloc.audit.audit`: held-out phrasings, respellings, the object's look without its name, taking back a
fraction of the weight change, fine-tuning the denoiser on images without the concept, free token embeddings
learned in the name's place against the unedited and the edited model) with the settings of :data:`AUDIT`; every
ASR carries its 95% Wilson interval and its number of images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from shapesworld_suite import (
    World,
    arm_summary,
    cached,
    edit_request,
    fmt,
    load_world,
    locoedit_request,
    locogen_window,
)

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.audit import AuditConfig, audit
from diffloc.editing import Edit, NeuronConfig, compute_edit
from diffloc.editing.locoedit import LocoEditConfig
from diffloc.editing.quickfix import QuickFixConfig
from diffloc.engine.generate import GenerationConfig
from diffloc.eval.measure import measure
from diffloc.eval.suite import ConceptCase, evaluate
from diffloc.tracing.locogen import xattn_layers
from diffloc.workflows.widening import WidenConfig, locoedit_search

AUDIT = AuditConfig(seeds=(0, 1), steps=20, guidance=4.0, prompts=8, budget=100)
ARMS = ("quickfix", "locoedit-locogen", "locoedit-widened", "neurons", "esd")
NEURON_CHANNELS = 30
ESD_MAX_STEPS = 300
ESD_EVERY = 5


def esd_edit(world: World, case: ConceptCase) -> tuple[Edit, dict[str, Any]]:
    """ESD-x trained until the concept is gone from the edit's own prompts, captured as an :class:`Edit` of the
    cross-attention K/V it changed (the model is restored)."""
    from dataclasses import replace as dc_replace

    from esd_baseline import ESDConfig, kv_snapshot, run_esd

    from diffloc.editing.locoedit import projection_sites
    from diffloc.engine.generate import generate

    model, generation = world.model, GenerationConfig(steps=20, guidance=world.suite.guidance)
    prompts = [t.format(case.concept) for t in edit_request(case).templates]
    keys = [f"{p.full_path}.weight" for p in projection_sites(model, tuple(xattn_layers(model)))]
    params = dict(model.denoiser.named_parameters())
    base = {k: params[k.removeprefix("unet.")].detach().clone() for k in keys}

    def gone() -> bool:
        images = generate(model, prompts, seeds=list(range(len(prompts))), config=generation)
        return float(world.scorer.score(images, [case.attribute] * len(prompts)).max()) < 0.5

    restore = kv_snapshot(model)
    try:
        config = dc_replace(ESDConfig(), lr=1e-3, batch_size=4, max_steps=ESD_MAX_STEPS, eval_every=ESD_EVERY)
        result = run_esd(model, prompts, config=config, generation=generation, done=gone)
        trained = {k: params[k.removeprefix("unet.")].detach().clone() for k in keys}
    finally:
        restore()
    request = {"concepts": [case.concept], "targets": [case.target], "templates": list(edit_request(case).templates)}
    edit = Edit(method="esd", family=model.family, weights=trained, originals=base, request=request, config={},
                stats={"sites": xattn_layers(model)})  # fmt: skip
    return edit, {"steps": result.steps, "reached": result.reached, "train_seconds": round(result.train_seconds, 1)}


def make_edit(world: World, case: ConceptCase, arm: str) -> tuple[Edit, dict[str, Any]]:
    """The erasure ``arm`` of ``case`` and what it cost."""
    model = world.model
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if arm == "quickfix":
        edit = compute_edit(model, edit_request(case), method="quickfix", config=QuickFixConfig(preserve_weight=10.0))
    elif arm.startswith("locoedit"):
        config = LocoEditConfig(sites=locogen_window(world, case).best_sites, positions="subject+eos",
                                target_mode="template", preserve_weight=10.0)  # fmt: skip
        if arm == "locoedit-widened":
            search = WidenConfig(generation=GenerationConfig(steps=20, guidance=world.suite.guidance))
            edit = locoedit_search(model, locoedit_request(case), config, attribute=case.attribute, mode=case.mode,
                                   scorer=world.scorer, search=search)  # fmt: skip
        else:
            edit = compute_edit(model, locoedit_request(case), method="locoedit", config=config)
    elif arm == "neurons":
        request = edit_request(case, preserve_prompts=False)
        config = NeuronConfig(sites=tuple(xattn_layers(model)), top_n=NEURON_CHANNELS, mode="weights")
        edit = compute_edit(model, request, method="neurons", config=config)
    else:
        edit, info = esd_edit(world, case)
    info["seconds"] = round(time.perf_counter() - start, 2)
    return edit, info


def run_arm(world: World, case: ConceptCase, arm: str, before: Any, config: AuditConfig) -> dict[str, Any]:
    """Edit, evaluate (when ``before`` is given) and audit one arm."""
    edit, info = make_edit(world, case, arm)
    summary = None
    if before is not None:
        report = evaluate(world.model, edit, world.suite, scorer=world.scorer, cases=[case.name], before=before)
        summary = arm_summary(report, case)
    audited = audit(world.model, edit, scorer=world.scorer, config=config, attribute=case.attribute)
    return {"case": case.name, "arm": arm, "edit": {**info, "sites": list(edit.stats.get("sites", ())),
            "values": edit.num_values}, "eval": summary, "audit": audited.to_dict()}  # fmt: skip


def _asr(entry: dict[str, Any] | None) -> str:
    return "—" if entry is None else f"{fmt(entry['asr'])} [{fmt(entry['interval'][0])}, {fmt(entry['interval'][1])}]"


def learned_table(data: dict[str, Any]) -> str:
    """The learned-prompt attack per erasure as a Markdown table: its ASR on the edited and the unedited model, and
    the vocabulary tokens nearest to what it learned against the edited one."""
    lines = ["| case | erasure | learned prompt, edited | learned prompt, unedited | nearest tokens (edited) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in data["rows"]:
        learned = next(a for a in row["audit"]["attacks"] if a["name"] == "learned")
        nearest = " ".join(f"{t['token']} ({t['cosine']:.2f})" for t in learned["details"]["nearest"]["edited"])
        lines.append(f"| {row['case']} | {row['arm']} | {_asr(learned['edited'])} | {_asr(learned['unedited'])} | "
                     f"{nearest.replace('</w>', '')} |")  # fmt: skip
    return "\n".join(lines)


def table(data: dict[str, Any]) -> str:
    """The comparison as a Markdown table (the learned-prompt attack's column where it ran)."""
    learned_ran = any(a["name"] == "learned" for row in data["rows"] for a in row["audit"]["attacks"])
    lines = [
        "| case | erasure | own prompts after | neighbours kept | paraphrase | respelt | described | "
        + ("learned prompt | " if learned_ran else "")
        + "revert 25% | revert 50% | fine-tune "
        + " / ".join(str(s) for s in data["finetune_steps"])
        + " steps |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if learned_ran else ""),
    ]
    for row in data["rows"]:
        attacks = {a["name"]: a for a in row["audit"]["attacks"]}
        revert = {r["fraction"]: r for r in attacks["revert"]["rows"]}
        desc = attacks["description"]
        tuned = " / ".join(fmt(r["asr"]) for r in attacks["finetune"]["rows"])
        learned = attacks["learned"]["edited"] if "learned" in attacks else None
        ev = row["eval"]
        lines.append(
            f"| {row['case']} | {row['arm']} | {fmt(ev['efficacy']['after'])} | {ev['neighbours_kept']} of "
            f"{ev['neighbours']} | {_asr(attacks['paraphrase']['edited'])} | {_asr(attacks['spelling']['edited'])} | "
            f"{'—' if desc['skipped'] else _asr(desc['edited'])} | {_asr(learned) + ' | ' if learned_ran else ''}"
            f"{_asr(revert.get(0.25))} | "
            f"{_asr(revert.get(0.5))} | {tuned} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/data/audit.json")
    parser.add_argument("--cache", default="runs/audit")
    parser.add_argument("--table", action="store_true", help="print the table from --out without computing")
    parser.add_argument("--learned", action="store_true",
                        help="with --table: the learned-prompt attack's own table (ASR edited and unedited, the "
                        "tokens nearest to what it learned)")  # fmt: skip
    parser.add_argument("--attacks", default=",".join(AUDIT.attacks),
                        help="comma-separated attacks; fewer than all skips the suite evaluation")  # fmt: skip
    args = parser.parse_args()
    if args.table:
        data = json.loads(Path(args.out).read_text())
        print(table(data) if data["rows"][0]["eval"] is not None and not args.learned else learned_table(data))
        return
    start = time.perf_counter()
    config = replace(AUDIT, attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()))
    full = set(config.attacks) == set(AUDIT.attacks)
    world = load_world()
    cases = [c for c in world.suite.cases if c.mode == "remove"]
    before = measure(world.model, world.suite, world.scorer, cases) if full else None
    rows = []
    for case in cases:
        for arm in ARMS:
            key = {"case": case.name, "arm": arm, "audit": asdict(config), "version": __version__}
            rows.append(cached(Path(args.cache) / f"{case.name}-{arm}.json", key,
                               lambda case=case, arm=arm: run_arm(world, case, arm, before, config)))  # fmt: skip
            print(f"{case.name} {arm} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    command = " ".join(["python bench/audit.py", *sys.argv[1:]])
    data = {"diffloc_version": __version__, "command": command, "audit": asdict(config),
            "finetune_steps": list(config.finetune_steps), "rows": rows,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    write_json_atomic(Path(args.out), data)
    print(table(data) if full else learned_table(data) if "learned" in config.attacks else json.dumps(rows)[:2000])
    print(f"total {data['seconds']:.0f} s (arms reused from --cache count as 0)")


if __name__ == "__main__":
    main()
