"""Print the findings tables as Markdown (docs/findings.md quotes them) from JSON committed under docs/data.

Every number comes from a demo run's ``summary.json`` and the trace results it points to (by default the
committed copy in ``docs/data/demo``), and from ``docs/data/restore_sources.json``, so the tables in the docs
are generated, never typed, and can be checked without rerunning anything::

    python scripts/findings_tables.py                 # the committed data
    diffloc demo --out demo-out && python scripts/findings_tables.py demo-out   # a fresh run
    python scripts/findings_tables.py --keep demo-out  # replace the committed data by a fresh run's

Tables: the corruption calibration per case; where each attribute is (UNet top sites with 95% intervals, the
causal sites selected on validation items, the controls, the best single text-encoder state, the LocoGen window
search); the edits (own and held-out prompts before -> after, neighbours kept, pixel change on unrelated
prompts); the demo's attribution step maps against its exact traces; the UNet trace of every case under both
restore sources; attribution patching against exact patching (``docs/data/attribution_speed.json``); and, where a
demo of ShapesWorld-DiT is committed (``docs/data/demo-dit``, ``--keep-dit RUN`` replaces it), the UNet and the
DiT side by side on the same cases.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

BAR = 0.8  # a site "recovers" the attribute when its indirect effect is at least this
KEPT = 0.9  # a neighbour is "kept" when its retention is at least this
DEMO_DATA = Path("docs/data/demo")
DIT_DEMO_DATA = Path("docs/data/demo-dit")
RESTORE_DATA = Path("docs/data/restore_sources.json")
ATTRIBUTION_DATA = Path("docs/data/attribution_speed.json")


def _fmt(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _short(site: str) -> str:
    return site.removeprefix("unet.").removeprefix("transformer.")


def calibration_table(summary: dict[str, Any]) -> str:
    rows = ["| case | score at each noise multiplier | chosen |", "|---|---|---|"]
    for name, case in summary["cases"].items():
        for trace, field in (("UNet", "noise"), ("text", "text_noise")):
            noise = case.get(field)
            if not noise:
                continue
            tried = " / ".join(f"{float(m):g}×: {_fmt(v)}" for m, v in noise["corrupted"].items())
            reached = "" if noise.get("reached", True) else " (never halved)"
            rows.append(f"| {name}, {trace} trace (clean {_fmt(noise['clean'])}) | {tried} | "
                        f"{noise['multiplier']:g}× ({noise['noise']:.3f}){reached} |")  # fmt: skip
    return "\n".join(rows)


def _denoiser_effects(run: Path, name: str) -> list[tuple[float, str]]:
    """``(indirect effect, site)`` of every site of a demo case's denoiser trace, largest first."""
    data = json.loads((run / "trace" / name / "unet" / "result.json").read_text())
    return sorted(zip(data["indirect_effect"], data["labels"], strict=True), reverse=True)


def _unet_sites(run: Path, name: str) -> str:
    effects = _denoiser_effects(run, name)
    strong = [f"`{_short(label)}` ({effect:.2f})" for effect, label in effects if effect >= BAR]
    if strong:
        return ", ".join(strong[:6]) + (f" and {len(strong) - 6} more" if len(strong) > 6 else "")
    best_effect, best_label = effects[0]
    return f"none (best `{_short(best_label)}` {best_effect:.2f})"


def _text_state(run: Path, name: str) -> str:
    from diffloc.tracing.results import negligible_gap

    data = json.loads((run / "trace" / name / "text" / "result.json").read_text())
    best = (-math.inf, "", 0, 0)
    for kind, layers in zip(data["labels"], data["indirect_effect"], strict=True):
        for layer, row in enumerate(layers):
            for pos, value in enumerate(row):
                if value is not None and not math.isnan(value) and value > best[0]:
                    best = (value, kind, layer, pos)
    value, kind, layer, pos = best
    token = data["tokens"][pos] if pos < len(data["tokens"]) else str(pos)
    clean, corrupted = data["clean_score"], data["corrupt_score"]
    gap = f"{_fmt(clean)} → {_fmt(corrupted)}"
    if negligible_gap(clean, corrupted):
        return f"— (corruption left the attribute: {gap})"
    return f"{value:.2f} at `{kind}` layer {layer}, token {pos} ({token!r}; {gap})"


