"""Resumable sweeps: each finished item is written atomically as it completes; reruns skip it.

An item is one (prompt, seed) of a sweep. Its file name is a hash of everything that determines its
result (model source, sweep kind, config, prompt, seed …), so changing any setting never reuses a stale
item, and killing a sweep at any moment loses at most the items in flight.

Who computes the missing items is an *executor* (:mod:`diffloc.tracing.executors`): this process one after
another (the default), one shard of them (``--shard I/N``, for job arrays), or Ray workers (``--ray``). All
of them write items to the same store, so a sweep can be started one way and finished another.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffloc.atomic import write_json_atomic
from diffloc.errors import ConfigError, SweepIncomplete

if TYPE_CHECKING:
    from diffloc.models.base import LoadedModel
    from diffloc.scoring import Scorer
    from diffloc.tracing.executors import Executor

logger = logging.getLogger(__name__)


def item_key(spec: dict[str, Any]) -> str:
    """Stable short hash of an item's defining settings."""
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ItemStore:
    """Directory of finished items (``<dir>/items/<key>.json``); ``None`` directory keeps them in memory only.

    ``computed`` and ``reused`` count a sweep's items made by this run and found already finished.
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) / "items" if directory is not None else None
        self.reused = 0
        self.computed = 0
        self._written: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored item, or ``None`` (also for an unreadable file, which is then recomputed)."""
        if key in self._written:
            return self._written[key]
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            logger.warning("ignoring unreadable sweep item %s", path)
            return None

    def put(self, key: str, item: dict[str, Any]) -> None:
        """Store a finished item atomically."""
        self._written[key] = item
        if self.directory is not None:
            write_json_atomic(self.directory / f"{key}.json", item)


#: ``compute(model=..., scorer=..., advance=...)`` -> the item (a JSON-able dict)
ItemFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """One item of a sweep: the settings that define it, its number of runs, and how to compute it.

    ``compute(model=model, scorer=scorer, advance=advance)`` returns the item (a JSON-able dict) and calls
    ``advance(n)`` as runs finish. The model and scorer are the executor's: this process's own, or those a Ray
    worker loaded itself. So ``compute`` must pickle without them: a :func:`functools.partial` of a
    module-level function over plain values (prompts, seeds, frozen configs, interventions).
    """

    spec: dict[str, Any]
    runs: int
    compute: ItemFn


@dataclass(frozen=True)
class PendingJob:
    """A job whose item is not in the store yet: its position in the sweep, its store key and the job."""

    index: int
    key: str
    job: Job


def run_jobs(
    jobs: Sequence[Job],
    out: str | Path | None,
    progress: Callable[[int, int], None] | None = None,
    *,
    model: LoadedModel,
    scorer: Scorer,
    executor: Executor | None = None,
) -> tuple[list[dict[str, Any]], ItemStore]:
    """Run a sweep's jobs, reusing stored items and storing new ones as each finishes.

    Args:
        jobs: the sweep's items in order.
        out: the sweep's directory (items go to ``out/items``); ``None`` keeps nothing on disk.
        progress: called with (runs done, runs total).
        model, scorer: what this process computes with (a Ray worker loads its own from the same source).
        executor: who computes the missing items (default: this process, in order).

    Returns:
        (items in job order, the store with its computed/reused counts).

    Raises:
        SweepIncomplete: the executor computed only its share (a shard) and other items are still missing.
        ConfigError: an executor that shares the store between processes, without ``out``.
    """
    from diffloc.tracing.executors import SerialExecutor

    executor = executor or SerialExecutor()
    if out is None and executor.needs_directory:
        raise ConfigError(f"{executor.describe()} writes items to a shared output directory; give one (--out)")
    store = ItemStore(out)
    total = sum(job.runs for job in jobs)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    found: dict[int, dict[str, Any]] = {}
    pending = []
    for index, job in enumerate(jobs):
        key = item_key(job.spec)
        item = store.get(key)
        if item is None:
            pending.append(PendingJob(index, key, job))
        else:
            found[index] = item
            advance(job.runs)
    store.reused = len(found)
    computed = executor.run(pending, store=store, model=model, scorer=scorer, advance=advance) if pending else set()
    missing = 0
    for entry in pending:
        item = store.get(entry.key)
        if item is None:
            missing += 1
        else:
            found[entry.index] = item
    store.computed = len(computed)
    store.reused = len(found) - store.computed
    if missing:
        raise SweepIncomplete(
            f"{executor.describe()} computed {store.computed} of the sweep's {len(jobs)} items ({store.reused} "
            f"were done before); {missing} belong to other shards: run those, then rerun without --shard to "
            "assemble the result",
            computed=store.computed,
            reused=store.reused,
            missing=missing,
        )
    logger.info("sweep: %d items computed, %d reused", store.computed, store.reused)
    return [found[index] for index in range(len(jobs))], store


def run_all(*sweeps: Callable[[], Any]) -> list[Any]:
    """Call every sweep, also after one turned out incomplete (a shard's share of it is then stored), and
    return their results; afterwards raise one :class:`SweepIncomplete` summing the incomplete ones.

    For stages whose sweeps do not depend on each other, so that one shard run computes its share of all.
    """
    results: list[Any] = []
    incomplete: list[SweepIncomplete] = []
    for sweep in sweeps:
        try:
            results.append(sweep())
        except SweepIncomplete as exc:
            incomplete.append(exc)
            results.append(None)
    if len(incomplete) == 1:
        raise incomplete[0]
    if incomplete:
        computed, reused, missing = (sum(getattr(e, k) for e in incomplete) for k in ("computed", "reused", "missing"))
        raise SweepIncomplete(
            f"{len(incomplete)} sweeps are incomplete: computed {computed} items here ({reused} were done before); "
            f"{missing} belong to other shards: run those, then rerun without --shard to assemble the results",
            computed=computed,
            reused=reused,
            missing=missing,
        )
    return results
