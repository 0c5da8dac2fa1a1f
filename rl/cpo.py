"""Constrained Policy Optimisation (Achiam et al., 2017) on :mod:`difftrust`, and ``python -m rl.cpo``.

The algorithm, top to bottom (one iteration of :func:`train`):

1. **Collect** ``steps_per_iter`` env steps with the current policy
   (:func:`rl.rollout.collect`): GAE advantages for the reward and for every cost
   channel, per-episode return and cost.
2. **Surrogates** (:func:`surrogates`), ``ratio = pi_phi(a|s) / p_beh(a|s)``::

       L_R(phi) = mean(ratio * adv_r)
       L_C(phi) = ep_len * mean(ratio * adv_c)      (one entry per cost channel)

   ``L_C`` is the first-order estimate of the change of the per-episode cost
   (EpCost) when the policy moves from the behaviour policy to ``phi``, so it has
   the units of ``b = EpCost - limit`` (see :mod:`rl.rollout`).
3. **Direction** (:func:`cpo_direction`): ``g = grad L_R``, ``A = [grad L_Cj]_j``,
   ``b = ep_cost - cost_limits``, ``H`` = Fisher of ``mean KL(pi_params || pi_phi)`` at
   ``params`` plus ``damping * I``, and the step solves::

       max_x g'x   s.t.   0.5 x'Hx <= delta,   b_j + a_j'x <= 0

   with :class:`difftrust.TrustRegionStep` (closed form for one constraint, a small
   cone program for several, the least-violation *recovery* step when the
   linearised constraints cannot be met inside the trust region). No constraint
   (``cost_limits=None``) gives TRPO.
4. **Line search** (:func:`line_search`): try ``params + 0.8^k x``, ``k = 0, 1, ...``;
   accept the first step whose mean ``KL(pi_old || pi_new)`` on the batch states is at
   most ``kl_tolerance * delta`` (``kl_tolerance = 1.5`` by default: the quadratic
   model bounds the damped KL, the true KL may exceed ``delta`` slightly, as in
   OpenAI baselines' TRPO), whose reward surrogate does not decrease (unless the
   case is ``"recovery"``), and whose cost surrogates rise by at most
   ``max(-b_j, 0)`` (in recovery: must not rise). If none passes, the policy is kept.
5. **Critics**: Adam on the TD(lambda) targets of the batch, reward and cost critic
   together on the same minibatches (:func:`fit_critics`).

The behaviour log-probabilities are constants of the data, so with
``create_graph=True`` :func:`cpo_direction` is differentiable in ``params`` through
``g``, ``A`` and the Fisher metric, and not through the sampling distribution (the
MAML-TRPO estimator that :mod:`rl.meta_cpo` builds on).

Command line::

    python -m rl.cpo --env safenav-goal --steps 300000 --seed 0 --cost-limit 25 --out runs/cpo
    python -m rl.cpo --resume runs/cpo --steps 400000     # continue (and extend) a run

The run folder receives ``config.json``, ``progress.csv`` (one row per iteration),
TensorBoard events, ``ckpt_*.pt`` (full state; ``--resume`` continues exactly where
the checkpoint left off) and ``training.png``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from difftrust import (
    FisherMetric,
    Metric,
    OperatorMetric,
    StepResult,
    TrustRegionStep,
    conjugate_gradient,
    solve_reduced,
)
from rl.policy import Critic, GaussianPolicy, ObsNormalizer
from rl.rollout import Batch, EnvSpec, gather_sharded, submit_sharded
from rl.runtime.config import ConfigError

__all__ = [
    "CPOConfig",
    "confidence_z",
    "cost_offsets",
    "cpo_direction",
    "cpo_update",
    "debiased_offsets",
    "fit_critics",
    "optimism_offsets",
    "line_search",
    "main",
    "make_env",
    "surrogates",
    "sum_cost_channels",
    "train",
]


# ------------------------------------------------------------------------------ surrogates
def surrogates(policy: GaussianPolicy, params: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Reward and cost surrogates of ``params`` on ``batch``.

    ``L_R = mean(ratio * adv_r)`` (per step, normalised advantages) and
    ``L_C = ep_len * mean(ratio * adv_c, over steps)``, shape ``(C,)``: the
    first-order change of the per-episode cost per channel, in the units of
    ``batch.ep_cost``. ``ratio = exp(logp_params - batch.logp)``, the behaviour
    log-probabilities being constants. Differentiable in ``params``.

    Returns:
        ``(L_R, L_C)``: a scalar and a ``(C,)`` tensor.
    """
    ratio = torch.exp(policy.log_prob(params, batch.obs, batch.act) - batch.logp)
    loss_r = (ratio * batch.adv_r).mean()
    loss_c = batch.ep_len * (ratio.unsqueeze(-1) * batch.adv_c).mean(0)
    return loss_r, loss_c


def cost_offsets(
    batch: Batch,
    cost_limits: float | Sequence[float] | Tensor,
    dtype: torch.dtype,
    confidence: float = 0.5,
) -> Tensor:
    """``b = ep_cost + z sem - cost_limits``, shape ``(C,)`` (a scalar limit applies to every channel).

    ``z`` is the standard normal quantile of ``confidence`` and ``sem`` the standard error of
    the episode cost (:attr:`rl.rollout.Batch.ep_cost_sem`): ``confidence = 0.5`` (``z = 0``)
    constrains the estimated mean, a larger one an upper confidence bound of it, so that a
    policy judged within the limit is so with about that probability.
    """
    limits = torch.as_tensor(cost_limits, dtype=dtype)
    n_cost = len(batch.cost_channels)
    if limits.ndim == 0:
        limits = limits.expand(n_cost)
    if limits.shape != (n_cost,):
        raise ValueError(
            f"cost_limits must be a scalar or have shape ({n_cost},) for cost channels "
            f"{batch.cost_channels}, got shape {tuple(limits.shape)}"
        )
    if not bool(torch.isfinite(limits).all()):
        raise ValueError(f"cost_limits must be finite, got {limits.tolist()}")
    b = torch.as_tensor(batch.ep_cost, dtype=dtype) - limits
    if confidence != 0.5:
        b = b + confidence_z(confidence) * torch.as_tensor(batch.ep_cost_sem, dtype=dtype)
    return b


