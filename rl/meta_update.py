"""The meta-update of Meta-CPO: the inner loop of each task, its meta-gradient, the projected meta-step.

The algorithm (Cho & Sun, AAAI-24; ``docs/concepts.md``), as this file reads:

1. **Inner loop** (:func:`inner_loop`), for each of ``M`` training tasks ``T_i``:
   ``phi^0 = theta`` (a copy with a graph, never an alias: ``theta`` does not move), then ``K``
   CPO steps ``phi^{k+1} = phi^k + TrustRegionStep(delta)(g, A, b, H)`` with ``g = grad L_R``,
   ``A = grad L_C`` (one row per constraint) taken with ``create_graph=True`` on a batch sampled
   with ``pi_{phi^k}``, ``b = J_C - limit`` (per-episode cost, the units of ``L_C``, see
   :mod:`rl.rollout`) and ``H`` the damped Fisher of ``pi_{phi^k}`` (both KL arguments fed
   ``phi^k``), so that ``d phi^K / d theta`` is exact. Each step is the CPO library's
   :func:`rl.cpo_step.direction`.
2. **Meta-gradient** (:func:`task_meta_gradient`): on a validation batch sampled with
   ``pi_{phi^K}``, ``F_i = L_R^val(phi^K)`` and ``G_ij = J_Cj^val - h_j + L_Cj^val(phi^K)``
   (linearised); their gradients with respect to ``theta`` come from reverse passes through all
   inner steps (one per objective, sharing the forward graph). The estimator is the standard
   MAML-TRPO one: the behaviour log-probabilities are constants of the data, so the dependence
   of the *sampling* distribution on ``theta`` is not differentiated (a DiCE/LVC-style estimator
   would be an extension). With fixed data the meta-gradient equals finite differences of the
   whole inner loop (tested).
3. **Meta-update** (:func:`meta_update`): ``theta' = theta + TrustRegionStep(delta_theta)(dF, dG,
   b_theta, H_theta)`` with ``dF = mean_i dF_i``, ``dG = mean_i dG_i``, ``b_theta = mean_i
   J_C^val_i - h`` (the post-adaptation cost) and ``H_theta`` the damped Fisher of ``pi_theta`` on
   the states of the tasks' first inner batches (``--meta-metric identity`` for ``I``). Line
   search (acceptance rule, :func:`rl.cpo_step.backtrack`): the largest ``x * backtrack_coef^j``
   whose mean ``KL(pi_theta || pi_theta')`` on those states is at most ``kl_tolerance *
   delta_theta`` and whose parameters are finite; if none passes, ``theta`` stays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from difftrust import StepResult
from rl.cpo_step import (
    _optimism,
    _worst,
    backtrack,
    confidence_z,
    direction,
    fisher_metric,
    fisher_states,
    on_device,
    surrogates,
)
from rl.envs import make
from rl.policy import Critic, GaussianPolicy, ObsNormalizer
from rl.rollout import Batch, EnvSpec, collect, collect_sharded

if TYPE_CHECKING:
    from rl.meta_cpo import MetaCPOConfig

__all__ = [
    "InnerStep",
    "NonFiniteBatch",
    "Setup",
    "TaskResult",
    "inner_direction",
    "inner_loop",
    "meta_objectives",
    "meta_update",
    "task_meta_gradient",
]


# ============================================================================== the setup
@dataclass
class Setup:
    """Everything a task's inner loop reads (never writes): picklable for worker processes."""

    cfg: MetaCPOConfig
    policy: GaussianPolicy
    reward_critic: Critic
    cost_critic: Critic
    normalizer: ObsNormalizer
    cost_channels: tuple[str, ...]
    limits: list[float] | None  # per constraint, None for no constraint
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # of the updates

    @property
    def constraint_names(self) -> tuple[str, ...]:
        if self.limits is None:
            return ()
        return self.cfg.constraint_names(self.cost_channels)

    def constrained_view(self, batch: Batch) -> Batch:
        """The batch whose cost channels are the constraints."""
        return self.cfg.view(batch)

    def make_env(self, task: Any, seed: int, num_envs: int | None = None) -> Any:
        """The task's vectorised environment (``num_envs`` sub-environments, default the run's)."""
        kwargs: dict[str, Any] = {}
        if self.cfg.horizon is not None:
            kwargs["horizon"] = self.cfg.horizon
        n = self.cfg.num_envs if num_envs is None else num_envs
        return make(self.cfg.env, task=task, num_envs=n, seed=seed, **kwargs)

    def collect(
        self,
        env: Any,
        params: Tensor,
        generator: torch.Generator,
        critics: tuple[Critic, Critic] | None = None,
        steps: int | None = None,
    ) -> Batch:
        """A batch of ``steps`` env steps (default ``cfg.batch_steps``) of ``pi_params`` on ``env``,
        advantages from ``critics`` (default the run's), the normaliser frozen."""
        reward_critic, cost_critic = critics or (self.reward_critic, self.cost_critic)
        return collect(
            env,
            self.policy,
            params.detach().cpu(),
            self.cfg.batch_steps if steps is None else steps,
            self.normalizer,
            reward_critic,
            cost_critic,
            **self.cfg.gae(),
            generator=generator,
            update_normalizer=False,  # frozen within a meta-iteration: tasks share no state
        )

    def env_spec(self, task: Any) -> EnvSpec:
        """The task's environment, buildable in any worker."""
        kwargs = () if self.cfg.horizon is None else (("horizon", self.cfg.horizon),)
        return EnvSpec(self.cfg.env, task, self.cfg.num_envs, kwargs)

    def collect_sharded(self, pool: Any, task: Any, params: Tensor, generator: torch.Generator) -> Batch:
        """A batch of ``task`` in ``cfg.shards`` shards on ``pool`` (:func:`rl.rollout.collect_sharded`)."""
        return collect_sharded(
            pool,
            self.env_spec(task),
            self.policy,
            params.detach().cpu(),
            self.cfg.batch_steps,
            self.normalizer,
            self.reward_critic,
            self.cost_critic,
            shards=self.cfg.shards,
            **self.cfg.gae(),
            generator=generator,
            update_normalizer=False,
        )


