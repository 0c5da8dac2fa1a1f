"""Tests of the Safety-Gymnasium adapter (real package, MuJoCo; no rendering)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from rl.envs import safety_gym
from rl.envs.base import next_observations
from rl.envs.safety_gym import make, task_distribution
from rl.envs.safety_gym_import import import_safety_gymnasium, unhashable_defaults_to_factories
from rl.envs.safety_gym_tasks import (
    AGENT_KEEPOUT,
    BUTTON_KEEPOUT,
    GOAL_KEEPOUT,
    HAZARD_KEEPOUT,
    ButtonTask,
    CircleTask,
)

pytestmark = pytest.mark.safety


def _forward_actions(seed: int, steps: int) -> np.ndarray:
    """Mostly forward, random turning: reaches hazards/walls within an episode."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, 2))
    actions[:, 0] = 0.5 + 0.5 * np.abs(actions[:, 0])
    return actions


def _run_adapter(env, actions: np.ndarray, seed: int) -> dict:
    obs, _ = env.reset(seed=seed)
    out = {"obs": [obs[0]], "reward": [], "costs": [], "package_cost": [], "final": [], "done": []}
    for a in actions:
        obs, reward, term, trunc, info = env.step(a[None])
        cost = info["cost"]
        costs = [info["costs"][c][0] for c in env.cost_channels]
        assert cost[0] == pytest.approx(sum(costs), abs=0.0)
        out["obs"].append(obs[0])
        out["reward"].append(reward[0])
        out["costs"].append(costs)
        out["package_cost"].append(info["package_cost"][0])
        out["final"].append(next_observations(obs, info)[0])
        out["done"].append(bool(term[0] or trunc[0]))
    return {k: np.array(v) for k, v in out.items()}


def _run_raw(env_id: str, horizon: int, actions: np.ndarray, seed: int, channels) -> dict:
    env = import_safety_gymnasium().make(env_id, max_episode_steps=horizon)
    obs, _ = env.reset(seed=seed)
    out = {"obs": [obs], "reward": [], "costs": [], "package_cost": [], "final": [], "done": []}
    for a in actions:
        obs, reward, cost, term, trunc, info = env.step(a)
        out["final"].append(obs)
        out["done"].append(bool(term or trunc))
        if term or trunc:
            obs, _ = env.reset()
        out["obs"].append(obs)
        out["reward"].append(reward)
        out["costs"].append([info.get("cost_" + c, 0.0) for c in channels])
        out["package_cost"].append(cost)
    env.close()
    return {k: np.array(v) for k, v in out.items()}


def _assert_identical(ours: dict, ref: dict) -> None:
    for key in ref:
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


# --------------------------------------------------------------------------- import shim
def test_import_shim_loads_package_and_restores_dataclass():
    original = dataclasses.dataclass
    module = import_safety_gymnasium()
    assert module.__version__ == "1.0.0"
    assert dataclasses.dataclass is original
    assert import_safety_gymnasium() is module  # idempotent
    from safety_gymnasium.assets.color import COLOR
    from safety_gymnasium.assets.geoms import Hazards

    a, b = Hazards(), Hazards()
    np.testing.assert_array_equal(a.color, COLOR["hazard"])
    assert a.color is not b.color  # each instance gets its own copy


def test_unhashable_defaults_to_factories_fixes_what_python_311_rejects():
    def make_cls():
        class Thing:
            color: np.ndarray = np.array([1.0, 0.0, 0.0])
            size: list = dataclasses.field(default=[1, 2])  # noqa: RUF008
            name: str = "x"

        return Thing

    with pytest.raises(ValueError, match="mutable default"):
        dataclasses.dataclass(make_cls())
    cls = dataclasses.dataclass(unhashable_defaults_to_factories(make_cls()))
    first, second = cls(), cls()
    np.testing.assert_array_equal(first.color, [1.0, 0.0, 0.0])
    assert first.size == [1, 2] and first.name == "x"
    first.color[0] = 5.0
    assert second.color[0] == 1.0


