"""Which sites are causal: a score threshold chosen on validation items, applied to test items.

The papers pick a CLIP-Score threshold on a small validation set of prompts per attribute and call a layer
causal when restoring it brings the score above that threshold. diffloc states the rule it uses:

* **τ (validation items)** — the score that best separates the validation items' clean images (attribute
  shown) from their corrupted ones (attribute removed): the threshold with the highest balanced accuracy,
  taken at the middle of the widest gap between scores that achieves it.
* **causal (test items)** — a restore is causal when its mean restored score over the test items is >= τ,
  i.e. restoring that site alone brings the attribute back as far as the validation images say "shown". In a
  ``remove`` trace (the clean run with one site's corrupted value) a site is causal when its mean patched score
  is < τ: removing that site alone takes the attribute as far as the validation images say "not shown".

Validation and test items must not overlap (an item is a (prompt, seed) pair); both sets are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from diffloc.errors import ConfigError, InseparableItemsError

RULE = (
    "tau: the score threshold that best separates validation items' clean from corrupted images (highest "
    "balanced accuracy, middle of the widest such gap); causal: mean restored score over test items >= tau"
)
RULE_REMOVE = (
    "tau: the score threshold that best separates validation items' clean from corrupted images (highest "
    "balanced accuracy, middle of the widest such gap); causal: mean score over test items with the site's "
    "corrupted value patched into the clean run < tau"
)


@dataclass(frozen=True, kw_only=True)
class SiteSelection:
    """Outcome of :func:`select_sites`.

    Attributes:
        rule: the rule in words.
        tau: the threshold.
        validation_accuracy: balanced accuracy of τ on the validation items.
        validation_items: ``{"prompt", "seed", "clean", "corrupted"}`` per validation item.
        test_items: ``{"prompt", "seed"}`` per test item.
        causal: labels whose mean restored test score is >= τ (a ``remove`` trace: whose mean patched score is
            < τ), strongest first.
        restored_means: mean restored (patched) test score per label.
    """

    rule: str
    tau: float
    validation_accuracy: float
    validation_items: list[dict[str, Any]] = field(default_factory=list)
    test_items: list[dict[str, Any]] = field(default_factory=list)
    causal: list[str] = field(default_factory=list)
    restored_means: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def check_disjoint(test: Sequence[tuple[str, int]], validation: Sequence[tuple[str, int]]) -> None:
    """Refuse validation items that are also test items.

    Raises:
        ConfigError: an item (prompt, seed) is in both sets.
    """
    shared = sorted(set(test) & set(validation))
    if shared:
        prompt, seed = shared[0]
        raise ConfigError(
            f"validation and test items overlap ({len(shared)} shared, e.g. prompt {prompt!r} seed {seed}); "
            "choose the threshold on other prompts or seeds"
        )


def choose_threshold(clean: Sequence[float], corrupted: Sequence[float]) -> tuple[float, float]:
    """``(tau, balanced accuracy)``: the threshold separating clean (>= τ) from corrupted (< τ) scores best.

    Raises:
        ConfigError: no items.
        InseparableItemsError: the corruption does not lower the mean score (nothing to separate).
    """
    pos, neg = np.asarray(clean, float), np.asarray(corrupted, float)
    if not len(pos) or len(pos) != len(neg):
        raise ConfigError(f"threshold needs paired clean and corrupted scores, got {len(pos)} and {len(neg)}")
    if not pos.mean() > neg.mean():
        raise InseparableItemsError(
            f"on the validation items the corruption does not lower the attribute (clean {pos.mean():.3f}, "
            f"corrupted {neg.mean():.3f}); no threshold can separate them — use more noise"
        )
    values = np.unique(np.concatenate([pos, neg]))
    # candidate thresholds: below everything, between neighbours, above everything
    edges = np.concatenate([[values[0] - 1.0], values, [values[-1] + 1.0]])
    best_acc, best_gap, tau = -1.0, -1.0, float(values[0])
    for low, high in pairwise(edges):
        mid = (low + high) / 2
        acc = 0.5 * (float(np.mean(pos >= mid)) + float(np.mean(neg < mid)))
        gap = high - low
        if acc > best_acc + 1e-12 or (abs(acc - best_acc) <= 1e-12 and gap > best_gap):
            best_acc, best_gap, tau = acc, gap, float(mid)
    return tau, best_acc


def select_sites(
    labels: Sequence[str],
    restored: np.ndarray,
    validation: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    *,
    remove: bool = False,
) -> SiteSelection:
    """Apply the rule of this module (``remove``: to the patched scores of a ``remove`` trace).

    Args:
        labels: restore labels (sites or groups).
        restored: ``(n_test_items, n_labels)`` restored scores on the test items.
        validation: validation items with ``prompt``, ``seed``, ``clean``, ``corrupted``.
        test: test items with ``prompt`` and ``seed``.

    Raises:
        ConfigError: overlapping item sets, or validation items the corruption does not separate.
    """
    check_disjoint([(t["prompt"], t["seed"]) for t in test], [(v["prompt"], v["seed"]) for v in validation])
    tau, accuracy = choose_threshold([v["clean"] for v in validation], [v["corrupted"] for v in validation])
    means = np.asarray(restored, float).mean(axis=0)
    if remove:
        causal = [labels[i] for i in np.argsort(means, kind="stable") if means[i] < tau]
    else:
        causal = [labels[i] for i in np.argsort(-means, kind="stable") if means[i] >= tau]
    return SiteSelection(
        rule=RULE_REMOVE if remove else RULE, tau=tau, validation_accuracy=accuracy,
        validation_items=[{k: v[k] for k in ("prompt", "seed", "clean", "corrupted")} for v in validation],
        test_items=[{"prompt": t["prompt"], "seed": t["seed"]} for t in test], causal=causal,
        restored_means={label: float(m) for label, m in zip(labels, means, strict=True)},
    )  # fmt: skip
