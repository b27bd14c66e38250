"""Resumable sweeps: each finished item is written atomically as it completes; reruns skip it.

An item is one (prompt, seed) of a sweep. Its file name is a hash of everything that determines its
result (model source, sweep kind, config, prompt, seed …), so changing any setting never reuses a stale
item, and killing a sweep at any moment loses at most the items in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffloc.atomic import write_json_atomic

logger = logging.getLogger(__name__)


def item_key(spec: dict[str, Any]) -> str:
    """Stable short hash of an item's defining settings."""
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ItemStore:
    """Directory of finished items (``<dir>/items/<key>.json``); ``None`` directory keeps nothing."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) / "items" if directory is not None else None
        self.reused = 0
        self.computed = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored item, or ``None`` (also for an unreadable file, which is then recomputed)."""
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        if not path.is_file():
            return None
        try:
            item = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("ignoring unreadable sweep item %s", path)
            return None
        self.reused += 1
        return item

    def put(self, key: str, item: dict[str, Any]) -> None:
        """Store a finished item atomically."""
        self.computed += 1
        if self.directory is not None:
            write_json_atomic(self.directory / f"{key}.json", item)


@dataclass(frozen=True)
class Job:
    """One item of a sweep: the settings that define it, its number of runs, and how to compute it.

    ``compute(advance)`` returns the item (a JSON-able dict) and calls ``advance(n)`` as runs finish.
    """

    spec: dict[str, Any]
    runs: int
    compute: Callable[[Callable[[int], None]], dict[str, Any]]


def run_jobs(
    jobs: Sequence[Job], out: str | Path | None, progress: Callable[[int, int], None] | None = None
) -> tuple[list[dict[str, Any]], ItemStore]:
    """Run a sweep's jobs in order, reusing stored items and storing new ones as each finishes.

    Returns:
        (items in job order, the store with its computed/reused counts).
    """
    store = ItemStore(out)
    total = sum(job.runs for job in jobs)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    items = []
    for job in jobs:
        key = item_key(job.spec)
        item = store.get(key)
        if item is None:
            item = job.compute(advance)
            store.put(key, item)
        else:
            advance(job.runs)
        items.append(item)
    logger.info("sweep: %d items computed, %d reused", store.computed, store.reused)
    return items, store
