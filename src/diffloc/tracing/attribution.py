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
from diffloc.engine.generate import GenerationConfig, classifier_free, generate_runs
from diffloc.engine.gradients import gradient_scope, predict, sample_size, sample_with_grad
from diffloc.engine.hooks import OutputHook, patch, primary, record, with_primary
from diffloc.engine.interventions import CorruptTokens, Run, compile_runs
from diffloc.errors import ConfigError
from diffloc.models.base import Conditioning, LoadedModel
from diffloc.scoring import Scorer
from diffloc.tracing.batching import generation_config
from diffloc.tracing.config import TraceConfig
from diffloc.tracing.grad_drop import DropState, dropout_layers, dropout_magnitudes, gated
from diffloc.tracing.key_fix import weighted, with_key_fix

#: one item of a trace: its prompt, its seed and the corruption of its subject
Item = tuple[str, int, CorruptTokens]


def _encode(model: LoadedModel, runs: Sequence[Run], hooks: dict[str, OutputHook] | None = None) -> Conditioning:
    """Conditioning of ``runs`` (their text-level interventions applied), one row per run; ``hooks`` are extra
    output hooks on text sites during encoding."""
    plan = compile_runs(model, runs)
    with patch(model, outputs=plan.text_outputs), patch(model, outputs=hooks or {}):
        encoded = model.adapter.encode(model.pipe, plan.text_prompts)
    return encoded.take(plan.text_rows)


def _item_runs(items: Sequence[Item]) -> tuple[list[Run], list[Run]]:
    """The clean run and the corrupted run of every item."""
    clean = [Run(prompt=prompt, seed=seed, label="clean") for prompt, seed, _ in items]
    corrupt = [Run(prompt=prompt, seed=seed, interventions=(noise,)) for prompt, seed, noise in items]
    return clean, corrupt


def _grad(probe: torch.Tensor) -> torch.Tensor:
    """A probe's gradient (zeros where the score does not depend on it)."""
    return probe.grad if probe.grad is not None else torch.zeros_like(probe)


def _probe(
    rows: Sequence[int],
    weight: torch.Tensor,
    *,
    clean: torch.Tensor | None = None,
    clean_rows: Sequence[int] = (),
    element: int = 0,
) -> OutputHook:
    """An output hook that adds ``weight[i] * (clean[i] - out[rows[i]])`` (difference detached) to each row of
    ``rows``; the clean values are ``clean`` (one row per entry of ``rows``), or rows ``clean_rows`` of the same
    output.

    ``weight`` is zero (``(len(rows),)``, or ``(len(rows), tokens)``), so the run is unchanged; its gradient is the
    first-order effect of writing the clean value into each row. ``element`` picks the tensor of a tuple output
    (see :func:`primary`).
    """
    index = list(rows)
    sources = list(clean_rows)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        out = primary(output, element)
        here = out[index]
        source = out[sources] if clean is None else clean.to(device=out.device, dtype=out.dtype)
        delta = (source - here).detach()
        updated = out.index_put((torch.as_tensor(index, device=out.device),), here + weighted(weight, delta))
        return with_primary(output, updated, element)

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


def _backward(
    model: LoadedModel, scorer: Scorer, images: torch.Tensor, attribute: str, *, retain: bool = False
) -> tuple[list[float], torch.Tensor]:
    """Score the corrupted images differentiably, run one backward pass for all of them (their rows are
    independent, so each probe's gradient is its own item's); return the corrupted scores and their sum (to
    differentiate again where ``retain`` kept the graph)."""
    scores = require_gradient_scorer(scorer, "attribution").score_grad(images, [attribute] * len(images))
    total = scores.sum()
    total.backward(retain_graph=retain)
    return [float(v) for v in scores.detach()], total


def _dropped_layer_grads(
    total: torch.Tensor, alphas: Sequence[torch.Tensor], state: DropState, layers: int
) -> list[torch.Tensor]:
    """The probes' gradients with each layer's gradient dropped in turn (one more backward pass per layer), each
    ``(sites, items, steps)``."""
    per_layer = []
    for layer in range(layers):
        for alpha in alphas:
            alpha.grad = None
        state.blocked = layer
        total.backward(retain_graph=layer < layers - 1)
        per_layer.append(torch.stack([_grad(a) for a in alphas], dim=2))
    state.blocked = None
    return per_layer


