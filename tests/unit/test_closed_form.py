"""The shared ridge solve against hand-computed solutions."""

from __future__ import annotations

import pytest
import torch

from diffloc.editing.closed_form import PreservedGram, SharedInputRidge, ridge_solve
from diffloc.errors import ConfigError, EditError


def _layer(d_out=5, d_in=4, n=3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d_out, d_in, generator=gen, dtype=dtype)
    keys = torch.randn(n, d_in, generator=gen, dtype=dtype)
    values = torch.randn(n, d_out, generator=gen, dtype=dtype)
    return w0, keys, values


@pytest.mark.parametrize("n", [3, 9])  # fewer keys than inputs (dual form) and more (primal form)
@pytest.mark.parametrize("form", ["auto", "primal", "dual"])
def test_matches_normal_equations_with_explicit_inverse(n, form):
    w0, keys, values = _layer(n=n)
    lam = 0.3
    # hand-computed: W* = (λ W0 + Σ v kᵀ)(λ I + Σ k kᵀ)⁻¹, sums written out
    lhs = lam * w0.clone()
    gram = lam * torch.eye(4, dtype=torch.float64)
    for k, v in zip(keys, values, strict=True):
        lhs += torch.outer(v, k)
        gram += torch.outer(k, k)
    expected = lhs @ torch.inverse(gram)
    got = ridge_solve(w0, keys, values, lam, form=form)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_tiny_example_by_hand():
    # 1x1 layer: w* = (λ w0 + Σ v k) / (λ + Σ k²) = (1*2 + 3*1) / (1 + 1) = 2.5
    got = ridge_solve(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]), 1.0)
    assert got.item() == pytest.approx(2.5)


def test_is_the_minimiser():
    w0, keys, values = _layer(seed=3)
    lam = 0.05

    def loss(w):
        return ((keys @ w.T - values) ** 2).sum() + lam * ((w - w0) ** 2).sum()

    best = ridge_solve(w0, keys, values, lam)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        assert loss(best) < loss(best + 1e-3 * torch.randn(best.shape, generator=gen, dtype=best.dtype))


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_large_lambda_keeps_w0_small_lambda_fits_keys(form):
    w0, keys, values = _layer(d_in=6, n=3)
    torch.testing.assert_close(ridge_solve(w0, keys, values, 1e9, form=form), w0, rtol=0, atol=1e-7)
    fitted = ridge_solve(w0, keys, values, 1e-8, form=form)
    torch.testing.assert_close(keys @ fitted.T, values, rtol=0, atol=1e-5)
    # the fitted map changes nothing orthogonal to the keys (minimum-norm change)
    ortho = torch.linalg.svd(keys, full_matrices=True).Vh[3:]  # (3, 6) basis of the keys' null space
    torch.testing.assert_close(ortho @ fitted.T, ortho @ w0.T, rtol=0, atol=1e-5)


def test_preservation_pairs_equal_stacked_keys():
    w0, keys, values = _layer(n=4)
    keep = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    joint = ridge_solve(w0, keys, values, 0.1, K_preserve=keep, V_preserve=keep @ w0.T)
    stacked = ridge_solve(w0, torch.cat([keys, keep]), torch.cat([values, keep @ w0.T]), 0.1)
    torch.testing.assert_close(joint, stacked)
    # preserved keys move much less than without preservation
    free = ridge_solve(w0, keys, values, 0.1)
    assert (keep @ joint.T - keep @ w0.T).norm() < (keep @ free.T - keep @ w0.T).norm()


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_preserve_weight_equals_repeating_the_pairs(form):
    w0, keys, values = _layer(n=3)
    keep = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    weighted = ridge_solve(w0, keys, values, 0.1, K_preserve=keep, V_preserve=keep @ w0.T, preserve_weight=3.0,
                           form=form)  # fmt: skip
    repeated = ridge_solve(w0, keys, values, 0.1, K_preserve=keep.repeat(3, 1), V_preserve=(keep @ w0.T).repeat(3, 1),
                           form=form)  # fmt: skip
    torch.testing.assert_close(weighted, repeated)
    with pytest.raises(ConfigError, match="preserve_weight must be a finite number > 0, got 0"):
        ridge_solve(w0, keys, values, 0.1, K_preserve=keep, V_preserve=keep @ w0.T, preserve_weight=0)


def test_dtype_and_device_kept():
    w0, keys, values = _layer(dtype=torch.float32)
    out = ridge_solve(w0, keys, values, 0.01)
    assert out.dtype == torch.float32 and out.shape == w0.shape


@pytest.mark.parametrize("lam", [0, -1.0, float("nan"), float("inf")])
def test_bad_lambda(lam):
    w0, keys, values = _layer()
    with pytest.raises(ConfigError, match="lambda"):
        ridge_solve(w0, keys, values, lam)


