"""Tests of the trust-region layer: values, gradients, published defects, degenerate and bad input."""

from __future__ import annotations

import math
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difftrust import DenseMetric, TrustRegionStep, trust_region_step
from tests._problems import REGIMES, random_problem, reference_step, t64

# ---------------------------------------------------------------------------------------------
# values against an independent cvxpy (Clarabel) solve


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 7),
    m=st.integers(0, 3),
    regime=st.sampled_from(REGIMES),
)
@settings(max_examples=40)
def test_step_matches_cvxpy(seed, n, m, regime):
    if m == 0 and regime != "inactive":
        regime = "inactive"
    g, A, b, H, delta = random_problem(seed, n, m, regime)
    x_ref, status = reference_step(g, A, b, H, delta)
    res = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H))
    x = res.x.numpy()
    assert np.linalg.norm(x - x_ref) <= 1e-6 * max(np.linalg.norm(x_ref), 1e-3)
    assert (res.case == "recovery") == (status == "recovery")
    # the step respects the trust region
    assert 0.5 * x @ H @ x <= delta * (1 + 1e-8)
    if status == "feasible" and m:
        assert np.all(b + A @ x <= 1e-8)


@given(seed=st.integers(0, 10_000), n=st.integers(2, 6), regime=st.sampled_from(REGIMES))
@settings(max_examples=30)
def test_closed_form_and_conic_agree_m1(seed, n, regime):
    g, A, b, H, delta = random_problem(seed, n, 1, regime)
    args = t64(g, A, b, H)
    ra = TrustRegionStep(delta=delta, solver="analytic").solve(*args)
    rc = TrustRegionStep(delta=delta, solver="conic").solve(*args)
    assert (ra.solver, rc.solver) == ("analytic", "conic")
    assert ra.case == rc.case
    assert torch.allclose(ra.x, rc.x, rtol=1e-7, atol=1e-9)
    # gradients agree as well
    v = torch.as_tensor(np.random.default_rng(seed).normal(size=n))
    grads = []
    for solver in ("analytic", "conic"):
        gg, AA, bb, HH = [t.clone().requires_grad_(True) for t in args]
        x = TrustRegionStep(delta=delta, solver=solver)(gg, AA, bb, HH)
        grads.append(torch.autograd.grad(x @ v, (gg, AA, bb, HH)))
    for ga, gc in zip(*grads):
        assert torch.allclose(ga, gc, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# gradients against central finite differences


def _fd_check(fn, inputs, v, h=1e-6):
    """Compare autograd of v'fn(inputs) with central differences; None if the stencil is not smooth."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out @ v, inputs, allow_unused=True)
    worst = 0.0
    for k, (inp, gr) in enumerate(zip(inputs, grads)):
        flat = inp.detach().reshape(-1)
        for i in range(flat.numel()):
            fds = []
            for step in (h, 2 * h):
                vals = []
                for sgn in (1, -1):
                    pert = [t.detach().clone() for t in inputs]
                    pert[k].view(-1)[i] += sgn * step
                    vals.append(float(fn(*pert) @ v))
                fds.append((vals[0] - vals[1]) / (2 * step))
            scale = max(abs(fds[0]), 1e-3)
            if abs(fds[0] - fds[1]) > 1e-7 * max(scale, 1.0):
                return None  # a case boundary lies in the stencil
            ad = 0.0 if gr is None else float(gr.reshape(-1)[i])
            worst = max(worst, abs(ad - fds[0]) / max(abs(fds[0]), 1.0))
    return worst


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 5),
    m=st.integers(0, 3),
    regime=st.sampled_from(REGIMES),
)
@settings(max_examples=30)
def test_gradients_match_finite_differences(seed, n, m, regime):
    g, A, b, H, delta = random_problem(seed, n, m, regime)
    rng = np.random.default_rng(seed + 1)
    Mh = np.linalg.cholesky(H - 0.25 * np.eye(n))
    v = torch.as_tensor(rng.normal(size=n))

    def fn(g_, A_, b_, M_, d_):
        H_ = M_ @ M_.T + 0.25 * torch.eye(n, dtype=torch.float64)
        return TrustRegionStep(delta=d_)(g_, A_, b_, H_)

    err = _fd_check(fn, [*t64(g, A, b, Mh), torch.tensor(delta, dtype=torch.float64)], v)
    if err is None:
        return
    assert err <= 1e-6


def test_gradient_identity_metric_and_batch_match_unbatched():
    rng = np.random.default_rng(3)
    B, n, m = 4, 5, 1
    probs = [random_problem(int(rng.integers(1e6)), n, m, "binding") for _ in range(B)]
    g = torch.tensor(np.stack([p[0] for p in probs]), requires_grad=True)
    A = torch.tensor(np.stack([p[1] for p in probs]), requires_grad=True)
    b = torch.tensor(np.stack([p[2] for p in probs]), requires_grad=True)
    H = torch.tensor(np.stack([p[3] for p in probs]), requires_grad=True)
    step = TrustRegionStep(delta=0.02)
    res = step.solve(g, A, b, H)
    assert res.x.shape == (B, n) and len(res.case) == B
    res.x.sum().backward()
    for i in range(B):
        gi, Ai, bi, Hi = [t.detach()[i].clone().requires_grad_(True) for t in (g, A, b, H)]
        xi = step(gi, Ai, bi, Hi)
        assert torch.allclose(xi, res.x[i], atol=1e-12)
        xi.sum().backward()
        assert torch.allclose(gi.grad, g.grad[i], atol=1e-10)
        assert torch.allclose(Ai.grad, A.grad[i], atol=1e-10)
        assert torch.allclose(bi.grad, b.grad[i], atol=1e-10)
        assert torch.allclose(Hi.grad, H.grad[i], atol=1e-10)
    # identity metric equals dense identity
    x_id = step(g[0].detach(), A[0].detach(), b[0].detach(), None)
    x_eye = step(g[0].detach(), A[0].detach(), b[0].detach(), torch.eye(n, dtype=torch.float64))
    assert torch.allclose(x_id, x_eye, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the two published defects (docs/concepts.md, "The closed form") and the closed form's cases


def test_worked_example_is_the_plain_trust_region_step():
    """H = I, g = e1, a = (0.5, sqrt(.75)), c = -0.1, delta = 0.01 -> x = +0.1414 e1.

    OmniSafe 0.5.0 returns lam = -5 and x = (-0.2, 0) here (both defects at once).
    """
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    a = torch.tensor([0.5, math.sqrt(0.75)], dtype=torch.float64)
    res = TrustRegionStep(delta=0.01).solve(g, a, -0.1)
    assert res.case == "trust-region"
    assert torch.allclose(res.x, torch.tensor([math.sqrt(0.02), 0.0], dtype=torch.float64), atol=1e-14)
    assert float(res.lam) == pytest.approx(math.sqrt(50.0), rel=1e-14)
    assert float(res.lam) > 0 and float(g @ res.x) > 0


def _defective_step(q, r, s, c, delta, sign_defect, clamp_defect):
    """The m = 1 dual written with one or both published defects (for contrast)."""
    rr = -r if sign_defect else r
    A = q - rr * rr / s
    B = 2 * delta - c * c / s
    lam_a_opt, lam_b_opt = math.sqrt(A / B), math.sqrt(q / (2 * delta))
    brk = -rr / c
    if c < 0:
        la, lb = (0.0, brk), (max(brk, 0.0), math.inf)
    else:
        la, lb = (max(brk, 0.0), math.inf), (0.0, brk)

    def proj(v, iv):
        lo, hi = iv
        if clamp_defect:  # torch.clamp(min=lo, max=hi) semantics: returns hi when lo > hi
            return min(max(v, lo), hi)
        return None if lo > hi else min(max(v, lo), hi)

    cands = []
    la_v, lb_v = proj(lam_a_opt, la), proj(lam_b_opt, lb)
    if la_v is not None:
        cands.append((-(0.5 * (A / la_v + B * la_v) - rr * c / s), la_v))
    if lb_v is not None:
        cands.append((-(0.5 * (q / lb_v + 2 * delta * lb_v)), lb_v))
    _, lam = max(cands)
    nu = max(0.0, (lam * c + rr) / s)
    return lam, nu


def test_defects_would_change_the_step_and_ours_does_not():
    q, r, s, c, delta = 1.0, 0.5, 1.0, -0.1, 0.01
    lam_bad, _ = _defective_step(q, r, s, c, delta, sign_defect=True, clamp_defect=True)
    assert lam_bad < 0  # the defective code picks a negative multiplier here
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    a = torch.tensor([0.5, math.sqrt(0.75)], dtype=torch.float64)
    res = TrustRegionStep(delta=delta).solve(g, a, c)
    assert float(res.lam) > 0


@given(seed=st.integers(0, 100_000))
@settings(max_examples=60)
def test_sign_defect_differs_from_exact_when_constraint_binds(seed):
    """With the constraint binding, the flipped sign of r gives another (wrong) step; ours is exact."""
    g, A, b, H, delta = random_problem(seed, 4, 1, "binding")
    x_ref, status = reference_step(g, A, b, H, delta)
    res = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H))
    assert np.linalg.norm(res.x.numpy() - x_ref) <= 1e-6 * np.linalg.norm(x_ref)
    if res.case != "constrained":
        return
    Hinv = np.linalg.inv(H)
    q, r, s = g @ Hinv @ g, g @ Hinv @ A[0], A[0] @ Hinv @ A[0]
    c = float(b[0])
    if abs(r) < 1e-6:
        return
    lam_bad, nu_bad = _defective_step(q, r, s, c, delta, sign_defect=True, clamp_defect=False)
    x_bad = Hinv @ (g - nu_bad * A[0]) / lam_bad
    assert np.linalg.norm(x_bad - x_ref) > 1e-6 * np.linalg.norm(x_ref)


@pytest.mark.parametrize("c", [-0.3, -0.1, 0.0, 0.1])
def test_empty_interval_never_gives_negative_multiplier(c):
    """Break point -r/c <= 0 (e.g. c < 0, r <= 0): La is empty and must be skipped."""
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    a = torch.tensor([-0.6, 0.8], dtype=torch.float64)  # r = -0.6 <= 0
    res = TrustRegionStep(delta=0.02).solve(g, a, c)
    assert res.case != "recovery"
    assert float(res.lam) > 0
    assert float(g @ res.x) > 0
    x_ref, _ = reference_step(g.numpy(), a.numpy()[None], np.array([c]), np.eye(2), 0.02)
    assert np.linalg.norm(res.x.numpy() - x_ref) <= 1e-6 * np.linalg.norm(x_ref)


def test_recovery_step_m1_is_exact():
    g = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    a = torch.tensor([0.3, -0.2, 0.4], dtype=torch.float64)
    H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    res = TrustRegionStep(delta=0.01).solve(g, a, 1.0, H)
    Hinv_a = torch.linalg.solve(H, a)
    expected = -math.sqrt(2 * 0.01 / float(a @ Hinv_a)) * Hinv_a
    assert res.case == "recovery"
    assert torch.allclose(res.x, expected, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# degenerate but valid input


def test_degenerate_inputs_give_finite_defined_steps():
    H = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    Hinv = torch.linalg.inv(H)
    step = TrustRegionStep(delta=0.02)
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    tr = math.sqrt(2 * 0.02 / float(g @ Hinv @ g)) * (Hinv @ g)
    # a = 0, b <= 0: natural-gradient step; b > 0: x = 0, recovery
    r = step.solve(g, zero, -0.1, H)
    assert r.case == "trust-region" and torch.allclose(r.x, tr, atol=1e-14)
    r = step.solve(g, zero, 0.1, H)
    assert r.case == "recovery" and torch.equal(r.x, zero)
    # g = 0: x = 0 when x = 0 is feasible, recovery when nothing is
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    r = step.solve(zero, a, -0.1, H)
    assert torch.equal(r.x, zero)
    r = step.solve(zero, a, 5.0, H)
    assert r.case == "recovery" and torch.allclose(r.x, -math.sqrt(2 * 0.02) * a, atol=1e-14)
    # g parallel to a with the constraint binding: x = -(c/s) H^-1 a
    c = -0.05
    r = step.solve(2 * a, a, c, H)
    s = float(a @ Hinv @ a)
    assert r.case == "constrained"
    assert torch.allclose(r.x, -(c / s) * (Hinv @ a), atol=1e-12)
    # b exactly on the boundary (c = 0)
    a2 = torch.tensor([0.6, 0.8], dtype=torch.float64)
    r = step.solve(g, a2, 0.0, H)
    x_ref, _ = reference_step(g.numpy(), a2.numpy()[None], np.array([0.0]), H.numpy(), 0.02)
    assert torch.isfinite(r.x).all()
    assert np.linalg.norm(r.x.numpy() - x_ref) <= 1e-6 * np.linalg.norm(x_ref)
    # m = 0 with g = 0
    assert torch.equal(step(zero, None, None, H), zero)


# ---------------------------------------------------------------------------------------------
# float32, bad input


def test_float32_matches_float64():
    g, A, b, H, delta = random_problem(11, 6, 1, "binding")
    x64 = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H)).x
    args32 = [torch.as_tensor(a, dtype=torch.float32).requires_grad_(True) for a in (g, A, b, H)]
    x32 = TrustRegionStep(delta=delta)(*args32)
    assert x32.dtype == torch.float32
    assert torch.allclose(x32.double(), x64, rtol=1e-4, atol=1e-5)
    x32.sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args32)


def test_bad_input_raises_named_errors():
    g = torch.ones(3, dtype=torch.float64)
    a = torch.ones(3, dtype=torch.float64)
    H = torch.eye(3, dtype=torch.float64)
    step = TrustRegionStep(delta=0.01)
    with pytest.raises(ValueError, match="g contains NaN"):
        step(torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64), a, -1.0, H)
    with pytest.raises(ValueError, match="A contains NaN or inf"):
        step(g, torch.tensor([1.0, float("inf"), 0.0], dtype=torch.float64), -1.0, H)
    with pytest.raises(ValueError, match="A must have shape"):
        step(g, torch.ones(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), H)
    with pytest.raises(ValueError, match="b must have shape"):
        step(g, torch.ones(2, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), H)
    with pytest.raises(ValueError, match="b is required"):
        step(g, a, None, H)
    with pytest.raises(ValueError, match="delta must be a finite scalar > 0"):
        TrustRegionStep(delta=0.0)
    with pytest.raises(ValueError, match="delta must be a finite scalar > 0"):
        TrustRegionStep(delta=-1.0)
    with pytest.raises(ValueError, match="metric is not positive definite"):
        step(g, a, -1.0, -torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="metric must be symmetric"):
        step(g, a, -1.0, torch.triu(torch.ones(3, 3, dtype=torch.float64)) + torch.eye(3))
    with pytest.raises(ValueError, match="dense metric must have shape"):
        step(g, a, -1.0, torch.eye(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        step(g, a.float(), -1.0, H)
    with pytest.raises(TypeError, match="metric must be None"):
        step(g, a, -1.0, "identity")
    with pytest.raises(ValueError, match="solver must be one of"):
        TrustRegionStep(solver="newton")
    with pytest.raises(ValueError, match="solver='analytic' handles m <= 1"):
        TrustRegionStep(solver="analytic")(
            g, torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        )
    with pytest.raises(TypeError, match="g must be a torch.Tensor"):
        step([1.0, 2.0, 3.0], a, -1.0, H)


def test_delta_tensor_gets_a_gradient_and_module_repr():
    delta = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x = TrustRegionStep(delta=delta)(g)
    # x = sqrt(2 delta) g / |g|  ->  d(sum x)/d delta = sum(g)/|g| / sqrt(2 delta)
    x.sum().backward()
    expected = float(g.sum() / g.norm()) / math.sqrt(2 * 0.02)
    assert float(delta.grad) == pytest.approx(expected, rel=1e-12)
    assert "delta=" in repr(TrustRegionStep(delta=0.05))
    assert isinstance(DenseMetric(torch.eye(2)), DenseMetric)
    assert trust_region_step(g, delta=0.02).case == "trust-region"


@given(seed=st.integers(0, 10_000), regime=st.sampled_from(("inactive", "binding")))
@settings(max_examples=15)
def test_multipliers_agree_between_closed_form_and_conic(seed, regime):
    g, A, b, H, delta = random_problem(seed, 4, 1, regime)
    args = t64(g, A, b, H)
    ra = TrustRegionStep(delta=delta, solver="analytic").solve(*args)
    rc = TrustRegionStep(delta=delta, solver="conic").solve(*args)
    assert float(rc.lam) == pytest.approx(float(ra.lam), rel=1e-6)
    assert torch.allclose(rc.nu, ra.nu, rtol=1e-6, atol=1e-8)
    # KKT: g - lam H x - nu a = 0
    resid = args[0] - rc.lam * args[3] @ rc.x - rc.nu @ args[1]
    assert float(resid.abs().max()) <= 1e-6 * float(args[0].abs().max())


def test_inactive_trust_region_with_two_binding_constraints():
    """g in the span of the constraint normals: lam = 0 and nu solves g = A'nu."""
    t = lambda *a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    res = TrustRegionStep(delta=0.01).solve(t(1.0, 0.5, 0.0), t([1, 0, 0], [0, 1, 0]), t(-0.05, 0.02))
    assert res.case == "constrained"
    assert torch.allclose(res.x, t(0.05, -0.02, 0.0), atol=1e-8)
    assert float(res.lam) == pytest.approx(0.0, abs=1e-8)
    assert torch.allclose(res.nu, t(1.0, 0.5), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# hard inputs: a right answer or a named error, never an internal message


def _f64(*a):
    return torch.tensor(a, dtype=torch.float64)


def test_operator_metric_probes_raise_named_errors():
    from difftrust import OperatorMetric

    g, a = _f64(1.0, 2.0, 0.5, -1.0), _f64(0.3, -0.2, 0.4, 0.1)
    step = TrustRegionStep(delta=0.01, cg_iters=20)
    singular = OperatorMetric(lambda v: _f64(1.0, 0.0, 2.0, 1.0) * v)
    with pytest.raises(ValueError, match="not positive definite.*curvature"):
        step.solve(g, a, -0.01, singular)
    with pytest.raises(ValueError, match="OperatorMetric is not positive definite"):
        step.solve(g, a, -0.01, OperatorMetric(lambda v: _f64(1.0, -1.0, 2.0, 1.0) * v))
    M = torch.tensor(
        [[2.0, 1.0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 0.5], [0, 0, 0, 1.0]], dtype=torch.float64
    )
    with pytest.raises(ValueError, match="OperatorMetric is not symmetric"):
        step.solve(g, a, -0.01, OperatorMetric(lambda v: M @ v))
    with pytest.raises(ValueError, match=r"returned \(2, 2\) for an input of shape \(4, 2\)"):
        step.solve(g, a, -0.01, OperatorMetric(lambda v: v[:2]))


def test_cg_not_converged_warns_with_residual_or_raises_when_strict():
    from difftrust import CGNotConvergedWarning, OperatorMetric

    g, a = _f64(1.0, 2.0, 0.5, -1.0), _f64(0.3, -0.2, 0.4, 0.1)
    metric = OperatorMetric(lambda v: torch.logspace(0, 6, 4, dtype=torch.float64) * v)
    with pytest.warns(CGNotConvergedWarning, match=r"worst relative residual \d\.\d+e[+-]\d+"):
        TrustRegionStep(delta=0.01, cg_iters=2, cg_tol=1.234e-10).solve(g, a, -0.01, metric)
    with warnings.catch_warnings():  # warned once per metric type and CG settings
        warnings.simplefilter("error")
        res = TrustRegionStep(delta=0.01, cg_iters=2, cg_tol=1.234e-10).solve(g, a, -0.01, metric)
    assert float(res.cg_residuals.max()) > 1e-3
    with pytest.raises(RuntimeError, match="did not reach its tolerance"):
        TrustRegionStep(delta=0.01, cg_iters=2, strict=True).solve(g, a, -0.01, metric)


def test_truncated_cg_tol_none_gives_the_numbers_of_1e_10_and_never_warns():
    """``cg_tol=None`` is truncated conjugate gradient: the step, its diagnostics and its gradients are
    bit for bit those of ``cg_tol=1e-10`` (the early stop), nothing is warned or raised (``strict``
    included), and the once-per-process warning of a tolerance that is missed is left for it."""
    from difftrust import CGNotConvergedWarning, OperatorMetric

    scale = torch.logspace(0, 6, 4, dtype=torch.float64)
    a = _f64(0.3, -0.2, 0.4, 0.1)
    outs = []
    for tol in (None, 1e-10):
        g = _f64(1.0, 2.0, 0.5, -1.0).requires_grad_(True)
        metric = OperatorMetric(lambda v: scale * v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if tol is not None else "error")
            res = trust_region_step(
                g, a, -0.01, metric, delta=0.01, cg_iters=3, cg_tol=tol, strict=tol is None
            )
            (grad,) = torch.autograd.grad((res.x * _f64(1.0, -2.0, 3.0, 0.5)).sum(), g)
        outs.append((res.x.detach(), res.lam, res.nu, res.cg_residuals, grad))
    assert float(outs[0][3].max()) > 1e-3  # far from converged: truncated, recorded
    assert all(torch.equal(u, v) for u, v in zip(*outs, strict=True))
    with pytest.warns(CGNotConvergedWarning, match=r"cg_tol = 2\.5e-11 in cg_iters = 3"):
        TrustRegionStep(delta=0.01, cg_iters=3, cg_tol=2.5e-11).solve(
            g, a, -0.01, OperatorMetric(lambda v: scale * v)
        )
    assert TrustRegionStep(cg_tol=None).cg_tol is None and "cg_tol=None" in repr(TrustRegionStep(cg_tol=None))
    for bad in (-1.0, "1e-10", True, math.nan):
        with pytest.raises(ValueError, match=r"cg_tol must be a float >= 0 or None \(truncated"):
            TrustRegionStep(cg_tol=bad)
        with pytest.raises(ValueError, match="cg_tol must be a float >= 0 or None"):
            trust_region_step(_f64(1.0, 0.0), cg_tol=bad)
    with pytest.raises(ValueError, match="cg_iters must be a positive int, got 0"):
        trust_region_step(_f64(1.0, 0.0), cg_iters=0)


def test_batch_of_size_zero_half_precision_and_double_backward_are_named():
    step = TrustRegionStep(delta=0.01)
    z = torch.zeros
    with pytest.raises(ValueError, match="batch size 0"):
        step.solve(
            z(0, 4, dtype=torch.float64), z(0, 1, 4, dtype=torch.float64), z(0, 1, dtype=torch.float64)
        )
    with pytest.raises(TypeError, match="float16; expected float32 or float64"):
        step.solve(torch.ones(4, dtype=torch.float16))
    with pytest.raises(TypeError, match="metric has dtype torch.float16"):
        step.solve(torch.ones(4, dtype=torch.float64), None, None, torch.eye(4, dtype=torch.float16))
    g = _f64(1.0, 2.0, 0.5, -1.0).requires_grad_(True)
    x = step(g, _f64(0.3, -0.2, 0.4, 0.1), -0.01)
    (gr,) = torch.autograd.grad(x.sum(), g, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gr.sum().backward()


def test_stepresult_exposes_the_reduced_problem():
    from difftrust import solve_reduced

    g, A, b, H, delta = random_problem(4, 5, 2, "binding")
    res = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H))
    G = torch.tensor(np.concatenate([g[:, None], A.T], 1))
    assert torch.allclose(res.K, G.T @ torch.linalg.solve(torch.tensor(H), G), rtol=1e-12)
    assert torch.allclose(torch.linalg.solve(torch.tensor(H), G) @ res.w, res.x, atol=1e-14)
    sol = solve_reduced(res.K, torch.tensor(b), delta)
    assert torch.allclose(sol.w, res.w, rtol=1e-10) and sol.case == res.case


@given(seed=st.integers(0, 10_000), m=st.integers(0, 3), regime=st.sampled_from(REGIMES), dense=st.booleans())
@settings(max_examples=30, deadline=None)
def test_numpy_path_matches_the_torch_path(seed, m, regime, dense):
    """One float64 CPU problem takes difftrust.lean's numpy path; the torch path (batches, GPUs)
    must give the same step and gradients for g, A, b, delta and H."""
    from difftrust import lean

    g, A, b, H, delta = random_problem(seed, 6, m, regime)
    v = torch.as_tensor(np.random.default_rng(seed).normal(size=6))
    out = []
    for enabled in (True, False):
        leaves = [*t64(g, A, b, H), torch.tensor(delta, dtype=torch.float64)]
        for t in leaves:
            t.requires_grad_(True)
        with mock.patch.object(lean, "ENABLED", enabled):
            res = TrustRegionStep(delta=leaves[4]).solve(*leaves[:3], leaves[3] if dense else None)
            (v @ res.x).backward()
        out.append([res.x, res.lam, res.nu, res.w, res.K] + [t.grad for t in leaves[: 4 if dense else 3]])
        out[-1].append(leaves[4].grad)
        assert res.case in ("trust-region", "constrained", "recovery")
    for a, c in zip(*out, strict=True):
        assert torch.allclose(a, c, rtol=1e-9, atol=1e-12, equal_nan=True), (a, c)


def test_numpy_path_raises_the_named_errors(monkeypatch):
    from difftrust import lean

    g, a, H = (
        torch.ones(3, dtype=torch.float64),
        torch.ones(3, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64),
    )
    for enabled in (True, False):
        monkeypatch.setattr(lean, "ENABLED", enabled)
        with pytest.raises(ValueError, match="g contains NaN"):
            TrustRegionStep()(torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64), a, -1.0, H)
        with pytest.raises(ValueError, match="metric contains NaN or inf"):
            TrustRegionStep()(g, a, -1.0, torch.full((3, 3), float("inf"), dtype=torch.float64))
        with pytest.raises(ValueError, match="metric must be symmetric"):
            TrustRegionStep()(g, a, -1.0, torch.triu(torch.ones(3, 3, dtype=torch.float64)) + torch.eye(3))
        with pytest.raises(ValueError, match="not positive definite"):
            TrustRegionStep()(g, a, -1.0, -torch.eye(3, dtype=torch.float64))
        with pytest.raises(ValueError, match="too ill-conditioned"):
            TrustRegionStep()(g, a, -1.0, torch.diag(torch.tensor([1.0, 1.0, 1e-14], dtype=torch.float64)))


