"""Causal tracing (causal mediation analysis) of the UNet and of the text encoder.

Corrupt the subject's token embeddings with Gaussian noise, then restore one component's clean output and
measure how much of the attribute comes back (Basu et al., ICLR 2024, sec. 4; ROME's method). Every
restored run shares its batch with the clean run of the same seed, so the clean activation at step ``t``
is read from the clean trajectory at step ``t`` in the same UNet call; interventions act on the
conditional half of the CFG batch only (the unconditional branch carries no subject).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from diffloc.engine.interventions import CorruptTokens, Restore, Run
from diffloc.errors import ConfigError, PromptError, UnknownSiteError
from diffloc.eval.scorers import Scorer
from diffloc.models.base import LoadedModel
from diffloc.sites import TEXT_STATE_KINDS, SiteKind
from diffloc.tracing.batching import score_runs
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.executors import Executor
from diffloc.tracing.results import TraceResult
from diffloc.tracing.store import Job, run_jobs

logger = logging.getLogger(__name__)

#: ``progress(done, total)`` over the runs of a sweep
ProgressFn = Callable[[int, int], None]
TEXT_KINDS = TEXT_STATE_KINDS


def embedding_noise(model: LoadedModel, config: TraceConfig) -> float:
    """Corruption std: ``config.noise`` or ``noise_multiplier`` × std of the token-embedding matrix."""
    if config.noise is not None:
        return float(config.noise)
    weight = cast(torch.Tensor, model.module("text.embed").weight)
    return float(config.noise_multiplier * weight.detach().to(torch.float32).std())


def _prompts(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise PromptError("prompt list is empty; give at least one prompt")
    for p in items:
        if not p.strip():
            raise PromptError("empty prompt in the prompt list")
    return items


def _item_spec(
    model: LoadedModel, weights: str, kind: str, prompt: str, seed: int, **extra: object
) -> dict[str, object]:
    """What defines one sweep item; ``weights`` is :meth:`LoadedModel.fingerprint`, taken once per sweep."""
    return {
        "model": model.source, "family": model.family, "weights": weights, "kind": kind,
        "prompt": prompt, "seed": seed, **extra,
    }  # fmt: skip


def _site_groups(model: LoadedModel, sites: str | Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Expand a site selection into restore groups: globs give one group per site; a nested list is one group."""
    groups: list[tuple[str, ...]] = []
    entries = [sites] if isinstance(sites, str) else list(sites)
    for entry in entries:
        if isinstance(entry, str):
            groups.extend((s.name,) for s in model.sites.select(entry))
        else:
            names = tuple(s.name for s in model.sites.select(list(entry)))
            groups.append(names)
    if not groups:
        raise UnknownSiteError("empty site selection; e.g. 'unet.*' or 'unet.xattn.*'")
    bad = [name for group in groups for name in group if model.site(name).component != "unet"]
    if bad:
        raise UnknownSiteError(f"UNet tracing takes UNet sites; got {bad[0]!r} (use trace_text for text sites)")
    return groups


def _trace_runs(prompt: str, seed: int, corrupt: CorruptTokens, restores: Sequence[Restore]) -> list[Run]:
    """Clean run (index 0, the restore source), corrupted run, then corrupted + each restore."""
    runs = [Run(prompt=prompt, seed=seed, label="clean"), Run(prompt=prompt, seed=seed, interventions=(corrupt,))]
    return runs + [Run(prompt=prompt, seed=seed, interventions=(corrupt, restore)) for restore in restores]


