"""Resumable sweeps: each finished item is written atomically as it completes; reruns skip it.

An item is one (prompt, seed) of a sweep. Its file name is a hash of everything that determines its
result (model source, sweep kind, config, prompt, seed …), so changing any setting never reuses a stale
item, and killing a sweep at any moment loses at most the items in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
