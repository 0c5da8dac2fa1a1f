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
without importing ``rl`` first; importing this package registers them too.

Modules, split as Safety-Gymnasium's code is: :mod:`~rl.envs.safenav.task` (the task
dataclass), :mod:`~rl.envs.safenav.distribution` (train/test splits, sampling),
:mod:`~rl.envs.safenav.simulator` (the vectorised numpy dynamics),
:mod:`~rl.envs.safenav.env` (the Gymnasium VectorEnv and single Env) and
:mod:`~rl.envs.safenav.constants`; every public name is importable from this package.
"""

from __future__ import annotations

from rl.envs.registration import register_gymnasium_envs
from rl.envs.safenav import constants as _constants
from rl.envs.safenav.constants import *  # noqa: F403 - the numbers, listed in constants.__all__
from rl.envs.safenav.distribution import SafeNavDistribution, SplitRanges, task_distribution
from rl.envs.safenav.env import SafeNavGymEnv, SafeNavVecEnv, make
from rl.envs.safenav.simulator import SafeNavSimulator, goal_seeking_actions, observation_bounds
from rl.envs.safenav.task import SafeNavTask, corridor_task

__all__ = [
    "SafeNavDistribution",
    "SafeNavGymEnv",
    "SafeNavSimulator",
    "SafeNavTask",
    "SafeNavVecEnv",
    "SplitRanges",
    "corridor_task",
    "goal_seeking_actions",
    "make",
    "observation_bounds",
    "register_gymnasium_envs",
    "task_distribution",
]
__all__ += _constants.__all__

# The ids are registered through the package's gymnasium.envs entry point; importing this
# package registers them too (for a source tree that is not installed).
register_gymnasium_envs()
