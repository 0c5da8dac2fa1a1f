"""The vectorised environment protocol shared by every task family.

Every environment returned by :func:`rl.envs.make` follows this contract:

* ``num_envs``, ``obs_dim``, ``act_dim`` (ints), ``horizon`` (episode length at
  which sub-environments are truncated), ``cost_channels`` (tuple of names; the
  scalar ``cost`` is their sum), ``task`` (the task dataclass, or ``None``),
  ``action_low`` / ``action_high`` (float64 arrays of shape ``(act_dim,)``).
* ``reset(seed=None) -> (obs, info)``: ``obs`` is float64 ``(num_envs, obs_dim)``.
  Sub-environment ``i`` is seeded with ``seed + i``; ``seed=None`` keeps the
  streams seeded at construction.
* ``step(actions) -> (obs, reward, cost, terminated, truncated, info)``, all with
  leading dimension ``num_envs``: ``obs`` float64 ``(N, obs_dim)``, ``reward`` and
  ``cost`` float64 ``(N,)``, ``terminated`` / ``truncated`` bool ``(N,)``.
  ``info["costs"]`` maps each cost channel to a float64 ``(N,)`` array.
  Sub-environments auto-reset: where ``terminated | truncated``, ``obs`` row ``i``
  is already the first observation of the next episode and
  ``info["final_obs"][i]`` is the last observation of the finished one
  (``info["final_obs"]`` is a full ``(N, obs_dim)`` array; rows of unfinished
  sub-environments equal ``obs``). Actions outside the bounds are clipped.
* ``close()``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VecEnv(Protocol):
    num_envs: int
    obs_dim: int
    act_dim: int
    horizon: int
    cost_channels: tuple[str, ...]
    task: Any
    action_low: np.ndarray
    action_high: np.ndarray

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]: ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]: ...

    def close(self) -> None: ...
