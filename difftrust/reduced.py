"""The reduced problem in ``(K, b, delta)`` as public API, and the choice of its solver.

The trust-region step ``max g'x s.t. 0.5 x'Hx <= delta, b + Ax <= 0`` reduces (see
:mod:`difftrust.layer`) to an (m+1)-variable problem in the Gram matrix ``K = G'H^-1 G``,
``G = [g, a_1, ..., a_m]``::

    maximise K[0,:] w   s.t.   0.5 w'Kw <= delta,   b + K[1:,:] w <= 0,     x = H^-1 G w

(least worst violation when infeasible). :func:`solve_reduced` solves it directly, for one problem
or a batch, differentiably in ``(K, b, delta)``. Solvers:

* ``"active-set"`` (:mod:`difftrust.active_set`): exact, batched (torch on any device, numpy on
  the CPU; one CPU problem in Python floats, its own small autograd node); problems it cannot
  certify (degenerate geometry) go to the closed form (m <= 1) or the conic backend.
* ``"analytic"`` (:mod:`difftrust.closed_form`): the closed form, m <= 1, one problem at a time.
* ``"conic"`` (:mod:`difftrust.conic`): Clarabel + Newton polish + diffcp, any m, CPU, one problem at a
  time.
* ``"auto"``: ``"active-set"`` for ``m <= MAX_ACTIVE_SET_M``, else ``"conic"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from difftrust.active_set import (
    CASE_NAMES,
    NOT_CERTIFIED,
    active_set_vjp,
    active_set_vjp_numpy,
    active_set_vjp_python,
    solve_active_set,
    solve_active_set_numpy,
    solve_active_set_python,
)
from difftrust.closed_form import ReducedSolution, solve_closed_form

__all__ = ["MAX_ACTIVE_SET_M", "ReducedSolution", "solve_reduced"]

Solver = Literal["auto", "active-set", "analytic", "conic"]
SOLVERS = ("auto", "active-set", "analytic", "conic")

#: Largest m for which "auto" enumerates active sets (2^m candidates). Measured (solve_reduced,
#: forward + backward, benchmarks/trust_region.py) when every subset was evaluated: faster than the
#: conic backend up to m = 6 (1.4x there), slower from m = 7. One problem on the CPU now stops at a
#: certified candidate (faster up to m = 8 on the benchmark's problems), but an infeasible problem
#: or one with many active rows, and every batch, still evaluates all 2^m.
MAX_ACTIVE_SET_M = 6

#: Where the enumeration runs: ``"auto"`` (numpy for CPU tensors, torch on other devices, no host
#: round-trip of the data), or ``"torch"`` / ``"numpy"`` to force one (tests run the GPU code path on
#: the CPU with ``"torch"``).
ENUMERATION_BACKEND = "auto"


def check_solver(solver: Any, m: int) -> None:
    """Raise a named error for an unknown solver, or "analytic" with m > 1."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    if solver == "analytic" and m > 1:
        raise ValueError(f"solver='analytic' handles m <= 1 constraints, got m = {m}; use 'auto' or 'conic'")


@dataclass
class ReducedBatch:
    """Forward state of a batch of reduced solves (shared by the layer and :func:`solve_reduced`).

    Attributes:
        w: ``(B, m+1)`` coefficients (detached).
        lam: ``(B,)``; nu: ``(B, m)`` multipliers (detached, ``nan`` where undefined).
        cases: Case name per problem.
        solver: The solver each problem used, per problem (``"active-set"``, ``"analytic"``,
            ``"conic"``).
    """

    w: Tensor
    lam: Tensor
    nu: Tensor
    cases: list[str]
    solvers: list[str]
    active: Any = None
    fallback: dict[int, tuple[ReducedSolution, tuple[Tensor, Tensor, Tensor]]] = field(default_factory=dict)


def _single(K: Tensor, b: Tensor, delta: Tensor, solver: str) -> ReducedSolution:
    """One problem with the closed form or the conic backend (float64, autograd graph kept)."""
    if solver == "analytic":
        return solve_closed_form(K, b, delta)
    from difftrust.conic import solve_conic

    sol = solve_conic(K, b, delta)
    return ReducedSolution(sol.w, sol.lam, sol.nu, sol.case)


