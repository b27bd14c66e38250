"""The HTML page of an erasure audit (``audit.html`` beside ``audit.json``); every number comes from the JSON."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from diffloc.atomic import write_atomic
from diffloc.report.html import _STYLE as STYLE
from diffloc.report.html import _img as image_or_note
from diffloc.report.html import _num as number


def _asr_cells(entry: dict[str, Any] | None, key: str) -> str:
    """ASR, its interval and n as table cells (dashes where the measurement does not exist)."""
    if entry is None:
        return "<td>—</td><td>—</td><td>—</td>"
    low, high = entry["interval"]
    return (f"<td>{number(entry['asr'], key + '.asr', 2)}</td><td>[{number(low, key + '.interval.0', 2)}, "
            f"{number(high, key + '.interval.1', 2)}]</td><td>{number(entry['n'], key + '.n')}</td>")  # fmt: skip


def _attack_rows(index: int, attack: dict[str, Any]) -> list[str]:
    """Table rows of one attack: edited and unedited ASR, or one row per dial setting."""
    key = f"attacks.{index}"
    name = html.escape(attack["name"])
    if attack["skipped"]:
        return [f'<tr><td class="l">{name}</td><td class="l" colspan="7">skipped: '
                f"{html.escape(attack['skipped'])}</td></tr>"]  # fmt: skip
    if not attack["rows"]:
        edited = _asr_cells(attack["edited"], key + ".edited")
        unedited = _asr_cells(attack["unedited"], key + ".unedited")
        return [f'<tr><td class="l">{name}</td><td class="l">as edited</td>{edited}{unedited}</tr>']
    dial = "fraction" if attack["name"] == "revert" else "steps"
    rows = []
    for i, row in enumerate(attack["rows"]):
        setting = f"{row[dial]:g} of the change taken back" if dial == "fraction" else f"after {row[dial]} steps"
        rows.append(f'<tr><td class="l">{name}</td><td class="l">{html.escape(setting)}</td>'
                    f"{_asr_cells(row, f'{key}.rows.{i}')}<td>—</td><td>—</td><td>—</td></tr>")  # fmt: skip
    return rows


def _learned_note(index: int, attack: dict[str, Any]) -> str:
    """How the learned-prompt attack's tokens were learned, and what they are nearest to (from its details)."""
    details, key = attack.get("details") or {}, f"attacks.{index}.details"
    if "objective" not in details:
        return ""
    nearest = {arm: ", ".join(html.escape(t["token"].replace("</w>", "")) for t in tokens)
               for arm, tokens in details["nearest"].items()}  # fmt: skip
    saved = f"; embeddings in <code>{html.escape(details['embeddings'])}</code>" if "embeddings" in details else ""
    return (f'<p class="muted">{number(details["tokens"], key + ".tokens")} free tokens in the name\'s place, '
            f"started at the words <i>{html.escape(details['start'])}</i>, learned for the "
            f"{html.escape(details['objective'])} objective in {number(details['steps'], key + '.steps')} Adam steps "
            f"(learning rate {number(details['lr'], key + '.lr', 4)}) on "
            f"{number(details['optimized_on'], key + '.optimized_on')} captions; "
            f"{number(details['unseen_prompts'], key + '.unseen_prompts')} of the attacked prompts were not among "
            f"them. Nearest vocabulary tokens: edited model {nearest.get('edited', '—')}; unedited "
            f"{nearest.get('unedited', '—')}{saved}.</p>")  # fmt: skip


def render_audit(out: Path, report: dict[str, Any]) -> str:
    """The page of ``report`` (:meth:`AuditReport.to_dict`), images read from ``out/attacks``."""
    target, edit, meta = report["target"], report["edit"], report["meta"]
    rows = [row for i, attack in enumerate(report["attacks"]) for row in _attack_rows(i, attack)]
    images = []
    for index, attack in enumerate(report["attacks"]):
        labels = (
            [attack["name"]]
            if not attack["rows"]
            else ([f"revert-{r['fraction']:g}" for r in attack["rows"]] if attack["name"] == "revert" else ["finetune"])
        )
        for label in labels if not attack["skipped"] else []:
            images.append(f"<h3>{html.escape(label)}</h3>" + image_or_note(out, f"attacks/{label}.png", label))
        if not attack["skipped"]:
            images.append(_learned_note(index, attack))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>diffloc audit</title>
<style>{STYLE}</style></head><body>
<h1>Erasure audit</h1>
<p>{html.escape(edit["method"])} edit of <b>{html.escape(target["concept"])}</b> (to
{html.escape(target["target"])}), looked for as <i>{html.escape(target["attribute"])}</i> by
{html.escape(meta["scorer"])}; model {html.escape(str(meta["model"]))}. Attack success rate (ASR): the share of
attacked images in which the scorer reads the concept, with its 95% Wilson interval and number of images
({number(meta["seconds"], "meta.seconds", 0)} s).</p>
<table><tr><th class="l">attack</th><th class="l">model</th><th>ASR</th><th>95% interval</th><th>n</th>
<th>unedited ASR</th><th>95% interval</th><th>n</th></tr>
{"".join(rows)}</table>
<h2>Attacked images</h2>
<p class="muted">The first images of each attack on the attacked model, with the scorer's reading.</p>
{"".join(images)}
</body></html>
"""


def write_audit_report(out: str | Path, report: dict[str, Any]) -> Path:
    """Write ``audit.html`` atomically under ``out``."""
    path = Path(out) / "audit.html"
    page = render_audit(Path(out), report)
    return write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
