"""Pack runs into memory-bounded UNet batches and score their images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from diffloc.engine.generate import GenerationConfig, classifier_free, generate_runs
from diffloc.engine.interventions import Run, extra_rows
from diffloc.models.base import LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.config import SweepConfig


def generation_config(config: SweepConfig) -> GenerationConfig:
    """The sampling settings of a sweep."""
    return GenerationConfig(steps=config.steps, guidance=config.guidance, height=config.height, width=config.width)


def score_runs(
    model: LoadedModel,
    runs: Sequence[Run],
    *,
    attribute: str,
    scorer: Scorer,
    config: SweepConfig,
    shared: Sequence[Run] = (),
    on_batch: Callable[[int], None] | None = None,  # called with the number of runs finished (shared counted once)
    keep_images: bool = False,
) -> tuple[list[float], list[float], list[torch.Tensor]]:
    """Generate and score ``runs`` in batches of at most ``config.max_batch`` runs.

    ``shared`` runs (e.g. the clean run) lead every batch so interventions can restore from them
    (``Restore.source`` indexes into ``shared``); they are scored once, from the first batch.

    Returns:
        (scores of ``shared``, scores of ``runs``, images of ``shared`` + ``runs`` if ``keep_images``).
    """
    gen_config = generation_config(config)
    shared_scores: list[float] = []
    run_scores: list[float] = []
    images: list[torch.Tensor] = []
    chunks = _chunks(model, runs, shared, config.max_batch, classifier_free(model, gen_config))
    for index, chunk in enumerate(chunks):
        batch = [*shared, *chunk]
        out = generate_runs(model, batch, config=gen_config)
        scores = scorer.score(out, [attribute] * len(batch)).tolist()
        if index == 0:
            shared_scores = scores[: len(shared)]
            if keep_images:
                images.extend(out[: len(shared)])
        run_scores.extend(scores[len(shared) :])
        if keep_images:
            images.extend(out[len(shared) :])
        if on_batch is not None:
            on_batch(len(chunk) + (len(shared) if index == 0 else 0))
    return shared_scores, run_scores, images


def _chunks(
    model: LoadedModel, runs: Sequence[Run], shared: Sequence[Run], max_batch: int, cfg: bool
) -> list[list[Run]]:
    """Split ``runs`` so each batch (``shared`` included) has at most the rows of ``max_batch`` plain runs; a
    ``same-latent`` restore's shadow row counts (at least one run per batch)."""
    per_run = 2 if cfg else 1
    budget = max_batch * per_run
    base = sum(per_run + extra_rows(model, r) for r in shared)
    chunks: list[list[Run]] = []
    current: list[Run] = []
    used = base
    for run in runs:
        rows = per_run + extra_rows(model, run)
        if current and used + rows > budget:
            chunks.append(current)
            current, used = [], base
        current.append(run)
        used += rows
    if current or not chunks:
        chunks.append(current)
    return chunks
