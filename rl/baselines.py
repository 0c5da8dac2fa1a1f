"""The baselines of ``python -m rl.meta_cpo`` as step functions beside the meta-update.

* ``multitask-cpo`` (:func:`multitask_step`): one CPO update (:func:`rl.cpo_step.cpo_update`, with
  line search) on the pooled batches of the iteration's training tasks; the same adaptation at
  meta-test as Meta-CPO.
* ``cpo-scratch``: no meta-training at all, CPO adaptation from the initial policy at meta-test
  (the trainer runs no iteration).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl.cpo_step import cpo_update, on_device
from rl.meta_update import Setup
from rl.records import IterationRecord
from rl.rollout import Batch

__all__ = ["multitask_step", "pool_batches"]


def pool_batches(batches: Sequence[Batch]) -> Batch:
    """One batch of the batches of several tasks: rows concatenated, episode statistics weighted
    by each batch's episodes."""
    episodes = np.array([max(b.num_episodes, 1) for b in batches], dtype=float)
    w = episodes / episodes.sum()
    return replace(
        batches[0],
        **{name: torch.cat([getattr(b, name) for b in batches]) for name in Batch._TENSORS},
        ep_ret=float(sum(wi * b.ep_ret for wi, b in zip(w, batches, strict=True))),
        ep_cost=np.sum([wi * np.asarray(b.ep_cost) for wi, b in zip(w, batches, strict=True)], axis=0),
        ep_len=float(sum(wi * b.ep_len for wi, b in zip(w, batches, strict=True))),
        num_episodes=int(sum(b.num_episodes for b in batches)),
        env_steps=int(sum(b.env_steps for b in batches)),
        episode_costs=None
        if any(b.episode_costs is None for b in batches)
        else np.concatenate([b.episode_costs for b in batches]),
    )


def multitask_step(
    setup: Setup, theta: Tensor, tasks: Sequence[Any], seeds: Sequence[int]
) -> tuple[Tensor, IterationRecord, list[Batch]]:
    """One iteration of multi-task CPO: a batch of ``pi_theta`` on each task (its environment and
    sampling seeded by ``seeds``), then a CPO update on the pooled batch with the inner trust
    region ``cfg.inner_delta``.

    Returns:
        ``(new_theta, record, batches)``: the record has no post-adaptation values (NaN) and the
        update's diagnostics as its step; the batches are for the critics and the normaliser.
    """
    cfg = setup.cfg
    batches = []
    for task, s in zip(tasks, seeds, strict=True):
        env = setup.make_env(task, s)
        try:
            batches.append(setup.collect(env, theta, torch.Generator().manual_seed(s)))
        finally:
            env.close()
    new, info = cpo_update(  # on setup.device; the batches stay on the CPU
        setup.policy,
        theta.to(setup.device),
        on_device(setup.constrained_view(pool_batches(batches)), setup.device),
        setup.limits,
        cfg.step(cfg.inner_delta),
        **cfg.update_options(),
        debias=cfg.debias,
        confidence=cfg.cost_confidence,
    )
    info["b_theta"] = info.pop("b", [])
    info["optimism_theta"] = info.pop("optimism", [])
    nan_c = np.full(len(setup.cost_channels), np.nan)
    record = IterationRecord(
        ret_pre=float(np.mean([b.ep_ret for b in batches])),
        cost_pre=np.mean([np.asarray(b.ep_cost) for b in batches], axis=0),
        ret_post=float("nan"),
        cost_post=nan_c,
        step=info,
        inner_cases="",
        env_steps=sum(b.env_steps for b in batches),
    )
    return new.to(theta.device), record, batches
