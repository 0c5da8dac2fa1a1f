"""Speed and gradient accuracy of ``difftrust.TrustRegionStep`` against cvxpylayers.

The problem ``max g'x s.t. 0.5 ||L'x||^2 <= delta, b + Ax <= 0`` (float64, ``delta = 0.01``),
*planted* so that constraints bind: ``x*`` on the trust-region boundary, ``k = min(m, 2)`` rows
active with multipliers in (0.5, 1.5), further rows inactive by half their range over the trust
region, ``g = lam H x* + A_S' nu``. Timed: forward + backward of ``v'x`` with gradients to ``g, A,
b, L``; cvxpylayers (at its default settings) gets ``L``, its one-off problem construction untimed.
Ours in two rows: ``ours`` gets ``H = L L'`` built in torch inside the timed call (the original
harness), ``ours (L)`` gets the same ``L`` as cvxpylayers, as ``CholeskyMetric(L)`` (no ``L L'``, no
factorisation; the same inputs and the same gradients to every entry of ``L`` as the other rows).
Medians of wall and CPU time (``time.process_time``: all the process's threads, none of the waiting
for a core), with the load average at each measurement; one torch/BLAS thread. The *floor* rows
are the same timed call with the layer replaced by a trivial map: ``floor`` by ``x = H g + A'b``
(building ``H``, the loss and the backward through ``L L'``), ``floor (L)`` by ``x = L g + A'b``
(leaves, loss and backward only): the part of each ``ours`` row's time that no layer can remove.

Gradient reference: central differences (Richardson from h = 1e-4 and 2e-4) of an exact
active-set oracle (the optimum for the planted active set in closed form, triangular solves in
``L``) over ``g, A, b`` and the lower triangle of ``L`` (``--fd-max-L`` random entries of it for
n > 50), checked against plain central differences at h = 1e-6, against autograd through the
oracle and, for ``x``, against cvxpy + Clarabel at tight tolerances.

Also measured: a batch of 64 problems with ``m = 2`` (one batched call on each side); the reduced
problem alone (``solve_reduced``, the active-set solver against the conic backend, m = 1..8, the
measurement behind ``MAX_ACTIVE_SET_M``); the same rows on CUDA when a GPU is present
(cvxpylayers has no GPU path); the Fisher metric's forward + backward over its ``no_grad`` forward.
Writes ``trust_region.json`` and ``.md`` (tables only)::

    .venv/bin/python -m benchmarks.trust_region [--quick] [--sizes 50] [--ms 1 3] [--skip-fisher]
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import common

common.one_thread()

import cvxpy as cp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cvxpylayers.torch import CvxpyLayer  # noqa: E402

from difftrust import CholeskyMetric, FisherMetric, TrustRegionStep, solve_reduced  # noqa: E402

F64 = torch.float64
DELTA = 0.01
TARGET_SPEEDUP = {1: 50.0, 3: 50.0}  # n = 50, against cvxpylayers at its default settings
BATCH, BATCH_M, TARGET_BATCH_SPEEDUP = 64, 2, 200.0
TARGET_ERROR, TARGET_FISHER_RATIO = 1e-8, 2.0


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and minimum wall seconds, median CPU seconds, and the 1-minute load average after."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(common.positive("repeats", repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "cpu_median_s": statistics.median(cpu),
        "repeats": repeats,
        "load_avg": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------------------------------------
# planted problems and the exact active-set oracle


@dataclass
class Problem:
    g: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    L: torch.Tensor  # lower triangular, H = L L'
    v: torch.Tensor  # the functional v'x
    x_star: torch.Tensor
    active: list[int]


def make_problem(n: int, m: int, seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=gen, dtype=F64) / math.sqrt(n)
    H = M @ M.T + 0.5 * torch.eye(n, dtype=F64)  # eigenvalues in about [0.5, 4.5]
    L = torch.linalg.cholesky(H)
    A = torch.randn(m, n, generator=gen, dtype=F64)
    k = min(m, 2)
    d = torch.randn(n, generator=gen, dtype=F64)
    x = d * torch.sqrt(2 * DELTA / (d @ H @ d))
    nu = 0.5 + torch.rand(k, generator=gen, dtype=F64)
    Anu = A[:k].T @ nu
    g = Anu.norm() / (H @ x).norm() * (H @ x) + Anu
    spread = torch.sqrt(2 * DELTA * (A * torch.cholesky_solve(A.T, L).T).sum(1))
    b = -(A @ x) - 0.5 * spread * (torch.arange(m) >= k)
    return Problem(g, A, b, L, torch.randn(n, generator=gen, dtype=F64), x, list(range(k)))


def oracle(g: torch.Tensor, A: torch.Tensor, b: torch.Tensor, L: torch.Tensor, active: list[int]):
    """The optimum for a fixed active set, batched: g (B, n), A (B, m, n), b (B, m), L (B, n, n)."""
    AS, bS = A[:, active], b[:, active]
    Z = torch.cholesky_solve(torch.cat([g.unsqueeze(2), AS.transpose(1, 2)], 2), L)
    Hg, HA = Z[:, :, 0], Z[:, :, 1:]
    S = AS @ HA
    y0 = torch.linalg.solve(S, bS.unsqueeze(2)).squeeze(2)
    yg = torch.linalg.solve(S, AS @ Hg.unsqueeze(2)).squeeze(2)
    d = Hg - (HA @ yg.unsqueeze(2)).squeeze(2)
    t = torch.sqrt((2 * DELTA - (bS * y0).sum(1)) / (g * d).sum(1))
    return -(HA @ y0.unsqueeze(2)).squeeze(2) + t.unsqueeze(1) * d


def flat(p: Problem) -> torch.Tensor:
    """theta = [g, A, b, tril(L)]."""
    i, j = torch.tril_indices(*p.L.shape)
    return torch.cat([p.g, p.A.reshape(-1), p.b, p.L[i, j]])


def unflat(p: Problem, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    (m, n), B = p.A.shape, theta.shape[0]
    g, A, b, tril = theta.split([n, m * n, m, theta.shape[1] - n - m * n - m], 1)
    i, j = torch.tril_indices(n, n)
    L = theta.new_zeros(B, n, n)
    L[:, i, j] = tril
    return g, A.reshape(B, m, n), b, L


def fd_reference(p: Problem, coords: torch.Tensor) -> dict[str, Any]:
    """Central differences of v'x_oracle at the flat coordinates ``coords`` and their checks."""
    theta = flat(p)

    def f(thetas: torch.Tensor) -> torch.Tensor:
        return oracle(*unflat(p, thetas), p.active) @ p.v

    def central(h: float) -> torch.Tensor:
        out = []
        for idx in coords.split(64):
            E = torch.zeros(len(idx), len(theta), dtype=F64)
            E[torch.arange(len(idx)), idx] = h
            out.append((f(theta + E) - f(theta - E)) / (2 * h))
        return torch.cat(out)

    ref = (4 * central(1e-4) - central(2e-4)) / 3  # Richardson: O(h^4)
    th = theta.clone().requires_grad_(True)
    (oracle(*unflat(p, th.unsqueeze(0)), p.active)[0] @ p.v).backward()
    return {
        "ref": ref,
        "fd_h1e-6_vs_ref": float((central(1e-6) - ref).abs().max()),
        "autograd_oracle_vs_ref": float((th.grad[coords] - ref).abs().max()),
        "max_abs_ref_grad": float(ref.abs().max()),
    }


