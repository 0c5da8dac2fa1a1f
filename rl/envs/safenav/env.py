"""The safenav families behind Gymnasium's APIs: :class:`SafeNavVecEnv`, a
:class:`gymnasium.vector.VectorEnv` (the contract of :mod:`rl.envs.base`) over the
:class:`~rl.envs.safenav.simulator.SafeNavSimulator`, built by :func:`make`; and
:class:`SafeNavGymEnv`, a single :class:`gymnasium.Env` (ids ``SafeNavGoal-v0`` and
``SafeNavButton-v0``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from rl.envs.base import EpisodeVecEnv, SingleEnv, resolve_task
from rl.envs.safenav.constants import DEFAULT_HORIZON
from rl.envs.safenav.distribution import _check_family, task_distribution
from rl.envs.safenav.simulator import SafeNavSimulator, observation_bounds
from rl.envs.safenav.task import SafeNavTask

__all__ = ["SafeNavGymEnv", "SafeNavVecEnv", "make"]


class Family(NamedTuple):
    """A task family's entry points: name check, task distribution, vectorised ``make``."""

    check: Callable[[Any], str]
    distribution: Callable[[str], Any]
    make: Callable[..., Any]


class SafeNavVecEnv(EpisodeVecEnv):
    """``num_envs`` copies of one :class:`SafeNavTask`, stepped together.

    A :class:`gymnasium.vector.VectorEnv` following :mod:`rl.envs.base` (see the
    :mod:`rl.envs.safenav` docstring for dynamics, rewards, costs and the observation):
    ``step`` returns ``info["cost"]``, ``info["costs"]`` (channel -> float64 ``(N,)``),
    ``info["goal_reached"]`` (bool ``(N,)``) and, where episodes ended,
    ``info["final_observation"]``. Build it with :func:`make`.

    Attributes:
        num_envs, obs_dim, act_dim, horizon, cost_channels, task, action_low,
        action_high: As in :mod:`rl.envs.base`.
        name: The family name.
    """

    def __init__(
        self, task: SafeNavTask, num_envs: int = 1, seed: int = 0, horizon: int = DEFAULT_HORIZON
    ) -> None:
        if not isinstance(task, SafeNavTask):
            raise TypeError(f"task must be a SafeNavTask, got {type(task).__name__}")
        low, high = observation_bounds()
        channels = ("hazards", "buttons") if task.family == "safenav-button" else ("hazards",)
        super().__init__(
            task, num_envs, seed, horizon, low, high, -np.ones(2), np.ones(2), channels, task.family
        )
        self._sim = SafeNavSimulator(task, self._streams)

    @property
    def robot_positions(self) -> np.ndarray:
        """World-frame robot centres, ``(N, 2)`` (a copy)."""
        return self._sim.pos.copy()

    @property
    def robot_headings(self) -> np.ndarray:
        """Robot headings in radians, ``(N,)`` (a copy)."""
        return self._sim.heading.copy()

    @property
    def goal_positions(self) -> np.ndarray:
        """Current goal centres (goal button centres in the button family), ``(N, 2)``."""
        return self._sim.goal.copy()

    @property
    def goal_buttons(self) -> np.ndarray:
        """Current goal button indices, ``(N,)`` (button family; zeros otherwise)."""
        return self._sim.goal_index.copy()

    def set_state(
        self,
        position: Any = None,
        heading: Any = None,
        velocity: Any = None,
        goal: Any = None,
    ) -> np.ndarray:
        """Place the robots (and goals) by hand, for tests and scripted demos.

        Each argument broadcasts to all sub-environments (or gives one row per
        sub-environment); ``None`` leaves that part of the state as it is. The step
        counter is unchanged; the exemption of a just-pressed button is cleared and
        progress is measured from the new state. Call :meth:`reset` first.

        Args:
            position: ``(2,)`` or ``(N, 2)`` robot centres (clipped to the arena).
            heading: Scalar or ``(N,)`` headings in radians.
            velocity: ``(2,)`` or ``(N, 2)`` world-frame velocities.
            goal: Goal family: ``(2,)`` or ``(N, 2)`` goal centres. Button family:
                int or ``(N,)`` goal button indices.

        Returns:
            The observation ``(N, obs_dim)`` of the new state.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before set_state()")
        return self._sim.set_state(position, heading, velocity, goal)

    def render(self, index: int = 0, size: int = 256) -> np.ndarray:
        """A top-down RGB picture of sub-environment ``index``.

        Grey arena, blue hazards, orange buttons (goal button green), green goal
        disc, red robot with a dark heading bar.

        Args:
            index: Which sub-environment.
            size: Image side in pixels (>= 16).

        Returns:
            uint8 array of shape ``(size, size, 3)``.
        """
        self._check_render_args(index, size)
        return self._sim.render(index, size)

    def _reset_envs(self, idx: np.ndarray) -> None:
        self._sim.reset(idx)

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        return self._sim.observe(idx)

    def _simulate(self, actions: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        return self._sim.advance(actions)


def make(
    name: str,
    task: SafeNavTask | Mapping[str, Any] | None = None,
    num_envs: int = 1,
    seed: int = 0,
    horizon: int = DEFAULT_HORIZON,
    **kwargs: Any,
) -> SafeNavVecEnv:
    """Build a vectorised safe navigation environment.

    Args:
        name: ``"safenav-goal"`` or ``"safenav-button"``.
        task: A :class:`SafeNavTask` (or its :meth:`~SafeNavTask.to_dict`); ``None``
            uses the first training task drawn with ``seed``.
        num_envs: Number of sub-environments (sub-env ``i`` is seeded ``seed + i``).
        seed: Seed of the random streams (and of the default task).
        horizon: Episode length at which sub-environments are truncated.

    Returns:
        A :class:`SafeNavVecEnv`; call ``reset()`` before ``step()``.

    Raises:
        ValueError: Unknown family, a task of another family, bad sizes.
        TypeError: Unknown keyword arguments or a task of the wrong type.
    """
    name = _check_family(name)
    task = resolve_task(name, task, seed, SafeNavTask, task_distribution, kwargs)
    return SafeNavVecEnv(task, num_envs=num_envs, seed=seed, horizon=horizon)


class SafeNavGymEnv(SingleEnv):
    """A single safe navigation environment behind the gymnasium API.

    ``step`` returns ``(obs, reward, terminated, truncated, info)`` with
    ``info["cost"]`` (float), ``info["costs"]`` (channel -> float) and
    ``info["goal_reached"]`` (bool). On the truncating step ``obs`` is the
    episode's last observation; call ``reset()`` next, as gymnasium expects.

    >>> import gymnasium
    >>> env = gymnasium.make("SafeNavGoal-v0")
    >>> obs, info = env.reset(seed=0)

    Args:
        family: ``"safenav-goal"`` or ``"safenav-button"``.
        task: As for :func:`make`; ``None`` uses the first training task drawn with
            ``task_seed``.
        seed: Seed of the robot's random stream until ``reset(seed=...)`` gives
            another; ``None`` (default) draws one from the operating system, so
            unseeded environments differ.
        horizon: Episode length.
        render_mode: ``None`` or ``"rgb_array"``.
        task_seed: Seed of the default task.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    #: How the family is checked, sampled and built (a subclass names its own module's functions).
    _family: ClassVar[Family] = Family(_check_family, task_distribution, make)

    def __init__(
        self,
        family: str = "safenav-goal",
        task: SafeNavTask | Mapping[str, Any] | None = None,
        seed: int | None = None,
        horizon: int = DEFAULT_HORIZON,
        render_mode: str | None = None,
        task_seed: int = 0,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        build = type(self)._family
        family = build.check(family)
        if task is None:
            task = build.distribution(family).sample(1, split="train", seed=task_seed)[0]
        self.render_mode = render_mode
        seed = self.random_seed() if seed is None else seed
        self._wrap(build.make(family, task=task, num_envs=1, seed=seed, horizon=horizon))

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.vec_env.render(0)
        return None
