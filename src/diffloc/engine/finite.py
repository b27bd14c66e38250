"""Non-finite guards: a generation that turns NaN or infinite stops with one line naming the input that did it.

A NaN latent decodes to a black image and a NaN score to ``NaN`` in a result file; both would look like results.
The checks only read tensors (one reduction per denoising step), so valid generations are bit-for-bit unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffloc.errors import NonFiniteError

#: guidance scales above this are named as the likely cause of an overflow (Stable Diffusion uses about 1-15)
LARGE_GUIDANCE = 100.0


def _bad_rows(tensor: torch.Tensor) -> list[int]:
    flat = tensor.detach().reshape(tensor.shape[0], -1)
    return [int(i) for i in (~torch.isfinite(flat).all(dim=1)).nonzero().flatten().tolist()]


def check_text_states(hidden: torch.Tensor, runs: Sequence[Any]) -> None:
    """Raise when a run's encoded text (after its text-level interventions) holds NaN or infinity.

    ``runs[i]`` is the run of row ``i`` of ``hidden``; a corruption's noise std is named when the run has one.
    """
    bad = _bad_rows(hidden)
    if not bad:
        return
    run = runs[bad[0]]
    stds = [iv.std for iv in getattr(run, "interventions", ()) if hasattr(iv, "std")]
    if stds:
        raise NonFiniteError(
            f"corruption noise std {max(stds):g} made the text encoder's states non-finite (NaN/inf) for prompt "
            f"{run.prompt!r}; use a smaller noise (a few times the token-embedding std, e.g. --noise auto)"
        )
    raise NonFiniteError(f"the text encoder's states are non-finite (NaN/inf) for prompt {run.prompt!r}")


def check_latents(latents: torch.Tensor, *, step: int, steps: int, guidance: float) -> None:
    """Raise when the latents after denoising step ``step`` (1-based) of ``steps`` hold NaN or infinity."""
    if bool(torch.isfinite(latents).all()):
        return
    _raise_for_guidance("the latents", f"at step {step} of {steps}", guidance)


def _raise_for_guidance(what: str, where: str, guidance: float) -> None:
    if guidance > LARGE_GUIDANCE:
        raise NonFiniteError(
            f"guidance {guidance:g} made {what} non-finite (NaN/inf) {where}; use a guidance scale in "
            f"[0, {LARGE_GUIDANCE:g}] (Stable Diffusion uses about 1-15)"
        )
    raise NonFiniteError(
        f"{what} became non-finite (NaN/inf) {where} at guidance {guidance:g}; the model, an edit or an "
        "intervention overflows (a float16 model may need float32)"
    )


def check_pipeline_images(images: torch.Tensor, *, guidance: float) -> None:
    """Raise when images a diffusers pipeline generated (no per-step access) hold NaN or infinity."""
    if not bool(torch.isfinite(images).all()):
        _raise_for_guidance("the generated images", "after sampling", guidance)


def check_images(images: torch.Tensor) -> None:
    """Raise when decoded images hold NaN or infinity (a float16 VAE can overflow on finite latents)."""
    if not bool(torch.isfinite(images).all()):
        raise NonFiniteError(
            "the VAE decoded non-finite pixels (NaN/inf) from finite latents; a float16 VAE overflows on some "
            "inputs (decode in float32)"
        )


def check_scores(scores: torch.Tensor, texts: Sequence[str], scorer: str) -> torch.Tensor:
    """``scores`` when every one is finite; else raise naming the first text scored NaN or infinity."""
    flat = scores.detach().reshape(-1)
    bad = (~torch.isfinite(flat)).nonzero().flatten().tolist()
    if bad:
        text = texts[int(bad[0])] if int(bad[0]) < len(texts) else "?"
        raise NonFiniteError(f"the {scorer} scorer gave a non-finite score (NaN/inf) for {text!r}")
    return scores
