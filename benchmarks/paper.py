"""The paper's comparison on Safety-Gymnasium, at a budget this machine can afford.

Runs ``python -m rl.meta_cpo`` for Meta-CPO, Meta-TRPO, CPO from scratch and first-order
Meta-CPO on the Safety-Gymnasium task families of Cho & Sun (AAAI-24), ``safety-button``
(Stochastic Button, Point robot) and ``safety-circle`` (Stochastic Circle, Car robot), with
several seeds; every run meta-trains on the training split, then adapts on held-out test tasks
(the test split, mostly outside the training ranges) and writes ``adaptation.csv``. Every finished
run is then aggregated:

* ``docs/results/paper/``: ``paper_table.csv`` (return, cost and the share of test tasks within
  the cost limit after 0, 1, ..., K_test adaptation steps, per env and method), the plots
  ``adaptation.png``, ``share_within_limit.png`` and ``training.png``, and the page ``index.md``
  (the table and the plots) once ``mkdocs.yml`` lists ``results/paper/index.md`` (an unlisted page
  fails ``mkdocs build --strict``); the same table in Markdown is always in
  ``benchmarks/results/paper/paper_table.md``;
* ``benchmarks/results/paper/``: ``paper_rows.csv`` (every env, method, seed, task and step),
  ``paper_runs.csv`` (one row per run), ``paper_summary.csv`` (after the last adaptation step)
  and ``README.md`` (the budgets chosen beside the published defaults, the planned cost, what
  finished and how to continue). The run folders live in ``benchmarks/results/paper/runs/``
  (ignored by git).

Budgets: the published Meta-CPO defaults (``DESIGN.md`` section 5) except the sample budget: the
same M = 3 tasks, K = 3 local steps, delta 1e-2 (inner and meta), cost limit 10 on the total cost
(the published code constrains the scalar Safety-Gym cost), horizon 500, policy (24, 12) tanh,
critics (128, 128), float64; but 2,000 env steps per collection (published 4,000), 10
meta-iterations, 4 test tasks and 5 adaptation steps (published 50). ``--help`` lists the knobs.

Runs go one at a time (``--backend serial --threads 1``, measured faster than two worker
processes on this loaded 2-core machine, see ``README.md``), niced, seed 0 of every env and method
first, then seed 1, ... The benchmark resumes where it stopped: a run folder with an
``adaptation.csv`` is finished and skipped; one with checkpoints is continued with ``--resume``;
anything else (no checkpoint yet, or CPO from scratch, which has none) starts again::

    nice -n 10 .venv/bin/python benchmarks/paper.py              # run what is missing, report
    .venv/bin/python benchmarks/paper.py --report-only           # aggregate the finished runs
    .venv/bin/python benchmarks/paper.py --quick                 # smoke test, a few minutes
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _harness  # noqa: E402
from rl.meta_cpo import ALGOS  # noqa: E402
from rl.runtime import parse_config, read_csv  # noqa: E402

_iterations_done, _ms, _pct = _harness.iterations_done, _harness.mean_std, _harness.pct
_set_nice, _write_csv = _harness.set_nice, _harness.write_csv

RAW_OUT = ROOT / "benchmarks" / "results" / "paper"
DOCS_OUT = ROOT / "docs" / "results" / "paper"
ENVS = ("safety-circle", "safety-button")
METHODS = ("meta-cpo", "meta-trpo", "cpo-scratch", "fo-meta-cpo")
LABELS = {
    "meta-cpo": "Meta-CPO",
    "fo-meta-cpo": "FO Meta-CPO",
    "meta-trpo": "Meta-TRPO",
    "cpo-scratch": "CPO from scratch",
    "multitask-cpo": "Multi-task CPO",
}
ENV_LABELS = {"safety-button": "Stochastic Button (Point)", "safety-circle": "Stochastic Circle (Car)"}
#: Published Meta-CPO defaults (DESIGN.md section 5), shown beside the budgets chosen here.
PUBLISHED = {
    "meta_batch": "3",
    "inner_steps": "3",
    "batch_steps": "4,000 (4 workers x 2 episodes x 500)",
    "num_envs": "4 workers",
    "horizon": "500",
    "inner_delta": "1e-2",
    "meta_delta": "1e-2",
    "cost_limit": "10",
    "hidden": "(24, 12) tanh",
    "critic_hidden": "(128, 128)",
    "iterations": "not given in DESIGN.md",
    "test_tasks": "not given in DESIGN.md",
    "adapt_steps": "50",
}
#: Seconds per env step of a whole run (sampling, inner loops, meta-gradient, critics), measured
#: here before any run finished: one meta-iteration (24,000 env steps, serial) took 43 s on
#: safety-circle and 60 s on safety-button (1.8 and 2.5 ms per step). Replaced by the measured
#: figure of the finished runs as soon as there is one.
PRIOR_S_PER_STEP = 2.2e-3
#: Seconds a run spends outside its env steps (imports, env start-up, plots).
RUN_OVERHEAD_S = 15.0


@dataclass
class BenchConfig:
    """Meta-CPO and its baselines on the paper's Safety-Gymnasium tasks (resumable)."""

    envs: tuple[str, ...] = field(default=ENVS, metadata={"help": "task families to run"})
    methods: tuple[str, ...] = field(default=METHODS, metadata={"help": "the --algo values to run"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds per env and method"})
    iterations: int = field(default=10, metadata={"help": "meta-iterations (cpo-scratch: none)"})
    meta_batch: int = field(default=3, metadata={"help": "M: training tasks per meta-iteration"})
    inner_steps: int = field(default=3, metadata={"help": "K: local CPO steps per task"})
    batch_steps: int = field(default=2000, metadata={"help": "env steps per collection"})
    num_envs: int = field(default=4, metadata={"help": "sub-environments per collection"})
    horizon: int = field(default=500, metadata={"help": "episode length"})
    delta: float = field(default=0.01, metadata={"help": "inner and meta trust-region size"})
    cost_limit: float = field(default=10.0, metadata={"help": "per-episode limit on the total cost"})
    hidden: tuple[int, ...] = field(default=(24, 12), metadata={"help": "policy hidden sizes (tanh)"})
    critic_hidden: tuple[int, ...] = field(default=(128, 128), metadata={"help": "critic hidden sizes"})
    test_tasks: int = field(default=4, metadata={"help": "held-out test tasks per run"})
    adapt_steps: int = field(default=5, metadata={"help": "K_test: adaptation steps per test task"})
    debias: bool = field(
        default=False,
        metadata={
            "help": "rl.meta_cpo --debias (the optimism correction); the published comparison and the "
            "runs so far use the textbook step"
        },
    )
    backend: str = field(default="serial", metadata={"help": "rl.meta_cpo --backend (serial or processes)"})
    workers: int = field(default=2, metadata={"help": "worker processes with --backend processes"})
    out: str = field(default=str(RAW_OUT), metadata={"help": "raw outputs (runs under <out>/runs)"})
    docs_out: str = field(default=str(DOCS_OUT), metadata={"help": "table and plots for the docs"})
    report_only: bool = field(default=False, metadata={"help": "only aggregate the finished runs"})
    quick: bool = field(
        default=False,
        metadata={
            "help": "smoke test (seed 0, 1 iteration, M=2, K=1, 200-step batches of 100-step "
            "episodes, 1 test task, 1 adaptation step) into <out>/runs/quick, never the main results"
        },
    )
    nice: int = field(default=10, metadata={"help": "niceness of the runs (at least this)"})
    poll: float = field(default=60.0, metadata={"help": "seconds between progress lines of a run"})

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in ALGOS]
        if bad:
            raise ValueError(f"methods must be among {list(ALGOS)}, got {bad}")
        bad = [e for e in self.envs if e not in ENVS]
        if bad:
            raise ValueError(f"envs must be among {list(ENVS)}, got {bad}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.iterations < 0 or self.test_tasks < 1 or self.adapt_steps < 0:
            raise ValueError("iterations and adapt_steps must be >= 0, test_tasks >= 1")
        if self.backend not in ("serial", "processes"):
            raise ValueError(f"backend must be serial or processes, got {self.backend!r}")


# ============================================================================== settings
def effective(cfg: BenchConfig) -> BenchConfig:
    """The settings that run: ``cfg`` itself, or the tiny smoke configuration of ``--quick``."""
    if not cfg.quick:
        return cfg
    return BenchConfig(
        envs=cfg.envs,
        methods=cfg.methods,
        seeds=cfg.seeds[:1],
        iterations=1,
        meta_batch=2,
        inner_steps=1,
        batch_steps=200,
        num_envs=2,
        horizon=100,
        delta=cfg.delta,
        cost_limit=cfg.cost_limit,
        hidden=cfg.hidden,
        critic_hidden=cfg.critic_hidden,
        test_tasks=1,
        adapt_steps=1,
        backend=cfg.backend,
        workers=cfg.workers,
        out=str(Path(cfg.out) / "runs" / "quick"),
        docs_out=str(Path(cfg.out) / "runs" / "quick" / "docs"),
        report_only=cfg.report_only,
        quick=True,
        nice=cfg.nice,
        poll=min(cfg.poll, 20.0),
    )


def run_order(cfg: BenchConfig) -> list[tuple[int, str, str]]:
    """(seed, env, method), seed-major: seed 0 of every env and method first."""
    return [(seed, env, algo) for seed in cfg.seeds for env in cfg.envs for algo in cfg.methods]


def run_name(env: str, algo: str, seed: int) -> str:
    return f"{env}-{algo}-seed{seed}"


def run_args(cfg: BenchConfig, env: str, algo: str, seed: int) -> list[str]:
    """The ``rl.meta_cpo`` options of one run (besides backend, progress and ``--out``)."""
    return [
        "--env", env,
        "--algo", algo,
        "--seed", str(seed),
        "--iterations", str(cfg.iterations),
        "--meta-batch", str(cfg.meta_batch),
        "--inner-steps", str(cfg.inner_steps),
        "--batch-steps", str(cfg.batch_steps),
        "--num-envs", str(cfg.num_envs),
        "--horizon", str(cfg.horizon),
        "--inner-delta", str(cfg.delta),
        "--meta-delta", str(cfg.delta),
        "--cost-limit", str(cfg.cost_limit),
        "--constrain", "total",
        "--hidden", *map(str, cfg.hidden),
        "--critic-hidden", *map(str, cfg.critic_hidden),
        "--test-tasks", str(cfg.test_tasks),
        "--adapt-steps", str(cfg.adapt_steps),
        "--debias" if cfg.debias else "--no-debias",
    ]  # fmt: skip


def planned_steps(cfg: BenchConfig, algo: str) -> tuple[int, int]:
    """(meta-training env steps, meta-test env steps) of one run."""
    batch = cfg.num_envs * (cfg.batch_steps // cfg.num_envs)
    test = cfg.test_tasks * (cfg.adapt_steps + 1) * batch
    if algo == "cpo-scratch":
        return 0, test
    if algo == "multitask-cpo":
        return cfg.iterations * cfg.meta_batch * batch, test
    return cfg.iterations * cfg.meta_batch * (cfg.inner_steps + 1) * batch, test


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def _has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("ckpt_*.pt"))


def seconds_per_step(runs: Path) -> tuple[float, str]:
    """Wall seconds per env step of the finished runs here (or the prior measurement)."""
    timings = _load_json(runs / "timings.json")
    wall = steps = 0.0
    for t in timings.values():
        if t.get("finished") and t.get("env_steps"):
            wall += t["wall_s"] - RUN_OVERHEAD_S
            steps += t["env_steps"]
    if steps > 0 and wall > 0:
        return wall / steps, "measured on the finished runs"
    return PRIOR_S_PER_STEP, "prior: one meta-iteration per env, measured before the runs"


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


# ============================================================================== running
def run_all(cfg: BenchConfig) -> None:
    """Run every missing (seed, env, method), one at a time, resuming interrupted ones."""
    out = Path(cfg.out)
    runs = out if cfg.quick else out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "logs").mkdir(exist_ok=True)
    lock_file = open(runs / ".lock", "a+")  # noqa: SIM115 (held for the whole benchmark)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"{runs}: another benchmark (or a run it started) still holds the lock; wait for it")
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()

    timings_path = runs / "timings.json"
    timings = _load_json(timings_path)
    order = run_order(cfg)
    total_steps = sum(sum(planned_steps(cfg, a)) for _, _, a in order)
    s_step, how_known = seconds_per_step(runs)
    print(
        f"paper benchmark: {len(order)} runs ({', '.join(cfg.envs)} x {', '.join(cfg.methods)} x seeds "
        f"{', '.join(map(str, cfg.seeds))}) into {runs}\n"
        f"  planned: {total_steps:,} env steps, about "
        f"{_fmt_s(total_steps * s_step + len(order) * RUN_OVERHEAD_S)} at {1e3 * s_step:.2f} ms per "
        f"env step ({how_known})",
        flush=True,
    )
    child: subprocess.Popen | None = None

    def _stop(signum, _frame):  # forward to the run; its checkpoints make the stop safe
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _stop)
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "rl.meta_cpo", "--backend", cfg.backend, "--workers", str(cfg.workers)]
    base += ["--threads", "1", "--progress"]
    for n, (seed, env, algo) in enumerate(order, 1):
        name = run_name(env, algo, seed)
        run_dir = runs / name
        tag = f"[{n}/{len(order)}] {name}"
        if (run_dir / "adaptation.csv").is_file():
            print(f"{tag}: finished before, skipped", flush=True)
            continue
        if (run_dir / "config.json").is_file() and _has_checkpoint(run_dir):
            saved = json.loads((run_dir / "config.json").read_text())
            if int(saved.get("batch_steps", -1)) != cfg.batch_steps or int(saved.get("seed", -1)) != seed:
                print(f"{tag}: WARNING: its config.json differs from this benchmark's settings", flush=True)
            cmd = [*base, "--resume", str(run_dir), "--iterations", str(cfg.iterations)]
            how = f"resumed at iteration {_iterations_done(run_dir)}"
        else:
            if run_dir.exists():  # no checkpoint yet (or cpo-scratch): nothing worth keeping
                shutil.rmtree(run_dir)
            cmd = [*base, *run_args(cfg, env, algo, seed), "--out", str(run_dir)]
            how = "started"
        left = [
            sum(planned_steps(cfg, a))
            for s, e, a in order
            if not (runs / run_name(e, a, s) / "adaptation.csv").is_file()
        ]
        s_step, _ = seconds_per_step(runs)
        finished = len(order) - len(left)
        print(
            f"{tag}: {how} ({finished}/{len(order)} finished, about "
            f"{_fmt_s(sum(left) * s_step + len(left) * RUN_OVERHEAD_S)} left)",
            flush=True,
        )
        t0 = time.time()
        rc = None
        total_iters = 0 if algo == "cpo-scratch" else cfg.iterations
        try:
            with open(runs / "logs" / f"{name}.log", "a") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
                log.flush()
                child = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env_vars,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(lock_file.fileno(),),  # the lock lives as long as the run does
                    preexec_fn=lambda: _set_nice(cfg.nice),
                )
                while True:
                    try:
                        rc = child.wait(timeout=cfg.poll)
                        break
                    except subprocess.TimeoutExpired:
                        done = _iterations_done(run_dir)
                        phase = f"iteration {done}/{total_iters}" if done < total_iters else "meta-test"
                        print(f"{tag}: {phase}, {time.time() - t0:.0f} s", flush=True)
        finally:
            entry = timings.setdefault(name, {"wall_s": 0.0, "sessions": 0, "finished": False})
            entry["wall_s"] = round(entry["wall_s"] + time.time() - t0, 1)
            entry["sessions"] += 1
            entry["finished"] = (run_dir / "adaptation.csv").is_file()
            if entry["finished"]:
                entry["env_steps"] = sum(planned_steps(cfg, algo))
            _save_json(timings_path, timings)
            child = None
        if rc != 0:
            print(f"{tag}: FAILED (exit {rc}); see {runs / 'logs' / (name + '.log')}", flush=True)
            continue
        print(f"{tag}: finished in {time.time() - t0:.0f} s", flush=True)
        try:
            report(cfg)
        except Exception as err:  # noqa: BLE001 - a report problem must not stop the runs
            print(f"warning: report failed: {type(err).__name__}: {err}", flush=True)
    lock_file.close()


