"""LocoEdit on joint attention (SD3, FLUX): closed-form edits of the text-side key/value projections
(``add_k_proj``/``add_v_proj``) of chosen joint blocks.

LocoEdit maps the context a cross-attention layer reads at the concept's last token to what the layer gives the
target there (``W* = argmin Σ‖W c_i − W0 c*_i‖² + λ‖W − W0‖²``). In a joint block the text-side projections read
the block's *text stream*, normalised and modulated by the time embedding: earlier blocks have mixed it with the
image tokens, and it changes with the timestep and the latent. The keys ``c_i`` are therefore recorded where the
edited model reads them: the input of each edited block's ``add_k_proj`` (``add_v_proj`` reads the same input),
at every step of each prompt's own sampling trajectory (``steps`` steps from ``seed``, the conditional branch
without guidance), at the concept's last token in every tokenizer segment of the stream (SD3: CLIP's and T5's;
FLUX: T5's). One solve per block and λ serves both projections.

What "closed form on K" means here: FLUX (and SD3.5) RMS-normalise each head of the projected keys. The solve
fits the projection's output ``W c`` before that normalisation; where it matches ``W0 c*`` the normalised key
matches too (the norm is a function of ``W c``), but the ridge's preservation term weighs errors before the norm.
FLUX's single-stream blocks have no text-side projections (one ``to_k`` reads text and image tokens together), so
this editor is not defined for them and refuses them in one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from diffloc.editing.closed_form import PreservedGram, SharedInputRidge
from diffloc.editing.edit import Edit
from diffloc.editing.locoedit import projection_linear, site_names
from diffloc.editing.preserved import PreservedStatistics, preservation_scope, resolved
from diffloc.editing.requests import LOCOEDIT_TEMPLATES, EditRequest
from diffloc.editing.stream_states import edit_prompts, edit_rows, preserved_prompts, stream_grams
from diffloc.editors import TARGET_MODES
from diffloc.engine.generate import GenerationConfig, generate_runs
from diffloc.engine.hooks import InputHook, patch
from diffloc.engine.interventions import Run
from diffloc.errors import ConfigError, EditError, UnknownSiteError
from diffloc.models.base import LoadedModel
from diffloc.sites import Site, SiteKind
from diffloc.validate import check_count, check_positive, check_seed

logger = logging.getLogger(__name__)

#: Prompts per sampling batch while recording keys.
RECORD_BATCH = 8


@dataclass(frozen=True, kw_only=True)
class JointKVConfig:
    """Settings of the joint-attention LocoEdit.

    Attributes:
        sites: joint blocks or their attention (``transformer.joint.3``, ``transformer.attn.3``, a LocoGen
            result's ``best_sites``), or one projection (``transformer.attn.3.k``).
        lam_k, lam_v: ridge strengths for the key and value projections.
        target_mode: ``"bare"`` (the target alone, LocoEdit's reference) or ``"template"``.
        steps: sampling steps whose keys are recorded (each prompt's own trajectory).
        seed: the seed of those trajectories.
        preserve_weight: weight ω of the preservation pairs.
    """

    sites: Any
    lam_k: float = 0.01
    lam_v: float = 0.01
    target_mode: str = "bare"
    steps: int = 10
    seed: int = 0
    preserve_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", site_names(self.sites))
        if self.target_mode not in TARGET_MODES:
            raise ConfigError(f"target_mode must be one of {', '.join(TARGET_MODES)}, got {self.target_mode!r}")
        check_positive("lam_k", self.lam_k, "ridge strength")
        check_positive("lam_v", self.lam_v, "ridge strength")
        check_positive("preserve_weight", self.preserve_weight)
        check_count("steps", self.steps)
        check_seed(self.seed)


def joint_projection_sites(model: LoadedModel, names: Sequence[str]) -> dict[str, list[Site]]:
    """The ``.k``/``.v`` sites selected, grouped by the block attention they belong to (execution order).

    Raises:
        UnknownSiteError: an unknown site, a single-stream block, or a site that is not joint attention.
    """
    chosen: dict[str, dict[str, Site]] = {}
    for name in names:
        for site in model.sites.select(name):
            if site.kind in (SiteKind.JOINT, SiteKind.ATTN):
                attention = f"{site.name.rsplit('.', 2)[0]}.{SiteKind.ATTN.value}.{site.index}"
                projections = [f"{attention}.k", f"{attention}.v"]
            elif site.kind in (SiteKind.ATTN_K, SiteKind.ATTN_V):
                attention, projections = site.name[:-2], [site.name]
            elif site.kind is SiteKind.SINGLE:
                raise UnknownSiteError(
                    f"site {site.name!r} is a single-stream block: its attention has no text-side key/value "
                    "projections (one to_k reads text and image together), so this edit is not defined there"
                )
            else:
                raise UnknownSiteError(
                    f"site {site.name!r} is a {site.kind} site; the joint-kv editor edits joint blocks such as "
                    "'transformer.joint.3' (or one projection 'transformer.attn.3.k')"
                )
            chosen.setdefault(attention, {}).update({p: model.sites.get(p) for p in projections})
    order = {s.name: i for i, s in enumerate(model.sites)}
    return {
        attention: sorted(found.values(), key=lambda s: order[s.name])
        for attention, found in sorted(chosen.items(), key=lambda item: order[item[0]])
    }


def recorded_inputs(
    model: LoadedModel, modules: Mapping[str, str], prompts: Sequence[str], steps: int, seed: int
) -> dict[str, dict[str, torch.Tensor]]:
    """The input of each module (by key, a site name) at every step of each prompt's own sampling trajectory:
    ``{key: {prompt: (steps, tokens, dim)}}``, float32 on the CPU."""
    out: dict[str, dict[str, torch.Tensor]] = {key: {} for key in modules}
    config = GenerationConfig(steps=steps, guidance=1.0)
    for start in range(0, len(prompts), RECORD_BATCH):
        chunk = list(prompts[start : start + RECORD_BATCH])
        calls: dict[str, list[torch.Tensor]] = {key: [] for key in modules}
        with patch(model, inputs={site: _recorder(calls[key]) for key, site in modules.items()}):
            generate_runs(model, [Run(prompt=p, seed=seed) for p in chunk], config=config)
        for key, values in calls.items():
            stacked = torch.stack(values, dim=1)  # (prompts, steps, tokens, dim)
            out[key].update({p: stacked[i] for i, p in enumerate(chunk)})
    return out


def _recorder(calls: list[torch.Tensor]) -> InputHook:
    """A forward pre-hook appending a CPU float32 copy of the module's first input to ``calls``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(args[0].detach().float().cpu())

    return hook


def joint_kv_scope(request: EditRequest, config: JointKVConfig) -> dict[str, Any]:
    """What joint-kv's preservation statistics depend on besides the weights: the preservation set and the
    trajectories the preserved states are recorded along (not the blocks: statistics hold each block they were
    computed for, and serve any edit of those blocks)."""
    return preservation_scope(request, LOCOEDIT_TEMPLATES, key_steps=config.steps, seed=config.seed)


def joint_kv_grams(model: LoadedModel, request: EditRequest, config: JointKVConfig) -> dict[str, PreservedGram]:
    """The statistics of the preserved text-stream rows at each edited block's text-side projections (keyed by
    the block's attention, ``transformer.attn.N``), recorded along the preserved prompts' own trajectories."""
    readers = _readers(model, config)
    prompts = preserved_prompts(request, LOCOEDIT_TEMPLATES)
    recorded = recorded_inputs(model, readers, prompts, config.steps, config.seed) if prompts else {}
    return stream_grams(model, request, LOCOEDIT_TEMPLATES, {a: partial(_recorded, s) for a, s in recorded.items()})


def joint_kv_statistics(model: LoadedModel, request: EditRequest, config: JointKVConfig) -> PreservedStatistics:
    """joint-kv's preservation statistics for ``request`` and the blocks of ``config.sites`` (see
    :mod:`diffloc.editing.preserved`): they depend on the whole denoiser before each block, so any change to its
    weights makes them stale."""
    return resolved("joint-kv", model, request, config, joint_kv_scope, joint_kv_grams, None, reads_denoiser=True)[0]


def compute_joint_kv(
    model: LoadedModel, request: EditRequest, config: JointKVConfig, preserved: PreservedStatistics | None = None
) -> Edit:
    """Compute a joint-attention LocoEdit (the model is not modified).

    Args:
        model, request, config: the model, what to edit, and :class:`JointKVConfig`.
        preserved: the request's preservation statistics from :func:`joint_kv_statistics`, computed earlier on
            this model for (at least) these blocks; by default they are computed here.

    Raises:
        UnknownSiteError: a site that is not a joint block, its attention or one of its projections.
        PromptError: a concept/target does not occur in a filled template.
        EditError: the model has no text stream; ``preserved`` was computed for another preservation set, other
            weights or other blocks.
    """
    start = time.perf_counter()
    groups = joint_projection_sites(model, config.sites)
    stats_used, source = resolved(
        "joint-kv", model, request, config, joint_kv_scope, joint_kv_grams, preserved, reads_denoiser=True
    )
    missing = [a for a in groups if stats_used.grams and a not in stats_used.grams]
    if missing:
        raise EditError(
            f"preserved statistics hold blocks {', '.join(stats_used.grams)}, not {', '.join(missing)}; compute them "
            "for this edit's sites with preservation_statistics"
        )
    prompts = edit_prompts(request, LOCOEDIT_TEMPLATES, config.target_mode)
    recorded = recorded_inputs(model, _readers(model, config), prompts, config.steps, config.seed)
    weights: dict[str, torch.Tensor] = {}
    originals: dict[str, torch.Tensor | None] = {}
    pairs = 0
    for attention, sites in groups.items():
        keys, targets = edit_rows(
            model, request, LOCOEDIT_TEMPLATES, config.target_mode, partial(_recorded, recorded[attention])
        )
        pairs, gram = keys.shape[0], stats_used.grams.get(attention)
        lams = [config.lam_k if site.kind is SiteKind.ATTN_K else config.lam_v for site in sites]
        solvers = {
            lam: SharedInputRidge(keys, targets, lam, preserved=gram, preserve_weight=config.preserve_weight)
            for lam in dict.fromkeys(lams)
        }  # one factorization per block and λ serves its .k and .v
        for site, lam in zip(sites, lams, strict=True):
            solver = solvers[lam]
            current = projection_linear(model, site).weight.detach()
            key = f"{site.full_path}.weight"
            weights[key] = solver.apply(current)
            originals[key] = current.clone()
    stats = {
        "sites": [s.name for sites in groups.values() for s in sites],
        "key_value_pairs": pairs,
        "preserve_pairs": max((g.rows for g in stats_used.grams.values()), default=0),
        "key_steps": config.steps,
        "preserved_statistics": {"source": source, "seconds": stats_used.seconds},
        "seconds": round(time.perf_counter() - start, 6),
    }
    logger.info("joint-kv: %s", stats)
    return Edit(
        method="joint-kv", family=model.family, weights=weights, originals=originals, request=request.to_dict(),
        config=asdict(config), stats=stats, notes=tuple(model.adapter.edit_caveats("locoedit")),
    )  # fmt: skip


def _readers(model: LoadedModel, config: JointKVConfig) -> dict[str, str]:
    """Per edited block's attention, the site whose input is recorded (``.k`` and ``.v`` read the same input)."""
    return {attention: sites[0].name for attention, sites in joint_projection_sites(model, config.sites).items()}


def _recorded(states: Mapping[str, torch.Tensor], prompts: Sequence[str]) -> Mapping[str, torch.Tensor]:
    """The states recorded for a block (a :data:`~diffloc.editing.stream_states.StateReader` over them)."""
    return states
