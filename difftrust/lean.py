"""The layer's forward and backward for float64 CPU problems with a dense, Cholesky-factor or
identity metric, in numpy.

The same steps as :class:`difftrust.layer._TrustRegionFunction` (the module docstring of
:mod:`difftrust.layer` derives them), on the arrays behind the tensors: at ``n`` of tens a numpy
operation costs a fraction of an eager torch operation's fixed overhead, and the whole call is a
few dozen of them. Cholesky factorisation and solves are LAPACK's ``dpotrf``/``dpotrs`` without
scipy's input checks (the inputs were checked before: finiteness and symmetry from the same
maxima, positive definiteness from ``dpotrf``'s ``info``, conditioning from the same two bounds).
A metric given by its Cholesky factor skips ``dpotrf`` and the symmetry check (the factor's upper
triangle and diagonal are checked instead).
A batch (``B > 1``) runs the same steps on ``(B, ...)`` arrays, with torch's batched triangular
solves and Cholesky routines on the same memory (numpy has none that are batched; scipy's loop in
Python) and the numpy enumeration of the reduced problem; one problem uses scipy's LAPACK wrappers
and the enumeration in Python floats.
float32, other devices and operator metrics take the torch path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difftrust import reduced
from difftrust.active_set import NOT_CERTIFIED, active_set_vjp_python

__all__ = ["lean_backward", "lean_forward"]

#: Use this path where it applies (tests turn it off to compare with the torch path).
ENABLED = True


def _pow2(v: float) -> float:
    """``2^-e`` with ``v 2^-e`` in ``[0.5, 1)`` (1 for 0 and non-finite ``v``), exactly."""
    return math.ldexp(1.0, -math.frexp(v)[1]) if math.isfinite(v) else 1.0


_UPPER: dict[int, np.ndarray] = {}


def _upper(n: int) -> np.ndarray:
    """Flat indices of the entries above the diagonal of an ``(n, n)`` array (cached per n)."""
    if n not in _UPPER:
        i, j = np.triu_indices(n, 1)
        _UPPER[n] = i * n + j
    return _UPPER[n]


def lean_forward(
    rec: Any, g: Tensor, A: Tensor, b: Tensor, delta: Tensor, H: Tensor | None, probe: Tensor, raise_for: Any
) -> Tensor:
    """``x`` (1, n) for ``g (1, n)``, ``A (1, m, n)``, ``b (1, m)``, ``H (1, n, n)`` or None (identity);
    ``H`` is the Cholesky factor ``L`` where ``rec.kind == "factor"``; a batch (``B > 1``) goes to
    :func:`_forward_batch`.

    Fills ``rec`` as the torch path does (``scales``, ``K``, ``state``; ``P``, ``L``, ``x`` as arrays).
    """
    if g.shape[0] > 1:
        return _forward_batch(rec, g, A, b, delta, H, probe, raise_for)
    with np.errstate(all="ignore"):  # NaN and inf are reported by raise_for, by name
        gn, An, bn = g.detach().numpy()[0], A.detach().numpy()[0], b.detach().numpy()[0]
        m = An.shape[0]
        gmax = float(np.abs(gn).max())
        amax = float(np.abs(An).max()) if m else 0.0
        summary = [gmax, amax, float(np.abs(bn).max()) if m else gmax]
        c0, cA = _pow2(gmax), _pow2(amax)
        Gs = np.concatenate([gn[None] * c0, An * cA])  # (m+1, n), rows g, a_j
        bs = bn * cA
        if H is None:
            raise_for(summary, None)
            hs, P, L = 1.0, Gs.T, None
        elif rec.kind == "factor":  # H = L L' given by L: no factorisation, no symmetry to check
            from scipy.linalg.lapack import dpotrs

            Ln = H.detach().numpy()[0]
            n = Ln.shape[0]
            hmax = float(np.einsum("ij,ij->i", Ln, Ln).max())  # max diag(L L'); NaN and inf propagate
            sL = math.ldexp(1.0, math.frexp(_pow2(hmax))[1] // 2)  # H scaled by hs = sL^2, as the torch path
            hs = sL * sL
            ld = np.diagonal(Ln)
            summary.append(float(np.count_nonzero(Ln.ravel()[_upper(n)])) if n > 1 else 0.0)
            summary.append(float(np.count_nonzero(~(ld > 0))))
            cond = math.nan
            if summary[-1] == 0 and math.isfinite(hmax):
                L = Ln * sL
                Pr, _ = dpotrs(L, np.concatenate([Gs.T, probe.numpy()], 1), lower=1)
                P = Pr[:, :-1]
                r = Pr[:, -1]
                cond = max((ld.max() / ld.min()) ** 2, hmax * hs * math.sqrt(r @ r))
            summary.append(cond)
            raise_for(summary, H, True)
            rec.factor = Ln
        else:
            from scipy.linalg.lapack import dpotrf, dpotrs  # here: importing scipy.linalg takes ~0.2 s

            Hn = H.detach().numpy()[0]
            hmax = float(np.abs(np.diagonal(Hn)).max())
            hs = _pow2(hmax)
            L, info = dpotrf(Hn * hs, lower=1, clean=1)
            summary.append(float(np.abs(Hn - Hn.T).max()) / hmax if hmax > 0 else math.nan)
            summary.append(float(info))
            cond = math.nan
            if info == 0:
                Pr, _ = dpotrs(L, np.concatenate([Gs.T, probe.numpy()], 1), lower=1)
                P = Pr[:, :-1]
                ld = np.diagonal(L)
                r = Pr[:, -1]
                cond = max((ld.max() / ld.min()) ** 2, hmax * hs * math.sqrt(r @ r))
            summary.append(cond)
            raise_for(summary, H)
    K = Gs @ P
    ds = float(delta) * hs
    state = None
    if rec.solver in ("auto", "active-set") and reduced.ENUMERATION_BACKEND != "torch":
        if rec.solver == "active-set" or K.shape[0] - 1 <= reduced.MAX_ACTIVE_SET_M:
            state = reduced.solve_one(K.tolist(), bs.tolist(), ds, torch.float64)
    if state is None or state.active["code"][0] == NOT_CERTIFIED:  # the other solvers, the fallbacks
        Kt, bt, dt = (
            torch.from_numpy(K)[None],
            torch.from_numpy(bs)[None],
            torch.tensor([ds], dtype=torch.float64),
        )
        state = reduced.reduced_forward(Kt, bt, dt, rec.solver, rec.need_grad)
    w = state.w.numpy()[0]
    x = P @ w
    rec.scales = torch.from_numpy(np.array([[c0, cA, hs]]))
    rec.P, rec.L, rec.x, rec.K, rec.state = P, L, x, torch.from_numpy(K)[None], state
    return torch.from_numpy(x)[None]


def lean_backward(rec: Any, xbar: Tensor, need: tuple[bool, ...]) -> tuple:
    """``(gbar, Abar, bbar, deltabar, Hbar)`` of :func:`lean_forward` at ``xbar (1, n)`` (None where
    not needed), by the formulas of :meth:`difftrust.layer._TrustRegionFunction._vjp`."""
    if rec.P.ndim == 3:
        return _backward_batch(rec, xbar, need)
    P, L, state = rec.P, rec.L, rec.state
    c0, cA, hs = rec.scales.numpy()[0].tolist()
    xb = xbar.detach().numpy()[0]
    wbar = xb @ P
    if isinstance(state.active, dict) and "jacobian_args" in state.active and not state.fallback:
        Kbar, bbar, dbar = (np.array(t) for t in active_set_vjp_python(state.active, wbar.tolist()))
    else:
        Kbar, bbar, dbar = (t.numpy()[0] for t in reduced.reduced_vjp(state, torch.from_numpy(wbar)[None]))
    if L is None:
        u = xb
    else:
        from scipy.linalg.lapack import dpotrs

        u = dpotrs(L, xb, lower=1)[0]
    uw = u[:, None] * state.w.numpy()[0]
    gbar = Abar = deltabar = Hbar = None
    if need[0] or need[1]:
        Gbar = uw + P @ (Kbar + Kbar.T)
        gbar = torch.from_numpy(Gbar[:, 0] * c0)[None] if need[0] else None
        Abar = torch.from_numpy(Gbar[:, 1:].T * cA)[None] if need[1] else None
    if need[3]:
        deltabar = torch.from_numpy(np.asarray(dbar * hs))
    if L is not None and need[5]:
        if rec.kind == "factor":  # Lbar = 2 Hbar L = 2 (c Z (P'L) + P (c Z)'L), c = -h/2
            cZ = (uw + P @ Kbar) * (-hs)
            Lf = rec.factor
            Hbar = torch.from_numpy(cZ @ (P.T @ Lf) + P @ (cZ.T @ Lf))[None]
        else:
            cZ = (uw + P @ Kbar) * (-0.5 * hs)
            Hbar = torch.from_numpy(cZ @ P.T + P @ cZ.T)[None]
    return gbar, Abar, torch.from_numpy(bbar * cA)[None] if need[2] else None, deltabar, Hbar


# ---------------------------------------------------------------------------------------------
# batches: the same steps on (B, ...) arrays, torch's batched triangular and Cholesky routines on
# the same memory (numpy has no batched triangular solve)


def _batch_scales(gn: np.ndarray, An: np.ndarray, bn: np.ndarray) -> tuple:
    """Largest ``|g|``, ``|A|`` per problem, the checks' first three maxima and the powers of two
    ``c_0``, ``c_A`` (``(B,)`` each) with ``G_s (B, n, m+1)``, columns ``c_0 g``, ``c_A a_j``."""
    Bsz, m, n = An.shape
    gmax = np.abs(gn).max(1)
    amax = np.abs(An).reshape(Bsz, -1).max(1) if m else np.zeros(Bsz)
    summary = [float(gmax.max()), float(amax.max()), float(np.abs(bn).max()) if m else float(gmax.max())]
    c0 = np.ldexp(1.0, -np.frexp(gmax)[1])
    cA = np.ldexp(1.0, -np.frexp(amax)[1])
    return gmax, summary, c0, cA


def _chol_solve_batch(Lt: Tensor, R: np.ndarray) -> np.ndarray:
    """``H^-1 R`` for ``H = L L'`` by two batched triangular solves (faster here than torch's
    ``cholesky_solve``)."""
    Y = torch.linalg.solve_triangular(Lt, torch.from_numpy(R), upper=False)
    return torch.linalg.solve_triangular(Lt.mT, Y, upper=True).numpy()


def _forward_batch(
    rec: Any, g: Tensor, A: Tensor, b: Tensor, delta: Tensor, H: Tensor | None, probe: Tensor, raise_for: Any
) -> Tensor:
    """:func:`lean_forward` for ``B > 1`` problems: ``x (B, n)``."""
    with np.errstate(all="ignore"):
        gn, An, bn = g.detach().numpy(), A.detach().numpy(), b.detach().numpy()
        Bsz, m, n = An.shape
        _, summary, c0, cA = _batch_scales(gn, An, bn)
        # R = [c0 g, c_A a_1, ..., c_A a_m, r] as columns, (B, n, m+2); G_s = R[:, :, :-1]
        R = np.empty((Bsz, n, m + 2))
        R[:, :, 0] = gn * c0[:, None]
        R[:, :, 1 : m + 1] = (An * cA[:, None, None]).transpose(0, 2, 1)
        R[:, :, m + 1] = probe.numpy()[:, 0]
        hs = np.ones(Bsz)
        if H is None:
            raise_for(summary, None)
            P = R[:, :, :-1]
        elif rec.kind == "factor":  # H = L L' given by L (see lean_forward)
            Ln = H.detach().numpy()
            hmax = np.einsum("bij,bij->bi", Ln, Ln).max(1)  # max diag(L L') per problem
            sL = np.ldexp(1.0, (1 - np.frexp(hmax)[1]) // 2)
            hs = sL * sL
            ld = np.diagonal(Ln, axis1=1, axis2=2)
            summary.append(float(Ln.reshape(Bsz, -1)[:, _upper(n)].any()) if n > 1 else 0.0)
            summary.append(float((~(ld > 0)).sum(1).max()))
            cond = math.nan
            if summary[-2] == 0 and summary[-1] == 0 and np.isfinite(hmax).all():
                Lt = H.detach()
                inv = (1.0 / sL)[:, None, None]
                Y = torch.linalg.solve_triangular(Lt, torch.from_numpy(R), upper=False).numpy() * inv
                Pr = torch.linalg.solve_triangular(Lt.mT, torch.from_numpy(Y), upper=True).numpy() * inv
                P = Pr[:, :, :-1]
                cond = float(
                    np.maximum(
                        (ld.max(1) / ld.min(1)) ** 2, hmax * hs * np.linalg.norm(Pr[:, :, -1], axis=1)
                    ).max()
                )
                rec.L, rec.factor, rec.Y = Lt, sL, Y
            summary.append(cond)
            raise_for(summary, H, True)
        else:
            Hn = H.detach().numpy()
            hmax = np.abs(np.diagonal(Hn, axis1=1, axis2=2)).max(1)
            hs = np.ldexp(1.0, -np.frexp(hmax)[1])
            Lt, info = torch.linalg.cholesky_ex(torch.from_numpy(Hn * hs[:, None, None]))
            asym = Hn - Hn.transpose(0, 2, 1)  # one (B, n, n) temporary, made absolute in place
            summary.append(float((np.abs(asym, out=asym).reshape(Bsz, -1).max(1) / hmax).max()))
            summary.append(float(info.max()))
            cond = math.nan
            if summary[-1] == 0:
                Pr = _chol_solve_batch(Lt, R)
                P = Pr[:, :, :-1]
                ld = np.diagonal(Lt.numpy(), axis1=1, axis2=2)
                cond = float(
                    np.maximum(
                        (ld.max(1) / ld.min(1)) ** 2, hmax * hs * np.linalg.norm(Pr[:, :, -1], axis=1)
                    ).max()
                )
                rec.L = Lt
            summary.append(cond)
            raise_for(summary, H)
    K = R[:, :, :-1].transpose(0, 2, 1) @ P
    state = reduced.reduced_forward(
        torch.from_numpy(K),
        torch.from_numpy(bn * cA[:, None]),
        torch.from_numpy(float(delta) * hs),
        rec.solver,
        rec.need_grad,
    )
    x = (P @ state.w.numpy()[:, :, None])[:, :, 0]
    rec.scales = torch.from_numpy(np.stack([c0, cA, hs], 1))
    rec.P, rec.x, rec.K, rec.state = P, x, torch.from_numpy(K), state
    return torch.from_numpy(x)


def _backward_batch(rec: Any, xbar: Tensor, need: tuple[bool, ...]) -> tuple:
    """:func:`lean_backward` for ``B > 1`` problems."""
    P, state = rec.P, rec.state
    c0, cA, hs = rec.scales.numpy().T
    xb = np.ascontiguousarray(xbar.detach().numpy())
    wbar = (xb[:, None, :] @ P)[:, 0]
    Kbar, bbar, dbar = (t.numpy() for t in reduced.reduced_vjp(state, torch.from_numpy(wbar)))
    if rec.kind == "factor":
        inv = (1.0 / rec.factor)[:, None, None]
        Y_u = (
            torch.linalg.solve_triangular(rec.L, torch.from_numpy(xb[:, :, None]), upper=False).numpy() * inv
        )
        u = (torch.linalg.solve_triangular(rec.L.mT, torch.from_numpy(Y_u), upper=True).numpy() * inv)[
            :, :, 0
        ]
    elif rec.kind == "dense":
        u = _chol_solve_batch(rec.L, xb[:, :, None])[:, :, 0]
    else:
        u = xb
    w = state.w.numpy()
    uw = u[:, :, None] * w[:, None, :]
    gbar = Abar = deltabar = Hbar = None
    PKs = P @ (Kbar + Kbar.transpose(0, 2, 1)) if need[0] or need[1] or rec.kind == "factor" else None
    if need[0] or need[1]:
        Gbar = uw + PKs
        gbar = torch.from_numpy(Gbar[:, :, 0] * c0[:, None]) if need[0] else None
        Abar = torch.from_numpy(Gbar[:, :, 1:].transpose(0, 2, 1) * cA[:, None, None]) if need[1] else None
    if need[3]:
        deltabar = torch.from_numpy(np.asarray((dbar * hs).sum()))
    if rec.kind == "dense" and need[5]:  # -h sym(Z P') as one product, Z = u w' + P Kbar
        cZ = (uw + P @ Kbar) * (-0.5 * hs)[:, None, None]
        Hbar = torch.from_numpy(np.concatenate([cZ, P], 2) @ np.concatenate([P, cZ], 2).transpose(0, 2, 1))
    elif rec.kind == "factor" and need[5]:  # Lbar = -sL (u (Y w)' + x Y_u' + P (Kbar + Kbar') Y')
        Y = rec.Y[:, :, :-1]
        left = np.concatenate([u[:, :, None], rec.x[:, :, None], PKs], 2) * (-rec.factor)[:, None, None]
        right = np.concatenate([Y @ w[:, :, None], Y_u, Y], 2)
        Hbar = torch.from_numpy(left @ right.transpose(0, 2, 1))
    return gbar, Abar, torch.from_numpy(bbar * cA[:, None]) if need[2] else None, deltabar, Hbar
