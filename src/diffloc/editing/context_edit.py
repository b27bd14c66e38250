"""A closed-form edit of ``context_embedder`` (SD3, FLUX): the linear map from the text encoders' output into the
joint-attention text stream, UCE's route for FLUX.

``W* = argmin Σ‖W c_i − W0 c*_i‖² + ω Σ‖W p_j − W0 p_j‖² + λ‖W − W0‖²`` where ``c_i`` is the encoders' output at
the concept's last token in each tokenizer segment of the stream (SD3: CLIP's and T5's; FLUX: T5's), ``c*_i`` the
target's, and ``p_j`` preserved concepts' tokens and every token of preserved prompts. The map runs once, before
block 0, so the edit reaches every block, for every timestep (its input does not depend on the timestep or the
latent). The bias is unchanged (``W c_i + b = W0 c*_i + b``). The pooled text vector (``pooled_projections``)
does not pass through it and keeps the concept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from diffloc.editing.closed_form import PreservedGram, SharedInputRidge
from diffloc.editing.edit import Edit
from diffloc.editing.preserved import PreservedStatistics, preservation_scope, resolved
from diffloc.editing.requests import LOCOEDIT_TEMPLATES, EditRequest
from diffloc.editing.stream_states import edit_rows, stream_grams
from diffloc.editors import TARGET_MODES
from diffloc.errors import ConfigError, EditError
from diffloc.models.base import LoadedModel
from diffloc.sites import SiteKind
from diffloc.validate import check_positive

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ContextEditConfig:
    """Settings of the ``context_embedder`` edit.

    Attributes:
        lam: ridge strength λ > 0.
        target_mode: ``"bare"`` (the target alone) or ``"template"`` (the target in the key's template).
        preserve_weight: weight ω of the preservation pairs.
    """

    lam: float = 0.01
    target_mode: str = "bare"
    preserve_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lam", self.lam, "ridge strength")
        check_positive("preserve_weight", self.preserve_weight)
        if self.target_mode not in TARGET_MODES:
            raise ConfigError(f"target_mode must be one of {', '.join(TARGET_MODES)}, got {self.target_mode!r}")


def context_scope(request: EditRequest, config: ContextEditConfig) -> dict[str, Any]:
    """What the context edit's preservation statistics depend on besides the weights: the preservation set."""
    return preservation_scope(request, LOCOEDIT_TEMPLATES)


def context_grams(model: LoadedModel, request: EditRequest, config: ContextEditConfig) -> dict[str, PreservedGram]:
    """The statistics of the preserved rows of ``context_embedder``'s input (the text encoders' output)."""
    return stream_grams(model, request, LOCOEDIT_TEMPLATES, {"context": partial(_encoder_output, model)})


def context_statistics(model: LoadedModel, request: EditRequest, config: ContextEditConfig) -> PreservedStatistics:
    """The context edit's preservation statistics for ``request`` (see :mod:`diffloc.editing.preserved`)."""
    return resolved("context", model, request, config, context_scope, context_grams, None)[0]


def _encoder_output(model: LoadedModel, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The text encoders' output per prompt, as one "step" ``(1, tokens, dim)`` (it does not depend on the
    timestep)."""
    with torch.no_grad():
        hidden = model.adapter.encode(model.pipe, list(prompts)).hidden.float().cpu()
    return {p: hidden[i : i + 1] for i, p in enumerate(prompts)}


def compute_context_edit(
    model: LoadedModel, request: EditRequest, config: ContextEditConfig, preserved: PreservedStatistics | None = None
) -> Edit:
    """Compute a ``context_embedder`` edit (the model is not modified).

    ``preserved``: the request's preservation statistics from :func:`context_statistics`, computed earlier on this
    model; by default they are computed here.

    Raises:
        EditError: the model has no ``context_embedder`` (a cross-attention family); ``preserved`` was computed for
            another preservation set or other weights.
        PromptError: a concept/target does not occur in a filled template.
    """
    start = time.perf_counter()
    contexts = model.sites.denoiser_sites(SiteKind.CONTEXT)
    if not contexts:
        raise EditError(f"the {model.family} denoiser has no context_embedder; this editor is for SD3 and FLUX")
    site = contexts[0]
    linear = model.module(site)
    if not isinstance(linear, torch.nn.Linear):
        raise EditError(f"{site.name} is a {type(linear).__name__}, not a linear map; cannot edit it")

    preserved, source = resolved("context", model, request, config, context_scope, context_grams, preserved)
    gram = preserved.grams.get("context")
    keys, targets = edit_rows(model, request, LOCOEDIT_TEMPLATES, config.target_mode, partial(_encoder_output, model))
    solver = SharedInputRidge(keys, targets, config.lam, preserved=gram, preserve_weight=config.preserve_weight)
    current = linear.weight.detach()
    key = f"{site.full_path}.weight"
    stats = {
        "sites": [site.name],
        "key_value_pairs": int(keys.shape[0]),
        "preserve_pairs": 0 if gram is None else gram.rows,
        "preserved_statistics": {"source": source, "seconds": preserved.seconds},
        "seconds": round(time.perf_counter() - start, 6),
    }
    logger.info("context: %s", stats)
    notes = tuple(model.adapter.edit_caveats("context"))
    return Edit(
        method="context", family=model.family, weights={key: solver.apply(current)}, originals={key: current.clone()},
        request=request.to_dict(), config=asdict(config), stats=stats, notes=notes,
    )  # fmt: skip
