"""Which examples a training run's latent cache holds: recorded in its metadata when it is written, checked before a
run reuses it (a cache copied from another run must not be taken for this run's examples)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open

from diffloc.errors import ConfigError


def cache_examples(n_examples: int, seed: int, mix: Sequence[float], extra_templates: str) -> dict[str, str]:
    """The settings that decide which examples a latent cache holds, as safetensors metadata."""
    return {"examples": str(n_examples), "seed": str(seed), "mix": json.dumps(list(mix)),
            "extra_templates": extra_templates}  # fmt: skip


def check_cache_examples(path: Path, wanted: dict[str, str]) -> None:
    """Refuse (one line) a latent cache made from other examples than ``wanted`` (:func:`cache_examples`); a cache
    written before caches recorded their settings is taken as it is.

    Raises:
        ConfigError: a recorded setting differs.
    """
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata() or {}
    changed = sorted(key for key in wanted if key in stored and stored[key] != wanted[key])
    if changed:
        ours = ", ".join(f"{k} {wanted[k]}" for k in changed)
        raise ConfigError(
            f"latent cache {str(path)!r} holds other examples ({', '.join(f'{k} {stored[k]}' for k in changed)}; "
            f"this run: {ours}); delete it to re-encode, or train with its settings"
        )
