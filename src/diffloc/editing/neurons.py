"""Neuron-level edits (Basu et al., ICML 2024): find the K/V output channels that carry a concept, ablate them.

Two modes (``NeuronConfig.mode``):

* ``"weights"`` (default) — diffloc's weight edit: activations read at the subject's last token, the ablation
  written into the projection weights (an :class:`~diffloc.editing.edit.Edit`; acts on every row, the
  unconditional branch's too). :func:`compute_neurons`, also ``compute_edit(method="neurons")``.
* ``"paper"`` — the reference (``neuron_modifications/``, paper-algorithms §7): activations read at the **last
  padding slot** (position ``max_tokens - 1``, an EOS copy for SD-1), and the ablation applied while generating
  as an intervention on the **conditional branch only**, at every token position — a
  :class:`~diffloc.editing.ablation.NeuronAblation`, not an edit. :func:`compute_ablation`.

Detection. For every chosen cross-attention projection (``to_k``/``to_v``; IF: ``add_k/add_v_proj``) the
activation of a prompt is the projection's output at the reading position (above):

* concept prompts S: the concept filled into every template;
* neutral prompts N: the target filled into the same templates (plus any preserved concepts). Using the same
  templates keeps the context identical, so channels that differ mark the concept, not the phrasing (this also
  avoids the reference's neutral-set bug, where the neutral list held literal "{}" templates).

Channels are ranked per projection by ``|z_u|`` with the two-sample statistic
``z_u = (mean_S a_u − mean_N a_u) / sqrt(σ²_S,u/|S| + σ²_N,u/|N|)`` (population σ), and the top N are kept.
Their replacement value ``r_u`` is the neutral mean (``ablation="mean"``, the paper's intended operation) or
0 (``"zero"``, "dropout").

Ablation as a weight edit. Setting output channel u of ``y = W x + b`` to a constant ``r_u`` for every input
is exactly ``W[u, :] = 0`` and ``b[u] = r_u``. Projections without a bias (SD's ``to_k``/``to_v``) get one for
mean ablation — zero except at the ablated channels — recorded in the :class:`Edit` as a parameter that is
*absent* in the base, and removed again by ``revert``. So the edit saves, loads, stacks and reverts bit-exactly
like any other edit, with no hook left on the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from diffloc.editing.ablation import ChannelAblation, NeuronAblation
from diffloc.editing.edit import Edit, tensor_hash
from diffloc.editing.locoedit import projection_linear, projection_sites, site_names
from diffloc.editing.requests import LOCOEDIT_TEMPLATES, EditRequest
from diffloc.editing.states import context_at_subjects, padded_context
from diffloc.editors import ABLATIONS, NEURON_MODES
from diffloc.errors import ConfigError, PromptError
from diffloc.models.base import LoadedModel
from diffloc.sites import Site

logger = logging.getLogger(__name__)

MODES = NEURON_MODES


@dataclass(frozen=True, kw_only=True)
class NeuronConfig:
    """Settings of the neuron edit.

    Attributes:
        sites: cross-attention sites (names/globs, ``.k``/``.v`` for one projection, or an object with
            ``best_sites``).
        top_n: channels ablated per projection (must not exceed its output width).
        ablation: ``"mean"`` (neutral mean; the paper's intent) or ``"zero"``.
        mode: ``"weights"`` (subject token, weight edit on every row) or ``"paper"`` (last padding slot,
            intervention on the conditional branch; see the module docstring).
    """

    sites: Any
    top_n: int = 50
    ablation: str = "mean"
    mode: str = "weights"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", site_names(self.sites))
        if isinstance(self.top_n, bool) or not isinstance(self.top_n, int) or self.top_n < 1:
            raise ConfigError(f"top_n must be a positive integer, got {self.top_n!r}")
        if self.ablation not in ABLATIONS:
            raise ConfigError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def z_scores(concept: torch.Tensor, neutral: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Two-sample z statistic per channel between ``concept`` ``(|S|, C)`` and ``neutral`` ``(|N|, C)``."""
    diff = concept.mean(0) - neutral.mean(0)
    var = concept.var(0, unbiased=False) / concept.shape[0] + neutral.var(0, unbiased=False) / neutral.shape[0]
    return diff / torch.sqrt(var + eps)


@dataclass(frozen=True)
class _Choice:
    """The channels chosen in one projection, their z-scores and replacement values."""

    site: Site
    channels: torch.Tensor  # (top_n,) long, in order of decreasing |z|
    z: torch.Tensor  # (top_n,)
    values: torch.Tensor  # (top_n,) float64


def last_slot_states(model: LoadedModel, prompts: list[str]) -> torch.Tensor:
    """Cross-attention context at the last padding slot (position ``max_tokens - 1``) of each prompt, float64.

    Each distinct prompt is encoded once, at the pipeline's full padded length.
    """
    distinct = list(dict.fromkeys(prompts))
    last = padded_context(model, distinct)[:, -1]
    row = {p: i for i, p in enumerate(distinct)}
    return last[[row[p] for p in prompts]]


def _detect(model: LoadedModel, request: EditRequest, config: NeuronConfig) -> tuple[list[_Choice], dict[str, Any]]:
    """Rank every projection's channels by |z| between concept and neutral prompts; keep the top ``top_n``."""
    if request.preserve_prompts:
        raise ConfigError(
            "neuron edits do not take preserve_prompts (they ablate channels, there is no solve to constrain); "
            "use preserve=(concepts,) to add neutral prompts"
        )
    projections = projection_sites(model, config.sites)
    for proj in projections:
        width = projection_linear(model, proj).out_features
        if config.top_n > width:
            raise ConfigError(
                f"top_n={config.top_n} exceeds the {width} output channels of {proj.name}; use 1..{width}"
            )
    pairs = request.pairs(LOCOEDIT_TEMPLATES)
    concept_prompts = [(p.key_prompt, p.key_subject) for p in pairs if not p.preserve]
    neutral_prompts = [(p.value_prompt, p.value_subject) for p in pairs if not p.preserve]
    neutral_prompts += [(p.key_prompt, p.key_subject) for p in pairs if p.preserve]
    if not concept_prompts or not neutral_prompts:
        raise PromptError("empty prompt list; the neuron edit needs concept and neutral prompts")
    rows = concept_prompts + neutral_prompts
    if config.mode == "paper" and not model.adapter.reads_padding(model.pipe):
        raise ConfigError(
            f"neuron ablation mode='paper' reads the last padding slot, which a {model.family} model's "
            "cross-attention never reads (its pipeline masks the padding); use mode='weights'"
        )
    if config.mode == "paper":
        states = last_slot_states(model, [r[0] for r in rows])
    else:
        states = context_at_subjects(model, [r[0] for r in rows], [r[1] for r in rows]).double()  # (rows, d_text)
    n_concept = len(concept_prompts)
    choices = []
    for proj in projections:
        linear = projection_linear(model, proj)
        acts = states @ linear.weight.detach().double().T  # (rows, channels)
        if linear.bias is not None:
            acts = acts + linear.bias.detach().double()
        z = z_scores(acts[:n_concept], acts[n_concept:])
        top = torch.argsort(z.abs(), descending=True)[: config.top_n]
        values = acts[n_concept:].mean(0)[top] if config.ablation == "mean" else torch.zeros(len(top), dtype=acts.dtype)
        choices.append(_Choice(site=proj, channels=top, z=z[top], values=values))
    stats = {
        "sites": [p.name for p in projections],
        "concept_prompts": n_concept,
        "neutral_prompts": len(neutral_prompts),
        "read_at": "last padding slot" if config.mode == "paper" else "subject's last token",
    }
    return choices, stats


def compute_neurons(model: LoadedModel, request: EditRequest, config: NeuronConfig) -> Edit:
    """Rank K/V channels by concept-vs-neutral z-score and ablate the top ``config.top_n`` of each projection
    in the weights (``mode="weights"``).

    Returns:
        An :class:`Edit` zeroing the chosen weight rows and setting their bias entries to the ablation values.

    Raises:
        ConfigError: ``top_n`` exceeds a projection's channel count, or ``mode="paper"`` (an intervention, made
            by :func:`compute_ablation`).
        UnknownSiteError: a site is unknown or not a cross-attention site.
        PromptError: a concept/target does not occur in a template.
    """
    if config.mode != "weights":
        raise ConfigError(
            "mode='paper' ablates with an intervention on the conditional branch, not a weight edit: use "
            "diffloc.editing.compute_ablation (CLI: diffloc edit neurons --mode paper --out FILE.json)"
        )
    start = time.perf_counter()
    choices, stats = _detect(model, request, config)
    weights: dict[str, torch.Tensor] = {}
    originals: dict[str, torch.Tensor | None] = {}
    for choice in choices:
        proj, top = choice.site, choice.channels
        linear = projection_linear(model, proj)
        w0 = linear.weight.detach()
        b0 = linear.bias.detach() if linear.bias is not None else None
        new_w = w0.clone()
        new_w[top] = 0
        weights[f"{proj.full_path}.weight"] = new_w
        originals[f"{proj.full_path}.weight"] = w0.clone()
        if b0 is None and config.ablation == "zero":
            continue  # rows zeroed and no bias: the channels already output 0
        new_b = b0.clone() if b0 is not None else torch.zeros(w0.shape[0], dtype=w0.dtype, device=w0.device)
        new_b[top] = choice.values.to(dtype=new_b.dtype, device=new_b.device)
        weights[f"{proj.full_path}.bias"] = new_b
        originals[f"{proj.full_path}.bias"] = None if b0 is None else b0.clone()
    stats["channels"] = {c.site.name: sorted(int(i) for i in c.channels) for c in choices}
    stats["seconds"] = round(time.perf_counter() - start, 6)
    logger.info("neurons: top %d of %d projections", config.top_n, len(choices))
    notes = ("Projections without a bias get one while the edit is applied (mean ablation); revert removes it.",)
    return Edit(
        method="neurons",
        family=model.family,
        weights=weights,
        originals=originals,
        request=request.to_dict(),
        config=asdict(config),
        stats=stats,
        notes=model.adapter.edit_caveats("neurons") + (notes if config.ablation == "mean" else ()),
    )


def compute_ablation(model: LoadedModel, request: EditRequest, config: NeuronConfig) -> NeuronAblation:
    """The paper's neuron ablation (``mode="paper"``): channels chosen at the last padding slot, to be set to
    their values in the conditional branch while generating (the model is not modified).

    Returns:
        A :class:`~diffloc.editing.ablation.NeuronAblation`; generate with
        ``generate(model, prompts, interventions=ablation.interventions())``.

    Raises:
        ConfigError: ``mode`` is not ``"paper"``, or ``top_n`` exceeds a projection's channel count.
        UnknownSiteError: a site is unknown or not a cross-attention site.
        PromptError: a concept/target does not occur in a template.
    """
    if config.mode != "paper":
        raise ConfigError(
            f"compute_ablation needs NeuronConfig(mode='paper'), got mode={config.mode!r}; the weight edit is "
            "compute_edit(model, request, method='neurons', config=...)"
        )
    start = time.perf_counter()
    choices, stats = _detect(model, request, config)
    base: dict[str, str] = {}
    for choice in choices:
        linear = projection_linear(model, choice.site)
        base[f"{choice.site.full_path}.weight"] = tensor_hash(linear.weight)
        base[f"{choice.site.full_path}.bias"] = tensor_hash(linear.bias)
    stats["z"] = {c.site.name: [round(float(v), 4) for v in c.z] for c in choices}
    stats["seconds"] = round(time.perf_counter() - start, 6)
    logger.info("neurons (paper): top %d of %d projections", config.top_n, len(choices))
    return NeuronAblation(
        family=model.family,
        sites=tuple(
            ChannelAblation(
                site=c.site.name,
                channels=tuple(int(i) for i in c.channels),
                values=tuple(float(v) for v in c.values),
            )
            for c in choices
        ),
        base=base,
        request=request.to_dict(),
        config=asdict(config),
        stats=stats,
    )
