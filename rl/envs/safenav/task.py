"""What a safenav task is: :class:`SafeNavTask`, one pinned layout (JSON round trip through
:meth:`~rl.envs.base.TaskRecord.to_dict` / ``from_dict``), the checks of its fields, and the
hand-built :func:`corridor_task`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rl.envs.base import TaskRecord
from rl.envs.safenav.constants import FAMILIES, ROBOT_RADIUS, Box

__all__ = ["SafeNavTask", "corridor_task"]


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
