"""The differentiable trust-region step.

Problem (``x`` in R^n, ``m >= 0`` linear constraints)::

    x* = argmax_x g'x   s.t.   0.5 x'Hx <= delta,   b_j + a_j'x <= 0  (j = 1..m)

**Reduction.** Stationarity gives ``x = H^-1 (g - sum_j nu_j a_j) / lam``, so ``x`` lies in the
span of ``P = H^-1 G``, ``G = [g, a_1, ..., a_m]`` (n x (m+1)). With ``x = P w`` and the Gram
matrix ``K = G'P``: ``g'x = K[0,:] w``, ``a_j'x = K[j,:] w``, ``x'Hx = w'Kw``. The problem becomes an
(m+1)-variable problem in ``(K, b, delta)``, solved in closed form for ``m <= 1``
(:mod:`difftrust.closed_form`) or as a small cone program with diffcp (:mod:`difftrust.conic`).
Forward cost: ``m+1`` linear solves with ``H`` (Cholesky for dense metrics, conjugate gradient
for operator metrics).

**Backward** (implicit; one extra solve). Given ``xbar = dL/dx``::

    wbar = P' xbar;   (Kbar, bbar, deltabar) = VJP of the small solver at wbar
    u    = H^-1 xbar
    Gbar = u w' + P (Kbar + Kbar')            ->  gbar = Gbar[:, 0],  Abar = Gbar[:, 1:]'
    Hbar = -(u x' + P Kbar P')                 (symmetrised, dense metrics)
    psibar = -d/dpsi [ u'H(psi)x + sum_ij Kbar_ij p_i'H(psi)p_j ]   (operator metrics, u, x, P fixed)

derived from ``dK = dG'P + P'dG - P'dH P`` and ``dx = H^-1(dG w - dH x) + P dw``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from difftrust.cg import conjugate_gradient
from difftrust.closed_form import ReducedSolution, solve_closed_form
from difftrust.metrics import DenseMetric, Metric

__all__ = ["StepResult", "TrustRegionStep", "trust_region_step"]

Solver = Literal["auto", "analytic", "conic"]
SOLVERS = ("auto", "analytic", "conic")


@dataclass
class StepResult:
    """The step and its diagnostics.

    Attributes:
        x: The step, shape ``(n,)`` (or ``(B, n)``), differentiable.
        lam: Trust-region multiplier, scalar (or ``(B,)``); ``nan`` where undefined.
        nu: Constraint multipliers, ``(m,)`` (or ``(B, m)``); ``nan`` in recovery.
        case: ``"trust-region"`` (no constraint active), ``"constrained"`` or ``"recovery"``
            (infeasible: least worst violation); a list for batched input.
        cg_residuals: Relative residuals of the ``m+1`` CG solves for operator metrics,
            ``None`` otherwise.
    """

    x: Tensor
    lam: Tensor
    nu: Tensor
    case: str | list[str]
    cg_residuals: Tensor | None = None


# ---------------------------------------------------------------------------------------------
# the small solver


def _solve_reduced(K: Tensor, b: Tensor, delta: Tensor, solver: str) -> ReducedSolution:
    """Solve the reduced problem in float64; differentiable in (K, b, delta)."""
    m = K.shape[0] - 1
    K64, b64, d64 = K.double(), b.double(), delta.double()
    if solver == "conic" or (solver == "auto" and m >= 2):
        from difftrust.conic import solve_conic

        sol = solve_conic(K64, b64, d64)
        return ReducedSolution(sol.w, sol.lam, sol.nu, sol.case)
    return solve_closed_form(K64, b64, d64)


# ---------------------------------------------------------------------------------------------
# the autograd Function


@dataclass
class _Record:
    """Per-call state shared between forward and backward (and returned as diagnostics)."""

    kind: str  # "identity" | "dense" | "operator"
    solver: str
    metric: Metric | None
    cg_iters: int
    cg_tol: float
    P: Tensor | None = None
    L: Tensor | None = None
    w: Tensor | None = None
    x: Tensor | None = None
    solutions: list[ReducedSolution] = field(default_factory=list)
    leaves: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    operator: Any = None
    cg_residuals: Tensor | None = None


def _solve_H(rec: _Record, R: Tensor, tensors: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    """H^-1 R for R of shape (B, n, k)."""
    if rec.kind == "identity":
        return R, None
    if rec.kind == "dense":
        return torch.cholesky_solve(R, rec.L), None
    if rec.operator is None:  # built once (first-order KL graph for a Fisher), reused by backward
        rec.operator = rec.metric.operator(*[t.detach() for t in tensors])
    res = conjugate_gradient(rec.operator, R[0], max_iter=rec.cg_iters, tol=rec.cg_tol)
    return res.x.unsqueeze(0), res.residuals


class _TrustRegionFunction(torch.autograd.Function):
    @staticmethod
    def forward(g: Tensor, A: Tensor, b: Tensor, delta: Tensor, rec: _Record, *tensors: Tensor) -> Tensor:
        # g (B, n), A (B, m, n), b (B, m), delta () ; tensors: the metric's tensors
        G = torch.cat([g.unsqueeze(2), A.transpose(1, 2)], dim=2)  # (B, n, m+1)
        if rec.kind == "dense":
            H = tensors[0]
            L, info = torch.linalg.cholesky_ex(H)
            if bool((info > 0).any()):
                raise ValueError(
                    "metric is not positive definite: its Cholesky factorisation failed "
                    f"(leading minor {int(info.max())}); expected a symmetric positive-definite (n, n) matrix"
                )
            rec.L = L
        P, rec.cg_residuals = _solve_H(rec, G, tensors)
        K = G.transpose(1, 2) @ P  # (B, m+1, m+1)
        # The small solve runs on detached leaves with its graph kept for the backward's VJP.
        sols, leaves = [], []
        with torch.enable_grad():
            for i in range(K.shape[0]):
                Ki = K[i].detach().double().requires_grad_(True)
                bi = b[i].detach().double().requires_grad_(True)
                di = delta.detach().double().requires_grad_(True)
                sols.append(_solve_reduced(Ki, bi, di, rec.solver))
                leaves.append((Ki, bi, di))
        rec.leaves = leaves
        w = torch.stack([s.w.detach() for s in sols]).to(g.dtype)
        x = (P @ w.unsqueeze(2)).squeeze(2)
        rec.P, rec.w, rec.x, rec.solutions = P, w, x, sols
        return x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.rec = inputs[4]
        ctx.metric_tensors = inputs[5:]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, xbar: Tensor) -> tuple:
        rec: _Record = ctx.rec
        tensors = ctx.metric_tensors
        P, w, x = rec.P, rec.w, rec.x
        need = ctx.needs_input_grad
        wbar = (P.transpose(1, 2) @ xbar.unsqueeze(2)).squeeze(2)  # (B, m+1)

        # VJP of the small solver through the graph kept by forward.
        Kbars, bbars, dbar = [], [], torch.zeros((), dtype=torch.float64, device=xbar.device)
        with torch.enable_grad():
            for i, (sol, (Ki, bi, di)) in enumerate(zip(rec.solutions, rec.leaves, strict=True)):
                if sol.w.requires_grad:
                    gK, gb, gd = torch.autograd.grad(
                        sol.w,
                        (Ki, bi, di),
                        grad_outputs=wbar[i].double(),
                        allow_unused=True,
                        retain_graph=True,
                    )
                else:  # a constant solution (e.g. x = 0)
                    gK = gb = gd = None
                Kbars.append(torch.zeros_like(Ki) if gK is None else gK)
                bbars.append(torch.zeros_like(bi) if gb is None else gb)
                if gd is not None:
                    dbar = dbar + gd
        Kbar = torch.stack(Kbars).to(xbar.dtype)
        bbar = torch.stack(bbars).to(xbar.dtype)

        u, _ = _solve_H(rec, xbar.unsqueeze(2), tuple(tensors))
        u = u.squeeze(2)  # (B, n)
        Ksym = Kbar + Kbar.transpose(1, 2)
        Gbar = u.unsqueeze(2) * w.unsqueeze(1) + P @ Ksym  # (B, n, m+1)
        gbar = Gbar[:, :, 0] if need[0] else None
        Abar = Gbar[:, :, 1:].transpose(1, 2) if need[1] else None
        deltabar = dbar.to(xbar.dtype) if need[3] else None

        tensor_grads: list[Tensor | None] = [None] * len(tensors)
        if rec.kind == "dense" and need[5]:
            Hbar = -(u.unsqueeze(2) * x.unsqueeze(1) + P @ Kbar @ P.transpose(1, 2))
            tensor_grads[0] = 0.5 * (Hbar + Hbar.transpose(1, 2))
        elif rec.kind == "operator" and any(need[5:]):
            # psibar = -d/dpsi [u'H x + sum_ij Kbar_ij p_i'H p_j], u, x, P held fixed; with x = P w
            # this is sum_j (u w_j + (P Kbar)[:, j])' H p_j: m+1 metric products.
            left = u[0].unsqueeze(1) * w[0].unsqueeze(0) + P[0] @ Kbar[0]  # (n, m+1)
            right = P[0]  # (n, m+1)
            with torch.enable_grad():
                ts = [t.detach().requires_grad_(True) for t in tensors]
                op = rec.metric.operator(*ts, create_graph=True)
                s = (left * op(right)).sum()
                grads = torch.autograd.grad(s, ts, allow_unused=True)
            tensor_grads = [None if gr is None else -gr for gr in grads]
        return (gbar, Abar, bbar, deltabar, None, *tensor_grads)


# ---------------------------------------------------------------------------------------------
# input checks


def _check_tensor(name: str, t: Any, ref: Tensor | None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if ref is not None:
        if t.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but g has {ref.dtype}; expected one dtype for all inputs"
            )
        if t.device != ref.device:
            raise ValueError(
                f"{name} is on {t.device} but g is on {ref.device}; expected one device for all inputs"
            )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf entries; expected finite values")
    return t


def _normalise_inputs(g: Any, A: Any, b: Any) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Return g (B, n), A (B, m, n), b (B, m) and whether the input was batched."""
    g = _check_tensor("g", g, None)
    if g.dim() not in (1, 2) or g.shape[-1] == 0:
        raise ValueError(f"g must have shape (n,) or (B, n) with n >= 1, got {tuple(g.shape)}")
    batched = g.dim() == 2
    Bsz, n = (g.shape[0], g.shape[1]) if batched else (1, g.shape[0])
    if A is None:
        A = g.new_zeros((Bsz, 0, n))
    else:
        A = _check_tensor("A", A, g)
        if not batched:
            if A.dim() == 1:
                A = A.unsqueeze(0)
            if A.dim() != 2 or A.shape[1] != n:
                raise ValueError(f"A must have shape (m, n) = (m, {n}) or ({n},), got {tuple(A.shape)}")
            A = A.unsqueeze(0)
        elif A.dim() != 3 or A.shape[0] != Bsz or A.shape[2] != n:
            raise ValueError(
                f"A must have shape (B, m, n) = ({Bsz}, m, {n}) for batched g, got {tuple(A.shape)}"
            )
    m = A.shape[1]
    if b is None:
        if m > 0:
            raise ValueError(f"b is required when there are m = {m} constraints; expected shape ({m},)")
        b = g.new_zeros((Bsz, 0))
    else:
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            b = torch.tensor(float(b), dtype=g.dtype, device=g.device)
        b = _check_tensor("b", b, g)
        expected = (Bsz, m) if batched else (m,)
        if not batched and b.dim() == 0 and m == 1:
            b = b.reshape(1)
        if batched and b.dim() == 1 and m == 1 and b.shape[0] == Bsz:
            b = b.unsqueeze(1)
        if tuple(b.shape) != expected:
            raise ValueError(f"b must have shape {expected} (m = {m} constraints), got {tuple(b.shape)}")
        if not batched:
            b = b.unsqueeze(0)
    return g if batched else g.unsqueeze(0), A, b, batched


