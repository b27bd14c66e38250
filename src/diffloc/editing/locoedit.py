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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffloc.editing.closed_form import SharedInputRidge, check_positive
from diffloc.editing.edit import Edit
from diffloc.editing.requests import LOCOEDIT_TEMPLATES, EditRequest, PromptPair
from diffloc.editing.states import context_at_subjects, context_pairs, context_rows
from diffloc.errors import ConfigError, EditError, UnknownSiteError
from diffloc.models.base import LoadedModel
from diffloc.sites import Site, SiteKind

logger = logging.getLogger(__name__)

IF_NOTE = (
    "DeepFloyd IF: LocoEdit is applied, but the ICML 2024 paper reports it is limited on IF because the T5 "
    "encoder is bidirectional (subject states depend on the whole prompt)."
)
TARGET_MODES = ("bare", "template")
POSITIONS = ("subject", "subject+eos")
SDXL_NOTE = "SD-XL: the pooled text embedding (text_embeds) is untouched; only cross-attention K/V change."


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
            else:
                raise UnknownSiteError(
                    f"site {site.name!r} is a {site.kind} site; LocoEdit edits cross-attention sites "
                    "'unet.xattn.N' (or one projection 'unet.xattn.N.k' / '.v')"
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


def _key_value_states(
    model: LoadedModel, edit_pairs: list[PromptPair], keep_pairs: list[PromptPair], config: LocoEditConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(concept keys, target states, preserved keys), float64 rows of cross-attention context."""
    bare = config.target_mode == "bare"
    value_prompts = [p.value_subject if bare else p.value_prompt for p in edit_pairs]
    value_subjects = [p.value_subject for p in edit_pairs]
    if config.positions == "subject":
        pairs = edit_pairs + keep_pairs
        prompts = [p.key_prompt for p in pairs] + value_prompts
        subjects = [p.key_subject for p in pairs] + value_subjects
        states = context_at_subjects(model, prompts, subjects).double()  # (rows, d_text)
        n_edit, n_all = len(edit_pairs), len(pairs)
        return states[:n_edit], states[n_all:], states[n_edit:n_all]
    keys, values = context_pairs(
        model,
        [p.key_prompt for p in edit_pairs] + [p.key_prompt for p in keep_pairs],
        [p.key_subject for p in edit_pairs] + [p.key_subject for p in keep_pairs],
        value_prompts + [p.key_prompt for p in keep_pairs],
        value_subjects + [p.key_subject for p in keep_pairs],
    )
    n_edit = len(edit_pairs)
    width = keys[0].shape[1]
    keep = torch.cat(keys[n_edit:]) if keep_pairs else torch.zeros(0, width, dtype=torch.float64)
    return torch.cat(keys[:n_edit]), torch.cat(values[:n_edit]), keep


def _with_preserved_prompts(model: LoadedModel, keep: torch.Tensor, prompts: tuple[str, ...]) -> torch.Tensor:
    """Append every position of the preserved prompts to the preserved keys."""
    if not prompts:
        return keep
    rows = context_rows(model, prompts)
    return torch.cat([keep.reshape(-1, rows.shape[1]), rows]) if keep.numel() else rows


def compute_locoedit(model: LoadedModel, request: EditRequest, config: LocoEditConfig) -> Edit:
    """Compute a LocoEdit edit (the model is not modified).

    Returns:
        An :class:`~diffloc.editing.edit.Edit` replacing the key/value projection weights of the sites.

    Raises:
        UnknownSiteError: a site is unknown or not a cross-attention site.
        PromptError: a concept/target does not occur in a filled template.
    """
    start = time.perf_counter()
    projections = projection_sites(model, config.sites)
    pairs = request.pairs(LOCOEDIT_TEMPLATES)
    edit_pairs = [p for p in pairs if not p.preserve]
    keep_pairs = [p for p in pairs if p.preserve]
    concept_states, target_states, keep_states = _key_value_states(model, edit_pairs, keep_pairs, config)
    keep_states = _with_preserved_prompts(model, keep_states, request.preserve_prompts)
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
            K_preserve=keep_states if keep_states.numel() else None,
            preserve_weight=config.preserve_weight,
        )
        for lam in dict.fromkeys(lams)
    }
    for proj, lam in zip(projections, lams, strict=True):
        w0 = projection_linear(model, proj).weight.detach()
        new = solvers[lam].apply(w0)
        key = f"{proj.full_path}.weight"
        weights[key] = new
        originals[key] = w0.clone()
    solve_seconds = time.perf_counter() - solve_start
    notes = []
    if model.family == "if":
        notes.append(IF_NOTE)
    if model.family == "sdxl":
        notes.append(SDXL_NOTE)
    stats = {
        "sites": [p.name for p in projections],
        "key_value_pairs": int(concept_states.shape[0]),
        "preserve_pairs": int(keep_states.shape[0]),
        "solve_seconds": round(solve_seconds, 6),
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
