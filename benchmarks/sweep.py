"""Run an experiment spec: every (seed, env, method) of its grid, resumable, a few at a time.

A spec is a TOML file committed in ``benchmarks/specs/``::

    program = "rl.meta_cpo"          # or "rl.cpo"
    envs = ["safenav-button"]
    seeds = [0, 1, 2]
    methods = ["meta-cpo", "meta-trpo"]   # rl.meta_cpo algos, or a [methods.<name>] table of settings
    jobs = 1                         # runs at a time (nice = 10: their niceness; runs_dir: not runs/sweeps)
    [base]                           # settings of every run (the program's options, as in its
                                     # config.json; "none" for null: rl.cpo's cost_limit = "none" is TRPO)
    iterations = 40
    [meta_test]                      # rl.meta_cpo meta-test options (a re-test may change only these)
    adapt_batch_steps = 32000
    [retest]
    from = "adaptation_debias"       # copy that spec's finished runs and only meta-test them again
    [output]
    dir = "benchmarks/results/adaptation"   # where benchmarks.aggregate writes tables and plots

Each run is ``python -m <program>`` in its own folder ``runs/sweeps/<spec>/<env>-<method>-seed<S>/``
(git-ignored), niced, with one thread. The program's defaults are pinned in ``settings.json`` of the
sweep folder when its first run starts, so a later change of a default never mixes settings within
one sweep; every run's full settings are in its ``config.json``. A run that finished (rl.meta_cpo:
``adaptation.csv``; rl.cpo: all iterations in ``progress.csv``) is skipped, a started one continues
with ``--resume`` (its folder pins its settings: delete the folder to start it with changed ones;
raising an rl.cpo spec's ``steps`` extends its finished runs). A lock file keeps a second runner out; wall seconds per run go to
``timings.json``. Stop with Ctrl-C or SIGTERM: the runs are stopped at their last checkpoint.
::

    nice -n 10 .venv/bin/python -m benchmarks.sweep benchmarks/specs/adaptation.toml --jobs 2
    .venv/bin/python -m benchmarks.sweep benchmarks/specs/paper.toml --dry-run   # the plan only
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("rl.meta_cpo", "rl.cpo")
SPEC_KEYS = ("program", "envs", "seeds", "methods", "jobs", "nice", "runs_dir", "base", "meta_test", "retest")
SPEC_KEYS += ("output", "note")
#: Config keys that say how a run runs, not what it computes (never pinned, never compared).
RUN_KEYS = ("out", "resume", "progress", "tensorboard", "threads", "backend", "workers", "ray_address")
RUN_KEYS += ("max_retries", "checkpoint_every", "keep_checkpoints", "num_workers", "config", "wandb")
META_TEST_KEYS = ("test_tasks", "adapt_steps", "adapt_confidence", "adapt_batch_steps", "eval_steps")


@dataclass
class Spec:
    """An experiment: base settings, a grid of envs x methods x seeds, meta-test options."""

    name: str
    path: Path
    program: str
    envs: list[str]
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    base: dict[str, Any] = field(default_factory=dict)
    meta_test: dict[str, Any] = field(default_factory=dict)
    retest_from: str | None = None
    jobs: int = 1
    nice: int = 10
    runs_dir: Path = ROOT / "runs" / "sweeps"
    output: dict[str, Any] = field(default_factory=dict)

    @property
    def sweep_dir(self) -> Path:
        """Folder of this spec's run folders."""
        return self.runs_dir / self.name


@dataclass
class Run:
    """One (seed, env, method) of a spec with its settings (base, method, meta-test)."""

    name: str
    env: str
    method: str
    seed: int
    settings: dict[str, Any]


def _check_keys(where: str, keys: Any, valid: tuple[str, ...] | set[str]) -> None:
    bad = sorted(set(keys) - set(valid))
    if bad:
        raise ValueError(f"{where}: unknown keys {bad}; expected some of {sorted(valid)}")


