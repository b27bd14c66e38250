"""Attribution patching: every restore's effect estimated from one corrupted run and one backward pass.

The exact trace restores one site at a time, one sampling chain each. Attribution patching (Nanda 2023; Syed et
al. 2023; Kramár et al. 2024) takes the first-order term instead: with ``a_corrupt(s, t)`` a site's value in the
corrupted run at step ``t`` and ``a_clean(s, t)`` the value a restore would write, the score change of restoring
``s`` at every step is estimated as

    sum over t of < a_clean(s, t) - a_corrupt(s, t),  d score / d a_corrupt(s, t) >.

The semantics are those of the exact trace. Under ``same-latent`` the clean value is the site's value with the
clean text on the corrupted run's *own* latent (a no-gradient call on that latent before every step); under
``trajectory`` it is the clean run's activation at that step. Every site and step gets a zero scalar probe
``alpha(s, t)``: the conditional row's output becomes ``a + alpha * (a_clean - a).detach()``, which leaves the run
unchanged, and ``d score / d alpha(s, t)`` is exactly the term above. One backward pass per item fills the whole
site × step map. Text-encoder states get one probe per site and token span, applied while the corrupted prompt is
encoded, so one backward covers every layer × token × state kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from diffloc.differentiable import require_gradient_scorer
from diffloc.engine.batch import BatchLayout
from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.gradients import gradient_scope, predict, sample_size, sample_with_grad
from diffloc.engine.hooks import OutputHook, patch, primary, record, with_primary
from diffloc.engine.interventions import CorruptTokens, Run, compile_runs
from diffloc.errors import ConfigError
from diffloc.models.base import Conditioning, LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.batching import generation_config
from diffloc.tracing.config import TraceConfig


def _encode(model: LoadedModel, runs: Sequence[Run], hooks: dict[str, OutputHook] | None = None) -> Conditioning:
    """Conditioning of ``runs`` (their text-level interventions applied), one row per run; ``hooks`` are extra
    output hooks on text sites during encoding."""
    plan = compile_runs(model, runs)
    with patch(model, outputs=plan.text_outputs), patch(model, outputs=hooks or {}):
        encoded = model.adapter.encode(model.pipe, plan.text_prompts)
    return encoded.take(plan.text_rows)


def _item_runs(prompt: str, seed: int, corrupt: CorruptTokens) -> tuple[Run, Run]:
    return Run(prompt=prompt, seed=seed, label="clean"), Run(prompt=prompt, seed=seed, interventions=(corrupt,))


def _grad(probe: torch.Tensor) -> torch.Tensor:
    """A probe's gradient (zeros where the score does not depend on it)."""
    return probe.grad if probe.grad is not None else torch.zeros_like(probe)


def _probe(row: int, weight: torch.Tensor, *, clean: torch.Tensor | None = None, clean_row: int = 0) -> OutputHook:
    """An output hook that adds ``weight * (clean - out[row])`` (difference detached) to row ``row``; the clean
    value is ``clean``, or row ``clean_row`` of the same output.

    ``weight`` is zero (a scalar, or one value per token), so the run is unchanged; its gradient is the first-order
    effect of writing the clean value.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        out = primary(output)
        here = out[row : row + 1]
        source = out[clean_row : clean_row + 1] if clean is None else clean.to(device=out.device, dtype=out.dtype)
        delta = (source - here).detach()
        scale = weight.to(device=out.device, dtype=out.dtype)
        scale = scale.view(*scale.shape, *([1] * (delta.ndim - 1 - scale.ndim))) if scale.ndim else scale
        return with_primary(output, torch.cat([out[:row], here + scale * delta, out[row + 1 :]]))

    return hook


@contextmanager
def _token_check(model: LoadedModel, sites: Sequence[str], tokens: int) -> Iterator[None]:
    """Refuse (one line) a text site whose output has another token count than the spans cover."""

    def check(name: str) -> OutputHook:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if primary(output).shape[1] != tokens:
                raise ConfigError(f"text site {name!r} has {primary(output).shape[1]} tokens, the spans cover {tokens}")

        return hook

    with patch(model, outputs={name: check(name) for name in sites}):
        yield


def _backward(model: LoadedModel, scorer: Scorer, images: torch.Tensor, attribute: str) -> float:
    """Score the corrupted image differentiably, run the backward pass, return the corrupted score."""
    score = require_gradient_scorer(scorer, "attribution").score_grad(images, [attribute])[0]
    score.backward()
    return float(score.detach())


def _clean_run(
    model: LoadedModel, run: Run, config: GenerationConfig, sites: Sequence[str], scorer: Scorer, attribute: str
) -> tuple[float, dict[str, list[torch.Tensor]]]:
    """The clean run's score and (for ``sites``) its conditional-row activation at every step."""
    with record(model, sites) as seen:
        images = generate_runs(model, [run], config=config)
    row = BatchLayout(runs=1, cfg=config.cfg).cond(0)
    # clones made outside inference mode: the probes multiply them into the autograd graph
    values = {name: [v[row : row + 1].clone() for v in seen.get(name, [])] for name in sites}
    return float(scorer.score(images, [attribute])[0]), values


