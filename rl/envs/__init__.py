"""Task families behind one API.

>>> from rl.envs import make, task_distribution
>>> dist = task_distribution("safenav-button")
>>> tasks = dist.sample(2, split="train", seed=0)
>>> env = make("safenav-button", task=tasks[0], num_envs=4, seed=0)
>>> obs, info = env.reset(seed=0)
>>> obs.shape[0]
4

Families: ``hiddennav`` (built-in, pure numpy, :mod:`rl.envs.hiddennav`: a hidden goal in a
ring of hidden hazards, the family that needs adaptation), ``safenav-goal`` and
``safenav-button`` (built-in, pure numpy, :mod:`rl.envs.safenav`: every hazard and button on a
lidar, the "no adaptation needed" control), ``safety-button`` and ``safety-circle`` (the real
Safety-Gymnasium 1.0.0, :mod:`rl.envs.safety_gym`). Any registered
Safety-Gymnasium id (``SafetyPointGoal1-v0``, ...) is accepted by :func:`make`.
Every environment :func:`make` returns is a :class:`gymnasium.vector.VectorEnv`
(contract: :mod:`rl.envs.base`).

Single-environment Gymnasium ids (:data:`GYMNASIUM_IDS`) are registered when
``gymnasium`` is imported, through this package's ``gymnasium.envs`` entry point
(:func:`rl.envs.registration.register_gymnasium_envs`)::

    import gymnasium
    env = gymnasium.make("SafeNavGoal-v0")  # no import of rl needed
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any


def _import_gymnasium_quietly() -> None:
    """Import gymnasium once, dropping the notice that the installed gymnasium-robotics prints
    about its Adroit environments when gymnasium loads its plugins (other output passes through)."""
    if "gymnasium" in sys.modules:
        return
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import gymnasium  # noqa: F401
    kept = [line for line in captured.getvalue().splitlines() if "AdroitHand" not in line]
    if kept:
        print("\n".join(kept), file=sys.stderr)


_import_gymnasium_quietly()

from rl.envs.base import VecEnv  # noqa: E402
from rl.envs.registration import GYMNASIUM_IDS, register_gymnasium_envs  # noqa: E402

BUILTIN_FAMILIES = ("hiddennav", "hiddennav-hazard", "safenav-goal", "safenav-button")
SAFETY_FAMILIES = ("safety-button", "safety-circle")
FAMILIES = BUILTIN_FAMILIES + SAFETY_FAMILIES

__all__ = ["FAMILIES", "GYMNASIUM_IDS", "VecEnv", "make", "register_gymnasium_envs", "task_distribution"]


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"environment name must be a str, got {type(name).__name__}: {name!r}")
    if name in FAMILIES or name.startswith("Safety"):
        return name
    raise ValueError(
        f"unknown environment {name!r}; expected one of {list(FAMILIES)} "
        "or a registered Safety-Gymnasium id such as 'SafetyPointGoal1-v0'"
    )


def task_distribution(name: str):
    """The task distribution of a family (``dist.sample(n, split=..., seed=...)``)."""
    name = _check_name(name)
    if name in ("hiddennav", "hiddennav-hazard"):
        from rl.envs import hiddennav

        return hiddennav.task_distribution(name)
    if name in BUILTIN_FAMILIES:
        from rl.envs import safenav

        return safenav.task_distribution(name)
    if name in SAFETY_FAMILIES:
        from rl.envs import safety_gym

        return safety_gym.task_distribution(name)
    raise ValueError(
        f"{name!r} is a raw Safety-Gymnasium id with no task distribution; "
        f"task distributions exist for {list(FAMILIES)}"
    )


def make(name: str, task: Any = None, num_envs: int = 1, seed: int = 0, **kwargs: Any) -> VecEnv:
    """Build a vectorised environment, a :class:`gymnasium.vector.VectorEnv` (contract:
    :mod:`rl.envs.base`).

    Without ``task``, the first training task drawn with ``seed`` is used.
    """
    name = _check_name(name)
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if name in ("hiddennav", "hiddennav-hazard"):
        from rl.envs import hiddennav

        return hiddennav.make(name, task=task, num_envs=num_envs, seed=seed, **kwargs)
    if name in BUILTIN_FAMILIES:
        from rl.envs import safenav

        return safenav.make(name, task=task, num_envs=num_envs, seed=seed, **kwargs)
    from rl.envs import safety_gym

    return safety_gym.make(name, task=task, num_envs=num_envs, seed=seed, **kwargs)