def program_defaults(program: str, run_keys: bool = False) -> dict[str, Any]:
    """The settings of a program's config dataclass at their defaults (``run_keys``: with the
    keys that say how a run runs, except out and resume, which the runner sets)."""
    if program == "rl.meta_cpo":
        from rl.meta_cpo import MetaCPOConfig as Config
    else:
        from rl.cpo import CPOConfig as Config
    dropped = ("out", "resume") if run_keys else RUN_KEYS
    return {k: v for k, v in asdict(Config()).items() if k not in dropped}


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file, or a committed spec by name (see the module docstring for its keys)."""
    path = Path(path)
    if not path.is_file() and (ROOT / "benchmarks" / "specs" / f"{path}.toml").is_file():
        path = ROOT / "benchmarks" / "specs" / f"{path}.toml"  # a committed spec by name
    if not path.is_file():
        raise ValueError(
            f"spec {str(path)!r} is not a file; expected a TOML file such as benchmarks/specs/x.toml"
        )
    raw = tomllib.loads(path.read_text())
    _check_keys(f"spec {path}", raw, SPEC_KEYS)
    program = raw.get("program", "rl.meta_cpo")
    if program not in PROGRAMS:
        raise ValueError(f"spec {path}: program must be one of {list(PROGRAMS)}, got {program!r}")
    valid = set(program_defaults(program, run_keys=True))
    methods = raw.get("methods")
    if isinstance(methods, list) and program == "rl.meta_cpo":
        methods = {m: {"algo": m} for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise ValueError(
            f"spec {path}: methods must be a non-empty table of settings per method "
            f"(or, for rl.meta_cpo, a list of algos), got {methods!r}"
        )
    for key in ("base", "meta_test", *(f"methods.{m}" for m in methods)):
        table = methods[key[8:]] if key.startswith("methods.") else raw.get(key, {})
        _check_keys(f"spec {path} [{key}]", table, valid)
    if program == "rl.meta_cpo":
        from rl.meta_cpo import ALGOS

        bad = {m: s.get("algo") for m, s in methods.items() if s.get("algo", "meta-cpo") not in ALGOS}
        if bad:
            raise ValueError(f"spec {path}: algo must be among {list(ALGOS)}, got {bad}")
    _check_keys(f"spec {path} [meta_test]", raw.get("meta_test", {}), META_TEST_KEYS)
    if raw.get("meta_test") and program != "rl.meta_cpo":
        raise ValueError(f"spec {path}: [meta_test] needs program rl.meta_cpo, got {program!r}")
    seeds, envs = raw.get("seeds"), raw.get("envs")
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"spec {path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if not envs or not all(isinstance(e, str) for e in envs):
        raise ValueError(f"spec {path}: envs must be a non-empty list of env names, got {envs!r}")
    retest = raw.get("retest", {})
    _check_keys(f"spec {path} [retest]", retest, ("from",))
    if retest and program != "rl.meta_cpo":
        raise ValueError(f"spec {path}: [retest] needs program rl.meta_cpo, got {program!r}")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"spec {path}: jobs must be an integer >= 1, got {jobs!r}")
    runs_dir = Path(raw["runs_dir"]) if "runs_dir" in raw else ROOT / "runs" / "sweeps"
    return Spec(
        name=path.stem,
        path=path,
        program=program,
        envs=list(envs),
        seeds=list(seeds),
        methods=methods,
        base=raw.get("base", {}),
        meta_test=raw.get("meta_test", {}),
        retest_from=retest.get("from"),
        jobs=jobs,
        nice=int(raw.get("nice", 10)),
        runs_dir=runs_dir if runs_dir.is_absolute() else ROOT / runs_dir,
        output=raw.get("output", {}),
    )


def plan(spec: Spec) -> list[Run]:
    """The spec's runs, seed-major (seed 0 of every env and method first)."""
    runs = []
    for seed in spec.seeds:
        for env in spec.envs:
            for method, settings in spec.methods.items():
                merged = {**spec.base, **settings, **spec.meta_test, "env": env, "seed": seed}
                merged = {k: None if v == "none" else v for k, v in merged.items()}  # TOML has no null
                runs.append(Run(f"{env}-{method}-seed{seed}", env, method, seed, merged))
    return runs


