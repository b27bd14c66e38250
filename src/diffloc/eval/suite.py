"""Evaluation suites (YAML) and :func:`evaluate`: what an edit changed and what it left alone.

A suite lists concept *cases*. Each case names the concept, what the edit should do (``remove`` it, or
``update`` it to a new fact), the prompts the edit was made for (efficacy), held-out paraphrases and
compositions (generalization), and neighbouring prompts whose own attribute must survive (specificity).
Unrelated prompts measure fidelity: how far edited images move from unedited ones at equal seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.config import check_fields, from_dict, read_yaml
from diffloc.engine.generate import GenerationConfig
from diffloc.errors import ConfigError
from diffloc.eval.measure import fidelity, measure
from diffloc.eval.metrics import removal_efficacy, retention
from diffloc.eval.scorers import Scorer
from diffloc.models.base import LoadedModel
from diffloc.tracing.store import run_all
from diffloc.validate import check_count, check_seeds, check_threshold

if TYPE_CHECKING:
    from diffloc.tracing.executors import Executor


@dataclass(frozen=True, kw_only=True)
class Neighbour:
    """A prompt whose attribute an edit must not disturb."""

    prompt: str
    attribute: str

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.prompt.strip() or not self.attribute.strip():
            raise ConfigError("a neighbour needs a non-empty prompt and attribute")


@dataclass(frozen=True, kw_only=True)
class ConceptCase:
    """One concept to edit and how to judge the edit.

    Attributes:
        name: label used in reports.
        kind: ``style``, ``object`` or ``fact``.
        concept: the words the edit targets (e.g. ``"van goo"``).
        target: what the concept should become (anchor for removal, new fact for an update).
        mode: ``remove`` or ``update``.
        attribute: text scored for the concept (e.g. ``"in the style of van goo"``).
        target_attribute: text scored for the new fact (``update`` only).
        prompts: the edit's own prompts (efficacy).
        heldout: paraphrases and compositions not used to compute the edit (generalization).
        neighbours: prompts whose attribute must survive (specificity).
        target_prompt: the prompt a LocoGen window reads instead (default: the first prompt with the concept
            replaced by the target).
        preserve: concepts the edit keeps in the same solve (UCE-style preservation set), e.g. other artists.
        preserve_prompts: whole captions the edit keeps at every token position. They must not be neighbour
            or held-out prompts, which would make the specificity/generalization measurement circular.
        locoedit_target: LocoEdit's target when it differs from ``target`` (the reference ``loco_edit.py`` maps
            to "a painting" where the Diff-QuickFix notebook maps to "painting"); ``""``: ``target``.
    """

    name: str
    kind: str
    concept: str
    target: str
    mode: str
    attribute: str
    prompts: tuple[str, ...]
    heldout: tuple[str, ...]
    neighbours: tuple[Neighbour, ...]
    target_attribute: str = ""
    target_prompt: str = ""
    preserve: tuple[str, ...] = ()
    preserve_prompts: tuple[str, ...] = ()
    locoedit_target: str = ""

    def __post_init__(self) -> None:
        check_fields(self)
        for label in ("name", "concept", "target", "attribute"):
            if not getattr(self, label).strip():
                raise ConfigError(f"case {self.name!r}: {label} is empty")
        if self.kind not in ("style", "object", "fact"):
            raise ConfigError(f"case {self.name!r}: kind must be style, object or fact, got {self.kind!r}")
        if self.mode not in ("remove", "update"):
            raise ConfigError(f"case {self.name!r}: mode must be remove or update, got {self.mode!r}")
        if self.mode == "update" and not self.target_attribute.strip():
            raise ConfigError(f"case {self.name!r}: an update needs target_attribute (the new fact to detect)")
        for label in ("prompts", "heldout"):
            if not getattr(self, label):
                raise ConfigError(f"case {self.name!r}: {label} is empty")
        for prompt in (*self.prompts, *self.heldout):
            if self.concept.lower() not in prompt.lower():
                raise ConfigError(
                    f"case {self.name!r}: prompt {prompt!r} does not contain the concept {self.concept!r}"
                )
        if not self.target_prompt:
            object.__setattr__(self, "target_prompt", self.prompts[0].replace(self.concept, self.target))
        if not isinstance(self.locoedit_target, str):
            raise ConfigError(f"case {self.name!r}: locoedit_target must be a string, got {self.locoedit_target!r}")
        measured = {" ".join(p.lower().split()) for p in (*self.heldout, *(n.prompt for n in self.neighbours))}
        for prompt in self.preserve_prompts:
            if " ".join(prompt.lower().split()) in measured:
                raise ConfigError(
                    f"case {self.name!r}: preserved prompt {prompt!r} is also a held-out or neighbour prompt; "
                    "preserving what is measured would make the measurement circular"
                )


@dataclass(frozen=True, kw_only=True)
class EvalSuite:
    """A set of cases plus sampling settings and unrelated prompts for fidelity."""

    cases: tuple[ConceptCase, ...]
    unrelated: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int = 20
    guidance: float = 7.5
    max_batch: int = 32
    threshold: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.cases:
            raise ConfigError("suite has no cases")
        if not self.unrelated:
            raise ConfigError("unrelated is empty; give at least one unrelated prompt (fidelity is measured on them)")
        check_seeds(self.seeds)
        GenerationConfig(steps=self.steps, guidance=self.guidance)
        check_count("max_batch", self.max_batch)
        check_threshold(self.threshold)
        names = [case.name for case in self.cases]
        if len(set(names)) != len(names):
            raise ConfigError(f"case names must be unique, got {names}")

    def case(self, name: str) -> ConceptCase:
        """The case called ``name``."""
        for case in self.cases:
            if case.name == name:
                return case
        raise ConfigError(f"no case {name!r} in the suite; valid: {', '.join(c.name for c in self.cases)}")


def load_suite(path: str | Path) -> EvalSuite:
    """Load a suite YAML strictly: unknown keys, missing fields, values of the wrong type or out of range raise a
    one-line :class:`ConfigError` naming the file and the field (``suite.yaml: cases[0]: concept must be a
    string, got int 5``)."""
    return from_dict(EvalSuite, read_yaml(path), where=Path(path).name)


def shipped_suite_path(name: str = "shapesworld") -> Path:
    """Path of a suite shipped with diffloc."""
    return Path(__file__).resolve().parent.parent / "assets" / "suites" / f"{name}.yaml"


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """Metrics of one edit on one suite (rates are detection rates in [0, 1]).

    Attributes:
        cases: per case: efficacy/generalization before and after, per-neighbour retention.
        fidelity: mean absolute pixel change on unrelated prompts (0 = untouched).
        meta: edit method, model, scorer, seeds, timings, version.
    """

    cases: dict[str, dict[str, Any]]
    fidelity: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"cases": self.cases, "fidelity": self.fidelity, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read a report written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        return cls(cases=data["cases"], fidelity=float(data["fidelity"]), meta=data["meta"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def evaluate(
    model: LoadedModel,
    edit: Any,
    suite: EvalSuite,
    *,
    scorer: Scorer,
    cases: list[str] | None = None,
    before: dict[str, Any] | None = None,
    out: str | Path | None = None,
    executor: Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Measure an edit: efficacy, generalization, specificity and fidelity against the unedited model.

    Args:
        model: the unedited model (the edit is applied only inside this call and reverted after).
        edit: an :class:`~diffloc.editing.edit.Edit`, or a :class:`~diffloc.editing.ablation.NeuronAblation`
            (checked against the model, then applied to every run as an intervention).
        suite: the suite.
        scorer: image scorer (ShapesWorld detectors or CLIP).
        cases: names of the cases the edit addresses (default: all).
        before: a :func:`~diffloc.eval.measure.measure` of the unedited model to reuse across edits (with
            ``out``, the unedited items stored there are reused anyway).
        out: directory for resumable per-item results (``out/items``; ``None``: keep nothing on disk).
        executor: who generates and scores the items (default: this process; :mod:`diffloc.tracing.executors`).
        progress: called with (images done, images total) of each of the three measurements in turn.

    Returns:
        :class:`EvalReport`.

    Raises:
        SweepIncomplete: ``executor`` is one shard and other shards' items are still missing (every one of
            the three measurements computed its share first).
    """
    from diffloc.editing.ablation import NeuronAblation

    chosen = [suite.case(n) for n in cases] if cases else list(suite.cases)
    start = time.perf_counter()
    if isinstance(edit, NeuronAblation):
        edit.check_model(model)
    sweeps: dict[str, Any] = {"out": out, "executor": executor, "progress": progress}
    before, after, pixel_change = run_all(
        lambda: before if before is not None else measure(model, suite, scorer, chosen, **sweeps),
        lambda: measure(model, suite, scorer, chosen, edit=edit, **sweeps),
        lambda: fidelity(model, edit, suite, scorer, **sweeps),
    )
    report: dict[str, dict[str, Any]] = {}
    for case in chosen:
        attr = case.target_attribute if case.mode == "update" else case.attribute

        def rate(state: dict[str, Any], prompts: tuple[str, ...], attribute: str) -> float:
            return _mean([state["rates"][(p, attribute)] for p in prompts])

        entry: dict[str, Any] = {"kind": case.kind, "mode": case.mode, "concept": case.concept, "target": case.target}
        for label, prompts in (("efficacy", case.prompts), ("generalization", case.heldout)):
            b, a = rate(before, prompts, case.attribute), rate(after, prompts, case.attribute)
            entry[label] = {"concept_before": b, "concept_after": a, "removed": removal_efficacy(b, a)}
            if case.mode == "update":
                entry[label].update(target_before=rate(before, prompts, attr), target_after=rate(after, prompts, attr))
        entry["specificity"] = [
            {
                "prompt": n.prompt,
                "attribute": n.attribute,
                "before": before["rates"][(n.prompt, n.attribute)],
                "after": after["rates"][(n.prompt, n.attribute)],
                "retention": retention(
                    before["rates"][(n.prompt, n.attribute)], after["rates"][(n.prompt, n.attribute)]
                ),
            }
            for n in case.neighbours
        ]
        report[case.name] = entry
    meta = {
        "diffloc_version": __version__,
        "edit": edit.metadata() if hasattr(edit, "metadata") else str(edit),
        "model": model.source,
        "scorer": scorer.name,
        "suite": {k: v for k, v in asdict(suite).items() if k != "cases"},
        "seconds": round(time.perf_counter() - start, 3),
    }
    return EvalReport(cases=report, fidelity=pixel_change, meta=meta)
