"""Speed and gradient accuracy of ``difftrust.TrustRegionStep`` against cvxpylayers.

Part 1, dense metric. The problem (float64)::

    max_x g'x   s.t.   0.5 ||L'x||^2 <= delta,   b + A x <= 0,        H = L L'

with ``L`` a (lower-triangular) Cholesky factor treated as a parameter. cvxpylayers gets ``L``
directly (its problem must be DPP, so ``0.5 * sum_squares(L.T @ x)``); difftrust gets
``H = L @ L.T`` built in torch inside the timed region, so gradients reach ``L`` through autograd.
Both are timed on forward + backward of a fixed random linear functional ``v'x`` (median of
several repeats after a warm-up; the one-off cvxpylayers problem construction is excluded and
reported separately).

Problems are *planted* so that constraints bind: ``x*`` on the trust-region boundary, ``k``
active constraints with multipliers ``nu ~ U(0.5, 1.5)`` (``k = 1`` for ``m = 1``; ``k = 2`` of 3
for ``m = 3``, the third inactive with a slack of half its range over the trust region), and
``g = lam H x* + A_S' nu``. KKT then certifies ``x*`` as the unique optimum.

Gradient reference (independent of both layers): central finite differences of an *active-set
oracle* in float64. With the active set ``S`` fixed, the optimum has the closed form
``x = x0 + t d`` (``x0`` the minimum-H-norm point of ``A_S x = -b_S``, ``d`` the H-projection of
``H^-1 g`` onto ``A_S d = 0``, ``t`` from ``0.5 x'Hx = delta``), evaluated with triangular solves in
``L`` (``H`` is never formed). It is exact in float64 and smooth while the active set is stable,
which the margins above guarantee for the step sizes used. Checks recorded in the output: the
oracle reproduces ``x*``; a cvxpy + Clarabel solve at tight tolerances agrees with it; the
reference (Richardson extrapolation of central differences at h = 1e-4, 2e-4) agrees with plain
central differences at h = 1e-6 and with autograd through the oracle. Gradients are compared on
``g``, ``A``, ``b`` and the lower triangle of ``L``; for n = 200 on all of ``g, A, b`` and a random
subset of the ``L`` entries (the count is in the output). Errors: max absolute error, and that
divided by the largest reference entry ("rel").

Part 1b, a batch: 64 planted problems with m = 2 (both rows active), n = 50, each with its own
``L``; ours is one batched call (``g (64, n)``, ``A (64, 2, n)``, ``b (64, 2)``, ``H = L L'`` of shape
``(64, n, n)``), cvxpylayers its batched call on the same parameters. Accuracy: ``x`` against the
planted ``x*`` and the gradient against autograd through the exact active-set oracle (which agrees
with its finite differences to ~1e-12 in part 1).

Part 1c, the reduced problem alone (``difftrust.solve_reduced``, forward + backward), active-set
enumeration against the conic backend for m = 1..8: the measurement behind ``MAX_ACTIVE_SET_M``.

Part 1d, CUDA (only when a GPU is present): parts 1 and 1b for ours with every tensor on the GPU
(cvxpylayers has no GPU path; its CPU times are the comparison).

Part 2, Fisher metric: ``FisherMetric`` of a [64, 64] tanh Gaussian policy (rl.policy) on 2,000
states, m = 1 (binding), 10 CG iterations; time of forward + backward (``g``, ``a`` and the policy
parameters require grad) over the same forward under ``torch.no_grad``. One thread.

Everything runs with one torch/BLAS thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)) so that
both layers are measured alike on a shared machine; SCS is single-threaded.

Usage::

    .venv/bin/python benchmarks/trust_region.py [--quick] [--out benchmarks/results/trust_region.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cvxpy as cp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cvxpylayers.torch import CvxpyLayer  # noqa: E402

from difftrust import FisherMetric, TrustRegionStep  # noqa: E402

F64 = torch.float64
DELTA = 0.01
RESULTS = ROOT / "benchmarks" / "results" / "trust_region.json"
TARGET_SPEEDUP = {1: 50.0, 3: 50.0}  # at n = 50, against cvxpylayers at its default settings
TARGET_BATCH_SPEEDUP = 200.0  # batch of 64, m = 2, n = 50, against cvxpylayers' batched call
BATCH, BATCH_M = 64, 2
TARGET_ERROR = 1e-8
TARGET_FISHER_RATIO = 2.0
CVX_SETTINGS = {"scs-default": {}}
CVX_TIGHT = {"scs-eps1e-9": {"eps": 1e-9}}  # --with-tight: 1-30 s per call at n >= 50


def log(msg: str) -> None:
    print(msg, flush=True)


def median_time(fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """Median and minimum wall time, and the median CPU time of this process (``time.process_time``,
    all its threads, e.g. cvxpylayers' thread pool for a batch): on a shared, loaded machine it
    leaves out the time the process waits for a core."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_median_s": statistics.median(cpu),
        "repeats": repeats,
    }


# ---------------------------------------------------------------------------------------------
# planted problems


@dataclass
class Problem:
    n: int
    m: int
    g: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    L: torch.Tensor  # lower triangular, H = L L'
    v: torch.Tensor  # the functional v'x
    x_star: torch.Tensor
    active: list[int]


