"""Differentiable scoring: the part of the scorer protocol that attribution patching needs.

A scorer that can also return its score as a differentiable torch function of the image offers
``score_grad(images, texts)``. Tracing asks for it through :func:`require_gradient_scorer`, which refuses a
scorer without it in one line, and both the scorer and the model are held frozen (no parameter gets a gradient)
by :func:`frozen_parameters`. This module sits below every method package, like the scorer protocol itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from diffloc.errors import ConfigError


@runtime_checkable
class GradientScorer(Protocol):
    """A scorer whose score is a differentiable function of the image pixels."""

    name: str

    def score_grad(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The same values as ``score(images, texts)``, ``(n,)``, differentiable with respect to ``images``."""
        ...


def require_gradient_scorer(scorer: object, method: str) -> GradientScorer:
    """``scorer`` as a :class:`GradientScorer`, or a one-line :class:`ConfigError` naming it and what works.

    Raises:
        ConfigError: the scorer has no ``score_grad``.
    """
    if isinstance(scorer, GradientScorer):
        return scorer
    name = getattr(scorer, "name", type(scorer).__name__)
    raise ConfigError(
        f"method {method!r} needs a differentiable scorer, and scorer {name!r} has no score_grad; use the "
        "ShapesWorld detectors or a CLIP scorer, or method 'exact'"
    )


def check_autograd(method: str) -> None:
    """Refuse a gradient method while autograd is off (``torch.no_grad`` / ``torch.inference_mode``), which would
    otherwise give zero gradients and so zero estimates.

    Raises:
        ConfigError: autograd is disabled in the calling context.
    """
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        raise ConfigError(
            f"method {method!r} computes gradients, but autograd is off here (torch.no_grad or torch.inference_mode "
            "is active); call it outside that block, or use method 'exact'"
        )


@contextmanager
def frozen_parameters(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Hold every parameter of ``modules`` at ``requires_grad=False`` for the block, then restore each flag.

    Gradients are taken with respect to activations only: a frozen weight gets no ``.grad`` and costs no
    backward work, and the caller's flags come back exactly as they were, even on error.
    """
    saved: list[tuple[nn.Parameter, bool]] = []
    seen: set[int] = set()
    try:
        for module in modules:
            for param in module.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    saved.append((param, param.requires_grad))
                    param.requires_grad_(False)
        yield
    finally:
        for param, flag in saved:
            param.requires_grad_(flag)