def solve_one(K: list[list[float]], b: list[float], delta: float, dtype: torch.dtype) -> ReducedBatch:
    """One problem on the CPU by the enumeration in Python floats, as a batch of one (``w`` meaningless
    where ``active["code"]`` is ``NOT_CERTIFIED``: :func:`reduced_forward` then falls back)."""
    sol = solve_active_set_python(K, b, delta)
    w, lam, nu = (torch.from_numpy(np.array(sol[k])).to(dtype) for k in ("w", "lam", "nu"))
    return ReducedBatch(w, lam, nu, [CASE_NAMES.get(sol["code"][0], "")], ["active-set"], sol)


def reduced_forward(K: Tensor, b: Tensor, delta: Tensor, solver: str, need_grad: bool) -> ReducedBatch:
    """Solve ``B`` reduced problems ``K (B, m+1, m+1), b (B, m), delta (B,)`` (no graph returned).

    The active-set path runs batched on K's device; fallback and the per-problem solvers run in
    float64 with their autograd graph kept in the returned state for :func:`reduced_vjp`.
    """
    B, m1, _ = K.shape
    m = m1 - 1
    use_enum = solver == "active-set" or (solver == "auto" and m <= MAX_ACTIVE_SET_M)
    # the explicit solvers as asked; the fallback of the active-set solver: closed form for m <= 1
    per_problem = solver if solver in ("analytic", "conic") else ("analytic" if m <= 1 else "conic")
    backend = ENUMERATION_BACKEND
    if backend == "auto":
        backend = "numpy" if K.device.type == "cpu" else "torch"
    if use_enum and backend == "numpy" and B == 1:  # one problem: Python floats, no array overhead
        one = solve_one(K.tolist()[0], b.tolist()[0], delta.tolist()[0], K.dtype)
        sol, w, lam, nu = one.active, one.w, one.lam, one.nu
        todo = [0] if sol["code"][0] == NOT_CERTIFIED else []
        cases, solvers = one.cases, one.solvers
    elif use_enum and backend == "numpy":
        sol = solve_active_set_numpy(
            *(t.detach().double().numpy() for t in (K, b, delta)), with_jacobian=need_grad
        )
        codes = sol["code"].tolist()
        todo = [i for i, c in enumerate(codes) if c == NOT_CERTIFIED]
        w, lam, nu = (torch.from_numpy(sol[k]).to(K.dtype) for k in ("w", "lam", "nu"))
        cases = [CASE_NAMES.get(c, "") for c in codes]
        solvers = ["active-set"] * B
    elif use_enum:  # on the device, in float64 whatever the input dtype (tolerances are float64's)
        sol = solve_active_set(K.double(), b.double(), delta.double(), with_jacobian=need_grad)
        codes = sol.code.tolist()
        todo = [i for i, c in enumerate(codes) if c == NOT_CERTIFIED]
        w, lam, nu = sol.w.to(K.dtype), sol.lam.to(K.dtype), sol.nu.to(K.dtype)
        cases = [CASE_NAMES.get(c, "") for c in codes]
        solvers = ["active-set"] * B
    else:
        sol = None
        todo = list(range(B))
        w, lam, nu = K.new_zeros(B, m1), K.new_zeros(B), K.new_zeros(B, m)
        cases, solvers = [""] * B, [per_problem] * B
    fallback: dict[int, tuple[ReducedSolution, tuple[Tensor, Tensor, Tensor]]] = {}
    if todo:
        w, lam, nu = w.clone(), lam.clone(), nu.clone()
        with torch.enable_grad():
            for i in todo:
                leaves = tuple(t[i].detach().double().requires_grad_(True) for t in (K, b, delta))
                one = _single(*leaves, per_problem)
                fallback[i] = (one, leaves)
                w[i] = one.w.detach().to(w.dtype)
                lam[i] = one.lam.detach().to(lam.dtype)
                nu[i] = one.nu.detach().to(nu.dtype)
                cases[i], solvers[i] = one.case, per_problem
    return ReducedBatch(w, lam, nu, cases, solvers, sol, fallback)


