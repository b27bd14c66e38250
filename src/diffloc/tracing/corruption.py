"""The subject corruption of a trace: where the subject's tokens are in each text encoder, and what corrupts them:
Gaussian noise on their embeddings, each encoder in its own scale, or (``TraceConfig.substitute``) the embeddings of
other words of the same token length, symmetric token replacement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch

from diffloc.engine.interventions import CorruptTokens
from diffloc.errors import PromptError
from diffloc.models.base import LoadedModel, _short, _subject_starts
from diffloc.sites import SiteKind
from diffloc.tracing.config import TraceConfig


def _embedding_std(model: LoadedModel, site: str) -> float:
    weight = cast(torch.Tensor, model.module(site).weight)
    return float(weight.detach().to(torch.float32).std())


def embedding_noise(model: LoadedModel, config: TraceConfig) -> float:
    """Corruption std of the first text encoder: ``config.noise`` or ``noise_multiplier`` × the std of its
    token-embedding matrix."""
    if config.noise is not None:
        return float(config.noise)
    return float(config.noise_multiplier * _embedding_std(model, "text.embed"))


def encoder_noise(model: LoadedModel, config: TraceConfig) -> dict[str, float]:
    """Corruption std per text encoder (embedding site -> std): the same multiple of each encoder's own
    token-embedding std (SD-XL's two encoders have embeddings of different scales). An absolute
    ``config.noise`` sets the first encoder's std; the others keep the same multiple of their own std.
    A trace that corrupts by ``config.substitute`` adds no noise: 0 for every encoder."""
    embeds = [s.name for s in model.sites if s.kind is SiteKind.TEXT_EMBED]
    if config.substitute is not None:
        return dict.fromkeys(embeds, 0.0)
    first = embedding_noise(model, config)
    if len(embeds) == 1:
        return {embeds[0]: first}
    base = _embedding_std(model, embeds[0])
    multiple = first / base if base > 0 else 0.0
    return {name: first if name == embeds[0] else multiple * _embedding_std(model, name) for name in embeds}


def subject_ranges(model: LoadedModel, prompts: Sequence[str], subject: str) -> dict[str, dict[str, tuple[int, int]]]:
    """Per prompt, the subject's token range in each text encoder (by embedding site; see
    :meth:`~diffloc.models.base.ModelAdapter.subject_ranges`)."""
    return {p: model.adapter.subject_ranges(model.pipe, p, subject) for p in dict.fromkeys(prompts)}


def first_range(ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """The first encoder's range (what a result records as ``subject_range``)."""
    return next(iter(ranges.values()))


def replacement_ids(
    model: LoadedModel, prompts: Sequence[str], subject: str, substitute: str | None
) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...]]:
    """Per prompt, the token ids that replace the subject's in each text encoder (by embedding site): the tokens
    ``substitute`` has in the prompt written with it in the subject's place. ``{}`` without a substitute.

    Raises:
        PromptError: the substitute changes any token outside the subject's range (a different token count, or a
            word that merges with its neighbours), so the corrupted prompt would not line up with the clean one.
    """
    if substitute is None:
        return {}
    out: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {}
    specs = model.adapter.text_encoders(model.pipe)
    for prompt in dict.fromkeys(prompts):
        at = _subject_starts(prompt, subject)[0]
        written = prompt[:at] + substitute.strip() + prompt[at + len(subject.strip()) :]
        ranges = model.adapter.subject_ranges(model.pipe, prompt, subject)
        placed = model.adapter.subject_ranges(model.pipe, written, substitute)
        row: list[tuple[str, tuple[int, ...]]] = []
        for spec in specs:
            site = f"{spec.prefix}.embed"
            start, end = ranges[site]
            clean, other = model.adapter.tokenize(model.pipe, spec, [prompt, written])
            outside = torch.ones_like(clean, dtype=torch.bool)
            outside[start:end] = False
            # the substitute must fill the subject's positions exactly (a padding that repeats the end-of-text
            # token would hide a shorter one) and leave every other token as it was
            if placed[site] != (start, end) or not torch.equal(clean[outside], other[outside]):
                raise PromptError(
                    f"substitute {substitute!r} does not line up with subject {subject!r} in {_short(prompt)!r} "
                    f"({spec.component} tokens differ outside positions {start}..{end - 1}); give a substitute "
                    f"of the subject's {end - start} tokens"
                )
            row.append((site, tuple(int(i) for i in other[start:end])))
        out[prompt] = tuple(row)
    return out


def corruption(
    model: LoadedModel,
    positions: tuple[int, int] | Mapping[str, tuple[int, int]],
    config: TraceConfig,
    seed: int,
    replacements: tuple[tuple[str, tuple[int, ...]], ...] = (),
) -> CorruptTokens:
    """The subject corruption of one item: noise at the subject's range ``positions`` (one range for every
    encoder, or each encoder's own by embedding site, :func:`subject_ranges`), each encoder in its own scale;
    or, with ``replacements`` (:func:`replacement_ids` of the item's prompt), the substitute's tokens there."""
    stds = encoder_noise(model, config)
    first = next(iter(stds.values()))
    if not isinstance(positions, Mapping):
        positions = {site: (int(positions[0]), int(positions[1])) for site in stds}
    start = first_range(positions)
    return CorruptTokens(
        positions=start, std=first, noise_seed=config.noise_seed + seed, site_stds=tuple(stds.items()),
        site_positions=tuple((site, span) for site, span in positions.items() if span != start),
        replacements=replacements,
    )  # fmt: skip