# --------------------------------------------------------------------------- tasks
def test_task_distributions_draw_from_published_ranges():
    button = task_distribution("safety-button")
    assert button.name == "safety-button"
    train = button.sample(40, split="train", seed=0)
    test = button.sample(40, split="test", seed=0)
    for tasks, (lo, hi), (blo, bhi), extra in (
        (train, (1.75, 2.0), (3, 6), 3),
        (test, (2.6, 2.9), (6, 10), 6),
    ):
        sizes = np.array([t.half_size for t in tasks])
        buttons = np.array([t.num_buttons for t in tasks])
        assert sizes.min() >= lo and sizes.max() <= hi
        assert buttons.min() >= blo and buttons.max() <= bhi
        assert len(set(buttons.tolist())) >= 3  # the counts do vary
        for t in tasks:
            assert t.num_hazards == t.num_buttons + extra
            assert len(t.button_locations) == t.num_buttons
            assert len(t.hazard_locations) == t.num_hazards
            objects = [(p, BUTTON_KEEPOUT) for p in t.button_locations]
            objects += [(t.goal_location, GOAL_KEEPOUT)]
            objects += [(p, HAZARD_KEEPOUT) for p in t.hazard_locations]
            for i, (p, kp) in enumerate(objects):
                assert max(abs(p[0]), abs(p[1])) <= t.half_size - kp + 1e-6
                for q, kq in objects[:i]:
                    assert math.dist(p, q) >= kp + kq
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    # Deterministic in the seed, different across seeds and splits.
    assert button.sample(3, "train", seed=0) == train[:3]
    assert button.sample(3, "train", seed=1) != train[:3]

    circle = task_distribution("safety-circle")
    for split, (rlo, rhi), (wlo, whi) in (
        ("train", (1.0, 1.5), (0.55, 0.75)),
        ("test", (2.0, 2.5), (0.55, 0.65)),
    ):
        tasks = circle.sample(60, split=split, seed=3)
        radii = np.array([t.radius for t in tasks])
        ratios = np.array([t.wall_distance / t.radius for t in tasks])
        assert radii.min() >= rlo and radii.max() <= rhi and np.ptp(radii) > 0.3 * (rhi - rlo)
        assert ratios.min() >= wlo and ratios.max() <= whi
        # the start square lies inside the walls, so no episode starts with a cost
        assert all(t.agent_half_width < t.wall_distance for t in tasks)


def test_tasks_round_trip_through_json():
    for name in ("safety-button", "safety-circle"):
        for task in task_distribution(name).sample(2, split="test", seed=4):
            data = json.loads(json.dumps(task.to_dict()))
            assert data["family"] == name
            assert type(task).from_dict(data) == task
            hash(task)  # frozen and hashable


def test_make_without_task_uses_first_training_task_of_seed():
    env = make("safety-circle", seed=7)
    try:
        assert env.task == task_distribution("safety-circle").sample(1, "train", seed=7)[0]
        assert env.horizon == 500
    finally:
        env.close()


# --------------------------------------------------------------------------- the real package
def test_reset_step_cost_on_the_real_package():
    task = task_distribution("safety-circle").sample(1, "train", seed=0)[0]
    env = make("safety-circle", task=task, num_envs=2, seed=3, horizon=60)
    try:
        assert (env.obs_dim, env.act_dim) == (40, 2)
        assert env.cost_channels == ("out_of_boundary",)
        np.testing.assert_array_equal(env.action_low, [-1.0, -1.0])
        obs, _ = env.reset(seed=3)
        assert obs.shape == (2, 40) and obs.dtype == np.float64
        actions = np.stack([_forward_actions(1, 130), _forward_actions(2, 130)], axis=1)
        total_cost = np.zeros(2)
        total_reward = np.zeros(2)
        truncations = 0
        for t, a in enumerate(actions):
            obs, reward, term, trunc, info = env.step(a * 3.0)  # clipped to [-1, 1]
            cost = info["cost"]
            assert obs.dtype == np.float64 and reward.dtype == np.float64
            assert set(info["costs"]) == {"out_of_boundary"}
            np.testing.assert_array_equal(cost, info["costs"]["out_of_boundary"])
            total_cost += cost
            total_reward += reward
            if (t + 1) % 60 == 0:
                assert trunc.all() and not term.any()
                assert not np.array_equal(next_observations(obs, info), obs)  # auto-reset happened
                assert info["_final_observation"].all() and len(info["final_info"]) == 2
                truncations += 1
            else:
                assert not trunc.any()
                assert "final_observation" not in info
        assert truncations == 2
        assert total_cost.tolist() == [23.0, 48.0]  # the cars drive through the walls
        assert np.all(np.isfinite(total_reward)) and np.all(total_reward != 0)
    finally:
        env.close()


