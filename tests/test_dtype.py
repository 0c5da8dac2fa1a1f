"""--dtype of rl.meta_cpo: the policy, the critics and the meta-gradient in the chosen dtype."""

from __future__ import annotations

import math

import pytest
import torch

from rl.meta_cpo import MetaCPOTrainer
from tests._configs import tiny_meta_config


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_meta_iteration_runs_in_the_chosen_dtype(dtype):
    trainer = MetaCPOTrainer(tiny_meta_config(dtype=dtype))
    expected = getattr(torch, dtype)
    theta0 = trainer.theta.clone()
    assert theta0.dtype == expected
    assert {p.dtype for p in trainer.setup.reward_critic.parameters()} == {expected}
    assert {p.dtype for p in trainer.setup.cost_critic.parameters()} == {expected}
    row = trainer.step()
    assert trainer.theta.dtype == expected and torch.isfinite(trainer.theta).all()
    assert not torch.equal(trainer.theta, theta0)  # the meta-step moved the policy
    assert row["iteration"] == 0 and math.isfinite(row["ret_post"]) and math.isfinite(row["cost_post"])


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        MetaCPOTrainer(tiny_meta_config(dtype="float16"))