def make_problem(n: int, m: int, seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    M = rnd(n, n) / math.sqrt(n)
    H = M @ M.T + 0.5 * torch.eye(n, dtype=F64)  # eigenvalues in about [0.5, 4.5]
    L = torch.linalg.cholesky(H)
    A = rnd(m, n)
    k = min(m, 2)
    active = list(range(k))
    d = rnd(n)
    x = d * torch.sqrt(2 * DELTA / (d @ H @ d))
    AS = A[:k]
    nu = 0.5 + torch.rand(k, generator=gen, dtype=F64)
    Hx, Anu = H @ x, AS.T @ nu
    lam = Anu.norm() / Hx.norm()
    g = lam * Hx + Anu
    b = torch.empty(m, dtype=F64)
    b[:k] = -(AS @ x)
    Hinv_A = torch.cholesky_solve(A.T, L)
    for j in range(k, m):
        spread = torch.sqrt(2 * DELTA * (A[j] @ Hinv_A[:, j]))
        b[j] = -(A[j] @ x) - 0.5 * spread
    return Problem(n, m, g, A, b, L, rnd(n), x, active)


# ---------------------------------------------------------------------------------------------
# the active-set oracle and its finite differences


def oracle(g: torch.Tensor, A: torch.Tensor, b: torch.Tensor, L: torch.Tensor, active: list[int]):
    """Batched exact optimum for a fixed active set: g (B,n), A (B,m,n), b (B,m), L (n,n) or (B,n,n)."""
    AS = A[:, active]  # (B, k, n)
    bS = b[:, active]
    rhs = torch.cat([g.unsqueeze(2), AS.transpose(1, 2)], dim=2)  # (B, n, k+1)
    Lb = L if L.dim() == 3 else L.expand(g.shape[0], -1, -1)
    Z = torch.cholesky_solve(rhs, Lb)
    Hg, HA = Z[:, :, 0], Z[:, :, 1:]
    S = AS @ HA  # (B, k, k)
    y0 = torch.linalg.solve(S, bS.unsqueeze(2)).squeeze(2)
    yg = torch.linalg.solve(S, (AS @ Hg.unsqueeze(2))).squeeze(2)
    x0 = -(HA @ y0.unsqueeze(2)).squeeze(2)
    d = Hg - (HA @ yg.unsqueeze(2)).squeeze(2)
    t = torch.sqrt((2 * DELTA - (bS * y0).sum(1)) / (g * d).sum(1))
    x = x0 + t.unsqueeze(1) * d
    nu = yg + y0 / t.unsqueeze(1)
    return x, 1.0 / t, nu


class Params:
    """Flat parameter vector theta = [g, A, b, tril(L)] and its inverse map."""

    def __init__(self, prob: Problem):
        n, m = prob.n, prob.m
        self.n, self.m = n, m
        self.tril = torch.tril_indices(n, n)
        self.sizes = {"g": n, "A": m * n, "b": m, "L": self.tril.shape[1]}
        offs, o = {}, 0
        for key, size in self.sizes.items():
            offs[key] = (o, o + size)
            o += size
        self.offsets, self.p = offs, o
        self.theta = torch.cat([prob.g, prob.A.reshape(-1), prob.b, prob.L[self.tril[0], self.tril[1]]])

    def block(self, key: str, theta: torch.Tensor) -> torch.Tensor:
        lo, hi = self.offsets[key]
        return theta[..., lo:hi]

    def unpack(self, theta: torch.Tensor, with_L: bool):
        B = theta.shape[0]
        g = self.block("g", theta)
        A = self.block("A", theta).reshape(B, self.m, self.n)
        b = self.block("b", theta)
        if not with_L:
            return g, A, b, None
        L = theta.new_zeros(B, self.n, self.n)
        L[:, self.tril[0], self.tril[1]] = self.block("L", theta)
        return g, A, b, L

    def flat_grad(self, gg, gA, gb, gL) -> torch.Tensor:
        return torch.cat([gg, gA.reshape(-1), gb, gL[self.tril[0], self.tril[1]]])


def fd_reference(prob: Problem, coords: torch.Tensor, chunk: int = 64) -> dict:
    """Central FD of v'x_oracle at the given flat coordinates (several step sizes)."""
    par = Params(prob)
    L0 = prob.L
    lo_L = par.offsets["L"][0]
    v = prob.v

    def f(theta_batch: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, theta_batch.shape[0], chunk):
            g, A, b, L = par.unpack(theta_batch[i : i + chunk], with_L=True)
            out.append(oracle(g, A, b, L, prob.active)[0] @ v)
        return torch.cat(out)

    def f_noL(theta_batch: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, theta_batch.shape[0], 4 * chunk):
            tb = theta_batch[i : i + 4 * chunk]
            g, A, b, _ = par.unpack(tb, with_L=False)
            out.append(oracle(g, A, b, L0, prob.active)[0] @ v)
        return torch.cat(out)

    def central(h: float) -> torch.Tensor:
        res = torch.empty(len(coords), dtype=F64)
        for sel, fn in ((coords < lo_L, f_noL), (coords >= lo_L, f)):
            idx = coords[sel]
            if len(idx) == 0:
                continue
            E = torch.zeros(len(idx), par.p, dtype=F64)
            E[torch.arange(len(idx)), idx] = h
            plus = fn(par.theta + E)
            minus = fn(par.theta - E)
            res[sel] = (plus - minus) / (2 * h)
        return res

    d1, d2, d_small = central(1e-4), central(2e-4), central(1e-6)
    ref = (4 * d1 - d2) / 3  # Richardson: O(h^4)
    # autograd through the oracle, as a further check of the FD reference
    th = par.theta.clone().requires_grad_(True)
    g, A, b, L = par.unpack(th.unsqueeze(0), with_L=True)
    (oracle(g, A, b, L, prob.active)[0] @ v).sum().backward()
    auto = th.grad[coords]
    return {
        "ref": ref,
        "fd_h1e-6_vs_ref": float((d_small - ref).abs().max()),
        "autograd_oracle_vs_ref": float((auto - ref).abs().max()),
    }


def choose_coords(prob: Problem, max_L: int | None, seed: int) -> tuple[torch.Tensor, dict]:
    par = Params(prob)
    lo_L, hi_L = par.offsets["L"]
    base = torch.arange(lo_L)
    nL = hi_L - lo_L
    if max_L is None or nL <= max_L:
        Lidx = torch.arange(lo_L, hi_L)
    else:
        gen = torch.Generator().manual_seed(seed)
        Lidx = lo_L + torch.randperm(nL, generator=gen)[:max_L].sort().values
    coords = torch.cat([base, Lidx])
    return coords, {"g_A_b": int(lo_L), "L_lower": int(len(Lidx)), "L_lower_total": int(nL)}


def clarabel_check(prob: Problem) -> dict:
    """Independent forward check: cvxpy + Clarabel at tight (then default) tolerances vs x*."""
    n = prob.n
    x = cp.Variable(n)
    Lnp, gnp, Anp, bnp = (t.numpy() for t in (prob.L, prob.g, prob.A, prob.b))
    cons = [0.5 * cp.sum_squares(Lnp.T @ x) <= DELTA, bnp + Anp @ x <= 0]
    pr = cp.Problem(cp.Maximize(gnp @ x), cons)
    tight = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500)
    errors = []
    for label, opts in (("tight 1e-12", tight), ("defaults", {})):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "may be inaccurate" at the tight tolerances
                pr.solve(solver=cp.CLARABEL, **opts)
            err = float(np.abs(x.value - prob.x_star.numpy()).max())
            return {"status": f"{pr.status} ({label})", "max_abs_diff_x": err}
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            errors.append(f"{label}: {type(exc).__name__}")
    return {"status": "failed: " + "; ".join(errors), "max_abs_diff_x": float("nan")}


