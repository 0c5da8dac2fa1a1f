"""Loading a finished run, adapting to a chosen task, GIF rendering (rl.adapt)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import imageio.v2 as imageio
import pytest

from rl.adapt import adapt_to_task, load_run, main
from rl.meta_cpo import MetaCPOTrainer
from tests._configs import tiny_meta_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = tiny_meta_config(iterations=1, adapt_steps=1, out=str(out))
    MetaCPOTrainer(cfg).train()
    return out


def test_load_and_adapt_from_python(run_dir):
    trainer = load_run(run_dir)
    assert trainer.iteration == 1
    task = trainer.dist.sample(1, split="test", seed=5)[0]
    rows, params = adapt_to_task(trainer, task, steps=2)
    assert [r["adapt_step"] for r in rows] == [0, 1, 2]
    assert len(params) == 3 and not params[0].equal(params[2])
    assert all(r["ep_cost"] >= 0 for r in rows)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        adapt_to_task(trainer, task, steps=-1)


def test_adaptation_batch_size(run_dir):
    """adapt_batch_steps sizes every adaptation/evaluation batch (sub-environments scaled so
    that each runs whole episodes); none keeps batch_steps."""
    trainer = load_run(run_dir)
    task = trainer.dist.sample(1, split="test", seed=5)[0]
    rows, _ = adapt_to_task(trainer, task, steps=1)
    assert [r["env_steps"] for r in rows] == [trainer.cfg.batch_steps] * 2 == [400, 400]
    rows_big, params = adapt_to_task(trainer, task, steps=1, batch_steps=1200)
    assert [r["env_steps"] for r in rows_big] == [1200, 1200]
    trainer.cfg = trainer.setup.cfg = replace(trainer.cfg, adapt_batch_steps=1200)  # as a run's option
    assert adapt_to_task(trainer, task, steps=1)[0] == rows_big
    assert len(params) == 2 and not params[0].equal(params[1])
    assert rows_big[0]["ep_ret"] != rows[0]["ep_ret"]  # a different (larger) sample of the same policy
    with pytest.raises(ValueError, match="batch_steps must be >= 1, got 0"):
        adapt_to_task(trainer, task, batch_steps=0)


def test_evaluate_whole_episodes_and_standard_errors(run_dir):
    import numpy as np
    import torch

    from rl.meta_cpo import evaluate

    trainer = load_run(run_dir)
    task = trainer.dist.sample(1, split="test", seed=5)[0]
    row = evaluate(trainer.setup, trainer.theta, task, 1000, seed=3)
    assert (row["env_steps"], row["episodes"]) == (1000, 5)  # 5 sub-environments x one 200-step episode
    assert row == evaluate(trainer.setup, trainer.theta, task, 1000, seed=3)  # seeded
    other = evaluate(trainer.setup, trainer.theta, task, 1000, seed=4)
    assert other["ep_ret"] != row["ep_ret"]
    # the same batch collected by hand: its per-episode costs give the means and standard errors
    setup = replace(trainer.setup, cfg=replace(trainer.cfg, batch_steps=1000, num_envs=5))
    env = setup.make_env(task, 3)
    batch = setup.collect(env, trainer.theta, torch.Generator().manual_seed(3))
    env.close()
    assert batch.episode_costs.shape == (5, len(trainer.setup.cost_channels))
    for j, ch in enumerate(trainer.setup.cost_channels):
        costs = batch.episode_costs[:, j]
        assert row[f"cost_{ch}"] == pytest.approx(costs.mean())
        assert row[f"sem_{ch}"] == pytest.approx(costs.std(ddof=1) / np.sqrt(5))
    with pytest.raises(ValueError, match="evaluation steps must be an int >= 1, got 0"):
        evaluate(trainer.setup, trainer.theta, task, 0, seed=3)


def test_cli_with_task_file_and_gif(run_dir, tmp_path):
    trainer = load_run(run_dir)
    task = trainer.dist.sample(1, split="train", seed=9)[0]
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task.to_dict()))
    gif, out = tmp_path / "ep.gif", tmp_path / "rows.csv"
    main([str(run_dir), "--task-file", str(task_file), "--steps", "1", "--gif", str(gif), "--out", str(out)])
    frames = imageio.mimread(gif)
    # one frame per step (the GIF writer may merge identical consecutive frames)
    assert 50 <= len(frames) <= trainer.setup.make_env(task, 0).horizon + 1
    assert (frames[0] != frames[-1]).any()
    assert frames[0].shape[2] == 3
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["adapt_step"]) for r in rows] == [0, 1]


def test_load_run_rejects_non_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"family": "safenav-button",', "is not valid JSON: Expecting"),
        ("[1, 2]", "holds a JSON list; expected an object (a task dict)"),
        ("", "is not valid JSON"),
    ],
)
def test_bad_task_file_is_a_usage_error_naming_the_file(content, message, run_dir, tmp_path, capsys):
    task_file = tmp_path / "task.json"
    task_file.write_text(content)
    with pytest.raises(SystemExit) as exc:
        main([str(run_dir), "--task-file", str(task_file)])
    assert exc.value.code == 2
    assert f"error: task file {task_file} {message}" in capsys.readouterr().err


def test_task_file_of_the_wrong_shape_names_the_file_and_the_key(tmp_path):
    from rl.adapt import load_task_file

    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({"family": "safenav-button", "arena_half_size": 2.0, "colour": 1}))
    with pytest.raises(
        ValueError, match=rf"task file {task_file} is not a task of 'safenav-button': .*'colour'"
    ):
        load_task_file(task_file, "safenav-button")
    with pytest.raises(ValueError, match=rf"task file {tmp_path / 'none.json'}: cannot read it"):
        load_task_file(tmp_path / "none.json", "safenav-button")


def test_bad_arguments_are_usage_errors(run_dir, tmp_path, capsys):
    cases = [
        ([str(tmp_path)], f"{tmp_path} has no config.json"),
        ([str(run_dir), "--steps", "-1"], "--steps must be >= 0, got -1"),
        ([str(run_dir), "--batch-steps", "0"], "--batch-steps must be >= 1, got 0"),
        ([str(run_dir), "--task-index", "-2"], "--task-index must be >= 0, got -2"),
        ([str(run_dir), "--task-seed", "-1"], "--task-seed must be >= 0, got -1"),
        (
            [str(run_dir), "--gif", str(tmp_path / "no" / "x.gif")],
            f"--gif {tmp_path / 'no' / 'x.gif'}: the folder {tmp_path / 'no'} does not exist",
        ),
        ([str(run_dir), "--steps", "two"], "argument --steps: invalid int value: 'two'"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert f"error: {message}" in capsys.readouterr().err, argv


def test_edited_run_folder_is_a_usage_error(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden": [16]}))
    with pytest.raises(SystemExit) as exc:
        main([str(copy)])
    assert exc.value.code == 2
    assert "hidden is [16] in config.json but [8] in the checkpoint" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    import re

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    options = capsys.readouterr().out.split("options:", 1)[1]
    blocks = {
        b.split()[0].rstrip(","): " ".join(b.split()) for b in re.split(r"\n  (?=-)", options) if b.strip()
    }
    for option in ("--split", "--task-index", "--task-seed", "--task-file", "--steps", "--batch-steps",
                   "--seed", "--gif", "--out"):  # fmt: skip
        assert "(default:" in blocks[option], blocks[option]


def test_hiddennav_task_file_reads_back_the_task_or_names_the_file(tmp_path):
    from rl.adapt import load_task_file
    from rl.envs.hiddennav import HiddenNavTask, task_distribution

    task = task_distribution("hiddennav-hazard").sample(1, split="test", seed=3)[0]
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task.to_dict()))
    loaded = load_task_file(task_file, "hiddennav-hazard")
    assert isinstance(loaded, HiddenNavTask) and loaded == task
    task_file.write_text(json.dumps({**task.to_dict(), "colour": 1}))
    with pytest.raises(
        ValueError, match=rf"task file {task_file} is not a task of 'hiddennav-hazard': .*'colour'"
    ):
        load_task_file(task_file, "hiddennav-hazard")