def reduced_vjp(state: ReducedBatch, wbar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(Kbar (B, m+1, m+1), bbar (B, m), deltabar (B,))`` of :func:`reduced_forward` at ``wbar``."""
    B, m1 = wbar.shape
    sol = state.active
    if isinstance(sol, dict) and "jacobian_args" in sol:  # one problem in Python floats
        if sol["code"][0] == NOT_CERTIFIED:  # left to the fallback (filled in below)
            Kbar = wbar.new_zeros(B, m1, m1)
            bbar, dbar = wbar.new_zeros(B, m1 - 1), wbar.new_zeros(B)
        else:
            Kb, bb, db = active_set_vjp_python(sol, wbar.tolist()[0])
            flat = torch.from_numpy(np.array([[v for row in Kb for v in row] + bb + [db]])).to(wbar.dtype)
            Kbar, bbar, dbar = flat[:, : m1 * m1].view(B, m1, m1), flat[:, m1 * m1 : -1], flat[:, -1]
    elif isinstance(sol, dict) and sol["jacobian"]:
        out = active_set_vjp_numpy(state.active, wbar.detach().double().cpu().numpy())
        Kbar, bbar, dbar = (torch.from_numpy(a).to(wbar.dtype) for a in out)
    elif sol is not None and not isinstance(sol, dict):
        Kbar, bbar, dbar = (t.to(wbar.dtype) for t in active_set_vjp(sol, wbar.double()))
    else:  # no enumeration, or a batch without its Jacobian: all left to the fallback below
        Kbar = wbar.new_zeros(B, m1, m1)
        bbar, dbar = wbar.new_zeros(B, m1 - 1), wbar.new_zeros(B)
    if state.fallback:
        Kbar, bbar, dbar = Kbar.clone(), bbar.clone(), dbar.clone()
        with torch.enable_grad():
            for i, (one, leaves) in state.fallback.items():
                if not one.w.requires_grad:  # a constant solution (e.g. x = 0)
                    Kbar[i], bbar[i], dbar[i] = 0.0, 0.0, 0.0
                    continue
                grads = torch.autograd.grad(
                    one.w, leaves, grad_outputs=wbar[i].double(), allow_unused=True, retain_graph=True
                )
                for out, gr in zip((Kbar, bbar, dbar), grads, strict=True):
                    out[i] = 0.0 if gr is None else gr.to(out.dtype)
    return Kbar, bbar, dbar


class _ReducedFunction(torch.autograd.Function):
    """``(K, b, delta) -> w`` with :func:`reduced_vjp` as backward (forward(ctx, ...): no signature
    binding per call)."""

    @staticmethod
    def forward(ctx: Any, K: Tensor, b: Tensor, delta: Tensor, solver: str, out: list) -> Tensor:
        state = reduced_forward(K, b, delta, solver, need_grad=True)
        out.append(state)
        ctx.state = state
        return state.w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, wbar: Tensor) -> tuple:
        Kbar, bbar, dbar = reduced_vjp(ctx.state, wbar)
        return Kbar, bbar, dbar, None, None


class _ReducedOneFunction(torch.autograd.Function):
    """One CPU problem solved by the enumeration in Python floats: ``(K, b, delta) -> w`` with
    :func:`~difftrust.active_set.active_set_vjp_python` as backward (no tensors in between)."""

    @staticmethod
    def forward(ctx: Any, K: Tensor, b: Tensor, delta: Tensor | None, state: ReducedBatch) -> Tensor:
        ctx.state = state
        ctx.delta = delta
        return state.w[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, wbar: Tensor) -> tuple:
        Kb, bb, db = active_set_vjp_python(ctx.state.active, wbar.tolist())
        Kbar, bbar = torch.tensor(Kb, dtype=wbar.dtype), torch.tensor(bb, dtype=wbar.dtype)
        d = ctx.delta
        dbar = None if d is None else torch.full(d.shape, db, dtype=d.dtype, device=d.device)
        return Kbar, bbar, dbar, None


def _solve_reduced_one(K: Tensor, b: Tensor, delta: float | Tensor) -> ReducedSolution | None:
    """:func:`solve_reduced` for one problem on the CPU by the enumeration in Python floats (its
    finiteness checks on the same floats; ``K`` symmetrised by the solver, whose ``Kbar`` is
    symmetric); None where the enumeration cannot certify the problem (the general path falls back)."""
    Kl, bl = K.detach().tolist(), b.detach().tolist()
    if isinstance(delta, Tensor):
        if delta.numel() != 1:
            return None  # the general path names the error
        dl = float(delta.detach())
    else:
        dl = float(delta)
    finite = all(math.isfinite(v) for row in Kl for v in row) and all(math.isfinite(v) for v in bl)
    if not (finite and math.isfinite(dl) and dl > 0):
        raise ValueError("K, b and delta must be finite and delta > 0")
    state = solve_one(Kl, bl, dl, K.dtype)
    if state.active["code"][0] == NOT_CERTIFIED:
        return None
    w = _ReducedOneFunction.apply(K, b, delta if isinstance(delta, Tensor) else None, state)
    return ReducedSolution(w, state.lam[0], state.nu[0], state.cases[0])


def solve_reduced(
    K: Tensor, b: Tensor | None, delta: float | Tensor, *, solver: Solver = "auto"
) -> ReducedSolution | list[ReducedSolution]:
    """Solve the reduced problem ``max K[0,:]w s.t. 0.5 w'Kw <= delta, b + K[1:,:]w <= 0``.

    Args:
        K: Gram matrix ``G'H^-1 G``, ``(m+1, m+1)`` or a batch ``(B, m+1, m+1)``, symmetric PSD
            (symmetrised here).
        b: Offsets ``(m,)`` or ``(B, m)`` (``None`` for ``m = 0``).
        delta: Trust-region size > 0: a float or a scalar tensor (or ``(B,)`` for a batch).
        solver: See the module docstring.

    Returns:
        A :class:`~difftrust.closed_form.ReducedSolution` (a list of them for a batch) whose ``w``
        is differentiable in ``K``, ``b`` and a tensor ``delta`` (implicit differentiation of the
        active KKT system); ``x = H^-1 G w`` is the step of the full problem.

    Example:
        >>> K = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> sol = solve_reduced(K, torch.tensor([-0.01], dtype=torch.float64), 0.01)
        >>> sol.case, round(float(sol.w[0]), 4)
        ('constrained', 0.1629)
    """
    if not isinstance(K, Tensor) or not K.is_floating_point():
        raise TypeError(f"K must be a floating-point torch.Tensor, got {type(K).__name__}")
    if K.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"K must be float32 or float64, got {K.dtype}")
    batched = K.dim() == 3
    if K.dim() not in (2, 3) or K.shape[-1] != K.shape[-2] or K.shape[-1] < 1 or (batched and K.shape[0] < 1):
        raise ValueError(f"K must have shape (m+1, m+1) or (B, m+1, m+1) with B >= 1, got {tuple(K.shape)}")
    K3 = K if batched else K.unsqueeze(0)
    Bsz, m1 = K3.shape[0], K3.shape[1]
    m = m1 - 1
    check_solver(solver, m)
    if b is None:
        b = K.new_zeros(K.shape[:-2] + (0,))
    if not isinstance(b, Tensor) or b.dtype != K.dtype or b.device != K.device:
        raise TypeError(f"b must be a tensor with K's dtype {K.dtype} and device {K.device}")
    if tuple(b.shape) != tuple(K.shape[:-2]) + (m,):
        raise ValueError(f"b must have shape {tuple(K.shape[:-2]) + (m,)} for K of shape {tuple(K.shape)}")
    if (
        not batched
        and K.device.type == "cpu"
        and ENUMERATION_BACKEND != "torch"
        and (solver == "active-set" or (solver == "auto" and m <= MAX_ACTIVE_SET_M))
    ):
        one = _solve_reduced_one(K, b, delta)
        if one is not None:
            return one
    if isinstance(delta, Tensor):
        d = delta.to(dtype=K.dtype, device=K.device)
        if d.numel() == 1:
            d = d.reshape(()).expand(Bsz)
        elif not batched or tuple(d.shape) != (Bsz,):
            raise ValueError(f"delta must be a scalar (or ({Bsz},) for a batch), got shape {tuple(d.shape)}")
    elif isinstance(delta, (int, float)) and not isinstance(delta, bool):
        d = torch.full((Bsz,), float(delta), dtype=K.dtype, device=K.device)
    else:
        raise TypeError(f"delta must be a float or a tensor, got {type(delta).__name__}")
    finite = torch.isfinite(K).all() & torch.isfinite(b).all() & torch.isfinite(d).all() & (d > 0).all()
    if not bool(finite):
        raise ValueError("K, b and delta must be finite and delta > 0")
    K3 = 0.5 * (K3 + K3.transpose(1, 2))
    b2 = b if batched else b.unsqueeze(0)
    out: list[ReducedBatch] = []
    w = _ReducedFunction.apply(K3, b2, d, solver, out)
    state = out[0]
    sols = [
        ReducedSolution(w[i], state.lam[i].detach(), state.nu[i].detach(), state.cases[i]) for i in range(Bsz)
    ]
    return sols if batched else sols[0]
