"""Per-run interventions and their compilation into site hooks.

A :class:`Run` is one generation inside a batch: a prompt, a seed, and interventions. The engine turns
all runs of a batch into *one* hook per touched site that edits only the rows of the runs asking for it,
so N interventions cost one batched pass per denoising step.

Interventions:
    * :class:`CorruptTokens` — add Gaussian noise to the input token embeddings at a token range, or replace
      them with other tokens' embeddings (symmetric token replacement), in every text encoder of the pipeline.
    * :class:`Restore` — give a site the output it has in another run of the same batch (the clean run; in a
      ``remove`` trace the corrupted one, patched into the clean run): for text sites during encoding (optionally
      only at some token positions); for UNet sites in the conditional branch at every step, either computed on
      the restored run's own latent with the source run's text (``same-latent``, the default: a *shadow* row) or
      copied from the source run's own trajectory (``trajectory``); with ``fraction`` < 1, only part of the way.
    * :class:`SwapContext` — cross-attention sites read another prompt's text states as their key/value
      input (LocoGen); on a joint-attention block, the block's text-stream input becomes the other prompt's
      context as it enters the first block (the prompt-injection variant); with ``fraction`` < 1, a mix of the
      two contexts.
    * :class:`SetChannels` — set chosen channels of a site's output to given values (neuron ablation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from diffloc.engine.batch import BatchLayout
from diffloc.engine.hooks import InputHook, OutputHook, primary, with_primary
from diffloc.engine.sources import RESTORE_SOURCES
from diffloc.errors import ConfigError, UnknownSiteError
from diffloc.models.base import LoadedModel
from diffloc.sites import CROSS_ATTENTION_KINDS, TEXT_STREAM_KINDS, Site, SiteKind, SiteRole
from diffloc.validate import check_fraction, generator_seed

#: One restore as a hook applies it: target rows, source rows, token range (``None``: all), fraction patched.
RestoreOp = tuple[torch.Tensor, torch.Tensor, "tuple[int, int] | None", float]

#: Joint-attention blocks whose text-stream input a :class:`SwapContext` replaces (the prompt-injection variant).
CONTEXT_READING_BLOCKS = frozenset({SiteKind.JOINT, SiteKind.SINGLE})


@dataclass(frozen=True, kw_only=True)
class CorruptTokens:
    """Add N(0, std²) noise to the input token embeddings at ``positions`` (half-open range), or replace them.

    The noise is drawn from ``noise_seed`` so a corrupted run is reproducible; every text encoder
    of the pipeline (SD-XL has two) gets its own draw from that seed. ``site_stds`` overrides ``std`` for
    given embedding sites (``(("text2.embed", 0.4),)``): encoders whose token embeddings have different
    scales each get noise in their own scale.

    ``replacements`` (``(("text.embed", (1746,)),)``: token ids per embedding site, one per corrupted position)
    corrupts by *symmetric token replacement* instead: the range's embeddings become those tokens' embeddings,
    with no noise, so the run reads the prompt with other words in the subject's place
    (:func:`diffloc.tracing.corruption.replacement_ids` builds them from a substitute text).
    """

    positions: tuple[int, int]
    std: float
    noise_seed: int = 0
    site_stds: tuple[tuple[str, float], ...] = ()
    site_positions: tuple[tuple[str, tuple[int, int]], ...] = ()
    replacements: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        for start, end in (self.positions, *(r for _, r in self.site_positions)):
            if not 0 <= start < end:
                raise ConfigError(f"token range {(start, end)} is empty or negative; need 0 <= start < end")
        for value in (self.std, *(v for _, v in self.site_stds)):
            if not value >= 0:
                raise ConfigError(f"noise std {value} must be >= 0")
        for site, ids in self.replacements:
            start, end = self.positions_at(site)
            if len(ids) != end - start:
                raise ConfigError(
                    f"{len(ids)} replacement tokens for {site}'s {end - start} corrupted positions {(start, end)}; "
                    "give one token id per position"
                )

    def replacement_at(self, site: str) -> tuple[int, ...] | None:
        """The token ids that replace the range at embedding site ``site`` (``None``: noise there)."""
        return dict(self.replacements).get(site)

    def std_at(self, site: str) -> float:
        """The noise std used at embedding site ``site``."""
        return dict(self.site_stds).get(site, self.std)

    def positions_at(self, site: str) -> tuple[int, int]:
        """The token range corrupted at embedding site ``site`` (encoders whose tokenizers differ, as SD3's CLIP
        and T5, place the subject at different positions: ``site_positions`` gives each its own range)."""
        return dict(self.site_positions).get(site, self.positions)


@dataclass(frozen=True, kw_only=True)
class Restore:
    """Give ``sites`` the output they have in run ``source`` of the same batch.

    ``positions`` (half-open token range) restricts a text-site or ``.k``/``.v`` restore to some tokens;
    ``None`` restores the whole output.

    ``restore_from`` decides, for UNet sites, *which* clean value is written (a sampler is not one forward
    pass: the restored run has its own latent ``x_t`` at every step):

    * ``"same-latent"`` (default) — the value the site has when the UNet runs on *this run's own* ``x_t`` with
      the source run's text (an extra conditional row, a *shadow*, follows this run's latent). The only
      difference a restore makes is then the text's path through the site: mediation in the strict sense, and
      a site that cannot read the text restores nothing.
    * ``"trajectory"`` — the source run's own activation at that step, computed on the source run's latent.
      It also injects the source trajectory's latent, so even a text-blind site can "restore" a concept
      (the papers' wording, "restored from the clean model at each time-step", kept for comparison).

    Text sites are restored during encoding, before any latent exists, so both sources are the same there.
    A restore from the run itself changes nothing and adds no row.

    ``fraction`` patches part of the way: the site's value becomes ``own + fraction × (source − own)`` (1, the
    default: the source's value). A dose below 1 tells apart sites that a full patch moves equally (a detector
    that saturates reads them all as 1).
    """

    sites: tuple[str, ...]
    source: int = 0
    positions: tuple[int, int] | None = None
    restore_from: str = "same-latent"
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.restore_from not in RESTORE_SOURCES:
            raise ConfigError(f"restore_from must be one of {', '.join(RESTORE_SOURCES)}, got {self.restore_from!r}")
        check_fraction(self.fraction)


@dataclass(frozen=True, kw_only=True)
class SwapContext:
    """Give cross-attention ``sites`` the text states of ``prompt`` as key/value input.

    Sites may be whole cross-attention layers (``unet.xattn.8``: keys and values) or one projection
    (``unet.xattn.8.k``). SD-XL's pooled embedding keeps coming from the run's own prompt.

    ``fraction`` swaps part of the way: the sites read ``own + fraction × (other − own)`` (1, the default: the
    other prompt's states), as :class:`Restore`'s fraction does.
    """

    sites: tuple[str, ...]
    prompt: str
    fraction: float = 1.0

    def __post_init__(self) -> None:
        check_fraction(self.fraction)


@dataclass(frozen=True, kw_only=True)
class SetChannels:
    """Set ``channels`` of ``site``'s output to ``values`` (a scalar or one value per channel)."""

    site: str
    channels: tuple[int, ...]
    values: float | tuple[float, ...] = 0.0


Intervention = CorruptTokens | Restore | SwapContext | SetChannels


@dataclass(frozen=True, kw_only=True)
class Run:
    """One generation in a batch: prompt, seed and interventions."""

    prompt: str
    seed: int = 0
    interventions: tuple[Intervention, ...] = field(default_factory=tuple)
    label: str = ""


@dataclass(frozen=True)
class Shadow:
    """A conditional-only row that follows run ``follows``'s latent with run ``text_of``'s text."""

    follows: int
    text_of: int


@dataclass
class CompiledBatch:
    """Hooks and text-encoding plan for a batch of runs (built by :func:`compile_runs`)."""

    text_rows: list[int]  # run -> row of the text batch
    text_prompts: list[str]  # prompts of the text batch
    text_outputs: dict[str, OutputHook]
    swap_prompts: list[str]  # distinct prompts that must be encoded for SwapContext
    denoiser_ops: dict[str, list[tuple[str, int, Any]]]  # site -> [(op, run, payload)]
    denoiser_swaps: dict[str, list[tuple[int, str, float]]]  # site -> [(run, prompt, fraction)]
    shadows: list[Shadow] = field(default_factory=list)  # same-latent restore sources, in row order


def extra_rows(model: LoadedModel, run: Run) -> int:
    """Shadow rows ``run`` adds to a batch: one when it restores a denoiser site ``same-latent``, else 0."""
    return int(
        any(
            isinstance(iv, Restore)
            and iv.restore_from == "same-latent"
            and any(model.site(name).role is SiteRole.DENOISER for name in iv.sites)
            for iv in run.interventions
        )
    )


def _slice_rows(rows: torch.Tensor, positions: tuple[int, int] | None) -> tuple[Any, ...]:
    return (rows,) if positions is None else (rows, slice(*positions))


def _restore_hook(ops: list[RestoreOp], index: int = 0) -> OutputHook:
    """Copy rows from source rows, in place (in element ``index`` of a tuple output, see :func:`primary`); an op
    whose fraction is below 1 moves its rows that share of the way to the source's.

    All source rows are read before any row is written, so the result does not depend on op order. The
    module's output is a fresh tensor nobody has read yet, so writing its rows in place is safe and avoids
    copying the whole batch at every hooked site (the copy made tracing ~1.5x slower than plain batches).
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        out = primary(output, index)
        values = [out[_slice_rows(source, positions)].clone() for _, source, positions, _ in ops]
        for (target, _, positions, fraction), value in zip(ops, values, strict=True):
            where = _slice_rows(target, positions)
            out[where] = value if fraction == 1.0 else torch.lerp(out[where], value, fraction)
        return output

    return hook


def compile_runs(model: LoadedModel, runs: Sequence[Run]) -> CompiledBatch:
    """Validate runs and plan text encoding and denoiser hooks.

    Raises:
        UnknownSiteError: an intervention names a missing site or a site of the wrong kind.
        ConfigError: a restore source is out of range, or channels are out of range.
    """
    text_prompts: list[str] = []
    text_rows: list[int] = []
    plain_row: dict[str, int] = {}
    for run in runs:
        text_level = any(
            isinstance(iv, CorruptTokens)
            or (isinstance(iv, Restore) and any(model.site(s).role is SiteRole.TEXT for s in iv.sites))
            for iv in run.interventions
        )
        if not text_level and run.prompt in plain_row:
            text_rows.append(plain_row[run.prompt])
            continue
        text_rows.append(len(text_prompts))
        if not text_level:
            plain_row[run.prompt] = len(text_prompts)
        text_prompts.append(run.prompt)

    text_ops: dict[str, list[RestoreOp]] = defaultdict(list)
    noise_ops: dict[str, list[tuple[int, CorruptTokens]]] = defaultdict(list)
    denoiser_ops: dict[str, list[tuple[str, int, Any]]] = defaultdict(list)
    denoiser_swaps: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    swap_prompts: list[str] = []
    shadows: dict[Shadow, int] = {}
    embed_sites = [s.name for s in model.sites if s.kind is SiteKind.TEXT_EMBED]

    for r, run in enumerate(runs):
        for iv in run.interventions:
            if isinstance(iv, CorruptTokens):
                for name in embed_sites:
                    noise_ops[name].append((text_rows[r], iv))
            elif isinstance(iv, Restore):
                if not 0 <= iv.source < len(runs):
                    raise ConfigError(f"restore source run {iv.source} is outside the batch (0..{len(runs) - 1})")
                if iv.source == r:
                    continue  # a run restored from itself is unchanged
                for name in iv.sites:
                    site = model.site(name)
                    if site.role is SiteRole.TEXT:
                        text_ops[site.name].append(
                            (
                                torch.tensor([text_rows[r]]),
                                torch.tensor([text_rows[iv.source]]),
                                iv.positions,
                                iv.fraction,
                            )
                        )
                        continue
                    if iv.positions is not None and not (site.kind.is_projection or site.kind in TEXT_STREAM_KINDS):
                        raise ConfigError(
                            f"token positions apply to text, text-stream and .k/.v sites, not {site.name!r}"
                        )
                    source: tuple[str, int] = ("run", iv.source)
                    if iv.restore_from == "same-latent":
                        shadow = Shadow(follows=r, text_of=iv.source)
                        source = ("shadow", shadows.setdefault(shadow, len(shadows)))
                    denoiser_ops[site.name].append(("restore", r, (source, iv.positions, iv.fraction)))
            elif isinstance(iv, SwapContext):
                for name in iv.sites:
                    site = model.site(name)
                    if site.kind not in CROSS_ATTENTION_KINDS | CONTEXT_READING_BLOCKS:
                        raise UnknownSiteError(
                            f"site {name!r} is a {site.kind} site; context swaps need a cross-attention site, one "
                            "of its .k/.v projections, or a joint-attention block ('transformer.joint.N')"
                        )
                    if site.kind.is_projection:
                        parent = model.module(name.rsplit(".", 1)[0])
                        if getattr(parent, "norm_cross", None) is not None:
                            raise ConfigError(
                                f"site {name!r}: this attention normalizes its context, swap the whole layer "
                                f"{name.rsplit('.', 1)[0]!r} instead of one projection"
                            )
                    denoiser_swaps[site.name].append((r, iv.prompt, iv.fraction))
                if iv.prompt not in swap_prompts:
                    swap_prompts.append(iv.prompt)
            elif isinstance(iv, SetChannels):
                site = model.site(iv.site)
                denoiser_ops[site.name].append(("set", r, iv))
            else:  # pragma: no cover - typing guards this
                raise ConfigError(f"unknown intervention {iv!r}")

    text_outputs: dict[str, OutputHook] = {}
    for name in set(text_ops) | set(noise_ops):
        text_outputs[name] = _text_hook(text_ops.get(name, []), noise_ops.get(name, []), name)
    return CompiledBatch(
        text_rows, text_prompts, text_outputs, swap_prompts, dict(denoiser_ops), dict(denoiser_swaps), list(shadows)
    )


def _text_hook(
    restores: list[RestoreOp],
    noises: list[tuple[int, CorruptTokens]],
    site_name: str,
) -> OutputHook:
    restore = _restore_hook(restores) if restores else None
    salt = sum(site_name.encode())  # distinct draw per encoder embedding site, stable across runs

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if restore is not None:
            output = restore(module, args, kwargs, output)
        if noises:
            out = primary(output).clone()
            for row, iv in noises:
                start, end = iv.positions_at(site_name)
                if end > out.shape[1]:
                    raise ConfigError(f"token range {(start, end)} exceeds the {out.shape[1]} encoded tokens")
                ids = iv.replacement_at(site_name)
                if ids is not None:
                    # the hook sees the embedding layer's output; the same lookup of other ids is its output
                    # for the substitute tokens
                    table = cast(torch.Tensor, module.weight).detach()
                    out[row, start:end] = table[torch.tensor(ids, device=table.device)].to(out.dtype).to(out.device)
                    continue
                gen = torch.Generator(device="cpu").manual_seed(generator_seed(iv.noise_seed * 1000003 + salt))
                noise = torch.randn((end - start, out.shape[-1]), generator=gen, dtype=torch.float32)
                out[row, start:end] += (iv.std_at(site_name) * noise).to(out.dtype).to(out.device)
            output = with_primary(output, out)
        return output

    return hook


def denoiser_hooks(
    model: LoadedModel,
    plan: CompiledBatch,
    layout: BatchLayout,
    swap_context: dict[str, torch.Tensor],
    swap_masks: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, OutputHook], dict[str, InputHook]]:
    """Build one output hook per denoiser site with restore/set ops and one input hook per swapped site.

    ``swap_masks`` holds each swapped prompt's context mask where the denoiser hides padded tokens from
    cross-attention (PixArt): a swapped layer then reads the other prompt's states under that prompt's mask.

    Raises:
        ConfigError: a ``.k``/``.v`` projection alone is swapped where contexts carry masks (the layer's mask
            would stay the run's own, hiding the other prompt's tokens or showing its padding).
    """
    outputs: dict[str, OutputHook] = {}
    for name, ops in plan.denoiser_ops.items():
        site = model.site(name)
        outputs[name] = _denoiser_output_hook(site, ops, layout)
    inputs: dict[str, InputHook] = {}
    for name, swaps in plan.denoiser_swaps.items():
        rows = layout.cond_rows([r for r, _, _ in swaps])
        values = torch.stack([swap_context[p] for _, p, _ in swaps])  # (n, tokens, dim)
        fractions = [f for _, _, f in swaps]
        whole_layer = model.site(name).kind in {SiteKind.XATTN} | CONTEXT_READING_BLOCKS
        masks = None
        if swap_masks and any(f != 1 for f in fractions):
            raise ConfigError(
                f"site {name!r}: {model.family} hides each prompt's padding from cross-attention, so two contexts "
                "cannot be mixed; swap the whole context (fraction 1)"
            )
        if swap_masks:
            if not whole_layer:
                raise ConfigError(
                    f"site {name!r}: {model.family} hides each prompt's padding from cross-attention, so a swapped "
                    f"context needs its own mask; swap the whole layer {name.rsplit('.', 1)[0]!r} instead"
                )
            masks = torch.stack([swap_masks[p] for _, p, _ in swaps])  # (n, tokens)
        mix = None if all(f == 1 for f in fractions) else torch.tensor(fractions).view(-1, 1, 1)
        inputs[name] = _swap_hook(rows, values, whole_layer=whole_layer, masks=masks, fractions=mix)
    return outputs, inputs


def _source_row(layout: BatchLayout, source: tuple[str, int]) -> torch.Tensor:
    """Batch row a restore reads: a run's conditional row, or a shadow row."""
    kind, index = source
    return torch.tensor([layout.shadow(index) if kind == "shadow" else layout.cond(index)], dtype=torch.long)


def _denoiser_output_hook(site: Site, ops: list[tuple[str, int, Any]], layout: BatchLayout) -> OutputHook:
    restores = [
        (layout.cond_rows([r]), _source_row(layout, source), positions, fraction)
        for op, r, (source, positions, fraction) in ((o, r, p) for o, r, p in ops if o == "restore")
    ]
    index = site.kind.output_index
    restore = _restore_hook(restores, index) if restores else None
    sets = [(layout.cond(r), iv) for op, r, iv in ops if op == "set"]
    dim = site.kind.channel_dim

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if restore is not None:
            output = restore(module, args, kwargs, output)
        if sets:
            out = primary(output, index)  # fresh module output: edited in place, like restores
            n_channels = out.shape[dim]
            for row, iv in sets:
                if max(iv.channels, default=-1) >= n_channels or min(iv.channels, default=0) < 0:
                    raise ConfigError(
                        f"channels {list(iv.channels)[:5]}… out of range for {site.name} ({n_channels} channels)"
                    )
                idx = torch.tensor(iv.channels, dtype=torch.long, device=out.device)
                values = torch.as_tensor(iv.values, dtype=out.dtype, device=out.device)
                view = out[row].movedim(dim if dim < 0 else dim - 1, -1)  # (…, channels) view of one row
                view[..., idx] = values
        return output

    return hook


def _swap_hook(
    rows: torch.Tensor, values: torch.Tensor, *, whole_layer: bool, masks: torch.Tensor | None = None,
    fractions: torch.Tensor | None = None,
) -> InputHook:  # fmt: skip
    """Replace the text context of ``rows``: the attention's ``encoder_hidden_states`` or a projection's input,
    and with ``masks`` (``(rows, tokens)``, 1 = read) the attention's mask of those rows, as the additive bias
    the transformer gives its attention layers (0 where read, -10000 where hidden). With ``fractions``
    (``(rows, 1, 1)``), each row moves that share of the way from its own context to ``values``."""

    def put(context: torch.Tensor) -> torch.Tensor:
        new = values.to(context.dtype)
        if fractions is not None:
            new = torch.lerp(context[rows], new.to(context.device), fractions.to(context.dtype).to(context.device))
        context[rows] = new
        return context

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if whole_layer:
            if masks is not None and kwargs.get("attention_mask") is not None:
                bias = kwargs["attention_mask"].clone()  # (batch, 1, tokens)
                bias[rows] = ((1 - masks.to(bias.dtype)) * -10000.0).unsqueeze(1).to(bias.device)
                kwargs = {**kwargs, "attention_mask": bias}
            if kwargs.get("encoder_hidden_states") is not None:
                ctx = put(kwargs["encoder_hidden_states"].clone())
                return args, {**kwargs, "encoder_hidden_states": ctx}
            return (args[0], put(args[1].clone()), *args[2:]), kwargs
        return (put(args[0].clone()), *args[1:]), kwargs

    return hook
