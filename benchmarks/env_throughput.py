"""Throughput of the built-in safe navigation environments (env steps per second).

Steps ``num_envs`` sub-environments with pre-drawn random actions (the policy's
cost is excluded) on one core and reports env steps/s; the target is >= 200,000
env steps/s with 256 environments. Episodes are truncated at the default horizon
(200), so auto-resets are included. Results go to
``benchmarks/results/env_throughput.json``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/env_throughput.py [--steps 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from rl.envs import safenav  # noqa: E402

TARGET_STEPS_PER_S = 200_000
TARGET_NUM_ENVS = 256
RESULTS = Path(__file__).resolve().parent / "results" / "env_throughput.json"


def measure(family: str, split: str, num_envs: int, steps: int, repeats: int) -> dict:
    """Best-of-``repeats`` env steps/s of ``num_envs`` sub-environments of ``family``."""
    task = safenav.task_distribution(family).sample(1, split=split, seed=0)[0]
    env = safenav.make(family, task=task, num_envs=num_envs, seed=0)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, size=(steps, num_envs, 2))
    env.reset()
    for t in range(min(steps, 50)):  # warm-up
        env.step(actions[t])
    times = []
    for _ in range(repeats):
        env.reset(seed=0)
        start = time.perf_counter()
        for t in range(steps):
            env.step(actions[t])
        times.append(time.perf_counter() - start)
    best = min(times)
    return {
        "family": family,
        "split": split,
        "num_envs": num_envs,
        "num_hazards": task.num_hazards,
        "num_buttons": task.num_buttons,
        "steps": steps,
        "best_seconds": best,
        "env_steps_per_s": num_envs * steps / best,
        "us_per_step_call": 1e6 * best / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="step calls per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    header = f"{'family':16} {'split':6} {'N':>5} {'haz':>4} {'btn':>4} {'us/step':>9} {'steps/s':>12}"
    print(header)
    print("-" * len(header))
    for family in safenav.FAMILIES:
        for split in ("train", "test"):
            for n in args.num_envs:
                row = measure(family, split, n, args.steps, args.repeats)
                rows.append(row)
                print(
                    f"{family:16} {split:6} {n:>5} {row['num_hazards']:>4} {row['num_buttons']:>4} "
                    f"{row['us_per_step_call']:>9.1f} {row['env_steps_per_s']:>12,.0f}"
                )
    at_target = [r for r in rows if r["num_envs"] == TARGET_NUM_ENVS]
    worst = min(r["env_steps_per_s"] for r in at_target) if at_target else None
    if worst is not None:
        verdict = "meets" if worst >= TARGET_STEPS_PER_S else "MISSES"
        print(
            f"\nworst case at N={TARGET_NUM_ENVS}: {worst:,.0f} env steps/s "
            f"({verdict} the {TARGET_STEPS_PER_S:,} target)"
        )
    result = {
        "benchmark": "safenav env throughput (random actions, one core)",
        "target": {"num_envs": TARGET_NUM_ENVS, "env_steps_per_s": TARGET_STEPS_PER_S},
        "worst_at_target_num_envs": worst,
        "meets_target": None if worst is None else worst >= TARGET_STEPS_PER_S,
        "horizon": safenav.DEFAULT_HORIZON,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
