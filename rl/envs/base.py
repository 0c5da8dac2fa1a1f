"""The vectorised environment protocol shared by every task family.

Every environment returned by :func:`rl.envs.make` is a
:class:`gymnasium.vector.VectorEnv` (Gymnasium 0.29 conventions) with a few extra
attributes for safe RL:

* Gymnasium's ``num_envs``, ``single_observation_space`` / ``observation_space``
  (float64 ``Box``, finite bounds where the task has them), ``single_action_space`` /
  ``action_space`` (float64 ``Box``).
* ``obs_dim``, ``act_dim`` (ints), ``horizon`` (episode length at which
  sub-environments are truncated), ``cost_channels`` (tuple of names; the scalar
  cost is their sum), ``task`` (the task dataclass, or ``None``), ``action_low`` /
  ``action_high`` (float64 arrays of shape ``(act_dim,)``).
* ``reset(*, seed=None, options=None) -> (obs, info)``: ``obs`` is float64
  ``(num_envs, obs_dim)``. An int ``seed`` seeds sub-environment ``i`` with
  ``seed + i`` (a list gives one seed per sub-environment); ``seed=None`` keeps the
  streams seeded at construction.
* ``step(actions) -> (obs, reward, terminated, truncated, info)``, all with leading
  dimension ``num_envs``: ``obs`` float64 ``(N, obs_dim)``, ``reward`` float64
  ``(N,)``, ``terminated`` / ``truncated`` bool ``(N,)``. Actions outside the
  bounds are clipped. ``info`` holds:

  - ``info["cost"]``: float64 ``(N,)``, the sum of the channels;
  - ``info["costs"]``: a dict mapping each cost channel to a float64 ``(N,)`` array;
  - ``info["goal_reached"]``: bool ``(N,)``;
  - for each of these keys ``k``, Gymnasium's mask ``info["_" + k]`` (all ``True``).

  Sub-environments auto-reset: where ``terminated | truncated``, ``obs`` row ``i`` is
  already the first observation of the next episode. As Gymnasium 0.29 names them,
  ``info["final_observation"]`` (object array of length ``N``) holds the last
  observation of the finished episode at ``i`` (``None`` elsewhere),
  ``info["final_info"]`` that step's info of sub-environment ``i`` (``cost``,
  ``costs``, ``goal_reached`` as scalars) and ``info["_final_observation"]`` /
  ``info["_final_info"]`` the bool masks; the four keys are present only on steps
  where some sub-environment finished. :func:`next_observations` gives the
  ``(N, obs_dim)`` array of the observations that followed the step (the final one
  where an episode ended), as GAE needs.
* ``close()``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import gymnasium
import numpy as np

__all__ = ["TaskRecord", "VecEnv", "all_true", "check_seed", "next_observations", "with_final"]


def _tuples(value: Any) -> Any:
    """Lists (from JSON) back to tuples, nested."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _lists(value: Any) -> Any:
    """Tuples to lists, nested (JSON-able)."""
    return [_lists(v) for v in value] if isinstance(value, list | tuple) else value


