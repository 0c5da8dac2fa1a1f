"""How well does CPO's linear cost model predict the real change of the episode cost?

CPO's constraint is linearised: after a step ``x`` the per-episode cost of channel ``j`` is
predicted to change by ``a_j'x`` (``a_j = grad L_Cj``, per-episode units, :mod:`rl.rollout`), and
the estimated excess ``b_j = J_Cj - limit`` comes from the same batch. This benchmark trains CPO
briefly on ``safenav-button`` (or loads ``--run DIR`` of ``python -m rl.cpo``), then, for several
batch sizes, computes one CPO step per batch and compares

* the batch's estimate of the episode cost with the truth (a large evaluation batch), and
* the predicted change ``a'x`` with the actual change (large evaluation batches before/after).

It explains why costs settle above the limit when batches hold few episodes: ``b`` and ``a`` are
noisy, the step exploits the noise (``s = a'H^-1 a`` is inflated), and the promised decrease does
not materialise. It also checks the correction of :func:`rl.cpo.debiased_offsets`: the optimism of
the plain step estimated from two halves of the batch (``corrected`` = ``a'x`` plus the estimated
optimism, which should be unbiased for the actual change), and the step taken with the corrected
offsets (``--debias`` in ``rl.cpo``) with its own predicted and actual change. Usage::

    python -m benchmarks.cpo_prediction [--run DIR] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from difftrust import TrustRegionStep
from rl.cpo import (
    CPOConfig,
    _init_state,
    cost_offsets,
    cpo_direction,
    debiased_offsets,
    make_env,
    surrogates,
    train,
)
from rl.rollout import collect
from rl.runtime import load_latest_checkpoint

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a run folder of rl.cpo (default: train one first)")
    parser.add_argument("--repeats", type=int, default=3, help="CPO steps per batch size")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", default=str(OUT / "cpo_prediction.json"))
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="batch sizes (env steps)")
    parser.add_argument("--cost-gamma", type=float, default=0.99, help="cost discount of the advantages")
    parser.add_argument("--cost-lam", type=float, default=0.95, help="cost GAE lambda (1: Monte Carlo)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    limit = 2.0
    if args.run is None:
        run = Path(args.out).with_suffix("").parent / "cpo_prediction_run"
        if not (run / "config.json").is_file():
            steps = 8000 if args.quick else 48000
            train(
                CPOConfig(
                    env="safenav-button",
                    steps=steps,
                    steps_per_iter=4000,
                    num_envs=8,
                    cost_limit=limit,
                    seed=0,
                    out=str(run),
                    progress=False,
                    tensorboard=False,
                )
            )
    else:
        run = Path(args.run)
    cfg = CPOConfig(env="safenav-button", cost_limit=limit, num_envs=8, steps_per_iter=4000)
    st = _init_state(cfg, make_env(cfg))
    st.load_state_dict(load_latest_checkpoint(run)[1])
    gen = torch.Generator().manual_seed(123)
    eval_steps = 8000 if args.quick else 40000
    sizes = args.sizes or ([2000, 8000] if args.quick else [2000, 4000, 16000, 40000])

    def batch(params, n):
        env = make_env(CPOConfig(env="safenav-button", num_envs=min(40, n // 200), steps_per_iter=n))
        return collect(
            env,
            st.policy,
            params.detach(),
            n,
            st.normalizer,
            st.reward_critic,
            st.cost_critic,
            generator=gen,
            update_normalizer=False,
            cost_gamma=args.cost_gamma,
            cost_lam=args.cost_lam,
        )

    truth = batch(st.params, eval_steps)
    step = TrustRegionStep(delta=0.01, cg_iters=15)
    rows = []
    for n in sizes:
        for r in range(args.repeats):
            b = batch(st.params, n)
            x, res = cpo_direction(st.policy, st.params, b, [limit, limit], step, damping=0.1)
            p = st.params.detach().requires_grad_(True)
            _, lc = surrogates(st.policy, p, b)
            A = torch.stack([torch.autograd.grad(lc[j], p, retain_graph=True)[0] for j in range(lc.shape[0])])
            after = batch(st.params + x, eval_steps)
            # the optimism of this (plain) step: one fixed-point iteration evaluates it at the plain w
            _, optimism = debiased_offsets(st.policy, st.params, b, [limit, limit], step, iterations=1)
            b_eff, _ = debiased_offsets(st.policy, st.params, b, [limit, limit], step)
            x_d, res_d = cpo_direction(
                st.policy, st.params, b, [limit, limit], step, damping=0.1, offsets=b_eff
            )
            after_d = batch(st.params + x_d, eval_steps)
            rows.append(
                {
                    "batch_steps": n,
                    "repeat": r,
                    "episodes": b.num_episodes,
                    "case": str(res.case),
                    "cost_estimate": np.asarray(b.ep_cost).tolist(),
                    "cost_true": np.asarray(truth.ep_cost).tolist(),
                    "b": cost_offsets(b, [limit, limit], torch.float64).tolist(),
                    "predicted_change": (A @ x).tolist(),
                    "actual_change": (np.asarray(after.ep_cost) - np.asarray(truth.ep_cost)).tolist(),
                    "corrected_change": (A @ x + optimism).tolist(),
                    "debiased_case": str(res_d.case),
                    "debiased_b": b_eff.tolist(),
                    "debiased_predicted_change": (A @ x_d).tolist(),
                    "debiased_actual_change": (
                        np.asarray(after_d.ep_cost) - np.asarray(truth.ep_cost)
                    ).tolist(),
                }
            )
            print(rows[-1], flush=True)
    channels = list(truth.cost_channels)
    lines = [
        "# CPO's linear cost model: predicted vs actual change of the episode cost",
        "",
        f"`safenav-button`, limit {limit} per channel ({', '.join(channels)}), CPO policy from `{run.name}`; "
        f"truth from {eval_steps}-step evaluation batches; one CPO step (delta 0.01) per row; "
        f"cost advantages with gamma {args.cost_gamma}, GAE lambda {args.cost_lam}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "Plain step: `a'x` (predicted), `a'x` + estimated optimism (corrected), actual change. Step with "
        "the corrected offsets (`--debias`): its case, predicted `a'x`, actual change.",
        "",
        "| batch steps | episodes | case | cost estimate (true) | predicted | corrected | actual "
        "| debiased: case | predicted | actual |",
        "|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: ", ".join(f"{x:+.2f}" for x in v)  # noqa: E731
    for r in rows:
        est = ", ".join(f"{e:.2f} ({t:.2f})" for e, t in zip(r["cost_estimate"], r["cost_true"], strict=True))
        lines.append(
            f"| {r['batch_steps']} | {r['episodes']} | {r['case']} | {est} | {fmt(r['predicted_change'])} | "
            f"{fmt(r['corrected_change'])} | {fmt(r['actual_change'])} | {r['debiased_case']} | "
            f"{fmt(r['debiased_predicted_change'])} | {fmt(r['debiased_actual_change'])} |"
        )
    summary = {}
    for n in sizes:
        sel = [r for r in rows if r["batch_steps"] == n]
        col = lambda key, sel=sel: np.array([r[key] for r in sel])  # noqa: E731
        err = np.abs(col("predicted_change") - col("actual_change"))
        est_err = np.abs(
            np.array([r["cost_estimate"] for r in sel]) - np.array([r["cost_true"] for r in sel])
        )
        summary[n] = {
            "mean_abs_prediction_error": float(err.mean()),
            "mean_abs_cost_estimate_error": float(est_err.mean()),
            "mean_prediction_bias": float((col("predicted_change") - col("actual_change")).mean()),
            "mean_corrected_bias": float((col("corrected_change") - col("actual_change")).mean()),
            "mean_abs_corrected_error": float(np.abs(col("corrected_change") - col("actual_change")).mean()),
            "mean_actual_change": float(col("actual_change").mean()),
            "mean_debiased_actual_change": float(col("debiased_actual_change").mean()),
        }
    lines += [
        "",
        "Means over rows and channels (bias: predicted minus actual; negative = the step promised "
        "more than it delivered):",
        "",
        "| batch steps | cost estimate abs error | predicted: bias | abs error | corrected: bias | abs error "
        "| actual change: plain step | debiased step |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {v['mean_abs_cost_estimate_error']:.2f} | {v['mean_prediction_bias']:+.2f} | "
        f"{v['mean_abs_prediction_error']:.2f} | {v['mean_corrected_bias']:+.2f} | "
        f"{v['mean_abs_corrected_error']:.2f} | {v['mean_actual_change']:+.2f} | "
        f"{v['mean_debiased_actual_change']:+.2f} |"
        for n, v in summary.items()
    ]
    lines += ["", f"Total time {time.perf_counter() - t0:.0f} s."]
    Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary, "channels": channels}, indent=2))
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
