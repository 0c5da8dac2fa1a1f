"""Distributions of safenav tasks: the train and test splits of each family and the sampling of
layouts (:func:`task_distribution`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rl.envs.safenav.constants import FAMILIES, ROBOT_RADIUS, SPLITS, Box
from rl.envs.safenav.task import SafeNavTask

__all__ = ["SafeNavDistribution", "SplitRanges", "task_distribution"]


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
