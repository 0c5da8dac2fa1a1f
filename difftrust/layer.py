"""The differentiable trust-region step.

Problem (``x`` in R^n, ``m >= 0`` linear constraints)::

    x* = argmax_x g'x   s.t.   0.5 x'Hx <= delta,   b_j + a_j'x <= 0  (j = 1..m)

**Reduction.** Stationarity gives ``x = H^-1 (g - sum_j nu_j a_j) / lam``, so ``x`` lies in the
span of ``P = H^-1 G``, ``G = [g, a_1, ..., a_m]`` (n x (m+1)). With ``x = P w`` and the Gram
matrix ``K = G'P``: ``g'x = K[0,:] w``, ``a_j'x = K[j,:] w``, ``x'Hx = w'Kw``. The problem becomes an
(m+1)-variable problem in ``(K, b, delta)`` (see :mod:`difftrust.reduced`), solved exactly by
active-set enumeration (:mod:`difftrust.active_set`, batched, any device) with the closed form
(:mod:`difftrust.closed_form`, m <= 1) or a small cone program (:mod:`difftrust.conic`) for what it
cannot certify. Forward cost: ``m+1`` linear solves with ``H`` (Cholesky for dense metrics,
conjugate gradient for operator metrics).

**Scale.** ``g``, ``(A, b)`` (one factor for all rows) and ``(H, delta)`` are first multiplied by
powers of two ``c_0``, ``c_A``, ``h`` that bring their largest entries to ``[0.5, 1)``: exact, and the
step is invariant to them (the argmax does not change when ``g``, the rows, or ``(H, delta)`` are
scaled). The backward below runs on the scaled problem; holding the factors fixed,
``gbar = c_0 gbar_s``, ``Abar = c_A Abar_s``, ``bbar = c_A bbar_s``, ``Hbar = h Hbar_s``,
``deltabar = h deltabar_s``.

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
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from difftrust import lean
from difftrust.cg import CGNotConvergedWarning, conjugate_gradient
from difftrust.metrics import CholeskyMetric, DenseMetric, FisherMetric, Metric
from difftrust.reduced import SOLVERS, ReducedBatch, Solver, check_solver, reduced_forward, reduced_vjp

__all__ = ["CGNotConvergedWarning", "StepResult", "TrustRegionStep", "trust_region_step"]

#: Estimated condition number of a dense metric above which results cannot be certified:
#: 1e-5 / eps in float64 (4.5e10: relative errors stay below ~1e-6) and 1e-3 / eps in float32
#: (8.4e3: errors up to ~1e-3, float32's usual accuracy here).
COND_LIMIT = {
    torch.float64: 1e-5 / torch.finfo(torch.float64).eps,
    torch.float32: 1e-3 / torch.finfo(torch.float32).eps,
}


@dataclass
class StepResult:
    """The step and its diagnostics.

    Attributes:
        x: The step, shape ``(n,)`` (or ``(B, n)``), differentiable.
        lam: Trust-region multiplier, scalar (or ``(B,)``); ``nan`` where undefined.
        nu: Constraint multipliers, ``(m,)`` (or ``(B, m)``); ``nan`` in recovery.
        case: ``"trust-region"`` (no constraint active), ``"constrained"`` or ``"recovery"``
            (infeasible: least worst violation); a list for batched input.
        cg_residuals: Relative residuals of the ``m+1`` CG solves for operator metrics (``(B, m+1)``
            for a batch), ``None`` otherwise.
        w: The reduced solution, ``(m+1,)`` (or ``(B, m+1)``), detached: ``x = H^-1 G w`` with
            ``G = [g, a_1, ..., a_m]``.
        K: The reduced problem's Gram matrix ``G'H^-1 G``, ``(m+1, m+1)`` (or batched), detached;
            ``(K, b, delta)`` is the problem :func:`difftrust.solve_reduced` solves.
        solver: The solver that produced each step (``"active-set"``, ``"analytic"``, ``"conic"``);
            a list for batched input.
    """

    x: Tensor
    lam: Tensor
    nu: Tensor
    case: str | list[str]
    cg_residuals: Tensor | None = None
    w: Tensor | None = None
    K: Tensor | None = None
    solver: str | list[str] | None = None


# ---------------------------------------------------------------------------------------------
# the autograd Function


@dataclass
class _Record:
    """Per-call state shared between forward and backward (and returned as diagnostics)."""

    kind: str  # "identity" | "dense" | "factor" (a Cholesky factor L, H = L L') | "operator"
    solver: str
    metric: list[Metric] | None  # operator metrics: one per problem
    cg_iters: int
    cg_tol: float | None  # None: truncated conjugate gradient (cg_iters iterations are the method)
    strict: bool
    need_grad: bool = True
    batched: bool = True  # False: the caller's unbatched tensors, reshaped to a batch of one in forward
    m: int = 0
    P: Tensor | None = None
    L: Tensor | None = None
    K: Tensor | None = None
    x: Tensor | None = None
    state: ReducedBatch | None = None
    operator: Any = None
    counts: list[int] | None = None
    cg_residuals: Tensor | None = None
    #: (B, 2) or, dense metrics, (B, 3): powers of two applied to g, to (A, b), and to (H, delta)
    scales: Tensor | None = None
    lean: bool = False  # float64 CPU problems, not an operator metric: difftrust.lean's numpy path
    #: Cholesky-factor metrics: the lean path's L (a numpy array) or the torch path's scale sL, and
    #: the first halves of the forward and backward solves (Y = L_s^-1 [G_s, r], Y_u = L_s^-1 xbar)
    factor: Any = None
    Y: Tensor | None = None
    Y_u: Tensor | None = None


def _pow2_scale(amax: Tensor) -> Tensor:
    """The power of two ``2^-e`` with ``amax * 2^-e`` in ``[0.5, 1)`` (1 where ``amax = 0``).

    Scaling by a power of two is exact in floating point, so the scaled problem has bitwise the
    same mantissas and the step is invariant to the scale of each input.
    """
    _, e = torch.frexp(amax)
    return torch.ldexp(torch.ones_like(amax), -e)


_PROBES: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
#: (metric type, cg_iters, cg_tol) already warned about by CGNotConvergedWarning.
_CG_WARNED: set[tuple[str, int, float]] = set()


def _probe(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A fixed pseudo-random unit vector ``(n, 1)`` (cached per size, dtype and device)."""
    key = (n, dtype, device)
    if key not in _PROBES:
        gen = torch.Generator().manual_seed(20240611)
        r = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        _PROBES[key] = (r / r.norm()).to(dtype=dtype, device=device)
    return _PROBES[key]