# ============================================================================== inner loop
def inner_direction(
    setup: Setup, phi: Tensor, batch: Batch, differentiable: bool, confidence: float | None = None
) -> tuple[Tensor, StepResult]:
    """One CPO step direction at ``phi`` on ``batch`` (differentiable in ``phi`` if asked):
    :func:`rl.cpo_step.direction` with the inner settings (the double-backward Fisher metric on
    ``cfg.fisher_states`` states, ``cfg.frozen_metric``, ``cfg.debias``) and the cost bound at
    ``confidence`` (default ``cfg.cost_confidence``). The result is an :class:`InnerStep`: the
    step's :class:`difftrust.StepResult` with the worst relative residual of its conjugate-gradient
    solves (the step's and the optimism correction's)."""
    cfg = setup.cfg
    d = direction(
        setup.policy,
        phi,
        setup.constrained_view(batch),
        setup.limits,
        cfg.step(cfg.inner_delta),
        damping=cfg.damping,
        create_graph=differentiable,
        confidence=cfg.cost_confidence if confidence is None else confidence,
        debias=cfg.debias,
        metric_states=fisher_states(batch.obs, cfg.fisher_states),
        autograd_metric=True,
        frozen_metric=cfg.frozen_metric,
    )
    fields = {f.name: getattr(d.result, f.name) for f in dataclasses.fields(StepResult)}
    return d.x, InnerStep(**fields, cg_worst=_worst(d.result.cg_residuals, d.optimism_residuals))


