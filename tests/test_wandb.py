"""Optional Weights & Biases logging (rl.runtime.logging, --wandb), with the real package offline."""

from __future__ import annotations

import sys

import pytest

from rl.runtime.logging import RunLogger, make_run_dir


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    with pytest.raises(ImportError, match=r"pip install 'difftrust\[wandb\]'"):
        RunLogger(tmp_path, tensorboard=False, wandb=True)


@pytest.mark.slow
def test_wandb_run_gets_the_scalars_and_resume_keeps_its_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = make_run_dir(tmp_path, ["safenav-goal", "cpo", "seed0"])
    with RunLogger(run_dir, tensorboard=False, wandb={"seed": 3, "env": "safenav-goal"}) as log:
        run = log.wandb_run
        for i in range(3):
            log.log({"iteration": i, "return": 1.5 * i, "cost": 3.0 - i, "case": "normal"})
        assert run.config["seed"] == 3 and run.config["env"] == "safenav-goal"
        # W&B commits a step when the next one arrives: step 1's numbers are in the summary
        assert run.summary["return"] == 1.5 and run.summary["cost"] == 2.0
        assert "case" not in run.summary.keys() and "iteration" not in run.summary.keys()
        first_id = run.id
    assert log.wandb_run is None  # finished on close
    assert (run_dir / "wandb_id.txt").read_text().strip() == first_id
    assert (run_dir / "progress.csv").read_text().splitlines()[0] == "iteration,return,cost,case"
    with RunLogger(run_dir, tensorboard=False, wandb=True, resume_iteration=1) as log:
        assert log.wandb_run.id == first_id  # --resume continues the same W&B run
