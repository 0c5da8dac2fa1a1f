"""Does a task family need adaptation? Per-task CPO against one pooled (multi-task) policy.

A family tests meta-learning only if the best safe policy differs between tasks that the
observation does not tell apart. This benchmark measures it on held-out test tasks of a family
(default ``hiddennav``, the test tasks of ``python -m rl.meta_cpo --seed 0``):

* **pooled**: multi-task CPO (``--algo multitask-cpo``'s meta-training, the CPO step on the pooled
  batches of the training tasks) for ``--pooled-iterations`` iterations; its one policy is judged
  on every test task;
* **per-task CPO**: CPO from the initial policy on each test task for ``--cpo-steps`` steps on
  ``adapt_batch_steps`` batches with the main job's test-time margin (``rl.meta_cpo.adapt``), so
  each test task gets its own policy;
* **cross**: each per-task policy judged on the *other* test tasks (a policy right for one task
  is wrong for another: the best policy differs between tasks);
* **unconstrained** (unless ``--no-unconstrained``): the same per-task training with TRPO-style
  steps that ignore the cost (``adapt(..., constrained=False)``, same seeds and batches): where
  the return-greedy policy goes, and what it costs.

Every policy is judged on an independent evaluation batch (``--eval-steps`` env steps, never used
for a step): mean episode return, cost per channel and whether it is within every channel's limit
(the share of tasks within). The gap per-task minus pooled is what adaptation can win; a family
whose hazards bind shows the unconstrained policy above the limit where per-task CPO is within.
Usage::

    python -m benchmarks.needs_adaptation [--env hiddennav] [--seed 0] [--tasks 5] [--cpo-steps 20]
        [--pooled-iterations 30] [--eval-steps 40000] [--no-unconstrained] [--out DIR]

Writes ``result.json`` and ``result.md`` to ``--out`` (default
``benchmarks/results/needs_adaptation`` for ``hiddennav``,
``benchmarks/results/needs_adaptation/<env>-seed<S>`` for any other family or seed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rl.meta_cpo import MetaCPOConfig, MetaCPOTrainer, adapt, derive_seed, evaluate

OUT = Path(__file__).resolve().parent / "results" / "needs_adaptation"


def _judge(trainer: MetaCPOTrainer, params, task, steps: int, seed: int) -> dict:
    row = evaluate(trainer.setup, params, task, steps, seed)
    limits = trainer.setup.limits
    channels = trainer.setup.cost_channels
    costs = {ch: row[f"cost_{ch}"] for ch in channels}
    within = all(costs[ch] <= lim for ch, lim in zip(channels, limits, strict=True))
    return {"ep_ret": row["ep_ret"], "costs": costs, "within": bool(within), "episodes": row["episodes"]}


def throughput(env_name: str, num_envs: int = 1000, steps: int = 200) -> float:
    """Env steps per second of ``num_envs`` sub-environments with random actions (one core, best
    of three; auto-resets included)."""
    from rl.envs import make, task_distribution

    task = task_distribution(env_name).sample(1, split="test", seed=0)[0]
    env = make(env_name, task=task, num_envs=num_envs, seed=0)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, num_envs, env.act_dim))
    best = 0.0
    for _ in range(3):
        env.reset(seed=0)
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        best = max(best, num_envs * steps / (time.perf_counter() - t0))
    return best


def _train_per_task(scratch: MetaCPOTrainer, tasks: list, args: argparse.Namespace, constrained: bool):
    """Each test task's own policy: ``args.cpo_steps`` steps from the initial policy (CPO, or
    TRPO-style without the cost when not ``constrained``); its last parameters and its curve."""
    params, curves = [], []
    for i, task in enumerate(tasks):
        rows, steps = adapt(
            scratch.setup,
            scratch.theta,
            task,
            args.cpo_steps,
            derive_seed(args.seed, 1, i, 7),
            constrained=constrained,
        )
        params.append(steps[-1])
        curves.append(
            [{"step": r["adapt_step"], "ep_ret": r["ep_ret"], "ep_cost": r["ep_cost"]} for r in rows]
        )
    return params, curves


def run(args: argparse.Namespace) -> dict:
    """Train the pooled policy and the per-task policies; judge them all."""
    base = MetaCPOConfig(
        env=args.env, seed=args.seed, progress=False, tensorboard=False, backend="serial", threads=1
    )
    t0 = time.perf_counter()
    pooled = MetaCPOTrainer(replace(base, algo="multitask-cpo", iterations=args.pooled_iterations))
    for _ in range(args.pooled_iterations):
        pooled.step()
    pooled.close()
    t_pooled = time.perf_counter() - t0
    # the main job's test tasks for this seed (rl.meta_cpo.MetaCPOTrainer.meta_test)
    tasks = pooled.dist.sample(args.tasks, split="test", seed=derive_seed(args.seed, 0, 0, 6))
    scratch = MetaCPOTrainer(replace(base, algo="cpo-scratch"))
    t1 = time.perf_counter()
    per_task_params, curves = _train_per_task(scratch, tasks, args, constrained=True)
    t_per_task = time.perf_counter() - t1
    seconds = {"pooled_training": round(t_pooled, 1), "per_task_training": round(t_per_task, 1)}
    parts = ["pooled", "per_task", "cross"]
    if args.unconstrained:
        t2 = time.perf_counter()
        free_params, free_curves = _train_per_task(scratch, tasks, args, constrained=False)
        seconds["unconstrained_training"] = round(time.perf_counter() - t2, 1)
        parts.append("unconstrained")
    result_tasks = []
    for i, task in enumerate(tasks):
        seed = derive_seed(args.seed, 2, i, 9)
        entry = {
            "task": task.to_dict(),
            "pooled": _judge(pooled, pooled.theta, task, args.eval_steps, seed),
            "per_task": _judge(scratch, per_task_params[i], task, args.eval_steps, seed),
            "cross": [
                _judge(scratch, per_task_params[j], task, args.eval_steps, seed)
                for j in range(len(tasks))
                if j != i
            ],
            "per_task_curve": curves[i],
        }
        if args.unconstrained:
            entry["unconstrained"] = _judge(scratch, free_params[i], task, args.eval_steps, seed)
            entry["unconstrained_curve"] = free_curves[i]
        result_tasks.append(entry)

    def mean(key: str, part: str) -> float:
        if part == "cross":
            return float(np.mean([c[key] for t in result_tasks for c in t["cross"]]))
        return float(np.mean([t[part][key] for t in result_tasks]))

    summary = {
        part: {
            "ep_ret": mean("ep_ret", part),
            "within_share": mean("within", part),
            "costs": {
                ch: float(
                    np.mean(
                        [c["costs"][ch] for t in result_tasks for c in t["cross"]]
                        if part == "cross"
                        else [t[part]["costs"][ch] for t in result_tasks]
                    )
                )
                for ch in scratch.setup.cost_channels
            },
        }
        for part in parts
    }
    summary["gap_per_task_minus_pooled"] = summary["per_task"]["ep_ret"] - summary["pooled"]["ep_ret"]
    return {
        "env": args.env,
        "seed": args.seed,
        "tasks": args.tasks,
        "pooled_iterations": args.pooled_iterations,
        "cpo_steps": args.cpo_steps,
        "adapt_batch_steps": scratch.cfg.adapt_batch_steps,
        "adapt_confidence": scratch.cfg.adapt_confidence,
        "batch_steps": base.batch_steps,
        "eval_steps": args.eval_steps,
        "limits": dict(zip(scratch.setup.cost_channels, scratch.setup.limits, strict=True)),
        "summary": summary,
        "per_task_results": result_tasks,
        "seconds": seconds,
        "env_steps_per_second_1000_envs": round(throughput(args.env)),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1min": os.getloadavg()[0],
            "python": platform.python_version(),
        },
    }


def markdown(res: dict) -> str:
    """A short report of :func:`run`'s result."""
    s = res["summary"]
    ch = list(res["limits"])
    head = "| policy | return | " + " | ".join(f"cost {c} (limit {res['limits'][c]:g})" for c in ch)
    head += " | within every limit |\n|---|---|" + "---|" * len(ch) + "---|\n"
    rows = ""
    for part, label in (
        ("per_task", "per-task CPO (own task)"),
        ("unconstrained", "per-task unconstrained, TRPO-style (own task)"),
        ("pooled", "pooled multi-task CPO"),
        ("cross", "per-task CPO on the other tasks"),
    ):
        if part not in s:
            continue
        costs = " | ".join(f"{s[part]['costs'][c]:.2f}" for c in ch)
        rows += f"| {label} | {s[part]['ep_ret']:.2f} | {costs} | {100 * s[part]['within_share']:.0f} % |\n"

    def costs_of(judged: dict) -> str:
        return "/".join(f"{judged['costs'][c]:.2f}" for c in ch)

    shown = [p for p in ("per_task", "unconstrained", "pooled") if p in s]
    names = {"per_task": "per-task", "unconstrained": "unconstrained", "pooled": "pooled"}
    per_head = (
        "| task | "
        + " | ".join(f"{names[p]} return" for p in shown)
        + " | "
        + " | ".join(f"{names[p]} cost" for p in shown)
        + " |\n|---|"
        + "---|" * (2 * len(shown))
        + "\n"
    )
    per = "".join(
        f"| {i} | "
        + " | ".join(f"{t[p]['ep_ret']:.2f}" for p in shown)
        + " | "
        + " | ".join(costs_of(t[p]) + ("" if t[p]["within"] else " (over)") for p in shown)
        + " |\n"
        for i, t in enumerate(res["per_task_results"])
    )
    return (
        f"# Does `{res['env']}` need adaptation? Per-task CPO vs one pooled policy\n\n"
        f"`python -m benchmarks.needs_adaptation --env {res['env']} --seed {res['seed']} --tasks {res['tasks']} "
        f"--cpo-steps {res['cpo_steps']} --pooled-iterations {res['pooled_iterations']} "
        f"--eval-steps {res['eval_steps']}"
        + ("" if "unconstrained" in s else " --no-unconstrained")
        + f"`: the first {res['tasks']} held-out test tasks of "
        f"`python -m rl.meta_cpo --env {res['env']} --seed {res['seed']}`. Per-task CPO: {res['cpo_steps']} CPO steps from the "
        f"initial policy on {res['adapt_batch_steps']}-step batches of the task (margin "
        f"{res['adapt_confidence']}); pooled: multi-task CPO for {res['pooled_iterations']} iterations on "
        f"{res['batch_steps']}-step batches of 4 training tasks. Every policy judged on an independent "
        f"{res['eval_steps']}-step evaluation batch"
        + (
            "; per-task unconstrained: the same steps and batches without the cost (TRPO-style).\n\n"
            if "unconstrained" in s
            else ".\n\n"
        )
        + head
        + rows
        + f"\nGap (per-task minus pooled return): **{s['gap_per_task_minus_pooled']:.2f}**.\n\n"
        + per_head
        + per
        + f"\nEnvironment throughput: {res['env_steps_per_second_1000_envs']:,} env steps/s (1,000 "
        "sub-environments, random actions, one core).\n"
        + f"\nMachine: {res['machine']['cpus']} CPUs, 1-minute load {res['machine']['load_avg_1min']:.1f} "
        f"(shared); training seconds {res['seconds']}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="hiddennav")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--cpo-steps", type=int, default=20)
    parser.add_argument("--pooled-iterations", type=int, default=30)
    parser.add_argument("--eval-steps", type=int, default=40000)
    parser.add_argument(
        "--unconstrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train each test task's policy without the cost (TRPO-style steps)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.out is None:
        args.out = OUT if (args.env, args.seed) == ("hiddennav", 0) else OUT / f"{args.env}-seed{args.seed}"
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "result.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
