"""Conic backend of the reduced problem: a hand-written SOCP, solved and differentiated by diffcp.

The reduced problem (see :mod:`difftrust.layer`; ``w`` in R^{m+1}, ``K = G'H^-1 G`` PSD)::

    maximise K[0,:] w   s.t.  0.5 w'Kw <= delta,   b + K[1:,:] w <= 0                 (P)

and, when (P) is infeasible, the recovery problem (least worst violation)::

    minimise t          s.t.  0.5 w'Kw <= delta,   b + K[1:,:] w <= t 1               (R)

Normalisation (exact, no approximation): with ``kappa = trace(K)/(m+1)`` (a constant, detached),
``Kn = K/kappa``, ``rho = sqrt(2 delta/kappa)``, ``beta = b/(kappa rho)`` and ``w = rho v``,
(P) becomes ``max Kn[0,:] v  s.t. v'Kn v <= 1, beta + Kn[1:,:] v <= 0`` (radius 1, trace m+1),
and (R) likewise with ``t = kappa rho t_n``. ``L`` is the Cholesky factor of ``Kn + eps I``,
``eps = 1e-12 (m+1)`` (1e-12 of the trace): it lets singular K (g parallel to a, a = 0) be
factorised, perturbs the trust region by a relative 1e-12/lambda_min(Kn), and, where K is
singular, makes ``v`` the minimum-norm optimum (the null-space component of ``v`` is otherwise
free). SCS form ``min c'x  s.t.  A x + s = bv,  s in K_cone`` with cone ``l^m x Q^{m+2}``::

    (P)  x = v:      A = [ Kn[1:,:] ; 0 ; -L' ],       bv = [ -beta ; 1 ; 0 ],  c = -Kn[0,:]
    (R)  x = (v,t):  A = [ Kn[1:,:] -1 ; 0 0 ; -L' 0 ], bv = [ -beta ; 1 ; 0 ],  c = (0, 1)

i.e. ``m`` nonnegative rows for the linear constraints and one second-order cone
``(1, L'v)``, ``||L'v|| <= 1`` for the trust region. ``A, bv, c`` are built from ``(K, b, delta)``
with plain torch operations, so autograd carries their adjoints back to ``(K, b, delta)``.

Solve:

1. Clarabel (interior point, default tolerances) on (P). Status "Infeasible" -> switch to (R):
   infeasibility is decided by the solver's certificate (Clarabel's, or SCS's when Clarabel
   fails), so feasible inputs cost one solve and no phase-one problem is solved.
2. Newton polish of the KKT system on the active set Clarabel identifies (row j active iff its
   dual > its slack): an interior-point point on a curved boundary is accurate only to about
   sqrt(tol) (1e-5..1e-4 here, in w); 1-4 Newton steps bring the KKT residual to ~1e-16. The
   polished point is accepted only if it satisfies every KKT condition (signs of multipliers,
   feasibility of the other rows), so it is an optimum whatever the active-set guess was. When
   the trust region is inactive (degenerate K, g = 0) the minimum-norm point of the active face
   is tried instead.
3. ``diffcp.solve_and_derivative_internal`` (mode "dense") with SCS warm-started at the polished
   point: SCS accepts it at iteration 0 and diffcp builds its derivative there. Without a
   polished point (Clarabel failed, polish rejected) SCS iterates from the Clarabel point, or
   from scratch, with eps_abs = eps_rel = 1e-12 (at most ``_SCS_MAX_ITERS`` iterations).
   SCS uses its dense linear solver: with the default sparse one (MKL Pardiso / QDLDL) the
   empty first row of the cone block (the constant ``1``) makes SCS stall near 1e-10 and reject
   even an exact warm start.

Why this pipeline (measured on this machine, m = 1..3, 90 random instances, 1/3 infeasible):
SCS alone at eps 1e-12 (sparse linear solver) gave gradients ~1e-8 accurate on feasible inputs
but hit max_iters on 2/3 of the recovery problems (25-320 ms); with the dense linear solver it
converges (75-200 iterations, ~1.5 ms) on well-conditioned inputs but still stalls on
ill-conditioned K (g nearly parallel to a); Clarabel alone (~1.5 ms) gives gradients only
1e-5..1e-1 accurate, and tighter Clarabel tolerances make that worse ("AlmostSolved").
This pipeline: gradient of a random functional of w against Richardson-extrapolated central
differences, relative error median 5e-11, 90th percentile 1e-9, worst 9e-8; forward ~1.5 ms
(CPU time median 2.3 ms on a loaded 2-core machine), backward ~0.7 ms.

Backward (diffcp's adjoint, Agrawal et al. 2019, "Differentiating through a cone program"):
given ``xbar`` (and ``ybar, sbar``), with ``z = (x, y - s, 1)``, ``pi(z) = (x, y, 1)`` and the
derivative of the residual map ``M``, solve ``M' r = (xbar, Dpi*'(ybar + sbar) - sbar,
-(x'xbar + y'ybar + s'sbar))`` and, with ``r = (r_u, r_v, r_w)``::

    Abar_ij = r_v,i x_j - y_i r_u,j,    bvbar = r_w y - r_v,    cbar = r_w x - r_u

(dense mode: one (n+rows+1)-sized dense solve). Autograd then maps ``(Abar, bvbar, cbar)``
through the construction above (Cholesky adjoint included) to ``(Kbar, bbar, deltabar)``.
``K`` is symmetrised as ``0.5 (K + K')`` first, so ``Kbar`` is the gradient with respect to the
matrix as given (symmetric).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import diffcp
import numpy as np
import scipy.sparse as sparse
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ConicSolution", "solve_conic"]

#: Trust-region regulariser, relative to trace(K): L L' = K/kappa + EPS_REL (m+1) I.
EPS_REL = 1e-12
#: Smallest eigenvalue of K accepted, relative to the largest (rounding of a Gram matrix).
_PSD_TOL = 1e-10
#: Clarabel settings for the first solve (defaults; only the starting point for the polish).
_CLARABEL_SETTINGS: dict[str, Any] = dict(solve_method="Clarabel", max_threads=1)
#: Clarabel statuses (diffcp's SCS-style names) whose point is used as a start.
_CLARABEL_OK = ("Solved", "Optimal Inaccurate")
#: SCS settings for the final (warm-started) solve that diffcp differentiates. Passing
#: acceleration_lookback explicitly stops diffcp from re-solving after an inaccurate status.
_SCS_MAX_ITERS = 5000
_SCS_SETTINGS: dict[str, Any] = dict(
    solve_method="SCS",
    linear_solver="cpu_dense",
    eps_abs=1e-12,
    eps_rel=1e-12,
    max_iters=_SCS_MAX_ITERS,
    acceleration_lookback=10,
)
#: A polished point is exact; SCS then only checks it (and stops at iteration 0).
_SCS_ACCEPT: dict[str, Any] = dict(eps_abs=1e-9, eps_rel=1e-9, max_iters=100)
#: Polished KKT residual (normalised units) accepted as exact.
_POLISH_TOL = 1e-13
_POLISH_MAX_STEPS = 30


@dataclass
class ConicSolution:
    """Solution of the reduced problem from the conic backend.

    Attributes:
        w: Coefficients, shape ``(m+1,)``; the step is ``x = P w``. Differentiable in
            ``(K, b, delta)``.
        lam: Trust-region multiplier in ``x = H^-1 (g - sum_j nu_j a_j) / lam``: ``1/w[0]`` when
            ``w[0] > 0`` outside recovery, else ``nan``.
        nu: Constraint multipliers ``-w[1:]/w[0]`` (exactly 0 for inactive constraints), shape
            ``(m,)``; ``nan`` in recovery or when ``lam`` is ``nan``.
        case: ``"trust-region"`` (no linear constraint active), ``"constrained"`` or
            ``"recovery"`` (problem (P) infeasible; ``w`` solves (R)).
        status: Solver path, e.g. ``"Clarabel Solved -> polished (3 steps) -> SCS solved (0 it)"``.
        violation: ``max_j (b_j + K[j,:] w)``; the optimal ``t`` in recovery (a float).
    """

    w: Tensor
    lam: Tensor
    nu: Tensor
    case: str
    status: str = ""
    violation: float = math.nan


@dataclass
class _Record:
    """State shared by the forward solve and the backward pass of one :class:`_ConeSolve`."""

    cones: dict[str, Any]
    n_lin: int
    start: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    status: list[str] = field(default_factory=list)
    active: np.ndarray | None = None
    adjoint: Any = None


# ---------------------------------------------------------------------------------------------
# cone data


def _cone_data(Kn: Tensor, beta: Tensor, recovery: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """SCS data ``(A, bv, c)`` of (P) or (R) in normalised units (see the module docstring)."""
    m1 = Kn.shape[0]
    m = m1 - 1
    eye = torch.eye(m1, dtype=Kn.dtype, device=Kn.device)
    L, info = torch.linalg.cholesky_ex(Kn + eps * eye)
    if int(info) != 0:
        lo = float(torch.linalg.eigvalsh(Kn.detach()).min())
        raise ValueError(
            f"K must be symmetric positive semidefinite; its smallest eigenvalue is {lo:.3e} x trace"
        )
    L = L.tril()  # the adjoint of the upper (structurally zero) part is dropped
    A_lin = Kn[1:, :]
    A_soc = torch.cat([Kn.new_zeros(1, m1), -L.transpose(0, 1)], 0)
    b_soc = torch.cat([Kn.new_ones(1), Kn.new_zeros(m1)])
    if recovery:
        A_lin = torch.cat([A_lin, -Kn.new_ones(m, 1)], 1)
        A_soc = torch.cat([A_soc, Kn.new_zeros(m1 + 1, 1)], 1)
        c = torch.cat([Kn.new_zeros(m1), Kn.new_ones(1)])
    else:
        c = -Kn[0, :]
    return torch.cat([A_lin, A_soc], 0), torch.cat([-beta, b_soc]), c


def _csc_full(A: np.ndarray) -> sparse.csc_matrix:
    """CSC matrix that stores every entry of ``A`` (zeros too): diffcp then returns ``Abar`` for
    every position, whatever the values are at this point."""
    r, k = A.shape
    indices = np.tile(np.arange(r, dtype=np.int32), k)
    indptr = np.arange(0, r * k + 1, r, dtype=np.int32)
    return sparse.csc_matrix((np.asfortranarray(A).ravel(order="F").copy(), indices, indptr), shape=A.shape)


# ---------------------------------------------------------------------------------------------
# solve: Clarabel start, Newton polish, SCS warm start


def _clarabel_start(A: Tensor, bv: Tensor, c: Tensor, cones: dict[str, Any]) -> tuple[str, tuple]:
    """Clarabel solve (no derivative); returns its status and ``(x, y, s)``."""
    An = _csc_full(A.detach().cpu().numpy())
    An.eliminate_zeros()
    res = diffcp.solve_internal(
        An, bv.detach().cpu().numpy().copy(), c.detach().cpu().numpy().copy(), cones, **_CLARABEL_SETTINGS
    )
    return str(res["info"]["status"]), (res["x"], res["y"], res["s"])


def _polish(
    A: np.ndarray, bv: np.ndarray, c: np.ndarray, n_lin: int, start: tuple
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, str] | None:
    """Exact optimum of the cone program on the active set of an approximate solution.

    With ``B = -A[n_lin+1:]`` (the cone is ``||B x|| <= 1``), ``Q = B'B`` and active rows ``S``
    (dual > slack at the start), two candidates, each accepted only if it satisfies every KKT
    condition (so it is an optimum whatever the start was):

    * trust region active: Newton's method on (SCS sign convention, dual ``y``)::

        c + A_S' y_S + mu Q x = 0,   A_S x = bv_S,   0.5 (x'Qx - 1) = 0,

      with ``y_q = mu (1, -B x)``, ``s_q = (1, B x)``, ``mu > 0``;
    * trust region inactive (degenerate K, g = 0): ``c + A_S' y_S = 0``, ``A_S x = bv_S`` with
      the minimum-norm ``x`` (least squares), ``y_q = 0``.

    Returns the polished ``(x, y, s)``, the active mask and a note, or ``None``.
    """
    x0, y0, s0 = start
    n = A.shape[1]
    A_lin, b_lin = A[:n_lin], bv[:n_lin]
    B = -A[n_lin + 1 :]
    Q = B.T @ B
    active = y0[:n_lin] > s0[:n_lin]
    A_S, b_S = A_lin[active], b_lin[active]
    k = int(active.sum())

    def accept(x: np.ndarray, yS: np.ndarray, mu: float, resid: float) -> tuple | None:
        s_lin = b_lin - A_lin @ x
        Bx = B @ x
        scale = max(1.0, float(np.abs(x).max()), float(np.abs(yS).max(initial=0.0)), mu)
        if not (resid <= _POLISH_TOL * scale and mu >= 0 and np.all(yS >= 0)):
            return None
        if np.any(s_lin[~active] < -_POLISH_TOL * scale) or Bx @ Bx > 1 + _POLISH_TOL * scale:
            return None
        s_lin[active] = 0.0
        s_lin = np.maximum(s_lin, 0.0)
        y_lin = np.zeros(n_lin)
        y_lin[active] = yS
        return (x, np.concatenate([y_lin, [mu], -mu * Bx]), np.concatenate([s_lin, [1.0], Bx])), active

    def kkt(z: np.ndarray) -> np.ndarray:
        x, yS, mu = z[:n], z[n : n + k], z[-1]
        Qx = Q @ x
        return np.concatenate([c + A_S.T @ yS + mu * Qx, A_S @ x - b_S, [0.5 * (x @ Qx - 1.0)]])

    z = np.concatenate([x0, y0[:n_lin][active], [max(float(y0[n_lin]), 0.0)]])
    F = kkt(z)
    for step in range(1, _POLISH_MAX_STEPS + 1):
        x, mu = z[:n], z[-1]
        Qx = Q @ x
        J = np.zeros((n + k + 1, n + k + 1))
        J[:n, :n] = mu * Q
        J[:n, n : n + k] = A_S.T
        J[:n, -1] = Qx
        J[n : n + k, :n] = A_S
        J[-1, :n] = Qx
        try:
            z = z - np.linalg.solve(J, F)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(z)):
            break
        F_new = kkt(z)
        done = np.abs(F_new).max() >= 0.5 * np.abs(F).max()  # no more progress: at rounding level
        F = F_new
        if done or np.abs(F).max() <= 1e-16 * max(1.0, np.abs(z).max()):
            out = accept(z[:n], z[n : n + k], float(z[-1]), float(np.abs(F).max()))
            if out is not None:
                return (*out, f"polished ({step} Newton steps)")
            break

    # trust region inactive: minimum-norm point of the active face
    x = np.linalg.lstsq(A_S, b_S, rcond=None)[0] if k else np.zeros(n)
    yS = np.linalg.lstsq(A_S.T, -c, rcond=None)[0] if k else np.zeros(0)
    resid = max(float(np.abs(c + A_S.T @ yS).max()), float(np.abs(A_S @ x - b_S).max(initial=0.0)))
    out = accept(x, yS, 0.0, resid)
    return None if out is None else (*out, "polished (trust region inactive, minimum norm)")


class _ConeSolve(torch.autograd.Function):
    """``(A, bv, c) -> (x, y, s)``: primal-dual solution of the cone program, with diffcp's adjoint
    as backward (formula in the module docstring)."""

    @staticmethod
    def forward(A: Tensor, bv: Tensor, c: Tensor, rec: _Record) -> tuple[Tensor, Tensor, Tensor]:
        An = A.detach().cpu().numpy()
        bn = bv.detach().cpu().numpy().copy()
        cn = c.detach().cpu().numpy().copy()
        polished = _polish(An, bn, cn, rec.n_lin, rec.start) if rec.start is not None else None
        if polished is None:
            warm, rec.active = rec.start, None
            rec.status.append("no polish")
        else:
            warm, rec.active, note = polished
            rec.status.append(note)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            settings = _SCS_SETTINGS if polished is None else {**_SCS_SETTINGS, **_SCS_ACCEPT}
            res = diffcp.solve_and_derivative_internal(
                _csc_full(An), bn, cn, rec.cones, warm_start=warm, mode="dense", **settings
            )
        info = res["info"]
        rec.status.append(
            f"SCS {info['status']} ({info['iter']} it)" + "".join(f" [{w.message}]" for w in caught)
        )
        rec.adjoint = res["DT"]

        def back(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(device=A.device, dtype=A.dtype)

        return back(res["x"]), back(res["y"]), back(res["s"])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.rec = inputs[3]
        ctx.device = inputs[0].device

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, xbar: Tensor, ybar: Tensor, sbar: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        def npy(t: Tensor) -> np.ndarray:
            return t.detach().cpu().double().numpy()

        Abar, bvbar, cbar = ctx.rec.adjoint(npy(xbar), npy(ybar), npy(sbar))

        def back(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float64)).to(ctx.device)

        return back(Abar.toarray()), back(bvbar), back(cbar), None


class _Infeasible(Exception):
    """Problem (P) has no feasible point (certificate from Clarabel or SCS)."""


def _solve_cone(
    Kn: Tensor, beta: Tensor, eps: float, cones: dict[str, Any], recovery: bool, path: list[str]
) -> tuple[Tensor, Tensor, Tensor, _Record]:
    """Build (P) or (R), find Clarabel's start, and run :class:`_ConeSolve` on it."""
    A, bv, c = _cone_data(Kn, beta, recovery, eps)
    status, start = _clarabel_start(A, bv, c, cones)
    path.append(("recovery: " if recovery else "") + f"Clarabel {status}")
    if "Infeasible" in status and not recovery:
        raise _Infeasible
    rec = _Record(
        cones=cones, n_lin=cones.get("l", 0), start=start if status in _CLARABEL_OK else None, status=path
    )
    try:
        x, y, s = _ConeSolve.apply(A, bv, c, rec)
    except diffcp.SolverError as err:
        if "infeasible" in str(err).lower() and not recovery:
            raise _Infeasible from err
        raise RuntimeError(f"conic solve of the reduced problem failed ({' -> '.join(path)}): {err}") from err
    return x, y, s, rec