_MASKS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def _strict_upper(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 0/1 mask of the entries above the diagonal, ``(n, n)`` (cached per size, dtype and device)."""
    key = (n, dtype, device)
    if key not in _MASKS:
        _MASKS[key] = torch.ones(n, n, dtype=dtype, device=device).triu(1)
    return _MASKS[key]


def _factor_solve(L: Tensor, sL: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """``(Y, P)`` with ``Y = L_s^-1 R`` and ``P = L_s'^-1 Y = H_s^-1 R`` for ``L_s = sL L``, ``H_s = L_s L_s'``.

    Two triangular solves with ``L`` itself (no scaled copy of it): the power-of-two ``1 / sL`` is
    applied to the ``(B, n, k)`` results, after each solve, which keeps them in range.
    """
    inv = (1.0 / sL)[:, None, None]
    Y = torch.linalg.solve_triangular(L, R, upper=False) * inv
    return Y, torch.linalg.solve_triangular(L.transpose(1, 2), Y, upper=True) * inv


def _checked_operator(metric: Metric, tensors: tuple[Tensor, ...], create_graph: bool = False) -> Any:
    """The metric's matvec with a shape check on its output."""
    op = metric.operator(*tensors, create_graph=create_graph)

    def matvec(V: Tensor) -> Tensor:
        out = op(V)
        if not isinstance(out, Tensor) or out.shape != V.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"metric {type(metric).__name__} returned {shape} for an input of shape {tuple(V.shape)}; "
                "expected H v of the same shape as v"
            )
        return out

    return matvec


def _symmetry_probe(metric: Metric, matvec: Any, like: Tensor, n: int) -> None:
    """Compare ``u'Hv`` with ``v'Hu`` for two fixed pseudo-random vectors (one product of 2 columns)."""
    gen = torch.Generator().manual_seed(1234)
    UV = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(dtype=like.dtype, device=like.device)
    HUV = matvec(UV)
    uHv, vHu = UV[:, 0] @ HUV[:, 1], UV[:, 1] @ HUV[:, 0]
    uHu, vHv = UV[:, 0] @ HUV[:, 0], UV[:, 1] @ HUV[:, 1]
    vals = torch.stack([uHv, vHu, uHu, vHv]).tolist()
    if not all(math.isfinite(t) for t in vals):
        raise ValueError(f"metric {type(metric).__name__} returned non-finite products H v")
    if vals[2] <= 0 or vals[3] <= 0:
        raise ValueError(
            f"metric {type(metric).__name__} is not positive definite: v'Hv = {min(vals[2], vals[3]):.3e} <= 0 "
            "for a probe vector; expected a symmetric positive-definite metric"
        )
    gap = abs(vals[0] - vals[1]) / math.sqrt(vals[2] * vals[3])
    tol = 1e3 * torch.finfo(like.dtype).eps * max(1.0, n**0.5)
    if gap > tol:
        raise ValueError(
            f"metric {type(metric).__name__} is not symmetric: |u'Hv - v'Hu| / sqrt(u'Hu v'Hv) = {gap:.3e} "
            f"> {tol:.1e} for two probe vectors; expected a symmetric positive-definite metric"
        )


