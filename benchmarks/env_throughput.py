"""Throughput of the built-in environments: env steps per second with random actions, one core.

Steps ``--num-envs`` sub-environments with pre-drawn random actions (the policy's cost is
excluded) at their default horizon (auto-resets included), for the first task of each split;
the best of ``--repeats``. The target: >= 200,000 env steps/s with 256 sub-environments. Writes
``env_throughput.json`` and ``.md``::

    .venv/bin/python -m benchmarks.env_throughput [--steps 2000] [--repeats 3] [--envs safenav-goal]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks import common
from rl.envs import make, task_distribution

TARGET_STEPS_PER_S, TARGET_NUM_ENVS = 200_000, 256


def measure(name: str, split: str, num_envs: int, steps: int, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` env steps/s of ``num_envs`` sub-environments of ``name``."""
    task = task_distribution(name).sample(1, split=split, seed=0)[0]
    env = make(name, task=task, num_envs=num_envs, seed=0)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, size=(steps, num_envs, env.act_dim))
    env.reset()
    for t in range(min(steps, 50)):  # warm-up
        env.step(actions[t])
    best = float("inf")
    for _ in range(common.positive("repeats", repeats)):
        env.reset(seed=0)
        t0 = time.perf_counter()
        for t in range(steps):
            env.step(actions[t])
        best = min(best, time.perf_counter() - t0)
    out = {"env": name, "split": split, "num_envs": num_envs, "horizon": env.horizon}
    out |= {k: getattr(task, k) for k in ("num_hazards", "num_buttons") if hasattr(task, k)}
    return out | {"steps": steps, "best_s": best, "env_steps_per_s": num_envs * steps / best}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON and Markdown results."""
    p = common.parser(__doc__, common.RESULTS)
    p.add_argument("--steps", type=int, default=2000, help="step calls per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    p.add_argument("--envs", nargs="+", default=["safenav-goal", "safenav-button"])
    args = common.parse(p, argv)
    rows = []
    for name in args.envs:
        for split in ("train", "test"):
            for n in args.num_envs:
                rows.append(measure(name, split, n, args.steps, args.repeats))
                print(f"{name} {split} {n}: {rows[-1]['env_steps_per_s']:,.0f} env steps/s", flush=True)
    at_target = [r["env_steps_per_s"] for r in rows if r["num_envs"] == TARGET_NUM_ENVS]
    worst = min(at_target) if at_target else None
    met = None if worst is None else worst >= TARGET_STEPS_PER_S
    name = f"slowest env steps/s with {TARGET_NUM_ENVS} envs >= {TARGET_STEPS_PER_S:,}"
    targets = [common.target(name, worst, met)]
    report = {
        "benchmark": "env_throughput",
        "rows": rows,
        "targets": targets,
        **common.machine(numpy=np.__version__),
    }
    tables = [common.table("Env steps per second (best of repeats)", rows), common.table("Targets", targets)]
    common.write_results(
        args.out / "env_throughput", "Environment throughput, random actions, one core", report, tables
    )
    return report


if __name__ == "__main__":
    main()
