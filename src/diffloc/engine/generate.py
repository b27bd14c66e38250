"""Seeded, batched sampling with classifier-free guidance and per-run interventions."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffloc.engine.batch import BatchLayout
from diffloc.engine.finite import check_images, check_latents, check_text_states
from diffloc.engine.hooks import patch
from diffloc.engine.interventions import Intervention, Restore, Run, compile_runs, denoiser_hooks
from diffloc.errors import ConfigError, PromptError
from diffloc.models.base import CONTEXT_MASK, DECODE_BATCH, Conditioning, LoadedModel
from diffloc.validate import check_count, check_guidance, check_image_side, check_model_steps, check_seed, check_steps

#: ``progress(done, total)`` called after each denoising step
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """Sampling settings.

    Attributes:
        steps: denoising steps (>= 1).
        guidance: classifier-free guidance scale; values <= 1 disable CFG.
        height, width: image size in pixels; ``None`` uses the model's default.
        decode_batch: images per VAE decode call (memory bound; the result does not depend on it).
    """

    steps: int = 20
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    decode_batch: int = DECODE_BATCH

    def __post_init__(self) -> None:
        check_steps(self.steps)
        check_guidance(self.guidance)
        for label, value in (("height", self.height), ("width", self.width)):
            if value is not None:
                check_image_side(label, value)
        check_count("decode_batch", self.decode_batch)

    @property
    def cfg(self) -> bool:
        """Whether classifier-free guidance is used (a guidance-embedded model never uses it: see
        :func:`classifier_free`)."""
        return self.guidance > 1.0


def classifier_free(model: LoadedModel, config: GenerationConfig) -> bool:
    """Whether sampling ``model`` with ``config`` runs classifier-free guidance's unconditional rows: when the
    guidance scale is above 1, unless the model embeds the guidance scale (FLUX.1-dev), which then reaches the
    denoiser as an input and the batch holds conditional rows only."""
    return config.cfg and not model.adapter.guidance_embedded(model.pipe)


def initial_latents(
    shape: tuple[int, ...], seeds: Sequence[int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """One Gaussian latent per row, drawn on the CPU from each row's seed (device-independent)."""
    per_seed: dict[int, torch.Tensor] = {}
    for seed in seeds:
        if seed not in per_seed:
            gen = torch.Generator(device="cpu").manual_seed(check_seed(seed))
            per_seed[seed] = torch.randn((1, *shape), generator=gen, dtype=torch.float32)
    return torch.cat([per_seed[s] for s in seeds]).to(device=device, dtype=dtype)


def _scheduler_step_kwargs(scheduler: Any, seeds: Sequence[int]) -> dict[str, Any]:
    # Stochastic schedulers (DDPM for IF, ancestral samplers) draw fresh noise each step. One generator per
    # row, seeded from the row's seed, makes rows with the same seed share that noise exactly. Whether
    # `step` takes a generator is only visible in its signature (diffusers' own pipelines check the same).
    if "generator" not in inspect.signature(scheduler.step).parameters:
        return {}
    return {"generator": [torch.Generator(device="cpu").manual_seed(int(s) + 7919) for s in seeds]}


def _guide(noise: torch.Tensor, cfg: bool, guidance: float, in_channels: int, scheduler: Any) -> torch.Tensor:
    """Combine the CFG halves; keep a learned-variance half (IF) for schedulers that use it."""
    if cfg:
        uncond, cond = noise.chunk(2)
    else:
        uncond = cond = noise
    variance = None
    if noise.shape[1] == 2 * in_channels:
        uncond, _ = uncond.split(in_channels, dim=1)
        cond, variance = cond.split(in_channels, dim=1)
    eps = uncond + guidance * (cond - uncond) if cfg else cond
    if variance is not None and scheduler.config.get("variance_type") in ("learned", "learned_range"):
        eps = torch.cat([eps, variance], dim=1)
    return eps


