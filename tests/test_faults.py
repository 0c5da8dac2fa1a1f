"""Fault tolerance of the training programs: SIGKILL at random points (mid-checkpoint-write
included) then ``--resume`` gives the uninterrupted run exactly; non-finite batches are skipped,
logged and never reach a checkpoint; configurations are checked before any work; checkpoints
are pruned to the last 3 and load with ``weights_only=True``."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rl.meta_cpo as meta_cpo
from rl.meta_cpo import MetaCPOConfig, MetaCPOTrainer
from rl.runtime import list_checkpoints, load_latest_checkpoint
from tests._configs import tiny_meta_config

ROOT = Path(__file__).resolve().parents[1]

META_ARGS = [
    "--iterations", "4", "--meta-batch", "2", "--inner-steps", "1", "--batch-steps", "400",
    "--num-envs", "2", "--hidden", "8", "--critic-hidden", "16", "--critic-epochs", "1",
    "--test-tasks", "1", "--adapt-steps", "1", "--no-progress", "--no-tensorboard",
    "--backend", "serial",
]  # fmt: skip
META_RESUME = ["--no-progress", "--no-tensorboard", "--backend", "serial"]

CPO_ARGS = [
    "--env", "safenav-goal", "--steps", "1600", "--steps-per-iter", "400", "--num-envs", "2",
    "--hidden", "8", "--critic-hidden", "16", "--critic-epochs", "1", "--checkpoint-every", "1",
    "--no-progress", "--no-tensorboard",
]  # fmt: skip
CPO_RESUME = ["--no-progress", "--no-tensorboard"]

# Runs a module's main() in a child that writes half of its N-th checkpoint, then SIGKILLs
# itself: a kill in the middle of a checkpoint write, deterministically.
KILL_ON_SAVE = """
import io, os, signal, sys
import torch
n, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
calls = [0]
save = torch.save
def half_save(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] < n:
        return save(obj, f, *a, **k)
    buf = io.BytesIO()
    save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half_save
import importlib
importlib.import_module(module).main(args)
"""


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _snapshot(run_dir: Path) -> dict[str, int]:
    if not run_dir.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in run_dir.iterdir() if p.is_file()}


def _launch(module: str, args: list[str], log: Path, kill_on_save: int | None = None):
    cmd = [sys.executable, "-m", module, *args]
    if kill_on_save is not None:
        cmd = [sys.executable, "-c", KILL_ON_SAVE, str(kill_on_save), module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def _kill_after_progress(proc: subprocess.Popen, run_dir: Path, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after it first changes ``run_dir``; False if it ended
    by itself first."""
    before = _snapshot(run_dir)
    while _snapshot(run_dir) == before:
        try:
            proc.wait(timeout=0.05)
            return False
        except subprocess.TimeoutExpired:
            pass
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _run_with_kills(module, fresh, resume, run_dir: Path, seed: int, max_delay: float) -> list[str]:
    """Run to completion through kills: one in the middle of a checkpoint write, then up to two at
    random delays (drawn from ``seed``), each followed by ``--resume``. Returns what happened."""
    rng = np.random.default_rng(seed)
    plan = ["mid-save", "delay", "delay"]  # mid-save first: a fresh run always has saves left
    events: list[str] = []
    log = run_dir.parent / f"{run_dir.name}.log"
    for attempt in range(len(plan) + 2):
        started = (run_dir / "config.json").is_file()
        args = ["--resume", str(run_dir), *resume] if started else [*fresh, "--out", str(run_dir)]
        how = plan[attempt] if attempt < len(plan) else "none"
        if how == "mid-save":
            proc = _launch(module, args, log, kill_on_save=int(rng.integers(1, 3)))
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                # the half-written file is a temp file: the published checkpoints are intact
                assert list(run_dir.glob(".ckpt_*.tmp")), "expected the half-written temp file"
                events.append("killed mid-save")
                continue
        else:
            proc = _launch(module, args, log)
            if how == "delay":
                delay = float(rng.uniform(0.0, max_delay))
                if _kill_after_progress(proc, run_dir, delay):
                    events.append(f"killed after {delay:.2f}s")
                    continue
            proc.wait()
        assert proc.returncode == 0, log.read_text()[-3000:]
        events.append("finished")
        return events
    raise AssertionError(f"the run never finished: {events}")


def _assert_rows_equal(rows, ref_rows) -> None:
    assert [int(r["iteration"]) for r in rows] == [int(r["iteration"]) for r in ref_rows]
    for row, ref in zip(rows, ref_rows, strict=True):
        for key in ref:
            if "seconds" not in key:  # timings differ between runs
                assert row[key] == ref[key], (row["iteration"], key, row[key], ref[key])


