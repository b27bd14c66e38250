"""Typed results of tracing sweeps, saved as JSON + NPZ (no pickle) and loaded back."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from diffloc import __version__
from diffloc.atomic import write_bytes_atomic, write_json_atomic
from diffloc.errors import DifflocError

#: a trace whose corrupted score is within this fraction of its clean one measured nothing: its indirect effects
#: divide by a near-zero gap
NEGLIGIBLE_GAP = 0.05


def negligible_gap(clean: float, corrupted: float) -> bool:
    """Whether the corruption left the attribute (clean ≈ corrupted, within :data:`NEGLIGIBLE_GAP`)."""
    return abs(clean - corrupted) < NEGLIGIBLE_GAP * max(abs(clean), abs(corrupted), 1e-12)


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
    if meta.get("kind") not in kind:
        raise DifflocError(f"{str(path)!r} holds a {meta.get('kind')!r} result, expected {' or '.join(kind)}")
    return meta, arrays


@dataclass(frozen=True, kw_only=True)
class TraceResult:
    """Causal-tracing result, aggregated (mean) over prompts and seeds.

    Attributes:
        kind: ``"unet"`` (one score per site) or ``"text"`` (scores per state kind × layer × token).
        scores: ``(n_sites,)`` for ``unet``; ``(n_kinds, n_layers, n_tokens)`` for ``text``.
        labels: site names (``unet``) or state kinds (``text``: ``layer``, ``attn``, ``mlp``; SD-XL adds
            ``text2.*`` kinds).
        tokens: the prompt's tokens (``text``; one prompt) or ``[]``.
        clean_score, corrupt_score: mean scores of the clean and corrupted runs.
        subject_range: token range of the subject in the (first) prompt.
        noise: the corruption std actually used.
        items: per (prompt, seed) scores.
        meta: model, prompts, subject, attribute, scorer, config, version.
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

    @property
    def indirect_effect(self) -> np.ndarray:
        """Normalized indirect effect: ``(restored - corrupted) / (clean - corrupted)``; 1 = full recovery."""
        gap = self.clean_score - self.corrupt_score
        if abs(gap) < 1e-12:
            return np.zeros_like(self.scores)
        return (self.scores - self.corrupt_score) / gap

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` sites (``unet``) with the highest indirect effect."""
        if self.kind != "unet":
            raise DifflocError("top() ranks UNet sites; for text traces read indirect_effect[kind, layer, token]")
        order = np.argsort(-self.indirect_effect)[:k]
        return [(self.labels[i], float(self.indirect_effect[i])) for i in order]

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
            "items": self.items,
            "meta": {"diffloc_version": __version__, **self.meta},
            "scores": np.asarray(self.scores).tolist(),
            "indirect_effect": np.asarray(self.indirect_effect).tolist(),
        }
        return _save(directory, meta, {"scores": np.asarray(self.scores), "indirect_effect": self.indirect_effect})

    @classmethod
    def load(cls, directory: str | Path) -> TraceResult:
        """Load a result written by :meth:`save`."""
        meta, arrays = _load(directory, ("unet", "text"))
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
            meta=dict(meta["meta"]),
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
    """

    windows: list[list[str]]
    scores: np.ndarray
    original_score: float
    mode: str
    items: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

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
            "scores": np.asarray(self.scores).tolist(),
            "original_score": self.original_score,
            "mode": self.mode,
            "best_index": self.best_index,
            "best_sites": self.best_sites,
            "items": self.items,
            "meta": {"diffloc_version": __version__, **self.meta},
        }
        return _save(directory, meta, {"scores": np.asarray(self.scores)})

    @classmethod
    def load(cls, directory: str | Path) -> WindowResult:
        """Load a result written by :meth:`save`."""
        meta, arrays = _load(directory, ("locogen",))
        return cls(
            windows=[list(w) for w in meta["windows"]],
            scores=arrays["scores"],
            original_score=float(meta["original_score"]),
            mode=meta["mode"],
            items=list(meta["items"]),
            meta=dict(meta["meta"]),
        )
