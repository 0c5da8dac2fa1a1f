"""Built-in safe navigation tasks: a point robot among hazards, goals and buttons.

Pure numpy and vectorised: ``N`` sub-environments advance in one call with no
Python loop over environments. Two families share one observation layout, so a
policy trained on one runs on the other:

* ``safenav-goal``: reach a goal, then a new goal is drawn; cost channel
  ``("hazards",)``.
* ``safenav-button``: press the current goal button, then another button becomes
  the goal; cost channels ``("hazards", "buttons")``.

>>> from rl.envs import safenav
>>> dist = safenav.task_distribution("safenav-goal")
>>> task = dist.sample(1, split="train", seed=0)[0]
>>> env = safenav.make("safenav-goal", task=task, num_envs=4, seed=0)
>>> obs, info = env.reset()
>>> obs.shape == (4, safenav.OBS_DIM)
True

Dynamics (per step of ``DT`` = 0.1 s). Action ``(thrust, turn)`` in
``[-1, 1]^2``: the heading turns by ``DT * MAX_TURN_RATE * turn``; the world-frame
velocity decays by ``exp(-DAMPING * DT)`` and gains ``DT * THRUST * thrust`` along
the new heading; the position moves by ``DT * velocity`` and is clipped to the
arena (the robot's centre stays ``ROBOT_RADIUS`` inside the walls; the velocity
component into a wall is zeroed). Top speed is about 1.1 units/s (0.11 per step).

Reward: ``PROGRESS_SCALE * (previous distance - distance)`` to the current goal
(goal centre, or goal button centre) every step, plus ``GOAL_BONUS`` on the step
the goal is reached (robot centre within ``goal_radius`` of the goal) or the goal
button is pressed (robot disc touches it). Then a new goal is drawn with the
sub-environment's own random stream: a point of the next goal region away from
hazards (goal family) or a different button (button family).

Costs (each channel 0 or 1 per step, ``cost`` is their sum):

* ``"hazards"``: 1 while the robot's centre is inside any hazard disc.
* ``"buttons"`` (button family only): 1 while the robot's disc touches a button
  other than the goal button. The button just pressed is exempt until the robot
  has left it (otherwise every press would be followed by a cost).

Episodes: ``truncated`` is set exactly at ``horizon`` steps (default
``DEFAULT_HORIZON`` = 200; the published Meta-CPO experiments used 500 steps with
Safety-Gymnasium). The task never sets ``terminated``: it is always ``False``.
Sub-environments auto-reset as :mod:`rl.envs.base` specifies
(``info["final_observation"]``).

Observation (float64, ``OBS_DIM`` = 37, identical for both families, see
``OBS_LAYOUT``): the goal direction in the robot's frame (cos, sin) and
``exp(-distance)``; the velocity in the robot's frame (each component within
``+-VELOCITY_BOUND``); a 16-bin lidar for hazards
and a 16-bin lidar for buttons (zeros where there are none). Bin ``k`` covers
bearings ``[k, k + 1) * 2 pi / 16`` counter-clockwise from the heading; its value
is the largest ``1 - surface distance / LIDAR_RANGE`` (clipped to ``[0, 1]``) of
the objects in it.

Tasks (:class:`SafeNavTask`) pin the layout: hazard and button positions are
drawn once when a task is sampled, so every episode of a task has the same
layout; the robot's start and the goals vary with each sub-environment's random
stream. :func:`corridor_task` is a hand-built task whose direct path crosses a
hazard while a detour exists (for quick CPO tests).

Randomness: sub-environment ``i`` owns a SplitMix64 counter stream seeded with
``seed + i``; every random event (a reset, a new goal) consumes a fixed number of
draws from its own stream only, so ``N`` sub-environments behave exactly like
``N`` separate 1-env instances seeded ``seed, seed + 1, ...``.

The gymnasium ids ``SafeNavGoal-v0`` and ``SafeNavButton-v0`` (single
environment, :class:`SafeNavGymEnv`) are registered through the package's
``gymnasium.envs`` entry point, so ``gymnasium.make("SafeNavGoal-v0")`` works
without importing ``rl`` first; importing this module registers them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np

from rl.envs.base import TaskRecord, all_true, check_seed, next_observations, with_final
from rl.envs.registration import register_gymnasium_envs

__all__ = [
    "DEFAULT_HORIZON",
    "FAMILIES",
    "OBS_DIM",
    "OBS_LAYOUT",
    "SafeNavDistribution",
    "SafeNavGymEnv",
    "SafeNavTask",
    "SafeNavVecEnv",
    "SplitRanges",
    "VELOCITY_BOUND",
    "observation_bounds",
    "corridor_task",
    "goal_seeking_actions",
    "make",
    "task_distribution",
]

FAMILIES = ("safenav-goal", "safenav-button")
SPLITS = ("train", "test")
DEFAULT_HORIZON = 200

# Dynamics.
DT = 0.1
THRUST = 2.0  # forward acceleration at full thrust (units / s^2)
DAMPING = 2.0  # velocity decay rate (1 / s)
MAX_TURN_RATE = 3.0  # heading rate at |turn| = 1 (rad / s)
ROBOT_RADIUS = 0.1

# Reward.
PROGRESS_SCALE = 1.0
GOAL_BONUS = 1.0

# Observation.
LIDAR_BINS = 16
LIDAR_RANGE = 2.0
OBS_LAYOUT = {
    "goal": slice(0, 3),
    "velocity": slice(3, 5),
    "hazard_lidar": slice(5, 5 + LIDAR_BINS),
    "button_lidar": slice(5 + LIDAR_BINS, 5 + 2 * LIDAR_BINS),
}
OBS_DIM = 5 + 2 * LIDAR_BINS
# Top speed is DT * THRUST / (1 - exp(-DAMPING * DT)) = 1.103 units/s; the observation space
# bounds each robot-frame velocity component by this round figure above it.
VELOCITY_BOUND = 1.2

# Candidates drawn per random placement (first admissible one wins).
_CANDIDATES = 32
_CLEARANCE = 0.05

Box = tuple[float, float, float, float]  # (x_low, x_high, y_low, y_high)


# --------------------------------------------------------------------------- tasks


def _finite_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    value = _finite_float(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _points(name: str, value: Any, half_size: float) -> tuple[tuple[float, float], ...]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of (x, y) pairs, got {value!r}") from err
    if arr.size == 0:
        return ()
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (x, y) pairs, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if (np.abs(arr) > half_size).any():
        raise ValueError(
            f"{name} must lie inside the arena [-{half_size}, {half_size}]^2, got {arr.tolist()}"
        )
    return tuple((float(x), float(y)) for x, y in arr)


def _box(name: str, value: Any, half_size: float) -> Box:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be (x_low, x_high, y_low, y_high), got {value!r}") from err
    if arr.shape != (4,) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be 4 finite numbers (x_low, x_high, y_low, y_high), got {value!r}")
    x_lo, x_hi, y_lo, y_hi = (float(v) for v in arr)
    if not (x_lo < x_hi and y_lo < y_hi):
        raise ValueError(f"{name} must have x_low < x_high and y_low < y_high, got {value!r}")
    if min(x_lo, y_lo) < -half_size or max(x_hi, y_hi) > half_size:
        raise ValueError(f"{name} must lie inside the arena [-{half_size}, {half_size}]^2, got {value!r}")
    return (x_lo, x_hi, y_lo, y_hi)


@dataclass(frozen=True)
class SafeNavTask(TaskRecord):
    """One pinned layout of a safe navigation task (JSON-able via :meth:`to_dict`).

    Attributes:
        family: ``"safenav-goal"`` or ``"safenav-button"``.
        arena_half_size: The arena is ``[-arena_half_size, arena_half_size]^2``.
        hazard_radius: Radius of every hazard disc (> 0).
        hazard_positions: Hazard centres, ``((x, y), ...)``; may be empty.
        button_radius: Radius of every button (> 0).
        button_positions: Button centres; empty for the goal family, at least two
            for the button family.
        goal_radius: The goal is reached when the robot's centre is this close to
            it (goal family).
        goal_regions: Boxes ``(x_low, x_high, y_low, y_high)`` the goals are drawn
            from, cycling: the ``k``-th goal of an episode comes from
            ``goal_regions[k % len(goal_regions)]``. Empty means the whole arena.
        start_region: Box the robot starts in; ``None`` means the whole arena.
        min_goal_distance: A new goal is drawn at least this far from the robot
            where possible (goal family).

    Raises:
        ValueError: A parameter is out of range (message names it and the range).
        TypeError: A parameter has the wrong type.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("family", "arena_half_size")

    family: str
    arena_half_size: float
    hazard_radius: float = 0.25
    hazard_positions: tuple[tuple[float, float], ...] = ()
    button_radius: float = 0.1
    button_positions: tuple[tuple[float, float], ...] = ()
    goal_radius: float = 0.3
    goal_regions: tuple[Box, ...] = ()
    start_region: Box | None = None
    min_goal_distance: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {list(FAMILIES)}, got {self.family!r}")
        half = _positive("arena_half_size", self.arena_half_size)
        if half <= 2 * ROBOT_RADIUS:
            raise ValueError(f"arena_half_size must be > {2 * ROBOT_RADIUS}, got {half!r}")
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("arena_half_size", half)
        set_("hazard_radius", _positive("hazard_radius", self.hazard_radius))
        set_("button_radius", _positive("button_radius", self.button_radius))
        set_("goal_radius", _positive("goal_radius", self.goal_radius))
        mgd = _finite_float("min_goal_distance", self.min_goal_distance)
        if mgd < 0:
            raise ValueError(f"min_goal_distance must be >= 0, got {mgd!r}")
        set_("min_goal_distance", mgd)
        set_("hazard_positions", _points("hazard_positions", self.hazard_positions, half))
        set_("button_positions", _points("button_positions", self.button_positions, half))
        if isinstance(self.goal_regions, (str, bytes)) or not isinstance(
            self.goal_regions, Sequence | np.ndarray
        ):
            raise ValueError(
                f"goal_regions must be a sequence of (x_low, x_high, y_low, y_high) boxes, "
                f"got {self.goal_regions!r}"
            )
        regions = tuple(_box(f"goal_regions[{i}]", box, half) for i, box in enumerate(self.goal_regions))
        set_("goal_regions", regions)
        if self.start_region is not None:
            set_("start_region", _box("start_region", self.start_region, half))
        if self.family == "safenav-goal" and self.button_positions:
            raise ValueError(
                f"the safenav-goal family has no buttons, got {len(self.button_positions)} "
                "button_positions; use family='safenav-button'"
            )
        if self.family == "safenav-button" and len(self.button_positions) < 2:
            raise ValueError(
                "the safenav-button family needs at least 2 button_positions, "
                f"got {len(self.button_positions)}"
            )

    @property
    def num_hazards(self) -> int:
        """Number of hazards."""
        return len(self.hazard_positions)

    @property
    def num_buttons(self) -> int:
        """Number of buttons."""
        return len(self.button_positions)


