"""Our vectorised Safety-Gymnasium step (:mod:`rl.envs.safety_gym_fast`) against the package's own
``Builder.step``: the same bits over long rollouts with many resets, on every supported id and
family, with goals met, buttons pressed and hazards entered; unsupported tasks fall back."""

from __future__ import annotations

import numpy as np
import pytest

from rl.envs.safety_gym import make, task_distribution
from rl.envs.safety_gym_build import _EnvSpec
from rl.envs.safety_gym_fast import FastStep, UnsupportedTask, fast_step_or_none

pytestmark = pytest.mark.safety


def _seek(task, target_xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Point action towards ``target_xy`` (forward, turn), with noise; random for a Car."""
    if type(task.agent).__name__ != "Point":
        return rng.uniform(-1.0, 1.0, size=2)
    ego = (np.r_[target_xy[:2], 0.0] - task.agent.pos) @ task.agent.mat
    angle = np.arctan2(ego[1], ego[0])
    action = np.array([max(0.1, 1.0 - abs(angle)), 3.0 * angle]) + rng.normal(0.0, 0.3, size=2)
    return np.clip(action, -1.0, 1.0)


def _target(task, episode: int) -> np.ndarray:
    """Cycle the episode's target: the goal, a hazard, a button (whichever the task has)."""
    choices = [getattr(task, "goal", None), getattr(task, "hazards", None), getattr(task, "buttons", None)]
    choices = [c for c in choices if c is not None]
    if not choices:
        return np.zeros(2)
    obj = choices[episode % len(choices)]
    pos = np.array(obj.pos, ndmin=2)
    return pos[episode % len(pos)]


def _assert_same(a, b, what: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_same(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert b.dtype == object and a.shape == b.shape, what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), what
    else:
        assert type(a) is type(b) and a == b, what


def _task_of(name: str):
    return task_distribution(name).sample(1, seed=3)[0] if name.startswith("safety-") else None


# (id, steps, horizon, goals met): short horizons give many resets (each a new layout or start)
CASES = [
    ("SafetyPointGoal1-v0", 1200, 150, True),
    ("SafetyPointButton1-v0", 500, 100, True),
    ("SafetyCarCircle1-v0", 1000, 100, False),
    ("safety-button", 1200, 150, True),
    ("safety-circle", 1000, 100, False),
    ("SafetyPointGoal2-v0", 300, 100, False),  # constrained vases: their cost through the package's cal_cost
]


@pytest.mark.parametrize(("name", "steps", "horizon", "expect_goals"), CASES)
def test_adapter_fast_step_is_bit_identical_to_the_package_step(name, steps, horizon, expect_goals):
    task = _task_of(name)
    fast = make(name, task=task, num_envs=2, seed=11, horizon=horizon)
    slow = make(name, task=task, num_envs=2, seed=11, horizon=horizon, fast_step=False)
    assert fast.fast_step and fast.fast_step_reason == ""
    assert not slow.fast_step and slow.fast_step_reason == "off"
    rng = np.random.default_rng(5)
    try:
        obs_f, _ = fast.reset(seed=11)
        obs_s, _ = slow.reset(seed=11)
        assert np.array_equal(obs_f, obs_s)
        episodes = np.zeros(2, dtype=int)
        goals = costly = ends = 0
        for _ in range(steps):
            subs = [e.env.task for e in slow._local.envs]
            actions = np.stack([_seek(t, _target(t, int(k)), rng) for t, k in zip(subs, episodes)])
            out_f = fast.step(actions)
            out_s = slow.step(actions)
            for what, a, b in zip(("obs", "reward", "terminated", "truncated", "info"), out_f, out_s):
                _assert_same(a, b, what)
            done = out_s[2] | out_s[3]
            episodes += done
            ends += int(done.sum())
            goals += int(out_s[4]["goal_reached"].sum())
            costly += int((out_s[4]["cost"] > 0).sum())
    finally:
        fast.close()
        slow.close()
    assert ends >= 2 * (steps // horizon)  # many resets
    assert costly > 0  # cost channels exercised
    if expect_goals:
        assert goals > 0  # goal resampling (or a new goal button) exercised


def test_package_level_step_identical_with_goal_resampling_and_info():
    """FastStep.step against Builder.step directly: the package's own info dict (cost_sum, goal_met)
    and state (steps, last goal distance, button timer)."""
    spec = _EnvSpec("SafetyPointButton1-v0", None, 300, True)
    ref, env = spec.build(), spec.build()
    ref.reset(seed=4)
    env.reset(seed=4)
    fast = FastStep(env)
    rng = np.random.default_rng(0)
    met = pressed_wrong = 0
    for t in range(1200):
        target = ref.task.goal.pos if (t // 300) % 2 == 0 else ref.task.buttons.pos[0]
        action = _seek(ref.task, target, rng)
        a = ref.step(action)
        b = fast.step(action)
        for what, x, y in zip(("obs", "reward", "cost", "terminated", "truncated", "info"), a, b):
            assert np.array_equal(x, y), (t, what, x, y)
        assert set(a[5]) == set(b[5])
        assert ref.steps == env.steps and ref.task.buttons.timer == env.task.buttons.timer
        assert ref.task.last_dist_goal == env.task.last_dist_goal
        met += "goal_met" in a[5]
        pressed_wrong += a[5].get("cost_buttons", 0.0) > 0
        if a[3] or a[4]:
            ref.reset(seed=100 + t)
            env.reset(seed=100 + t)
    assert met > 0 and pressed_wrong > 0


def test_unsupported_tasks_fall_back_to_the_package_step():
    fast = make("SafetyPointPush1-v0", num_envs=1, seed=0, horizon=50)
    slow = make("SafetyPointPush1-v0", num_envs=1, seed=0, horizon=50, fast_step=False)
    try:
        assert not fast.fast_step
        assert "PushLevel1 is not a Goal, Button or Circle task" in fast.fast_step_reason
        fast.reset(seed=0)
        slow.reset(seed=0)
        rng = np.random.default_rng(1)
        for _ in range(60):
            action = rng.uniform(-1, 1, size=(1, fast.act_dim))
            for what, a, b in zip("ORTtI", fast.step(action), slow.step(action)):
                _assert_same(a, b, what)
    finally:
        fast.close()
        slow.close()


def test_fast_step_refuses_what_it_does_not_reproduce():
    env = _EnvSpec("SafetyPointGoal1-v0", None, 100, True).build()
    env.reset(seed=0)
    env.task.lidar_conf.max_dist = None
    assert fast_step_or_none(env) == (None, "GoalLevel1: exponential lidar (max_dist=None)")
    env.task.lidar_conf.max_dist = 3
    env.task.observe_vision = True
    with pytest.raises(UnsupportedTask, match="vision"):
        FastStep(env)
    env.task.observe_vision = False
    fast = FastStep(env)
    with pytest.raises(ValueError, match="Action dimension mismatch"):
        fast.step(np.zeros(3))


def test_worker_processes_use_the_fast_step():
    with make("safety-circle", num_envs=2, seed=0, num_workers=2, start_method="fork") as env:
        assert env.fast_step
        obs, _ = env.reset(seed=0)
        obs2, *_ = env.step(np.zeros((2, env.act_dim)))
    with make("safety-circle", num_envs=2, seed=0, fast_step=False) as ref:
        ref_obs, _ = ref.reset(seed=0)
        ref_obs2, *_ = ref.step(np.zeros((2, ref.act_dim)))
    assert np.array_equal(obs, ref_obs) and np.array_equal(obs2, ref_obs2)
