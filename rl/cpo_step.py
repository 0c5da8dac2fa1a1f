"""The CPO step (Achiam et al., 2017) on :mod:`difftrust`: surrogates, direction, optimism, line search.

This one module is the CPO library that every caller uses: ``python -m rl.cpo``'s training,
Meta-CPO's inner loop and meta-step (:mod:`rl.meta_cpo`), the adaptation at meta-test and the
multi-task baseline. One update, top to bottom:

1. **Surrogates** (:func:`surrogates`), ``ratio = pi_phi(a|s) / p_beh(a|s)``::

       L_R(phi) = mean(ratio * adv_r)
       L_C(phi) = ep_len * mean(ratio * adv_c)      (one entry per cost channel)

   ``L_C`` is the first-order estimate of the change of the per-episode cost (EpCost) when the
   policy moves from the behaviour policy to ``phi``, so it has the units of
   ``b = EpCost - limit`` (see :mod:`rl.rollout`).
2. **Direction** (:func:`direction`): ``g = grad L_R``, ``A = [grad L_Cj]_j``,
   ``b = ep_cost (+ z sem) - cost_limits`` (:func:`cost_offsets`), ``H`` the damped Fisher of
   ``mean KL(pi_params || pi_phi)`` at ``params`` on the batch's states or a subsample of them
   (:func:`fisher_states`, :func:`fisher_metric`), and the step solves::

       max_x g'x   s.t.   0.5 x'Hx <= delta,   b_j + a_j'x <= 0

   with :class:`difftrust.TrustRegionStep` (closed form or active set for few constraints, a cone
   program for many, the least-violation *recovery* step when the linearised constraints cannot
   be met inside the trust region). No constraint (``cost_limits=None``) gives TRPO. With
   ``create_graph=True`` the step is differentiable in ``params`` through ``g``, ``A`` and the
   metric (``frozen_metric``: not through the metric), and not through the sampling distribution:
   the behaviour log-probabilities are constants of the data (the MAML-TRPO estimator).
3. **Optimism** (:func:`optimism_offsets`, ``debias=True``): the offsets corrected for the
   optimism of a step chosen on noisy gradients, from two independent halves of the data and the
   reduced problem ``(K, b, delta)`` of the uncorrected step (:attr:`difftrust.StepResult.K`,
   solved again with :func:`difftrust.solve_reduced`).
4. **Line search** (:func:`line_search`): try ``params + 0.8^k x``, ``k = 0, 1, ...``; accept the
   first step whose mean ``KL(pi_old || pi_new)`` on the batch states is at most
   ``kl_tolerance * delta`` (``kl_tolerance = 1.5`` by default: the quadratic model bounds the
   damped KL, the true KL may exceed ``delta`` slightly, as in OpenAI baselines' TRPO), whose
   reward surrogate does not decrease (unless the case is ``"recovery"``), and whose cost
   surrogates rise by at most ``max(-b_j, 0)`` (in recovery: must not rise). If none passes, the
   policy is kept. :func:`backtrack` is the loop, shared with the meta-step's line search.

:func:`cpo_update` is steps 2-4 in one call.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

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
from rl.policy import GaussianPolicy
from rl.rollout import Batch
from rl.runtime.parallel import worker_state

__all__ = [
    "Direction",
    "RepeatedProducts",
    "ReusedFisherMetric",
    "backtrack",
    "confidence_z",
    "cost_offsets",
    "cpo_direction",
    "cpo_update",
    "debiased_offsets",
    "direction",
    "fisher_metric",
    "fisher_states",
    "half_gradients",
    "line_search",
    "on_device",
    "optimism_offsets",
    "sum_cost_channels",
    "surrogates",
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
    device = batch.obs.device
    limits = torch.as_tensor(cost_limits, dtype=dtype, device=device)
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
    b = torch.as_tensor(batch.ep_cost, dtype=dtype, device=device) - limits
    if confidence != 0.5:
        b = b + confidence_z(confidence) * torch.as_tensor(batch.ep_cost_sem, dtype=dtype, device=device)
    return b


def confidence_z(confidence: float) -> float:
    """The standard normal quantile of ``confidence`` in (0, 1) (0.5 -> 0, 0.9 -> 1.2816)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(confidence, dtype=torch.float64)))


