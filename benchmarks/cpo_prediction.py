"""How well does CPO's linear cost model predict the real change of the episode cost?

After a step ``x`` CPO predicts the per-episode cost of channel ``j`` to change by ``a_j'x``
(``a_j = grad L_Cj``); the excess ``b_j = J_Cj - limit`` comes from the same batch. A CPO policy is
trained briefly on ``safenav-button`` (or loaded: ``--run DIR`` of ``python -m rl.cpo``); for each
batch size, ``--repeats`` CPO steps are taken from fresh batches and compared with large
evaluation batches before and after: the batch's cost estimate against the truth, and the
predicted change ``a'x`` against the actual one, for the plain step (with ``corrected`` = ``a'x``
plus the optimism :func:`rl.cpo.debiased_offsets` estimates from two halves of the batch) and for
the step taken with the corrected offsets (``--debias`` in ``rl.cpo``). Writes ``--out`` (JSON)
and the tables next to it (``.md``)::

    .venv/bin/python -m benchmarks.cpo_prediction [--run DIR] [--repeats 3] [--quick]
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from difftrust import TrustRegionStep
from rl import cpo
from rl.cpo import CPOConfig
from rl.rollout import collect
from rl.runtime import load_latest_checkpoint

ENV, LIMIT = "safenav-button", 2.0


def trained_state(run: Path | None, quick: bool, default_run: Path):
    """The CPO state of ``run``, or of a short run trained into ``default_run`` first (kept for reuse)."""
    cfg = CPOConfig(env=ENV, cost_limit=LIMIT, num_envs=8, steps_per_iter=4000, seed=0)
    if run is None:
        run = default_run
        if not (run / "config.json").is_file():
            steps = 8000 if quick else 48000
            cpo.train(replace(cfg, steps=steps, out=str(run), progress=False, tensorboard=False))
    state = cpo._init_state(cfg, cpo.make_env(cfg))
    state.load_state_dict(load_latest_checkpoint(run)[1])
    return state, run


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement; write the JSON and Markdown results."""
    p = common.parser(__doc__, common.RESULTS / "cpo_prediction.json")
    p.add_argument("--run", type=Path, default=None, help="a run folder of rl.cpo (default: train one first)")
    p.add_argument("--repeats", type=int, default=3, help="CPO steps per batch size")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="batch sizes (env steps)")
    p.add_argument("--cost-gamma", type=float, default=0.99, help="cost discount of the advantages")
    p.add_argument("--cost-lam", type=float, default=0.95, help="cost GAE lambda (1: Monte Carlo)")
    args = common.parse(p, argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    st, run = trained_state(args.run, args.quick, args.out.with_suffix("").parent / "cpo_prediction_run")
    gen = torch.Generator().manual_seed(123)
    eval_steps = 8000 if args.quick else 40000
    sizes = args.sizes or ([2000, 8000] if args.quick else [2000, 4000, 16000, 40000])
    limits = [LIMIT, LIMIT]

    def batch(params, n):
        env = cpo.make_env(CPOConfig(env=ENV, num_envs=min(40, n // 200), steps_per_iter=n))
        critics = (st.normalizer, st.reward_critic, st.cost_critic)
        kwargs = dict(
            generator=gen, update_normalizer=False, cost_gamma=args.cost_gamma, cost_lam=args.cost_lam
        )
        return collect(env, st.policy, params.detach(), n, *critics, **kwargs)

    def cost_change(params) -> np.ndarray:
        return np.asarray(batch(params, eval_steps).ep_cost) - np.asarray(truth.ep_cost)

    truth = batch(st.params, eval_steps)
    step = TrustRegionStep(delta=0.01, cg_iters=15)
    rows = []
    for n in sizes:
        for r in range(args.repeats):
            b = batch(st.params, n)
            x, res = cpo.cpo_direction(st.policy, st.params, b, limits, step, damping=0.1)
            theta = st.params.detach().requires_grad_(True)
            _, lc = cpo.surrogates(st.policy, theta, b)
            A = torch.stack([torch.autograd.grad(c, theta, retain_graph=True)[0] for c in lc])
            # the optimism of this (plain) step: one fixed-point iteration evaluates it at the plain w
            _, optimism = cpo.debiased_offsets(st.policy, st.params, b, limits, step, iterations=1)
            b_eff, _ = cpo.debiased_offsets(st.policy, st.params, b, limits, step)
            x_d, res_d = cpo.cpo_direction(st.policy, st.params, b, limits, step, damping=0.1, offsets=b_eff)
            rows.append(
                {
                    "batch_steps": n,
                    "repeat": r,
                    "episodes": b.num_episodes,
                    "case": str(res.case),
                    "cost_estimate": np.asarray(b.ep_cost).tolist(),
                    "cost_true": np.asarray(truth.ep_cost).tolist(),
                    "b": cpo.cost_offsets(b, limits, torch.float64).tolist(),
                    "predicted_change": (A @ x).tolist(),
                    "corrected_change": (A @ x + optimism).tolist(),
                    "actual_change": cost_change(st.params + x).tolist(),
                    "debiased_case": str(res_d.case),
                    "debiased_b": b_eff.tolist(),
                    "debiased_predicted_change": (A @ x_d).tolist(),
                    "debiased_actual_change": cost_change(st.params + x_d).tolist(),
                }
            )
            print(rows[-1], flush=True)
    summary = []
    for n in sizes:
        col = lambda key, n=n: np.array([r[key] for r in rows if r["batch_steps"] == n])
        actual = col("actual_change")
        summary.append(
            {
                "batch_steps": n,
                "cost_estimate_abs_error": float(np.abs(col("cost_estimate") - col("cost_true")).mean()),
                "predicted_bias": float((col("predicted_change") - actual).mean()),
                "predicted_abs_error": float(np.abs(col("predicted_change") - actual).mean()),
                "corrected_bias": float((col("corrected_change") - actual).mean()),
                "corrected_abs_error": float(np.abs(col("corrected_change") - actual).mean()),
                "actual_change": float(actual.mean()),
                "debiased_actual_change": float(col("debiased_actual_change").mean()),
            }
        )
    report = {"env": ENV, "limit": LIMIT, "channels": list(truth.cost_channels), "run": run.name}
    report |= {"eval_steps": eval_steps, "cost_gamma": args.cost_gamma, "cost_lam": args.cost_lam}
    report |= {"rows": rows, "summary": summary, "seconds": time.perf_counter() - t0}
    report |= common.machine(torch=torch.__version__)
    columns = ["batch_steps", "episodes", "case", "cost_estimate", "cost_true", "predicted_change"]
    columns += ["corrected_change", "actual_change", "debiased_case", "debiased_predicted_change"]
    tables = [
        common.table(
            "One CPO step per row (a value per cost channel)", rows, columns + ["debiased_actual_change"]
        ),
        common.table("Means over rows and channels (bias: predicted minus actual)", summary),
    ]
    title = f"CPO's linear cost model on {ENV}, limit {LIMIT:g} per channel: predicted and actual change"
    common.write_results(args.out.with_suffix(""), title, report, tables)
    return report


if __name__ == "__main__":
    main()