def corridor_task(
    arena_half_size: float = 1.5, hazard_radius: float = 0.45, goal_radius: float = 0.25
) -> SafeNavTask:
    """A hand-built goal task whose direct path crosses a hazard, with a detour.

    One hazard sits at the centre. The robot starts in a small box on the left
    (``x ~ -(L - 0.35)``, ``|y| <= 0.2``); goals alternate between a small box on
    the right and the same box on the left, so the robot shuttles across the
    arena. Every straight start-goal segment crosses the hazard (its half-width
    ``0.2`` is below ``hazard_radius``), while going around it (``|y| >
    hazard_radius``) costs nothing. Goals come from fixed regions, so the task is
    learnable in a few CPO iterations. A straight-line policy pays about
    ``2 * hazard_radius / 0.11`` cost per crossing.

    Args:
        arena_half_size: Half side of the arena (>= 1.0).
        hazard_radius: Radius of the central hazard, in ``(0.2, arena_half_size - 0.6)``.
        goal_radius: Goal reach radius, in ``(0, 0.5]``.

    Returns:
        A ``safenav-goal`` :class:`SafeNavTask`.
    """
    half = _finite_float("arena_half_size", arena_half_size)
    if half < 1.0:
        raise ValueError(f"arena_half_size must be >= 1.0 for the corridor task, got {half!r}")
    radius = _finite_float("hazard_radius", hazard_radius)
    if not 0.2 < radius < half - 0.6:
        raise ValueError(
            f"hazard_radius must be in (0.2, arena_half_size - 0.6 = {half - 0.6}), got {radius!r}"
        )
    goal_r = _finite_float("goal_radius", goal_radius)
    if not 0.0 < goal_r <= 0.5:
        raise ValueError(f"goal_radius must be in (0, 0.5], got {goal_r!r}")
    end = half - 0.35
    left = (-end - 0.1, -end + 0.1, -0.2, 0.2)
    right = (end - 0.1, end + 0.1, -0.2, 0.2)
    return SafeNavTask(
        family="safenav-goal",
        arena_half_size=half,
        hazard_radius=radius,
        hazard_positions=((0.0, 0.0),),
        goal_radius=goal_r,
        goal_regions=(right, left),
        start_region=left,
    )


