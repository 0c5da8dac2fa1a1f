"""A task family that needs adaptation: a hidden goal in a ring of hidden hazards.

``hiddennav`` is built so that the task is *not* in the observation and the best safe policy
differs between tasks, the setting meta-RL is for (the safenav families show every hazard and
button on a lidar, so one pooled policy is right for every task there: they are the "no
adaptation needed" control). Pure numpy and vectorised like :mod:`rl.envs.safenav`, whose
dynamics constants and SplitMix64 streams it reuses.

>>> from rl.envs import hiddennav
>>> dist = hiddennav.task_distribution()
>>> task = dist.sample(1, split="train", seed=0)[0]
>>> env = hiddennav.make(task=task, num_envs=4, seed=0)
>>> obs, info = env.reset()
>>> obs.shape == (4, hiddennav.OBS_DIM)
True

The task. A point robot starts near the centre of a square arena. ``slots`` points lie evenly on
a ring of radius ``ring_radius`` around the centre: one of them is the goal (a disc of
``goal_radius``), each of the others holds a hazard disc of ``hazard_radius``. The ring's
rotation (where the goal is) and its radius are the task; none of it is observed. The robot must
infer the goal's direction from the reward and where it may not go from the cost: straight to
the goal is safe, a wrong guess runs into a hazard.

Dynamics (per step of ``DT`` = 0.1 s, the constants of :mod:`rl.envs.safenav`). Action
``(a_x, a_y)`` in ``[-1, 1]^2`` is a world-frame thrust: the velocity decays by
``exp(-DAMPING * DT)`` and gains ``DT * THRUST * a``; the position moves by ``DT * velocity`` and
is clipped to the arena (the velocity component into a wall is zeroed). Top speed is about 1
unit/s (0.1 per step), so a goal on a ring of radius 1.5 is some 17 steps away.

Reward: ``PROGRESS_SCALE * (previous distance - distance)`` to the goal centre every step, plus
``GOAL_REWARD`` on every step the robot's centre is inside the goal disc (so reaching the goal
early and staying there pays). The goal does not move within an episode.

Cost (channel ``"hazards"``, 0 or 1 per step): 1 while the robot's centre is inside any hazard.

Observation (float64, ``OBS_DIM`` = 5, see ``OBS_LAYOUT``): the robot's world-frame position,
its world-frame velocity and the elapsed fraction of the episode ``t / horizon``. Nothing about
the goal or the hazards.

Episodes: ``truncated`` exactly at ``horizon`` steps (default ``DEFAULT_HORIZON`` = 50),
``terminated`` never. Sub-environments auto-reset as :mod:`rl.envs.base` specifies
(``info["final_observation"]``).

Splits (:data:`SPLITS_RANGES`): the goal's angle is uniform in both; the ring radius is drawn
from ``[1.0, 1.4]`` for training tasks and from ``[1.5, 1.8]`` for test tasks, outside the
training range (farther goals, hazards farther apart); hazard radius and slot count are shared.

The variant ``hiddennav-hazard`` (:data:`HAZARD_SPLITS_RANGES`): the same environment, other
tasks, built so that the hidden hazards BIND. The goal lies east of the centre (angle 0, every
task) at a hidden distance; the ring holds no other slot. Across the straight path to the goal,
at a hidden fraction of the way, stand two hazards with a free gap (a "gate") between them: the
first (the "blocker") covers the straight path, its centre a hidden small offset to one side of
it, and the gap lies next to it on the other side. Straight to the goal, the return-greedy
route, crosses the blocker for 7 or more steps (more than the limit of 5); the route through the
gap is safe and costs a few steps; the way around both hazards is long. The side alternates
within one :meth:`~HiddenNavDistribution.sample` call (a meta-batch has no net side; each task's
side is still a fair coin), so no single policy has a short safe route on every task: the policy
must infer the gap's side from the cost.

Randomness: as in :mod:`rl.envs.safenav`, sub-environment ``i`` owns a SplitMix64 stream seeded
``seed + i`` and a reset consumes a fixed number of its draws, so ``N`` sub-environments behave
exactly like ``N`` separate 1-env instances seeded ``seed, seed + 1, ...``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rl.envs.base import EpisodeVecEnv, TaskRecord, TopDownCanvas, resolve_task
from rl.envs.safenav import DAMPING, DT, THRUST, SafeNavGymEnv
from rl.envs.safenav.env import Family
from rl.envs.safenav.task import _finite_float, _points, _positive

__all__ = [
    "DEFAULT_HORIZON",
    "FAMILIES",
    "FAMILY",
    "HAZARD_FAMILY",
    "HAZARD_SPLITS_RANGES",
    "OBS_DIM",
    "OBS_LAYOUT",
    "SPLITS_RANGES",
    "HiddenNavDistribution",
    "HiddenNavGymEnv",
    "HiddenNavRanges",
    "HiddenNavTask",
    "HiddenNavVecEnv",
    "make",
    "task_distribution",
]

FAMILY = "hiddennav"
#: The variant whose hidden hazard lies on the straight path to the goal (see the module docstring).
HAZARD_FAMILY = "hiddennav-hazard"
FAMILIES = (FAMILY, HAZARD_FAMILY)
SPLITS = ("train", "test")
DEFAULT_HORIZON = 50

PROGRESS_SCALE = 1.0
GOAL_REWARD = 0.1  # per step inside the goal disc

OBS_LAYOUT = {"position": slice(0, 2), "velocity": slice(2, 4), "time": slice(4, 5)}
OBS_DIM = 5

#: Half side of the arena (the ring of every split fits inside with room to overshoot).
ARENA_HALF_SIZE = 2.5
#: Robots start uniformly in a disc of this radius around the centre, at rest.
START_RADIUS = 0.1
#: Bound of each world-frame velocity component in the observation space (top speed is
#: ``DT * THRUST / (1 - exp(-DAMPING * DT))`` per axis, about 1.05 units/s).
VELOCITY_BOUND = 1.2


@dataclass(frozen=True)
class HiddenNavTask(TaskRecord):
    """One pinned task: where the goal and the hazards are (JSON-able via :meth:`to_dict`).

    Attributes:
        goal: Goal centre ``(x, y)``.
        goal_radius: Radius of the goal disc (> 0).
        hazard_positions: Hazard centres ``((x, y), ...)``; may be empty.
        hazard_radius: Radius of every hazard disc (> 0).
        arena_half_size: The arena is ``[-arena_half_size, arena_half_size]^2``.
        start_radius: Robots start uniformly in the disc of this radius around ``(0, 0)``.
        family: ``"hiddennav"`` or ``"hiddennav-hazard"`` (the same environment).

    Raises:
        ValueError: A parameter is out of range (the message names it and the range).
        TypeError: A parameter has the wrong type.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("goal",)

    goal: tuple[float, float]
    goal_radius: float = 0.3
    hazard_positions: tuple[tuple[float, float], ...] = ()
    hazard_radius: float = 0.3
    arena_half_size: float = ARENA_HALF_SIZE
    start_radius: float = START_RADIUS
    family: str = FAMILY

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {list(FAMILIES)}, got {self.family!r}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        half = _positive("arena_half_size", self.arena_half_size)
        set_("arena_half_size", half)
        set_("goal_radius", _positive("goal_radius", self.goal_radius))
        set_("hazard_radius", _positive("hazard_radius", self.hazard_radius))
        start = _finite_float("start_radius", self.start_radius)
        if not 0.0 <= start < half:
            raise ValueError(f"start_radius must be in [0, arena_half_size = {half}), got {start!r}")
        set_("start_radius", start)
        goal = _points("goal", [self.goal], half)
        set_("goal", goal[0])
        set_("hazard_positions", _points("hazard_positions", self.hazard_positions, half))

    @property
    def num_hazards(self) -> int:
        """Number of hazards."""
        return len(self.hazard_positions)