def _solve_H(rec: _Record, R: Tensor, tensors: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    """H^-1 R for R of shape (B, n, k) (H scaled by rec.h_scale for dense metrics)."""
    if rec.kind == "identity":
        return R, None
    if rec.kind == "dense":
        return torch.cholesky_solve(R, rec.L), None
    if rec.kind == "factor":
        rec.Y_u, P = _factor_solve(rec.L, rec.factor, R)
        return P, None
    Bsz, n, k = R.shape
    if rec.operator is None:  # built once (first-order KL graph for a Fisher), reused by backward
        ops = []
        for met, ts in zip(rec.metric, _split(tensors, rec.counts), strict=True):
            op = _checked_operator(met, tuple(t.detach() for t in ts))
            if not isinstance(met, (FisherMetric, DenseMetric, CholeskyMetric)):
                _symmetry_probe(met, op, R, n)
            ops.append(op)
        rec.operator = ops
    ops = rec.operator
    if Bsz == 1:
        matvec, rhs = ops[0], R[0]
    else:  # one block-diagonal operator: problem i's metric on its own k columns; CG batched

        def matvec(V: Tensor) -> Tensor:
            return torch.cat([op(V[:, i * k : (i + 1) * k]) for i, op in enumerate(ops)], 1)

        rhs = R.permute(1, 0, 2).reshape(n, Bsz * k)
    res = conjugate_gradient(matvec, rhs, max_iter=rec.cg_iters, tol=rec.cg_tol)
    worst = float(res.residuals.max()) if res.residuals.numel() else 0.0
    if rec.cg_tol is not None and worst > rec.cg_tol:
        msg = (
            f"conjugate gradient did not reach its tolerance cg_tol = {rec.cg_tol:.1e} in cg_iters = "
            f"{rec.cg_iters} iterations: worst relative residual {worst:.3e} (metric "
            f"{type(rec.metric[0]).__name__}); the step is only as accurate as that residual. "
            "Raise cg_iters, loosen cg_tol, or add damping"
        )
        if rec.strict:
            raise RuntimeError(msg)
        key = (type(rec.metric[0]).__name__, rec.cg_iters, rec.cg_tol)
        if key not in _CG_WARNED:  # once per metric type and CG settings: an RL run solves thousands
            _CG_WARNED.add(key)
            warnings.warn(
                msg + " (warned once per metric type, cg_iters and cg_tol in this process; "
                "StepResult.cg_residuals holds every solve's residuals; strict=True raises instead)",
                CGNotConvergedWarning,
                stacklevel=5,
            )
    if Bsz == 1:
        return res.x.unsqueeze(0), res.residuals
    return res.x.reshape(n, Bsz, k).permute(1, 0, 2), res.residuals.reshape(Bsz, k)


def _split(tensors: tuple[Tensor, ...], counts: list[int]) -> list[tuple[Tensor, ...]]:
    """The metric tensors of each problem (``counts[i]`` of them for problem i)."""
    out, i = [], 0
    for c in counts:
        out.append(tuple(tensors[i : i + c]))
        i += c
    return out


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose derivative raises: marks the step's gradients as not differentiable again.

    ``anchor`` is a fresh leaf that requires grad, so that the output is part of the graph built
    by ``create_graph=True`` and differentiating it reaches this backward (and its message).
    """

    @staticmethod
    def forward(ctx: Any, t: Tensor, anchor: Tensor) -> Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, _: Tensor) -> tuple:
        raise RuntimeError(
            "difftrust: the trust-region step is differentiable once; a second derivative (double "
            "backward through TrustRegionStep, e.g. a Hessian-vector product of a loss of x) is not "
            "supported"
        )


class _TrustRegionFunction(torch.autograd.Function):
    # forward(ctx, ...) rather than setup_context: Function.apply then skips binding the
    # signature with inspect, a visible cost at this size.
    @staticmethod
    def forward(
        ctx: Any, g: Tensor, A: Tensor, b: Tensor, delta: Tensor, rec: _Record, *tensors: Tensor
    ) -> Tensor:
        # g (B, n), A (B, m, n), b (B, m), delta () ; tensors: the metric's tensors. The value
        # checks, the scale factors and the dense metric's certificate cost one host transfer.
        ctx.rec = rec
        if not rec.batched:  # a batch of one, as views made here (no nodes in the caller's graph)
            ctx.shapes = (g.shape, A.shape, b.shape) + tuple(t.shape for t in tensors)
            n = g.shape[0]
            g, A, b = g.reshape(1, n), A.reshape(1, rec.m, n), b.reshape(1, rec.m)
            if rec.kind in ("dense", "factor"):
                tensors = (tensors[0].reshape(1, n, n),)
        ctx.metric_tensors = tensors
        Bsz, n = g.shape
        m = A.shape[1]
        dense = rec.kind == "dense"
        factor = rec.kind == "factor"
        if lean.ENABLED and rec.kind != "operator" and g.dtype == torch.float64 and g.device.type == "cpu":
            rec.lean = True
            H = tensors[0] if dense or factor else None
            x = lean.lean_forward(rec, g, A, b, delta, H, _probe(n, g.dtype, g.device), _raise_for)
            return x if rec.batched else x[0]
        # largest magnitudes per problem (NaN and inf propagate: the finiteness checks)
        gmax = g.abs().amax(1)
        amax = A.abs().amax((1, 2)) if m else torch.zeros_like(gmax)
        cols = [gmax, amax]
        if dense:
            H = tensors[0]
            hmax = H.diagonal(dim1=1, dim2=2).abs().amax(1)
            cols.append(hmax)
        elif factor:
            H = tensors[0]  # the factor L: diag(L L') from its squares; one (B, n, n) temporary
            work = H.square()
            hmax = work.sum(2).amax(1)
            cols.append(hmax)
        # exact power-of-two scaling of g, of (A, b) (one factor for all rows: the recovery
        # problem's least worst violation depends on the rows' relative scales) and of (H, delta)
        sc = _pow2_scale(torch.stack(cols, 1))  # (B, 2 or 3)
        if factor:  # H = L L' scaled by hs = sL^2 (an even power of two: L scaled by sL)
            sL = torch.ldexp(torch.ones_like(hmax), torch.frexp(sc[:, 2])[1].div(2, rounding_mode="floor"))
            sc = torch.cat([sc[:, :2], sL.square().unsqueeze(1)], 1)
        rec.scales = sc
        c0, cA = sc[:, 0:1], sc[:, 1:2]
        bs = b * cA
        if dense or factor:
            hs = sc[:, 2]
            ds = delta * hs
            # one probe column r (unit norm) rides along with G: ||H_s^-1 r|| bounds 1 / lambda_min
            # from below, max diag(H_s) bounds lambda_max; the Cholesky diagonal ratio is a second bound
            r = _probe(n, g.dtype, g.device)
            R = torch.cat(
                [(g * c0).unsqueeze(2), (A * cA.unsqueeze(2)).transpose(1, 2), r.expand(Bsz, n, 1)], 2
            )
            Gs = R[:, :, :-1].transpose(1, 2)  # (B, m+1, n), rows g, a_j
            if dense:
                L, info = torch.linalg.cholesky_ex(H * hs[:, None, None])
                rec.L = L
                Pr = torch.cholesky_solve(R, L)
            else:
                rec.L, rec.factor = H, sL
                rec.Y, Pr = _factor_solve(H, sL, R)
            P = Pr[:, :, :-1]
            ld = (rec.L if dense else H).diagonal(dim1=1, dim2=2)
            cond = torch.maximum((ld.amax(1) / ld.amin(1)).square(), hmax * hs * Pr[:, :, -1].norm(dim=1))
            if dense:
                asym = (H - H.transpose(1, 2)).abs().amax((1, 2)) / hmax
            else:  # exact zeros above the diagonal, a positive diagonal
                asym = torch.mul(H, _strict_upper(n, H.dtype, H.device), out=work).abs_().amax((1, 2))
                info = (ld <= 0).sum(1)
            cols = [gmax, amax, b.abs().amax(1) if m else gmax, asym, info.to(g.dtype), cond]
        else:
            Gs = torch.cat([(g * c0).unsqueeze(1), A * cA.unsqueeze(2)], 1)  # (B, m+1, n), rows g, a_j
            cols = [gmax, amax, b.abs().amax(1) if m else gmax]
            if rec.kind == "identity":
                P, ds = Gs.transpose(1, 2), delta.expand(Bsz)
        summary = torch.stack(cols, 1).amax(0).tolist()
        _raise_for(summary, H if dense or factor else None, factor)
        if rec.kind == "operator":
            ds = delta.expand(Bsz)
            P, rec.cg_residuals = _solve_H(rec, Gs.transpose(1, 2), tensors)
        K = Gs @ P  # (B, m+1, m+1)
        state = reduced_forward(K, bs, ds, rec.solver, rec.need_grad)
        x = (P @ state.w.unsqueeze(2)).squeeze(2)
        rec.P, rec.K, rec.x, rec.state = P, K, x, state
        return x if rec.batched else x[0]

    @staticmethod
    def backward(ctx: Any, xbar: Tensor) -> tuple:
        twice = torch.is_grad_enabled()
        with torch.no_grad():
            if not ctx.rec.batched:
                xbar = xbar.reshape(1, -1)
            if ctx.rec.lean:
                *grads, Hbar = lean.lean_backward(ctx.rec, xbar, ctx.needs_input_grad)
                grads = (*grads, None, *((Hbar,) if ctx.metric_tensors else ()))
            else:
                grads = _TrustRegionFunction._vjp(ctx, xbar.detach())
            if not ctx.rec.batched:  # back to the caller's shapes (delta's is its own)
                shapes = ctx.shapes[:3] + (None, None) + ctx.shapes[3:]
                grads = tuple(
                    t if t is None or shape is None else t.reshape(shape)
                    for t, shape in zip(grads, shapes, strict=True)
                )
        if twice:
            anchor = torch.zeros((), dtype=xbar.dtype, device=xbar.device, requires_grad=True)
            grads = tuple(None if t is None else _NoDoubleBackward.apply(t, anchor) for t in grads)
        return grads

    @staticmethod
    def _vjp(ctx: Any, xbar: Tensor) -> tuple:
        """``wbar = P'xbar``; ``(Kbar, bbar, deltabar)`` from the reduced solver; ``u = H^-1 xbar``;
        ``Gbar = u w' + P (Kbar + Kbar')``; ``Hbar = -sym(u x' + P Kbar P') = -sym((u w' + P Kbar) P')``;
        all in the scaled problem, then multiplied by the (constant) scales: ``gbar = c_0 Gbar[:, 0]``,
        ``Abar_j = c_A Gbar[:, j]``, ``bbar_j = c_A bbar_j``, ``Hbar = h Hbar``, ``deltabar = h deltabar``."""
        rec: _Record = ctx.rec
        tensors = ctx.metric_tensors
        P, state, sc = rec.P, rec.state, rec.scales
        need = ctx.needs_input_grad
        wbar = (xbar.unsqueeze(1) @ P).squeeze(1)  # (B, m+1)
        Kbar, bbar, dbar = reduced_vjp(state, wbar)
        u, _ = _solve_H(rec, xbar.unsqueeze(2), tuple(tensors))
        uw = u * state.w.unsqueeze(1)  # u w', (B, n, m+1)
        gbar = Abar = deltabar = None
        PKs = P @ (Kbar + Kbar.transpose(1, 2)) if need[0] or need[1] or rec.kind == "factor" else None
        if need[0] or need[1]:
            Gbar = uw + PKs
            gbar = Gbar[:, :, 0] * sc[:, 0:1] if need[0] else None
            Abar = Gbar[:, :, 1:].transpose(1, 2) * sc[:, 1:2, None] if need[1] else None
        bbar = bbar * sc[:, 1:2] if need[2] else None
        if need[3]:
            deltabar = (dbar * sc[:, 2]).sum() if rec.kind in ("dense", "factor") else dbar.sum()
        tensor_grads: list[Tensor | None] = [None] * len(tensors)
        if rec.kind == "dense" and need[5]:
            # -h sym(Z P') = [c Z, P] [P, c Z]' with Z = u w' + P Kbar, c = -h/2: one product, symmetric
            cZ = (uw + P @ Kbar) * (-0.5 * sc[:, 2, None, None])
            tensor_grads[0] = torch.cat([cZ, P], 2) @ torch.cat([P, cZ], 2).transpose(1, 2)
        elif rec.kind == "factor" and need[5]:
            # H = L L': Lbar = 2 Hbar L = -h (Z P' + P Z') L with Z = u w' + P Kbar. In the scaled
            # problem L'P = Y / sL and L'u = Y_u / sL (the forward and backward solves' first
            # halves), so with h = sL^2 and x = P w: Lbar = -sL (u (Y w)' + x Y_u' + P (Kbar + Kbar') Y'),
            # one product of rank m + 3 (P (Kbar + Kbar') is Gbar's)
            Y = rec.Y[:, :, :-1]
            w = state.w.unsqueeze(2)
            left = torch.cat([u, P @ w, PKs], 2) * (-rec.factor[:, None, None])
            right = torch.cat([Y @ w, rec.Y_u, Y], 2)
            tensor_grads[0] = left @ right.transpose(1, 2)
        elif rec.kind == "operator" and any(need[5:]):
            # psibar = -d/dpsi [u'H x + sum_ij Kbar_ij p_i'H p_j], u, x, P held fixed; with x = P w
            # this is sum_j (u w_j + (P Kbar)[:, j])' H p_j: m+1 metric products.
            left = uw + P @ Kbar  # (B, n, m+1)
            tensor_grads = []
            with torch.enable_grad():
                for i, (met, own) in enumerate(zip(rec.metric, _split(tensors, rec.counts), strict=True)):
                    ts = [t.detach().requires_grad_(True) for t in own]
                    op = _checked_operator(met, tuple(ts), create_graph=True)
                    s = (left[i] * op(P[i])).sum()
                    grads = torch.autograd.grad(s, ts, allow_unused=True) if ts else ()
                    tensor_grads += [None if gr is None else -gr for gr in grads]
        return (gbar, Abar, bbar, deltabar, None, *tensor_grads)


# ---------------------------------------------------------------------------------------------
# input checks


def _check_tensor(name: str, t: Any, ref: Tensor | None) -> Tensor:
    """Type, dtype and device checks (finiteness is checked for all inputs at once)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if ref is None:
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{name} has dtype {t.dtype}; expected float32 or float64 (half precision cannot "
                "represent the trust-region step's arithmetic)"
            )
        return t
    if t.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {t.dtype} but g has {ref.dtype}; expected one dtype for all inputs"
        )
    if t.device != ref.device:
        raise ValueError(
            f"{name} is on {t.device} but g is on {ref.device}; expected one device for all inputs"
        )
    return t


