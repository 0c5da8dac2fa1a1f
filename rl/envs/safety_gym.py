"""Safety-Gymnasium 1.0.0 (MuJoCo) behind the :mod:`rl.envs.base` contract
(a :class:`gymnasium.vector.VectorEnv`).

Four things this adapter does on top of the installed package:

1. Imports it on Python 3.11 through :func:`import_safety_gymnasium` (see
   :mod:`rl.envs.safety_gym_import`), and passes actions as float64 arrays (the
   package calls ``np.array(a, copy=False)``, which fails on numpy 2 whenever a
   copy would be needed).
2. Fast resets. The package rebuilds its world from XML on every reset, and the
   XML names six 3,259 x 3,259 skybox PNGs that MuJoCo decodes each time
   (0.8-0.9 s per reset) although only rendering ever uses them. Our sub-
   environments compile the same XML without the skybox texture (a subclass of
   the package's ``World`` drops it from the string handed to MuJoCo) and keep
   the package's parse of its constant assets YAML file (:class:`_CachedYAML`,
   18 ms of PyYAML per reset), so a reset costs about 9-13 ms of CPU on our two
   families. A batch's last step (:meth:`SafetyGymVecEnv.step_final`) leaves
   the episodes ending there unreset: the next batch starts with a seeded reset
   anyway. The package's layout rejection sampling (up to 0.25 s
   per reset on its level-1 Button task) runs with a vectorised validity test
   that makes the same draws and the same floating-point operations. Observations, rewards and costs are bit-identical to
   the package's for equal seeds and actions (``tests/test_safety_gym.py``
   checks it). Rendering still works, with a plain background.
3. A fast step (``fast_step=True``, the default). Most of a package step is
   Python around MuJoCo: its pseudo-lidar loops over every object with numpy
   calls on 2- and 3-vectors, every sensor and body is looked up by name, costs
   loop over objects and contacts. :class:`rl.envs.safety_gym_fast.FastStep`
   computes the same step (physics with the package's three ``mj_forward`` calls,
   reward, per-source costs, the package's ``info``, lidar, sensors, goal
   resampling through the package's own methods) with the package's floating-point
   operations in its order, so every output is bit-identical
   (``tests/test_safety_gym_fast.py``); it cuts 2/3 to 3/4 of the CPU time of a
   Point Goal/Button step and about a third of a Car Circle step, which is mostly
   MuJoCo physics (``benchmarks/safety_gym_throughput.py``). Tasks it does not
   reproduce (Push, Run, agents other than Point and Car, vision, natural lidar, ...)
   keep the package's step; ``env.fast_step`` / ``env.fast_step_reason`` say which
   one runs, and ``fast_step=False`` forces the package's.
4. The Meta-CPO task families of :mod:`rl.envs.safety_gym_tasks`, built as
   subclasses of the package's own level classes:

   * ``safety-button``: Point robot, ``ButtonLevel0`` plus hazards (keep-out
     0.18, as in ``ButtonLevel1``), wrong-button presses cost; no gremlins. The
     arena half-size sets the placement extents; buttons, goal slot and hazards
     are pinned at the task's locations; the agent starts in the task's free
     region. Cost channels ``("buttons", "hazards")``, obs_dim 60.
   * ``safety-circle``: Car robot, ``CircleLevel1`` with the task's circle radius
     and the two walls at ``x = +-wall_distance``; the start square scales with
     the radius so no episode starts outside the walls. Cost channel
     ``("out_of_boundary",)``, obs_dim 40.

Horizon: 500 steps for both families (the published Meta-CPO setting); a raw
registered id keeps the package's own ``max_episode_steps`` (1,000 for
Goal/Button/Push, 500 for Circle/Run). Either can be overridden with ``horizon=``.

Cost: each channel is the package's per-source cost (``info["cost_<source>"]``,
an indicator per step under the package's default ``constrain_indicator``), and
the scalar ``info["cost"]`` is their sum, per the contract. The package's own
scalar (``cost_sum``, itself an indicator: 1 when any source is active) is in
``info["package_cost"]``; the two differ only on steps where two sources are
active at once.

Raw registered navigation ids (``"SafetyPointGoal1-v0"``, ...) keep the package's
semantics (a new random layout every reset) and get the same reset speed-up.
Vision and Debug ids and the velocity (non-navigation) tasks are not supported.

>>> from rl.envs.safety_gym import make, task_distribution
>>> task = task_distribution("safety-circle").sample(1, split="train", seed=0)[0]
>>> env = make("safety-circle", task=task, num_envs=2, seed=0)
>>> obs, info = env.reset(seed=0)
>>> obs.shape, env.cost_channels
((2, 40), ('out_of_boundary',))
>>> obs, reward, terminated, truncated, info = env.step(np.zeros((2, env.act_dim)))
>>> info["costs"]["out_of_boundary"].shape
(2,)
>>> env.close()
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import sys
import traceback
from typing import Any

import gymnasium
import numpy as np

from rl.envs.base import SingleEnv, all_true, check_seed, with_final
from rl.envs.safety_gym_build import FAMILY_ROBOTS, _cost_keys, _EnvSpec, raw_env_ids
from rl.envs.safety_gym_fast import fast_step_or_none
from rl.envs.safety_gym_import import import_safety_gymnasium
from rl.envs.safety_gym_tasks import (
    TASK_FAMILIES,
    ButtonTask,
    CircleTask,
    SafetyTaskDistribution,
)
from rl.envs.safety_gym_tasks import task_distribution as _task_distribution

__all__ = [
    "DEFAULT_HORIZON",
    "FAMILY_ROBOTS",
    "SafetyGymEnv",
    "SafetyGymVecEnv",
    "UNBOUNDED_SENSOR_LIMIT",
    "import_safety_gymnasium",
    "make",
    "raw_env_ids",
    "task_distribution",
]

DEFAULT_HORIZON = 500
_TASK_TYPES = {"safety-button": ButtonTask, "safety-circle": CircleTask}


def task_distribution(name: str) -> SafetyTaskDistribution:
    """The task distribution of ``"safety-button"`` or ``"safety-circle"``.

    Raises:
        ValueError: for any other name (the valid ones are listed).
    """
    return _task_distribution(name)


def _always_contains(_obs: Any) -> bool:
    return True


class _CachedYAML:
    """The ``yaml`` module as ``safety_gymnasium.world`` sees it, with ``load`` of a file remembered.

    The package's ``World.build`` parses its constant assets file (YAML) with PyYAML's
    pure-Python loader on every reset (about 18 ms of a 31 ms reset). Here the first parse of a
    file is kept (per path, size and modification time) and each later call returns a deep copy
    of it: the same nested dicts, lists and scalars as a fresh parse, so the world, its XML and
    every result are unchanged (``tests/test_safety_gym.py`` checks both). Streams without a
    file name, and everything else, go to PyYAML itself.
    """

    def __init__(self, module: Any) -> None:
        self._yaml = module
        self._parsed: dict[tuple[str, int, int, Any], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._yaml, name)

    def load(self, stream: Any, Loader: Any = None) -> Any:  # noqa: N803 (PyYAML's name)
        name = getattr(stream, "name", None)
        if not isinstance(name, str) or not os.path.isfile(name):
            return self._yaml.load(stream, Loader=Loader)
        info = os.stat(name)
        key = (name, info.st_size, info.st_mtime_ns, Loader)
        if key not in self._parsed:
            self._parsed[key] = self._yaml.load(stream, Loader=Loader)
        return copy.deepcopy(self._parsed[key])


def _cache_world_yaml(enabled: bool = True) -> None:
    """Remember the package's parse of its assets file between resets (:class:`_CachedYAML`);
    ``enabled=False`` restores PyYAML (tests compare the two)."""
    world = sys.modules.get("safety_gymnasium.world")
    if world is None:
        import_safety_gymnasium()
        import safety_gymnasium.world as world
    names = vars(world)  # the module's globals: its ``yaml`` is the one World.build calls
    current = names["yaml"]
    if enabled and not isinstance(current, _CachedYAML):
        names["yaml"] = _CachedYAML(current)
    elif not enabled and isinstance(current, _CachedYAML):
        names["yaml"] = current._yaml


class _SubEnv:
    """One package environment with auto-reset; used in-process and in workers."""

    def __init__(self, spec: _EnvSpec, seed: int) -> None:
        self.env = spec.build()
        _cache_world_yaml()
        # The package asserts obs_space_dict.contains(obs) on every observation, about 15 % of a
        # step's time; the check never changes an observation, so this instance skips it.
        self.env.task.obs_info.obs_space_dict.contains = _always_contains
        self.env.reset(seed=seed)  # compiles the world; lets us probe the cost keys
        self.cost_keys = _cost_keys(self.env.task)
        # our vectorised step (bit-identical results) where the task is supported, else the package's
        fast, self.fast_step_reason = fast_step_or_none(self.env) if spec.fast_step else (None, "off")
        self.fast_step = fast is not None
        self._step = fast.step if fast is not None else self.env.step
        self._pending_seed: int | None = seed  # the next reset(None) restarts this stream
        self.needs_reset = False  # an episode ended in a step without reset (step_final)
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.obs_low = np.asarray(self.env.observation_space.low, dtype=np.float64).reshape(-1)
        self.obs_high = np.asarray(self.env.observation_space.high, dtype=np.float64).reshape(-1)
        space = self.env.action_space
        self.action_low = np.asarray(space.low, dtype=np.float64)
        self.action_high = np.asarray(space.high, dtype=np.float64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        self.needs_reset = False
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, dtype=np.float64)

    def step_into(
        self, action: np.ndarray, row: int, out: tuple, autoreset: bool = True
    ) -> np.ndarray | None:
        """Step, writing row ``row`` of the group's output arrays ``out`` (see
        :meth:`_LocalGroup.step`); returns the episode's last observation (a copy) when it ended
        (``out``'s observation row then holds the next episode's first one, or with
        ``autoreset=False`` the last one again, the sub-environment left to be reset), else ``None``."""
        if self.needs_reset:
            raise RuntimeError(
                "this sub-environment's episode ended in a step without reset (step_final); "
                "reset the environment before stepping it again"
            )
        obs, reward, cost, terminated, truncated, info = self._step(action)
        out_obs, out_reward, out_costs, out_package_cost, out_term, out_trunc, out_goal = out
        costs = out_costs[row]
        for j, key in enumerate(self.cost_keys):
            costs[j] = float(info.get(key, 0.0))
        out_reward[row] = float(reward)
        out_package_cost[row] = float(cost)
        out_term[row] = terminated = bool(terminated)
        out_trunc[row] = truncated = bool(truncated)
        out_goal[row] = bool(info.get("goal_met", False))
        if terminated or truncated:
            final = np.array(obs, dtype=np.float64)
            if autoreset:
                out_obs[row] = self.reset()
            else:
                out_obs[row] = final
                self.needs_reset = True
            return final
        out_obs[row] = obs
        return None

    def close(self) -> None:
        self.env.close()


class _LocalGroup:
    """Sub-environments stepped in this process."""

    def __init__(self, spec: _EnvSpec, seeds: list[int]) -> None:
        self.envs = [_SubEnv(spec, s) for s in seeds]
        self.obs_dim = self.envs[0].obs_dim
        self.num_costs = len(self.envs[0].cost_keys)

    def meta(self) -> dict:
        env = self.envs[0]
        return {
            "obs_dim": env.obs_dim,
            "obs_low": env.obs_low,
            "obs_high": env.obs_high,
            "cost_keys": env.cost_keys,
            "action_low": env.action_low,
            "action_high": env.action_high,
            "fast_step": env.fast_step,
            "fast_step_reason": env.fast_step_reason,
        }

    def reset(self, seeds: list[int | None]) -> np.ndarray:
        return np.stack([e.reset(s) for e, s in zip(self.envs, seeds, strict=True)])

    def step_final(self, actions: np.ndarray) -> tuple:
        """:meth:`step` without resetting the sub-environments whose episode ends."""
        return self.step(actions, autoreset=False)

    def step(self, actions: np.ndarray, autoreset: bool = True) -> tuple:
        """One step of every sub-environment: ``(obs, reward, costs, package_cost, terminated,
        truncated, goal, finals)``, fresh arrays of length ``n`` (``costs`` is ``(n, C)``), filled
        in place row by row; ``finals`` lists ``(row, last observation)`` of the episodes that
        ended, in row order (empty on most steps)."""
        n = len(self.envs)
        out = (
            np.empty((n, self.obs_dim)),
            np.empty(n),
            np.empty((n, self.num_costs)),
            np.empty(n),
            np.empty(n, dtype=bool),
            np.empty(n, dtype=bool),
            np.empty(n, dtype=bool),
        )
        finals = []
        for row, env in enumerate(self.envs):
            final = env.step_into(actions[row], row, out, autoreset)
            if final is not None:
                finals.append((row, final))
        return (*out, finals)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker_main(conn, spec: _EnvSpec, seeds: list[int]) -> None:
    """Worker process: owns a contiguous block of sub-environments."""
    try:
        group = _LocalGroup(spec, seeds)
        conn.send(("ok", group.meta()))
    except Exception:  # reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                group.close()
                conn.send(("ok", None))
                break
            try:
                result = getattr(group, command)(payload)
                conn.send(("ok", result))
            except Exception:  # reported to the parent, which raises
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        conn.close()


class _RemoteGroup:
    """A block of sub-environments stepped in a worker process (pipe protocol)."""

    def __init__(self, ctx, spec: _EnvSpec, seeds: list[int]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child, spec, seeds), daemon=True, name="safety-gym-worker"
        )
        self.process.start()
        child.close()
        self.size = len(seeds)

    def send(self, command: str, payload: Any = None) -> None:
        self.conn.send((command, payload))

    def receive(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError as exc:
            raise RuntimeError(
                f"safety-gym worker (pid {self.process.pid}) died; exit code {self.process.exitcode}"
            ) from exc
        if status == "error":
            raise RuntimeError(f"safety-gym worker (pid {self.process.pid}) failed:\n{value}")
        return value

    def close(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            try:
                self.send("close")
                if self.conn.poll(timeout):
                    self.conn.recv()  # the worker's acknowledgement
            except (BrokenPipeError, EOFError, OSError):
                pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        self.conn.close()


class SafetyGymVecEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` copies of one Safety-Gymnasium task, a :class:`gymnasium.vector.VectorEnv`
    (contract: :mod:`rl.envs.base`; observation bounds are the package's).

    Sub-environment ``i`` is seeded with ``seed + i``. With ``num_workers > 1`` the
    sub-environments are split into contiguous blocks, each stepped in its own
    process (``multiprocessing`` with pipes; results are identical to stepping
    in-process). Call :meth:`close` (or use the object as a context manager) to
    stop the workers.

    ``info`` of :meth:`step` holds ``cost``, ``costs`` (one float64 array per cost
    channel), ``goal_reached`` (bool; the package's ``goal_met``), ``package_cost``
    (the package's own scalar cost) and, on steps where episodes ended,
    ``final_observation`` / ``final_info``.
    """

    def __init__(
        self,
        spec: _EnvSpec,
        num_envs: int,
        seed: int,
        num_workers: int = 1,
        start_method: str = "spawn",
    ) -> None:
        self._spec = spec
        self.closed = False
        self.viewer = None
        self.num_envs = num_envs
        self.horizon = spec.horizon
        self.task = spec.task
        self.name = spec.name
        self._seed = seed
        self._closed = False
        seeds = [seed + i for i in range(num_envs)]
        num_workers = min(num_workers, num_envs)
        self._groups: list[Any] = []
        if num_workers == 1:
            group = _LocalGroup(spec, seeds)
            self._groups.append(group)
            metas = [group.meta()]
        else:
            ctx = mp.get_context(start_method)
            blocks = np.array_split(np.arange(num_envs), num_workers)
            try:
                for block in blocks:
                    block_seeds = [seeds[i] for i in block]
                    self._groups.append(_RemoteGroup(ctx, spec, block_seeds))
                metas = [g.receive() for g in self._groups]
            except BaseException:
                self.close()
                raise
        meta = metas[0]
        self.obs_dim = int(meta["obs_dim"])
        self.action_low = np.asarray(meta["action_low"], dtype=np.float64)
        self.action_high = np.asarray(meta["action_high"], dtype=np.float64)
        super().__init__(
            num_envs,
            gymnasium.spaces.Box(meta["obs_low"], meta["obs_high"], (self.obs_dim,), np.float64),
            gymnasium.spaces.Box(self.action_low, self.action_high, self.action_low.shape, np.float64),
        )
        self.act_dim = int(self.action_low.shape[0])
        self.cost_channels = tuple(k.removeprefix("cost_") for k in meta["cost_keys"])
        #: whether the sub-environments step through :class:`rl.envs.safety_gym_fast.FastStep`;
        #: ``fast_step_reason`` says why not ("off" when ``make(..., fast_step=False)``)
        self.fast_step = bool(meta["fast_step"])
        self.fast_step_reason = str(meta["fast_step_reason"])
        self._sizes = [len(b) for b in np.array_split(np.arange(num_envs), len(self._groups))]
        # stepped directly (no dispatch) when the sub-environments live in this process
        self._local = self._groups[0] if isinstance(self._groups[0], _LocalGroup) else None
        # Gymnasium's ``_key`` masks, shared by every step: a view of a read-only block, so no
        # caller can make it writeable and change a later step's mask
        self._mask = all_true(num_envs)[:]

    # ----------------------------------------------------------------- dispatch
    def _call(self, command: str, payloads: list[Any]) -> list[Any]:
        if self._closed:
            raise RuntimeError("this SafetyGymVecEnv is closed")
        if isinstance(self._groups[0], _LocalGroup):
            return [getattr(self._groups[0], command)(payloads[0])]
        for group, payload in zip(self._groups, payloads, strict=True):
            group.send(command, payload)
        # every worker's reply is read before an error is raised: none is left in a pipe, where
        # the next command would take it for its own
        results, error = [], None
        for group in self._groups:
            try:
                results.append(group.receive())
            except RuntimeError as exc:
                error = error or exc
        if error is not None:
            raise error
        return results

    def _split(self, values: list[Any] | np.ndarray) -> list[Any]:
        out, start = [], 0
        for size in self._sizes:
            out.append(values[start : start + size])
            start += size
        return out

    # ----------------------------------------------------------------- API
    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Reset every sub-environment; ``seed`` reseeds sub-environment ``i`` with ``seed + i``
        (a list gives one seed each); ``options`` is unused."""
        seeds = check_seed(seed, self.num_envs) or [None] * self.num_envs
        obs = np.concatenate(self._call("reset", self._split(seeds)))
        return obs, {}

    def step_final(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """The last step before a :meth:`reset`: :meth:`step`, except that sub-environments whose
        episode ends are not reset (their row of ``obs`` holds the episode's last observation,
        as ``info["final_observation"]`` does) and cannot be stepped again until :meth:`reset`.

        A batch ends with such a step (:func:`rl.rollout.run_segment`): its next batch starts with a
        seeded reset anyway, so the world rebuild of the automatic reset would be thrown away. A
        reset with a seed restarts every random stream of a sub-environment, so every later
        result is the same as after :meth:`step`."""
        return self.step(actions, autoreset=False)

    def step(
        self, actions: np.ndarray, autoreset: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step every sub-environment (actions ``(num_envs, act_dim)``, clipped to the bounds);
        a sub-environment whose episode ends is reset (``autoreset=False``: see :meth:`step_final`)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, self.act_dim):
            raise ValueError(
                f"actions must have shape (num_envs, act_dim) = ({self.num_envs}, "
                f"{self.act_dim}), got {actions.shape}"
            )
        # np.clip's values (NaN included) without its Python wrappers; a fresh C-ordered array
        clipped = np.maximum(actions, self.action_low, order="C")
        actions = np.minimum(clipped, self.action_high, out=clipped)
        if self._local is not None:
            if self._closed:
                raise RuntimeError("this SafetyGymVecEnv is closed")
            obs, reward, costs, package_cost, term, trunc, goal, finals = self._local.step(actions, autoreset)
        else:
            parts = self._call("step" if autoreset else "step_final", self._split(actions))
            obs, reward, costs, package_cost, term, trunc, goal = (
                np.concatenate(x) for x in zip(*(part[:7] for part in parts), strict=True)
            )
            finals, start = [], 0
            for part, size in zip(parts, self._sizes, strict=True):
                finals.extend((start + row, final) for row, final in part[7])
                start += size
        mask = self._mask
        by_channel = costs.T.copy()  # each channel's (N,) array a row of one fresh block
        info = {
            "cost": np.add.reduce(costs, axis=1),
            "_cost": mask,
            "costs": dict(zip(self.cost_channels, by_channel, strict=True)),
            "_costs": mask,
            "goal_reached": goal,
            "_goal_reached": mask,
            "package_cost": package_cost,
            "_package_cost": mask,
        }
        if finals:
            done = np.array([row for row, _ in finals], dtype=np.intp)
            with_final(info, done, np.stack([final for _, final in finals]), self.num_envs)
        return obs, reward, term, trunc, info

    def close(self, **kwargs: Any) -> None:
        """Close the sub-environments and stop the worker processes (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.closed = True
        for group in self._groups:
            group.close()

    def __enter__(self) -> SafetyGymVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # best effort at interpreter shutdown
            pass

    def __repr__(self) -> str:
        return (
            f"SafetyGymVecEnv({self.name!r}, num_envs={self.num_envs}, workers={len(self._groups)}"
            f", horizon={self.horizon}, obs_dim={self.obs_dim}, cost_channels={self.cost_channels})"
        )


# --------------------------------------------------------------------------- make
def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _coerce_task(name: str, task: Any, seed: int) -> Any:
    expected = _TASK_TYPES[name]
    if task is None:
        return _task_distribution(name).sample(1, split="train", seed=int(seed))[0]
    if isinstance(task, dict):
        return expected.from_dict(task)
    if not isinstance(task, expected):
        raise ValueError(
            f"{name!r} needs a {expected.__name__} (or its to_dict()), got {type(task).__name__}"
        )
    return task


def make(
    name: str,
    task: ButtonTask | CircleTask | dict | None = None,
    num_envs: int = 1,
    seed: int = 0,
    horizon: int | None = None,
    num_workers: int = 1,
    fast_reset: bool = True,
    start_method: str = "spawn",
    fast_step: bool = True,
    **unknown: Any,
) -> SafetyGymVecEnv:
    """Build a :class:`SafetyGymVecEnv` for a task family or a raw registered id.

    Args:
        name: ``"safety-button"``, ``"safety-circle"`` or a registered navigation id
            such as ``"SafetyPointGoal1-v0"`` (see :func:`raw_env_ids`).
        task: a task of the family (or its ``to_dict()``); ``None``: the first
            training task drawn with ``seed``. Must be ``None`` for raw ids.
        num_envs: number of sub-environments; sub-environment ``i`` is seeded ``seed + i``.
        seed: base seed.
        horizon: episode length (truncation). Default 500 for the families, the
            package's ``max_episode_steps`` for raw ids.
        num_workers: worker processes (1: step in this process).
        fast_reset: compile the world without the skybox (identical dynamics and
            observations); ``False`` runs the package's own slow reset.
        start_method: multiprocessing start method for the workers (``"spawn"`` is
            safe after torch/OpenMP are initialised; ``"fork"`` starts faster).
        fast_step: step through our vectorised copy of the package's step
            (:mod:`rl.envs.safety_gym_fast`; bit-identical results) where the task is
            supported; ``False`` runs the package's own ``Builder.step``.

    Raises:
        ValueError: unknown name or keyword, task of the wrong family, or a parameter
            out of range.
    """
    if unknown:
        raise ValueError(
            f"unknown parameters {sorted(unknown)} for Safety-Gymnasium environments; valid: "
            "task, num_envs, seed, horizon, num_workers, fast_reset, start_method, fast_step"
        )
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}: {name!r}")
    num_envs = _positive_int("num_envs", num_envs)
    num_workers = _positive_int("num_workers", num_workers)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy seeds), got {seed!r}")
    if not isinstance(fast_reset, bool):
        raise ValueError(f"fast_reset must be a bool, got {fast_reset!r}")
    if not isinstance(fast_step, bool):
        raise ValueError(f"fast_step must be a bool, got {fast_step!r}")
    if start_method not in mp.get_all_start_methods():
        raise ValueError(f"start_method must be one of {mp.get_all_start_methods()}, got {start_method!r}")
    if name in TASK_FAMILIES:
        task = _coerce_task(name, task, seed)
        default_horizon = DEFAULT_HORIZON
    else:
        valid = raw_env_ids()
        if name not in valid:
            raise ValueError(
                f"unknown Safety-Gymnasium environment {name!r}; expected one of "
                f"{list(TASK_FAMILIES)} or a registered navigation id (no Vision/Debug): "
                f"{', '.join(valid)}"
            )
        if task is not None:
            raise ValueError(
                f"raw id {name!r} takes no task (got {task!r}); tasks exist for {list(TASK_FAMILIES)}"
            )
        import gymnasium

        default_horizon = gymnasium.spec(name).max_episode_steps or DEFAULT_HORIZON
    horizon = default_horizon if horizon is None else _positive_int("horizon", horizon)
    spec = _EnvSpec(name=name, task=task, horizon=horizon, fast_reset=fast_reset, fast_step=fast_step)
    return SafetyGymVecEnv(
        spec, num_envs=num_envs, seed=int(seed), num_workers=num_workers, start_method=start_method
    )