@given(
    seed=st.integers(0, 10_000), m=st.integers(0, 3), kind=st.sampled_from(["identity", "dense", "factor"])
)
@settings(max_examples=30, deadline=None)
def test_numpy_batch_path_matches_the_torch_path(seed, m, kind):
    """A float64 CPU batch takes difftrust.lean's batched numpy path; the torch path (float32,
    GPUs) must give the same steps, multipliers, reduced problems and gradients (g, A, b, delta and
    the metric, every entry of a Cholesky factor) to 1e-9, with the regimes mixed in one batch."""
    from difftrust import CholeskyMetric, lean

    B, n = 5, 6
    probs = [random_problem(seed + i, n, m, REGIMES[(seed + i) % 3] if m else "inactive") for i in range(B)]
    g, A, b, H = (np.stack([p[k] for p in probs]) for k in range(4))
    metric = {"identity": None, "dense": H, "factor": np.linalg.cholesky(H)}[kind]
    v = torch.as_tensor(np.random.default_rng(seed).normal(size=(B, n)))
    out = []
    for enabled in (True, False):
        leaves = [torch.tensor(a, requires_grad=True) for a in (g, A, b, probs[0][4])]
        met = None if metric is None else torch.tensor(metric, requires_grad=True)
        with mock.patch.object(lean, "ENABLED", enabled):
            res = TrustRegionStep(delta=leaves[3]).solve(
                *leaves[:3], CholeskyMetric(met) if kind == "factor" else met
            )
            (v * res.x).sum().backward()
        assert len(res.case) == B
        out.append([res.x, res.lam, res.nu, res.w, res.K] + [t.grad for t in leaves])
        out[-1] += [met.grad] if met is not None else []
        out[-1].append(res.case)
    assert out[0][-1] == out[1][-1]
    for a, c in zip(out[0][:-1], out[1][:-1], strict=True):
        assert a.shape == c.shape
        assert torch.allclose(a, c, rtol=1e-9, atol=1e-12, equal_nan=True), (a, c)