@torch.inference_mode()
def sample(
    model: LoadedModel,
    cond: Conditioning,
    *,
    seeds: Sequence[int],
    config: GenerationConfig,
    uncond: Conditioning | None = None,
    progress: ProgressFn | None = None,
    shadow_follows: Sequence[int] = (),
    shadow_cond: Conditioning | None = None,
) -> torch.Tensor:
    """Denoise one batch of rows and decode it.

    Args:
        model: the loaded model (hooks, if any, are installed by the caller).
        cond: conditioning, one row per run.
        seeds: one seed per run; runs with equal seeds start from the same latent and share step noise.
        config: sampling settings.
        uncond: unconditional conditioning (default: the empty prompt).
        progress: called after each step.
        shadow_follows: for each shadow row (see :class:`~diffloc.engine.batch.BatchLayout`), the run whose
            latent it takes at every step; shadows are appended after the guided rows and their predictions
            discarded.
        shadow_cond: conditioning of the shadow rows, one row per shadow.

    Returns:
        Images ``(runs, 3, H, W)`` in ``[0, 1]``, float32, on the CPU.
    """
    pipe, adapter = model.pipe, model.adapter
    if len(seeds) != len(cond):
        raise ConfigError(f"{len(seeds)} seeds for {len(cond)} runs; give one seed per run")
    if len(shadow_follows) != (0 if shadow_cond is None else len(shadow_cond)):
        raise ConfigError(f"{len(shadow_follows)} shadow rows need as many rows of shadow conditioning")
    layout = BatchLayout(runs=len(cond), cfg=classifier_free(model, config), shadows=len(shadow_follows))
    default_h, default_w = adapter.default_size(pipe)
    height, width = config.height or default_h, config.width or default_w
    check_model_steps(model, config.steps)  # more steps than the schedule has are refused, never extrapolated
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    shape = adapter.latent_shape(pipe, height, width)
    adapter.set_timesteps(pipe, scheduler, config.steps, shape, model.device)
    latents = initial_latents(shape, seeds, model.device, model.dtype) * adapter.initial_noise_scale(scheduler)
    if layout.cfg:
        uncond = uncond if uncond is not None else adapter.encode_unconditional(pipe, len(cond))
        batch_cond = Conditioning.cat([uncond, cond])
    else:
        batch_cond = cond
    if shadow_cond is not None and layout.shadows:
        batch_cond = Conditioning.cat([batch_cond, shadow_cond])
    batch_cond = adapter.for_size(batch_cond, height, width)
    follows = torch.as_tensor(list(shadow_follows), dtype=torch.long, device=latents.device)
    kwargs = {**adapter.denoiser_kwargs(batch_cond), **adapter.guidance_kwargs(pipe, layout.size, config.guidance)}
    step_kwargs = _scheduler_step_kwargs(scheduler, seeds)
    in_channels = adapter.in_channels(pipe)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x = torch.cat([latents, latents]) if layout.cfg else latents
        if layout.shadows:
            x = torch.cat([x, latents[follows]])
        x = adapter.scale_model_input(scheduler, x, t)
        noise = adapter.predict_noise(pipe, x, t, kwargs)[: layout.guided_rows]
        eps = _guide(noise, layout.cfg, config.guidance, in_channels, scheduler)
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        check_latents(latents, step=i + 1, steps=len(timesteps), guidance=config.guidance)
        if progress is not None:
            progress(i + 1, len(timesteps))
    images = adapter.decode(pipe, latents, batch=config.decode_batch).cpu()
    check_images(images)
    return images