# ============================================================================== aggregation
def _limit(run_cfg: dict[str, Any]) -> float:
    """The per-episode limit on the total cost a run is judged against (Meta-TRPO included)."""
    raw = run_cfg.get("cost_limit", 10.0)
    values = [float(v) for v in raw] if isinstance(raw, list | tuple) else [float(raw)]
    return sum(values) if len(values) > 1 else values[0]


def load_runs(runs: Path) -> list[dict[str, Any]]:
    """Every finished run under ``runs`` (a folder with adaptation.csv and config.json)."""
    timings = _load_json(runs / "timings.json")
    found = []
    if not runs.is_dir():
        return found
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        if not ((run_dir / "adaptation.csv").is_file() and (run_dir / "config.json").is_file()):
            continue
        run_cfg = json.loads((run_dir / "config.json").read_text())
        rows = read_csv(run_dir / "adaptation.csv")
        if not rows:
            continue
        progress = read_csv(run_dir / "progress.csv") if (run_dir / "progress.csv").is_file() else []
        found.append(
            {
                "name": run_dir.name,
                "env": run_cfg["env"],
                "algo": run_cfg["algo"],
                "seed": int(run_cfg["seed"]),
                "cfg": run_cfg,
                "rows": rows,
                "progress": progress,
                "channels": [c[5:] for c in rows[0] if c.startswith("cost_") and c != "cost_limit"],
                "limit": _limit(run_cfg),
                "iterations": len(progress),
                "meta_env_steps": int(float(progress[-1]["env_steps"])) if progress else 0,
                "train_seconds": float(progress[-1]["seconds"]) if progress else 0.0,
                "wall_s": timings.get(run_dir.name, {}).get("wall_s", math.nan),
                "sessions": timings.get(run_dir.name, {}).get("sessions", 0),
            }
        )
    return found