def estimate_unet_item(
    model: LoadedModel,
    scorer: Scorer,
    advance: Callable[[int], None],
    *,
    prompt: str,
    seed: int,
    corrupt: CorruptTokens,
    groups: Sequence[Sequence[str]],
    attribute: str,
    config: TraceConfig,
) -> dict[str, Any]:
    """Estimate, for one (prompt, seed), the restored score of every UNet site group, per step.

    Returns:
        The item: ``clean`` and ``corrupted`` scores (measured), ``scores`` (corrupted + estimated change per
        group, the sum of its sites' estimates) and ``step_deltas`` (groups × steps, the estimate per step).
    """
    gen = generation_config(config)
    sites = list(dict.fromkeys(name for group in groups for name in group))
    clean_run, corrupt_run = _item_runs(prompt, seed, corrupt)
    trajectory = config.restore_from == "trajectory"
    clean_score, clean_values = _clean_run(model, clean_run, gen, sites if trajectory else [], scorer, attribute)
    advance(1)
    with torch.no_grad():
        cond = _encode(model, [clean_run, corrupt_run])
    height, width = sample_size(model, gen)
    clean_cond = model.adapter.for_size(cond.take([0]), height, width)
    row = BatchLayout(runs=1, cfg=gen.cfg).cond(0)
    with gradient_scope(model):
        alphas: list[torch.Tensor] = []  # one probe vector per denoiser call (some schedulers call it more often)

        def same_latent(index: int, x: torch.Tensor, t: Any) -> None:
            with torch.no_grad(), record(model, sites) as seen:
                predict(model, x, t, clean_cond)
            for name in sites:
                clean_values.setdefault(name, []).append(seen[name][0])

        def hooks(index: int) -> dict[str, OutputHook]:
            alpha = torch.zeros(len(sites), dtype=torch.float32, device=model.device, requires_grad=True)
            alphas.append(alpha)
            return {name: _probe(row, alpha[j], clean=clean_values[name][index]) for j, name in enumerate(sites)}

        images = sample_with_grad(
            model, cond.take([1]), seeds=[seed], config=gen, step_hooks=hooks,
            before_step=None if trajectory else same_latent,
        )  # fmt: skip
        corrupted = _backward(model, scorer, images, attribute)
    advance(1)
    grads = torch.stack([_grad(a) for a in alphas], dim=1)  # (sites, steps)
    index = {name: j for j, name in enumerate(sites)}
    step_deltas = [grads[[index[n] for n in group]].sum(0).double().tolist() for group in groups]
    return {
        "prompt": prompt, "seed": seed, "clean": clean_score, "corrupted": corrupted,
        "scores": [corrupted + sum(d) for d in step_deltas], "step_deltas": step_deltas,
    }  # fmt: skip


def estimate_text_item(
    model: LoadedModel,
    scorer: Scorer,
    advance: Callable[[int], None],
    *,
    prompt: str,
    seed: int,
    corrupt: CorruptTokens,
    cells: Sequence[tuple[str, int]],
    spans: Sequence[tuple[int, int]],
    attribute: str,
    config: TraceConfig,
) -> dict[str, Any]:
    """Estimate, for one (prompt, seed), the restored score of every text-encoder cell (site, token span).

    Returns:
        The item: ``clean`` and ``corrupted`` scores (measured) and ``scores`` (corrupted + estimated change,
        one per cell in ``cells`` order).
    """
    gen = generation_config(config)
    sites = list(dict.fromkeys(site for site, _ in cells))
    clean_run, corrupt_run = _item_runs(prompt, seed, corrupt)
    clean_score, _ = _clean_run(model, clean_run, gen, [], scorer, attribute)
    advance(1)
    span_of = torch.full((spans[-1][1],), -1, dtype=torch.long, device=model.device)
    for index, (start, end) in enumerate(spans):
        span_of[start:end] = index
    with gradient_scope(model):
        alpha = torch.zeros((len(sites), len(spans)), dtype=torch.float32, device=model.device, requires_grad=True)
        rows = compile_runs(model, [clean_run, corrupt_run]).text_rows
        clean_row, corrupt_row = rows

        weights = torch.where(span_of >= 0, alpha[:, span_of.clamp(min=0)], 0.0)  # (sites, tokens)
        probes = {name: _probe(corrupt_row, weights[j], clean_row=clean_row) for j, name in enumerate(sites)}
        with _token_check(model, sites, len(span_of)):
            cond = _encode(model, [clean_run, corrupt_run], probes)
        images = sample_with_grad(model, cond.take([1]), seeds=[seed], config=gen)
        corrupted = _backward(model, scorer, images, attribute)
    advance(1)
    grads = _grad(alpha)
    position = {name: j for j, name in enumerate(sites)}
    return {
        "prompt": prompt, "seed": seed, "clean": clean_score, "corrupted": corrupted,
        "scores": [corrupted + float(grads[position[site], span]) for site, span in cells],
    }  # fmt: skip