def _clean_runs(
    model: LoadedModel, runs: Sequence[Run], config: GenerationConfig, sites: Sequence[str], scorer: Scorer,
    attribute: str,
) -> tuple[list[float], dict[str, list[torch.Tensor]]]:  # fmt: skip
    """The clean runs' scores and (for ``sites``) their conditional rows' activations at every step."""
    with record(model, sites) as seen:
        images = generate_runs(model, runs, config=config)
    layout = BatchLayout(runs=len(runs), cfg=classifier_free(model, config))
    rows = [layout.cond(i) for i in range(len(runs))]
    # clones made outside inference mode: the probes multiply them into the autograd graph
    values = {name: [v[rows].clone() for v in seen.get(name, [])] for name in sites}
    return [float(v) for v in scorer.score(images, [attribute] * len(runs))], values


def estimate_unet_items(
    model: LoadedModel,
    scorer: Scorer,
    advance: Callable[[int], None],
    *,
    items: Sequence[Item],
    groups: Sequence[Sequence[str]],
    attribute: str,
    config: TraceConfig,
    attention_fix: bool = True,
    gradient_dropout: int = 0,
) -> dict[str, Any]:
    """Estimate, for a batch of items (prompt, seed, corruption), the restored score of every UNet site group, per
    step: one clean batch, one corrupted batch with autograd and one backward pass for all of them.

    With ``attention_fix`` a cross-attention key site is estimated through its attention layer's exact output
    with the clean keys (AtP*'s saturation fix, :mod:`diffloc.tracing.key_fix`) instead of through the softmax.
    With ``gradient_dropout`` = L > 0 the backward pass is repeated with the gradient through each of L layers
    of the denoiser dropped in turn (AtP*'s correction for cancellation, :mod:`diffloc.tracing.grad_drop`).

    Returns:
        ``{"items": [...]}``, per item: ``clean`` and ``corrupted`` scores (measured), ``scores`` (corrupted +
        estimated change per group, the sum of its sites' estimates), ``step_deltas`` (groups × steps) and, with
        gradient dropout, ``dropout`` (each group's ranking magnitude).
    """
    gen = generation_config(config)
    n = len(items)
    sites = list(dict.fromkeys(name for group in groups for name in group))
    clean_runs, corrupt_runs = _item_runs(items)
    trajectory = config.restore_from == "trajectory"
    clean_scores, clean_values = _clean_runs(model, clean_runs, gen, sites if trajectory else [], scorer, attribute)
    advance(n)
    with torch.no_grad():
        cond = _encode(model, [*clean_runs, *corrupt_runs])
    height, width = sample_size(model, gen)
    clean_cond = model.adapter.for_size(cond.take(range(n)), height, width)
    layout = BatchLayout(runs=n, cfg=classifier_free(model, gen))
    rows = [layout.cond(i) for i in range(n)]
    layers = dropout_layers(model, gradient_dropout) if gradient_dropout else []
    with gradient_scope(model), gated(layers) as state:
        alphas: list[torch.Tensor] = []  # one (sites, items) probe per denoiser call (some schedulers call it more)

        def same_latent(index: int, x: torch.Tensor, t: Any) -> None:
            with torch.no_grad(), record(model, sites) as seen:
                predict(model, x, t, clean_cond, gen.guidance)
            for name in sites:
                clean_values.setdefault(name, []).append(seen[name][0])

        def hooks(index: int) -> dict[str, OutputHook]:
            alpha = torch.zeros((len(sites), n), dtype=torch.float32, device=model.device, requires_grad=True)
            alphas.append(alpha)
            probes = {
                name: _probe(
                    rows, alpha[j], clean=clean_values[name][index], element=model.site(name).kind.output_index
                )
                for j, name in enumerate(sites)
            }
            if not attention_fix:
                return probes
            weights = {name: alpha[j] for j, name in enumerate(sites)}
            return with_key_fix(model, rows, probes, weights, {name: clean_values[name][index] for name in sites})

        images = sample_with_grad(
            model, cond.take(range(n, 2 * n)), seeds=[seed for _, seed, _ in items], config=gen, step_hooks=hooks,
            before_step=None if trajectory else same_latent,
        )  # fmt: skip
        corrupted, total = _backward(model, scorer, images, attribute, retain=bool(layers))
        grads = torch.stack([_grad(a) for a in alphas], dim=2)  # (sites, items, steps)
        per_layer = _dropped_layer_grads(total, alphas, state, len(layers)) if layers else []
    advance(n)
    index = {name: j for j, name in enumerate(sites)}
    members = [[index[s] for s in group] for group in groups]
    magnitudes = (
        dropout_magnitudes([torch.stack([g[m].sum((0, 2)) for m in members]) for g in per_layer]) if per_layer else None
    )  # (groups, items)
    out = []
    for i, (prompt, seed, _) in enumerate(items):
        step_deltas = [grads[m, i].sum(0).double().tolist() for m in members]
        item = {
            "prompt": prompt, "seed": seed, "clean": clean_scores[i], "corrupted": corrupted[i],
            "scores": [corrupted[i] + sum(d) for d in step_deltas], "step_deltas": step_deltas,
        }  # fmt: skip
        if magnitudes is not None:
            item["dropout"] = magnitudes[:, i].double().tolist()
        out.append(item)
    return {"items": out}


