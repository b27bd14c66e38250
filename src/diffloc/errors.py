"""One exception family for everything diffloc raises on purpose.

Every message is a single line that names the bad value and what would be valid, so the CLI can print it
as is (``diffloc: error: ...``) without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DifflocError(RuntimeError):
    """Base class of all errors diffloc raises on purpose."""


class ModelLoadError(DifflocError):
    """A model path/id could not be resolved or is not a usable diffusers pipeline."""


class UnsupportedModelError(DifflocError):
    """The pipeline class has no diffloc adapter."""


class UnknownSiteError(DifflocError):
    """A site name or pattern matches no site of the model."""


class PromptError(DifflocError):
    """A prompt is empty, too long for the text encoder, or lacks the requested subject."""


class ConfigError(DifflocError):
    """A configuration value is out of range or a config file has unknown/missing keys."""


class InseparableItemsError(ConfigError):
    """The corruption does not lower the attribute on a trace's validation items, so no causal-site threshold
    separates clean from corrupted there."""


class CheckpointError(DifflocError):
    """A weights file is missing, truncated, corrupted, or contains non-finite values."""


class EditError(DifflocError):
    """An edit cannot be computed, applied, reverted, saved or loaded."""


class SweepIncomplete(DifflocError):
    """A sweep computed its share of items (one ``--shard``) while others are still missing, so there is no
    result yet; the items it computed are stored, and a later run assembles them."""

    def __init__(self, message: str, *, computed: int, reused: int, missing: int) -> None:
        super().__init__(message)
        self.computed = computed
        self.reused = reused
        self.missing = missing


class NonFiniteError(DifflocError):
    """A generation, score or result became NaN or infinite; the message names the input that caused it."""


def close_matches(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean a, b?"`` for the closest choices, or ``""`` when none is close."""
    found = difflib.get_close_matches(value, list(choices), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(found)}?" if found else ""


def one_of(choices: Iterable[str], limit: int = 12) -> str:
    """Format a short list of valid choices for an error message."""
    items = list(choices)
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")