@dataclass
class InnerStep(StepResult):
    """The :class:`difftrust.StepResult` of an inner step, with ``cg_worst``: the largest relative
    residual of its conjugate-gradient solves, the step's and the optimism correction's (NaN
    without a solve)."""

    cg_worst: float = float("nan")


def inner_loop(
    setup: Setup, theta: Tensor, sample: Callable[[Tensor], Batch], differentiable: bool
) -> tuple[Tensor, list[Batch], list[StepResult]]:
    """``K`` CPO steps from ``phi^0 = theta`` (a copy). ``sample(phi)`` returns a batch of
    ``pi_phi`` (tests pass fixed data). Returns ``phi^K``, the inner batches (``batches[k]``
    sampled with ``pi_{phi^k}``) and the step results."""
    phi = theta.clone()  # a new tensor: the inner loop never writes into theta
    batches, results = [], []
    for _ in range(setup.cfg.inner_steps):
        batch = sample(phi.detach())
        x, res = inner_direction(setup, phi, batch, differentiable)
        phi = phi + (x if differentiable else x.detach())
        batches.append(batch)
        results.append(res)
    return phi, batches, results


def meta_objectives(
    setup: Setup, theta: Tensor, sample: Callable[[Tensor], Batch], differentiable: bool
) -> tuple[list[Tensor], list[Batch], Batch, list[StepResult]]:
    """The task's objectives as functions of ``theta``: ``[F_i, L_C1^val, ..., L_Cm^val]``.

    ``F_i = L_R^val(phi^K)`` and ``L_Cj^val(phi^K)`` on a validation batch of ``pi_{phi^K}``
    (``G_ij = J_Cj^val - h_j + L_Cj^val``: the constant does not change the gradient).
    Returns the objectives, the inner batches, the validation batch and the step results."""
    phi, batches, results = inner_loop(setup, theta, sample, differentiable)
    val = sample(phi.detach())
    with torch.enable_grad():
        loss_r, loss_c = surrogates(setup.policy, phi, setup.constrained_view(val))
    objectives = [loss_r] + ([] if setup.limits is None else list(loss_c))
    return objectives, batches, val, results


@dataclass
class TaskResult:
    """One task's contribution to the meta-update (all tensors detached)."""

    grad_F: Tensor  # (n,)
    grad_G: Tensor  # (m, n)
    cost_val: np.ndarray  # (m,) post-adaptation per-episode cost per constraint
    ret_pre: float
    cost_pre: np.ndarray  # (C,) per channel, pre-adaptation (pi_theta)
    ret_post: float
    cost_post: np.ndarray  # (C,) per channel, post-adaptation (pi_phi^K)
    first_obs: Tensor  # states of the first inner batch (for H_theta and the normaliser)
    critic_data: list[tuple[Tensor, Tensor, Tensor]]  # (obs, ret_r, ret_c) of every batch
    cases: list[str]
    env_steps: int
    problem: str = ""  # why the task's contribution is unusable ("" if finite)
    cg_residual: float = float("nan")  # worst relative residual of the inner steps' CG solves


class NonFiniteBatch(ValueError):
    """A sampled batch holds NaN or inf: the task's contribution is skipped (never trained on)."""


def _checked_sampler(
    collect_batch: Callable[[Tensor], Batch], inner_steps: int
) -> tuple[Callable[[Tensor], Batch], list[int]]:
    """Wrap ``collect_batch`` so that every batch is checked as it is sampled; also counts steps."""
    calls, steps = [0], [0]

    def sample(phi: Tensor) -> Batch:
        k = calls[0]
        calls[0] += 1
        batch = collect_batch(phi)
        steps[0] += batch.env_steps
        where = f"inner batch {k}" if k < inner_steps else "the validation batch"
        for name in Batch._TENSORS:
            if not bool(torch.isfinite(getattr(batch, name)).all()):
                raise NonFiniteBatch(f"non-finite {name} in {where}")
        if not np.isfinite(batch.ep_cost).all() or not np.isfinite(batch.ep_ret):
            raise NonFiniteBatch(f"non-finite episode return or cost in {where}")
        return batch

    return sample, steps