def on_device(batch: Batch, device: torch.device | str) -> Batch:
    """``batch`` with its tensors on ``device`` (``batch`` itself when they are there already)."""
    device = torch.device(device)
    if batch.obs.device == device:
        return batch
    return replace(batch, **{name: getattr(batch, name).to(device) for name in Batch._TENSORS})


def sum_cost_channels(batch: Batch) -> Batch:
    """A view of ``batch`` with its cost channels summed into one channel ``"total"``.

    Used to constrain the total cost (Safety-Gymnasium's scalar ``cost``) with one
    constraint instead of one per channel. Critic targets keep their channels.
    """
    return replace(
        batch,
        adv_c=batch.adv_c.sum(-1, keepdim=True),
        ep_cost=np.asarray([float(np.sum(batch.ep_cost))]),
        cost_channels=("total",),
        episode_costs=None if batch.episode_costs is None else batch.episode_costs.sum(-1, keepdims=True),
    )


# ---------------------------------------------------------------------------- the metric
def fisher_states(obs: Tensor, limit: int) -> Tensor:
    """At most ``limit`` states, an even stride of ``obs`` (the Fisher metric's sample: the
    gradients use the whole batch, the curvature a deterministic subsample, as TRPO does)."""
    stride = max(1, math.ceil(obs.shape[0] / limit))
    return obs[::stride]


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

    ``create_graph=True`` gives the double-backward :class:`difftrust.FisherMetric`, differentiable
    in ``params`` when they carry a graph (Meta-CPO's inner steps use this form, with or without a
    graph). Otherwise the closed-form product (:meth:`rl.policy.GaussianPolicy.fisher_product`: the
    same matrix, about twice as fast), its sum over the states taken in ``parts`` blocks of rows;
    with a parallel ``pool`` the blocks are computed by its workers, which keep their block's
    activations for every later product (each product then sends only ``v``), the same numbers as
    here. The closed form remembers its products (:class:`RepeatedProducts`): a later solve with
    the same right-hand sides, such as :func:`cpo_update`'s step after the optimism correction,
    which repeats the uncorrected step's conjugate gradient, looks them up instead of computing them.
    """
    if create_graph:
        return ReusedFisherMetric(lambda ref, p: policy.kl(ref, p, obs), params, damping)
    params = params.detach()
    if pool is None or not pool.parallel:
        product = policy.fisher_product(params, obs, parts)
    else:
        product = policy.fisher_from_blocks(
            params, obs.shape[0], _remote_fisher_blocks(pool, policy, params, obs, parts)
        )
    return OperatorMetric(RepeatedProducts(product), damping=damping)


class ReusedFisherMetric(FisherMetric):
    """:class:`difftrust.FisherMetric` whose constant products are computed once.

    A CPO direction with the optimism correction asks the metric three times for its operator at
    the same parameters without a graph (the uncorrected step's solve, the correction's, the
    corrected step's; difftrust builds a detached operator for a step's forward solves and keeps it
    for its backward solve), and the corrected step's conjugate gradient repeats the uncorrected
    one's product for product (the same right-hand sides ``[g, A]`` and metric; the offsets ``b``
    only enter the reduced problem). Here the first-order graph of the KL is built once per
    parameter value (the last one is kept, compared bit for bit) and its products are remembered
    (:class:`RepeatedProducts`): the same numbers as building the operator and computing each
    product again. With ``create_graph=True`` (products differentiable in the parameters, the
    step's backward), or parameters that carry a graph or live off the CPU, it is the plain metric.
    """

    def __init__(self, kl: Callable[[Tensor, Tensor], Tensor], params: Tensor, damping: float = 0.1):
        super().__init__(kl, params, damping)
        # (dtype, shape, bytes of the parameters, their operator), shared with detached()
        self._shared: list[tuple[torch.dtype, tuple[int, ...], bytes, RepeatedProducts]] = []

    def operator(self, psi: Tensor, create_graph: bool = False) -> Callable[[Tensor], Tensor]:
        if create_graph or psi.requires_grad or psi.device.type != "cpu":
            return super().operator(psi, create_graph=create_graph)
        key = (psi.dtype, tuple(psi.shape), psi.contiguous().numpy().tobytes())
        if not self._shared or self._shared[0][:3] != key:
            self._shared[:] = [(*key, RepeatedProducts(super().operator(psi)))]
        return self._shared[0][3]

    def detached(self) -> ReusedFisherMetric:
        """The same metric as a constant (its parameters detached; no gradient reaches them),
        sharing this one's operator and products."""
        out = ReusedFisherMetric(self.kl, self.params.detach(), self.damping)
        out._shared = self._shared
        return out


class RepeatedProducts:
    """``v -> product(v)`` that remembers its results: a ``v`` equal, bit for bit, to one seen
    before gets the stored product (a copy) without calling ``product``, so the numbers are those
    of calling it again.

    Conjugate gradient on the same right-hand sides with the same operator runs the same products
    in the same order: the second solve costs lookups. Inputs and products are kept up to
    ``max_bytes`` in all (the oldest dropped first); tensors off the CPU are not remembered.

    Attributes:
        calls: Products computed.
        hits: Products looked up.
    """

    def __init__(self, product: Callable[[Tensor], Tensor], max_bytes: int = 64 * 2**20) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.product = product
        self.max_bytes = max_bytes
        self.calls = 0
        self.hits = 0
        self._seen: dict[tuple[torch.dtype, tuple[int, ...], bytes], Tensor] = {}
        self._bytes = 0

    def __call__(self, v: Tensor) -> Tensor:
        key = None
        if v.device.type == "cpu":
            key = (v.dtype, tuple(v.shape), v.detach().contiguous().numpy().tobytes())
            found = self._seen.get(key)
            if found is not None:
                self.hits += 1
                return found.clone()
        out = self.product(v)
        self.calls += 1
        if key is not None:
            size = len(key[2]) + out.numel() * out.element_size()
            while self._seen and self._bytes + size > self.max_bytes:
                oldest = next(iter(self._seen))
                dropped = self._seen.pop(oldest)
                self._bytes -= len(oldest[2]) + dropped.numel() * dropped.element_size()
            if size <= self.max_bytes:
                self._seen[key] = out.detach().clone()
                self._bytes += size
        return out


class FisherBlockMissing(LookupError):
    """A worker was asked for a Fisher block it does not hold (it was restarted, or another worker
    ran the job): the driver sends the block's states again."""


_FISHER_CACHE = "rl.cpo.fisher_blocks"


def _fisher_block_job(
    metric_id: str,
    parts: list[int],
    policy: GaussianPolicy | None,
    params: Tensor | None,
    obs: list[Tensor] | None,
    v: Tensor,
) -> list[Tensor]:
    """A worker's job: the products of Fisher blocks ``parts`` of metric ``metric_id`` with ``v``, in
    that order; with ``obs`` (the blocks' rows) the blocks are built (and kept, blocks of other
    metrics dropped) first."""
    cache = worker_state().setdefault(_FISHER_CACHE, {})
    if obs is not None:
        for old in [k for k in cache if k[0] != metric_id]:
            del cache[old]
        for p, rows in zip(parts, obs, strict=True):
            cache[metric_id, p] = policy.fisher_block(params, rows)
    blocks = [cache.get((metric_id, p)) for p in parts]
    if any(block is None for block in blocks):
        raise FisherBlockMissing(f"no Fisher blocks {parts} of {metric_id} in this worker")
    return [block(v) for block in blocks]


def _remote_fisher_blocks(pool: Any, policy: GaussianPolicy, params: Tensor, obs: Tensor, parts: int):
    """``v -> [block products]`` computed by ``pool``'s workers (see :func:`fisher_metric`): the
    blocks are dealt to ``min(parts, workers)`` groups, one job per group and product (each job a
    round trip: about 190 products' worth per ``rl.cpo`` update), each group kept by one worker."""
    metric_id = uuid.uuid4().hex
    chunks = torch.tensor_split(obs.detach(), parts)
    groups = [list(range(g, parts, pool.workers)) for g in range(min(parts, pool.workers))]
    built: set[int] = set()

    def products(v: Tensor) -> list[Tensor]:
        def submit(g: int, build: bool) -> Any:
            payload = (policy, params, [chunks[p] for p in groups[g]]) if build else (None, None, None)
            return pool.submit(_fisher_block_job, metric_id, groups[g], *payload, v, key=(metric_id, g))

        futures = [submit(g, g not in built) for g in range(len(groups))]
        out: list[Any] = [None] * parts
        for g, fut in enumerate(futures):
            try:
                got = fut.result()
            except FisherBlockMissing:  # its worker died and a fresh one took the job
                got = submit(g, True).result()
            built.add(g)
            for p, product in zip(groups[g], got, strict=True):
                out[p] = product
        return out

    return products


def _constant(metric: Metric | None) -> Metric | None:
    """``metric`` with its tensors detached (a solve with it builds no graph)."""
    if metric is None or not any(t.requires_grad for t in metric.tensors):
        return metric
    if isinstance(metric, ReusedFisherMetric):  # its products are remembered for the later solves
        return metric.detached()
    operator = metric.operator(*[t.detach() for t in metric.tensors])
    return OperatorMetric(lambda v: operator(v))


# ------------------------------------------------------------------- constraint optimism
def _halves(batch: Batch) -> Tensor:
    """Mask of the first half of the batch's episodes: sub-environments ``0 .. N/2 - 1``
    (rows ``i`` with ``i % num_envs < num_envs // 2``), or the first half of the steps for
    one sub-environment."""
    idx = torch.arange(len(batch), device=batch.obs.device)
    n_envs = batch.num_envs
    mask = idx % n_envs < n_envs // 2 if n_envs >= 2 else idx < len(batch) // 2
    if bool(mask.all()) or not bool(mask.any()):
        raise ValueError(f"debiasing needs a batch of at least 2 rows, got {len(batch)}")
    return mask


def half_gradients(policy: GaussianPolicy, params: Tensor, batch: Batch) -> tuple[Tensor, Tensor, int, int]:
    """The rows ``g, a_1, ..., a_C`` estimated on each half of ``batch`` (sub-environments
    ``0 .. N/2-1`` and the rest): ``(rows_a, rows_b, n_a, n_b)``, rows ``(C+1, n)``, detached."""
    theta = params.detach().requires_grad_(True)
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
    return rows[:k], rows[k:], n_a, n_b


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
    prediction (``benchmarks/results/cpo_prediction.md``). The rows are estimated on two
    independent halves of the batch (:func:`half_gradients`) and the correction is
    :func:`optimism_offsets`.

    ``metric`` is the step's metric (default: the damped Fisher on ``batch.obs``, as
    :func:`direction` uses); ``confidence`` is passed to :func:`cost_offsets`.

    Returns:
        ``(b_eff, optimism)``: the corrected offsets ``b - o`` to pass to
        :func:`cpo_direction` and the line search, and ``-o`` (the predicted
        underestimate of each channel's cost change, >= 0 when the step leans on the
        noise), both ``(C,)`` and detached.
    """
    _check_iterations(iterations)
    b = cost_offsets(batch, cost_limits, params.dtype, confidence)
    rows_a, rows_b, n_a, n_b = half_gradients(policy, params, batch)
    if metric is None:
        metric = fisher_metric(policy, params, batch.obs, damping)
    return optimism_offsets(rows_a, rows_b, n_a, n_b, b, metric, step, iterations)


def _check_iterations(iterations: Any) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")


def optimism_offsets(
    rows_a: Tensor,
    rows_b: Tensor,
    n_a: float,
    n_b: float,
    b: Tensor,
    metric: Metric | None,
    step: TrustRegionStep,
    iterations: int = 5,
    plain: StepResult | None = None,
) -> tuple[Tensor, Tensor]:
    """The optimism correction from two independent estimates of the rows ``G = [g, a_1, ..., a_m]``.

    ``rows_a`` and ``rows_b`` are ``(m+1, n)``: the rows estimated on two independent parts of
    the data, of sizes ``n_a`` and ``n_b`` (samples, or tasks for the meta-update); the full
    estimate is their weighted mean. ``D = (rows_a - rows_b) sqrt(n_a n_b) / n`` has the
    covariance of the full estimate's noise ``e``, so ``E[e_j'H^-1 e_i] ~ D_j'H^-1 D_i`` (one CG
    solve with ``m`` right-hand sides). For a step ``x = H^-1 G'w`` the optimism of constraint
    ``j`` is ``o_j = sum_i w_i E[e_j'H^-1 e_i]``, and the corrected constraint
    ``b_j + a_j'x - o_j <= 0`` is the program with offsets ``b'_j = b_j - o_j``. As ``w`` depends
    on ``b'``, the fixed point is iterated ``iterations`` times on difftrust's reduced problem
    ``(K, b', delta)`` (:func:`difftrust.solve_reduced`), ``K = G'H^-1 G`` taken from ``plain``,
    the step with the uncorrected offsets (:attr:`difftrust.StepResult.K` and ``.w``; solved here
    from the mean rows when not given).

    ``metric`` is the step's metric (``None``: identity), ``b`` the uncorrected offsets ``(m,)``.

    Returns:
        ``(b - o, -o)``, both ``(m,)`` and detached.
    """
    b_eff, minus_o, _ = _optimism(rows_a, rows_b, n_a, n_b, b, metric, step, iterations, plain)
    return b_eff, minus_o


def _optimism(
    rows_a: Tensor,
    rows_b: Tensor,
    n_a: float,
    n_b: float,
    b: Tensor,
    metric: Metric | None,
    step: TrustRegionStep,
    iterations: int,
    plain: StepResult | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`optimism_offsets` and the relative residuals of its conjugate gradient (``None``:
    no solve)."""
    _check_iterations(iterations)
    b = b.detach()
    n = n_a + n_b
    D = ((rows_a - rows_b) * (math.sqrt(n_a * n_b) / n)).detach()
    if plain is None:
        G = ((n_a * rows_a + n_b * rows_b) / n).detach()
        if not bool(G.any()):  # g = 0 and a = 0: no step, nothing to correct
            return b, torch.zeros_like(b), None
        plain = step.solve(G[0], G[1:], b, _constant(metric))
    K = plain.K
    if not float(K.diagonal().sum()) > 0:  # g = 0 and a = 0: no step, nothing to correct
        return b, torch.zeros_like(b), None
    rhs = D[1:].T  # H^-1 D_g is not needed: N[j, g] = (H^-1 D_j)'D_g
    residuals = None
    if metric is None:
        sol = rhs
    else:
        operator = metric.operator(*[t.detach() for t in metric.tensors])
        cg = conjugate_gradient(operator, rhs, max_iter=step.cg_iters, tol=step.cg_tol)
        sol, residuals = cg.x, cg.residuals
    N = D[1:] @ sol  # rows: constraints; N[:, 1:] = D_a' H^-1 D_a (symmetrised), N[:, 0] = D_a' H^-1 D_g
    N = torch.cat([(sol.T @ D[0]).unsqueeze(1), (N + N.T) / 2], 1)
    w = plain.w.to(b.dtype)  # the reduced solution at b' = b
    b_eff = b
    for k in range(iterations):
        if k:
            w = solve_reduced(K, b_eff, step.delta, solver=step.solver).w
        optimism = N @ w
        b_eff = b - optimism
    return b_eff.detach(), (-optimism).detach(), residuals


# ------------------------------------------------------------------------------- direction
@dataclass
class Direction:
    """A CPO step and how it was chosen.

    Attributes:
        x: The step ``(n,)`` (differentiable in ``params`` with ``create_graph``); ``x is result.x``.
        result: The :class:`difftrust.StepResult` (``lam``, ``nu``, ``case``, ``cg_residuals``,
            ``w``, ``K``).
        b: The constraint offsets the step was solved with (corrected with ``debias``), ``(C,)``
            detached; ``None`` without constraint.
        optimism: The correction ``-o`` per constraint (zeros without ``debias``); ``None``
            without constraint.
        g: The reward surrogate's gradient the step was solved with (``(n,)``, with a graph
            under ``create_graph``).
        optimism_residuals: The relative residuals of the optimism correction's conjugate
            gradient (``None``: no such solve).
    """

    x: Tensor
    result: StepResult
    b: Tensor | None
    optimism: Tensor | None
    g: Tensor | None = None
    optimism_residuals: Tensor | None = None


def direction(
    policy: GaussianPolicy,
    params: Tensor,
    batch: Batch,
    cost_limits: float | Sequence[float] | Tensor | None,
    step: TrustRegionStep,
    *,
    damping: float = 0.1,
    create_graph: bool = False,
    offsets: Tensor | None = None,
    metric: Metric | None = None,
    confidence: float = 0.5,
    debias: bool = False,
    metric_states: Tensor | None = None,
    autograd_metric: bool = False,
    frozen_metric: bool = False,
) -> Direction:
    """The CPO step at ``params`` on ``batch`` (TRPO when ``cost_limits`` is ``None``).

    Args:
        policy: The policy architecture.
        params: Flat parameters. With ``create_graph=True`` they may carry a graph (an adapted
            parameter vector in Meta-CPO) and ``x`` is differentiable in them through ``g``,
            ``A`` and the metric.
        batch: Data collected with behaviour log-probabilities ``batch.logp``; its cost
            channels are the constraints.
        cost_limits: Scalar (every channel) or ``(C,)`` per-episode cost limits; ``None`` for no
            constraint (TRPO, ``m = 0``).
        step: The trust-region layer (its ``delta``, CG settings, solver).
        damping: Damping added to the Fisher metric.
        create_graph: Build a differentiable step (Meta-CPO inner loop).
        offsets: The constraint offsets ``b`` to use instead of :func:`cost_offsets` (constants).
        metric: The metric to use instead of the damped Fisher (:func:`fisher_metric`).
        confidence: Passed to :func:`cost_offsets`.
        debias: Correct the offsets for the step's optimism (:func:`optimism_offsets`, the rows
            of the two halves of the batch, ``K`` from the uncorrected step).
        metric_states: The states of the Fisher metric (default ``batch.obs``; see
            :func:`fisher_states`).
        autograd_metric: The double-backward Fisher metric even without ``create_graph``
            (Meta-CPO's inner steps and adaptation use it; the closed form otherwise).
        frozen_metric: With ``create_graph``, treat the metric as a constant (an approximation).

    Returns:
        A :class:`Direction`.
    """
    if not isinstance(step, TrustRegionStep):
        raise TypeError(f"step must be a difftrust.TrustRegionStep, got {type(step).__name__}")
    theta = params if create_graph and params.requires_grad else params.detach().requires_grad_(True)
    with torch.enable_grad():
        loss_r, loss_c = surrogates(policy, theta, batch)
        if cost_limits is None:
            (g,) = torch.autograd.grad(loss_r, theta, create_graph=create_graph)
            A = b = None
        else:
            b = cost_offsets(batch, cost_limits, params.dtype, confidence) if offsets is None else offsets
            b = b.detach()
            outputs = torch.cat([loss_r.reshape(1), loss_c])
            rows = [
                torch.autograd.grad(out, theta, create_graph=create_graph, retain_graph=True)[0]
                for out in outputs
            ]
            g, A = rows[0], torch.stack(rows[1:])
    if metric is None:
        at = theta if create_graph and not frozen_metric else theta.detach()
        obs = batch.obs if metric_states is None else metric_states
        metric = fisher_metric(policy, at, obs, damping, create_graph or autograd_metric)
    optimism = None if b is None else torch.zeros_like(b)
    residuals = None
    if debias and b is not None:
        plain = step.solve(g.detach(), A.detach(), b, _constant(metric))
        halves = half_gradients(policy, theta, batch)
        b, optimism, residuals = _optimism(*halves, b, metric, step, 5, plain)
    result = step.solve(g, A, b, metric)
    return Direction(result.x, result, b, optimism, g, residuals)


def cpo_direction(*args: Any, **kwargs: Any) -> tuple[Tensor, StepResult]:
    """``(x, result)`` of :func:`direction` with the same arguments."""
    d = direction(*args, **kwargs)
    return d.x, d.result


# ------------------------------------------------------------------------------ line search
def backtrack(
    params: Tensor,
    x: Tensor,
    trial: Callable[[Tensor], tuple[bool, dict[str, Any]]],
    backtrack_coef: float,
    max_backtracks: int,
) -> tuple[Tensor | None, float, int, dict[str, Any]]:
    """Try ``params + backtrack_coef**k * x`` for ``k = 0 .. max_backtracks - 1``; ``trial(new)``
    says whether to accept and what it measured.

    Returns:
        ``(new, fraction, k, info)`` of the first accepted step, or ``(None, 0.0,
        max_backtracks, info of the last trial)``.
    """
    last: dict[str, Any] = {}
    for k in range(max_backtracks):
        frac = backtrack_coef**k
        new = params + frac * x
        ok, last = trial(new)
        if ok:
            return new, frac, k, last
    return None, 0.0, max_backtracks, last


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

        def trial(new: Tensor) -> tuple[bool, dict[str, Any]]:
            kl = float(policy.kl(params, new, batch.obs))
            loss_r, loss_c = surrogates(policy, new, batch)
            improve_r = float(loss_r - loss_r0)
            change_c = loss_c - loss_c0
            info = {"kl": kl, "improve_r": improve_r, "change_c": change_c.tolist()}
            finite = math.isfinite(kl) and math.isfinite(improve_r) and bool(torch.isfinite(change_c).all())
            ok = finite and kl <= kl_tolerance * delta
            ok = ok and (case == "recovery" or improve_r >= 0.0)
            if slack is not None:
                ok = ok and bool((change_c <= slack).all())
            return ok, info

        new, frac, k, last = backtrack(params, x, trial, backtrack_coef, max_backtracks)
        if new is not None:
            return new, {"accepted": frac, "backtracks": k, **last}
        return params.clone(), {
            "accepted": 0.0,
            "backtracks": max_backtracks,
            "kl": 0.0,
            "improve_r": 0.0,
            "change_c": [0.0] * loss_c0.shape[0],
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
    """One CPO policy update: :func:`direction`, then :func:`line_search`.

    One Fisher metric (:func:`fisher_metric`, its sum in ``fisher_parts`` blocks, computed by
    ``pool``'s workers when it has several) serves the direction and the optimism correction.

    With ``debias=True`` (and a constraint) the offsets are corrected for the step's optimism
    (:func:`optimism_offsets`), used by both the step and the line search; ``info["optimism"]``
    holds the correction per constraint (0 otherwise). ``confidence`` is passed to
    :func:`cost_offsets`.

    Returns:
        ``(new_params, info)``; ``info`` holds ``case``, ``lam``, ``nu`` (list, one per
        constraint), ``b`` (list), ``expected_improve`` (``g'x``), ``step_norm``,
        ``cg_residual`` (the largest relative residual of the update's conjugate-gradient
        solves: the step's and the optimism correction's; NaN without a solve) and the line-search keys
        ``accepted``, ``backtracks``, ``kl``, ``improve_r``, ``change_c``.
    """
    metric = fisher_metric(policy, params, batch.obs, damping, pool=pool, parts=fisher_parts)
    d = direction(
        policy, params, batch, cost_limits, step, metric=metric, confidence=confidence, debias=debias
    )
    res, x = d.result, d.x.detach()
    new, ls = line_search(
        policy,
        params,
        x,
        batch,
        d.b,
        str(res.case),
        float(step.delta),
        backtrack_coef=backtrack_coef,
        max_backtracks=max_backtracks,
        kl_tolerance=kl_tolerance,
    )
    g = d.g.detach()
    info = {
        "case": str(res.case),
        "lam": float(res.lam),
        "nu": [float(v) for v in res.nu.reshape(-1)],
        "b": [] if d.b is None else d.b.tolist(),
        "optimism": [] if d.optimism is None else d.optimism.tolist(),
        "expected_improve": float(g @ x),
        "step_norm": float(x.norm()),
        "cg_residual": _worst(res.cg_residuals, d.optimism_residuals),
        **ls,
    }
    return new, info


def _worst(*residuals: Tensor | None) -> float:
    """The largest of the relative residuals given (NaN when there are none)."""
    values = [float(r.max()) for r in residuals if r is not None and r.numel()]
    return max(values) if values else float("nan")