# ---------------------------------------------------------------------------------------------
# the two layers


def run_ours(prob: Problem, step: TrustRegionStep):
    g = prob.g.clone().requires_grad_(True)
    A = prob.A.clone().requires_grad_(True)
    b = prob.b.clone().requires_grad_(True)
    L = prob.L.clone().requires_grad_(True)

    def call():
        for t in (g, A, b, L):
            t.grad = None
        x = step(g, A, b, L @ L.T)
        (prob.v @ x).backward()
        return x

    return call, (g, A, b, L)


def make_cvx_layer(n: int, m: int) -> tuple[CvxpyLayer, float]:
    t0 = time.perf_counter()
    x = cp.Variable(n)
    g = cp.Parameter(n)
    A = cp.Parameter((m, n))
    b = cp.Parameter(m)
    L = cp.Parameter((n, n))
    prob = cp.Problem(cp.Maximize(g @ x), [0.5 * cp.sum_squares(L.T @ x) <= DELTA, b + A @ x <= 0])
    assert prob.is_dpp()
    layer = CvxpyLayer(prob, parameters=[g, A, b, L], variables=[x])
    return layer, time.perf_counter() - t0


def run_cvx(prob: Problem, layer: CvxpyLayer, solver_args: dict, notes: list[str]):
    g = prob.g.clone().requires_grad_(True)
    A = prob.A.clone().requires_grad_(True)
    b = prob.b.clone().requires_grad_(True)
    L = prob.L.clone().requires_grad_(True)

    def call():
        for t in (g, A, b, L):
            t.grad = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (x,) = layer(g, A, b, L, solver_args=dict(solver_args))
            (prob.v @ x).backward()
        for w in caught:
            if issubclass(w.category, DeprecationWarning):
                continue  # numpy-2 deprecation noise inside cvxpylayers/diffcp
            msg = str(w.message).strip().splitlines()[0][:120]
            if msg not in notes:
                notes.append(msg)
        return x

    return call, (g, A, b, L)


def grad_errors(par: Params, coords: torch.Tensor, leaves, ref: torch.Tensor) -> dict:
    flat = par.flat_grad(*[t.grad for t in leaves])[coords]
    err = (flat - ref).abs()
    scale = float(ref.abs().max())
    out = {"max_abs": float(err.max()), "rel": float(err.max()) / scale}
    lo_L = par.offsets["L"][0]
    for key in ("g", "A", "b", "L"):
        lo, hi = par.offsets[key]
        sel = (coords >= lo) & (coords < hi)
        if key != "L":
            sel = sel & (coords < lo_L)
        if bool(sel.any()):
            out[f"max_abs_{key}"] = float(err[sel].max())
    return out


