"""The exact active-set solver of the reduced problem: cross-checks, gradients, batches, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difftrust import TrustRegionStep, solve_reduced
from difftrust.active_set import (
    NOT_CERTIFIED,
    active_set_vjp,
    active_set_vjp_numpy,
    active_set_vjp_python,
    solve_active_set,
    solve_active_set_numpy,
    solve_active_set_python,
)
from difftrust.closed_form import solve_closed_form
from difftrust.conic import solve_conic
from tests._problems import REGIMES, random_problem, reference_step, t64

F64 = torch.float64


def _reduced(seed: int, n: int, m: int, regime: str):
    g, A, b, H, delta = random_problem(seed, n, m, regime)
    G = np.concatenate([g[:, None], A.T], 1)
    K = G.T @ np.linalg.solve(H, G)
    return torch.tensor(K), torch.tensor(b), torch.tensor(delta, dtype=F64)


@given(seed=st.integers(0, 10_000), m=st.integers(0, 4), regime=st.sampled_from(REGIMES))
@settings(max_examples=40, deadline=None)
def test_torch_and_numpy_enumerations_agree(seed, m, regime):
    K, b, delta = _reduced(seed, 7, m, regime)
    st_ = solve_active_set(K[None], b[None], delta)
    sn = solve_active_set_numpy(K[None].numpy(), b[None].numpy(), delta.reshape(1).numpy())
    assert int(st_.code[0]) == int(sn["code"][0])
    if int(st_.code[0]) == NOT_CERTIFIED:
        return
    assert np.allclose(st_.w.numpy(), sn["w"], rtol=1e-12, atol=1e-14)
    wbar = torch.randn(1, m + 1, dtype=F64, generator=torch.Generator().manual_seed(seed))
    gt = active_set_vjp(st_, wbar)
    gn = active_set_vjp_numpy(sn, wbar.numpy())
    for a, c in zip(gt, gn, strict=True):
        assert np.allclose(a.numpy(), c, rtol=1e-10, atol=1e-12)
    sp = solve_active_set_python(K.tolist(), b.tolist(), float(delta))
    assert sp["code"][0] == int(sn["code"][0])
    assert np.allclose(sp["w"], sn["w"], rtol=1e-12, atol=1e-14)
    Kb, bb, db = active_set_vjp_python(sp, wbar[0].tolist())
    for a, c in zip((np.array([Kb]), np.array([bb]), np.array([db])), gn, strict=True):
        assert a.shape == c.shape and np.allclose(a, c, rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 10_000), m=st.integers(0, 3), regime=st.sampled_from(REGIMES))
@settings(max_examples=40, deadline=None)
def test_matches_closed_form_and_conic_with_gradients(seed, m, regime):
    """m <= 1 against the closed form (exact), m >= 2 against the conic backend (diffcp)."""
    if m == 0:
        regime = "inactive"
    K, b, delta = _reduced(seed, 6, m, regime)
    leaves = [t.clone().requires_grad_(True) for t in (K, b, delta)]
    ref = solve_closed_form(*leaves) if m <= 1 else solve_conic(*leaves)
    ours = solve_reduced(K, b, delta, solver="active-set")
    assert ours.case == ref.case
    scale = float(ref.w.detach().abs().max())
    assert float((ours.w - ref.w.detach()).abs().max()) <= 1e-9 * scale
    wbar = torch.randn(m + 1, dtype=F64, generator=torch.Generator().manual_seed(seed))
    gref = torch.autograd.grad(ref.w, leaves, wbar, allow_unused=True)
    ours_leaves = [t.clone().requires_grad_(True) for t in (K, b, delta)]
    gours = torch.autograd.grad(
        solve_reduced(*ours_leaves, solver="active-set").w, ours_leaves, wbar, allow_unused=True
    )
    for k, (a, c) in enumerate(zip(gref, gours, strict=True)):
        a = torch.zeros_like(ours_leaves[k]) if a is None else a
        if k == 0:
            a = 0.5 * (a + a.T)  # gradient with respect to the symmetric matrix
        tol = 1e-12 if m <= 1 else 1e-6  # diffcp's adjoint is the less accurate side
        big = float(a.abs().max()) if a.numel() else 0.0
        assert torch.allclose(a, c, rtol=tol, atol=tol * max(1.0, big))


def _central_fd(fn, x: torch.Tensor, h: float) -> torch.Tensor:
    out = torch.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        e = e.reshape(x.shape)
        f1, f2, f3, f4 = fn(x + e), fn(x - e), fn(x + 2 * e), fn(x - 2 * e)
        out.reshape(-1)[i] = (8 * (f1 - f2) - (f3 - f4)) / (12 * h)  # fourth order
    return out


@pytest.mark.parametrize(
    ("seed", "m", "regime"), [(1, 2, "binding"), (2, 3, "binding"), (3, 2, "infeasible")]
)
def test_layer_gradients_match_finite_differences_to_1e8(seed, m, regime):
    g, A, b, H, delta = random_problem(seed, 5, m, regime)
    gt, At, bt, Ht = t64(g, A, b, H)
    v = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(seed))
    step = TrustRegionStep(delta=delta)
    res = step.solve(gt, At, bt, Ht)
    assert res.solver == "active-set"
    leaves = [t.clone().requires_grad_(True) for t in (gt, At, bt)]
    grads = torch.autograd.grad(step(*leaves, Ht) @ v, leaves)
    fns = [
        lambda x: float(step(x, At, bt, Ht) @ v),
        lambda x: float(step(gt, x, bt, Ht) @ v),
        lambda x: float(step(gt, At, x, Ht) @ v),
    ]
    for gr, fn, x in zip(grads, fns, (gt, At, bt), strict=True):
        fd = _central_fd(fn, x, 1e-4)
        assert float((gr - fd).abs().max()) <= 1e-8 * max(1.0, float(fd.abs().max()))


def test_batch_without_loop_matches_one_by_one_and_gradients():
    rng = np.random.default_rng(5)
    B, n, m = 12, 6, 2
    regimes = [REGIMES[i % 3] for i in range(B)]
    probs = [random_problem(int(rng.integers(1e6)), n, m, r) for r in regimes]
    g, A, b, H = (torch.tensor(np.stack([p[k] for p in probs]), requires_grad=True) for k in range(4))
    step = TrustRegionStep(delta=0.02)
    res = step.solve(g, A, b, H)
    assert res.x.shape == (B, n) and res.solver == ["active-set"] * B
    v = torch.randn(B, n, dtype=F64, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((res.x * v).sum(), (g, A, b, H))
    for i in range(B):
        leaves = [t.detach()[i].clone().requires_grad_(True) for t in (g, A, b, H)]
        ri = step.solve(*leaves)
        assert ri.case == res.case[i]
        assert torch.allclose(ri.x, res.x[i], atol=1e-13)
        gi = torch.autograd.grad(ri.x @ v[i], leaves)
        for a, c in zip(gi, grads, strict=True):
            assert torch.allclose(a, c[i], atol=1e-11)
    # identity metric, batched, and the reduced problem exposed on the result
    res_id = step.solve(g.detach(), A.detach(), b.detach())
    sols = solve_reduced(res_id.K, b.detach(), 0.02)
    for i in range(B):
        assert torch.allclose(sols[i].w, res_id.w[i], atol=1e-12)
        x = sols[i].w[0] * g[i].detach() + sols[i].w[1:] @ A[i].detach()
        assert torch.allclose(x, res_id.x[i], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# invariances and feasibility over scales and geometry (issue: silent degradation at scale gaps)


def _feasible_checks(res, g, A, b, H, delta):
    x = res.x.numpy()
    assert np.all(np.isfinite(x))
    assert 0.5 * x @ H @ x <= delta * (1 + 1e-8)
    if res.case != "recovery" and len(b):
        assert np.all(b + A @ x <= 1e-8 * np.maximum(np.abs(b), np.abs(A) @ np.abs(x)).max())


@given(
    seed=st.integers(0, 10_000),
    m=st.integers(1, 3),
    regime=st.sampled_from(REGIMES),
    which=st.sampled_from(("g", "A", "H")),
    log_scale=st.floats(-6.0, 9.0),
)
@settings(max_examples=60, deadline=None)
def test_step_is_invariant_to_scales_and_feasible(seed, m, regime, which, log_scale):
    g, A, b, H, delta = random_problem(seed, 5, m, regime)
    s = 10.0**log_scale
    base = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H))
    if which == "g":
        args, d2 = (g * s, A, b, H), delta
    elif which == "A":
        args, d2 = (g, A * s, b * s, H), delta
    else:
        args, d2 = (g, A, b, H * s), delta * s
    res = TrustRegionStep(delta=d2).solve(*t64(*args))
    assert res.case == base.case
    assert float((res.x - base.x).norm()) <= 1e-6 * float(base.x.norm())
    _feasible_checks(res, *args, d2)
    _feasible_checks(base, g, A, b, H, delta)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_extreme_scales_give_the_same_step(scale):
    g, A, b, H, delta = random_problem(7, 4, 2, "binding")
    base = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H)).x
    cases = (
        ((g * scale, A, b, H), delta),
        ((g, A * scale, b * scale, H), delta),
        ((g, A, b, H * scale), delta * scale),
    )
    for args, d in cases:
        x = TrustRegionStep(delta=d).solve(*t64(*args)).x
        assert torch.allclose(x, base, rtol=1e-9, atol=1e-12 * float(base.abs().max()))


def test_constraint_gap_between_rows_is_exact():
    """Rows differing in scale by 1e9 against each other and g: same step as the balanced problem."""
    g, A, b, H, delta = random_problem(11, 6, 2, "binding")
    base = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H)).x
    A2, b2 = A.copy(), b.copy()
    A2[0] *= 1e9
    b2[0] *= 1e9
    x = TrustRegionStep(delta=delta).solve(*t64(g * 1e-6, A2, b2, H)).x
    assert float((x - base).norm()) <= 1e-9 * float(base.norm())


@given(seed=st.integers(0, 10_000), log_cond=st.floats(0.0, 10.0), n=st.integers(3, 12))
@settings(max_examples=25, deadline=None)
def test_ill_conditioned_metric_agrees_with_clarabel(seed, log_cond, n):
    rng = np.random.default_rng(seed)
    m = 2
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    H = Q @ np.diag(np.logspace(0, log_cond, n)) @ Q.T
    H = 0.5 * (H + H.T)
    g, A = rng.normal(size=n), rng.normal(size=(m, n))
    Hinv = np.linalg.inv(H)
    delta = 0.01
    x_tr = np.sqrt(2 * delta / (g @ Hinv @ g)) * Hinv @ g
    b = -(A @ x_tr) * 0.5  # both rows bind
    x_ref, _ = reference_step(g, A, b, H, delta)
    try:
        x = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H)).x.numpy()
    except ValueError as err:  # allowed only with the named error
        assert "too ill-conditioned" in str(err)
        return
    assert np.linalg.norm(x - x_ref) <= 1e-6 * np.linalg.norm(x_ref)


def test_metric_beyond_float64_raises_named_error():
    H = torch.diag(torch.tensor([1.0, 1e-13, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="too ill-conditioned.*condition number"):
        TrustRegionStep(delta=0.01)(torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), -0.1, H)


# ---------------------------------------------------------------------------------------------
# degenerate geometry: certified or handed to the fallback


def test_g_parallel_to_a_row_falls_back_and_is_right():
    g = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    A = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    b = torch.tensor([-0.05, 0.01], dtype=F64)
    res = TrustRegionStep(delta=0.01).solve(g, A, b)
    x_ref, _ = reference_step(g.numpy(), A.numpy(), b.numpy(), np.eye(3), 0.01)
    assert res.solver == "conic"  # g in the span of the active rows: lam = 0 is left to the fallback
    # the optimum is a face (x_2 is free in [-0.1396, -0.01]): compare objective and feasibility
    x = res.x.numpy()
    assert g.numpy() @ x == pytest.approx(g.numpy() @ x_ref, rel=1e-7)
    assert np.all(b.numpy() + A.numpy() @ x <= 1e-9) and 0.5 * x @ x <= 0.01 * (1 + 1e-9)
    # the fallback's gradient reaches the inputs (one problem, and inside a batch)
    gl = g.clone().requires_grad_(True)
    TrustRegionStep(delta=0.01)(gl, A, b).sum().backward()
    assert torch.isfinite(gl.grad).all()
    gb = torch.stack([g, g + 0.3]).requires_grad_(True)
    res_b = TrustRegionStep(delta=0.01).solve(gb, torch.stack([A, A]), torch.stack([b, b]))
    assert res_b.solver == ["conic", "active-set"]
    res_b.x.sum().backward()
    assert torch.isfinite(gb.grad).all()


def test_duplicate_rows_and_zero_rows():
    g, A, b, H, delta = random_problem(3, 5, 2, "binding")
    A3 = np.concatenate([A, A[:1], np.zeros((1, 5))])
    b3 = np.concatenate([b, b[:1], [-1.0]])
    x2 = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H)).x
    x3 = TrustRegionStep(delta=delta).solve(*t64(g, A3, b3, H)).x
    assert torch.allclose(x2, x3, atol=1e-9 * float(x2.abs().max()))


@given(
    seed=st.integers(0, 10_000),
    m=st.integers(0, 4),
    regime=st.sampled_from(REGIMES),
    tensor_delta=st.booleans(),
    solver=st.sampled_from(["auto", "active-set"]),
)
@settings(max_examples=40, deadline=None)
def test_solve_reduced_one_problem_matches_the_batched_path(seed, m, regime, tensor_delta, solver):
    """One CPU problem takes the Python-float path of solve_reduced; a batch of one the general
    (numpy) path: same w, multipliers, case and gradients to K (given unsymmetrised), b and delta."""
    K, b, delta = _reduced(seed, 7, m, regime if m else "inactive")
    skew = torch.randn(m + 1, m + 1, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 1e-3
    K = K + skew - skew.T  # not symmetric: both paths use 0.5 (K + K')
    wbar = torch.randn(m + 1, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    out = []
    for batched in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (K, b, delta)]
        d = leaves[2] if tensor_delta else float(delta)
        args = (leaves[0][None], leaves[1][None], d) if batched else (leaves[0], leaves[1], d)
        sol = solve_reduced(*args, solver=solver)
        sol = sol[0] if batched else sol
        grads = torch.autograd.grad(sol.w, leaves if tensor_delta else leaves[:2], wbar, allow_unused=True)
        out.append([sol.w, sol.lam, sol.nu, *grads, sol.case])
    assert out[0][-1] == out[1][-1]
    for a, c in zip(out[0][:-1], out[1][:-1], strict=True):
        assert a.shape == c.shape and torch.allclose(a, c, rtol=1e-9, atol=1e-13, equal_nan=True), (a, c)


def test_solve_reduced_input_errors():
    K = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="K must have shape"):
        solve_reduced(torch.eye(2, 3, dtype=F64), torch.zeros(1, dtype=F64), 0.01)
    with pytest.raises(ValueError, match="b must have shape"):
        solve_reduced(K, torch.zeros(2, dtype=F64), 0.01)
    with pytest.raises(ValueError, match="finite"):
        solve_reduced(K, torch.tensor([math.nan], dtype=F64), 0.01)
    with pytest.raises(ValueError, match="finite and delta > 0"):
        solve_reduced(K, torch.zeros(1, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="finite and delta > 0"):
        solve_reduced(torch.tensor([[1.0, math.inf], [0.0, 1.0]], dtype=F64), torch.zeros(1, dtype=F64), 0.01)
    with pytest.raises(ValueError, match="finite and delta > 0"):
        solve_reduced(K, torch.zeros(1, dtype=F64), torch.tensor(math.nan, dtype=F64))
    with pytest.raises(ValueError, match="solver must be one of"):
        solve_reduced(K, torch.zeros(1, dtype=F64), 0.01, solver="newton")


# ---------------------------------------------------------------------------------------------
# the torch enumeration (the GPU code path) and CUDA devices

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batch(seed: int, B: int, n: int, m: int, device: str = "cpu"):
    rng = np.random.default_rng(seed)
    probs = [random_problem(int(rng.integers(1e6)), n, m, REGIMES[i % 3]) for i in range(B)]
    return [torch.tensor(np.stack([p[k] for p in probs]), device=device) for k in range(4)]


def _step_and_grads(args, delta=0.02):
    leaves = [t.clone().requires_grad_(True) for t in args]
    res = TrustRegionStep(delta=delta).solve(*leaves)
    v = torch.linspace(-1.0, 1.0, res.x.shape[-1], dtype=F64, device=res.x.device)
    grads = torch.autograd.grad((res.x * v).sum(), leaves)
    return res, grads


def test_torch_enumeration_path_in_the_layer_matches_numpy(monkeypatch):
    import difftrust.reduced as reduced

    args = _batch(8, 9, 6, 3)
    res_np, g_np = _step_and_grads(args)
    monkeypatch.setattr(reduced, "ENUMERATION_BACKEND", "torch")
    res_t, g_t = _step_and_grads(args)
    assert res_t.case == res_np.case and res_t.solver == res_np.solver
    assert torch.allclose(res_t.x, res_np.x, atol=1e-13)
    for a, c in zip(g_t, g_np, strict=True):
        assert torch.allclose(a, c, atol=1e-11)


@needs_cuda
def test_cuda_batch_stays_on_device_and_matches_cpu():
    args = _batch(9, 16, 20, 2)
    res_cpu, g_cpu = _step_and_grads(args)
    res_gpu, g_gpu = _step_and_grads([t.cuda() for t in args])
    assert res_gpu.x.device.type == "cuda" and all(gr.device.type == "cuda" for gr in g_gpu)
    assert res_gpu.case == res_cpu.case
    assert torch.allclose(res_gpu.x.cpu(), res_cpu.x, atol=1e-12)
    for a, c in zip(g_gpu, g_cpu, strict=True):
        assert torch.allclose(a.cpu(), c, atol=1e-10)


@needs_cuda
def test_cuda_single_problem_identity_and_operator_metric():
    from difftrust import OperatorMetric

    g, A, b, H, delta = random_problem(3, 5, 2, "binding")
    x_cpu = TrustRegionStep(delta=delta).solve(*t64(g, A, b)).x
    gc, Ac, bc = (t.cuda() for t in t64(g, A, b))
    x_gpu = TrustRegionStep(delta=delta).solve(gc, Ac, bc).x
    assert x_gpu.device.type == "cuda" and torch.allclose(x_gpu.cpu(), x_cpu, atol=1e-12)
    d = torch.arange(1.0, 6.0, dtype=F64, device="cuda")
    metric = OperatorMetric(lambda v, d: d * v, tensors=(d,))
    x_op = TrustRegionStep(delta=delta, cg_iters=20, cg_tol=1e-13).solve(gc, Ac, bc, metric).x
    x_dense = TrustRegionStep(delta=delta).solve(gc, Ac, bc, torch.diag(d)).x
    assert x_op.device.type == "cuda" and torch.allclose(x_op, x_dense, atol=1e-10)


def test_float32_batch_on_the_torch_path_matches_float64(monkeypatch):
    import difftrust.reduced as reduced

    monkeypatch.setattr(reduced, "ENUMERATION_BACKEND", "torch")
    args = _batch(10, 6, 5, 2)
    res64, _ = _step_and_grads(args)
    res32, g32 = _step_and_grads([t.float() for t in args])
    assert res32.solver == ["active-set"] * 6 and res32.x.dtype == torch.float32
    assert torch.allclose(res32.x.double(), res64.x, rtol=1e-4, atol=1e-5)
    assert all(gr.dtype == torch.float32 and torch.isfinite(gr).all() for gr in g32)


@given(
    seed=st.integers(0, 10_000),
    log_eps=st.floats(-12.0, -2.0),
    which=st.sampled_from(("g-row", "row-row")),
    regime=st.sampled_from(REGIMES),
)
@settings(max_examples=40, deadline=None)
def test_nearly_dependent_rows_give_feasible_near_optimal_steps(seed, log_eps, which, regime):
    """Degenerate geometry: a row nearly parallel to g or to another row (angle ~ eps)."""
    g, A, b, H, delta = random_problem(seed, 5, 2, regime)
    rng = np.random.default_rng(seed)
    eps = 10.0**log_eps
    src = g if which == "g-row" else A[1]
    A = A.copy()
    A[0] = src * rng.uniform(0.5, 2.0) + eps * rng.normal(size=5) * np.linalg.norm(src)
    x_ref, status = reference_step(g, A, b, H, delta)
    res = TrustRegionStep(delta=delta).solve(*t64(g, A, b, H))
    x = res.x.numpy()
    assert (res.case == "recovery") == (status == "recovery")
    _feasible_checks(res, g, A, b, H, delta)
    if status != "recovery":  # as good as the reference solve (the optimum may be a face)
        assert g @ x >= g @ x_ref - 1e-6 * max(abs(g @ x_ref), np.linalg.norm(g) * np.sqrt(2 * delta))
