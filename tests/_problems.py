"""Random trust-region instances and an independent reference solver (tests only).

The reference is cvxpy + Clarabel on the full problem in x, followed by a Newton polish of the
KKT system on the active set that Clarabel identifies (an interior-point solution of a linear
objective on an ellipsoid is accurate only to about sqrt(tolerance) along the boundary).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import scipy.optimize
import torch

REGIMES = ("inactive", "binding", "infeasible")
_OPTS = dict(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)


def random_problem(seed: int, n: int, m: int, regime: str):
    """Dense instance (g, A, b, H, delta) as float64 numpy arrays."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    H = M @ M.T / n + 0.5 * np.eye(n)
    g = rng.normal(size=n)
    A = rng.normal(size=(m, n))
    delta = float(rng.uniform(0.005, 0.05))
    Hinv = np.linalg.inv(H)
    radius = np.sqrt(2 * delta * np.einsum("ij,jk,ik->i", A, Hinv, A)) if m else np.zeros(0)
    if regime == "inactive":
        b = -radius * rng.uniform(1.2, 3.0, size=m)
    elif regime == "binding":
        b = radius * rng.uniform(-0.9, 0.5, size=m)
        x_tr = np.sqrt(2 * delta / (g @ Hinv @ g)) * Hinv @ g
        if m and np.all(b + A @ x_tr <= 0):
            j = int(np.argmax(A @ x_tr))
            b[j] = -0.5 * (A[j] @ x_tr)
    else:
        b = radius * rng.uniform(1.5, 3.0, size=m)
    return g, A, b, H, delta


def _polish_feasible(g, A, b, H, delta, x0, lam0, nu0, S):
    n, k = len(g), len(S)
    AS, bS = A[S], b[S]

    def F(z):
        x, lam, nu = z[:n], z[n], z[n + 1 :]
        return np.concatenate([g - lam * H @ x - AS.T @ nu, AS @ x + bS, [0.5 * x @ H @ x - delta]])

    sol = scipy.optimize.root(F, np.concatenate([x0, [lam0], nu0[S] if k else []]), tol=1e-15)
    return sol.x[:n] if np.abs(F(sol.x)).max() < 1e-12 else x0


def _polish_recovery(A, b, H, delta, x0, t0, lam0, mu0, S):
    n = A.shape[1]
    AS, bS = A[S], b[S]

    def F(z):
        x, t, lam, mu = z[:n], z[n], z[n + 1], z[n + 2 :]
        return np.concatenate(
            [AS.T @ mu + lam * H @ x, [1 - mu.sum()], AS @ x + bS - t, [0.5 * x @ H @ x - delta]]
        )

    sol = scipy.optimize.root(F, np.concatenate([x0, [t0, lam0], mu0[S]]), tol=1e-15)
    return sol.x[:n] if np.abs(F(sol.x)).max() < 1e-12 else x0


def reference_step(g, A, b, H, delta):
    """Independent solve of the full problem (recovery if infeasible); returns (x, status)."""
    n, m = g.shape[0], A.shape[0]
    L = np.linalg.cholesky(H)
    x = cp.Variable(n)
    tr = cp.norm(L.T @ x) <= np.sqrt(2 * delta)
    lin = [b + A @ x <= 0] if m else []
    prob = cp.Problem(cp.Maximize(g @ x), [tr, *lin])
    prob.solve(**_OPTS)
    if prob.status in ("optimal", "optimal_inaccurate"):
        xv = x.value
        nu = lin[0].dual_value if m else np.zeros(0)
        S = [j for j in range(m) if nu[j] > 1e-7 * max(1.0, np.abs(nu).max())]
        lam = float(g @ xv - (nu @ (A @ xv) if m else 0.0)) / (2 * delta)  # from x'(g - A'nu) = lam x'Hx
        if lam <= 0:
            return xv, "feasible"
        return _polish_feasible(g, A, b, H, delta, xv, lam, nu, S), "feasible"
    t = cp.Variable()
    rec = b + A @ x <= t
    prob = cp.Problem(cp.Minimize(t), [tr, rec])
    prob.solve(**_OPTS)
    xv, mu = x.value, rec.dual_value
    S = [j for j in range(m) if mu[j] > 1e-7]
    lam = float(-(mu @ (A @ xv))) / (2 * delta)
    return _polish_recovery(A, b, H, delta, xv, float(t.value), lam, mu, S), "recovery"


def t64(*arrays):
    return [torch.as_tensor(a, dtype=torch.float64) for a in arrays]