def _normalise_metric(
    metric: Any, g2: Tensor, batched: bool
) -> tuple[str, Metric | None, tuple[Tensor, ...]]:
    Bsz, n = g2.shape
    if metric is None:
        return "identity", None, ()
    if isinstance(metric, DenseMetric):
        metric = metric.H
    if isinstance(metric, Tensor):
        H = _check_tensor("metric", metric, g2)
        expected = (Bsz, n, n) if batched else (n, n)
        if tuple(H.shape) != expected:
            raise ValueError(f"a dense metric must have shape {expected}, got {tuple(H.shape)}")
        H3 = H if batched else H.unsqueeze(0)
        asym = (H3 - H3.transpose(1, 2)).detach().abs().amax()
        tol = 100 * torch.finfo(H.dtype).eps * max(1.0, float(H3.detach().abs().amax()))
        if float(asym) > tol:
            raise ValueError(
                f"metric must be symmetric: max |H - H'| = {float(asym):.3e} > {tol:.1e}; "
                "expected a symmetric positive-definite matrix"
            )
        return "dense", None, (H3,)
    if isinstance(metric, Metric):
        if batched:
            raise ValueError(
                "batched problems (g of shape (B, n)) need a dense (B, n, n) metric or None; "
                f"got an operator metric {type(metric).__name__}"
            )
        for t in metric.tensors:
            if t.dtype != g2.dtype or t.device != g2.device:
                raise TypeError(
                    f"metric tensor has dtype {t.dtype} on {t.device}, but g has {g2.dtype} on "
                    f"{g2.device}; expected one dtype and device for all inputs"
                )
        return "operator", metric, tuple(metric.tensors)
    raise TypeError(
        "metric must be None (identity), a dense (n, n) tensor, or a difftrust Metric "
        f"(DenseMetric, FisherMetric, OperatorMetric); got {type(metric).__name__}"
    )


