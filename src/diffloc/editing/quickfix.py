"""Diff-QuickFix (Basu et al., ICLR 2024): a closed-form edit of the text encoder's first attention output.

The edited weight is the ``out_proj`` (T5: ``o``) Linear of site ``text.attn.0`` of the *pipeline's own* text
encoder(s) — every encoder for SD-XL. Keys are that Linear's inputs (the concatenated head outputs) for the
concept prompts; values are what the same Linear gives for the target prompts at aligned positions:

* position: the last token of the concept (from ``adapter.find_subject``), and with ``use_eos=True`` (the
  reference default) also every later position — the EOS and the padding slots — aligned by offset from the
  last subject token; when the target prompt runs out of positions the last one is repeated (reference
  behaviour; the default templates give 291 pairs for "van gogh" → "painting" on SD-1);
* value: ``W0 h_target`` (clean mode), or ``W0 h_target + b`` with ``faithful=True``, which reproduces the
  reference notebook's bias-in-targets quirk (the layer adds ``b`` again, so the effective target is
  ``W0 h + 2b``). Only the weight changes; the bias never does.

Only layer 0 is needed, so the text encoder's forward is stopped as soon as the Linear's input is captured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffloc.editing.closed_form import PreservedGram, ridge_solve
from diffloc.editing.edit import Edit
from diffloc.editing.preserved import PreservedStatistics, preservation_scope, resolved
from diffloc.editing.requests import QUICKFIX_TEMPLATES, EditRequest, PromptPair
from diffloc.editing.states import aligned_positions, is_causal_clip, subject_positions
from diffloc.errors import ConfigError, EditError
from diffloc.models.base import LoadedModel, TextEncoderSpec
from diffloc.validate import check_positive

logger = logging.getLogger(__name__)

IF_NOTE = (
    "DeepFloyd IF's T5 text encoder is bidirectional: every token's layer-0 state depends on the whole prompt, "
    "so the edit generalises less across prompts than on CLIP models (the ICML 2024 paper reports editing is "
    "limited on IF)."
)
FAITHFUL_NOTE = (
    "faithful=True: values include out_proj's bias, as in the reference notebook; the edited layer adds the "
    "bias again, so the effective target is W0 h + 2b."
)


@dataclass(frozen=True, kw_only=True)
class QuickFixConfig:
    """Settings of Diff-QuickFix.

    Attributes:
        lam: ridge strength λ > 0 (reference: 0.01).
        use_eos: also map the EOS/padding positions after the last subject token (reference default: on).
        faithful: put out_proj's bias into the values, as the reference notebook does (see module docs).
        layer: text-encoder layer whose attention output projection is edited (the paper: 0).
        preserve_weight: weight ω of the preservation pairs (preserved concepts and prompts) in the solve.
    """

    lam: float = 0.01
    use_eos: bool = True
    faithful: bool = False
    layer: int = 0
    preserve_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lam", self.lam, "ridge strength")
        check_positive("preserve_weight", self.preserve_weight)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ConfigError(f"layer must be an integer >= 0, got {self.layer!r}")


class _Captured(Exception):
    """Raised by the capture hook to stop the text encoder once layer ``layer``'s input is recorded."""


def output_linear(attention: nn.Module) -> tuple[str, nn.Linear]:
    """The output projection of a text self-attention module (CLIP ``out_proj``, T5 ``o``)."""
    for name in ("out_proj", "o"):
        child = getattr(attention, name, None)
        if isinstance(child, nn.Linear):
            return name, child
    raise EditError(f"text attention {type(attention).__name__} has no output projection (out_proj or o)")


