"""What every model family provides: conditioning, adapters and the loaded-model bundle."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diffloc.errors import ConfigError, PromptError
from diffloc.models.exact_sums import exact_sums
from diffloc.sites import CROSS_ATTENTION_KINDS, Site, SiteKind, SiteRegistry

#: Images per VAE decode call by default (see :meth:`ModelAdapter.decode`).
DECODE_BATCH = 4
#: Key of :attr:`Conditioning.added` holding the ``(rows, tokens)`` 1/0 mask of the text tokens a denoiser's
#: cross-attention reads, in families that hide the padding from it (PixArt); absent where every token is read.
CONTEXT_MASK = "encoder_attention_mask"


def decode_compute_dtype(vae: nn.Module) -> torch.dtype:
    """The dtype a VAE decodes in: float32 when its config sets ``force_upcast``, else its parameters' dtype."""
    if getattr(vae.config, "force_upcast", False):
        return torch.float32
    return next(vae.parameters()).dtype


@contextmanager
def decode_dtype(vae: nn.Module) -> Iterator[torch.dtype]:
    """Hold the VAE in :func:`decode_compute_dtype` while the block runs; its weights are cast back after
    (bit-exactly: half precision to float32 and back loses nothing)."""
    dtype = next(vae.parameters()).dtype
    target = decode_compute_dtype(vae)
    if target == dtype:
        yield dtype
        return
    vae.to(target)
    try:
        yield target
    finally:
        vae.to(dtype)


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for a batch of rows, as the denoiser consumes it.

    Attributes:
        hidden: ``(rows, tokens, dim)`` encoder hidden states fed to cross-attention.
        added: per-row extra inputs (SD-XL: ``text_embeds`` ``(rows, d)``, ``time_ids`` ``(rows, 6)``),
            passed to a UNet as ``added_cond_kwargs``; PixArt: the context mask (:data:`CONTEXT_MASK`) and its
            micro-conditions ``resolution`` ``(rows, 2)`` and ``aspect_ratio`` ``(rows, 1)``.
    """

    hidden: torch.Tensor
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def take(self, rows: Sequence[int]) -> Conditioning:
        """Rows ``rows`` (repeats allowed) as a new conditioning."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.hidden.device)
        return Conditioning(self.hidden[idx], {k: v[idx] for k, v in self.added.items()})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate conditionings along the row dimension."""
        keys = parts[0].added.keys()
        return Conditioning(
            torch.cat([p.hidden for p in parts]),
            {k: torch.cat([p.added[k] for p in parts]) for k in keys},
        )


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a pipeline: its site prefix and pipeline attribute names."""

    prefix: str  # "text" or "text2"
    component: str  # "text_encoder" or "text_encoder_2"
    tokenizer: str  # "tokenizer" or "tokenizer_2"