def test_shape_errors():
    w0, keys, values = _layer()
    with pytest.raises(EditError, match="one vector per row"):
        ridge_solve(w0, keys.T, values, 0.1)
    with pytest.raises(EditError, match="one value per key"):
        ridge_solve(w0, keys, values[:2], 0.1)
    with pytest.raises(EditError, match="at least one"):
        ridge_solve(w0, keys[:0], values[:0], 0.1)


@pytest.mark.parametrize(("n", "m"), [(2, 0), (2, 1), (3, 8), (9, 0)])  # dual (n + m < d_in) and primal
@pytest.mark.parametrize("weight", [1.0, 10.0])
def test_shared_input_solve_equals_one_solve_per_layer(n, m, weight):
    gen = torch.Generator().manual_seed(n * 10 + m)
    d_in = 4 if n + m >= 4 else 6
    keys = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    targets = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    keep = torch.randn(m, d_in, generator=gen, dtype=torch.float64) if m else None
    shared = SharedInputRidge(keys, targets, 0.05, K_preserve=keep, preserve_weight=weight)
    for d_out in (3, 7):  # several layers of different widths reading the same inputs
        w0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
        expected = ridge_solve(
            w0,
            keys,
            targets @ w0.T,
            0.05,
            K_preserve=keep,
            V_preserve=None if keep is None else keep @ w0.T,
            preserve_weight=weight,
        )
        torch.testing.assert_close(shared.apply(w0), expected, rtol=1e-9, atol=1e-9)


def test_shared_input_solve_keeps_dtype_and_checks_shapes():
    keys, targets = torch.randn(2, 4), torch.randn(2, 4)
    shared = SharedInputRidge(keys, targets, 0.1)
    w0 = torch.randn(3, 4, dtype=torch.float32)
    assert shared.apply(w0).dtype == torch.float32
    with pytest.raises(EditError, match=r"\(d_out, 4\)"):
        shared.apply(torch.randn(3, 5))
    with pytest.raises(EditError, match="one target input per key"):
        SharedInputRidge(keys, targets[:1], 0.1)
    with pytest.raises(ConfigError, match="lambda"):
        SharedInputRidge(keys, targets, 0.0)


@pytest.mark.parametrize("weight", [1.0, 3.0])
@pytest.mark.parametrize("m", [2, 9])  # fewer and more preserved rows than d_in
def test_preserved_statistics_equal_the_preservation_pairs(m, weight):
    w0, keys, values = _layer(n=3)
    gen = torch.Generator().manual_seed(m)
    keep = torch.randn(m, 4, dtype=torch.float64, generator=gen)
    bias = torch.randn(5, dtype=torch.float64, generator=gen)
    stats = PreservedGram.of(keep, 4)
    assert stats.rows == m
    torch.testing.assert_close(stats.gram, keep.T @ keep)
    for b in (None, bias):  # with a bias every preserved value is W0 p + b (Diff-QuickFix's faithful mode)
        kept_values = keep @ w0.T + (0 if b is None else b)
        pairs = ridge_solve(w0, keys, values, 0.1, K_preserve=keep, V_preserve=kept_values, preserve_weight=weight)
        gram = ridge_solve(w0, keys, values, 0.1, preserved=stats, preserved_bias=b, preserve_weight=weight)
        torch.testing.assert_close(gram, pairs, rtol=1e-9, atol=1e-9)
    targets = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    shared = SharedInputRidge(keys, targets, 0.1, preserved=stats, preserve_weight=weight)
    stacked = SharedInputRidge(keys, targets, 0.1, K_preserve=keep, preserve_weight=weight)
    torch.testing.assert_close(shared.apply(w0), stacked.apply(w0), rtol=1e-9, atol=1e-9)


def test_preserved_statistics_errors():
    w0, keys, values = _layer(n=3)
    keep = torch.randn(2, 4, dtype=torch.float64)
    stats = PreservedGram.of(keep, 4)
    with pytest.raises(EditError, match="not both"):
        ridge_solve(w0, keys, values, 0.1, K_preserve=keep, V_preserve=keep @ w0.T, preserved=stats)
    with pytest.raises(EditError, match="not both"):
        SharedInputRidge(keys, keys, 0.1, K_preserve=keep, preserved=stats)
    with pytest.raises(ConfigError, match="form='primal'"):
        ridge_solve(w0, keys, values, 0.1, preserved=stats, form="dual")
    wide = PreservedGram.of(torch.randn(2, 6, dtype=torch.float64), 6)
    with pytest.raises(EditError, match="6-wide inputs, the layer reads 4-wide"):
        ridge_solve(w0, keys, values, 0.1, preserved=wide)
    with pytest.raises(EditError, match="NaN or Inf"):
        PreservedGram.of(torch.full((2, 4), float("nan")), 4)
