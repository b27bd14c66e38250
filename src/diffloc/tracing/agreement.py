"""How far a fast trace agrees with the exact one: rank correlation of per-site effects and recall of the top sites.

Both compare a denoiser trace made by ``attribution`` or ``screen`` with an exact trace of the same sites and
items. The control sites (text-blind: ~0 under either method with the ``same-latent`` source) are left out, so a
method is not credited for ranking zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffloc.errors import ConfigError
from diffloc.tracing.results import TraceResult

#: how many of the exact trace's highest sites the recall counts
TOP = 5
#: sites whose exact effect is within this of exact's k-th highest tie with it (effects are fractions of the
#: clean − corrupted gap: where a restore of any of many sites brings the attribute all the way back, "exact's top
#: five" is an arbitrary pick among them)
TIE = 0.02


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks ``0 … n-1`` of ``values`` (ties broken by position; effects are continuous)."""
    out = np.empty(len(values))
    out[np.argsort(values, kind="stable")] = np.arange(len(values))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two vectors (``None`` for fewer than two values: no ranking to compare)."""
    if len(a) < 2:
        return None
    return float(np.corrcoef(ranks(np.asarray(a, float)), ranks(np.asarray(b, float)))[0, 1])


def top_sites(result: TraceResult, k: int = TOP) -> list[str]:
    """The ``k`` sites with the highest indirect effect, controls excluded (a screen's confirmed sites first)."""
    return [name for name, _ in result.top(k, include_controls=False)]


def agreement(exact: TraceResult, other: TraceResult, *, k: int = TOP, tie: float = TIE) -> dict[str, Any]:
    """How ``other`` (a fast trace) ranks the sites against ``exact``: Spearman correlation of per-site indirect
    effects (controls excluded), the share of exact's top ``k`` sites among ``other``'s top ``k``
    (``top_recall``), and the share of ``other``'s top ``k`` whose exact effect is within ``tie`` of exact's
    ``k``-th highest (``top_recall_ties``: every such site is as high as exact's own top ``k`` to within ``tie``;
    ``tied`` lists them).

    Raises:
        ConfigError: the two traces do not cover the same sites.
    """
    if list(exact.labels) != list(other.labels):
        raise ConfigError("the traces cover different sites; compare traces of the same sites and items")
    keep = [i for i, name in enumerate(exact.labels) if name not in exact.controls]
    want, got = top_sites(exact, k), top_sites(other, k)
    effect = np.asarray(exact.indirect_effect, float)
    bar = min(effect[exact.labels.index(name)] for name in want) - tie if want else np.inf
    tied = [exact.labels[i] for i in keep if effect[i] >= bar]
    return {
        "spearman": spearman(other.indirect_effect[keep], exact.indirect_effect[keep]),
        "top_recall": len(set(want) & set(got)) / len(want) if want else None,
        "top_recall_ties": len(set(tied) & set(got)) / len(want) if want else None,
        "k": k,
        "tie": tie,
        "exact_top": want,
        "tied": tied,
        "top": got,
        "sites": len(keep),
    }