def test_sub_env_seeds_and_reset_seeding():
    env = make("safety-button", num_envs=2, seed=3, horizon=20)
    single = make("safety-button", task=env.task, num_envs=1, seed=4, horizon=20)
    try:
        first, _ = env.reset()  # the streams seeded at construction: seed + i
        again, _ = env.reset(seed=3)
        np.testing.assert_array_equal(first, again)
        other, _ = single.reset()
        np.testing.assert_array_equal(first[1], other[0])  # sub-env 1 <-> seed 4
        assert not np.array_equal(first[0], first[1])
        continued, _ = env.reset()  # a fresh episode of the same streams
        assert not np.array_equal(continued, first)
    finally:
        env.close()
        single.close()


def test_fast_reset_compiles_without_the_skybox():
    fast = make("SafetyPointGoal1-v0", seed=0, horizon=5)
    try:
        world = fast._groups[0].envs[0].env.task.world
        assert "skybox" not in world.xml_string
        assert 'name="matplane"' in world.xml_string  # the floor texture stays
        assert world.model.ntex == 1
    finally:
        fast.close()


@pytest.mark.parametrize(("env_id", "seeds"), [("SafetyPointButton2-v0", 3), ("SafetyPointGoal1-v0", 20)])
def test_fast_layout_sampler_draws_the_package_layouts(env_id, seeds):
    from safety_gymnasium.utils.random_generator import RandomGenerator

    env = make(env_id, seed=0, horizon=5)
    try:
        generator = env._groups[0].envs[0].env.task.random_generator
        fast_class = type(generator)
        assert fast_class is not RandomGenerator
        for seed in range(seeds):
            runs = []
            for cls in (RandomGenerator, fast_class):
                generator.__class__ = cls
                generator.set_random_seed(seed)
                layout = {k: v.copy() for k, v in generator.build_layout().items()}
                runs.append((layout, generator.random_generator.uniform()))
            (a, next_a), (b, next_b) = runs
            assert a.keys() == b.keys() and next_a == next_b  # same draws consumed
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        generator.__class__ = fast_class
    finally:
        env.close()


def test_identical_to_the_raw_package_for_a_raw_id():
    horizon, seed = 100, 0
    actions = _forward_actions(seed, 199)  # two episodes: across a reset
    env = make("SafetyPointGoal1-v0", seed=seed, horizon=horizon)
    try:
        ours = _run_adapter(env, actions, seed)
        channels = env.cost_channels
    finally:
        env.close()
    assert channels == ("hazards",)
    raw = _run_raw("SafetyPointGoal1-v0", horizon, actions, seed, channels)
    _assert_identical(ours, raw)
    assert ours["done"].sum() == 1
    assert ours["costs"].sum() == 15.0  # hazard steps in these 199 steps
    assert ours["obs"].shape == (200, 60)


def test_observation_space_check_is_skipped_only_in_our_instances():
    env = make("SafetyPointGoal1-v0", seed=0, horizon=10)
    raw = import_safety_gymnasium().make("SafetyPointGoal1-v0")
    try:
        ours = env._groups[0].envs[0].env.task.obs_info.obs_space_dict
        theirs = raw.unwrapped.task.obs_info.obs_space_dict
        bad = {key: np.full(space.shape, 1e9) for key, space in theirs.spaces.items()}
        assert not theirs.contains(bad)  # the package's own check is intact
        assert ours.contains(bad)  # ours skips it (it never changes an observation)
    finally:
        env.close()
        raw.close()