def clarabel_check(p: Problem) -> dict[str, Any]:
    """cvxpy + Clarabel at tight (else default) tolerances: max |x - x*|."""
    x = cp.Variable(len(p.g))
    L, g, A, b = (t.numpy() for t in (p.L, p.g, p.A, p.b))
    prob = cp.Problem(cp.Maximize(g @ x), [0.5 * cp.sum_squares(L.T @ x) <= DELTA, b + A @ x <= 0])
    tight = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500)
    for label, opts in (("tight 1e-12", tight), ("defaults", {})):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "may be inaccurate" at the tight tolerances
                prob.solve(solver=cp.CLARABEL, **opts)
            return {
                "status": f"{prob.status} ({label})",
                "x_err": float(np.abs(x.value - p.x_star.numpy()).max()),
            }
        except cp.error.SolverError:
            continue
    return {"status": "failed", "x_err": math.nan}


# ---------------------------------------------------------------------------------------------
# the timed calls


def leaves(p: Problem | list[Problem], device: str = "cpu") -> list[torch.Tensor]:
    """Fresh leaves (g, A, b, L) requiring grad; stacked for a list of problems."""
    ps = p if isinstance(p, list) else [p]
    out = [torch.stack([getattr(q, k) for q in ps]) for k in ("g", "A", "b", "L")]
    return [(t if isinstance(p, list) else t[0]).to(device).clone().requires_grad_(True) for t in out]


