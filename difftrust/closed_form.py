"""Closed-form solution of the reduced problem for m <= 1 constraint.

The reduced problem (see :mod:`difftrust.layer`) in ``w`` (``x = P w``, ``P = H^-1 [g, a]``)::

    maximise K[0,:] w   s.t.  0.5 w'Kw <= delta,   c + K[1,:] w <= 0

with ``q = K00 = g'H^-1 g``, ``r = K01 = g'H^-1 a``, ``s = K11 = a'H^-1 a``, ``c = b``.
Lagrangian (maximisation form) ``g'x - lam (0.5 x'Hx - delta) - nu (c + a'x)`` gives
``x = H^-1 (g - nu a) / lam``, i.e. ``w = (1/lam, -nu/lam)``, and the dual

    D(lam, nu) = (q - 2 nu r + nu^2 s) / (2 lam) + lam delta - nu c,   minimised over lam > 0, nu >= 0.

Eliminating ``nu``: ``nu(lam) = max(0, (lam c + r) / s)``.

* On ``La = {lam > 0 : lam c + r > 0}``: ``D = 0.5 (A/lam + B lam) - r c / s``, ``A = q - r^2/s``,
  ``B = 2 delta - c^2/s``, unconstrained minimiser ``sqrt(A/B)``.
* On ``Lb = {lam > 0 : lam c + r <= 0}``: ``D = 0.5 (q/lam + 2 delta lam)``, minimiser
  ``sqrt(q / (2 delta))``.

Each minimiser is projected onto its own interval; EMPTY intervals are skipped (clamping onto
an empty interval returns its upper end, a negative ``lam``: one of the two defects of
published CPO code). The better of the two is kept. Note the sign of ``r``: the minimisation
form in the CPO paper's appendix has ``nu = (lam c - r)/s``; copying it into this form is the
other defect.

Special cases (decided before the dual):

* ``c < 0`` and ``c^2 >= 2 delta s``: the constraint cannot bind inside the trust region:
  ``w = (sqrt(2 delta / q), 0)``, case "trust-region".
* ``c > 0`` and ``c^2 >= 2 delta s``: infeasible (or a single feasible point): recovery
  ``w = (0, -sqrt(2 delta / s))``, case "recovery".
* ``a = 0`` (``s = 0``): ``c <= 0``: natural-gradient step; ``c > 0``: ``x = 0``, "recovery".
* ``g = 0`` (``q = 0``): ``c <= 0``: ``x = 0``; else the minimum-H-norm feasible point
  ``w = (0, -c/s)`` ("constrained") or, if none, the recovery step.
* ``g`` parallel to ``a`` with the constraint binding (``A = 0``, ``lam -> 0``): the limit
  ``w = (0, -c/s)``, i.e. ``x = -(c/s) H^-1 a``.

All formulas are plain torch operations on scalars, so the vector-Jacobian product with
respect to ``(K, b, delta)`` is obtained by autograd; the case decision itself uses detached
values (it is piecewise constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ReducedSolution", "solve_closed_form"]

#: A is treated as 0 (g parallel to a) below this fraction of q.
_PARALLEL_TOL = 1e-13


@dataclass
class ReducedSolution:
    """Solution of the reduced problem.

    Attributes:
        w: Coefficients, shape ``(m+1,)``; the step is ``x = P w``.
        lam: Trust-region multiplier (``nan`` where undefined: recovery, ``x = 0``).
        nu: Constraint multipliers, shape ``(m,)`` (``nan`` in recovery).
        case: ``"trust-region"``, ``"constrained"`` or ``"recovery"``.
    """

    w: Tensor
    lam: Tensor
    nu: Tensor
    case: str


def _nan(like: Tensor) -> Tensor:
    return torch.full((), float("nan"), dtype=like.dtype, device=like.device)


def solve_closed_form(K: Tensor, b: Tensor, delta: Tensor) -> ReducedSolution:
    """Solve the reduced problem in closed form for ``m = 0`` or ``m = 1``.

    Args:
        K: Gram matrix ``G'H^-1 G``, shape ``(m+1, m+1)``.
        b: Constraint offsets, shape ``(m,)``.
        delta: Trust-region size, scalar tensor (> 0).

    Returns:
        A :class:`ReducedSolution` whose tensors are differentiable functions of the inputs.
    """
    m = K.shape[0] - 1
    if m not in (0, 1):
        raise ValueError(f"the closed form handles m = 0 or 1 constraints, got m = {m}")
    K = 0.5 * (K + K.transpose(0, 1))
    zero = K.new_zeros(())
    q = K[0, 0]
    if m == 0:
        if float(q.detach()) <= 0.0:
            return ReducedSolution(K.new_zeros(1), _nan(q), K.new_zeros(0), "trust-region")
        lam = torch.sqrt(q / (2 * delta))
        return ReducedSolution(torch.sqrt(2 * delta / q).reshape(1), lam, K.new_zeros(0), "trust-region")

    r, s, c = K[0, 1], K[1, 1], b[0]
    qf, rf, sf, cf, df = (float(t.detach()) for t in (q, r, s, c, delta))

    def tr_step() -> ReducedSolution:
        if qf <= 0.0:
            return ReducedSolution(K.new_zeros(2), _nan(q), zero.reshape(1), "trust-region")
        lam = torch.sqrt(q / (2 * delta))
        return ReducedSolution(
            torch.stack([torch.sqrt(2 * delta / q), zero]), lam, zero.reshape(1), "trust-region"
        )

    def recovery() -> ReducedSolution:
        if sf <= 0.0:
            w = K.new_zeros(2)
        else:
            w = torch.stack([zero, -torch.sqrt(2 * delta / s)])
        return ReducedSolution(w, _nan(q), _nan(q).reshape(1), "recovery")

    def boundary_point() -> ReducedSolution:
        # lam -> 0 limit: the minimum-H-norm point on the constraint boundary, x = -(c/s) H^-1 a.
        nu = _nan(q) if qf <= 0.0 else torch.full_like(q, float("inf"))
        return ReducedSolution(torch.stack([zero, -c / s]), zero, nu.reshape(1), "constrained")

    if sf <= 0.0:  # a = 0: the constraint holds everywhere or nowhere
        return tr_step() if cf <= 0.0 else recovery()
    if cf < 0.0 and cf * cf >= 2 * df * sf:
        return tr_step()
    if cf > 0.0 and cf * cf >= 2 * df * sf:
        return recovery()
    if qf <= 0.0:  # g = 0 (then r = 0 too)
        return tr_step() if cf <= 0.0 else boundary_point()

    A = q - r * r / s
    B = 2 * delta - c * c / s  # > 0 here
    Af, Bf = max(float(A.detach()), 0.0), float(B.detach())
    if Af <= _PARALLEL_TOL * qf:
        Af = 0.0

    # Intervals La = {lam c + r > 0}, Lb = {lam c + r <= 0} over lam > 0, as (lo, hi) floats;
    # the break point -r/c is kept as a tensor for differentiable projection.
    inf = math.inf
    brk = -rf / cf if cf != 0.0 else None
    if cf > 0.0:
        La = (max(0.0, brk), inf)
        Lb = (0.0, brk) if brk > 0.0 else None
    elif cf < 0.0:
        La = (0.0, brk) if brk > 0.0 else None
        Lb = (max(0.0, brk), inf)
    else:
        La = (0.0, inf) if rf > 0.0 else None
        Lb = (0.0, inf) if rf <= 0.0 else None

    def project(opt: float, interval: tuple[float, float]) -> tuple[float, str]:
        lo, hi = interval
        if opt < lo:
            return lo, "lo"
        if opt > hi:
            return hi, "hi"
        return opt, "in"

    candidates = []
    if La is not None:
        opt = math.sqrt(Af / Bf)
        lam_f, where = project(opt, La)
        # lam_f = 0 only when A = 0 (g parallel to a): the infimum is the lam -> 0 limit.
        Da = (0.5 * (Af / lam_f + Bf * lam_f) if lam_f > 0 else 0.0) - rf * cf / sf
        candidates.append((Da, "a", where))
    if Lb is not None:
        opt = math.sqrt(qf / (2 * df))
        lam_f, where = project(opt, Lb)
        Db = 0.5 * (qf / lam_f + 2 * df * lam_f)
        candidates.append((Db, "b", where))
    _, which, where = min(candidates, key=lambda t: t[0])

    if which == "b":
        if where == "in":
            return tr_step()
        lam = -r / c  # projected onto the break point: nu = 0 there
        w = torch.stack([1 / lam, zero])
        return ReducedSolution(w, lam, zero.reshape(1), "trust-region")
    # which == "a"
    if where == "in":
        if Af == 0.0:
            return boundary_point()
        lam = torch.sqrt(A / B)
    else:  # projected onto the break point -r/c (the other end, 0 or inf, is never optimal)
        lam = -r / c
    nu = torch.clamp((lam * c + r) / s, min=0.0)
    w = torch.stack([1 / lam, -c / s - r / (s * lam)]) if where == "in" else torch.stack([1 / lam, -nu / lam])
    return ReducedSolution(w, lam, nu.reshape(1), "constrained")