@torch.inference_mode()
def generate_runs(
    model: LoadedModel,
    runs: Sequence[Run],
    *,
    config: GenerationConfig | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Generate every run of one batch, each with its own interventions, in one batched pass per step.

    Text is encoded once per distinct prompt (runs with text-level interventions get their own row).

    Args:
        model: the loaded model.
        runs: the runs; interventions may reference other runs by index (``Restore.source``).
        config: sampling settings (default :class:`GenerationConfig`).
        progress: called after each denoising step.

    Returns:
        Images ``(len(runs), 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> clean = Run(prompt="a red circle in the style of vangoo", seed=0)
        >>> corrupt = Run(prompt=clean.prompt, seed=0, interventions=(CorruptTokens(positions=(6, 8), std=0.3),))
        >>> images = generate_runs(model, [clean, corrupt])
    """
    if not runs:
        raise ConfigError("no runs to generate; give at least one Run")
    for run in runs:
        if not isinstance(run.prompt, str):
            raise PromptError(f"prompt must be a string, got {type(run.prompt).__name__}")
    config = config or GenerationConfig()
    plan = compile_runs(model, runs)
    pipe, adapter = model.pipe, model.adapter
    with patch(model, outputs=plan.text_outputs):
        encoded = adapter.encode(pipe, plan.text_prompts)
    cond = encoded.take(plan.text_rows)
    check_text_states(cond.hidden, runs)
    swap_context: dict[str, torch.Tensor] = {}
    swap_masks: dict[str, torch.Tensor] = {}
    if plan.swap_prompts:
        swapped_cond = adapter.encode(pipe, plan.swap_prompts)
        swapped = attention_context(model, swapped_cond.hidden)
        swap_context = {p: swapped[i] for i, p in enumerate(plan.swap_prompts)}
        masks = swapped_cond.added.get(CONTEXT_MASK)  # PixArt: the swapped prompt's padding stays hidden
        if masks is not None:
            swap_masks = {p: masks[i] for i, p in enumerate(plan.swap_prompts)}
    layout = BatchLayout(runs=len(runs), cfg=classifier_free(model, config), shadows=len(plan.shadows))
    shadow_cond = encoded.take([plan.text_rows[s.text_of] for s in plan.shadows]) if plan.shadows else None
    outputs, inputs = denoiser_hooks(model, plan, layout, swap_context, swap_masks)
    with patch(model, outputs=outputs, inputs=inputs):
        return sample(
            model, cond, seeds=[r.seed for r in runs], config=config, progress=progress,
            shadow_follows=[s.follows for s in plan.shadows], shadow_cond=shadow_cond,
        )  # fmt: skip


def attention_context(model: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Text states as cross-attention layers receive them.

    A denoiser with a context projection (DeepFloyd IF's ``encoder_hid_proj``, a ``text_proj``) projects the
    text encoder's output once before its blocks; context swaps must feed attention layers the projected states.
    """
    projection = model.adapter.context_projection(model.pipe)
    return projection[1](hidden) if projection is not None else hidden


def generate(
    model: LoadedModel,
    prompts: str | Sequence[str],
    *,
    seeds: int | Sequence[int] = 0,
    config: GenerationConfig | None = None,
    progress: ProgressFn | None = None,
    interventions: Sequence[Intervention] = (),
) -> torch.Tensor:
    """Seeded generation of one or more prompts, every run with the same ``interventions`` (default none).

    Interventions that name other runs (``Restore``) need :func:`generate_runs`; the ones that act on a run
    alone (e.g. a neuron ablation's ``SetChannels``, ``CorruptTokens``, ``SwapContext``) fit here.

    Returns:
        Images ``(n, 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> images = generate(model, prompts, seeds=[0, 1], interventions=ablation.interventions())
    """
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    seed_list = [seeds] * len(prompt_list) if isinstance(seeds, int) else list(seeds)
    if len(seed_list) != len(prompt_list):
        raise ConfigError(f"{len(seed_list)} seeds for {len(prompt_list)} prompts")
    shared = tuple(interventions)
    if any(isinstance(iv, Restore) for iv in shared):
        raise ConfigError("a Restore names a source run; give each run its interventions with generate_runs")
    runs = [Run(prompt=p, seed=s, interventions=shared) for p, s in zip(prompt_list, seed_list, strict=True)]
    return generate_runs(model, runs, config=config, progress=progress)
