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

The built-in families share their bookkeeping through :class:`EpisodeVecEnv` (checks,
spaces, seeding of :class:`SplitMix64Streams`, time limit, ``info``, autoreset): a family
writes only its simulation. :class:`SingleEnv` turns a one-environment ``VectorEnv`` into a
:class:`gymnasium.Env`; :class:`TopDownCanvas` draws their ``render`` pictures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import gymnasium
import numpy as np

# by name: this module is imported while gymnasium itself loads its plugins (this package's
# gymnasium.envs entry point), before ``gymnasium.vector`` is an attribute of ``gymnasium``
from gymnasium.vector import VectorEnv as _VectorEnv

__all__ = [
    "EpisodeVecEnv",
    "SingleEnv",
    "SplitMix64Streams",
    "TaskRecord",
    "TopDownCanvas",
    "VecEnv",
    "all_true",
    "check_seed",
    "info_entries",
    "next_observations",
    "with_final",
]


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


def info_entries(info: Mapping[str, Any], num_envs: int) -> Callable[[int], dict[str, Any]]:
    """A function ``i -> dict``: sub-environment ``i``'s entry of every per-environment key of a
    vector ``info`` (arrays of length ``num_envs`` become Python scalars, dicts of such arrays
    dicts of scalars; Gymnasium's ``_key`` masks and the autoreset keys are left out)."""
    arrays = {
        k: v
        for k, v in info.items()
        if not k.startswith("_")
        and k not in _AUTORESET_KEYS
        and isinstance(v, np.ndarray)
        and v.shape == (num_envs,)
    }
    dicts = {k: v for k, v in info.items() if not k.startswith("_") and isinstance(v, Mapping)}

    def entry(i: int) -> dict[str, Any]:
        out = {k: v[i].item() for k, v in arrays.items()}
        out.update({k: {ch: np.asarray(v)[i].item() for ch, v in d.items()} for k, d in dicts.items()})
        return out

    return entry


_AUTORESET_KEYS = frozenset({"final_observation", "final_info"})


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
    entries = info_entries(info, num_envs)
    for row, i in enumerate(done.tolist()):
        final_observation[i] = final_obs[row]
        final_info[i] = entries(i)
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


# ------------------------------------------------------------------------ randomness

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U64(30))) * _MIX1
        z = (z ^ (z >> _U64(27))) * _MIX2
    return z ^ (z >> _U64(31))


