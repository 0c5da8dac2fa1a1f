"""The numbers of the safenav families: dynamics, reward, observation layout and episode length
(the package's docstring explains what each one does)."""

from __future__ import annotations

__all__ = [
    "DAMPING",
    "DEFAULT_HORIZON",
    "DT",
    "FAMILIES",
    "GOAL_BONUS",
    "LIDAR_BINS",
    "LIDAR_RANGE",
    "MAX_TURN_RATE",
    "OBS_DIM",
    "OBS_LAYOUT",
    "PROGRESS_SCALE",
    "ROBOT_RADIUS",
    "SPLITS",
    "THRUST",
    "VELOCITY_BOUND",
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
CANDIDATES = 32
CLEARANCE = 0.05

Box = tuple[float, float, float, float]  # (x_low, x_high, y_low, y_high)