def is_finished(run_dir: Path, steps: int | None = None) -> bool:
    """Whether a run folder holds a finished run of rl.meta_cpo or rl.cpo (of ``steps`` env steps if
    given, else of its own; so raising a spec's ``steps`` extends its finished rl.cpo runs)."""
    config = run_dir / "config.json"
    if not config.is_file():
        return False
    if (run_dir / "adaptation.csv").is_file():
        return True
    settings = json.loads(config.read_text())
    if "steps_per_iter" not in settings:  # rl.meta_cpo finishes with its meta-test
        return False
    progress = run_dir / "progress.csv"
    rows = len(progress.read_text().splitlines()) - 1 if progress.is_file() else 0
    return rows >= max(1, (steps or settings["steps"]) // settings["steps_per_iter"])


def pinned_settings(spec: Spec) -> dict[str, Any]:
    """The program's defaults when this sweep's first run started (``settings.json``)."""
    path = spec.sweep_dir / "settings.json"
    if not path.is_file():
        spec.sweep_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(program_defaults(spec.program), indent=1) + "\n")
    return json.loads(path.read_text())


def _copy_for_retest(source: Path, dest: Path) -> None:
    """A finished rl.meta_cpo run without its meta-test outputs, to be meta-tested again."""
    outputs = ("adaptation.csv", "evaluation.csv", "events.*", "*.png", "*.tmp")
    partial = dest.with_name(dest.name + ".copying")  # a copy stopped halfway is never taken for a run
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*outputs))
    partial.rename(dest)


def command(spec: Spec, run: Run) -> tuple[list[str], str]:
    """(the command that starts or continues ``run``, how: started, resumed or re-tested)."""
    run_dir = spec.sweep_dir / run.name
    head = [sys.executable, "-m", spec.program]
    how_to_run = {"threads": "1", "backend": "serial", "progress": False, "tensorboard": False}
    for key, value in how_to_run.items():  # unless the spec sets them
        if key not in run.settings:
            flag = key.replace("_", "-")
            head += [f"--{flag}", value] if isinstance(value, str) else [f"--no-{flag}"]
    if spec.retest_from is not None and not (run_dir / "config.json").is_file():
        source = load_spec(spec.path.parent / f"{spec.retest_from}.toml").sweep_dir / run.name
        if not is_finished(source):
            raise FileNotFoundError(f"{source} is not a finished run to re-test")
        shutil.rmtree(run_dir, ignore_errors=True)
        _copy_for_retest(source, run_dir)
    if (run_dir / "config.json").is_file():
        cmd = [*head, "--resume", str(run_dir)]
        total = "iterations" if spec.program == "rl.meta_cpo" else "steps"
        if total in run.settings and spec.retest_from is None:
            cmd += [f"--{total}", str(run.settings[total])]
        for key, value in spec.meta_test.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        return cmd, "re-tested" if spec.retest_from is not None else "resumed"
    if run_dir.exists():  # stopped before its config was written: nothing to keep
        shutil.rmtree(run_dir)
    config = spec.sweep_dir / "configs" / f"{run.name}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({**pinned_settings(spec), **run.settings}, indent=1) + "\n")
    return [*head, "--config", str(config), "--out", str(run_dir)], "started"


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _bar(done: int, total: int, running: int, eta_s: float | None) -> str:
    filled = round(30 * done / max(total, 1))
    eta = f", about {eta_s / 60:.0f} min left" if eta_s is not None else ""
    return f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} finished, {running} running{eta}"