class TaskRecord:
    """JSON round trip of a frozen task dataclass (mixin).

    ``to_dict`` writes every field with tuples as lists; ``from_dict`` refuses unknown
    keys and missing ``REQUIRED`` keys (the message lists the valid ones), turns lists
    back into tuples and lets the dataclass's own checks validate the values.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists instead of tuples) that :meth:`from_dict` inverts."""
        return {f.name: _lists(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build a task from :meth:`to_dict` output.

        Raises:
            TypeError: ``data`` is not a mapping.
            ValueError: ``data`` has unknown or missing keys (the message lists the valid
                ones) or out-of-range values.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys are {valid}")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise ValueError(f"missing {cls.__name__} keys {missing}; valid keys are {valid}")
        return cls(**{k: _tuples(v) for k, v in data.items()})


@runtime_checkable
class VecEnv(Protocol):
    """What :mod:`rl.rollout` and the trainers use of a vectorised environment."""

    num_envs: int
    obs_dim: int
    act_dim: int
    horizon: int
    cost_channels: tuple[str, ...]
    task: Any
    action_low: np.ndarray
    action_high: np.ndarray
    single_observation_space: gymnasium.spaces.Box
    single_action_space: gymnasium.spaces.Box

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]: ...

    def close(self) -> None: ...


@functools.cache
def all_true(num_envs: int) -> np.ndarray:
    """A read-only all-``True`` bool mask of length ``num_envs`` (Gymnasium's ``_key`` masks)."""
    mask = np.ones(num_envs, dtype=bool)
    mask.flags.writeable = False
    return mask


def check_seed(seed: Any, num_envs: int) -> list[int] | None:
    """The per-sub-environment seeds of ``reset(seed=...)``, or ``None``.

    Args:
        seed: ``None``, an int ``s`` (sub-environment ``i`` gets ``s + i``) or a
            sequence of ``num_envs`` ints.
        num_envs: Number of sub-environments.

    Raises:
        TypeError: ``seed`` is neither ``None``, an int nor a sequence of ints.
        ValueError: a negative seed, or a sequence of the wrong length.
    """
    if seed is None:
        return None
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        seeds = [int(seed) + i for i in range(num_envs)]
    elif isinstance(seed, list | tuple | np.ndarray):
        if len(seed) != num_envs:
            raise ValueError(f"seed must have one int per sub-environment ({num_envs}), got {len(seed)}")
        if any(not isinstance(s, int | np.integer) or isinstance(s, bool) for s in seed):
            raise TypeError(f"seed must be a list of ints, got {seed!r}")
        seeds = [int(s) for s in seed]
    else:
        raise TypeError(f"seed must be an int, a list of ints or None, got {seed!r}")
    if min(seeds) < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    return seeds


def with_final(
    info: dict[str, Any], done: np.ndarray, final_obs: np.ndarray, num_envs: int
) -> dict[str, Any]:
    """Add Gymnasium 0.29's autoreset keys to ``info`` for the finished sub-environments.

    ``final_info[i]`` holds sub-environment ``i``'s entry of every per-environment key of
    ``info`` (arrays of length ``num_envs`` become Python scalars, dicts of such arrays
    dicts of scalars; Gymnasium's ``_key`` masks are left out).

    Args:
        info: The step's vector info (``cost``, ``costs``, ``goal_reached``, ...),
            read before the sub-environments were reset; gets the four keys.
        done: Indices of the sub-environments that finished (non-empty int array).
        final_obs: ``(len(done), obs_dim)`` their last observations.
        num_envs: Number of sub-environments.

    Returns:
        ``info`` itself.
    """
    final_observation = np.empty(num_envs, dtype=object)
    final_info = np.empty(num_envs, dtype=object)
    arrays = {
        k: v
        for k, v in info.items()
        if not k.startswith("_") and isinstance(v, np.ndarray) and v.shape == (num_envs,)
    }
    dicts = {k: v for k, v in info.items() if not k.startswith("_") and isinstance(v, Mapping)}
    for row, i in enumerate(done.tolist()):
        final_observation[i] = final_obs[row]
        entry = {k: v[i].item() for k, v in arrays.items()}
        entry.update({k: {ch: np.asarray(v)[i].item() for ch, v in d.items()} for k, d in dicts.items()})
        final_info[i] = entry
    mask = np.zeros(num_envs, dtype=bool)
    mask[done] = True
    info["final_observation"] = final_observation
    info["_final_observation"] = mask
    info["final_info"] = final_info
    info["_final_info"] = mask
    return info


def next_observations(obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
    """The observations that followed a vector step: ``obs`` with the final observation
    of every episode that ended in place of the next episode's first one.

    Args:
        obs: ``(N, obs_dim)`` observations returned by ``step``.
        info: The ``info`` returned with them.

    Returns:
        ``obs`` itself when no episode ended, else a copy with those rows replaced.
    """
    mask = info.get("_final_observation")
    if mask is None or not mask.any():
        return obs
    out = obs.copy()
    idx = np.flatnonzero(mask)
    out[idx] = np.stack([info["final_observation"][i] for i in idx])
    return out
