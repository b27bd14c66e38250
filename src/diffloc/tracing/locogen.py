"""LocoGen: find the window of cross-attention layers that controls an attribute (Basu et al., ICML 2024).

For every window of ``m`` consecutive cross-attention layers, those layers read the *target* prompt's text
states as their key/value input while every other layer reads the original prompt; the attribute is scored
on the result. For removal (styles, objects) the best window is the one whose swap lowers the attribute
most; for a fact update (the attribute is the new fact) the one that raises it most.

Unlike the reference script (one 50-step generation per window, text re-encoded for every layer at every
step, images saved and never scored), windows are packed into batches, each distinct prompt is encoded
once, and every window is scored over prompts × seeds. SD-XL's pooled embedding and IF's pooled text time
embedding keep coming from the original prompt (recorded in the result).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from diffloc.engine.interventions import Intervention, Restore, Run, SwapContext
from diffloc.errors import ConfigError, PromptError
from diffloc.models.base import LoadedModel
from diffloc.models.mmdit_sites import stream_inputs
from diffloc.scoring import Scorer
from diffloc.sites import SiteKind
from diffloc.tracing.batching import score_runs
from diffloc.tracing.causal import _item_spec, _prompts
from diffloc.tracing.config import LocoGenConfig
from diffloc.tracing.executors import Executor
from diffloc.tracing.methods import LOCOGEN_VARIANTS
from diffloc.tracing.results import WindowResult
from diffloc.tracing.statistics import check_items, mean_interval
from diffloc.tracing.store import Job, run_jobs

logger = logging.getLogger(__name__)

#: What each variant's window does, recorded in results.
VARIANT_DESCRIPTIONS = {
    "cross-attention": "the window's cross-attention layers read the target prompt's text states as keys/values",
    "text-stream": (
        "activation patching: the text stream entering each block of the window is the target prompt's at that "
        "block, computed on the run's own latent (its pooled text, which modulates the blocks, is the target's "
        "there and the original's elsewhere)"
    ),
    "prompt-injection": (
        "prompt injection: each block of the window reads the target prompt's context as it enters the first "
        "block, in place of the text stream earlier blocks computed"
    ),
}
#: Window length of the released LocoGen script (``trace_attn_layer.py``), shrinking to 1 at the end.
REFERENCE_WINDOW = 3


def xattn_layers(model: LoadedModel) -> list[str]:
    """Names of the denoiser's cross-attention sites in execution order (``unet.xattn.0`` … on a UNet)."""
    return [s.name for s in model.sites.denoiser_sites(SiteKind.XATTN)]


def window_layers(model: LoadedModel, variant: str = LOCOGEN_VARIANTS[0]) -> list[str]:
    """The layers a ``variant`` window is made of, in execution order: cross-attention sites, or the blocks of a
    joint-attention transformer (``transformer.joint.N``, then FLUX's ``transformer.single.N``).

    Raises:
        ConfigError: the variant does not apply to the model's family (one line naming the one that does).
    """
    if variant == LOCOGEN_VARIANTS[0]:
        layers = xattn_layers(model)
        if not layers:
            raise ConfigError(
                f"the {model.family} denoiser has no cross-attention layers (its text enters through joint "
                "attention); use variant 'text-stream' (--intervention; activation patching of the text stream "
                "entering a window of blocks) or 'prompt-injection'"
            )
        return layers
    blocks = [s.name for s in model.sites.denoiser_sites((SiteKind.JOINT, SiteKind.SINGLE))]
    if not blocks:
        raise ConfigError(
            f"variant {variant!r} (--intervention) needs a joint-attention family (sd3, flux); the {model.family} "
            "denoiser reads text through cross-attention: use variant 'cross-attention'"
        )
    return blocks


def window_interventions(
    model: LoadedModel, window: Sequence[str], target_prompt: str, variant: str, fraction: float = 1.0
) -> Intervention:
    """The intervention that makes ``window`` read ``target_prompt`` (see :class:`LocoGenConfig` ``variant``);
    a ``text-stream`` window restores from run 1 of its batch, the target prompt's own run. ``fraction`` < 1
    moves the window only that share of the way (:class:`LocoGenConfig` ``fraction``)."""
    if variant == "text-stream":
        inputs = stream_inputs(list(model.sites))
        return Restore(sites=tuple(inputs[block] for block in window), source=1, restore_from="same-latent",
                       fraction=fraction)  # fmt: skip
    return SwapContext(sites=tuple(window), prompt=target_prompt, fraction=fraction)


