"""A faster ``Builder.step`` for Safety-Gymnasium 1.0.0's navigation tasks, bit-identical to the
package's.

One step of the package spends most of its time in Python around MuJoCo: its pseudo-lidar loops
over every object with several numpy calls on 2- and 3-vectors each, every sensor and body is
looked up by name, costs loop over objects and contacts. :class:`FastStep` computes the same step
with model ids looked up once per world, one pass over all lidar objects, and every
floating-point operation the package makes, in its order, so that observations, rewards, costs,
terminations and the step ``info`` are the same bits (``tests/test_safety_gym_fast.py`` checks it
over rollouts with many resets, goals met, buttons pressed and hazards entered).

What it computes itself:

* the action: clipped to the actuators' control range (the package's ``np.clip``; our adapter
  clips to the same bounds before, the check stays);
* physics: the package's frame-skip draw, the mocap moves (gremlins: one target per frame written
  to every gremlin, as the package computes it per gremlin), ``mj_step`` per frame and the
  package's three ``mj_forward`` calls per step (after the physics, before the costs, before the
  observation). They are not redundant: each one restarts MuJoCo's constraint solver from the
  previous one's accelerations, so skipping one changes the accelerometer reading in the last
  bits and, through the solver's warm start, the trajectory;
* rewards of the Goal, Button and Circle tasks (``GoalLevel0``, ``ButtonLevel0``, ``CircleLevel0``
  and their subclasses that do not override them), the package's clip and warning included;
* costs of hazards (distance), buttons and gremlins (contacts, by precomputed geom ids), the
  signal walls, and any other constrained object (vases) through its own ``cal_cost``; the
  package's ``cost_sum`` and indicator;
* observations: the agent's sensors (``sensordata`` entries; hinge angles as sin/cos, ball joints
  as rotation matrices) and the pseudo-lidar of every lidar-observed object group
  (:meth:`FastStep._lidar`): egocentric coordinates by the package's own call, one ``np.matmul``
  of a 3-vector and the agent's 3x3 matrix per object (BLAS computes it, with or without fused
  multiply-adds depending on the machine's kernel: the same arithmetic written out in Python
  floats differed in the last bit on a machine with AVX-512), distance and angle through numpy's complex ``abs`` and ``arctan2`` (``np.hypot``
  differs from the complex ``abs`` in the last bit on this numpy), the bins, linear falloff,
  aliasing and the per-bin ``max`` of ``BaseTask._obs_lidar_pseudo`` with its assertion.

What stays the package's: resets, goal resampling after a goal is met (``update_layout`` and
``update_world``), the vases' and gremlins' costs, any object type not listed above.

:func:`fast_step_or_none` says why a task is not supported (Push and Run tasks, agents other than
Point and Car, vision, compass, natural or exponential lidar, action noise, debug, human
rendering, orientation reward, static geoms, costs without the indicator, tasks that override
the reward/cost/obs/step hooks); the adapter then keeps the package's own ``step``.

>>> from rl.envs.safety_gym_build import _EnvSpec
>>> env = _EnvSpec("SafetyPointGoal1-v0", None, 1000, True).build()
>>> _ = env.reset(seed=0)
>>> fast = FastStep(env)
>>> obs, reward, cost, terminated, truncated, info = fast.step(np.zeros(2))
>>> obs.shape, sorted(info)
((60,), ['cost_hazards', 'cost_sum'])
"""

from __future__ import annotations

import math
from typing import Any

import mujoco
import numpy as np

__all__ = ["FastStep", "UnsupportedTask", "fast_step_or_none"]

_TWO_PI = np.pi * 2


class UnsupportedTask(ValueError):
    """The task uses a feature :class:`FastStep` does not reproduce (the message names it)."""


