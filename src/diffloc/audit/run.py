"""Run an audit: every attack against one edit, each attack success rate (ASR) with its 95% interval."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.audit.config import AuditConfig
from diffloc.audit.learned import learned_attack
from diffloc.audit.prompts import description_gap, description_prompts, paraphrase_prompts, spelling_prompts
from diffloc.audit.revival import finetune_revival, reverted
from diffloc.audit.target import AuditTarget, audit_target
from diffloc.editing.edit import Edit
from diffloc.engine.generate import GenerationConfig, classifier_free, generate
from diffloc.errors import DifflocError
from diffloc.eval.metrics import wilson_interval
from diffloc.eval.scorers import Scorer
from diffloc.models.base import LoadedModel

logger = logging.getLogger(__name__)

#: ``progress(label)`` called as each attack starts
AuditProgress = Callable[[str], None]
#: scorers that read ShapesWorld concepts by name
_WORLD_SCORERS = ("shapesworld-detectors",)
#: attacked images kept per measurement (the first ones) in ``attacks/<name>.png`` under an audit's ``out``
STRIP_IMAGES = 8


@dataclass(frozen=True, kw_only=True)
class Shown:
    """How many attacked images show the concept."""

    hits: int
    n: int
    scores: tuple[float, ...] = ()

    @property
    def asr(self) -> float:
        """Attack success rate: the share of images that show the concept."""
        return self.hits / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """ASR, its 95% Wilson interval and the counts."""
        low, high = wilson_interval(self.hits, self.n)
        return {"asr": self.asr, "interval": [low, high], "hits": self.hits, "n": self.n}


@dataclass(frozen=True, kw_only=True)
class AttackResult:
    """One attack: its prompts, the ASR on the edited model and on the unedited one (the same prompts), and
    per-setting rows for attacks with a dial (revert fraction, fine-tune steps); ``details`` holds what an attack
    learned or how it ran (the learned-prompt attack's objective, losses and embedding file)."""

    name: str
    prompts: tuple[str, ...] = ()
    edited: dict[str, Any] | None = None
    unedited: dict[str, Any] | None = None
    rows: tuple[dict[str, Any], ...] = ()
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"name": self.name, "prompts": list(self.prompts), "edited": self.edited, "unedited": self.unedited,
                "rows": list(self.rows), "skipped": self.skipped, "details": self.details}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """Everything an audit found (``audit.json``)."""

    target: AuditTarget
    edit: dict[str, Any]
    config: dict[str, Any]
    attacks: tuple[AttackResult, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def attack(self, name: str) -> AttackResult:
        """The result of attack ``name``."""
        return next(a for a in self.attacks if a.name == name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"target": self.target.to_dict(), "edit": self.edit, "config": self.config,
                "attacks": [a.to_dict() for a in self.attacks], "meta": self.meta}  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        """Write ``audit.json`` atomically under ``directory``."""
        return write_json_atomic(Path(directory) / "audit.json", self.to_dict())

    @staticmethod
    def load(directory: str | Path) -> AuditReport:
        """Read ``audit.json`` from ``directory``."""
        data = json.loads((Path(directory) / "audit.json").read_text())
        attacks = tuple(AttackResult(**{**a, "prompts": tuple(a["prompts"]), "rows": tuple(a["rows"])})
                        for a in data["attacks"])  # fmt: skip
        return AuditReport(target=AuditTarget(**data["target"]), edit=data["edit"], config=data["config"],
                           attacks=attacks, meta=data["meta"])  # fmt: skip


def shown(
    model: LoadedModel,
    prompts: Sequence[str],
    attribute: str,
    *,
    scorer: Scorer,
    config: AuditConfig,
    strip: Path | None = None,
) -> Shown:
    """Generate every prompt × ``config.seeds`` (in batches of ``config.max_batch`` rows) and count the images in
    which ``scorer`` reads ``attribute`` at or above ``config.threshold``; with ``strip``, the first
    :data:`STRIP_IMAGES` images are saved there as a labelled PNG."""
    generation = GenerationConfig(steps=config.steps, guidance=config.guidance)
    pairs = [(p, s) for p in prompts for s in config.seeds]
    per_batch = max(1, config.max_batch // (2 if classifier_free(model, generation) else 1))
    scores: list[float] = []
    kept: list[torch.Tensor] = []
    for start in range(0, len(pairs), per_batch):
        chunk = pairs[start : start + per_batch]
        images = generate(model, [p for p, _ in chunk], seeds=[s for _, s in chunk], config=generation)
        scores += [float(x) for x in scorer.score(images, [attribute] * len(chunk))]
        room = STRIP_IMAGES - sum(len(k) for k in kept)
        if strip is not None and room > 0:
            kept.append(images[:room].detach().cpu())
    if strip is not None and kept:
        from diffloc.report.plots import image_strip, save_figure

        first = torch.cat(kept)
        labels = [f"{p} #{s}: {x:.2f}" for (p, s), x in zip(pairs, scores, strict=True)][: len(first)]
        save_figure(image_strip(first, labels, columns=4), strip)
    hits = sum(1 for x in scores if x >= config.threshold)
    return Shown(hits=hits, n=len(scores), scores=tuple(round(x, 6) for x in scores))


def audit(
    model: LoadedModel,
    edit: Edit,
    *,
    scorer: Scorer,
    config: AuditConfig | None = None,
    concept: str | None = None,
    attribute: str | None = None,
    out: str | Path | None = None,
    progress: AuditProgress | None = None,
) -> AuditReport:
    """Try to bring back the concept ``edit`` erased, with every attack of ``config``; the model is left as it
    was (the edit is applied only while attacks run, and every weight is checked against its value before).

    Raises:
        EditError: the edit was made for another model (its base weights differ), or is already applied.
        ConfigError: the erased concept cannot be known (see :func:`~diffloc.audit.target.audit_target`).
    """
    config = config or AuditConfig()
    start = time.perf_counter()
    edit.check_base(model)
    target = audit_target(dict(edit.request), world=scorer.name in _WORLD_SCORERS, concept=concept,
                          attribute=attribute)  # fmt: skip
    scorer.check(target.attribute)
    before = model.fingerprint()
    seen = [t.format(target.concept) for t in edit.request.get("templates", ()) if "{}" in t]
    paraphrases = paraphrase_prompts(target, seen, config.prompts)
    strips = None if out is None else Path(out) / "attacks"
    edited: dict[tuple[str, ...], dict[str, Any]] = {}  # the edited model's measurement per prompt set, made once
    results = []
    for name in config.attacks:
        if progress is not None:
            progress(name)
        results.append(_attack(name, model, edit, target, paraphrases, scorer=scorer, config=config, strips=strips,
                               edited=edited))  # fmt: skip
    if model.fingerprint() != before:
        raise DifflocError("the audit left the model's weights changed; this is a bug in diffloc, please report it")
    report = AuditReport(
        target=target,
        edit={"method": edit.method, "family": edit.family, "sites": list(edit.stats.get("sites", ())),
              "result_hashes": dict(edit.result_hashes)},
        config={k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
        attacks=tuple(results),
        meta={"diffloc_version": __version__, "model": model.source, "weights": before, "scorer": scorer.name,
              "seconds": round(time.perf_counter() - start, 1), "finetune_steps": list(config.finetune_steps)},
    )  # fmt: skip
    if out is not None:
        from diffloc.report.audit_html import write_audit_report

        report.save(out)
        write_audit_report(out, report.to_dict())
    return report


def _attack(
    name: str, model: LoadedModel, edit: Edit, target: AuditTarget, paraphrases: list[str], *, scorer: Scorer,
    config: AuditConfig, strips: Path | None, edited: dict[tuple[str, ...], dict[str, Any]],
) -> AttackResult:  # fmt: skip
    """Run one attack; with ``strips``, the first images on the attacked model go to ``strips/<label>.png``.
    ``edited`` holds the edited model's measurement of each prompt set already made (the fine-tune attack starts
    from the paraphrase attack's), and receives the ones this attack makes."""

    def measure(prompts: Sequence[str], label: str | None = None) -> dict[str, Any]:
        path = None if strips is None or label is None else strips / f"{label}.png"
        return shown(model, prompts, target.attribute, scorer=scorer, config=config, strip=path).to_dict()

    def measure_edited(prompts: Sequence[str], label: str | None = None) -> dict[str, Any]:
        """The measurement with the edit applied by the caller, reused when this prompt set was measured."""
        key = tuple(prompts)
        if key not in edited:
            edited[key] = measure(prompts, label)
        return edited[key]

    if name in ("paraphrase", "spelling", "description"):
        if name == "description" and (gap := description_gap(target)) is not None:
            return AttackResult(name=name, skipped=gap)
        prompts = {"paraphrase": paraphrases, "spelling": spelling_prompts(target, config.prompts),
                   "description": description_prompts(target, config.prompts)}[name]  # fmt: skip
        unedited = measure(prompts)
        with edit.applied(model):
            after = measure_edited(prompts, name)
        return AttackResult(name=name, prompts=tuple(prompts), edited=after, unedited=unedited)
    if name == "learned":
        outcome = learned_attack(model, edit, target, paraphrases, config=config, scorer=scorer, measure=measure,
                                 out=strips)  # fmt: skip
        if isinstance(outcome, str):
            return AttackResult(name=name, skipped=outcome)
        attacked, after, unedited, details = outcome
        return AttackResult(name=name, prompts=attacked, edited=after, unedited=unedited, details=details)
    if name == "revert":
        rows = []
        for fraction in config.revert_fractions:
            with reverted(edit, fraction).applied(model):
                rows.append({"fraction": fraction, **measure(paraphrases, f"revert-{fraction:g}")})
        return AttackResult(name=name, prompts=tuple(paraphrases), rows=tuple(rows))
    if target.kind is None:
        return AttackResult(name=name, skipped="fine-tuning needs images without the concept; ShapesWorld renders "
                                               "them, other models have none shipped")  # fmt: skip
    with edit.applied(model):
        after = measure_edited(paraphrases)
        rows = finetune_revival(model, target, checkpoints=config.finetune_steps, lr=config.finetune_lr,
                                batch=config.finetune_batch, seed=config.seed,
                                measure=lambda: measure(paraphrases, "finetune"))  # fmt: skip
    return AttackResult(name=name, prompts=tuple(paraphrases), edited=after, rows=tuple(rows))
