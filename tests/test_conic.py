"""Tests of the conic backend (difftrust.conic): values against cvxpy and the m = 1 closed form,
gradients against central finite differences, recovery, degenerate inputs, float32."""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cvxpy as cp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from difftrust.conic import solve_conic  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64
REGIMES = ("inactive", "binding", "infeasible")


def instance(seed: int, m: int, regime: str, ridge: float = 0.1) -> tuple[np.ndarray, np.ndarray, float]:
    """``(G, b, delta)`` with ``K = G'G + ridge I``; ``regime`` places the constraints relative to
    the trust region (``|b_j| = sqrt(2 delta K_jj)`` is where constraint j touches it)."""
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(m + 1, m + 1))
    delta = float(rng.uniform(0.01, 0.1))
    K = G.T @ G + ridge * np.eye(m + 1)
    radius = np.sqrt(2 * delta * np.diag(K)[1:])
    if regime == "inactive":
        b = -radius * rng.uniform(1.2, 3.0, size=m)
    elif regime == "binding":
        b = radius * rng.uniform(-0.9, 0.3, size=m)
        w_tr = np.zeros(m + 1)
        w_tr[0] = np.sqrt(2 * delta / K[0, 0])
        if m and np.all(b + K[1:] @ w_tr <= 0):  # make sure one constraint cuts the TR step
            j = int(np.argmax(K[1:] @ w_tr))
            b[j] = -0.5 * K[1 + j] @ w_tr
    else:
        b = radius * rng.uniform(1.5, 3.0, size=m)
    return G, b, delta


def gram(G: torch.Tensor, ridge: float = 0.1) -> torch.Tensor:
    return G.T @ G + ridge * torch.eye(G.shape[0], dtype=G.dtype)


def reference(K: np.ndarray, b: np.ndarray, delta: float) -> tuple[str, np.ndarray, float]:
    """Independent reference: cvxpy (Clarabel) on the reduced problem, or on its recovery problem.

    An interior-point point of a linear objective on a curved boundary is accurate only to about
    sqrt(tol) (measured here: 3e-5 in w at tol 1e-11), so the cvxpy point is then polished with
    scipy's root finder on the KKT system of its own active set (plain formulas in w, K, b: no
    normalisation, no Cholesky, no cone form), and the polish is accepted only if it stays within
    1e-3 of the cvxpy point.
    """
    m1 = K.shape[0]
    scale = np.trace(K) / m1
    Kn, bn = K / scale, b / scale  # same argmax; keeps Clarabel's absolute tolerances meaningful
    opts = dict(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    ok = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
    w = cp.Variable(m1)
    tr = 0.5 * cp.quad_form(w, cp.psd_wrap(Kn)) <= delta / scale
    lin = bn + Kn[1:] @ w <= 0
    prob = cp.Problem(cp.Maximize(Kn[0] @ w), [tr, lin] if m1 > 1 else [tr])
    prob.solve(**opts)
    if prob.status in ok:
        w0, lam0 = w.value, float(tr.dual_value) * scale
        nu0 = np.asarray(lin.dual_value).reshape(-1) if m1 > 1 else np.zeros(0)
        S = np.flatnonzero(nu0 > np.abs(b + K[1:] @ w0) / scale)

        def F(z: np.ndarray) -> np.ndarray:
            wz, lam, nu = z[:m1], z[m1], z[m1 + 1 :]
            return np.concatenate(
                [K[0] - K[1 + S].T @ nu - lam * K @ wz, b[S] + K[1 + S] @ wz, [0.5 * wz @ K @ wz - delta]]
            )

        z = scipy.optimize.root(F, np.concatenate([w0, [lam0], nu0[S]]), tol=1e-15).x
        kind, w1 = "feasible", z[:m1]
    else:
        assert prob.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE), prob.status
        t = cp.Variable()
        lin = bn + Kn[1:] @ w <= t
        prob = cp.Problem(cp.Minimize(t), [tr, lin])
        prob.solve(**opts)
        assert prob.status in ok, prob.status
        w0, lam0, mu0 = w.value, float(tr.dual_value), np.asarray(lin.dual_value).reshape(-1)
        S = np.flatnonzero(mu0 > np.abs(b + K[1:] @ w0 - scale * t.value) / scale)

        def F(z: np.ndarray) -> np.ndarray:
            wz, tz, lam, mu = z[:m1], z[m1], z[m1 + 1], z[m1 + 2 :]
            return np.concatenate(
                [
                    K[1 + S].T @ mu + lam * K @ wz,
                    [1 - mu.sum()],
                    b[S] + K[1 + S] @ wz - tz,
                    [0.5 * wz @ K @ wz - delta],
                ]
            )

        z0 = np.concatenate([w0, [scale * t.value], [lam0], mu0[S]])
        z = scipy.optimize.root(F, z0, tol=1e-15).x
        kind, w1 = "recovery", z[:m1]
    assert np.abs(w1 - w0).max() <= 1e-3 * np.abs(w0).max(), "polish left the cvxpy solution"
    val = float(K[0] @ w1) if kind == "feasible" else float(np.max(b + K[1:] @ w1))
    return kind, w1, val


