"""Typed results of tracing sweeps, saved as JSON + NPZ (no pickle) and loaded back."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from diffloc import __version__
from diffloc.atomic import write_bytes_atomic, write_json_atomic
from diffloc.errors import DifflocError

#: ``TraceResult.kind`` of a trace of denoiser sites. The value names the first denoiser diffloc traced and is
#: what result files (and the keys of resumable items) hold, for every family: results saved before other
#: denoisers existed keep loading, and old items keep matching.
DENOISER_TRACE = "unet"
#: ``TraceResult.kind`` of a text-encoder trace.
TEXT_TRACE = "text"
#: a trace whose corrupted score is within this fraction of its clean one measured nothing: its indirect effects
#: divide by a near-zero gap
NEGLIGIBLE_GAP = 0.05
#: a control site (one that cannot read the text) whose |indirect effect| exceeds this flags the trace: its
#: restores carry something besides the text's path through the site (e.g. the clean trajectory's latent)
CONTROL_LIMIT = 0.1


def negligible_gap(clean: float, corrupted: float) -> bool:
    """Whether the corruption left the attribute (clean ≈ corrupted, within :data:`NEGLIGIBLE_GAP`)."""
    return abs(clean - corrupted) < NEGLIGIBLE_GAP * max(abs(clean), abs(corrupted), 1e-12)


def json_values(array: np.ndarray | None) -> Any:
    """An array as nested lists for JSON, with NaN/inf as ``null`` (JSON has no NaN)."""
    if array is None:
        return None

    def clean(value: Any) -> Any:
        if isinstance(value, list):
            return [clean(v) for v in value]
        return float(value) if math.isfinite(value) else None

    return clean(np.asarray(array, dtype=float).tolist())


def array_from_json(values: Any) -> np.ndarray:
    """Nested lists with ``null`` (see :func:`json_values`) back to a float array, ``null`` as NaN."""

    def restore(value: Any) -> Any:
        if isinstance(value, list):
            return [restore(v) for v in value]
        return math.nan if value is None else value

    return np.asarray(restore(values), dtype=float)


def _save(directory: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **cast(dict[str, Any], arrays))
    write_bytes_atomic(out / "result.npz", buffer.getvalue())
    write_json_atomic(out / "result.json", meta)
    return out


def _load(directory: str | Path, kind: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = Path(directory)
    try:
        meta = json.loads((path / "result.json").read_text())
        with np.load(path / "result.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise DifflocError(f"no readable result in {str(path)!r} ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in kind:
        found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise DifflocError(f"{str(path)!r} holds a {found!r} result, expected {' or '.join(kind)}")
    return meta, arrays


@dataclass(frozen=True, kw_only=True)
class TraceResult:
    """Causal-tracing result over prompts × seeds (each (prompt, seed) is one *item*).

    Attributes:
        kind: ``"unet"`` (one score per restored site or group) or ``"text"`` (scores per state kind × layer ×
            token).
        scores: mean restored score over items (a ``remove`` trace: the clean run with the site's corrupted value,
            :attr:`direction`): ``(n_sites,)`` for ``unet``; ``(n_kinds, n_layers, n_tokens)`` for ``text``.
        labels: site names (``unet``; a group is ``a+b+…``) or state kinds (``text``: ``text.layer``,
            ``text.attn``, ``text.mlp``; SD-XL adds ``text2.*``).
        clean_score, corrupt_score: mean scores of the clean and corrupted runs.
        subject_range: token range of the subject in the (first) prompt.
        noise: the corruption std actually used (the first text encoder's; ``meta["noise_per_encoder"]`` has all).
        tokens: the prompt's tokens (``text``; one prompt) or ``[]``.
        items: per-item scores (prompt, seed, clean, corrupted, scores).
        meta: model, prompts, subject, attribute, scorer, config, ``restore_from``, version.
        interval: ``(2, …)`` bootstrap interval of :attr:`indirect_effect` over items (lower, upper), or ``None``
            (intervals off, or a result saved without them).
        controls: labels of the control sites: sites that cannot read the text at a step (before the first
            cross-attention in execution order, when no text reaches the time embedding). Under the
            ``same-latent`` restore source their effect is 0 by construction; a larger one flags the trace.
        selection: causal-site selection (rule, threshold τ chosen on validation items, both item sets, the
            sites above τ on the test items), or ``None`` when no validation items were given.
        exact_mask: ``True`` where a score was measured by an exact restore, ``False`` where it is an attribution
            estimate (same shape as ``scores``); ``None``: every score is exact (``meta["method"]`` says how the
            trace was made).
        step_effects: ``(n_sites, n_steps)`` estimated indirect effect of restoring each site at each denoising
            step alone (UNet attribution; the steps of a site sum to its estimate), or ``None``.
    """

    kind: str
    scores: np.ndarray
    labels: list[str]
    clean_score: float
    corrupt_score: float
    subject_range: tuple[int, int]
    noise: float
    tokens: list[str] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    interval: np.ndarray | None = None
    controls: list[str] = field(default_factory=list)
    selection: dict[str, Any] | None = None
    exact_mask: np.ndarray | None = None
    step_effects: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Number of (prompt, seed) items the means are taken over."""
        return len(self.items)

    @property
    def method(self) -> str:
        """How the scores were made: ``exact``, ``attribution`` (all estimates) or ``screen`` (estimates, the top
        sites confirmed exactly)."""
        return str(self.meta.get("method", "exact"))

    @property
    def marks(self) -> np.ndarray:
        """``"exact"`` or ``"estimate"`` for every score (same shape as ``scores``)."""
        exact = np.ones(np.shape(self.scores), bool) if self.exact_mask is None else np.asarray(self.exact_mask, bool)
        return np.where(exact, "exact", "estimate")

    @property
    def restore_from(self) -> str:
        """Where restores read their clean value (``same-latent``, ``trajectory``; ``encoding`` for text)."""
        return str(self.meta.get("restore_from", "trajectory" if self.kind == DENOISER_TRACE else "encoding"))

    @property
    def direction(self) -> str:
        """``restore`` (the corrupted run with a clean value) or ``remove`` (the clean run with a corrupted one)."""
        return str((self.meta.get("config") or {}).get("direction", "restore"))

    @property
    def fraction(self) -> float:
        """How much of each value the patches moved (1: whole values; see ``TraceConfig.fraction``)."""
        return float((self.meta.get("config") or {}).get("fraction", 1.0))

    @property
    def indirect_effect(self) -> np.ndarray:
        """Normalized indirect effect: ``(restored - corrupted) / (clean - corrupted)``, 1 = full recovery; in a
        ``remove`` trace ``(clean - patched) / (clean - corrupted)``, 1 = the attribute fully gone."""
        gap = self.clean_score - self.corrupt_score
        if abs(gap) < 1e-12:
            return np.zeros_like(self.scores)
        if self.direction == "remove":
            return (self.clean_score - self.scores) / gap
        return (self.scores - self.corrupt_score) / gap

    @property
    def control_effects(self) -> dict[str, float]:
        """Indirect effect of each control site."""
        if self.kind != DENOISER_TRACE:
            return {}
        effect = self.indirect_effect
        return {label: float(effect[self.labels.index(label)]) for label in self.controls if label in self.labels}

    @property
    def controls_flagged(self) -> bool:
        """Whether some control's |indirect effect| exceeds :data:`CONTROL_LIMIT`."""
        return any(abs(v) > CONTROL_LIMIT for v in self.control_effects.values())

    def top(self, k: int = 5, *, include_controls: bool = True) -> list[tuple[str, float]]:
        """The ``k`` sites (``unet``) with the highest indirect effect.

        In a screen (some scores exact, the rest estimates) the sites it confirmed exactly come first, by their
        measured effect: the screen ranked them above every other site, and an estimate beside a measurement is
        not comparable (a first-order estimate overshoots where the score saturates).
        """
        if self.kind != DENOISER_TRACE:
            raise DifflocError("top() ranks UNet sites; for text traces read indirect_effect[kind, layer, token]")
        effect = self.indirect_effect
        order = [int(i) for i in np.argsort(-effect, kind="stable")]
        if self.exact_mask is not None:
            exact = np.asarray(self.exact_mask, bool).ravel()
            order = [i for i in order if exact[i]] + [i for i in order if not exact[i]]
        if not include_controls:
            order = [i for i in order if self.labels[i] not in self.controls]
        return [(self.labels[i], float(effect[i])) for i in order[:k]]

    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` + ``result.npz`` atomically."""
        meta = {
            "kind": self.kind,
            "labels": self.labels,
            "tokens": self.tokens,
            "clean_score": self.clean_score,
            "corrupt_score": self.corrupt_score,
            "subject_range": list(self.subject_range),
            "noise": self.noise,
            "n_items": self.n_items,
            "restore_from": self.restore_from,
            "controls": self.controls,
            "control_effects": self.control_effects,
            "controls_flagged": self.controls_flagged,
            "control_limit": CONTROL_LIMIT,
            "selection": self.selection,
            "items": self.items,
            "meta": {"diffloc_version": __version__, **self.meta},
            "scores": json_values(self.scores),
            "indirect_effect": json_values(self.indirect_effect),
            "interval": json_values(self.interval),
            "method": self.method,
            "marks": self.marks.tolist(),
            "step_effects": json_values(self.step_effects),
        }
        arrays = {"scores": np.asarray(self.scores), "indirect_effect": self.indirect_effect}
        for name, value in (("interval", self.interval), ("step_effects", self.step_effects)):
            if value is not None:
                arrays[name] = np.asarray(value)
        if self.exact_mask is not None:
            arrays["exact_mask"] = np.asarray(self.exact_mask, bool)
        return _save(directory, meta, arrays)

    @classmethod
    def load(cls, directory: str | Path) -> TraceResult:
        """Load a result written by :meth:`save` (also by versions that wrote no intervals or controls)."""
        meta, arrays = _load(directory, (DENOISER_TRACE, TEXT_TRACE))
        extra = dict(meta["meta"])
        extra.setdefault(
            "restore_from", meta.get("restore_from", "trajectory" if meta["kind"] == DENOISER_TRACE else "encoding")
        )
        return cls(
            kind=meta["kind"],
            scores=arrays["scores"],
            labels=list(meta["labels"]),
            clean_score=float(meta["clean_score"]),
            corrupt_score=float(meta["corrupt_score"]),
            subject_range=(int(meta["subject_range"][0]), int(meta["subject_range"][1])),
            noise=float(meta["noise"]),
            tokens=list(meta["tokens"]),
            items=list(meta["items"]),
            meta=extra,
            interval=arrays.get("interval"),
            controls=list(meta.get("controls", [])),
            selection=meta.get("selection"),
            exact_mask=arrays.get("exact_mask"),
            step_effects=arrays.get("step_effects"),
        )


@dataclass(frozen=True, kw_only=True)
class WindowResult:
    """LocoGen result: one mean score per window of cross-attention layers.

    Attributes:
        windows: site names of each window, in order of window start.
        scores: ``(n_windows,)`` mean attribute score when that window reads the target prompt.
        original_score: mean score with no swap.
        mode: ``remove`` (best = lowest score) or ``update`` (best = highest).
        items: per (prompt, seed) scores.
        meta: model, prompts, target prompt, attribute, scorer, config, version.
        interval: ``(2, n_windows)`` bootstrap interval of each window's mean score over items, or ``None``.
    """

    windows: list[list[str]]
    scores: np.ndarray
    original_score: float
    mode: str
    items: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    interval: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Number of (prompt, seed) items the means are taken over."""
        return len(self.items)

    @property
    def best_index(self) -> int:
        """Index of the window that controls the attribute most."""
        return int(np.argmin(self.scores) if self.mode == "remove" else np.argmax(self.scores))

    @property
    def best_sites(self) -> list[str]:
        """Cross-attention sites of the best window (input to LocoEdit)."""
        return list(self.windows[self.best_index])

    @property
    def best_score(self) -> float:
        """Score of the best window."""
        return float(self.scores[self.best_index])

    def save(self, directory: str | Path) -> Path:
        """Write ``result.json`` + ``result.npz`` atomically."""
        meta = {
            "kind": "locogen",
            "windows": self.windows,
            "scores": json_values(self.scores),
            "original_score": self.original_score,
            "mode": self.mode,
            "best_index": self.best_index,
            "best_sites": self.best_sites,
            "n_items": self.n_items,
            "interval": json_values(self.interval),
            "items": self.items,
            "meta": {"diffloc_version": __version__, **self.meta},
        }
        arrays = {"scores": np.asarray(self.scores)}
        if self.interval is not None:
            arrays["interval"] = np.asarray(self.interval)
        return _save(directory, meta, arrays)

    @classmethod
    def load(cls, directory: str | Path) -> WindowResult:
        """Load a result written by :meth:`save` (also by versions that wrote no intervals)."""
        meta, arrays = _load(directory, ("locogen",))
        return cls(
            windows=[list(w) for w in meta["windows"]],
            scores=arrays["scores"],
            original_score=float(meta["original_score"]),
            mode=meta["mode"],
            items=list(meta["items"]),
            meta=dict(meta["meta"]),
            interval=arrays.get("interval"),
        )