def test_fast_reset_identical_to_package_reset_for_a_task():
    task = task_distribution("safety-button").sample(1, "train", seed=2)[0]
    actions = _forward_actions(2, 199)
    runs = []
    for fast in (True, False):
        env = make("safety-button", task=task, seed=2, horizon=100, fast_reset=fast)
        try:
            runs.append(_run_adapter(env, actions, 2))
        finally:
            env.close()
    _assert_identical(runs[0], runs[1])
    assert runs[0]["costs"].sum(axis=0).tolist() == [14.0, 13.0]  # buttons, hazards
    assert runs[0]["obs"].shape == (200, 60)


def test_task_layout_is_pinned_across_resets():
    task = task_distribution("safety-button").sample(1, "test", seed=2)[0]
    env = make("safety-button", task=task, num_envs=1, seed=0, horizon=10)
    try:
        inner = env._groups[0].envs[0].env.task
        starts = []
        for seed in range(4):
            env.reset(seed=seed)
            buttons = np.array([p[:2] for p in inner.buttons.pos])
            hazards = np.array([p[:2] for p in inner.hazards.pos])
            np.testing.assert_allclose(buttons, task.button_locations, atol=1e-8)
            np.testing.assert_allclose(hazards, task.hazard_locations, atol=1e-8)
            agent = inner.agent.pos[:2].copy()
            starts.append(agent)
            # the agent starts clear of every object's keep-out
            for p, k in [(p, HAZARD_KEEPOUT) for p in task.hazard_locations] + [
                (p, BUTTON_KEEPOUT) for p in task.button_locations
            ]:
                assert math.dist(agent, p) >= AGENT_KEEPOUT + k
            goal = inner.goal.pos[:2]
            assert min(math.dist(goal, b) for b in task.button_locations) < 1e-8
        assert len({tuple(np.round(s, 6)) for s in starts}) == 4  # starts vary per episode
    finally:
        env.close()


def test_workers_match_in_process():
    task = task_distribution("safety-circle").sample(1, "train", seed=0)[0]
    actions = 3.0 * np.stack([_forward_actions(s, 130) for s in range(3)], axis=1)
    results = []
    for workers in (1, 2):
        env = make("safety-circle", task=task, num_envs=3, seed=3, horizon=60, num_workers=workers)
        try:
            rows = [env.reset()[0]]
            for a in actions:
                obs, reward, term, trunc, info = env.step(a)
                rows += [
                    obs,
                    reward,
                    info["cost"],
                    term,
                    trunc,
                    next_observations(obs, info),
                    info["package_cost"],
                ]
            rows.append(env.reset(seed=11)[0])
            processes = [g.process for g in env._groups if hasattr(g, "process")]
        finally:
            env.close()
        assert len(processes) == (0 if workers == 1 else 2)
        for p in processes:
            assert not p.is_alive() and p.exitcode == 0  # closed cleanly
        results.append(rows)
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sum(r.sum() for r in results[0][3::7]) > 0  # some costs occurred


def test_dispatcher_reaches_the_adapter():
    import rl.envs

    dist = rl.envs.task_distribution("safety-circle")
    task = dist.sample(1, split="train", seed=0)[0]
    env = rl.envs.make("safety-circle", task=task, num_envs=1, seed=0)
    try:
        assert isinstance(env, rl.envs.VecEnv)
        assert env.reset(seed=0)[0].shape == (1, 40)
    finally:
        env.close()