def _normalise_inputs(g: Any, A: Any, b: Any) -> tuple[Tensor, Tensor, Tensor, bool, int]:
    """Return g, A, b checked, whether the input was batched, and m.

    Batched: g (B, n), A (B, m, n), b (B, m). Unbatched: the caller's tensors as given (g (n,), A
    (m, n) or (n,), b (m,) or a scalar), reshaped to a batch of one inside the autograd Function:
    views taken here would each add a node to the caller's graph (about 25 microseconds apiece,
    forward and backward)."""
    g = _check_tensor("g", g, None)
    if g.dim() not in (1, 2) or g.shape[-1] == 0:
        raise ValueError(f"g must have shape (n,) or (B, n) with n >= 1, got {tuple(g.shape)}")
    batched = g.dim() == 2
    if batched and g.shape[0] == 0:
        raise ValueError(f"g has batch size 0 (shape {tuple(g.shape)}); expected (B, n) with B >= 1")
    Bsz, n = (g.shape[0], g.shape[1]) if batched else (1, g.shape[0])
    if A is None:
        A = g.new_zeros((Bsz, 0, n) if batched else (0, n))
    else:
        A = _check_tensor("A", A, g)
        if not batched:
            if A.dim() not in (1, 2) or A.shape[-1] != n:
                raise ValueError(f"A must have shape (m, n) = (m, {n}) or ({n},), got {tuple(A.shape)}")
        elif A.dim() != 3 or A.shape[0] != Bsz or A.shape[2] != n:
            raise ValueError(
                f"A must have shape (B, m, n) = ({Bsz}, m, {n}) for batched g, got {tuple(A.shape)}"
            )
    m = A.shape[1] if batched else (1 if A.dim() == 1 else A.shape[0])
    if b is None:
        if m > 0:
            raise ValueError(f"b is required when there are m = {m} constraints; expected shape ({m},)")
        b = g.new_zeros((Bsz, 0) if batched else (0,))
    else:
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            b = torch.tensor(float(b), dtype=g.dtype, device=g.device)
        b = _check_tensor("b", b, g)
        expected = (Bsz, m) if batched else (m,)
        if batched and b.dim() == 1 and m == 1 and b.shape[0] == Bsz:
            b = b.unsqueeze(1)
        if tuple(b.shape) != expected and not (not batched and b.dim() == 0 and m == 1):
            raise ValueError(f"b must have shape {expected} (m = {m} constraints), got {tuple(b.shape)}")
    return g, A, b, batched, m


