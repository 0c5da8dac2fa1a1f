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


# ---------------------------------------------------------------------------------------------
# CholeskyMetric: H = L L' given by its factor (the lean numpy path for one float64 CPU problem,
# the torch path for batches and other devices)


def _factor_problem(seed, n, m, regime):
    from tests._problems import random_problem

    g, A, b, H, delta = random_problem(seed, n, m, regime)
    return g, A, b, np.linalg.cholesky(H), delta


def _run_factor(args, delta, factor, lean_on, v):
    """x, diagnostics and gradients (g, A, b, L, delta) with CholeskyMetric(L) or the dense L L'."""
    from unittest import mock

    from difftrust import CholeskyMetric, lean

    leaves = [torch.tensor(a).requires_grad_(True) for a in (*args, delta)]
    g, A, b, L, d = leaves
    with mock.patch.object(lean, "ENABLED", lean_on):
        res = TrustRegionStep(delta=d).solve(g, A, b, CholeskyMetric(L) if factor else L @ L.mT)
        ((res.x * v).sum()).backward()
    return [res.x, res.lam, res.nu, res.w, res.K] + [t.grad for t in leaves]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("m", "regime"),
    [(0, "inactive")] + [(m, r) for m in (1, 3) for r in ("inactive", "binding", "infeasible")],
)
def test_cholesky_metric_matches_the_dense_metric(batched, m, regime):
    """Step, multipliers, reduced problem and every gradient (all of L's entries) agree to 1e-9
    with H = L L' given densely, on the numpy path (one problem) and on the torch path."""
    n, B = 6, 3
    probs = [_factor_problem(100 * m + i, n, m, regime) for i in range(B if batched else 1)]
    args = [np.stack(a) if batched else a[0] for a in zip(*[p[:4] for p in probs], strict=True)]
    delta = probs[0][4]
    v = torch.as_tensor(np.random.default_rng(m).normal(size=args[0].shape))
    ref = _run_factor(args, delta, factor=False, lean_on=False, v=v)
    for lean_on in (True, False):
        got = _run_factor(args, delta, factor=True, lean_on=lean_on, v=v)
        for a, c in zip(got, ref, strict=True):
            assert a.shape == c.shape
            assert torch.allclose(a, c, rtol=1e-9, atol=1e-12, equal_nan=True), (lean_on, a, c)
    assert float(ref[8].abs().max()) > 1e-3  # the L gradient is not trivially zero


@pytest.mark.parametrize("lean_on", [True, False])
@pytest.mark.parametrize("m", [1, 2])
def test_cholesky_metric_gradients_match_finite_differences(lean_on, m):
    """Central differences (h = 1e-6, Richardson-checked) over g, A, b and every entry of L."""
    from unittest import mock

    from difftrust import CholeskyMetric, lean

    g, A, b, L, delta = _factor_problem(5 + m, 4, m, "binding")
    v = torch.as_tensor(np.random.default_rng(1).normal(size=4))

    def f(g_, A_, b_, L_):
        with mock.patch.object(lean, "ENABLED", lean_on):
            return TrustRegionStep(delta=delta)(g_, A_, b_, CholeskyMetric(L_)) @ v

    inputs = [torch.tensor(a) for a in (g, A, b, L)]
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    grads = torch.autograd.grad(f(*leaves), leaves)
    worst = 0.0
    for k, (inp, gr) in enumerate(zip(inputs, grads, strict=True)):
        for i in range(inp.numel()):
            if k == 3 and i // 4 < i % 4:  # L's upper triangle: no finite difference (it must stay 0)
                continue
            fd = []
            for h in (1e-6, 2e-6):
                pert = [t.clone() for t in inputs]
                pert[k].view(-1)[i] += h
                up = float(f(*pert))
                pert[k].view(-1)[i] -= 2 * h
                fd.append((up - float(f(*pert))) / (2 * h))
            assert abs(fd[0] - fd[1]) <= 1e-7  # no case boundary inside the stencil
            worst = max(worst, abs(float(gr.reshape(-1)[i]) - fd[0]))
    assert worst <= 1e-7


@pytest.mark.parametrize("lean_on", [True, False])
@pytest.mark.parametrize("log_scale", [-6.0, -2.0, 3.0, 9.0])
def test_cholesky_metric_is_invariant_to_the_scale_of_the_metric(lean_on, log_scale):
    """L -> s L (H -> s^2 H) with delta -> s^2 delta leaves the step unchanged, s^2 in 1e-6..1e9."""
    from unittest import mock

    from difftrust import CholeskyMetric, lean

    g, A, b, L, delta = (
        torch.tensor(a) if isinstance(a, np.ndarray) else a for a in _factor_problem(3, 5, 2, "binding")
    )
    s = 10.0 ** (log_scale / 2)
    with mock.patch.object(lean, "ENABLED", lean_on):
        base = TrustRegionStep(delta=delta)(g, A, b, CholeskyMetric(L))
        x = TrustRegionStep(delta=delta * s * s)(g, A, b, CholeskyMetric(L * s))
    assert float((x - base).norm()) <= 1e-9 * float(base.norm())


