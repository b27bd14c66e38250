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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    try:
        spans = adapter.find_subjects(pipe, list(prompts), list(subjects))
    except PromptError as exc:
        raise PromptError(f"{exc} (edit prompt built from a template; the concept must appear in it)") from None
    if len(specs) > 1 and prompts:
        first = getattr(pipe, specs[0].tokenizer)(list(prompts)).input_ids
        for spec in specs[1:]:
            other = getattr(pipe, spec.tokenizer)(list(prompts)).input_ids
            for prompt, a, b in zip(prompts, first, other, strict=True):
                if a != b:
                    raise EditError(
                        f"{specs[0].tokenizer} and {spec.tokenizer} tokenize {prompt!r} differently; "
                        "token positions cannot be shared between the encoders"
                    )
    return [end - 1 for _, end in spans]


def _token_counts(model: LoadedModel, prompts: Sequence[str]) -> list[int]:
    """Token count of each prompt (special tokens included), the longest over the pipeline's tokenizers."""
    pipe = model.pipe
    counts = [0] * len(prompts)
    for spec in model.adapter.text_encoders(pipe):
        for i, ids in enumerate(getattr(pipe, spec.tokenizer)(list(prompts)).input_ids):
            counts[i] = max(counts[i], len(ids))
    return counts


def all_causal(model: LoadedModel) -> bool:
    """Whether every text encoder of the pipeline is a causal CLIP encoder."""
    return all(is_causal_clip(getattr(model.pipe, s.component)) for s in model.adapter.text_encoders(model.pipe))


def encode_context(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Cross-attention context ``(len(prompts), tokens, dim)`` of prompts, as the UNet reads it.

    For all-CLIP pipelines the prompts are padded only to the longest one (see the module docstring), so
    only positions up to each prompt's own end are meaningful.
    """
    pipe, adapter = model.pipe, model.adapter
    with torch.no_grad():
        if all_causal(model):
            length = max(_token_counts(model, prompts))
            # A shallow copy of the (stateless) adapter whose pad length is the longest prompt: the adapter's
            # own encode logic (which layer, SD-XL's concatenation) runs unchanged on shorter sequences.
            short = copy.copy(adapter)
            short.max_tokens = lambda _pipe, _spec: length  # type: ignore[method-assign,assignment]
            hidden = short.encode(pipe, list(prompts)).hidden
        else:
            hidden = adapter.encode(pipe, list(prompts)).hidden
        return attention_context(model, hidden)  # (rows, tokens, dim)


def aligned_positions(key_pos: int, value_pos: int, length: int, use_eos: bool) -> tuple[list[int], list[int]]:
    """Key and value positions of one prompt pair.

    Without ``use_eos`` only the last subject tokens; with it, every position from the key's last subject
    token to the end (EOS and padding) paired by offset with the value prompt's positions, the value's last
    position repeated when it runs out (the Diff-QuickFix reference's alignment).
    """
    if not use_eos:
        return [key_pos], [value_pos]
    keys = list(range(key_pos, length))
    values = [min(value_pos + r, length - 1) for r in range(len(keys))]
    return keys, values


def padded_context(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Cross-attention context ``(len(prompts), tokens, dim)`` float64 at the pipeline's full padded length."""
    with torch.no_grad():
        return attention_context(model, model.adapter.encode(model.pipe, list(prompts)).hidden).double()


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt's cross-attention context at the pipeline's full padded length and its subject's position.

    Attributes:
        context: ``(tokens, dim)`` float64, as the UNet reads it (IF: after ``encoder_hid_proj``).
        position: the subject's last token in the prompt (special tokens counted).
    """

    context: torch.Tensor
    position: int


def encode_pairs(
    model: LoadedModel, prompts: Sequence[str], subjects: Sequence[str]
) -> dict[tuple[str, str], EncodedPrompt]:
    """Each distinct ``(prompt, subject)`` encoded at the full padded length, keyed by that pair.

    Raises:
        PromptError: a subject does not occur in its prompt.
    """
    positions = subject_positions(model, prompts, subjects)
    distinct = list(dict.fromkeys(prompts))
    if not distinct:
        return {}
    context = padded_context(model, distinct)
    row = {p: i for i, p in enumerate(distinct)}
    return {
        (prompt, subject): EncodedPrompt(context=context[row[prompt]], position=position)
        for prompt, subject, position in zip(prompts, subjects, positions, strict=True)
    }


def context_pairs(
    model: LoadedModel,
    key_prompts: Sequence[str],
    key_subjects: Sequence[str],
    value_prompts: Sequence[str],
    value_subjects: Sequence[str],
    known: Mapping[tuple[str, str], EncodedPrompt] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cross-attention context of aligned key/value positions, EOS and padding included, per prompt pair.

    Prompts are encoded at the pipeline's full padded length (the padding slots are what the UNet reads
    after the prompt). Value prompts found in ``known`` (:func:`encode_pairs` of the same model state, e.g. a
    target encoded once for many edits) are not encoded again. Returns, per pair, the key rows and the value
    rows ``(n_i, dim)`` from :func:`aligned_positions` with ``use_eos=True``.

    Raises:
        PromptError: a subject does not occur in its prompt, or no prompts.
    """
    if not key_prompts:
        raise PromptError("empty prompt list; an edit needs at least one prompt")
    known = known or {}
    missing = [pair for pair in zip(value_prompts, value_subjects, strict=True) if pair not in known]
    encoded = encode_pairs(model, [*key_prompts, *(p for p, _ in missing)], [*key_subjects, *(s for _, s in missing)])
    keys, values = [], []
    for key_pair, value_pair in zip(
        zip(key_prompts, key_subjects, strict=True), zip(value_prompts, value_subjects, strict=True), strict=True
    ):
        key, value = encoded[key_pair], known.get(value_pair) or encoded[value_pair]
        k_idx, v_idx = aligned_positions(key.position, value.position, key.context.shape[0], True)
        keys.append(key.context[k_idx])
        values.append(value.context[v_idx])
    return keys, values


def context_rows(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Cross-attention context at every position after BOS of each prompt, at the full padded length.

    Returns ``(len(prompts) * (tokens - 1), dim)`` float64 rows (the rows a preserved prompt keeps).
    """
    if not prompts:
        return torch.zeros(0, 0, dtype=torch.float64)
    context = padded_context(model, prompts)
    return context[:, 1:].reshape(-1, context.shape[-1])


def context_at_subjects(model: LoadedModel, prompts: Sequence[str], subjects: Sequence[str]) -> torch.Tensor:
    """Cross-attention context at the last subject token of each prompt, ``(len(prompts), dim)``.

    Each distinct prompt is encoded once; with causal encoders, prompts of equal token count are batched
    together at exactly that length (no padding work at all).

    Raises:
        PromptError: a subject does not occur in its prompt.
    """
    if not prompts:
        raise PromptError("empty prompt list; an edit needs at least one prompt")
    positions = subject_positions(model, prompts, subjects)
    distinct = list(dict.fromkeys(prompts))
    if all_causal(model):
        groups: dict[int, list[str]] = {}
        for prompt, count in zip(distinct, _token_counts(model, distinct), strict=True):
            groups.setdefault(count, []).append(prompt)
        batches = list(groups.values())
    else:
        batches = [distinct]
    state: dict[str, torch.Tensor] = {}
    for batch in batches:
        context = encode_context(model, batch)
        state.update({p: context[i] for i, p in enumerate(batch)})
    picked = [state[p][pos] for p, pos in zip(prompts, positions, strict=True)]
    return torch.stack(picked).float()  # (n, dim)
