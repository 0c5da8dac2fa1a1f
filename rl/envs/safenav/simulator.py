"""The vectorised numpy dynamics of the safenav families: :class:`SafeNavSimulator` holds the
state of ``N`` sub-environments of one task and advances them together, with no Python loop
over sub-environments (the package's docstring gives the dynamics, rewards, costs and the
observation). The Gymnasium side (spaces, time limit, autoreset) is in :mod:`rl.envs.safenav.env`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rl.envs.base import SplitMix64Streams, TopDownCanvas
from rl.envs.safenav.constants import (
    CANDIDATES,
    CLEARANCE,
    DAMPING,
    DT,
    GOAL_BONUS,
    LIDAR_BINS,
    LIDAR_RANGE,
    MAX_TURN_RATE,
    OBS_DIM,
    OBS_LAYOUT,
    PROGRESS_SCALE,
    ROBOT_RADIUS,
    THRUST,
    VELOCITY_BOUND,
)
from rl.envs.safenav.task import SafeNavTask

__all__ = ["SafeNavSimulator", "goal_seeking_actions", "observation_bounds"]


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


class SafeNavSimulator:
    """The state of ``len(streams.keys)`` sub-environments of one :class:`SafeNavTask`.

    Args:
        task: The task (its layout is fixed; goals and starts are drawn from ``streams``).
        streams: One random stream per sub-environment (shared with the environment, which
            seeds them).
    """

    def __init__(self, task: SafeNavTask, streams: SplitMix64Streams) -> None:
        self.task = task
        self.buttons_family = task.family == "safenav-button"
        self.cost_channels = ("hazards", "buttons") if self.buttons_family else ("hazards",)
        self._streams = streams
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
                np.full(len(self._hazards), task.hazard_radius + ROBOT_RADIUS + CLEARANCE),
                np.full(len(self._buttons), task.button_radius + 2 * ROBOT_RADIUS + CLEARANCE),
            ]
        )
        self._goal_clearance = np.full(len(self._hazards), task.hazard_radius + task.goal_radius + CLEARANCE)
        self._decay = math.exp(-DAMPING * DT)
        self._limit = half - ROBOT_RADIUS
        self._touch = task.button_radius + ROBOT_RADIUS

        n = streams.keys.size
        self.num_envs = n
        self.pos = np.zeros((n, 2))
        self.heading = np.zeros(n)
        self.vel = np.zeros((n, 2))
        self.goal = np.zeros((n, 2))
        self.goal_index = np.zeros(n, dtype=np.intp)  # goal button (button family)
        self._goal_count = np.zeros(n, dtype=np.intp)  # goals reached this episode
        self._last_pressed = np.full(n, -1, dtype=np.intp)
        self._last_dist = np.zeros(n)

    def advance(self, a: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """One step of every sub-environment with the clipped actions ``a`` (``(N, 2)``).

        Returns:
            ``(reward, costs, reached)``: float64 ``(N,)``, channel -> float64 ``(N,)``, bool ``(N,)``.
        """
        # Dynamics.
        heading = self.heading + (DT * MAX_TURN_RATE) * a[:, 1]
        heading = np.mod(heading + np.pi, 2 * np.pi) - np.pi
        self.heading = heading
        push = (DT * THRUST) * a[:, 0]
        vel = self.vel * self._decay
        vel[:, 0] += push * np.cos(heading)
        vel[:, 1] += push * np.sin(heading)
        pos = self.pos + DT * vel
        at_wall = np.abs(pos) > self._limit
        np.clip(pos, -self._limit, self._limit, out=pos)
        vel[at_wall] = 0.0
        self.pos, self.vel = pos, vel

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
        gx = self.goal[:, 0] - pos[:, 0]
        gy = self.goal[:, 1] - pos[:, 1]
        dist = np.hypot(gx, gy)
        reward = PROGRESS_SCALE * (self._last_dist - dist)
        if self.buttons_family:
            dx = pos[:, 0, None] - self._buttons[None, :, 0]
            dy = pos[:, 1, None] - self._buttons[None, :, 1]
            touching = dx * dx + dy * dy <= self._touch**2
            ids = np.arange(len(self._buttons))
            wrong = touching & (ids != self.goal_index[:, None]) & (ids != self._last_pressed[:, None])
            costs["buttons"] = wrong.any(axis=1).astype(np.float64)
            rows = np.arange(self.num_envs)
            reached = touching[rows, self.goal_index]
            still = touching[rows, np.maximum(self._last_pressed, 0)] & (self._last_pressed >= 0)
            self._last_pressed = np.where(still, self._last_pressed, -1)
        else:
            reached = dist <= self.task.goal_radius
        reward = reward + GOAL_BONUS * reached
        if reached.any():
            self._new_goals(np.flatnonzero(reached))
            dist = np.hypot(self.goal[:, 0] - pos[:, 0], self.goal[:, 1] - pos[:, 1])
        self._last_dist = dist
        return reward, costs, reached

    def set_state(self, position: Any, heading: Any, velocity: Any, goal: Any) -> np.ndarray:
        """Place the robots (and goals) by hand; ``None`` leaves a part as it is (see
        :meth:`rl.envs.safenav.SafeNavVecEnv.set_state`). Returns the new observation."""
        n = self.num_envs
        if position is not None:
            pos = np.broadcast_to(np.asarray(position, dtype=np.float64), (n, 2))
            self.pos = np.clip(pos, -self._limit, self._limit).copy()
        if heading is not None:
            self.heading = np.broadcast_to(np.asarray(heading, dtype=np.float64), (n,)).copy()
        if velocity is not None:
            self.vel = np.broadcast_to(np.asarray(velocity, dtype=np.float64), (n, 2)).copy()
        if goal is not None:
            if self.buttons_family:
                index = np.broadcast_to(np.asarray(goal), (n,))
                if (
                    not np.issubdtype(index.dtype, np.integer)
                    or ((index < 0) | (index >= len(self._buttons))).any()
                ):
                    raise ValueError(
                        f"goal must be button indices in [0, {len(self._buttons)}), got {goal!r}"
                    )
                self.goal_index = index.astype(np.intp)
                self.goal = self._buttons[self.goal_index].copy()
            else:
                self.goal = np.broadcast_to(np.asarray(goal, dtype=np.float64), (n, 2)).copy()
        self._last_pressed[:] = -1
        self._last_dist = np.hypot(*(self.goal - self.pos).T)
        return self.observe()

    def render(self, index: int, size: int) -> np.ndarray:
        """A top-down RGB picture of sub-environment ``index``, uint8 ``(size, size, 3)``."""
        canvas = TopDownCanvas(self.task.arena_half_size, size)
        for hx, hy in self._hazards:
            canvas.disc(hx, hy, self.task.hazard_radius, (70, 110, 230), 0.75)
        goal_x, goal_y = self.goal[index]
        if self.buttons_family:
            for b, (bx, by) in enumerate(self._buttons):
                color = (40, 190, 70) if b == self.goal_index[index] else (245, 150, 30)
                canvas.disc(bx, by, self.task.button_radius, color)
        else:
            canvas.disc(goal_x, goal_y, self.task.goal_radius, (40, 190, 70), 0.6)
        px, py = self.pos[index]
        canvas.disc(px, py, ROBOT_RADIUS, (215, 40, 40))
        # Heading bar: pixels within a thin band of the segment from the centre forward.
        x, y = canvas.x, canvas.y
        hx, hy = math.cos(self.heading[index]), math.sin(self.heading[index])
        along = np.clip((x - px) * hx + (y - py) * hy, 0.0, 2.2 * ROBOT_RADIUS)
        bar = (x - px - along * hx) ** 2 + (y - py - along * hy) ** 2 <= (0.3 * ROBOT_RADIUS) ** 2
        canvas.img[bar] = (30, 30, 30)
        return canvas.image()

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
        admissible of ``CANDIDATES`` draws, else the least bad one."""
        n = len(idx)
        u = self._streams.uniform(idx, 2 * CANDIDATES).reshape(n, CANDIDATES, 2)
        lo = boxes[:, None, [0, 2]]
        hi = boxes[:, None, [1, 3]]
        pts = lo + u * (hi - lo)
        score = np.full((n, CANDIDATES), np.inf)
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
        if self.buttons_family:
            nb = len(self._buttons)
            u = self._streams.uniform(idx, 1)[:, 0]
            old = self.goal_index[idx]
            self._last_pressed[idx] = old
            new = (old + 1 + np.minimum((u * (nb - 1)).astype(np.intp), nb - 2)) % nb
            self.goal_index[idx] = new
            self.goal[idx] = self._buttons[new]
        else:
            self._goal_count[idx] += 1
            boxes = self._goal_boxes[self._goal_count[idx] % len(self._goal_boxes)]
            self.goal[idx] = self._sample_points(
                idx,
                boxes,
                self._hazards,
                self._goal_clearance,
                ref=self.pos[idx],
                min_distance=self.task.min_goal_distance,
            )

    def reset(self, idx: np.ndarray) -> None:
        """Start new episodes in the sub-environments ``idx``."""
        n = len(idx)
        boxes = np.broadcast_to(self._start_box, (n, 4))
        self.pos[idx] = self._sample_points(idx, boxes, self._start_obstacles, self._start_clearance)
        self.heading[idx] = -np.pi + 2 * np.pi * self._streams.uniform(idx, 1)[:, 0]
        self.vel[idx] = 0.0
        self._goal_count[idx] = 0
        self._last_pressed[idx] = -1
        if self.buttons_family:
            nb = len(self._buttons)
            u = self._streams.uniform(idx, 1)[:, 0]
            self.goal_index[idx] = np.minimum((u * nb).astype(np.intp), nb - 1)
            self.goal[idx] = self._buttons[self.goal_index[idx]]
        else:
            self.goal[idx] = self._sample_points(
                idx,
                np.broadcast_to(self._goal_boxes[0], (n, 4)),
                self._hazards,
                self._goal_clearance,
                ref=self.pos[idx],
                min_distance=self.task.min_goal_distance,
            )
        self._last_dist[idx] = np.hypot(*(self.goal[idx] - self.pos[idx]).T)

    def observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        """``(len(idx), OBS_DIM)`` observations of the sub-environments ``idx`` (all for ``None``)."""
        sel = slice(None) if idx is None else idx
        pos, heading, vel, goal = self.pos[sel], self.heading[sel], self.vel[sel], self.goal[sel]
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
