"""Causal tracing (causal mediation analysis) of the UNet and of the text encoder.

Corrupt the subject's token embeddings with Gaussian noise, then restore one component's clean output and
measure how much of the attribute comes back (Basu et al., ICLR 2024, sec. 4; ROME's method). Every
restored run shares its batch with the clean run of the same seed; interventions act on the conditional half
of the CFG batch only (the unconditional branch carries no subject).

Where a UNet restore reads its clean value is explicit (``TraceConfig.restore_from``): by default the value the
site has on the restored run's *own* latent with the clean text (``same-latent``), so a restore changes only
the text's path through that site; ``trajectory`` copies the clean run's activation, computed on the clean
latent. Sites that cannot read the text (before the first cross-attention) are always traced as *controls*:
their effect is 0 under ``same-latent``, and a trace whose controls move more than
:data:`~diffloc.tracing.results.CONTROL_LIMIT` is flagged. Effects come with a bootstrap interval over
items (prompt × seed), and, given validation prompts, causal sites are selected by a threshold chosen on
them (:mod:`diffloc.tracing.selection`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffloc.engine.interventions import CorruptTokens, Restore, Run
from diffloc.errors import ConfigError, InseparableItemsError, PromptError, UnknownSiteError
from diffloc.models.base import LoadedModel, TextEncoderSpec
from diffloc.scoring import Scorer
from diffloc.sites import TEXT_STATE_KINDS, SiteKind, SiteRole
from diffloc.tracing.batching import score_runs
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.corruption import corruption, encoder_noise, first_range, replacement_ids, subject_ranges
from diffloc.tracing.executors import Executor
from diffloc.tracing.grad_drop import check_gradient_dropout
from diffloc.tracing.methods import DEFAULT_TOP_K, check_exact_only
from diffloc.tracing.results import DENOISER_TRACE, TEXT_TRACE, TraceResult
from diffloc.tracing.screen import Estimated, Sweep, check_gradient_method, estimate_text, estimate_unet, step_effects
from diffloc.tracing.selection import check_disjoint, select_sites
from diffloc.tracing.statistics import check_items, effect_interval
from diffloc.tracing.store import Job, run_jobs

logger = logging.getLogger(__name__)

#: ``progress(done, total)`` over the runs of a sweep
ProgressFn = Callable[[int, int], None]
TEXT_KINDS = TEXT_STATE_KINDS


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


def _site_groups(model: LoadedModel, sites: str | Sequence[str | Sequence[str]] | None) -> list[tuple[str, ...]]:
    """Expand a site selection into restore groups: globs give one group per site; a nested list is one group;
    ``None`` is every denoiser layer (no ``.k``/``.v`` projection sub-sites), one group each."""
    if sites is None:
        return [(s.name,) for s in model.sites.denoiser_sites()]
    groups: list[tuple[str, ...]] = []
    entries = [sites] if isinstance(sites, str) else list(sites)
    for entry in entries:
        if isinstance(entry, str):
            groups.extend((s.name,) for s in model.sites.select(entry))
        else:
            names = tuple(s.name for s in model.sites.select(list(entry)))
            groups.append(names)
    if not groups:
        raise UnknownSiteError(f"empty site selection; e.g. {_example_globs(model)}")
    bad = [name for group in groups for name in group if model.site(name).role is not SiteRole.DENOISER]
    if bad:
        raise UnknownSiteError(f"denoiser tracing takes denoiser sites; got {bad[0]!r} (use trace_text for text sites)")
    return groups


def _example_globs(model: LoadedModel) -> str:
    """Two example selections of the model's denoiser sites, e.g. ``'unet.*' or 'unet.xattn.*'``."""
    names = [s.name for s in model.sites.denoiser_sites()]
    prefix = names[0].split(".")[0] if names else "<denoiser>"
    kind = SiteKind.XATTN if model.sites.denoiser_sites(SiteKind.XATTN) else SiteKind.JOINT
    return f"'{prefix}.*' or '{prefix}.{kind.value}.*'"


def _with_controls(model: LoadedModel, groups: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], list[str]]:
    """The groups with every control site (text-blind, see :meth:`ModelAdapter.text_blind_sites`) restored
    alone, added in front when not selected; and the control labels."""
    controls = model.adapter.text_blind_sites(model.pipe, model.sites)
    missing = [(name,) for name in controls if (name,) not in groups]
    return missing + groups, controls


