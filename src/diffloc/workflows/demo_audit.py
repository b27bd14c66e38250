"""The demo's audit stage: does each edit's removed concept come back under a small attack budget?

Each edit of the demo is audited (:func:`diffloc.audit.audit`) with the prompt attacks (held-out phrasings,
spellings, the concept's description) and the location revival (half and all of the edit's weight change taken
back), on a few prompts at the localization's sampling settings. The full audit (fine-tune revival, the learned
prompt, more prompts and seeds) is ``diffloc audit``; this stage only says, next to every edit, whether the cheap
attacks already undo it.
"""

from __future__ import annotations

from typing import Any

from diffloc.audit.config import AuditConfig
from diffloc.audit.run import AuditReport

#: the attacks the demo runs on every edit (the cheap ones: no training, no optimization)
DEMO_ATTACKS = ("paraphrase", "spelling", "description", "revert")
#: prompts per prompt attack in the demo
DEMO_PROMPTS = 4
#: fractions of the edit's weight change the demo's revival takes back
DEMO_REVERT = (0.5, 1.0)


def demo_audit_config(seeds: tuple[int, ...], steps: int, guidance: float, max_batch: int) -> AuditConfig:
    """The demo's small audit budget at the localization's sampling settings."""
    return AuditConfig(attacks=DEMO_ATTACKS, seeds=seeds, steps=steps, guidance=guidance, max_batch=max_batch,
                       prompts=DEMO_PROMPTS, revert_fractions=DEMO_REVERT)  # fmt: skip


def audit_entry(report: AuditReport) -> dict[str, Any]:
    """What the demo report shows of an audit: per attack, the ASR on the edited and the unedited model with
    intervals and sample sizes (the revival: per fraction taken back)."""
    entry: dict[str, Any] = {}
    for attack in report.attacks:
        if attack.skipped:
            entry[attack.name] = {"skipped": attack.skipped}
        elif attack.rows:
            entry[attack.name] = {"rows": list(attack.rows), "unedited": attack.unedited}
        else:
            entry[attack.name] = {"edited": attack.edited, "unedited": attack.unedited}
    return entry