# ------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class SplitRanges:
    """Ranges a split draws its tasks from (uniform; counts inclusive).

    Attributes:
        arena_half_size: ``(low, high)``.
        num_hazards: ``(low, high)``, inclusive ints.
        hazard_radius: ``(low, high)``.
        num_buttons: ``(low, high)``, inclusive ints (``(0, 0)`` for the goal family).
    """

    arena_half_size: tuple[float, float]
    num_hazards: tuple[int, int]
    hazard_radius: tuple[float, float]
    num_buttons: tuple[int, int]


_RANGES: dict[str, dict[str, SplitRanges]] = {
    "safenav-goal": {
        "train": SplitRanges((1.5, 2.0), (3, 5), (0.2, 0.3), (0, 0)),
        "test": SplitRanges((2.3, 2.8), (6, 9), (0.2, 0.3), (0, 0)),
    },
    "safenav-button": {
        "train": SplitRanges((1.5, 2.0), (3, 5), (0.2, 0.3), (3, 5)),
        "test": SplitRanges((2.3, 2.8), (6, 9), (0.2, 0.3), (6, 8)),
    },
}


def _check_family(name: Any) -> str:
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"unknown safenav family {name!r}; expected one of {list(FAMILIES)}")
    return name


def _place(
    rng: np.random.Generator,
    count: int,
    box: Box,
    spacing: float,
    avoid: np.ndarray,
    avoid_distance: float,
) -> np.ndarray | None:
    """Draw ``count`` points in ``box`` at least ``spacing`` apart and
    ``avoid_distance`` from ``avoid`` (rejection; ``None`` if it gets stuck)."""
    pts: list[np.ndarray] = []
    for _ in range(count):
        for _attempt in range(500):
            p = rng.uniform((box[0], box[2]), (box[1], box[3]))
            if pts and np.min(np.linalg.norm(np.asarray(pts) - p, axis=1)) < spacing:
                continue
            if len(avoid) and np.min(np.linalg.norm(avoid - p, axis=1)) < avoid_distance:
                continue
            pts.append(p)
            break
        else:
            return None
    return np.asarray(pts).reshape(-1, 2)