def _check_validation(prompts: list[str], validation: list[str], config: TraceConfig) -> list[tuple[str, int]]:
    """Validation items (prompt, seed), checked disjoint from the test items."""
    seeds = config.validation_seeds if config.validation_seeds is not None else config.seeds
    items = [(p, s) for p in validation for s in seeds]
    check_disjoint([(p, s) for p in prompts for s in config.seeds], items)
    return items


def _patch(sites: Sequence[str], config: TraceConfig, positions: tuple[int, int] | None = None) -> Restore:
    """What one restored run patches: ``sites``' values from the clean run (index 0 of :func:`_trace_runs`), or in
    a ``remove`` trace from the corrupted run (index 1), read as ``config.restore_from`` says."""
    return Restore(sites=tuple(sites), source=1 if config.removes else 0, positions=positions,
                   restore_from=config.restore_from, fraction=config.fraction)  # fmt: skip


def _trace_runs(
    prompt: str, seed: int, corrupt: CorruptTokens, restores: Sequence[Restore], *, remove: bool = False
) -> list[Run]:
    """Clean run (index 0), corrupted run (index 1), then corrupted + each restore (``remove``: clean + each)."""
    runs = [Run(prompt=prompt, seed=seed, label="clean"), Run(prompt=prompt, seed=seed, interventions=(corrupt,))]
    base: tuple[CorruptTokens, ...] = () if remove else (corrupt,)
    return runs + [Run(prompt=prompt, seed=seed, interventions=(*base, restore)) for restore in restores]


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
    """Score one (prompt, seed): clean, corrupted, and corrupted + each restore (from the clean run); in a
    ``remove`` trace clean + each patch (from the corrupted run, which then leads every batch beside the clean
    one)."""
    clean, corrupted, *patched = _trace_runs(prompt, seed, corrupt, restores, remove=config.removes)
    lead = [clean, corrupted] if config.removes else [clean]
    runs = patched if config.removes else [corrupted, *patched]
    shared, scores, _ = score_runs(
        model, runs, attribute=attribute, scorer=scorer, config=config, shared=lead, on_batch=advance,
    )  # fmt: skip
    if config.removes:
        return {"prompt": prompt, "seed": seed, "clean": shared[0], "corrupted": shared[1], "scores": scores}
    return {"prompt": prompt, "seed": seed, "clean": shared[0], "corrupted": scores[0], "scores": scores[1:]}


def _validation_jobs(
    model: LoadedModel, weights: str, kind: str, items: list[tuple[str, int]], subject: str, attribute: str,
    scorer: Scorer, config: TraceConfig,
) -> list[Job]:  # fmt: skip
    """Clean + corrupted runs of each validation item (no restores: they only choose the threshold)."""
    ranges = subject_ranges(model, [p for p, _ in items], subject)
    substitutes = replacement_ids(model, [p for p, _ in items], subject, config.substitute)
    return [
        Job(
            spec=_item_spec(
                model, weights, f"{kind}-validation", prompt, seed, subject=subject, attribute=attribute,
                scorer=scorer.name, noise=encoder_noise(model, config), config=config.item_dict(),
            ),
            runs=2,
            compute=partial(
                _restore_item, prompt=prompt, seed=seed,
                corrupt=corruption(model, ranges[prompt], config, seed, substitutes.get(prompt, ())),
                restores=[], attribute=attribute, config=config,
            ),
        )
        for prompt, seed in items
    ]  # fmt: skip


def _selection(
    labels: list[str], items: list[dict[str, Any]], validated: list[dict[str, Any]], *, remove: bool = False
) -> dict | None:
    """The causal-site selection, or ``None`` without validation items or when the corruption does not lower the
    attribute on them (no threshold separates clean from corrupted there; logged as a warning, since the trace's
    effects are still measured, only no sites can be called causal)."""
    if not validated:
        return None
    restored = np.asarray([it["scores"] for it in items], float)
    try:
        return select_sites(labels, restored, validated, items, remove=remove).to_dict()
    except InseparableItemsError as exc:
        logger.warning("no causal sites selected: %s", exc)
        return None