# ------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class HiddenNavRanges:
    """What a split draws its tasks from (uniform in each range).

    Attributes:
        ring_radius: ``(low, high)`` distance of the goal and the hazards from the centre.
        hazard_radius: ``(low, high)`` radius of the hazards.
        slots: Points on the ring: the goal and ``slots - 1`` hazards, evenly spaced.
        goal_radius: Radius of the goal disc.
        goal_angle: ``None``: the goal's direction is uniform (evenly spaced within one sample);
            a number: every goal lies at this angle (radians).
        blocker_fraction: ``None``: no blocker; else ``(low, high)`` of the fraction of the way
            from the centre to the goal at which one more hazard (same radius) sits.
        blocker_offset: ``(low, high)`` of the blocker's distance from the straight path (to
            the left or right, alternating within a sample); needed with ``blocker_fraction``.
        blocker_gap: ``None``: the blocker stands alone; else a second hazard (same radius)
            stands across the straight path from it, a free gap of this width between the two.
        arena_half_size: Half side of the arena of the tasks.
    """

    ring_radius: tuple[float, float]
    hazard_radius: tuple[float, float]
    slots: int
    goal_radius: float
    goal_angle: float | None = None
    blocker_fraction: tuple[float, float] | None = None
    blocker_offset: tuple[float, float] | None = None
    blocker_gap: float | None = None
    arena_half_size: float = ARENA_HALF_SIZE

    def __post_init__(self) -> None:
        if (self.blocker_fraction is None) != (self.blocker_offset is None):
            raise ValueError(
                "blocker_fraction and blocker_offset go together, got "
                f"{self.blocker_fraction!r} and {self.blocker_offset!r}"
            )
        if self.blocker_gap is not None and (self.blocker_fraction is None or not self.blocker_gap > 0):
            raise ValueError(f"blocker_gap must be > 0 and go with a blocker, got {self.blocker_gap!r}")
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {self.slots!r}")