# --------------------------------------------------------------------------- errors
def test_bad_names_and_parameters_raise_value_error():
    with pytest.raises(ValueError, match="safety-button"):
        make("safety-buton")
    with pytest.raises(ValueError, match="SafetyPointGoal1-v0"):
        make("SafetyPointGoal9-v0")
    with pytest.raises(ValueError, match="no Vision"):
        make("SafetyPointGoal1Vision-v0")
    with pytest.raises(ValueError, match="takes no task"):
        make("SafetyPointGoal1-v0", task=CircleTask(1.2, 0.7))
    with pytest.raises(ValueError, match="needs a ButtonTask"):
        make("safety-button", task=CircleTask(1.2, 0.7))
    bad = ({"horizon": 0}, {"num_workers": 0}, {"num_envs": 0}, {"fast_reset": "yes"}, {"fast_step": 1})
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            make("safety-circle", **kwargs)
    with pytest.raises(ValueError, match="valid: task, num_envs, seed, horizon"):
        make("safety-circle", max_steps=10)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make("safety-circle", seed=-1)
    with pytest.raises(ValueError, match="start_method"):
        make("safety-circle", start_method="threads")
    with pytest.raises(ValueError, match="safety-circle"):
        task_distribution("safety-goal")
    with pytest.raises(ValueError, match="split"):
        task_distribution("safety-circle").sample(1, split="val")
    with pytest.raises(ValueError, match="positive int"):
        task_distribution("safety-circle").sample(0)
    with pytest.raises(ValueError, match=r"radius must lie in \[0.5, 3.0\]"):
        CircleTask(radius=5.0, wall_distance=3.0)
    with pytest.raises(ValueError, match="wall_distance must lie"):
        CircleTask(radius=1.0, wall_distance=0.1)
    with pytest.raises(ValueError, match="valid keys"):
        CircleTask.from_dict({"radius": 1.0, "wall_distance": 0.6, "colour": "red"})
    good = task_distribution("safety-button").sample(1, seed=0)[0].to_dict()
    crowded = dict(good, hazard_locations=[good["button_locations"][0]] * good["num_hazards"])
    with pytest.raises(ValueError, match="overlap"):
        ButtonTask.from_dict(crowded)
    with pytest.raises(ValueError, match="half_size must lie"):
        ButtonTask.from_dict(dict(good, half_size=9.0))
    env = make("safety-circle", num_envs=2, seed=0, horizon=5)
    try:
        with pytest.raises(ValueError, match=r"shape \(num_envs, act_dim\) = \(2, 2\)"):
            env.step(np.zeros((2, 3)))
    finally:
        env.close()
    assert "SafetyCarCircle1-v0" in safety_gym.raw_env_ids()


@pytest.mark.parametrize("workers", [1, 2])
def test_step_outputs_are_fresh_arrays_and_masks_stay_read_only(workers):
    """The step fills new arrays in place: nothing a caller holds is reused by a later step, each
    cost channel is its own array, the shared ``_key`` masks cannot be made writeable, and the
    action clip is np.clip's."""
    task = task_distribution("safety-button").sample(1, "train", seed=0)[0]
    envs = [make("safety-button", task=task, num_envs=2, seed=1, horizon=60, num_workers=workers)]
    envs.append(make("safety-button", task=task, num_envs=2, seed=1, horizon=60))
    try:
        actions = 3.0 * np.stack([_forward_actions(s, 70) for s in (4, 5)], axis=1)
        for env in envs:
            env.reset(seed=1)
        held, kept = [], []
        for a in actions:
            out = envs[0].step(a)  # out of bounds: clipped inside
            clipped = envs[1].step(np.clip(a, envs[1].action_low, envs[1].action_high))
            for x, y in zip(out[:4], clipped[:4], strict=True):
                np.testing.assert_array_equal(x, y)
            obs, reward, term, trunc, info = out
            costs = info["costs"]
            assert set(costs) == {"buttons", "hazards"}
            np.testing.assert_array_equal(info["cost"], costs["buttons"] + costs["hazards"])
            np.testing.assert_array_equal(costs["hazards"], clipped[4]["costs"]["hazards"])
            for key in ("_cost", "_costs", "_goal_reached", "_package_cost"):
                assert info[key].tolist() == [True, True] and not info[key].flags.writeable
                with pytest.raises(ValueError, match="WRITEABLE"):
                    info[key].flags.writeable = True
            arrays = [obs, reward, term, trunc, info["cost"], costs["buttons"], costs["hazards"]]
            held.append(arrays)
            kept.append([x.copy() for x in arrays])
            costs["buttons"][:] = -7.0  # the caller's to change: touches no other array
            assert not (costs["hazards"] == -7.0).any() and not (info["cost"] == -7.0).any()
        assert sum(k[6].sum() for k in kept) == 16  # hazard steps of the two robots
        assert sum(k[3].sum() for k in kept) == 2  # one truncation per sub-environment
        for arrays, copies in zip(held, kept, strict=True):
            for x, y in zip(arrays[:5] + arrays[6:], copies[:5] + copies[6:], strict=True):
                np.testing.assert_array_equal(x, y)  # later steps wrote nothing into them
    finally:
        for env in envs:
            env.close()


