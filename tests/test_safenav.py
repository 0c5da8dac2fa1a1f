"""Tests of the built-in safe navigation tasks (rl.envs.safenav)."""

from __future__ import annotations

import json
import math

import gymnasium
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.envs import make as dispatch_make
from rl.envs import safenav as sn
from rl.envs import task_distribution as dispatch_distribution
from rl.envs.base import VecEnv, next_observations

DECAY = math.exp(-sn.DAMPING * sn.DT)


def goal_task(**overrides) -> sn.SafeNavTask:
    """One hazard at the origin (radius 0.3) in a 2x2 half-size arena."""
    kwargs = dict(
        family="safenav-goal",
        arena_half_size=2.0,
        hazard_radius=0.3,
        hazard_positions=((0.0, 0.0),),
        goal_radius=0.3,
    )
    kwargs.update(overrides)
    return sn.SafeNavTask(**kwargs)


def button_task() -> sn.SafeNavTask:
    """Three buttons (radius 0.1) and one far hazard."""
    return sn.SafeNavTask(
        family="safenav-button",
        arena_half_size=2.0,
        hazard_radius=0.2,
        hazard_positions=((-1.5, -1.5),),
        button_radius=0.1,
        button_positions=((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0)),
    )


def still(n: int) -> np.ndarray:
    return np.zeros((n, 2))


def step6(env, actions):
    """``env.step`` with the cost taken out of the info: ``(obs, reward, cost, terminated,
    truncated, info)``."""
    obs, reward, terminated, truncated, info = env.step(actions)
    return obs, reward, info["cost"], terminated, truncated, info


# ----------------------------------------------------------- reward and cost


def test_hazard_cost_inside_and_not_outside():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=3)
    env.reset(seed=0)
    env.set_state(position=[[0.0, 0.0], [0.29, 0.0], [0.0, 0.31]], velocity=[0.0, 0.0], goal=[1.5, 1.5])
    _, reward, cost, terminated, truncated, info = step6(env, still(3))
    np.testing.assert_array_equal(cost, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(info["costs"]["hazards"], [1.0, 1.0, 0.0])
    assert info["costs"]["hazards"].dtype == np.float64
    assert env.cost_channels == ("hazards",)
    assert set(info["costs"]) == {"hazards"}
    np.testing.assert_array_equal(reward, [0.0, 0.0, 0.0])  # no motion, no progress
    assert not terminated.any() and not truncated.any()


def test_progress_reward_equals_distance_gained():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=2)
    env.reset(seed=0)
    # Both robots coast at speed 1 along +x; the goal is ahead of one, behind the other.
    env.set_state(
        position=[[-1.5, 1.0], [-1.5, -1.0]],
        heading=0.0,
        velocity=[1.0, 0.0],
        goal=[[1.5, 1.0], [-1.9, -1.0]],
    )
    obs, reward, cost, *_ = step6(env, still(2))
    moved = sn.DT * DECAY  # one step of the damped velocity
    np.testing.assert_allclose(reward, [moved, -moved], rtol=1e-12)
    np.testing.assert_allclose(env.robot_positions[:, 0], -1.5 + moved, rtol=1e-12)
    np.testing.assert_array_equal(cost, [0.0, 0.0])
    # Ego-centric goal vector: straight ahead for env 0, straight behind for env 1.
    np.testing.assert_allclose(obs[0, :3], [1.0, 0.0, math.exp(-(3.0 - moved))], atol=1e-12)
    np.testing.assert_allclose(obs[1, :3], [-1.0, 0.0, math.exp(-(0.4 + moved))], atol=1e-12)
    np.testing.assert_allclose(obs[:, 3:5], [[DECAY, 0.0], [DECAY, 0.0]], atol=1e-12)


def test_thrust_and_turn_dynamics():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=1)
    env.reset(seed=0)
    env.set_state(position=[-1.0, -1.0], heading=0.0, velocity=[0.0, 0.0], goal=[1.5, 1.5])
    step6(env, np.array([[1.0, 1.0]]))
    turned = sn.DT * sn.MAX_TURN_RATE
    assert env.robot_headings[0] == pytest.approx(turned)
    push = sn.DT * sn.THRUST
    expected = np.array([-1.0, -1.0]) + sn.DT * push * np.array([math.cos(turned), math.sin(turned)])
    np.testing.assert_allclose(env.robot_positions[0], expected, rtol=1e-12)
    # Actions outside [-1, 1] are clipped: thrust 5 acts like thrust 1.
    env.set_state(position=[-1.0, -1.0], heading=0.0, velocity=[0.0, 0.0])
    step6(env, np.array([[5.0, 0.0]]))
    np.testing.assert_allclose(env.robot_positions[0], [-1.0 + sn.DT * push, -1.0], rtol=1e-12)