class SplitMix64Streams:
    """One SplitMix64 counter stream per sub-environment, drawn from in vectorised calls.

    Stream ``i`` is keyed by its seed; a draw advances only the streams it is asked for, so
    ``N`` sub-environments behave exactly like ``N`` separate 1-env instances.
    """

    def __init__(self, num: int, seed: int) -> None:
        self.keys = np.zeros(num, dtype=np.uint64)
        self.counters = np.zeros(num, dtype=np.uint64)
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Stream ``i`` from ``seed + i``."""
        base = np.uint64(int(seed) % 2**64)
        with np.errstate(over="ignore"):
            self.keys[:] = _splitmix64(base + np.arange(self.keys.size, dtype=np.uint64))
        self.counters[:] = 0

    def seed_each(self, seeds: Sequence[int]) -> None:
        """Stream ``i`` from ``seeds[i]`` (``seed_each([s, s + 1, ...])`` equals ``seed(s)``)."""
        with np.errstate(over="ignore"):
            self.keys[:] = _splitmix64(np.array([int(s) % 2**64 for s in seeds], dtype=np.uint64))
        self.counters[:] = 0

    def uniform(self, idx: np.ndarray, k: int) -> np.ndarray:
        """``(len(idx), k)`` uniforms in ``[0, 1)``; advances only the streams ``idx``."""
        steps = np.arange(1, k + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            state = self.keys[idx, None] + (self.counters[idx, None] + steps) * _GOLDEN
        self.counters[idx] += _U64(k)
        return (_splitmix64(state) >> _U64(11)).astype(np.float64) * (1.0 / 2**53)


# ------------------------------------------------------------------ episode bookkeeping


def resolve_task(
    name: str, task: Any, seed: int, task_cls: type, distribution: Callable[[str], Any], options: Mapping
) -> Any:
    """The task a family's ``make(name, task=..., seed=..., **options)`` means: ``None`` is the first
    training task of ``distribution(name)`` drawn with ``seed``, a dict goes through
    ``task_cls.from_dict``; the task must be of family ``name``, and no other options are taken."""
    if options:
        raise TypeError(
            f"unknown options {sorted(options)} for {name!r}; valid: task, num_envs, seed, horizon"
        )
    if task is None:
        return distribution(name).sample(1, split="train", seed=seed)[0]
    if isinstance(task, Mapping):
        task = task_cls.from_dict(task)
    elif not isinstance(task, task_cls):
        raise TypeError(f"task must be a {task_cls.__name__}, a dict or None, got {type(task).__name__}")
    if task.family != name:
        raise ValueError(
            f"the task is of family {task.family!r}, which does not match the requested {name!r}"
        )
    return task


def _check_count(name: str, value: Any) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


class EpisodeVecEnv(_VectorEnv):
    """The episode bookkeeping of the built-in families, as this module's contract specifies.

    A subclass simulates; this class does the rest: argument checks, the spaces, the random
    streams (:class:`SplitMix64Streams`, ``self._streams``) and their seeding in :meth:`reset`,
    the action checks and clipping, the step counter and truncation at ``horizon``, the
    ``info`` of a step (``cost`` as the sum of the channels in order, ``costs``,
    ``goal_reached`` and Gymnasium's masks) and the autoreset with ``final_observation`` /
    ``final_info``. A subclass implements:

    * ``_reset_envs(idx)``: start new episodes in the sub-environments ``idx`` (the step
      counter is already zero there), drawing from ``self._streams``;
    * ``_observe(idx=None)``: ``(len(idx), obs_dim)`` observations (all rows for ``None``);
    * ``_simulate(actions)``: advance every sub-environment by the clipped ``(N, act_dim)``
      actions; returns ``(reward, costs, goal_reached)``, ``costs`` a dict with one float64
      ``(N,)`` array per cost channel, in the order of ``cost_channels``.

    Args:
        task: The task (kept as ``self.task``).
        num_envs: Number of sub-environments (>= 1).
        seed: Sub-environment ``i``'s stream is seeded ``seed + i``.
        horizon: Episode length (>= 1).
        obs_low, obs_high: Bounds of one observation (their shape is ``(obs_dim,)``).
        act_low, act_high: Bounds of one action.
        cost_channels: Names of the cost channels.
        name: The family name.

    Raises:
        ValueError: ``num_envs`` or ``horizon`` is not an int >= 1.
        TypeError: ``seed`` is not an int.
    """

    def __init__(
        self,
        task: Any,
        num_envs: int,
        seed: int,
        horizon: int,
        obs_low: np.ndarray,
        obs_high: np.ndarray,
        act_low: np.ndarray,
        act_high: np.ndarray,
        cost_channels: tuple[str, ...],
        name: str,
    ) -> None:
        num_envs = _check_count("num_envs", num_envs)
        horizon = _check_count("horizon", horizon)
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        obs_low, act_low = np.asarray(obs_low, dtype=np.float64), np.asarray(act_low, dtype=np.float64)
        super().__init__(
            num_envs,
            gymnasium.spaces.Box(obs_low, np.asarray(obs_high, dtype=np.float64), obs_low.shape, np.float64),
            gymnasium.spaces.Box(act_low, np.asarray(act_high, dtype=np.float64), act_low.shape, np.float64),
        )
        self.task = task
        self.name = name
        self.horizon = horizon
        self.obs_dim = obs_low.shape[0]
        self.act_dim = act_low.shape[0]
        self.action_low = self.single_action_space.low.copy()
        self.action_high = self.single_action_space.high.copy()
        self.cost_channels = tuple(cost_channels)
        self._streams = SplitMix64Streams(num_envs, int(seed))
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = True
        self._all_true = all_true(num_envs)

    @property
    def episode_steps(self) -> np.ndarray:
        """Steps taken in the current episode of each sub-environment, ``(N,)``."""
        return self._t.copy()

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Reset every sub-environment (sub-env ``i`` reseeded with ``seed + i``).

        Args:
            seed: ``None`` continues the streams seeded at construction; a list gives one seed
                per sub-environment.
            options: Unused (Gymnasium's signature).

        Returns:
            ``(obs, info)``: obs float64 ``(num_envs, obs_dim)``; info is empty.
        """
        seeds = check_seed(seed, self.num_envs)
        if seeds is not None:
            self._streams.seed_each(seeds)
        self._start_episodes(np.arange(self.num_envs))
        self._needs_reset = False
        return self._observe(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Advance every sub-environment by one step (see this module's contract).

        Args:
            actions: ``(num_envs, act_dim)``; clipped to the action bounds.

        Returns:
            ``(obs, reward, terminated, truncated, info)`` with ``info["cost"]``,
            ``info["costs"]`` (channel -> float64 ``(N,)``), ``info["goal_reached"]`` (bool
            ``(N,)``) and, where episodes ended, ``info["final_observation"]`` and
            ``info["final_info"]``.

        Raises:
            RuntimeError: before the first :meth:`reset`.
            ValueError: actions of the wrong shape, NaN or inf.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, self.act_dim):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.act_dim}), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("actions must be finite, got NaN or inf")
        reward, costs, reached = self._simulate(np.clip(a, self.action_low, self.action_high))
        channels = iter(costs.values())
        cost = next(channels).copy()
        for more in channels:
            cost += more

        self._t += 1
        truncated = self._t >= self.horizon
        terminated = np.zeros(self.num_envs, dtype=bool)
        obs = self._observe()
        mask = self._all_true
        info = {
            "cost": cost,
            "_cost": mask,
            "costs": costs,
            "_costs": mask,
            "goal_reached": reached,
            "_goal_reached": mask,
        }
        if truncated.any():
            done = np.flatnonzero(truncated)
            with_final(info, done, obs[done].copy(), self.num_envs)
            self._start_episodes(done)
            obs[done] = self._observe(done)
        return obs, reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release (``close()`` comes from :class:`gymnasium.vector.VectorEnv`)."""

    def _start_episodes(self, idx: np.ndarray) -> None:
        self._t[idx] = 0
        self._reset_envs(idx)

    def _check_render_args(self, index: Any, size: Any) -> None:
        if not isinstance(index, int | np.integer) or not 0 <= index < self.num_envs:
            raise ValueError(f"index must be an int in [0, {self.num_envs}), got {index!r}")
        if not isinstance(size, int | np.integer) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")

    # the simulation: see the class docstring
    def _reset_envs(self, idx: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _reset_envs")

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _observe")

    def _simulate(self, actions: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} must implement _simulate")


class TopDownCanvas:
    """An RGB picture of a square arena seen from above (the ``render`` of the built-in
    families): a dark border, a light arena, discs painted in order.

    Args:
        half_size: The arena is ``[-half_size, half_size]^2``; the picture shows 5% more.
        size: Image side in pixels.
    """

    def __init__(self, half_size: float, size: int) -> None:
        extent = 1.05 * half_size
        coords = (np.arange(size) + 0.5) / size * 2 * extent - extent
        self.x = coords[None, :]
        self.y = -coords[:, None]  # row 0 is the top of the picture
        self.img = np.empty((size, size, 3))
        self.img[:] = (40, 40, 48)
        self.img[(np.abs(self.x) <= half_size) & (np.abs(self.y) <= half_size)] = (235, 235, 228)

    def disc(self, cx: float, cy: float, r: float, color: tuple[int, int, int], alpha: float = 1.0) -> None:
        """Paint the disc of radius ``r`` at ``(cx, cy)``, blended with weight ``alpha``."""
        mask = (self.x - cx) ** 2 + (self.y - cy) ** 2 <= r * r
        self.img[mask] = (1 - alpha) * self.img[mask] + alpha * np.asarray(color, dtype=np.float64)

    def image(self) -> np.ndarray:
        """The picture, uint8 ``(size, size, 3)``."""
        return np.clip(self.img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ one environment


class SingleEnv(gymnasium.Env):
    """A single :class:`gymnasium.Env` over a vectorised environment of one sub-environment.

    ``step`` returns ``(obs, reward, terminated, truncated, info)`` with ``info`` holding every
    per-environment key of the vector step as Python scalars (``cost``, ``costs`` as a dict,
    ``goal_reached``, ...). On the step that ends an episode ``obs`` is its last observation;
    call ``reset()`` next, as Gymnasium expects.

    A subclass builds ``self.vec_env`` (``num_envs == 1``) and calls :meth:`_wrap`.
    """

    vec_env: Any

    def _wrap(self, vec_env: Any, observation_space: gymnasium.spaces.Box | None = None) -> None:
        """Use ``vec_env``: its spaces (or ``observation_space``), cost channels and horizon."""
        self.vec_env = vec_env
        self.observation_space = observation_space or vec_env.single_observation_space
        self.action_space = vec_env.single_action_space
        self.cost_channels = vec_env.cost_channels
        self.horizon = vec_env.horizon

    @staticmethod
    def random_seed() -> int:
        """A fresh seed from the operating system's entropy (for unseeded environments)."""
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, _ = self.vec_env.reset(seed=seed)
        return obs[0].copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        obs, reward, terminated, truncated, info = self.vec_env.step(a[None])
        out = next_observations(obs, info)[0]
        step_info = info_entries(info, 1)(0)
        return out.copy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), step_info

    def close(self) -> None:
        self.vec_env.close()