def estimate_text_items(
    model: LoadedModel,
    scorer: Scorer,
    advance: Callable[[int], None],
    *,
    items: Sequence[Item],
    cells: Sequence[tuple[str, int]],
    spans: Sequence[tuple[int, int]],
    attribute: str,
    config: TraceConfig,
) -> dict[str, Any]:
    """Estimate, for a batch of items, the restored score of every text-encoder cell (site, token span).

    Returns:
        ``{"items": [...]}``, per item: ``clean`` and ``corrupted`` scores (measured) and ``scores`` (corrupted +
        estimated change, one per cell in ``cells`` order).
    """
    gen = generation_config(config)
    n = len(items)
    sites = list(dict.fromkeys(site for site, _ in cells))
    clean_runs, corrupt_runs = _item_runs(items)
    clean_scores, _ = _clean_runs(model, clean_runs, gen, [], scorer, attribute)
    advance(n)
    span_of = torch.full((spans[-1][1],), -1, dtype=torch.long, device=model.device)
    for index, (start, end) in enumerate(spans):
        span_of[start:end] = index
    with gradient_scope(model):
        alpha = torch.zeros((len(sites), n, len(spans)), dtype=torch.float32, device=model.device, requires_grad=True)
        text_rows = compile_runs(model, [*clean_runs, *corrupt_runs]).text_rows
        clean_rows, corrupt_rows = text_rows[:n], text_rows[n:]
        weights = torch.where(span_of >= 0, alpha[:, :, span_of.clamp(min=0)], 0.0)  # (sites, items, tokens)
        probes = {name: _probe(corrupt_rows, weights[j], clean_rows=clean_rows) for j, name in enumerate(sites)}
        with _token_check(model, sites, len(span_of)):
            cond = _encode(model, [*clean_runs, *corrupt_runs], probes)
        images = sample_with_grad(model, cond.take(range(n, 2 * n)), seeds=[seed for _, seed, _ in items], config=gen)
        corrupted, _ = _backward(model, scorer, images, attribute)
    advance(n)
    grads = _grad(alpha)
    position = {name: j for j, name in enumerate(sites)}
    rows = []
    for i, (prompt, seed, _) in enumerate(items):
        scores = [corrupted[i] + float(grads[position[site], i, span]) for site, span in cells]
        rows.append({"prompt": prompt, "seed": seed, "clean": clean_scores[i], "corrupted": corrupted[i],
                     "scores": scores})  # fmt: skip
    return {"items": rows}