def test_walls_clip_position_and_stop_velocity():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=1)
    env.reset(seed=0)
    limit = 2.0 - sn.ROBOT_RADIUS
    env.set_state(position=[limit - 0.01, 1.0], heading=0.0, velocity=[1.0, 0.5], goal=[-1.5, -1.5])
    obs, *_ = step6(env, still(1))
    np.testing.assert_allclose(env.robot_positions[0], [limit, 1.0 + sn.DT * 0.5 * DECAY])
    np.testing.assert_allclose(obs[0, 3:5], [0.0, 0.5 * DECAY], atol=1e-12)  # x-velocity stopped


def test_reaching_goal_pays_bonus_and_draws_new_goal():
    region = (-1.8, -1.2, -1.8, -1.2)
    env = sn.make("safenav-goal", task=goal_task(goal_regions=(region,)), num_envs=1)
    env.reset(seed=0)
    env.set_state(position=[1.0, 1.0], velocity=[0.0, 0.0], goal=[1.2, 1.0])
    obs, reward, cost, _, _, info = step6(env, still(1))
    assert reward[0] == pytest.approx(sn.GOAL_BONUS)  # no progress, only the bonus
    assert info["goal_reached"][0]
    goal = env.goal_positions[0]
    assert region[0] <= goal[0] <= region[1] and region[2] <= goal[1] <= region[3]
    dist = np.linalg.norm(goal - np.array([1.0, 1.0]))
    assert obs[0, 2] == pytest.approx(math.exp(-dist))  # the observation shows the new goal
    # Progress is measured to the new goal from now on: no jump in the next reward.
    _, reward, *_ = step6(env, still(1))
    assert reward[0] == pytest.approx(0.0)


def test_new_goals_avoid_hazards_and_keep_distance():
    task = goal_task(min_goal_distance=1.5)
    env = sn.make("safenav-goal", task=task, num_envs=64, seed=3)
    env.reset()
    for _ in range(5):
        env.set_state(goal=env.robot_positions)  # every robot sits on its goal
        _, reward, *_ = step6(env, still(64))
        np.testing.assert_allclose(reward, sn.GOAL_BONUS)
        goals, pos = env.goal_positions, env.robot_positions
        assert (np.linalg.norm(goals, axis=1) > task.hazard_radius + task.goal_radius).all()
        assert (np.linalg.norm(goals - pos, axis=1) >= 1.5).all()


def test_button_costs_and_presses():
    env = sn.make("safenav-button", task=button_task(), num_envs=2)
    assert env.cost_channels == ("hazards", "buttons")
    env.reset(seed=0)
    # Env 0 touches button 1 (wrong), env 1 touches button 0 (its goal).
    env.set_state(position=[[-1.15, 0.0], [1.15, 0.0]], velocity=[0.0, 0.0], goal=0)
    _, reward, cost, _, _, info = step6(env, still(2))
    np.testing.assert_array_equal(info["costs"]["buttons"], [1.0, 0.0])
    np.testing.assert_array_equal(info["costs"]["hazards"], [0.0, 0.0])
    np.testing.assert_array_equal(cost, [1.0, 0.0])
    np.testing.assert_array_equal(info["goal_reached"], [False, True])
    assert reward[1] == pytest.approx(sn.GOAL_BONUS)
    assert reward[0] == pytest.approx(0.0)
    new_goal = env.goal_buttons[1]
    assert new_goal in (1, 2)
    np.testing.assert_array_equal(env.goal_positions[1], button_task().button_positions[new_goal])
    # The button just pressed is exempt while the robot stays on it.
    _, reward, cost, _, _, info = step6(env, still(2))
    np.testing.assert_array_equal(info["costs"]["buttons"], [1.0, 0.0])
    assert reward[1] == pytest.approx(0.0)
    # Leave it and come back: now it is a wrong button.
    env.set_state(position=[[-1.15, 0.0], [1.5, 1.5]])
    step6(env, still(2))
    env.set_state(position=[[-1.15, 0.0], [1.15, 0.0]])
    _, _, cost, _, _, info = step6(env, still(2))
    np.testing.assert_array_equal(info["costs"]["buttons"], [1.0, 1.0])