@pytest.mark.parametrize("log_cond", [2.0, 6.0, 9.0, 10.0, 14.0])
def test_ill_conditioned_cholesky_metric_agrees_with_clarabel_or_raises(log_cond):
    """cond(H) = 10^log_cond: agree with a tight Clarabel solve to 1e-6 or raise the named error
    (the estimate is a lower bound checked against 4.5e10 in float64), on both paths alike."""
    from unittest import mock

    from difftrust import CholeskyMetric, lean
    from tests._problems import reference_step

    rng = np.random.default_rng(int(log_cond))
    n = 6
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    H = Q @ np.diag(np.logspace(0, log_cond, n)) @ Q.T
    H = 0.5 * (H + H.T)
    L = np.linalg.cholesky(H)
    g, A = rng.normal(size=n), rng.normal(size=(2, n))
    Hinv = np.linalg.inv(H)
    x_tr = np.sqrt(0.02 / (g @ Hinv @ g)) * Hinv @ g
    b = -(A @ x_tr) * 0.5
    out = []
    for lean_on in (True, False):
        with mock.patch.object(lean, "ENABLED", lean_on):
            try:
                out.append(
                    TrustRegionStep(delta=0.01)(
                        *map(torch.tensor, (g, A, b)), CholeskyMetric(torch.tensor(L))
                    )
                )
            except ValueError as err:
                assert "too ill-conditioned" in str(err)
                out.append(None)
    assert (out[0] is None) == (out[1] is None)
    if log_cond >= 14.0:
        assert out[0] is None  # far beyond the certified limit (the estimate is a lower bound)
    if out[0] is not None:
        x_ref, _ = reference_step(g, A, b, L @ L.T, 0.01)
        for x in out:
            assert np.linalg.norm(x.numpy() - x_ref) <= 1e-6 * np.linalg.norm(x_ref)