def closed_form_m1(K: np.ndarray, c: float, delta: float) -> np.ndarray:
    """The m = 1 closed form (maximisation form), written out independently of the package."""
    q, r, s = K[0, 0], K[0, 1], K[1, 1]
    if c < 0 and c * c >= 2 * delta * s:
        return np.array([math.sqrt(2 * delta / q), 0.0])
    if c > 0 and c * c >= 2 * delta * s:
        return np.array([0.0, -math.sqrt(2 * delta / s)])
    A, B = q - r * r / s, 2 * delta - c * c / s
    candidates = []
    # La = {lam > 0: lam c + r > 0}, Lb = {lam > 0: lam c + r <= 0}, as (lo, hi); None if empty
    if c > 0:
        brk = -r / c
        La, Lb = (max(0.0, brk), math.inf), ((0.0, brk) if brk > 0 else None)
    elif c < 0:
        brk = -r / c
        La, Lb = ((0.0, brk) if brk > 0 else None), (max(0.0, brk), math.inf)
    else:
        La, Lb = ((0.0, math.inf), None) if r > 0 else (None, (0.0, math.inf))
    if La is not None:
        lam = min(max(math.sqrt(A / B), La[0]), La[1])
        if lam > 0:
            candidates.append((0.5 * (A / lam + B * lam) - r * c / s, lam))
    if Lb is not None:
        lam = min(max(math.sqrt(q / (2 * delta)), Lb[0]), Lb[1])
        if lam > 0:
            candidates.append((0.5 * (q / lam + 2 * delta * lam), lam))
    _, lam = min(candidates)
    nu = max(0.0, (lam * c + r) / s)
    return np.array([1 / lam, -nu / lam])


def solve_np(K: np.ndarray, b: np.ndarray, delta: float):
    return solve_conic(torch.tensor(K, dtype=F64), torch.tensor(b, dtype=F64), torch.tensor(delta, dtype=F64))


# ---------------------------------------------------------------------------------------------
# values


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), m=st.sampled_from([1, 2, 3]), regime=st.sampled_from(REGIMES))
def test_matches_cvxpy(seed: int, m: int, regime: str) -> None:
    G, b, delta = instance(seed, m, regime)
    K = G.T @ G + 0.1 * np.eye(m + 1)
    kind, w_ref, val_ref = reference(K, b, delta)
    sol = solve_np(K, b, delta)
    w = sol.w.numpy()
    assert (sol.case == "recovery") == (kind == "recovery")
    if regime == "infeasible":
        assert sol.case == "recovery"
    if regime == "inactive":
        assert sol.case == "trust-region"
    val = float(K[0] @ w) if kind == "feasible" else float(np.max(b + K[1:] @ w))
    assert val == pytest.approx(val_ref, rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-6 * np.abs(w_ref).max())
    # feasibility of (P) to solver precision
    assert 0.5 * w @ K @ w <= delta * (1 + 1e-9)
    if kind == "feasible":
        assert np.all(b + K[1:] @ w <= 1e-9 * np.sqrt(delta * np.diag(K)[1:].max()))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), regime=st.sampled_from(REGIMES))
