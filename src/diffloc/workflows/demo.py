"""The end-to-end demo: localize, edit and evaluate every case of a suite, then write an HTML report.

Stages (each skipped on rerun when its outputs exist; sweeps also resume item by item):

1. ``trace/<case>/unet`` and ``trace/<case>/text`` — causal tracing of the UNet and text encoder, and
   ``trace/<case>/attribution`` — the UNet trace's site × step map, estimated by attribution patching;
2. ``locogen/<case>`` — the cross-attention window that controls the attribute;
3. ``edits/<case>/<method>`` — Diff-QuickFix and LocoEdit (on the LocoGen window, widened until the edit
   generalizes) as saved Edit artifacts;
4. ``eval/<case>/<method>.json`` — efficacy, generalization, specificity, fidelity;
   ``audit/<case>/<method>`` — does the removed concept come back under the cheap attacks (a small budget);
5. ``report.html`` + ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffloc import __version__
from diffloc.atomic import write_json_atomic
from diffloc.audit.run import AuditReport, audit
from diffloc.engine.generate import GenerationConfig, generate
from diffloc.errors import ConfigError, SweepIncomplete
from diffloc.eval.suite import ConceptCase, EvalReport, EvalSuite, evaluate, measure
from diffloc.models.base import LoadedModel
from diffloc.report.plots import (
    image_strip,
    plot_denoiser_trace,
    plot_step_effects,
    plot_text_trace,
    plot_windows,
    save_figure,
)
from diffloc.scoring import Scorer
from diffloc.tracing.causal import causal_trace, trace_text
from diffloc.tracing.config import LocoGenConfig, TraceConfig
from diffloc.tracing.executors import Executor, ShardExecutor
from diffloc.tracing.locogen import locogen_search
from diffloc.tracing.results import TraceResult, WindowResult
from diffloc.validate import check_count, check_noise, check_positive, check_seeds
from diffloc.workflows.demo_audit import audit_entry, demo_audit_config
from diffloc.workflows.step_map import STEP_MAP_DIR, step_map, step_map_entry

logger = logging.getLogger(__name__)

METHODS = ("quickfix", "locoedit")
#: ``progress(label, stages_done, stages_total)``; ``label`` names the stage, with runs done inside a sweep
StageFn = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Effort settings of the demo (the suite sets sampling for evaluation)."""

    trace_seeds: tuple[int, ...] = (0, 1)
    #: corruption std; ``None``: 3 x the token-embedding std (TraceConfig default); ``"auto"``: per case, the
    #: smallest multiple of that std that halves the attribute's score in every traced image
    #: (``diffloc.tracing.calibrate``)
    noise: float | str | None = "auto"
    trace_prompts: int = 2
    text_seeds: tuple[int, ...] = (0, 1, 2)
    #: held-out prompts per case whose items (× ``trace_seeds``) choose the causal-site threshold
    validation_prompts: int = 2
    #: where UNet restores read their clean value (``same-latent`` or ``trajectory``)
    restore_from: str = "same-latent"
    #: bootstrap resamples of every interval over items (0: none)
    bootstrap: int = 2000
    #: edit templates: ``"case"`` (the concept alone, then the case's own prompts; :func:`edit_templates`) or
    #: ``"reference"`` (each method's reference templates: the Diff-QuickFix notebook's four, ``loco_edit.py``'s
    #: four)
    edit_templates: str = "case"
    locogen_window: int = 2
    #: widen the window (m, 2m, 4m, 8m) until it controls the attribute
    #: (:func:`~diffloc.tracing.locogen.locogen_search`); needs a probability-like scorer (ShapesWorld's detectors)
    locogen_widen: bool = True
    #: denoising steps of the traces, the noise calibration, LocoGen and LocoEdit's window search (the
    #: evaluation samples with the suite's own steps). 10 halves the localization's cost; ShapesWorld's DDIM
    #: sampler (trailing timesteps, zero terminal SNR) draws the demo's concepts at 10 steps as at 20, and each
    #: trace records its clean score, so a setting that fails to draw the concept shows in the report.
    steps: int = 10
    guidance: float = 7.5
    max_batch: int = 32
    #: LocoEdit keys: ``"subject+eos"`` (default here: ShapesWorld keeps concepts at EOS) or ``"subject"``
    locoedit_positions: str = "subject+eos"
    #: LocoEdit values: ``"template"`` (default here) or ``"bare"`` (the reference)
    locoedit_target_mode: str = "template"
    #: grow LocoEdit's window beyond LocoGen's until the *edit* generalizes, judged leave-one-template-out on
    #: the edit's own templates (:func:`~diffloc.workflows.widening.locoedit_search`; probability-like scorer)
    locoedit_widen: bool = True
    #: weight of the suite's preserved concepts/captions in both editors' solves (UCE's scale)
    preserve_weight: float = 10.0
    #: estimate the UNet trace's site × step map by attribution patching (one backward pass per batch of the
    #: trace's items; :mod:`diffloc.workflows.step_map`), where the scorer is differentiable
    step_map: bool = True
    #: audit every edit with the cheap attacks (prompt attacks and location revival, a few prompts;
    #: :mod:`diffloc.workflows.demo_audit`)
    audit: bool = True

    def __post_init__(self) -> None:
        from diffloc.editing.locoedit import POSITIONS, TARGET_MODES
        from diffloc.engine.sources import RESTORE_SOURCES

        check_seeds(self.trace_seeds, "trace_seeds")
        check_seeds(self.text_seeds, "text_seeds")
        GenerationConfig(steps=self.steps, guidance=self.guidance)
        check_count("max_batch", self.max_batch, low=2)
        check_count("trace_prompts", self.trace_prompts)
        check_count("locogen_window", self.locogen_window)
        check_positive("preserve_weight", self.preserve_weight)
        if isinstance(self.noise, str) and self.noise != "auto":
            raise ConfigError(f"noise must be a number >= 0, 'auto' or None, got {self.noise!r}")
        if self.restore_from not in RESTORE_SOURCES:
            raise ConfigError(f"restore_from must be one of {', '.join(RESTORE_SOURCES)}, got {self.restore_from!r}")
        if self.edit_templates not in ("case", "reference"):
            raise ConfigError(f"edit_templates must be 'case' or 'reference', got {self.edit_templates!r}")
        if self.noise is not None and not isinstance(self.noise, str):
            check_noise(self.noise)
        if self.locoedit_positions not in POSITIONS:
            raise ConfigError(
                f"locoedit_positions must be one of {', '.join(POSITIONS)}, got {self.locoedit_positions!r}"
            )
        if self.locoedit_target_mode not in TARGET_MODES:
            raise ConfigError(
                f"locoedit_target_mode must be one of {', '.join(TARGET_MODES)}, got {self.locoedit_target_mode!r}"
            )

    def check_items(self, suite: EvalSuite) -> None:
        """Refuse, before any stage runs, traces with too few items for their intervals.

        Raises:
            ConfigError: a case's UNet trace or text trace has fewer items than an interval needs.
        """
        _check_demo_items(self, suite)