#: The train and test ranges (fixed before any comparison of methods was run).
SPLITS_RANGES: dict[str, HiddenNavRanges] = {
    "train": HiddenNavRanges(ring_radius=(1.0, 1.4), hazard_radius=(0.3, 0.4), slots=4, goal_radius=0.3),
    "test": HiddenNavRanges(ring_radius=(1.5, 1.8), hazard_radius=(0.3, 0.4), slots=4, goal_radius=0.3),
}

_BLOCKED = dict(
    hazard_radius=(0.45, 0.55),
    slots=1,
    goal_radius=0.3,
    goal_angle=0.0,
    blocker_fraction=(0.4, 0.5),
    blocker_offset=(0.05, 0.2),
    blocker_gap=0.5,
    arena_half_size=3.0,
)
#: The train and test ranges of ``hiddennav-hazard`` (fixed before any comparison of methods was
#: run): the goal's distance is the split (test goals, and so the gates, farther out); the
#: hazards' radius, their fraction of the way, the blocker's offset and the gap are shared. Both
#: hazards leave the start disc and the goal disc free: their edges are at least 0.21 from the
#: centre and 0.10 from the goal disc; the far one ends at most 2.35 from the straight path.
HAZARD_SPLITS_RANGES: dict[str, HiddenNavRanges] = {
    "train": HiddenNavRanges(ring_radius=(1.9, 2.3), **_BLOCKED),
    "test": HiddenNavRanges(ring_radius=(2.4, 2.7), **_BLOCKED),
}


