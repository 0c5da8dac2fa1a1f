"""Run an experiment spec: every (seed, env, method) of its grid, resumable, a few at a time.

A spec is a TOML file committed in ``benchmarks/specs/``::

    program = "rl.meta_cpo"          # or "rl.cpo"
    envs = ["safenav-button"]
    seeds = [0, 1, 2]
    methods = ["meta-cpo", "meta-trpo"]   # rl.meta_cpo algos, or a [methods.<name>] table of settings
    jobs = 1                         # runs at a time (nice = 10: their niceness; runs_dir: not runs/sweeps)
    [base]                           # settings of every run, the program's options as in its config.json
    iterations = 40                  # ("none" for null: rl.cpo's cost_limit = "none" is TRPO)
    [meta_test]                      # rl.meta_cpo meta-test options (a re-test may change only these)
    adapt_batch_steps = 32000
    [retest]
    from = "adaptation_debias"       # copy that spec's finished runs and only meta-test them again
    [output]
    dir = "benchmarks/results/adaptation"   # where benchmarks.aggregate writes tables and plots

Each run is ``python -m <program>`` in its own folder ``<runs_dir>/<spec>/<env>-<method>-seed<S>/``,
niced, with one thread. The program's defaults are pinned in the sweep folder's ``settings.json``
when its first run starts (a later change of a default never mixes settings within a sweep); a
run's full settings are in ``configs/<run>.json`` and its ``config.json``. A finished run
(rl.meta_cpo: ``adaptation.csv``; rl.cpo: every iteration of ``steps`` in ``progress.csv``) is
skipped, a started one continues with ``--resume`` (its folder pins its settings; raising an
rl.cpo spec's ``steps`` extends its finished runs). A lock file keeps a second runner out; wall
seconds per run go to ``timings.json``; the commit of the code that ran each piece to
``code.txt``; Ctrl-C or SIGTERM stops the runs at their last checkpoint::

    nice -n 10 .venv/bin/python -m benchmarks.sweep benchmarks/specs/adaptation.toml --jobs 2
    .venv/bin/python -m benchmarks.sweep adaptation --dry-run   # the plan and the state of each run
    .venv/bin/python -m benchmarks.sweep paper --methods meta-cpo,meta-trpo   # part of the grid first

A sweep outlives the machine it ran on through its *state*, a small folder meant for git: every
run's ``config.json`` and CSVs, the newest checkpoint of each run that may continue, and the sweep's
pinned settings, configs, timings and ``code.txt``. ``--save-state DIR`` writes it to
``DIR/<spec>/`` (atomically: a new folder renamed into place); ``--restore-state DIR`` copies back
the runs that the sweep folder lacks, after checking that the code running is the code that ran
(``code.txt``), and the next call continues them (``benchmarks/state/README.md``)::

    .venv/bin/python -m benchmarks.sweep paper --save-state benchmarks/state    # then commit it
    git worktree add ../sweep "$(tail -1 benchmarks/state/paper/code.txt)"     # on a new machine
    .venv/bin/python -m benchmarks.sweep paper --runs-dir ../sweep/runs/sweeps --restore-state benchmarks/state
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
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rl.cpo import CPOConfig
from rl.meta_cpo import ALGOS, MetaCPOConfig
from rl.runtime.checkpoint import checkpoint_step, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"rl.meta_cpo": MetaCPOConfig, "rl.cpo": CPOConfig}
SPEC_KEYS = ("program", "envs", "seeds", "methods", "jobs", "nice", "runs_dir", "base", "meta_test")
SPEC_KEYS += ("retest", "output", "note")
#: Config keys that say how a run runs, not what it computes (never pinned, never compared).
RUN_KEYS = ("out", "resume", "progress", "tensorboard", "threads", "backend", "workers", "ray_address")
RUN_KEYS += ("max_retries", "checkpoint_every", "keep_checkpoints", "num_workers", "config", "wandb")
META_TEST_KEYS = ("test_tasks", "adapt_steps", "adapt_confidence", "adapt_batch_steps", "eval_steps")
#: How the runner runs a program unless the spec says otherwise (a bool: --no-<flag>).
HOW_TO_RUN = {"threads": "1", "backend": "serial", "progress": False, "tensorboard": False}
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


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
    """The settings of a program's config at their defaults (``run_keys``: with the keys that say
    how a run runs, except out and resume, which the runner sets)."""
    dropped = ("out", "resume") if run_keys else RUN_KEYS
    return {k: v for k, v in asdict(CONFIGS[program]()).items() if k not in dropped}


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec file, or a committed spec by name (its keys: the module docstring)."""
    path = Path(path)
    committed = ROOT / "benchmarks" / "specs" / f"{path}.toml"
    path = committed if not path.is_file() and committed.is_file() else path
    if not path.is_file():
        raise ValueError(
            f"spec {str(path)!r} is not a file; expected a TOML file such as benchmarks/specs/x.toml"
        )
    raw = tomllib.loads(path.read_text())
    where = f"spec {path}"
    _check_keys(where, raw, SPEC_KEYS)
    program = raw.get("program", "rl.meta_cpo")
    if program not in CONFIGS:
        raise ValueError(f"{where}: program must be one of {list(CONFIGS)}, got {program!r}")
    methods = raw.get("methods")
    if isinstance(methods, list) and program == "rl.meta_cpo":
        methods = {m: {"algo": m} for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise ValueError(
            f"{where}: methods must be a non-empty table of settings per method "
            f"(or, for rl.meta_cpo, a list of algos), got {methods!r}"
        )
    valid = set(program_defaults(program, run_keys=True))
    tables = {"base": raw.get("base", {}), "meta_test": raw.get("meta_test", {})}
    for key, table in {**tables, **{f"methods.{m}": s for m, s in methods.items()}}.items():
        _check_keys(f"{where} [{key}]", table, valid)
    bad = {m: s.get("algo") for m, s in methods.items() if s.get("algo", "meta-cpo") not in ALGOS}
    if program == "rl.meta_cpo" and bad:
        raise ValueError(f"{where}: algo must be among {list(ALGOS)}, got {bad}")
    _check_keys(f"{where} [meta_test]", raw.get("meta_test", {}), META_TEST_KEYS)
    retest = raw.get("retest", {})
    _check_keys(f"{where} [retest]", retest, ("from",))
    for key in ("meta_test", "retest"):
        if raw.get(key) and program != "rl.meta_cpo":
            raise ValueError(f"{where}: [{key}] needs program rl.meta_cpo, got {program!r}")
    seeds, envs, jobs = raw.get("seeds"), raw.get("envs"), raw.get("jobs", 1)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    if not envs or not all(isinstance(e, str) for e in envs):
        raise ValueError(f"{where}: envs must be a non-empty list of env names, got {envs!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{where}: jobs must be an integer >= 1, got {jobs!r}")
    nice, runs_dir = raw.get("nice", 10), raw.get("runs_dir", "runs/sweeps")
    if not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ValueError(f"{where}: nice must be an integer from 0 to 19, got {nice!r}")
    if not isinstance(runs_dir, str):
        raise ValueError(f"{where}: runs_dir must be a folder name, got {runs_dir!r}")
    return Spec(
        name=path.stem, path=path, program=program, envs=list(envs), seeds=list(seeds), methods=methods,
        base=raw.get("base", {}), meta_test=raw.get("meta_test", {}), retest_from=retest.get("from"),
        jobs=jobs, nice=nice, runs_dir=ROOT / runs_dir, output=raw.get("output", {}),  # absolute: as it is
    )  # fmt: skip


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
    for key, value in HOW_TO_RUN.items():
        if key not in run.settings:
            head += [f"--{key}", value] if isinstance(value, str) else [f"--no-{key}"]
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


def code_commit(where: Path = ROOT) -> str:
    """The git commit of the code at ``where`` (``+dirty`` when tracked files differ from it), or
    ``unknown`` outside a git checkout."""
    git = ["git", "-C", str(where)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _record_code(sweep: Path) -> None:
    """Append the running code's commit to ``code.txt`` unless it is already the last one."""
    path, commit = sweep / "code.txt", code_commit()
    lines = path.read_text().split() if path.is_file() else []
    if not lines or lines[-1] != commit:
        with open(path, "a") as f:
            f.write(commit + "\n")


def _state_commit(state: Path) -> str | None:
    lines = (state / "code.txt").read_text().split() if (state / "code.txt").is_file() else []
    return lines[-1] if lines else None


def _run_folders(folder: Path) -> list[Path]:
    """The run folders (those with a ``config.json``) in a sweep folder or a saved state."""
    return sorted(d for d in folder.iterdir() if (d / "config.json").is_file()) if folder.is_dir() else []


def _progress(run_dir: Path) -> tuple[int, int]:
    """How far a run folder (or a saved run) is: (finished rl.meta_cpo run, newest checkpoint step);
    (-1, -1) for none."""
    if not (run_dir / "config.json").is_file():
        return (-1, -1)
    steps = [checkpoint_step(c) for c in run_dir.glob("ckpt_*.pt")]
    return (int((run_dir / "adaptation.csv").is_file()), max(steps, default=-1))


def save_state(spec: Spec, dest: str | Path) -> Path:
    """Write what continues ``spec``'s sweep on another machine to ``dest/<spec>/`` and return it.

    Per run folder: ``config.json``, every CSV, and its newest checkpoint that loads (copied before
    the CSVs, so ``progress.csv`` holds at least the checkpoint's rows; resume cuts the rows after
    it), except for a finished rl.meta_cpo run (a re-test of it needs the run folder itself). Per
    sweep: ``settings.json``, ``configs/``, ``timings.json`` and
    ``code.txt`` (if the runner did not write one, the commit of the checkout holding the runs).
    The folder is built beside its destination and renamed into place, so a reader sees the old
    state or the new one.

    Raises:
        FileNotFoundError: the sweep has no run yet.
        ValueError: the state already at ``dest`` is further along than the sweep folder (a run
            missing here, finished there only, or with a later checkpoint there): saving would
            lose it; the message names the runs and says to restore first.
    """
    sweep, dest = spec.sweep_dir, Path(dest) / spec.name
    runs = _run_folders(sweep)  # every started run, whatever methods the caller selected
    if not runs:
        raise FileNotFoundError(f"{sweep}: no started run of spec {spec.name!r} to save")
    ahead = [d.name for d in _run_folders(dest) if _progress(d) > _progress(sweep / d.name)]
    if ahead:
        raise ValueError(
            f"{dest} holds runs further along than {sweep} ({', '.join(ahead)}); saving would lose them: "
            f"restore them first (--restore-state {dest.parent}), or move {dest} away"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=dest.parent))
    try:
        for name in ("settings.json", "timings.json", "code.txt"):
            if (sweep / name).is_file():
                shutil.copy2(sweep / name, new / name)
        if not (new / "code.txt").is_file():
            (new / "code.txt").write_text(code_commit(sweep) + "\n")
        if (sweep / "configs").is_dir():
            shutil.copytree(sweep / "configs", new / "configs")
        for src in runs:
            out = new / src.name
            out.mkdir()
            # a finished rl.meta_cpo run needs none (rl.cpo's may be extended by a larger steps)
            if spec.program == "rl.cpo" or not is_finished(src):
                ckpt = latest_checkpoint(src)
                if ckpt is not None:
                    shutil.copy2(ckpt, out / ckpt.name)
            for path in [src / "config.json", *sorted(src.glob("*.csv"))]:
                shutil.copy2(path, out / path.name)
        old = dest.with_name(f".{spec.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)
    return dest


def restore_state(spec: Spec, source: str | Path) -> list[str]:
    """Copy back from ``source/<spec>/`` (made by :func:`save_state`) every run that the sweep
    folder lacks (checked against the commit of the checkout that holds the runs folder, or of this
    code when it is in none), and the sweep's settings, configs and timings where missing; runs
    already there are left as they are. Returns the names of the restored runs.

    Raises:
        FileNotFoundError: ``source`` holds no state of this spec.
        RuntimeError: the code running is not the code that ran the state (its ``code.txt``); the
            message names both commits and how to check the right one out.
    """
    state, sweep = Path(source) / spec.name, spec.sweep_dir
    if not state.is_dir():
        raise FileNotFoundError(f"{state}: no saved state of spec {spec.name!r} (made by --save-state)")
    # the code that will run it: the checkout holding the runs folder (a worktree pinned at the
    # sweep's commit, restored into by a newer checkout's runner), else this one
    where = next(p for p in (spec.runs_dir, *spec.runs_dir.parents) if p.is_dir())
    running = code_commit(where)
    if running == "unknown":
        where, running = ROOT, code_commit(ROOT)
    ran = _state_commit(state)
    if ran is None or ran != running:
        raise RuntimeError(
            f"{state} was run by code {ran or '(not recorded)'}, the checkout {where} is code {running}; "
            "continue it with "
            f"the same code: git worktree add <folder> {(ran or '<commit>').removesuffix('+dirty')}, and run "
            "python -m benchmarks.sweep from that folder's root"
        )
    lock = _lock(sweep)
    try:
        for name in ("settings.json", "timings.json", "code.txt"):
            if (state / name).is_file() and not (sweep / name).is_file():
                shutil.copy2(state / name, sweep / name)
        if (state / "configs").is_dir():
            shutil.copytree(state / "configs", sweep / "configs", dirs_exist_ok=True)
        restored = []
        for src in _run_folders(state):
            dst = sweep / src.name
            if (dst / "config.json").is_file():
                continue
            partial = dst.with_name(dst.name + ".copying")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(src, partial)
            shutil.rmtree(dst, ignore_errors=True)
            partial.rename(dst)
            restored.append(src.name)
    finally:
        lock.close()
    return restored


def _lock(sweep: Path):
    """The sweep's lock file, held (a second runner, or a run of the first, refuses to start)."""
    sweep.mkdir(parents=True, exist_ok=True)
    lock = open(sweep / ".lock", "a+")  # noqa: SIM115 (held as long as the sweep runs)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f"{sweep}: another runner (or a run it started) holds the lock; wait for it"
        ) from None
    return lock


def run_sweep(spec: Spec, jobs: int | None = None, poll_s: float = 30.0) -> int:
    """Run every unfinished run of ``spec``; returns the number that failed (or were stopped)."""
    jobs, sweep, runs = jobs or spec.jobs, spec.sweep_dir, plan(spec)
    lock = _lock(sweep)
    (sweep / "logs").mkdir(exist_ok=True)
    _record_code(sweep)
    finished = lambda run: is_finished(sweep / run.name, run.settings.get("steps"))
    todo = [r for r in runs if not finished(r)]
    timings_path = sweep / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    active: dict[str, tuple[Run, subprocess.Popen, float]] = {}
    failed, stopping = 0, False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for _, child, _ in active.values():
            child.send_signal(signal.SIGTERM)

    def done(run: Run, child: subprocess.Popen, t0: float) -> None:
        nonlocal failed
        entry = timings.setdefault(run.name, {"wall_s": 0.0, "sessions": 0})
        entry["wall_s"] = round(entry["wall_s"] + time.time() - t0, 1)
        entry["sessions"] += 1
        entry["finished"] = finished(run)
        tmp = timings_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
        tmp.replace(timings_path)
        if not entry["finished"]:
            failed += 1
            why = "stopped" if stopping else f"FAILED (exit {child.returncode})"
            print(f"{run.name}: {why}; log: {sweep / 'logs' / (run.name + '.log')}", flush=True)

    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    niceness = lambda: os.setpriority(os.PRIO_PROCESS, 0, max(spec.nice, os.nice(0)))
    before = len(runs) - len(todo)
    print(
        f"{spec.name}: {len(runs)} runs, {before} finished before, {jobs} at a time, in {sweep}", flush=True
    )
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
                    child = subprocess.Popen(  # the lock lives as long as the runs do (pass_fds)
                        cmd, cwd=ROOT, env={**os.environ, **THREAD_ENV}, stdout=log,
                        stderr=subprocess.STDOUT, pass_fds=(lock.fileno(),), preexec_fn=niceness,
                    )  # fmt: skip
                active[run.name] = (run, child, time.time())
                print(f"{run.name}: {how}", flush=True)
            for name, (run, child, t0) in list(active.items()):
                if child.poll() is not None:
                    del active[name]
                    done(run, child, t0)
            if time.time() - last_line >= poll_s or not (todo or active):
                n_done = sum(map(finished, runs))
                walls = [t["wall_s"] for t in timings.values() if t.get("finished") and t["sessions"] == 1]
                left = sum(walls) / max(len(walls), 1) * (len(runs) - n_done) / jobs / 60
                eta = f", about {left:.0f} min left" if walls else ""
                bar = "#" * round(30 * n_done / len(runs))
                print(f"[{bar:.<30}] {n_done}/{len(runs)} finished, {len(active)} running{eta}", flush=True)
                last_line = time.time()
            time.sleep(0.2)
    finally:
        for _, child, _ in active.values():
            child.send_signal(signal.SIGTERM)
        for run, child, t0 in active.values():
            child.wait()
            done(run, child, t0)
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
        lock.close()
    return failed


def select_methods(spec: Spec, methods: str | None) -> Spec:
    """``spec`` with only the comma-separated ``methods`` (all of them for ``None``), in the spec's
    order; a run's folder and settings do not depend on the selection, so a later call with another
    selection (or none) continues the same sweep."""
    if methods is None:
        return spec
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in spec.methods]
    if not chosen or unknown:
        raise ValueError(
            f"--methods {methods!r}: expected a comma-separated list of the methods of spec {spec.name!r} "
            f"({', '.join(spec.methods)}), got unknown {unknown or 'nothing'}"
        )
    spec.methods = {m: s for m, s in spec.methods.items() if m in chosen}
    return spec


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.sweep``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a spec file, or the name of one in benchmarks/specs/ (adaptation)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the spec's jobs)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their state, run nothing")
    parser.add_argument("--poll", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument(
        "--runs-dir", default=None, help="the folder of the sweep folders (default: the spec's runs_dir)"
    )
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--save-state", metavar="DIR", help="write the sweep's state to DIR/<spec>/ (for git), run nothing"
    )
    state.add_argument(
        "--restore-state", metavar="DIR", help="copy back the runs missing here from DIR/<spec>/, run nothing"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="run only these methods of the spec, comma-separated (default: all; the others stay for later)",
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        spec = select_methods(load_spec(args.spec), args.methods)
    except ValueError as err:
        parser.error(str(err))
    if args.runs_dir is not None:
        spec.runs_dir = Path(args.runs_dir).resolve()
    if args.save_state or args.restore_state:
        try:
            if args.save_state:
                print(f"saved: {save_state(spec, args.save_state)}")
            else:
                restored = restore_state(spec, args.restore_state)
                print(f"restored {len(restored)} runs into {spec.sweep_dir}: {', '.join(restored) or 'none'}")
        except (FileNotFoundError, RuntimeError, ValueError) as err:
            sys.exit(str(err))
        return
    if args.dry_run:
        for run in plan(spec):
            run_dir = spec.sweep_dir / run.name
            state = "started" if run_dir.exists() else "new"
            print(f"{run.name}: {'finished' if is_finished(run_dir, run.settings.get('steps')) else state}")
        return
    try:
        sys.exit(1 if run_sweep(spec, args.jobs, args.poll) else 0)
    except RuntimeError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