def test_numpy_batch_path_raises_the_named_errors(monkeypatch):
    """One bad problem in a batch raises the same named error on the batched numpy and torch paths."""
    from difftrust import CholeskyMetric, lean

    B, n = 3, 3
    g, a = torch.ones(B, n, dtype=torch.float64), torch.ones(B, 1, n, dtype=torch.float64)
    b = torch.full((B, 1), -1.0, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64).expand(B, n, n)

    def one_bad(value, i=1, j=(0, 0)):
        t = eye.clone()
        t[i][j] = value
        return t

    for enabled in (True, False):
        monkeypatch.setattr(lean, "ENABLED", enabled)
        step = TrustRegionStep()
        bad_g = g.clone()
        bad_g[2, 1] = float("nan")
        with pytest.raises(ValueError, match="g contains NaN"):
            step(bad_g, a, b, eye)
        with pytest.raises(ValueError, match="metric contains NaN or inf"):
            step(g, a, b, one_bad(float("inf")))
        with pytest.raises(ValueError, match="metric must be symmetric"):
            step(g, a, b, one_bad(0.5, j=(0, 1)))
        with pytest.raises(ValueError, match="not positive definite"):
            step(g, a, b, one_bad(-1.0))
        with pytest.raises(ValueError, match="too ill-conditioned"):
            step(g, a, b, one_bad(1e-14, j=(2, 2)))
        with pytest.raises(ValueError, match="must be lower triangular: 1 nonzero entries above"):
            step(g, a, b, CholeskyMetric(one_bad(1e-300, j=(0, 2))))
        with pytest.raises(ValueError, match="1 diagonal entries <= 0"):
            step(g, a, b, CholeskyMetric(one_bad(0.0)))
        with pytest.raises(ValueError, match="factor L contains NaN or inf"):
            step(g, a, b, CholeskyMetric(one_bad(float("nan"), j=(2, 0))))
        with pytest.raises(ValueError, match="too ill-conditioned"):
            step(g, a, b, CholeskyMetric(one_bad(1e-7, j=(2, 2))))


