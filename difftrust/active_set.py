"""Exact solver of the reduced problem for small ``m``: active-set enumeration, batched, in torch.

The reduced problem (see :mod:`difftrust.layer`; ``w`` in R^{m+1}, ``K = G'H^-1 G`` PSD)::

    maximise K[0,:] w   s.t.  0.5 w'Kw <= delta,   b + K[1:,:] w <= 0                 (P)

and, when (P) is infeasible, the recovery problem (least worst violation)::

    minimise t          s.t.  0.5 w'Kw <= delta,   b + K[1:,:] w <= t 1               (R)

**Normalisation** (exact, scale-invariant). With ``d_i = K_ii^(-1/2)`` (1 where ``K_ii = 0``),
``s = sqrt(2 delta)``, ``Kn = D K D`` (unit diagonal), ``beta = b d[1:] / s`` and ``w = s D v``,
(P) becomes ``max (Kn v)_0  s.t.  v'Kn v <= 1,  beta + Kn[1:,:] v <= 0`` and (R)
``min t  s.t.  v'Kn v <= 1,  beta + Kn[1:,:] v <= t omega`` with ``omega = d[1:] / max d[1:]``.
Scaling ``g``, a row ``(a_j, b_j)``, or ``(H, delta)`` by a positive number leaves
``(Kn, beta)`` unchanged, so every tolerance below is in the same units for every input.

**Candidates, one per subset S of the constraints** (``k_S = Kn[S, 0]``, ``K_SS = Kn[S, S]``,
``alpha = K_SS^-1 k_S``, ``gamma = K_SS^-1 beta_S``, ``eta = K_SS^-1 omega_S``):

* (P), trust region active: ``x = H^-1 (g - A_S' nu) / lam`` i.e. ``v = (e_0 - E_S nu) / lam``.
  The active rows give ``nu = alpha + lam gamma`` and the trust region
  ``v'Kn v = (1 - k_S' alpha) / lam^2 + gamma' beta_S = 1``, so
  ``lam = sqrt(Aq / (1 - Bq))`` with the Schur complement ``Aq = 1 - k_S' alpha`` and
  ``Bq = beta_S' gamma`` (``m = 1``: the closed form's ``sqrt(A/B)``).
* (R), ``S`` non-empty: ``v = -(0, E_S mu) / lam`` with ``omega' mu = 1``; the active rows and the
  trust region give ``(beta_S - t omega_S)' K_SS^-1 (beta_S - t omega_S) = 1``, a quadratic in
  ``t`` whose smaller root is the optimum: ``t = (Bq - 1) / (p + sqrt(p^2 - r (Bq - 1)))`` with
  ``p = omega_S' gamma``, ``r = omega_S' eta``; ``lam = 1 / sqrt(p^2 - r (Bq - 1))``,
  ``mu = lam (gamma - t eta)``.

All ``2^m`` subsets are evaluated at once (one batched Cholesky factorisation of the masked
``K_SS``), and a candidate is **certified** when it satisfies every KKT condition of its problem
to ``KKT_TOL`` (normalised units): primal feasibility of the other rows, non-negative
multipliers, the active equations and the trust region as computed, and a ``K_SS`` whose
smallest Cholesky pivot is at least ``PIVOT_TOL``. A KKT point of a convex problem is optimal,
so a certified candidate is the optimum whatever the enumeration found elsewhere. (P) is used
when one of its candidates is certified; else a certified (R) candidate with ``t > 0`` decides
infeasibility; else the problem is returned as *not certified* (degenerate geometry: ``g = 0``,
``g`` in the span of active rows, a zero row with ``b > 0``, near-singular ``K_SS``) and the
caller falls back to another solver.

**Derivatives** (implicit differentiation of the active KKT system, closed form). The unknowns
``z = (v, lam, t, nu)`` (size ``2m+3``) of the certified candidate solve ``F(z; Kn, beta,
delta_n) = 0`` with ``delta_n = delta / s^2`` (``= 1/2``)::

    lam v - [P] e_0 + E nu = 0                        (m+1 rows, stationarity)
    0.5 v'Kn v - delta_n = 0                          (trust region)
    [P] t = 0,   [R] 1 - omega' nu_S = 0
    beta_j + Kn[1+j,:] v - [R] omega_j t = 0  (j in S),   nu_j = 0  (j not in S)

With ``J = dF/dz`` and ``zeta = -J^-T (vbar, 0, 0, 0)``::

    Knbar = 0.5 zeta_tr v v' + sum_{j in S} zeta_j e_{1+j} v',   betabar_j = zeta_j,
    delta_nbar = -zeta_tr

and, holding ``D`` and ``s`` fixed (the normalisation is an exact identity for any fixed
positive ``D, s``), ``vbar = s D wbar``, ``Kbar = sym(D Knbar D)``, ``bbar = betabar d[1:] / s``,
``deltabar = delta_nbar / s^2``. ``J^-1`` is formed in the forward pass when a gradient is
needed (its singularity also fails certification), so the backward is one small batched matmul.
The CPU variants (numpy, Python floats) solve ``J' zeta`` in closed form for (P) solutions: with
``t = 0`` and ``nu_j = 0`` off ``S``, ``J' = [[lam I, Kn C], [C', 0]]`` with ``C = [v, E_S]``, so
``(zeta_tr, zeta_S) = (C'Kn C)^-1 C' (-vbar)``, a ``1 + |S|`` system (its Schur complement is the
room ``1 - Bq > 0`` the candidate was required to leave); recovery solutions use the whole ``J``.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ActiveSetSolution",
    "active_set_vjp",
    "active_set_vjp_numpy",
    "solve_active_set",
    "solve_active_set_numpy",
    "solve_active_set_python",
    "active_set_vjp_python",
]

#: KKT residual (normalised units) below which a candidate is accepted as the optimum.
KKT_TOL = 1e-9
#: Smallest accepted Cholesky pivot of K_SS (unit diagonal): rows this close to dependent are left
#: to the fallback solver.
PIVOT_TOL = 1e-10
#: Schur complement of g against the active rows (sin^2 of their angle) below which g counts as
#: lying in their span (the trust region then need not bind: left to the fallback).
AQ_TOL = 1e-10
#: 1 - Bq (room left in the trust region by the active face) below which the face is tangent.
BQ_TOL = 1e-12

#: Case codes of :class:`ActiveSetSolution`.
NOT_CERTIFIED, TRUST_REGION, CONSTRAINED, RECOVERY = -1, 0, 1, 2
CASE_NAMES = {TRUST_REGION: "trust-region", CONSTRAINED: "constrained", RECOVERY: "recovery"}

_SUBSETS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


@dataclass
class ActiveSetSolution:
    """Batched solution of the reduced problem (no autograd graph; see :func:`active_set_vjp`).

    Attributes:
        w: Coefficients ``(B, m+1)``; the step is ``x = P w``.
        lam: Trust-region multiplier ``(B,)`` in ``x = H^-1 (g - A'nu) / lam``; ``nan`` in recovery.
        nu: Constraint multipliers ``(B, m)``; ``nan`` in recovery.
        code: ``(B,)`` int64: ``0`` trust-region, ``1`` constrained, ``2`` recovery, ``-1`` not
            certified (``w`` is then meaningless: use a fallback solver).
        violation: ``max_j (b_j + K[j,:] w)`` per problem, ``(B,)`` (``-inf`` for ``m = 0``).
    """

    w: Tensor
    lam: Tensor
    nu: Tensor
    code: Tensor
    violation: Tensor
    # normalised quantities kept for the backward pass
    v: Tensor | None = None
    d: Tensor | None = None
    s: Tensor | None = None
    active: Tensor | None = None
    jinv: Tensor | None = None


def _subsets(m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """All ``2^m`` subsets of ``{0..m-1}`` as a ``(2^m, m)`` 0/1 matrix (row 0: the empty set)."""
    key = (m, dtype, device)
    if key not in _SUBSETS:
        idx = torch.arange(2**m)
        bits = (idx.unsqueeze(1) >> torch.arange(m)) & 1
        _SUBSETS[key] = bits.to(dtype=dtype, device=device)
    return _SUBSETS[key]


def _rowmax(x: Tensor) -> Tensor:
    """Max over the last dimension, 0 for an empty one (x >= 0 by construction)."""
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[:-1])
    return x.amax(-1)


def _kkt_matrix(Kn: Tensor, v: Tensor, lam: Tensor, S: Tensor, rec: Tensor, omega: Tensor) -> Tensor:
    """``J = dF/dz`` of the module docstring, ``(B, 2m+3, 2m+3)``, for the chosen candidates."""
    B, m1 = v.shape
    m = m1 - 1
    N = 2 * m + 3
    J = Kn.new_zeros(B, N, N)
    eye1 = torch.eye(m1, dtype=Kn.dtype, device=Kn.device)
    J[:, :m1, :m1] = lam[:, None, None] * eye1
    J[:, :m1, m1] = v
    J[:, 1:m1, m + 3 :] = eye1[1:, 1:]
    J[:, m1, :m1] = (Kn @ v.unsqueeze(-1)).squeeze(-1)
    recf = rec.to(Kn.dtype)
    J[:, m + 2, m + 2] = 1.0 - recf
    J[:, m + 2, m + 3 :] = -(recf.unsqueeze(-1) * omega * S)
    J[:, m + 3 :, :m1] = S.unsqueeze(-1) * Kn[:, 1:, :]
    J[:, m + 3 :, m + 2] = -(recf.unsqueeze(-1) * omega * S)
    J[:, m + 3 :, m + 3 :] = torch.diag_embed(1.0 - S)
    return J


def solve_active_set(K: Tensor, b: Tensor, delta: Tensor, *, with_jacobian: bool = True) -> ActiveSetSolution:
    """Solve a batch of reduced problems exactly by active-set enumeration (see the module docstring).

    Args:
        K: Gram matrices ``(B, m+1, m+1)``, symmetric PSD (symmetrised here).
        b: Offsets ``(B, m)``.
        delta: Trust-region sizes ``(B,)`` or a scalar, > 0.
        with_jacobian: Form the inverse KKT Jacobian for :func:`active_set_vjp` (a singular one
            fails certification).

    Returns:
        An :class:`ActiveSetSolution`; problems with ``code == -1`` were not certified.
    """
    B, m1, _ = K.shape
    m = m1 - 1
    dt, dev = K.dtype, K.device
    K = 0.5 * (K + K.transpose(1, 2))
    delta = delta.to(dt).expand(B) if delta.dim() == 0 else delta.to(dt)
    diag = K.diagonal(dim1=1, dim2=2)
    pos = diag > 0
    d = torch.where(pos, diag, 1.0).rsqrt()
    s = torch.sqrt(2 * delta)
    Kn = K * d.unsqueeze(2) * d.unsqueeze(1)
    beta = b * d[:, 1:] / s.unsqueeze(1)
    omega = d[:, 1:] / d[:, 1:].amax(1, keepdim=True) if m else d[:, 1:]

    S = _subsets(m, dt, dev)  # (C, m)
    C = S.shape[0]
    K11 = Kn[:, 1:, 1:].unsqueeze(1)
    M = K11 * (S.unsqueeze(2) * S.unsqueeze(1)) + torch.diag_embed(1.0 - S)  # (B, C, m, m)
    kc, bS, oS = Kn[:, 1:, 0].unsqueeze(1) * S, beta.unsqueeze(1) * S, omega.unsqueeze(1) * S
    L, info = torch.linalg.cholesky_ex(M)
    X = torch.cholesky_solve(torch.stack([kc, bS, oS], -1), L)  # (B, C, m, 3)
    alpha, gamma, eta = X.unbind(-1)
    piv_ok = info == 0
    if m:
        piv_ok = piv_ok & (L.diagonal(dim1=2, dim2=3).square().amin(-1) >= PIVOT_TOL)
    Aq = Kn[:, 0, 0].unsqueeze(1) - (kc * alpha).sum(-1)  # (B, C)
    Bq = (bS * gamma).sum(-1)
    room = 1.0 - Bq
    Kn_c = Kn.unsqueeze(1)
    beta_c = beta.unsqueeze(1)
    bscale = torch.clamp(beta_c.abs(), min=1.0)
    ones = Kn.new_ones(B, C, 1)

    # (P): trust region active
    okA = piv_ok & (Aq > AQ_TOL) & (room > BQ_TOL)
    lamA = torch.sqrt(torch.clamp(Aq, min=AQ_TOL) / torch.clamp(room, min=BQ_TOL))
    nuA = (alpha + lamA.unsqueeze(-1) * gamma) * S
    vA = torch.cat([ones, -nuA], -1) / lamA.unsqueeze(-1)
    KvA = (Kn_c @ vA.unsqueeze(-1)).squeeze(-1)
    rowA = (beta_c + KvA[..., 1:]) / bscale
    nscale = torch.clamp(_rowmax(nuA.abs()), min=1.0).unsqueeze(-1)
    violA = torch.maximum(
        _rowmax(torch.maximum((1 - S) * rowA.clamp(min=0), S * (rowA.abs() + (-nuA / nscale).clamp(min=0)))),
        ((vA * KvA).sum(-1) - 1).abs(),
    )
    violA = torch.where(okA & torch.isfinite(violA), violA, math.inf)

    # (R): recovery (least worst violation)
    p = (oS * gamma).sum(-1)
    r = (oS * eta).sum(-1)
    disc = p * p - r * (Bq - 1.0)
    okR = piv_ok & (S.sum(-1) > 0) & (r > 0) & (disc > 0)
    sq = torch.sqrt(torch.clamp(disc, min=1e-300))
    tR = torch.where(p >= 0, (Bq - 1.0) / (p + sq), (p - sq) / torch.where(r > 0, r, 1.0))
    lamR = 1.0 / sq
    uR = (gamma - tR.unsqueeze(-1) * eta) * S
    muR = lamR.unsqueeze(-1) * uR
    vR = torch.cat([torch.zeros_like(ones), -uR], -1)
    KvR = (Kn_c @ vR.unsqueeze(-1)).squeeze(-1)
    rowR = (beta_c + KvR[..., 1:] - tR.unsqueeze(-1) * omega.unsqueeze(1)) / bscale
    mscale = torch.clamp(_rowmax(muR.abs()), min=1.0).unsqueeze(-1)
    violR = torch.maximum(
        _rowmax(torch.maximum((1 - S) * rowR.clamp(min=0), S * (rowR.abs() + (-muR / mscale).clamp(min=0)))),
        ((vR * KvR).sum(-1) - 1).abs(),
    )
    violR = torch.where(okR & torch.isfinite(violR), violR, math.inf)

    bestA, iA = violA.min(1)
    bestR, iR = violR.min(1)
    ar = torch.arange(B, device=dev)
    certA = bestA <= KKT_TOL
    certR = (~certA) & (bestR <= KKT_TOL) & (tR[ar, iR] > 0)
    rec = certR
    idx = torch.where(rec, iR, iA)
    v = torch.where(rec.unsqueeze(1), vR[ar, iR], vA[ar, iA])
    lam_n = torch.where(rec, lamR[ar, iR], lamA[ar, iA])
    nu_n = torch.where(rec.unsqueeze(1), muR[ar, iR], nuA[ar, iA])
    Ssel = S[idx]
    code = torch.where(
        certA,
        torch.where(Ssel.sum(1) > 0, CONSTRAINED, TRUST_REGION),
        torch.where(certR, RECOVERY, NOT_CERTIFIED),
    )

    jinv = None
    if with_jacobian:
        J = _kkt_matrix(Kn, v, lam_n, Ssel, rec, omega)
        jinv, jinfo = torch.linalg.inv_ex(J)
        bad = (jinfo != 0) | ~torch.isfinite(jinv).flatten(1).all(1)
        code = torch.where(bad, NOT_CERTIFIED, code)

    w = s.unsqueeze(1) * d * v
    nan = torch.full_like(lam_n, math.nan)
    d0 = torch.where(pos[:, 0], d[:, 0], math.nan)
    lam = torch.where(rec, nan, lam_n / (s * d0))
    nu = torch.where(rec.unsqueeze(1), math.nan, nu_n * d[:, 1:] / d0.unsqueeze(1))
    Kw = (K[:, 1:, :] @ w.unsqueeze(-1)).squeeze(-1)
    violation = (b + Kw).amax(1) if m else torch.full_like(lam, -math.inf)
    return ActiveSetSolution(w, lam, nu, code, violation, v=v, d=d, s=s, active=Ssel, jinv=jinv)


def active_set_vjp(sol: ActiveSetSolution, wbar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Vector-Jacobian product of :func:`solve_active_set` at ``wbar`` ``(B, m+1)``.

    Returns ``(Kbar (B, m+1, m+1) symmetric, bbar (B, m), deltabar (B,))`` by the formulas of the
    module docstring (implicit differentiation of the active KKT system). Rows that were not
    certified get meaningless values: the caller replaces them.
    """
    if sol.jinv is None:
        raise ValueError("the solution was computed with with_jacobian=False; no derivative is available")
    v, d, s = sol.v, sol.d, sol.s
    B, m1 = v.shape
    m = m1 - 1
    vbar = s.unsqueeze(1) * d * wbar
    zeta = -(sol.jinv[:, :m1, :].transpose(1, 2) @ vbar.unsqueeze(-1)).squeeze(-1)  # (B, 2m+3)
    z_tr = zeta[:, m1]
    z_con = zeta[:, m + 3 :] * sol.active
    Knbar = 0.5 * z_tr[:, None, None] * (v.unsqueeze(2) * v.unsqueeze(1))
    Knbar[:, 1:, :] += z_con.unsqueeze(2) * v.unsqueeze(1)
    Kbar = Knbar * d.unsqueeze(2) * d.unsqueeze(1)
    Kbar = 0.5 * (Kbar + Kbar.transpose(1, 2))
    bbar = z_con * d[:, 1:] / s.unsqueeze(1)
    deltabar = -z_tr / (s * s)
    return Kbar, bbar, deltabar


# ---------------------------------------------------------------------------------------------
# the same enumeration in numpy (float64): CPU tensors, where numpy's per-operation overhead on
# arrays of a few entries is several times lower than eager torch's


def _subsets_np(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The subsets ``S (2^m, m)`` of :func:`_subsets`, the masks ``S_i S_j`` of ``K_SS`` in ``(m, m)`` and
    the identity rows of the inactive constraints (cached per m)."""
    if m not in _SUBSETS_NP:
        idx = np.arange(2**m)
        S = ((idx[:, None] >> np.arange(m)) & 1).astype(np.float64)
        _SUBSETS_NP[m] = (S, S[:, :, None] * S[:, None, :], np.eye(m) * (1.0 - S)[:, :, None])
    return _SUBSETS_NP[m]


_SUBSETS_NP: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _violation_np(
    row: np.ndarray, mult: np.ndarray, S: np.ndarray, v: np.ndarray, Kv: np.ndarray, ok: np.ndarray
) -> np.ndarray:
    """KKT violation of every candidate: inactive rows feasible, active rows tight with
    multipliers >= 0 (relative to their largest), the trust region tight (``v'Kv = 1``); ``inf``
    where the candidate is not ``ok`` or not finite."""
    scale = np.maximum(_rowmax_np(np.abs(mult)), 1.0)[..., None]
    viol = np.maximum(
        _rowmax_np(
            np.maximum((1 - S) * np.maximum(row, 0), S * (np.abs(row) + np.maximum(-mult / scale, 0)))
        ),
        np.abs((v * Kv).sum(-1) - 1),
    )
    return np.where(ok & np.isfinite(viol), viol, np.inf)


def _rowmax_np(x: np.ndarray) -> np.ndarray:
    return x.max(-1) if x.shape[-1] else np.zeros(x.shape[:-1])


def _kkt_matrix_np(
    Kn: np.ndarray, v: np.ndarray, lam: np.ndarray, S: np.ndarray, rec: np.ndarray, omega: np.ndarray
) -> np.ndarray:
    """:func:`_kkt_matrix` in numpy (its constant entries from a cached template; diagonals by strided
    slices of the flattened matrices, no fancy indexing)."""
    B, m1 = v.shape
    m = m1 - 1
    N = 2 * m + 3
    if N not in _KKT_TEMPLATES:
        T0 = np.zeros((N, N))
        T0[np.arange(1, m1), m + 2 + np.arange(1, m1)] = 1.0
        _KKT_TEMPLATES[N] = T0
    J = np.repeat(_KKT_TEMPLATES[N][None], B, 0)
    flat = J.reshape(B, N * N)
    flat[:, 0 : m1 * (N + 1) : N + 1] = lam[:, None]
    J[:, :m1, m1] = v
    J[:, m1, :m1] = (v[:, None, :] @ Kn.transpose(0, 2, 1))[:, 0]
    recf = rec.astype(np.float64)
    J[:, m + 2, m + 2] = 1.0 - recf
    wS = recf[:, None] * omega * S
    J[:, m + 2, m + 3 :] = -wS
    J[:, m + 3 :, :m1] = S[:, :, None] * Kn[:, 1:, :]
    J[:, m + 3 :, m + 2] = -wS
    flat[:, (m + 3) * (N + 1) :: N + 1] = 1.0 - S
    return J


_KKT_TEMPLATES: dict[int, np.ndarray] = {}


def _chol_solve_np(M: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest Cholesky pivot ``(...,)`` of the small matrices ``M (..., k, k)`` and ``M^-1 R`` for
    ``R (..., k, r)``, by elementwise operations over the leading dimensions (numpy's batched LAPACK
    calls cost microseconds per matrix; these cost microseconds per entry of ``M``, for all at once).
    Where a pivot is not positive the factor continues with pivot 1: the solution there is finite and
    meaningless, and the caller rejects it by the returned pivot."""
    k = M.shape[-1]
    if k == 1:
        piv = M[..., 0, 0]
        return piv, R / np.where(piv > 0, piv, 1.0)[..., None, None]
    if k == 2:  # pivots a and d - c^2 / a; the solution by the adjugate over a d - c^2 = a * pivot
        a, c, dd = M[..., 0, 0], M[..., 1, 0], M[..., 1, 1]
        a1 = np.where(a > 0, a, 1.0)
        p2 = dd - c * c / a1
        det = (a1 * np.where(p2 > 0, p2, 1.0))[..., None]
        X = np.empty(R.shape)
        X[..., 0, :] = (dd[..., None] * R[..., 0, :] - c[..., None] * R[..., 1, :]) / det
        X[..., 1, :] = (a1[..., None] * R[..., 1, :] - c[..., None] * R[..., 0, :]) / det
        return np.minimum(a, p2), X
    Lf = np.zeros_like(M)
    piv = np.full(M.shape[:-2], np.inf)
    for j in range(k):
        acc = M[..., j, j] - (Lf[..., j, :j] ** 2).sum(-1)
        piv = np.minimum(piv, acc)  # NaN propagates (and fails the caller's pivot test)
        ljj = np.sqrt(np.where(acc > 0, acc, 1.0))
        Lf[..., j, j] = ljj
        if j + 1 < k:
            dots = (Lf[..., j + 1 :, :j] * Lf[..., j : j + 1, :j]).sum(-1)
            Lf[..., j + 1 :, j] = (M[..., j + 1 :, j] - dots) / ljj[..., None]
    X = np.empty(R.shape)
    for i in range(k):  # L y = R
        X[..., i, :] = (R[..., i, :] - (Lf[..., i, :i, None] * X[..., :i, :]).sum(-2)) / Lf[..., i, i, None]
    for i in reversed(range(k)):  # L' x = y
        X[..., i, :] = (X[..., i, :] - (Lf[..., i + 1 :, i, None] * X[..., i + 1 :, :]).sum(-2)) / Lf[
            ..., i, i, None
        ]
    return piv, X


def _matvec_np(Kn: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``Kn V`` for ``Kn (B, m+1, m+1)`` and candidates ``V (B, C, m+1)`` (broadcast, no stacked matmul)."""
    return V @ Kn.transpose(0, 2, 1)


def solve_active_set_numpy(
    K: np.ndarray, b: np.ndarray, delta: np.ndarray, *, with_jacobian: bool = True
) -> dict[str, np.ndarray]:
    """:func:`solve_active_set` on float64 numpy arrays (same formulas, same certification).

    ``K (B, m+1, m+1)``, ``b (B, m)``, ``delta (B,)``; returns a dict with the fields of
    :class:`ActiveSetSolution` as arrays and, in place of the KKT Jacobian's inverse, what
    :func:`active_set_vjp_numpy` needs (the closed form for (P) rows; the LU factors ``lu``, ``piv``
    of the recovery rows' Jacobians, torch tensors, None without such rows). ``K_SS`` is judged by
    its smallest Cholesky pivot, as in the torch version; the small factorisations and solves are
    elementwise over all problems and subsets.
    """
    with np.errstate(all="ignore"):  # NaN and inf candidates fail certification (non-finite violation)
        return _solve_active_set_numpy(K, b, delta, with_jacobian)


def _solve_active_set_numpy(K: np.ndarray, b: np.ndarray, delta: np.ndarray, with_jacobian: bool) -> dict:
    B, m1, _ = K.shape
    m = m1 - 1
    K = 0.5 * (K + K.transpose(0, 2, 1))
    diag = np.diagonal(K, axis1=1, axis2=2)
    pos = diag > 0
    d = 1.0 / np.sqrt(np.where(pos, diag, 1.0))
    s = np.sqrt(2 * delta)
    Kn = K * d[:, :, None] * d[:, None, :]
    beta = b * d[:, 1:] / s[:, None]
    omega = d[:, 1:] / d[:, 1:].max(1, keepdims=True) if m else d[:, 1:]

    S, SS, E = _subsets_np(m)
    C = S.shape[0]
    M = Kn[:, None, 1:, 1:] * SS + E
    kc, bS, oS = Kn[:, None, 1:, 0] * S, beta[:, None, :] * S, omega[:, None, :] * S
    if m:
        piv, X = _chol_solve_np(M, np.stack([kc, bS, oS], -1))  # (B, C), (B, C, m, 3)
        piv_ok = piv >= PIVOT_TOL
    else:
        piv_ok = np.ones((B, C), dtype=bool)
        X = np.zeros((B, C, 0, 3))
    alpha, gamma, eta = X[..., 0], X[..., 1], X[..., 2]
    Aq = Kn[:, 0, 0][:, None] - (kc * alpha).sum(-1)
    Bq = (bS * gamma).sum(-1)
    room = 1.0 - Bq
    beta_c = beta[:, None, :]
    bscale = np.maximum(np.abs(beta_c), 1.0)

    okA = piv_ok & (Aq > AQ_TOL) & (room > BQ_TOL)
    lamA = np.sqrt(np.maximum(Aq, AQ_TOL) / np.maximum(room, BQ_TOL))
    nuA = (alpha + lamA[..., None] * gamma) * S
    vA = np.concatenate([np.ones((B, C, 1)), -nuA], -1) / lamA[..., None]
    KvA = _matvec_np(Kn, vA)
    rowA = (beta_c + KvA[..., 1:]) / bscale
    violA = _violation_np(rowA, nuA, S, vA, KvA, okA)

    ar = np.arange(B)
    iA = violA.argmin(1)
    certA = violA[ar, iA] <= KKT_TOL
    if certA.all():  # the usual case: every problem feasible and certified, no recovery candidates
        rec = np.zeros(B, dtype=bool)
        certR = rec
        v, lam_n, nu_n, Ssel = vA[ar, iA], lamA[ar, iA], nuA[ar, iA], S[iA]
    else:
        p = (oS * gamma).sum(-1)
        r = (oS * eta).sum(-1)
        disc = p * p - r * (Bq - 1.0)
        okR = piv_ok & (S.sum(-1) > 0) & (r > 0) & (disc > 0)
        sq = np.sqrt(np.maximum(disc, 1e-300))
        tR = np.where(p >= 0, (Bq - 1.0) / (p + sq), (p - sq) / np.where(r > 0, r, 1.0))
        lamR = 1.0 / sq
        uR = (gamma - tR[..., None] * eta) * S
        muR = lamR[..., None] * uR
        vR = np.concatenate([np.zeros((B, C, 1)), -uR], -1)
        KvR = _matvec_np(Kn, vR)
        rowR = (beta_c + KvR[..., 1:] - tR[..., None] * omega[:, None, :]) / bscale
        violR = _violation_np(rowR, muR, S, vR, KvR, okR)
        iR = violR.argmin(1)
        certR = ~certA & (violR[ar, iR] <= KKT_TOL) & (tR[ar, iR] > 0)
        rec = certR
        idx = np.where(rec, iR, iA)
        v = np.where(rec[:, None], vR[ar, iR], vA[ar, iA])
        lam_n = np.where(rec, lamR[ar, iR], lamA[ar, iA])
        nu_n = np.where(rec[:, None], muR[ar, iR], nuA[ar, iA])
        Ssel = S[idx]
    code = np.where(
        certA,
        np.where(Ssel.sum(1) > 0, CONSTRAINED, TRUST_REGION),
        np.where(certR, RECOVERY, NOT_CERTIFIED),
    )
    lu = lu_piv = None
    if with_jacobian and rec.any():  # (P) solutions differentiate in closed form (active_set_vjp_numpy)
        ir = np.flatnonzero(rec)
        J = torch.from_numpy(_kkt_matrix_np(Kn[ir], v[ir], lam_n[ir], Ssel[ir], rec[ir], omega[ir]))
        lu, lu_piv, info = torch.linalg.lu_factor_ex(J)
        bad = (info.numpy() != 0) | ~np.isfinite(lu.numpy()).reshape(len(ir), -1).all(1)
        code[ir[bad]] = NOT_CERTIFIED
    w = s[:, None] * d * v
    d0 = np.where(pos[:, 0], d[:, 0], np.nan)
    lam = np.where(rec, np.nan, lam_n / (s * d0))
    nu = np.where(rec[:, None], np.nan, nu_n * d[:, 1:] / d0[:, None])
    violation = (b + (K[:, 1:, :] * w[:, None, :]).sum(-1)).max(1) if m else np.full(B, -np.inf)
    return dict(
        w=w,
        lam=lam,
        nu=nu,
        code=code,
        violation=violation,
        v=v,
        d=d,
        s=s,
        active=Ssel,
        jacobian=with_jacobian,
        Kn=Kn,
        rec=rec,
        omega=omega,
        lam_n=lam_n,
        lu=lu,
        piv=lu_piv,
    )


def active_set_vjp_numpy(sol: dict[str, np.ndarray], wbar: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`active_set_vjp` on the arrays of :func:`solve_active_set_numpy`: ``J' zeta = -(vbar, 0)``
    in closed form for (P) solutions (the ``1 + |S|`` system of :func:`_zeta_trust_region_py`, padded
    to ``m + 1`` by identity rows, one stacked solve for all problems), by the forward's LU factors for
    recovery solutions."""
    v, d, s, S, Kn = sol["v"], sol["d"], sol["s"], sol["active"], sol["Kn"]
    if not sol["jacobian"]:
        raise ValueError("the solution was computed with with_jacobian=False; no derivative is available")
    B, m1 = v.shape
    m = m1 - 1
    r1 = -s[:, None] * d * wbar
    # C'Kn C with C = [v, E_S], its rows and columns off S replaced by the identity's; rhs C' r1
    Kv = (Kn * v[:, None, :]).sum(-1)
    M = np.empty((B, m1, m1))
    M[:, 0, 0] = (v * Kv).sum(-1)
    M[:, 0, 1:] = M[:, 1:, 0] = Kv[:, 1:] * S
    M[:, 1:, 1:] = Kn[:, 1:, 1:] * (S[:, :, None] * S[:, None, :]) + np.eye(m) * (1.0 - S)[:, :, None]
    rhs = np.concatenate([(v * r1).sum(-1, keepdims=True), r1[:, 1:] * S], -1)[..., None]
    rec = sol["rec"]
    fast = ~rec & (sol["code"] != NOT_CERTIFIED)
    if not fast.all():  # recovery and uncertified rows are solved below or replaced by the caller
        M[~fast] = np.eye(m1)
    try:  # numpy's stacked LU: about a microsecond per (m+1)-matrix
        z = np.linalg.solve(M, rhs)[..., 0]
    except np.linalg.LinAlgError:  # a singular (P) system: each row below
        z = np.full((B, m1), np.nan)
    z_tr, z_con = z[:, 0], z[:, 1:] * S
    slow = fast & ~np.isfinite(z).all(1)
    if rec.any() or slow.any():
        z_tr, z_con = z_tr.copy(), z_con.copy()
    if rec.any():  # recovery solutions: the whole J' by the forward's LU factors
        ir = np.flatnonzero(rec)
        rhs = np.zeros((len(ir), 2 * m + 3, 1))
        rhs[:, :m1, 0] = r1[ir]
        zr = torch.linalg.lu_solve(sol["lu"], sol["piv"], torch.from_numpy(rhs), adjoint=True).numpy()[..., 0]
        z_tr[ir], z_con[ir] = zr[:, m1], zr[:, m + 3 :] * S[ir]
    if slow.any():  # a singular or non-finite (P) system: the whole J' by elimination (which names it)
        for i in np.flatnonzero(slow):
            zi = _zeta_eliminate_py(
                Kn[i].tolist(),
                v[i].tolist(),
                float(sol["lam_n"][i]),
                S[i].tolist(),
                False,
                sol["omega"][i].tolist(),
                r1[i].tolist(),
            )
            z_tr[i], z_con[i] = zi[m1], np.array(zi[m + 3 :]) * S[i]
    # Kbar = sym(D Knbar D) = 0.5 (q u' + u q') with u = D v, q = 0.5 z_tr u + D (0, z_con)
    u = d * v
    bbar = z_con * d[:, 1:]
    q = 0.5 * z_tr[:, None] * u
    q[:, 1:] += bbar
    qu = q[:, :, None] * (0.5 * u[:, None, :])
    return qu + qu.transpose(0, 2, 1), bbar / s[:, None], -z_tr / (s * s)


# ---------------------------------------------------------------------------------------------
# one problem in Python floats: the same enumeration without array overhead (a single CPU
# problem, the common case in RL, costs tens of microseconds instead of a hundred numpy calls)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(map(operator.mul, a, b))


def _chol_py(M: list[list[float]]) -> tuple[float, list[list[float]]] | None:
    """Cholesky factor of a small SPD matrix and its smallest pivot (None if not positive)."""
    k = len(M)
    Lm: list[list[float]] = []
    piv = math.inf
    for i in range(k):
        row = []
        for j in range(i):
            row.append((M[i][j] - _dot(row, Lm[j][:j])) / Lm[j][j])
        acc = M[i][i] - _dot(row, row)
        if not acc > 0:
            return None
        piv = min(piv, acc)
        row.append(math.sqrt(acc))
        Lm.append(row)
    return piv, Lm


def _chol_solve_py(Lm: list[list[float]], r: list[float]) -> list[float]:
    """Solve ``L L' z = r`` with the factor of :func:`_chol_py`."""
    k = len(Lm)
    y: list[float] = []
    for i in range(k):
        y.append((r[i] - _dot(Lm[i], y)) / Lm[i][i])
    z = [0.0] * k
    for i in reversed(range(k)):
        z[i] = (y[i] - sum(Lm[t][i] * z[t] for t in range(i + 1, k))) / Lm[i][i]
    return z


def solve_active_set_python(K: list[list[float]], b: list[float], delta: float) -> dict:
    """:func:`solve_active_set_numpy` for one problem given as Python floats (same result, B = 1).

    Returns the fields of :func:`solve_active_set_numpy` as Python lists (``w``, ``lam``, ``nu``,
    ``code``, ``violation`` with a batch of one; ``v``, ``d``, ``s``, ``active`` of the problem)
    and, instead of ``jinv``, what :func:`active_set_vjp_python` needs to form the KKT system.
    """
    m1 = len(K)
    m = m1 - 1
    K = [[0.5 * (K[i][j] + K[j][i]) for j in range(m1)] for i in range(m1)]
    d = [1.0 / math.sqrt(K[i][i]) if K[i][i] > 0 else 1.0 for i in range(m1)]
    s = math.sqrt(2 * delta)
    Kn = [[K[i][j] * d[i] * d[j] for j in range(m1)] for i in range(m1)]
    beta = [b[j] * d[j + 1] / s for j in range(m)]
    dmax = max(d[1:], default=1.0)
    omega = [d[j + 1] / dmax for j in range(m)]
    bscale = [max(abs(x), 1.0) for x in beta]

    def check(v: list[float], mult: list[float], S: tuple[int, ...], t: float) -> float:
        Kv = [_dot(row, v) for row in Kn]
        mscale = max(max(map(abs, mult), default=0.0), 1.0)
        worst = abs(_dot(v, Kv) - 1.0)
        for j in range(m):
            row = (beta[j] + Kv[j + 1] - t * omega[j]) / bscale[j]
            if j in S:
                worst = max(worst, abs(row) + max(-mult[j] / mscale, 0.0))
            else:
                worst = max(worst, row)
        return worst

    # (P) candidates; a candidate certified far below the tolerance is the optimum (a KKT point of a
    # convex problem), so the enumeration stops there
    cands = []  # (violation, kind, v, lam_n, mult, S, t)
    solved = {}
    # the empty set first; then the rows its step violates (usually the active set), then the rest
    queue = [S for size in range(m + 1) for S in itertools.combinations(range(m), size)]
    while queue:
        S = queue.pop(0)
        if S:
            fac = _chol_py([[Kn[1 + i][1 + j] for j in S] for i in S])
            if fac is None or fac[0] < PIVOT_TOL:
                continue
            alpha = _chol_solve_py(fac[1], [Kn[1 + i][0] for i in S])
            gamma = _chol_solve_py(fac[1], [beta[i] for i in S])
        else:
            fac, alpha, gamma = None, [], []
        solved[S] = (fac, gamma)
        Aq = Kn[0][0] - _dot([Kn[1 + i][0] for i in S], alpha)
        Bq = _dot([beta[i] for i in S], gamma)
        if Aq > AQ_TOL and 1.0 - Bq > BQ_TOL:
            lam = math.sqrt(Aq / (1.0 - Bq))
            nu = [0.0] * m
            for i, a, c in zip(S, alpha, gamma):
                nu[i] = a + lam * c
            v = [1.0 / lam] + [-x / lam for x in nu]
            cands.append((check(v, nu, S, 0.0), CONSTRAINED if S else TRUST_REGION, v, lam, nu, S, 0.0))
            if cands[-1][0] <= 1e-3 * KKT_TOL:
                break
            if not S and m > 1:
                guess = tuple(j for j in range(m) if beta[j] + _dot(Kn[1 + j], v) > 0)
                if guess:
                    queue.remove(guess)
                    queue.insert(0, guess)
    best = min(cands, key=lambda c: c[0]) if cands else None
    if best is None or not best[0] <= KKT_TOL:
        rcands = []
        for S, (fac, gamma) in solved.items():
            if not S:
                continue
            eta = _chol_solve_py(fac[1], [omega[i] for i in S])
            p = _dot([omega[i] for i in S], gamma)
            r = _dot([omega[i] for i in S], eta)
            Bq = _dot([beta[i] for i in S], gamma)
            disc = p * p - r * (Bq - 1.0)
            if not (r > 0 and disc > 0):
                continue
            sq = math.sqrt(disc)
            t = (Bq - 1.0) / (p + sq) if p >= 0 else (p - sq) / r
            lam = 1.0 / sq
            u = [0.0] * m
            for i, c, e in zip(S, gamma, eta):
                u[i] = c - t * e
            v = [0.0] + [-x for x in u]
            mu = [lam * x for x in u]
            rcands.append((check(v, mu, S, t), RECOVERY, v, lam, mu, S, t))
        rbest = min(rcands, key=lambda c: c[0]) if rcands else None
        if rbest is not None and rbest[0] <= KKT_TOL and rbest[6] > 0:
            best = rbest
        elif best is None:
            best = (math.inf, NOT_CERTIFIED, [0.0] * m1, 1.0, [0.0] * m, (), 0.0)
        else:
            best = (best[0], NOT_CERTIFIED, *best[2:])
    viol, code, v, lam_n, mult, S, _ = best
    rec = code == RECOVERY
    w = [s * di * vi for di, vi in zip(d, v)]
    if rec or K[0][0] <= 0:
        lam, nu = math.nan, [math.nan] * m
    else:
        lam = lam_n / (s * d[0])
        nu = [x * d[j + 1] / d[0] for j, x in enumerate(mult)]
    Kw = [_dot(K[1 + j], w) for j in range(m)]
    # the KKT Jacobian is formed and solved by the backward pass, when one is needed (with K_SS's
    # pivot, Aq > 0 and the recovery discriminant checked above, it is non-singular)
    return dict(
        w=[w],
        lam=[lam],
        nu=[nu],
        code=[code],
        violation=[max((b[j] + Kw[j] for j in range(m)), default=-math.inf)],
        v=v,
        d=d,
        s=s,
        active=[1.0 if j in S else 0.0 for j in range(m)],
        jacobian_args=(Kn, lam_n, rec, omega),
    )


def active_set_vjp_python(sol: dict, wbar: list[float]) -> tuple[list[list[float]], list[float], float]:
    """:func:`active_set_vjp` for one problem of :func:`solve_active_set_python`, in Python floats.

    Solves ``J' zeta = -(vbar, 0)`` (``J`` of size ``2m+3``): for a (P) solution in closed form by one
    ``1 + |S|`` system (:func:`_zeta_trust_region_py`), for a recovery solution by Gaussian elimination
    with partial pivoting; returns ``(Kbar, bbar, deltabar)`` as lists.
    """
    v, d, s, S = sol["v"], sol["d"], sol["s"], sol["active"]
    Kn, lam_n, rec, omega = sol["jacobian_args"]
    m1 = len(v)
    m = m1 - 1
    r1 = [-s * d[i] * wbar[i] for i in range(m1)]
    z = None if rec else _zeta_trust_region_py(Kn, v, S, r1)
    if z is None:
        z = _zeta_eliminate_py(Kn, v, lam_n, S, rec, omega, r1)
    z_tr = z[m1]
    # Kbar = sym(D Knbar D) = 0.5 (q u' + u q') with u = D v, q = 0.5 z_tr u + D (0, z_con)
    u = [di * vi for di, vi in zip(d, v)]
    bbar = [z[m + 3 + j] * S[j] * d[j + 1] for j in range(m)]
    q = [0.5 * z_tr * ui for ui in u]
    for j in range(m):
        q[1 + j] += bbar[j]
    Kbar = [[0.5 * (qi * uj + ui * qj) for uj, qj in zip(u, q)] for qi, ui in zip(q, u)]
    return Kbar, [x / s for x in bbar], -z_tr / (s * s)


def _zeta_trust_region_py(
    Kn: list[list[float]], v: list[float], S: list[float], r1: list[float]
) -> list[float] | None:
    """``zeta`` of ``J' zeta = (r1, 0)`` for a (P) solution, by its closed form (None where the small
    system is not positive definite to working precision: the caller eliminates instead).

    With ``t`` fixed at 0 and ``nu_j = 0`` off ``S``, ``J' = [[lam I, Kn C], [C', 0]]`` on the remaining
    unknowns, ``C = [v, E_S]``: so ``(zeta_tr, zeta_S) = (C'Kn C)^-1 C' r1`` (a ``1 + |S|`` system whose
    Schur complement is the room ``1 - Bq`` the forward required positive) and ``zeta_t = 0``; the
    stationarity part of ``zeta`` is not needed by the derivative.
    """
    m1 = len(v)
    m = m1 - 1
    act = [j for j in range(m) if S[j]]
    Kv = [_dot(row, v) for row in Kn]
    M = [[_dot(v, Kv)] + [Kv[1 + j] for j in act]]
    M += [[Kv[1 + i]] + [Kn[1 + i][1 + j] for j in act] for i in act]
    fac = _chol_py(M)
    if fac is None:
        return None
    sol = _chol_solve_py(fac[1], [_dot(v, r1)] + [r1[1 + j] for j in act])
    z = [0.0] * (2 * m + 3)
    z[m1] = sol[0]
    for a, j in enumerate(act):
        z[m + 3 + j] = sol[1 + a]
    return z


def _zeta_eliminate_py(
    Kn: list[list[float]], v: list[float], lam_n: float, S: list[float], rec: bool, omega: list[float], r1
) -> list[float]:
    """``zeta`` of ``J' zeta = (r1, 0)`` by Gaussian elimination with partial pivoting on the whole
    ``2m+3`` system (recovery solutions, and the fallback of :func:`_zeta_trust_region_py`)."""
    m1 = len(v)
    m = m1 - 1
    N = 2 * m + 3
    # J' (the transpose of _kkt_matrix's J), row by row
    Jt = [[0.0] * N for _ in range(N)]
    Kv = [sum(Kn[i][j] * v[j] for j in range(m1)) for i in range(m1)]
    for i in range(m1):
        Jt[i][i] = lam_n
        Jt[i][m1] = Kv[i]
        for j in range(m):
            Jt[i][m + 3 + j] = S[j] * Kn[1 + j][i]
    Jt[m1] = [*v, 0.0] + [0.0] * (N - m1 - 1)
    Jt[m + 2][m + 2] = 0.0 if rec else 1.0
    for j in range(m):
        wS = omega[j] * S[j] if rec else 0.0
        Jt[m + 2][m + 3 + j] = -wS
        Jt[m + 3 + j][m + 2] = -wS
        Jt[m + 3 + j][1 + j] = 1.0
        Jt[m + 3 + j][m + 3 + j] = 1.0 - S[j]
    z = list(r1) + [0.0] * (N - m1)
    for c in range(N):  # forward elimination with partial pivoting
        piv = max(range(c, N), key=lambda r: abs(Jt[r][c]))
        if Jt[piv][c] == 0.0:
            raise RuntimeError(
                "difftrust: the KKT system of the reduced problem is singular at this solution; the step "
                "is not differentiable here"
            )
        if piv != c:
            Jt[c], Jt[piv], z[c], z[piv] = Jt[piv], Jt[c], z[piv], z[c]
        row, inv = Jt[c], 1.0 / Jt[c][c]
        for r in range(c + 1, N):
            f = Jt[r][c] * inv
            if f:
                Jr = Jt[r]
                for k in range(c + 1, N):
                    Jr[k] -= f * row[k]
                z[r] -= f * z[c]
    for c in reversed(range(N)):
        row = Jt[c]
        z[c] = (z[c] - sum(row[k] * z[k] for k in range(c + 1, N))) / row[c]
    return z