def caller(layer: Callable[..., torch.Tensor], ls: list[torch.Tensor], v: torch.Tensor, sync=None):
    """One forward + backward of sum(v * x) through ``layer(g, A, b, L)``."""

    def call() -> torch.Tensor:
        for t in ls:
            t.grad = None
        x = layer(*ls)
        (x * v).sum().backward()
        if sync is not None:
            sync()
        return x

    return call


def ours(step: TrustRegionStep) -> Callable[..., torch.Tensor]:
    return lambda g, A, b, L: step(g, A, b, L @ L.transpose(-1, -2))


def ours_L(step: TrustRegionStep) -> Callable[..., torch.Tensor]:
    return lambda g, A, b, L: step(g, A, b, CholeskyMetric(L))


def floor(g: torch.Tensor, A: torch.Tensor, b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """x = H g + A'b with H = L L': the harness's own work around a layer given H."""
    H = L @ L.transpose(-1, -2)
    return (H @ g.unsqueeze(-1)).squeeze(-1) + (A * b.unsqueeze(-1)).sum(-2)


def floor_L(g: torch.Tensor, A: torch.Tensor, b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """x = L g + A'b: the harness's own work around a layer given L (leaves, loss, backward)."""
    return (L @ g.unsqueeze(-1)).squeeze(-1) + (A * b.unsqueeze(-1)).sum(-2)


OURS, FLOORS = ("ours", "ours (L)"), ("floor", "floor (L)")


def cvx_layer(n: int, m: int, settings: dict, notes: set[str]) -> tuple[Callable[..., torch.Tensor], float]:
    """cvxpylayers on the same problem (DPP form in L), and its construction time."""
    t0 = time.perf_counter()
    x, g, A, b, L = (
        cp.Variable(n),
        cp.Parameter(n),
        cp.Parameter((m, n)),
        cp.Parameter(m),
        cp.Parameter((n, n)),
    )
    prob = cp.Problem(cp.Maximize(g @ x), [0.5 * cp.sum_squares(L.T @ x) <= DELTA, b + A @ x <= 0])
    layer = CvxpyLayer(prob, parameters=[g, A, b, L], variables=[x])

    def solve(*ts: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (xs,) = layer(*ts, solver_args=dict(settings))
        notes.update(
            str(w.message).strip().splitlines()[0][:120]
            for w in caught
            if not issubclass(w.category, DeprecationWarning)
        )
        return xs

    return solve, time.perf_counter() - t0


def grad_error(ls: list[torch.Tensor], p: Problem, coords: torch.Tensor, ref: torch.Tensor) -> dict:
    i, j = torch.tril_indices(*p.L.shape)
    got = torch.cat([ls[0].grad, ls[1].grad.reshape(-1), ls[2].grad, ls[3].grad[i, j]])[coords]
    err = float((got.cpu() - ref).abs().max())
    return {"grad_err": err, "grad_rel": err / float(ref.abs().max())}


# ---------------------------------------------------------------------------------------------
# the measurements


def bench_dense(n: int, m: int, args) -> list[dict[str, Any]]:
    """One problem: ours, the floor and cvxpylayers; one row each."""
    p = make_problem(n, m, seed=1000 * m + n)
    n_lower = n * (n + 1) // 2
    lower = torch.arange(n_lower)
    if n > 50 and n_lower > args.fd_max_L:
        lower = (
            torch.randperm(n_lower, generator=torch.Generator().manual_seed(n))[: args.fd_max_L].sort().values
        )
    coords = torch.cat([torch.arange(n + m * n + m), n + m * n + m + lower])
    t0 = time.perf_counter()
    ref = fd_reference(p, coords)
    reference = {k: v for k, v in ref.items() if k != "ref"} | {
        "coords": {"g_A_b": n + m * n + m, "L_lower": len(lower), "L_lower_total": n_lower},
        "oracle_vs_planted_x": float((oracle(*unflat(p, flat(p)[None]), p.active)[0] - p.x_star).abs().max()),
        "clarabel": clarabel_check(p),
        "seconds": time.perf_counter() - t0,
    }
    step = TrustRegionStep(delta=DELTA)
    res = step.solve(p.g, p.A, p.b, p.L @ p.L.T)
    rows = []
    settings = [("cvxpylayers scs-default", {})] + [
        ("cvxpylayers scs-eps1e-9", {"eps": 1e-9})
    ] * args.with_tight
    mine = [("ours", ours(step)), ("ours (L)", ours_L(step)), ("floor", floor), ("floor (L)", floor_L)]
    for name, layer in mine + settings:
        notes: set[str] = set()
        row: dict[str, Any] = {"n": n, "m": m, "method": name}
        if name.startswith("cvxpylayers"):
            layer, row["build_s"] = cvx_layer(n, m, layer, notes)
        ls = leaves(p)
        call = caller(layer, ls, p.v)
        try:
            t0 = time.perf_counter()
            x = call()
            first = time.perf_counter() - t0
            if name not in FLOORS:  # the floor's x is not a solution
                row["x_err"] = float((x.detach() - p.x_star).abs().max())
                row |= grad_error(ls, p, coords, ref["ref"])
            reps = args.repeats_ours if name in OURS + FLOORS else args.repeats
            row |= timed(call, reps if first < 2.0 else max(1, reps // 2), warmup=3 if first < 2.0 else 0)
            row["status"] = f"{res.case}, {res.solver}" if name in OURS else "ok"
        except Exception as exc:  # noqa: BLE001 - a failing solve is a result
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
        row["notes"] = sorted(notes)
        rows.append(row)
        print(
            f"  n={n} m={m} {name}: {1e3 * row.get('median_s', math.nan):.3f} ms, {row['status']}", flush=True
        )
    rows[0]["reference"] = reference
    speedups(rows)
    return rows


def speedups(rows: list[dict[str, Any]]) -> None:
    """Ours (``ours_*``: given H; ``ours_L_*``: given L) faster than each other method, in wall and in
    CPU time (on the rows of one problem)."""
    base = {r["method"]: r for r in rows if r["method"] in OURS}
    for r in rows:
        if r["method"] in OURS + FLOORS or "median_s" not in r:
            continue
        for key, name in (("ours_faster", "ours"), ("ours_L_faster", "ours (L)")):
            if "median_s" in base.get(name, {}):
                r[key] = r["median_s"] / base[name]["median_s"]
                r[f"{key}_cpu"] = r["cpu_median_s"] / base[name]["cpu_median_s"]


def bench_batch(args, device: str = "cpu") -> list[dict[str, Any]]:
    """64 planted problems with m = 2 (both rows active), each its own L: one batched call each side."""
    probs = [make_problem(50, BATCH_M, 777 + i) for i in range(BATCH)]
    v = torch.stack([p.v for p in probs]).to(device)
    x_star = torch.stack([p.x_star for p in probs])
    # reference gradients: autograd through the exact oracle (it agrees with its finite differences
    # to about 1e-12 in the single-problem rows)
    ref = leaves(probs)
    (oracle(ref[0], ref[1], ref[2], ref[3].tril(), [0, 1]) * v.cpu()).sum().backward()
    sync = torch.cuda.synchronize if device != "cpu" else None
    step = TrustRegionStep(delta=DELTA)
    rows = []
    layers = [("ours", ours(step)), ("ours (L)", ours_L(step)), ("floor", floor), ("floor (L)", floor_L)]
    notes: set[str] = set()
    if device == "cpu":
        layers.append(("cvxpylayers scs-default (batched)", cvx_layer(50, BATCH_M, {}, notes)[0]))
    for name, layer in layers:
        ls = leaves(probs, device)
        call = caller(layer, ls, v, sync)
        x = call()
        row: dict[str, Any] = {"batch": BATCH, "n": 50, "m": BATCH_M, "device": device, "method": name}
        if name not in FLOORS:  # x and the gradient of L's lower triangle (L is lower triangular)
            row["x_err"] = float((x.detach().cpu() - x_star).abs().max())
            got = [t.grad.cpu() for t in ls[:3]] + [ls[3].grad.cpu().tril()]
            err = max(float((a - r.grad).abs().max()) for a, r in zip(got, ref))
            row |= {"grad_err": err, "grad_rel": err / max(float(r.grad.abs().max()) for r in ref)}
        row |= timed(call, args.repeats if name.startswith("cvx") else args.repeats_ours, 2)
        row["notes"] = sorted(notes) if name.startswith("cvx") else []
        rows.append(row)
        print(f"  batch {BATCH} on {device}, {name}: {1e3 * row['median_s']:.2f} ms", flush=True)
    speedups(rows)
    return rows


def bench_reduced(args) -> list[dict[str, Any]]:
    """solve_reduced forward + backward on binding reduced problems, active-set against conic."""
    rows = []
    for m in range(1, 9):
        p = make_problem(max(12, m + 4), m, seed=50 + m)
        G = torch.cat([p.g.unsqueeze(1), p.A.T], 1)
        K = G.T @ torch.cholesky_solve(G, p.L)
        row: dict[str, Any] = {"m": m}
        ws = {}
        for solver in ("active-set", "conic"):
            Kl, bl = K.clone().requires_grad_(True), p.b.clone().requires_grad_(True)

            def call(solver=solver, Kl=Kl, bl=bl):
                Kl.grad = bl.grad = None
                sol = solve_reduced(Kl, bl, DELTA, solver=solver)
                sol.w.sum().backward()
                return sol

            ws[solver] = call().w.detach()
            reps = args.repeats_ours if solver == "active-set" and m <= 4 else 10
            row[f"{solver}_ms"] = 1e3 * timed(call, reps, 2)["median_s"]
        row["conic_over_active_set"] = row["conic_ms"] / row["active-set_ms"]
        row["w_diff"] = float((ws["active-set"] - ws["conic"]).abs().max())
        rows.append(row)
    return rows


def bench_fisher(args) -> dict[str, Any]:
    """FisherMetric of a [64, 64] tanh Gaussian policy on 2,000 states, m = 1 binding, 10 CG iterations."""
    from rl.policy import GaussianPolicy

    policy = GaussianPolicy(60, 2, hidden=(64, 64))
    gen = torch.Generator().manual_seed(0)
    psi0 = policy.init_params(gen)
    psi0 = psi0 + 0.05 * torch.randn(psi0.shape, generator=gen, dtype=F64)  # off the init point
    obs = torch.randn(2000, 60, generator=gen, dtype=F64)
    g, a, v = (torch.randn(policy.num_params, generator=gen, dtype=F64) for _ in range(3))
    step = TrustRegionStep(delta=DELTA, cg_iters=10)
    metric = lambda psi: FisherMetric(lambda ref, p: policy.kl(ref, p, obs), psi, 0.1)  # noqa: E731
    with torch.no_grad():
        c = float(a @ step(g, None, None, metric(psi0)))
    a = a if c >= 0 else -a
    b = torch.tensor([-0.5 * abs(c)], dtype=F64)  # binding: the trust-region step would violate it
    res = step.solve(g, a, b, metric(psi0))
    ls = [t.clone().requires_grad_(True) for t in (g, a, psi0)]

    def fwd_nograd():
        with torch.no_grad():
            step(ls[0], ls[1], b, metric(ls[2]))

    def fwd_bwd():
        for t in ls:
            t.grad = None
        (v @ step(ls[0], ls[1], b, metric(ls[2]))).backward()

    fwd_bwd()
    finite = all(bool(torch.isfinite(t.grad).all()) for t in ls)
    times: dict[str, list[float]] = {"nograd": [], "fwd_bwd": []}
    for _ in range(args.repeats_fisher):  # interleaved: load from other processes hits both alike
        for key, fn in (("nograd", fwd_nograd), ("fwd_bwd", fwd_bwd)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(t) for k, t in times.items()}
    return {
        "num_params": policy.num_params,
        "states": 2000,
        "case": res.case,
        "cg_residuals": res.cg_residuals.tolist(),
        "grads_finite": finite,
        "nograd_ms": 1e3 * med["nograd"],
        "fwd_bwd_ms": 1e3 * med["fwd_bwd"],
        "ratio": med["fwd_bwd"] / med["nograd"],
        "ratio_range": [
            min(fb / ng for fb, ng in zip(times["fwd_bwd"], times["nograd"])),
            max(fb / ng for fb, ng in zip(times["fwd_bwd"], times["nograd"])),
        ],
        "load_avg": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------------------------------------
# report


def targets(dense: list[dict], batch: list[dict] | None, fisher: dict | None) -> list[dict[str, Any]]:
    out = []
    for r in dense:
        if r["n"] == 50 and r["m"] in TARGET_SPEEDUP and r["method"] == "cvxpylayers scs-default":
            need = TARGET_SPEEDUP[r["m"]]
            for key, who in (("ours_faster", "ours given H = LL'"), ("ours_L_faster", "ours given L")):
                sp = r.get(key, math.nan)
                name = f"n=50, m={r['m']}: {who} >= {need:g}x faster than cvxpylayers"
                out.append(common.target(name, sp, sp >= need))
                out.append(common.target("  the same in CPU time", r.get(f"{key}_cpu", math.nan), None))
    if batch:
        for key, who in (("ours_faster", "ours given H = LL'"), ("ours_L_faster", "ours given L")):
            sp = batch[-1].get(key, math.nan)
            name = (
                f"batch of {BATCH}, m={BATCH_M}: {who} >= {TARGET_BATCH_SPEEDUP:g}x faster than cvxpylayers"
            )
            out += [common.target(name, sp, sp >= TARGET_BATCH_SPEEDUP)]
            out += [common.target("  the same in CPU time", batch[-1].get(f"{key}_cpu", math.nan), None)]
    worst = max(r["grad_err"] for r in dense + (batch or []) if r["method"] in OURS)
    out.append(
        common.target(f"every row: ours gradient error <= {TARGET_ERROR:g}", worst, worst <= TARGET_ERROR)
    )
    if fisher:
        ratio = fisher["ratio"]
        out.append(
            common.target(
                f"Fisher forward+backward / no_grad forward <= {TARGET_FISHER_RATIO:g}",
                ratio,
                ratio <= TARGET_FISHER_RATIO,
            )
        )
    return out


def code_state() -> dict[str, Any]:
    """The commit, the difftrust files that differ from it, and the hashes of the sources measured."""
    root = common.RESULTS.parent.parent
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout  # noqa: E731
    files = sorted((root / "difftrust").glob("*.py"))
    return {
        "git_head": git("rev-parse", "HEAD").strip(),
        "difftrust_uncommitted": [
            line[3:] for line in git("status", "--porcelain", "--", "difftrust").splitlines()
        ],
        "sha256_12": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files},
    }


def ms(rows: list[dict], keys=("median_s", "cpu_median_s")) -> list[dict]:
    """Rows with seconds shown as milliseconds."""
    return [{**r, **{k.replace("_s", "_ms"): 1e3 * r[k] for k in keys if k in r}} for r in rows]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__, common.RESULTS)
    p.add_argument(
        "--quick", action="store_true", help="n in 5, 20; fewer repeats; no Fisher (about a minute)"
    )
    p.add_argument("--sizes", type=int, nargs="+", help="n values (default 5 20 50 200)")
    p.add_argument("--ms", type=int, nargs="+", help="m values (default 1 3)")
    p.add_argument("--fd-max-L", type=int, default=2000, help="lower-L coordinates differenced for n > 50")
    p.add_argument("--with-tight", action="store_true", help="also cvxpylayers at SCS eps 1e-9 (slow)")
    for part in ("batch", "reduced", "fisher"):
        p.add_argument(f"--skip-{part}", action="store_true")
    args = common.parse(p, argv)
    torch.set_num_threads(1)
    args.repeats_ours, args.repeats, args.repeats_fisher = (10, 3, 3) if args.quick else (100, 7, 11)
    sizes, ms_ = args.sizes or ([5, 20] if args.quick else [5, 20, 50, 200]), args.ms or [1, 3]
    t_start = time.perf_counter()
    dense = [row for m in ms_ for n in sizes for row in bench_dense(n, m, args)]
    batch = None if args.skip_batch else bench_batch(args)
    reduced = None if args.skip_reduced else bench_reduced(args)
    cuda = None
    if torch.cuda.is_available():
        cuda = [row for m in ms_ for row in bench_dense_cuda(50, m, args)] + bench_batch(args, "cuda")
    fisher = None if args.skip_fisher or args.quick else bench_fisher(args)
    import cvxpylayers

    report = {"benchmark": "trust_region", "quick": args.quick, "delta": DELTA, "code": code_state()}
    report |= {"dense": dense, "batch": batch, "reduced": reduced, "cuda": cuda, "fisher": fisher}
    report["targets"] = targets(dense, batch, fisher)
    report["wall_s"] = time.perf_counter() - t_start
    report |= common.machine(
        torch=torch.__version__, cvxpylayers=cvxpylayers.__version__, cvxpy=cp.__version__
    )
    speed = "ours_faster ours_faster_cpu ours_L_faster ours_L_faster_cpu"
    cols = f"n m method median_ms cpu_median_ms grad_err grad_rel x_err {speed} load_avg status"
    tables = [common.table("One problem, forward + backward (medians)", ms(dense), cols.split())]
    checks = [{"n": r["n"], "m": r["m"], **r["reference"]} for r in dense if "reference" in r]
    for c in checks:
        c |= {"clarabel_x_err": c["clarabel"]["x_err"], "clarabel": c["clarabel"]["status"]}
        c |= {
            "fd_coords": f"{c['coords']['g_A_b']} + {c['coords']['L_lower']} of {c['coords']['L_lower_total']} L"
        }
    tables.append(
        common.table(
            "Gradient reference checks",
            checks,
            "n m fd_coords fd_h1e-6_vs_ref autograd_oracle_vs_ref max_abs_ref_grad clarabel_x_err clarabel".split(),
        )
    )
    bcols = f"device method median_ms cpu_median_ms grad_err grad_rel x_err {speed} load_avg"
    if batch:
        tables.append(
            common.table(f"A batch of {BATCH} problems, n = 50, m = {BATCH_M}", ms(batch), bcols.split())
        )
    if reduced:
        tables.append(
            common.table("The reduced problem alone (solve_reduced), forward + backward, ms", reduced)
        )
    if cuda:
        tables.append(
            common.table(f"CUDA ({torch.cuda.get_device_name(0)})", ms(cuda), ["n", "m", *bcols.split()])
        )
    if fisher:
        tables.append(common.table("Fisher metric (8,196 parameters, 2,000 states, m = 1)", [fisher]))
    tables.append(common.table("Targets", report["targets"]))
    common.write_results(args.out / "trust_region", "Trust-region layer benchmark", report, tables)
    return report


def bench_dense_cuda(n: int, m: int, args) -> list[dict[str, Any]]:
    """Ours and the floor with every tensor on the GPU (synchronised), against the planted x*."""
    p = make_problem(n, m, seed=1000 * m + n)
    step = TrustRegionStep(delta=DELTA)
    rows = []
    for name, layer in (
        ("ours", ours(step)),
        ("ours (L)", ours_L(step)),
        ("floor", floor),
        ("floor (L)", floor_L),
    ):
        call = caller(layer, leaves(p, "cuda"), p.v.cuda(), torch.cuda.synchronize)
        x = call()
        row = {"n": n, "m": m, "device": "cuda", "method": name, "device_out": str(x.device)}
        if name in OURS:
            row["x_err"] = float((x.detach().cpu() - p.x_star).abs().max())
        rows.append(row | timed(call, args.repeats_ours, 5))
    return rows


if __name__ == "__main__":
    main()
