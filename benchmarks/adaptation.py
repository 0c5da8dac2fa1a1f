"""Adaptation to held-out tasks: does Meta-CPO do what the paper claims?

Runs ``python -m rl.meta_cpo`` for every method (``--algo meta-cpo``, ``fo-meta-cpo``,
``meta-trpo``, ``cpo-scratch``, ``multitask-cpo``) and seed on the built-in distribution
(``safenav-button``), each adapting on ``--test-tasks`` held-out test tasks (the test split, outside
the training ranges), then aggregates every finished run into ``--out`` (default
``benchmarks/results/adaptation``):

* ``adaptation_table.csv``: per method and adaptation step, mean +- std over (seed, task) of the
  episode return and cost (total and per channel), and the share of test tasks within the limit
  (every channel within its own limit, and the total within the summed limit);
* ``adaptation_summary.csv``: per method after the last adaptation step: return, cost, shares,
  and the env steps needed to get there (meta-training env steps from ``progress.csv`` plus the
  adaptation batches);
* ``adaptation_runs.csv``: one row per finished run (settings, env steps, seconds);
* ``adaptation_rows.csv``: every (method, seed, task, step) row of the runs' ``adaptation.csv``;
* ``README.md``: the tables, the targets (met or missed) and the scale that ran;
* ``adaptation.png`` (return and cost per adaptation step, limits dashed) and
  ``share_within_limit.png``.

Runs go one at a time (``--backend serial --threads 1``, ``nice``) into
``<out>/runs/<algo>-seed<S>/`` (kept out of git), seed 0 of every method first, then seed 1, ...
The benchmark resumes where it stopped: a run with an ``adaptation.csv`` is finished and skipped,
a run folder with a ``config.json`` is continued with ``--resume``. Start it again to go on::

    nice -n 10 .venv/bin/python benchmarks/adaptation.py             # run what is missing, report
    .venv/bin/python benchmarks/adaptation.py --report-only          # aggregate finished runs now
    .venv/bin/python benchmarks/adaptation.py --quick                # smoke test, tiny settings

Every other setting is ``rl.meta_cpo``'s default (the main job's), except ``--test-tasks``, as it
was when the folder's first run started: the settings are pinned in ``<out>/runs/settings.json``
and passed to every later run with ``--config``, so a change of the defaults never mixes settings
within one folder (use another ``--out`` for new settings).
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
from rl.meta_cpo import ALGOS, MetaCPOConfig  # noqa: E402
from rl.runtime import parse_config, read_csv  # noqa: E402

_iterations_done, _ms, _pct = _harness.iterations_done, _harness.mean_std, _harness.pct
_set_nice, _write_csv = _harness.set_nice, _harness.write_csv

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "adaptation"
LABELS = {
    "meta-cpo": "Meta-CPO",
    "fo-meta-cpo": "FO Meta-CPO",
    "meta-trpo": "Meta-TRPO",
    "cpo-scratch": "CPO from scratch",
    "multitask-cpo": "Multi-task CPO",
}
TARGET_SHARE = 0.9


@dataclass
class BenchConfig:
    """Meta-CPO and its baselines adapting to held-out tasks of safenav-button (resumable)."""

    methods: tuple[str, ...] = field(default=ALGOS, metadata={"help": "the --algo values to run"})
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2, 3, 4),
        metadata={"help": "seeds per method (run seed-major: seed 0 of every method first)"},
    )
    env: str = field(default="safenav-button", metadata={"help": "task distribution"})
    iterations: int = field(default=40, metadata={"help": "meta-iterations (cpo-scratch: none)"})
    test_tasks: int = field(default=10, metadata={"help": "held-out test tasks per run"})
    adapt_steps: int | None = field(
        default=None, metadata={"help": "CPO adaptation steps per test task (none: rl.meta_cpo's default)"}
    )
    batch_steps: int | None = field(
        default=None, metadata={"help": "env steps per batch (none: rl.meta_cpo's default)"}
    )
    adapt_batch_steps: int | None = field(
        default=None,
        metadata={"help": "env steps per adaptation/evaluation batch at meta-test (none: batch_steps)"},
    )
    adapt_confidence: float | None = field(
        default=None,
        metadata={
            "help": "cost_confidence of the adaptation steps at meta-test (none: the runs' cost_confidence)"
        },
    )
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "env steps of an independent evaluation batch of each test task's policy before "
            "and after adaptation (none: rl.meta_cpo's default, no such batch)"
        },
    )
    retest_from: str | None = field(
        default=None,
        metadata={
            "help": "another benchmark folder whose finished runs are copied and only meta-tested "
            "again with this folder's meta-test options (adapt_steps, adapt_batch_steps, "
            "adapt_confidence, eval_steps, test_tasks); training settings come from that folder"
        },
    )
    out: str = field(default=str(DEFAULT_OUT), metadata={"help": "aggregate outputs (runs under <out>/runs)"})
    report_only: bool = field(default=False, metadata={"help": "only aggregate the finished runs"})
    quick: bool = field(
        default=False,
        metadata={
            "help": "smoke test: --iterations 2 --test-tasks 2 --batch-steps 400, one seed, into "
            "<out>/runs/quick (never the main results)"
        },
    )
    diagnose: bool = field(
        default=False,
        metadata={
            "help": "also measure how well the linearised cost predicts the cost change of one "
            "inner step (on a finished meta-cpo run; writes adaptation_diagnosis.csv), then report"
        },
    )
    nice: int = field(default=10, metadata={"help": "niceness of the runs (at least this)"})
    poll: float = field(default=60.0, metadata={"help": "seconds between progress lines of a run"})

    def validate(self) -> None:
        if self.adapt_steps is not None and self.adapt_steps < 0:
            raise ValueError(f"adapt_steps must be >= 0 or none, got {self.adapt_steps}")
        if self.eval_steps is not None and self.eval_steps < 0:
            raise ValueError(f"eval_steps must be >= 0 or none, got {self.eval_steps}")
        if self.adapt_confidence is not None and not 0 < self.adapt_confidence < 1:
            raise ValueError(f"adapt_confidence must be in (0, 1) or none, got {self.adapt_confidence}")
        if self.retest_from is not None and not (Path(self.retest_from) / "runs" / "settings.json").is_file():
            raise ValueError(
                f"retest_from must be a benchmark folder with runs/settings.json, got {self.retest_from!r}"
            )
        if self.adapt_batch_steps is not None and self.adapt_batch_steps < 1:
            raise ValueError(f"adapt_batch_steps must be >= 1 or none, got {self.adapt_batch_steps}")
        bad = [m for m in self.methods if m not in ALGOS]
        if bad:
            raise ValueError(f"methods must be among {list(ALGOS)}, got {bad}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.iterations < 0 or self.test_tasks < 1:
            raise ValueError("iterations must be >= 0 and test_tasks >= 1")


# ============================================================================== running
#: Config keys that may differ between the runs of one benchmark (per run, or how it runs).
PER_RUN_KEYS = (
    "algo",
    "seed",
    "out",
    "resume",
    "progress",
    "tensorboard",
    "threads",
    "backend",
    "workers",
    "ray_address",
    "max_retries",
    "checkpoint_every",
    "keep_checkpoints",
)


#: rl.meta_cpo options that only the meta-test reads (a retest may change them).
META_TEST_KEYS = ("adapt_steps", "adapt_batch_steps", "adapt_confidence", "eval_steps")


def _settings(cfg: BenchConfig) -> tuple[Path, Path]:
    """(out folder for the aggregate, runs folder)."""
    out = Path(cfg.out)
    if cfg.quick:
        out = out / "runs" / "quick"
    return out, out / "runs"


def _shared(run_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run_cfg.items() if k not in PER_RUN_KEYS}


def _reference_settings(runs: Path) -> dict[str, Any] | None:
    """``runs/settings.json``, else the shared settings of the earliest run there, else None."""
    path = runs / "settings.json"
    if path.is_file():
        return json.loads(path.read_text())
    configs = sorted(runs.glob("*/config.json"), key=lambda q: q.stat().st_mtime)
    return _shared(json.loads(configs[0].read_text())) if configs else None


def pinned_settings(cfg: BenchConfig, runs: Path) -> dict[str, Any]:
    """The rl.meta_cpo settings every run of this runs folder uses (``runs/settings.json``).

    Written once, when the folder's first run starts: from the earliest finished or started run
    there if any, else from rl.meta_cpo's defaults at that moment plus this benchmark's options.
    Fresh runs get them with ``--config``, so a later change of rl.meta_cpo's defaults never mixes
    settings within one folder (start a new ``--out`` for new settings)."""
    path = runs / "settings.json"
    settings = _reference_settings(runs)
    if settings is None and cfg.retest_from is not None:  # the trained runs' settings + ours
        settings = json.loads((Path(cfg.retest_from) / "runs" / "settings.json").read_text())
        changed = {k: getattr(cfg, k) for k in (*META_TEST_KEYS, "test_tasks") if getattr(cfg, k) is not None}
        settings.update(changed)
        runs.mkdir(parents=True, exist_ok=True)
        (runs / "retest.json").write_text(
            json.dumps({"from": str(cfg.retest_from), "changed": changed}, indent=1)
        )
    if settings is None or not path.is_file():
        if settings is None:
            from dataclasses import asdict

            settings = _shared(asdict(MetaCPOConfig()))
            settings.update(env=cfg.env, iterations=cfg.iterations, test_tasks=cfg.test_tasks)
            if cfg.adapt_steps is not None:
                settings["adapt_steps"] = cfg.adapt_steps
            for name in ("batch_steps", *META_TEST_KEYS):
                if getattr(cfg, name) is not None:
                    settings[name] = getattr(cfg, name)
            if cfg.quick:
                settings.update(iterations=2, test_tasks=2, batch_steps=400, num_envs=10)
        runs.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))
    asked = {"env": cfg.env}
    if not cfg.quick:
        asked.update(iterations=cfg.iterations, test_tasks=cfg.test_tasks)
        for name in ("batch_steps", *META_TEST_KEYS):
            if getattr(cfg, name) is not None:
                asked[name] = getattr(cfg, name)
    differ = {k: (v, settings.get(k)) for k, v in asked.items() if settings.get(k) != v}
    if differ:
        print(
            f"warning: {runs} is pinned to other settings ({', '.join(f'{k}: asked {a}, pinned {b}' for k, (a, b) in differ.items())}); "
            "the pinned ones are used: give another --out for new settings",
            flush=True,
        )
    return settings


def _run_order(cfg: BenchConfig) -> list[tuple[str, int]]:
    seeds = cfg.seeds[:1] if cfg.quick else cfg.seeds
    return [(algo, seed) for seed in seeds for algo in cfg.methods]


def _load_timings(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_timings(path: Path, timings: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(timings, indent=1, sort_keys=True))
    tmp.replace(path)


def run_all(cfg: BenchConfig) -> None:
    """Run every missing (method, seed), one at a time, resuming interrupted ones."""
    out, runs = _settings(cfg)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "logs").mkdir(exist_ok=True)
    lock_file = open(runs / ".lock", "a+")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"{runs}: another benchmark (or a run it started) still holds the lock; wait for it")
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()

    settings = pinned_settings(cfg, runs)
    settings_file = runs / "settings.json"
    timings_path = runs / "timings.json"
    timings = _load_timings(timings_path)
    order = _run_order(cfg)
    total_iters = int(settings["iterations"])
    print(
        f"adaptation benchmark: {len(order)} runs ({', '.join(cfg.methods)}; seeds "
        f"{', '.join(map(str, cfg.seeds[:1] if cfg.quick else cfg.seeds))}) into {runs}",
        flush=True,
    )
    child: subprocess.Popen | None = None

    def _stop(signum, _frame):  # forward to the run; its checkpoints make the stop safe
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _stop)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for n, (algo, seed) in enumerate(order, 1):
        name = f"{algo}-seed{seed}"
        run_dir = runs / name
        tag = f"[{n}/{len(order)}] {name}"
        if (run_dir / "adaptation.csv").is_file():
            print(f"{tag}: finished before, skipped", flush=True)
            continue
        base = [sys.executable, "-m", "rl.meta_cpo", "--backend", "serial", "--threads", "1", "--progress"]
        if cfg.retest_from is not None and not (run_dir / "config.json").is_file():
            source = Path(cfg.retest_from) / "runs" / name
            if not (source / "adaptation.csv").is_file():
                print(f"{tag}: {source} is not finished, skipped", flush=True)
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)
            keys = (*META_TEST_KEYS, "test_tasks")
            _harness.retest_copy(source, run_dir, {k: settings[k] for k in keys if k in settings})
        if (run_dir / "config.json").is_file():
            cmd = [*base, "--resume", str(run_dir), "--iterations", str(total_iters)]
            how = f"resumed at iteration {_iterations_done(run_dir)}"
        else:
            if run_dir.exists():  # killed before its config was written: nothing to keep
                shutil.rmtree(run_dir)
            cmd = [
                *base,
                "--config",
                str(settings_file),
                "--algo",
                algo,
                "--seed",
                str(seed),
                "--out",
                str(run_dir),
            ]
            how = "started"
        finished = sum((runs / f"{a}-seed{s}" / "adaptation.csv").is_file() for a, s in order)
        done_times = [t["wall_s"] for t in timings.values() if t.get("finished")]
        eta = ""
        if done_times:
            eta = f", about {np.mean(done_times) * (len(order) - finished) / 60:.0f} min left"
        print(f"{tag}: {how} ({finished}/{len(order)} finished{eta})", flush=True)
        t0 = time.time()
        rc = None
        try:
            with open(runs / "logs" / f"{name}.log", "a") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
                log.flush()
                child = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
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
                        total = 0 if algo == "cpo-scratch" else total_iters
                        phase = (
                            f"iteration {_iterations_done(run_dir)}/{total}"
                            if _iterations_done(run_dir) < total
                            else "meta-test"
                        )
                        print(f"{tag}: {phase}, {time.time() - t0:.0f} s", flush=True)
        finally:
            entry = timings.setdefault(name, {"wall_s": 0.0, "sessions": 0, "finished": False})
            entry["wall_s"] = round(entry["wall_s"] + time.time() - t0, 1)
            entry["sessions"] += 1
            entry["finished"] = (run_dir / "adaptation.csv").is_file()
            _save_timings(timings_path, timings)
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
def _limits(run_cfg: dict[str, Any], channels: list[str]) -> list[float]:
    """The per-channel limits a run is judged against (meta-trpo: the same limits, unused)."""
    raw = run_cfg.get("cost_limit", MetaCPOConfig.cost_limit)
    values = [float(v) for v in raw] if isinstance(raw, list | tuple) else [float(raw)]
    if run_cfg.get("constrain", "channels") == "total":
        return [sum(values) if len(values) > 1 else values[0]]
    return values * len(channels) if len(values) == 1 else values


def load_runs(runs: Path) -> list[dict[str, Any]]:
    """Every finished run under ``runs`` (a folder with adaptation.csv and config.json)."""
    timings = _load_timings(runs / "timings.json")
    found = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        if not ((run_dir / "adaptation.csv").is_file() and (run_dir / "config.json").is_file()):
            continue
        run_cfg = json.loads((run_dir / "config.json").read_text())
        rows = read_csv(run_dir / "adaptation.csv")
        if not rows:
            continue
        channels = [c[5:] for c in rows[0] if c.startswith("cost_") and c != "cost_limit"]
        progress = read_csv(run_dir / "progress.csv") if (run_dir / "progress.csv").is_file() else []
        evaluation = read_csv(run_dir / "evaluation.csv") if (run_dir / "evaluation.csv").is_file() else []
        algo = run_cfg["algo"]
        found.append(
            {
                "name": run_dir.name,
                "algo": algo,
                "seed": int(run_cfg["seed"]),
                "cfg": run_cfg,
                "rows": rows,
                "eval": evaluation,
                "channels": channels,
                "limits": _limits(run_cfg, channels),
                "iterations": len(progress),
                "meta_env_steps": int(float(progress[-1]["env_steps"])) if progress else 0,
                "train_seconds": float(progress[-1]["seconds"]) if progress else 0.0,
                "wall_s": timings.get(run_dir.name, {}).get("wall_s", math.nan),
                "sessions": timings.get(run_dir.name, {}).get("sessions", 0),
            }
        )
    return found


def _within(row: dict[str, str], run: dict[str, Any]) -> tuple[bool, bool]:
    """(every constrained quantity within its limit, the total within the summed limit)."""
    total = float(row["ep_cost"])
    limits = run["limits"]
    if run["cfg"].get("constrain", "channels") == "total" or not run["channels"]:
        ok = total <= limits[0]
    else:
        ok = all(float(row[f"cost_{ch}"]) <= lim for ch, lim in zip(run["channels"], limits, strict=True))
    return ok, total <= sum(limits) if len(limits) > 1 else total <= limits[0]


def aggregate(found: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(raw rows, per-step table, per-method summary, per-run table)."""
    methods = [m for m in ALGOS if any(r["algo"] == m for r in found)]
    channels = next((r["channels"] for r in found), [])
    raw: list[dict[str, Any]] = []
    per_step: dict[str, dict[int, list[tuple[dict, dict]]]] = defaultdict(lambda: defaultdict(list))
    for run in found:
        for row in run["rows"]:
            raw.append(row)
            per_step[run["algo"]][int(row["adapt_step"])].append((row, run))
    table, summary, run_table = [], [], []
    for m in methods:
        steps = sorted(per_step[m])
        runs_m = [r for r in found if r["algo"] == m]
        batch = _adapt_batch(runs_m[0]["cfg"])
        for k in steps:
            pairs = per_step[m][k]
            rm, rs = _ms([float(r["ep_ret"]) for r, _ in pairs])
            cm, cs = _ms([float(r["ep_cost"]) for r, _ in pairs])
            within = [_within(r, run) for r, run in pairs]
            entry = {
                "method": m,
                "adapt_step": k,
                "adapt_env_steps": k * batch,
                "seeds": len({run["seed"] for _, run in pairs}),
                "tasks": len(pairs),
                "ret_mean": rm,
                "ret_std": rs,
                "cost_mean": cm,
                "cost_std": cs,
            }
            for ch in channels:
                entry[f"cost_{ch}_mean"], entry[f"cost_{ch}_std"] = _ms(
                    [float(r[f"cost_{ch}"]) for r, _ in pairs]
                )
            entry["share_within_channels"] = float(np.mean([w[0] for w in within]))
            entry["share_within_total"] = float(np.mean([w[1] for w in within]))
            table.append(entry)
        last = table[-1]
        per_seed_share = []
        for run in runs_m:
            final = [r for r in run["rows"] if int(r["adapt_step"]) == steps[-1]]
            per_seed_share.append(np.mean([_within(r, run)[0] for r in final]))
        evaluated = {}  # the independent evaluation batches (rl.meta_cpo --eval-steps), if every run has them
        if all(run["eval"] for run in runs_m):
            for when, pick in (("before", min), ("after", max)):
                pairs = []
                for run in runs_m:
                    k = pick(int(r["adapt_step"]) for r in run["eval"])
                    pairs += [(r, run) for r in run["eval"] if int(r["adapt_step"]) == k]
                ok = [_within(r, run) for r, run in pairs]
                evaluated.update(
                    {
                        f"eval_{when}_ret": float(np.mean([float(r["ep_ret"]) for r, _ in pairs])),
                        f"eval_{when}_cost": float(np.mean([float(r["ep_cost"]) for r, _ in pairs])),
                        **{
                            f"eval_{when}_cost_{ch}": float(
                                np.mean([float(r[f"cost_{ch}"]) for r, _ in pairs])
                            )
                            for ch in channels
                        },
                        f"eval_{when}_within_channels": int(sum(o[0] for o in ok)),
                        f"eval_{when}_within_total": int(sum(o[1] for o in ok)),
                        f"eval_{when}_tasks": len(ok),
                    }
                )
            evaluated["eval_episodes"] = int(float(runs_m[0]["eval"][0]["episodes"]))
            evaluated["eval_sem_mean"] = float(
                np.mean([float(r[f"sem_{ch}"]) for run in runs_m for r in run["eval"] for ch in channels])
            )
        meta_steps = float(np.mean([r["meta_env_steps"] for r in runs_m]))
        adapt_steps = int(runs_m[0]["cfg"]["adapt_steps"])
        summary.append(
            {
                "method": m,
                "seeds": len(runs_m),
                "tasks": last["tasks"],
                "adapt_steps": adapt_steps,
                "ret_mean": last["ret_mean"],
                "ret_std": last["ret_std"],
                "cost_mean": last["cost_mean"],
                "cost_std": last["cost_std"],
                **{f"cost_{ch}_mean": last[f"cost_{ch}_mean"] for ch in channels},
                "limits": " ".join(f"{v:g}" for v in runs_m[0]["limits"]),
                "within_channels": int(round(last["share_within_channels"] * last["tasks"])),
                "share_within_channels": last["share_within_channels"],
                "share_within_channels_seed_std": float(np.std(per_seed_share)),
                "within_total": int(round(last["share_within_total"] * last["tasks"])),
                "share_within_total": last["share_within_total"],
                "meta_iterations": float(np.mean([r["iterations"] for r in runs_m])),
                "meta_env_steps": meta_steps,
                "adapt_env_steps_per_task": adapt_steps * batch,
                "env_steps_total": meta_steps + adapt_steps * batch,
                "wall_s_per_run": float(np.nanmean([r["wall_s"] for r in runs_m])) if runs_m else math.nan,
                **evaluated,
            }
        )
    for run in found:
        c = run["cfg"]
        run_table.append(
            {
                "run": run["name"],
                "method": run["algo"],
                "seed": run["seed"],
                "env": c["env"],
                "meta_iterations": run["iterations"],
                "meta_batch": c["meta_batch"],
                "inner_steps": c["inner_steps"],
                "batch_steps": c["batch_steps"],
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
def plot(table: list[dict[str, Any]], summary: list[dict[str, Any]], limits: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = [s["method"] for s in summary]
    channels = [
        k[5:-5] for k in table[0] if k.startswith("cost_") and k.endswith("_mean") and k != "cost_mean"
    ]
    panels = [("ret", "episode return", None), ("cost", "episode cost (total)", sum(limits))]
    if len(channels) == len(limits):
        panels += [(f"cost_{ch}", f"cost: {ch}", lim) for ch, lim in zip(channels, limits, strict=True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for i, m in enumerate(methods):
        rows = [r for r in table if r["method"] == m]
        x = [r["adapt_step"] for r in rows]
        for ax, (key, _, _) in zip(axes[0], panels, strict=True):
            mean = np.array([r[f"{key}_mean"] for r in rows])
            std = np.array([r[f"{key}_std"] for r in rows])
            ax.plot(x, mean, marker="o", markersize=3, color=f"C{i}", label=LABELS.get(m, m))
            ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.1, linewidth=0)
    for ax, (_, title, lim) in zip(axes[0], panels, strict=True):
        if lim is not None:
            ax.axhline(lim, color="k", linestyle="--", linewidth=1.0, label=f"limit {lim:g}")
        ax.set_title(title)
        ax.set_xlabel("adaptation step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[0][1].legend(fontsize=7)
    n = ", ".join(f"{LABELS.get(s['method'], s['method'])}: {s['seeds']} seeds" for s in summary)
    fig.suptitle(f"held-out test tasks, mean ± std over seeds and tasks ({n})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "adaptation.png", dpi=110)
    plt.close(fig)

    fig, (ax_l, ax_b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, m in enumerate(methods):
        rows = [r for r in table if r["method"] == m]
        ax_l.plot(
            [r["adapt_step"] for r in rows],
            [100 * r["share_within_channels"] for r in rows],
            marker="o",
            markersize=3,
            color=f"C{i}",
            label=LABELS.get(m, m),
        )
    ax_l.axhline(100 * TARGET_SHARE, color="k", linestyle="--", linewidth=1.0, label="target 90%")
    ax_l.set_title("test tasks within every channel's limit (adaptation batches)")
    ax_l.set_xlabel("adaptation step")
    ax_l.set_ylabel("% of test tasks")
    ax_l.set_ylim(-3, 103)
    ax_l.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=7)
    pos = np.arange(len(methods))
    judged = [_judged(s) for s in summary]  # the independent evaluation where the runs have one
    ch = [100 * j[0] / j[2] for j in judged]
    tot = [100 * j[1] / j[2] for j in judged]
    colors = [f"C{i}" for i in pos]
    ax_b.bar(pos - 0.2, ch, 0.4, color=colors)
    ax_b.bar(pos + 0.2, tot, 0.4, color=colors, alpha=0.45, hatch="//", edgecolor="0.3")
    for p, a, b in zip(pos, ch, tot, strict=True):
        ax_b.text(p - 0.2, a + 1, f"{a:.0f}", ha="center", fontsize=7)
        ax_b.text(p + 0.2, b + 1, f"{b:.0f}", ha="center", fontsize=7)
    ax_b.axhline(100 * TARGET_SHARE, color="k", linestyle="--", linewidth=1.0)
    ax_b.set_xticks(pos, [LABELS.get(m, m) for m in methods], fontsize=7, rotation=15)
    ax_b.set_ylim(0, 112)
    ax_b.set_ylabel("% of test tasks")
    on = (
        "independent evaluation" if all("eval_after_tasks" in s for s in summary) else "last adaptation batch"
    )
    ax_b.set_title(
        f"after adaptation ({on}): solid = every channel within\nits limit, hatched = total within the summed limit",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "share_within_limit.png", dpi=110)
    plt.close(fig)


# ============================================================================== diagnosis
def diagnose(cfg: BenchConfig, repeats: int = 3, eval_factor: int = 10) -> Path | None:
    """Linearised vs actual cost change of a pure cost-descent inner step.

    On test task 0 of the first finished meta-cpo run (its trained meta-policy and critics): for a
    batch of ``batch_steps`` (``repeats`` times) and one of ``eval_factor * batch_steps``, per cost
    channel, the natural-gradient step of KL size ``inner_delta`` that descends that channel's
    surrogate ``L_C``; the linear model predicts the per-episode cost change ``a'x``; the actual
    change is measured on ``eval_factor * batch_steps`` env steps before and after."""
    from dataclasses import replace

    import torch

    from difftrust import FisherMetric, TrustRegionStep
    from rl.cpo import surrogates
    from rl.meta_cpo import MetaCPOTrainer, derive_seed

    out, runs = _settings(cfg)
    run_dir = runs / f"meta-cpo-seed{(cfg.seeds[0])}"
    if not (run_dir / "adaptation.csv").is_file():
        print(f"diagnosis skipped: {run_dir} has not finished", flush=True)
        return None
    torch.set_num_threads(1)
    trainer = MetaCPOTrainer.from_run(run_dir)
    rc, setup = trainer.cfg, trainer.setup
    task = trainer.dist.sample(1, split="test", seed=derive_seed(rc.seed, 0, 0, 6))[0]
    env = setup.make_env(task, derive_seed(rc.seed, 0, 0, 8))
    gen = torch.Generator().manual_seed(derive_seed(rc.seed, 0, 0, 9))
    big = replace(setup, cfg=replace(rc, batch_steps=eval_factor * rc.batch_steps))
    theta = trainer.theta.detach().clone()
    rows = []
    try:
        before = np.asarray(big.collect(env, theta, gen).ep_cost, dtype=float)
        for size, reps in ((rc.batch_steps, repeats), (eval_factor * rc.batch_steps, 1)):
            sampler = setup if size == rc.batch_steps else big
            for rep in range(reps):
                batch = sampler.collect(env, theta, gen)
                for j, ch in enumerate(setup.cost_channels):
                    p = theta.clone().requires_grad_(True)
                    _, loss_c = surrogates(setup.policy, p, batch)
                    (a,) = torch.autograd.grad(loss_c[j], p)
                    metric = FisherMetric(
                        lambda ref, q, o=batch.obs: setup.policy.kl(ref, q, o), theta, rc.damping
                    )
                    step = TrustRegionStep(delta=rc.inner_delta, cg_iters=rc.cg_iters, cg_tol=rc.cg_tol)
                    x = step.solve(-a, None, None, metric).x.detach()
                    after = np.asarray(big.collect(env, theta + x, gen).ep_cost, dtype=float)
                    rows.append(
                        {
                            "run": run_dir.name,
                            "batch_steps": size,
                            "repeat": rep,
                            "channel": ch,
                            "batch_cost": float(batch.ep_cost[j]),
                            "cost_before": float(before[j]),
                            "predicted_change": float(a @ x),
                            "actual_change": float(after[j] - before[j]),
                            "kl": float(setup.policy.kl(theta, theta + x, batch.obs)),
                            "eval_steps": eval_factor * rc.batch_steps,
                        }
                    )
                    print(f"diagnosis: {rows[-1]}", flush=True)
    finally:
        env.close()
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "adaptation_diagnosis.csv", rows)
    return out / "adaptation_diagnosis.csv"


def _diagnosis_md(out: Path) -> list[str]:
    path = out / "adaptation_diagnosis.csv"
    if not path.is_file():
        return []
    rows = read_csv(path)
    md = [
        "## Why the constraint does not bite: the linearised cost is far too optimistic",
        "",
        "Measured by `benchmarks/adaptation.py --diagnose` on test task 0 of "
        f"`{rows[0]['run']}` (its trained meta-policy and critics): for each cost channel, the "
        "natural-gradient step of KL size `inner_delta` that purely *descends* that channel's cost "
        "surrogate (the direction CPO's constraint relies on), estimated from one batch; the linear "
        "model's predicted change of the per-episode cost (`a'x`) against the actual change, both "
        f"measured on {int(rows[0]['eval_steps']):,} env steps before and after.",
        "",
        "| batch steps for the gradient | channel | cost before | predicted change | actual change | KL |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {int(r['batch_steps']):,} | {r['channel']} | {float(r['cost_before']):.2f} | "
            f"{float(r['predicted_change']):+.2f} | {float(r['actual_change']):+.2f} | {float(r['kl']):.4f} |"
        )
    md += [
        "",
        "Mean over channels and repeats, predicted vs actual change of the per-episode cost: "
        + "; ".join(
            f"gradient from {size:,} steps: {np.mean([float(r['predicted_change']) for r in rows if int(r['batch_steps']) == size]):+.2f} "
            f"predicted, {np.mean([float(r['actual_change']) for r in rows if int(r['batch_steps']) == size]):+.2f} actual"
            for size in sorted({int(r["batch_steps"]) for r in rows})
        )
        + ". Where the predicted decrease is many times the actual one, the estimated cost "
        "gradient is dominated by sampling noise (noise inflates its Fisher norm, hence the "
        "decrease the linear model promises inside the trust region), so the linearised "
        "constraint `b + a'x <= 0` looks satisfiable (inner case `trust-region` or `constrained` "
        "rather than `recovery`) while the true cost moves by a small fraction of the promised "
        "change: a property of the gradient estimator at these batch sizes, not of the "
        "trust-region solver (whose KL stays inside the trust region, column KL).",
        "",
    ]
    return md


# ============================================================================== report
def _secs(value: float) -> str:
    """Seconds for the tables ("-" where not measured, e.g. a run moved in from elsewhere)."""
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.0f}"


def _eval_steps(found: list[dict[str, Any]]) -> int:
    """Env steps of the runs' independent evaluation batches."""
    return int(float(next(run["eval"][0]["env_steps"] for run in found if run["eval"])))


def _adapt_batch(run_cfg: dict[str, Any]) -> int:
    """Env steps of one adaptation/evaluation batch of a run."""
    return int(run_cfg.get("adapt_batch_steps") or run_cfg["batch_steps"])


def _episodes(run_cfg: dict[str, Any], steps: int | None = None) -> int:
    """Full episodes in one batch of ``steps`` env steps (default: a training batch) of a run,
    its sub-environments scaled with the batch (the built-in families' horizon is 200)."""
    horizon = int(run_cfg.get("horizon") or 200)
    batch = int(run_cfg["batch_steps"])
    steps = batch if steps is None else steps
    envs = max(1, round(int(run_cfg["num_envs"]) * steps / batch))
    return (steps // envs) // horizon * envs


def _judged(s: dict[str, Any]) -> tuple[int, int, int, str]:
    """(tasks within every channel's limit, within the total limit, tasks, on what) after
    adaptation: the independent evaluation batches where the runs have them, else the last
    on-policy batch."""
    if "eval_after_tasks" in s:
        return (
            s["eval_after_within_channels"],
            s["eval_after_within_total"],
            s["eval_after_tasks"],
            f"independent evaluation, {s['eval_episodes']} episodes per policy",
        )
    return s["within_channels"], s["within_total"], s["tasks"], "the last on-policy batch"


def targets(summary: list[dict[str, Any]]) -> list[str]:
    """The paper's claims as checks against the summary (met / missed / not measured)."""
    by = {s["method"]: s for s in summary}
    mc, mt = by.get("meta-cpo"), by.get("meta-trpo")
    lines = []
    if mc is None:
        return ["- Meta-CPO has no finished run yet: no target can be judged."]
    c_ok, c_tot, c_n, how = _judged(mc)
    ok = c_ok / c_n >= TARGET_SHARE
    also = (
        f" On the last on-policy adaptation batch ({mc['tasks']} tasks, noisier): "
        f"{mc['within_channels']}/{mc['tasks']} = {_pct(mc['share_within_channels'])}."
        if "eval_after_tasks" in mc
        else ""
    )
    lines.append(
        f"- **Meta-CPO within the limit on >= 90% of test tasks after adaptation: "
        f"{'MET' if ok else 'MISSED'}** ({c_ok}/{c_n} = {_pct(c_ok / c_n)} within every channel's "
        f"limit; total within the summed limit: {c_tot}/{c_n} = {_pct(c_tot / c_n)}; judged on {how}).{also}"
    )
    if mt is None:
        lines.append(
            "- Meta-CPO more often within the limit than Meta-TRPO: not measured (no Meta-TRPO run)."
        )
    else:
        t_ok, t_tot, t_n, _ = _judged(mt)
        ok = c_ok / c_n > t_ok / t_n
        gap = c_ok - t_ok
        small = (
            f" A gap of {gap:+d} task(s) out of {c_n}: within the sampling noise, so the share alone "
            "is not evidence of a difference (the mean cost after adaptation, next to it, is the "
            "steadier comparison)."
            if abs(gap) <= 2
            else ""
        )
        lines.append(
            f"- **Meta-CPO within the limit more often than Meta-TRPO: {'MET' if ok else 'MISSED'}** "
            f"({c_ok}/{c_n} = {_pct(c_ok / c_n)} vs {t_ok}/{t_n} = {_pct(t_ok / t_n)}; total: "
            f"{_pct(c_tot / c_n)} vs {_pct(t_tot / t_n)}; mean cost after "
            f"adaptation {mc['cost_mean']:.2f} vs {mt['cost_mean']:.2f}).{small}"
        )
    keep = [s for s in summary if _judged(s)[0] / _judged(s)[2] >= TARGET_SHARE]
    if not keep:
        lines.append(
            "- **Meta-CPO has the highest return among the methods that keep the limit: MISSED** "
            "(no method keeps it on >= 90% of the test tasks)."
        )
    else:
        ret = {s["method"]: s.get("eval_after_ret", s["ret_mean"]) for s in summary}
        best = max(keep, key=lambda s: ret[s["method"]])
        ok = best["method"] == "meta-cpo"
        names = ", ".join(f"{LABELS[s['method']]} {ret[s['method']]:.2f}" for s in keep)
        others = ", ".join(
            f"{LABELS[s['method']]} {ret[s['method']]:.2f} ({_pct(_judged(s)[0] / _judged(s)[2])})"
            for s in summary
            if s not in keep
        )
        lines.append(
            f"- **Meta-CPO has the highest return among the methods that keep the limit "
            f"(>= 90% of tasks within every channel's limit): {'MET' if ok else 'MISSED'}** "
            f"(methods keeping it, return after adaptation: {names}"
            + (f"; not keeping it: {others}" if others else "")
            + ")."
        )
    lines.append(
        "  For reference, mean cost after adaptation against the limits (a weaker reading of "
        '"keeps the limit"): '
        + "; ".join(
            f"{LABELS[s['method']]} {s.get('eval_after_cost', s['cost_mean']):.2f} / "
            f"{sum(map(float, s['limits'].split())):g}"
            for s in summary
        )
        + "."
    )
    return lines


def report(cfg: BenchConfig) -> None:
    """Aggregate every finished run into the CSV / Markdown / PNG outputs."""
    out, runs = _settings(cfg)
    if not runs.is_dir():
        print(f"no runs under {runs} yet", flush=True)
        return
    found = load_runs(runs)
    if not found:
        print(f"no finished runs under {runs} yet", flush=True)
        return
    # one setting per folder: runs made with other settings are held back (and named)
    reference = _reference_settings(runs)
    mismatched: list[str] = []
    soft: dict[str, set[str]] = defaultdict(set)  # key -> runs whose config has it (or lacks it)
    if reference is not None:
        kept = []
        for r in found:
            shared = _shared(r["cfg"])
            # a pinned None is rl.meta_cpo's default, which the run's config.json records resolved
            # (num_envs: batch_steps // horizon)
            diff = sorted(
                k
                for k in set(reference) & set(shared)
                if reference[k] is not None and shared[k] != reference[k]
            )
            if diff:
                mismatched.append(f"{r['name']} ({', '.join(f'{k} {shared.get(k)}' for k in diff)})")
                continue
            # a key only one side has: an option rl.meta_cpo gained between the runs (its default
            # keeps or approximates the earlier behaviour); aggregated, and named in the README
            for k in set(reference) ^ set(shared):
                soft[k].add(f"{r['name']}: {shared.get(k, 'absent')}")
            kept.append(r)
        found = kept
        if not found:
            print(f"no finished runs with the settings of {runs} yet", flush=True)
            return
    # compare methods on the same test tasks: only seeds that every method has finished
    by_seed: dict[int, set[str]] = defaultdict(set)
    for r in found:
        by_seed[r["seed"]].add(r["algo"])
    complete = {seed for seed, algos in by_seed.items() if set(cfg.methods) <= algos}
    held_back = sorted(r["name"] for r in found if r["seed"] not in complete) if complete else []
    all_found = found
    if complete:
        found = [r for r in found if r["seed"] in complete]
    raw, table, summary, run_table = aggregate(found)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "adaptation_rows.csv", raw)
    _write_csv(out / "adaptation_table.csv", table)
    _write_csv(out / "adaptation_summary.csv", summary)
    _write_csv(out / "adaptation_runs.csv", run_table)
    channels = found[0]["channels"]
    limits = found[0]["limits"]
    plot(table, summary, limits, out)

    order = _run_order(cfg)
    done = {r["name"] for r in all_found}
    pending = [f"{a}-seed{s}" for a, s in order if f"{a}-seed{s}" not in done]
    planned = {f"{a}-seed{s}" for a, s in order}
    extra_runs = sorted(done - planned)
    c0 = found[0]["cfg"]
    retest = json.loads((runs / "retest.json").read_text()) if (runs / "retest.json").is_file() else None
    lim_text = ", ".join(f"{ch} {v:g}" for ch, v in zip(channels, limits, strict=False))
    md = [
        "# Adaptation to held-out tasks (safenav-button)",
        "",
        "Generated by `benchmarks/adaptation.py` from the finished runs under `runs/` (not in git). "
        "Question: does Meta-CPO do what the paper (Cho & Sun, AAAI-24) claims — adapt to unseen "
        "tasks while keeping the cost limit?",
        "",
        f"Setting: `{c0['env']}`, test split (arena, button and hazard counts outside the training "
        f"ranges), per-episode cost limit per channel ({lim_text}; the total limit is their sum, "
        f"{sum(limits):g}), {c0['adapt_steps']} CPO adaptation steps per test task (TRPO steps for "
        f"Meta-TRPO) on batches of {_adapt_batch(c0):,} env steps, the adaptation steps constraining "
        f"the cost at confidence {c0.get('adapt_confidence') or c0.get('cost_confidence', 0.5)} "
        "(0.5: the estimated mean; higher: the mean plus that many standard errors), "
        f"{c0['batch_steps']} env steps per meta-training batch, {c0['num_envs']} sub-environments, "
        f"meta-batch {c0['meta_batch']}, {c0['inner_steps']} inner steps, inner delta "
        f"{c0['inner_delta']}, meta delta {c0['meta_delta']}; otherwise `rl.meta_cpo`'s defaults as of the folder's first run (pinned in "
        "`runs/settings.json`). "
        + (
            f"The runs are copies of the trained runs of `{retest['from']}`, meta-tested again "
            "here with other meta-test options (`benchmarks/adaptation.py --retest-from`; "
            f"changed: {', '.join(f'`{k}` {v}' for k, v in retest['changed'].items())}); their "
            "meta-training is that folder's. "
            if retest
            else ""
        )
        + "A test task's cost after step k is the mean episode cost of the on-policy batch of the "
        "adapted policy phi^k (k = 0: the meta-policy before adaptation). Test tasks differ "
        "between seeds and are shared by the methods of one seed.",
        "",
        "## Scale that ran",
        "",
        f"{len(done & planned)} of {len(order)} planned runs finished "
        f"({len(cfg.methods)} methods × seeds {', '.join(map(str, sorted({s for _, s in order})))}, "
        "seed-major order)"
        + (f"; pending: {', '.join(pending)}" if pending else "")
        + (f"; also aggregated: {', '.join(extra_runs)}" if extra_runs else "")
        + ". Aggregated below: seeds "
        + (", ".join(map(str, sorted(complete))) if complete else "(none complete: every finished run)")
        + f" ({len(found)} runs; only seeds finished by every method, so that all methods meet the "
        "same test tasks)"
        + (
            f"; finished but held back until their seed is complete: {', '.join(held_back)}"
            if held_back
            else ""
        )
        + (
            "; finished with other settings than this folder's `runs/settings.json`, left out: "
            + "; ".join(mismatched)
            if mismatched
            else ""
        )
        + ".",
        "",
        *(
            [
                "Options that `rl.meta_cpo` gained while the runs were made (absent from the older "
                "runs' config.json, at their default in the newer ones; aggregated together): "
                + "; ".join(
                    f"`{k}` ({', '.join(sorted(v))} vs the folder's reference: {reference.get(k, 'absent')})"
                    for k, v in sorted(soft.items())
                )
                + "."
                + (
                    " `fisher_states` 2000 with 2,000-step batches leaves every inner Fisher metric "
                    "as it was (stride 1) and builds the meta-update's Fisher on 2,000 of the "
                    "meta-batch's 8,000 first-batch states (an even stride) instead of all of them."
                    if "fisher_states" in soft and c0["batch_steps"] == 2000 and c0["meta_batch"] == 4
                    else ""
                ),
                "",
            ]
            if soft
            else []
        ),
        "| run | meta-iterations | meta-train env steps | test tasks | train s | wall s (sessions) |",
        "|---|---|---|---|---|---|",
    ]
    for r in run_table:
        md.append(
            f"| {r['run']} | {r['meta_iterations']} | {r['meta_env_steps']:,} | {r['test_tasks']} | "
            f"{r['train_seconds']:.0f} | {_secs(r['wall_seconds'])} ({r['sessions']}) |"
        )
    md += [
        "",
        "Wall seconds cover meta-training and meta-test of a run as launched by the benchmark "
        "(one at a time, `--backend serial --threads 1`, `nice 10`, on a shared 2-core machine: "
        "timings include contention from other jobs).",
        "",
        "## Targets",
        "",
        *targets(summary),
        "",
        "## After adaptation, per method",
        "",
        "Mean ± std over seeds and test tasks. Within limit: the test task's mean episode cost is "
        "within every channel's limit (the constraints the methods are given); total: the summed "
        "cost within the summed limit. Env steps to get there: meta-training env steps (last row "
        "of `progress.csv`, mean over seeds; 0 for CPO from scratch, which has no meta-training by "
        "design) plus the adaptation batches of one test task (adaptation steps × batch steps; the "
        "evaluation batch of the final policy is not counted).",
        "",
        "| method | seeds | tasks | return | cost (total) | "
        + " | ".join(f"cost {ch}" for ch in channels)
        + " | within every channel's limit | total within limit | meta-train env steps "
        "| + adaptation env steps | total env steps | wall s/run |",
        "|---|---|---|---|---|" + "---|" * len(channels) + "---|---|---|---|---|---|",
    ]
    for s in summary:
        md.append(
            f"| {LABELS.get(s['method'], s['method'])} | {s['seeds']} | {s['tasks']} | "
            f"{s['ret_mean']:.2f} ± {s['ret_std']:.2f} | {s['cost_mean']:.2f} ± {s['cost_std']:.2f} | "
            + " | ".join(f"{s[f'cost_{ch}_mean']:.2f}" for ch in channels)
            + f" | {s['within_channels']}/{s['tasks']} ({_pct(s['share_within_channels'])}) | "
            f"{s['within_total']}/{s['tasks']} ({_pct(s['share_within_total'])}) | "
            f"{s['meta_env_steps']:,.0f} | {s['adapt_env_steps_per_task']:,} | {s['env_steps_total']:,.0f} | "
            f"{_secs(s['wall_s_per_run'])} |"
        )
    evaluated = [s for s in summary if "eval_after_tasks" in s]
    if evaluated:
        e0 = evaluated[0]
        adapt_episodes = max(_episodes(c0, _adapt_batch(c0)), 1)
        md += [
            "",
            f"## Independent evaluation ({e0['eval_episodes']} episodes per policy)",
            "",
            f"Each test task's policy before adaptation (the meta-policy) and after the last step, "
            f"run on a separate batch of {_eval_steps(found):,} env steps (`--eval-steps`; the same "
            "seed before and after, never used for a step): the mean episode cost has a standard "
            f"error of about {e0['eval_sem_mean']:.2f} per channel ({LABELS.get(e0['method'], e0['method'])}), "
            f"against about {e0['eval_sem_mean'] * math.sqrt(e0['eval_episodes'] / adapt_episodes):.2f} "
            f"for an adaptation batch of {adapt_episodes} episodes, so a task is judged on its "
            "policy's cost rather than on one batch's luck.",
            "",
            "| method | tasks | return before | return after | cost before | cost after | "
            + " | ".join(f"{ch} after" for ch in channels)
            + " | within every channel's limit, before | after | total within limit, after |",
            "|---|---|---|---|---|---|" + "---|" * len(channels) + "---|---|---|",
        ]
        for s in evaluated:
            n = s["eval_after_tasks"]
            md.append(
                f"| {LABELS.get(s['method'], s['method'])} | {n} | {s['eval_before_ret']:.2f} | "
                f"{s['eval_after_ret']:.2f} | {s['eval_before_cost']:.2f} | {s['eval_after_cost']:.2f} | "
                + " | ".join(f"{s[f'eval_after_cost_{ch}']:.2f}" for ch in channels)
                + f" | {s['eval_before_within_channels']}/{s['eval_before_tasks']} "
                f"({_pct(s['eval_before_within_channels'] / s['eval_before_tasks'])}) | "
                f"{s['eval_after_within_channels']}/{n} ({_pct(s['eval_after_within_channels'] / n)}) | "
                f"{s['eval_after_within_total']}/{n} ({_pct(s['eval_after_within_total'] / n)}) |"
            )
    md += [
        "",
        "## Every adaptation step",
        "",
        "| method | step | adaptation env steps | return | cost (total) | "
        + " | ".join(f"cost {ch}" for ch in channels)
        + " | within every channel's limit | total within limit |",
        "|---|---|---|---|---|" + "---|" * len(channels) + "---|---|",
    ]
    for r in table:
        md.append(
            f"| {LABELS.get(r['method'], r['method'])} | {r['adapt_step']} | {r['adapt_env_steps']:,} | "
            f"{r['ret_mean']:.2f} ± {r['ret_std']:.2f} | {r['cost_mean']:.2f} ± {r['cost_std']:.2f} | "
            + " | ".join(f"{r[f'cost_{ch}_mean']:.2f} ± {r[f'cost_{ch}_std']:.2f}" for ch in channels)
            + f" | {_pct(r['share_within_channels'])} | {_pct(r['share_within_total'])} |"
        )
    md += [
        "",
        "![return and cost per adaptation step](adaptation.png)",
        "",
        "![share of test tasks within the limit](share_within_limit.png)",
        "",
        *_diagnosis_md(out),
        "## Notes",
        "",
        "- Every method is judged against the same per-channel limits (from the run's "
        "`config.json`), Meta-TRPO included although it never sees them. The `cost_limit` column of "
        "`rl.meta_cpo`'s own `adaptation.csv` is not used: for Meta-TRPO it holds the single "
        "configured value (5) instead of the summed limit (10) the other methods write.",
        "- A test task's cost is the mean over the episodes of one on-policy batch "
        f"({_adapt_batch(c0)} env steps: {_episodes(c0, _adapt_batch(c0))} full episodes of the "
        "200-step horizon): a task near the limit can fall on either side of it by sampling noise alone.",
        "- Multi-task CPO takes one CPO step per meta-iteration on the pooled first batches of the "
        "training tasks, so it spends a third of the meta-training env steps of the meta-learners.",
        "",
        "## Files and how to continue",
        "",
        "- `adaptation_table.csv` (per method and step), `adaptation_summary.csv` (after adaptation), "
        "`adaptation_runs.csv` (per run), `adaptation_rows.csv` (every seed, task and step).",
        "- Continue the runs (finished ones are skipped, interrupted ones resumed from their last "
        "checkpoint): `nice -n 10 .venv/bin/python benchmarks/adaptation.py`; re-aggregate at any "
        "time: `.venv/bin/python benchmarks/adaptation.py --report-only`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(md))
    print(f"report: {len(found)} runs of complete seeds ({len(all_found)} finished) -> {out}", flush=True)
    for s in summary:
        print(
            f"  {s['method']:>14}: seeds {s['seeds']}, return {s['ret_mean']:.2f}, cost {s['cost_mean']:.2f}, "
            f"within limit {_pct(s['share_within_channels'])} (total {_pct(s['share_within_total'])})",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(BenchConfig, argv, exit_on_error=True)
    if cfg.diagnose:
        diagnose(cfg)
    elif not cfg.report_only:
        try:
            run_all(cfg)
        except KeyboardInterrupt as err:
            print(f"interrupted ({err}); run the benchmark again to resume", flush=True)
    report(cfg)


if __name__ == "__main__":
    main()
