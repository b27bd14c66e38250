"""Planted truth: does each localization method find an association planted at a known place?

Run: ``python bench/localization_validity.py [--model shapesworld|shapesworld-dit] [--out FILE] [--work DIR]
[--quick] [--new-words]``

Every plant (:mod:`diffloc.world.planted`) teaches the shipped ShapesWorld model a word at a chosen place:

* in a window of 4 cross-attention layers — on the UNet model early (0–3), middle (4–7), late (8–11), up-path end
  (12–15); on ShapesWorld-DiT's 8 blocks early (0–3) and late (4–7); and on both, :data:`SHIFTED` one or two
  layers beside them — a shape, a colour, a texture and a style
  re-taught to a word the world already has ("circle" comes to mean a square, "red" green, "solid" outlined, "mo
  nettle" the style of van goo: :func:`~diffloc.world.planted.known_word`), with LocoEdit's closed form; every
  other cross-attention layer reads the word as a neutral anchor (a triangle, blue, striped, a plain style). A
  known word, not a new one: the shipped encoders give every untaught word nearly the same states
  (``scripts/word_states.py``), so noise on a new word's embedding leaves a plant keyed on it and no trace could
  be asked about it. Objects and flags are left out of the windows because on the UNet model swapping any 8
  layers does not carry them;
* in text-encoder layer 0 (Diff-QuickFix): a new word ("a blicket", "the style of dax", "the flag of wug") taught
  to mean an object, a style and a flag.

A plant counts only if it takes (the detector reads the concept in >= 90% of its held-out templates × 2 seeds);
the plants that do not take are listed. On each plant that took, the methods are asked where the word lives:
the UNet causal trace over the cross-attention layers with each restore source (``same-latent``,
``trajectory``), with the word corrupted by noise and by a substitute, restoring single layers and windows of 4 and,
with the substitute, removing them (``direction="remove"``: the clean run with the substitute's value), LocoGen with
windows of 4, and — for the text plants — the text-encoder trace. A method
*recovers* a plant when most of the cross-attention sites it ranks highest (the trace's top 4, LocoGen's best
window) are the planted ones; for a text plant, when its strongest attention/MLP state is layer 0's attention.
Recovery rates carry 95% Wilson intervals over plants; a method that ranks windows is also read with its ties
(any tied best window; the share of tied windows, as a random tie-break would count; and the tie-aware reading's
chance level), and with its ties broken by partial patches (each tied window patched 0.1 to 0.9 of the way,
ranked by its mean effect: :func:`~diffloc.world.planted.ask_doses`). A trace counts only on plants whose
corruption of the new word removes the concept (halves it in every traced item, as ``--noise auto`` requires);
where it does not, the concept is not carried by the word alone and a trace would rank noise, so the plant is
listed as not counted for the traces (LocoGen, which corrupts nothing, still counts).

Each plant's answers are kept under ``--work`` (rerunning skips finished plants); the table is printed and the
JSON written to ``--out``. ``--new-words`` plants the windows on words the model has never seen instead (``zib``,
``kiki``, ``fep``, ``the style of dax``; written to ``…-new-words.json``), for the comparison in findings.md.
``--quick`` asks fewer plants (one per window and kind that took in the full run's design) for a smoke test
(written to ``…-quick.json``, never over a full run's data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from functools import cache, partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import torch

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.errors import ConfigError
from diffloc.eval.metrics import wilson_interval
from diffloc.eval.scorers import DetectorScorer
from diffloc.models.registry import load
from diffloc.tracing.locogen import xattn_layers
from diffloc.world.planted import (
    NEW_WORDS,
    WINDOW_METHODS,
    AskConfig,
    PlantSpec,
    ask_doses,
    ask_plant,
    ask_removed,
    ask_substituted,
    check_plant,
    dose_reading,
    full_effects,
    known_word,
    plant_edit,
    planted_window_sites,
    tie_readings,
    tied_windows,
    window_parts,
    window_ties,
)

#: the plant's strength: the window maps the word to anchor + STRENGTH × (concept − anchor)
STRENGTH = 2.0
LAM = 1e-4
PRESERVE_WEIGHT = 0.1
WINDOWS = {"early": 0, "middle": 4, "late": 8, "up": 12}
#: the windows of a model with 8 cross-attention layers (ShapesWorld-DiT)
WINDOWS_OF_8 = {"early": 0, "late": 4}
#: per kind, the concepts planted in every window
CONCEPTS = {
    "shape": ("square", "star"),
    "colour": ("green", "yellow"),
    "texture": ("outline", "dotted"),
    "style": ("van goo",),
}
#: per count of cross-attention layers, windows one or two layers beside a window where the kind took: a method must
#: tell neighbouring windows apart (kind, concept, first layer)
SHIFTED = {
    16: (("shape", "square", 3), ("shape", "star", 3), ("shape", "square", 5), ("shape", "star", 5),
         ("colour", "green", 11), ("texture", "outline", 1), ("style", "van goo", 1), ("style", "van goo", 9)),
    8: (("shape", "square", 1), ("shape", "star", 1), ("colour", "green", 3), ("colour", "yellow", 3)),
}  # fmt: skip
TEXT_PLANTS = (("object", "flumox"), ("style", "van goo"), ("fact", "trelania"))
QUICK = (("shape", "square", "middle"), ("texture", "outline", "early"), ("style", "mo nettle", "up"))


def windows(model) -> dict[str, int]:
    """The planted windows' first cross-attention layer by name: :data:`WINDOWS` on 16 layers, :data:`WINDOWS_OF_8`
    on 8."""
    count = len(xattn_layers(model))
    known = {16: WINDOWS, 8: WINDOWS_OF_8}
    if count not in known:
        raise SystemExit(f"{count} cross-attention layers: the benchmark plants windows in models with 8 or 16")
    return known[count]


def plants(model, quick: bool, new_words: bool = False) -> list[PlantSpec]:
    """The plants of the benchmark."""
    out: list[PlantSpec] = []
    if quick:
        known = windows(model)
        missing = sorted({where for _, _, where in QUICK if where not in known})
        if missing:
            layers = len(xattn_layers(model))
            raise SystemExit(f"--quick plants in the {', '.join(missing)} windows, which this model's {layers} "
                             "cross-attention layers do not have; run without --quick")  # fmt: skip
        for kind, concept, where in QUICK:
            out.append(PlantSpec(kind=kind, concept=concept, sites=planted_window_sites(model, known[where], 4),
                                 word=known_word(kind, concept)))  # fmt: skip
        out.append(PlantSpec(kind="object", concept="flumox", method="quickfix", text_layer=0))
        return out
    for where, start in windows(model).items():
        for kind, concepts in CONCEPTS.items():
            for concept in concepts:
                word = NEW_WORDS[kind] if new_words else known_word(kind, concept)
                out.append(_window_plant(model, kind, concept, word, where, start))
    if not new_words:
        for kind, concept, start in SHIFTED.get(len(xattn_layers(model)), ()):
            out.append(_window_plant(model, kind, concept, known_word(kind, concept), "shifted", start))
    for kind, concept in TEXT_PLANTS:
        out.append(PlantSpec(kind=kind, concept=concept, method="quickfix", text_layer=0))
    return out


def _window_plant(model, kind: str, concept: str, word: str, where: str, start: int) -> PlantSpec:
    """``word`` planted to mean ``concept`` in the 4 cross-attention layers from ``start``, named for tables."""
    name = f"{kind} {concept} as '{word}' @ {where} (xattn {start}–{start + 3})"
    return PlantSpec(kind=kind, concept=concept, sites=planted_window_sites(model, start, 4), word=word, name=name)


def _key(spec: PlantSpec, config: AskConfig) -> str:
    settings = {"spec": spec.to_dict(), "ask": config.__dict__, "strength": STRENGTH, "lam": LAM,
                "preserve_weight": PRESERVE_WEIGHT, "version": __version__}  # fmt: skip
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_plant(model, spec: PlantSpec, scorer, config: AskConfig, work: Path) -> dict:
    """Plant, check, ask (with noise, then, for a window plant, with substitution); each part is cached under
    ``work``."""
    key = _key(spec, config)
    path = work / f"{key}.json"
    # solved once, and only if some part is still to be computed
    edit = cache(partial(plant_edit, model, spec, strength=STRENGTH, lam=LAM, preserve_weight=PRESERVE_WEIGHT))
    record = json.loads(path.read_text()) if path.is_file() else None
    if record is None:
        start = time.perf_counter()
        record = {"plant": spec.to_dict(), "check": check_plant(model, spec, edit(), scorer=scorer, config=config)}
        if record["check"]["takes"]:
            record["answers"] = ask_plant(model, spec, edit(), scorer=scorer, config=config, check=record["check"])
        record["seconds"] = round(time.perf_counter() - start, 1)
        write_json_atomic(path, record)
    if not record["check"]["takes"] or spec.method != "locoedit":
        return record
    substituted = work / f"{key}-substitute.json"
    if not substituted.is_file():
        start = time.perf_counter()
        try:
            answers = ask_substituted(model, spec, edit(), record["answers"]["prompts"], scorer=scorer, config=config)
        except ConfigError as exc:  # no world value has the word's token count: no substitution trace
            answers = {"substitution": {"substitute": None, "removes": False, "why": str(exc)}}
        write_json_atomic(substituted, {"answers": answers, "seconds": round(time.perf_counter() - start, 1)})
    parts_path = work / f"{key}-parts.json"
    if not parts_path.is_file():
        start = time.perf_counter()
        parts = window_parts(model, spec, edit(), scorer=scorer, config=config)
        write_json_atomic(parts_path, {"parts": parts, "seconds": round(time.perf_counter() - start, 1)})
    extra = json.loads(substituted.read_text())
    removed_path = work / f"{key}-remove.json"
    if not removed_path.is_file() and extra["answers"]["substitution"]["substitute"] is not None:
        start = time.perf_counter()
        answers = ask_removed(model, spec, edit(), record["answers"]["prompts"], scorer=scorer, config=config)
        write_json_atomic(removed_path, {"answers": answers, "seconds": round(time.perf_counter() - start, 1)})
    removed = json.loads(removed_path.read_text()) if removed_path.is_file() else {"answers": {}, "seconds": 0.0}
    answers = {**record["answers"], **extra["answers"], **removed["answers"]}
    doses_path = work / f"{key}-doses.json"
    if not doses_path.is_file() and answers["substitution"]["substitute"] is not None:
        start = time.perf_counter()
        doses = ask_doses(model, spec, edit(), answers["prompts"], answers, scorer=scorer, config=config)
        write_json_atomic(doses_path, {"doses": doses, "seconds": round(time.perf_counter() - start, 1)})
    doses = json.loads(doses_path.read_text()) if doses_path.is_file() else {"doses": None, "seconds": 0.0}
    parts = json.loads(parts_path.read_text())
    seconds = record["seconds"] + extra["seconds"] + parts["seconds"] + removed["seconds"] + doses["seconds"]
    return {**record, "answers": answers, "parts": parts["parts"], "doses": doses["doses"],
            "seconds": round(seconds, 1)}  # fmt: skip


def traced(answers: dict) -> bool:
    """Whether corrupting the word with noise removed the concept (halved it in every traced item): a trace of a
    plant whose corruption leaves the concept measures noise, so it is not counted."""
    return bool(answers.get("noise", {}).get("reached", False))


def counted(method: str, answers: dict) -> bool:
    """Whether ``method``'s answer counts: LocoGen corrupts nothing; a substitution trace counts where the
    substitute removed the concept, a noise trace where the noise did (:func:`traced`)."""
    if method.startswith("locogen"):
        return True
    if "/substitute" in method:
        return bool(answers.get("substitution", {}).get("removes", False))
    return traced(answers)


def _window_readings(method: str, answer: dict, planted: list[str]) -> dict:
    """The tie-aware reading of a window answer, and the order-free ones of
    :func:`~diffloc.world.planted.tie_readings` (the tie-split share and the tie-aware reading's chance level)."""
    windows, tied, moves = window_ties(method, answer)
    readings = tie_readings(windows, tied, planted, moves=moves)
    return {"tie_aware": readings["split"] > 0, **readings}


def _dose_reading(method: str, answer: dict | None, dosed: dict | None, planted: list[str]) -> dict | None:
    """:func:`~diffloc.world.planted.dose_reading` of a window answer's tied windows; an answer whose ties were
    not dosed (one best window, or nothing moves) reads as its strict reading."""
    if answer is None or dosed is None or "why" in dosed:  # "why": the model could not dose this answer
        return None
    if not dosed["areas"]:
        return {"recovered": bool(answer["recovered"]), "split": float(bool(answer["recovered"]))}
    return dose_reading(dosed["tied"], dosed["areas"], full_effects(method, answer, dosed["tied"]), planted)


def recovery_table(records: list[dict]) -> dict:
    """Recovery rate per method × restore source × plant kind (plants that took), with Wilson intervals.

    Traces (UNet, text) count only plants whose corruption removed the concept; LocoGen needs no corruption.
    A method that ranks windows (:data:`~diffloc.world.planted.WINDOW_METHODS`) is read five ways: ``<method>``
    counts its best window (the first of tied ones); ``<method>/tie-aware`` counts a plant if any of the windows
    tied for best would have counted, with ``chance``, the rate it would read if the ranking carried no
    information (as many windows drawn at random); ``<method>/tie-split`` counts the share of the tied windows that
    would have counted (the strict reading with ties broken at random; a fractional count, no interval);
    ``<method>/dose`` breaks the ties by the tied windows' response to partial patches
    (:func:`~diffloc.world.planted.ask_doses`) and reads, of those still tied, the one the strict reading would
    pick; ``<method>/dose/tie-split`` the share of them mostly planted. The plants a method was not counted on are
    listed per method.
    """
    rows: dict[str, dict[str, list[float]]] = {}
    chance: dict[str, dict[str, list[float]]] = {}
    # a method the model could not dose on some plant (a denoiser that masks each prompt's padding cannot mix two
    # contexts for LocoGen) gets no dose reading on any
    undosable = {
        name for r in records for name, d in (r.get("doses") or {}).items() if isinstance(d, dict) and "why" in d
    }
    for record in records:
        if not record["check"]["takes"]:
            continue
        kind = record["plant"]["kind"]
        answers = dict(record["answers"])
        for name in WINDOW_METHODS:
            if name in answers:
                readings = _window_readings(name, answers[name], record["plant"]["sites"])
                answers[f"{name}/tie-aware"] = {"recovered": readings["tie_aware"], "chance": readings["chance"]}
                answers[f"{name}/tie-split"] = {"recovered": readings["split"]}
            dosed = _dose_reading(name, answers.get(name), (record.get("doses") or {}).get(name),
                                  record["plant"]["sites"])  # fmt: skip
            if dosed is not None and name not in undosable:
                answers[f"{name}/dose"] = {"recovered": dosed["recovered"]}
                answers[f"{name}/dose/tie-split"] = {"recovered": dosed["split"]}
        for method, answer in answers.items():
            if not isinstance(answer, dict) or "recovered" not in answer:
                continue
            if not counted(method, record["answers"]):
                rows.setdefault(method, {}).setdefault("not counted", []).append(record["plant"]["name"])
                continue
            for group in (kind, "all"):
                rows.setdefault(method, {}).setdefault(group, []).append(float(answer["recovered"]))
                if "chance" in answer:
                    chance.setdefault(method, {}).setdefault(group, []).append(answer["chance"])
    table: dict[str, dict] = {}
    for method, groups in rows.items():
        table[method] = {}
        for group, hits in groups.items():
            if group == "not counted":
                table[method][group] = hits
                continue
            whole = all(h in (0.0, 1.0) for h in hits)
            recovered = int(sum(hits)) if whole else round(sum(hits), 2)
            entry = {"recovered": recovered, "plants": len(hits), "rate": sum(hits) / len(hits),
                     "interval": list(wilson_interval(int(sum(hits)), len(hits))) if whole else None}  # fmt: skip
            if method in chance:
                entry["chance"] = float(np.mean(chance[method][group]))
            table[method][group] = entry
    return table


def markdown(summary: dict) -> str:
    """The tables findings.md quotes: every plant (take rate, each method's answer), how partial patches broke each
    window answer's ties, and recovery per method."""
    methods = ("unet_trace/same-latent", "unet_trace/trajectory", "unet_trace/substitute/same-latent",
               "unet_trace/substitute/trajectory", "window_trace/substitute", "unet_trace/substitute/remove",
               "window_trace/substitute/remove", "locogen", "text_trace")  # fmt: skip
    head = ("| plant | takes (held-out images; no: below 0.9) | without the window / window alone | noise removes it | "
            "substitute (removes it) | ")  # fmt: skip
    rows = [head + " | ".join(methods) + " |", "|---|---|---|---|---|" + "---|" * len(methods)]
    for record in summary["plants"]:
        check, answers = record["check"], record.get("answers", {})
        cells = []
        for method in methods:
            answer = answers.get(method)
            if not record["check"]["takes"] or answer is None:
                cells.append("—")
                continue
            top = ", ".join(f"`{s.removeprefix('unet.').removeprefix('transformer.')}`" for s in answer["top"])
            verdict = ("found" if answer["recovered"] else "missed") if counted(method, answers) else "not counted"
            if method == "locogen":
                ties = len(tied_windows(answer["windows"], answer["scores"]))
            else:
                ties = len(answer.get("tied", [None]))
            cells.append(f"{verdict} ({top})" + (f"; {ties} windows tied for best" if ties > 1 else ""))
        removes = "—" if "noise" not in answers else ("yes" if traced(answers) else "no")
        sub = answers.get("substitution")
        if sub is None:
            substitute = "—"
        elif sub["substitute"] is None:
            substitute = "none of its token count"
        else:
            substitute = f"'{sub['substitute']}' ({'yes' if sub['removes'] else 'no'})"
        took = f"{check['rate']:.2f} ({check['shown']} of {check['images']}){'' if check['takes'] else ', no'}"
        parts = record.get("parts")
        held = (
            "—"
            if parts is None
            else " / ".join(
                "—" if parts[part] is None else f"{parts[part]['rate']:.2f}" for part in ("rest_only", "window_only")
            )
        )
        rows.append(f"| {record['plant']['name']} | {took} | {held} | {removes} | {substitute} | "
                    + " | ".join(cells) + " |")  # fmt: skip
    rows += ["", *_dose_rows(summary["plants"])]
    rows += ["", "| method | plants counted | recovered | rate | 95% interval | chance |", "|---|---|---|---|---|---|"]
    for method, groups in summary["recovery"].items():
        g = groups.get("all")
        if g is None:
            rows.append(f"| {method} | 0 | — | — | — | — |")
            continue
        interval = "—" if g["interval"] is None else f"[{g['interval'][0]:.2f}, {g['interval'][1]:.2f}]"
        chance_rate = "—" if "chance" not in g else f"{g['chance']:.2f}"
        rows.append(f"| {method} | {g['plants']} | {g['recovered']} | {g['rate']:.2f} | {interval} | {chance_rate} |")
    return "\n".join(rows)


def _span_of(window: list[str]) -> str:
    return f"{window[0].rsplit('.', 1)[-1]}–{window[-1].rsplit('.', 1)[-1]}"


def _dose_rows(records: list[dict]) -> list[str]:
    """The ties of each window answer and how partial patches ranked them: per tied window its mean effect over
    the doses, the windows still tied, and the pick."""
    head = "| plant | method | tied at the full patch: mean effect over the doses | still tied | pick |"
    rows = [head, "|---|---|---|---|---|"]
    for record in records:
        doses = record.get("doses")
        if not record["check"]["takes"] or not doses:
            continue
        for method in WINDOW_METHODS:
            dosed, answer = doses.get(method), record["answers"].get(method)
            if not dosed or not dosed["areas"]:
                continue
            reading = _dose_reading(method, answer, dosed, record["plant"]["sites"])
            areas = ", ".join(f"{_span_of(w)} {a:.2f}" for w, a in zip(dosed["tied"], dosed["areas"], strict=True))
            still = ", ".join(_span_of(w) for w in reading["best"])
            verdict = (
                ("found" if reading["recovered"] else "missed") if counted(method, record["answers"]) else "not counted"
            )
            rows.append(f"| {record['plant']['name']} | {method} | {areas} | {still} | "
                        f"{_span_of(reading['pick'])} ({verdict}) |")  # fmt: skip
    return rows


def _shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` as ``(I, N)``, 0 <= I < N."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {text!r} is not I/N (e.g. 0/2)") from None
    if not 0 <= index < count:
        raise SystemExit(f"--shard {text!r}: I must be 0 to N-1")
    return index, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapesworld", choices=("shapesworld", "shapesworld-dit"),
                        help="the shipped model to plant in (default shapesworld, the UNet model)")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="JSON (default docs/data/localization_validity.json; -dit, -new-words, -quick before "
                        ".json as those apply)")  # fmt: skip
    parser.add_argument("--work", default="runs/planted", help="per-plant records (resumable)")
    parser.add_argument("--quick", action="store_true", help="three window plants and one text plant")
    parser.add_argument("--new-words", action="store_true",
                        help="plant the windows on words the model has never seen, not re-taught ones")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--table", action="store_true", help="print the Markdown tables of --out and exit")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="compute only plants I, I+N, I+2N … into --work and write no table (run N shards side "
                        "by side, then once without --shard to gather them)")  # fmt: skip
    args = parser.parse_args()
    shard = _shard(args.shard)
    if args.out is None:
        suffix = ("-dit" if args.model == "shapesworld-dit" else "") + ("-new-words" if args.new_words else "")
        suffix += "-quick" if args.quick else ""  # a smoke test never overwrites a full run's committed data
        args.out = f"docs/data/localization_validity{suffix}.json"
    if args.table:
        if not Path(args.out).is_file():
            raise SystemExit(f"--table: no {args.out} (write it by running without --table)")
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load(args.model)
    scorer = DetectorScorer()
    config = AskConfig()
    work = Path(args.work)
    records = []
    specs = plants(model, args.quick, args.new_words)
    for i, spec in enumerate(specs, 1):
        if shard is not None and (i - 1) % shard[1] != shard[0]:
            continue
        record = run_plant(model, spec, scorer, config, work)
        records.append(record)
        check = record["check"]
        print(f"[{i}/{len(specs)}] {spec.name}: takes {check['rate']:.2f} (base {check['base']:.2f})"
              + ("" if check["takes"] else "  — did not take"), flush=True)  # fmt: skip
    if shard is not None:
        print(f"shard {args.shard}: {len(records)} plants in {work}; run without --shard to write the table")
        return 0
    table = recovery_table(records)
    summary = {
        "diffloc_version": __version__, "command": " ".join(["python", *sys.argv]), "model": args.model,
        "plant": {"strength": STRENGTH, "lam": LAM, "preserve_weight": PRESERVE_WEIGHT, "takes_at": 0.9},
        "ask": config.__dict__, "recovery": table,
        "did_not_take": [r["plant"]["name"] for r in records if not r["check"]["takes"]],
        "plants": records, "seconds": round(time.perf_counter() - start, 1),
        "plant_seconds": round(sum(r["seconds"] for r in records), 1),  # when each record was computed
    }  # fmt: skip
    write_json_atomic(args.out, json.loads(json.dumps(summary, default=list)))
    print(f"\n{sum(r['check']['takes'] for r in records)} of {len(records)} plants took")
    print(f"{'method':<40} {'plants':>6} {'recovered':>9} {'rate':>6}  95% interval")
    for method, groups in table.items():
        skipped = groups.get("not counted", [])
        note = f"  (not counted, corruption left the concept: {'; '.join(skipped)})" if skipped else ""
        g = groups.get("all")
        if g is None:
            print(f"{method:<40} {0:>6} {'—':>9} {'—':>6}{note}")
            continue
        interval = "—" if g["interval"] is None else f"[{g['interval'][0]:.2f}, {g['interval'][1]:.2f}]"
        chance_rate = "" if "chance" not in g else f"  (chance {g['chance']:.2f})"
        print(f"{method:<40} {g['plants']:>6} {g['recovered']:>9} {g['rate']:>6.2f}  {interval}{chance_rate}{note}")
    print(f"wrote {args.out} ({summary['seconds']:.0f} s; the plants took {summary['plant_seconds']:.0f} s to compute)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