@dataclass(frozen=True)
class HiddenNavDistribution:
    """Tasks of the ``hiddennav`` family (or its variant) with a train and a test split.

    The goal's angle ``alpha`` is uniform on ``[0, 2 pi)`` (or the split's fixed ``goal_angle``); the ``n`` tasks of one
    :meth:`sample` call have evenly spaced angles (rotated together by one uniform angle), so a
    meta-batch or a set of test tasks covers every direction equally (stratified sampling: each
    task is still uniform). The ring radius ``rho`` and the
    hazard radius are uniform in the split's ranges; the goal sits at
    ``rho (cos alpha, sin alpha)`` and the hazards at the angles ``alpha + 2 pi k / slots``,
    ``k = 1 .. slots - 1``, on the same ring. With a blocker, one more hazard sits at
    ``f rho u + s o v`` (``u`` the goal's direction, ``v`` it turned by 90 degrees, ``f`` and ``o``
    uniform in the split's ``blocker_fraction`` and ``blocker_offset``); its side ``s`` is +1 or -1
    with a fair coin for the first task of a call and alternates after it. With a gap ``g``, a
    second hazard of the same radius ``r`` sits at ``f rho u + s (o - 2 r - g) v``, across the
    path, leaving the gap free between the two.

    Attributes:
        train: Ranges of the training split.
        test: Ranges of the test split (ring radii outside the training range).
        name: ``"hiddennav"`` or ``"hiddennav-hazard"``.
    """

    train: HiddenNavRanges
    test: HiddenNavRanges
    name: str = FAMILY

    def ranges(self, split: str) -> HiddenNavRanges:
        """The ranges of ``split`` (``"train"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return self.train if split == "train" else self.test

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[HiddenNavTask]:
        """Draw ``n`` tasks from ``split`` with a generator private to the call (equal arguments
        give equal tasks).

        Args:
            n: Number of tasks (>= 1).
            split: ``"train"`` or ``"test"``.
            seed: Any int.

        Returns:
            A list of ``n`` :class:`HiddenNavTask`.
        """
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        r = self.ranges(split)
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        rng = np.random.default_rng([int(seed) % 2**64, 7, SPLITS.index(split)])
        if r.goal_angle is None:
            # the n goal angles of one call are evenly spaced, rotated by one uniform angle: each
            # task's angle is uniform, and a meta-batch holds no net direction (its mean goal is the
            # centre)
            angles = float(rng.uniform(0.0, 2 * math.pi)) + 2 * math.pi * np.arange(int(n)) / int(n)
        else:
            angles = np.full(int(n), float(r.goal_angle))
        # the blocker's side alternates within a call (a meta-batch holds no net side)
        first_side = 0.0 if r.blocker_fraction is None else (1.0 if rng.uniform() < 0.5 else -1.0)
        tasks = []
        for k in range(int(n)):
            alpha = float(angles[k] % (2 * math.pi))
            rho = float(rng.uniform(*r.ring_radius))
            radius = float(rng.uniform(*r.hazard_radius))
            hazard_angles = alpha + 2 * math.pi * np.arange(1, r.slots) / r.slots
            hazards = tuple((rho * math.cos(a), rho * math.sin(a)) for a in hazard_angles)
            if r.blocker_fraction is not None:
                along = float(rng.uniform(*r.blocker_fraction)) * rho
                side = first_side * (1.0 if k % 2 == 0 else -1.0) * float(rng.uniform(*r.blocker_offset))
                c, s = math.cos(alpha), math.sin(alpha)
                sides = [side]
                if r.blocker_gap is not None:  # the far hazard, across the path, with the gap between
                    sides.append(side - math.copysign(2 * radius + r.blocker_gap, side))
                hazards += tuple((along * c - o * s, along * s + o * c) for o in sides)
            tasks.append(
                HiddenNavTask(
                    goal=(rho * math.cos(alpha), rho * math.sin(alpha)),
                    goal_radius=r.goal_radius,
                    hazard_positions=hazards,
                    hazard_radius=radius,
                    arena_half_size=r.arena_half_size,
                    family=self.name,
                )
            )
        return tasks


def _check_family(name: Any) -> str:
    if name not in FAMILIES:
        raise ValueError(f"unknown hiddennav family {name!r}; expected one of {list(FAMILIES)}")
    return name


def task_distribution(name: str = FAMILY) -> HiddenNavDistribution:
    """The task distribution of ``hiddennav`` or of its variant ``hiddennav-hazard``."""
    ranges = SPLITS_RANGES if _check_family(name) == FAMILY else HAZARD_SPLITS_RANGES
    return HiddenNavDistribution(train=ranges["train"], test=ranges["test"], name=name)


# ------------------------------------------------------------------ the VecEnv


class HiddenNavVecEnv(EpisodeVecEnv):
    """``num_envs`` copies of one :class:`HiddenNavTask`, stepped together.

    A :class:`gymnasium.vector.VectorEnv` following :mod:`rl.envs.base` (see the module
    docstring), its episode bookkeeping :class:`rl.envs.base.EpisodeVecEnv`'s. Build it with
    :func:`make`.

    Attributes:
        num_envs, obs_dim, act_dim, horizon, cost_channels, task, action_low, action_high:
            As in :mod:`rl.envs.base`.
        name: The task's family, ``"hiddennav"`` or ``"hiddennav-hazard"``.
    """

    def __init__(
        self, task: HiddenNavTask, num_envs: int = 1, seed: int = 0, horizon: int = DEFAULT_HORIZON
    ) -> None:
        if not isinstance(task, HiddenNavTask):
            raise TypeError(f"task must be a HiddenNavTask, got {type(task).__name__}")
        half = task.arena_half_size
        low = np.array([-half, -half, -VELOCITY_BOUND, -VELOCITY_BOUND, 0.0])
        high = np.array([half, half, VELOCITY_BOUND, VELOCITY_BOUND, 1.0])
        super().__init__(
            task, num_envs, seed, horizon, low, high, -np.ones(2), np.ones(2), ("hazards",), task.family
        )
        self._goal = np.asarray(task.goal, dtype=np.float64)
        self._hazards = np.asarray(task.hazard_positions, dtype=np.float64).reshape(-1, 2)
        self._decay = math.exp(-DAMPING * DT)
        self._limit = task.arena_half_size
        n = self.num_envs
        self._pos = np.zeros((n, 2))
        self._vel = np.zeros((n, 2))
        self._last_dist = np.zeros(n)

    @property
    def robot_positions(self) -> np.ndarray:
        """World-frame robot centres, ``(N, 2)`` (a copy)."""
        return self._pos.copy()

    def _simulate(self, a: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """One step of world-frame thrusts ``a`` (clipped): reward, ``{"hazards": cost}``, at the goal."""
        vel = self._vel * self._decay + (DT * THRUST) * a
        pos = self._pos + DT * vel
        at_wall = np.abs(pos) > self._limit
        np.clip(pos, -self._limit, self._limit, out=pos)
        vel[at_wall] = 0.0
        self._pos, self._vel = pos, vel

        if len(self._hazards):
            dx = pos[:, 0, None] - self._hazards[None, :, 0]
            dy = pos[:, 1, None] - self._hazards[None, :, 1]
            inside = (dx * dx + dy * dy <= self.task.hazard_radius**2).any(axis=1)
            hazard_cost = inside.astype(np.float64)
        else:
            hazard_cost = np.zeros(self.num_envs)
        dist = np.hypot(self._goal[0] - pos[:, 0], self._goal[1] - pos[:, 1])
        at_goal = dist <= self.task.goal_radius
        reward = PROGRESS_SCALE * (self._last_dist - dist) + GOAL_REWARD * at_goal
        self._last_dist = dist
        return reward, {"hazards": hazard_cost}, at_goal

    def render(self, index: int = 0, size: int = 256) -> np.ndarray:
        """A top-down RGB picture of sub-environment ``index`` (what the robot cannot see):
        grey arena, blue hazards, green goal, red robot.

        Args:
            index: Which sub-environment.
            size: Image side in pixels (>= 16).

        Returns:
            uint8 array of shape ``(size, size, 3)``.
        """
        self._check_render_args(index, size)
        canvas = TopDownCanvas(self.task.arena_half_size, size)
        for hx, hy in self._hazards:
            canvas.disc(hx, hy, self.task.hazard_radius, (70, 110, 230))
        canvas.disc(self._goal[0], self._goal[1], self.task.goal_radius, (40, 190, 70))
        canvas.disc(self._pos[index, 0], self._pos[index, 1], 0.08, (215, 40, 40))
        return canvas.image()

    def _reset_envs(self, idx: np.ndarray) -> None:
        u = self._streams.uniform(idx, 2)
        r = self.task.start_radius * np.sqrt(u[:, 0])
        angle = 2 * np.pi * u[:, 1]
        self._pos[idx] = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
        self._vel[idx] = 0.0
        self._last_dist[idx] = np.hypot(self._goal[0] - self._pos[idx, 0], self._goal[1] - self._pos[idx, 1])

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        sel = slice(None) if idx is None else idx
        pos, vel, t = self._pos[sel], self._vel[sel], self._t[sel]
        obs = np.empty((pos.shape[0], OBS_DIM))
        obs[:, 0:2] = pos
        obs[:, 2:4] = vel
        obs[:, 4] = t / self.horizon
        return obs


def make(
    name: str = FAMILY,
    task: HiddenNavTask | Mapping[str, Any] | None = None,
    num_envs: int = 1,
    seed: int = 0,
    horizon: int = DEFAULT_HORIZON,
    **kwargs: Any,
) -> HiddenNavVecEnv:
    """Build a vectorised ``hiddennav`` (or ``hiddennav-hazard``) environment.

    Args:
        name: ``"hiddennav"`` or ``"hiddennav-hazard"``; a given task must be of this family.
        task: A :class:`HiddenNavTask` (or its :meth:`~HiddenNavTask.to_dict`); ``None`` uses the
            first training task of the family drawn with ``seed``.
        num_envs: Number of sub-environments (sub-env ``i`` is seeded ``seed + i``).
        seed: Seed of the random streams (and of the default task).
        horizon: Episode length at which sub-environments are truncated.

    Returns:
        A :class:`HiddenNavVecEnv`; call ``reset()`` before ``step()``.

    Raises:
        ValueError: Unknown family, a task of another family or bad sizes.
        TypeError: Unknown keyword arguments or a task of the wrong type.
    """
    task = resolve_task(_check_family(name), task, seed, HiddenNavTask, task_distribution, kwargs)
    return HiddenNavVecEnv(task, num_envs=num_envs, seed=seed, horizon=horizon)


class HiddenNavGymEnv(SafeNavGymEnv):
    """A single ``hiddennav`` (or ``hiddennav-hazard``) environment behind the gymnasium API.

    ``reset``, ``step`` and ``render`` are :class:`rl.envs.safenav.SafeNavGymEnv`'s, on a 1-env
    :class:`HiddenNavVecEnv`.

    Args:
        family: ``"hiddennav"`` or ``"hiddennav-hazard"``.
        task: As for :func:`make`; ``None`` uses the first training task drawn with ``task_seed``.
        seed: Seed of the robot's random stream until ``reset(seed=...)`` gives another; ``None``
            (default) draws one from the operating system.
        horizon: Episode length.
        render_mode: ``None`` or ``"rgb_array"``.
        task_seed: Seed of the default task.
    """

    _family = Family(_check_family, task_distribution, make)

    def __init__(
        self,
        family: str = FAMILY,
        task: HiddenNavTask | Mapping[str, Any] | None = None,
        seed: int | None = None,
        horizon: int = DEFAULT_HORIZON,
        render_mode: str | None = None,
        task_seed: int = 0,
    ) -> None:
        super().__init__(family, task, seed, horizon, render_mode, task_seed)
