"""Text states at subject tokens, shared by the editors.

Two readers:

* :func:`subject_positions` — the last token of a subject inside a prompt, checked against every text
  encoder's tokenizer of the pipeline (SD-XL has two; their token ids must agree for positions to be shared).
* :func:`context_at_subjects` — the states cross-attention reads (``adapter.encode(...).hidden`` passed
  through the UNet's ``encoder_hid_proj`` for IF) at those positions.

Speed: CLIP text encoders are causal, so the state at position p depends on positions <= p only. For pipelines
whose text encoders are all CLIP, prompts are padded to the longest prompt instead of the encoder's maximum
(77), which gives the same states up to float rounding (~1e-6) for a fraction of the cost. T5 (IF) is
bidirectional and is always encoded at its full padded length, exactly as the pipeline does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from diffloc.engine.generate import attention_context
from diffloc.errors import EditError, PromptError
from diffloc.models.base import LoadedModel


def is_causal_clip(encoder: Any) -> bool:
    """Whether a text encoder is a (causal) CLIP text transformer."""
    return str(getattr(encoder.config, "model_type", "")).startswith("clip")


def subject_positions(model: LoadedModel, prompts: Sequence[str], subjects: Sequence[str]) -> list[int]:
    """Position of the last token of ``subjects[i]`` in ``prompts[i]`` (special tokens counted).

    Raises:
        PromptError: a subject is not found in its prompt (the message names the prompt).
        EditError: the pipeline's tokenizers disagree on a prompt's tokens (positions could not be shared).
    """
    pipe, adapter = model.pipe, model.adapter
    specs = adapter.text_encoders(pipe)
    out = []
    for prompt, subject in zip(prompts, subjects, strict=True):
        try:
            _, end = adapter.find_subject(pipe, prompt, subject)
        except PromptError as exc:
            raise PromptError(f"{exc} (edit prompt built from a template; the concept must appear in it)") from None
        first = getattr(pipe, specs[0].tokenizer)(prompt).input_ids
        for spec in specs[1:]:
            other = getattr(pipe, spec.tokenizer)(prompt).input_ids
            if other != first:
                raise EditError(
                    f"{specs[0].tokenizer} and {spec.tokenizer} tokenize {prompt!r} differently; "
                    "token positions cannot be shared between the encoders"
                )
        out.append(end - 1)
    return out


def _padded_length(model: LoadedModel, prompts: Sequence[str]) -> int:
    pipe, adapter = model.pipe, model.adapter
    return max(len(getattr(pipe, spec.tokenizer)(p).input_ids) for spec in adapter.text_encoders(pipe) for p in prompts)


def encode_context(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Cross-attention context ``(len(prompts), tokens, dim)`` of distinct prompts, as the UNet reads it.

    For all-CLIP pipelines the prompts are padded only to the longest one (see the module docstring), so
    only positions up to each prompt's own end are meaningful.
    """
    pipe, adapter = model.pipe, model.adapter
    encoders = [getattr(pipe, spec.component) for spec in adapter.text_encoders(pipe)]
    with torch.no_grad():
        if all(is_causal_clip(e) for e in encoders):
            length = _padded_length(model, prompts)
            # A shallow copy of the (stateless) adapter whose pad length is the longest prompt: the adapter's
            # own encode logic (which layer, SD-XL's concatenation) runs unchanged on shorter sequences.
            short = copy.copy(adapter)
            short.max_tokens = lambda _pipe, _spec: length  # type: ignore[method-assign]
            hidden = short.encode(pipe, list(prompts)).hidden
        else:
            hidden = adapter.encode(pipe, list(prompts)).hidden
        return attention_context(model, hidden)  # (rows, tokens, dim)


def context_at_subjects(model: LoadedModel, prompts: Sequence[str], subjects: Sequence[str]) -> torch.Tensor:
    """Cross-attention context at the last subject token of each prompt, ``(len(prompts), dim)``.

    Each distinct prompt is encoded once.

    Raises:
        PromptError: a subject does not occur in its prompt.
    """
    if not prompts:
        raise PromptError("empty prompt list; an edit needs at least one prompt")
    positions = subject_positions(model, prompts, subjects)
    distinct = list(dict.fromkeys(prompts))
    context = encode_context(model, distinct)
    row = {p: i for i, p in enumerate(distinct)}
    picked = [context[row[p], pos] for p, pos in zip(prompts, positions, strict=True)]
    return torch.stack(picked).float()  # (n, dim)