def _locogen(case: dict[str, Any]) -> str:
    loco = case["locogen"]
    search = (loco.get("window_search") or {}).get("tried") or []
    steps = ", ".join(f"{t['window']}: {_fmt(t['best_score'])}" for t in search)
    return f"{steps} → **{_window(loco['best_sites'])}** (original {_fmt(loco['original_score'])})"


def _top_with_intervals(case: dict[str, Any], k: int = 3) -> str:
    parts = []
    for (site, value), ci in list(zip(case["unet_top"], case["unet_top_interval"], strict=True))[:k]:
        span = "" if ci is None else f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
        parts.append(f"`{_short(site)}` {value:.2f}{span}")
    return ", ".join(parts)


def _causal(case: dict[str, Any]) -> str:
    selection = case.get("selection")
    if not selection:
        return "—"
    sites = selection["causal"]
    shown = ", ".join(f"`{_short(s)}`" for s in sites[:4]) + (f" +{len(sites) - 4}" if len(sites) > 4 else "")
    return (f"τ = {selection['tau']:.2f} ({selection['validation_items']} validation items, accuracy "
            f"{_fmt(selection['validation_accuracy'])}): {shown or 'none'}")  # fmt: skip


def _controls(case: dict[str, Any]) -> str:
    controls = case.get("controls") or []
    text = ", ".join(f"`{_short(c['site'])}` {c['effect']:+.3f}" for c in controls) or "none"
    return text + (" **flagged**" if case.get("controls_flagged") else "")


