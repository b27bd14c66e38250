"""What several unit-test files share: a deterministic pixel scorer, the order sites' forwards finish in, the
comparison of gradient estimates with exact patching, and bit-exact equality of two training checkpoints."""

from __future__ import annotations

import numpy as np
import torch

from diffloc.engine.generate import GenerationConfig, generate
from diffloc.engine.hooks import patch
from diffloc.engine.interventions import CorruptTokens
from diffloc.errors import ConfigError


def assert_same_checkpoint(first, second) -> None:
    """The safetensors files ``first`` and ``second`` hold the same tensors, bit for bit (a resumed run against an
    uninterrupted one)."""
    from safetensors.torch import load_file

    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class PixelScorer:
    """A deterministic test scorer: the image projected on a fixed random unit direction.

    Its meaning is irrelevant to the invariants tested with it (they hold for any deterministic scorer); on
    ShapesWorld the real detectors score images.
    """

    name = "pixel-test"

    def score(self, images, texts):
        assert len(texts) == images.shape[0]
        flat = images.flatten(1).double()
        direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return (flat @ (direction / direction.norm())).float()

    def check(self, text):
        if not text.strip():
            raise ConfigError("empty attribute text")


def finish_order(model, sites) -> list[str]:
    """The names of ``sites`` in the order their modules' forwards first finish in a one-step generation."""
    seen: list[str] = []

    def make(name):
        def hook(module, args, kwargs, output):
            if name not in seen:
                seen.append(name)

        return hook

    with patch(model, outputs={s.name: make(s.name) for s in sites}, first=False):
        generate(model, "a red circle", config=GenerationConfig(steps=1, guidance=1.0))
    return seen


def score_changes(result, estimates: bool = False) -> np.ndarray:
    """A trace's score change per restore (flattened, NaN as 0): its scores, or with ``estimates`` its single
    item's gradient estimates (a screen keeps them under ``estimates``, its confirmed restores measured)."""
    if estimates:
        (item,) = result.items
        return np.nan_to_num(np.asarray(item["estimates"], float) - item["corrupted"]).ravel()
    return np.nan_to_num(np.asarray(result.scores, float) - result.corrupt_score).ravel()


def float_floor(exact, estimated) -> float:
    """How well a float32 sampling chain measures a restore here: the clean and the corrupted run are computed in
    both traces, in batches of other sizes, and differ by up to this much; an exact change is the difference of two
    such runs, hence twice it."""
    return 2 * max(abs(exact.clean_score - estimated.clean_score), abs(exact.corrupt_score - estimated.corrupt_score))


def assert_estimates_agree(
    want: np.ndarray, got: np.ndarray, *, share: float = 0.1, rtol: float = 0.05, floor: float = 0.0
) -> int:
    """Estimated changes ``got`` agree with exact changes ``want`` to ``rtol`` (plus ``floor``, the precision an
    exact change is measured to) on every restore whose exact change is at least ``share`` of the largest; returns
    how many were compared."""
    big = np.abs(want) >= share * np.abs(want).max()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got[big], want[big], rtol=rtol, atol=floor)
    return int(big.sum())


def corrupt_subject(model, prompt: str, subject: str = "van gogh", *, std: float = 2.0, noise_seed: int = 0):
    """Noise of ``std`` on ``subject``'s tokens in ``prompt`` (the corruption the engine tests restore from)."""
    return CorruptTokens(positions=model.adapter.find_subject(model.pipe, prompt, subject), std=std,
                         noise_seed=noise_seed)  # fmt: skip
