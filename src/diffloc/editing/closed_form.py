"""The one ridge solve every closed-form editor uses.

For a linear map with weight ``W0`` (``d_out × d_in``), key vectors ``k_i`` and value vectors ``v_i``::

    W* = argmin_W  Σ_i ‖W k_i − v_i‖²  +  ω Σ_j ‖W p_j − q_j‖²  +  λ ‖W − W0‖_F²

where ``(p_j, q_j)`` are optional preservation pairs and ω their weight (UCE's preservation scale; 1 by
default; ω > 1 scales their rows by √ω). Setting the gradient to zero gives the normal equations::

    W* (λ I + Kᵀ K + Pᵀ P) = λ W0 + Vᵀ K + Qᵀ P

with keys stacked as **rows** (``K`` is ``n × d_in``, ``V`` is ``n × d_out``). Preservation pairs are simply
more rows of ``K`` and ``V``. The system matrix is symmetric positive definite for λ > 0, so ``W*ᵀ`` is the
solution of one ``torch.linalg.solve`` (no explicit inverse), done in float64 and cast back to ``W0``'s dtype.

Two equivalent forms are solved, whichever is smaller:

* primal (``n >= d_in``): ``(λ I_d + Kᵀ K) W*ᵀ = (λ W0 + Vᵀ K)ᵀ`` — a ``d_in × d_in`` system;
* dual (``n < d_in``): writing ``λ W0 = W0 (λ I + KᵀK) − W0 KᵀK`` and using ``K (λ I_d + KᵀK)⁻¹ =
  (λ I_n + K Kᵀ)⁻¹ K`` gives ``W* = W0 + (V − K W0ᵀ)ᵀ (λ I_n + K Kᵀ)⁻¹ K`` — an ``n × n`` system. LocoEdit
  fits a handful of keys into 768- to 2048-wide layers, so this is what makes it fast.

Layers that read the same inputs (every cross-attention ``to_k``/``to_v`` reads the same text context) and
whose values are their own weight applied to target inputs (``v_i = W0 t_i``; preserved inputs ``q_j = W0
p_j``) share the whole solve: the normal equations become ``W* S = W0 (S + (T − K)ᵀ K)`` with ``S = λ I + KᵀK +
ω PᵀP``, so ``W* = W0 (I + (T − K)ᵀ E)`` with ``E = K S⁻¹`` — one factorization for all of them
(:class:`SharedInputRidge`; LocoEdit edits up to 140 projections with it).

Preservation pairs that map inputs to the layer's own outputs (``q_j = W0 p_j``, plus a fixed bias ``b`` in
Diff-QuickFix's faithful mode) enter the normal equations only through ``C = PᵀP`` (and the row sum ``s = Pᵀ1``
for the bias): ``W* (λ I + KᵀK + ω C) = λ W0 + VᵀK + ω (W0 C + b sᵀ)``. :class:`PreservedGram` holds ``C`` and
``s``; computed once per model and preservation set (MEMIT's precomputed key statistics, Meng et al. 2023), it
spares every later edit the text-encoder passes over the preserved prompts, which are most of the rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffloc.errors import ConfigError, EditError
from diffloc.validate import check_positive


def _rows(label: str, x: torch.Tensor, width: int) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != width:
        raise EditError(f"{label} must be (n, {width}) with one vector per row, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise EditError(f"{label} holds NaN or Inf values; the model's activations are not finite")
    return x.detach().to(device="cpu", dtype=torch.float64)


def _paired_rows(
    K: torch.Tensor, d_in: int, label: str, X: torch.Tensor, width: int, noun: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and their partner rows (values or target inputs), checked: one partner per key, at least one."""
    keys, partners = _rows("K", K, d_in), _rows(label, X, width)
    if keys.shape[0] != partners.shape[0]:
        raise EditError(f"{keys.shape[0]} keys but {partners.shape[0]} {noun}s; give one {noun} per key")
    if keys.shape[0] == 0:
        raise EditError("no key/value pairs to fit; the edit needs at least one prompt")
    return keys, partners


def _stack_preserved(
    keys: torch.Tensor, K_preserve: torch.Tensor | None, preserve_weight: float, width: int
) -> torch.Tensor:
    check_positive("preserve_weight", preserve_weight)
    if K_preserve is None or K_preserve.numel() == 0:
        return keys
    return torch.cat([keys, math.sqrt(preserve_weight) * _rows("K_preserve", K_preserve, width)])