def _normalise_metric(
    metric: Any, g2: Tensor, batched: bool
) -> tuple[str, list[Metric] | None, tuple[Tensor, ...]]:
    """Kind, metric objects and tensors (their values are checked in the forward pass; a dense or
    factor metric of one problem as given, (n, n))."""
    Bsz, n = g2.shape if batched else (1, g2.shape[0])
    if metric is None:
        return "identity", None, ()
    if isinstance(metric, CholeskyMetric):
        L = _check_tensor("metric factor L", metric.L, g2)
        expected = (Bsz, n, n) if batched else (n, n)
        if tuple(L.shape) != expected:
            raise ValueError(f"a Cholesky factor metric must have shape {expected}, got {tuple(L.shape)}")
        return "factor", None, (L,)
    if isinstance(metric, DenseMetric):
        metric = metric.H
    if isinstance(metric, Tensor):
        H = _check_tensor("metric", metric, g2)
        expected = (Bsz, n, n) if batched else (n, n)
        if tuple(H.shape) != expected:
            raise ValueError(f"a dense metric must have shape {expected}, got {tuple(H.shape)}")
        return "dense", None, (H,)
    if isinstance(metric, Metric) or (isinstance(metric, (list, tuple)) and metric and batched):
        metrics = [metric] if isinstance(metric, Metric) else list(metric)
        if batched and isinstance(metric, Metric):
            raise ValueError(
                "batched problems (g of shape (B, n)) need a dense (B, n, n) metric, None, or a list of "
                f"B metric objects (one per problem); got one operator metric {type(metric).__name__}"
            )
        if len(metrics) != Bsz or not all(isinstance(mt, Metric) for mt in metrics):
            raise ValueError(
                f"a list of metrics must hold B = {Bsz} difftrust Metric objects (one per problem); got "
                f"{len(metrics)} items of types {sorted({type(mt).__name__ for mt in metrics})}"
            )
        for mt in metrics:
            for t in mt.tensors:
                if t.dtype != g2.dtype or t.device != g2.device:
                    raise TypeError(
                        f"metric tensor has dtype {t.dtype} on {t.device}, but g has {g2.dtype} on "
                        f"{g2.device}; expected one dtype and device for all inputs"
                    )
        tensors = tuple(t for mt in metrics for t in mt.tensors)
        return "operator", metrics, tensors
    raise TypeError(
        "metric must be None (identity), a dense (n, n) tensor, or a difftrust Metric "
        f"(DenseMetric, CholeskyMetric, FisherMetric, OperatorMetric); got {type(metric).__name__}"
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
    key = (float(delta), like.dtype, like.device)
    if key not in _DELTAS:  # a module's delta is the same float call after call
        if len(_DELTAS) > 64:
            _DELTAS.clear()
        _DELTAS[key] = torch.tensor(key[0], dtype=like.dtype, device=like.device)
    return _DELTAS[key]


#: Scalar tensors of float deltas (never handed to the caller, never written to).
_DELTAS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def _raise_for(summary: list[float], H: Tensor | None, factor: bool = False) -> None:
    """Raise a named error for what the forward pass's one transfer found wrong.

    ``summary``: the largest over the batch of ``|g|``, ``|A|``, ``|b|`` (NaN and inf propagate) and,
    for a dense metric, of ``max |H - H'| / max |diag H|``, the failed Cholesky minor and the
    estimated condition number; for a Cholesky factor (``factor``, ``H`` is then ``L``), of the
    largest ``|L_ij|`` above the diagonal (the lean path: their count), of the number of diagonal
    entries <= 0, and the condition number.
    """
    if all(math.isfinite(v) for v in summary[:3]) and (
        H is None
        or (
            (summary[3] == 0 if factor else summary[3] <= 100 * torch.finfo(H.dtype).eps)
            and summary[4] == 0
            and summary[5] <= COND_LIMIT[H.dtype]
        )
    ):
        return
    for name, v in zip(("g", "A", "b"), summary[:3], strict=True):
        if not math.isfinite(v):
            raise ValueError(f"{name} contains NaN or inf entries; expected finite values")
    if H is None:
        return
    if factor:
        if not bool(torch.isfinite(H).all()):
            raise ValueError("metric factor L contains NaN or inf entries; expected finite values")
        if summary[3] != 0:
            count = int(torch.count_nonzero(torch.triu(H, 1), dim=(-2, -1)).amax())
            raise ValueError(
                f"metric factor L must be lower triangular: {count} nonzero entries above the "
                "diagonal; expected the lower Cholesky factor (as torch.linalg.cholesky returns it), or "
                "pass H = L L' as a dense metric"
            )
        if summary[4] > 0:
            raise ValueError(
                f"metric factor L has {int(summary[4])} diagonal entries <= 0; expected a Cholesky factor "
                "with a positive diagonal (H = L L' positive definite)"
            )
    elif not summary[3] <= 100 * torch.finfo(H.dtype).eps:  # NaN, or a matrix with a small diagonal
        if not bool(torch.isfinite(H).all()):
            raise ValueError("metric contains NaN or inf entries; expected finite values")
        asym = float((H - H.transpose(1, 2)).abs().amax())
        tol = 100 * torch.finfo(H.dtype).eps * float(H.abs().amax())
        if asym > tol:
            raise ValueError(
                f"metric must be symmetric: max |H - H'| = {asym:.3e} > {tol:.1e} (relative to max |H|); "
                "expected a symmetric positive-definite matrix"
            )
    if summary[4] > 0:
        raise ValueError(
            "metric is not positive definite: its Cholesky factorisation failed "
            f"(leading minor {int(summary[4])}); expected a symmetric positive-definite (n, n) matrix"
        )
    limit = COND_LIMIT[H.dtype]
    if not summary[5] <= limit:
        raise ValueError(
            f"metric is too ill-conditioned to certify in {H.dtype}: estimated condition number "
            f"{summary[5]:.3e} > {limit:.1e} (a lower bound from its Cholesky factor and one inverse "
            "iteration); expected a better-conditioned metric (add damping, or use float64)"
        )


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
    cg_tol: float | None = 1e-10,
    strict: bool = False,
) -> StepResult:
    """Functional form of :class:`TrustRegionStep` (same arguments); returns a :class:`StepResult`."""
    x, rec, batched = _step(g, A, b, metric, delta, solver, cg_iters, cg_tol, strict)
    state, sc = rec.state, rec.scales
    # the caller's units (C the column scales, h the metric's): x = H_s^-1 (c0 g - cA A'nu_s) / lam_s
    # gives lam = h lam_s / c0, nu = cA nu_s / c0; x = H_s^-1 G_s w_s = H^-1 G (C w_s / h) gives
    # w = C w_s / h, and K = h C^-1 K_s C^-1
    m = state.nu.shape[1]
    col = torch.cat([sc[:, :1], sc[:, 1:2].expand(-1, m)], 1)
    lam = state.lam / col[:, 0]
    nu = state.nu * (col[:, 1:] / col[:, :1])
    w = state.w * col
    K = rec.K / (col.unsqueeze(2) * col.unsqueeze(1))
    if rec.kind in ("dense", "factor"):
        h = sc[:, 2]
        lam, w, K = lam * h, w / h.unsqueeze(1), K * h[:, None, None]
    if batched:
        return StepResult(x, lam, nu, state.cases, rec.cg_residuals, w, K, state.solvers)
    return StepResult(x, lam[0], nu[0], state.cases[0], rec.cg_residuals, w[0], K[0], state.solvers[0])