def _package_classes() -> dict[str, Any]:
    from safety_gymnasium.agents.car import Car
    from safety_gymnasium.agents.point import Point
    from safety_gymnasium.assets.free_geoms.vases import Vases
    from safety_gymnasium.assets.geoms.buttons import Buttons
    from safety_gymnasium.assets.geoms.circle import Circle
    from safety_gymnasium.assets.geoms.goal import Goal
    from safety_gymnasium.assets.geoms.hazards import Hazards
    from safety_gymnasium.assets.geoms.sigwalls import Sigwalls
    from safety_gymnasium.assets.mocaps.gremlins import Gremlins
    from safety_gymnasium.bases.base_object import BaseObject
    from safety_gymnasium.bases.base_task import BaseTask
    from safety_gymnasium.builder import Builder
    from safety_gymnasium.tasks.safe_navigation.button.button_level0 import ButtonLevel0
    from safety_gymnasium.tasks.safe_navigation.circle.circle_level0 import CircleLevel0
    from safety_gymnasium.tasks.safe_navigation.goal.goal_level0 import GoalLevel0
    from safety_gymnasium.utils.common_utils import ResamplingError

    classes = (Car, Point, Vases, Buttons, Circle, Goal, Hazards, Sigwalls, Gremlins, BaseObject, BaseTask)
    classes += (Builder, ButtonLevel0, CircleLevel0, GoalLevel0, ResamplingError)
    return {cls.__name__: cls for cls in classes}


def _kind(task: Any, pk: dict[str, Any]) -> str:
    """``"goal"``, ``"button"`` or ``"circle"``: whose reward, obs and step hooks the task uses."""
    cls = type(task)
    for kind, base in (
        ("goal", pk["GoalLevel0"]),
        ("button", pk["ButtonLevel0"]),
        ("circle", pk["CircleLevel0"]),
    ):
        if not isinstance(task, base):
            continue
        hooks = ("calculate_reward", "specific_step", "obs", "goal_achieved", "calculate_cost")
        owners = {"obs": base if kind == "button" else pk["BaseTask"], "calculate_cost": pk["BaseTask"]}
        for hook in hooks:
            owner = owners.get(hook, base)
            if getattr(cls, hook) is not getattr(owner, hook):
                raise UnsupportedTask(f"{cls.__name__} overrides {hook} of {owner.__name__}")
        return kind
    raise UnsupportedTask(f"{cls.__name__} is not a Goal, Button or Circle task")


def _check_supported(env: Any, pk: dict[str, Any]) -> str:
    task = env.task
    if type(env).step is not pk["Builder"].step:
        raise UnsupportedTask(f"{type(env).__name__} overrides Builder.step")
    checks = (
        (task.observe_vision, "vision observations"),
        (not task.observation_flatten, "dict observations (observation_flatten=False)"),
        (task.debug, "debug mode"),
        (task.action_noise, f"action noise {task.action_noise}"),
        (env.render_parameters.mode == "human", "human rendering"),
        (task.lidar_conf.type != "pseudo", f"lidar type {task.lidar_conf.type!r}"),
        (task.lidar_conf.max_dist is None, "exponential lidar (max_dist=None)"),
        (task.lidar_conf.num_bins < 3, f"lidar with {task.lidar_conf.num_bins} bins"),
        (not task.cost_conf.constrain_indicator, "costs without the indicator"),
        (task.reward_conf.reward_orientation, "orientation reward"),
        (task._is_load_static_geoms, "static geoms"),
        (type(task.agent) not in (pk["Point"], pk["Car"]), f"agent {type(task.agent).__name__}"),
    )
    for bad, what in checks:
        if bad:
            raise UnsupportedTask(f"{type(task).__name__}: {what}")
    for obstacle in task._obstacles:
        if getattr(obstacle, "is_comp_observed", False):
            raise UnsupportedTask(f"{type(task).__name__}: compass observation of {obstacle.name}")
    return _kind(task, pk)


def fast_step_or_none(env: Any) -> tuple[FastStep | None, str]:
    """``(FastStep(env), "")`` for a supported task, else ``(None, reason)``."""
    try:
        return FastStep(env), ""
    except UnsupportedTask as exc:
        return None, str(exc)


