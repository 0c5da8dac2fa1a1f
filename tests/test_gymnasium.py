"""Gymnasium's conventions on every task family: check_env on the single environments,
the VectorEnv protocol (spaces, autoreset keys, costs in info) on the vectorised ones."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl.envs
from rl.envs.base import EpisodeVecEnv, SingleEnv, SplitMix64Streams, next_observations
from rl.envs.registration import GYMNASIUM_IDS

SAFETY_IDS = {i for i, (entry, _) in GYMNASIUM_IDS.items() if "safety_gym" in entry}


def _param(env_id: str):
    return pytest.param(env_id, marks=pytest.mark.safety) if env_id in SAFETY_IDS else env_id


@pytest.mark.parametrize("env_id", [_param(i) for i in GYMNASIUM_IDS])
def test_check_env_passes_without_warnings(env_id):
    env = gymnasium.make(env_id, horizon=20)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert [str(w.message) for w in caught] == []
        assert np.isfinite(env.observation_space.low).all() and np.isfinite(env.observation_space.high).all()
        # a full episode stays inside the observation space; the last step reports truncation
        obs, _ = env.reset(seed=3)
        env.action_space.seed(0)
        for t in range(20):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs), (t, obs)
            assert isinstance(reward, float) and isinstance(info["cost"], float)
            assert info["cost"] == pytest.approx(sum(info["costs"].values()), abs=0.0)
            assert truncated == (t == 19) and terminated is False
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["SafeNavGoal-v0", "SafeNavButton-v0"])
def test_unseeded_environments_differ_and_seeded_ones_agree(env_id):
    first = [gymnasium.make(env_id).reset()[0] for _ in range(2)]
    assert not np.array_equal(first[0], first[1])
    seeded = [gymnasium.make(env_id).reset(seed=5)[0] for _ in range(2)]
    np.testing.assert_array_equal(seeded[0], seeded[1])


VECTOR_FAMILIES = [
    pytest.param(f, marks=pytest.mark.safety) if f in rl.envs.SAFETY_FAMILIES else f for f in rl.envs.FAMILIES
]


@pytest.mark.parametrize("family", VECTOR_FAMILIES)
def test_vector_env_protocol(family):
    horizon = 6
    env = rl.envs.make(family, num_envs=3, seed=0, horizon=horizon)
    try:
        assert isinstance(env, gymnasium.vector.VectorEnv) and isinstance(env, rl.envs.VecEnv)
        single = env.single_observation_space
        assert single.shape == (env.obs_dim,) and single.dtype == np.float64
        assert env.observation_space.shape == (3, env.obs_dim)
        assert env.single_action_space.shape == (env.act_dim,) and env.action_space.shape == (3, env.act_dim)
        np.testing.assert_array_equal(env.single_action_space.low, env.action_low)
        obs, info = env.reset(seed=[4, 5, 6])
        again, _ = env.reset(seed=4)  # an int seeds sub-environment i with seed + i
        np.testing.assert_array_equal(obs, again)
        assert env.observation_space.contains(obs)
        env.action_space.seed(1)
        for t in range(horizon):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert reward.shape == terminated.shape == truncated.shape == (3,)
            assert terminated.dtype == truncated.dtype == bool
            assert info["cost"].shape == (3,) and info["_cost"].all()
            np.testing.assert_array_equal(info["cost"], sum(info["costs"].values()))
            assert set(info["costs"]) == set(env.cost_channels)
            assert info["goal_reached"].dtype == bool
            if t < horizon - 1:
                assert "final_observation" not in info and not truncated.any()
                assert next_observations(obs, info) is obs
        assert truncated.all()
        assert info["_final_observation"].all() and info["_final_info"].all()
        assert info["final_observation"].dtype == object and info["final_observation"][0].shape == (
            env.obs_dim,
        )
        final = next_observations(obs, info)
        assert env.observation_space.contains(final) and not np.array_equal(final, obs)
        assert info["final_info"][1]["cost"] == info["cost"][1]
        assert info["final_info"][1]["costs"] == {ch: v[1] for ch, v in info["costs"].items()}
    finally:
        env.close()


def test_gymnasium_wrappers_run_on_the_vector_env():
    env = gymnasium.wrappers.RecordEpisodeStatistics(
        rl.envs.make("safenav-button", num_envs=2, seed=0, horizon=4)
    )
    env.reset(seed=0)
    for _ in range(4):
        _, reward, _, truncated, info = env.step(np.zeros((2, 2)))
    assert truncated.all() and info["_episode"].all()
    assert info["episode"]["l"].tolist() == [4, 4]
    env.close()


def test_bad_seeds_are_refused():
    env = rl.envs.make("safenav-goal", num_envs=2, seed=0)
    with pytest.raises(ValueError, match="one int per sub-environment"):
        env.reset(seed=[1, 2, 3])
    with pytest.raises(TypeError, match="seed must be an int"):
        env.reset(seed="7")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        env.reset(seed=-1)


# ------------------------------------------------------------------ the shared bookkeeping
class _Line(EpisodeVecEnv):
    """A toy family on EpisodeVecEnv: a point on a line moved by ``action[0]``; reward is the
    move, channel ``"far"`` costs 1 beyond |x| > 1, channel ``"push"`` 1 while ``action[1] > 0``;
    the goal is x > 2; episodes start at a uniform draw of the sub-environment's stream."""

    def __init__(self, num_envs=2, seed=0, horizon=3):
        low, high = -10 * np.ones(1), 10 * np.ones(1)
        act = np.ones(2)
        super().__init__(None, num_envs, seed, horizon, low, high, -act, act, ("far", "push"), "line")
        self.x = np.zeros(self.num_envs)

    def _reset_envs(self, idx):
        self.x[idx] = self._streams.uniform(idx, 1)[:, 0]

    def _observe(self, idx=None):
        return self.x[slice(None) if idx is None else idx, None].copy()

    def _simulate(self, a):
        self.x = self.x + a[:, 0]
        costs = {"far": (np.abs(self.x) > 1).astype(float), "push": (a[:, 1] > 0).astype(float)}
        return a[:, 0].copy(), costs, self.x > 2


