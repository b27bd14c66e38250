"""Sampling with autograd on: the gradient path through generation that attribution patching differentiates.

Everywhere else generation runs under ``torch.inference_mode``. Here the latents keep their dependence on
whatever the caller makes differentiable (a probe added to a site's output, the text states), and every
denoiser call is wrapped in a non-reentrant :func:`torch.utils.checkpoint.checkpoint`: the forward keeps only
each call's inputs and recomputes its activations during the backward pass, so memory grows with the number of
steps (and whatever the caller stores per site and step), not with the whole unrolled graph. The decoder runs
once at the end, outside a checkpoint.

Hooks a caller needs during a step are given per step index (``step_hooks(index)``) and installed *inside* the
checkpointed call, so the recomputation in the backward pass sees exactly the same hooks; every one is removed
when the call returns. :func:`gradient_scope` freezes every weight for the duration (gradients are taken with
respect to activations only) and restores each ``requires_grad`` flag on exit, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffloc.differentiable import check_autograd, frozen_parameters
from diffloc.engine.batch import BatchLayout
from diffloc.engine.finite import check_images, check_latents
from diffloc.engine.generate import (
    GenerationConfig,
    _guide,
    _scheduler_step_kwargs,
    classifier_free,
    initial_latents,
)
from diffloc.engine.hooks import OutputHook, patch
from diffloc.errors import ConfigError
from diffloc.models.base import Conditioning, LoadedModel
from diffloc.validate import check_model_steps

#: hooks to install for the denoiser call of step ``index`` (site name -> output hook)
StepHooks = Callable[[int], Mapping[str, OutputHook]]
#: ``before_step(index, x, t)``: called before step ``index`` with the runs' model input (scaled, detached)
BeforeStep = Callable[[int, torch.Tensor, Any], None]


def denoiser(model: LoadedModel) -> Any:
    """The model's denoiser network (the one place this module reaches it)."""
    return model.denoiser


def predict(model: LoadedModel, x: torch.Tensor, t: Any, cond: Conditioning, guidance: float) -> torch.Tensor:
    """One denoiser call: the prediction for model input ``x`` at timestep ``t`` under ``cond`` (``guidance``
    reaches only a guidance-embedded denoiser, see :meth:`~diffloc.models.base.ModelAdapter.guidance_embedded`)."""
    adapter = model.adapter
    kwargs = {**adapter.denoiser_kwargs(cond), **adapter.guidance_kwargs(model.pipe, x.shape[0], guidance)}
    return adapter.predict_noise(model.pipe, x, t, kwargs)


def sample_size(model: LoadedModel, config: GenerationConfig) -> tuple[int, int]:
    """``(height, width)`` in pixels that ``config`` samples (the model's default where it sets none)."""
    default_h, default_w = model.adapter.default_size(model.pipe)
    return config.height or default_h, config.width or default_w


@contextmanager
def gradient_scope(
    model: LoadedModel, extra: Sequence[nn.Module] = (), *, method: str = "attribution"
) -> Iterator[None]:
    """Where gradients through generation may be taken: autograd checked on, every pipeline weight (and those of
    ``extra`` modules, e.g. a scorer's network) frozen, each ``requires_grad`` flag restored on exit.

    Raises:
        ConfigError: autograd is off in the calling context (``torch.no_grad`` / ``torch.inference_mode``).
    """
    check_autograd(method)
    modules = [c for c in model.pipe.components.values() if isinstance(c, nn.Module)] + list(extra)
    with frozen_parameters(modules):
        yield


def sample_with_grad(
    model: LoadedModel,
    cond: Conditioning,
    *,
    seeds: Sequence[int],
    config: GenerationConfig,
    step_hooks: StepHooks | None = None,
    before_step: BeforeStep | None = None,
) -> torch.Tensor:
    """Denoise and decode with autograd on; the images keep their dependence on probes and text states.

    Call it inside :func:`gradient_scope`. ``cond`` may require gradients (the text states of an attribution
    over the text encoder); the unconditional rows are encoded without them.

    Args:
        model: the loaded model.
        cond: conditioning, one row per run.
        seeds: one seed per run (the same initial latents and step noise as :func:`~diffloc.engine.generate.sample`).
        config: sampling settings.
        step_hooks: hooks for the denoiser call of each step, installed inside its checkpoint.
        before_step: called before each step (e.g. to compute values on the same latent without gradients).

    Returns:
        Images ``(runs, 3, H, W)`` in ``[0, 1]``, float32, differentiable.
    """
    check_autograd("gradient sampling")
    pipe, adapter = model.pipe, model.adapter
    if len(seeds) != len(cond):
        raise ConfigError(f"{len(seeds)} seeds for {len(cond)} runs; give one seed per run")
    layout = BatchLayout(runs=len(cond), cfg=classifier_free(model, config))
    height, width = sample_size(model, config)
    net = denoiser(model)
    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    check_model_steps(model, config.steps)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    shape = adapter.latent_shape(pipe, height, width)
    adapter.set_timesteps(pipe, scheduler, config.steps, shape, device)
    latents = initial_latents(shape, seeds, device, dtype)
    latents = latents * adapter.initial_noise_scale(scheduler)
    if layout.cfg:
        with torch.no_grad():
            uncond = adapter.encode_unconditional(pipe, len(cond))
        cond = Conditioning.cat([uncond, cond])
    cond = adapter.for_size(cond, height, width)
    step_kwargs = _scheduler_step_kwargs(scheduler, seeds)
    in_channels = adapter.in_channels(pipe)
    timesteps = scheduler.timesteps
    for index, t in enumerate(timesteps):
        if before_step is not None:
            before_step(index, adapter.scale_model_input(scheduler, latents.detach(), t), t)
        x = torch.cat([latents, latents]) if layout.cfg else latents
        x = adapter.scale_model_input(scheduler, x, t)
        hooks = step_hooks(index) if step_hooks else {}
        call = partial(_hooked_prediction, model, t=t, cond=cond, hooks=hooks, guidance=config.guidance)
        noise = checkpoint(call, x, use_reentrant=False)
        eps = _guide(noise, layout.cfg, config.guidance, in_channels, scheduler)
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        check_latents(latents, step=index + 1, steps=len(timesteps), guidance=config.guidance)
    # Decoded once, outside a checkpoint: the decoder may change its own dtype while it runs (``force_upcast``),
    # which a recomputation in the backward pass would not reproduce. Its graph is one image's decoder activations.
    images = adapter.decode(pipe, latents, batch=config.decode_batch)
    check_images(images.detach())
    return images


def _hooked_prediction(
    model: LoadedModel,
    x: torch.Tensor,
    *,
    t: Any,
    cond: Conditioning,
    hooks: Mapping[str, OutputHook],
    guidance: float,
) -> torch.Tensor:
    """One denoiser call with ``hooks`` installed for exactly its duration (its recomputation installs them
    again)."""
    with patch(model, outputs=hooks):
        return predict(model, x, t, cond, guidance)
