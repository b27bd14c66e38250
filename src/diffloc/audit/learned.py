"""The learned-prompt attack (UnlearnDiffAtk's setting): free token embeddings take the erased concept's name's place
in its prompts and are optimized against the attacked model; then the model draws the audit's prompts with them.

Two objectives:

* ``denoising`` (the default; textual inversion against the attacked model, as UnlearnDiffAtk optimizes): the
  denoiser's training loss on reference images of the concept, one forward and backward pass at random timesteps
  per step. ShapesWorld renders the references exactly (training captions that name the concept, and their
  scenes), so no model makes them.
* ``scorer``: the scorer's log-probability of the concept on images sampled with gradients through every denoising
  step (:mod:`diffloc.engine.gradients`), for models whose concept has no reference images but a differentiable
  scorer (CLIP).

The free tokens start at the embeddings of the words the edit maps the concept to (``a plain style``), never at
the concept's own: on the unedited model the attack has to find the concept, which is the check that it works.
The model's weights are frozen throughout (only the free embeddings get gradients) and every hook is removed
after each call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from diffloc.atomic import write_atomic
from diffloc.audit.config import OBJECTIVES
from diffloc.audit.revival import concept_examples, denoising_loss, encode_latents
from diffloc.differentiable import require_gradient_scorer
from diffloc.engine.generate import GenerationConfig
from diffloc.engine.gradients import gradient_scope, sample_with_grad
from diffloc.engine.hooks import patch
from diffloc.errors import ConfigError
from diffloc.models.base import LoadedModel

#: the word that marks a free token's place in a prompt (one token of CLIP's vocabulary)
PLACEHOLDER = "sks"


@dataclass(frozen=True, kw_only=True)
class LearnedTokens:
    """Free token embeddings learned against one model.

    Attributes:
        embeddings: ``(tokens, dim)`` float32, in the order the placeholders appear.
        objective: what they were optimized for (:data:`OBJECTIVES`).
        losses: the objective at each step (denoising loss, or the negative of the scorer's score: for the
            detectors, of their log-probability of the concept).
    """

    embeddings: torch.Tensor
    objective: str
    losses: tuple[float, ...]


def slot_prompts(concept: str, prompts: Sequence[str], tokens: int) -> list[str]:
    """The ``prompts`` that name ``concept``, with the name replaced by ``tokens`` placeholders."""
    slot = " ".join([PLACEHOLDER] * tokens)
    return [p.replace(concept, slot) for p in prompts if concept in p]


def _embedding_site(model: LoadedModel) -> tuple[str, Any]:
    """The site name of the model's token embedding, and its tokenizer.

    Raises:
        ConfigError: the model has several text encoders.
    """
    specs = model.adapter.text_encoders(model.pipe)
    if len(specs) != 1:
        raise ConfigError(f"the learned-prompt attack optimizes one text encoder's token embeddings; this model has "
                          f"{len(specs)}")  # fmt: skip
    return f"{specs[0].prefix}.embed", getattr(model.pipe, specs[0].tokenizer)


def placeholder_id(model: LoadedModel, prompts: Sequence[str], tokens: int) -> int:
    """The placeholder's token id, after checking that every prompt keeps its ``tokens`` placeholders.

    Raises:
        ConfigError: several text encoders, a placeholder that is several tokens, or a prompt that lost one.
    """
    _, tokenizer = _embedding_site(model)
    mark = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids
    if len(mark) != 1:
        raise ConfigError(f"placeholder {PLACEHOLDER!r} is not one token for this tokenizer")
    spec = model.adapter.text_encoders(model.pipe)[0]
    ids = model.adapter.tokenize(model.pipe, spec, prompts)
    if any(int((row == mark[0]).sum()) != tokens for row in ids):
        raise ConfigError(f"a prompt does not keep its {tokens} placeholders after tokenization (too long?)")
    return int(mark[0])


def _substitute(embeddings: torch.Tensor, mark: int) -> Any:
    """An output hook on the token embedding: every row's placeholder tokens (id ``mark``, read from the module's
    input ids) become ``embeddings``, in order; rows without placeholders (the unconditional one) are left alone."""

    def hook(module: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        ids = args[0] if args else kwargs["input"]
        where = ids == mark
        if not bool(where.any()):
            return output
        out = output.clone()
        out[where] = embeddings.to(out.device, out.dtype).repeat(int(where.any(1).sum()), 1)
        return out

    return hook


@contextmanager
def substituted(model: LoadedModel, embeddings: torch.Tensor, prompts: Sequence[str]) -> Iterator[None]:
    """Within the block, the model reads ``embeddings`` wherever ``prompts`` (and any prompt it is given) have the
    placeholder; the hook is removed on exit.

    Raises:
        ConfigError: see :func:`placeholder_id`.
    """
    site, _ = _embedding_site(model)
    mark = placeholder_id(model, prompts, len(embeddings))
    with patch(model, outputs={site: _substitute(embeddings, mark)}):
        yield


def _embedding_weight(model: LoadedModel, site: str) -> torch.Tensor:
    """The token embedding table ``(vocabulary, dim)``, detached."""
    return cast(torch.Tensor, model.module(site).weight).detach()


def initial_embeddings(model: LoadedModel, phrase: str, tokens: int) -> torch.Tensor:
    """``tokens`` embeddings to start from: those of ``phrase``'s tokens, repeated cyclically, float32."""
    site, tokenizer = _embedding_site(model)
    ids = tokenizer(phrase, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"the free tokens start at the words {phrase!r}, which have no tokens")
    weight = _embedding_weight(model, site)
    return weight[[ids[i % len(ids)] for i in range(tokens)]].float().clone()