def aggregate(found: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(raw rows, per env/method/step table, per env/method summary, per-run table)."""
    raw: list[dict[str, Any]] = []
    cells: dict[tuple[str, str], dict[int, list[tuple[dict, dict]]]] = defaultdict(lambda: defaultdict(list))
    for run in found:
        for row in run["rows"]:
            raw.append({"env": run["env"], **row, "judged_limit": run["limit"]})
            cells[(run["env"], run["algo"])][int(row["adapt_step"])].append((row, run))
    table, summary, run_table = [], [], []
    keys = [(e, m) for e in ENVS for m in ALGOS if (e, m) in cells]
    for env, m in keys:
        runs_m = [r for r in found if r["env"] == env and r["algo"] == m]
        batch = int(runs_m[0]["cfg"]["batch_steps"])
        steps = sorted(cells[(env, m)])
        for k in steps:
            pairs = cells[(env, m)][k]
            rm, rs = _ms([float(r["ep_ret"]) for r, _ in pairs])
            cm, cs = _ms([float(r["ep_cost"]) for r, _ in pairs])
            within = [float(r["ep_cost"]) <= run["limit"] for r, run in pairs]
            table.append(
                {
                    "env": env,
                    "method": m,
                    "adapt_step": k,
                    "adapt_env_steps": k * batch,
                    "seeds": len({run["seed"] for _, run in pairs}),
                    "tasks": len(pairs),
                    "ret_mean": rm,
                    "ret_std": rs,
                    "cost_mean": cm,
                    "cost_std": cs,
                    "cost_limit": pairs[0][1]["limit"],
                    "within": int(sum(within)),
                    "share_within": float(np.mean(within)),
                }
            )
        last = table[-1]
        final_step = steps[-1]
        per_seed = [
            np.mean(
                [
                    float(r["ep_cost"]) <= run["limit"]
                    for r in run["rows"]
                    if int(r["adapt_step"]) == final_step
                ]
            )
            for run in runs_m
        ]
        first = next(t for t in table if t["env"] == env and t["method"] == m)
        summary.append(
            {
                "env": env,
                "method": m,
                "seeds": len(runs_m),
                "tasks": last["tasks"],
                "adapt_steps": final_step,
                "ret_before": first["ret_mean"],
                "cost_before": first["cost_mean"],
                "share_within_before": first["share_within"],
                "ret_mean": last["ret_mean"],
                "ret_std": last["ret_std"],
                "cost_mean": last["cost_mean"],
                "cost_std": last["cost_std"],
                "cost_limit": last["cost_limit"],
                "within": last["within"],
                "share_within": last["share_within"],
                "share_within_seed_std": float(np.std(per_seed)),
                "meta_iterations": float(np.mean([r["iterations"] for r in runs_m])),
                "meta_env_steps": float(np.mean([r["meta_env_steps"] for r in runs_m])),
                "adapt_env_steps_per_task": final_step * batch,
                "wall_s_per_run": float(np.nanmean([r["wall_s"] for r in runs_m])),
            }
        )
    for run in found:
        c = run["cfg"]
        run_table.append(
            {
                "run": run["name"],
                "env": run["env"],
                "method": run["algo"],
                "seed": run["seed"],
                "meta_iterations": run["iterations"],
                "meta_batch": c["meta_batch"],
                "inner_steps": c["inner_steps"],
                "batch_steps": c["batch_steps"],
                "num_envs": c["num_envs"],
                "horizon": c.get("horizon"),
                "test_tasks": c["test_tasks"],
                "adapt_steps": c["adapt_steps"],
                "meta_env_steps": run["meta_env_steps"],
                "train_seconds": round(run["train_seconds"], 1),
                "wall_seconds": run["wall_s"],
                "sessions": run["sessions"],
            }
        )
    return raw, table, summary, run_table


# ============================================================================== plots
def _color(method: str) -> str:
    return f"C{ALGOS.index(method)}"


def plot(table: list[dict], found: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    envs = [e for e in ENVS if any(t["env"] == e for t in table)]
    # return and cost per adaptation step
    fig, axes = plt.subplots(len(envs), 2, figsize=(9.5, 3.6 * len(envs)), squeeze=False)
    for row, env in zip(axes, envs, strict=True):
        methods = [m for m in ALGOS if any(t["env"] == env and t["method"] == m for t in table)]
        for m in methods:
            rows = [t for t in table if t["env"] == env and t["method"] == m]
            x = [r["adapt_step"] for r in rows]
            for ax, key in zip(row, ("ret", "cost"), strict=True):
                mean = np.array([r[f"{key}_mean"] for r in rows])
                std = np.array([r[f"{key}_std"] for r in rows])
                label = f"{LABELS.get(m, m)} ({rows[0]['seeds']} seeds)"
                ax.plot(x, mean, marker="o", markersize=3, color=_color(m), label=label)
                ax.fill_between(x, mean - std, mean + std, color=_color(m), alpha=0.1, linewidth=0)
        limit = next(t["cost_limit"] for t in table if t["env"] == env)
        row[1].axhline(limit, color="k", linestyle="--", linewidth=1.0, label=f"limit {limit:g}")
        for ax, what in zip(row, ("episode return", "episode cost"), strict=True):
            ax.set_title(f"{ENV_LABELS[env]}: {what}", fontsize=9)
            ax.set_xlabel("adaptation step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("held-out test tasks: mean ± std over seeds and test tasks", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "adaptation.png", dpi=110)
    plt.close(fig)

    # share of test tasks within the limit per adaptation step
    fig, axes = plt.subplots(1, len(envs), figsize=(4.8 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for m in ALGOS:
            rows = [t for t in table if t["env"] == env and t["method"] == m]
            if rows:
                ax.plot(
                    [r["adapt_step"] for r in rows],
                    [100 * r["share_within"] for r in rows],
                    marker="o",
                    markersize=3,
                    color=_color(m),
                    label=LABELS.get(m, m),
                )
        ax.set_title(f"{ENV_LABELS[env]}: test tasks within the limit", fontsize=9)
        ax.set_xlabel("adaptation step")
        ax.set_ylabel("% of (seed, test task)")
        ax.set_ylim(-3, 103)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "share_within_limit.png", dpi=110)
    plt.close(fig)

    # meta-training curves (post-adaptation return and cost on the training tasks)
    trained = [r for r in found if r["progress"]]
    envs_t = [e for e in envs if any(r["env"] == e for r in trained)]
    if not envs_t:
        return
    fig, axes = plt.subplots(len(envs_t), 2, figsize=(9.5, 3.4 * len(envs_t)), squeeze=False)
    for row, env in zip(axes, envs_t, strict=True):
        for m in ALGOS:
            runs_m = [r for r in trained if r["env"] == env and r["algo"] == m]
            if not runs_m:
                continue
            n = min(len(r["progress"]) for r in runs_m)
            for ax, key in zip(row, ("ret", "cost"), strict=True):
                col = f"{key}_post" if m != "multitask-cpo" else f"{key}_pre"
                y = np.array([[float(p[col]) for p in r["progress"][:n]] for r in runs_m])
                ax.plot(
                    np.arange(n),
                    y.mean(0),
                    marker="o",
                    markersize=2,
                    color=_color(m),
                    label=f"{LABELS.get(m, m)} ({len(runs_m)} seeds)",
                )
        limit = next(r["limit"] for r in trained if r["env"] == env)
        row[1].axhline(limit, color="k", linestyle="--", linewidth=1.0)
        for ax, what in zip(
            row, ("return after the K local steps", "cost after the K local steps"), strict=True
        ):
            ax.set_title(f"{ENV_LABELS[env]}: {what}", fontsize=9)
            ax.set_xlabel("meta-iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("meta-training on the training tasks (mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)


# ============================================================================== report


def budget_lines(cfg: BenchConfig, runs: Path) -> list[str]:
    """Markdown: the budgets chosen beside the published defaults, and the planned cost."""
    order = run_order(cfg)
    s_step, how_known = seconds_per_step(runs)
    meta_it = cfg.meta_batch * (cfg.inner_steps + 1) * cfg.batch_steps
    per_run = {a: planned_steps(cfg, a) for a in cfg.methods}
    total = sum(sum(per_run[a]) for _, _, a in order)
    rows = [
        ("meta-iterations", cfg.iterations, PUBLISHED["iterations"]),
        ("M: training tasks per meta-iteration", cfg.meta_batch, PUBLISHED["meta_batch"]),
        ("K: local CPO steps per task", cfg.inner_steps, PUBLISHED["inner_steps"]),
        ("env steps per collection", f"{cfg.batch_steps:,}", PUBLISHED["batch_steps"]),
        ("sub-environments per collection", cfg.num_envs, PUBLISHED["num_envs"]),
        ("horizon", cfg.horizon, PUBLISHED["horizon"]),
        (
            "delta (inner and meta)",
            f"{cfg.delta:g}",
            f"{PUBLISHED['inner_delta']} / {PUBLISHED['meta_delta']}",
        ),
        ("cost limit (per episode, total cost)", f"{cfg.cost_limit:g}", PUBLISHED["cost_limit"]),
        ("policy", f"{tuple(cfg.hidden)} tanh", PUBLISHED["hidden"]),
        ("critics", str(tuple(cfg.critic_hidden)), PUBLISHED["critic_hidden"]),
        ("test tasks per run", cfg.test_tasks, PUBLISHED["test_tasks"]),
        ("K_test: adaptation steps", cfg.adapt_steps, PUBLISHED["adapt_steps"]),
        ("seeds", len(cfg.seeds), "-"),
        ("dtype", "float64", "float64"),
    ]
    lines = [
        "| setting | here | published |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Env steps per meta-iteration: M x (K + 1) x batch = {cfg.meta_batch} x {cfg.inner_steps + 1} x "
        f"{cfg.batch_steps:,} = {meta_it:,} (published: 3 x 4 x 4,000 = 48,000). Per run: "
        + "; ".join(
            f"{LABELS.get(a, a)} {per_run[a][0]:,} meta-training + {per_run[a][1]:,} meta-test"
            for a in cfg.methods
        )
        + f" (meta-test: {cfg.test_tasks} tasks x ({cfg.adapt_steps} + 1) batches). "
        f"{len(order)} runs ({len(cfg.envs)} envs x {len(cfg.methods)} methods x {len(cfg.seeds)} seeds): "
        f"**{total:,} env steps, about {_fmt_s(total * s_step + len(order) * RUN_OVERHEAD_S)}** at "
        f"{1e3 * s_step:.2f} ms per env step ({how_known}; all of a run's work divided by its env steps) "
        f"plus {RUN_OVERHEAD_S:.0f} s start-up per run.",
    ]
    return lines


def report(cfg: BenchConfig) -> None:
    """Aggregate every finished run into the CSV / Markdown / PNG outputs (``cfg`` as it runs:
    :func:`effective` applied)."""
    out, docs = Path(cfg.out), Path(cfg.docs_out)
    runs = out if cfg.quick else out / "runs"
    found = load_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    order = run_order(cfg)
    done = {r["name"] for r in found}
    pending = [run_name(e, a, s) for s, e, a in order if run_name(e, a, s) not in done]
    partial = [
        f"{p} (iteration {_iterations_done(runs / p)})"
        for p in pending
        if (runs / p / "config.json").is_file()
    ]

    readme = [
        "# The paper's comparison on Safety-Gymnasium: budgets and status",
        "",
        "Raw outputs of `benchmarks/paper.py` (issue \"Reproduce the paper's comparison on "
        'Safety-Gymnasium"): Meta-CPO, Meta-TRPO, CPO from scratch and first-order Meta-CPO on '
        "`safety-button` (Stochastic Button, Point robot) and `safety-circle` (Stochastic Circle, Car "
        "robot), meta-trained on the training split and adapted on held-out test tasks of the test "
        "split. The results table: `paper_table.md` here, `paper_table.csv` and the plots (PNG) in "
        "`docs/results/paper/` (plus `index.md` there once the docs nav lists it); here also: "
        "`paper_rows.csv` (every env, method, seed, task and "
        "adaptation step), `paper_summary.csv` (after the last adaptation step), `paper_runs.csv` "
        "(one row per finished run). Run folders: `runs/` (not in git).",
        "",
        "## Budgets: chosen here vs published",
        "",
        "The published Meta-CPO defaults (DESIGN.md section 5) are kept except the sample budget, "
        "which is cut to fit about 4 hours for everything on this shared 2-core machine (a "
        "Safety-Gymnasium env step costs about 2 ms through our adapter here, all work of a "
        "meta-iteration included, so the published 48,000 env steps per meta-iteration would cost "
        f"about a minute and a half each): {cfg.batch_steps:,}-step collections ({cfg.num_envs} "
        f"sub-environments, {cfg.batch_steps // cfg.num_envs // cfg.horizon} episode(s) of "
        f"{cfg.horizon} steps each; published 4,000 = 8 episodes of 500), {cfg.iterations} "
        f"meta-iterations, {cfg.test_tasks} test tasks per seed and {cfg.adapt_steps} adaptation "
        "steps instead of the published 50. The constraint is one limit on the total per-episode "
        "cost (`--constrain total`), as the published code constrains Safety-Gym's scalar cost; for "
        "`safety-button` the total is buttons + hazards (our adapter counts each source, so a step "
        "in a hazard while pressing a wrong button costs 2, where the package's scalar indicator "
        "counts 1).",
        "",
        *budget_lines(cfg, runs),
        "",
        "## Backend",
        "",
        "Runs go one at a time, each with `--backend "
        f"{cfg.backend} --threads 1`, `nice` {cfg.nice}, `OMP_NUM_THREADS=1`. "
        + (
            "One safety-circle meta-iteration (M = 3, K = 3, 2,000-step batches, 24,000 env "
            "steps) measured before choosing, on this machine while another benchmark ran: serial "
            "43.1 s, `--backend processes --workers 2` 59.3 s (identical results; a safety-button "
            "meta-iteration then took 60.0 s serially). Serial is faster "
            "here: the machine's second core is taken by the other benchmark, so two workers only "
            "add process start-up and transfer."
        ),
        "",
        "## Status",
        "",
        f"{len(found)} of {len(order)} planned runs finished"
        + (f"; in progress or interrupted: {', '.join(partial)}" if partial else "")
        + (f"; {len(pending) - len(partial)} not started" if len(pending) > len(partial) else "")
        + ".",
        "",
    ]
    if found:
        raw, table, summary, run_table = aggregate(found)
        _write_csv(out / "paper_rows.csv", raw)
        _write_csv(out / "paper_summary.csv", summary)
        _write_csv(out / "paper_runs.csv", run_table)
        _write_csv(docs / "paper_table.csv", table)
        plot(table, found, docs)
        readme += [
            "| run | meta-iterations | meta-train env steps | test tasks | adaptation steps | train s | "
            "wall s (sessions) |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {r['run']} | {r['meta_iterations']} | {r['meta_env_steps']:,} | {r['test_tasks']} | "
                f"{r['adapt_steps']} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} ({r['sessions']}) |"
                for r in run_table
            ],
            "",
        ]
    readme += [
        "## How to continue",
        "",
        "Start it again (finished runs are skipped, runs with checkpoints resumed with "
        "`rl.meta_cpo --resume`, the rest restarted); it re-aggregates after every finished run:",
        "",
        "    nohup nice -n 10 .venv/bin/python benchmarks/paper.py > benchmarks/results/paper/runs/bench.log 2>&1 &",
        "    .venv/bin/python benchmarks/paper.py --report-only    # aggregate what finished, any time",
        "",
        "Per-run logs (with `rl.meta_cpo`'s progress bars): `runs/logs/<env>-<method>-seed<S>.log`; "
        "wall time per run: `runs/timings.json`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(readme))
    if not found:
        print(f"report: no finished runs under {runs} yet; wrote {out / 'README.md'}", flush=True)
        return
    _write_docs(cfg, out, docs, table, summary, found, order)
    print(f"report: {len(found)} finished runs -> {docs} and {out}", flush=True)
    for s in summary:
        print(
            f"  {s['env']:>13} {s['method']:>12}: seeds {s['seeds']}, after {s['adapt_steps']} steps: "
            f"return {s['ret_mean']:.2f}, cost {s['cost_mean']:.2f}, within limit {_pct(s['share_within'])}",
            flush=True,
        )


def _write_docs(cfg, out: Path, docs: Path, table, summary, found, order) -> None:
    """``<out>/paper_table.md`` and, when the docs nav lists it, ``<docs>/index.md``."""
    c0 = found[0]["cfg"]
    md = [
        "# Meta-CPO vs baselines on Safety-Gymnasium (reduced budget)",
        "",
        "Generated by `benchmarks/paper.py` from the finished runs (raw outputs, budgets and status in "
        "`benchmarks/results/paper/`). Setting of the paper (Cho & Sun, AAAI-24): the Stochastic Button "
        "(Point robot) and Stochastic Circle (Car robot) families of Safety-Gymnasium 1.0.0, meta-trained "
        "on the training split and adapted on held-out test tasks of the test split (larger arenas, more "
        "buttons and hazards, larger circles: mostly outside the training ranges).",
        "",
        f"**Budget, far below the paper's**: {c0['meta_batch']} tasks x {c0['inner_steps']} local steps per "
        f"meta-iteration, {found[0]['iterations'] or cfg.iterations} meta-iterations, {c0['batch_steps']:,} "
        f"env steps per collection (published 4,000), {c0['test_tasks']} test tasks per seed, "
        f"{c0['adapt_steps']} adaptation steps (published 50); horizon {c0.get('horizon')}, delta "
        f"{c0['inner_delta']}, policy {tuple(c0['hidden'])} tanh, critics {tuple(c0['critic_hidden'])}, "
        f"float64. Cost limit {_limit(c0):g} on the total per-episode cost (`--constrain total`). "
        f"{len(found)} of {len(order)} planned runs have finished; read the numbers as what this budget "
        "gives, not as a reproduction of the paper's figures.",
        "",
        "Step k is the on-policy batch of the policy after k adaptation steps (k = 0: the meta-policy, or "
        "the initial policy for CPO from scratch) on each test task; mean ± std over (seed, test task). "
        "Within limit: the test task's mean episode cost is at most the limit. Meta-TRPO adapts without "
        "the constraint (TRPO steps) and is judged against the same limit. Test tasks are shared by the "
        "methods of one seed.",
        "",
        "## After the last adaptation step",
        "",
        "| env | method | seeds | tasks | return (step 0) | return | cost (step 0) | cost | within limit "
        "(step 0) | within limit | meta-train env steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        md.append(
            f"| {s['env']} | {LABELS.get(s['method'], s['method'])} | {s['seeds']} | {s['tasks']} | "
            f"{s['ret_before']:.2f} | {s['ret_mean']:.2f} ± {s['ret_std']:.2f} | {s['cost_before']:.1f} | "
            f"{s['cost_mean']:.1f} ± {s['cost_std']:.1f} | {_pct(s['share_within_before'])} | "
            f"{s['within']}/{s['tasks']} ({_pct(s['share_within'])}) | {s['meta_env_steps']:,.0f} |"
        )
    md += [
        "",
        "## Every adaptation step",
        "",
        "| env | method | step | adaptation env steps | return | cost | within limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        md.append(
            f"| {r['env']} | {LABELS.get(r['method'], r['method'])} | {r['adapt_step']} | "
            f"{r['adapt_env_steps']:,} | {r['ret_mean']:.2f} ± {r['ret_std']:.2f} | "
            f"{r['cost_mean']:.1f} ± {r['cost_std']:.1f} | {r['within']}/{r['tasks']} "
            f"({_pct(r['share_within'])}) |"
        )
    plots = [
        ("adaptation.png", "return and cost per adaptation step"),
        ("share_within_limit.png", "share of test tasks within the limit"),
        ("training.png", "meta-training curves"),
    ]
    plots = [(f, t) for f, t in plots if (docs / f).is_file()]
    tail = [
        "Files: `docs/results/paper/paper_table.csv` (this table, machine-readable) and the plots "
        "next to it; every row of every run in `benchmarks/results/paper/paper_rows.csv`.",
        "",
    ]
    # the Markdown table next to the raw outputs: plots named, not linked (the file is also meant
    # to be included into a docs page with pymdownx.snippets, where a relative link would break)
    listed = ["Plots: " + ", ".join(f"`docs/results/paper/{f}` ({t})" for f, t in plots) + ".", ""]
    (out / "paper_table.md").write_text("\n".join([*md, "", *listed, *tail]))
    # the docs page, only when mkdocs.yml lists it: an unlisted page fails `mkdocs build --strict`
    page = docs / "index.md"
    if docs.resolve() == DOCS_OUT.resolve() and not _in_mkdocs_nav("results/paper/index.md"):
        page.unlink(missing_ok=True)
        return
    images = [line for f, t in plots for line in (f"![{t}]({f})", "")]
    page.write_text("\n".join([*md, "", *images, *tail]))


def _in_mkdocs_nav(page: str) -> bool:
    """Whether ``mkdocs.yml`` names ``page`` (so that a strict docs build accepts it)."""
    try:
        return page in (ROOT / "mkdocs.yml").read_text()
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, exit_on_error=True)
    if not cfg.report_only:
        try:
            run_all(effective(cfg))
        except KeyboardInterrupt as err:
            print(f"interrupted ({err}); run the benchmark again to resume", flush=True)
    report(effective(cfg))


if __name__ == "__main__":
    main()
