"""Text-stream rows at subject tokens, shared by the joint-attention editors (SD3, FLUX).

In a joint-attention model the text reaches the denoiser as a token stream: SD3's is CLIP's 77 tokens followed by
T5's, FLUX's is T5's alone. A subject therefore sits at one position per tokenizer segment (CLIP counts a BOS
token, T5 none, and their subwords differ), and an edit maps every one of them: the key rows of a prompt pair
are the concept's last token in each segment, its value rows the target's, in the same segment order.

:func:`edit_rows` and :func:`preserved_rows` turn prompt pairs into the ridge solve's rows (keys and target inputs;
preserved inputs) from any per-prompt state tensor ``(steps, tokens, dim)``: ``context_embedder``'s input (one step:
it does not depend on the timestep) or a joint block's text-side projection input, recorded at every sampling step.
The preserved rows enter the solve only through their Gram matrix (:func:`stream_grams`), which
:mod:`diffloc.editing.preserved` computes once and reuses across edits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from diffloc.editing.closed_form import PreservedGram
from diffloc.editing.requests import EditRequest
from diffloc.errors import EditError, PromptError
from diffloc.models.base import LoadedModel

#: ``states(prompts) -> {prompt: (steps, tokens, dim)}``
StateReader = Callable[[Sequence[str]], Mapping[str, torch.Tensor]]


def stream_positions(model: LoadedModel, prompts: Sequence[str], subjects: Sequence[str]) -> list[list[int]]:
    """Per prompt, the text-stream positions of its subject's last token, one per tokenizer segment in order.

    Raises:
        PromptError: a subject does not occur in (or align with the tokens of) its prompt.
        EditError: the model has no text stream (a cross-attention family).
    """
    adapter, pipe = model.adapter, model.pipe
    offsets = getattr(adapter, "token_offsets", None)
    if offsets is None:
        raise EditError(f"the {model.family} denoiser has no text stream; this editor is for SD3 and FLUX")
    segment = offsets(pipe)
    specs = [spec for spec in adapter.text_encoders(pipe) if f"{spec.prefix}.embed" in segment]
    try:
        spans = {spec.prefix: adapter.find_subjects(pipe, list(prompts), list(subjects), spec) for spec in specs}
    except PromptError as exc:
        raise PromptError(f"{exc} (edit prompt built from a template; the concept must appear in it)") from None
    return [
        sorted({segment[f"{spec.prefix}.embed"] + spans[spec.prefix][i][1] - 1 for spec in specs})
        for i in range(len(prompts))
    ]


def _rows(states: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """``(steps * len(positions), dim)`` float64 rows of one prompt's states at ``positions``."""
    return states[:, positions].reshape(-1, states.shape[-1]).double()


def edit_rows(
    model: LoadedModel, request: EditRequest, templates: tuple[str, ...], target_mode: str, states: StateReader
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge rows of ``request``'s edited concepts: keys and their target inputs.

    Keys are the concepts' last tokens in each prompt (every segment, every step of ``states``), targets the
    target's in the target prompt (``target_mode="bare"``: the target alone; ``"template"``: the target in the
    key's template).

    Raises:
        PromptError: a concept or target does not occur in its prompt.
        EditError: a prompt pair's segments disagree in number.
    """
    edits = [p for p in request.pairs(templates) if not p.preserve]
    value = _values(request, templates, target_mode)
    encoded = states(edit_prompts(request, templates, target_mode))
    key_pos = stream_positions(model, [p.key_prompt for p in edits], [p.key_subject for p in edits])
    value_pos = stream_positions(model, [v for v, _ in value], [s for _, s in value])
    keys, targets = [], []
    for pair, k_pos, v_pos, (v_prompt, _) in zip(edits, key_pos, value_pos, value, strict=True):
        if len(k_pos) != len(v_pos):
            raise EditError(f"{pair.key_prompt!r} and {v_prompt!r} have different text-stream segments")
        keys.append(_rows(encoded[pair.key_prompt], k_pos))
        targets.append(_rows(encoded[v_prompt], v_pos))
    return torch.cat(keys), torch.cat(targets)


def preserved_rows(
    model: LoadedModel, request: EditRequest, templates: tuple[str, ...], states: StateReader
) -> torch.Tensor | None:
    """The preserved inputs of ``request`` (``None`` when it preserves nothing): preserved concepts at their last
    token in every template and segment (they map to themselves), every position of ``request.preserve_prompts``.

    Raises:
        PromptError: a preserved concept does not occur in its prompt.
    """
    kept = [p for p in request.pairs(templates) if p.preserve]
    prompts = preserved_prompts(request, templates)
    if not prompts:
        return None
    encoded = states(prompts)
    positions = stream_positions(model, [p.key_prompt for p in kept], [p.key_subject for p in kept])
    rows = [_rows(encoded[p.key_prompt], pos) for p, pos in zip(kept, positions, strict=True)]
    rows += [_rows(encoded[p], list(range(encoded[p].shape[1]))) for p in request.preserve_prompts]
    return torch.cat(rows)


def _values(request: EditRequest, templates: tuple[str, ...], target_mode: str) -> list[tuple[str, str]]:
    """(target prompt, target) of every edited pair."""
    edits = [p for p in request.pairs(templates) if not p.preserve]
    return [(p.value_subject if target_mode == "bare" else p.value_prompt, p.value_subject) for p in edits]


def edit_prompts(request: EditRequest, templates: tuple[str, ...], target_mode: str) -> list[str]:
    """Every prompt :func:`edit_rows` reads, in order, without repeats."""
    keys = [p.key_prompt for p in request.pairs(templates) if not p.preserve]
    return list(dict.fromkeys(keys + [v for v, _ in _values(request, templates, target_mode)]))


def preserved_prompts(request: EditRequest, templates: tuple[str, ...]) -> list[str]:
    """Every prompt :func:`preserved_rows` reads, in order, without repeats."""
    kept = [p.key_prompt for p in request.pairs(templates) if p.preserve]
    return list(dict.fromkeys(kept + list(request.preserve_prompts)))


def stream_grams(
    model: LoadedModel, request: EditRequest, templates: tuple[str, ...], spaces: Mapping[str, StateReader]
) -> dict[str, PreservedGram]:
    """The preservation statistics of ``request`` in each input space (name -> the states read there): the Gram
    matrix of :func:`preserved_rows`, which is all the ridge solve needs of them; empty when nothing is preserved."""
    grams = {}
    for space, states in spaces.items():
        rows = preserved_rows(model, request, templates, states)
        if rows is not None:
            grams[space] = PreservedGram.of(rows, rows.shape[1])
    return grams