# --------------------------------------------------------------------------- gymnasium.Env
#: Bound given to sensors the package leaves unbounded (accelerometer, velocimeter, ...):
#: any finite float64. Lidar bins keep the package's ``[0, 1]``.
UNBOUNDED_SENSOR_LIMIT = float(np.finfo(np.float64).max)


class SafetyGymEnv(SingleEnv):
    """One environment of a Safety-Gymnasium task family behind the gymnasium API.

    For Gymnasium wrappers, Stable-Baselines3, OmniSafe-style loops: ``step`` returns
    ``(obs, reward, terminated, truncated, info)`` with ``info["cost"]`` (float),
    ``info["costs"]`` (channel -> float), ``info["goal_reached"]`` and
    ``info["package_cost"]``. On the step that ends an episode ``obs`` is its last
    observation; call ``reset()`` next. Registered as ``MetaCPOSafetyButton-v0`` and
    ``MetaCPOSafetyCircle-v0``.

    The observation space is the package's, with the bounds of the sensors it leaves
    unbounded set to :data:`UNBOUNDED_SENSOR_LIMIT` (finite, so ``check_env`` accepts it;
    no observation is changed).

    Args:
        family: ``"safety-button"`` or ``"safety-circle"``.
        task: A task of the family (or its ``to_dict()``); ``None`` uses the first
            training task drawn with ``task_seed``.
        seed: Seed until ``reset(seed=...)`` gives another; ``None`` (default) draws one
            from the operating system, so unseeded environments differ.
        horizon: Episode length (default 500).
        task_seed: Seed of the default task.
        fast_reset, fast_step: As for :func:`make`.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        family: str = "safety-button",
        task: ButtonTask | CircleTask | dict | None = None,
        seed: int | None = None,
        horizon: int | None = None,
        task_seed: int = 0,
        fast_reset: bool = True,
        fast_step: bool = True,
    ) -> None:
        if family not in TASK_FAMILIES:
            raise ValueError(f"family must be one of {list(TASK_FAMILIES)}, got {family!r}")
        if task is None:
            task = _task_distribution(family).sample(1, split="train", seed=task_seed)[0]
        if seed is None:  # the package's generators take seeds below 2**32
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        vec_env = make(
            family,
            task=task,
            num_envs=1,
            seed=seed,
            horizon=horizon,
            fast_reset=fast_reset,
            fast_step=fast_step,
        )
        space = vec_env.single_observation_space
        low = np.where(np.isfinite(space.low), space.low, -UNBOUNDED_SENSOR_LIMIT)
        high = np.where(np.isfinite(space.high), space.high, UNBOUNDED_SENSOR_LIMIT)
        self._wrap(vec_env, gymnasium.spaces.Box(low, high, space.shape, np.float64))