# ---------------------------------------------------------------------------------------------
# public entry point


def _check_inputs(K: Tensor, b: Tensor, delta: Tensor) -> None:
    for name, t in (("K", K), ("b", b), ("delta", delta)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if K.dim() != 2 or K.shape[0] != K.shape[1] or K.shape[0] < 1:
        raise ValueError(f"K must be a square (m+1, m+1) matrix, got shape {tuple(K.shape)}")
    m = K.shape[0] - 1
    if tuple(b.shape) != (m,):
        raise ValueError(f"b must have shape ({m},) for K of shape {tuple(K.shape)}, got {tuple(b.shape)}")
    if delta.numel() != 1:
        raise ValueError(f"delta must be a scalar tensor, got shape {tuple(delta.shape)}")
    if not float(delta.detach()) > 0:
        raise ValueError(f"delta must be > 0, got {float(delta.detach())}")
    if not bool(torch.isfinite(K.detach()).all() and torch.isfinite(b.detach()).all()):
        raise ValueError("K and b must be finite")


def solve_conic(K: Tensor, b: Tensor, delta: Tensor) -> ConicSolution:
    """Solve the reduced trust-region problem (P), or (R) if (P) is infeasible, with diffcp.

    Args:
        K: Gram matrix ``G'H^-1 G``, shape ``(m+1, m+1)``, symmetric PSD (symmetrised here).
        b: Constraint offsets, shape ``(m,)`` (``m = 0`` allowed).
        delta: Trust-region size, scalar tensor, > 0.

    Returns:
        A :class:`ConicSolution`; ``w``, ``lam``, ``nu`` are differentiable in ``(K, b, delta)``,
        in ``K``'s dtype and on its device (computed in float64 on the CPU).

    Example:
        >>> K = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> sol = solve_conic(K, torch.tensor([-0.01], dtype=torch.float64), torch.tensor(0.01))
        >>> sol.case, round(float(sol.w[0]), 4)
        ('constrained', 0.1629)
    """
    _check_inputs(K, b, delta)
    dtype, device = K.dtype, K.device
    m1 = K.shape[0]
    m = m1 - 1
    K = K.to(torch.float64)
    K = 0.5 * (K + K.transpose(0, 1))
    b = b.to(device=device, dtype=torch.float64)
    delta = delta.to(device=device, dtype=torch.float64).reshape(())

    eig = torch.linalg.eigvalsh(K.detach())
    if float(eig[0]) < -_PSD_TOL * max(float(eig.abs().max()), 1e-300):
        raise ValueError(f"K must be symmetric positive semidefinite; its eigenvalues are {eig.tolist()}")
    kappa = float(torch.diagonal(K.detach()).sum()) / m1
    if not kappa > 0:  # K = 0: every w is optimal for (P); w = 0 is the minimum-norm one
        w = 0.0 * (K.sum() + b.sum() + delta) * K.new_zeros(m1)
        feasible = bool((b <= 0).all())
        nan = torch.full((), math.nan, dtype=dtype, device=device)
        return ConicSolution(
            w.to(dtype),
            nan,
            torch.full((m,), math.nan, dtype=dtype, device=device),
            "trust-region" if feasible else "recovery",
            "K = 0",
            float(b.max()) if m else -math.inf,
        )
    rho = torch.sqrt(2 * delta / kappa)
    Kn = K / kappa
    beta = b / (kappa * rho)
    eps = EPS_REL * m1
    cones: dict[str, Any] = {"l": m, "q": [m1 + 1]} if m else {"q": [m1 + 1]}

    path: list[str] = []
    try:
        recovery = False
        x, y, s, rec = _solve_cone(Kn, beta, eps, cones, recovery, path)
    except _Infeasible:
        recovery = True
        x, y, s, rec = _solve_cone(Kn, beta, eps, cones, recovery, path)

    w = rho * x[:m1]
    wd = w.detach()
    violation = float((b.detach() + K[1:, :].detach() @ wd).max()) if m else -math.inf
    if recovery:
        case = "recovery"
    else:
        active = rec.active if rec.active is not None else (y[:m] > s[:m]).cpu().numpy()
        case = "constrained" if bool(np.any(active)) else "trust-region"
    if not recovery:
        # Multipliers from the cone program's dual: stationarity c + A'y = 0 with the SOC dual
        # opposite its primal gives K_n x = (K_n[0] - K_n[1:]'y_lin) / y_soc0, while
        # x = H^-1 (g - A'nu)/lam gives K_n x = (K_n[0] - K_n[1:]'nu) / (lam rho): so nu = y_lin
        # and lam = y_soc0 / rho. This also holds when the trust region is inactive (lam = 0).
        y = y.detach()
        lam = torch.clamp(y[m], min=0.0) / rho.detach()
        nu = torch.clamp(y[:m], min=0.0)
        if rec.active is not None:
            nu = torch.where(torch.as_tensor(rec.active, device=device), nu, torch.zeros_like(nu))
    else:
        lam = torch.full((), math.nan, dtype=torch.float64, device=device)
        nu = torch.full((m,), math.nan, dtype=torch.float64, device=device)
    return ConicSolution(w.to(dtype), lam.to(dtype), nu.to(dtype), case, " -> ".join(rec.status), violation)
