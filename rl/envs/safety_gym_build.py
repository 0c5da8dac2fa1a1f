"""How one task of the Safety-Gymnasium families becomes one package environment (the glue
behind :mod:`rl.envs.safety_gym`): the package's level classes specialised to a task's layout, a
world compiled without its skybox texture (used only for rendering), a layout sampler with the
package's draws and less overhead, the cost channels a task reports, and the registered raw ids.

Classes deriving from the package's own are created on first use, after the import shim
(:func:`rl.envs.safety_gym_import.import_safety_gymnasium`) has run.

>>> from rl.envs.safety_gym_build import FAMILY_ROBOTS, raw_env_ids
>>> FAMILY_ROBOTS["safety-circle"], "SafetyPointGoal1-v0" in raw_env_ids()
('Car', True)
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

from rl.envs.safety_gym_import import import_safety_gymnasium
from rl.envs.safety_gym_tasks import GOAL_KEEPOUT, HAZARD_KEEPOUT, ButtonTask, CircleTask

__all__ = ["FAMILY_ROBOTS", "raw_env_ids"]

FAMILY_ROBOTS = {"safety-button": "Point", "safety-circle": "Car"}
_NDIM_WARNING = "Conversion of an array with ndim > 0 to a scalar"


@functools.cache
def _renderless_world_class() -> type:
    """A ``World`` whose compiled XML omits the skybox texture (rendering only)."""
    import_safety_gymnasium()
    import xmltodict
    from safety_gymnasium.world import World

    class RenderlessWorld(World):
        """``safety_gymnasium.world.World`` without the skybox.

        ``World.build`` stores the generated XML in ``self.xml_string`` and compiles
        that attribute; this property setter removes the skybox from the XML
        tree before it is stored. Nothing else in the model changes.
        """

        @property
        def xml_string(self) -> str | None:
            return self._renderless_xml

        @xml_string.setter
        def xml_string(self, value: str | None) -> None:
            if value is not None:
                asset = self.xml["mujoco"].get("asset") or {}
                textures = asset.get("texture")
                if isinstance(textures, list) and any(t.get("@type") == "skybox" for t in textures):
                    asset["texture"] = [t for t in textures if t.get("@type") != "skybox"]
                    value = xmltodict.unparse(self.xml)
            self._renderless_xml = value

    return RenderlessWorld


@functools.cache
def _fast_layout_generator_class() -> type:
    """The package's ``RandomGenerator`` with a vectorised layout validity test."""
    import_safety_gymnasium()
    from safety_gymnasium.utils.random_generator import RandomGenerator

    class FastLayoutGenerator(RandomGenerator):
        """Same draws, same layouts, less overhead.

        ``sample_layout`` places the objects in order, redrawing each up to 100
        times until it keeps ``keepout_i + margin + keepout_j`` from every object
        already placed, as the package does. The package computes each distance
        with four numpy calls on 2-vectors; here it is plain float arithmetic
        with the same operations in the same order (``dx*dx + dy*dy``, a
        correctly rounded square root, ``(keepout_i + margin) + keepout_j``), so
        every comparison, and hence every layout, is bit-identical. The random
        draws (``draw_placement``) are the package's own. On the package's
        level-1/2 Button tasks, whose layouts need thousands of draws, this cuts
        the layout time of a reset about three-fold.
        """

        def sample_layout(self) -> bool:
            margin = self.placements_margin
            placed: list[tuple[float, float, float]] = []  # (x, y, keepout + margin)
            layout = {}
            for name, (placements, keepout) in self.placements.items():
                for _ in range(100):
                    xy = self.draw_placement(placements, keepout)
                    x, y = xy.tolist()
                    for ox, oy, reach in placed:
                        dx, dy = x - ox, y - oy
                        if math.sqrt(dx * dx + dy * dy) < reach + keepout:
                            break
                    else:
                        break
                else:
                    return False
                layout[name] = xy
                placed.append((x, y, keepout + margin))
            self.layout = layout
            return True

    return FastLayoutGenerator