@contextmanager
def _capture_input(linear: nn.Linear, store: list[torch.Tensor]) -> Iterator[None]:
    def hook(module: nn.Module, args: tuple) -> None:
        store.append(args[0].detach())
        raise _Captured

    handle = linear.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def attention_inputs(model: LoadedModel, spec: TextEncoderSpec, linear: nn.Linear, prompts: Sequence[str]) -> Any:
    """Inputs of ``linear`` (``(rows, tokens, inner)``) for ``prompts``, padded as the pipeline pads."""
    pipe, adapter = model.pipe, model.adapter
    encoder = getattr(pipe, spec.component)
    ids = adapter.tokenize(pipe, spec, prompts).to(encoder.device)
    kwargs: dict[str, Any] = {}
    if not is_causal_clip(encoder):
        # T5 (IF): the pipeline passes an attention mask that hides padding.
        pad = getattr(getattr(pipe, spec.tokenizer), "pad_token_id", None)
        if pad is not None:
            kwargs["attention_mask"] = (ids != pad).long()
    store: list[torch.Tensor] = []
    with torch.no_grad(), _capture_input(linear, store), suppress(_Captured):
        encoder(ids, **kwargs)
    if not store:
        raise EditError(f"{spec.component}: the output projection never ran during encoding")
    return store[0]


def _gather(hidden: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
    """``hidden[rows[i], cols[i]]`` for every i, one ``(n, inner)`` tensor."""
    return hidden[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)]