def test_button_and_hazard_costs_add():
    task = sn.SafeNavTask(
        family="safenav-button",
        arena_half_size=2.0,
        hazard_radius=0.3,
        hazard_positions=((1.0, 1.0),),
        button_positions=((1.2, 1.0), (-1.0, -1.0)),
    )
    env = sn.make("safenav-button", task=task, num_envs=1)
    env.reset(seed=0)
    env.set_state(position=[1.05, 1.0], velocity=[0.0, 0.0], goal=1)
    _, _, cost, _, _, info = step6(env, still(1))
    assert info["costs"]["hazards"][0] == 1.0 and info["costs"]["buttons"][0] == 1.0
    assert cost[0] == 2.0


def test_lidar_bins_and_values():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=2)
    env.reset(seed=0)
    # Hazard 1.3 ahead (surface distance 1.0) and hazard 1.3 to the left.
    obs = env.set_state(position=[[-1.3, 0.0], [0.0, -1.3]], heading=[0.0, 0.0], goal=[1.5, 1.5])
    lidar = obs[:, sn.OBS_LAYOUT["hazard_lidar"]]
    expected = 1.0 - 1.0 / sn.LIDAR_RANGE
    np.testing.assert_allclose(lidar[0], np.eye(sn.LIDAR_BINS)[0] * expected, atol=1e-12)
    np.testing.assert_allclose(lidar[1], np.eye(sn.LIDAR_BINS)[4] * expected, atol=1e-12)
    np.testing.assert_array_equal(obs[:, sn.OBS_LAYOUT["button_lidar"]], 0.0)


def test_obs_shape_is_fixed_across_families_and_splits():
    dims = set()
    for family in sn.FAMILIES:
        for split in ("train", "test"):
            for task in sn.task_distribution(family).sample(3, split=split, seed=1):
                env = sn.make(family, task=task, num_envs=2)
                obs, info = env.reset(seed=0)
                assert obs.dtype == np.float64 and info == {}
                dims.add(obs.shape[1])
                assert env.obs_dim == obs.shape[1]
    assert dims == {sn.OBS_DIM} == {37}


# ------------------------------------------------------------ episodes, seeds


def test_truncation_at_horizon_with_final_obs():
    task = goal_task()
    env5 = sn.make("safenav-goal", task=task, num_envs=3, seed=7, horizon=5)
    env6 = sn.make("safenav-goal", task=task, num_envs=3, seed=7, horizon=6)
    o5, _ = env5.reset()
    o6, _ = env6.reset()
    np.testing.assert_array_equal(o5, o6)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(6, 3, 2))
    for t in range(5):
        o5, r5, c5, term5, trunc5, info5 = step6(env5, actions[t])
        o6, r6, c6, term6, trunc6, info6 = step6(env6, actions[t])
        np.testing.assert_array_equal(r5, r6)
        assert not term5.any()
        assert trunc5.all() == (t == 4) and trunc5.any() == (t == 4)
    assert not trunc6.any()
    # The finished episode's last observation is what the longer env sees now.
    np.testing.assert_array_equal(next_observations(o5, info5), o6)
    assert not np.array_equal(o5, o6)  # env5 already shows the next episode
    np.testing.assert_array_equal(env5.episode_steps, [0, 0, 0])
    # The next episode runs to the horizon again.
    for t in range(5):
        o5, _, _, _, trunc5, info5 = step6(env5, actions[t])
        if t < 4:
            np.testing.assert_array_equal(next_observations(o5, info5), o5)
    assert trunc5.all()


def test_default_horizon_is_200():
    env = sn.make("safenav-goal", num_envs=2)
    assert env.horizon == sn.DEFAULT_HORIZON == 200
    env.reset(seed=0)
    truncated_at = []
    for t in range(1, 201):
        *_, terminated, truncated, _ = step6(env, still(2))
        assert not terminated.any()
        if truncated.any():
            truncated_at.append(t)
    assert truncated_at == [200]


