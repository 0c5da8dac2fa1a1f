"""Tests for rl.rollout: GAE at truncation/termination, stored log-probs, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl.envs.base import with_final
from rl.policy import Critic, GaussianPolicy, ObsNormalizer
from rl.rollout import Batch, collect, discounted_cumsum, gae

torch.set_num_threads(1)


class TinyEnv:
    """Deterministic 2-env vector env (rl.envs.base protocol): obs = steps taken in the episode.

    Env 0 earns reward 1 per step and is truncated at ``horizon``; env 1 earns 2 per
    step and terminates after ``terminate_at`` steps (never if ``None``). Cost channel
    "hazard" is 1 on a step that lands on obs 2; channel "other" is 0.5 every step.
    Actions are ignored.
    """

    num_envs = 2
    obs_dim = 1
    act_dim = 1
    cost_channels = ("hazard", "other")
    task = None
    action_low = -np.ones(1)
    action_high = np.ones(1)

    def __init__(self, horizon: int = 3, terminate_at: int | None = 2) -> None:
        self.horizon = horizon
        self.terminate_at = terminate_at
        self.k = np.zeros(2)
        self.seeds: list[int | None] = []

    def reset(self, *, seed=None, options=None):
        self.seeds.append(seed)
        self.k = np.zeros(2)
        return self.k[:, None].copy(), {}

    def step(self, actions):
        assert actions.shape == (2, 1) and actions.dtype == np.float64
        self.k = self.k + 1
        reward = np.array([1.0, 2.0])
        hazard = (self.k == 2).astype(np.float64)
        other = np.full(2, 0.5)
        terminated = np.array([False, self.terminate_at is not None and self.k[1] >= self.terminate_at])
        truncated = (self.k >= self.horizon) & ~terminated
        final_obs = self.k[:, None].copy()
        done = terminated | truncated
        self.k[done] = 0.0
        info = {
            "cost": hazard + other,
            "costs": {"hazard": hazard, "other": other},
            "goal_reached": np.zeros(2, dtype=bool),
        }
        if done.any():  # Gymnasium's final_observation / final_info
            with_final(info, np.flatnonzero(done), final_obs[done], 2)
        return self.k[:, None].copy(), reward, terminated, truncated, info

    def close(self):
        pass


def _linear_critic(weight, bias) -> Critic:
    weight = torch.as_tensor(weight, dtype=torch.float64)
    critic = Critic(1, out_dim=weight.shape[0], hidden=())
    with torch.no_grad():
        critic.net[0].weight.copy_(weight)
        critic.net[0].bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return critic


def _tiny_batch(gen_seed: int = 0, **kwargs) -> tuple[Batch, GaussianPolicy, torch.Tensor, ObsNormalizer]:
    env = kwargs.pop("env", None) or TinyEnv()
    pi = GaussianPolicy(1, 1, hidden=(4,))
    gen = torch.Generator().manual_seed(gen_seed)
    params = pi.init_params(gen)
    norm = ObsNormalizer(1, eps=0.0)  # identity before the first update
    v_r = _linear_critic([[1.0]], [0.0])  # V(o) = o
    v_c = _linear_critic([[1.0], [0.0]], [0.0, 0.2])  # V_hazard(o) = o, V_other = 0.2
    batch = collect(env, pi, params, 8, norm, v_r, v_c, generator=gen, **kwargs)
    return batch, pi, params, norm


def test_gae_hand_computed_with_truncation_and_termination():
    batch, _, _, norm = _tiny_batch(gamma=0.5, lam=0.5, cost_gamma=1.0, cost_lam=0.0)
    # Rows are time-major: row = t * num_envs + env.
    # Env 0 (V(o) = o, r = 1): obs 0,1,2 | truncated, final_obs 3 | 0, batch end -> V(1).
    #   deltas 1.5, 1.0, 0.5 (bootstrap 0.5 * V(3) = 1.5), 1.5
    #   A3 = 1.5, A2 = 0.5 (episode end), A1 = 1 + 0.25 * 0.5, A0 = 1.5 + 0.25 * A1
    # Env 1 (r = 2): obs 0,1 | terminated (value 0) | 0,1 | terminated.
    #   deltas 2.5, 1.0, 2.5, 1.0 -> A = 2.75, 1, 2.75, 1
    adv_env0 = [1.78125, 1.125, 0.5, 1.5]
    adv_env1 = [2.75, 1.0, 2.75, 1.0]
    obs_env0 = [0.0, 1.0, 2.0, 0.0]
    obs_env1 = [0.0, 1.0, 0.0, 1.0]
    adv = np.array([adv_env0, adv_env1]).T.reshape(-1)
    values = np.array([obs_env0, obs_env1]).T.reshape(-1)
    np.testing.assert_allclose(batch.obs[:, 0].numpy(), values)
    np.testing.assert_allclose(batch.ret_r.numpy(), adv + values, rtol=1e-12)
    np.testing.assert_allclose(batch.adv_r.numpy(), (adv - adv.mean()) / (adv.std() + 1e-8), rtol=1e-9)

    # Costs with cost_gamma = 1, cost_lam = 0 (one-step TD errors).
    # hazard: c = 1 on landing on obs 2, V = o; other: c = 0.5, V = 0.2.
    hazard_env0 = [0 + 1 - 0, 1 + 2 - 1, 0 + 3 - 2, 0 + 1 - 0]  # truncation bootstraps V(3)
    hazard_env1 = [0 + 1 - 0, 1 + 0 - 1, 0 + 1 - 0, 1 + 0 - 1]  # termination: value 0
    other_env0 = [0.5, 0.5, 0.5, 0.5]
    other_env1 = [0.5, 0.3, 0.5, 0.3]
    adv_c = np.stack(
        [
            np.array([hazard_env0, hazard_env1], dtype=float).T.reshape(-1),
            np.array([other_env0, other_env1]).T.reshape(-1),
        ],
        axis=1,
    )
    v_c = np.stack([values, np.full(8, 0.2)], axis=1)
    np.testing.assert_allclose(batch.ret_c.numpy(), adv_c + v_c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(batch.adv_c.numpy(), adv_c - adv_c.mean(0), atol=1e-12)
    np.testing.assert_allclose(batch.adv_c.mean(0).numpy(), 0.0, atol=1e-12)

    # Episodes finished: env 0 one (len 3, return 3, costs (1, 1.5)); env 1 two
    # (len 2, return 4, costs (1, 1.0) each).
    assert batch.num_episodes == 3
    assert batch.ep_ret == pytest.approx(11 / 3)
    assert batch.ep_len == pytest.approx(7 / 3)
    np.testing.assert_allclose(batch.ep_cost, [1.0, 3.5 / 3])
    assert batch.env_steps == 8 and batch.cost_channels == ("hazard", "other")
    assert batch.ep_cost_total == pytest.approx(1.0 + 3.5 / 3)
    # the normaliser saw the 8 observations after the batch
    assert norm.count == 8
    assert float(norm.mean[0]) == pytest.approx(values.mean())


def test_gae_function_matches_discounted_sum_without_episode_ends():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 3))
    zeros = np.zeros((6, 3))
    no = np.zeros((6, 3), dtype=bool)
    adv = gae(r, zeros, zeros, no, no, gamma=0.9, lam=1.0)
    np.testing.assert_allclose(adv, discounted_cumsum(r, 0.9), rtol=1e-12)


def test_stored_logp_equals_policy_log_prob():
    batch, pi, params, _ = _tiny_batch()
    torch.testing.assert_close(batch.logp, pi.log_prob(params, batch.obs, batch.act), rtol=1e-12, atol=1e-12)
    assert batch.logp.dtype == torch.float64


def test_extrapolated_episode_figures_without_finished_episodes():
    env = TinyEnv(horizon=100, terminate_at=None)
    batch, _, _, _ = _tiny_batch(env=env)
    assert batch.num_episodes == 0
    assert batch.ep_len == 100.0
    assert batch.ep_ret == pytest.approx(1.5 * 100)  # mean reward per step (1 and 2) x horizon
    # hazard: 1 on one step of 4 per env
    np.testing.assert_allclose(batch.ep_cost, [0.25 * 100, 0.5 * 100])


def test_episode_costs_and_their_standard_error_on_safenav():
    from rl.envs import make

    env = make("safenav-button", num_envs=4, seed=0)
    pi = GaussianPolicy(env.obs_dim, env.act_dim, hidden=(8,))
    gen = torch.Generator().manual_seed(0)
    params = pi.init_params(gen)
    norm = ObsNormalizer(env.obs_dim)
    batch = collect(env, pi, params, 1600, norm, Critic(env.obs_dim), Critic(env.obs_dim, 2), generator=gen)
    costs = batch.episode_costs
    assert costs.shape == (batch.num_episodes, 2) == (8, 2)
    np.testing.assert_allclose(costs.mean(0), batch.ep_cost, rtol=1e-12)
    expected = np.array([np.std(costs[:, j], ddof=1) / np.sqrt(8) for j in range(2)])
    np.testing.assert_allclose(batch.ep_cost_sem, expected, rtol=1e-12)
    assert float(batch.ep_cost_sem.max()) > 0
    # without finished episodes there is no standard error to report
    env1 = TinyEnv(horizon=100, terminate_at=None)
    extrapolated, _, _, _ = _tiny_batch(env=env1)
    assert extrapolated.episode_costs.shape == (0, 2)
    assert extrapolated.ep_cost_sem.tolist() == [0.0, 0.0]


def test_batch_to_dtype():
    batch, _, _, _ = _tiny_batch()
    b32 = batch.to(torch.float32)
    assert b32.obs.dtype == torch.float32 and b32.adv_c.dtype == torch.float32
    assert b32.ep_ret == batch.ep_ret and batch.obs.dtype == torch.float64


def test_bad_arguments():
    env = TinyEnv()
    pi = GaussianPolicy(1, 1, hidden=(4,))
    gen = torch.Generator().manual_seed(0)
    params = pi.init_params(gen)
    norm = ObsNormalizer(1)
    v_r, v_c = _linear_critic([[1.0]], [0.0]), _linear_critic([[1.0], [0.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="num_steps"):
        collect(env, pi, params, 1, norm, v_r, v_c, generator=gen)
    with pytest.raises(ValueError, match="out_dim 2"):
        collect(env, pi, params, 8, norm, v_r, v_r, generator=gen)
    with pytest.raises(ValueError, match="gamma"):
        collect(env, pi, params, 8, norm, v_r, v_c, gamma=1.5, generator=gen)
    with pytest.raises(ValueError, match="obs_dim"):
        collect(env, GaussianPolicy(3, 1), params, 8, norm, v_r, v_c, generator=gen)


def test_identical_seeds_identical_batches_on_safenav():
    from rl.envs import make

    def run(seed: int) -> Batch:
        env = make("safenav-goal", num_envs=2, seed=0)
        pi = GaussianPolicy(env.obs_dim, env.act_dim, hidden=(16, 16))
        gen = torch.Generator().manual_seed(seed)
        params = pi.init_params(gen)
        crit_gen = torch.Generator().manual_seed(1)
        v_r = Critic(env.obs_dim, 1, hidden=(16,), generator=crit_gen)
        v_c = Critic(env.obs_dim, len(env.cost_channels), hidden=(16,), generator=crit_gen)
        norm = ObsNormalizer(env.obs_dim)
        collect(env, pi, params, 400, norm, v_r, v_c, generator=gen)  # moves the normaliser
        return collect(env, pi, params, 600, norm, v_r, v_c, generator=gen)

    a, b, c = run(3), run(3), run(4)
    for name in Batch._TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.ep_ret == b.ep_ret and np.array_equal(a.ep_cost, b.ep_cost)
    assert not torch.equal(a.act, c.act)
    assert a.env_steps == 600 and a.num_episodes == 2 and a.ep_len == 200.0
    # normalised observations: roughly standardised after the first batch
    assert float(a.obs.abs().max()) <= 10.0


def _sharded_batches(pool, shards: int = 3) -> list[Batch]:
    """Two consecutive sharded batches of one safenav task (6 sub-environments)."""
    from rl.envs import task_distribution
    from rl.rollout import EnvSpec, collect_sharded

    task = task_distribution("safenav-button").sample(1, seed=0)[0]
    spec = EnvSpec("safenav-button", task, 6, (("horizon", 50),))
    env = spec.make()
    pi = GaussianPolicy(env.obs_dim, env.act_dim, hidden=(16,))
    gen = torch.Generator().manual_seed(0)
    params = pi.init_params(gen)
    crit_gen = torch.Generator().manual_seed(1)
    v_r = Critic(env.obs_dim, 1, hidden=(16,), generator=crit_gen)
    v_c = Critic(env.obs_dim, len(env.cost_channels), hidden=(16,), generator=crit_gen)
    norm = ObsNormalizer(env.obs_dim)
    return [
        collect_sharded(pool, spec, pi, params, 600, norm, v_r, v_c, shards=shards, generator=gen)
        for _ in range(2)
    ]


def _assert_same_batches(batches: list[Batch], ref: list[Batch]) -> None:
    for a, b in zip(batches, ref, strict=True):
        for name in Batch._TENSORS:
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert (a.ep_ret, a.num_episodes, a.num_envs) == (b.ep_ret, b.num_episodes, b.num_envs)
        assert np.array_equal(a.episode_costs, b.episode_costs)


def test_sharded_batches_do_not_depend_on_where_the_shards_run():
    from rl.runtime.parallel import TaskPool

    ref = _sharded_batches(None)
    assert ref[0].env_steps == 600 and ref[0].num_envs == 6 and ref[0].num_episodes == 12
    assert not torch.equal(ref[0].act, ref[1].act)  # the second batch draws new seeds
    _assert_same_batches(_sharded_batches(TaskPool("serial")), ref)
    for workers in (1, 2):
        with TaskPool("processes", workers=workers) as pool:
            _assert_same_batches(_sharded_batches(pool), ref)
    # another split is another (valid) batch
    other = _sharded_batches(None, shards=2)
    assert other[0].env_steps == 600 and not torch.equal(other[0].act, ref[0].act)


def test_shard_slices():
    from rl.rollout import shard_slices

    assert shard_slices(7, 3) == [(0, 3), (3, 2), (5, 2)]
    assert shard_slices(2, 5) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match="shards must be a positive int, got 0"):
        shard_slices(4, 0)


def _reference_segment(env, pi, params, steps, norm, gen, reset_seed):
    """run_segment written plainly with the policy's public methods: one normalize, one
    mean_log_std, one torch.randn per vector step (the per-step code run_segment replaces)."""
    from rl.envs.base import next_observations

    channels = env.cost_channels
    obs, _ = env.reset(seed=reset_seed)
    out = {k: [] for k in ("obs", "next_obs", "act", "logp", "reward", "cost", "terminated", "done")}
    for _ in range(steps):
        out["obs"].append(obs.copy())
        mean, log_std = pi.mean_log_std(params, norm.normalize(obs, dtype=params.dtype))
        noise = torch.randn(mean.shape, generator=gen, dtype=params.dtype)
        act = mean + torch.exp(log_std) * noise
        logp = -0.5 * (noise * noise).sum(-1) - log_std.sum() - 0.5 * pi.act_dim * np.log(2 * np.pi)
        out["act"].append(act)
        out["logp"].append(logp)
        obs, reward, term, trunc, info = env.step(act.numpy().astype(np.float64))
        out["cost"].append(np.stack([info["costs"][c] for c in channels], axis=-1))
        out["next_obs"].append(next_observations(obs, info))
        out["reward"].append(reward)
        out["terminated"].append(term)
        out["done"].append(term | trunc)
    return {k: torch.stack(v) if k in ("act", "logp") else np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize(
    ("hidden", "dtype", "num_envs"),
    [((16, 16), torch.float64, 3), ((8,), torch.float32, 2), ((), torch.float64, 2)],
)
def test_run_segment_matches_the_plain_per_step_loop_bit_for_bit(hidden, dtype, num_envs):
    from rl.envs import make
    from rl.rollout import run_segment

    env = make("safenav-goal", num_envs=num_envs, seed=0)
    pi = GaussianPolicy(env.obs_dim, env.act_dim, hidden=hidden)
    params = pi.init_params(torch.Generator().manual_seed(2)).to(dtype)
    params[-env.act_dim :] = torch.linspace(-0.7, 0.2, env.act_dim, dtype=dtype)  # log-std
    norm = ObsNormalizer(env.obs_dim, clip=1.5)  # clipping is active for some observations
    norm.update(np.random.default_rng(0).normal(size=(64, env.obs_dim)) * 0.5 + 0.3)
    steps = 230  # safenav episodes last 200 steps: one episode end inside the segment
    seg = run_segment(env, pi, params, steps, norm, torch.Generator().manual_seed(9), 5)
    ref = _reference_segment(env, pi, params, steps, norm, torch.Generator().manual_seed(9), 5)
    assert seg.done.sum() == num_envs and seg.done[199].all()
    assert seg.act.dtype == seg.logp.dtype == dtype
    for name in ("act", "logp"):
        assert torch.equal(getattr(seg, name), ref[name]), name
    for name in ("obs", "next_obs", "reward", "cost", "terminated", "done"):
        np.testing.assert_array_equal(getattr(seg, name), ref[name], err_msg=name)
    # the successor of the last step of an episode is its final observation, not the next reset
    assert not np.array_equal(seg.next_obs[199], seg.obs[200])