def nearest_tokens(model: LoadedModel, embeddings: torch.Tensor) -> list[dict[str, Any]]:
    """Per learned embedding, the vocabulary token closest in cosine similarity (``token``, ``cosine``)."""
    site, tokenizer = _embedding_site(model)
    weight = torch.nn.functional.normalize(_embedding_weight(model, site).float(), dim=1)
    cosine = torch.nn.functional.normalize(embeddings.float().to(weight.device), dim=1) @ weight.T
    best = cosine.max(dim=1)
    return [{"token": str(tokenizer.convert_ids_to_tokens(int(i))), "cosine": round(float(v), 4)}
            for i, v in zip(best.indices, best.values, strict=True)]  # fmt: skip


def learn_tokens(
    model: LoadedModel,
    captions: Sequence[str],
    init: torch.Tensor,
    *,
    objective: str,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    images: torch.Tensor | None = None,
    scorer: Any = None,
    attribute: str | None = None,
    seeds: Sequence[int] = (),
    generation: GenerationConfig | None = None,
) -> LearnedTokens:
    """Optimize the free embeddings (starting at ``init``) in the placeholders of ``captions`` with Adam.

    ``denoising``: ``images`` ``(n, 3, H, W)`` in [-1, 1] are the references, one per caption; each step draws
    ``batch`` of them. ``scorer``: each step samples ``batch`` (caption, seed) pairs in turn from ``captions`` ×
    ``seeds`` with ``generation``, and raises ``scorer``'s log-probability of ``attribute``.

    Raises:
        ConfigError: unknown objective, missing references, a scorer without gradients, or autograd off.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"learned-prompt objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "denoising" and (images is None or len(images) != len(captions)):
        raise ConfigError("the denoising objective needs one reference image per caption")
    if objective == "scorer":
        scorer = require_gradient_scorer(scorer, "learned-prompt attack")
        if attribute is None or not seeds or generation is None:
            raise ConfigError("the scorer objective needs the attribute, seeds and a generation config")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.denoiser.parameters()).device
    learned = init.detach().float().clone().to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([learned], lr=lr)
    latents = encode_latents(model, images) if objective == "denoising" and images is not None else None
    pairs = [(c, s) for s in seeds for c in captions]
    losses: list[float] = []
    with gradient_scope(model, method="learned-prompt attack"), substituted(model, learned, captions):
        for step in range(steps):
            if latents is not None:
                idx = torch.randint(0, len(captions), (batch,), generator=generator)
                cond = model.adapter.encode(model.pipe, [captions[i] for i in idx])
                loss = denoising_loss(model, model.pipe.scheduler, latents[idx.to(latents.device)], cond.hidden,
                                      generator)  # fmt: skip
            else:
                chosen = [pairs[(step * batch + j) % len(pairs)] for j in range(batch)]
                cond = model.adapter.encode(model.pipe, [c for c, _ in chosen])
                drawn = sample_with_grad(model, cond, seeds=[s for _, s in chosen], config=generation)  # type: ignore[arg-type]
                loss = -scorer.score_grad(drawn, [attribute] * batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return LearnedTokens(embeddings=learned.detach().cpu(), objective=objective, losses=tuple(losses))


def save_tokens(path: str | Path, tokens: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write learned embeddings (name -> ``(tokens, dim)``) as a safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in tokens.items()}
    return write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


#: reference images of the concept the denoising objective draws its batches from
REFERENCES = 256
#: seeds of the scorer objective's samples start here, past any audit's measurement seeds
_OPTIMIZATION_SEED = 1_000_000
#: where the learned embeddings go under an audit's ``attacks`` folder
TOKENS_FILE = "learned-tokens.safetensors"


def references(target: Any, prompts: Sequence[str], tokens: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """The denoising objective's :data:`REFERENCES`: ShapesWorld training captions naming the concept (its name
    replaced by ``tokens`` placeholders) and their rendered images, without the captions among ``prompts`` (the
    attacked ones) where the world has other phrasings of the concept (an object's few phrasings are all asked)."""
    captions, images = concept_examples(target, REFERENCES, seed)
    unseen = [i for i, c in enumerate(captions) if c not in set(prompts)]
    if unseen:
        captions, images = [captions[i] for i in unseen], images[unseen]
    return slot_prompts(target.concept, captions, tokens), images


def _objective_scorer(scorer: Any, model: LoadedModel) -> Any:
    """The scorer the scorer objective raises: the detectors' log-probability where the audit reads the
    detectors' probability (which is exactly 0 in float32 far from the concept, and so has no gradient there)."""
    if getattr(scorer, "name", None) != "shapesworld-detectors":
        return scorer
    from diffloc.eval.scorers import DetectorScorer

    return DetectorScorer(log_probability=True, device=next(model.denoiser.parameters()).device)


def learned_attack(
    model: LoadedModel,
    edit: Any,
    target: Any,
    prompts: Sequence[str],
    *,
    config: Any,
    scorer: Any,
    measure: Callable[[Sequence[str], str | None], dict[str, Any]],
    out: Path | None,
) -> str | tuple[tuple[str, ...], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Learn free tokens against the unedited model (the check that the attack works) and against the edited one
    (``edit`` applied only meanwhile), and measure each with ``measure`` on ``prompts`` (the concept's name
    replaced by the placeholders), every seed of ``config``; with ``out``, the embeddings are saved there
    (:data:`TOKENS_FILE`) and the edited model's first images as ``learned.png``.

    Returns:
        Why the attack cannot run, or (its prompts, the edited and unedited measurements, details: objective,
        budget, losses, nearest vocabulary tokens, the prompts it was optimized on).
    """
    tokens = config.learned_tokens
    attacked = slot_prompts(target.concept, prompts, tokens)
    if not attacked:
        return f"no attack prompt names {target.concept!r}; the free tokens have no place to go"
    if len(model.adapter.text_encoders(model.pipe)) != 1:
        return "the free tokens are one text encoder's embeddings; this model has several"
    images = None
    if config.learned_objective == "denoising":
        if target.kind is None:
            return ("the denoising objective needs images of the concept; ShapesWorld renders them, other models "
                    "have none shipped (use the scorer objective)")  # fmt: skip
        optimized, images = references(target, prompts, tokens, config.seed)
    else:
        optimized = attacked  # the samples' seeds are held out instead
    start = max(config.seeds) + 1 + _OPTIMIZATION_SEED
    init = initial_embeddings(model, target.target or PLACEHOLDER, tokens)
    settings = {"objective": config.learned_objective, "steps": config.learned_steps, "lr": config.learned_lr,
                "batch": config.learned_batch, "seed": config.seed, "seeds": list(range(start, start + 4)),
                "generation": GenerationConfig(steps=config.steps, guidance=config.guidance)}  # fmt: skip
    learned: dict[str, LearnedTokens] = {}
    measured: dict[str, dict[str, Any]] = {}
    for arm in ("unedited", "edited"):
        with edit.applied(model) if arm == "edited" else nullcontext():
            learned[arm] = learn_tokens(model, optimized, init, images=images, scorer=_objective_scorer(scorer, model),
                                        attribute=target.attribute, **settings)  # fmt: skip
            with substituted(model, learned[arm].embeddings, attacked):
                measured[arm] = measure(attacked, "learned" if arm == "edited" else None)
    details: dict[str, Any] = {
        "objective": config.learned_objective, "tokens": tokens, "steps": config.learned_steps,
        "lr": config.learned_lr, "batch": config.learned_batch, "start": target.target or PLACEHOLDER,
        "optimized_on": len(set(optimized)), "unseen_prompts": len(set(attacked) - set(optimized)),
        "loss": {arm: [round(x, 6) for x in lt.losses] for arm, lt in learned.items()},
        "nearest": {arm: nearest_tokens(model, lt.embeddings) for arm, lt in learned.items()},
        "norms": {arm: [round(float(n), 4) for n in lt.embeddings.norm(dim=1)] for arm, lt in learned.items()},
    }  # fmt: skip
    if out is not None:
        metadata = {"placeholder": PLACEHOLDER, "objective": config.learned_objective, "concept": target.concept}
        save_tokens(out / TOKENS_FILE, {arm: lt.embeddings for arm, lt in learned.items()}, metadata)
        details["embeddings"] = f"attacks/{TOKENS_FILE}"
    return tuple(attacked), measured["edited"], measured["unedited"], details
