"""A single static HTML page presenting a demo run; every number comes from ``summary.json``.

Images are referenced by relative path (the page lives next to them), so the output directory can be
zipped or served as is. Numbers carry ``data-key`` attributes naming where they come from in the summary,
so a test can check the page against the JSON.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from diffloc.atomic import write_atomic
from diffloc.eval.suite import EvalSuite
from diffloc.sites import short_label
from diffloc.tracing.results import DENOISER_TRACE, negligible_gap

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem}
td,th{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} img{max-width:100%;border:1px solid #eee;margin:.3rem 0}
.muted{color:#666;font-size:.9em} .good{color:#1a7f37} .bad{color:#b42318}
"""


def _num(value: Any, key: str, digits: int = 3) -> str:
    text = "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))
    return f'<span data-key="{html.escape(key)}">{html.escape(text)}</span>'


def _img(out: Path, rel: str, alt: str) -> str:
    if not (out / rel).is_file():
        return f'<p class="muted">({html.escape(alt)}: not produced)</p>'
    return f'<img src="{html.escape(rel)}" alt="{html.escape(alt)}">'


def _noise_paragraph(trace: str, noise: dict[str, Any], key: str) -> str:
    """How the corruption of one trace was calibrated (``--noise auto``) and what each multiplier scored."""
    tried = ", ".join(f"{m}×: {v:.2f}" for m, v in noise["corrupted"].items())
    missed = (
        ""
        if noise["reached"]
        else " (no multiplier halved the score in every image; the one that did in the most was used)"
    )
    return (
        f"<p>{trace} trace corruption calibrated (--noise auto): std {_num(noise['noise'], key + '.noise', 4)} = "
        f"{_num(noise['multiplier'], key + '.multiplier', 0)} × the token-embedding std "
        f"{_num(noise['embedding_std'], key + '.embedding_std', 4)}"
        f"{missed}. "
        f"Score with each multiplier: {html.escape(tried)}.</p>"
    )


def _interval_text(interval: list[float] | None, key: str) -> str:
    if interval is None:
        return "—"
    return f"[{_num(interval[0], key + '.0', 2)}, {_num(interval[1], key + '.1', 2)}]"


def _localization_details(entry: dict[str, Any], key: str) -> str:
    """Top UNet sites with intervals, the controls and the causal-site selection of a case."""
    restore = entry.get("restore_from", "trajectory")
    parts = [
        f"<p>UNet restores read the clean value from <b data-key='{key}.restore_from'>{html.escape(restore)}</b> "
        + ("(the clean text on the restored run's own latent: only the text's path through the site differs)"
           if restore == "same-latent" else "(the clean run's activation on the clean trajectory's latent)")
        + f"; {_num(entry.get('unet_items'), key + '.unet_items')} items (prompt × seed); intervals are 95% "
        "bootstrap intervals over items.</p>"
    ]  # fmt: skip
    intervals = entry.get("unet_top_interval") or [None] * len(entry["unet_top"])
    rows = "".join(
        f"<tr><td class=l>{html.escape(site)}</td><td>{_num(effect, f'{key}.unet_top.{i}.1')}</td>"
        f"<td>{_interval_text(ci, f'{key}.unet_top_interval.{i}')}</td></tr>"
        for i, ((site, effect), ci) in enumerate(zip(entry["unet_top"], intervals, strict=True))
    )
    controls = entry.get("controls") or []
    rows += "".join(
        f"<tr><td class=l>control: {html.escape(c['site'])}</td><td>{_num(c['effect'], f'{key}.controls.{i}.effect')}"
        f"</td><td>{_interval_text(c['interval'], f'{key}.controls.{i}.interval')}</td></tr>"
        for i, c in enumerate(controls)
    )
    parts.append(f"<table><tr><th class=l>top UNet site</th><th>indirect effect</th><th>95% interval</th></tr>"
                 f"{rows}</table>")  # fmt: skip
    if entry.get("controls_flagged"):
        parts.append(
            "<p class=bad>A control site (one that cannot read the text) moved the score by more than 0.1: these "
            "restores carry more than the text's path (with the trajectory source, the clean latent).</p>"
        )
    elif controls:
        parts.append("<p class=muted>Controls: sites before the first cross-attention, which cannot read the text; "
                     "their effect should be ~0.</p>")  # fmt: skip
    selection = entry.get("selection")
    if selection:
        causal = ", ".join(selection["causal"][:12]) or "none"
        more = f" (+{len(selection['causal']) - 12} more)" if len(selection["causal"]) > 12 else ""
        sk = key + ".selection"
        parts.append(
            f"<p>Causal sites (mean restored score ≥ τ = {_num(selection['tau'], sk + '.tau')}, chosen "
            f"on {_num(selection['validation_items'], sk + '.validation_items')} held-out validation "
            f"items, balanced accuracy {_num(selection['validation_accuracy'], sk + '.validation_accuracy', 2)}"
            f"): {html.escape(causal)}{more}.</p>"
        )
    else:
        parts.append("<p class=muted>Causal sites: none selected (no validation items, or the corruption did not "
                     "lower the attribute on them, so no threshold separates clean from corrupted).</p>")  # fmt: skip
    return "".join(parts)