# ------------------------------------------------------------------------ references
@pytest.fixture(scope="module")
def meta_reference(tmp_path_factory) -> Path:
    """The uninterrupted tiny Meta-CPO run (4 meta-iterations)."""
    out = tmp_path_factory.mktemp("meta") / "reference"
    meta_cpo.main([*META_ARGS, "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def cpo_reference(tmp_path_factory) -> Path:
    """The uninterrupted tiny CPO run (4 iterations)."""
    from rl.cpo import main

    out = tmp_path_factory.mktemp("cpo") / "reference"
    main([*CPO_ARGS, "--out", str(out)])
    return out


# ------------------------------------------------------------------------ kill and resume
@pytest.mark.slow
def test_meta_cpo_killed_at_random_points_resumes_to_the_uninterrupted_run(meta_reference, tmp_path):
    run_dir = tmp_path / "run"
    events = _run_with_kills("rl.meta_cpo", META_ARGS, META_RESUME, run_dir, seed=7, max_delay=4.0)
    assert events[-1] == "finished" and "killed mid-save" in events, events
    rows = _read_csv(run_dir / "progress.csv")
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]  # each iteration exactly once
    _assert_rows_equal(rows, _read_csv(meta_reference / "progress.csv"))
    theta = MetaCPOTrainer.from_run(run_dir).theta
    assert torch.equal(theta, MetaCPOTrainer.from_run(meta_reference).theta)
    adapt, ref_adapt = _read_csv(run_dir / "adaptation.csv"), _read_csv(meta_reference / "adaptation.csv")
    assert [r["ep_ret"] for r in adapt] == [r["ep_ret"] for r in ref_adapt]
    assert not list(run_dir.glob(".ckpt_*.tmp"))  # the next save cleared the half-written file
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "ckpt_000001.pt",
        "ckpt_000002.pt",
        "ckpt_000003.pt",
    ]


@pytest.mark.slow
def test_cpo_killed_at_random_points_resumes_to_the_uninterrupted_run(cpo_reference, tmp_path):
    run_dir = tmp_path / "run"
    events = _run_with_kills("rl.cpo", CPO_ARGS, CPO_RESUME, run_dir, seed=11, max_delay=3.0)
    assert events[-1] == "finished" and "killed mid-save" in events, events
    rows = _read_csv(run_dir / "progress.csv")
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]
    _assert_rows_equal(rows, _read_csv(cpo_reference / "progress.csv"))
    params = load_latest_checkpoint(run_dir)[1]["params"]
    assert torch.equal(params, load_latest_checkpoint(cpo_reference)[1]["params"])


def test_truncated_latest_checkpoint_falls_back_and_resumes_exactly(meta_reference, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(meta_reference, run_dir)
    newest = list_checkpoints(run_dir)[-1]
    newest.write_bytes(newest.read_bytes()[:200])  # a disk that lied
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        assert MetaCPOTrainer.from_run(run_dir).iteration == 3  # ckpt_000002: after iteration 2
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        meta_cpo.main(["--resume", str(run_dir), *META_RESUME])
    _assert_rows_equal(_read_csv(run_dir / "progress.csv"), _read_csv(meta_reference / "progress.csv"))
    assert torch.equal(MetaCPOTrainer.from_run(run_dir).theta, MetaCPOTrainer.from_run(meta_reference).theta)


# ------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("reference", ["meta_reference", "cpo_reference"])
def test_last_three_checkpoints_are_kept_and_load_weights_only(reference, request):
    run_dir = request.getfixturevalue(reference)
    files = list_checkpoints(run_dir)
    assert [p.name for p in files] == ["ckpt_000001.pt", "ckpt_000002.pt", "ckpt_000003.pt"]
    for step, path in enumerate(files, start=1):
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
        assert int(state["iteration"]) == step + 1  # the next iteration to run
        key = "theta" if reference == "meta_reference" else "params"
        assert state[key].dtype == torch.float64 and torch.isfinite(state[key]).all()


# ------------------------------------------------------------------------ non-finite batches
def _tiny_cfg(**kw) -> MetaCPOConfig:
    return tiny_meta_config(**kw)


def _poison(monkeypatch, field: str, value: float, call: int) -> None:
    """Make the ``call``-th batch collected by rl.meta_cpo carry ``value`` in ``field``."""
    original = meta_cpo.collect
    calls = [0]

    def collect(*args, **kwargs):
        batch = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            bad = getattr(batch, field).clone()
            bad.view(-1)[7] = value
            batch = dataclasses.replace(batch, **{field: bad})
        return batch

    monkeypatch.setattr(meta_cpo, "collect", collect)


def _tensors(obj, where="state"):
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}[{i}]")