def test_m1_matches_closed_form(seed: int, regime: str) -> None:
    G, b, delta = instance(seed, 1, regime)
    K = G.T @ G + 0.1 * np.eye(2)
    sol = solve_np(K, b, delta)
    w_ref = closed_form_m1(K, float(b[0]), delta)
    np.testing.assert_allclose(sol.w.numpy(), w_ref, rtol=0, atol=1e-8 * np.abs(w_ref).max())
    if sol.case != "recovery":
        assert float(sol.lam) == pytest.approx(1 / w_ref[0], rel=1e-7)
        assert float(sol.nu[0]) == pytest.approx(-w_ref[1] / w_ref[0], rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovery_m1_is_the_closed_form_step(seed: int) -> None:
    G, b, delta = instance(seed, 1, "infeasible")
    K = G.T @ G + 0.1 * np.eye(2)
    sol = solve_np(K, b, delta)
    assert sol.case == "recovery"
    np.testing.assert_allclose(sol.w.numpy(), [0.0, -math.sqrt(2 * delta / K[1, 1])], rtol=0, atol=1e-9)
    assert math.isnan(float(sol.lam)) and math.isnan(float(sol.nu[0]))
    assert sol.violation == pytest.approx(b[0] - math.sqrt(2 * delta * K[1, 1]), rel=1e-9)


def test_design_example_plain_trust_region_step() -> None:
    # H = I, g = e1, a = (0.5, sqrt(.75)), c = -0.1, delta = 0.01: x = 0.1414 e1
    K = np.array([[1.0, 0.5], [0.5, 1.0]])
    sol = solve_np(K, np.array([-0.1]), 0.01)
    assert sol.case == "trust-region"
    np.testing.assert_allclose(sol.w.numpy(), [math.sqrt(0.02), 0.0], atol=1e-10)
    assert float(sol.nu[0]) == 0.0
    assert float(sol.lam) == pytest.approx(1 / math.sqrt(0.02), rel=1e-9)


def test_m0_is_the_natural_gradient_step() -> None:
    K = np.array([[2.5]])
    sol = solve_np(K, np.zeros(0), 0.02)
    assert sol.case == "trust-region"
    assert sol.nu.shape == (0,)
    assert float(sol.w[0]) == pytest.approx(math.sqrt(2 * 0.02 / 2.5), rel=1e-10)


def test_constrained_case_and_multipliers() -> None:
    G, b, delta = instance(3, 2, "binding")
    K = G.T @ G + 0.1 * np.eye(3)
    sol = solve_np(K, b, delta)
    w = sol.w.numpy()
    slack = b + K[1:] @ w
    assert sol.case == "constrained"
    active = slack > -1e-9
    assert active.any()
    nu = sol.nu.numpy()
    assert np.all(nu[~active] == 0.0) and np.all(nu[active] > 0)
    # stationarity of the reduced Lagrangian: K[0] - sum nu_j K[j] = lam K w
    np.testing.assert_allclose(K[0] - nu @ K[1:], float(sol.lam) * K @ w, atol=1e-9)


def test_degenerate_gram_matrix_gives_a_finite_sensible_step() -> None:
    # g parallel to a (K singular), constraint binding strictly inside the trust region:
    # x = -(c/s) H^-1 a, i.e. K w = K (0, -c/s), and w is the minimum-norm choice.
    a = np.array([0.6, 0.8])
    Gm = np.stack([2.0 * a, a], 1)  # g = 2a
    K = Gm.T @ Gm
    c, delta = 0.05, 0.5
    sol = solve_np(K, np.array([c]), delta)
    w = sol.w.numpy()
    assert np.all(np.isfinite(w))
    assert sol.case == "constrained"
    np.testing.assert_allclose(K @ w, K @ np.array([0.0, -c / K[1, 1]]), atol=1e-8)
    # minimum norm: w is orthogonal to the null space (1, -2)/sqrt(5) of K, i.e. w = (-0.02, -0.01)
    assert abs(w @ np.array([1.0, -2.0])) < 1e-6 * np.abs(w).max()


def test_zero_gradient_and_zero_gram() -> None:
    K = np.diag([0.0, 1.0])  # g = 0, a = e2, constraint satisfied at x = 0
    sol = solve_np(K, np.array([-0.1]), 0.01)
    assert np.all(np.isfinite(sol.w.numpy()))
    assert float(np.max(np.abs(K @ sol.w.numpy()))) < 1e-6
    sol = solve_np(np.zeros((2, 2)), np.array([0.1]), 0.01)
    assert sol.case == "recovery" and np.all(sol.w.numpy() == 0)


def test_input_validation() -> None:
    K = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="b must have shape"):
        solve_conic(K, torch.zeros(2, dtype=F64), torch.tensor(0.1, dtype=F64))
    with pytest.raises(ValueError, match="delta must be > 0"):
        solve_conic(K, torch.zeros(1, dtype=F64), torch.tensor(0.0, dtype=F64))
    with pytest.raises(ValueError, match="positive semidefinite"):
        solve_conic(
            torch.diag(torch.tensor([1.0, -1.0], dtype=F64)), torch.zeros(1, dtype=F64), torch.tensor(0.1)
        )
    with pytest.raises(TypeError):
        solve_conic(np.eye(2), torch.zeros(1, dtype=F64), torch.tensor(0.1))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# gradients


