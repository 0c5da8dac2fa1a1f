"""Loading a finished run, adapting to a chosen task, GIF rendering (rl.adapt)."""

from __future__ import annotations

import csv
import json

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