def _unedited_outputs(inputs: torch.Tensor, w64: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What the unedited layer gives for ``inputs`` (without its bias, unless ``faithful`` put it in ``bias``)."""
    out = inputs @ w64.T
    return out if bias is None else out + bias


def _site_linear(model: LoadedModel, spec: TextEncoderSpec, config: QuickFixConfig) -> tuple[str, str, nn.Linear]:
    """(site name, attribute name, Linear) of the edited output projection of one text encoder."""
    site_name = f"{spec.prefix}.attn.{config.layer}"
    if site_name not in model.sites:
        raise ConfigError(f"{spec.component} has no layer {config.layer} (no site {site_name!r})")
    attr, linear = output_linear(model.module(model.site(site_name)))
    return site_name, attr, linear


def preserved_scope(request: EditRequest, config: QuickFixConfig) -> dict[str, Any]:
    """What Diff-QuickFix's preservation statistics depend on besides the weights."""
    return preservation_scope(request, QUICKFIX_TEMPLATES, layer=config.layer, use_eos=config.use_eos)


def preserved_grams(model: LoadedModel, request: EditRequest, config: QuickFixConfig) -> dict[str, PreservedGram]:
    """Per text encoder, the statistics of the preserved keys: the preserved concepts at their last token
    (and later positions with ``use_eos``) in every template, and every position after BOS of the preserved
    prompts — all mapped to the layer's own outputs."""
    keep = [p for p in request.pairs(QUICKFIX_TEMPLATES) if p.preserve]
    if not keep and not request.preserve_prompts:
        return {}
    pipe, adapter = model.pipe, model.adapter
    positions = subject_positions(model, [p.key_prompt for p in keep], [p.key_subject for p in keep]) if keep else []
    prompts = list(dict.fromkeys(p.key_prompt for p in keep))
    row = {p: i for i, p in enumerate(prompts)}
    grams: dict[str, PreservedGram] = {}
    for spec in adapter.text_encoders(pipe):
        _, _, linear = _site_linear(model, spec, config)
        hidden = attention_inputs(model, spec, linear, prompts + list(request.preserve_prompts)).double()
        rows, cols = [], []
        for pair, pos in zip(keep, positions, strict=True):
            k_idx, _ = aligned_positions(pos, pos, hidden.shape[1], config.use_eos)
            rows += [row[pair.key_prompt]] * len(k_idx)
            cols += k_idx
        parts = [_gather(hidden, rows, cols)] if rows else []
        if request.preserve_prompts:
            parts.append(hidden[len(prompts) :, 1:].reshape(-1, hidden.shape[-1]))  # every position after BOS
        grams[spec.component] = PreservedGram.of(torch.cat(parts), hidden.shape[-1])
    return grams


def quickfix_statistics(model: LoadedModel, request: EditRequest, config: QuickFixConfig) -> PreservedStatistics:
    """Diff-QuickFix's preservation statistics for ``request`` (see :mod:`diffloc.editing.preserved`)."""
    return resolved("quickfix", model, request, config, preserved_scope, preserved_grams, None)[0]


def compute_quickfix(
    model: LoadedModel, request: EditRequest, config: QuickFixConfig, preserved: PreservedStatistics | None = None
) -> Edit:
    """Compute a Diff-QuickFix edit (the model is not modified).

    Args:
        model: the loaded model.
        request: concepts, targets, templates and preserved concepts.
        config: :class:`QuickFixConfig`.
        preserved: the request's preservation statistics from :func:`quickfix_statistics`, computed earlier on
            this model (the edit then encodes only its own prompts); by default they are computed here.

    Returns:
        An :class:`~diffloc.editing.edit.Edit` replacing the output-projection weight of layer
        ``config.layer`` of every text encoder.

    Raises:
        PromptError: a concept/target does not occur in a filled template, or a prompt is too long.
        ConfigError: the layer does not exist.
        EditError: ``preserved`` was computed for another preservation set or other weights.
    """
    start = time.perf_counter()
    pipe, adapter = model.pipe, model.adapter
    specs = adapter.text_encoders(pipe)
    for spec in specs:
        _site_linear(model, spec, config)  # a missing layer fails before any encoding
    pairs: list[PromptPair] = [p for p in request.pairs(QUICKFIX_TEMPLATES) if not p.preserve]
    preserved, source = resolved("quickfix", model, request, config, preserved_scope, preserved_grams, preserved)
    # One batched subject lookup and one encoder pass over the edit's own prompts per encoder.
    positions = subject_positions(
        model,
        [p.key_prompt for p in pairs] + [p.value_prompt for p in pairs],
        [p.key_subject for p in pairs] + [p.value_subject for p in pairs],
    )
    key_pos, value_pos = positions[: len(pairs)], positions[len(pairs) :]
    prompts = list(dict.fromkeys([p.key_prompt for p in pairs] + [p.value_prompt for p in pairs]))
    row = {p: i for i, p in enumerate(prompts)}
    weights: dict[str, torch.Tensor] = {}
    originals: dict[str, torch.Tensor | None] = {}
    stats: dict[str, Any] = {"prompt_pairs": len(pairs), "sites": [], "key_value_pairs": {}, "solve_seconds": 0.0}
    for spec in specs:
        site_name, attr, linear = _site_linear(model, spec, config)
        hidden = attention_inputs(model, spec, linear, prompts).double()  # (rows, tokens, inner)
        w0 = linear.weight.detach()
        w64 = w0.double()
        bias = linear.bias.detach().double() if (config.faithful and linear.bias is not None) else None
        k_rows, k_cols, v_rows, v_cols = [], [], [], []
        for pair, kp, vp in zip(pairs, key_pos, value_pos, strict=True):
            k_idx, v_idx = aligned_positions(kp, vp, hidden.shape[1], config.use_eos)
            k_rows += [row[pair.key_prompt]] * len(k_idx)
            k_cols += k_idx
            v_rows += [row[pair.value_prompt]] * len(v_idx)
            v_cols += v_idx
        edit_k = _gather(hidden, k_rows, k_cols)
        edit_v = _unedited_outputs(_gather(hidden, v_rows, v_cols), w64, bias)
        gram = preserved.grams.get(spec.component)
        solve_start = time.perf_counter()
        new = ridge_solve(
            w0,
            edit_k,
            edit_v,
            config.lam,
            preserved=gram,
            preserved_bias=bias,
            preserve_weight=config.preserve_weight,
        )
        stats["solve_seconds"] += time.perf_counter() - solve_start
        key = f"{model.site(site_name).full_path}.{attr}.weight"
        weights[key] = new
        originals[key] = w0.clone()
        stats["sites"].append(site_name)
        stats["key_value_pairs"][spec.component] = {
            "edit": int(edit_k.shape[0]),
            "preserve": gram.rows if gram is not None else 0,
        }
    notes = list(model.adapter.edit_caveats("quickfix"))
    if not notes and any(not is_causal_clip(getattr(pipe, s.component)) for s in specs):
        notes.append(IF_NOTE)
    if config.faithful:
        notes.append(FAITHFUL_NOTE)
    stats["solve_seconds"] = round(stats["solve_seconds"], 6)
    stats["preserved_statistics"] = {"source": source, "seconds": preserved.seconds}
    stats["seconds"] = round(time.perf_counter() - start, 6)
    logger.info("quickfix: %s", stats)
    return Edit(
        method="quickfix",
        family=model.family,
        weights=weights,
        originals=originals,
        request=request.to_dict(),
        config=asdict(config),
        stats=stats,
        notes=tuple(notes),
    )