def run_sweep(spec: Spec, jobs: int | None = None, poll_s: float = 30.0) -> int:
    """Run every unfinished run of ``spec``; returns the number that failed (or were stopped)."""
    jobs = jobs or spec.jobs
    sweep = spec.sweep_dir
    (sweep / "logs").mkdir(parents=True, exist_ok=True)
    lock = open(sweep / ".lock", "a+")  # noqa: SIM115 (held as long as the sweep runs)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f"{sweep}: another runner (or a run it started) holds the lock; wait for it"
        ) from None
    todo = [r for r in plan(spec) if not is_finished(sweep / r.name, r.settings.get("steps"))]
    total = len(plan(spec))
    steps = {r.name: r.settings.get("steps") for r in plan(spec)}
    timings_path = sweep / "timings.json"
    timings = _load_json(timings_path)
    active: dict[str, tuple[subprocess.Popen, float]] = {}
    failed = 0
    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child, _ in active.values():
            child.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def _finish(name: str, child: subprocess.Popen, t0: float) -> None:
        nonlocal failed
        entry = timings.setdefault(name, {"wall_s": 0.0, "sessions": 0})
        entry["wall_s"] = round(entry["wall_s"] + time.time() - t0, 1)
        entry["sessions"] += 1
        entry["finished"] = is_finished(sweep / name, steps.get(name))
        _save_json(timings_path, timings)
        if not entry["finished"]:
            failed += 1
            why = "stopped" if stopping else f"FAILED (exit {child.returncode})"
            print(f"{name}: {why}; log: {sweep / 'logs' / (name + '.log')}", flush=True)

    print(f"{spec.name}: {total} runs, {total - len(todo)} finished before, {jobs} at a time, in {sweep}")
    last_line = 0.0
    try:
        while (todo or active) and not (stopping and not active):
            while todo and len(active) < jobs and not stopping:
                run = todo.pop(0)
                try:
                    cmd, how = command(spec, run)
                except FileNotFoundError as err:
                    print(f"{run.name}: skipped: {err}", flush=True)
                    failed += 1
                    continue
                with open(sweep / "logs" / f"{run.name}.log", "a") as log:
                    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {how}: {' '.join(cmd)}\n")
                    log.flush()
                    child = subprocess.Popen(
                        cmd,
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        pass_fds=(lock.fileno(),),  # the lock lives as long as the runs do
                        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, max(spec.nice, os.nice(0))),
                    )
                active[run.name] = (child, time.time())
                print(f"{run.name}: {how}", flush=True)
            for name, (child, t0) in list(active.items()):
                if child.poll() is not None:
                    del active[name]
                    _finish(name, child, t0)
            if time.time() - last_line >= poll_s or not (todo or active):
                done = sum(is_finished(sweep / r.name, r.settings.get("steps")) for r in plan(spec))
                walls = [t["wall_s"] for t in timings.values() if t.get("finished") and t["sessions"] == 1]
                eta = sum(walls) / len(walls) * (total - done) / jobs if walls else None
                print(_bar(done, total, len(active), eta), flush=True)
                last_line = time.time()
            time.sleep(0.2)
    finally:
        for child, _ in active.values():
            child.send_signal(signal.SIGTERM)
        for name, (child, t0) in active.items():
            child.wait()
            _finish(name, child, t0)
        for s, handler in old.items():
            signal.signal(s, handler)
        lock.close()
    return failed


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.sweep``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a spec file, or the name of one in benchmarks/specs/ (adaptation)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the spec's jobs)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their state, run nothing")
    parser.add_argument("--poll", type=float, default=30.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        spec = load_spec(args.spec)
    except ValueError as err:
        parser.error(str(err))
    if args.dry_run:
        for run in plan(spec):
            run_dir = spec.sweep_dir / run.name
            state = (
                "finished"
                if is_finished(run_dir, run.settings.get("steps"))
                else "started"
                if run_dir.exists()
                else "new"
            )
            print(f"{run.name}: {state}")
        return
    try:
        failed = run_sweep(spec, args.jobs, args.poll)
    except RuntimeError as err:
        sys.exit(str(err))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