@pytest.mark.parametrize("lean_on", [True, False])
def test_cholesky_metric_bad_factors_raise_named_errors(lean_on, monkeypatch):
    from difftrust import CholeskyMetric, lean

    monkeypatch.setattr(lean, "ENABLED", lean_on)
    g, a = torch.ones(3, dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    step = TrustRegionStep()
    L = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.2, 1.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="must be lower triangular: 3 nonzero entries above the diagonal"):
        step(g, a, -1.0, CholeskyMetric(L + torch.triu(torch.full((3, 3), 1e-300, dtype=torch.float64), 1)))
    bad = L.clone()
    bad[1, 1] = -1.0
    with pytest.raises(ValueError, match="1 diagonal entries <= 0"):
        step(g, a, -1.0, CholeskyMetric(bad))
    bad[1, 1] = 0.0
    with pytest.raises(ValueError, match="1 diagonal entries <= 0"):
        step(g, a, -1.0, CholeskyMetric(bad))
    with pytest.raises(ValueError, match="diagonal entries <= 0"):
        step(g, a, -1.0, CholeskyMetric(torch.zeros(3, 3, dtype=torch.float64)))
    bad = L.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="factor L contains NaN or inf"):
        step(g, a, -1.0, CholeskyMetric(bad))
    bad[2, 0] = float("inf")
    with pytest.raises(ValueError, match="factor L contains NaN or inf"):
        step(g, a, -1.0, CholeskyMetric(bad))
    with pytest.raises(ValueError, match="too ill-conditioned"):
        step(g, a, -1.0, CholeskyMetric(torch.diag(torch.tensor([1.0, 1.0, 1e-7], dtype=torch.float64))))
    with pytest.raises(ValueError, match=r"must have shape \(3, 3\)"):
        step(g, a, -1.0, CholeskyMetric(torch.eye(4, dtype=torch.float64)))
    with pytest.raises(TypeError, match="L must be a torch.Tensor"):
        CholeskyMetric(np.eye(3))
    with pytest.raises(TypeError, match="dtype"):
        step(g, a, -1.0, CholeskyMetric(torch.eye(3, dtype=torch.float32)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cholesky_metric_on_cuda_matches_the_cpu():
    """A batch and one problem with CUDA tensors: step and gradients on the device, equal to the CPU's."""
    from difftrust import CholeskyMetric

    probs = [_factor_problem(40 + i, 6, 2, "binding") for i in range(3)]
    args = [torch.tensor(np.stack(a)) for a in zip(*[p[:4] for p in probs], strict=True)]
    for batch in (args, [t[0] for t in args]):
        out = []
        for dev in ("cpu", "cuda"):
            leaves = [t.to(dev).requires_grad_(True) for t in batch]
            x = TrustRegionStep(delta=probs[0][4])(*leaves[:3], CholeskyMetric(leaves[3]))
            x.sum().backward()
            assert x.device.type == dev and all(t.grad.device.type == dev for t in leaves)
            out.append([x.detach().cpu()] + [t.grad.cpu() for t in leaves])
        for a, c in zip(*out, strict=True):
            assert torch.allclose(a, c, rtol=1e-9, atol=1e-12)


def test_cholesky_metric_float32_batch_matches_float64():
    from difftrust import CholeskyMetric

    probs = [_factor_problem(60 + i, 6, 2, "binding") for i in range(4)]
    args = [torch.tensor(np.stack(a)) for a in zip(*[p[:4] for p in probs], strict=True)]
    x64 = TrustRegionStep(delta=probs[0][4])(*args[:3], CholeskyMetric(args[3]))
    leaves = [t.float().requires_grad_(True) for t in args]
    x32 = TrustRegionStep(delta=probs[0][4])(*leaves[:3], CholeskyMetric(leaves[3]))
    x32.sum().backward()
    assert x32.dtype == torch.float32 and torch.allclose(x32.double(), x64, rtol=1e-4, atol=1e-5)
    assert all(t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all() for t in leaves)


def test_cholesky_metric_mixed_batch_matches_each_problem_alone_and_the_dense_batch():
    """One batch (m = 2) holding an inactive, a binding, an infeasible and two degenerate problems (two
    identical rows, certified; a zero row with b > 0, which the enumeration leaves to the conic backend): step, multipliers, reduced problem and every gradient agree to 1e-9 with each
    problem solved alone (numpy and torch paths) and with the dense batch H = L L'."""
    from unittest import mock

    from difftrust import CholeskyMetric, lean

    n, m = 6, 2
    probs = [_factor_problem(40 + i, n, m, r) for i, r in enumerate(("inactive", "binding", "infeasible"))]
    g, A, b, L, _ = _factor_problem(44, n, m, "binding")
    A, b = A.copy(), b.copy()
    A[1], b[1] = A[0], b[0]
    probs.append((g, A, b, L, probs[1][4]))
    g, A, b, L, d = probs[1]  # a zero row with b > 0: not certified, left to the conic backend
    A, b = A.copy(), b.copy()
    A[1], b[1] = 0.0, 0.01
    probs.append((g, A, b, L, d))
    delta = probs[0][4]  # one delta for the batch: b rescaled so that each problem keeps its regime
    probs = [(g, A, b * np.sqrt(delta / d), L, delta) for g, A, b, L, d in probs]
    args = [np.stack(a) for a in zip(*[p[:4] for p in probs], strict=True)]
    v = torch.as_tensor(np.random.default_rng(7).normal(size=args[0].shape))
    batch = _run_factor(args, delta, factor=True, lean_on=False, v=v)
    dense = _run_factor(args, delta, factor=False, lean_on=False, v=v)
    for a, c in zip(batch, dense, strict=True):
        assert torch.allclose(a, c, rtol=1e-9, atol=1e-12, equal_nan=True), (a, c)
    with mock.patch.object(lean, "ENABLED", False):
        res = TrustRegionStep(delta=delta).solve(
            *(torch.tensor(a) for a in args[:3]), CholeskyMetric(torch.tensor(args[3]))
        )
    assert sorted(set(res.case)) == ["constrained", "recovery", "trust-region"], res.case
    assert res.case[3:] == ["constrained", "recovery"] and res.solver[3:] == ["active-set", "conic"]
    for lean_on in (True, False):
        alone = [_run_factor([a[i] for a in args], delta, True, lean_on, v[i]) for i in range(len(probs))]
        for k, (a, *cs) in enumerate(zip(batch, *alone, strict=True)):
            c = torch.stack(cs) if k < 9 else torch.stack(cs).sum(0)  # delta's gradient: the batch's sum
            # delta's gradient sums the zero-row member's, whose recovery step is not unique (the other
            # row has slack): diffcp's derivative there moves by ~5e-7 with the rounding of K
            rtol = 1e-9 if k < 9 else 1e-6
            assert torch.allclose(a, c, rtol=rtol, atol=1e-12, equal_nan=True), (lean_on, k, a - c)
    assert float(batch[8].abs().max()) > 1e-3  # the L gradient is not trivially zero