def bench_dense(n: int, m: int, args, seed: int) -> dict:
    prob = make_problem(n, m, seed)
    par = Params(prob)
    row: dict = {"n": n, "m": m, "active_constraints": len(prob.active)}
    # reference
    t0 = time.perf_counter()
    x_or, lam_or, nu_or = oracle(
        prob.g.unsqueeze(0), prob.A.unsqueeze(0), prob.b.unsqueeze(0), prob.L, prob.active
    )
    coords, cinfo = choose_coords(prob, args.fd_max_L if n > 50 else None, seed)
    fd = fd_reference(prob, coords)
    ref = fd["ref"]
    row["reference"] = {
        "kind": "central FD (Richardson h=1e-4,2e-4) of the active-set oracle, float64",
        "coords": cinfo,
        "oracle_vs_planted_x": float((x_or[0] - prob.x_star).abs().max()),
        "oracle_min_nu": float(nu_or.min()),
        "fd_h1e-6_vs_ref": fd["fd_h1e-6_vs_ref"],
        "autograd_oracle_vs_ref": fd["autograd_oracle_vs_ref"],
        "max_abs_ref_grad": float(ref.abs().max()),
        "clarabel": clarabel_check(prob),
        "seconds": time.perf_counter() - t0,
    }
    log(
        f"  n={n} m={m}: reference on {len(coords)} coords in {row['reference']['seconds']:.1f}s "
        f"(FD h=1e-6 vs ref {fd['fd_h1e-6_vs_ref']:.1e}, autograd vs ref "
        f"{fd['autograd_oracle_vs_ref']:.1e}, Clarabel x diff "
        f"{row['reference']['clarabel']['max_abs_diff_x']})"
    )
    methods = {}
    # ours
    step = TrustRegionStep(delta=DELTA)
    call, leaves = run_ours(prob, step)
    x = call()
    res = step.solve(prob.g, prob.A, prob.b, prob.L @ prob.L.T)
    entry = {
        "case": res.case,
        "solver": res.solver,
        "forward_max_abs_err": float((x.detach() - prob.x_star).abs().max()),
        "grad_error": grad_errors(par, coords, leaves, ref),
    }
    entry.update(median_time(call, args.repeats_ours, warmup=3))
    methods["ours"] = entry
    log(
        f"  n={n} m={m}: ours {1e3 * entry['median_s']:.3f} ms, grad err "
        f"{entry['grad_error']['max_abs']:.2e} (rel {entry['grad_error']['rel']:.1e})"
    )
    # cvxpylayers
    layer, build_s = make_cvx_layer(n, m)
    row["cvxpylayers_build_s"] = build_s
    for name, sargs in {**CVX_SETTINGS, **(CVX_TIGHT if args.with_tight else {})}.items():
        notes: list[str] = []
        call, leaves = run_cvx(prob, layer, sargs, notes)
        entry = {"solver_args": sargs}
        try:
            t0 = time.perf_counter()
            x = call()  # warm-up, also the accuracy evaluation
            first = time.perf_counter() - t0
            entry["forward_max_abs_err"] = float((x.detach() - prob.x_star).abs().max())
            entry["grad_error"] = grad_errors(par, coords, leaves, ref)
            reps = args.repeats_cvx if first < 2.0 else max(1, args.repeats_cvx // 2)
            entry.update(median_time(call, reps, warmup=0))
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failing solve is a result
            entry["status"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            entry["median_s"] = time.perf_counter() - t0
            entry["min_s"] = entry["median_s"]
            entry["repeats"] = 1
        entry["notes"] = notes
        methods[f"cvxpylayers {name}"] = entry
        ge = entry.get("grad_error", {})
        log(
            f"  n={n} m={m}: cvxpylayers {name} {1e3 * entry['median_s']:.1f} ms, grad err "
            f"{ge.get('max_abs', float('nan')):.2e} ({entry['status']}; {'; '.join(notes)[:100]})"
        )
    ours_t, ours_c = methods["ours"]["median_s"], methods["ours"]["cpu_median_s"]
    for key, entry in methods.items():
        if key != "ours" and entry.get("status") == "ok":
            entry["speedup_of_ours"] = entry["median_s"] / ours_t
            entry["cpu_speedup_of_ours"] = entry["cpu_median_s"] / ours_c
    row["methods"] = methods
    return row


# ---------------------------------------------------------------------------------------------
# a batch of problems, the reduced problem alone, CUDA


def make_batch(n: int, m: int, size: int, seed: int) -> list[Problem]:
    """``size`` planted problems (every row active for m <= 2), each with its own metric."""
    return [make_problem(n, m, seed + i) for i in range(size)]


def stack_batch(probs: list[Problem], device: str = "cpu") -> tuple[torch.Tensor, ...]:
    return tuple(torch.stack([getattr(p, k) for p in probs]).to(device) for k in ("g", "A", "b", "L", "v"))


def batch_reference(probs: list[Problem]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Planted x* and the oracle's autograd gradient of sum_i v_i'x_i (g, A, b, L), per problem."""
    xs = torch.stack([p.x_star for p in probs])
    grads = []
    for p in probs:
        leaves = [t.clone().requires_grad_(True) for t in (p.g, p.A, p.b, p.L)]
        L = leaves[3].tril()
        x = oracle(leaves[0].unsqueeze(0), leaves[1].unsqueeze(0), leaves[2].unsqueeze(0), L, p.active)[0]
        (x[0] @ p.v).backward()
        grads.append([leaves[0].grad, leaves[1].grad, leaves[2].grad, leaves[3].grad.tril()])
    return xs, tuple(torch.stack([gr[k] for gr in grads]) for k in range(4))


def batch_errors(x: torch.Tensor, grads: tuple, ref_x: torch.Tensor, ref_grads: tuple) -> dict:
    gerr = max(
        float((a.detach().cpu().tril() if k == 3 else a.detach().cpu()).sub(r).abs().max())
        for k, (a, r) in enumerate(zip(grads, ref_grads))
    )
    scale = max(float(r.abs().max()) for r in ref_grads)
    return {
        "x_err": float((x.detach().cpu() - ref_x).abs().max()),
        "grad_err": gerr,
        "grad_rel": gerr / scale,
    }


def bench_batch(args, n: int = 50, device: str = "cpu") -> dict:
    probs = make_batch(n, BATCH_M, BATCH, seed=777)
    ref_x, ref_grads = batch_reference(probs)
    g, A, b, L, v = stack_batch(probs, device)
    step = TrustRegionStep(delta=DELTA)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    leaves = [t.clone().requires_grad_(True) for t in (g, A, b, L)]

    def ours():
        for t in leaves:
            t.grad = None
        x = step(leaves[0], leaves[1], leaves[2], leaves[3] @ leaves[3].transpose(1, 2))
        (x * v).sum().backward()
        sync()
        return x

    x = ours()
    res = step.solve(g, A, b, L @ L.transpose(1, 2))
    entry = {"solver": sorted(set(res.solver)), "cases": sorted(set(res.case))}
    entry.update(batch_errors(x, [t.grad for t in leaves], ref_x, ref_grads))
    entry.update(median_time(ours, args.repeats_ours, warmup=3))
    row: dict = {"n": n, "m": BATCH_M, "batch": BATCH, "device": device, "methods": {"ours": entry}}
    log(
        f"  batch {BATCH} x (n={n}, m={BATCH_M}) on {device}: ours {1e3 * entry['median_s']:.3f} ms, "
        f"x err {entry['x_err']:.1e}, grad err {entry['grad_err']:.1e}"
    )
    if device != "cpu":
        return row
    layer, build_s = make_cvx_layer(n, BATCH_M)
    row["cvxpylayers_build_s"] = build_s
    notes: list[str] = []
    cl = [t.clone().requires_grad_(True) for t in (g, A, b, L)]

    def cvx():
        for t in cl:
            t.grad = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (xc,) = layer(*cl)
            (xc * v).sum().backward()
        for w in caught:
            msg = str(w.message).strip().splitlines()[0][:120]
            if not issubclass(w.category, DeprecationWarning) and msg not in notes:
                notes.append(msg)
        return xc

    xc = cvx()
    ce = {"solver_args": {}, "status": "ok", "notes": notes}
    ce.update(batch_errors(xc, [t.grad for t in cl], ref_x, ref_grads))
    ce.update(median_time(cvx, max(3, args.repeats_cvx), warmup=0))
    ce["speedup_of_ours"] = ce["median_s"] / entry["median_s"]
    ce["cpu_speedup_of_ours"] = ce["cpu_median_s"] / entry["cpu_median_s"]
    row["methods"]["cvxpylayers scs-default (batched)"] = ce
    log(
        f"  batch: cvxpylayers {1e3 * ce['median_s']:.1f} ms, x err {ce['x_err']:.1e}, grad err "
        f"{ce['grad_err']:.1e}; ours {ce['speedup_of_ours']:.0f}x faster"
    )
    return row


def bench_reduced(args) -> list[dict]:
    """solve_reduced forward + backward on random binding reduced problems, m = 1..8."""
    from difftrust import solve_reduced

    out = []
    for m in range(1, 9):
        prob = make_problem(max(12, m + 4), m, seed=50 + m)
        H = prob.L @ prob.L.T
        G = torch.cat([prob.g.unsqueeze(1), prob.A.T], 1)
        K = G.T @ torch.linalg.solve(H, G)
        row = {"m": m}
        for solver in ("active-set", "conic"):
            Kl, bl = K.clone().requires_grad_(True), prob.b.clone().requires_grad_(True)

            def call(solver=solver, Kl=Kl, bl=bl):
                Kl.grad = bl.grad = None
                sol = solve_reduced(Kl, bl, DELTA, solver=solver)
                sol.w.sum().backward()
                return sol

            sol = call()
            row[solver] = {
                "median_s": median_time(call, 10 if solver == "conic" else 30, 2)["median_s"],
                "case": sol.case,
                "w": sol.w.detach().tolist(),
            }
        row["w_diff"] = max(abs(a - c) for a, c in zip(row["active-set"]["w"], row["conic"]["w"]))
        out.append(row)
        log(
            f"  reduced m={m}: active-set {1e3 * row['active-set']['median_s']:.3f} ms, conic "
            f"{1e3 * row['conic']['median_s']:.2f} ms, |w diff| {row['w_diff']:.1e}"
        )
    return out


def bench_cuda(args) -> dict | None:
    if not torch.cuda.is_available():
        return None
    out: dict = {"device": torch.cuda.get_device_name(0), "single": [], "batch": None}
    step = TrustRegionStep(delta=DELTA)
    for m in (1, 3):
        prob = make_problem(50, m, seed=1000 * m + 50)
        leaves = [getattr(prob, k).cuda().requires_grad_(True) for k in ("g", "A", "b", "L")]
        v = prob.v.cuda()

        def call(leaves=leaves, v=v):
            for t in leaves:
                t.grad = None
            x = step(leaves[0], leaves[1], leaves[2], leaves[3] @ leaves[3].T)
            (v @ x).backward()
            torch.cuda.synchronize()
            return x

        x = call()
        e = {
            "m": m,
            "x_err": float((x.detach().cpu() - prob.x_star).abs().max()),
            "device_out": str(x.device),
        }
        e.update(median_time(call, args.repeats_ours, warmup=5))
        out["single"].append(e)
        log(f"  CUDA n=50 m={m}: ours {1e3 * e['median_s']:.3f} ms (x err {e['x_err']:.1e})")
    out["batch"] = bench_batch(args, device="cuda")
    return out


# ---------------------------------------------------------------------------------------------
# Fisher metric ratio


def bench_fisher(args) -> dict:
    from rl.policy import GaussianPolicy

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    obs_dim, act_dim, states = 60, 2, 2000
    policy = GaussianPolicy(obs_dim, act_dim, hidden=(64, 64))
    gen = torch.Generator().manual_seed(0)
    psi0 = policy.init_params(gen)
    psi0 = psi0 + 0.05 * torch.randn(psi0.shape, generator=gen, dtype=F64)  # off the init point
    obs = torch.randn(states, obs_dim, generator=gen, dtype=F64)
    n = policy.num_params
    g0 = torch.randn(n, generator=gen, dtype=F64)
    a0 = torch.randn(n, generator=gen, dtype=F64)
    v = torch.randn(n, generator=gen, dtype=F64)
    damping = 0.1

    def kl(ref, p):
        return policy.kl(ref, p, obs)

    step = TrustRegionStep(delta=DELTA, cg_iters=10)
    with torch.no_grad():
        x_tr = step(g0, None, None, FisherMetric(kl, psi0, damping))
    c = float(a0 @ x_tr)
    if c < 0:
        a0 = -a0
    b0 = torch.tensor([-0.5 * abs(c)], dtype=F64)  # binding: the TR step would violate it

    g = g0.clone().requires_grad_(True)
    a = a0.clone().requires_grad_(True)
    psi = psi0.clone().requires_grad_(True)

    def fwd_nograd():
        with torch.no_grad():
            return step(g, a, b0, FisherMetric(kl, psi, damping))

    def fwd_grad():
        return step(g, a, b0, FisherMetric(kl, psi, damping))

    def fwd_bwd():
        for t in (g, a, psi):
            t.grad = None
        x = step(g, a, b0, FisherMetric(kl, psi, damping))
        (v @ x).backward()

    res = step.solve(g0, a0, b0, FisherMetric(kl, psi0, damping))
    fwd_bwd()
    grads_ok = all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in (g, a, psi))
    psi_grad_norm = float(psi.grad.norm())

    # context: one plain KL forward+backward and one Fisher-vector product (graph reused)
    def kl_fb():
        p = psi0.clone().requires_grad_(True)
        torch.autograd.grad(kl(psi0, p), p)

    op = FisherMetric(kl, psi0, damping).operator(psi0)

    # no_grad forward and forward+backward are timed interleaved, so that load from other
    # processes on the shared machine hits both alike; the ratio is of the medians.
    r = args.repeats_fisher
    for fn in (fwd_nograd, fwd_bwd, fwd_grad):
        fn()
    times: dict[str, list[float]] = {"ng": [], "fb": [], "fg": []}
    for _ in range(r):
        for key, fn in (("ng", fwd_nograd), ("fb", fwd_bwd), ("fg", fwd_grad)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    t_ng, t_fb, t_fg = (
        {"median_s": statistics.median(times[k]), "min_s": min(times[k]), "repeats": r}
        for k in ("ng", "fb", "fg")
    )
    t_kl = median_time(kl_fb, 3 * r, warmup=2)
    t_hvp = median_time(lambda: op(v), 3 * r, warmup=2)
    torch.set_num_threads(threads_before)
    ratio = t_fb["median_s"] / t_ng["median_s"]
    out = {
        "policy": f"GaussianPolicy(obs_dim={obs_dim}, act_dim={act_dim}, hidden=(64, 64)), float64",
        "num_params": n,
        "states": states,
        "m": 1,
        "case": res.case,
        "cg_iters": 10,
        "cg_residuals_forward": [float(t) for t in res.cg_residuals],
        "damping": damping,
        "torch_threads": 1,
        "forward_nograd": t_ng,
        "forward_grad_mode": t_fg,
        "forward_backward": t_fb,
        "kl_forward_backward": t_kl,
        "fisher_vector_product": t_hvp,
        "ratio": ratio,
        "ratio_of_minima": t_fb["min_s"] / t_ng["min_s"],
        "per_repeat_ratios": [fb / ng for fb, ng in zip(times["fb"], times["ng"])],
        "grads_finite_for_g_a_psi": grads_ok,
        "psi_grad_norm": psi_grad_norm,
    }
    log(
        f"  Fisher ({n} params, {states} states, 1 thread): no_grad forward "
        f"{1e3 * t_ng['median_s']:.1f} ms, forward+backward {1e3 * t_fb['median_s']:.1f} ms, "
        f"ratio {ratio:.2f} (FVP {1e3 * t_hvp['median_s']:.2f} ms, KL fwd+bwd "
        f"{1e3 * t_kl['median_s']:.2f} ms)"
    )
    return out


# ---------------------------------------------------------------------------------------------
# report


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = 1e3 * s
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def row_status(e: dict) -> str:
    status = e.get("status", "")
    inaccurate = [n for n in e.get("notes", []) if "naccurate" in n]
    return status + (f" ({inaccurate[0]})" if inaccurate else "")


def fmt_speedup(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for row in rows:
        for name, e in row["methods"].items():
            ge = e.get("grad_error", {})
            out.append(
                [
                    str(row["n"]),
                    str(row["m"]),
                    name,
                    fmt_ms(e.get("median_s")),
                    fmt_ms(e.get("cpu_median_s")),
                    f"{ge['max_abs']:.1e}" if ge else "-",
                    f"{ge['rel']:.1e}" if ge else "-",
                    f"{e['forward_max_abs_err']:.1e}" if "forward_max_abs_err" in e else "-",
                    fmt_speedup(e.get("speedup_of_ours")),
                    fmt_speedup(e.get("cpu_speedup_of_ours")),
                    e["case"] if name == "ours" else row_status(e),
                ]
            )
    return out


HEADER = [
    "n",
    "m",
    "method",
    "fwd+bwd ms",
    "cpu ms",
    "grad err abs",
    "grad err rel",
    "x err",
    "ours faster",
    "ours faster (cpu)",
    "status",
]


def targets(rows: list[dict], fisher: dict | None, batch: dict | None = None) -> list[dict]:
    out = []
    for row in rows:
        if row["n"] != 50 or row["m"] not in TARGET_SPEEDUP:
            continue
        ours = row["methods"]["ours"]
        for name, e in row["methods"].items():
            if name == "ours":
                continue
            sp, cp_ = e.get("speedup_of_ours"), e.get("cpu_speedup_of_ours")
            need = TARGET_SPEEDUP[row["m"]]
            out.append(
                {
                    "target": f"n=50, m={row['m']}: ours >= {need:.0f}x faster than {name}",
                    "measured": None if sp is None else round(sp, 1),
                    "measured_cpu": None if cp_ is None else round(cp_, 1),
                    "met": sp is not None and sp >= need,
                }
            )
        out.append(
            {
                "target": f"n=50, m={row['m']}: ours max abs gradient error <= {TARGET_ERROR:.0e}",
                "measured": ours["grad_error"]["max_abs"],
                "met": ours["grad_error"]["max_abs"] <= TARGET_ERROR,
            }
        )
    if batch is not None:
        ce = batch["methods"]["cvxpylayers scs-default (batched)"]
        sp = ce.get("speedup_of_ours")
        out.append(
            {
                "target": f"batch of {BATCH}, n=50, m={BATCH_M}: ours >= {TARGET_BATCH_SPEEDUP:.0f}x faster "
                "than cvxpylayers' batched call",
                "measured": None if sp is None else round(sp, 1),
                "measured_cpu": round(ce["cpu_speedup_of_ours"], 1),
                "met": sp is not None and sp >= TARGET_BATCH_SPEEDUP,
            }
        )
        ge = batch["methods"]["ours"]["grad_err"]
        out.append(
            {
                "target": f"batch: ours max abs gradient error <= {TARGET_ERROR:.0e}",
                "measured": ge,
                "met": ge <= TARGET_ERROR,
            }
        )
    worst = max((r["methods"]["ours"]["grad_error"]["max_abs"] for r in rows), default=None)
    if worst is not None:
        out.append(
            {
                "target": f"all (n, m): ours max abs gradient error <= {TARGET_ERROR:.0e}",
                "measured": worst,
                "met": worst <= TARGET_ERROR,
            }
        )
    if fisher is not None:
        out.append(
            {
                "target": f"Fisher forward+backward / no_grad forward <= {TARGET_FISHER_RATIO}",
                "measured": round(fisher["ratio"], 3),
                "met": fisher["ratio"] <= TARGET_FISHER_RATIO,
            }
        )
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Trust-region layer benchmark",
        "",
        f"Generated by `benchmarks/trust_region.py{' --quick' if result['quick'] else ''}` "
        f"on {result['machine']['platform']} ({result['machine']['cpus']} CPUs), "
        f"torch {result['machine']['torch']}, cvxpylayers {result['machine']['cvxpylayers']}, "
        f"{result['wall_s']:.0f} s in all. difftrust at commit {result['code']['git_head'][:10]}"
        + (
            f" with uncommitted {', '.join(result['code']['difftrust_uncommitted'])}"
            if result["code"]["difftrust_uncommitted"]
            else ""
        )
        + " (file hashes in the JSON).",
        "",
        "Problem: max g'x s.t. 0.5||L'x||^2 <= 0.01, b + Ax <= 0, float64, constraints binding "
        "(planted: 1 of 1, or 2 of 3 active). Times: median forward+backward of v'x "
        "(one thread everywhere); wall-clock, and the process's CPU time (cpu ms), which leaves out "
        "waiting for a core on a loaded machine. Gradient errors against central finite differences of an exact "
        "active-set oracle, over g, A, b and the lower triangle of L; rel = max abs error / "
        "largest reference entry.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for r in table_rows(result["dense"]):
        lines.append("| " + " | ".join(r) + " |")
    lines.append("")
    lines.append("Reference checks per problem:")
    lines.append("")
    for row in result["dense"]:
        ref = row["reference"]
        c = ref["coords"]
        lines.append(
            f"- n={row['n']}, m={row['m']}: {c['g_A_b']} g/A/b coords + {c['L_lower']} of "
            f"{c['L_lower_total']} lower-L coords; FD(h=1e-6) vs ref {ref['fd_h1e-6_vs_ref']:.1e}, "
            f"autograd(oracle) vs ref {ref['autograd_oracle_vs_ref']:.1e}, Clarabel x vs planted "
            f"{ref['clarabel']['max_abs_diff_x']:.1e} ({ref['clarabel']['status']}), largest "
            f"reference gradient {ref['max_abs_ref_grad']:.2f}"
        )
    anchors = {
        5: 69.0,
        20: 308.0,
        50: 804.0,
    }  # cvxpylayers, ms: reference timings quoted when the project started
    measured = {
        r["n"]: r["methods"]["cvxpylayers scs-default"].get("median_s")
        for r in result["dense"]
        if r["m"] == 1 and r["n"] in anchors
    }
    if measured:
        lines += [
            "",
            "Anchors quoted when the project started for cvxpylayers (forward+backward): "
            + ", ".join(f"n={n}: {a:.0f} ms" for n, a in anchors.items())
            + "; measured here at SCS defaults, m=1: "
            + ", ".join(f"n={n}: {fmt_ms(t)} ms" for n, t in measured.items())
            + ".",
        ]
    notes = sorted(
        {n for row in result["dense"] for e in row["methods"].values() for n in e.get("notes", [])}
    )
    if notes:
        lines += ["", "cvxpylayers/diffcp warnings seen: " + "; ".join(f"`{n}`" for n in notes)]
    bt = result.get("batch")
    if bt:
        lines += [
            "",
            f"## A batch of {bt['batch']} problems (n = {bt['n']}, m = {bt['m']}, both rows active)",
            "",
            "One call for the whole batch, forward + backward of sum_i v_i'x_i; errors against the planted "
            "x* and autograd through the exact oracle.",
            "",
            "| method | fwd+bwd ms | cpu ms | per problem ms | x err | grad err abs | grad err rel | ours faster "
            "| ours faster (cpu) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in bt["methods"].items():
            lines.append(
                f"| {name} | {fmt_ms(e['median_s'])} | {fmt_ms(e['cpu_median_s'])} | "
                f"{1e3 * e['median_s'] / bt['batch']:.3f} | {e['x_err']:.1e} | {e['grad_err']:.1e} | "
                f"{e['grad_rel']:.1e} | {fmt_speedup(e.get('speedup_of_ours'))} | "
                f"{fmt_speedup(e.get('cpu_speedup_of_ours'))} |"
            )
    red = result.get("reduced")
    if red:
        lines += [
            "",
            "## The reduced problem alone (solve_reduced, forward + backward)",
            "",
            "| m | active-set ms | conic ms | conic / active-set | max abs w difference |",
            "|---|---|---|---|---|",
        ]
        for r in red:
            a, c = r["active-set"]["median_s"], r["conic"]["median_s"]
            lines.append(f"| {r['m']} | {fmt_ms(a)} | {fmt_ms(c)} | {c / a:.1f} | {r['w_diff']:.1e} |")
    cu = result.get("cuda")
    lines += ["", "## CUDA", ""]
    if cu:
        lines += [f"Device: {cu['device']}.", "", "| problem | ours fwd+bwd ms | x err |", "|---|---|---|"]
        for e in cu["single"]:
            lines.append(f"| n=50, m={e['m']} | {fmt_ms(e['median_s'])} | {e['x_err']:.1e} |")
        b_ = cu["batch"]["methods"]["ours"]
        lines.append(f"| batch {BATCH}, n=50, m={BATCH_M} | {fmt_ms(b_['median_s'])} | {b_['x_err']:.1e} |")
    else:
        lines.append("No CUDA device on this machine: the CUDA table was not run.")
    f = result.get("fisher")
    if f:
        lines += [
            "",
            "## Fisher metric",
            "",
            f"{f['policy']} ({f['num_params']} parameters), {f['states']} states, m = 1 "
            f"({f['case']}), {f['cg_iters']} CG iterations, damping {f['damping']}, "
            f"torch.set_num_threads(1).",
            "",
            "| measurement | median ms |",
            "|---|---|",
            f"| forward under no_grad | {fmt_ms(f['forward_nograd']['median_s'])} |",
            f"| forward with grad mode (no backward) | {fmt_ms(f['forward_grad_mode']['median_s'])} |",
            f"| forward + backward (g, a, policy params) | {fmt_ms(f['forward_backward']['median_s'])} |",
            f"| one Fisher-vector product (graph reused) | {fmt_ms(f['fisher_vector_product']['median_s'])} |",
            f"| one KL forward + backward | {fmt_ms(f['kl_forward_backward']['median_s'])} |",
            "",
            f"Ratio forward+backward / no_grad forward (medians of {f['forward_backward']['repeats']} "
            f"interleaved repeats): **{f['ratio']:.2f}** (ratio of minima {f['ratio_of_minima']:.2f}; "
            f"per-repeat ratios {min(f['per_repeat_ratios']):.2f}..{max(f['per_repeat_ratios']):.2f}).",
        ]
    lines += ["", "## Targets", ""]
    for t in result["targets"]:
        cpu = f"; in CPU time {t['measured_cpu']}" if t.get("measured_cpu") is not None else ""
        lines.append(f"- {'MET' if t['met'] else 'MISSED'}: {t['target']} (measured {t['measured']}{cpu})")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def code_state() -> dict:
    """The commit and the hashes of the difftrust sources measured (some may be uncommitted)."""
    import hashlib
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "difftrust"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n")
    except OSError:
        head, dirty = "?", []
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in sorted((ROOT / "difftrust").glob("*.py"))
    }
    return {"git_head": head, "difftrust_uncommitted": [d[3:] for d in dirty if d], "sha256_12": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subset (< 1 minute)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON path (Markdown next to it)")
    parser.add_argument("--fd-max-L", type=int, default=2000, help="lower-L FD coordinates for n > 50")
    parser.add_argument("--skip-fisher", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the n values")
    parser.add_argument("--ms", type=int, nargs="+", help="override the m values")
    parser.add_argument("--with-tight", action="store_true", help="also cvxpylayers at SCS eps 1e-9 (slow)")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-reduced", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        sizes, ms = [5, 20], [1, 3]
        args.repeats_ours, args.repeats_cvx, args.repeats_fisher = 10, 3, 3
    else:
        sizes, ms = [5, 20, 50, 200], [1, 3]
        args.repeats_ours, args.repeats_cvx, args.repeats_fisher = 30, 5, 11

    sizes, ms = args.sizes or sizes, args.ms or ms
    t_start = time.perf_counter()
    rows = []
    log(f"dense metric: n in {sizes}, m in {ms} (one thread)")
    for m in ms:
        for n in sizes:
            rows.append(bench_dense(n, m, args, seed=1000 * m + n))
    batch = None
    if not args.skip_batch:
        log(f"batch of {BATCH} problems:")
        batch = bench_batch(args)
    reduced = None if args.skip_reduced else bench_reduced(args)
    cuda = bench_cuda(args)
    fisher = None
    if not args.skip_fisher:
        log("Fisher metric:")
        fisher = bench_fisher(args)

    import cvxpylayers

    result = {
        "benchmark": "trust_region",
        "quick": args.quick,
        "delta": DELTA,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cvxpylayers": getattr(cvxpylayers, "__version__", "?"),
            "cvxpy": cp.__version__,
            "torch_threads": 1,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_at_end": list(os.getloadavg()),
        },
        "notes": [
            "One torch/BLAS thread for every measurement (OMP_NUM_THREADS=1, torch.set_num_threads(1)); "
            "SCS is single-threaded. The machine is shared (others run tests at the same time), so "
            "absolute times are noisy; medians of repeats are reported.",
            "difftrust times include building H = L @ L.T in torch; cvxpylayers times exclude its "
            "one-off problem construction (cvxpylayers_build_s in the JSON).",
            "cvxpylayers calls that take over 2 s are repeated fewer times; a failing solve is "
            "reported with the time to failure and no error.",
            "difftrust solves the (m+1)-variable reduced problem with its exact active-set solver "
            "(difftrust/active_set.py; the 'solver' field of each row says which solver ran).",
        ],
        "code": code_state(),
        "dense": rows,
        "batch": batch,
        "reduced": reduced,
        "cuda": cuda,
        "fisher": fisher,
    }
    result["targets"] = targets(rows, fisher, batch)
    result["wall_s"] = time.perf_counter() - t_start

    # table
    widths = [max(len(h), *(len(r[i]) for r in table_rows(rows))) for i, h in enumerate(HEADER)]
    log("")
    log("  ".join(h.rjust(w) for h, w in zip(HEADER, widths)))
    for r in table_rows(rows):
        log("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if fisher:
        log(f"Fisher ratio (1 thread): {fisher['ratio']:.2f}")
    for t in result["targets"]:
        log(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    md.write_text(markdown(result))
    log(f"wrote {args.out} and {md} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
