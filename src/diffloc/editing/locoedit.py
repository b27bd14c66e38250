"""LocoEdit (Basu et al., ICML 2024): closed-form edits of cross-attention key/value projections.

For every chosen cross-attention site and each of its text projections ``W0`` (``to_k``/``to_v``; IF:
``add_k_proj``/``add_v_proj``)::

    W* = argmin_W  Σ_i ‖W c_i − W0 c*_i‖²  +  λ ‖W − W0‖²

``c_i`` is the context the UNet reads (final text-encoder output; IF: after ``encoder_hid_proj``) at the last
token of the concept in prompt i, ``c*_i`` the same for the target prompt at the target's last token. With
``target_mode="bare"`` (default, as the reference ``loco_edit.py``) the target prompt is the target alone
("a painting") for every key; with ``"template"`` it is the target filled into the key's own template, so the
concept is mapped to its replacement in matching context. Preserved concepts add pairs
``c_p → W0 c_p``. λ is separate for keys and values (both 0.01 by default, as in the reference). SD-XL's
pooled text embedding, which does not pass through these projections, is left untouched.

``positions="subject+eos"`` (diffloc's extension; the reference maps the last subject token only) also maps
every later position — EOS and the padding slots, which a causal text encoder fills with a summary of the whole
prompt and which cross-attention reads too — aligned by offset as in Diff-QuickFix. Use it with
``target_mode="template"`` and a preservation set: on a model that keeps a concept at the EOS state
(ShapesWorld's styles and facts, see ``docs/findings.md``) the subject token alone barely moves the image.

Sites are canonical names or globs (``unet.xattn.8``, ``unet.xattn.8.k`` for one projection only), or any
object with a ``best_sites`` attribute, such as a LocoGen :class:`~diffloc.tracing.results.WindowResult`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from diffloc.editing.closed_form import PreservedGram, SharedInputRidge
from diffloc.editing.edit import Edit
from diffloc.editing.preserved import PreservedStatistics, preservation_scope, resolved
from diffloc.editing.requests import LOCOEDIT_TEMPLATES, EditRequest, PromptPair
from diffloc.editing.states import EncodedPrompt, context_at_subjects, context_pairs, context_rows, encode_pairs
from diffloc.editors import POSITIONS, TARGET_MODES
from diffloc.errors import ConfigError, EditError, UnknownSiteError
from diffloc.models.base import LoadedModel, cross_attention_example
from diffloc.sites import Site, SiteKind
from diffloc.validate import check_positive

logger = logging.getLogger(__name__)

#: Joint-attention sites (SD3, FLUX), which the ``joint-kv`` editor edits instead.
JOINT_ATTENTION_KINDS = frozenset(
    {SiteKind.JOINT, SiteKind.ATTN, SiteKind.ATTN_K, SiteKind.ATTN_V, SiteKind.SINGLE, SiteKind.JOINT_CONTEXT}
)


def site_names(sites: Any) -> tuple[str, ...]:
    """Normalise a site spec: a comma list, a sequence of names/globs, or an object with ``best_sites``."""
    if hasattr(sites, "best_sites"):
        sites = sites.best_sites
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",")]
    names = tuple(str(s).strip() for s in (sites or ()) if str(s).strip())
    if not names:
        raise ConfigError("no cross-attention sites given; e.g. sites=('unet.xattn.8', 'unet.xattn.9')")
    return names


def edited_layers(sites: Sequence[str]) -> list[str]:
    """The distinct layers of an edit's sites, in order: ``unet.xattn.8.k`` and ``.v`` give ``unet.xattn.8``;
    other sites (``text.attn.0``) are kept as they are."""
    return list(dict.fromkeys(s[:-2] if s.endswith((".k", ".v")) else s for s in sites))


@dataclass(frozen=True, kw_only=True)
class LocoEditConfig:
    """Settings of LocoEdit.

    Attributes:
        sites: cross-attention sites to edit (names or globs, or an object with ``best_sites``; normalised
            to a tuple of strings).
        lam_k: ridge strength for key projections (reference: 0.01).
        lam_v: ridge strength for value projections (reference: 0.01; the reference parses but ignores it).
        target_mode: ``"bare"`` (the target alone, reference behaviour) or ``"template"`` (the target in the
            key's template).
        positions: ``"subject"`` (the last subject token, reference behaviour) or ``"subject+eos"`` (that token
            and every later position, aligned by offset; see the module docs).
        preserve_weight: weight ω of the preservation pairs (preserved concepts and prompts) in the solve.
    """

    sites: Any
    lam_k: float = 0.01
    lam_v: float = 0.01
    target_mode: str = "bare"
    positions: str = "subject"
    preserve_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", site_names(self.sites))
        if self.target_mode not in TARGET_MODES:
            raise ConfigError(f"target_mode must be one of {', '.join(TARGET_MODES)}, got {self.target_mode!r}")
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        check_positive("lam_k", self.lam_k, "ridge strength")
        check_positive("preserve_weight", self.preserve_weight)
        check_positive("lam_v", self.lam_v, "ridge strength")


def projection_sites(model: LoadedModel, names: tuple[str, ...]) -> list[Site]:
    """The ``.k``/``.v`` projection sites selected by cross-attention site names or globs.

    Raises:
        UnknownSiteError: an unknown name, or a site that is not a cross-attention site.
    """
    chosen: dict[str, Site] = {}
    for name in names:
        for site in model.sites.select(name):
            if site.kind is SiteKind.XATTN:
                for proj in model.kv_sites(site):
                    chosen[proj.name] = proj
            elif site.kind in (SiteKind.XATTN_K, SiteKind.XATTN_V):
                chosen[site.name] = site
            elif site.kind in JOINT_ATTENTION_KINDS:
                raise UnknownSiteError(
                    f"site {site.name!r} is joint attention, which LocoEdit's cross-attention split does not "
                    "apply to; use the 'joint-kv' editor (text-side K/V of joint blocks) or 'context'"
                )
            else:
                raise UnknownSiteError(
                    f"site {site.name!r} is a {site.kind} site; LocoEdit edits cross-attention sites"
                    f"{cross_attention_example(model.sites)} (or one projection '.k' / '.v')"
                )
    order = {s.name: i for i, s in enumerate(model.sites)}
    return sorted(chosen.values(), key=lambda s: order[s.name])


def projection_linear(model: LoadedModel, site: Site) -> nn.Linear:
    """The ``nn.Linear`` behind a ``.k``/``.v`` projection site.

    Raises:
        EditError: the module is not a linear layer (an attention implementation diffloc does not know).
    """
    module = model.module(site)
    if not isinstance(module, nn.Linear):
        raise EditError(f"{site.name} is a {type(module).__name__}, not a linear projection; cannot edit it")
    return module


def _target_side(edit_pairs: list[PromptPair], config: LocoEditConfig) -> tuple[list[str], list[str]]:
    """The target prompts of the edit pairs (the target alone with ``target_mode="bare"``) and their targets."""
    bare = config.target_mode == "bare"
    return [p.value_subject if bare else p.value_prompt for p in edit_pairs], [p.value_subject for p in edit_pairs]


def _key_value_states(
    model: LoadedModel,
    edit_pairs: list[PromptPair],
    config: LocoEditConfig,
    known: Mapping[tuple[str, str], EncodedPrompt] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(concept keys, target states), float64 rows of cross-attention context (``known``: target prompts
    already encoded, used with ``positions="subject+eos"``)."""
    value_prompts, value_subjects = _target_side(edit_pairs, config)
    key_prompts, key_subjects = [p.key_prompt for p in edit_pairs], [p.key_subject for p in edit_pairs]
    if config.positions == "subject":
        states = context_at_subjects(model, key_prompts + value_prompts, key_subjects + value_subjects).double()
        return states[: len(edit_pairs)], states[len(edit_pairs) :]
    keys, values = context_pairs(model, key_prompts, key_subjects, value_prompts, value_subjects, known)
    return torch.cat(keys), torch.cat(values)


def preserved_scope(request: EditRequest, config: LocoEditConfig) -> dict[str, Any]:
    """What LocoEdit's preservation statistics depend on besides the weights (not the sites: every
    cross-attention projection reads the same context)."""
    return preservation_scope(request, LOCOEDIT_TEMPLATES, positions=config.positions)


def preserved_grams(model: LoadedModel, request: EditRequest, config: LocoEditConfig) -> dict[str, PreservedGram]:
    """The statistics of the preserved context rows: the preserved concepts at their last token (and later
    positions with ``positions="subject+eos"``) in every template, and every position after BOS of the
    preserved prompts."""
    keep = [p for p in request.pairs(LOCOEDIT_TEMPLATES) if p.preserve]
    parts = []
    if keep:
        prompts, subjects = [p.key_prompt for p in keep], [p.key_subject for p in keep]
        if config.positions == "subject":
            parts.append(context_at_subjects(model, prompts, subjects).double())
        else:
            parts.append(torch.cat(context_pairs(model, prompts, subjects, prompts, subjects)[0]))
    if request.preserve_prompts:
        parts.append(context_rows(model, request.preserve_prompts))
    if not parts:
        return {}
    rows = torch.cat(parts)
    return {"context": PreservedGram.of(rows, rows.shape[1])}


def locoedit_statistics(model: LoadedModel, request: EditRequest, config: LocoEditConfig) -> PreservedStatistics:
    """LocoEdit's preservation statistics for ``request`` (see :mod:`diffloc.editing.preserved`); any sites.

    With ``positions="subject+eos"`` they also hold the request's target prompts encoded, which later edits
    with the same target and templates reuse.
    """
    stats = resolved("locoedit", model, request, config, preserved_scope, preserved_grams, None)[0]
    if config.positions != "subject+eos":
        return stats
    start = time.perf_counter()
    edit_pairs = [p for p in request.pairs(LOCOEDIT_TEMPLATES) if not p.preserve]
    targets = encode_pairs(model, *_target_side(edit_pairs, config))
    return replace(stats, targets=targets, seconds=round(stats.seconds + time.perf_counter() - start, 6))


def compute_locoedit(
    model: LoadedModel, request: EditRequest, config: LocoEditConfig, preserved: PreservedStatistics | None = None
) -> Edit:
    """Compute a LocoEdit edit (the model is not modified).

    Args:
        model, request, config: the model, what to edit, and :class:`LocoEditConfig`.
        preserved: the request's preservation statistics from :func:`locoedit_statistics`, computed earlier on
            this model (for any sites); by default they are computed here.

    Returns:
        An :class:`~diffloc.editing.edit.Edit` replacing the key/value projection weights of the sites.

    Raises:
        UnknownSiteError: a site is unknown or not a cross-attention site.
        PromptError: a concept/target does not occur in a filled template.
        EditError: ``preserved`` was computed for another preservation set or other weights.
    """
    start = time.perf_counter()
    projections = projection_sites(model, config.sites)
    edit_pairs = [p for p in request.pairs(LOCOEDIT_TEMPLATES) if not p.preserve]
    preserved, source = resolved("locoedit", model, request, config, preserved_scope, preserved_grams, preserved)
    known = preserved.targets if config.positions == "subject+eos" else {}
    concept_states, target_states = _key_value_states(model, edit_pairs, config, known)
    value_pairs = set(zip(*_target_side(edit_pairs, config), strict=True))
    gram = preserved.grams.get("context")
    weights: dict[str, torch.Tensor] = {}
    originals: dict[str, torch.Tensor | None] = {}
    solve_start = time.perf_counter()
    # Every projection reads the same context, so one factorization per λ in use serves them all.
    lams = [config.lam_k if proj.kind is SiteKind.XATTN_K else config.lam_v for proj in projections]
    solvers = {
        lam: SharedInputRidge(
            concept_states,
            target_states,
            lam,
            preserved=gram,
            preserve_weight=config.preserve_weight,
        )
        for lam in dict.fromkeys(lams)
    }
    current = [projection_linear(model, proj).weight.detach() for proj in projections]
    solved: dict[int, torch.Tensor] = {}
    for lam, solver in solvers.items():  # all projections with one λ in one product
        chosen = [i for i, each in enumerate(lams) if each == lam]
        solved.update(zip(chosen, solver.apply_all([current[i] for i in chosen]), strict=True))
    for i, proj in enumerate(projections):  # in site order
        key = f"{proj.full_path}.weight"
        weights[key] = solved[i]
        originals[key] = current[i].clone()
    solve_seconds = time.perf_counter() - solve_start
    notes = list(model.adapter.edit_caveats("locoedit"))
    stats = {
        "sites": [p.name for p in projections],
        "key_value_pairs": int(concept_states.shape[0]),
        "preserve_pairs": gram.rows if gram is not None else 0,
        "solve_seconds": round(solve_seconds, 6),
        "preserved_statistics": {
            "source": source,
            "seconds": preserved.seconds,
            "target_prompts_reused": sum(pair in known for pair in value_pairs),
        },
        "seconds": round(time.perf_counter() - start, 6),
    }
    logger.info("locoedit: %s", stats)
    return Edit(
        method="locoedit",
        family=model.family,
        weights=weights,
        originals=originals,
        request=request.to_dict(),
        config=asdict(config),
        stats=stats,
        notes=tuple(notes),
    )
