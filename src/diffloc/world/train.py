"""Train the ShapesWorld text-to-image model: seeded, reproducible, resumable.

Two stages in one run directory:

1. **VAE** (``vae.safetensors``): a small ``AutoencoderKL`` trained on renders; then every training image is
   encoded once and cached with its token ids (``cache.safetensors``).
2. **Denoiser + text encoder** (``checkpoint.safetensors``), trained jointly from scratch with the ε objective
   (or v on a zero-terminal-SNR schedule), caption dropout for classifier-free guidance and an EMA of the
   weights. The denoiser is SD-1.5's UNet, or with ``denoiser="dit"`` a PixArt-α-structured transformer
   (:mod:`diffloc.world.dit`) that usually reads a given, frozen text encoder (``text_from``). A checkpoint
   (weights, EMA, optimizer state, noise-generator state, step) is written atomically every ``checkpoint_every``
   steps;
   ``resume=True`` continues from it, bit-for-bit on the same machine.

Data order, noise and caption dropout derive from the seed and the step only, so a resumed run draws the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file

from diffloc.errors import CheckpointError, ConfigError
from diffloc.models.pixart import PixArtAdapter
from diffloc.models.unet import UNetAdapter
from diffloc.threads import torch_threads
from diffloc.validate import check_positive, check_seed, generator_seed
from diffloc.world import captions, dit, model
from diffloc.world.latent_cache import cache_examples, check_cache_examples
from diffloc.world.render import render_batch

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int, float], None]
#: The denoisers a run can train (:attr:`TrainConfig.denoiser`).
DENOISERS = ("unet", "dit")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Recipe of a ShapesWorld training run (the defaults are the shipped model's recipe)."""

    seed: int = 0
    n_examples: int = 50_000
    vae_steps: int = 600
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    steps: int = 4500
    batch_size: int = 32
    lr: float = 8e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    text_width: int = 96
    text_layers: int = 4
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    unet_heads: tuple[int, ...] = (1, 2, 2, 2)
    threads: int = 1
    #: Warm start: a ShapesWorld pipeline directory whose VAE (with its latent scaling), UNet and text encoder
    #: start the run instead of a fresh VAE and random weights (the optimizer starts fresh).
    init_from: str | None = None
    #: Share of (plain, style, object, fact) captions in the training data.
    mix: tuple[float, float, float, float] = captions.DEFAULT_MIX
    #: Train the text encoder only (the UNet, e.g. a warm start's, stays fixed): for teaching new phrasings
    #: of known captions without moving what the UNet draws.
    freeze_unet: bool = False
    #: Extra training templates, a name of :data:`vocab.EXTRA_TEMPLATES` (``"none"``: the shipped model's).
    extra_templates: str = "none"
    #: Warm start only: new text-encoder layers appended to the warm start's (``text_layers`` counts them),
    #: initialised as the identity (zero attention output and MLP output projections), so the grown encoder
    #: reads every caption exactly as the warm start's did until training moves it.
    grow_text_layers: int = 0
    #: From scratch with a known autoencoder: this ShapesWorld pipeline directory's VAE (with its latent
    #: scaling) replaces stage 1; UNet and text encoder start from random weights. A warm start
    #: (``init_from``) takes its VAE already, so the two are exclusive.
    vae_from: str | None = None
    #: Train v-prediction on a zero-terminal-SNR schedule sampled with trailing timesteps
    #: (:data:`model.ZERO_SNR_SCHEDULE`), so the pure noise sampling starts from carries no image signal for the
    #: first steps to read; exported with that scheduler. A warm start from an ε model re-learns its target.
    zero_snr: bool = False
    #: The denoiser: ``"unet"`` (SD-1.5's block structure) or ``"dit"`` (a PixArt-α-structured transformer,
    #: :mod:`diffloc.world.dit`, exported as a ``PixArtAlphaPipeline``).
    denoiser: str = "unet"
    #: The DiT's transformer width, number of blocks and attention heads (``denoiser="dit"`` only).
    dit_width: int = 128
    dit_layers: int = 8
    dit_heads: int = 4
    #: This ShapesWorld pipeline directory's text encoder starts the run instead of a random one
    #: ("shapesworld": the shipped one; its architecture must be ``text_width``/``text_layers``/``text_heads``).
    text_from: str | None = None
    #: Keep the text encoder fixed (that of ``text_from`` or of a warm start), so the denoiser learns to read
    #: exactly its states.
    freeze_text: bool = False

    def __post_init__(self) -> None:
        captions.check_mix(self.mix)
        captions.check_extra(self.extra_templates)
        for name in ("n_examples", "vae_batch_size", "steps", "batch_size", "checkpoint_every", "threads",
                     "text_layers", "text_heads", "dit_width", "dit_layers", "dit_heads"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_seed(self.seed)
        check_positive("lr", self.lr)
        check_positive("vae_lr", self.vae_lr)
        if self.vae_steps < 0 or self.warmup_steps < 0:
            raise ConfigError("vae_steps and warmup_steps must be >= 0")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if len(self.unet_channels) != 4 or len(self.unet_heads) != 4:
            raise ConfigError("unet_channels and unet_heads need 4 entries (SD-1.5's four UNet levels)")
        if self.grow_text_layers < 0 or (self.grow_text_layers and self.init_from is None):
            raise ConfigError(f"grow_text_layers must be >= 0 and needs init_from, got {self.grow_text_layers}")
        if self.grow_text_layers >= self.text_layers:
            raise ConfigError(
                f"grow_text_layers {self.grow_text_layers} must be fewer than text_layers {self.text_layers} "
                "(text_layers counts the warm start's layers and the new ones)"
            )
        if self.vae_from is not None and self.init_from is not None:
            raise ConfigError("vae_from and init_from are exclusive: a warm start already takes init_from's VAE")
        if self.text_width % self.text_heads:
            raise ConfigError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        self._check_denoiser()

    def _check_denoiser(self) -> None:
        if self.denoiser not in DENOISERS:
            raise ConfigError(f"denoiser {self.denoiser!r} is not one of {', '.join(DENOISERS)}")
        if self.denoiser == "dit" and self.freeze_unet:
            raise ConfigError("freeze_unet applies to the UNet denoiser; denoiser 'dit' has no UNet")
        if self.dit_width % self.dit_heads:
            raise ConfigError(f"dit_width {self.dit_width} is not divisible by dit_heads {self.dit_heads}")
        if self.text_from is not None and self.init_from is not None:
            raise ConfigError(
                "text_from and init_from are exclusive: a warm start already takes init_from's text encoder"
            )
        if self.freeze_text and self.text_from is None and self.init_from is None:
            raise ConfigError("freeze_text needs text_from or init_from: a frozen random text encoder reads nothing")
        if self.freeze_text and self.freeze_unet:
            raise ConfigError("freeze_text and freeze_unet together leave nothing to train")

    def to_json(self) -> str:
        """The config as JSON (stored in every checkpoint)."""
        return json.dumps(asdict(self), sort_keys=True)


def _images_tensor(examples: list[captions.Example]) -> torch.Tensor:
    images = render_batch([e.scene for e in examples], [e.seed for e in examples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (n, 3, 32, 32) in [-1, 1]


def train_vae(config: TrainConfig, images: torch.Tensor, progress: ProgressCallback | None = None):
    """Train the autoencoder on ``images`` (in [-1, 1]); returns the VAE in eval mode."""
    torch.manual_seed(config.seed)
    vae = model.build_vae()
    opt = torch.optim.Adam(vae.parameters(), lr=config.vae_lr)
    gen = torch.Generator().manual_seed(config.seed + 1)
    for step in range(config.vae_steps):
        idx = torch.randint(0, len(images), (config.vae_batch_size,), generator=gen)
        batch = images[idx]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress("vae", step + 1, config.vae_steps, loss.item())
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of ``images``: ``(n, 4, 16, 16)`` (unscaled), in the standard (NCHW-contiguous) layout.

    The encoder may hand back a channels-last tensor; a run that trains on it takes other convolution kernels than
    one that reads the same values back from the latent cache (stored contiguous), and the two drift apart in the
    last bits, so a resumed run would not match an uninterrupted one.
    """
    chunks = [vae.encode(images[i : i + batch_size]).latent_dist.mean for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).contiguous()


def tokenize(texts: list[str]) -> torch.Tensor:
    """Token ids padded to 77 exactly as the pipeline does: ``(n, 77)`` int64."""
    tok = model.load_tokenizer()
    unique = sorted(set(texts))
    ids = tok(unique, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids  # fmt: skip
    row = {t: i for i, t in enumerate(unique)}
    return ids[torch.tensor([row[t] for t in texts])]


def _lr_at(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _batch_indices(config: TrainConfig, step: int, n: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epoch-wise seeded permutations, a pure function of (seed, step)."""
    start = step * config.batch_size
    out: list[int] = []
    while len(out) < config.batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(generator_seed(config.seed * 7919 + epoch)))
        out.extend(perm[offset : offset + config.batch_size - len(out)].tolist())
    return torch.tensor(out)


def _prepare(config: TrainConfig, run_dir: Path, progress: ProgressCallback | None, given_vae=None):
    """Stage 1: VAE and latent cache (reused when present; ``given_vae`` is the autoencoder of a warm start or of
    ``vae_from``, taken with its latent scaling instead of training one)."""
    vae_path, cache_path = run_dir / "vae.safetensors", run_dir / "cache.safetensors"
    vae = model.build_vae()
    examples = None
    if vae_path.exists():
        model.check_safetensors(vae_path)
        vae.load_state_dict(load_file(str(vae_path)))
        vae.eval()
    elif given_vae is not None:
        vae = given_vae.eval()
        model._atomic_save_file(vae.state_dict(), vae_path)
    else:
        examples = captions.training_examples(config.n_examples, config.seed, config.mix, config.extra_templates)
        images = _images_tensor(examples)
        started = time.time()
        vae = train_vae(config, images, progress)
        logger.info("VAE trained in %.0f s", time.time() - started)
        model._atomic_save_file(vae.state_dict(), vae_path)
    if cache_path.exists():
        model.check_safetensors(cache_path)
        cache = load_file(str(cache_path))
        return vae, cache["latents"], cache["ids"], float(cache["scaling"])
    if examples is None:
        examples = captions.training_examples(config.n_examples, config.seed, config.mix, config.extra_templates)
        images = _images_tensor(examples)
    latents = encode_latents(vae, images)
    if given_vae is not None:  # latents at the given autoencoder's scale (a warm-started UNet learned them so)
        scaling = float(given_vae.config.scaling_factor)
    else:
        scaling = float(torch.tensor(1.0 / float(latents.std()), dtype=torch.float32))  # as stored in the cache
    ids = tokenize([e.caption for e in examples])
    model._atomic_save_file(
        {"latents": latents, "ids": ids, "scaling": torch.tensor(scaling)}, cache_path, metadata=_cache_data(config)
    )
    return vae, latents, ids, scaling


def _cache_data(config: TrainConfig) -> dict[str, str]:
    return cache_examples(config.n_examples, config.seed, config.mix, config.extra_templates)


def _load_vae(config: TrainConfig):
    """The autoencoder a ``vae_from`` run encodes with (with its ``scaling_factor``)."""
    vae = model.load_pipeline(model.pipeline_dir(str(config.vae_from), "vae_from")).vae
    try:  # the export rebuilds it with this recipe's architecture
        model.build_vae().load_state_dict(vae.state_dict())
    except RuntimeError:
        raise ConfigError(
            f"vae_from {config.vae_from!r} has another autoencoder architecture than this recipe's"
        ) from None
    return vae.eval()


def _load_init(config: TrainConfig):
    """The pipeline a warm-started run begins from (checked file by file); raises a one-line error if unusable."""
    init = model.load_pipeline(model.pipeline_dir(str(config.init_from), "init_from"))
    kind = "dit" if hasattr(init, "transformer") else "unet"
    if kind != config.denoiser:
        raise ConfigError(
            f"init_from {config.init_from!r} has a {kind} denoiser; a warm start of denoiser {config.denoiser!r} "
            f"needs an export of a {config.denoiser} run"
        )
    text = init.text_encoder.config
    if kind == "dit":
        denoiser: tuple = dit.transformer_architecture(init.transformer)
        wanted_denoiser: tuple = (config.dit_width, config.dit_layers, config.dit_heads, config.text_width)
        names = "DiT width/layers/heads/caption channels"
    else:
        unet = init.unet.config
        heads = unet.attention_head_dim
        heads = tuple(heads) if isinstance(heads, list | tuple) else (heads,) * len(unet.block_out_channels)
        denoiser, wanted_denoiser = (tuple(unet.block_out_channels), heads), (config.unet_channels, config.unet_heads)
        names = "UNet channels/heads"
    found = (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, *denoiser)
    wanted = (config.text_width, config.text_layers - config.grow_text_layers, config.text_heads, *wanted_denoiser)
    if found != wanted:  # checked before anything is written to the run directory
        raise ConfigError(
            f"init_from {config.init_from!r} has another architecture than this recipe (text width/layers/heads, "
            f"{names}: {found} vs {wanted})"
        )
    if init.scheduler.config.get("prediction_type") == "v_prediction" and not config.zero_snr:
        raise ConfigError(
            f"init_from {config.init_from!r} predicts v on the zero-terminal-SNR schedule; a warm start from it "
            "needs zero_snr=True (--zero-snr), or its weights would be trained towards epsilon"
        )
    return init


def _load_text(config: TrainConfig):
    """The text encoder of ``text_from`` (checked against the recipe's text architecture)."""
    encoder = model.load_pipeline(model.pipeline_dir(str(config.text_from), "text_from")).text_encoder
    try:
        _build_text(config).load_state_dict(encoder.state_dict())
    except RuntimeError:
        found = encoder.config
        raise ConfigError(
            f"text_from {config.text_from!r} has a text encoder of width/layers/heads "
            f"{(found.hidden_size, found.num_hidden_layers, found.num_attention_heads)}, not the recipe's "
            f"{(config.text_width, config.text_layers, config.text_heads)}"
        ) from None
    return encoder


def _build_text(config: TrainConfig):
    return model.build_text_encoder(width=config.text_width, layers=config.text_layers, heads=config.text_heads)


def build_denoiser(config: TrainConfig):
    """A freshly initialised denoiser of the recipe: the UNet, or the DiT (:func:`dit.build_transformer`)."""
    if config.denoiser == "dit":
        return dit.build_transformer(width=config.dit_width, layers=config.dit_layers, heads=config.dit_heads,
                                     caption_channels=config.text_width)  # fmt: skip
    return model.build_unet(channels=config.unet_channels, heads=config.unet_heads, context_dim=config.text_width)


def _warm_start(config: TrainConfig, init, unet, text_encoder) -> None:
    """Copy the initial pipeline's denoiser and text-encoder weights into the freshly built modules (and make the
    ``grow_text_layers`` new text layers the identity)."""
    refusal = ConfigError(
        f"init_from {config.init_from!r} has another architecture than this recipe "
        "(text_width/text_layers/text_heads/unet_channels/unet_heads)"
    )
    try:
        unet.load_state_dict((init.transformer if hasattr(init, "transformer") else init.unet).state_dict())
        missing, unexpected = text_encoder.load_state_dict(init.text_encoder.state_dict(), strict=False)
    except RuntimeError as exc:
        raise refusal from exc
    # transformers 4 nests the encoder under .text_model, 5 does not
    layers = getattr(text_encoder, "text_model", text_encoder).encoder.layers
    new = layers[config.text_layers - config.grow_text_layers :]
    names = {id(module): name for name, module in text_encoder.named_modules()}
    new_prefixes = tuple(f"{names[id(layer)]}." for layer in new)
    if unexpected or any(not key.startswith(new_prefixes) for key in missing):
        raise refusal
    with torch.no_grad():
        for layer in new:  # identity: each residual branch adds exactly zero
            for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()


def _prefix(denoiser) -> str:
    """Checkpoint key prefix of a denoiser's weights: its pipeline component name (its family adapter's)."""
    adapter = UNetAdapter if isinstance(denoiser, UNet2DConditionModel) else PixArtAdapter
    return f"{adapter.denoiser_component}."


def _checkpoint_tensors(unet, text_encoder, ema: list[torch.Tensor], opt, gen: torch.Generator) -> dict:
    tensors = {f"{_prefix(unet)}{k}": v for k, v in unet.state_dict().items()}
    tensors.update({f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()})
    tensors.update({f"ema.{i}": t for i, t in enumerate(ema)})
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.noise"] = gen.get_state()
    return tensors


def load_checkpoint(path: Path, unet, text_encoder, opt=None, gen: torch.Generator | None = None):
    """Load a training checkpoint into the given modules (``unet``: the run's denoiser); returns
    ``(step, ema_tensors, metadata)``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted, or does not match the modules.
    """

    model.check_safetensors(path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    try:
        prefix = _prefix(unet)
        unet.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        text_encoder.load_state_dict({k[13:]: v for k, v in tensors.items() if k.startswith("text_encoder.")})
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the model config") from exc
    n_params = len(list(unet.parameters())) + len(list(text_encoder.parameters()))
    ema = [tensors[f"ema.{i}"] for i in range(n_params)]
    if opt is not None:
        state = {}
        for i in range(n_params):
            if f"optim.{i}.step" in tensors:
                state[i] = {k: tensors[f"optim.{i}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")}
        sd = opt.state_dict()
        sd["state"] = state
        opt.load_state_dict(sd)
    if gen is not None:
        gen.set_state(tensors["rng.noise"])
    return int(metadata.get("step", 0)), ema, metadata


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    max_minutes: float | None = None,
    progress: ProgressCallback | None = None,
) -> dict:
    """Train (or resume) a ShapesWorld model in ``run_dir``; returns a summary dict.

    Args:
        config: the recipe.
        run_dir: where the VAE, latent cache, checkpoint and ``train_log.jsonl`` live.
        resume: continue from ``run_dir/checkpoint.safetensors``; without it, an existing checkpoint is an
            error (nothing is overwritten).
        max_minutes: stop (after writing a checkpoint) at the first step that ends past this much wall time
            (0: after one step); preparing the data (autoencoder, latent cache) is never interrupted.
        progress: ``progress(stage, step, total, loss)`` called after every step.

    Raises:
        ConfigError: a checkpoint exists and ``resume`` is false, it was made with another recipe, or
            ``max_minutes`` is negative.
        CheckpointError: the checkpoint is corrupted.
    """
    if max_minutes is not None and not max_minutes >= 0:
        raise ConfigError(f"max_minutes must be >= 0, got {max_minutes}")
    with torch_threads(config.threads):
        return _train(config, Path(run_dir), resume=resume, max_minutes=max_minutes, progress=progress)


def _train(
    config: TrainConfig, run_dir: Path, *, resume: bool, max_minutes: float | None, progress: ProgressCallback | None
) -> dict:
    """:func:`train`'s body, at the recipe's thread count."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoint.safetensors"
    if ckpt.exists() and not resume:
        raise ConfigError(f"{str(ckpt)!r} exists; pass resume to continue it or choose another run directory")
    config_path = run_dir / "config.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        new = json.loads(config.to_json())
        defaults = json.loads(TrainConfig().to_json())  # a field added after the run was made has its default
        changed = sorted(k for k in new if k not in ("steps", "threads") and old.get(k, defaults[k]) != new[k])
        if changed:
            raise ConfigError(f"run {str(run_dir)!r} was made with a different recipe ({', '.join(changed)})")
    resuming = resume and ckpt.exists()
    cached = resuming and (run_dir / "cache.safetensors").exists()
    init = _load_init(config) if config.init_from and not cached else None
    text_start = _load_text(config) if config.text_from and not resuming else None
    given_vae = init.vae if init is not None else None
    if config.vae_from and not cached:
        given_vae = _load_vae(config)
    if (run_dir / "cache.safetensors").exists():  # before anything is written for this run
        model.check_safetensors(run_dir / "cache.safetensors")
        check_cache_examples(run_dir / "cache.safetensors", _cache_data(config))
    model._atomic_write_text(config.to_json() + "\n", config_path)

    started = time.time()
    _vae, latents, ids, scaling = _prepare(config, run_dir, progress, given_vae)
    latents = latents * scaling
    torch.manual_seed(config.seed)
    text_encoder = _build_text(config)
    unet = build_denoiser(config)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    if config.freeze_unet:
        unet.requires_grad_(False)
    if config.freeze_text:
        text_encoder.requires_grad_(False)
    trained = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed + 2)
    step = 0
    if resuming:
        step, ema, _ = load_checkpoint(ckpt, unet, text_encoder, opt, gen)
        logger.info("resumed at step %d", step)
    else:
        if init is not None:
            _warm_start(config, init, unet, text_encoder)
            logger.info("warm start from %s", config.init_from)
        if text_start is not None:
            text_encoder.load_state_dict(text_start.state_dict())
            logger.info("text encoder from %s", config.text_from)
        if config.denoiser == "dit" and config.freeze_text:  # exported in float16: train on exactly those states
            dit.round_to_half(text_encoder)
        ema = [p.detach().clone() for p in params]
    # EMA of the trained parameters only (a frozen module's EMA stays at its weights without per-step work).
    ema_trained = [e for e, p in zip(ema, params, strict=True) if p.requires_grad]
    alphas = _scheduler(config).alphas_cumprod.float()
    uncond = tokenize([""])[0]
    masks, uncond_mask = dit.padding_mask(ids), dit.padding_mask(uncond[None])[0]
    unet.train()
    text_encoder.train()
    log_path = run_dir / "train_log.jsonl"
    losses: list[float] = []
    while step < config.steps:
        idx = _batch_indices(config, step, len(latents))
        x0, tok = latents[idx], ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < config.caption_dropout
        tok[drop] = uncond
        mask = masks[idx]
        mask[drop] = uncond_mask
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (len(idx),), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(config, step)
        with torch.set_grad_enabled(not config.freeze_text):
            if config.denoiser == "dit":  # as PixArtAlphaPipeline encodes and reads the prompt: masked
                tok, mask = dit.trim_padding(tok, mask)
                context = dit.text_states(text_encoder, tok, mask)
            else:
                context = text_encoder(tok).last_hidden_state  # (batch, 77, width)
        if config.denoiser == "dit":
            pred = dit.predict(unet, noisy, t, context, mask)
        else:
            pred = unet(noisy, t, context).sample
        loss = F.mse_loss(pred, training_target(config, x0, noise, a))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_trained, [p.detach() for p in trained], 1 - decay)
        step += 1
        losses.append(loss.item())
        if progress:
            progress(config.denoiser, step, config.steps, losses[-1])
        out_of_time = max_minutes is not None and time.time() - started > 60 * max_minutes
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            meta = {"step": str(step), "config": config.to_json(), "scaling": repr(scaling)}
            model._atomic_save_file(_checkpoint_tensors(unet, text_encoder, ema, opt, gen), ckpt, metadata=meta)
            with open(log_path, "a") as handle:
                handle.write(json.dumps({"step": step, "loss": float(np.mean(losses)), "time": time.time()}) + "\n")
            losses = []
        if out_of_time:
            logger.info("stopping at step %d after %.1f min (resume to continue)", step, max_minutes)
            break
    return {"step": step, "steps": config.steps, "minutes": (time.time() - started) / 60, "run_dir": str(run_dir)}


def export_run(run_dir: str | Path, out_dir: str | Path, *, use_ema: bool = True) -> Path:
    """Export a run's checkpoint (EMA weights by default) as a pipeline directory: a StableDiffusionPipeline
    (UNet runs) or a PixArtAlphaPipeline (DiT runs; text encoder stored in float16)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{str(run_dir)!r} has no config.json; is it a ShapesWorld run directory?")
    fields = json.loads(config_path.read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    config = TrainConfig(**fields)
    text_encoder = _build_text(config)
    unet = build_denoiser(config)
    step, ema, metadata = load_checkpoint(run_dir / "checkpoint.safetensors", unet, text_encoder)
    if use_ema:
        with torch.no_grad():
            for p, e in zip(list(unet.parameters()) + list(text_encoder.parameters()), ema, strict=True):
                p.copy_(e)
    vae = model.build_vae()
    vae.load_state_dict(load_file(str(run_dir / "vae.safetensors")))
    vae.register_to_config(scaling_factor=float(metadata["scaling"]))
    logger.info("exporting step %d of %s", step, run_dir)
    if config.denoiser == "dit":

        def write(staging: Path) -> dict:
            return dit.save_components(staging, transformer=unet, vae=vae, scheduler=_scheduler(config))

        return model.publish_pipeline(Path(out_dir), write, text_encoder, half_text=True)
    return model.export_pipeline(unet=unet, vae=vae, text_encoder=text_encoder, out_dir=Path(out_dir),
                                 scheduler=_scheduler(config))  # fmt: skip


def training_target(config: TrainConfig, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict from ``sqrt(a) x0 + sqrt(1 - a) noise``: the noise (ε), or for a
    ``zero_snr`` run the velocity ``v = sqrt(a) noise - sqrt(1 - a) x0``, diffusers' ``v_prediction``."""
    return a.sqrt() * noise - (1 - a).sqrt() * x0 if config.zero_snr else noise


def _scheduler(config: TrainConfig):
    """The run's noise schedule, trained on and exported: :func:`model.build_scheduler`'s, or the zero-SNR one."""
    return model.build_scheduler(**(model.ZERO_SNR_SCHEDULE if config.zero_snr else {}))