@dataclass(frozen=True)
class PreservedGram:
    """Sufficient statistics of preservation inputs ``P`` (``m × d_in``) that map to the layer's own outputs.

    Attributes:
        gram: ``PᵀP``, float64 ``(d_in, d_in)``.
        row_sum: ``Pᵀ1``, float64 ``(d_in,)`` (only the faithful-bias case of Diff-QuickFix reads it).
        rows: ``m``, the number of preserved input vectors.
    """

    gram: torch.Tensor
    row_sum: torch.Tensor
    rows: int

    @classmethod
    def of(cls, P: torch.Tensor, width: int) -> PreservedGram:
        """The statistics of the rows of ``P`` (checked: ``(m, width)``, finite)."""
        rows = _rows("K_preserve", P, width)
        return cls(gram=rows.T @ rows, row_sum=rows.sum(0), rows=int(rows.shape[0]))

    def check(self, width: int) -> None:
        """Raise :class:`EditError` unless the statistics are for ``width``-wide inputs."""
        if tuple(self.gram.shape) != (width, width):
            raise EditError(
                f"preserved statistics are for {self.gram.shape[-1]}-wide inputs, the layer reads {width}-wide ones"
            )


class SharedInputRidge:
    """The ridge solve shared by every layer that maps the same keys to its own outputs at target inputs.

    Solves ``W* = argmin Σ‖W k_i − W0 t_i‖² + ω Σ‖W p_j − W0 p_j‖² + λ‖W − W0‖²`` for any number of weights
    ``W0`` with ``d_in`` columns, factorizing once (see the module docstring). :meth:`apply` gives what
    :func:`ridge_solve` gives with ``V = T W0ᵀ`` and ``V_preserve = P W0ᵀ``, up to float64 rounding.

    Args:
        K: keys ``(n, d_in)``; T: target inputs ``(n, d_in)``; lam: λ > 0;
        K_preserve: optional preserved inputs ``(m, d_in)``; preserve_weight: ω > 0;
        preserved: the statistics of preserved inputs instead of the inputs themselves (not both).

    Raises:
        ConfigError: λ or ω is not a finite number > 0.
        EditError: shapes disagree, no keys, or inputs are not finite.
    """

    def __init__(
        self,
        K: torch.Tensor,
        T: torch.Tensor,
        lam: float,
        *,
        K_preserve: torch.Tensor | None = None,
        preserve_weight: float = 1.0,
        preserved: PreservedGram | None = None,
    ) -> None:
        check_positive("ridge strength lambda", lam)
        if K.dim() != 2:
            raise EditError(f"K must be (n, d_in) with one key per row, got shape {tuple(K.shape)}")
        width = K.shape[1]
        keys, targets = _paired_rows(K, width, "T", T, width, "target input")
        if preserved is not None and K_preserve is not None:
            raise EditError("give K_preserve or preserved statistics, not both")
        every = _stack_preserved(keys, K_preserve, preserve_weight, width)  # (N, d_in)
        n, total = keys.shape[0], every.shape[0]
        if preserved is None and total < width:  # dual: E = (G⁻¹ [K; √ω P])[:n] with G = λ I_N + every everyᵀ
            gram = lam * torch.eye(total, dtype=torch.float64) + every @ every.T  # (N, N)
            E = torch.linalg.solve(gram, every)[:n]  # (n, d_in)
        else:  # primal: E = K S⁻¹, i.e. S Eᵀ = Kᵀ with S symmetric
            system = lam * torch.eye(width, dtype=torch.float64) + every.T @ every  # (d_in, d_in)
            if preserved is not None:
                preserved.check(width)
                system = system + preserve_weight * preserved.gram
            E = torch.linalg.solve(system, keys.T).T  # (n, d_in)
        if not torch.isfinite(E).all():
            raise EditError("the ridge solve produced non-finite weights; increase lambda")
        shift = (targets - keys).T  # (d_in, n): W* = W0 (I + (T − K)ᵀ E)
        # Per weight, W0 (T − K)ᵀ E costs 2·d_out·d_in·n factored and d_out·d_in² with (T − K)ᵀ E formed once.
        self.factors = (shift, E) if 2 * n < width else (shift @ E,)
        self.width = width

    def apply(self, W0: torch.Tensor) -> torch.Tensor:
        """``W*`` for one weight ``W0`` ``(d_out, d_in)``, with ``W0``'s dtype and device."""
        return self.apply_all([W0])[0]

    def apply_all(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``W*`` for each weight ``(d_out_i, d_in)``, in order, each with its own dtype and device.

        The weights' rows are stacked so the factors are applied in one product (LocoEdit edits up to 140
        projections; one product instead of one per weight).
        """
        for W0 in weights:
            if W0.dim() != 2 or W0.shape[1] != self.width:
                raise EditError(f"W0 must be (d_out, {self.width}), got shape {tuple(W0.shape)}")
        if not weights:
            return []
        kinds = {(W0.device, W0.dtype) for W0 in weights}
        if len(kinds) > 1:  # mixed devices or dtypes: each weight alone
            return [self.apply_all([W0])[0] for W0 in weights]
        w0 = torch.cat([W0.detach() for W0 in weights]).to(device="cpu", dtype=torch.float64)
        update = w0
        for factor in self.factors:
            update = update @ factor
        (device, dtype), sizes = kinds.pop(), [W0.shape[0] for W0 in weights]
        return [new.contiguous() for new in (w0 + update).to(device=device, dtype=dtype).split(sizes)]


def ridge_solve(
    W0: torch.Tensor,
    K: torch.Tensor,
    V: torch.Tensor,
    lam: float,
    *,
    K_preserve: torch.Tensor | None = None,
    V_preserve: torch.Tensor | None = None,
    form: str = "auto",
    preserve_weight: float = 1.0,
    preserved: PreservedGram | None = None,
    preserved_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Closed-form ridge edit of a linear layer's weight.

    Args:
        W0: current weight ``(d_out, d_in)``.
        K: keys ``(n, d_in)``, one per row.
        V: values ``(n, d_out)``, one per row (what ``W k_i`` should become).
        lam: ridge strength λ > 0 pulling the result towards ``W0``.
        K_preserve, V_preserve: optional preservation keys ``(m, d_in)`` and values ``(m, d_out)``
            (usually ``V_preserve = K_preserve @ W0.T``: keep these inputs' outputs).
        form: ``"auto"`` (the smaller system), ``"primal"`` or ``"dual"``; all give the same ``W*``.
        preserve_weight: ω > 0, the weight of the preservation pairs against the edit pairs.
        preserved: statistics of preserved inputs ``p`` whose values are ``W0 p`` (``+ preserved_bias``),
            instead of ``K_preserve``/``V_preserve`` (not both); always solved in the primal form.
        preserved_bias: ``(d_out,)`` added to every preserved value (Diff-QuickFix's faithful mode).

    Returns:
        ``W*`` with ``W0``'s shape, dtype and device.

    Raises:
        ConfigError: λ is not a finite number > 0.
        EditError: shapes disagree, or inputs are not finite.

    Example:
        >>> W = ridge_solve(W0, K, V, 0.01)   # W @ K[i] ≈ V[i] for every i, W ≈ W0 elsewhere
    """
    check_positive("ridge strength lambda", lam)
    if W0.dim() != 2:
        raise EditError(f"W0 must be a 2-D weight (d_out, d_in), got shape {tuple(W0.shape)}")
    d_out, d_in = W0.shape
    keys, values = _paired_rows(K, d_in, "V", V, d_out, "value")
    if (K_preserve is None) != (V_preserve is None):
        raise EditError("give both K_preserve and V_preserve, or neither")
    if preserved is not None and K_preserve is not None:
        raise EditError("give K_preserve/V_preserve or preserved statistics, not both")
    check_positive("preserve_weight", preserve_weight)
    if form not in ("auto", "primal", "dual"):
        raise ConfigError(f"form must be 'auto', 'primal' or 'dual', got {form!r}")
    if K_preserve is not None and V_preserve is not None:
        vp = _rows("V_preserve", V_preserve, d_out)
        if K_preserve.shape[0] != vp.shape[0]:
            raise EditError(f"{K_preserve.shape[0]} preservation keys but {vp.shape[0]} values")
        keys = _stack_preserved(keys, K_preserve, preserve_weight, d_in)
        values = torch.cat([values, math.sqrt(preserve_weight) * vp])
    w0 = W0.detach().to(device="cpu", dtype=torch.float64)
    n = keys.shape[0]
    if preserved is not None:
        preserved.check(d_in)
        if form == "dual":
            raise ConfigError("preserved statistics are d_in x d_in; solve them with form='primal' or 'auto'")
        form = "primal"
    if form == "dual" or (form == "auto" and n < d_in):
        gram = lam * torch.eye(n, dtype=torch.float64) + keys @ keys.T  # (n, n)
        residual = values - keys @ w0.T  # (n, d_out): what the edit must add at each key
        coeff = torch.linalg.solve(gram, residual)  # (n, d_out)
        if not torch.isfinite(coeff).all():  # W0 is finite (checked at load), so this decides W*'s finiteness
            raise EditError("the ridge solve produced non-finite weights; increase lambda")
        solution = w0 + coeff.T @ keys  # (d_out, d_in)
    else:
        system = lam * torch.eye(d_in, dtype=torch.float64) + keys.T @ keys  # (d_in, d_in)
        rhs = lam * w0 + values.T @ keys  # (d_out, d_in)
        if preserved is not None:  # ω Σ_j (W0 p_j + b) p_jᵀ = ω (W0 C + b sᵀ)
            system = system + preserve_weight * preserved.gram
            rhs = rhs + preserve_weight * (w0 @ preserved.gram)
            if preserved_bias is not None:
                bias = preserved_bias.detach().to(device="cpu", dtype=torch.float64).reshape(d_out, 1)
                rhs = rhs + preserve_weight * bias @ preserved.row_sum.reshape(1, d_in)
        # W* S = R with S symmetric  <=>  S W*ᵀ = Rᵀ
        solution = torch.linalg.solve(system, rhs.T).T  # (d_out, d_in)
        if not torch.isfinite(solution).all():
            raise EditError("the ridge solve produced non-finite weights; increase lambda")
    return solution.to(device=W0.device, dtype=W0.dtype).contiguous()