def _check_demo_items(config: DemoConfig, suite: EvalSuite) -> None:
    """Refuse intervals from too few items before any stage runs (every case's traces and LocoGen)."""
    from diffloc.tracing.statistics import check_items

    intervals = TraceConfig(bootstrap=config.bootstrap).intervals
    for case in suite.cases:
        prompts = min(config.trace_prompts, len(case.prompts))
        check_items(prompts * len(config.trace_seeds), intervals, f"UNet-trace items of case {case.name!r}")
        check_items(len(config.text_seeds), intervals, f"text-trace items of case {case.name!r}")


def _cached(
    reuse: bool, path: Path, marker: str, load: Callable[[Path], Any], compute: Callable[[], Any]
) -> tuple[Any, bool]:
    """``load(path)`` when ``reuse`` and the stage's ``marker`` file exists (``""``: ``path`` is the file), else
    ``compute()``."""
    if reuse and (path / marker if marker else path).is_file():
        try:
            return load(path), True
        except Exception:
            logger.warning("recomputing unreadable stage output %s", path)
    return compute(), False


def run_demo(
    model: LoadedModel,
    suite: EvalSuite,
    scorer: Scorer,
    out: Path,
    *,
    config: DemoConfig | None = None,
    progress: StageFn | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run every stage for every case; returns the summary written to ``summary.json``.

    ``executor`` computes the items of the sweeps (traces, LocoGen, evaluation): this process by default, or Ray
    workers (:mod:`diffloc.tracing.executors`). A :class:`~diffloc.tracing.executors.ShardExecutor` computes
    its share of every trace and LocoGen sweep it can reach and then raises :class:`SweepIncomplete`: the edits
    and the evaluation, which need the finished localization, are left to a run without a shard.
    """
    config = config or DemoConfig()
    config.check_items(suite)
    reuse = _same_run(out, run_key(model, suite, scorer, config))
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"diffloc_version": __version__, "model": model.source, "scorer": scorer.name,
                               "demo_config": {**config.__dict__}, "cases": {}}  # fmt: skip
    total = len(suite.cases) * 7
    done = 0

    def tick(stage: str, runs: tuple[int, int] | None = None) -> None:
        """Report a finished stage, or (with ``runs``) progress inside the current one."""
        nonlocal done
        if runs is None:
            done += 1
        if progress is not None:
            progress(stage if runs is None else f"{stage} {runs[0]}/{runs[1]} runs", done, total)

    # + the unedited measurement, reused by every evaluation; the sweeps a shard left incomplete
    shared: dict[str, Any] = {"reuse": reuse, "executor": executor, "incomplete": []}
    for case in suite.cases:
        entry = _run_case(model, suite, scorer, out, case, config, timings, tick, shared)
        if entry is not None:
            summary["cases"][case.name] = entry
    if isinstance(executor, ShardExecutor):
        raise _shard_done(executor, shared["incomplete"])
    summary["timings_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    write_json_atomic(out / "summary.json", summary)
    from diffloc.report.html import write_report

    write_report(out, summary, suite)
    return summary


def _shard_done(shard: ShardExecutor, incomplete: list[SweepIncomplete]) -> SweepIncomplete:
    """What a shard of the demo did, and what is left to do."""
    if not incomplete:
        return SweepIncomplete(
            f"{shard.describe()}: every trace and LocoGen sweep is complete; run without --shard to compute the "
            "edits, the evaluation and the report",
            computed=0, reused=0, missing=0,
        )  # fmt: skip
    computed, reused, missing = (sum(getattr(e, k) for e in incomplete) for k in ("computed", "reused", "missing"))
    return SweepIncomplete(
        f"{shard.describe()}: computed {computed} items of {len(incomplete)} incomplete sweeps ({reused} were done "
        f"before, {missing} belong to other shards); run every shard, then once without --shard to finish (later "
        "LocoGen window sizes, edits, evaluation, report)",
        computed=computed, reused=reused, missing=missing,
    )  # fmt: skip


def _sweep(shared: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, or ``None`` when it is a shard's incomplete share of a sweep (recorded in ``shared``)."""
    try:
        return compute()
    except SweepIncomplete as exc:
        shared["incomplete"].append(exc)
        return None


def run_key(model: LoadedModel, suite: EvalSuite, scorer: Scorer, config: DemoConfig) -> dict[str, Any]:
    """Everything a demo's outputs depend on: weights, suite, scorer, settings and diffloc's version."""
    from dataclasses import asdict

    return json.loads(json.dumps({
        "diffloc_version": __version__, "model": model.source, "weights": model.fingerprint(),
        "scorer": scorer.name, "suite": asdict(suite), "config": asdict(config),
    }))  # fmt: skip


def _same_run(out: Path, key: dict[str, Any]) -> bool:
    """Whether ``out`` holds stages of a run with this key; records the key. A different key means every
    stage is recomputed (item-level sweep caches are keyed on their own and still resume)."""
    path = out / "run-key.json"
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
    if previous is not None and previous != key:
        changed = sorted(k for k in key if previous.get(k) != key.get(k))
        logger.warning("demo output %s was made with other %s; recomputing every stage", out, ", ".join(changed))
    if previous != key:
        write_json_atomic(path, key)
    return previous == key


def _run_case(
    model: LoadedModel,
    suite: EvalSuite,
    scorer: Scorer,
    out: Path,
    case: ConceptCase,
    config: DemoConfig,
    timings: dict[str, float],
    tick: Callable[..., None],
    shared: dict[str, Any],
) -> dict[str, Any] | None:
    """All stages of one case; returns its summary entry (``None``: a shard stops before the edits)."""
    from diffloc.editing.edit import Edit
    from diffloc.editing.locoedit import LocoEditConfig
    from diffloc.editing.quickfix import QuickFixConfig
    from diffloc.editing.registry import compute_edit
    from diffloc.editing.requests import EditRequest
    from diffloc.engine.generate import GenerationConfig
    from diffloc.workflows.widening import WidenConfig, locoedit_search

    sweep: dict[str, Any] = {"steps": config.steps, "guidance": config.guidance, "max_batch": config.max_batch,
                             "bootstrap": config.bootstrap}  # fmt: skip
    entry: dict[str, Any] = {"kind": case.kind, "mode": case.mode, "concept": case.concept, "target": case.target}
    prompts = list(case.prompts[: config.trace_prompts])
    validation = [p for p in case.heldout if case.concept in p][: config.validation_prompts]
    base = out / "trace" / case.name
    start = time.perf_counter()
    noise = None if isinstance(config.noise, str) else config.noise
    if config.noise == "auto":
        calibration = _calibrate(model, prompts, config.trace_seeds, case, scorer, sweep, base / "noise.json",
                                 reuse=shared["reuse"])  # fmt: skip
        entry["noise"] = calibration
        noise = float(calibration["noise"])
        timings[f"{case.name}/noise"] = time.perf_counter() - start
    executor = shared["executor"]
    unet, reused = _cached(shared["reuse"], base / "unet", "result.json", TraceResult.load, lambda: _sweep(
        shared, lambda: causal_trace(
            model, prompts, case.concept, case.attribute, scorer=scorer,
            config=TraceConfig(seeds=config.trace_seeds, noise=noise, restore_from=config.restore_from, **sweep),
            validation_prompts=validation, out=base / "unet",
            progress=lambda d, t: tick(f"{case.name}: trace unet", (d, t)), executor=executor)))  # fmt: skip
    if unet is not None:
        save_figure(plot_denoiser_trace(unet), base / "unet" / "trace.png")
    timings[f"{case.name}/trace-unet"] = 0.0 if reused else time.perf_counter() - start
    tick("trace unet")
    if config.step_map and unet is not None:
        start = time.perf_counter()
        steps_dir = base / STEP_MAP_DIR
        step_config = TraceConfig(seeds=config.trace_seeds, noise=noise, restore_from=config.restore_from, **sweep)
        mapped, reused = _cached(shared["reuse"], steps_dir, "result.json", TraceResult.load, lambda: _sweep(
            shared, lambda: step_map(model, unet, scorer, step_config, steps_dir, executor=executor)))  # fmt: skip
        if mapped is not None:
            save_figure(plot_step_effects(mapped), steps_dir / "steps.png")
            entry["step_map"] = step_map_entry(unet, mapped)
        timings[f"{case.name}/step-map"] = 0.0 if reused else time.perf_counter() - start
    start = time.perf_counter()
    text_noise = noise
    if config.noise == "auto":
        # The text trace reads one prompt with its own seeds, which the UNet trace's calibration need not cover
        # (a corruption that leaves its one item untouched makes every text effect divide by ~0): calibrate it.
        text_calibration = _calibrate(model, prompts[:1], config.text_seeds, case, scorer, sweep,
                                      base / "text-noise.json", reuse=shared["reuse"])  # fmt: skip
        entry["text_noise"] = text_calibration
        text_noise = float(text_calibration["noise"])
    text, reused = _cached(shared["reuse"], base / "text", "result.json", TraceResult.load, lambda: _sweep(
        shared, lambda: trace_text(
            model, prompts[0], case.concept, case.attribute, scorer=scorer,
            config=TraceConfig(seeds=config.text_seeds, noise=text_noise, **sweep), out=base / "text",
            progress=lambda d, t: tick(f"{case.name}: trace text", (d, t)), executor=executor)))  # fmt: skip
    if text is not None:
        save_figure(plot_text_trace(text), base / "text" / "trace.png")
    timings[f"{case.name}/trace-text"] = 0.0 if reused else time.perf_counter() - start
    tick("trace text")
    start = time.perf_counter()
    attribute = case.target_attribute if case.mode == "update" else case.attribute
    window_dir = out / "locogen" / case.name
    sizes = tuple(k * config.locogen_window for k in (1, 2, 4, 8))
    windows, reused = _cached(shared["reuse"], window_dir, "result.json", WindowResult.load, lambda: _sweep(
        shared, lambda: locogen_search(
            model, prompts, case.target_prompt, attribute, scorer=scorer,
            config=LocoGenConfig(seeds=config.trace_seeds, window=config.locogen_window, mode=case.mode, **sweep),
            sizes=sizes if config.locogen_widen else sizes[:1], out=window_dir,
            progress=lambda d, t: tick(f"{case.name}: locogen", (d, t)), executor=executor)))  # fmt: skip
    if isinstance(executor, ShardExecutor) or unet is None or text is None or windows is None:
        return None
    save_figure(plot_windows(windows), window_dir / "windows.png")
    timings[f"{case.name}/locogen"] = 0.0 if reused else time.perf_counter() - start
    tick("locogen")
    reference = config.edit_templates == "reference"
    base_request = EditRequest(concepts=(case.concept,), targets=(case.target,),
                          templates=() if reference else edit_templates(case), default_templates=reference,
                          preserve=case.preserve, preserve_prompts=case.preserve_prompts)  # fmt: skip
    edits = {}
    for method in METHODS:
        edit_dir = out / "edits" / case.name / method
        method_config = (
            LocoEditConfig(
                sites=windows,
                positions=config.locoedit_positions,
                target_mode=config.locoedit_target_mode,
                preserve_weight=config.preserve_weight,
            )
            if method == "locoedit"
            else QuickFixConfig(preserve_weight=config.preserve_weight)
        )
        start = time.perf_counter()

        def compute(method: str = method, method_config: Any = method_config, edit_dir: Path = edit_dir) -> Any:
            request = base_request
            if method == "locoedit" and case.locoedit_target:
                request = replace(base_request, targets=(case.locoedit_target,))
            if method == "locoedit" and config.locoedit_widen:
                search = WidenConfig(generation=GenerationConfig(steps=config.steps, guidance=config.guidance))
                edit = locoedit_search(model, request, method_config, attribute=attribute, mode=case.mode,
                                       scorer=scorer, search=search)  # fmt: skip
            else:
                edit = compute_edit(model, request, method=method, config=method_config)
            edit.save(edit_dir)
            return edit

        edits[method], reused = _cached(shared["reuse"], edit_dir, "edit.json", Edit.load, compute)
        timings[f"{case.name}/edit-{method}"] = 0.0 if reused else time.perf_counter() - start
        tick(f"edit {method}")
    reports = {}
    for method, edit in edits.items():
        report_path = out / "eval" / case.name / f"{method}.json"
        start = time.perf_counter()

        def compute_report(edit: Any = edit, case: ConceptCase = case, report_path: Path = report_path) -> Any:
            if "before" not in shared:
                shared["before"] = measure(model, suite, scorer, list(suite.cases), out=out / "eval", executor=executor)
            report = evaluate(model, edit, suite, scorer=scorer, cases=[case.name], before=shared["before"],
                              out=out / "eval", executor=executor)  # fmt: skip
            report.save(report_path)
            return report

        reports[method], reused = _cached(shared["reuse"], report_path, "", EvalReport.load, compute_report)
        grid_path = out / "eval" / case.name / f"{method}-grid.png"
        if not (shared["reuse"] and grid_path.is_file()):
            _before_after_grid(model, edit, suite, case, grid_path)
        timings[f"{case.name}/eval-{method}"] = 0.0 if reused else time.perf_counter() - start
        tick(f"eval {method}")
    if config.audit:
        budget = demo_audit_config(config.trace_seeds, config.steps, config.guidance, config.max_batch)
        for method, edit in edits.items():
            audit_dir = out / "audit" / case.name / method
            start = time.perf_counter()
            report, reused = _cached(shared["reuse"], audit_dir, "audit.json", AuditReport.load, partial(
                audit, model, edit, scorer=scorer, attribute=case.attribute, config=budget, out=audit_dir))  # fmt: skip
            entry.setdefault("audit", {})[method] = audit_entry(report)
            timings[f"{case.name}/audit-{method}"] = 0.0 if reused else time.perf_counter() - start
    entry.update(trace_entry(unet, text))
    best = windows.best_index
    entry["locogen"] = {"best_sites": windows.best_sites, "best_score": windows.best_score,
                        "original_score": windows.original_score, "n_items": windows.n_items,
                        "best_interval": None if windows.interval is None else
                        [float(windows.interval[0, best]), float(windows.interval[1, best])],
                        "window_search": windows.meta.get("window_search")}  # fmt: skip
    entry["edits"] = {m: _edit_entry(e) for m, e in edits.items()}
    entry["eval"] = {m: reports[m].cases[case.name] | {"fidelity": reports[m].fidelity} for m in reports}
    return entry


def trace_entry(unet: TraceResult, text: TraceResult) -> dict[str, Any]:
    """What the report shows of a case's two traces: scores, top sites with intervals, controls, selection."""
    effect = unet.indirect_effect

    def interval(i: int) -> list[float] | None:
        return None if unet.interval is None else [float(unet.interval[0, i]), float(unet.interval[1, i])]

    top = [(name, value, interval(unet.labels.index(name))) for name, value in unet.top(5, include_controls=False)]
    return {
        "unet_top": [[name, value] for name, value, _ in top],
        "unet_top_interval": [ci for _, _, ci in top],
        "unet_clean": unet.clean_score, "unet_corrupted": unet.corrupt_score, "unet_items": unet.n_items,
        "restore_from": unet.restore_from,
        "controls": [{"site": c, "effect": float(effect[unet.labels.index(c)]), "interval": interval(
            unet.labels.index(c))} for c in unet.controls],
        "controls_flagged": unet.controls_flagged,
        "selection": None if unet.selection is None else {
            k: unet.selection[k] for k in ("tau", "causal", "validation_accuracy", "rule")} | {
            "validation_items": len(unet.selection["validation_items"]),
            "test_items": len(unet.selection["test_items"])},
        "text_clean": text.clean_score, "text_corrupted": text.corrupt_score, "text_items": text.n_items,
    }  # fmt: skip


def _edit_entry(edit: Any) -> dict[str, Any]:
    """Summary of one edit: values written, wall time, the sites it wrote and LocoEdit's window search."""
    return {"params": edit.num_values, "seconds": edit.stats.get("seconds"), "sites": list(edit.stats["sites"]),
            "window_search": edit.stats.get("window_search")}  # fmt: skip


def _calibrate(
    model: LoadedModel,
    prompts: list[str],
    seeds: tuple[int, ...],
    case: ConceptCase,
    scorer: Scorer,
    sweep: dict[str, Any],
    path: Path,
    *,
    reuse: bool,
) -> dict[str, Any]:
    """The corruption noise of a trace over ``prompts`` × ``seeds``: read from ``path`` when reusing a finished
    stage, else calibrated and stored there atomically."""
    from diffloc.tracing.calibrate import calibrate_noise

    def compute() -> dict[str, Any]:
        config = TraceConfig(seeds=seeds, **sweep)
        result = calibrate_noise(model, prompts, case.concept, case.attribute, scorer=scorer, config=config).to_dict()
        write_json_atomic(path, result)
        return result

    calibration, _ = _cached(reuse, path, "", lambda p: json.loads(p.read_text()), compute)
    return dict(calibration)


def edit_templates(case: ConceptCase) -> tuple[str, ...]:
    """The edit templates of a case: the concept alone (``{}``), then the case's own prompts with ``{}`` where
    the concept stands.

    The methods' other default templates ("a photo of {}" …) are phrasings a model trained on other captions
    (ShapesWorld's from-scratch encoder) never saw, so they are left out; the concept alone, with which both
    papers' template lists begin, is kept: without it, a Diff-QuickFix of ShapesWorld's pica stro on the case's
    three shape-first prompts removed the style from only 42 % of its artist-first held-out images (all of them
    with it; docs/findings.md). Prompts naming the concept more than once are skipped, since a template has
    one slot.
    """
    templates = tuple(p.replace(case.concept, "{}") for p in case.prompts if p.count(case.concept) == 1)
    if not templates:
        raise ConfigError(f"case {case.name!r}: no prompt names the concept exactly once, so none can be a template")
    return ("{}", *(t for t in dict.fromkeys(templates) if t != "{}"))


def _before_after_grid(model: LoadedModel, edit: Any, suite: EvalSuite, case: ConceptCase, path: Path) -> None:
    """Row 1: unedited, row 2: edited; columns: an edit prompt, a held-out prompt, two neighbours (seed 0)."""
    prompts = [case.prompts[0], case.heldout[0], *(n.prompt for n in case.neighbours[:2])]
    config = GenerationConfig(steps=suite.steps, guidance=suite.guidance)
    seed = suite.seeds[0]
    before = generate(model, prompts, seeds=seed, config=config)
    with edit.applied(model):
        after = generate(model, prompts, seeds=seed, config=config)
    labels = [f"before: {p}" for p in prompts] + [f"after: {p}" for p in prompts]
    save_figure(image_strip(torch.cat([before, after]), labels, columns=len(prompts)), path)


def load_summary(out: Path) -> dict[str, Any]:
    """Read ``summary.json`` of a finished demo."""
    return json.loads((out / "summary.json").read_text())