def run(env: sn.SafeNavVecEnv, steps: int, seed: int) -> list[np.ndarray]:
    """Goal-seeking actions with noise (reaches goals, crosses the horizon)."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset()
    out = [obs]
    for _ in range(steps):
        noise = rng.normal(0, 0.3, size=(env.num_envs, 2))
        obs, reward, cost, _, trunc, info = step6(env, sn.goal_seeking_actions(obs) + noise)
        out += [obs, reward, cost, trunc, next_observations(obs, info), info["goal_reached"]]
    return out


@pytest.mark.parametrize("family", sn.FAMILIES)
def test_identical_seeds_identical_results(family):
    task = sn.task_distribution(family).sample(1, seed=4)[0]
    a = run(sn.make(family, task=task, num_envs=3, seed=11, horizon=40), 90, 0)
    b = run(sn.make(family, task=task, num_envs=3, seed=11, horizon=40), 90, 0)
    c = run(sn.make(family, task=task, num_envs=3, seed=12, horizon=40), 90, 0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("family", sn.FAMILIES)
def test_vectorised_matches_separate_single_envs(family):
    task = sn.task_distribution(family).sample(1, seed=2)[0]
    n, steps, horizon = 4, 120, 50
    rng = np.random.default_rng(0)
    vec = sn.make(family, task=task, num_envs=n, seed=20, horizon=horizon)
    singles = [sn.make(family, task=task, num_envs=1, seed=20 + i, horizon=horizon) for i in range(n)]
    obs, _ = vec.reset()
    single_obs = np.concatenate([e.reset()[0] for e in singles])
    np.testing.assert_array_equal(obs, single_obs)
    goals = 0
    for _ in range(steps):
        actions = sn.goal_seeking_actions(obs) + rng.normal(0, 0.3, size=(n, 2))
        obs, reward, cost, _, trunc, info = step6(vec, actions)
        outs = [step6(e, actions[i : i + 1]) for i, e in enumerate(singles)]
        np.testing.assert_array_equal(obs, np.concatenate([o[0] for o in outs]))
        np.testing.assert_array_equal(reward, np.concatenate([o[1] for o in outs]))
        np.testing.assert_array_equal(cost, np.concatenate([o[2] for o in outs]))
        np.testing.assert_array_equal(trunc, np.concatenate([o[4] for o in outs]))
        final = np.concatenate([next_observations(o[0], o[5]) for o in outs])
        np.testing.assert_array_equal(next_observations(obs, info), final)
        goals += int(info["goal_reached"].sum())
    assert goals >= 4  # goal events (random draws) happened along the way


def test_reset_seed_reseeds_each_sub_env():
    task = goal_task()
    env = sn.make("safenav-goal", task=task, num_envs=3, seed=0)
    first, _ = env.reset()
    step6(env, np.ones((3, 2)))
    again, _ = env.reset(seed=0)
    np.testing.assert_array_equal(first, again)
    other, _ = env.reset(seed=5)
    fresh, _ = sn.make("safenav-goal", task=task, num_envs=3, seed=5).reset()
    np.testing.assert_array_equal(other, fresh)
    single, _ = sn.make("safenav-goal", task=task, num_envs=1, seed=7).reset()
    np.testing.assert_array_equal(other[2], single[0])  # sub-env 2 is seeded 5 + 2
    cont, _ = env.reset()  # seed=None continues the streams
    assert not np.array_equal(cont, other)


def test_step_before_reset_and_bad_actions():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=2)
    with pytest.raises(RuntimeError, match="reset"):
        step6(env, still(2))
    env.reset()
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        step6(env, np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        step6(env, np.full((2, 2), np.nan))


# --------------------------------------------------------------- tasks, ranges


@settings(max_examples=15, deadline=None)
@given(
    family=st.sampled_from(sn.FAMILIES),
    split=st.sampled_from(["train", "test"]),
    seed=st.integers(0, 2**31),
)
def test_sampled_tasks_lie_in_their_ranges(family, split, seed):
    dist = sn.task_distribution(family)
    r = dist.ranges(split)
    tasks = dist.sample(3, split=split, seed=seed)
    assert len(tasks) == 3
    for task in tasks:
        assert task.family == family
        assert r.arena_half_size[0] <= task.arena_half_size <= r.arena_half_size[1]
        assert r.num_hazards[0] <= task.num_hazards <= r.num_hazards[1]
        assert r.hazard_radius[0] <= task.hazard_radius <= r.hazard_radius[1]
        assert r.num_buttons[0] <= task.num_buttons <= r.num_buttons[1]
        haz = np.asarray(task.hazard_positions)
        assert (np.abs(haz) <= task.arena_half_size).all()
        gaps = np.linalg.norm(haz[:, None] - haz[None], axis=-1) + np.eye(len(haz)) * 99
        assert gaps.min() >= 2 * task.hazard_radius  # hazards do not overlap
        if task.num_buttons:
            btn = np.asarray(task.button_positions)
            assert np.linalg.norm(btn[:, None] - haz[None], axis=-1).min() > task.hazard_radius
    assert dist.sample(3, split=split, seed=seed) == tasks  # same seed, same tasks


@pytest.mark.parametrize("family", sn.FAMILIES)
def test_test_split_lies_outside_training_ranges(family):
    dist = sn.task_distribution(family)
    assert dist.name == family
    assert dist.test.arena_half_size[0] > dist.train.arena_half_size[1]
    assert dist.test.num_hazards[0] > dist.train.num_hazards[1]
    if family == "safenav-button":
        assert dist.test.num_buttons[0] > dist.train.num_buttons[1]
    train = dist.sample(20, split="train", seed=0)
    test = dist.sample(20, split="test", seed=0)
    assert max(t.arena_half_size for t in train) < min(t.arena_half_size for t in test)
    assert max(t.num_hazards for t in train) < min(t.num_hazards for t in test)


def test_dispatcher_routes_to_safenav():
    dist = dispatch_distribution("safenav-button")
    tasks = dist.sample(2, split="train", seed=0)
    env = dispatch_make("safenav-button", task=tasks[0], num_envs=4, seed=0, horizon=30)
    assert isinstance(env, VecEnv) and isinstance(env, sn.SafeNavVecEnv)
    assert env.horizon == 30 and env.num_envs == 4
    default = sn.make("safenav-goal", seed=3)
    assert default.task == sn.task_distribution("safenav-goal").sample(1, "train", seed=3)[0]


#: The names ``rl.envs.safenav`` offered when it was one module (tests, benchmarks, docs, pickles).
MODULE_NAMES = (
    "DAMPING DEFAULT_HORIZON DT FAMILIES GOAL_BONUS LIDAR_BINS LIDAR_RANGE MAX_TURN_RATE OBS_DIM "
    "OBS_LAYOUT PROGRESS_SCALE ROBOT_RADIUS SPLITS THRUST VELOCITY_BOUND SafeNavDistribution "
    "SafeNavGymEnv SafeNavTask SafeNavVecEnv SplitRanges corridor_task goal_seeking_actions make "
    "observation_bounds task_distribution register_gymnasium_envs"
).split()


def test_the_package_keeps_every_name_of_the_former_module(monkeypatch):
    import importlib
    import pickle

    from rl.envs.safenav import distribution, env, simulator, task

    assert set(MODULE_NAMES) <= set(sn.__all__)
    for name in MODULE_NAMES:
        assert getattr(importlib.import_module("rl.envs.safenav"), name) is getattr(sn, name)
    # each object is the one its module defines, not a copy
    assert sn.SafeNavTask is task.SafeNavTask and sn.corridor_task is task.corridor_task
    assert sn.SafeNavDistribution is distribution.SafeNavDistribution
    assert sn.SafeNavVecEnv is env.SafeNavVecEnv and sn.SafeNavGymEnv is env.SafeNavGymEnv
    assert sn.observation_bounds is simulator.observation_bounds
    assert (sn.OBS_DIM, sn.DEFAULT_HORIZON, sn.FAMILIES) == (37, 200, ("safenav-goal", "safenav-button"))
    # a task pickled when the class lived in rl.envs.safenav itself still loads
    monkeypatch.setattr(sn.SafeNavTask, "__module__", "rl.envs.safenav")
    old = pickle.dumps(button_task())
    assert b"rl.envs.safenav\n" in old or b"rl.envs.safenav\x94" in old
    monkeypatch.undo()
    assert pickle.loads(old) == button_task()


@settings(max_examples=20, deadline=None)
@given(family=st.sampled_from(sn.FAMILIES), seed=st.integers(0, 10**6))
def test_to_dict_from_dict_round_trip(family, seed):
    task = sn.task_distribution(family).sample(1, split="test", seed=seed)[0]
    data = json.loads(json.dumps(task.to_dict()))
    assert sn.SafeNavTask.from_dict(data) == task
    corridor = sn.corridor_task()
    assert sn.SafeNavTask.from_dict(json.loads(json.dumps(corridor.to_dict()))) == corridor
    env = sn.make(family, task=data, num_envs=1)  # dicts are accepted too
    assert env.task == task


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sn.make("safenav-maze"), "safenav-goal"),
        (lambda: sn.task_distribution("goal"), "safenav-button"),
        (lambda: goal_task(arena_half_size=-1.0), "arena_half_size"),
        (lambda: goal_task(hazard_radius=0.0), "hazard_radius"),
        (lambda: goal_task(hazard_radius=-0.2), "hazard_radius"),
        (lambda: goal_task(goal_radius=float("nan")), "goal_radius"),
        (lambda: goal_task(hazard_positions=((3.0, 0.0),)), "inside the arena"),
        (lambda: goal_task(goal_regions=((1.0, 0.0, 0.0, 1.0),)), "x_low < x_high"),
        (lambda: goal_task(min_goal_distance=-1.0), "min_goal_distance"),
        (lambda: goal_task(button_positions=((1.0, 1.0),)), "no buttons"),
        (lambda: goal_task(family="safenav-ball"), "family"),
        (
            lambda: sn.SafeNavTask("safenav-button", 2.0, button_positions=((1.0, 1.0),)),
            "at least 2",
        ),
        (lambda: sn.task_distribution("safenav-goal").sample(2, split="val"), "split"),
        (lambda: sn.task_distribution("safenav-goal").sample(0), "n must be"),
        (lambda: sn.SafeNavTask.from_dict({"family": "safenav-goal", "size": 2}), "valid keys"),
        (lambda: sn.make("safenav-goal", task=goal_task(), horizon=0), "horizon"),
        (lambda: sn.make("safenav-goal", task=goal_task(), num_envs=0), "num_envs"),
        (lambda: sn.make("safenav-button", task=goal_task()), "does not match"),
        (lambda: sn.corridor_task(hazard_radius=2.0), "hazard_radius"),
        (lambda: sn.corridor_task(arena_half_size=0.5), "arena_half_size"),
    ],
)
def test_bad_names_and_parameters_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unknown_make_option_is_rejected():
    with pytest.raises(TypeError, match="horizon"):
        sn.make("safenav-goal", task=goal_task(), horizont=100)


# ------------------------------------------------------------- unsafe by design


def detour_actions(env: sn.SafeNavVecEnv, clearance: float) -> np.ndarray:
    """Head for the goal, but via a waypoint beside the central hazard."""
    pos, heading, goal = env.robot_positions, env.robot_headings, env.goal_positions
    side = np.where(pos[:, 1] >= 0, 1.0, -1.0)
    crossing = np.sign(pos[:, 0]) != np.sign(goal[:, 0])
    target = np.where(crossing[:, None], np.stack([0 * side, side * clearance], 1), goal)
    near = np.linalg.norm(target - pos, axis=1) < 0.25
    target = np.where(near[:, None], goal, target)
    d = target - pos
    bearing = np.arctan2(d[:, 1], d[:, 0]) - heading
    bearing = np.mod(bearing + np.pi, 2 * np.pi) - np.pi
    return np.stack([np.clip(np.cos(bearing), 0, 1), np.clip(2 * bearing, -1, 1)], 1)


def test_corridor_direct_path_costs_and_detour_is_safe():
    task = sn.corridor_task()
    assert task.num_hazards == 1 and task.start_region is not None
    n = 16
    env = sn.make("safenav-goal", task=task, num_envs=n, seed=0, horizon=200)
    obs, _ = env.reset()
    starts, goals = env.robot_positions, env.goal_positions
    assert (starts[:, 0] < -0.9).all() and (goals[:, 0] > 0.9).all()
    assert (np.abs(starts[:, 1]) <= 0.2).all() and (np.abs(goals[:, 1]) <= 0.2).all()
    straight = dict(cost=0.0, ret=0.0, goals=0)
    for _ in range(200):
        obs, r, c, _, _, info = step6(env, sn.goal_seeking_actions(obs))
        straight["cost"] += c.sum() / n
        straight["ret"] += r.sum() / n
        straight["goals"] += info["goal_reached"].sum() / n
    env.reset(seed=0)
    detour = dict(cost=0.0, ret=0.0, goals=0)
    for _ in range(200):
        _, r, c, _, _, info = step6(env, detour_actions(env, task.hazard_radius + 0.35))
        detour["cost"] += c.sum() / n
        detour["ret"] += r.sum() / n
        detour["goals"] += info["goal_reached"].sum() / n
    assert straight["goals"] >= 4 and straight["cost"] >= 30  # the direct path pays
    assert detour["goals"] >= 3 and detour["cost"] == 0.0  # the detour is safe
    assert detour["ret"] > 0.5 * straight["ret"]


def test_sampled_goal_tasks_are_unsafe_for_a_greedy_policy():
    tasks = sn.task_distribution("safenav-goal").sample(4, split="train", seed=0)
    costs = []
    for task in tasks:
        env = sn.make("safenav-goal", task=task, num_envs=32, seed=0, horizon=200)
        obs, _ = env.reset()
        total = 0.0
        for _ in range(200):
            obs, _, c, _, _, _ = step6(env, sn.goal_seeking_actions(obs))
            total += c.sum()
        costs.append(total / 32)
    assert min(costs) > 1.0 and np.mean(costs) > 4.0


# -------------------------------------------------------- render and gymnasium


def test_render_draws_robot_hazard_and_goal():
    env = sn.make("safenav-goal", task=goal_task(), num_envs=2)
    env.reset(seed=0)
    env.set_state(position=[[-1.0, 1.0], [1.0, -1.0]], heading=0.0, goal=[[1.0, 1.0], [-1, -1]])
    img = env.render(index=0, size=210)
    assert img.shape == (210, 210, 3) and img.dtype == np.uint8
    scale = 210 / (2 * 1.05 * 2.0)

    def pixel(x, y):
        return img[int((2.1 - y) * scale), int((x + 2.1) * scale)]

    np.testing.assert_array_equal(pixel(-1.0, 1.06), [215, 40, 40])  # robot body
    np.testing.assert_array_equal(pixel(-0.85, 1.0), [30, 30, 30])  # heading bar points +x
    assert pixel(0.0, 0.0)[2] > pixel(0.0, 0.0)[0]  # blue hazard
    assert pixel(1.0, 1.0)[1] > 150 > pixel(1.0, 1.0)[0]  # green goal
    assert (pixel(-1.7, -1.7) == [235, 235, 228]).all()  # empty floor
    assert not np.array_equal(env.render(index=1, size=210), img)
    with pytest.raises(ValueError, match="index"):
        env.render(index=2)


def test_gymnasium_make_goal_and_button():
    sn.register_gymnasium_envs()  # registering twice is harmless
    env = gymnasium.make("SafeNavGoal-v0", horizon=3, render_mode="rgb_array")
    obs, info = env.reset(seed=4)
    assert obs.shape == (sn.OBS_DIM,) and obs.dtype == np.float64
    reference = sn.make("safenav-goal", seed=0, horizon=3)
    ref_obs, _ = reference.reset(seed=4)
    np.testing.assert_array_equal(obs, ref_obs[0])
    for t in range(3):
        action = np.array([1.0, 0.2])
        obs, reward, terminated, truncated, info = env.step(action)
        ref = step6(reference, action[None])
        assert reward == ref[1][0] and info["cost"] == ref[2][0]
        assert info["costs"] == {"hazards": ref[5]["costs"]["hazards"][0]}
        assert terminated is False and truncated == (t == 2)
    np.testing.assert_array_equal(obs, next_observations(ref[0], ref[5])[0])  # last obs, not the reset one
    assert env.render().shape == (256, 256, 3)
    env.close()

    button = gymnasium.make("SafeNavButton-v0")
    obs, _ = button.reset(seed=0)
    obs, reward, terminated, truncated, info = button.step(button.action_space.sample())
    assert set(info["costs"]) == {"hazards", "buttons"}
    assert info["cost"] == sum(info["costs"].values())
    assert isinstance(reward, float) and obs.shape == (sn.OBS_DIM,)
