"""Fault tolerance of the training programs: SIGKILL at random points (mid-checkpoint-write
included) then ``--resume`` gives the uninterrupted run exactly; non-finite batches are skipped,
logged and never reach a checkpoint; configurations are checked before any work; checkpoints
are pruned to the last 3 and load with ``weights_only=True``."""

from __future__ import annotations

import csv
import dataclasses
import errno
import importlib
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
import rl.meta_update as meta_update
from rl.meta_cpo import MetaCPOConfig, MetaCPOTrainer
from rl.runtime import list_checkpoints, load_latest_checkpoint
from rl.runtime.checkpoint import SettingsMismatchError
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
    """Make the ``call``-th batch collected by rl.meta_cpo (whole or in shards) carry ``value`` in
    ``field``."""
    calls = [0]

    def poisoned(original):
        def collect(*args, **kwargs):
            batch = original(*args, **kwargs)
            calls[0] += 1
            if calls[0] == call:
                bad = getattr(batch, field).clone()
                bad.view(-1)[7] = value
                batch = dataclasses.replace(batch, **{field: bad})
            return batch

        return collect

    for name in ("collect", "collect_sharded"):
        monkeypatch.setattr(meta_update, name, poisoned(getattr(meta_update, name)))


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


# Every batch is checked as it is sampled (rl.meta_update._checked_sampler): the task stops at the
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
    ({"cost_limit": -2.0}, [], ["cost_limit must be >= 0, got -2.0"]),
    ({"damping": float("nan")}, [], ["damping must be finite, got nan"]),  # JSON's NaN
    ({}, ["--cost-limit", "-1"], ["cost_limit must be >= 0, got -1.0"]),
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