@functools.cache
def _task_classes() -> dict[str, type]:
    """The package level classes specialised to our two families."""
    import_safety_gymnasium()
    from safety_gymnasium.assets.geoms import Hazards
    from safety_gymnasium.tasks.safe_navigation.button.button_level0 import ButtonLevel0
    from safety_gymnasium.tasks.safe_navigation.circle.circle_level1 import CircleLevel1

    class StochasticButton(ButtonLevel0):
        """``ButtonLevel0`` with a pinned layout, hazards and constrained buttons."""

        def __init__(self, config: dict, task: ButtonTask) -> None:
            super().__init__(config=config)
            s = task.half_size
            self.placements_conf.extents = [-s, -s, s, s]
            self.agent.placements = [list(r) for r in task.agent_placements]
            self.buttons.num = task.num_buttons
            self.buttons.locations = [list(p) for p in task.button_locations]
            self.buttons.is_constrained = True
            self.goal.locations = [list(task.goal_location)]
            self.goal.keepout = GOAL_KEEPOUT
            self._add_geoms(
                Hazards(
                    num=task.num_hazards,
                    keepout=HAZARD_KEEPOUT,
                    locations=[list(p) for p in task.hazard_locations],
                )
            )

    class StochasticCircle(CircleLevel1):
        """``CircleLevel1`` with the task's radius and wall distance."""

        def __init__(self, config: dict, task: CircleTask) -> None:
            super().__init__(config=config)
            b = task.agent_half_width
            self.agent.placements = [(-b, -b, b, b)]
            self.circle.radius = task.radius
            walls = self.sigwalls
            walls.locate_factor = task.wall_distance
            walls.locations = [
                (task.wall_distance, 0.0),
                (-task.wall_distance, 0.0),
                (0.0, task.wall_distance),
                (0.0, -task.wall_distance),
            ]

    return {"safety-button": StochasticButton, "safety-circle": StochasticCircle}


@functools.cache
def _family_builder_class() -> type:
    import_safety_gymnasium()
    from safety_gymnasium.builder import Builder

    class FamilyBuilder(Builder):
        """The package's ``Builder`` instantiating one of our task classes."""

        def __init__(self, task_cls: type, task: Any, task_id: str, config: dict) -> None:
            self._family_task_cls = task_cls
            self._family_task = task
            super().__init__(task_id=task_id, config=config)

        def _get_task(self):
            task = self._family_task_cls(config=self.config, task=self._family_task)
            task.build_observation_space()
            return task

    return FamilyBuilder


@functools.cache
def raw_env_ids() -> tuple[str, ...]:
    """Registered Safety-Gymnasium navigation ids accepted by :func:`make` (sorted)."""
    import_safety_gymnasium()
    import gymnasium
    from safety_gymnasium.utils.registration import safe_registry

    ids = []
    for env_id in safe_registry:
        spec = gymnasium.spec(env_id)
        if spec.entry_point != "safety_gymnasium.builder:Builder":
            continue
        if "Vision" in env_id or "Debug" in env_id:
            continue
        ids.append(env_id)
    return tuple(sorted(ids))


@dataclass(frozen=True)
class _EnvSpec:
    """Everything a (possibly remote) process needs to build one sub-environment."""

    name: str
    task: Any
    horizon: int
    fast_reset: bool
    fast_step: bool = True

    def build(self):
        """A fresh package ``Builder`` (its world is compiled at the first reset)."""
        sg = import_safety_gymnasium()
        with warnings.catch_warnings():
            # The package's agent setup converts 1-element arrays to ints (numpy
            # deprecation, harmless below numpy 2.4, which the project excludes).
            warnings.filterwarnings("ignore", _NDIM_WARNING, DeprecationWarning)
            env = self._build_builder(sg)
        env.task.num_steps = self.horizon
        if self.fast_reset:
            task = env.task
            task.world = _renderless_world_class()(task.agent, task._obstacles)
            # One generator object is shared by the task, its agent and objects.
            task.random_generator.__class__ = _fast_layout_generator_class()
        return env

    def _build_builder(self, sg):
        if self.task is not None:
            robot = FAMILY_ROBOTS[self.name]
            family = "StochasticButton" if self.name == "safety-button" else "StochasticCircle"
            env = _family_builder_class()(
                task_cls=_task_classes()[self.name],
                task=self.task,
                task_id=f"Safety{robot}{family}-v0",
                config={"agent_name": robot},
            )
            return env
        return sg.make(self.name).unwrapped


def _cost_keys(task) -> list[str]:
    """The ``cost_*`` keys the task can report (probed once, after a reset).

    Constrained objects are asked for their cost directly; objects whose cost is
    gated by a timer (buttons) are probed with the timer at 0 and restored. The
    probe only reads the simulation.
    """
    keys: list[str] = []
    for obstacle in task._obstacles:
        if not getattr(obstacle, "is_constrained", False):
            continue
        has_timer = hasattr(obstacle, "timer")
        saved = getattr(obstacle, "timer", None)
        if has_timer:
            obstacle.timer = 0
        try:
            keys += [k for k in obstacle.cal_cost() if k.startswith("cost_")]
        finally:
            if has_timer:
                obstacle.timer = saved
    if getattr(task, "_is_load_static_geoms", False) and task.static_geoms_contact_cost:
        keys.append("cost_static_geoms_contact")
    return list(dict.fromkeys(keys))
