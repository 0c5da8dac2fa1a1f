"""Throughput of the Safety-Gymnasium adapter vs the raw package, resets included.

Whole episodes of random actions (fixed seed), one process, one thread. For each
environment the raw package and our adapter run the same number of complete
episodes; steps per second count every step and include every reset (the first
one too). Rows:

* ``safety-button`` / ``safety-circle``: the first training task drawn with seed
  0, horizon 500, through our adapter vs through the package's own world
  rebuild (``fast_reset=False``: the package's ``Builder``/``World`` untouched,
  skybox and all).
* ``SafetyPointButton1-v0``, ``SafetyCarCircle1-v0``, ``SafetyPointGoal1-v0``:
  ``safety_gymnasium.make(id)`` (with its wrappers) vs ``rl.envs.safety_gym.make(id)``,
  the package's own horizon.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/safety_gym_throughput.py [--episodes 3] [--quick]

Prints a table and writes ``benchmarks/results/safety_gym_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.envs import safety_gym  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "safety_gym_throughput.json"
FAMILIES = ("safety-button", "safety-circle")
RAW_IDS = ("SafetyPointButton1-v0", "SafetyCarCircle1-v0", "SafetyPointGoal1-v0")


def _actions(seed: int, act_dim: int):
    rng = np.random.default_rng(seed)
    while True:
        yield rng.uniform(-1.0, 1.0, size=act_dim)


def run_adapter(name: str, episodes: int, seed: int, fast_reset: bool, horizon=None) -> dict:
    """Complete ``episodes`` episodes through ``rl.envs.safety_gym.make``."""
    t0 = time.perf_counter()
    env = safety_gym.make(name, num_envs=1, seed=seed, horizon=horizon, fast_reset=fast_reset)
    actions = _actions(seed, env.act_dim)
    steps = done = 0
    env.reset(seed=seed)
    while done < episodes:
        _, _, term, trunc, _ = env.step(next(actions)[None])
        steps += 1
        done += int(term[0] or trunc[0])
    elapsed = time.perf_counter() - t0
    out = {"steps": steps, "episodes": done, "seconds": elapsed, "horizon": env.horizon}
    env.close()
    return out


def run_raw(env_id: str, episodes: int, seed: int) -> dict:
    """Complete ``episodes`` episodes through ``safety_gymnasium.make``."""
    sg = safety_gym.import_safety_gymnasium()
    t0 = time.perf_counter()
    env = sg.make(env_id)
    actions = _actions(seed, env.action_space.shape[0])
    steps = done = 0
    env.reset(seed=seed)
    while done < episodes:
        _, _, _, term, trunc, _ = env.step(next(actions))
        steps += 1
        if term or trunc:
            done += 1
            if done < episodes:
                env.reset()
    elapsed = time.perf_counter() - t0
    env.close()
    return {"steps": steps, "episodes": done, "seconds": elapsed}


def time_resets(name: str, count: int, fast_reset: bool) -> float:
    """Mean seconds of a reset after the first one."""
    env = safety_gym.make(name, num_envs=1, seed=0, fast_reset=fast_reset)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for s in range(count):
        env.reset(seed=s + 1)
    env.close()
    return (time.perf_counter() - t0) / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 episode, 100-step horizon")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    episodes = 1 if args.quick else args.episodes

    rows = []
    for name in FAMILIES + RAW_IDS:
        horizon = 100 if args.quick else None
        ours = run_adapter(name, episodes, args.seed, fast_reset=True, horizon=horizon)
        if name in FAMILIES:
            raw = run_adapter(name, episodes, args.seed, fast_reset=False, horizon=horizon)
            raw_label = "package reset (fast_reset=False)"
        elif args.quick:
            raw = run_adapter(name, episodes, args.seed, fast_reset=False, horizon=horizon)
            raw_label = "package reset (fast_reset=False)"
        else:
            raw = run_raw(name, episodes, args.seed)
            raw_label = "safety_gymnasium.make"
        reset_count = 2 if args.quick else 5
        row = {
            "env": name,
            "raw": raw_label,
            "horizon": ours["horizon"],
            "episodes": episodes,
            "raw_steps": raw["steps"],
            "ours_steps": ours["steps"],
            "raw_steps_per_s": raw["steps"] / raw["seconds"],
            "ours_steps_per_s": ours["steps"] / ours["seconds"],
            "raw_reset_s": time_resets(name, 1 if args.quick else 2, fast_reset=False),
            "ours_reset_s": time_resets(name, reset_count, fast_reset=True),
        }
        row["speedup"] = row["ours_steps_per_s"] / row["raw_steps_per_s"]
        rows.append(row)
        print(
            f"{name:24s} raw {row['raw_steps_per_s']:8.1f} steps/s  ours "
            f"{row['ours_steps_per_s']:8.1f} steps/s  x{row['speedup']:.2f}",
            flush=True,
        )

    header = (
        f"{'environment':24s} {'horizon':>7s} {'raw steps/s':>12s} {'ours steps/s':>13s} "
        f"{'speedup':>8s} {'raw reset':>10s} {'our reset':>10s}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['env']:24s} {r['horizon']:7d} {r['raw_steps_per_s']:12.1f} "
            f"{r['ours_steps_per_s']:13.1f} {r['speedup']:7.2f}x {r['raw_reset_s']:9.3f}s "
            f"{r['ours_reset_s']:9.4f}s"
        )
    result = {
        "benchmark": "safety_gym_throughput",
        "episodes": episodes,
        "quick": args.quick,
        "seed": args.seed,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return result


if __name__ == "__main__":
    main()