def location_table(summary: dict[str, Any], run: Path) -> str:
    rows = [
        "| case | UNet clean → corrupted (items) | top sites, mean effect [95% interval] | causal sites | controls "
        "| sites recovering ≥ 80% of the gap | best single text state (effect; clean → corrupted) "
        "| LocoGen: best score per window size → chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in summary["cases"].items():
        items = case.get("unet_items", "?")
        rows.append(
            f"| {name} | {_fmt(case['unet_clean'])} → {_fmt(case['unet_corrupted'])} ({items}) | "
            f"{_top_with_intervals(case)} | {_causal(case)} | {_controls(case)} | {_unet_sites(run, name)} | "
            f"{_text_state(run, name)} | {_locogen(case)} |"
        )
    return "\n".join(rows)


def restore_sources_table(data: dict[str, Any]) -> str:
    """Per case and restore source: the gap, the controls' effects, the strongest sites and how many sites
    recover >= 80% of the gap."""
    rows = [
        "| case | restore source | clean → corrupted (items) | controls | strongest sites | sites ≥ 0.8 |",
        "|---|---|---|---|---|---|",
    ]
    for name, case in data["cases"].items():
        for source, entry in case["sources"].items():
            effects = [(v if v is not None else -math.inf, label)
                       for v, label in zip(entry["indirect_effect"], entry["labels"], strict=True)]  # fmt: skip
            ranked = sorted(effects, reverse=True)
            strongest = ", ".join(f"`{_short(label)}` {v:.2f}" for v, label in ranked[:3])
            controls = ", ".join(f"`{_short(k)}` {v:+.3f}" for k, v in entry["control_effects"].items())
            flagged = " **flagged**" if entry["controls_flagged"] else ""
            strong = sum(1 for v, _ in effects if v >= BAR)
            gap = f"{_fmt(entry['clean'])} → {_fmt(entry['corrupted'])} ({entry['n_items']})"
            found = f"{strong} of {len(effects)}"
            rows.append(f"| {name} | {source} | {gap} | {controls}{flagged} | {strongest} | {found} |")
    return "\n".join(rows)


def _reading(case: dict[str, Any]) -> tuple[str, str]:
    """The before/after keys an edit of ``case`` is judged by: the target's for an update, else the concept's."""
    return ("target_before", "target_after") if case["mode"] == "update" else ("concept_before", "concept_after")


def edits_table(summary: dict[str, Any]) -> str:
    rows = [
        "| case | method | own: before → after | held-out: before → after | neighbours kept (≥ 0.9) | pixel Δ "
        "unrelated | edited layers | edit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in summary["cases"].items():
        for method, ev in case["eval"].items():
            key = _reading(case)
            own, held = ev["efficacy"], ev["generalization"]
            spec = ev["specificity"]
            kept = sum(1 for n in spec if n["retention"] is not None and n["retention"] >= KEPT)
            low = [f"{n['prompt']!r} {_fmt(n['before'])}→{_fmt(n['after'])}" for n in spec
                   if n["retention"] is None or n["retention"] < KEPT]  # fmt: skip
            kept_text = f"{kept} of {len(spec)}" + (f" (not: {'; '.join(low)})" if low else "")
            rows.append(
                f"| {name} | {method} | {_fmt(own[key[0]])} → {_fmt(own[key[1]])} | "
                f"{_fmt(held[key[0]])} → {_fmt(held[key[1]])} | {kept_text} | {ev['fidelity']:.3f} | "
                f"{_layers(case['edits'][method].get('sites'))} | {_fmt(case['edits'][method]['seconds'])} |"
            )
    return "\n".join(rows)


def _layers(sites: list[str] | None) -> str:
    """The span of cross-attention layers an edit wrote (``xattn.0–15``), else its sites (``text.attn.0``)."""
    from diffloc.editing.locoedit import edited_layers

    if not sites:
        return "?"
    layers = edited_layers(sites)
    xattn = [int(s.rsplit(".", 1)[1]) for s in layers if s.startswith("unet.xattn.")]
    if len(xattn) != len(layers):
        return ", ".join(layers)
    return f"xattn.{xattn[0]}" if len(xattn) == 1 else f"xattn.{min(xattn)}–{max(xattn)}"


def step_map_table(summary: dict[str, Any]) -> str:
    """The demo's attribution step maps against its exact UNet traces, per case."""
    rows = ["| case | items | Spearman (per-site effects) | top-5 recall | exact top 5 | attribution top 5 |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for name, case in summary["cases"].items():
        step = case.get("step_map")
        if not step:
            continue
        rows.append(f"| {name} | {step['items']} | {_fmt(step['spearman'])} | {_fmt(step['top_recall'])} | "
                    f"{', '.join(_short(s) for s in step['exact_top'])} | "
                    f"{', '.join(_short(s) for s in step['top'])} |")  # fmt: skip
    return "\n".join(rows)


def attribution_speed_table(data: dict[str, Any]) -> str:
    """bench/attribution_speed.py's comparison: time, speed-up, agreement per case and method, and in total."""
    rows = ["| case | method | seconds | vs exact | top-5 recall | within a tie of exact's top 5 | Spearman | "
            "exact scores |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, case in [*data["cases"].items(), (f"tiny-sdxl ({data['tiny_sdxl']['sites']} sites)", data["tiny_sdxl"])]:
        for method in [m for m in ("exact", "attribution", "screen", "screen-gd") if m in case]:
            m = case[method]
            rows.append(f"| {name} | {method} | {m['seconds']:.1f} | {m['speedup']:.1f}× | {_fmt(m['top5_recall'])} | "
                        f"{_fmt(m.get('top5_recall_ties'))} | {_fmt(m['spearman'])} | "
                        f"{m['exact_scores']}/{case['sites']} |")  # fmt: skip
    for method, m in data["shapesworld"].items():
        rows.append(f"| **ShapesWorld, all** | {method} | {m['seconds']:.1f} | {m['speedup']:.1f}× | "
                    f"{_fmt(m['top5_recall'])} | {_fmt(m.get('top5_recall_ties'))} | {_fmt(m['spearman'])} "
                    "| |")  # fmt: skip
    curves = [(name, case["corruption_curve"]) for name, case in data["cases"].items() if "corruption_curve" in case]
    if curves:
        rows += ["", "| case | clean | " + " | ".join(f"corrupted at {k}×" for k in curves[0][1]["corrupted"]) + " |",
                 "|---|---|" + "---|" * len(curves[0][1]["corrupted"])]  # fmt: skip
        for name, curve in curves:
            rows.append(f"| {name} | {curve['clean']:.2f} | "
                        + " | ".join(f"{v:.2f}" for v in curve["corrupted"].values()) + " |")  # fmt: skip
    planted = data.get("planted")
    if not planted:
        return "\n".join(rows)
    arms = [("noise, single sites", planted), *((arm, planted[arm]) for arm in ("substitute", "substitute-windows")
                                                if arm in planted)]  # fmt: skip
    rows += ["", "| planted window | corruption, restores | exact | attribution (its top) | screen (its top) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for arm, part in arms:
        for p in part["plants"]:
            cells = [("found" if p[m] else "missed") + f" ({', '.join(_short(s) for s in p[f'{m}_top'])})"
                     for m in ("attribution", "screen")]  # fmt: skip
            rows.append(f"| {p['plant']} | {arm} | {'found' if p['exact'] else 'missed'} | {cells[0]} | {cells[1]} |")
    rows += ["", "| corruption, restores | method | planted windows recovered | rate | 95% interval |",
             "|---|---|---|---|---|"]  # fmt: skip
    for arm, part in arms:
        for method, t in part["total"].items():
            if not t["plants"]:
                continue
            rows.append(f"| {arm} | {method} | {t['recovered']} of {t['plants']} | {_fmt(t['rate'])} | "
                        f"[{t['interval'][0]:.2f}, {t['interval'][1]:.2f}] |")  # fmt: skip
    return "\n".join(rows)


def _window(sites: list[str]) -> str:
    """A LocoGen window as its first and last layer (``xattn.6–7``)."""
    first = _short(sites[0])
    return first if len(sites) == 1 else f"{first}–{sites[-1].rsplit('.', 1)[-1]}"


def _own(case: dict[str, Any], method: str) -> str:
    """An edit's own-prompt detector reading before → after (the target's for an update, else the concept's)."""
    ev = case["eval"].get(method)
    if ev is None:
        return "—"
    key = _reading(case)
    return f"{_fmt(ev['efficacy'][key[0]])} → {_fmt(ev['efficacy'][key[1]])}"


def _top_xattn(run: Path, name: str, k: int = 3) -> str:
    """The ``k`` cross-attention layers (outputs, not their key/value projections) with the largest effect in a
    demo's denoiser trace: where the text enters, which the downstream blocks' effects do not say."""
    pairs = [(effect, label) for effect, label in _denoiser_effects(run, name)
             if ".xattn." in label and not label.endswith((".k", ".v"))]  # fmt: skip
    return ", ".join(f"`{_short(label)}` {effect:.2f}" for effect, label in pairs[:k])


def side_by_side_table(models: dict[str, tuple[dict[str, Any], Path]]) -> str:
    """The same demo cases on each model (``{label: (summary, run directory)}``): the denoiser's clean and corrupted
    scores, its three strongest sites and cross-attention layers, the LocoGen window chosen, and each editor's
    own-prompt reading before → after."""
    rows = [
        "| case | model | denoiser clean → corrupted (items) | top sites, mean effect | top cross-attention layers "
        "| LocoGen window | Diff-QuickFix own: before → after | LocoEdit own: before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first, _ = next(iter(models.values()))
    for name in first["cases"]:
        for label, (summary, run) in models.items():
            case = summary["cases"].get(name)
            if case is None:
                continue
            top = ", ".join(f"`{_short(site)}` {value:.2f}" for site, value in case["unet_top"][:3])
            rows.append(
                f"| {name} | {label} | {_fmt(case['unet_clean'])} → {_fmt(case['unet_corrupted'])} "
                f"({case.get('unet_items', '?')}) | {top} | {_top_xattn(run, name)} | "
                f"{_window(case['locogen']['best_sites'])} | {_own(case, 'quickfix')} | {_own(case, 'locoedit')} |"
            )
    return "\n".join(rows)


def keep_demo_data(run: Path, target: Path) -> None:
    """Copy what the tables read from a demo run (``summary.json``, each trace's and LocoGen's ``result.json``,
    the noise calibrations; no images, no per-item files) into ``target``, replacing its previous contents."""
    import shutil

    files = [run / "summary.json", *run.glob("trace/*/*.json"), *run.glob("trace/*/*/result.json"),
             *run.glob("locogen/*/result.json")]  # fmt: skip
    if not (run / "summary.json").is_file():
        raise SystemExit(f"{run} holds no summary.json: give the --out directory of a finished diffloc demo")
    if target.exists():
        shutil.rmtree(target)
    for file in files:
        dest = target / file.relative_to(run)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", default=DEMO_DATA,
                        help=f"a demo's --out directory (with summary.json; default {DEMO_DATA})")  # fmt: skip
    parser.add_argument(
        "--restore-sources",
        type=Path,
        default=RESTORE_DATA,
        help=f"bench/restore_sources.py's output (default {RESTORE_DATA}; skipped if absent)",
    )
    parser.add_argument(
        "--attribution",
        type=Path,
        default=ATTRIBUTION_DATA,
        help=f"bench/attribution_speed.py's output (default {ATTRIBUTION_DATA}; skipped if absent)",
    )
    parser.add_argument(
        "--dit",
        type=Path,
        default=DIT_DEMO_DATA,
        help=f"a demo of shapesworld-dit (default {DIT_DEMO_DATA}; skipped if absent)",
    )
    parser.add_argument(
        "--keep-dit", type=Path, default=None, metavar="RUN",
        help=f"first copy the JSON files of a ShapesWorld-DiT demo run RUN into {DIT_DEMO_DATA}",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, metavar="RUN",
                        help=f"first copy the JSON files of demo run RUN (summary, traces, LocoGen, noise) into "
                        f"{DEMO_DATA}, replacing what is there, then print from the copy")  # fmt: skip
    args = parser.parse_args()
    if args.keep is not None:
        keep_demo_data(args.keep, DEMO_DATA)
        args.run = DEMO_DATA
    if args.keep_dit is not None:
        keep_demo_data(args.keep_dit, DIT_DEMO_DATA)
        args.dit = DIT_DEMO_DATA
    summary = json.loads((args.run / "summary.json").read_text())
    print("### Corruption calibration\n\n" + calibration_table(summary) + "\n")
    print("### Where the attribute is\n\n" + location_table(summary, args.run) + "\n")
    print("### Edits\n\n" + edits_table(summary))
    if any(case.get("step_map") for case in summary["cases"].values()):
        print("\n### Step maps against the exact trace\n\n" + step_map_table(summary))
    if args.restore_sources.is_file():
        data = json.loads(args.restore_sources.read_text())
        print("\n### Restore sources\n\n" + restore_sources_table(data))
    if args.attribution.is_file():
        data = json.loads(args.attribution.read_text())
        print("\n### Attribution against exact patching\n\n" + attribution_speed_table(data))
    if (args.dit / "summary.json").is_file():
        dit = json.loads((args.dit / "summary.json").read_text())
        models = {"UNet": (summary, args.run), "DiT": (dit, args.dit)}
        print("\n### UNet and DiT side by side\n\n" + side_by_side_table(models))


if __name__ == "__main__":
    main()
