"""The settings groups shared by rl.cpo and rl.meta_cpo, named seeds, typed records, --device."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from difftrust import TrustRegionStep
from rl.cpo import CPOConfig
from rl.cpo import main as cpo_main
from rl.meta_cpo import MetaCPOConfig, MetaCPOTrainer
from rl.meta_cpo import main as meta_main
from rl.meta_test import limit_columns
from rl.records import IterationRecord
from rl.runtime import load_latest_checkpoint
from rl.runtime.config import ConfigError, load_config
from rl.seeds import CPOSeed, Seed, derive_seed
from rl.settings import (
    AdvantageSettings,
    ConstraintSettings,
    CriticSettings,
    MetaTestSettings,
    RuntimeSettings,
    TrustRegionSettings,
    group,
    resolve_device,
)
from tests._configs import tiny_meta_config

#: Every flat option name the two programs had before the settings were grouped (command lines,
#: --config files and the config.json of run folders use them): none may disappear.
CPO_NAMES = (
    "env task steps steps_per_iter num_envs num_workers backend workers ray_address max_retries shards "
    "horizon seed cost_limit constrain debias cost_confidence delta damping cg_iters backtrack_coef "
    "max_backtracks kl_tolerance gamma lam cost_gamma cost_lam hidden init_log_std critic_hidden "
    "critic_lr critic_epochs critic_minibatch obs_normalize dtype threads out resume checkpoint_every "
    "progress tensorboard wandb"
).split()
META_NAMES = (
    "env algo iterations seed meta_batch inner_steps inner_delta meta_delta meta_metric cost_confidence "
    "debias frozen_metric batch_steps num_envs horizon cost_limit constrain damping cg_iters "
    "fisher_states cg_tol backtrack_coef max_backtracks kl_tolerance gamma lam cost_gamma cost_lam "
    "hidden init_log_std dtype critic_hidden critic_lr critic_epochs critic_minibatch test_tasks "
    "adapt_steps adapt_confidence adapt_batch_steps eval_steps threads backend workers ray_address "
    "max_retries shards out resume checkpoint_every keep_checkpoints progress tensorboard wandb"
).split()


def _names(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_both_programs_keep_every_flat_option_and_share_the_groups():
    assert set(CPO_NAMES) <= _names(CPOConfig)
    assert set(META_NAMES) <= _names(MetaCPOConfig)
    assert _names(CPOConfig) - set(CPO_NAMES) == {"cg_tol", "device"}  # new in rl.cpo
    assert _names(MetaCPOConfig) - set(META_NAMES) == {"device"}
    shared = (ConstraintSettings, TrustRegionSettings, AdvantageSettings, CriticSettings, RuntimeSettings)
    for cls in shared:
        assert issubclass(CPOConfig, cls) and issubclass(MetaCPOConfig, cls)
    assert issubclass(MetaCPOConfig, MetaTestSettings) and not issubclass(CPOConfig, MetaTestSettings)
    # the defaults each program had before (where they differ, the program redeclares the field)
    cpo, meta = CPOConfig(), MetaCPOConfig()
    assert (cpo.cg_iters, cpo.max_backtracks, cpo.critic_epochs, cpo.critic_minibatch) == (15, 15, 10, 128)
    assert (meta.cg_iters, meta.max_backtracks, meta.critic_epochs, meta.critic_minibatch) == (10, 10, 5, 256)
    assert (cpo.cost_limit, meta.cost_limit, cpo.workers, meta.workers) == (25.0, 5.0, None, 2)
    assert (cpo.checkpoint_every, meta.checkpoint_every) == (10, 1)
    # truncated conjugate gradient (stopping below 1e-10, the former default tolerance, as before)
    assert cpo.cg_tol is None and meta.cg_tol is None


def test_group_takes_a_groups_values_out_of_a_config():
    cfg = MetaCPOConfig(gamma=0.9, cost_lam=0.5, damping=0.2, cg_iters=7, critic_lr=0.01)
    assert group(AdvantageSettings, cfg) == AdvantageSettings(
        gamma=0.9, lam=0.95, cost_gamma=0.99, cost_lam=0.5
    )
    assert cfg.gae() == {"gamma": 0.9, "lam": 0.95, "cost_gamma": 0.99, "cost_lam": 0.5}
    assert cfg.update_options() == {
        "damping": 0.2,
        "backtrack_coef": 0.8,
        "max_backtracks": 10,
        "kl_tolerance": 1.5,
    }
    step = cfg.step(0.03)
    assert type(step) is TrustRegionStep and (step.delta, step.cg_iters, step.cg_tol) == (0.03, 7, None)
    own = dataclasses.replace(cfg, cg_tol=1e-6).step(0.03)
    assert type(own) is TrustRegionStep and (own.delta, own.cg_iters, own.cg_tol) == (0.03, 7, 1e-6)
    assert group(CriticSettings, cfg).critic_lr == 0.01


def test_one_resolution_of_cost_limits():
    channels = ("hazards", "buttons")
    assert ConstraintSettings(cost_limit=5.0).limits(channels) == [5.0, 5.0]
    assert ConstraintSettings(cost_limit=(5.0, 8.0)).limits(channels) == [5.0, 8.0]
    assert ConstraintSettings(cost_limit=(3.0,), constrain="total").limits(channels) == [3.0]
    assert ConstraintSettings(cost_limit=None).limits(channels) is None
    assert ConstraintSettings(constrain="total").constraint_names(channels) == ("total",)
    with pytest.raises(
        ConfigError, match=r"cost_limit has 3 values but there are 2 constraints \['hazards', 'buttons'\]"
    ):
        ConstraintSettings(cost_limit=(1.0, 2.0, 3.0)).limits(channels)
    with pytest.raises(ConfigError, match=r"cost_limit has 2 values but there is 1 constraint \['total'\]"):
        ConstraintSettings(cost_limit=(1.0, 2.0), constrain="total").limits(channels)
    # meta-trpo records the limits the constrained methods are given, from the same resolution
    columns = limit_columns(MetaCPOConfig(algo="meta-trpo", cost_limit=(4.0, 6.0)), channels)
    assert math.isnan(columns.pop("cost_limit")) and columns == {"limit_hazards": 4.0, "limit_buttons": 6.0}
    with pytest.raises(ConfigError, match="'cost_limit' expects float or a list of float, got None"):
        load_config(MetaCPOConfig, {"cost_limit": None})  # Meta-CPO without a constraint: --algo meta-trpo


def test_config_files_written_before_the_grouping_still_load(tmp_path):
    """A run folder's config.json of rl.cpo from before (no cg_tol, no device) loads with the
    defaults that reproduce its run."""
    old = {name: value for name, value in dataclasses.asdict(CPOConfig()).items() if name in CPO_NAMES}
    old["hidden"], old["critic_hidden"] = [32], [32]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    cfg = load_config(CPOConfig, path)
    assert cfg.cg_tol is None and cfg.device == "cpu" and cfg.hidden == (32,)
    assert cfg.step(cfg.delta).cg_tol is None  # truncated CG (stops early only where the former default did)


def test_seed_purposes_keep_their_values():
    assert [int(s) for s in Seed] == list(range(1, 10))
    assert Seed.TASK == 4 and Seed.TEST_TASKS == 6 and Seed.EVALUATION == 9 and CPOSeed.SAMPLING == 7
    assert derive_seed(3, 2, 1, Seed.CRITIC_FIT) == derive_seed(3, 2, 1, 5)
    # the value itself (a change would silently change every run)
    assert derive_seed(0, 0, 0, Seed.POLICY_INIT) == derive_seed(0, 0, 0, 1) != derive_seed(0, 0, 0, 2)


def test_iteration_record_row_has_the_progress_columns_in_order():
    rec = IterationRecord(
        ret_pre=1.0,
        cost_pre=np.array([2.0, 3.0]),
        ret_post=4.0,
        cost_post=np.array([5.0, 6.0]),
        step={
            "case": "constrained",
            "lam": 0.5,
            "nu": [0.1, 0.2],
            "b_theta": [-1.0, -2.0],
            "accepted": 0.8,
            "kl": 0.01,
        },
        inner_cases="trust-region constrained",
        env_steps=800,
    )
    row = rec.row(3, 2400, 1.5, ("hazards", "buttons"), ("hazards", "buttons"), debias=True)
    assert list(row) == [
        "iteration", "env_steps", "ret_pre", "cost_pre", "ret_post", "cost_post", "kl", "lam", "nu",
        "case", "accepted", "inner_cases", "problem", "seconds", "cost_pre_hazards", "cost_post_hazards",
        "cost_pre_buttons", "cost_post_buttons", "nu_hazards", "nu_buttons", "b_hazards", "b_buttons",
        "optimism_hazards", "optimism_buttons",
    ]  # fmt: skip
    assert (row["iteration"], row["env_steps"], row["cost_pre"], row["cost_post"]) == (3, 2400, 5.0, 11.0)
    assert (
        row["nu"] == pytest.approx(0.3) and row["b_buttons"] == -2.0 and math.isnan(row["optimism_hazards"])
    )
    assert "_env_steps" not in row


def test_device_cuda_without_a_gpu_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda: .*; use --device cpu"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.chdir(tmp_path)
    for main in (cpo_main, meta_main):
        with pytest.raises(SystemExit) as exc:
            main(["--device", "cuda", "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "run")])
        assert exc.value.code == 2
        assert "error: --device cuda:" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(SystemExit):
        cpo_main(["--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


CPO_TINY = [
    "--steps", "1600", "--steps-per-iter", "800", "--num-envs", "4", "--hidden", "8", "--critic-hidden", "8",
    "--critic-epochs", "1", "--no-progress", "--no-tensorboard", "--backend", "serial",
]  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpo_on_cuda_follows_the_cpu_run(tmp_path):
    params = {}
    for device in ("cpu", "cuda"):
        cpo_main([*CPO_TINY, "--device", device, "--out", str(tmp_path / device)])
        params[device] = load_latest_checkpoint(tmp_path / device)[1]["params"]
    assert params["cuda"].device.type == "cpu"  # checkpoints stay on the CPU
    torch.testing.assert_close(params["cuda"], params["cpu"], rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_meta_iteration_on_cuda_follows_the_cpu_one():
    thetas = {}
    for device in ("cpu", "cuda"):
        trainer = MetaCPOTrainer(tiny_meta_config(device=device, algo="meta-cpo"))
        trainer.step()
        thetas[device] = trainer.theta
    assert thetas["cuda"].device.type == "cpu"
    torch.testing.assert_close(thetas["cuda"], thetas["cpu"], rtol=1e-6, atol=1e-8)
