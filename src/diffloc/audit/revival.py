"""Attacks on the edited weights: take part of the edit back, or fine-tune the edited model a little.

* ``revert``: what an attacker who reads the edit file can do — move the edited layers a fraction of the way
  back to their base values (``base + (1 - f) × change``), nothing else touched.
* ``finetune``: ordinary fine-tuning of the edited model's denoiser for a few steps on captions and images that
  do not show the concept (ShapesWorld renders them), the text encoder frozen: does the concept come back on
  its own?
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from diffloc.audit.target import AuditTarget
from diffloc.editing.edit import Edit
from diffloc.errors import ConfigError
from diffloc.models.base import Conditioning, LoadedModel
from diffloc.world import vocab

logger = logging.getLogger(__name__)

#: fine-tuning examples drawn per step (the pool is reused when a run takes more steps)
_POOL = 512
#: training examples drawn at a time while looking for wanted ones, and the most draws
_DRAW = 1024
_MAX_DRAWS = 64
_CAPTION_DROPOUT = 0.1


def reverted(edit: Edit, fraction: float) -> Edit:
    """``edit`` with ``fraction`` of its weight change taken back (1: the base weights, 0: the edit itself).

    A parameter the edit adds (a neuron edit's bias where the layer had none) is taken back towards zero, which is
    what its absence computes.

    Raises:
        ConfigError: ``fraction`` outside [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ConfigError(f"revert fraction must be in [0, 1], got {fraction!r}")
    weights: dict[str, torch.Tensor] = {}
    for key, new in edit.weights.items():
        original = edit.originals.get(key)
        base = torch.zeros_like(new, dtype=torch.float64) if original is None else original.double()
        weights[key] = (new.double() - fraction * (new.double() - base)).to(new.dtype)
    return replace(edit, weights=weights)


def _shows(scene: Any, caption: str, target: AuditTarget) -> bool:
    """Whether a ShapesWorld training example shows (or names) the erased concept."""
    if target.concept in caption:
        return True
    if target.kind == "style":
        return bool(scene.style == vocab.STYLES[target.concept])
    if target.kind == "object":
        return (scene.shape, scene.colour, scene.texture) == tuple(vocab.OBJECTS[target.concept])
    return bool(scene.fact == target.concept)


def world_examples(
    target: AuditTarget, n: int, seed: int, keep: Callable[[Any, str], bool]
) -> tuple[list[str], torch.Tensor]:
    """``n`` ShapesWorld training captions and their images (``(n, 3, H, W)`` in [-1, 1]) for which
    ``keep(scene, caption)`` holds, drawn from the world's training distribution with ``seed``.

    Raises:
        ConfigError: the world's training captions give no such example (after a bounded number of draws).
    """
    from diffloc.world.captions import training_examples
    from diffloc.world.render import render_batch

    kept: list[Any] = []
    draw = max(2 * n, _DRAW)
    for attempt in range(_MAX_DRAWS):
        kept += [e for e in training_examples(draw, seed + attempt) if keep(e.scene, e.caption)]
        if len(kept) >= n:
            break
    else:
        raise ConfigError(f"ShapesWorld's training captions gave {len(kept)} of the {n} examples wanted for "
                          f"{target.concept!r}")  # fmt: skip
    kept = kept[:n]
    pixels = render_batch([e.scene for e in kept], [e.seed for e in kept])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return [e.caption for e in kept], images


def clean_examples(target: AuditTarget, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``n`` ShapesWorld training captions and their images (``(n, 3, H, W)`` in [-1, 1]) that neither name nor
    show the erased concept."""
    return world_examples(target, n, seed, lambda scene, caption: not _shows(scene, caption, target))


def concept_examples(target: AuditTarget, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``n`` ShapesWorld training captions that name the erased concept, and their images (which show it)."""
    return world_examples(target, n, seed, lambda scene, caption: target.concept in caption)


def encode_latents(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """The VAE's latents (mean, scaled) of ``images`` ``(n, 3, H, W)`` in [-1, 1], on the model's device."""
    vae = model.pipe.vae
    device = next(model.denoiser.parameters()).device
    with torch.no_grad():
        return torch.cat([vae.encode(images[i : i + 64].to(device, vae.dtype)).latent_dist.mean
                          for i in range(0, len(images), 64)]) * vae.config.scaling_factor  # fmt: skip


def denoising_loss(
    model: LoadedModel, scheduler: Any, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The training loss of one batch: noise at random timesteps, predict what the scheduler's
    ``prediction_type`` asks for (the noise, or the velocity)."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    wanted = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    kwargs = model.adapter.denoiser_kwargs(Conditioning(cond))
    return torch.nn.functional.mse_loss(model.adapter.predict_noise(model.pipe, noisy, t, kwargs), wanted)


def finetune_revival(
    model: LoadedModel,
    target: AuditTarget,
    *,
    checkpoints: Sequence[int],
    lr: float,
    batch: int,
    seed: int,
    measure: Callable[[], dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune the model's denoiser as it is now (the edit applied), calling ``measure()`` after each number of
    steps in ``checkpoints``; the denoiser's weights and ``requires_grad`` flags are restored bit-exactly after.

    Raises:
        ConfigError: the model is not a ShapesWorld model (no images to fine-tune on).
    """
    if target.kind is None:
        raise ConfigError("the fine-tune attack renders ShapesWorld images; it needs a ShapesWorld model and concept")
    pipe = model.pipe
    denoiser = model.denoiser
    captions, images = clean_examples(target, _POOL, seed)
    params = list(denoiser.parameters())
    snapshot = [p.detach().clone() for p in params]
    flags = [p.requires_grad for p in params]
    was_training = denoiser.training
    dtype = params[0].dtype
    results: list[dict[str, Any]] = []
    try:
        latents = encode_latents(model, images)
        with torch.no_grad():
            context = model.adapter.encode(pipe, captions).hidden.detach()
            empty = model.adapter.encode(pipe, [""]).hidden.detach()
        scheduler = pipe.scheduler
        steps_total = max(checkpoints)
        generator = torch.Generator().manual_seed(seed)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        denoiser.train()
        step = 0
        for goal in sorted(set(checkpoints)):
            with torch.enable_grad():
                while step < goal:
                    idx = torch.randint(0, len(captions), (batch,), generator=generator)
                    cond = context[idx].clone()
                    cond[torch.rand(batch, generator=generator) < _CAPTION_DROPOUT] = empty[0]
                    loss = denoising_loss(model, scheduler, latents[idx].to(dtype), cond, generator)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    step += 1
                    if progress is not None:
                        progress(step, steps_total)
            denoiser.train(was_training)
            with torch.inference_mode():
                results.append({"steps": goal, "loss": float(loss.detach()), **measure()})
            denoiser.train()
    finally:
        with torch.no_grad():
            for p, old, flag in zip(params, snapshot, flags, strict=True):
                p.copy_(old)
                p.grad = None
                p.requires_grad_(flag)
        denoiser.train(was_training)
    return results
