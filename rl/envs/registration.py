"""The single-environment Gymnasium ids of this package and their registration.

Gymnasium calls :func:`register_gymnasium_envs` when it is imported, through the
``gymnasium.envs`` entry point that ``pyproject.toml`` declares, so
``gymnasium.make("SafeNavGoal-v0")`` works without importing ``rl`` first. This module
imports nothing but gymnasium's registry (it runs while gymnasium itself is being
imported); the environments' modules are imported only when an id is made.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GYMNASIUM_IDS", "register_gymnasium_envs"]

#: Gymnasium id -> (entry point of the single gymnasium.Env, its keyword arguments).
GYMNASIUM_IDS: dict[str, tuple[str, dict[str, Any]]] = {
    "SafeNavGoal-v0": ("rl.envs.safenav:SafeNavGymEnv", {"family": "safenav-goal"}),
    "SafeNavButton-v0": ("rl.envs.safenav:SafeNavGymEnv", {"family": "safenav-button"}),
    "HiddenNav-v0": ("rl.envs.hiddennav:HiddenNavGymEnv", {"family": "hiddennav"}),
    "HiddenNavHazard-v0": ("rl.envs.hiddennav:HiddenNavGymEnv", {"family": "hiddennav-hazard"}),
    # The Meta-CPO task families over Safety-Gymnasium (needs python -m rl.envs.install_safety).
    "MetaCPOSafetyButton-v0": ("rl.envs.safety_gym:SafetyGymEnv", {"family": "safety-button"}),
    "MetaCPOSafetyCircle-v0": ("rl.envs.safety_gym:SafetyGymEnv", {"family": "safety-circle"}),
}


def register_gymnasium_envs() -> None:
    """Register :data:`GYMNASIUM_IDS` with gymnasium (idempotent)."""
    from gymnasium.envs.registration import register, registry

    for env_id, (entry_point, kwargs) in GYMNASIUM_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, kwargs=dict(kwargs))