@pytest.mark.parametrize("lean_on", [True, False])
def test_unbatched_call_adds_one_node_and_keeps_the_callers_shapes(lean_on, monkeypatch):
    """One problem: the leaves feed the layer's node directly (no reshaping views in the caller's
    graph), and every gradient has its input's shape (A as (n,), b as a 0-dim tensor, H (n, n))."""
    from difftrust import CholeskyMetric, lean

    monkeypatch.setattr(lean, "ENABLED", lean_on)
    g, A, b, H, delta = random_problem(4, 5, 1, "binding")
    ref = [torch.tensor(t, requires_grad=True) for t in (g, A, b, H)]
    x_ref = TrustRegionStep(delta=delta)(*ref)
    x_ref.sum().backward()
    for metric_kind in ("dense", "factor"):
        leaves = [torch.tensor(t, requires_grad=True) for t in (g, A[0], b[0], H)]
        M = leaves[3] if metric_kind == "dense" else CholeskyMetric(leaves[3])
        Lc = torch.linalg.cholesky(leaves[3].detach()).requires_grad_(True)
        if metric_kind == "factor":
            leaves[3], M = Lc, CholeskyMetric(Lc)
        x = TrustRegionStep(delta=delta)(*leaves[:3], M)
        assert x.shape == (5,) and "TrustRegionFunction" in x.grad_fn.name()
        assert [type(f).__name__ for f, _ in x.grad_fn.next_functions if f is not None] == [
            "AccumulateGrad"
        ] * 4
        x.sum().backward()
        assert [t.grad.shape for t in leaves] == [t.shape for t in leaves]
        assert torch.allclose(x, x_ref, rtol=1e-10, atol=1e-14)
        assert torch.allclose(leaves[0].grad, ref[0].grad, rtol=1e-9, atol=1e-12)
        assert torch.allclose(leaves[1].grad, ref[1].grad[0], rtol=1e-9, atol=1e-12)
        assert torch.allclose(leaves[2].grad, ref[2].grad[0], rtol=1e-9, atol=1e-12)
        if metric_kind == "dense":
            assert torch.allclose(leaves[3].grad, ref[3].grad, rtol=1e-9, atol=1e-12)