def causal_trace(
    model: LoadedModel,
    prompts: str | Sequence[str],
    subject: str,
    attribute: str,
    *,
    scorer: Scorer,
    sites: str | Sequence[str | Sequence[str]] | None = None,
    config: TraceConfig | None = None,
    validation_prompts: Sequence[str] = (),
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
    method: str = "exact",
    top_k: int = DEFAULT_TOP_K,
    attention_fix: bool = True,
    gradient_dropout: int = 0,
) -> TraceResult:
    """Trace which denoiser (UNet) sites carry the attribute.

    For each prompt and seed (an *item*): one clean run, one corrupted run (noise on the subject tokens), and
    one restored run per site (corrupted, with that site's clean output restored at every step, from the
    source ``config.restore_from`` names). The control sites (text-blind) are always traced too. With
    ``config.direction == "remove"`` each patched run is the clean run with the site's corrupted output instead,
    and the effect measures how much of the attribute goes.

    Args:
        model: the loaded model.
        prompts: prompt(s) containing ``subject`` (the test items, with ``config.seeds``).
        subject: the words to corrupt, e.g. ``"van gogh"``.
        attribute: the text the scorer measures, e.g. ``"in the style of van gogh"``.
        scorer: image scorer (ShapesWorld detectors, CLIP …).
        sites: denoiser site names/globs (default ``None``: every denoiser site but the ``.k``/``.v``
            projections, as ``unet.*`` on a UNet or ``transformer.*`` on PixArt), each restored alone; an entry
            that is itself a list of names/globs is restored as one group (label ``a+b+…``).
        config: sweep settings (seeds, noise, ``restore_from``, intervals, validation seeds).
        validation_prompts: prompts whose items (with ``config.validation_seeds``) choose the causal-site
            threshold τ (clean and corrupted runs only); ``()``: no selection.
        out: directory for resumable per-item results and the final result (``None``: keep nothing on disk).
        progress: called with (runs done, runs total).
        executor: who computes the items (default: this process; :mod:`diffloc.tracing.executors`).
        method: ``"exact"`` (one restored run per site), ``"attribution"`` (every site and step estimated from
            one backward pass per item, :mod:`diffloc.tracing.attribution`; needs a differentiable scorer and
            autograd on) or ``"screen"`` (estimated, then the ``top_k`` highest restored exactly).
        top_k: sites ``screen`` confirms exactly.
        attention_fix: (gradient methods) estimate cross-attention key sites through their layer's exact output
            with the clean keys, not through the softmax (AtP*'s saturation fix; :mod:`diffloc.tracing.key_fix`).
        gradient_dropout: (gradient methods) 0, or L >= 2: also rank the sites by AtP*'s gradient dropout over L
            layers of the denoiser (L more backward passes per batch); ``screen`` then confirms the top of that
            ranking, and ``meta["gradient_dropout"]`` holds it (:mod:`diffloc.tracing.grad_drop`).

    Returns:
        :class:`TraceResult` (``kind=DENOISER_TRACE``, saved as ``"unet"``) with intervals, controls and (given
        validation prompts) the causal-site selection; ``exact_mask`` marks which scores are estimates,
        ``step_effects`` holds the attribution's site × step map.

    Raises:
        PromptError: subject missing from a prompt, empty prompts.
        UnknownSiteError: empty selection, or a site that is not the denoiser's.
        ConfigError: too few items for an interval, validation items that overlap the test items, bad settings, a
            ``remove`` trace with a gradient method.
        DifflocError: an attribute the scorer cannot score.
        SweepIncomplete: ``executor`` is one shard and other shards' items are still missing.
    """
    config = config or TraceConfig()
    prompt_list = _prompts(prompts)
    validation = _check_validation(prompt_list, _prompts(validation_prompts) if validation_prompts else [], config)
    check_items(len(prompt_list) * len(config.seeds), config.intervals)
    scorer.check(attribute)
    groups, controls = _with_controls(model, _site_groups(model, sites))
    labels = ["+".join(g) for g in groups]
    check_exact_only(method, direction=config.direction, fraction=config.fraction)
    check_gradient_method(scorer, method, top_k, len(labels))
    check_gradient_dropout(model, method, gradient_dropout)
    ranges = subject_ranges(model, prompt_list, subject)
    noise = encoder_noise(model, config)
    weights = model.fingerprint()
    validation_jobs = _validation_jobs(model, weights, DENOISER_TRACE, validation, subject, attribute, scorer, config)
    if method != "exact":
        estimated = estimate_unet(
            _sweep(model, weights, subject, attribute, scorer, config, prompt_list, ranges, noise, validation_jobs,
                   out, progress, executor),
            groups, labels, method, top_k, attention_fix=attention_fix, gradient_dropout=gradient_dropout,
        )  # fmt: skip
        return _result(model, DENOISER_TRACE, estimated, labels, first_range(ranges[prompt_list[0]]), noise, config,
                       controls, meta={
            "prompts": prompt_list, "subject": subject, "attribute": attribute, "scorer": scorer.name,
            "restore_from": config.restore_from, "restore": RESTORE_DESCRIPTIONS[config.restore_from],
            "validation_prompts": list(dict.fromkeys(p for p, _ in validation)),
            "subject_ranges": {site: list(span) for site, span in ranges[prompt_list[0]].items()},
        }, out=out)  # fmt: skip
    substitutes = replacement_ids(model, prompt_list, subject, config.substitute)
    jobs = [
        Job(
            spec=_item_spec(
                model, weights, DENOISER_TRACE, prompt, seed, subject=subject, attribute=attribute, scorer=scorer.name,
                sites=[list(g) for g in groups], noise=noise, config=config.item_dict(),
            ),
            runs=len(groups) + 2,
            compute=partial(
                _restore_item, prompt=prompt, seed=seed,
                corrupt=corruption(model, ranges[prompt], config, seed, substitutes.get(prompt, ())),
                restores=[_patch(group, config) for group in groups],
                attribute=attribute, config=config,
            ),
        )
        for prompt in prompt_list
        for seed in config.seeds
    ]  # fmt: skip
    jobs += validation_jobs
    all_items, store = run_jobs(jobs, out, progress, model=model, scorer=scorer, executor=executor)
    items, validated = all_items[: len(all_items) - len(validation)], all_items[len(all_items) - len(validation) :]
    result = TraceResult(
        kind=DENOISER_TRACE,
        scores=np.mean([it["scores"] for it in items], axis=0),
        labels=labels,
        clean_score=float(np.mean([it["clean"] for it in items])),
        corrupt_score=float(np.mean([it["corrupted"] for it in items])),
        subject_range=first_range(ranges[prompt_list[0]]),
        noise=next(iter(noise.values())),
        items=items,
        interval=_interval(items, config),
        controls=controls,
        selection=_selection(labels, items, validated, remove=config.removes),
        meta={
            "model": model.source, "family": model.family, "prompts": prompt_list, "subject": subject,
            "attribute": attribute, "scorer": scorer.name, "config": config.to_dict(),
            "restore_from": config.restore_from, "restore": RESTORE_DESCRIPTIONS[config.restore_from],
            "noise_per_encoder": noise, "validation_prompts": list(dict.fromkeys(p for p, _ in validation)),
            "items_computed": store.computed, "items_reused": store.reused, "method": "exact",
            "subject_ranges": {site: list(span) for site, span in ranges[prompt_list[0]].items()},
        },
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


def _sweep(
    model: LoadedModel, weights: str, subject: str, attribute: str, scorer: Scorer, config: TraceConfig,
    prompts: list[str], ranges: dict[str, dict[str, tuple[int, int]]], noise: dict[str, float], validation: list[Job],
    out: str | Path | None, progress: ProgressFn | None, executor: Executor | None,
) -> Sweep:  # fmt: skip
    """What a gradient-method trace shares with this module's exact trace (item keys, the exact item function)."""
    substitutes = replacement_ids(model, prompts, subject, config.substitute)
    spec = partial(
        _item_spec, model, weights, subject=subject, attribute=attribute, scorer=scorer.name, noise=noise,
        config=config.item_dict(),
    )  # fmt: skip

    def exact(prompt: str, seed: int, corrupt: CorruptTokens, restores: Sequence[Restore]) -> Any:
        return partial(
            _restore_item, prompt=prompt, seed=seed, corrupt=corrupt, restores=list(restores), attribute=attribute,
            config=config,
        )  # fmt: skip

    return Sweep(
        model=model, scorer=scorer, attribute=attribute, config=config, spec=spec, exact=exact,
        items=[(p, s, corruption(model, ranges[p], config, s, substitutes.get(p, ())))
               for p in prompts for s in config.seeds],
        validation=validation, out=out, progress=progress, executor=executor,
    )  # fmt: skip


def _result(
    model: LoadedModel, kind: str, estimated: Estimated, labels: list[str], subject_range: tuple[int, int],
    noise: dict[str, float], config: TraceConfig, controls: list[str], *, meta: dict[str, Any],
    out: str | Path | None, shape: Callable[[np.ndarray], np.ndarray] = np.asarray, tokens: Sequence[str] = (),
    cell_labels: list[str] | None = None,
) -> TraceResult:  # fmt: skip
    """The result of a gradient-method trace, summarized like an exact one (``shape`` lays scores out)."""
    items = estimated.items
    clean, corrupted = float(np.mean([it["clean"] for it in items])), float(np.mean([it["corrupted"] for it in items]))
    interval = _interval(items, config)
    result = TraceResult(
        kind=kind, scores=shape(np.mean([it["scores"] for it in items], axis=0)), labels=labels,
        tokens=list(tokens), clean_score=clean, corrupt_score=corrupted, subject_range=subject_range,
        noise=next(iter(noise.values())), items=items, interval=None if interval is None else shape(interval),
        controls=controls, selection=_selection(cell_labels or labels, items, estimated.validated),
        exact_mask=shape(estimated.exact_mask.astype(float)) == 1,
        step_effects=step_effects(estimated, clean, corrupted),
        meta={
            "model": model.source, "family": model.family, "config": config.to_dict(), "noise_per_encoder": noise,
            "items_computed": estimated.store.computed, "items_reused": estimated.store.reused, **meta,
            **estimated.meta,
        },
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


#: what each restore source means, recorded in results
RESTORE_DESCRIPTIONS = {
    "same-latent": "clean-text value of the site on the restored run's own latent, conditional branch, every step",
    "trajectory": "clean run's activation on the clean trajectory's latent, conditional branch, every step",
}


def _interval(items: list[dict[str, Any]], config: TraceConfig) -> np.ndarray | None:
    return effect_interval(
        np.asarray([it["clean"] for it in items]), np.asarray([it["corrupted"] for it in items]),
        np.asarray([it["scores"] for it in items]), config.intervals, remove=config.removes,
    )  # fmt: skip


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
    validation_prompts: Sequence[str] = (),
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
    skip_unreached: bool = True,
    method: str = "exact",
    top_k: int = DEFAULT_TOP_K,
    encoder: str | None = None,
) -> TraceResult:
    """Trace which text-encoder state (kind × layer × token) carries the attribute.

    ``encoder`` (a site prefix: ``text``, ``text2``, ``text3``) traces that encoder only, on its own tokens; the
    default traces every encoder on the first one's tokens, which families whose tokenizers differ (SD3, FLUX)
    refuse.

    Each restored run corrupts the subject's embeddings, restores one state of the text encoder at one
    token from the clean encoding, and generates with the unmodified UNet. The padding slots after EOS, which
    the UNet reads as well, are restored together as one more row (``tokens[-1]`` = ``"<pad ×K>"``): on the
    shipped ShapesWorld model they alone carry the concept back, where no single real token does. Text states
    are restored during encoding, before any latent exists, so ``config.restore_from`` does not apply (the
    result records ``encoding``). Items are the prompt × ``config.seeds``; ``validation_prompts`` choose the
    causal-state threshold as in :func:`causal_trace`. ``method`` and ``top_k`` as in :func:`causal_trace`: the
    attribution estimates every layer × token × kind from one backward pass per item.

    When every text encoder attends left to right (CLIP), a state at a token before the subject is the same in
    the clean and the corrupted encoding, so restoring it cannot change the run: those cells are not generated
    and hold the item's corrupted score (``meta["unreached_tokens"]`` counts them; on the demo's prompts they
    are 30-60% of the grid). ``skip_unreached=False`` generates them anyway. T5 attends both ways, and nothing
    is skipped there.

    Returns:
        :class:`TraceResult` (``kind="text"``) with scores ``(n_kinds, n_layers, n_tokens)`` (the prompt's
        tokens, then the padding row when the prompt is shorter than the encoder's limit); ``labels`` name
        the kinds (``text.layer``, ``text.attn``, ``text.mlp``, and ``text2.*`` for SD-XL).
    """
    config = config or TraceConfig()
    _prompts(prompt)
    validation = _check_validation([prompt], _prompts(validation_prompts) if validation_prompts else [], config)
    check_items(len(config.seeds), config.intervals)
    scorer.check(attribute)
    site_ranges = model.adapter.subject_ranges(model.pipe, prompt, subject)
    spec0 = traced_encoder(model, encoder)
    subject_range = site_ranges[f"{spec0.prefix}.embed"]
    tokenizer = getattr(model.pipe, spec0.tokenizer)
    ids = tokenizer(prompt).input_ids
    tokens = [tokenizer.decode([i]).strip() or str(i) for i in ids]
    spans = [(pos, pos + 1) for pos in range(len(ids))]
    limit = model.adapter.max_tokens(model.pipe, spec0)
    if len(ids) < limit:
        spans.append((len(ids), limit))
        tokens.append(f"<pad ×{limit - len(ids)}>")
    states = [st for st in text_state_kinds(model, kinds) if encoder is None or st[1].split(".")[0] == encoder]
    n_layers = 1 + max(s.index for s in model.sites if s.kind is SiteKind.TEXT_LAYER)
    grid = [
        (ki, layer, pos, f"{prefix}.{layer}")
        for ki, (_, prefix) in enumerate(states)
        for layer in range(n_layers)
        for pos in range(len(spans))
        if f"{prefix}.{layer}" in model.sites
    ]
    check_exact_only(method, direction=config.direction, fraction=config.fraction)
    check_gradient_method(scorer, method, top_k, len(grid))
    noise = encoder_noise(model, config)
    weights = model.fingerprint()
    unreached = subject_range[0] if skip_unreached and _left_to_right(model, encoder) else 0
    computed = [index for index, (_, _, pos, _) in enumerate(grid) if spans[pos][0] >= unreached]
    validation_jobs = _validation_jobs(model, weights, TEXT_TRACE, validation, subject, attribute, scorer, config)
    cell_labels = [f"{site}@{tokens[pos]}#{pos}" for _, _, pos, site in grid]

    def as_cube(values: np.ndarray) -> np.ndarray:
        cube = np.full((*values.shape[:-1], len(states), n_layers, len(spans)), np.nan)
        for index, (ki, layer, pos, _) in enumerate(grid):
            cube[..., ki, layer, pos] = values[..., index]
        return cube

    if method != "exact":
        estimated = estimate_text(
            _sweep(model, weights, subject, attribute, scorer, config, [prompt], {prompt: site_ranges}, noise,
                   validation_jobs, out, progress, executor),
            [(site, pos) for _, _, pos, site in grid], spans, cell_labels, method, top_k,
        )  # fmt: skip
        return _result(model, TEXT_TRACE, estimated, [label for label, _ in states], subject_range, noise, config, [],
            meta={
                "prompts": [prompt], "subject": subject, "attribute": attribute, "scorer": scorer.name,
                "restore_from": "encoding", "validation_prompts": list(dict.fromkeys(p for p, _ in validation)),
                "subject_ranges": {site: list(span) for site, span in site_ranges.items()}, "encoder": spec0.prefix,
            }, out=out, shape=as_cube, tokens=tokens, cell_labels=cell_labels,
        )  # fmt: skip
    substitutes = replacement_ids(model, [prompt], subject, config.substitute).get(prompt, ())
    jobs = [
        Job(
            spec=_item_spec(
                model, weights, TEXT_TRACE, prompt, seed, subject=subject, attribute=attribute, scorer=scorer.name,
                states=[label for label, _ in states], spans=spans, noise=noise, unreached=unreached,
                config={k: v for k, v in config.item_dict().items() if k != "restore_from"},
            ),
            runs=len(computed) + 2,
            compute=partial(
                _restore_cells, cells=computed, size=len(grid), fill="clean" if config.removes else "corrupted",
                compute=partial(
                    _restore_item, prompt=prompt, seed=seed,
                    corrupt=corruption(model, site_ranges, config, seed, substitutes),
                    restores=[_patch((grid[i][3],), config, spans[grid[i][2]]) for i in computed],
                    attribute=attribute, config=config,
                ),
            ),
        )
        for seed in config.seeds
    ]  # fmt: skip
    jobs += validation_jobs
    all_items, store = run_jobs(jobs, out, progress, model=model, scorer=scorer, executor=executor)
    items, validated = all_items[: len(config.seeds)], all_items[len(config.seeds) :]
    interval = _interval(items, config)
    result = TraceResult(
        kind=TEXT_TRACE,
        scores=as_cube(np.mean([it["scores"] for it in items], axis=0)),
        labels=[label for label, _ in states],
        tokens=tokens,
        clean_score=float(np.mean([it["clean"] for it in items])),
        corrupt_score=float(np.mean([it["corrupted"] for it in items])),
        subject_range=subject_range,
        noise=next(iter(noise.values())),
        items=items,
        interval=None if interval is None else as_cube(interval),
        selection=_selection(cell_labels, items, validated, remove=config.removes),
        meta={
            "model": model.source, "family": model.family, "prompts": [prompt], "subject": subject,
            "attribute": attribute, "scorer": scorer.name, "config": config.to_dict(), "restore_from": "encoding",
            "noise_per_encoder": noise, "validation_prompts": list(dict.fromkeys(p for p, _ in validation)),
            "items_computed": store.computed, "items_reused": store.reused, "unreached_tokens": unreached,
            "subject_ranges": {site: list(span) for site, span in site_ranges.items()}, "encoder": spec0.prefix,
            "method": "exact",
        },
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


def _left_to_right(model: LoadedModel, encoder: str | None = None) -> bool:
    """Whether every traced text encoder of the model (``encoder``: that one) attends only to earlier tokens."""
    from diffloc.models.text_sites import attends_left_only

    return all(
        attends_left_only(getattr(model.pipe, spec.component))
        for spec in model.adapter.text_encoders(model.pipe)
        if encoder is None or spec.prefix == encoder
    )


def traced_encoder(model: LoadedModel, encoder: str | None) -> TextEncoderSpec:
    """The encoder whose tokens a text trace's grid follows: ``encoder`` (a site prefix, ``text2``), or the first.

    Raises:
        ConfigError: an unknown encoder, or none given where the encoders tokenize differently (SD3's CLIP and
            T5): their token positions do not line up, so each is traced on its own.
    """
    specs = model.adapter.text_encoders(model.pipe)
    prefixes = [spec.prefix for spec in specs]
    if encoder is None:
        if len(specs) > 1 and not model.adapter.shared_token_positions:
            raise ConfigError(
                f"the {model.family} text encoders tokenize differently; trace one at a time with encoder= one of "
                f"{', '.join(prefixes)}"
            )
        return specs[0]
    if encoder not in prefixes:
        raise ConfigError(f"unknown text encoder {encoder!r}; valid: {', '.join(prefixes)}")
    return specs[prefixes.index(encoder)]


def _restore_cells(
    compute: Callable[..., dict[str, Any]], cells: Sequence[int], size: int, fill: str = "corrupted", **kwargs: Any
) -> dict[str, Any]:
    """An item whose restores ran for ``cells`` of a ``size``-cell grid only; every other cell cannot differ
    from the run it patches (``fill``: the corrupted run, or in a ``remove`` trace the clean one) and gets its
    score."""
    item = compute(**kwargs)
    scores = [item[fill]] * size
    for cell, score in zip(cells, item["scores"], strict=True):
        scores[cell] = score
    return {**item, "scores": scores}


def first_item_images(model: LoadedModel, result: TraceResult, limit: int = 8) -> torch.Tensor:
    """Regenerate the clean, corrupted and the ``limit`` best restored runs of the first item (for strips),
    with the result's restore source (a ``remove`` trace: the clean run with each site's corrupted value)."""
    from diffloc.engine.generate import generate_runs
    from diffloc.tracing.batching import generation_config

    item = result.items[0]
    prompt, seed = item["prompt"], item["seed"]
    known = set(TraceConfig.__dataclass_fields__)
    saved: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in result.meta["config"].items() if k in known
    }
    substitute = saved.get("substitute")
    config = TraceConfig(**{**saved, "noise": None if substitute else result.noise, "bootstrap": 0,
                            "restore_from": result.restore_from})  # fmt: skip
    stds = result.meta.get("noise_per_encoder") or {"text.embed": result.noise}
    spans = {str(k): (int(v[0]), int(v[1])) for k, v in (result.meta.get("subject_ranges") or {}).items()}
    replaced = replacement_ids(model, [prompt], result.meta.get("subject", ""), substitute).get(prompt, ())
    corrupt = CorruptTokens(
        positions=result.subject_range, std=result.noise, noise_seed=config.noise_seed + seed,
        site_stds=tuple((str(k), float(v)) for k, v in stds.items()),
        site_positions=tuple((k, v) for k, v in spans.items() if v != tuple(result.subject_range)),
        replacements=replaced,
    )  # fmt: skip
    restores = [_patch(name.split("+"), config) for name, _ in result.top(limit, include_controls=False)]
    runs = _trace_runs(prompt, seed, corrupt, restores, remove=config.removes)
    return generate_runs(model, runs, config=generation_config(config))
