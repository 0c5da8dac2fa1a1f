"""CPO learning curves (with and without the optimism correction, and TRPO, the unconstrained
reference) on the task families.

Algorithms: ``cpo`` (``rl.cpo``'s default: the constraints corrected for the optimism of a step
chosen on noisy cost gradients, :func:`rl.cpo.debiased_offsets`), ``cpo-plain`` (the textbook
step, ``--no-debias``) and ``trpo`` (no constraint).

Runs ``rl.cpo.train`` for every (environment, algorithm, seed) and writes under
``--out`` (default ``benchmarks/results``):

* ``cpo_curves.csv``: one row per iteration and run (env, algo, seed, iteration,
  env_steps, ep_ret, ep_cost, one cost_<channel> column per channel, kl, case,
  seconds);
* ``cpo_curves.png``: per environment, return and episode cost against env steps
  (mean over seeds), CPO vs TRPO, with the cost limit dashed;
* ``cpo_curves.md``: a summary table (mean of the last 5 iterations).

Budgets fit a 2-core machine (defaults: about 10 minutes for the built-in tasks,
a few more for Safety-Gymnasium's Button when it is installed)::

    python benchmarks/cpo_curves.py
    python benchmarks/cpo_curves.py --envs safenav-goal --steps 100000 --seeds 0 1 2

Cost limits are per episode and per channel (``LIMITS``); the built-in tasks run
200-step episodes, Safety-Gymnasium 500-step ones.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rl.cpo import CPOConfig, train  # noqa: E402
from rl.runtime import parse_config, read_csv  # noqa: E402

#: Per-episode cost limit per channel, for each environment family.
LIMITS = {"safenav-goal": 5.0, "safenav-button": 2.0, "safety-button": 10.0, "safety-circle": 10.0}
ALGOS = ("cpo", "cpo-plain", "trpo")
COLORS = {"cpo": "C0", "cpo-plain": "C2", "trpo": "C1"}


@dataclass
class BenchConfig:
    """CPO / TRPO learning curves on the built-in and Safety-Gymnasium tasks."""

    envs: tuple[str, ...] = field(
        default=("safenav-goal", "safenav-button", "safety-button"),
        metadata={"help": "environment families (safety-* are skipped when safety-gymnasium is missing)"},
    )
    algos: tuple[str, ...] = field(default=ALGOS, metadata={"help": "any of " + ", ".join(ALGOS)})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds per (env, algo)"})
    steps: int = field(default=400_000, metadata={"help": "env steps per run on the built-in tasks"})
    safety_steps: int = field(default=160_000, metadata={"help": "env steps per run on safety-* tasks"})
    steps_per_iter: int = field(
        default=16_000, metadata={"help": "env steps per iteration (rl.cpo's default)"}
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    out: str = field(default=str(ROOT / "benchmarks" / "results"), metadata={"help": "output folder"})


def _safety_available() -> bool:
    try:
        from rl.envs.safety_gym import import_safety_gymnasium

        import_safety_gymnasium()
    except (ImportError, ValueError, RuntimeError) as err:
        print(f"skipping safety-* environments: {type(err).__name__}: {err}", file=sys.stderr)
        return False
    return True


def run(cfg: BenchConfig) -> list[dict[str, str]]:
    """Train every run; return the combined rows."""
    envs = list(cfg.envs)
    if any(e.startswith("safety-") for e in envs) and not _safety_available():
        envs = [e for e in envs if not e.startswith("safety-")]
    rows: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="cpo_curves_") as tmp:
        for env in envs:
            steps = cfg.safety_steps if env.startswith("safety-") else cfg.steps
            for algo in cfg.algos:
                if algo not in ALGOS:
                    raise ValueError(f"algos must be among {list(ALGOS)}, got {algo!r}")
                for seed in cfg.seeds:
                    run_cfg = CPOConfig(
                        env=env,
                        steps=steps,
                        steps_per_iter=cfg.steps_per_iter,
                        seed=seed,
                        cost_limit=None if algo == "trpo" else LIMITS.get(env, 25.0),
                        debias=algo == "cpo",
                        threads=cfg.threads,
                        tensorboard=False,
                        out=str(Path(tmp) / f"{env}-{algo}-{seed}"),
                    )
                    print(f"== {env} {algo} seed {seed}: {steps} steps", file=sys.stderr)
                    run_dir = train(run_cfg)
                    for r in read_csv(run_dir / "progress.csv"):
                        row = {"env": env, "algo": algo, "seed": str(seed)}
                        keep = ("iteration", "env_steps", "ep_ret", "ep_cost", "kl", "case", "seconds")
                        row.update({k: r[k] for k in keep})
                        row.update({k: v for k, v in r.items() if k.startswith("cost_")})
                        rows.append(row)
    return rows


def write_outputs(rows: list[dict[str, str]], out: Path, note: str = "") -> None:
    """CSV, PNG and Markdown summary of the combined rows."""
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(out / "cpo_curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    groups: dict[tuple[str, str], dict[int, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["env"], r["algo"])][int(r["iteration"])].append(r)
    envs = list(dict.fromkeys(r["env"] for r in rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(envs), 2, figsize=(10, 3.4 * len(envs)), squeeze=False)
    lines = [
        "| env | algo | seeds | env steps | return (last 5) | cost (last 5): total (per channel) "
        "| limit per channel | s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, env in enumerate(envs):
        for algo in ALGOS:
            by_it = groups.get((env, algo))
            if not by_it:
                continue
            its = sorted(by_it)
            x = [float(by_it[t][0]["env_steps"]) for t in its]
            ret = np.array([np.mean([float(r["ep_ret"]) for r in by_it[t]]) for t in its])
            cost = np.array([np.mean([float(r["ep_cost"]) for r in by_it[t]]) for t in its])
            color = COLORS[algo]
            axes[i, 0].plot(x, ret, label=algo, color=color)
            cost_cols = [k for k in by_it[its[0]][0] if k.startswith("cost_")] or ["ep_cost"]
            for j, col in enumerate(cost_cols):
                per_it = [np.mean([float(r[col]) for r in by_it[t]]) for t in its]
                name = algo if col == "ep_cost" else f"{algo} {col[5:]}"
                axes[i, 1].plot(x, per_it, label=name, color=color, linestyle=("-", ":", "-.")[j % 3])
            per_channel = ""
            cost_cols = [k for k in by_it[its[0]][0] if k.startswith("cost_")]
            if cost_cols:
                per_channel = (
                    " ("
                    + ", ".join(
                        f"{c[5:]} {np.mean([float(r[c]) for t in its[-5:] for r in by_it[t]]):.2f}"
                        for c in cost_cols
                    )
                    + ")"
                )
            seconds = np.mean([float(by_it[its[-1]][k]["seconds"]) for k in range(len(by_it[its[-1]]))])
            n_seeds = len(by_it[its[-1]])
            limit = None if algo == "trpo" else LIMITS.get(env, 25.0)
            lines.append(
                f"| {env} | {algo} | {n_seeds} | {int(x[-1])} | {ret[-5:].mean():.2f} | {cost[-5:].mean():.2f}{per_channel} "
                f"| {'-' if limit is None else limit} | {seconds:.0f} |"
            )
        limit = LIMITS.get(env, 25.0)
        axes[i, 1].axhline(limit, color="k", linestyle="--", linewidth=1, label="limit (per channel)")
        axes[i, 0].set_title(f"{env}: episode return")
        axes[i, 1].set_title(f"{env}: episode cost per channel")
        for ax in axes[i]:
            ax.set_xlabel("env steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cpo_curves.png", dpi=110)
    plt.close(fig)
    (out / "cpo_curves.md").write_text((note + "\n\n" if note else "") + "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, exit_on_error=True)
    rows = run(cfg)
    import os
    import time

    note = (
        f"# CPO learning curves\n\n`python benchmarks/cpo_curves.py`, measured {time.strftime('%Y-%m-%d')}: "
        f"{cfg.steps:,} env steps per run on the built-in tasks, {cfg.safety_steps:,} on Safety-Gymnasium, "
        f"{cfg.steps_per_iter:,} steps per iteration, seeds {', '.join(map(str, cfg.seeds))}; mean of the "
        f"last 5 iterations. `cpo` corrects the constraints for the optimism of the step (the default of "
        f"`rl.cpo`), `cpo-plain` is the textbook step. Load average at the end: {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores (shared machine: seconds are upper bounds)."
    )
    write_outputs(rows, Path(cfg.out), note)


if __name__ == "__main__":
    main()