def _skipped_task(theta: Tensor, setup: Setup, problem: str, env_steps: int) -> TaskResult:
    nan_c = np.full(len(setup.cost_channels), np.nan)
    m = 0 if setup.limits is None else len(setup.limits)
    return TaskResult(
        grad_F=torch.zeros_like(theta),
        grad_G=theta.new_zeros((m, theta.numel())),
        cost_val=np.full(m, np.nan),
        ret_pre=float("nan"),
        cost_pre=nan_c,
        ret_post=float("nan"),
        cost_post=nan_c,
        first_obs=theta.new_zeros((0, setup.policy.obs_dim)),
        critic_data=[],
        cases=[],
        env_steps=env_steps,
        problem=problem,
    )


def task_meta_gradient(setup: Setup, theta: Tensor, task: Any, seed: int, pool: Any = None) -> TaskResult:
    """Inner loop on ``task``, validation batch, and ``dF_i/dtheta``, ``dG_i/dtheta``.

    With ``pool`` (a :class:`rl.runtime.parallel.TaskPool`) every batch is sampled in
    ``cfg.shards`` shards on it (:meth:`Setup.collect_sharded`); without, in this process.

    A batch with NaN or inf (checked as it is sampled), or a non-finite gradient or step, makes
    the task's contribution unusable: it is returned with ``problem`` naming the cause."""
    cfg = setup.cfg
    generator = torch.Generator().manual_seed(seed)
    env = None if pool is not None else setup.make_env(task, seed)
    theta_ = theta.detach().clone().to(setup.device).requires_grad_(True)
    if env is None:
        sample, steps = _checked_sampler(
            lambda phi: on_device(setup.collect_sharded(pool, task, phi, generator), setup.device),
            cfg.inner_steps,
        )
    else:
        sample, steps = _checked_sampler(
            lambda phi: on_device(setup.collect(env, phi, generator), setup.device), cfg.inner_steps
        )
    try:
        objectives, batches, val, results = meta_objectives(setup, theta_, sample, cfg.differentiable)
        with torch.enable_grad():
            grads = [
                torch.autograd.grad(obj, theta_, retain_graph=j < len(objectives) - 1)[0]
                for j, obj in enumerate(objectives)
            ]
    except NonFiniteBatch as err:
        return _skipped_task(theta, setup, str(err), steps[0])
    except ValueError as err:  # difftrust refuses non-finite g, A or b at its boundary
        if "NaN or inf" not in str(err):
            raise
        return _skipped_task(theta, setup, f"non-finite step input ({err})", steps[0])
    finally:
        if env is not None:
            env.close()
    grad_F = grads[0].detach()
    grad_G = torch.stack(grads[1:]).detach() if len(grads) > 1 else theta.new_zeros((0, theta.numel()))
    problem = ""
    if not (torch.isfinite(grad_F).all() and torch.isfinite(grad_G).all()):
        problem = "non-finite meta-gradient"
    view = setup.constrained_view(val)
    return TaskResult(
        grad_F=grad_F,
        grad_G=grad_G,
        cost_val=np.asarray(view.ep_cost, dtype=float) if setup.limits is not None else np.zeros(0),
        ret_pre=float(batches[0].ep_ret),
        cost_pre=np.asarray(batches[0].ep_cost, dtype=float),
        ret_post=float(val.ep_ret),
        cost_post=np.asarray(val.ep_cost, dtype=float),
        first_obs=batches[0].obs.detach(),
        critic_data=[(b.obs.cpu(), b.ret_r.cpu(), b.ret_c.cpu()) for b in [*batches, val]],
        cases=[str(r.case) for r in results],
        env_steps=sum(b.env_steps for b in [*batches, val]),
        problem=problem,
        cg_residual=max((r.cg_worst for r in results), default=float("nan")),
    )