def test_assets_yaml_is_parsed_once_and_handed_out_as_fresh_copies():
    """The package re-parses its constant assets file at every reset; the adapter keeps the first
    parse and gives each reset a deep copy: equal to a fresh parse, never shared between resets,
    and the same observations, rewards and costs as with PyYAML at every reset."""
    import os

    import yaml

    task = task_distribution("safety-button").sample(1, "train", seed=4)[0]
    actions = _forward_actions(4, 150)
    runs = []
    try:
        for cached in (False, True):
            env = make("safety-button", task=task, seed=4, horizon=50)  # 3 resets within the run
            safety_gym._cache_world_yaml(cached)
            try:
                runs.append(_run_adapter(env, actions, 4))
            finally:
                env.close()
        world = __import__("safety_gymnasium.world", fromlist=["yaml"])
        cached = vars(world)["yaml"]
        assert isinstance(cached, safety_gym._CachedYAML)
        path = os.path.join(world.BASE_DIR, "configs", "assets" + ".yaml")
        with open(path, encoding="utf-8") as f:
            fresh = yaml.load(f, Loader=yaml.FullLoader)
        with open(path, encoding="utf-8") as f:
            first = cached.load(f, Loader=yaml.FullLoader)
        with open(path, encoding="utf-8") as f:
            second = cached.load(f, Loader=yaml.FullLoader)
        assert first == fresh == second and first is not second
        assert first["textures"]["skybox"] is not second["textures"]["skybox"]
        assert cached.FullLoader is yaml.FullLoader  # the rest is PyYAML's
    finally:
        safety_gym._cache_world_yaml(True)
    _assert_identical(runs[0], runs[1])
    assert runs[0]["costs"].sum() > 0 and runs[0]["done"].sum() == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_step_final_leaves_ended_episodes_unreset_and_changes_no_later_number(workers):
    """A batch's last step (``step_final``) does not reset the sub-environments whose episode ends
    there: their rows hold the final observation, stepping them again is refused until a reset,
    and after a seeded reset every result is the one after a plain ``step``."""
    import torch

    from rl.policy import GaussianPolicy, ObsNormalizer
    from rl.rollout import run_segment

    task = task_distribution("safety-circle").sample(1, "train", seed=1)[0]
    segments = []
    for final in (True, False):
        env = make("safety-circle", task=task, num_envs=2, seed=5, horizon=40, num_workers=workers)
        try:
            if not final:  # what run_segment does without step_final: every last step resets
                env.step_final = env.step
            pi = GaussianPolicy(env.obs_dim, env.act_dim, hidden=(8,))
            params = pi.init_params(torch.Generator().manual_seed(0))
            gen = torch.Generator().manual_seed(1)
            segments.append(
                [run_segment(env, pi, params, 40, ObsNormalizer(env.obs_dim), gen, s) for s in (7, 8, 9)]
            )
            if final:
                with pytest.raises(RuntimeError, match="reset the environment before stepping it again"):
                    env.step(np.zeros((2, env.act_dim)))  # the last segment's episodes ended unreset
                env.reset(seed=3)
                obs, _, term, trunc, info = env.step_final(np.zeros((2, env.act_dim)))  # mid-episode
                assert not (term | trunc).any()
                for _ in range(38):
                    env.step(np.zeros((2, env.act_dim)))
                obs, _, _, trunc, info = env.step_final(np.zeros((2, env.act_dim)))  # both episodes end
                assert trunc.all() and np.array_equal(obs, np.stack(info["final_observation"]))
                with pytest.raises(RuntimeError, match="reset the environment before stepping it again"):
                    env.step(np.zeros((2, env.act_dim)))
                env.reset(seed=3)
                env.step(np.zeros((2, env.act_dim)))
        finally:
            env.close()
    for a, b in zip(*segments, strict=True):
        for name in ("obs", "next_obs", "reward", "cost", "terminated", "done"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.act, b.act) and torch.equal(a.logp, b.logp)
    assert segments[0][0].done[-1].all()  # every segment ends with its episodes