def check_window_search(sizes: Sequence[int], min_effect: float) -> None:
    """Validate the settings of a window search (LocoGen's, or LocoEdit's in ``diffloc.workflows.widening``).

    Raises:
        ConfigError: empty ``sizes``, a size that is not an integer >= 1, or ``min_effect`` outside (0, 1].
    """
    if not sizes or any(not isinstance(m, int) or m < 1 for m in sizes):
        raise ConfigError(f"window sizes must be a non-empty list of integers >= 1, got {list(sizes)!r}")
    if not 0 < min_effect <= 1:
        raise ConfigError(f"min_effect must be in (0, 1], got {min_effect!r}")


def windows_for(model: LoadedModel, config: LocoGenConfig) -> list[list[str]]:
    """The windows of cross-attention site names a sweep visits, in order of window start.

    Raises:
        ConfigError: the window is longer than the model's number of cross-attention layers.
    """
    layers = window_layers(model, config.variant)
    n = len(layers)
    if config.preset == "reference":
        return [layers[j : j + REFERENCE_WINDOW] if j + REFERENCE_WINDOW - 1 < n else [layers[j]] for j in range(n)]
    if config.window > n:
        noun = "cross-attention layers" if config.variant == LOCOGEN_VARIANTS[0] else "blocks"
        raise ConfigError(f"window {config.window} is larger than the model's {n} {noun}; use 1..{n}")
    return [layers[j : j + config.window] for j in range(n - config.window + 1)]