def _assert_same_state(a, b, where="state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")


# Every batch is checked as it is sampled (rl.meta_cpo._checked_sampler): the task stops at the
# poisoned batch and its contribution is skipped with the cause named.


@pytest.mark.parametrize(("field", "value"), [("adv_r", float("nan")), ("obs", float("inf"))])
def test_non_finite_batch_is_skipped_logged_and_never_checkpointed(
    field, value, tmp_path, monkeypatch, capsys
):
    # iteration 0 collects M (K + 1) = 4 batches; the 5th is task 0's inner batch of iteration 1
    _poison(monkeypatch, field, value, call=5)
    run_dir = MetaCPOTrainer(_tiny_cfg(out=str(tmp_path / "run"))).train()
    rows = _read_csv(run_dir / "progress.csv")
    assert [r["case"] == "skipped" for r in rows] == [False, True]
    assert rows[0]["problem"] == ""
    assert rows[1]["problem"].startswith("task 0: non-finite"), rows[1]["problem"]
    assert "meta-iteration 1 skipped: task 0: non-finite" in capsys.readouterr().err
    # the steps taken are counted: 1600 in iteration 0; in iteration 1 task 0 stops at its
    # poisoned first batch (400) and task 1 runs its inner and validation batches (800)
    assert int(rows[1]["env_steps"]) == 1600 + 400 + 800
    before = torch.load(run_dir / "ckpt_000000.pt", weights_only=True)
    after = torch.load(run_dir / "ckpt_000001.pt", weights_only=True)
    assert after["iteration"] == 2
    # theta, critics, their optimisers and the normaliser are those of iteration 0
    for key in ("theta", "reward_critic", "cost_critic", "opt_r", "opt_c", "normalizer"):
        _assert_same_state(after[key], before[key], key)
    for where, t in _tensors(after):
        assert not t.is_floating_point() or torch.isfinite(t).all(), where


@pytest.mark.parametrize(
    ("field", "call", "expected"),
    [
        ("adv_r", 1, "task 0: non-finite adv_r in inner batch 0"),
        ("obs", 4, "task 1: non-finite obs in the validation batch"),
    ],
)
def test_skip_reason_names_the_task_the_tensor_and_the_batch(field, call, expected, monkeypatch):
    _poison(monkeypatch, field, float("nan"), call=call)
    trainer = MetaCPOTrainer(_tiny_cfg(iterations=1))
    theta = trainer.theta.clone()
    row = trainer.step()
    assert (row["case"], row["problem"]) == ("skipped", expected)
    assert torch.equal(trainer.theta, theta) and trainer.iteration == 1


# ------------------------------------------------------------------------ configuration
BAD_CONFIGS = [
    ({"inner_stepz": 2}, [], ["unknown config key 'inner_stepz'", "valid keys:", "inner_steps"]),
    ({"algo": "ppo"}, [], ["algo", "'ppo'", "meta-cpo", "fo-meta-cpo", "multitask-cpo"]),
    ({"cost_limit": -2.0}, [], ["cost_limit must be finite and >= 0", "-2.0"]),
    ({}, ["--cost-limit", "-1"], ["cost_limit must be finite and >= 0", "-1.0"]),
    ({}, ["--inner-delta", "0"], ["inner_delta must be > 0", "0.0"]),
    ({}, ["--meta-delta", "-0.5"], ["meta_delta must be > 0", "-0.5"]),
    ({}, ["--inner-steps", "0"], ["inner_steps must be >= 1", "got 0"]),
    ({}, ["--env", "atari"], ["env must be one of", "'safenav-button'", "'safety-circle'", "'atari'"]),
    ({}, ["--algo", "ppo"], ["--algo", "'ppo'", "'meta-cpo'", "'multitask-cpo'"]),
    ({}, ["--backend", "mpi"], ["--backend", "'mpi'", "'serial'", "'processes'", "'ray'"]),
]


@pytest.mark.parametrize(("file_keys", "argv", "messages"), BAD_CONFIGS)
def test_bad_configuration_is_refused_before_any_work(
    file_keys, argv, messages, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the default run folder would be runs/ in here
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"iterations": 1, **file_keys}))
    with pytest.raises(SystemExit) as exc:
        meta_cpo.main(["--config", str(config), *argv, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, (message, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # nothing was created


def test_wrong_number_of_cost_limits_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=r"cost_limit has 3 values but there are 2 constraints \['hazards', 'buttons'\]"
    ):
        meta_cpo.main(["--cost-limit", "1", "2", "3", "--out", str(tmp_path / "run")])
    assert list(tmp_path.iterdir()) == []
