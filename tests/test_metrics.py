"""Fisher and operator metrics: CG path vs dense path, gradients through the metric, chained steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call  # noqa: F401  (documented alternative; not needed here)

from difftrust import FisherMetric, OperatorMetric, TrustRegionStep

OBS_DIM, HID, ACT = 3, 4, 2


def _unpack(p):
    i = 0
    W1 = p[i : i + HID * OBS_DIM].view(HID, OBS_DIM)
    i += HID * OBS_DIM
    b1 = p[i : i + HID]
    i += HID
    W2 = p[i : i + ACT * HID].view(ACT, HID)
    i += ACT * HID
    log_std = p[i : i + ACT]
    return W1, b1, W2, log_std


N_PARAMS = HID * OBS_DIM + HID + ACT * HID + ACT


def gaussian_kl(obs):
    """Mean KL(pi_ref || pi_p) of a tiny tanh Gaussian policy (written independently of rl)."""

    def kl(ref, p):
        W1r, b1r, W2r, lsr = _unpack(ref)
        W1, b1, W2, ls = _unpack(p)
        mu_r = torch.tanh(obs @ W1r.T + b1r) @ W2r.T
        mu = torch.tanh(obs @ W1.T + b1) @ W2.T
        var_r, var = torch.exp(2 * lsr), torch.exp(2 * ls)
        return (ls - lsr + (var_r + (mu_r - mu) ** 2) / (2 * var) - 0.5).sum(-1).mean()

    return kl


def dense_fisher(kl, psi, damping):
    ref = psi.detach()
    F = torch.autograd.functional.hessian(lambda p: kl(ref, p), psi.detach())
    return F + damping * torch.eye(psi.numel(), dtype=psi.dtype)


@pytest.fixture
def policy_setup():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(64, OBS_DIM, generator=gen, dtype=torch.float64)
    psi = 0.5 * torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    g = torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    a = torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    return obs, psi, g, a


@pytest.mark.parametrize("c", [-1.0, -0.02, 0.05, 10.0])
def test_fisher_cg_path_matches_dense_path(policy_setup, c):
    obs, psi, g, a = policy_setup
    kl = gaussian_kl(obs)
    H = dense_fisher(kl, psi, 0.1)
    step = TrustRegionStep(delta=0.01, cg_iters=4 * N_PARAMS, cg_tol=1e-13)
    r_op = step.solve(g, a, c, FisherMetric(kl, psi, damping=0.1))
    r_dense = step.solve(g, a, c, H)
    assert r_op.case == r_dense.case
    assert torch.allclose(r_op.x, r_dense.x, rtol=1e-8, atol=1e-10)
    assert r_op.cg_residuals is not None and float(r_op.cg_residuals.max()) <= 1e-12


def test_fisher_metric_gradients_reach_policy_parameters(policy_setup):
    """d(v'x)/dpsi through the Fisher (both KL arguments) equals finite differences."""
    obs, psi, g, a = policy_setup
    kl = gaussian_kl(obs)
    v = torch.randn(N_PARAMS, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    step = TrustRegionStep(delta=0.01, cg_iters=4 * N_PARAMS, cg_tol=1e-14)
    x_tr = step(g, None, None, FisherMetric(kl, psi, damping=0.1))
    a = a * float(torch.sign(a @ x_tr))  # now a'x_tr > 0
    c = -0.5 * float(a @ x_tr)  # the trust-region step violates the constraint: it binds

    def f(p):
        return step(g, a, c, FisherMetric(kl, p, damping=0.1)) @ v

    p = psi.clone().requires_grad_(True)
    assert step.solve(g, a, c, FisherMetric(kl, psi, damping=0.1)).case == "constrained"
    (grad,) = torch.autograd.grad(f(p), p)
    h = 1e-5
    fd = torch.zeros_like(psi)
    for i in range(N_PARAMS):
        e = torch.zeros_like(psi)
        e[i] = h
        fd[i] = (f(psi + e) - f(psi - e)) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-7 * float(fd.abs().max()))

    # a detached reference would lose one of the two paths: the result must differ from that
    def kl_detached(ref, q):
        return kl(ref.detach(), q)

    p2 = psi.clone().requires_grad_(True)
    (grad_wrong,) = torch.autograd.grad(step(g, a, c, FisherMetric(kl_detached, p2, damping=0.1)) @ v, p2)
    assert (grad_wrong - fd).abs().max() > 1e-3 * fd.abs().max()


def test_meta_use_two_chained_steps_match_finite_differences():
    """g, a from autograd.grad(create_graph=True), H = Fisher at theta, two steps chained."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(32, OBS_DIM, generator=gen, dtype=torch.float64)
    kl = gaussian_kl(obs)
    wr = torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    wc = torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    target = torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    theta0 = 0.3 * torch.randn(N_PARAMS, generator=gen, dtype=torch.float64)
    step = TrustRegionStep(delta=0.02, cg_iters=4 * N_PARAMS, cg_tol=1e-14)

    def reward(p):
        return (torch.sin(p) * wr).sum() + 0.1 * (p**2).sum()

    def cost(p):
        return (torch.cos(p) * wc).sum() / 4

    def inner(theta):
        phi = theta
        for _ in range(2):
            (g,) = torch.autograd.grad(reward(phi), phi, create_graph=True)
            (a,) = torch.autograd.grad(cost(phi), phi, create_graph=True)
            b = cost(phi) - 0.0
            phi = phi + step(g, a, b.reshape(1), FisherMetric(kl, phi, damping=0.1))
        return ((phi - target) ** 2).sum()

    theta = theta0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(inner(theta), theta)
    h = 1e-6
    fd = torch.zeros_like(theta0)
    for i in range(N_PARAMS):
        e = torch.zeros_like(theta0)
        e[i] = h
        tp = (theta0 + e).requires_grad_(True)
        tm = (theta0 - e).requires_grad_(True)
        fd[i] = (inner(tp) - inner(tm)).detach() / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-6 * float(fd.abs().max()))


def test_operator_metric_matches_dense_and_routes_gradients():
    d = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    a = torch.tensor([0.2, 0.4, -0.3, 0.5], dtype=torch.float64)
    step = TrustRegionStep(delta=0.05, cg_iters=20, cg_tol=1e-14)
    x_op = step(g, a, -0.05, OperatorMetric(lambda v, d: d * v, tensors=(d,), damping=0.5))
    d2 = d.detach().clone().requires_grad_(True)
    x_dense = step(g, a, -0.05, torch.diag(d2 + 0.5))
    assert torch.allclose(x_op, x_dense, atol=1e-12)
    (gd_op,) = torch.autograd.grad(x_op.sum(), d)
    (gd_dense,) = torch.autograd.grad(x_dense.sum(), d2)
    assert torch.allclose(gd_op, gd_dense, atol=1e-10)


def test_operator_metric_not_positive_definite_raises():
    metric = OperatorMetric(lambda v: -v)
    with pytest.raises(ValueError, match="not positive definite"):
        TrustRegionStep(delta=0.01)(torch.ones(3, dtype=torch.float64), None, None, metric)


def test_metric_constructor_errors():
    with pytest.raises(TypeError, match="kl must be callable"):
        FisherMetric("kl", torch.zeros(3))
    with pytest.raises(TypeError, match="flat 1-D"):
        FisherMetric(lambda r, p: (p**2).sum(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="damping must be >= 0"):
        FisherMetric(lambda r, p: (p**2).sum(), torch.zeros(3), damping=-1.0)
    with pytest.raises(TypeError, match="metric tensor has dtype"):
        TrustRegionStep()(
            torch.ones(3, dtype=torch.float64),
            None,
            None,
            FisherMetric(lambda r, p: (p**2).sum(), torch.zeros(3)),
        )
    assert np.isfinite(1.0)


def test_batch_of_operator_metrics_matches_dense_batch_and_routes_gradients():
    gen = torch.Generator().manual_seed(3)
    B, n = 3, 5
    g = torch.randn(B, n, generator=gen, dtype=torch.float64)
    A = torch.randn(B, 2, n, generator=gen, dtype=torch.float64)
    b = torch.full((B, 2), -0.02, dtype=torch.float64)
    ds = [torch.rand(n, generator=gen, dtype=torch.float64).add(0.5).requires_grad_(True) for _ in range(B)]
    metrics = [OperatorMetric(lambda v, d: d * v, tensors=(d,)) for d in ds]
    step = TrustRegionStep(delta=0.02, cg_iters=30, cg_tol=1e-14)
    res = step.solve(g, A, b, metrics)
    dense = torch.stack([torch.diag(d.detach()) for d in ds]).requires_grad_(True)
    x_dense = step(g, A, b, dense)
    assert torch.allclose(res.x, x_dense, atol=1e-12) and res.cg_residuals.shape == (B, 3)
    grads = torch.autograd.grad(res.x.sum(), ds)
    (gH,) = torch.autograd.grad(x_dense.sum(), dense)
    for i in range(B):
        assert torch.allclose(grads[i], torch.diagonal(gH[i]), atol=1e-10)
    with pytest.raises(ValueError, match="list of metrics must hold B = 3"):
        step.solve(g, A, b, metrics[:2])