def _step_map(out: Path, name: str, entry: dict[str, Any], key: str) -> str:
    """The attribution's site × step map of a case, with how far its per-site sums agree with the exact trace."""
    sites = ", ".join(entry["exact_top"])
    return (
        "<h4>When in the denoising chain: the site × step map (estimates)</h4>"
        f"<p>Attribution patching ({html.escape(entry['scorer'])}, restores from "
        f"{html.escape(entry['restore_from'])}, {_num(entry['items'], key + '.items')} items) estimates the effect "
        "of restoring each site at one step alone; exact patching of every site at every step would cost a "
        "sampling chain each. Against the exact trace above, its per-site sums have Spearman correlation "
        f"{_num(entry['spearman'], key + '.spearman', 2)} over {_num(entry['sites'], key + '.sites')} sites, and "
        f"its top {entry['k']} hold {_num(entry['top_recall'], key + '.top_recall', 2)} of the exact top "
        f"{entry['k']} ({html.escape(sites)}).</p>"
        + _img(out, f"trace/{name}/attribution/steps.png", "site × step attribution map")
    )


def _case_section(out: Path, name: str, entry: dict[str, Any]) -> str:
    key = f"cases.{name}"
    parts = [f"<h2 id='{html.escape(name)}'>{html.escape(name)}: {html.escape(entry['mode'])} "
             f"“{html.escape(entry['concept'])}” → “{html.escape(entry['target'])}”</h2>"]  # fmt: skip
    parts.append("<h3>Localization</h3>")
    parts.append(
        "<table><tr><th class=l>trace</th><th>clean score</th><th>corrupted score</th></tr>"
        f"<tr><td class=l>UNet</td><td>{_num(entry['unet_clean'], key + '.unet_clean')}</td>"
        f"<td>{_num(entry['unet_corrupted'], key + '.unet_corrupted')}</td></tr>"
        f"<tr><td class=l>text encoder</td><td>{_num(entry['text_clean'], key + '.text_clean')}</td>"
        f"<td>{_num(entry['text_corrupted'], key + '.text_corrupted')}</td></tr></table>"
    )
    for trace, field in (("UNet", "noise"), ("text-encoder", "text_noise")):
        if entry.get(field):
            parts.append(_noise_paragraph(trace, entry[field], f"{key}.{field}"))
    for trace, prefix in (("UNet", "unet"), ("text-encoder", "text")):
        if negligible_gap(entry[f"{prefix}_clean"], entry[f"{prefix}_corrupted"]):
            parts.append(
                f"<p class=bad>Corruption barely changed the {trace} trace's score (clean ≈ corrupted), so its "
                "indirect effects divide by a near-zero gap and are not meaningful; try a larger --noise.</p>"
            )
    parts.append(_localization_details(entry, key))
    parts.append(_img(out, f"trace/{name}/{DENOISER_TRACE}/trace.png", "UNet causal trace"))
    if entry.get("step_map"):
        parts.append(_step_map(out, name, entry["step_map"], f"{key}.step_map"))
    parts.append(_img(out, f"trace/{name}/text/trace.png", "text-encoder causal trace"))
    loco = entry["locogen"]
    parts.append(
        f"<p>LocoGen window: <b>{html.escape(', '.join(loco['best_sites']))}</b> — score "
        f"{_num(loco['best_score'], key + '.locogen.best_score')} "
        f"{_interval_text(loco.get('best_interval'), key + '.locogen.best_interval')} vs original "
        f"{_num(loco['original_score'], key + '.locogen.original_score')} "
        f"({_num(loco.get('n_items'), key + '.locogen.n_items')} items)</p>"
    )
    search = loco.get("window_search")
    if search and len(search["tried"]) > 1:
        steps = " → ".join(f"{t['window']} layers: {t['best_score']:.2f}" for t in search["tried"])
        parts.append(f"<p class=muted>Window search (best score per window size): {html.escape(steps)}.</p>")
    parts.append(_img(out, f"locogen/{name}/windows.png", "LocoGen window curve"))
    parts.append("<h3>Edits and evaluation</h3>")
    head = ("<tr><th class=l>method</th><th>params</th><th>edit s</th><th>efficacy: before → after</th>"
            "<th>generalization: before → after</th><th>fidelity (pixel Δ)</th></tr>")  # fmt: skip
    body = []
    for method, ev in entry["eval"].items():
        mk = f"{key}.eval.{method}"
        target_key = "target" if entry["mode"] == "update" else "concept"
        eff, gen = ev["efficacy"], ev["generalization"]
        body.append(
            f"<tr><td class=l>{html.escape(method)}</td>"
            f"<td>{_num(entry['edits'][method]['params'], f'{key}.edits.{method}.params')}</td>"
            f"<td>{_num(entry['edits'][method]['seconds'], f'{key}.edits.{method}.seconds')}</td>"
            f"<td>{_num(eff[target_key + '_before'], f'{mk}.efficacy.{target_key}_before', 2)} → "
            f"{_num(eff[target_key + '_after'], f'{mk}.efficacy.{target_key}_after', 2)}</td>"
            f"<td>{_num(gen[target_key + '_before'], f'{mk}.generalization.{target_key}_before', 2)} → "
            f"{_num(gen[target_key + '_after'], f'{mk}.generalization.{target_key}_after', 2)}</td>"
            f"<td>{_num(ev['fidelity'], f'{mk}.fidelity', 4)}</td></tr>"
        )
    parts.append(f"<table>{head}{''.join(body)}</table>")
    widened = (entry["edits"].get("locoedit") or {}).get("window_search")
    if widened:
        steps = " → ".join(f"{len(t['window'])} layers: {t['score']:.2f}" for t in widened["tried"])
        parts.append(
            "<p class=muted>LocoEdit window, grown from LocoGen's until the edit generalizes (leave-one-template-"
            f"out score of {html.escape(widened['attribute'])!s}, unedited {widened['unedited_score']:.2f}): "
            f"{html.escape(steps)}.</p>"
        )
    parts.append("<p class=muted>Rates are detection rates over the suite's seeds. For an update, efficacy is the "
                 "rate of the <i>new</i> fact on the concept's prompts.</p>")  # fmt: skip
    for method, ev in entry["eval"].items():
        rows = "".join(
            f"<tr><td class=l>{html.escape(n['prompt'])}</td>"
            f"<td>{_num(n['before'], f'{key}.eval.{method}.specificity.{i}.before', 2)}</td>"
            f"<td>{_num(n['after'], f'{key}.eval.{method}.specificity.{i}.after', 2)}</td></tr>"
            for i, n in enumerate(ev["specificity"])
        )
        parts.append(f"<table><tr><th class=l>specificity ({html.escape(method)}): neighbour</th><th>before</th>"
                     f"<th>after</th></tr>{rows}</table>")  # fmt: skip
        parts.append(_img(out, f"eval/{name}/{method}-grid.png", f"before/after images ({method})"))
    if entry.get("audit"):
        parts.append(_audit_section(name, entry["audit"], f"{key}.audit"))
    return "\n".join(parts)