def _directional_fd(fun, x0: torch.Tensor, e: torch.Tensor, h: float) -> float:
    return (fun(x0 + h * e) - fun(x0 - h * e)) / (2 * h)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), m=st.sampled_from([1, 2, 3]), regime=st.sampled_from(REGIMES))
def test_gradients_match_finite_differences(seed: int, m: int, regime: str) -> None:
    G0, b0, d0 = instance(seed, m, regime)
    rng = np.random.default_rng(seed + 1)
    u = torch.tensor(rng.normal(size=m + 1), dtype=F64)
    G = torch.tensor(G0, dtype=F64, requires_grad=True)
    b = torch.tensor(b0, dtype=F64, requires_grad=True)
    d = torch.tensor(d0, dtype=F64, requires_grad=True)
    out = solve_conic(gram(G), b, d).w @ u
    gG, gb, gd = torch.autograd.grad(out, (G, b, d))

    def value(Gv: torch.Tensor, bv: torch.Tensor, dv: torch.Tensor) -> float:
        return float(solve_conic(gram(Gv), bv, dv).w @ u)

    Gd, bd, dd = G.detach(), b.detach(), d.detach()
    checks = [
        (lambda x: value(x, bd, dd), Gd, torch.tensor(rng.normal(size=Gd.shape)), gG),
        (lambda x: value(Gd, x, dd), bd, torch.tensor(rng.normal(size=bd.shape)), gb),
        (lambda x: value(Gd, bd, x), dd, torch.tensor(1.0, dtype=F64), gd),
    ]
    compared = 0
    for fun, x0, e, grad in checks:
        scale = float(x0.abs().max()) if x0.numel() else 1.0
        fd1 = _directional_fd(fun, x0, e, 1e-5 * scale)
        fd2 = _directional_fd(fun, x0, e, 2e-5 * scale)
        tol = 1e-6 * max(abs(fd1), float(u.abs().max()) * 1e-2)
        if abs(fd1 - fd2) > 0.25 * tol:  # a case boundary inside the stencil: not a smooth point
            continue
        assert float((grad * e).sum()) == pytest.approx(fd1, abs=tol)
        compared += 1
    assert compared >= 2


