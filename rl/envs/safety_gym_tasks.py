"""Meta-CPO's Safety-Gymnasium task families: Stochastic Button and Stochastic Circle.

Pure numpy (no MuJoCo here): a task is a small frozen dataclass holding the
geometry of one environment, including its pinned object layout, and a task
distribution samples them with its own ``numpy.random.Generator``.

Published ranges (Cho & Sun, AAAI-24):

* ``safety-button`` (Point robot): train: arena half-size U(1.75, 2.0), buttons
  round(U(3, 6)), hazards = buttons + 3; test: half-size U(2.6, 2.9), buttons
  round(U(6, 10)), hazards = buttons + 6.
* ``safety-circle`` (Car robot): train: radius U(1.0, 1.5), wall distance
  U(0.55, 0.75) x radius; test: radius U(2.0, 2.5), wall U(0.55, 0.65) x radius.

Safety-Gymnasium forces seed 0 on every reset when ``randomize_layout=False``, so
instead the layout of a Button task (button, goal-slot and hazard positions) is
sampled once, when the task is sampled, and pinned through the objects' fixed
``locations``; the environment keeps ``randomize_layout=True`` so the agent's
start, its heading and the goal button still vary per episode with the seed.
The agent's start region is the set of grid cells (``AGENT_CELL`` wide) that lie
entirely outside every object's keep-out, also stored in the task, so that the
package's rejection sampler never has to redraw the layout.

>>> dist = task_distribution("safety-button")
>>> task = dist.sample(1, split="test", seed=0)[0]
>>> 2.6 <= task.half_size <= 2.9 and task.num_hazards == task.num_buttons + 6
True
>>> ButtonTask.from_dict(task.to_dict()) == task
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AGENT_KEEPOUT",
    "BUTTON_KEEPOUT",
    "GOAL_KEEPOUT",
    "HAZARD_KEEPOUT",
    "SPLITS",
    "TASK_FAMILIES",
    "ButtonTask",
    "CircleTask",
    "SafetyTaskDistribution",
    "sample_button_layout",
    "task_distribution",
]

TASK_FAMILIES = ("safety-button", "safety-circle")
SPLITS = ("train", "test")

# Keep-out radii: Safety-Gymnasium 1.0.0's defaults for the agent and buttons,
# 0.18 for hazards as in its ButtonLevel1. The goal's layout slot is a phantom
# (the goal marker is moved onto the goal button at every reset), so our Button
# tasks give it keep-out 0 instead of the package's 0.4: it then only keeps the
# agent's own keep-out free, which leaves room to start in the small training
# arenas.
AGENT_KEEPOUT = 0.4
BUTTON_KEEPOUT = 0.2
GOAL_KEEPOUT = 0.0
HAZARD_KEEPOUT = 0.18
# Width of the grid cells that make up a Button task's agent start region, and
# the least area (m^2) that region must have.
AGENT_CELL = 0.05
MIN_AGENT_AREA = 0.5
# Safety margin added to every keep-out test: the package jitters pinned
# positions by up to 1e-9 and compares with a strict "<".
_EPS = 1e-6

# The published parameter ranges: (low, high) of the uniform draws.
BUTTON_RANGES = {
    "train": {"half_size": (1.75, 2.0), "buttons": (3.0, 6.0), "extra_hazards": 3},
    "test": {"half_size": (2.6, 2.9), "buttons": (6.0, 10.0), "extra_hazards": 6},
}
CIRCLE_RANGES = {
    "train": {"radius": (1.0, 1.5), "wall_ratio": (0.55, 0.75)},
    "test": {"radius": (2.0, 2.5), "wall_ratio": (0.55, 0.65)},
}
# What a hand-built task may use (the floor is 3.5 x 3.5; lidar reaches 3).
HALF_SIZE_LIMITS = (1.0, 3.4)
RADIUS_LIMITS = (0.5, 3.0)
WALL_RATIO_LIMITS = (0.4, 1.0)
# The Circle agent starts in a square of half-width 0.8 * radius / 1.5 (the
# package's 0.8 at its radius 1.5), which always lies inside the walls.
CIRCLE_START_FRACTION = 0.8 / 1.5


def _points(value: Any, name: str) -> tuple[tuple[float, float], ...]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of (x, y) pairs, got {value!r}") from exc
    if arr.size == 0:
        return ()
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a sequence of finite (x, y) pairs, got {value!r}")
    return tuple((float(x), float(y)) for x, y in arr)


def _rects(value: Any, name: str) -> tuple[tuple[float, float, float, float], ...]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty sequence of (xmin, ymin, xmax, ymax), got {value!r}")
    if np.any(arr[:, 2] <= arr[:, 0]) or np.any(arr[:, 3] <= arr[:, 1]):
        raise ValueError(f"{name} must have xmax > xmin and ymax > ymin, got {value!r}")
    return tuple(tuple(float(v) for v in row) for row in arr)


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def _check_range(name: str, value: float, limits: tuple[float, float]) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not limits[0] <= value <= limits[1]:
        raise ValueError(f"{name} must lie in [{limits[0]}, {limits[1]}], got {value!r}")
    return float(value)


def _from_dict(cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    data = dict(data)
    family = data.pop("family", cls.family)
    if family != cls.family:
        raise ValueError(f"{cls.__name__} needs family {cls.family!r}, got {family!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys are {valid}")
    return cls(**data)


@dataclass(frozen=True)
class ButtonTask:
    """A Stochastic Button task (Point robot) with its pinned layout.

    Attributes:
        half_size: the arena is ``[-half_size, half_size]^2`` (placement extents).
        num_buttons: number of buttons; one of them is the goal each time.
        num_hazards: number of hazard disks.
        button_locations, hazard_locations: pinned ``(x, y)`` centres.
        goal_location: pinned ``(x, y)`` of the goal's layout slot. The package draws
            the goal like any object and then moves its marker onto the goal
            button; the slot (keep-out ``GOAL_KEEPOUT``) only keeps the agent from
            starting right there.
        agent_placements: rectangles ``(xmin, ymin, xmax, ymax)`` the agent's start is
            drawn from (uniformly by area).
        split: ``"train"`` or ``"test"``: the range the task was drawn from.
    """

    family = "safety-button"

    half_size: float
    num_buttons: int
    num_hazards: int
    button_locations: tuple[tuple[float, float], ...]
    hazard_locations: tuple[tuple[float, float], ...]
    goal_location: tuple[float, float]
    agent_placements: tuple[tuple[float, float, float, float], ...]
    split: str = "train"

    def __post_init__(self) -> None:
        _check_range("half_size", self.half_size, HALF_SIZE_LIMITS)
        for name, low in (("num_buttons", 1), ("num_hazards", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        object.__setattr__(self, "half_size", float(self.half_size))
        object.__setattr__(self, "num_buttons", int(self.num_buttons))
        object.__setattr__(self, "num_hazards", int(self.num_hazards))
        buttons = _points(self.button_locations, "button_locations")
        hazards = _points(self.hazard_locations, "hazard_locations")
        goal = _points([self.goal_location], "goal_location")[0]
        if len(buttons) != self.num_buttons or len(hazards) != self.num_hazards:
            raise ValueError(
                f"expected {self.num_buttons} button and {self.num_hazards} hazard locations, "
                f"got {len(buttons)} and {len(hazards)}"
            )
        objects = [(p, BUTTON_KEEPOUT) for p in buttons] + [(goal, GOAL_KEEPOUT)]
        objects += [(p, HAZARD_KEEPOUT) for p in hazards]
        for (x, y), keepout in objects:
            if max(abs(x), abs(y)) > self.half_size - keepout + _EPS:
                raise ValueError(
                    f"location {(x, y)} lies outside the arena: |x|, |y| must be <= "
                    f"half_size - keepout = {self.half_size - keepout:.4f}"
                )
        for i, (p, kp) in enumerate(objects):
            for q, kq in objects[:i]:
                if math.dist(p, q) < kp + kq + _EPS:
                    raise ValueError(
                        f"locations {p} and {q} overlap: they must be at least "
                        f"{kp + kq:.3f} apart (sum of keep-outs)"
                    )
        object.__setattr__(self, "button_locations", buttons)
        object.__setattr__(self, "hazard_locations", hazards)
        object.__setattr__(self, "goal_location", goal)
        object.__setattr__(self, "agent_placements", _rects(self.agent_placements, "agent_placements"))
        object.__setattr__(self, "split", _check_split(self.split))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists, floats, ints, str); inverse of :meth:`from_dict`."""
        data = {"family": self.family}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "goal_location":
                value = list(value)
            elif isinstance(value, tuple):
                value = [list(v) for v in value]
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ButtonTask:
        """Rebuild a task from :meth:`to_dict` output (validates every field)."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class CircleTask:
    """A Stochastic Circle task (Car robot).

    Attributes:
        radius: radius of the circle the reward asks the car to run along.
        wall_distance: the two constraint walls stand at ``x = +-wall_distance``
            (cost when ``|x| > wall_distance``).
        split: ``"train"`` or ``"test"``.
    """

    family = "safety-circle"

    radius: float
    wall_distance: float
    split: str = "train"

    def __post_init__(self) -> None:
        object.__setattr__(self, "radius", _check_range("radius", self.radius, RADIUS_LIMITS))
        lo, hi = (r * self.radius for r in WALL_RATIO_LIMITS)
        if not isinstance(self.wall_distance, (int, float)) or isinstance(self.wall_distance, bool):
            raise ValueError(f"wall_distance must be a number, got {self.wall_distance!r}")
        if not lo <= self.wall_distance <= hi:
            raise ValueError(
                f"wall_distance must lie in [{WALL_RATIO_LIMITS[0]}, {WALL_RATIO_LIMITS[1]}] x "
                f"radius = [{lo:.4f}, {hi:.4f}], got {self.wall_distance!r}"
            )
        object.__setattr__(self, "wall_distance", float(self.wall_distance))
        object.__setattr__(self, "split", _check_split(self.split))

    @property
    def wall_ratio(self) -> float:
        """``wall_distance / radius``."""
        return self.wall_distance / self.radius

    @property
    def agent_half_width(self) -> float:
        """Half-width of the square the car starts in (inside the walls)."""
        return CIRCLE_START_FRACTION * self.radius

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; inverse of :meth:`from_dict`."""
        return {
            "family": self.family,
            "radius": self.radius,
            "wall_distance": self.wall_distance,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircleTask:
        """Rebuild a task from :meth:`to_dict` output (validates every field)."""
        return _from_dict(cls, data)


def _agent_cells(
    half_size: float, objects: list[tuple[tuple[float, float], float]]
) -> list[tuple[float, float, float, float]]:
    """Rectangles (row runs of free grid cells) where the agent may start.

    A cell is free when every point of it keeps ``AGENT_KEEPOUT + keepout`` away
    from every object. Each returned rectangle is grown by ``AGENT_KEEPOUT`` on all
    sides because Safety-Gymnasium shrinks placement rectangles by the agent's
    keep-out before drawing from them.
    """
    lo, hi = -half_size + AGENT_KEEPOUT, half_size - AGENT_KEEPOUT
    n = max(1, int(math.floor((hi - lo) / AGENT_CELL)))
    edges = np.linspace(lo, hi, n + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    half_diag = math.sqrt(2.0) * 0.5 * (edges[1] - edges[0])
    cx, cy = np.meshgrid(centres, centres, indexing="xy")  # [row (y), column (x)]
    free = np.ones_like(cx, dtype=bool)
    for (x, y), keepout in objects:
        dist = np.hypot(cx - x, cy - y)
        free &= dist >= AGENT_KEEPOUT + keepout + half_diag + _EPS
    rects = []
    for row in range(n):
        col = 0
        while col < n:
            if not free[row, col]:
                col += 1
                continue
            start = col
            while col < n and free[row, col]:
                col += 1
            rects.append(
                (
                    float(edges[start] - AGENT_KEEPOUT),
                    float(edges[row] - AGENT_KEEPOUT),
                    float(edges[col] + AGENT_KEEPOUT),
                    float(edges[row + 1] + AGENT_KEEPOUT),
                )
            )
    return rects


def _free_area(rects: list[tuple[float, float, float, float]]) -> float:
    k = 2 * AGENT_KEEPOUT
    return sum((x1 - x0 - k) * (y1 - y0 - k) for x0, y0, x1, y1 in rects)


def sample_button_layout(
    rng: np.random.Generator,
    half_size: float,
    num_buttons: int,
    num_hazards: int,
    min_agent_area: float = MIN_AGENT_AREA,
    max_attempts: int = 200,
) -> dict[str, Any]:
    """Draw non-overlapping button, goal-slot and hazard centres, and the agent region.

    Objects are drawn uniformly in the arena shrunk by their keep-out, each at
    least the sum of keep-outs away from the others (the package's rule);
    layouts whose agent start region is smaller than ``min_agent_area`` are
    redrawn.

    Returns:
        dict with ``button_locations``, ``goal_location``, ``hazard_locations``,
        ``agent_placements`` (the keyword arguments of :class:`ButtonTask`).

    Raises:
        RuntimeError: if no valid layout was found in ``max_attempts`` draws.
    """
    kinds = [BUTTON_KEEPOUT] * num_buttons + [GOAL_KEEPOUT] + [HAZARD_KEEPOUT] * num_hazards
    for _ in range(max_attempts):
        placed: list[tuple[tuple[float, float], float]] = []
        for keepout in kinds:
            bound = half_size - keepout
            for _try in range(1000):
                x, y = rng.uniform(-bound, bound, size=2)
                if all(math.dist((x, y), p) >= keepout + k + _EPS for p, k in placed):
                    placed.append(((float(x), float(y)), keepout))
                    break
            else:
                break
        if len(placed) < len(kinds):
            continue
        rects = _agent_cells(half_size, placed)
        if _free_area(rects) < min_agent_area:
            continue
        points = [p for p, _ in placed]
        return {
            "button_locations": tuple(points[:num_buttons]),
            "goal_location": points[num_buttons],
            "hazard_locations": tuple(points[num_buttons + 1 :]),
            "agent_placements": tuple(rects),
        }
    raise RuntimeError(
        f"no Button layout with {num_buttons} buttons and {num_hazards} hazards fits an arena "
        f"of half-size {half_size} after {max_attempts} attempts"
    )


class SafetyTaskDistribution:
    """The task distribution of one family (``safety-button`` or ``safety-circle``).

    ``sample(n, split, seed)`` is deterministic in ``(split, seed)``: it builds its
    own ``numpy.random.Generator`` from ``SeedSequence([seed, split index])``.
    """

    def __init__(self, name: str) -> None:
        if name not in TASK_FAMILIES:
            raise ValueError(f"unknown task family {name!r}; expected one of {list(TASK_FAMILIES)}")
        self.name = name

    @property
    def ranges(self) -> dict[str, dict[str, Any]]:
        """The published sampling ranges per split."""
        return BUTTON_RANGES if self.name == "safety-button" else CIRCLE_RANGES

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[ButtonTask] | list[CircleTask]:
        """Draw ``n`` tasks of ``split`` (``"train"`` or ``"test"``)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        split = _check_split(split)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split)]))
        if self.name == "safety-button":
            return [self._sample_button(rng, split) for _ in range(int(n))]
        return [self._sample_circle(rng, split) for _ in range(int(n))]

    @staticmethod
    def _sample_button(rng: np.random.Generator, split: str) -> ButtonTask:
        r = BUTTON_RANGES[split]
        half_size = float(rng.uniform(*r["half_size"]))
        num_buttons = int(np.round(rng.uniform(*r["buttons"])))
        num_hazards = num_buttons + r["extra_hazards"]
        layout = sample_button_layout(rng, half_size, num_buttons, num_hazards)
        return ButtonTask(
            half_size=half_size,
            num_buttons=num_buttons,
            num_hazards=num_hazards,
            split=split,
            **layout,
        )

    @staticmethod
    def _sample_circle(rng: np.random.Generator, split: str) -> CircleTask:
        r = CIRCLE_RANGES[split]
        radius = float(rng.uniform(*r["radius"]))
        ratio = float(rng.uniform(*r["wall_ratio"]))
        return CircleTask(radius=radius, wall_distance=ratio * radius, split=split)

    def __repr__(self) -> str:
        return f"SafetyTaskDistribution({self.name!r})"


def task_distribution(name: str) -> SafetyTaskDistribution:
    """The task distribution of ``name`` (``"safety-button"`` or ``"safety-circle"``)."""
    return SafetyTaskDistribution(name)