class ModelAdapter(ABC):
    """Family-specific knowledge: site table, prompt encoding, subject lookup, decoding.

    One adapter class per family, chosen by pipeline class (see :mod:`diffloc.models.registry`).
    Adapters hold no model state; every method receives the pipeline.
    """

    family: str = ""
    #: diffusers pipeline class names this adapter accepts
    pipeline_classes: tuple[str, ...] = ()
    #: whether every text encoder puts a prompt's tokens at the same positions (SD-XL's two CLIP tokenizers do;
    #: SD3's CLIP and T5 do not, see :meth:`subject_ranges`)
    shared_token_positions: bool = True

    # -- structure -------------------------------------------------------------------------------
    @abstractmethod
    def text_encoders(self, pipe: Any) -> list[TextEncoderSpec]:
        """The pipeline's text encoders in the order their outputs are combined."""

    def build_sites(self, pipe: Any) -> SiteRegistry:
        """Build the site table: text encoders first, then the denoiser in execution order."""
        from diffloc.models.text_sites import text_sites

        sites: list[Site] = []
        for spec in self.text_encoders(pipe):
            sites.extend(text_sites(getattr(pipe, spec.component), spec.prefix, spec.component))
        sites.extend(self.denoiser_sites(pipe))
        return SiteRegistry(sites)

    # -- text ------------------------------------------------------------------------------------
    def max_tokens(self, pipe: Any, spec: TextEncoderSpec) -> int:
        """Longest token sequence (special tokens included) the encoder accepts."""
        return int(getattr(pipe, spec.component).config.max_position_embeddings)

    def tokenize(self, pipe: Any, spec: TextEncoderSpec, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(len(prompts), max_tokens)``, padded as the pipeline pads.

        Raises:
            PromptError: a prompt is longer than the encoder's limit.
        """
        tokenizer = getattr(pipe, spec.tokenizer)
        limit = self.max_tokens(pipe, spec)
        # One call: padded to the limit, not truncated, so an over-long prompt shows as a longer row.
        rows = tokenizer(list(prompts), padding="max_length", max_length=limit).input_ids if prompts else []
        for prompt, ids in zip(prompts, rows, strict=True):
            if len(ids) > limit:
                raise PromptError(
                    f"prompt {_short(prompt)!r} is {len(ids)} tokens long; {spec.component} accepts at most {limit}"
                )
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), limit)

    def find_subject(self, pipe: Any, prompt: str, subject: str) -> tuple[int, int]:
        """Token range ``(start, end)`` (half-open) of ``subject`` in the tokenized ``prompt``.

        Positions count the special tokens the tokenizer adds (CLIP's BOS is position 0). The match is
        made on token ids of the subject as it is tokenized inside the prompt, so multi-token subjects
        ("van gogh") resolve to all their tokens.

        Raises:
            PromptError: the subject is empty or does not occur in the prompt.
        """
        return self.find_subjects(pipe, [prompt], [subject])[0]

    def subject_ranges(self, pipe: Any, prompt: str, subject: str) -> dict[str, tuple[int, int]]:
        """The subject's token range per text encoder, keyed by its embedding site (``text.embed`` …).

        Every encoder of the UNet families shares the first encoder's positions (SD-XL's two CLIP tokenizers
        agree); a family whose tokenizers differ (SD3's CLIP and T5) looks each range up with its own tokenizer.

        Raises:
            PromptError: the subject is empty or does not occur in the prompt.
        """
        span = self.find_subject(pipe, prompt, subject)
        return {f"{spec.prefix}.embed": span for spec in self.text_encoders(pipe)}

    def find_subjects(
        self, pipe: Any, prompts: Sequence[str], subjects: Sequence[str], spec: TextEncoderSpec | None = None
    ) -> list[tuple[int, int]]:
        """:meth:`find_subject` for many prompts, with batched tokenizer calls (editing looks up hundreds);
        positions in the tokens of ``spec``'s tokenizer (default: the first encoder's).

        The first candidate occurrence of every subject (whole words first) is checked for all prompts in
        two batched tokenizer calls over distinct strings; only prompts where it does not align with token
        boundaries are retried, with their next occurrence.

        Raises:
            PromptError: a subject is empty or does not occur in (or align with the tokens of) its prompt.
        """
        if len(prompts) != len(subjects):
            raise PromptError(f"{len(prompts)} prompts but {len(subjects)} subjects; give one subject per prompt")
        if not prompts:
            return []
        tokenizer = getattr(pipe, (spec or self.text_encoders(pipe)[0]).tokenizer)
        lead = _leading_special(tokenizer)
        candidates = [_subject_starts(prompt, subject) for prompt, subject in zip(prompts, subjects, strict=True)]
        lengths = [len(subject.strip()) for subject in subjects]
        distinct = list(dict.fromkeys(prompts))
        by_prompt = dict(zip(distinct, tokenizer(distinct).input_ids, strict=True))
        ids = [by_prompt[p] for p in prompts]

        def spans(indices: list[int], starts: list[int]) -> list[tuple[int, int] | None]:
            befores = [prompts[i][:c] for i, c in zip(indices, starts, strict=True)]
            throughs = [prompts[i][: c + lengths[i]] for i, c in zip(indices, starts, strict=True)]
            # Template prefixes repeat across prompts: tokenize each distinct string once, in one call.
            texts = list(dict.fromkeys(befores + throughs))
            tokens = dict(zip(texts, tokenizer(texts, add_special_tokens=False).input_ids, strict=True))
            out: list[tuple[int, int] | None] = []
            for i, before_text, through_text in zip(indices, befores, throughs, strict=True):
                before, through = tokens[before_text], tokens[through_text]
                start, end = lead + len(before), lead + len(through)
                ok = end > start and ids[i][start:end] == through[len(before) :]
                out.append((start, end) if ok else None)
            return out

        found: list[tuple[int, int] | None] = [None] * len(prompts)
        pending = list(range(len(prompts)))
        depth = 0
        while pending:
            tries = [i for i in pending if depth < len(candidates[i])]
            for i in pending:
                if depth >= len(candidates[i]):
                    raise PromptError(
                        f"subject {subjects[i]!r} does not align with token boundaries in prompt {_short(prompts[i])!r}"
                    )
            for i, span in zip(tries, spans(tries, [candidates[i][depth] for i in tries]), strict=True):
                found[i] = span
            pending = [i for i in tries if found[i] is None]
            depth += 1
        return [span for span in found if span is not None]

    @abstractmethod
    def encode(self, pipe: Any, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts into denoiser conditioning (one row per prompt)."""

    def encode_unconditional(self, pipe: Any, rows: int) -> Conditioning:
        """Conditioning of the empty prompt for classifier-free guidance, ``rows`` copies."""
        return self.encode(pipe, [""]).take([0] * rows)

    def for_size(self, cond: Conditioning, height: int, width: int) -> Conditioning:
        """``cond`` adjusted to the image size being sampled (SD-XL's size time ids); most families: unchanged."""
        return cond

    # -- denoiser --------------------------------------------------------------------------------
    #: pipeline attribute holding the denoiser (``unet``; a diffusion transformer's ``transformer``)
    denoiser_component: str = ""

    def denoiser(self, pipe: Any) -> Any:
        """The network that predicts the noise (a diffusers model: an ``nn.Module`` with ``config``, ``device``,
        ``dtype``)."""
        return getattr(pipe, self.denoiser_component)

    @abstractmethod
    def denoiser_sites(self, pipe: Any) -> list[Site]:
        """The denoiser's sites in execution order (its block structure's site table)."""

    @abstractmethod
    def denoiser_kwargs(self, cond: Conditioning) -> dict[str, Any]:
        """Keyword arguments of a denoiser call for this conditioning (built once per batch)."""

    @abstractmethod
    def predict_noise(self, pipe: Any, x: torch.Tensor, t: torch.Tensor, kwargs: Mapping[str, Any]) -> torch.Tensor:
        """The denoiser's prediction for input ``x`` at timestep ``t`` (``kwargs`` from :meth:`denoiser_kwargs`)."""

    # -- sampling ------------------------------------------------------------------------------------
    def set_timesteps(self, pipe: Any, scheduler: Any, steps: int, latent_shape: Sequence[int], device: Any) -> None:
        """Prepare ``scheduler`` for ``steps`` steps on latents of ``latent_shape`` ``(channels, h, w)``."""
        scheduler.set_timesteps(steps, device=device)

    def initial_noise_scale(self, scheduler: Any) -> float:
        """The standard deviation of the first latent (the scheduler's ``init_noise_sigma``)."""
        return scheduler.init_noise_sigma

    def scale_model_input(self, scheduler: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's input at timestep ``t`` (the scheduler's input scaling)."""
        return scheduler.scale_model_input(x, t)

    def guidance_embedded(self, pipe: Any) -> bool:
        """Whether the denoiser takes the guidance scale as an input (FLUX.1-dev's guidance embedding) instead
        of being guided by classifier-free guidance's two rows."""
        return False

    def guidance_kwargs(self, pipe: Any, rows: int, guidance: float) -> dict[str, Any]:
        """Extra denoiser keyword arguments carrying the guidance scale (see :meth:`guidance_embedded`)."""
        return {}

    def context_projection(self, pipe: Any) -> tuple[str, nn.Module] | None:
        """The module projecting the text encoder's output once before the denoiser's attention layers read it
        (DeepFloyd IF's ``encoder_hid_proj``) with its pipeline-level path, or ``None`` when there is none."""
        return None

    @abstractmethod
    def in_channels(self, pipe: Any) -> int:
        """Channels of the denoiser's input (and of each half of its output)."""

    @abstractmethod
    def sample_size(self, pipe: Any) -> int:
        """Side length of the denoiser's default input, in latent cells."""

    @abstractmethod
    def row_elements(self, pipe: Any, latent_height: int, latent_width: int) -> int:
        """Activation elements one batch row of a denoiser call holds at its peak (see
        :mod:`diffloc.models.memory`)."""

    @abstractmethod
    def text_in_time_embedding(self, pipe: Any) -> bool:
        """Whether text reaches the denoiser's time embedding (SD-XL's pooled ``text_time``, IF's ``text``), and
        so every block, not only the cross-attention layers."""

    def reads_padding(self, pipe: Any) -> bool:
        """Whether the denoiser's cross-attention reads the padded text positions (a UNet does; PixArt's pipeline
        masks them, :data:`CONTEXT_MASK`)."""
        return True

    def edit_caveats(self, method: str) -> tuple[str, ...]:
        """What a user should know about an edit made by ``method`` on this family (saved in the edit's notes)."""
        return ()

    def text_blind_sites(self, pipe: Any, sites: SiteRegistry) -> list[str]:
        """Denoiser sites that cannot read the text at a denoising step: those that run before the first
        cross-attention (in execution order), when no text reaches the time embedding. Restoring one on the
        restored run's own latent changes nothing, so they are the controls of a causal trace.
        """
        if self.text_in_time_embedding(pipe):
            return []
        blind: list[str] = []
        for site in sites.denoiser_sites(projections=True):
            if site.kind in CROSS_ATTENTION_KINDS:
                break
            blind.append(site.name)
        return blind

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """Default image ``(height, width)`` in pixels."""
        side = self.sample_size(pipe) * self.pixels_per_latent(pipe)
        return side, side

    def pixels_per_latent(self, pipe: Any) -> int:
        """Pixels per latent cell along one side (VAE downsampling factor; 1 in pixel space)."""
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def latent_cells_per_token(self, pipe: Any) -> int:
        """Latent cells per side of one denoiser token: a diffusion transformer's patch size (1 for a UNet)."""
        return 1

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        """``(channels, h, w)`` of the denoiser's input for an image of this size.

        Raises:
            ConfigError: a side that is not a whole number of the denoiser's patches (a transformer cuts the
                latent into ``patch × patch`` tokens; the rest would not fit, and its pipeline refuses such sizes).
        """
        f = self.pixels_per_latent(pipe)
        side = f * self.latent_cells_per_token(pipe)
        if side > f and (height % side or width % side):
            raise ConfigError(
                f"image size {height}x{width} does not split into {self.family} patches; each side must be a multiple "
                f"of {side} pixels, e.g. {max(side, height - height % side)}x{max(side, width - width % side)}"
            )
        return self.in_channels(pipe), height // f, width // f

    def decode(self, pipe: Any, latents: torch.Tensor, *, batch: int = DECODE_BATCH) -> torch.Tensor:
        """Latents -> images ``(n, 3, H, W)`` in ``[0, 1]``, float32, decoded ``batch`` images at a time.

        The decoder's full-resolution activations dominate memory (768 MiB per 512² image in float32 by
        :mod:`diffloc.models.memory`), so a large batch is decoded in chunks. A VAE whose config sets
        ``force_upcast`` (SD-XL's overflows in float16: NaN or black images) decodes in float32 whatever the
        model's dtype.
        """
        vae = pipe.vae
        if batch < 1:
            raise ConfigError(f"decode batch must be >= 1, got {batch}")
        # SD3's and FLUX's VAEs also shift their latents (``shift_factor``); SD's have none
        shift = getattr(vae.config, "shift_factor", None)
        with decode_dtype(vae) as dtype:
            parts = []
            for chunk in latents.split(batch):
                scaled = chunk.to(dtype) / vae.config.scaling_factor
                parts.append(vae.decode(scaled if shift is None else scaled + shift).sample.float())
        return (torch.cat(parts) / 2 + 0.5).clamp(0, 1)


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline together with its adapter and site table.

    Attributes:
        pipe: the diffusers pipeline (components on the requested device/dtype).
        adapter: the family adapter.
        sites: canonical sites in execution order.
        source: where it was loaded from (path, cache id, or ``"<in-memory>"``).
        load_options: the keyword arguments of :func:`diffloc.load` that made it (``family``, ``dtype`` …), so
            another process can load the same model from ``source`` (:mod:`diffloc.tracing.executors`).
    """

    pipe: Any
    adapter: ModelAdapter
    sites: SiteRegistry
    source: str = "<in-memory>"
    load_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """Family name: ``sd1``, ``sd2``, ``sdxl``, ``if``, ``sd3``, ``flux`` or ``pixart``."""
        return self.adapter.family

    @property
    def denoiser(self) -> Any:
        """The network that predicts the noise (the UNet of the UNet families, PixArt's transformer)."""
        return self.adapter.denoiser(self.pipe)

    @property
    def device(self) -> torch.device:
        """Device of the denoiser."""
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the denoiser."""
        return self.denoiser.dtype

    def weight_sums(self) -> dict[str, tuple[float, float, int]]:
        """Per parameter (``component.name``): sum, squared sum (float64) and number of values."""
        sums: dict[str, tuple[float, float, int]] = {}
        for name, component in sorted(self.pipe.components.items()):
            if isinstance(component, nn.Module):
                for pname, param in component.named_parameters():
                    data = param.detach().to(torch.float64)
                    sums[f"{name}.{pname}"] = (float(data.sum()), float((data * data).sum()), data.numel())
        return sums

    def fingerprint(self) -> str:
        """A short hash of the current weights: per component, the sorted dtype, shape and :func:`exact_sums` of
        each of its parameters.

        Cheap enough to take at the start of every sweep (one pass over the weights, one parameter at a time), and
        it changes when an edit is applied, so resumable results of an edited model are never confused with the
        base model's. Integer sums are exact, so the same weights give the same fingerprint at any thread count
        and on any device (float sums change in their last digits with the summation order). Parameters are
        identified by content, not by name or order: transformers 5 names a CLIP text model's parameters without
        the ``text_model.`` prefix transformers 4 gives them, and the same weights must fingerprint the same.
        """
        import hashlib

        digest = hashlib.sha256()
        for name, component in sorted(self.pipe.components.items()):
            if isinstance(component, nn.Module):
                records = sorted(
                    f"{param.dtype}:{'x'.join(map(str, param.shape))}:{':'.join(map(str, exact_sums(param)))}"
                    for param in component.parameters()
                )
                digest.update(f"{name}:{len(records)}|{'|'.join(records)}".encode())
        return digest.hexdigest()[:16]

    def site(self, name: str | Site) -> Site:
        """Resolve a site name (raises :class:`~diffloc.errors.UnknownSiteError`)."""
        return name if isinstance(name, Site) else self.sites.get(name)

    def module(self, site: str | Site) -> nn.Module:
        """The torch module behind a site."""
        s = self.site(site)
        component = getattr(self.pipe, s.component)
        module = component
        # the registered children directly (get_submodule's getattr chain costs ~30 µs per site); anything
        # else (an unregistered attribute, a missing name) goes through get_submodule and its errors
        for name in s.module_path.split(".") if s.module_path else ():
            module = module._modules.get(name)
            if module is None:
                return component.get_submodule(s.module_path)
        return module

    def kv_sites(self, site: str | Site) -> tuple[Site, Site]:
        """The ``.k`` and ``.v`` sites of a cross-attention site."""
        s = self.site(site)
        if s.kind is not SiteKind.XATTN:
            raise_not_xattn(s, self.sites)
        return self.sites.get(f"{s.name}.k"), self.sites.get(f"{s.name}.v")


def raise_not_xattn(site: Site, sites: SiteRegistry) -> None:
    """Raise the standard error for a non-cross-attention site where one is required (naming one of ``sites``)."""
    from diffloc.errors import UnknownSiteError

    raise UnknownSiteError(
        f"site {site.name!r} is a {site.kind} site; a cross-attention site{cross_attention_example(sites)} is required"
    )


def cross_attention_example(sites: SiteRegistry) -> str:
    """`` such as 'unet.xattn.0'``: the first cross-attention site of ``sites`` for an error message (or ``""``)."""
    layers = sites.denoiser_sites(SiteKind.XATTN)
    return f" such as {layers[0].name!r}" if layers else ""


def _subject_starts(prompt: str, subject: str) -> list[int]:
    """Character offsets where ``subject`` occurs in ``prompt`` (case-insensitive), whole words first.

    Raises:
        PromptError: the subject is empty or does not occur.
    """
    needle = subject.strip().lower()
    if not needle:
        raise PromptError("subject is empty; give the words of the prompt to corrupt, e.g. 'van gogh'")
    lowered = prompt.lower()
    # Every occurrence, whole words first ("cat" in "a catalog with a cat" is the last one).
    starts = [m.start() for m in re.finditer(re.escape(needle), lowered)]
    if not starts:
        raise PromptError(f"subject {subject!r} does not occur in prompt {_short(prompt)!r}")
    whole = [i for i in starts if _word_bounded(lowered, i, len(needle))]
    return whole + [i for i in starts if i not in whole]


def _word_bounded(text: str, start: int, length: int) -> bool:
    """Whether ``text[start:start + length]`` is not glued to letters or digits on either side."""
    before = text[start - 1] if start > 0 else " "
    after = text[start + length] if start + length < len(text) else " "
    return not before.isalnum() and not after.isalnum()


def _leading_special(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts before the text (CLIP: BOS -> 1; T5: 0)."""
    bos = tokenizer.bos_token_id
    empty = tokenizer("").input_ids
    return 1 if bos is not None and len(empty) > 0 and empty[0] == bos else 0


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