def test_gradient_wrt_k_is_symmetric_for_the_matrix_as_given() -> None:
    G0, b0, d0 = instance(5, 2, "binding")
    K = torch.tensor(G0.T @ G0 + 0.1 * np.eye(3), dtype=F64)
    K[0, 1] += 1e-3  # slightly asymmetric input: only 0.5 (K + K') is used
    K.requires_grad_(True)
    u = torch.tensor([1.0, -0.3, 0.7], dtype=F64)
    b, d = torch.tensor(b0, dtype=F64), torch.tensor(d0, dtype=F64)
    (gK,) = torch.autograd.grad(solve_conic(K, b, d).w @ u, K)
    torch.testing.assert_close(gK, gK.T, rtol=0, atol=1e-12)
    E = torch.zeros(3, 3, dtype=F64)
    E[0, 1] = 1.0  # perturb one off-diagonal entry only
    h = 1e-6
    fd = (
        float(solve_conic(K.detach() + h * E, b, d).w @ u)
        - float(solve_conic(K.detach() - h * E, b, d).w @ u)
    ) / (2 * h)
    assert float(gK[0, 1]) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_m0_gradient() -> None:
    K = torch.tensor([[2.5]], dtype=F64, requires_grad=True)
    d = torch.tensor(0.02, dtype=F64, requires_grad=True)
    w = solve_conic(K, torch.zeros(0, dtype=F64), d).w[0]
    gK, gd = torch.autograd.grad(w, (K, d))
    # w = sqrt(2 delta / K): dw/dK = -w/(2K), dw/ddelta = w/(2 delta)
    assert float(gK) == pytest.approx(-float(w) / 5.0, rel=1e-8)
    assert float(gd) == pytest.approx(float(w) / 0.04, rel=1e-8)


# ---------------------------------------------------------------------------------------------
# float32


@pytest.mark.parametrize("regime", REGIMES)
def test_float32_inputs(regime: str) -> None:
    G0, b0, d0 = instance(11, 2, regime)
    K64 = G0.T @ G0 + 0.1 * np.eye(3)
    ref = solve_np(K64, b0, d0)
    K = torch.tensor(K64, dtype=torch.float32, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float32, requires_grad=True)
    d = torch.tensor(d0, dtype=torch.float32, requires_grad=True)
    sol = solve_conic(K, b, d)
    assert sol.w.dtype == torch.float32 and sol.lam.dtype == torch.float32
    assert sol.case == ref.case
    np.testing.assert_allclose(sol.w.detach().numpy(), ref.w.numpy(), rtol=1e-4, atol=1e-5)
    gK, gb, gd = torch.autograd.grad(sol.w.sum(), (K, b, d))
    assert gK.dtype == torch.float32 and bool(torch.isfinite(gK).all() and torch.isfinite(gb).all())
    assert math.isfinite(float(gd))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_return_on_the_input_device() -> None:
    G0, b0, d0 = instance(7, 2, "binding")
    K64 = G0.T @ G0 + 0.1 * np.eye(3)
    ref = solve_np(K64, b0, d0)
    K = torch.tensor(K64, dtype=F64, device="cuda", requires_grad=True)
    b = torch.tensor(b0, dtype=F64, device="cuda")
    d = torch.tensor(d0, dtype=F64, device="cuda")
    sol = solve_conic(K, b, d)
    assert sol.w.device.type == "cuda" and sol.nu.device.type == "cuda"
    np.testing.assert_allclose(sol.w.detach().cpu().numpy(), ref.w.numpy(), atol=1e-12)
    (gK,) = torch.autograd.grad(sol.w.sum(), K)
    assert gK.device.type == "cuda"
