"""ESD-style fine-tuning baseline for concept removal (Gandikota et al., 2023, "ESD-x"), for benchmarks only.

The baseline the closed-form editors are compared against: gradient fine-tuning of every cross-attention
key/value projection so that, for the concept prompt c, the model's noise prediction becomes the *negatively
guided* prediction of the frozen original::

    ε_θ(x_t, c, t)  →  ε_θ0(x_t, ∅, t) − η (ε_θ0(x_t, c, t) − ε_θ0(x_t, ∅, t))

Simplification (documented, in ESD's favour): ``x_t`` is drawn by noising latents that the original model
generated once for the concept prompts (ESD proper re-samples a partial trajectory of the model being trained
at every step). That generation is timed and counted in the baseline's cost.

With a v-prediction model (the shipped ShapesWorld) the same combination of the model's v outputs is the same
guidance: at a fixed ``x_t`` and ``t``, v is an affine function of ε, so the negatively guided v is the v of the
negatively guided ε.

Not part of the library: it lives in ``bench/`` and is imported by ``bench/edit_speed.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffloc.engine.generate import GenerationConfig
from diffloc.models.base import LoadedModel


@dataclass(frozen=True, kw_only=True)
class ESDConfig:
    """ESD-x settings: learning rate, negative guidance η, batch, step budget and evaluation cadence."""

    lr: float = 1e-3
    eta: float = 1.0
    batch_size: int = 4
    max_steps: int = 2000
    eval_every: int = 25
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ESDResult:
    """What the run cost: steps taken, training seconds (evaluation excluded), and whether it stopped early."""

    steps: int
    train_seconds: float
    eval_seconds: float
    reached: bool


def _kv_parameters(model: LoadedModel) -> list[torch.nn.Parameter]:
    params = []
    for site in model.sites.select("unet.xattn.*"):
        for proj in model.kv_sites(site):
            params.extend(model.module(proj).parameters())
    return params


def run_esd(
    model: LoadedModel,
    prompts: Sequence[str],
    *,
    config: ESDConfig,
    generation: GenerationConfig,
    done: Callable[[], bool],
) -> ESDResult:
    """Fine-tune the cross-attention K/V of ``model`` in place until ``done()`` or ``config.max_steps``.

    ``done`` is called every ``config.eval_every`` steps (its time is reported separately, not counted as
    training). The caller restores the weights (see :func:`kv_snapshot`).
    """
    import copy

    from diffloc.engine.generate import generate

    pipe, adapter = model.pipe, model.adapter
    unet = pipe.unet
    start = time.perf_counter()
    frozen = copy.deepcopy(unet).requires_grad_(False).eval()
    with torch.no_grad():
        # clean samples of the concept, as latents: generate images, then encode back if there is a VAE
        images = generate(model, list(prompts), seeds=list(range(len(prompts))), config=generation).clone()
        if getattr(pipe, "vae", None) is not None:
            x0 = pipe.vae.encode(images.to(pipe.vae.dtype) * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        else:
            x0 = images * 2 - 1
        cond = adapter.encode(pipe, list(prompts))
        uncond = adapter.encode_unconditional(pipe, len(prompts))
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    alphas = scheduler.alphas_cumprod.to(x0.dtype)
    params = _kv_parameters(model)
    saved_flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    eval_seconds = 0.0
    reached = False
    step = 0
    try:
        for step in range(1, config.max_steps + 1):
            rows = torch.randint(len(prompts), (config.batch_size,), generator=gen)
            t = torch.randint(len(alphas), (config.batch_size,), generator=gen)
            noise = torch.randn(x0[rows].shape, generator=gen)
            a = alphas[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0[rows] + (1 - a).sqrt() * noise
            c_rows, u_rows = cond.take(rows.tolist()), uncond.take(rows.tolist())
            with torch.no_grad():
                e_c = frozen(x_t, t, **adapter.denoiser_kwargs(c_rows)).sample
                e_u = frozen(x_t, t, **adapter.denoiser_kwargs(u_rows)).sample
                target = e_u - config.eta * (e_c - e_u)
            pred = unet(x_t, t, **adapter.denoiser_kwargs(c_rows)).sample
            loss = torch.nn.functional.mse_loss(pred, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % config.eval_every == 0:
                eval_start = time.perf_counter()
                unet.eval()
                finished = done()
                eval_seconds += time.perf_counter() - eval_start
                if finished:
                    reached = True
                    break
    finally:
        for p, flag in zip(unet.parameters(), saved_flags, strict=True):
            p.requires_grad_(flag)
    total = time.perf_counter() - start
    return ESDResult(steps=step, train_seconds=total - eval_seconds, eval_seconds=eval_seconds, reached=reached)


def kv_snapshot(model: LoadedModel) -> Callable[[], None]:
    """Copy every cross-attention K/V tensor now; the returned function writes them back."""
    params = _kv_parameters(model)
    saved = [p.detach().clone() for p in params]

    def restore() -> None:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)

    return restore


def esd_step_seconds(model: LoadedModel, prompt: str, seed: int = 0) -> float:
    """Wall time of one ESD-x training step (batch 1) on ``model``'s UNet at its default latent size.

    Two passes of a frozen copy (concept and empty prompt), one pass of the trained UNet, the backward pass
    and an Adam step on every cross-attention K/V projection, as in :func:`run_esd`; the latent is random
    noise (its content does not change the cost). The model's weights are restored afterwards.
    """
    import copy

    pipe, adapter = model.pipe, model.adapter
    unet = pipe.unet
    restore = kv_snapshot(model)
    frozen = copy.deepcopy(unet).requires_grad_(False).eval()
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x_t = torch.randn(1, unet.config.in_channels, size, size, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        cond, uncond = adapter.encode(pipe, [prompt]), adapter.encode_unconditional(pipe, 1)
    params = _kv_parameters(model)
    saved_flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-5)
    try:
        start = time.perf_counter()
        with torch.no_grad():
            e_c = frozen(x_t, t, **adapter.denoiser_kwargs(cond)).sample
            e_u = frozen(x_t, t, **adapter.denoiser_kwargs(uncond)).sample
        pred = unet(x_t, t, **adapter.denoiser_kwargs(cond)).sample
        loss = torch.nn.functional.mse_loss(pred, e_u - (e_c - e_u))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
    finally:
        for p, flag in zip(unet.parameters(), saved_flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
        restore()
        del frozen
    return seconds
