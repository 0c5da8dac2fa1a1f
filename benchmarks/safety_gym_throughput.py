"""Throughput of the Safety-Gymnasium adapter against the raw package, resets included.

Whole episodes of random actions (fixed seed), one process, one thread; steps per second count
every step and every reset (the first one too). ``safety-button`` and ``safety-circle`` (the
first training task drawn with seed 0, horizon 500): our adapter against the package's own world
rebuild (``fast_reset=False``: its ``Builder``/``World`` untouched, skybox and all).
``SafetyPointButton1-v0``, ``SafetyCarCircle1-v0``, ``SafetyPointGoal1-v0``: ``rl.envs.safety_gym.make``
against ``safety_gymnasium.make`` with its wrappers (``--quick``: against ``fast_reset=False``, one
100-step episode).

Per-step CPU time, every id and family above: the adapter with ``fast_step=False`` (the package's
own ``Builder.step``, the adapter's only step before ``rl.envs.safety_gym_fast``) against
``fast_step=True`` (our vectorised step), one sub-environment each, the same seed and the same
random actions, so both walk the same trajectory (no resets: the horizon is longer than the run);
blocks of ``--steps`` steps alternate between the two (the order flips every repeat), CPU time
(``time.process_time``) per block, best and median of ``--repeats`` blocks; the last observations of
the two are checked to be equal. The machine's load average is recorded (``load_avg``): other
processes share the cores, which inflates CPU time too (caches, frequency). Writes
``safety_gym_throughput.json`` and ``.md``::

    .venv/bin/python -m benchmarks.safety_gym_throughput [--episodes 3] [--quick] [--no-episodes]
        [--steps 500] [--repeats 7]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from benchmarks import common
from rl.envs import safety_gym

FAMILIES = ("safety-button", "safety-circle")
RAW_IDS = ("SafetyPointButton1-v0", "SafetyCarCircle1-v0", "SafetyPointGoal1-v0")


def steps_per_s(
    make_env: Callable[[], Any], episodes: int, seed: int, vector: bool
) -> tuple[float, int, Any]:
    """(steps per second, steps, horizon) of ``episodes`` whole episodes of ``make_env()``, construction and
    resets included; ``vector``: our one-environment vector env (it resets itself)."""
    t0 = time.perf_counter()
    env = make_env()
    act_dim = env.act_dim if vector else env.action_space.shape[0]
    rng = np.random.default_rng(seed)
    steps = done = 0
    env.reset(seed=seed)
    while done < episodes:
        action = rng.uniform(-1.0, 1.0, size=act_dim)
        out = env.step(action[None] if vector else action)  # (..., terminated, truncated, info)
        steps += 1
        if np.any(out[-3]) or np.any(out[-2]):
            done += 1
            if not vector and done < episodes:
                env.reset()
    seconds = time.perf_counter() - t0
    env.close()
    return steps / seconds, steps, env.horizon if vector else None


def reset_s(name: str, count: int, fast_reset: bool) -> float:
    """Mean seconds of a reset after the first one."""
    env = safety_gym.make(name, num_envs=1, seed=0, fast_reset=fast_reset)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for s in range(count):
        env.reset(seed=s + 1)
    env.close()
    return (time.perf_counter() - t0) / count


def step_cpu_us(name: str, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    """CPU microseconds per step, package step against our fast step, interleaved (see above)."""
    envs = {
        fast: safety_gym.make(name, num_envs=1, seed=seed, horizon=10**9, fast_step=fast)
        for fast in (False, True)
    }
    try:
        assert envs[True].fast_step and not envs[False].fast_step, envs[True].fast_step_reason
        rng = np.random.default_rng(seed)
        act_dim = envs[True].act_dim
        times: dict[bool, list[float]] = {False: [], True: []}
        last = {}
        for env in envs.values():
            env.reset(seed=seed)
        for r in range(repeats):
            actions = rng.uniform(-1.0, 1.0, size=(steps, 1, act_dim))
            for fast in (False, True) if r % 2 == 0 else (True, False):
                env = envs[fast]
                t0 = time.process_time()
                for action in actions:
                    obs, *_ = env.step(action)
                times[fast].append((time.process_time() - t0) / steps * 1e6)
                last[fast] = obs
        identical = bool(np.array_equal(last[False], last[True]))
    finally:
        for env in envs.values():
            env.close()
    package, ours = times[False], times[True]
    return {
        "env": name,
        "steps_per_block": steps,
        "blocks": repeats,
        "package_best_us": min(package),
        "fast_best_us": min(ours),
        "package_median_us": float(np.median(package)),
        "fast_median_us": float(np.median(ours)),
        "speedup_best": min(package) / min(ours),
        "speedup_median": float(np.median(package) / np.median(ours)),
        "identical": identical,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON and Markdown results."""
    p = common.parser(__doc__, common.RESULTS)
    p.add_argument("--episodes", type=int, default=3, help="episodes per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1 episode, 100-step horizon")
    p.add_argument("--no-episodes", action="store_true", help="only the per-step CPU comparison")
    p.add_argument("--steps", type=int, default=500, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per step variant")
    args = common.parse(p, argv)
    common.positive("--steps", args.steps)
    common.positive("--repeats", args.repeats)
    episodes, horizon = (1, 100) if args.quick else (args.episodes, None)
    step_rows = []
    for name in FAMILIES + RAW_IDS:
        row = step_cpu_us(name, args.steps, args.repeats, args.seed)
        step_rows.append(row)
        print(
            f"{name}: package step {row['package_best_us']:.0f} us, fast step {row['fast_best_us']:.0f} us "
            f"(best of {args.repeats}), identical: {row['identical']}",
            flush=True,
        )
    rows = []
    for name in () if args.no_episodes else FAMILIES + RAW_IDS:
        ours = partial(safety_gym.make, name, num_envs=1, seed=args.seed, horizon=horizon)
        ours_per_s, steps, horizon_used = steps_per_s(
            partial(ours, fast_reset=True), episodes, args.seed, True
        )
        if name in FAMILIES or args.quick:
            raw = "package reset (fast_reset=False)"
            raw_per_s, *_ = steps_per_s(partial(ours, fast_reset=False), episodes, args.seed, True)
        else:
            raw = "safety_gymnasium.make"
            make_raw = partial(safety_gym.import_safety_gymnasium().make, name)
            raw_per_s, *_ = steps_per_s(make_raw, episodes, args.seed, vector=False)
        row = {
            "env": name,
            "raw": raw,
            "horizon": horizon_used,
            "episodes": episodes,
            "steps": steps,
            "raw_steps_per_s": raw_per_s,
        }
        row |= {"ours_steps_per_s": ours_per_s, "speedup": ours_per_s / raw_per_s}
        row |= {"raw_reset_s": reset_s(name, 1 if args.quick else 2, fast_reset=False)}
        row |= {"ours_reset_s": reset_s(name, 2 if args.quick else 5, fast_reset=True)}
        rows.append(row)
        print(f"{name}: raw {raw_per_s:.1f} steps/s, ours {ours_per_s:.1f} steps/s", flush=True)
    report = {"benchmark": "safety_gym_throughput", "quick": args.quick, "seed": args.seed, "rows": rows}
    report |= {"step_rows": step_rows}
    report |= common.machine(numpy=np.__version__)
    tables = [
        common.table("CPU microseconds per step: package step vs our fast step (same trajectory)", step_rows)
    ]
    if rows:
        tables.append(common.table("Steps per second, resets included", rows))
    title = "Safety-Gymnasium: our adapter against the package"
    common.write_results(args.out / "safety_gym_throughput", title, report, tables)
    return report


if __name__ == "__main__":
    main()