class FastStep:
    """The package's ``Builder.step`` for one environment ``env`` (a ``safety_gymnasium`` ``Builder``,
    reset at least once), vectorised; :meth:`step` has ``env.step``'s signature and results.

    Model ids are looked up again whenever the package has rebuilt its world (every reset).

    Raises:
        UnsupportedTask: for a task this class does not reproduce (see the module docstring).
    """

    def __init__(self, env: Any) -> None:
        self._pk = pk = _package_classes()
        self._base_cal_cost = pk["BaseObject"].cal_cost
        self.env = env
        self.task = task = env.task
        self.kind = _check_supported(env, pk)
        self.agent = task.agent
        self.num_bins = int(task.lidar_conf.num_bins)
        self.max_dist = task.lidar_conf.max_dist
        self.bin_size = _TWO_PI / task.lidar_conf.num_bins
        self.act_shape = env.action_space.shape
        self._data = None
        self._sync()

    # ----------------------------------------------------------------- per world
    def _sync(self) -> None:
        """Ids, views and the observation layout of the current MuJoCo model."""
        task, pk = self.task, self._pk
        model, data = task.model, task.data
        self._model, self._data = model, data
        self._ctrl_lo = model.actuator_ctrlrange[:, 0].copy()
        self._ctrl_hi = model.actuator_ctrlrange[:, 1].copy()
        self._agent_body = model.body("agent").id
        names = [model.geom(i).name for i in range(model.ngeom)]
        agent_names = self.agent.body_info.geom_names
        # per geom id: whether it belongs to the agent (a list: contacts are read as Python ints)
        self._is_agent_geom = [n in agent_names for n in names]
        self._names = names
        self._mocaps = list(task._mocaps.values())
        self._gremlin_mocap_ids = {}
        for mocap in self._mocaps:
            if type(mocap) is pk["Gremlins"]:
                ids = [model.body_mocapid[model.body(f"gremlin{i}mocap").id] for i in range(mocap.num)]
                self._gremlin_mocap_ids[id(mocap)] = np.array(ids, dtype=np.intp)
        self._layout_obs(model)
        self._layout_costs()
        if self.kind in ("goal", "button"):
            self._goal_body = model.body("goal").id
        if self.kind == "button":
            self._button_geoms = [model.geom(f"button{i}").id for i in range(task.buttons.num)]
        if self.kind == "circle":
            self._jacp = np.zeros((3, model.nv))

    def _prefix_geoms(self, prefix: str) -> list[bool]:
        return [n.startswith(prefix) for n in self._names]

    def _layout_obs(self, model: Any) -> None:
        task, pk = self.task, self._pk
        spaces = task.obs_info.obs_space_dict.spaces
        offsets, start = {}, 0
        for key, space in spaces.items():
            size = int(np.prod(space.shape))
            offsets[key] = (start, size)
            start += size
        self.obs_dim = start
        info = self.agent.sensor_info
        copies, hinges, seen = [], [], set()

        def sensor(name: str, skip: int = 0) -> tuple[int, int]:
            sid = model.sensor(name).id
            adr, dim = int(model.sensor_adr[sid]), int(model.sensor_dim[sid])
            expected = dim - skip
            if self.agent.sensor_conf.sensors_angle_components:
                if name in info.hinge_pos_names:
                    expected = 2
                elif name in info.ballquat_names:
                    expected = 9
            if offsets[name][1] != expected:
                raise UnsupportedTask(
                    f"sensor {name}: {offsets[name][1]} observation entries, expected {expected}"
                )
            return adr, dim

        direct = (
            list(self.agent.sensor_conf.sensors) + list(info.hinge_vel_names) + list(info.ballangvel_names)
        )
        for name in direct:
            adr, dim = sensor(name)
            copies.append((offsets[name][0], adr, adr + dim))
            seen.add(name)
        if info.freejoint_pos_name:
            adr, dim = sensor(info.freejoint_pos_name, skip=2)
            copies.append((offsets[info.freejoint_pos_name][0], adr + 2, adr + dim))
            seen.add(info.freejoint_pos_name)
        if info.freejoint_qvel_name:
            adr, dim = sensor(info.freejoint_qvel_name)
            copies.append((offsets[info.freejoint_qvel_name][0], adr, adr + dim))
            seen.add(info.freejoint_qvel_name)
        for name in info.hinge_pos_names:
            adr, dim = sensor(name)
            if self.agent.sensor_conf.sensors_angle_components:
                if dim != 1:
                    raise UnsupportedTask(f"hinge sensor {name} of dimension {dim}")
                hinges.append((offsets[name][0], adr))
            else:
                copies.append((offsets[name][0], adr, adr + dim))
            seen.add(name)
        quats = []
        for name in info.ballquat_names:
            adr, dim = sensor(name)
            if self.agent.sensor_conf.sensors_angle_components:
                quats.append((offsets[name][0], adr, adr + dim))
            else:
                copies.append((offsets[name][0], adr, adr + dim))
            seen.add(name)
        self._copy_to = np.array(
            [start + k for start, lo, hi in copies for k in range(hi - lo)], dtype=np.intp
        )
        self._copy_from = np.array([k for _, lo, hi in copies for k in range(lo, hi)], dtype=np.intp)
        self._hinges, self._quats = hinges, quats
        # lidar groups, in obstacle order; each gets its rows of the object table
        groups, body_ids, package_objects, constants = [], [], [], []
        row = 0
        for obstacle in task._obstacles:
            if not obstacle.is_lidar_observed:
                continue
            key = obstacle.name + "_lidar"
            seen.add(key)
            kind = type(obstacle)
            if kind is pk["Circle"]:
                pos = np.array(obstacle.pos, ndmin=2)
                constants.append((row, pos[:, :2].astype(np.float64)))
                n = len(pos)
            elif kind in (pk["Goal"],):
                body_ids.append((row, np.array([model.body("goal").id])))
                n = 1
            elif kind in (pk["Hazards"], pk["Buttons"], pk["Vases"], pk["Gremlins"]):
                fmt = {
                    pk["Hazards"]: "hazard{}",
                    pk["Buttons"]: "button{}",
                    pk["Vases"]: "vase{}",
                    pk["Gremlins"]: "gremlin{}obj",
                }[kind]
                ids = np.array([model.body(fmt.format(i)).id for i in range(obstacle.num)], dtype=np.intp)
                body_ids.append((row, ids))
                n = obstacle.num
            else:
                n = len(np.array(obstacle.pos, ndmin=2))
                package_objects.append((row, obstacle, n))
            groups.append((offsets[key][0], row, n))
            row += n
        if set(spaces) != seen:
            raise UnsupportedTask(f"observation keys {sorted(set(spaces) - seen)} are not reproduced")
        self._lidar_groups = groups
        self._num_objects = row
        # readings of group g are entries g*num_bins ... of one list; obs takes them at lidar_slots
        bins = self.num_bins
        self._row_base = [index * bins for index, (_, _, n) in enumerate(groups) for _ in range(n)]
        self._lidar_slots = np.array(
            [start + b for start, _, _ in groups for b in range(bins)], dtype=np.intp
        )
        self._body_rows = (
            (
                np.concatenate([np.arange(r, r + len(i)) for r, i in body_ids]),
                np.concatenate([i for _, i in body_ids]),
            )
            if body_ids
            else None
        )
        self._constants = constants
        self._package_objects = package_objects
        self._positions = np.zeros((row, 2))
        self._ego = np.empty(row, dtype=np.complex128)
        for r, pos in constants:
            self._positions[r : r + len(pos)] = pos
        self._buttons_lidar = offsets.get("buttons_lidar", (None, 0))[0] if self.kind == "button" else None

    def _layout_costs(self) -> None:
        pk = self._pk
        costs = []
        for obstacle in self.task._obstacles:
            kind = type(obstacle)
            if kind is pk["Hazards"]:
                if obstacle.is_constrained:
                    ids = [self._model.body(f"hazard{i}").id for i in range(obstacle.num)]
                    costs.append(("hazards", obstacle, np.array(ids, dtype=np.intp)))
            elif kind is pk["Buttons"]:
                costs.append(("buttons", obstacle, self._prefix_geoms("button")))
            elif kind is pk["Gremlins"]:
                costs.append(("gremlins", obstacle, self._prefix_geoms("gremlin")))
            elif kind is pk["Sigwalls"]:
                if obstacle.is_constrained:
                    costs.append(("sigwalls", obstacle, None))
            elif type(obstacle).cal_cost is not self._base_cal_cost:
                costs.append(("package", obstacle, None))
        self._costs = costs
        self._needs_contacts = self.kind == "button" or any(c[0] in ("buttons", "gremlins") for c in costs)

    # ----------------------------------------------------------------- pieces
    def _simulate(self, action: np.ndarray) -> None:
        model, data, task = self._model, self._data, self.task
        data.ctrl[:] = np.clip(action, self._ctrl_lo, self._ctrl_hi)
        frames = task.random_generator.binomial(
            task.sim_conf.frameskip_binom_n, task.sim_conf.frameskip_binom_p
        )
        mocaps = self._mocaps
        for _ in range(frames):
            for mocap in mocaps:
                ids = self._gremlin_mocap_ids.get(id(mocap))
                if ids is None:
                    mocap.move()
                    continue
                phase = float(data.time)
                target = np.array([np.sin(phase), np.cos(phase)]) * mocap.travel
                data.mocap_pos[ids, 0] = target[0]
                data.mocap_pos[ids, 1] = target[1]
                data.mocap_pos[ids, 2] = mocap.size
            mujoco.mj_step(model, data)
        mujoco.mj_forward(model, data)

    def _contacts(self) -> list[tuple[int, int]]:
        """The geom id pairs of the current contacts (a few: plain ints, no numpy per contact)."""
        data = self._data
        ncon = data.ncon
        if ncon == 0:
            return []
        contact = data.contact
        return list(zip(contact.geom1[:ncon].tolist(), contact.geom2[:ncon].tolist()))

    def _goal_pressed(self, contacts: list[tuple[int, int]]) -> bool:
        """ButtonLevel0.goal_achieved: a contact between the goal button and the agent."""
        goal = self._button_geoms[self.task.buttons.goal_button]
        is_agent = self._is_agent_geom
        return any((g1 == goal or g2 == goal) and (is_agent[g1] or is_agent[g2]) for g1, g2 in contacts)

    def _reward(self, agent_xy: tuple[float, float], contacts) -> tuple[Any, bool]:
        """(reward, goal achieved) of the task, before the clip."""
        task = self.task
        if self.kind in ("goal", "button"):
            source = task.goal if self.kind == "goal" else task.buttons
            gx, gy = self._data.xpos[self._goal_body, :2].tolist()
            dx, dy = gx - agent_xy[0], gy - agent_xy[1]
            dist = math.sqrt(dx * dx + dy * dy)
            reward = 0.0
            reward += (task.last_dist_goal - dist) * source.reward_distance
            task.last_dist_goal = dist
            achieved = dist <= task.goal.size if self.kind == "goal" else self._goal_pressed(contacts)
            if achieved:
                reward += source.reward_goal
            return reward, achieved
        # circle: the package's expression on Python floats (the same IEEE operations; ``**`` is
        # libm's pow for numpy scalars and Python floats alike, which is not always x*x)
        model, data = self._model, self._data
        jacp = self._jacp
        jacp.fill(0.0)
        mujoco.mj_jacBody(model, data, jacp, None, self._agent_body)
        x, y, _ = data.xpos[self._agent_body].tolist()
        u, v, _ = np.dot(jacp, data.qvel).tolist()
        radius = math.sqrt(x**2 + y**2)
        reward = 0.0
        reward += (((-u * y + v * x) / radius) / (1 + abs(radius - task.circle.radius))) * task.reward_factor
        return reward, False

    def _cost(self, agent_xy: tuple[float, float]) -> dict[str, Any]:
        cost: dict[str, Any] = {}
        data = self._data
        mujoco.mj_forward(self._model, data)  # as the package: it also moves the solver's warm start
        contacts = self._contacts() if self._needs_contacts else None
        for kind, obstacle, extra in self._costs:
            if kind == "hazards":
                ax, ay = agent_xy
                size, unit = obstacle.size, obstacle.cost
                total = 0
                for hx, hy in data.xpos[extra, :2].tolist():
                    dx, dy = hx - ax, hy - ay
                    dist = math.sqrt(dx * dx + dy * dy)
                    if dist <= size:
                        total += unit * (size - dist)
                cost["cost_hazards"] = total
            elif kind == "buttons":
                assert obstacle.goal_button is not None, (
                    "Please make sure this method can get information about goal button."
                )
                if not obstacle.is_constrained or obstacle.timer != 0:
                    continue
                total = 0
                goal = self._button_geoms[obstacle.goal_button]
                is_agent = self._is_agent_geom
                for g1, g2 in contacts:  # a wrong button touched by the agent: one cost per contact
                    if (extra[g1] or extra[g2]) and (is_agent[g1] or is_agent[g2]) and g1 != goal != g2:
                        total += obstacle.cost
                cost["cost_buttons"] = total
            elif kind == "gremlins":
                if not obstacle.is_constrained:
                    continue
                total = 0
                is_agent = self._is_agent_geom
                for g1, g2 in contacts:
                    if (extra[g1] or extra[g2]) and (is_agent[g1] or is_agent[g2]):
                        total += obstacle.contact_cost
                cost["cost_gremlins"] = total
            elif kind == "sigwalls":
                x, y = agent_xy
                out = abs(x) > obstacle.locate_factor
                if obstacle.num == 4:
                    out = out or abs(y) > obstacle.locate_factor
                cost["cost_out_of_boundary"] = out
            else:
                cost.update(obstacle.cal_cost())
        cost["cost_sum"] = sum(v for k, v in cost.items() if k.startswith("cost_"))
        for k in list(cost):
            cost[k] = float(cost[k] > 0.0)
        return cost

    def _obs(self) -> np.ndarray:
        data = self._data
        mujoco.mj_forward(self._model, data)  # as the package: it also moves the solver's warm start
        obs = np.zeros(self.obs_dim)
        sensordata = data.sensordata
        obs[self._copy_to] = sensordata[self._copy_from]
        for start, adr in self._hinges:
            theta = float(sensordata[adr])
            obs[start] = np.sin(theta)
            obs[start + 1] = np.cos(theta)
        for start, lo, hi in self._quats:
            mat = np.zeros(9, dtype="float64")
            mujoco.mju_quat2Mat(mat, np.array(sensordata[lo:hi], dtype="float64"))
            obs[start : start + 9] = mat
        if self._num_objects:
            self._lidar(obs)
        if self._buttons_lidar is not None and self.task.buttons.timer != 0:
            obs[self._buttons_lidar : self._buttons_lidar + self.num_bins] = 0.0
        return obs

    def _lidar(self, obs: np.ndarray) -> None:
        """``BaseTask._obs_lidar_pseudo`` of every lidar group at once, into ``obs``.

        The egocentric vectors are the package's ``np.matmul(pos_3vec - agent_3vec, agent_mat)``,
        one call per object on arrays of the same shapes (its rounding is BLAS's and depends on
        the machine's kernel, so it is not written out in floats); their complex absolute value
        and angle are numpy's (one call each, the ufuncs the package calls per object). Everything
        else is exact IEEE arithmetic on Python floats, the package's operations in its order:
        ``%`` (the same fmod-based remainder as numpy's), truncation to the bin, falloff, alias,
        and Python's ``max`` per bin. Numpy calls cost microseconds each on small arrays; floats
        cost tens of nanoseconds.
        """
        data, positions = self._data, self._positions
        if self._body_rows is not None:
            rows, ids = self._body_rows
            positions[rows] = data.xpos[ids, :2]
        for row, obstacle, n in self._package_objects:
            pos = np.array(obstacle.pos, ndmin=2)
            if len(pos) != n:
                raise RuntimeError(f"{obstacle.name} has {len(pos)} positions, expected {n}")
            positions[row : row + n] = pos[:, :2]
        agent_3vec = data.xpos[self._agent_body].copy()
        agent_mat = data.xmat[self._agent_body].copy().reshape(3, -1)
        world = np.zeros(3)  # the package's pos_3vec: (x, y, 0)
        ex, ey = [], []
        for px, py in positions.tolist():
            world[0], world[1] = px, py
            e = np.matmul(world - agent_3vec, agent_mat)
            ex.append(e[0])
            ey.append(e[1])
        z = self._ego
        z.real, z.imag = ex, ey
        dists = np.abs(z).tolist()
        angles = np.arctan2(z.imag, z.real).tolist()  # np.angle(z)
        bin_size, num_bins, max_dist = self.bin_size, self.num_bins, self.max_dist
        readings = [0.0] * len(self._lidar_slots)
        for base, dist, angle in zip(self._row_base, dists, angles, strict=True):
            angle %= _TWO_PI
            b = int(angle / bin_size)
            if b >= num_bins:  # the package fails here with an IndexError too
                raise IndexError(f"lidar bin {b} of an object at angle {angle!r} is out of range")
            left = max_dist - dist
            sensor = (left if left > 0 else 0) / max_dist  # max(0, left), as the package
            alias = (angle - bin_size * b) / bin_size
            assert 0 <= alias <= 1, f"bad alias {alias}, dist {dist}, angle {angle}, bin {b}"
            # readings[i] = max(readings[i], value): the value only where it is greater
            i = base + b
            if sensor > readings[i]:
                readings[i] = sensor
            i = base + (b + 1) % num_bins
            value = alias * sensor
            if value > readings[i]:
                readings[i] = value
            i = base + (b - 1) % num_bins
            value = (1 - alias) * sensor
            if value > readings[i]:
                readings[i] = value
        obs[self._lidar_slots] = readings

    def _goal_met(self) -> None:
        """The package's own goal handling (rare): resample the goal or end the episode."""
        env, task = self.env, self.task
        mechanism = task.mechanism_conf
        if not mechanism.continue_goal:
            env.terminated = True
            return
        task.update_layout()
        if mechanism.terminate_resample_failure:
            try:
                task.update_world()
            except self._pk["ResamplingError"]:
                env.terminated = True
        else:
            task.update_world()

    # ----------------------------------------------------------------- step
    def step(self, action: np.ndarray) -> tuple[np.ndarray, Any, float, bool, bool, dict]:
        """``env.step(action)``, the same results and the same state changes."""
        env, task = self.env, self.task
        assert not env.done, "Environment must be reset before stepping."
        action = np.asarray(action)
        if action.shape != self.act_shape:
            raise ValueError("Action dimension mismatch")
        if task.data is not self._data or task.model is not self._model:
            self._sync()
        info: dict[str, Any] = {}
        self._simulate(action)
        agent_xy = tuple(self._data.xpos[self._agent_body, :2].tolist())
        contacts = self._contacts() if self.kind == "button" else None
        reward, achieved = self._reward(agent_xy, contacts)
        clip = task.reward_conf.reward_clip
        if clip and not -clip < reward < clip:
            reward = np.clip(reward, -clip, clip)
            print("Warning: reward was outside of range!")
        costs = self._cost(agent_xy)
        info.update(costs)
        env.cost = costs
        cost = costs["cost_sum"]
        if self.kind == "button":
            task.specific_step()
        if self.kind == "button":
            achieved = self._goal_pressed(self._contacts())
        if achieved:
            info["goal_met"] = True
            self._goal_met()
        env.steps += 1
        if env.steps >= task.num_steps:
            env.truncated = True
        return self._obs(), reward, cost, env.terminated, env.truncated, info