def _restore_item(
    model: LoadedModel,
    prompt: str,
    seed: int,
    corrupt: CorruptTokens,
    restores: Sequence[Restore],
    attribute: str,
    scorer: Scorer,
    config: TraceConfig,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    """Score one (prompt, seed): clean, corrupted, and corrupted + each restore (from the clean run)."""
    clean, *runs = _trace_runs(prompt, seed, corrupt, restores)
    shared, scores, _ = score_runs(
        model, runs, attribute=attribute, scorer=scorer, config=config, shared=[clean], on_batch=advance,
    )  # fmt: skip
    return {"prompt": prompt, "seed": seed, "clean": shared[0], "corrupted": scores[0], "scores": scores[1:]}


def causal_trace(
    model: LoadedModel,
    prompts: str | Sequence[str],
    subject: str,
    attribute: str,
    *,
    scorer: Scorer,
    sites: str | Sequence[str | Sequence[str]] = "unet.*",
    config: TraceConfig | None = None,
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
) -> TraceResult:
    """Trace which UNet sites carry the attribute.

    For each prompt and seed: one clean run, one corrupted run (noise on the subject tokens), and one
    restored run per site (corrupted, with that site's output copied from the clean run at every step).

    Args:
        model: the loaded model.
        prompts: prompt(s) containing ``subject``.
        subject: the words to corrupt, e.g. ``"van gogh"``.
        attribute: the text the scorer measures, e.g. ``"in the style of van gogh"``.
        scorer: image scorer (ShapesWorld detectors, CLIP …).
        sites: UNet site names/globs (default every res/sattn/xattn/ff layer), each restored alone; an entry
            that is itself a list of names/globs is restored as one group (label ``a+b+…``).
        config: sweep settings.
        out: directory for resumable per-item results and the final result (``None``: keep nothing on disk).
        progress: called with (runs done, runs total).
        executor: who computes the items (default: this process; :mod:`diffloc.tracing.executors`).

    Returns:
        :class:`TraceResult` (``kind="unet"``).

    Raises:
        PromptError: subject missing from a prompt, empty prompts.
        UnknownSiteError: empty or non-UNet site selection.
        ConfigError, DifflocError: bad settings or an attribute the scorer cannot score.
        SweepIncomplete: ``executor`` is one shard and other shards' items are still missing.
    """
    config = config or TraceConfig()
    prompt_list = _prompts(prompts)
    scorer.check(attribute)
    groups = _site_groups(model, sites)
    ranges = {p: model.adapter.find_subject(model.pipe, p, subject) for p in prompt_list}
    noise = embedding_noise(model, config)
    weights = model.fingerprint()
    jobs = [
        Job(
            spec=_item_spec(
                model, weights, "unet", prompt, seed, subject=subject, attribute=attribute, scorer=scorer.name,
                sites=[list(g) for g in groups], noise=noise, config=config.to_dict(),
            ),
            runs=len(groups) + 2,
            compute=partial(
                _restore_item, prompt=prompt, seed=seed,
                corrupt=CorruptTokens(positions=ranges[prompt], std=noise, noise_seed=config.noise_seed + seed),
                restores=[Restore(sites=group, source=0) for group in groups], attribute=attribute, config=config,
            ),
        )
        for prompt in prompt_list
        for seed in config.seeds
    ]  # fmt: skip
    items, store = run_jobs(jobs, out, progress, model=model, scorer=scorer, executor=executor)
    result = TraceResult(
        kind="unet",
        scores=np.mean([it["scores"] for it in items], axis=0),
        labels=["+".join(g) for g in groups],
        clean_score=float(np.mean([it["clean"] for it in items])),
        corrupt_score=float(np.mean([it["corrupted"] for it in items])),
        subject_range=ranges[prompt_list[0]],
        noise=noise,
        items=items,
        meta={
            "model": model.source, "family": model.family, "prompts": prompt_list, "subject": subject,
            "attribute": attribute, "scorer": scorer.name, "config": config.to_dict(),
            "restore": "clean run of the same batch, conditional branch, every step",
            "items_computed": store.computed, "items_reused": store.reused,
        },
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


def text_state_kinds(model: LoadedModel, kinds: Sequence[str] = TEXT_KINDS) -> list[tuple[str, str]]:
    """(label, site-name prefix) per encoder and state kind, e.g. ``("text.attn", "text.attn")``."""
    for kind in kinds:
        if kind not in TEXT_KINDS:
            raise ConfigError(f"unknown text state kind {kind!r}; valid: {', '.join(TEXT_KINDS)}")
    prefixes = sorted({s.name.split(".")[0] for s in model.sites if s.kind is SiteKind.TEXT_LAYER})
    prefixes.sort(key=lambda p: (p != "text", p))
    return [(f"{p}.{k}", f"{p}.{k}") for p in prefixes for k in kinds]


def trace_text(
    model: LoadedModel,
    prompt: str,
    subject: str,
    attribute: str,
    *,
    scorer: Scorer,
    kinds: Sequence[str] = TEXT_KINDS,
    config: TraceConfig | None = None,
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
) -> TraceResult:
    """Trace which text-encoder state (kind × layer × token) carries the attribute.

    Each restored run corrupts the subject's embeddings, restores one state of the text encoder at one
    token from the clean encoding, and generates with the unmodified UNet. The padding slots after EOS, which
    the UNet reads as well, are restored together as one more row (``tokens[-1]`` = ``"<pad ×K>"``): on the
    shipped ShapesWorld model they alone carry the concept back, where no single real token does.

    Returns:
        :class:`TraceResult` (``kind="text"``) with scores ``(n_kinds, n_layers, n_tokens)`` (the prompt's
        tokens, then the padding row when the prompt is shorter than the encoder's limit); ``labels`` name
        the kinds (``text.layer``, ``text.attn``, ``text.mlp``, and ``text2.*`` for SD-XL).
    """
    config = config or TraceConfig()
    _prompts(prompt)
    scorer.check(attribute)
    subject_range = model.adapter.find_subject(model.pipe, prompt, subject)
    spec0 = model.adapter.text_encoders(model.pipe)[0]
    tokenizer = getattr(model.pipe, spec0.tokenizer)
    ids = tokenizer(prompt).input_ids
    tokens = [tokenizer.decode([i]).strip() or str(i) for i in ids]
    spans = [(pos, pos + 1) for pos in range(len(ids))]
    limit = model.adapter.max_tokens(model.pipe, spec0)
    if len(ids) < limit:
        spans.append((len(ids), limit))
        tokens.append(f"<pad ×{limit - len(ids)}>")
    states = text_state_kinds(model, kinds)
    n_layers = 1 + max(s.index for s in model.sites if s.kind is SiteKind.TEXT_LAYER)
    grid = [
        (ki, layer, pos, f"{prefix}.{layer}")
        for ki, (_, prefix) in enumerate(states)
        for layer in range(n_layers)
        for pos in range(len(spans))
        if f"{prefix}.{layer}" in model.sites
    ]
    noise = embedding_noise(model, config)
    weights = model.fingerprint()
    jobs = [
        Job(
            spec=_item_spec(
                model, weights, "text", prompt, seed, subject=subject, attribute=attribute, scorer=scorer.name,
                states=[label for label, _ in states], spans=spans, noise=noise, config=config.to_dict(),
            ),
            runs=len(grid) + 2,
            compute=partial(
                _restore_item, prompt=prompt, seed=seed,
                corrupt=CorruptTokens(positions=subject_range, std=noise, noise_seed=config.noise_seed + seed),
                restores=[Restore(sites=(site,), source=0, positions=spans[pos]) for _, _, pos, site in grid],
                attribute=attribute, config=config,
            ),
        )
        for seed in config.seeds
    ]  # fmt: skip
    items, store = run_jobs(jobs, out, progress, model=model, scorer=scorer, executor=executor)
    mean = np.mean([it["scores"] for it in items], axis=0)
    cube = np.full((len(states), n_layers, len(spans)), np.nan)
    for value, (ki, layer, pos, _) in zip(mean, grid, strict=True):
        cube[ki, layer, pos] = value
    result = TraceResult(
        kind="text",
        scores=cube,
        labels=[label for label, _ in states],
        tokens=tokens,
        clean_score=float(np.mean([it["clean"] for it in items])),
        corrupt_score=float(np.mean([it["corrupted"] for it in items])),
        subject_range=subject_range,
        noise=noise,
        items=items,
        meta={
            "model": model.source, "family": model.family, "prompts": [prompt], "subject": subject,
            "attribute": attribute, "scorer": scorer.name, "config": config.to_dict(),
            "items_computed": store.computed, "items_reused": store.reused,
        },
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


def first_item_images(model: LoadedModel, result: TraceResult, limit: int = 8) -> torch.Tensor:
    """Regenerate the clean, corrupted and the ``limit`` best restored runs of the first item (for strips)."""
    from diffloc.tracing.batching import generation_config

    item = result.items[0]
    prompt, seed = item["prompt"], item["seed"]
    config = TraceConfig(**{**result.meta["config"], "seeds": tuple(result.meta["config"]["seeds"])})
    corrupt = CorruptTokens(positions=result.subject_range, std=result.noise, noise_seed=config.noise_seed + seed)
    restores = [Restore(sites=tuple(name.split("+")), source=0) for name, _ in result.top(limit)]
    runs = _trace_runs(prompt, seed, corrupt, restores)
    from diffloc.engine.generate import generate_runs

    return generate_runs(model, runs, config=generation_config(config))