def _asr(value: dict[str, Any] | None, key: str) -> str:
    """``ASR [low, high] (n)`` of one measured attack, with data keys."""
    if not value:
        return "—"
    return (f"{_num(value['asr'], key + '.asr', 2)} {_interval_text(value['interval'], key + '.interval')} "
            f"(n = {_num(value['n'], key + '.n')})")  # fmt: skip


def _audit_section(name: str, audits: dict[str, Any], key: str) -> str:
    """Per edit and attack: how often the removed concept comes back (ASR with its 95% Wilson interval)."""
    rows = []
    for method, attacks in audits.items():
        for attack, result in attacks.items():
            k = f"{key}.{method}.{attack}"
            link = f"<a href='audit/{html.escape(name)}/{html.escape(method)}/audit.html'>{html.escape(method)}</a>"
            if "skipped" in result:
                rows.append(f"<tr><td class=l>{link}</td><td class=l>{html.escape(attack)}</td>"
                            f"<td class=l colspan=2>skipped: {html.escape(result['skipped'])}</td></tr>")  # fmt: skip
            elif "rows" in result:
                for i, row in enumerate(result["rows"]):
                    label = f"{attack} ({row['fraction']:g} of the change taken back)"
                    rows.append(f"<tr><td class=l>{link}</td><td class=l>{html.escape(label)}</td>"
                                f"<td>{_asr(row, f'{k}.rows.{i}')}</td><td>—</td></tr>")  # fmt: skip
            else:
                rows.append(f"<tr><td class=l>{link}</td><td class=l>{html.escape(attack)}</td>"
                            f"<td>{_asr(result['edited'], k + '.edited')}</td>"
                            f"<td>{_asr(result['unedited'], k + '.unedited')}</td></tr>")  # fmt: skip
    return (
        "<h3>Does the removed concept come back? (a small audit)</h3>"
        "<p>Attack success rate (ASR): the share of attacked images in which the scorer reads the concept the edit "
        "removed, with its 95% Wilson interval; on the unedited model the same prompts show how often they draw the "
        "concept at all. The full audit (fine-tune revival, the learned prompt) is <code>diffloc audit</code>.</p>"
        "<table><tr><th class=l>edit</th><th class=l>attack</th><th>ASR, edited</th><th>ASR, unedited</th></tr>"
        + "".join(rows)
        + "</table>"
    )