class _LineEnv(SingleEnv):
    def __init__(self, seed=None):
        self._wrap(_Line(num_envs=1, seed=self.random_seed() if seed is None else seed, horizon=3))


def test_episode_bookkeeping_of_the_shared_base():
    env = _Line(num_envs=2, seed=7, horizon=3)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(np.zeros((2, 2)))
    obs, info = env.reset()
    start = SplitMix64Streams(2, 7).uniform(np.arange(2), 1)  # sub-env i seeded 7 + i
    np.testing.assert_array_equal(obs, start)
    assert info == {} and env.obs_dim == 1 and env.act_dim == 2 and env.cost_channels == ("far", "push")
    # actions are clipped to [-1, 1]: sub-env 0 moves +1 (asked 5), sub-env 1 moves -0.5
    obs, reward, terminated, truncated, info = env.step(np.array([[5.0, 1.0], [-0.5, -1.0]]))
    np.testing.assert_array_equal(reward, [1.0, -0.5])
    np.testing.assert_array_equal(obs[:, 0], start[:, 0] + [1.0, -0.5])
    np.testing.assert_array_equal(info["costs"]["push"], [1.0, 0.0])
    np.testing.assert_array_equal(info["costs"]["far"], [1.0, 0.0])  # x0 = start + 1 > 1
    np.testing.assert_array_equal(info["cost"], [2.0, 0.0])
    assert not truncated.any() and not terminated.any() and "final_observation" not in info
    assert env.episode_steps.tolist() == [1, 1]
    env.step(np.array([[1.0, 0.0], [0.0, 0.0]]))
    before = env._observe()
    obs, reward, terminated, truncated, info = env.step(np.array([[1.0, 0.0], [0.0, 1.0]]))
    # the third step ends both episodes: the final observation is the last state, obs the new start
    assert truncated.tolist() == [True, True] and not terminated.any()
    final = next_observations(obs, info)
    np.testing.assert_array_equal(final, before + [[1.0], [0.0]])
    np.testing.assert_array_equal(obs, SplitMix64Streams(2, 7).uniform(np.arange(2), 2)[:, 1:])
    assert info["final_info"][0] == {"cost": 1.0, "goal_reached": True, "costs": {"far": 1.0, "push": 0.0}}
    assert info["final_info"][1] == {"cost": 1.0, "goal_reached": False, "costs": {"far": 0.0, "push": 1.0}}
    assert env.episode_steps.tolist() == [0, 0]
    # reset(seed=s) reseeds sub-env i with s + i
    np.testing.assert_array_equal(env.reset(seed=3)[0], SplitMix64Streams(2, 3).uniform(np.arange(2), 1))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 2\), got \(2,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="actions must be finite"):
        env.step(np.array([[np.nan, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        _Line(num_envs=0)
    with pytest.raises(ValueError, match="horizon must be an int >= 1, got 0"):
        _Line(horizon=0)
    with pytest.raises(TypeError, match="seed must be an int, got '1'"):
        _Line(seed="1")


def test_single_env_adapter_reports_scalars_and_the_final_observation():
    env = _LineEnv(seed=4)
    obs, info = env.reset(seed=4)
    np.testing.assert_array_equal(obs, SplitMix64Streams(1, 4).uniform(np.arange(1), 1)[0])
    for t in range(3):
        out, reward, terminated, truncated, info = env.step(np.array([0.5, 1.0]))
        assert reward == 0.5 and isinstance(reward, float)
        assert info == {"cost": info["costs"]["far"] + 1.0, "goal_reached": False, "costs": info["costs"]}
        assert isinstance(info["cost"], float) and isinstance(info["goal_reached"], bool)
        assert truncated == (t == 2) and terminated is False
    np.testing.assert_array_equal(out, obs + 1.5)  # the episode's last observation, not a new start
    with pytest.raises(ValueError, match=r"action must have shape \(2,\), got \(3,\)"):
        env.step(np.zeros(3))
    assert not np.array_equal(_LineEnv().reset()[0], _LineEnv().reset()[0])  # unseeded ones differ