def confidence_z(confidence: float) -> float:
    """The standard normal quantile of ``confidence`` in (0, 1) (0.5 -> 0, 0.9 -> 1.2816)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(confidence, dtype=torch.float64)))


def sum_cost_channels(batch: Batch) -> Batch:
    """A view of ``batch`` with its cost channels summed into one channel ``"total"``.

    Used to constrain the total cost (Safety-Gymnasium's scalar ``cost``) with one
    constraint instead of one per channel. Critic targets keep their channels.
    """
    from dataclasses import replace

    return replace(
        batch,
        adv_c=batch.adv_c.sum(-1, keepdim=True),
        ep_cost=np.asarray([float(np.sum(batch.ep_cost))]),
        cost_channels=("total",),
        episode_costs=None if batch.episode_costs is None else batch.episode_costs.sum(-1, keepdims=True),
    )


# ------------------------------------------------------------------- constraint optimism
def _halves(batch: Batch) -> Tensor:
    """Mask of the first half of the batch's episodes: sub-environments ``0 .. N/2 - 1``
    (rows ``i`` with ``i % num_envs < num_envs // 2``), or the first half of the steps for
    one sub-environment."""
    idx = torch.arange(len(batch))
    n_envs = batch.num_envs
    mask = idx % n_envs < n_envs // 2 if n_envs >= 2 else idx < len(batch) // 2
    if bool(mask.all()) or not bool(mask.any()):
        raise ValueError(f"debiasing needs a batch of at least 2 rows, got {len(batch)}")
    return mask


def debiased_offsets(
    policy: GaussianPolicy,
    params: Tensor,
    batch: Batch,
    cost_limits: float | Sequence[float] | Tensor,
    step: TrustRegionStep,
    damping: float = 0.1,
    iterations: int = 5,
    metric: Metric | None = None,
    confidence: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Constraint offsets corrected for the optimism of a step chosen on noisy gradients.

    The CPO step is chosen so that the *estimated* cost change ``a_j'x`` meets the
    constraint, but ``x`` depends on the estimation noise ``e_j`` of ``a_j``, and it
    exploits it: the true change ``(a_j - e_j)'x`` is larger than predicted by the
    optimism ``o_j = E[e_j'x]``, which for thousands of parameters dominates the
    prediction (``benchmarks/results/cpo_prediction.md``). For a step ``x = H^-1 G'w``
    (``G`` the rows ``g, a_1, ..., a_C``, ``w`` the coefficients of the reduced
    problem), ``o_j = sum_i w_i E[e_j'H^-1 e_i]``. The noise cross-powers are estimated
    from two independent halves of the batch (sub-environments ``0 .. N/2-1`` and the
    rest): ``D = (G_A - G_B) sqrt(n_A n_B) / n`` has the covariance of the full-batch
    noise, so ``E[e_j'H^-1 e_i] ~ D_j'H^-1 D_i`` (one extra CG solve with ``C + 1``
    right-hand sides). The corrected constraint ``b_j + a_j'x - o_j <= 0`` is the
    program with offsets ``b'_j = b_j - o_j``; as ``w`` depends on ``b'``, the fixed
    point is iterated ``iterations`` times on the reduced ``(C+1)``-variable problem.

    ``metric`` is the step's metric (default: the damped Fisher on ``batch.obs``, as
    :func:`cpo_direction` uses); ``confidence`` is passed to :func:`cost_offsets`.

    Returns:
        ``(b_eff, optimism)``: the corrected offsets ``b - o`` to pass to
        :func:`cpo_direction` and the line search, and ``-o`` (the predicted
        underestimate of each channel's cost change, >= 0 when the step leans on the
        noise), both ``(C,)`` and detached.
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    theta = params.detach().requires_grad_(True)
    b = cost_offsets(batch, cost_limits, params.dtype, confidence)
    mask = _halves(batch)
    n_a, n_b = int(mask.sum()), int((~mask).sum())
    with torch.enable_grad():
        ratio = torch.exp(policy.log_prob(theta, batch.obs, batch.act) - batch.logp)
        terms = torch.cat(
            [(ratio * batch.adv_r).unsqueeze(-1), batch.ep_len * ratio.unsqueeze(-1) * batch.adv_c], 1
        )
        outs = torch.cat([terms[mask].mean(0), terms[~mask].mean(0)])
        rows = torch.stack([torch.autograd.grad(o, theta, retain_graph=True)[0] for o in outs])
    k = terms.shape[1]
    if metric is None:
        metric = fisher_metric(policy, theta, batch.obs, damping)
    return optimism_offsets(rows[:k], rows[k:], n_a, n_b, b, metric, step, iterations)


def optimism_offsets(
    rows_a: Tensor,
    rows_b: Tensor,
    n_a: float,
    n_b: float,
    b: Tensor,
    metric: Metric | None,
    step: TrustRegionStep,
    iterations: int = 5,
) -> tuple[Tensor, Tensor]:
    """The optimism correction of :func:`debiased_offsets` from two independent estimates.

    ``rows_a`` and ``rows_b`` are ``(m+1, n)``: the rows ``g, a_1, ..., a_m`` estimated on two
    independent parts of the data, of sizes ``n_a`` and ``n_b`` (samples, or tasks for the
    meta-update); the full estimate is their weighted mean. ``metric`` is the step's metric
    (``None``: identity), ``b`` the uncorrected offsets ``(m,)``. Returns ``(b - o, -o)``.
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    b = b.detach()
    n = n_a + n_b
    k = rows_a.shape[0]
    G = (n_a * rows_a + n_b * rows_b) / n
    D = (rows_a - rows_b) * (math.sqrt(n_a * n_b) / n)
    G, D = G.detach(), D.detach()
    rhs = torch.cat([G, D[1:]]).T  # H^-1 D_g is not needed: N[j, g] = (H^-1 D_j)'D_g
    if metric is None:
        sol = rhs
    else:
        operator = metric.operator(*[t.detach() for t in metric.tensors])
        sol = conjugate_gradient(operator, rhs, max_iter=step.cg_iters, tol=step.cg_tol).x
    K = G @ sol[:, :k]
    K = (K + K.T) / 2
    if not float(K.diagonal().sum()) > 0:  # g = 0 and a = 0: no step, nothing to correct
        return b.detach(), torch.zeros_like(b)
    N = (
        D[1:] @ sol[:, k:]
    )  # rows: constraints; N[:, 1:] = D_a' H^-1 D_a (symmetrised), N[:, 0] = D_a' H^-1 D_g
    N = torch.cat([(sol[:, k:].T @ D[0]).unsqueeze(1), (N + N.T) / 2], 1)
    b_eff = b
    for _ in range(iterations):
        # the step's coefficients in the basis H^-1 G' (difftrust's reduced problem in (K, b, delta))
        w = solve_reduced(K, b_eff, step.delta, solver=step.solver).w
        optimism = N @ w
        b_eff = b - optimism
    return b_eff.detach(), (-optimism).detach()


# ------------------------------------------------------------------------------- direction
def cpo_direction(
    policy: GaussianPolicy,
    params: Tensor,
    batch: Batch,
    cost_limits: float | Sequence[float] | Tensor | None,
    step: TrustRegionStep,
    damping: float = 0.1,
    create_graph: bool = False,
    offsets: Tensor | None = None,
    metric: Metric | None = None,
) -> tuple[Tensor, StepResult]:
    """The CPO step ``x`` at ``params`` (TRPO when ``cost_limits`` is ``None``).

    ``metric`` replaces the damped Fisher of ``batch.obs`` (:func:`fisher_metric`) when given.

    ``g = grad L_R``, ``A`` = one row ``grad L_Cj`` per cost channel, ``b = ep_cost -
    cost_limits`` (episode units), metric ``FisherMetric(policy.kl(., ., batch.obs),
    params, damping)``; the step is ``step.solve(g, A, b, metric)``.

    Args:
        policy: The policy architecture.
        params: Flat parameters. With ``create_graph=True`` they may carry a graph
            (an adapted parameter vector in Meta-CPO) and ``x`` is differentiable in
            them through ``g``, ``A`` and the metric.
        batch: Data collected with behaviour log-probabilities ``batch.logp``.
        cost_limits: Scalar (every channel) or ``(C,)`` per-episode cost limits;
            ``None`` for no constraint (TRPO, ``m = 0``).
        step: The trust-region layer (its ``delta``, CG settings, solver).
        damping: Damping added to the Fisher metric.
        create_graph: Build a differentiable step (Meta-CPO inner loop).
        offsets: The constraint offsets ``b`` to use instead of ``ep_cost - cost_limits``
            (for example :func:`debiased_offsets`), shape ``(C,)``; constants.

    Returns:
        ``(x, result)``: the step ``(n,)`` and the :class:`difftrust.StepResult`
        (``x``, ``lam``, ``nu``, ``case``, ``cg_residuals``); ``x is result.x``.
    """
    if not isinstance(step, TrustRegionStep):
        raise TypeError(f"step must be a difftrust.TrustRegionStep, got {type(step).__name__}")
    if create_graph and params.requires_grad:
        theta = params
    else:
        theta = params.detach().requires_grad_(True)
    with torch.enable_grad():
        loss_r, loss_c = surrogates(policy, theta, batch)
        if cost_limits is None:
            (g,) = torch.autograd.grad(loss_r, theta, create_graph=create_graph)
            A = b = None
        else:
            b = cost_offsets(batch, cost_limits, params.dtype) if offsets is None else offsets.detach()
            outputs = torch.cat([loss_r.reshape(1), loss_c])
            rows = [
                torch.autograd.grad(out, theta, create_graph=create_graph, retain_graph=True)[0]
                for out in outputs
            ]
            g, A = rows[0], torch.stack(rows[1:])
    if metric is None:
        metric = fisher_metric(policy, theta, batch.obs, damping, create_graph)
    result = step.solve(g, A, b, metric)
    return result.x, result


def fisher_metric(
    policy: GaussianPolicy,
    params: Tensor,
    obs: Tensor,
    damping: float,
    create_graph: bool = False,
    pool: Any = None,
    parts: int = 1,
) -> Metric:
    """The damped Fisher metric of ``policy`` at ``params`` over the states ``obs``.

    A step that needs no gradient gets the closed-form product
    (:meth:`rl.policy.GaussianPolicy.fisher_product`: the same matrix, about twice as fast), its
    sum over the states taken in ``parts`` blocks of rows; with a parallel ``pool`` the blocks are
    computed by its workers, which keep their block's activations for every later product (each
    product then sends only ``v``), the same numbers as here. A differentiable step
    (``create_graph``) gets the double-backward :class:`difftrust.FisherMetric`.
    """
    if create_graph:
        return FisherMetric(lambda ref, p: policy.kl(ref, p, obs), params, damping)
    params = params.detach()
    if pool is None or not pool.parallel:
        product = policy.fisher_product(params, obs, parts)
    else:
        product = policy.fisher_from_blocks(
            params, obs.shape[0], _remote_fisher_blocks(pool, policy, params, obs, parts)
        )
    return OperatorMetric(lambda v: product(v), damping=damping)


class FisherBlockMissing(LookupError):
    """A worker was asked for a Fisher block it does not hold (it was restarted, or another worker
    ran the job): the driver sends the block's states again."""


_FISHER_CACHE = "rl.cpo.fisher_blocks"


def _fisher_block_job(
    key: tuple[str, int], policy: GaussianPolicy | None, params: Tensor | None, obs: Tensor | None, v: Tensor
) -> Tensor:
    """A worker's job: the product of Fisher block ``key`` with ``v``; with ``obs`` the block is built
    (and kept, blocks of other metrics dropped) first."""
    from rl.runtime.parallel import worker_state

    cache = worker_state().setdefault(_FISHER_CACHE, {})
    if obs is not None:
        for old in [k for k in cache if k[0] != key[0]]:
            del cache[old]
        cache[key] = policy.fisher_block(params, obs)
    block = cache.get(key)
    if block is None:
        raise FisherBlockMissing(f"no Fisher block {key} in this worker")
    return block(v)


def _remote_fisher_blocks(pool: Any, policy: GaussianPolicy, params: Tensor, obs: Tensor, parts: int):
    """``v -> [block products]`` computed by ``pool``'s workers (see :func:`fisher_metric`)."""
    import uuid

    metric_id = uuid.uuid4().hex
    chunks = torch.tensor_split(obs.detach(), parts)
    built: set[int] = set()

    def products(v: Tensor) -> list[Tensor]:
        futures = []
        for p, rows in enumerate(chunks):
            key = (metric_id, p)
            payload = (None, None, None) if p in built else (policy, params, rows)
            futures.append(pool.submit(_fisher_block_job, key, *payload, v, key=key))
        out = []
        for p, fut in enumerate(futures):
            try:
                out.append(fut.result())
            except FisherBlockMissing:
                key = (metric_id, p)
                out.append(
                    pool.submit(_fisher_block_job, key, policy, params, chunks[p], v, key=key).result()
                )
            built.add(p)
        return out

    return products


# ------------------------------------------------------------------------------ line search
def line_search(
    policy: GaussianPolicy,
    params: Tensor,
    x: Tensor,
    batch: Batch,
    b: Tensor | None,
    case: str,
    delta: float,
    backtrack_coef: float = 0.8,
    max_backtracks: int = 15,
    kl_tolerance: float = 1.5,
) -> tuple[Tensor, dict[str, Any]]:
    """Backtrack along ``x`` until the CPO acceptance rules hold (see the module docs).

    Step fraction ``backtrack_coef**k`` for ``k = 0 .. max_backtracks - 1`` is accepted
    when (all on ``batch``): the mean ``KL(pi_params || pi_new) <= kl_tolerance * delta``;
    ``L_R(new) >= L_R(params)`` unless ``case == "recovery"``; and for every
    constraint ``j``, ``L_Cj(new) - L_Cj(params) <= max(-b_j, 0)``. ``b = None`` means
    no constraint (TRPO).

    Returns:
        ``(new_params, info)`` with ``info`` keys ``accepted`` (the step fraction,
        0 when nothing passed and ``params`` are returned), ``backtracks``, ``kl``,
        ``improve_r`` and ``change_c`` (surrogate changes of the returned params).
    """
    with torch.no_grad():
        params = params.detach()
        x = x.detach()
        loss_r0, loss_c0 = surrogates(policy, params, batch)
        slack = None if b is None else torch.clamp(-b, min=0.0)
        last: dict[str, Any] = {}
        for k in range(max_backtracks):
            frac = backtrack_coef**k
            new = params + frac * x
            kl = float(policy.kl(params, new, batch.obs))
            loss_r, loss_c = surrogates(policy, new, batch)
            improve_r = float(loss_r - loss_r0)
            change_c = loss_c - loss_c0
            last = {"kl": kl, "improve_r": improve_r, "change_c": change_c.tolist()}
            finite = math.isfinite(kl) and math.isfinite(improve_r) and bool(torch.isfinite(change_c).all())
            ok = finite and kl <= kl_tolerance * delta
            ok = ok and (case == "recovery" or improve_r >= 0.0)
            if slack is not None:
                ok = ok and bool((change_c <= slack).all())
            if ok:
                return new, {"accepted": frac, "backtracks": k, **last}
        n_cost = loss_c0.shape[0]
        return params.clone(), {
            "accepted": 0.0,
            "backtracks": max_backtracks,
            "kl": 0.0,
            "improve_r": 0.0,
            "change_c": [0.0] * n_cost,
            "rejected_kl": last.get("kl", float("nan")),
        }


def cpo_update(
    policy: GaussianPolicy,
    params: Tensor,
    batch: Batch,
    cost_limits: float | Sequence[float] | Tensor | None,
    step: TrustRegionStep,
    *,
    damping: float = 0.1,
    backtrack_coef: float = 0.8,
    max_backtracks: int = 15,
    kl_tolerance: float = 1.5,
    debias: bool = False,
    confidence: float = 0.5,
    pool: Any = None,
    fisher_parts: int = 1,
) -> tuple[Tensor, dict[str, Any]]:
    """One CPO policy update: :func:`cpo_direction`, then :func:`line_search`.

    One Fisher metric (:func:`fisher_metric`, its sum in ``fisher_parts`` blocks, computed by
    ``pool``'s workers when it has several) serves the direction and the optimism correction.

    With ``debias=True`` (and a constraint) the offsets are :func:`debiased_offsets`,
    used by both the step and the line search; ``info["optimism"]`` holds the
    correction per constraint (0 otherwise). ``confidence`` is passed to :func:`cost_offsets`.

    Returns:
        ``(new_params, info)``; ``info`` holds ``case``, ``lam``, ``nu`` (list, one per
        constraint), ``b`` (list), ``expected_improve`` (``g'x``), ``step_norm``,
        ``cg_residual`` (largest relative CG residual) and the line-search keys
        ``accepted``, ``backtracks``, ``kl``, ``improve_r``, ``change_c``.
    """
    b = optimism = None
    metric = fisher_metric(policy, params, batch.obs, damping, pool=pool, parts=fisher_parts)
    if cost_limits is not None:
        b = cost_offsets(batch, cost_limits, params.dtype, confidence)
        optimism = torch.zeros_like(b)
        if debias:
            b, optimism = debiased_offsets(
                policy,
                params,
                batch,
                cost_limits,
                step,
                damping=damping,
                metric=metric,
                confidence=confidence,
            )
    x, res = cpo_direction(
        policy, params, batch, cost_limits, step, damping=damping, offsets=b, metric=metric
    )
    delta = float(step.delta)
    new, ls = line_search(
        policy,
        params,
        x,
        batch,
        b,
        str(res.case),
        delta,
        backtrack_coef=backtrack_coef,
        max_backtracks=max_backtracks,
        kl_tolerance=kl_tolerance,
    )
    with torch.no_grad():
        theta = params.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(surrogates(policy, theta, batch)[0], theta)
    info = {
        "case": str(res.case),
        "lam": float(res.lam),
        "nu": [float(v) for v in res.nu.reshape(-1)],
        "b": [] if b is None else b.tolist(),
        "optimism": [] if optimism is None else optimism.tolist(),
        "expected_improve": float(g @ x.detach()),
        "step_norm": float(x.detach().norm()),
        "cg_residual": float("nan") if res.cg_residuals is None else float(res.cg_residuals.max()),
        **ls,
    }
    return new, info


# -------------------------------------------------------------------------------- critics
def fit_critics(
    critics: Sequence[Critic],
    optimizers: Sequence[torch.optim.Optimizer],
    obs: Tensor,
    targets: Sequence[Tensor],
    epochs: int,
    minibatch: int,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Fit several critics on the same inputs together: minibatch MSE steps of their optimizers.

    The same as :func:`rl.policy.fit_critic` per critic (each critic's loss is its own
    minibatch MSE, its gradient only its own, one step of its own optimizer per
    minibatch), except that all critics see the same shuffled minibatches (one
    permutation per epoch from ``generator``) and share one forward/backward pass
    per minibatch: half the autograd and Python overhead for the reward and cost
    critics of CPO, whose fitting is otherwise a large part of an update.

    Args:
        critics: The critics (updated in place).
        optimizers: One optimizer per critic.
        obs: ``(T, obs_dim)`` inputs.
        targets: One ``(T,)`` or ``(T, out_dim)`` target tensor per critic.
        epochs: Passes over the data.
        minibatch: Rows per optimizer step.
        generator: Shuffling generator (reproducibility).

    Returns:
        The full-batch MSE of each critic after fitting.
    """
    import torch.nn.functional as F

    if not len(critics) == len(optimizers) == len(targets) >= 1:
        raise ValueError(
            f"need one optimizer and one target per critic, got {len(critics)} critics, "
            f"{len(optimizers)} optimizers and {len(targets)} targets"
        )
    for name, value in (("epochs", epochs), ("minibatch", minibatch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    obs = obs.detach()
    n = obs.shape[0]
    ys = []
    for critic, y in zip(critics, targets, strict=True):
        y = y.detach()
        if y.ndim == 1:
            y = y.unsqueeze(-1)
        if y.shape != (n, critic.out_dim):
            raise ValueError(
                f"targets must have shape ({n},) or ({n}, {critic.out_dim}), got {tuple(y.shape)}"
            )
        ys.append(y)
    pairs = list(zip(critics, ys, strict=True))
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n, minibatch):
                idx = perm[start : start + minibatch]
                o = obs[idx]
                loss = sum(F.mse_loss(critic(o), y[idx]) for critic, y in pairs)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in optimizers:
                    opt.step()
    with torch.no_grad():
        return [float(F.mse_loss(critic(obs), y)) for critic, y in pairs]


def _fit_one_critic(
    critic: Critic,
    optimizer_cls: type,
    defaults: dict[str, Any],
    optimizer_state: dict[str, Any],
    obs: Tensor,
    target: Tensor,
    epochs: int,
    minibatch: int,
    seed: int,
) -> tuple[dict[str, Tensor], dict[str, Any], float]:
    """A worker's job of :func:`fit_critics_on_pool`: the fitted critic's and optimizer's states."""
    optimizer = optimizer_cls(critic.parameters(), **defaults)
    optimizer.load_state_dict(optimizer_state)
    gen = torch.Generator().manual_seed(seed)
    (loss,) = fit_critics([critic], [optimizer], obs, [target], epochs, minibatch, gen)
    return critic.state_dict(), optimizer.state_dict(), loss


def fit_critics_on_pool(
    pool: Any,
    critics: Sequence[Critic],
    optimizers: Sequence[torch.optim.Optimizer],
    obs: Tensor,
    targets: Sequence[Tensor],
    epochs: int,
    minibatch: int,
    seed: int,
) -> list[float]:
    """Fit each critic on its own, in parallel on ``pool``'s workers where it has several.

    Each critic is fitted as :func:`fit_critics` fits it (minibatches shuffled by a generator
    seeded ``seed``, the same permutations for every critic), so the result is the same, bit for
    bit, wherever it ran (``pool=None`` or a serial pool: here, one after the other). The critics
    and optimizers are updated in place.

    Returns:
        The full-batch MSE of each critic after fitting.
    """
    if not len(critics) == len(optimizers) == len(targets) >= 1:
        raise ValueError(
            f"need one optimizer and one target per critic, got {len(critics)} critics, "
            f"{len(optimizers)} optimizers and {len(targets)} targets"
        )
    if pool is None or not pool.parallel:
        # together: one shared forward/backward per minibatch, the same numbers as one by one
        # (each critic's gradient is its own loss's; tests/test_cpo.py checks it)
        gen = torch.Generator().manual_seed(seed)
        return fit_critics(critics, optimizers, obs, targets, epochs, minibatch, gen)
    obs = obs.detach()
    futures = [
        pool.submit(
            _fit_one_critic,
            c,
            type(o),
            dict(o.defaults),
            o.state_dict(),
            obs,
            t.detach(),
            epochs,
            minibatch,
            seed,
        )
        for c, o, t in zip(critics, optimizers, targets, strict=True)
    ]
    losses = []
    for critic, optimizer, fut in zip(critics, optimizers, futures, strict=True):
        state, opt_state, loss = fut.result()
        critic.load_state_dict(state)
        optimizer.load_state_dict(opt_state)
        losses.append(loss)
    return losses


def _adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it (same update rule, less overhead)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch: no fused CPU Adam
        return torch.optim.Adam(params, lr=lr)


# --------------------------------------------------------------------------------- config
@dataclass
class CPOConfig:
    """Train CPO (or TRPO with --cost-limit none) on one task; writes progress.csv,
    config.json, TensorBoard events, checkpoints and training.png in the run folder."""

    env: str = field(
        default="safenav-goal",
        metadata={"help": "environment family (safenav-goal, safenav-button, safety-button, ...)"},
    )
    task: Literal["sampled", "corridor"] = field(
        default="sampled",
        metadata={
            "help": "sampled: the first training task drawn with --seed; corridor: the hand-built "
            "safenav-goal task whose direct path crosses a hazard"
        },
    )
    steps: int = field(default=300_000, metadata={"help": "total environment steps"})
    steps_per_iter: int = field(
        default=16000,
        metadata={
            "help": "environment steps per CPO iteration (large batches keep the cost near its limit: "
            "see benchmarks/cpo_prediction.py)"
        },
    )
    num_envs: int = field(default=16, metadata={"help": "parallel sub-environments"})
    num_workers: int = field(
        default=1,
        metadata={
            "help": "deprecated, the same as --backend processes --workers N when N > 1 (Safety-Gymnasium "
            "envs only; results do not depend on it)"
        },
    )
    backend: Literal["auto", "serial", "processes", "ray"] = field(
        default="auto",
        metadata={
            "help": "where the shards of a batch are sampled: serial, worker processes, or Ray "
            "(auto: processes when the machine has more than one core); results do not depend on it"
        },
    )
    workers: int | None = field(
        default=None, metadata={"help": "worker processes / Ray CPUs (none: one per core)"}
    )
    ray_address: str | None = field(
        default=None, metadata={"help": "join this Ray cluster (none: start a local instance)"}
    )
    max_retries: int = field(default=2, metadata={"help": "reruns of a job whose worker died"})
    shards: int = field(
        default=4,
        metadata={
            "help": "blocks of sub-environments per batch, sampled in parallel by the workers (the "
            "results depend on it, not on the backend or the number of workers)"
        },
    )
    horizon: int | None = field(default=None, metadata={"help": "episode length (none: the env default)"})
    seed: int = field(default=0, metadata={"help": "random seed (task, env, policy, sampling)"})
    cost_limit: float | tuple[float, ...] | None = field(
        default=25.0,
        metadata={
            "help": "per-episode cost limit: one value for every channel, one per channel, "
            "or none (TRPO, no constraint)"
        },
    )
    constrain: Literal["channels", "total"] = field(
        default="channels",
        metadata={"help": "channels: one constraint per cost channel; total: one on their sum"},
    )
    debias: bool = field(
        default=True,
        metadata={
            "help": "correct the constraints for the optimism of a step chosen on noisy cost "
            "gradients (estimated from two halves of the batch; see rl.cpo.debiased_offsets); "
            "--no-debias: the textbook CPO step, whose costs settle above the limits"
        },
    )
    cost_confidence: float = field(
        default=0.5,
        metadata={
            "help": "constrain an upper confidence bound of the episode cost: ep_cost + z * standard "
            "error, z the normal quantile of this level (0.5: the estimated mean, as in CPO)"
        },
    )
    delta: float = field(default=0.01, metadata={"help": "trust region: 0.5 x'Hx <= delta"})
    damping: float = field(default=0.1, metadata={"help": "Fisher damping"})
    cg_iters: int = field(default=15, metadata={"help": "conjugate-gradient iterations"})
    backtrack_coef: float = field(default=0.8, metadata={"help": "line-search step shrink factor"})
    max_backtracks: int = field(default=15, metadata={"help": "line-search trials"})
    kl_tolerance: float = field(
        default=1.5, metadata={"help": "line search accepts mean KL <= kl_tolerance * delta"}
    )
    gamma: float = field(default=0.99, metadata={"help": "reward discount"})
    lam: float = field(default=0.95, metadata={"help": "reward GAE lambda"})
    cost_gamma: float = field(default=0.99, metadata={"help": "cost discount"})
    cost_lam: float = field(default=0.95, metadata={"help": "cost GAE lambda"})
    hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "policy hidden sizes (tanh)"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial policy log-std"})
    critic_hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "critic hidden sizes"})
    critic_lr: float = field(default=1e-3, metadata={"help": "critic Adam learning rate"})
    critic_epochs: int = field(default=10, metadata={"help": "critic epochs per iteration"})
    critic_minibatch: int = field(default=128, metadata={"help": "critic minibatch size"})
    obs_normalize: bool = field(
        default=True,
        metadata={
            "help": "normalise observations with running statistics (frozen during a batch, merged "
            "after it); false: raw observations, as OmniSafe's CPO defaults. The first merge shifts "
            "the policy's inputs from raw to normalised ones, a large policy change that the trust "
            "region does not see when iterations are few and batches large"
        },
    )
    dtype: Literal["float64", "float32"] = field(default="float64", metadata={"help": "policy dtype"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    out: str | None = field(
        default=None, metadata={"help": "run folder (new or empty; none: runs/<env>-cpo-seed<seed>-<time>)"}
    )
    resume: str | None = field(
        default=None,
        metadata={
            "help": "continue the run in this folder from its latest checkpoint (its config.json is "
            "used and checked against the checkpoints; --steps may extend the run, never below what "
            "the folder holds, and the options that do not change the results, such as --threads, "
            "--backend, --workers, --checkpoint-every, may change, on the command line or in --config)"
        },
    )
    checkpoint_every: int = field(default=10, metadata={"help": "iterations between checkpoints"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard events"})
    wandb: bool = field(
        default=False, metadata={"help": "also log to Weights & Biases (needs the wandb package)"}
    )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value: the ranges shared with ``rl.meta_cpo``
        (:func:`rl.runtime.validation.validate_settings`), then CPO's own rules."""
        from rl.runtime.validation import validate_settings

        validate_settings(self)
        if self.steps_per_iter % self.num_envs:
            raise ConfigError(
                f"steps_per_iter ({self.steps_per_iter}) must be a multiple of num_envs ({self.num_envs})"
            )
        if self.steps < self.steps_per_iter:
            raise ConfigError(
                f"steps ({self.steps}) must be >= steps_per_iter ({self.steps_per_iter}): "
                "every iteration takes steps_per_iter env steps"
            )
        if self.task == "corridor" and self.env != "safenav-goal":
            raise ConfigError(f"--task corridor needs --env safenav-goal, got {self.env!r}")
        if self.num_workers > 1 and not _is_safety_gym(self.env):
            raise ConfigError(
                f"num_workers > 1 (got {self.num_workers}) steps Safety-Gymnasium environments in worker "
                f"processes; the built-in {self.env!r} is vectorised in numpy and takes no workers"
            )

    @property
    def iterations(self) -> int:
        """Number of CPO iterations (``steps // steps_per_iter``, at least 1)."""
        return max(1, self.steps // self.steps_per_iter)


_RESUME_OVERRIDABLE = (
    "steps",
    "checkpoint_every",
    "threads",
    "num_workers",
    "backend",
    "workers",
    "ray_address",
    "max_retries",
    "progress",
    "tensorboard",
    "wandb",
    "resume",
)


#: Settings that do not define a run: those that may change on resuming, and where it is written.
_NOT_RUN_DEFINING = (*_RESUME_OVERRIDABLE, "out")


def _restore_checkpoint(run_dir: Path, st: _State, settings: dict[str, Any]) -> tuple[Path, dict] | None:
    """Restore ``st`` from the newest checkpoint of ``run_dir`` that loads, fits and was made with
    ``settings`` (:func:`rl.runtime.checkpoint.restore_latest_checkpoint`); ``None``: none did."""
    from rl.runtime.checkpoint import checkpoint_step, restore_latest_checkpoint
    from rl.runtime.config import run_settings

    def restore(path: Path, state: dict[str, Any]) -> None:
        if int(state["iteration"]) != checkpoint_step(path) + 1:
            raise ValueError(
                f"it holds iteration {state['iteration']!r}, expected {checkpoint_step(path) + 1}"
            )
        backup = copy.deepcopy(st.state_dict())  # module state dicts share storage with the modules
        try:
            st.load_state_dict(state)
        except Exception:
            st.load_state_dict(backup)  # a partly restored state must not remain
            raise

    defaults = run_settings(CPOConfig(), exclude=_NOT_RUN_DEFINING)
    return restore_latest_checkpoint(run_dir, restore, settings, defaults)


def _new_run_dir(cfg: CPOConfig) -> Path:
    """A fresh run folder (``cfg.out`` or a dated one under ``runs/``); a taken ``--out`` is a
    ``ConfigError``."""
    from rl.runtime import make_run_dir

    try:
        return make_run_dir("runs", [cfg.env, "cpo", f"seed{cfg.seed}"], out=cfg.out)
    except (FileExistsError, NotADirectoryError) as err:
        raise ConfigError(f"--out {cfg.out}: {err}") from err


def _is_safety_gym(env: str) -> bool:
    """Whether ``env`` names a Safety-Gymnasium environment (a family or a raw id)."""
    from rl.envs import BUILTIN_FAMILIES

    return env not in BUILTIN_FAMILIES


# --------------------------------------------------------------------------------- training
def make_env(cfg: CPOConfig) -> Any:
    """The vectorised environment of ``cfg`` (task per ``cfg.task``)."""
    from rl.envs import make

    kwargs: dict[str, Any] = {}
    if cfg.horizon is not None:
        kwargs["horizon"] = cfg.horizon
    if cfg.num_workers > 1:
        kwargs["num_workers"] = cfg.num_workers
    task = None
    if cfg.task == "corridor":
        from rl.envs.safenav import corridor_task

        task = corridor_task()
    return make(cfg.env, task=task, num_envs=cfg.num_envs, seed=cfg.seed, **kwargs)


def make_pool(cfg: CPOConfig) -> Any:
    """The :class:`rl.runtime.parallel.TaskPool` that samples the shards of every batch
    (``--num-workers N > 1``, deprecated, is ``--backend processes --workers N``). ``auto`` with
    batches under :data:`PARALLEL_MIN_STEPS` steps is ``serial``: starting workers would cost more
    than they save."""
    from rl.runtime.parallel import TaskPool

    if cfg.num_workers > 1:
        return TaskPool("processes", cfg.num_workers, max_retries=cfg.max_retries)
    backend = "serial" if cfg.backend == "auto" and cfg.steps_per_iter < PARALLEL_MIN_STEPS else cfg.backend
    return TaskPool(backend, cfg.workers, cfg.ray_address, cfg.max_retries).start()


#: ``--backend auto`` samples batches smaller than this in the driver process.
PARALLEL_MIN_STEPS = 4000


def env_spec(cfg: CPOConfig, task: Any) -> EnvSpec:
    """How the workers build the environment of ``cfg`` (with ``task``, the built one's)."""
    kwargs = () if cfg.horizon is None else (("horizon", cfg.horizon),)
    return EnvSpec(cfg.env, task, cfg.num_envs, kwargs)


def sampling_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator of iteration ``iteration``'s batch (reset and noise seeds): derived from the
    run's seed and the iteration only, so that a batch can be started before the previous
    iteration's critic fit has drawn its shuffles."""
    derived = int(np.random.SeedSequence([int(seed), int(iteration), 7]).generate_state(1)[0])
    return torch.Generator().manual_seed(derived)


@dataclass
class _State:
    """Everything a checkpoint restores."""

    policy: GaussianPolicy
    params: Tensor
    reward_critic: Critic
    cost_critic: Critic
    reward_opt: torch.optim.Optimizer
    cost_opt: torch.optim.Optimizer
    normalizer: ObsNormalizer
    generator: torch.Generator
    iteration: int = 0  # next iteration to run
    env_steps: int = 0
    seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        from rl.runtime import rng_state

        return {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "seconds": self.seconds,
            "params": self.params.detach().clone(),
            "reward_critic": self.reward_critic.state_dict(),
            "cost_critic": self.cost_critic.state_dict(),
            "reward_opt": self.reward_opt.state_dict(),
            "cost_opt": self.cost_opt.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "rng": rng_state({"sampler": self.generator}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from rl.runtime import set_rng_state

        params = state["params"]
        if params.shape != self.params.shape:
            raise ValueError(
                f"checkpoint params have shape {tuple(params.shape)}, the policy expects {tuple(self.params.shape)}"
            )
        self.params = params.to(self.params.dtype)
        self.reward_critic.load_state_dict(state["reward_critic"])
        self.cost_critic.load_state_dict(state["cost_critic"])
        self.reward_opt.load_state_dict(state["reward_opt"])
        self.cost_opt.load_state_dict(state["cost_opt"])
        self.normalizer.load_state_dict(state["normalizer"])
        set_rng_state(state["rng"], {"sampler": self.generator})
        self.iteration = int(state["iteration"])
        self.env_steps = int(state["env_steps"])
        self.seconds = float(state["seconds"])


def _init_state(cfg: CPOConfig, env: Any) -> _State:
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    gen = torch.Generator().manual_seed(cfg.seed)
    policy = GaussianPolicy(env.obs_dim, env.act_dim, cfg.hidden, cfg.init_log_std, dtype)
    params = policy.init_params(gen)
    n_cost = len(env.cost_channels)
    reward_critic = Critic(env.obs_dim, 1, cfg.critic_hidden, dtype=dtype, generator=gen)
    cost_critic = Critic(env.obs_dim, n_cost, cfg.critic_hidden, dtype=dtype, generator=gen)
    return _State(
        policy=policy,
        params=params,
        reward_critic=reward_critic,
        cost_critic=cost_critic,
        reward_opt=_adam(reward_critic.parameters(), cfg.critic_lr),
        cost_opt=_adam(cost_critic.parameters(), cfg.critic_lr),
        # Without normalisation: mean 0, variance 1 for ever and no clipping (raw observations).
        normalizer=ObsNormalizer(env.obs_dim)
        if cfg.obs_normalize
        else ObsNormalizer(env.obs_dim, clip=math.inf),
        generator=gen,
    )


def _cost_limits(cfg: CPOConfig, channels: tuple[str, ...]) -> list[float] | None:
    """Per-constraint limits (one per channel, or one for the total), or None (TRPO)."""
    if cfg.cost_limit is None:
        return None
    limits = [float(cfg.cost_limit)] if isinstance(cfg.cost_limit, float | int) else list(cfg.cost_limit)
    m = 1 if cfg.constrain == "total" else len(channels)
    if len(limits) == 1:
        limits = limits * m
    if len(limits) != m:
        raise ConfigError(
            f"cost_limit has {len(limits)} values, expected 1 or {m} "
            f"({'the total' if cfg.constrain == 'total' else f'channels {channels}'})"
        )
    return limits


def _row(it: int, st: _State, batch: Batch, info: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "iteration": it,
        "env_steps": st.env_steps,
        "ep_ret": batch.ep_ret,
        "ep_cost": batch.ep_cost_total,
    }
    if len(batch.cost_channels) > 1:
        for ch, value in zip(batch.cost_channels, batch.ep_cost, strict=True):
            row[f"cost_{ch}"] = float(value)
    row.update(
        {"ep_len": batch.ep_len, "episodes": batch.num_episodes, "kl": info["kl"], "case": info["case"]}
    )
    row["lam"] = info["lam"]
    names = extra.pop("constraint_names")
    for key in ("nu", "optimism"):
        values = info.get(key) or [None] * len(names)
        if len(names) == 1:
            row[key] = values[0]
        else:
            for name, value in zip(names, values, strict=True):
                row[f"{key}_{name}"] = value
    row.update(
        {
            "accepted": info["accepted"],
            "backtracks": info["backtracks"],
            "improve_r": info["improve_r"],
            "expected_improve": info["expected_improve"],
            "cg_residual": info["cg_residual"],
        }
    )
    row.update(extra)
    return row


def train(cfg: CPOConfig) -> Path:
    """Run CPO as configured; returns the run folder (see :class:`CPOConfig`)."""
    from rl.runtime import RunLogger, config_to_dict, progress_bar
    from rl.runtime.checkpoint import settings_record
    from rl.runtime.config import run_settings

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    try:
        env = make_env(cfg)
    except ValueError as err:  # an environment this program cannot make: a configuration error
        raise ConfigError(f"--env {cfg.env}: {err}") from err
    try:  # nothing is written before the run's settings and its checkpoints are checked
        st = _init_state(cfg, env)
        channels = tuple(env.cost_channels)
        limits = _cost_limits(cfg, channels)
        settings = run_settings(cfg, exclude=_NOT_RUN_DEFINING)
        if cfg.resume is not None:
            run_dir = Path(cfg.resume)
            found = _restore_checkpoint(run_dir, st, settings)
            if cfg.iterations < st.iteration:
                raise ConfigError(
                    f"--steps {cfg.steps} gives {cfg.iterations} iterations of {cfg.steps_per_iter} steps, "
                    f"fewer than the {st.iteration} this run folder holds; give --steps "
                    f"{st.iteration * cfg.steps_per_iter} or more"
                )
        else:
            run_dir = _new_run_dir(cfg)
    except BaseException:
        env.close()
        raise
    constraint_names = ("total",) if cfg.constrain == "total" else channels
    step = TrustRegionStep(delta=cfg.delta, cg_iters=cfg.cg_iters, cg_tol=1e-10)
    if cfg.resume is not None:
        log = RunLogger(
            run_dir,
            tensorboard=cfg.tensorboard,
            resume_iteration=st.iteration - 1 if found else -1,
            wandb=config_to_dict(cfg) if cfg.wandb else None,
        )
        log.write_config(config_to_dict(replace(cfg, resume=None)))  # extended: record the new --steps
    else:
        log = RunLogger(
            run_dir, tensorboard=cfg.tensorboard, wandb=config_to_dict(cfg) if cfg.wandb else None
        )
        log.write_config(config_to_dict(cfg))
    record = settings_record(settings)  # in every checkpoint: --resume checks config.json against it

    from rl.runtime import save_checkpoint

    total = cfg.iterations
    bar = progress_bar(total, initial=st.iteration, desc=f"cpo {cfg.env}") if cfg.progress else None
    pool = make_pool(cfg)
    spec = env_spec(cfg, env.task)
    started = None  # the shards of the next batch, started while the critics are fitted

    def start_sampling(iteration: int) -> list[Any]:
        return submit_sharded(
            pool,
            spec,
            st.policy,
            st.params,
            cfg.steps_per_iter,
            st.normalizer,
            shards=cfg.shards,
            generator=sampling_generator(cfg.seed, iteration),
        )

    try:
        while st.iteration < total:
            it = st.iteration
            t0 = time.perf_counter()
            stats_before = st.normalizer.stats()
            batch = gather_sharded(
                start_sampling(it) if started is None else started,
                st.normalizer,
                st.reward_critic,
                st.cost_critic,
                gamma=cfg.gamma,
                lam=cfg.lam,
                cost_gamma=cfg.cost_gamma,
                cost_lam=cfg.cost_lam,
                update_normalizer=cfg.obs_normalize,
            )
            started = None
            t_sampled = time.perf_counter()
            policy_batch = sum_cost_channels(batch) if cfg.constrain == "total" else batch
            st.params, info = cpo_update(
                st.policy,
                st.params,
                policy_batch,
                limits,
                step,
                damping=cfg.damping,
                backtrack_coef=cfg.backtrack_coef,
                max_backtracks=cfg.max_backtracks,
                kl_tolerance=cfg.kl_tolerance,
                debias=cfg.debias,
                confidence=cfg.cost_confidence,
                pool=pool,
                fisher_parts=cfg.shards,
            )
            # collect merged this batch into the observation statistics: re-express the policy and
            # critics for the new statistics so that the update changes nothing but what CPO chose
            stats_after = st.normalizer.stats()
            st.params = st.policy.reparametrize_input(st.params, stats_before, stats_after)
            if pool.parallel and it + 1 < total:
                # the next batch needs only the policy and the normaliser: its shards run in the
                # workers while the critics are fitted here (the same numbers as one after the other)
                started = start_sampling(it + 1)
            loss_vr, loss_vc = fit_critics(
                (st.reward_critic, st.cost_critic),
                (st.reward_opt, st.cost_opt),
                batch.obs,
                (batch.ret_r, batch.ret_c),
                cfg.critic_epochs,
                cfg.critic_minibatch,
                st.generator,
            )
            st.reward_critic.reparametrize_input(stats_before, stats_after)
            st.cost_critic.reparametrize_input(stats_before, stats_after)
            st.env_steps += batch.env_steps
            t_done = time.perf_counter()
            st.seconds += t_done - t0
            st.iteration = it + 1
            extra = {
                "constraint_names": constraint_names,
                "std": float(torch.exp(st.policy.log_std(st.params)).mean()),
                "loss_v_r": loss_vr,
                "loss_v_c": loss_vc,
                "seconds": round(st.seconds, 3),
                "sample_seconds": round(t_sampled - t0, 3),
                "update_seconds": round(t_done - t_sampled, 3),
            }
            log.log(_row(it, st, batch, info, extra))
            if st.iteration % cfg.checkpoint_every == 0 or st.iteration == total:
                save_checkpoint(run_dir, {**st.state_dict(), **record}, step=it)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    ret=f"{batch.ep_ret:.2f}", cost=f"{batch.ep_cost_total:.2f}", case=info["case"]
                )
    finally:
        if bar is not None:
            bar.close()
        log.close()
        pool.close()
        env.close()
    _plot(run_dir, channels, constraint_names, limits)
    return run_dir


def _plot(
    run_dir: Path, channels: tuple[str, ...], constraint_names: tuple[str, ...], limits: list[float] | None
) -> None:
    """``training.png``: return and cost per episode against env steps, limits dashed."""
    from rl.runtime.plots import plot_or_warn, plot_training

    if constraint_names == ("total",) or len(channels) == 1:
        cost_panel: tuple[str, list[str], Any] = ("cost", ["ep_cost"], limits)
    else:
        cost_panel = ("cost", [f"cost_{ch}" for ch in channels], limits)
    plot_or_warn(  # plotting is a convenience, never fatal (a full disk, a missing matplotlib)
        plot_training,
        run_dir / "progress.csv",
        run_dir / "training.png",
        x="env_steps",
        panels=[("return", ["ep_ret"]), cost_panel],
    )


def parse_args(argv: Sequence[str] | None = None) -> CPOConfig:
    """Config from the command line; with ``--resume DIR`` from ``DIR/config.json`` plus the few
    options allowed to change (from the command line or ``--config FILE``). Errors are usage
    errors (exit status 2)."""
    from rl.runtime.config import parse_config_or_resume

    return parse_config_or_resume(CPOConfig, argv, _RESUME_OVERRIDABLE, "rl.cpo")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m rl.cpo`` (``--help`` lists every option)."""
    from rl.runtime.config import usage_error

    cfg = parse_args(argv)
    try:
        run_dir = train(cfg)
    except ConfigError as err:  # raised before anything is written
        usage_error(CPOConfig, str(err))
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main()