#: One line per number the report shows.
METRIC_DEFINITIONS = (
    ("indirect effect", "(restored − corrupted) / (clean − corrupted) score: 1 = restoring that site alone brings the "
     "attribute fully back into the corrupted run, 0 = it brings nothing back."),
    ("LocoGen window", "the consecutive cross-attention layers whose reading of the target prompt moves the "
     "attribute most (removal: lowest score; update: highest)."),
    ("efficacy", "detection rate of the concept (for an update: of the new fact) on the prompts the edit was "
     "computed from, before → after the edit."),
    ("generalization", "the same rate on held-out paraphrases and compositions the edit never saw."),
    ("specificity", "mean retention of the neighbouring concepts' detection rates, after / before (capped at 1): "
     "1 = the edit left them alone."),
    ("fidelity", "mean absolute pixel change on unrelated prompts at equal seeds: 0 = identical images."),
    ("ASR", "attack success rate of an audit: the share of attacked images in which the scorer reads the concept "
     "the edit removed (0 = no attack brought it back)."),
)  # fmt: skip


def _summary_section(summary: dict[str, Any]) -> str:
    """One row per case: where the concept sits (top UNet sites, LocoGen window) and what each edit did."""
    cases = summary["cases"]
    methods = list(dict.fromkeys(m for entry in cases.values() for m in entry["eval"]))
    head = ("<tr><th class=l rowspan=2>case</th><th class=l rowspan=2>top UNet sites (indirect effect)</th>"
            "<th class=l rowspan=2>LocoGen window</th>"
            + "".join(f"<th colspan=3>{html.escape(m)}</th>" for m in methods)
            + "</tr><tr>" + "<th>efficacy</th><th>generalization</th><th>specificity</th>" * len(methods)
            + "</tr>")  # fmt: skip
    rows = []
    for name, entry in cases.items():
        key = f"cases.{name}"
        sites = ", ".join(
            f"{html.escape(short_label(site))} {_num(effect, f'{key}.unet_top.{i}.1', 2)}"
            for i, (site, effect) in enumerate(entry["unet_top"][:3])
        )
        window = ", ".join(short_label(s) for s in entry["locogen"]["best_sites"])
        cells = [f"<td class=l><a href='#{html.escape(name)}'>{html.escape(name)}</a></td>",
                 f"<td class=l>{sites}</td>", f"<td class=l>{html.escape(window)}</td>"]  # fmt: skip
        target = "target" if entry["mode"] == "update" else "concept"
        for method in methods:
            ev = entry["eval"].get(method)
            if ev is None:
                cells.append("<td colspan=3>—</td>")
                continue
            mk = f"{key}.eval.{method}"
            for label in ("efficacy", "generalization"):
                before, after = (f"{mk}.{label}.{target}_{when}" for when in ("before", "after"))
                cells.append(f"<td>{_num(ev[label][target + '_before'], before, 2)} → "
                             f"{_num(ev[label][target + '_after'], after, 2)}</td>")  # fmt: skip
            kept = [n["retention"] for n in ev["specificity"]]
            cells.append(f"<td>{sum(kept) / len(kept):.2f}</td>" if kept else "<td>—</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    definitions = "".join(f"<li><b>{html.escape(t)}</b>: {html.escape(d)}</li>" for t, d in METRIC_DEFINITIONS)
    return (f"<h2 id=summary>Summary</h2><table>{head}{''.join(rows)}</table>"
            f"<ul class=muted>{definitions}</ul>")  # fmt: skip


def render_report(out: Path, summary: dict[str, Any], suite: EvalSuite) -> str:
    """The report page as a string: a summary table and the metrics' definitions, then a section per case."""
    cases = "\n".join(_case_section(out, name, entry) for name, entry in summary["cases"].items())
    timing_rows = "".join(
        f"<tr><td class=l>{html.escape(k)}</td><td>{_num(v, f'timings_seconds.{k}', 2)}</td></tr>"
        for k, v in summary.get("timings_seconds", {}).items()
    )
    settings = (f"model <b>{html.escape(str(summary['model']))}</b>, scorer {html.escape(summary['scorer'])}, "
                f"diffloc {html.escape(summary['diffloc_version'])}; evaluation seeds {list(suite.seeds)}, "
                f"{suite.steps} steps, guidance {suite.guidance}")  # fmt: skip
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>diffloc report</title>"
        f"<style>{_STYLE}</style></head><body><h1>diffloc report</h1><p class=muted>{settings}</p>"
        f"{_summary_section(summary)}{cases}"
        f"<h2>Timings (seconds; 0 = reused from an earlier run)</h2><table>{timing_rows}</table>"
        "</body></html>"
    )


def write_report(out: Path, summary: dict[str, Any], suite: EvalSuite) -> Path:
    """Write ``report.html`` atomically next to the demo outputs."""
    page = render_report(out, summary, suite)
    return write_atomic(out / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