def _check_delta(delta: Any, like: Tensor) -> Tensor:
    if isinstance(delta, Tensor):
        if delta.numel() != 1 or not delta.is_floating_point():
            raise ValueError(f"delta must be a positive scalar, got a tensor of shape {tuple(delta.shape)}")
        d = float(delta.detach())
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"delta must be a finite scalar > 0, got {d!r}")
        return delta.reshape(()).to(dtype=like.dtype, device=like.device)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a positive float or scalar tensor, got {type(delta).__name__}")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite scalar > 0, got {delta!r}")
    return torch.tensor(float(delta), dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------------------------------------
# the public face


def trust_region_step(
    g: Tensor,
    A: Tensor | None = None,
    b: Tensor | float | None = None,
    metric: Tensor | Metric | None = None,
    *,
    delta: float | Tensor = 0.01,
    solver: Solver = "auto",
    cg_iters: int = 10,
    cg_tol: float = 1e-10,
) -> StepResult:
    """Functional form of :class:`TrustRegionStep` (same arguments); returns a :class:`StepResult`."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    g2, A3, b2, batched = _normalise_inputs(g, A, b)
    m = A3.shape[1]
    if solver == "analytic" and m > 1:
        raise ValueError(f"solver='analytic' handles m <= 1 constraints, got m = {m}; use 'auto' or 'conic'")
    kind, metric_obj, tensors = _normalise_metric(metric, g2, batched)
    d = _check_delta(delta, g2)
    rec = _Record(kind, solver, metric_obj, cg_iters, cg_tol)
    x = _TrustRegionFunction.apply(g2, A3, b2, d, rec, *tensors)
    sols = rec.solutions
    lam = torch.stack([s.lam for s in sols]).to(g2.dtype)
    nu = torch.stack([s.nu for s in sols]).to(g2.dtype).detach()
    lam = lam.detach()
    cases = [s.case for s in sols]
    if batched:
        return StepResult(x, lam, nu, cases, rec.cg_residuals)
    return StepResult(x[0], lam[0], nu[0], cases[0], rec.cg_residuals)


class TrustRegionStep(nn.Module):
    """Differentiable solution of ``max g'x s.t. 0.5 x'Hx <= delta, b + A x <= 0``.

    Args:
        delta: Trust-region size (> 0); a float, or a scalar tensor to differentiate through.
        solver: ``"auto"`` (closed form for m <= 1, diffcp cone program for m >= 2),
            ``"analytic"`` (closed form only, m <= 1) or ``"conic"`` (diffcp for every m).
        cg_iters: Conjugate-gradient iterations for operator metrics.
        cg_tol: Relative residual tolerance of conjugate gradient.

    Calling the module with ``(g, A, b, metric)`` returns the step ``x``: ``g`` of shape ``(n,)``,
    ``A`` of shape ``(m, n)`` (``None`` or ``(0, n)`` for ``m = 0``; ``(n,)`` means ``m = 1``), ``b``
    of shape ``(m,)`` (a scalar for ``m = 1``), ``metric`` ``None`` (identity), a dense SPD
    ``(n, n)`` tensor or a :class:`~difftrust.metrics.Metric`. A leading batch dimension
    (``g (B, n)``, ``A (B, m, n)``, ``b (B, m)``, dense ``H (B, n, n)`` or ``None``) solves B problems.
    ``x`` is differentiable with respect to ``g``, ``A``, ``b``, ``delta`` (if a tensor), a dense
    metric and the tensors a metric object depends on. :meth:`solve` returns the diagnostics too.

    Example:
        >>> import torch
        >>> from difftrust import TrustRegionStep
        >>> step = TrustRegionStep(delta=0.01)
        >>> g = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        >>> a = torch.tensor([0.5, 0.75 ** 0.5], dtype=torch.float64)
        >>> res = step.solve(g, a, -0.1)            # H = I, constraint -0.1 + a'x <= 0
        >>> res.case, [round(v, 4) for v in res.x.tolist()]
        ('trust-region', [0.1414, 0.0])
        >>> res.x.sum().backward()                  # gradients flow to g
    """

    def __init__(
        self,
        delta: float | Tensor = 0.01,
        solver: Solver = "auto",
        cg_iters: int = 10,
        cg_tol: float = 1e-10,
    ):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
        if isinstance(cg_iters, bool) or not isinstance(cg_iters, int) or cg_iters < 1:
            raise ValueError(f"cg_iters must be a positive int, got {cg_iters!r}")
        if not (isinstance(cg_tol, (int, float)) and cg_tol >= 0):
            raise ValueError(f"cg_tol must be a float >= 0, got {cg_tol!r}")
        _check_delta(delta, torch.zeros((), dtype=torch.float64))
        self.delta = delta
        self.solver = solver
        self.cg_iters = cg_iters
        self.cg_tol = float(cg_tol)

    def solve(
        self,
        g: Tensor,
        A: Tensor | None = None,
        b: Tensor | float | None = None,
        metric: Tensor | Metric | None = None,
    ) -> StepResult:
        """Solve and return the step with its diagnostics (``x`` is differentiable)."""
        return trust_region_step(
            g, A, b, metric, delta=self.delta, solver=self.solver, cg_iters=self.cg_iters, cg_tol=self.cg_tol
        )

    def forward(
        self,
        g: Tensor,
        A: Tensor | None = None,
        b: Tensor | float | None = None,
        metric: Tensor | Metric | None = None,
    ) -> Tensor:
        return self.solve(g, A, b, metric).x

    def extra_repr(self) -> str:
        d = float(self.delta) if isinstance(self.delta, Tensor) else self.delta
        return f"delta={d}, solver={self.solver!r}, cg_iters={self.cg_iters}, cg_tol={self.cg_tol}"
