"""Conjugate gradient for symmetric positive-definite operators, several right-hand sides.

The solver knows nothing of RL or of the trust-region problem: it solves
``H X = R`` column by column (each column is an independent CG run, vectorised),
given only ``matvec: (n, k) -> (n, k)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGNotConvergedWarning", "CGResult", "TRUNCATED_TOL", "conjugate_gradient"]

#: Curvature ``p'Hp / p'p`` below this fraction of the largest seen counts as zero (singular H),
#: and the ratio largest / smallest seen (a lower bound on the condition number) is capped at its
#: inverse: beyond it float64 cannot certify the solve.
CURVATURE_RTOL = 1e-13

#: With ``tol=None`` (truncated conjugate gradient) a column still stops once its relative
#: residual is at most this: a residual this small is a solve to working precision for the
#: problems of this package, and stopping there keeps ``tol=None`` the same computation as
#: ``tol=1e-10``.
TRUNCATED_TOL = 1e-10


class CGNotConvergedWarning(UserWarning):
    """Conjugate gradient stopped at ``max_iter`` above its tolerance (the message names the residual)."""


@dataclass
class CGResult:
    """Result of :func:`conjugate_gradient`.

    Attributes:
        x: The solution, same shape as the right-hand side.
        residuals: Relative residual norm ``||r_k|| / ||b_k||`` of each column, shape ``(k,)``
            (``0`` for a zero right-hand side).
        iterations: Number of iterations run (the slowest column).
        tol: The tolerance asked for (``None``: truncated conjugate gradient, no tolerance to
            meet; see :func:`conjugate_gradient`).
    """

    x: Tensor
    residuals: Tensor
    iterations: int
    tol: float | None = None

    @property
    def converged(self) -> bool | None:
        """Whether every column reached ``tol`` (``None`` for truncated conjugate gradient)."""
        if self.tol is None:
            return None
        return bool((self.residuals <= self.tol).all())


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    rhs: Tensor,
    *,
    max_iter: int = 10,
    tol: float | None = 1e-10,
    x0: Tensor | None = None,
) -> CGResult:
    """Solve ``H x = rhs`` by conjugate gradient, for one or several right-hand sides.

    Each column of ``rhs`` is solved by its own CG recurrence (its own step sizes), all
    columns sharing one ``matvec`` call per iteration. A column stops once its relative
    residual ``||r|| / ||rhs||`` is at most ``tol``.

    ``tol=None`` is *truncated* conjugate gradient, as TRPO and CPO define their step:
    ``max_iter`` iterations are the method, and a residual left above any tolerance is not a
    failure (:attr:`CGResult.converged` is ``None``; callers should not warn about it). A column
    still stops early once its relative residual is at most :data:`TRUNCATED_TOL`, so the result
    is exactly that of ``tol=TRUNCATED_TOL``. This function never warns; the residuals are in the
    result either way.

    Args:
        matvec: ``V -> H V`` for ``V`` of shape ``(n, k)``; ``H`` must be symmetric positive
            definite.
        rhs: Right-hand side(s), shape ``(n,)`` or ``(n, k)``.
        max_iter: Maximum number of iterations (>= 1).
        tol: Relative residual tolerance (>= 0), or ``None`` for truncated conjugate gradient.
        x0: Optional initial guess, same shape as ``rhs``.

    Returns:
        A :class:`CGResult`.

    Raises:
        ValueError: For bad arguments, for an operator returning a wrong shape or non-finite
            values, or when CG meets non-positive or vanishing curvature (``p'Hp <= 0``, or
            ``p'Hp / p'p`` below ``CURVATURE_RTOL`` times the largest seen: the operator is not
            positive definite, or singular to working precision).

    Example:
        >>> H = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> res = conjugate_gradient(lambda v: H @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> torch.allclose(H @ res.x, torch.tensor([1.0, 2.0], dtype=torch.float64))
        True
    """
    if not isinstance(rhs, Tensor):
        raise TypeError(f"rhs must be a torch.Tensor, got {type(rhs).__name__}")
    if rhs.dim() not in (1, 2):
        raise ValueError(f"rhs must have shape (n,) or (n, k), got {tuple(rhs.shape)}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    asked = tol
    if tol is None:
        tol = TRUNCATED_TOL
    elif isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0 or None (truncated conjugate gradient), got {tol!r}")
    vector = rhs.dim() == 1
    B = rhs.unsqueeze(1) if vector else rhs
    if x0 is None:
        X = torch.zeros_like(B)
        R = B.clone()
    else:
        if x0.shape != rhs.shape:
            raise ValueError(f"x0 must have the shape of rhs {tuple(rhs.shape)}, got {tuple(x0.shape)}")
        X = (x0.unsqueeze(1) if vector else x0).clone()
        R = B - matvec(X)
    bnorm = B.norm(dim=0)
    scale = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    Pd = R.clone()
    rr = (R * R).sum(0)
    it = 0
    rq_max = torch.zeros((), dtype=B.dtype, device=B.device)
    rtol = CURVATURE_RTOL if B.dtype == torch.float64 else 1e4 * CURVATURE_RTOL
    for it in range(1, max_iter + 1):
        active = rr.sqrt() > tol * scale
        if not bool(active.any()):
            it -= 1
            break
        HP = matvec(Pd)
        if not isinstance(HP, Tensor) or HP.shape != Pd.shape:
            shape = tuple(HP.shape) if isinstance(HP, Tensor) else type(HP).__name__
            raise ValueError(
                f"matvec returned {shape} for an input of shape {tuple(Pd.shape)}; expected the same shape"
            )
        pHp = (Pd * HP).sum(0)
        rq = pHp / torch.where(active, (Pd * Pd).sum(0), torch.ones_like(pHp))
        rq_max = torch.maximum(rq_max, torch.where(active, rq, torch.zeros_like(rq)).amax())
        bad = active & ~(rq > rtol * rq_max)
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            kind = "non-positive" if float(pHp[j]) <= 0 else "vanishing"
            raise ValueError(
                f"metric is not positive definite: conjugate gradient met {kind} curvature p'Hp = "
                f"{float(pHp[j]):.3e} (p'Hp/p'p = {float(rq[j]):.3e}, largest seen {float(rq_max):.3e}) in "
                f"column {j} at iteration {it}; expected a symmetric positive-definite metric, not "
                "singular to working precision (add damping?)"
            )
        safe = torch.where(active, pHp, torch.ones_like(pHp))
        alpha = torch.where(active, rr / safe, torch.zeros_like(rr))
        X = X + alpha * Pd
        R = R - alpha * HP
        rr_new = (R * R).sum(0)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), 0.0)
        Pd = torch.where(active, R + beta * Pd, Pd)
        rr = torch.where(active, rr_new, rr)
    residuals = rr.sqrt() / scale
    return CGResult(X.squeeze(1) if vector else X, residuals, it, None if asked is None else float(asked))