def test_wrong_number_of_cost_limits_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        meta_cpo.main(
            ["--cost-limit", "1", "2", "3", "--env", "safenav-button", "--out", str(tmp_path / "run")]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: cost_limit has 3 values but there are 2 constraints ['hazards', 'buttons']" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ usage errors, one validation
CLI_PROBES = [
    ("rl.cpo", ["--cost-limit", "-5"], "cost_limit must be >= 0 or none, got -5.0"),
    ("rl.cpo", ["--cost-limit", "5", "nan"], "cost_limit must be finite, got (5.0, nan)"),
    ("rl.cpo", ["--damping", "nan"], "damping must be finite, got nan"),
    ("rl.cpo", ["--init-log-std", "nan"], "init_log_std must be finite, got nan"),
    ("rl.cpo", ["--delta", "inf"], "delta must be finite, got inf"),
    ("rl.cpo", ["--steps", "100"], "steps (100) must be >= steps_per_iter (16000)"),
    ("rl.cpo", ["--seed", "-1"], "seed must be in [0, 4294967295], got -1"),
    ("rl.cpo", ["--config", "missing.yaml"], "config file not found: missing.yaml"),
    ("rl.cpo", ["--env", "nosuch"], "--env nosuch: unknown environment 'nosuch'"),
    ("rl.cpo", ["--cost-limit", "5", "5", "5"], "cost_limit has 3 values but there is 1 constraint"),
    ("rl.cpo", ["--resume", "no/run"], "--resume no/run: no config.json there; expected a run folder of rl.cpo"),
    ("rl.meta_cpo", ["--damping", "nan"], "damping must be finite, got nan"),
    ("rl.meta_cpo", ["--cg-tol", "nan"], "cg_tol must be finite, got nan"),
    ("rl.meta_cpo", ["--init-log-std", "nan"], "init_log_std must be finite, got nan"),
    ("rl.meta_cpo", ["--kl-tolerance", "inf"], "kl_tolerance must be finite, got inf"),
    ("rl.meta_cpo", ["--max-retries", "-1"], "max_retries must be >= 0, got -1"),
    ("rl.meta_cpo", ["--hidden", "8", "0"], "hidden must be >= 1 (each value), got (8, 0)"),
    ("rl.meta_cpo", ["--resume", "no/run"], "--resume no/run: no config.json there; expected a run folder of rl.meta_cpo"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "argv", "message"), CLI_PROBES)
def test_bad_command_lines_are_usage_errors_before_any_work(
    module, argv, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the default run folder would be runs/ in here
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main([*argv, "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and f"error: {message}" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing was created


@pytest.mark.parametrize("module", ["rl.cpo", "rl.meta_cpo"])
def test_taken_out_folder_is_a_usage_error_and_stays_untouched(module, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(["--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert f"error: --out {tmp_path}: " in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------ run records that cannot lie
def _copy_run(src: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir)
    return run_dir


def _contents(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def _edit_config(run_dir: Path, **changes) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    old = {k: config[k] for k in changes}
    (run_dir / "config.json").write_text(json.dumps({**config, **changes}))
    return old


@pytest.mark.parametrize(("key", "value"), [("algo", "meta-trpo"), ("seed", 5), ("batch_steps", 800)])
def test_edited_config_json_refuses_to_resume_and_names_the_setting(
    key, value, meta_reference, tmp_path, capsys
):
    run_dir = _copy_run(meta_reference, tmp_path)
    old = _edit_config(run_dir, **{key: value})[key]
    before = _contents(run_dir)
    with pytest.raises(SystemExit) as exc:
        meta_cpo.main(["--resume", str(run_dir), *META_RESUME])
    assert exc.value.code == 2
    expected = f"{key} is {value!r} in config.json but {old!r} in the checkpoint"
    assert expected in capsys.readouterr().err
    assert _contents(run_dir) == before  # nothing rewritten
    with pytest.raises(SettingsMismatchError, match=expected):  # nor loaded for adaptation
        MetaCPOTrainer.from_run(run_dir)


@pytest.mark.parametrize(("key", "value"), [("seed", 3), ("cost_limit", 30.0)])
def test_edited_cpo_config_json_refuses_to_resume(key, value, cpo_reference, tmp_path, capsys):
    from rl.cpo import main

    run_dir = _copy_run(cpo_reference, tmp_path)
    old = _edit_config(run_dir, **{key: value})[key]
    before = _contents(run_dir)
    with pytest.raises(SystemExit) as exc:
        main(["--resume", str(run_dir), "--steps", "2000", *CPO_RESUME])
    assert exc.value.code == 2
    assert f"{key} is {value!r} in config.json but {old!r} in the checkpoint" in capsys.readouterr().err
    assert _contents(run_dir) == before


def test_resume_with_config_file_applies_the_allowed_keys_and_refuses_the_others(
    meta_reference, tmp_path, capsys
):
    run = str(meta_reference)
    recorded = json.loads((meta_reference / "config.json").read_text())
    allowed = tmp_path / "allowed.json"
    allowed.write_text(json.dumps({"adapt_steps": 2, "eval-steps": 400}))
    cfg = meta_cpo.parse_args(["--resume", run, "--config", str(allowed)])
    assert (cfg.adapt_steps, cfg.eval_steps, cfg.iterations) == (2, 400, recorded["iterations"])
    assert (
        meta_cpo.parse_args(["--resume", run, "--config", str(allowed), "--adapt-steps", "3"]).adapt_steps
        == 3
    )
    # the run's own config.json as --config changes nothing
    own = meta_cpo.parse_args(["--resume", run, "--config", str(meta_reference / "config.json")])
    assert dataclasses.asdict(own) == {**recorded, "hidden": tuple(recorded["hidden"]),
                                       "critic_hidden": tuple(recorded["critic_hidden"]), "resume": run}  # fmt: skip
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps({"adapt_steps": 2, "inner_delta": 2 * recorded["inner_delta"]}))
    with pytest.raises(SystemExit) as exc:
        meta_cpo.parse_args(["--resume", run, "--config", str(refused)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"inner_delta ({recorded['inner_delta']!r} in the run, {2 * recorded['inner_delta']!r} asked) cannot change"
        in err
    )


def test_resume_never_shrinks_the_recorded_iterations(meta_reference, cpo_reference, tmp_path, capsys):
    from rl.cpo import main as cpo_main

    meta_run = _copy_run(meta_reference, tmp_path / "meta")
    before = _contents(meta_run)
    with pytest.raises(SystemExit) as exc:
        meta_cpo.main(["--resume", str(meta_run), "--iterations", "2", *META_RESUME])
    assert exc.value.code == 2
    assert "--iterations 2 is below the 4 meta-iterations the run folder" in capsys.readouterr().err
    assert _contents(meta_run) == before

    cpo_run = _copy_run(cpo_reference, tmp_path / "cpo")
    before = _contents(cpo_run)
    with pytest.raises(SystemExit) as exc:
        cpo_main(["--resume", str(cpo_run), "--steps", "800", *CPO_RESUME])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--steps 800 gives 2 iterations of 400 steps, fewer than the 4 this run folder holds" in err
    assert _contents(cpo_run) == before
    # extending is allowed, and config.json records it
    cpo_main(["--resume", str(cpo_run), "--steps", "2000", *CPO_RESUME])
    assert json.loads((cpo_run / "config.json").read_text())["steps"] == 2000
    assert [int(r["iteration"]) for r in _read_csv(cpo_run / "progress.csv")] == [0, 1, 2, 3, 4]


def _damage(state: dict, how: str) -> None:
    if how == "no rng":
        del state["rng"]
    elif how == "theta of another shape":
        state["theta"] = state["theta"][:-1]
    elif how == "iteration not that of its name":
        state["iteration"] = 7
    elif how == "settings not matching their fingerprint":
        state["run_settings"] = state["run_settings"].replace('"seed":0', '"seed":1')


@pytest.mark.parametrize(
    "how", ["no rng", "theta of another shape", "iteration not that of its name", "settings not matching their fingerprint"]
)  # fmt: skip
def test_inconsistent_latest_checkpoint_falls_back_like_a_corrupt_one(how, meta_reference, tmp_path):
    run_dir = _copy_run(meta_reference, tmp_path)
    newest = list_checkpoints(run_dir)[-1]
    state = torch.load(newest, weights_only=True)
    _damage(state, how)
    torch.save(state, newest)
    with pytest.warns(RuntimeWarning, match=r"skipping inconsistent checkpoint .*ckpt_000003\.pt"):
        trainer = MetaCPOTrainer.from_run(run_dir)
    previous = torch.load(run_dir / "ckpt_000002.pt", weights_only=True)
    assert trainer.iteration == 3 and torch.equal(trainer.theta, previous["theta"])


def test_no_consistent_checkpoint_starts_over_from_an_untouched_trainer(meta_reference, tmp_path):
    run_dir = _copy_run(meta_reference, tmp_path)
    for path in list_checkpoints(run_dir):
        state = torch.load(path, weights_only=True)
        del state["rng"]  # every other entry restores first: the restore must be undone
        torch.save(state, path)
    with pytest.warns(RuntimeWarning, match="skipping inconsistent checkpoint"):
        trainer = MetaCPOTrainer.from_run(run_dir)
    fresh = MetaCPOTrainer(trainer.cfg)
    assert trainer.iteration == 0 and torch.equal(trainer.theta, fresh.theta)
    _assert_same_state(trainer.setup.reward_critic.state_dict(), fresh.setup.reward_critic.state_dict())


# ------------------------------------------------------------------------ plots are never fatal
def test_full_disk_while_plotting_is_a_warning(meta_reference, cpo_reference, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from rl.cpo import _plot

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    trainer = MetaCPOTrainer.from_run(_copy_run(meta_reference, tmp_path / "meta"))
    with pytest.warns(RuntimeWarning, match=r"could not plot .*adaptation\.png: OSError: .*No space left"):
        trainer.plot()
    cpo_run = _copy_run(cpo_reference, tmp_path / "cpo")
    with pytest.warns(RuntimeWarning, match=r"could not plot .*training\.png: OSError: .*No space left"):
        _plot(cpo_run, ("hazards",), ("hazards",), [25.0])