# ============================================================================== meta-update
def meta_update(setup: Setup, theta: Tensor, results: Sequence[TaskResult]) -> tuple[Tensor, dict[str, Any]]:
    """Projected meta-step ``theta + step(dF, dG, b_theta, H_theta)`` with line search, computed on
    ``setup.device``; the new ``theta`` is returned on the device of ``theta``."""
    new, info = _meta_step(setup, theta.detach().to(setup.device), results)
    return new.to(theta.device), info


def _meta_step(setup: Setup, theta: Tensor, results: Sequence[TaskResult]) -> tuple[Tensor, dict[str, Any]]:
    cfg, policy = setup.cfg, setup.policy
    dF = torch.stack([r.grad_F for r in results]).mean(0)
    obs = torch.cat([r.first_obs for r in results])
    if setup.limits is None:
        dG, b_theta = None, None
    else:
        dG = torch.stack([r.grad_G for r in results]).mean(0)
        cost_vals = np.array([r.cost_val for r in results])
        cost_val = cost_vals.mean(0)
        if cfg.cost_confidence != 0.5 and len(results) >= 2:  # upper bound of the mean over tasks
            sem = cost_vals.std(0, ddof=1) / math.sqrt(len(results))
            cost_val = cost_val + confidence_z(cfg.cost_confidence) * sem
        b_theta = torch.as_tensor(cost_val - np.asarray(setup.limits), dtype=theta.dtype, device=theta.device)
    if cfg.meta_metric == "fisher":
        metric = fisher_metric(policy, theta, fisher_states(obs, cfg.fisher_states), cfg.damping, True)
    else:
        metric = None
    step = cfg.step(cfg.meta_delta)
    optimism = optimism_residuals = None
    if cfg.debias and b_theta is not None and len(results) >= 2:
        plain = step.solve(dF, dG, b_theta, metric)
        # the two halves of the meta-batch are independent estimates of (dF, dG)
        half = len(results) // 2
        rows = [
            torch.cat(
                [
                    torch.stack([r.grad_F for r in part]).mean(0, keepdim=True),
                    torch.stack([r.grad_G for r in part]).mean(0),
                ]
            )
            for part in (results[:half], results[half:])
        ]
        b_theta, optimism, optimism_residuals = _optimism(
            rows[0], rows[1], half, len(results) - half, b_theta, metric, step, 5, plain
        )
    res = step.solve(dF, dG, b_theta, metric)
    x = res.x.detach()
    info: dict[str, Any] = {
        "case": str(res.case),
        "lam": float(res.lam),
        "nu": [float(v) for v in res.nu.reshape(-1)],
        "b_theta": [] if b_theta is None else b_theta.tolist(),
        "optimism_theta": [] if optimism is None else optimism.tolist(),
        "step_norm": float(x.norm()),
        # the meta-step's solves and every inner step's (NaN where no solve ran: identity metrics)
        "cg_residual": max(
            [_worst(res.cg_residuals, optimism_residuals), *(r.cg_residual for r in results)],
            key=lambda v: -math.inf if math.isnan(v) else v,
        ),
    }
    if not torch.isfinite(x).all():
        return theta.clone(), {**info, "accepted": 0.0, "kl": 0.0, "problem": "non-finite meta-step"}

    def trial(new: Tensor) -> tuple[bool, dict[str, Any]]:
        kl = float(policy.kl(theta, new, obs))
        ok = math.isfinite(kl) and kl <= cfg.kl_tolerance * cfg.meta_delta and bool(torch.isfinite(new).all())
        return ok, {"kl": kl}

    with torch.no_grad():
        new, frac, _, last = backtrack(theta, x, trial, cfg.backtrack_coef, cfg.max_backtracks)
    if new is not None:
        return new, {**info, "accepted": frac, "kl": last["kl"], "problem": ""}
    return theta.clone(), {**info, "accepted": 0.0, "kl": 0.0, "problem": "line search rejected every step"}