def _check_cg(cg_iters: Any, cg_tol: Any) -> float | None:
    """``cg_tol`` as a float (or ``None``: truncated conjugate gradient), after checking both."""
    if isinstance(cg_iters, bool) or not isinstance(cg_iters, int) or cg_iters < 1:
        raise ValueError(f"cg_iters must be a positive int, got {cg_iters!r}")
    if cg_tol is None:
        return None
    if isinstance(cg_tol, bool) or not (isinstance(cg_tol, (int, float)) and cg_tol >= 0):
        raise ValueError(
            f"cg_tol must be a float >= 0 or None (truncated conjugate gradient), got {cg_tol!r}"
        )
    return float(cg_tol)


def _step(
    g: Any,
    A: Any,
    b: Any,
    metric: Any,
    delta: Any,
    solver: Any,
    cg_iters: int,
    cg_tol: float | None,
    strict: bool,
) -> tuple[Tensor, _Record, bool]:
    """The step (``(B, n)``, or ``(n,)`` for unbatched input), the forward's record and whether the
    input was batched."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    cg_tol = _check_cg(cg_iters, cg_tol)
    g2, A3, b2, batched, m = _normalise_inputs(g, A, b)
    check_solver(solver, m)
    kind, metric_obj, tensors = _normalise_metric(metric, g2, batched)
    d = _check_delta(delta, g2)
    need_grad = torch.is_grad_enabled() and (
        g2.requires_grad
        or A3.requires_grad
        or b2.requires_grad
        or d.requires_grad
        or any(t.requires_grad for t in tensors)
    )
    rec = _Record(kind, solver, metric_obj, cg_iters, cg_tol, strict, need_grad, batched, m)
    if kind == "operator":
        rec.counts = [len(mt.tensors) for mt in metric_obj]
    return _TrustRegionFunction.apply(g2, A3, b2, d, rec, *tensors), rec, batched


class TrustRegionStep(nn.Module):
    """Differentiable solution of ``max g'x s.t. 0.5 x'Hx <= delta, b + A x <= 0``.

    Args:
        delta: Trust-region size (> 0); a float, or a scalar tensor to differentiate through.
        solver: ``"auto"`` (exact active-set solver for m <= ``MAX_ACTIVE_SET_M``, conic beyond),
            ``"active-set"``, ``"analytic"`` (closed form only, m <= 1) or ``"conic"`` (diffcp for
            every m). Problems the active-set solver cannot certify (degenerate geometry) fall back
            to the closed form (m <= 1) or the conic backend.
        cg_iters: Conjugate-gradient iterations for operator metrics.
        cg_tol: Relative residual tolerance of conjugate gradient, or ``None`` for truncated
            conjugate gradient as TRPO and CPO define their step: ``cg_iters`` iterations are the
            method (stopping earlier only below ``difftrust.cg.TRUNCATED_TOL``, so the numbers are
            those of ``cg_tol = 1e-10``), and a residual left above it is neither warned about nor
            raised (every solve's residuals stay in :attr:`StepResult.cg_residuals`).
        strict: Raise (instead of warning with :class:`CGNotConvergedWarning`) when conjugate
            gradient does not reach ``cg_tol``.

    Calling the module with ``(g, A, b, metric)`` returns the step ``x``: ``g`` of shape ``(n,)``,
    ``A`` of shape ``(m, n)`` (``None`` or ``(0, n)`` for ``m = 0``; ``(n,)`` means ``m = 1``), ``b``
    of shape ``(m,)`` (a scalar for ``m = 1``), ``metric`` ``None`` (identity), a dense SPD
    ``(n, n)`` tensor or a :class:`~difftrust.metrics.Metric`. A leading batch dimension
    (``g (B, n)``, ``A (B, m, n)``, ``b (B, m)``, dense ``H (B, n, n)``, ``None``, or a list of B metric
    objects) solves B problems at once (batched linear algebra; with a list of operator metrics one
    conjugate-gradient run serves all problems, each product calling its own metric). Inputs may live on any device (CUDA included);
    the step is computed there. ``x`` is differentiable with respect to ``g``, ``A``, ``b``,
    ``delta`` (if a tensor), a dense metric and the tensors a metric object depends on.
    :meth:`solve` returns the diagnostics too.

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
        cg_tol: float | None = 1e-10,
        strict: bool = False,
    ):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
        tol = _check_cg(cg_iters, cg_tol)
        _check_delta(delta, torch.zeros((), dtype=torch.float64))
        self.delta = delta
        self.solver = solver
        self.cg_iters = cg_iters
        self.cg_tol = tol
        self.strict = bool(strict)

    def solve(
        self,
        g: Tensor,
        A: Tensor | None = None,
        b: Tensor | float | None = None,
        metric: Tensor | Metric | None = None,
    ) -> StepResult:
        """Solve and return the step with its diagnostics (``x`` is differentiable)."""
        return trust_region_step(
            g,
            A,
            b,
            metric,
            delta=self.delta,
            solver=self.solver,
            cg_iters=self.cg_iters,
            cg_tol=self.cg_tol,
            strict=self.strict,
        )

    def forward(
        self,
        g: Tensor,
        A: Tensor | None = None,
        b: Tensor | float | None = None,
        metric: Tensor | Metric | None = None,
    ) -> Tensor:
        return _step(g, A, b, metric, self.delta, self.solver, self.cg_iters, self.cg_tol, self.strict)[0]

    def extra_repr(self) -> str:
        d = float(self.delta) if isinstance(self.delta, Tensor) else self.delta
        return f"delta={d}, solver={self.solver!r}, cg_iters={self.cg_iters}, cg_tol={self.cg_tol}"
