"""Sampling a vectorised environment and generalised advantage estimation (GAE).

:func:`collect` runs a policy on a :class:`rl.envs.base.VecEnv` and returns a
:class:`Batch`: normalised observations, actions, behaviour log-probabilities, reward
and per-channel cost advantages, critic targets and per-episode figures.

Units (they matter for CPO; see the concepts page of the docs). The constraint value is measured
per *episode*: ``b_j = J_Cj - limit_j`` with ``J_Cj`` the mean undiscounted cost of an
episode in channel ``j`` (``Batch.ep_cost``, the "EpCost" that OmniSafe and the
Meta-CPO paper report). The cost surrogate is therefore put in the same units::

    L_C(phi) = ep_len * mean_t(ratio_t * adv_c_t),   ratio_t = exp(logp_phi(a_t|s_t) - logp_beh_t)

a first-order estimate of the change of EpCost when the policy moves from the
behaviour policy to ``phi`` (an episode has ``ep_len`` steps, each contributing its
expected advantage), so ``a = grad L_C`` and ``b`` share units. The reward surrogate
``L_R(phi) = mean_t(ratio_t * adv_r_t)`` is left per step with normalised advantages:
the CPO step is invariant to the scale of ``g`` (only ``lam`` and ``nu`` rescale).
The behaviour log-probabilities are constants of the data: the dependence of the
sampling distribution on the parameters is not differentiated (the MAML-TRPO
estimator; see :mod:`rl.cpo` and :mod:`rl.meta_cpo`).

Episode boundaries. GAE never runs across an episode boundary. At *termination* the
value of the next state is 0; at *truncation* (time limit) and at the end of the
batch the critic's value of the last observation (``info["final_observation"]``) is the
bootstrap. Every call to :func:`collect` starts fresh episodes (``env.reset`` with a
seed drawn from ``generator``), so a batch holds data of one policy only.

>>> import torch
>>> from rl.envs import make
>>> from rl.policy import Critic, GaussianPolicy, ObsNormalizer
>>> env = make("safenav-goal", num_envs=2, seed=0)
>>> pi = GaussianPolicy(env.obs_dim, env.act_dim, hidden=(16,))
>>> gen = torch.Generator().manual_seed(0)
>>> params = pi.init_params(gen)
>>> batch = collect(env, pi, params, 400, ObsNormalizer(env.obs_dim),
...                 Critic(env.obs_dim), Critic(env.obs_dim, 1), generator=gen)
>>> batch.obs.shape[0], batch.num_episodes, batch.ep_len
(400, 2, 200.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rl.envs.base import VecEnv, next_observations
from rl.policy import Critic, GaussianPolicy, ObsNormalizer

__all__ = [
    "Batch",
    "EnvSpec",
    "Segment",
    "assemble",
    "collect",
    "collect_sharded",
    "discounted_cumsum",
    "gae",
    "gather_sharded",
    "run_segment",
    "sample_shard",
    "shard_slices",
    "submit_sharded",
]


@dataclass
class Batch:
    """One batch of on-policy data (``T`` = number of env steps, ``C`` = cost channels).

    Attributes:
        obs: ``(T, obs_dim)`` observations, normalised with the statistics frozen at
            the start of the batch (the ones the policy acted on).
        act: ``(T, act_dim)`` actions as sampled (before the environment clips them).
        logp: ``(T,)`` behaviour log-probabilities of ``act`` (constants of the data).
        adv_r: ``(T,)`` reward GAE advantages, normalised to mean 0 and std 1.
        adv_c: ``(T, C)`` cost GAE advantages per channel, centred (mean 0), not scaled.
        ret_r: ``(T,)`` reward critic targets (TD(lambda) returns, ``adv + value``).
        ret_c: ``(T, C)`` cost critic targets.
        ep_ret: Mean undiscounted return of the episodes finished in the batch.
        ep_cost: ``(C,)`` mean undiscounted per-episode cost per channel.
        ep_len: Mean episode length.
        num_episodes: Episodes finished in the batch (0: the figures above are
            extrapolated from the unfinished ones, see :func:`collect`).
        env_steps: Environment steps in the batch (``T``).
        cost_channels: Names of the cost channels.
        num_envs: Sub-environments the batch was stepped in; row ``i`` of the tensors
            comes from sub-environment ``i % num_envs`` (time-major layout).
        episode_costs: ``(E, C)`` undiscounted cost of every finished episode per channel
            (``None``: not recorded); :attr:`ep_cost_sem` is computed from it.
    """

    obs: Tensor
    act: Tensor
    logp: Tensor
    adv_r: Tensor
    adv_c: Tensor
    ret_r: Tensor
    ret_c: Tensor
    ep_ret: float
    ep_cost: np.ndarray
    ep_len: float
    num_episodes: int
    env_steps: int
    cost_channels: tuple[str, ...]
    num_envs: int = 1
    episode_costs: np.ndarray | None = None

    _TENSORS = ("obs", "act", "logp", "adv_r", "adv_c", "ret_r", "ret_c")

    def to(self, dtype: torch.dtype) -> Batch:
        """A copy whose tensors have floating dtype ``dtype``."""
        return replace(self, **{name: getattr(self, name).to(dtype) for name in self._TENSORS})

    @property
    def ep_cost_sem(self) -> np.ndarray:
        """``(C,)`` standard error of :attr:`ep_cost` over the finished episodes (0 with fewer
        than two episodes recorded)."""
        costs = self.episode_costs
        if costs is None or len(costs) < 2:
            return np.zeros(len(self.cost_channels))
        return np.std(costs, axis=0, ddof=1) / np.sqrt(len(costs))

    @property
    def ep_cost_total(self) -> float:
        """Per-episode cost summed over channels."""
        return float(np.sum(self.ep_cost))

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{f.name}={tuple(getattr(self, f.name).shape)}" for f in fields(self) if f.name in self._TENSORS
        )
        return (
            f"Batch({shapes}, ep_ret={self.ep_ret:.4g}, ep_cost={np.round(self.ep_cost, 4).tolist()}, "
            f"ep_len={self.ep_len:.4g}, num_episodes={self.num_episodes}, env_steps={self.env_steps})"
        )


def discounted_cumsum(x: np.ndarray, discount: float) -> np.ndarray:
    """``y[t] = sum_k discount^k x[t+k]`` along axis 0 (reference helper for tests)."""
    y = np.zeros_like(np.asarray(x, dtype=np.float64))
    acc = np.zeros_like(y[0]) if y.ndim > 1 else 0.0
    for t in range(len(y) - 1, -1, -1):
        acc = x[t] + discount * acc
        y[t] = acc
    return y


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    done: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """Generalised advantage estimation over time-major arrays ``(S, N, ...)``.

    ``delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)`` with ``s'_t`` the
    observation that followed step ``t`` (``info["final_observation"]``: the last observation
    of a truncated episode, not the first of the next one), and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}`` with ``done = terminated |
    truncated`` and ``A_S = 0``: the recursion stops at every episode end, and
    truncated episodes and the batch end are bootstrapped through ``V(s'_t)``.

    Args:
        rewards: ``(S, N)`` or ``(S, N, C)`` per-step rewards (or costs).
        values: ``V(s_t)``, same shape.
        next_values: ``V(s'_t)``, same shape.
        terminated: ``(S, N)`` bool.
        done: ``(S, N)`` bool, ``terminated | truncated``.
        gamma: Discount.
        lam: GAE lambda.

    Returns:
        Advantages, same shape as ``rewards``.
    """
    extra = (None,) * (rewards.ndim - 2)
    not_term = (~terminated).astype(np.float64)[(..., *extra)]
    cont = (~done).astype(np.float64)[(..., *extra)]
    deltas = rewards + gamma * not_term * next_values - values
    adv = np.zeros_like(deltas)
    acc = np.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        acc = deltas[t] + gamma * lam * cont[t] * acc
        adv[t] = acc
    return adv


def _check_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _check_collect_args(
    env: VecEnv, policy: GaussianPolicy, num_steps: int, num_envs: int, generator: torch.Generator
) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < num_envs:
        raise ValueError(f"num_steps must be an int >= num_envs = {num_envs}, got {num_steps!r}")
    if env is not None and (env.obs_dim != policy.obs_dim or env.act_dim != policy.act_dim):
        raise ValueError(
            f"policy has obs_dim={policy.obs_dim}, act_dim={policy.act_dim} but the environment has "
            f"obs_dim={env.obs_dim}, act_dim={env.act_dim}"
        )
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


@dataclass
class Segment:
    """What some sub-environments produced over one batch: raw, time-major data (``S`` steps,
    ``n`` sub-environments). :func:`assemble` turns segments into a :class:`Batch`.

    Attributes:
        obs: ``(S, n, obs_dim)`` raw observations the policy acted on.
        next_obs: ``(S, n, obs_dim)`` raw observations that followed (the final one where an
            episode ended).
        act: ``(S, n, act_dim)`` actions. logp: ``(S, n)`` their log-probabilities.
        reward: ``(S, n)``. cost: ``(S, n, C)`` per channel.
        terminated: ``(S, n)`` bool. done: ``(S, n)`` bool, terminated or truncated.
        horizon: The environment's episode length. cost_channels: Its cost channels.
    """

    obs: np.ndarray
    next_obs: np.ndarray
    act: Tensor
    logp: Tensor
    reward: np.ndarray
    cost: np.ndarray
    terminated: np.ndarray
    done: np.ndarray
    horizon: int
    cost_channels: tuple[str, ...]


@torch.no_grad()
def run_segment(
    env: VecEnv,
    policy: GaussianPolicy,
    params: Tensor,
    steps: int,
    normalizer: ObsNormalizer,
    generator: torch.Generator,
    reset_seed: int,
) -> Segment:
    """Step every sub-environment of ``env`` ``steps`` times from ``env.reset(seed=reset_seed)``,
    actions from ``policy`` with ``params`` (noise from ``generator``, observations normalised
    with ``normalizer``'s current statistics). One policy forward per vector step. The last step
    is ``env.step_final`` where the environment has one (episodes ending there are not reset: the
    next segment starts with a seeded reset; the observations returned are not used)."""
    dtype = params.dtype
    params = params.detach()
    n_envs, obs_dim, act_dim = int(env.num_envs), env.obs_dim, env.act_dim
    channels = tuple(env.cost_channels)
    raw_obs = np.empty((steps, n_envs, obs_dim))
    raw_next = np.empty((steps, n_envs, obs_dim))
    acts = torch.empty(steps, n_envs, act_dim, dtype=dtype)
    rewards = np.empty((steps, n_envs))
    costs = np.empty((steps, n_envs, len(channels)))
    terminated = np.empty((steps, n_envs), dtype=bool)
    done = np.empty((steps, n_envs), dtype=bool)
    log_norm = 0.5 * act_dim * np.log(2 * np.pi)
    # the normaliser's statistics, frozen for the batch (as ObsNormalizer.normalize computes them)
    mean, scale, clip = normalizer.mean, torch.sqrt(normalizer.var + normalizer.eps), normalizer.clip
    # what GaussianPolicy.mean_log_std computes, its checks and slicing done once for the batch
    policy.mean_log_std(params, torch.zeros(1, obs_dim, dtype=dtype))
    # the layers as F.linear runs them on a 2-D input (addmm with the transposed weight), each
    # writing into its own buffer: the same operations, no tensor allocated per vector step
    layers = [(params[b], params[w].view(shape).t()) for w, shape, b in policy._layers]
    outs = [torch.empty(n_envs, shape[0], dtype=dtype) for _, shape, _ in policy._layers]
    hidden = list(zip(layers[:-1], outs[:-1], strict=True))
    (last_b, last_wt), mu = layers[-1], outs[-1]
    log_std = params[policy._log_std]
    std, log_std_sum = torch.exp(log_std), log_std.sum()
    centred = torch.empty(n_envs, obs_dim, dtype=torch.float64)
    h0 = centred if dtype == torch.float64 else torch.empty(n_envs, obs_dim, dtype=dtype)
    noises = torch.empty(steps, n_envs, act_dim, dtype=dtype)
    spread = torch.empty(n_envs, act_dim, dtype=dtype)
    # per-step views made once (rows of raw_obs, which they share memory with, noises, acts)
    rows = zip(torch.from_numpy(raw_obs).unbind(0), noises.unbind(0), acts.unbind(0), strict=True)

    step, step_final = env.step, getattr(env, "step_final", env.step)
    last = steps - 1
    obs, _ = env.reset(seed=reset_seed)
    for t, (obs_row, noise, act) in enumerate(rows):
        raw_obs[t] = obs
        torch.sub(obs_row, mean, out=centred)
        torch.div(centred, scale, out=centred)
        centred.clamp_(-clip, clip)
        if h0 is not centred:
            h0.copy_(centred)
        h = h0
        for (b, wt), out in hidden:
            torch.tanh(torch.addmm(b, h, wt, out=out), out=out)
            h = out
        torch.addmm(last_b, h, last_wt, out=mu)
        noise.normal_(generator=generator)  # what torch.randn draws
        torch.add(mu, torch.mul(std, noise, out=spread), out=act)
        obs, reward, term, trunc, info = (step if t < last else step_final)(act.numpy().astype(np.float64))
        info_costs = info["costs"]
        for j, ch in enumerate(channels):
            costs[t, :, j] = info_costs[ch]
        raw_next[t] = next_observations(obs, info)
        rewards[t] = reward
        terminated[t] = term
        np.logical_or(term, trunc, out=done[t])
    logps = -0.5 * (noises * noises).sum(-1) - log_std_sum - log_norm
    return Segment(
        raw_obs, raw_next, acts, logps, rewards, costs, terminated, done, int(env.horizon), channels
    )


@torch.no_grad()
def assemble(
    segments: Sequence[Segment],
    normalizer: ObsNormalizer,
    reward_critic: Critic,
    cost_critic: Critic,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
    cost_gamma: float = 0.99,
    cost_lam: float = 0.95,
    update_normalizer: bool = True,
) -> Batch:
    """The :class:`Batch` of ``segments`` side by side (sub-environments in segment order):
    critic values, GAE, episode figures, and (``update_normalizer``) the observation statistics
    merged. See :func:`collect`."""
    first = segments[0]
    channels = first.cost_channels
    if cost_critic.out_dim != len(channels) or reward_critic.out_dim != 1:
        raise ValueError(
            f"reward_critic must have out_dim 1 and cost_critic out_dim {len(channels)} (channels {channels}); "
            f"got {reward_critic.out_dim} and {cost_critic.out_dim}"
        )
    names = ("gamma", "lam", "cost_gamma", "cost_lam")
    gamma, lam, cost_gamma, cost_lam = (
        _check_unit_interval(n, v) for n, v in zip(names, (gamma, lam, cost_gamma, cost_lam), strict=True)
    )
    dtype = first.act.dtype

    def cat(name: str) -> np.ndarray:
        parts = [getattr(seg, name) for seg in segments]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    raw_obs, raw_next = cat("obs"), cat("next_obs")
    rewards, costs, terminated, done = cat("reward"), cat("cost"), cat("terminated"), cat("done")
    acts = torch.cat([seg.act for seg in segments], dim=1)
    logps = torch.cat([seg.logp for seg in segments], dim=1)
    steps, n_envs, obs_dim = raw_obs.shape
    act_dim, n_cost = acts.shape[-1], len(channels)

    # per-episode figures, in the order the episodes finished (step, then sub-environment)
    ep_ret = np.zeros(n_envs)
    ep_cost = np.zeros((n_envs, n_cost))
    ep_len = np.zeros(n_envs, dtype=np.int64)
    finished_ret: list[float] = []
    finished_cost: list[np.ndarray] = []
    finished_len: list[int] = []
    for t in range(steps):
        ep_ret += rewards[t]
        ep_cost += costs[t]
        ep_len += 1
        ended = np.flatnonzero(done[t])
        if len(ended):
            for i in ended:
                finished_ret.append(float(ep_ret[i]))
                finished_cost.append(ep_cost[i].copy())
                finished_len.append(int(ep_len[i]))
            ep_ret[ended] = 0.0
            ep_cost[ended] = 0.0
            ep_len[ended] = 0

    # Values of every visited state and of every successor state, one pass each.
    flat_obs = normalizer.normalize(raw_obs.reshape(-1, obs_dim), dtype=dtype)
    flat_next = normalizer.normalize(raw_next.reshape(-1, obs_dim), dtype=dtype)
    shape_r, shape_c = (steps, n_envs), (steps, n_envs, n_cost)
    v_r = reward_critic(flat_obs).reshape(shape_r).double().numpy()
    nv_r = reward_critic(flat_next).reshape(shape_r).double().numpy()
    v_c = cost_critic(flat_obs).reshape(shape_c).double().numpy()
    nv_c = cost_critic(flat_next).reshape(shape_c).double().numpy()

    adv_r = gae(rewards, v_r, nv_r, terminated, done, gamma, lam)
    adv_c = gae(costs, v_c, nv_c, terminated, done, cost_gamma, cost_lam)
    ret_r = adv_r + v_r
    ret_c = adv_c + v_c

    if update_normalizer:
        normalizer.update(raw_obs.reshape(-1, obs_dim))

    if finished_len:
        ep_ret_mean = float(np.mean(finished_ret))
        ep_cost_mean = np.mean(np.stack(finished_cost), axis=0)
        ep_len_mean = float(np.mean(finished_len))
    else:
        horizon = float(first.horizon)
        ep_ret_mean = float(rewards.mean() * horizon)
        ep_cost_mean = costs.reshape(-1, n_cost).mean(0) * horizon
        ep_len_mean = horizon

    adv_r_flat = adv_r.reshape(-1)
    std_r = adv_r_flat.std()
    adv_r_flat = (adv_r_flat - adv_r_flat.mean()) / (std_r + 1e-8)
    adv_c_flat = adv_c.reshape(-1, n_cost)
    adv_c_flat = adv_c_flat - adv_c_flat.mean(0)

    def as_tensor(x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)

    return Batch(
        obs=flat_obs,
        act=acts.reshape(-1, act_dim),
        logp=logps.reshape(-1),
        adv_r=as_tensor(adv_r_flat),
        adv_c=as_tensor(adv_c_flat),
        ret_r=as_tensor(ret_r.reshape(-1)),
        ret_c=as_tensor(ret_c.reshape(-1, n_cost)),
        ep_ret=ep_ret_mean,
        ep_cost=np.asarray(ep_cost_mean, dtype=np.float64),
        ep_len=ep_len_mean,
        num_episodes=len(finished_len),
        env_steps=steps * n_envs,
        cost_channels=channels,
        num_envs=n_envs,
        episode_costs=np.stack(finished_cost) if finished_cost else np.zeros((0, n_cost)),
    )


@torch.no_grad()
def collect(
    env: VecEnv,
    policy: GaussianPolicy,
    params: Tensor,
    num_steps: int,
    normalizer: ObsNormalizer,
    reward_critic: Critic,
    cost_critic: Critic,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
    cost_gamma: float = 0.99,
    cost_lam: float = 0.95,
    generator: torch.Generator,
    update_normalizer: bool = True,
) -> Batch:
    """Run ``policy`` with ``params`` on ``env`` for ``num_steps`` steps in total.

    Each of the ``N = env.num_envs`` sub-environments runs ``num_steps // N`` steps
    (so ``env_steps = N * (num_steps // N)``) from a fresh ``env.reset(seed=s)``, ``s``
    drawn from ``generator``; actions are drawn from ``generator`` too, so equal
    generator states give identical batches. One policy forward per vector step.

    Observations are normalised with ``normalizer``'s statistics as they are at the
    call (frozen for the whole batch, so the stored ``obs`` and ``logp`` are exactly
    what the policy saw); with ``update_normalizer`` the raw observations of the
    batch are merged into the statistics at the end.

    Per-episode figures come from the episodes that finished inside the batch. If
    none finished (a batch shorter than an episode), they are extrapolated from the
    unfinished ones: per-step mean reward and cost over the batch times
    ``env.horizon``, with ``ep_len = env.horizon`` (exact for time-limited tasks
    without termination, an upper bound otherwise) and ``num_episodes = 0``.

    Args:
        env: A vectorised environment (:mod:`rl.envs.base`).
        policy: The policy architecture.
        params: Its flat parameters (no gradient is taken here).
        num_steps: Total env steps across sub-environments (``>= env.num_envs``).
        normalizer: Observation normaliser.
        reward_critic: ``obs -> (T, 1)`` value.
        cost_critic: ``obs -> (T, C)`` values, one per cost channel.
        gamma, lam: Reward discount and GAE lambda.
        cost_gamma, cost_lam: The same for the costs.
        generator: Source of the reset seed and the action noise.
        update_normalizer: Merge this batch's observations into ``normalizer``.

    Returns:
        A :class:`Batch` (tensors in the policy's dtype).
    """
    n_envs = int(env.num_envs)
    _check_collect_args(env, policy, num_steps, n_envs, generator)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    segment = run_segment(env, policy, params, num_steps // n_envs, normalizer, generator, seed)
    gae = dict(gamma=gamma, lam=lam, cost_gamma=cost_gamma, cost_lam=cost_lam)
    return assemble(
        [segment], normalizer, reward_critic, cost_critic, **gae, update_normalizer=update_normalizer
    )


# ------------------------------------------------------------------------ sharded sampling
@dataclass(frozen=True)
class EnvSpec:
    """How to build a task's vectorised environment anywhere (a worker process, a Ray node).

    Attributes:
        name: The environment name for :func:`rl.envs.make`.
        task: The task (``None``: the family's default).
        num_envs: Sub-environments of a whole batch.
        kwargs: Further keyword arguments of :func:`rl.envs.make`, as ``(name, value)`` pairs.
    """

    name: str
    task: Any
    num_envs: int
    kwargs: tuple[tuple[str, Any], ...] = ()

    def make(self, first: int = 0, count: int | None = None) -> VecEnv:
        """Sub-environments ``first .. first + count - 1`` of the batch as one vectorised environment
        (sub-environment ``i`` is seeded ``seed + i`` at every reset, as in the whole one)."""
        from rl.envs import make

        count = self.num_envs - first if count is None else count
        return make(self.name, task=self.task, num_envs=count, seed=first, **dict(self.kwargs))


def shard_slices(num_envs: int, shards: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each of ``min(shards, num_envs)`` contiguous blocks of sub-environments,
    as even as possible (the first ones one larger)."""
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    shards = min(shards, num_envs)
    base, extra = divmod(num_envs, shards)
    out, first = [], 0
    for s in range(shards):
        count = base + (1 if s < extra else 0)
        out.append((first, count))
        first += count
    return out


_ENV_CACHE = "rl.rollout.envs"
_ENV_CACHE_SIZE = 48


def _cached_env(spec: EnvSpec, first: int, count: int) -> VecEnv:
    """The worker's environment for these sub-environments, built on first use and kept (the
    least recently used ones beyond ``_ENV_CACHE_SIZE`` are closed)."""
    from rl.runtime.parallel import worker_state

    cache = worker_state().setdefault(_ENV_CACHE, _EnvCache())
    key = (shard_key(spec), first, count)
    env = cache.envs.pop(key, None)
    if env is None:
        env = spec.make(first, count)
    cache.envs[key] = env
    while len(cache.envs) > _ENV_CACHE_SIZE:
        cache.envs.popitem(last=False)[1].close()
    return env


class _EnvCache:
    """The environments a worker keeps between jobs (closed when the worker ends)."""

    def __init__(self) -> None:
        from collections import OrderedDict

        self.envs: OrderedDict = OrderedDict()

    def close(self) -> None:
        while self.envs:
            self.envs.popitem()[1].close()


def shard_key(spec: EnvSpec) -> bytes:
    """A key equal for equal specs (in every process): the pickled spec."""
    import pickle

    return pickle.dumps((spec.name, spec.task, spec.num_envs, spec.kwargs), protocol=4)


def sample_shard(
    spec: EnvSpec,
    first: int,
    count: int,
    policy: GaussianPolicy,
    params: Tensor,
    normalizer: ObsNormalizer,
    steps: int,
    reset_seed: int,
    noise_seed: int,
) -> Segment:
    """One shard of a batch (a job for :class:`rl.runtime.parallel.TaskPool`): sub-environments
    ``first .. first + count - 1`` of ``spec``, reset with ``reset_seed + first``, action noise
    from a generator seeded ``noise_seed``. The environment is kept in the worker for the next
    batch of the same task."""
    env = _cached_env(spec, first, count)
    generator = torch.Generator().manual_seed(noise_seed)
    return run_segment(env, policy, params, steps, normalizer, generator, reset_seed + first)


def shard_noise_seed(base: int, shard: int) -> int:
    """The noise seed of shard ``shard`` of a batch whose noise seed is ``base``."""
    return int(np.random.SeedSequence([int(base), int(shard)]).generate_state(1)[0])


def collect_sharded(
    pool: Any,
    spec: EnvSpec,
    policy: GaussianPolicy,
    params: Tensor,
    num_steps: int,
    normalizer: ObsNormalizer,
    reward_critic: Critic,
    cost_critic: Critic,
    *,
    shards: int,
    gamma: float = 0.99,
    lam: float = 0.95,
    cost_gamma: float = 0.99,
    cost_lam: float = 0.95,
    generator: torch.Generator,
    update_normalizer: bool = True,
) -> Batch:
    """:func:`collect` with the sub-environments split into ``shards`` blocks that step in parallel.

    The same batch, bit for bit, whatever runs the shards: ``pool`` (a
    :class:`rl.runtime.parallel.TaskPool` of any backend and number of workers, or ``None``: this
    process). Two numbers are drawn from ``generator``: the reset seed (sub-environment ``i`` is
    reset with ``seed + i``) and the base of the shards' noise seeds (:func:`shard_noise_seed`);
    each shard acts with its own noise generator, so the batch depends on ``shards`` but not on
    where, or in which order, the shards ran. The driver then computes critic values, GAE and the
    episode figures over the whole batch (:func:`assemble`).

    Args:
        pool: Where the shards run (``None``: here, one after the other).
        spec: The task's environment.
        shards: Blocks of sub-environments (at most ``spec.num_envs``).
        Others: as in :func:`collect`.
    """
    started = submit_sharded(
        pool, spec, policy, params, num_steps, normalizer, shards=shards, generator=generator
    )
    gae = dict(gamma=gamma, lam=lam, cost_gamma=cost_gamma, cost_lam=cost_lam)
    return gather_sharded(
        started, normalizer, reward_critic, cost_critic, **gae, update_normalizer=update_normalizer
    )


def submit_sharded(
    pool: Any,
    spec: EnvSpec,
    policy: GaussianPolicy,
    params: Tensor,
    num_steps: int,
    normalizer: ObsNormalizer,
    *,
    shards: int,
    generator: torch.Generator,
) -> list[Any]:
    """Start the shards of :func:`collect_sharded`; returns futures (or segments, ``pool=None``)
    for :func:`gather_sharded`. Sampling needs only the policy and the normaliser: the caller may
    update the critics while the shards run."""
    n_envs = int(spec.num_envs)
    _check_collect_args(None, policy, num_steps, n_envs, generator)
    reset_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    noise_base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    steps = num_steps // n_envs
    params = params.detach()
    key = shard_key(spec)
    out = []
    for s, (first, count) in enumerate(shard_slices(n_envs, shards)):
        args = (
            spec,
            first,
            count,
            policy,
            params,
            normalizer,
            steps,
            reset_seed,
            shard_noise_seed(noise_base, s),
        )
        out.append(
            sample_shard(*args) if pool is None else pool.submit(sample_shard, *args, key=(key, first))
        )
    return out


def gather_sharded(
    started: list[Any],
    normalizer: ObsNormalizer,
    reward_critic: Critic,
    cost_critic: Critic,
    *,
    gamma: float = 0.99,
    lam: float = 0.95,
    cost_gamma: float = 0.99,
    cost_lam: float = 0.95,
    update_normalizer: bool = True,
) -> Batch:
    """Wait for the shards started by :func:`submit_sharded` and assemble their batch."""
    segments = [s if isinstance(s, Segment) else s.result() for s in started]
    gae = dict(gamma=gamma, lam=lam, cost_gamma=cost_gamma, cost_lam=cost_lam)
    return assemble(
        segments, normalizer, reward_critic, cost_critic, **gae, update_normalizer=update_normalizer
    )