def _window_item(
    model: LoadedModel,
    prompt: str,
    seed: int,
    target_prompt: str,
    windows: list[list[str]],
    attribute: str,
    scorer: Scorer,
    config: LocoGenConfig,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    """Score one (prompt, seed): the original and each window reading the target prompt (a ``text-stream`` item
    also runs the target prompt itself, the source of its patches, and records its score as ``target``)."""
    shared = [Run(prompt=prompt, seed=seed, label="original")]
    if config.variant == "text-stream":
        shared.append(Run(prompt=target_prompt, seed=seed, label="target"))
    runs = [
        Run(
            prompt=prompt,
            seed=seed,
            interventions=(window_interventions(model, w, target_prompt, config.variant, config.fraction),),
        )
        for w in windows
    ]
    first, scores, _ = score_runs(
        model, runs, attribute=attribute, scorer=scorer, config=config, shared=shared, on_batch=advance
    )
    item = {"prompt": prompt, "seed": seed, "original": first[0], "scores": scores}
    if len(first) > 1:
        item["target"] = first[1]
    return item


def locogen(
    model: LoadedModel,
    prompts: str | Sequence[str],
    target_prompt: str,
    attribute: str,
    *,
    scorer: Scorer,
    config: LocoGenConfig | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
    windows: Sequence[Sequence[str]] | None = None,
) -> WindowResult:
    """Score every window of cross-attention layers fed ``target_prompt``.

    Args:
        model: the loaded model.
        prompts: prompt(s) showing the attribute, e.g. ``"a house in the style of van gogh"``.
        target_prompt: what the window reads instead, e.g. ``"a painting"`` (or the new fact).
        attribute: text the scorer measures, e.g. ``"in the style of van gogh"``.
        scorer: image scorer.
        config: sweep settings (window ``m``, ``mode``, ``preset``).
        out: directory for resumable per-item results.
        progress: called with (runs done, runs total).
        executor: who computes the items (default: this process; :mod:`diffloc.tracing.executors`).
        windows: score only these windows (default: every window ``config`` describes), e.g. the tied best ones
            again at a partial ``fraction``.

    Returns:
        :class:`WindowResult` with each window's mean score and its bootstrap interval over items (prompt ×
        seed); ``best_sites`` feeds LocoEdit.

    Raises:
        ConfigError: too few items for an interval, a window longer than the model's cross-attention layers.
    """
    config = config or LocoGenConfig()
    prompt_list = _prompts(prompts)
    check_items(len(prompt_list) * len(config.seeds), config.intervals)
    if not target_prompt.strip():
        raise PromptError("target prompt is empty; give the text the window should read, e.g. 'a painting'")
    scorer.check(attribute)
    windows = windows_for(model, config) if windows is None else _known_windows(model, windows, config.variant)
    model.adapter.tokenize(model.pipe, model.adapter.text_encoders(model.pipe)[0], [*prompt_list, target_prompt])
    weights = model.fingerprint()
    jobs = [
        Job(
            spec=_item_spec(
                model, weights, "locogen", prompt, seed, target=target_prompt, attribute=attribute, scorer=scorer.name,
                windows=windows, config=config.item_dict(),
            ),
            runs=len(windows) + 1,
            compute=partial(
                _window_item, prompt=prompt, seed=seed, target_prompt=target_prompt, windows=windows,
                attribute=attribute, config=config,
            ),
        )
        for prompt in prompt_list
        for seed in config.seeds
    ]  # fmt: skip
    items, store = run_jobs(jobs, out, progress, model=model, scorer=scorer, executor=executor)
    result = WindowResult(
        windows=windows,
        scores=np.mean([it["scores"] for it in items], axis=0),
        original_score=float(np.mean([it["original"] for it in items])),
        mode=config.mode,
        items=items,
        interval=mean_interval(np.asarray([it["scores"] for it in items]), config.intervals),
        meta={
            "model": model.source, "family": model.family, "prompts": prompt_list, "target_prompt": target_prompt,
            "attribute": attribute, "scorer": scorer.name, "config": config.to_dict(),
            "pooled_text_from": "original prompt", "variant": config.variant,
            "intervention": VARIANT_DESCRIPTIONS[config.variant],
            "items_computed": store.computed, "items_reused": store.reused,
        },
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


def _known_windows(model: LoadedModel, windows: Sequence[Sequence[str]], variant: str) -> list[list[str]]:
    """``windows`` as lists, each a non-empty run of the variant's layers (a one-line error names one that is not)."""
    layers = window_layers(model, variant)
    if not windows:
        raise ConfigError("windows is empty; give at least one window of layers, or None for every window")
    for window in windows:
        if not window or any(layer not in layers for layer in window):
            raise ConfigError(f"window {list(window)!r} is not made of this model's {variant} layers "
                              f"({layers[0]} … {layers[-1]})")  # fmt: skip
    return [list(w) for w in windows]


def moved_enough(mode: str, original: float, score: float, min_effect: float = 0.8) -> bool:
    """Whether a probability-like score moved at least ``min_effect`` of the way to its extreme:
    ``score <= (1 - min_effect) * original`` (``mode="remove"``) or ``score >= original + min_effect * (1 -
    original)`` (``"update"``)."""
    if mode == "remove":
        return score <= (1 - min_effect) * original
    return score >= original + min_effect * (1 - original)


def controls(result: WindowResult, min_effect: float = 0.8) -> bool:
    """Whether the best window of a LocoGen result moves its score enough (:func:`moved_enough`)."""
    return moved_enough(result.mode, result.original_score, result.best_score, min_effect)


def locogen_search(
    model: LoadedModel,
    prompts: str | Sequence[str],
    target_prompt: str,
    attribute: str,
    *,
    scorer: Scorer,
    config: LocoGenConfig | None = None,
    sizes: Sequence[int] = (2, 4, 8, 16),
    min_effect: float = 0.8,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
) -> WindowResult:
    """The smallest LocoGen window that controls the attribute: :func:`locogen` with each window size in
    ``sizes`` (capped at the number of cross-attention layers) until :func:`controls` holds.

    Some knowledge is read redundantly by many layers (on ShapesWorld, a flag: only all 16 layers together make
    another country's flag appear), so a fixed window can localize nothing. Scores must be probability-like (in
    [0, 1], e.g. the ShapesWorld detectors). Each size's sweep is kept under ``out/m<size>``; the returned
    result (the first size that controls the attribute, else the last tried) records the search in
    ``meta["window_search"]`` and is also saved to ``out``.

    Raises:
        ConfigError: empty ``sizes``, a size < 1, or ``min_effect`` outside (0, 1].
    """
    config = config or LocoGenConfig()
    check_window_search(sizes, min_effect)
    layers = len(window_layers(model, config.variant))
    tried: list[dict[str, Any]] = []
    result: WindowResult | None = None
    for size in dict.fromkeys(min(m, layers) for m in sizes):
        sub = None if out is None else Path(out) / f"m{size}"
        result = locogen(
            model, prompts, target_prompt, attribute, scorer=scorer, config=replace(config, window=size), out=sub,
            progress=progress, executor=executor,
        )  # fmt: skip
        ok = controls(result, min_effect)
        tried.append({"window": size, "best_sites": result.best_sites, "best_score": result.best_score, "controls": ok})
        if ok:
            break
        logger.info("no window of %d controls %r (best %.3f); widening", size, attribute, result.best_score)
    assert result is not None
    result.meta["window_search"] = {"sizes": list(sizes), "min_effect": min_effect, "tried": tried}
    if out is not None:
        result.save(out)
    return result