@dataclass(frozen=True)
class SafeNavDistribution:
    """A distribution over :class:`SafeNavTask` layouts with train and test splits.

    The test split's arena sizes and object counts lie outside the training ranges
    (larger arenas, more hazards and buttons), like the levels of the paper.
    Hazards are placed in the central part of the arena (goal family: the central
    box of half-size ``0.55 L``; button family: ``0.6 L``) and goals far from the
    robot (goal family: ``min_goal_distance = L``) or buttons around the edge
    (button family: outside the central box of half-size ``0.5 L``), so the direct
    path to a goal often crosses a hazard and an unconstrained policy pays cost.

    Attributes:
        name: The family, ``"safenav-goal"`` or ``"safenav-button"``.
        train: Ranges of the training split.
        test: Ranges of the test split.
    """

    name: str
    train: SplitRanges
    test: SplitRanges

    def ranges(self, split: str) -> SplitRanges:
        """The :class:`SplitRanges` of ``split`` (``"train"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return self.train if split == "train" else self.test

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[SafeNavTask]:
        """Draw ``n`` task layouts from ``split`` with a generator seeded by ``seed``.

        The generator is private to the call (seeded by ``seed``, the family and the
        split), so equal arguments give equal tasks.

        Args:
            n: Number of tasks (>= 1).
            split: ``"train"`` or ``"test"``.
            seed: Any int.

        Returns:
            A list of ``n`` :class:`SafeNavTask`.
        """
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        ranges = self.ranges(split)
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        rng = np.random.default_rng([int(seed) % 2**64, FAMILIES.index(self.name), SPLITS.index(split)])
        return [self._sample_one(rng, ranges) for _ in range(int(n))]

    def _sample_one(self, rng: np.random.Generator, r: SplitRanges) -> SafeNavTask:
        half = float(rng.uniform(*r.arena_half_size))
        radius = float(rng.uniform(*r.hazard_radius))
        n_haz = int(rng.integers(r.num_hazards[0], r.num_hazards[1] + 1))
        n_btn = int(rng.integers(r.num_buttons[0], r.num_buttons[1] + 1))
        button_radius = 0.1
        for _ in range(100):
            if self.name == "safenav-goal":
                c = 0.55 * half
                haz = _place(rng, n_haz, (-c, c, -c, c), 2 * radius + 0.1, np.zeros((0, 2)), 0)
                btn = np.zeros((0, 2))
            else:
                c = 0.6 * half
                haz = _place(rng, n_haz, (-c, c, -c, c), 2 * radius + 0.1, np.zeros((0, 2)), 0)
                if haz is None:
                    continue
                e = half - 2 * ROBOT_RADIUS - button_radius
                btn_list: list[np.ndarray] = []
                for _attempt in range(50 * n_btn):
                    if len(btn_list) == n_btn:
                        break
                    p = _place(rng, 1, (-e, e, -e, e), 0.0, haz, radius + button_radius + 2 * ROBOT_RADIUS)
                    if p is None:
                        break
                    p = p[0]
                    if np.max(np.abs(p)) < 0.5 * half:
                        continue
                    if btn_list and np.min(np.linalg.norm(np.asarray(btn_list) - p, axis=1)) < (
                        2 * button_radius + 3 * ROBOT_RADIUS
                    ):
                        continue
                    btn_list.append(p)
                btn = np.asarray(btn_list).reshape(-1, 2) if len(btn_list) == n_btn else None
            if haz is not None and btn is not None:
                return SafeNavTask(
                    family=self.name,
                    arena_half_size=half,
                    hazard_radius=radius,
                    hazard_positions=tuple(map(tuple, haz.tolist())),
                    button_radius=button_radius,
                    button_positions=tuple(map(tuple, btn.tolist())),
                    goal_radius=0.3,
                    min_goal_distance=half if self.name == "safenav-goal" else 0.0,
                )
        raise RuntimeError(f"could not place {n_haz} hazards and {n_btn} buttons in a task")


def task_distribution(name: str) -> SafeNavDistribution:
    """The task distribution of family ``name`` (``"safenav-goal"`` or ``"safenav-button"``)."""
    name = _check_family(name)
    return SafeNavDistribution(name=name, train=_RANGES[name]["train"], test=_RANGES[name]["test"])


# -------------------------------------------------------------------- randomness

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U64(30))) * _MIX1
        z = (z ^ (z >> _U64(27))) * _MIX2
    return z ^ (z >> _U64(31))


class _Streams:
    """One SplitMix64 stream per sub-environment, drawn from in vectorised calls."""

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


# ------------------------------------------------------------------ the VecEnv


def _lidar(
    pos: np.ndarray, cos_h: np.ndarray, sin_h: np.ndarray, objects: np.ndarray, radius: float
) -> np.ndarray:
    """``(N, LIDAR_BINS)`` lidar of discs of ``radius`` at ``objects`` seen from ``pos``."""
    n = pos.shape[0]
    out = np.zeros(n * LIDAR_BINS)
    if objects.shape[0] == 0:
        return out.reshape(n, LIDAR_BINS)
    rx = objects[None, :, 0] - pos[:, 0, None]
    ry = objects[None, :, 1] - pos[:, 1, None]
    ex = cos_h[:, None] * rx + sin_h[:, None] * ry  # object in the robot's frame
    ey = cos_h[:, None] * ry - sin_h[:, None] * rx
    surface = np.maximum(np.hypot(ex, ey) - radius, 0.0)
    intensity = np.clip(1.0 - surface / LIDAR_RANGE, 0.0, 1.0)
    bins = np.floor(np.arctan2(ey, ex) * (LIDAR_BINS / (2 * np.pi))).astype(np.intp) % LIDAR_BINS
    flat = bins + (np.arange(n) * LIDAR_BINS)[:, None]
    np.maximum.at(out, flat.ravel(), intensity.ravel())  # per-bin max over objects
    return out.reshape(n, LIDAR_BINS)


def observation_bounds() -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` float64 bounds of an observation, shape ``(OBS_DIM,)``.

    Goal direction in ``[-1, 1]^2``, ``exp(-distance)`` in ``[0, 1]``, velocity
    components in ``[-VELOCITY_BOUND, VELOCITY_BOUND]``, lidar bins in ``[0, 1]``.
    """
    low = np.zeros(OBS_DIM)
    high = np.ones(OBS_DIM)
    low[0:2] = -1.0
    low[OBS_LAYOUT["velocity"]] = -VELOCITY_BOUND
    high[OBS_LAYOUT["velocity"]] = VELOCITY_BOUND
    return low, high


class SafeNavVecEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` copies of one :class:`SafeNavTask`, stepped together.

    A :class:`gymnasium.vector.VectorEnv` following :mod:`rl.envs.base` (see the
    module docstring for dynamics, rewards, costs and the observation). Build it
    with :func:`make`.

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
        if not isinstance(num_envs, int | np.integer) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if not isinstance(horizon, int | np.integer) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        low, high = observation_bounds()
        super().__init__(
            int(num_envs),
            gymnasium.spaces.Box(low, high, (OBS_DIM,), np.float64),
            gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float64),
        )
        self.task = task
        self.name = task.family
        self.horizon = int(horizon)
        self.obs_dim = OBS_DIM
        self.act_dim = 2
        self.action_low = -np.ones(2)
        self.action_high = np.ones(2)
        self._buttons_family = task.family == "safenav-button"
        self.cost_channels = ("hazards", "buttons") if self._buttons_family else ("hazards",)

        half = task.arena_half_size
        self._hazards = np.asarray(task.hazard_positions, dtype=np.float64).reshape(-1, 2)
        self._buttons = np.asarray(task.button_positions, dtype=np.float64).reshape(-1, 2)
        m = 2 * ROBOT_RADIUS
        whole = (-half + m, half - m, -half + m, half - m)
        self._start_box = np.asarray(task.start_region or whole, dtype=np.float64)
        self._goal_boxes = np.asarray(task.goal_regions or (whole,), dtype=np.float64)
        self._start_obstacles = np.concatenate([self._hazards, self._buttons])
        self._start_clearance = np.concatenate(
            [
                np.full(len(self._hazards), task.hazard_radius + ROBOT_RADIUS + _CLEARANCE),
                np.full(len(self._buttons), task.button_radius + 2 * ROBOT_RADIUS + _CLEARANCE),
            ]
        )
        self._goal_clearance = np.full(len(self._hazards), task.hazard_radius + task.goal_radius + _CLEARANCE)
        self._decay = math.exp(-DAMPING * DT)
        self._limit = half - ROBOT_RADIUS
        self._touch = task.button_radius + ROBOT_RADIUS

        n = self.num_envs
        self._streams = _Streams(n, int(seed))
        self._pos = np.zeros((n, 2))
        self._heading = np.zeros(n)
        self._vel = np.zeros((n, 2))
        self._goal = np.zeros((n, 2))
        self._goal_index = np.zeros(n, dtype=np.intp)  # goal button (button family)
        self._goal_count = np.zeros(n, dtype=np.intp)  # goals reached this episode
        self._last_pressed = np.full(n, -1, dtype=np.intp)
        self._last_dist = np.zeros(n)
        self._t = np.zeros(n, dtype=np.int64)
        self._needs_reset = True
        self._all_true = all_true(n)

    # ---------------------------------------------------------------- public API

    @property
    def robot_positions(self) -> np.ndarray:
        """World-frame robot centres, ``(N, 2)`` (a copy)."""
        return self._pos.copy()

    @property
    def robot_headings(self) -> np.ndarray:
        """Robot headings in radians, ``(N,)`` (a copy)."""
        return self._heading.copy()

    @property
    def goal_positions(self) -> np.ndarray:
        """Current goal centres (goal button centres in the button family), ``(N, 2)``."""
        return self._goal.copy()

    @property
    def goal_buttons(self) -> np.ndarray:
        """Current goal button indices, ``(N,)`` (button family; zeros otherwise)."""
        return self._goal_index.copy()

    @property
    def episode_steps(self) -> np.ndarray:
        """Steps taken in the current episode of each sub-environment, ``(N,)``."""
        return self._t.copy()

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Reset every sub-environment (sub-env ``i`` reseeded with ``seed + i``).

        Args:
            seed: ``None`` continues the streams seeded at construction; a list
                gives one seed per sub-environment.
            options: Unused (Gymnasium's signature).

        Returns:
            ``(obs, info)``: obs float64 ``(num_envs, obs_dim)``; info is empty.
        """
        seeds = check_seed(seed, self.num_envs)
        if seeds is not None:
            self._streams.seed_each(seeds)
        self._reset_envs(np.arange(self.num_envs))
        self._needs_reset = False
        return self._observe(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Advance every sub-environment by one step (see :mod:`rl.envs.base`).

        Args:
            actions: ``(num_envs, 2)`` array of ``(thrust, turn)``; clipped to ``[-1, 1]``.

        Returns:
            ``(obs, reward, terminated, truncated, info)`` with ``info["cost"]``,
            ``info["costs"]`` (channel -> float64 ``(N,)``), ``info["goal_reached"]``
            (bool ``(N,)``) and, where episodes ended, ``info["final_observation"]``.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("actions must be finite, got NaN or inf")
        a = np.clip(a, -1.0, 1.0)

        # Dynamics.
        heading = self._heading + (DT * MAX_TURN_RATE) * a[:, 1]
        heading = np.mod(heading + np.pi, 2 * np.pi) - np.pi
        self._heading = heading
        push = (DT * THRUST) * a[:, 0]
        vel = self._vel * self._decay
        vel[:, 0] += push * np.cos(heading)
        vel[:, 1] += push * np.sin(heading)
        pos = self._pos + DT * vel
        at_wall = np.abs(pos) > self._limit
        np.clip(pos, -self._limit, self._limit, out=pos)
        vel[at_wall] = 0.0
        self._pos, self._vel = pos, vel

        # Costs.
        costs: dict[str, np.ndarray] = {}
        if len(self._hazards):
            dx = pos[:, 0, None] - self._hazards[None, :, 0]
            dy = pos[:, 1, None] - self._hazards[None, :, 1]
            inside = (dx * dx + dy * dy <= self.task.hazard_radius**2).any(axis=1)
            costs["hazards"] = inside.astype(np.float64)
        else:
            costs["hazards"] = np.zeros(self.num_envs)

        # Reward.
        gx = self._goal[:, 0] - pos[:, 0]
        gy = self._goal[:, 1] - pos[:, 1]
        dist = np.hypot(gx, gy)
        reward = PROGRESS_SCALE * (self._last_dist - dist)
        if self._buttons_family:
            dx = pos[:, 0, None] - self._buttons[None, :, 0]
            dy = pos[:, 1, None] - self._buttons[None, :, 1]
            touching = dx * dx + dy * dy <= self._touch**2
            ids = np.arange(len(self._buttons))
            wrong = touching & (ids != self._goal_index[:, None]) & (ids != self._last_pressed[:, None])
            costs["buttons"] = wrong.any(axis=1).astype(np.float64)
            rows = np.arange(self.num_envs)
            reached = touching[rows, self._goal_index]
            still = touching[rows, np.maximum(self._last_pressed, 0)] & (self._last_pressed >= 0)
            self._last_pressed = np.where(still, self._last_pressed, -1)
        else:
            reached = dist <= self.task.goal_radius
        reward = reward + GOAL_BONUS * reached
        if reached.any():
            self._new_goals(np.flatnonzero(reached))
            dist = np.hypot(self._goal[:, 0] - pos[:, 0], self._goal[:, 1] - pos[:, 1])
        self._last_dist = dist
        cost = costs["hazards"] + costs["buttons"] if self._buttons_family else costs["hazards"]

        # Time limit and auto-reset.
        self._t += 1
        truncated = self._t >= self.horizon
        terminated = np.zeros(self.num_envs, dtype=bool)
        obs = self._observe()
        mask = self._all_true
        info = {
            "cost": cost.copy(),
            "_cost": mask,
            "costs": costs,
            "_costs": mask,
            "goal_reached": reached,
            "_goal_reached": mask,
        }
        if truncated.any():
            done = np.flatnonzero(truncated)
            with_final(info, done, obs[done].copy(), self.num_envs)
            self._reset_envs(done)
            obs[done] = self._observe(done)
        return obs, reward, terminated, truncated, info

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
        n = self.num_envs
        if position is not None:
            pos = np.broadcast_to(np.asarray(position, dtype=np.float64), (n, 2))
            self._pos = np.clip(pos, -self._limit, self._limit).copy()
        if heading is not None:
            self._heading = np.broadcast_to(np.asarray(heading, dtype=np.float64), (n,)).copy()
        if velocity is not None:
            self._vel = np.broadcast_to(np.asarray(velocity, dtype=np.float64), (n, 2)).copy()
        if goal is not None:
            if self._buttons_family:
                index = np.broadcast_to(np.asarray(goal), (n,))
                if (
                    not np.issubdtype(index.dtype, np.integer)
                    or ((index < 0) | (index >= len(self._buttons))).any()
                ):
                    raise ValueError(
                        f"goal must be button indices in [0, {len(self._buttons)}), got {goal!r}"
                    )
                self._goal_index = index.astype(np.intp)
                self._goal = self._buttons[self._goal_index].copy()
            else:
                self._goal = np.broadcast_to(np.asarray(goal, dtype=np.float64), (n, 2)).copy()
        self._last_pressed[:] = -1
        self._last_dist = np.hypot(*(self._goal - self._pos).T)
        return self._observe()

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
        if not isinstance(index, int | np.integer) or not 0 <= index < self.num_envs:
            raise ValueError(f"index must be an int in [0, {self.num_envs}), got {index!r}")
        if not isinstance(size, int | np.integer) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        half = self.task.arena_half_size
        extent = 1.05 * half
        coords = (np.arange(size) + 0.5) / size * 2 * extent - extent
        x = coords[None, :]
        y = -coords[:, None]  # row 0 is the top of the picture
        img = np.empty((size, size, 3))
        img[:] = (40, 40, 48)
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
        img[inside] = (235, 235, 228)

        def disc(cx: float, cy: float, r: float, color: tuple[int, int, int], alpha: float = 1.0):
            mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
            img[mask] = (1 - alpha) * img[mask] + alpha * np.asarray(color, dtype=np.float64)

        for hx, hy in self._hazards:
            disc(hx, hy, self.task.hazard_radius, (70, 110, 230), 0.75)
        goal_x, goal_y = self._goal[index]
        if self._buttons_family:
            for b, (bx, by) in enumerate(self._buttons):
                color = (40, 190, 70) if b == self._goal_index[index] else (245, 150, 30)
                disc(bx, by, self.task.button_radius, color)
        else:
            disc(goal_x, goal_y, self.task.goal_radius, (40, 190, 70), 0.6)
        px, py = self._pos[index]
        disc(px, py, ROBOT_RADIUS, (215, 40, 40))
        # Heading bar: pixels within a thin band of the segment from the centre forward.
        hx, hy = math.cos(self._heading[index]), math.sin(self._heading[index])
        along = np.clip((x - px) * hx + (y - py) * hy, 0.0, 2.2 * ROBOT_RADIUS)
        bar = (x - px - along * hx) ** 2 + (y - py - along * hy) ** 2 <= (0.3 * ROBOT_RADIUS) ** 2
        img[bar] = (30, 30, 30)
        return np.clip(img, 0, 255).astype(np.uint8)

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release (``close()`` comes from :class:`gymnasium.vector.VectorEnv`)."""

    # ---------------------------------------------------------------- internals

    def _sample_points(
        self,
        idx: np.ndarray,
        boxes: np.ndarray,
        obstacles: np.ndarray,
        clearance: np.ndarray,
        ref: np.ndarray | None = None,
        min_distance: float = 0.0,
    ) -> np.ndarray:
        """One point per row of ``idx`` inside its box (``(len(idx), 4)``), at least
        ``clearance`` from each obstacle and ``min_distance`` from ``ref``: the first
        admissible of ``_CANDIDATES`` draws, else the least bad one."""
        n = len(idx)
        u = self._streams.uniform(idx, 2 * _CANDIDATES).reshape(n, _CANDIDATES, 2)
        lo = boxes[:, None, [0, 2]]
        hi = boxes[:, None, [1, 3]]
        pts = lo + u * (hi - lo)
        score = np.full((n, _CANDIDATES), np.inf)
        if len(obstacles):
            d = np.linalg.norm(pts[:, :, None, :] - obstacles[None, None], axis=-1)
            score = np.min(d - clearance, axis=-1)
        if ref is not None and min_distance > 0:
            d_ref = np.linalg.norm(pts - ref[:, None, :], axis=-1)
            score = np.minimum(score, d_ref - min_distance)
        ok = score >= 0
        choice = np.where(ok.any(axis=1), ok.argmax(axis=1), score.argmax(axis=1))
        return pts[np.arange(n), choice]

    def _new_goals(self, idx: np.ndarray) -> None:
        """Draw the next goal of the sub-environments ``idx`` from their own streams."""
        if self._buttons_family:
            nb = len(self._buttons)
            u = self._streams.uniform(idx, 1)[:, 0]
            old = self._goal_index[idx]
            self._last_pressed[idx] = old
            new = (old + 1 + np.minimum((u * (nb - 1)).astype(np.intp), nb - 2)) % nb
            self._goal_index[idx] = new
            self._goal[idx] = self._buttons[new]
        else:
            self._goal_count[idx] += 1
            boxes = self._goal_boxes[self._goal_count[idx] % len(self._goal_boxes)]
            self._goal[idx] = self._sample_points(
                idx,
                boxes,
                self._hazards,
                self._goal_clearance,
                ref=self._pos[idx],
                min_distance=self.task.min_goal_distance,
            )

    def _reset_envs(self, idx: np.ndarray) -> None:
        """Start new episodes in the sub-environments ``idx``."""
        n = len(idx)
        boxes = np.broadcast_to(self._start_box, (n, 4))
        self._pos[idx] = self._sample_points(idx, boxes, self._start_obstacles, self._start_clearance)
        self._heading[idx] = -np.pi + 2 * np.pi * self._streams.uniform(idx, 1)[:, 0]
        self._vel[idx] = 0.0
        self._t[idx] = 0
        self._goal_count[idx] = 0
        self._last_pressed[idx] = -1
        if self._buttons_family:
            nb = len(self._buttons)
            u = self._streams.uniform(idx, 1)[:, 0]
            self._goal_index[idx] = np.minimum((u * nb).astype(np.intp), nb - 1)
            self._goal[idx] = self._buttons[self._goal_index[idx]]
        else:
            self._goal[idx] = self._sample_points(
                idx,
                np.broadcast_to(self._goal_boxes[0], (n, 4)),
                self._hazards,
                self._goal_clearance,
                ref=self._pos[idx],
                min_distance=self.task.min_goal_distance,
            )
        self._last_dist[idx] = np.hypot(*(self._goal[idx] - self._pos[idx]).T)

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        sel = slice(None) if idx is None else idx
        pos, heading, vel, goal = self._pos[sel], self._heading[sel], self._vel[sel], self._goal[sel]
        c, s = np.cos(heading), np.sin(heading)
        obs = np.empty((pos.shape[0], OBS_DIM))
        gx, gy = goal[:, 0] - pos[:, 0], goal[:, 1] - pos[:, 1]
        dist = np.hypot(gx, gy)
        safe = np.where(dist > 1e-12, dist, 1.0)
        obs[:, 0] = np.where(dist > 1e-12, (c * gx + s * gy) / safe, 1.0)
        obs[:, 1] = np.where(dist > 1e-12, (c * gy - s * gx) / safe, 0.0)
        obs[:, 2] = np.exp(-dist)
        obs[:, 3] = c * vel[:, 0] + s * vel[:, 1]
        obs[:, 4] = c * vel[:, 1] - s * vel[:, 0]
        obs[:, OBS_LAYOUT["hazard_lidar"]] = _lidar(pos, c, s, self._hazards, self.task.hazard_radius)
        obs[:, OBS_LAYOUT["button_lidar"]] = _lidar(pos, c, s, self._buttons, self.task.button_radius)
        return obs


def goal_seeking_actions(obs: np.ndarray, turn_gain: float = 2.0) -> np.ndarray:
    """A scripted unconstrained policy: turn toward the goal, thrust when facing it.

    It ignores hazards, so it shows what a policy that only chases reward pays in
    cost. Useful for tests, benchmarks and demos.

    Args:
        obs: ``(N, OBS_DIM)`` observations.
        turn_gain: Turn command per radian of bearing error.

    Returns:
        ``(N, 2)`` actions in ``[-1, 1]``.
    """
    obs = np.asarray(obs, dtype=np.float64)
    if obs.ndim != 2 or obs.shape[1] != OBS_DIM:
        raise ValueError(f"obs must have shape (N, {OBS_DIM}), got {obs.shape}")
    bearing = np.arctan2(obs[:, 1], obs[:, 0])
    thrust = np.clip(obs[:, 0], 0.0, 1.0)
    return np.stack([thrust, np.clip(turn_gain * bearing, -1.0, 1.0)], axis=1)


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
    if kwargs:
        raise TypeError(
            f"unknown options {sorted(kwargs)} for {name!r}; valid: task, num_envs, seed, horizon"
        )
    if task is None:
        task = task_distribution(name).sample(1, split="train", seed=seed)[0]
    elif isinstance(task, Mapping):
        task = SafeNavTask.from_dict(task)
    elif not isinstance(task, SafeNavTask):
        raise TypeError(f"task must be a SafeNavTask, a dict or None, got {type(task).__name__}")
    if task.family != name:
        raise ValueError(f"task family {task.family!r} does not match environment {name!r}")
    return SafeNavVecEnv(task, num_envs=num_envs, seed=seed, horizon=horizon)


# ------------------------------------------------------------------ gymnasium


def _random_seed() -> int:
    """A fresh seed from the operating system's entropy (for unseeded environments)."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))


class SafeNavGymEnv(gymnasium.Env):
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
        family = _check_family(family)
        if task is None:
            task = task_distribution(family).sample(1, split="train", seed=task_seed)[0]
        self.render_mode = render_mode
        self.vec_env = make(
            family, task=task, num_envs=1, seed=_random_seed() if seed is None else seed, horizon=horizon
        )
        self.observation_space = self.vec_env.single_observation_space
        self.action_space = self.vec_env.single_action_space
        self.cost_channels = self.vec_env.cost_channels

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, _ = self.vec_env.reset(seed=seed)
        return obs[0].copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {a.shape}")
        obs, reward, terminated, truncated, info = self.vec_env.step(a[None])
        out = next_observations(obs, info)[0]
        step_info = {
            "cost": float(info["cost"][0]),
            "costs": {k: float(v[0]) for k, v in info["costs"].items()},
            "goal_reached": bool(info["goal_reached"][0]),
        }
        return out.copy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), step_info

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.vec_env.render(0)
        return None


# The ids are registered through the package's gymnasium.envs entry point; importing this
# module registers them too (for a source tree that is not installed).
register_gymnasium_envs()
