"""Meta-CPO: constrained meta-RL through a differentiable CPO inner loop.

``python -m rl.meta_cpo`` meta-trains on the built-in hiddennav distribution (the task, a goal in a
ring of hazards, is hidden from the observation, so a policy must adapt), adapts on held-out test
tasks, judges each before and after adaptation on an independent evaluation batch, prints a
summary and writes every artifact into a run folder (``--help`` lists every option).

The algorithm (Cho & Sun, AAAI-24; ``docs/concepts.md``), as this file reads:

1. **Inner loop** (:func:`inner_loop`), for each of ``M`` training tasks ``T_i``:
   ``phi^0 = theta`` (a copy with a graph, never an alias: ``theta`` does not move), then ``K``
   CPO steps ``phi^{k+1} = phi^k + TrustRegionStep(delta)(g, A, b, H)`` with ``g = grad L_R``,
   ``A = grad L_C`` (one row per constraint) taken with ``create_graph=True`` on a batch sampled
   with ``pi_{phi^k}``, ``b = J_C - limit`` (per-episode cost, the units of ``L_C``, see
   :mod:`rl.rollout`) and ``H`` the damped Fisher of ``pi_{phi^k}`` (both KL arguments fed
   ``phi^k``), so that ``d phi^K / d theta`` is exact.
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
   search (acceptance rule): the largest ``x * backtrack_coef^j`` whose mean
   ``KL(pi_theta || pi_theta')`` on those states is at most ``kl_tolerance * delta_theta`` and
   whose parameters are finite; if none passes, ``theta`` stays.
4. **Meta-test** (:func:`adapt`): on held-out test tasks (the test split, outside the training
   ranges) start from ``theta`` and take ``adapt_steps`` inner CPO steps, evaluating after each.

Variants through the same code (``--algo``): ``meta-cpo`` (default), ``fo-meta-cpo``
(first-order: ``d phi^K / d theta`` replaced by ``I``, an approximation), ``meta-trpo`` (no
constraint anywhere, ``m = 0``), ``cpo-scratch`` (no meta-training: CPO adaptation from the
initial policy) and ``multitask-cpo`` (CPO with line search on the pooled batches of the
training tasks, then the same adaptation). ``--frozen-metric`` treats each inner Fisher as a
constant (an approximation, off by default).

Cost constraints: one per cost channel (``--constrain channels``, each with its own limit from
``--cost-limit``) or one on the total (``--constrain total``); with several constraints every
inner and outer step is a multi-constraint trust-region program (difftrust's conic path).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from difftrust import FisherMetric, StepResult, TrustRegionStep
from rl.cpo import (
    confidence_z,
    cost_offsets,
    cpo_update,
    debiased_offsets,
    fit_critics,
    fit_critics_on_pool,
    optimism_offsets,
    sum_cost_channels,
    surrogates,
)
from rl.policy import Critic, GaussianPolicy, ObsNormalizer
from rl.rollout import Batch, EnvSpec, collect, collect_sharded
from rl.runtime.config import ConfigError

__all__ = [
    "ALGOS",
    "MetaCPOConfig",
    "MetaCPOTrainer",
    "TaskResult",
    "adapt",
    "inner_loop",
    "main",
    "meta_objectives",
    "meta_update",
    "task_meta_gradient",
]

ALGOS = ("meta-cpo", "fo-meta-cpo", "meta-trpo", "cpo-scratch", "multitask-cpo")
ENVS = ("hiddennav", "hiddennav-hazard", "safenav-button", "safenav-goal", "safety-button", "safety-circle")


# ============================================================================== configuration
@dataclass
class MetaCPOConfig:
    """Meta-train on a task distribution, then adapt on held-out test tasks. Writes
    progress.csv, adaptation.csv, config.json, TensorBoard events, checkpoints and PNG plots."""

    env: str = field(
        default="hiddennav",
        metadata={
            "help": f"task distribution: one of {', '.join(ENVS)} (hiddennav: the task is hidden, "
            "adaptation is needed; safenav-*: the control where every task is visible)"
        },
    )
    algo: Literal["meta-cpo", "fo-meta-cpo", "meta-trpo", "cpo-scratch", "multitask-cpo"] = field(
        default="meta-cpo", metadata={"help": "algorithm or baseline"}
    )
    iterations: int = field(default=20, metadata={"help": "meta-iterations"})
    seed: int = field(default=0, metadata={"help": "random seed (tasks, policy, sampling)"})
    meta_batch: int = field(default=4, metadata={"help": "M: training tasks per meta-iteration"})
    inner_steps: int = field(default=2, metadata={"help": "K: CPO steps in each task's inner loop"})
    inner_delta: float = field(default=0.02, metadata={"help": "inner trust region size delta"})
    meta_delta: float = field(default=0.01, metadata={"help": "meta trust region size delta_theta"})
    meta_metric: Literal["fisher", "identity"] = field(
        default="fisher", metadata={"help": "H_theta of the meta-update: damped Fisher of pi_theta, or I"}
    )
    cost_confidence: float = field(
        default=0.5,
        metadata={
            "help": "constrain upper confidence bounds of the episode cost, z the normal quantile of "
            "this level (0.5: the means): inner and multi-task steps ep_cost + z * its standard "
            "error; the meta-step the mean over the meta-batch + z * its standard error over tasks"
        },
    )
    debias: bool = field(
        default=True,
        metadata={
            "help": "correct the constraints of the inner steps (halves of each batch), the meta-step "
            "(halves of the meta-batch) and the multi-task step for the optimism of a step chosen on "
            "noisy cost gradients (rl.cpo.debiased_offsets; the offsets are constants of the data); "
            "--no-debias: the textbook steps"
        },
    )
    frozen_metric: bool = field(
        default=False,
        metadata={"help": "APPROXIMATION: treat inner Fisher metrics as constants in the meta-gradient"},
    )
    batch_steps: int = field(
        default=2000,
        metadata={
            "help": "env steps per inner/validation batch (small batches make the cost constraint "
            "noisy: see benchmarks/results/cpo_batch_size.md)"
        },
    )
    num_envs: int | None = field(
        default=None,
        metadata={
            "help": "sub-environments per task (none: batch_steps // horizon, so that every "
            "sub-environment runs whole episodes)"
        },
    )
    horizon: int | None = field(default=None, metadata={"help": "episode length (none: the family's)"})
    cost_limit: float | tuple[float, ...] = field(
        default=5.0,
        metadata={"help": "per-episode cost limit: one value for every constraint, or one per channel"},
    )
    constrain: Literal["channels", "total"] = field(
        default="channels",
        metadata={"help": "channels: one constraint per cost channel; total: one on their sum"},
    )
    damping: float = field(default=0.1, metadata={"help": "Fisher damping (inner and meta)"})
    cg_iters: int = field(default=10, metadata={"help": "conjugate-gradient iterations"})
    fisher_states: int = field(
        default=1000,
        metadata={"help": "states (an even stride of the batch) on which Fisher metrics are built"},
    )
    cg_tol: float = field(default=1e-10, metadata={"help": "conjugate-gradient relative tolerance"})
    backtrack_coef: float = field(default=0.8, metadata={"help": "line-search shrink factor"})
    max_backtracks: int = field(default=10, metadata={"help": "line-search trials"})
    kl_tolerance: float = field(default=1.5, metadata={"help": "accept KL <= kl_tolerance * delta"})
    gamma: float = field(default=0.99, metadata={"help": "reward discount"})
    lam: float = field(default=0.95, metadata={"help": "reward GAE lambda"})
    cost_gamma: float = field(default=0.99, metadata={"help": "cost discount"})
    cost_lam: float = field(default=0.95, metadata={"help": "cost GAE lambda"})
    hidden: tuple[int, ...] = field(default=(32, 32), metadata={"help": "policy hidden sizes (tanh)"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial policy log-std"})
    dtype: Literal["float64", "float32"] = field(
        default="float64", metadata={"help": "dtype of the policy, the critics and the meta-gradient"}
    )
    critic_hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "critic hidden sizes"})
    critic_lr: float = field(default=1e-3, metadata={"help": "critic Adam learning rate"})
    critic_epochs: int = field(default=5, metadata={"help": "critic epochs per meta-iteration"})
    critic_minibatch: int = field(default=256, metadata={"help": "critic minibatch size"})
    test_tasks: int = field(default=10, metadata={"help": "held-out test tasks for meta-test"})
    adapt_steps: int = field(default=3, metadata={"help": "K_test: CPO steps on each test task"})
    adapt_confidence: float | None = field(
        default=0.9,
        metadata={
            "help": "cost_confidence of the adaptation steps at meta-test (none: cost_confidence); "
            "the default 0.9 adapts with a margin of 1.28 standard errors a meta-policy trained at "
            "the mean"
        },
    )
    adapt_batch_steps: int | None = field(
        default=8000,
        metadata={
            "help": "env steps per adaptation/evaluation batch at meta-test (none: batch_steps; larger "
            "batches give steadier steps, a tighter cost estimate and a more precise judgement of the "
            "limit)"
        },
    )
    eval_steps: int = field(
        default=40000,
        metadata={
            "help": "meta-test: env steps of an independent evaluation batch of each test task's "
            "policy before and after adaptation, written to evaluation.csv (0: none; the "
            "adaptation batches still give the curves)"
        },
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads (of the driver)"})
    backend: Literal["auto", "serial", "processes", "ray"] = field(
        default="auto",
        metadata={
            "help": "where the tasks of a meta-batch run: serial, worker processes, or Ray "
            "(auto: processes when the machine has more than one core)"
        },
    )
    workers: int = field(default=2, metadata={"help": "worker processes / Ray CPUs"})
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
    out: str | None = field(
        default=None,
        metadata={"help": "run folder (new or empty; none: runs/<env>-<algo>-seed<S>-<time>)"},
    )
    resume: str | None = field(
        default=None,
        metadata={
            "help": "continue the run in this folder from its latest checkpoint (its config.json is "
            "used; --iterations may extend it)"
        },
    )
    checkpoint_every: int = field(default=1, metadata={"help": "meta-iterations between checkpoints"})
    keep_checkpoints: int = field(default=3, metadata={"help": "checkpoints kept"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard events"})
    wandb: bool = field(
        default=False, metadata={"help": "also log to Weights & Biases (needs the wandb package)"}
    )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the key and the valid values: the ranges shared with
        ``rl.cpo`` (:func:`rl.runtime.validation.validate_settings`), then Meta-CPO's own rules."""
        from rl.runtime.config import ConfigError
        from rl.runtime.validation import validate_settings

        if self.env not in ENVS:
            raise ConfigError(f"env must be one of {list(ENVS)}, got {self.env!r}")
        validate_settings(self)
        if self.num_envs is not None and self.num_envs > self.batch_steps:
            raise ConfigError(
                f"num_envs must be in [1, batch_steps = {self.batch_steps}], got {self.num_envs}"
            )
        if self.num_envs is not None and self.batch_steps % self.num_envs:
            raise ConfigError(
                f"batch_steps ({self.batch_steps}) must be a multiple of num_envs ({self.num_envs})"
            )

    @property
    def constrained(self) -> bool:
        return self.algo != "meta-trpo"

    @property
    def differentiable(self) -> bool:
        return self.algo in ("meta-cpo", "meta-trpo")


#: Options that may differ from the saved config when resuming.
RESUME_OVERRIDABLE = (
    "iterations",
    "test_tasks",
    "adapt_steps",
    "adapt_confidence",
    "adapt_batch_steps",
    "eval_steps",
    "resume",
    "progress",
    "tensorboard",
    "wandb",
    "threads",
    "checkpoint_every",
    "backend",
    "workers",
    "ray_address",
    "max_retries",
)
#: Settings that do not define a run: those that may change on resuming, and where it is written.
NOT_RUN_DEFINING = (*RESUME_OVERRIDABLE, "out")


def derive_seed(*parts: int) -> int:
    """A 31-bit seed determined by ``parts`` (run seed, iteration, task, purpose)."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0] >> 1)


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

    @property
    def constraint_names(self) -> tuple[str, ...]:
        if self.limits is None:
            return ()
        return ("total",) if self.cfg.constrain == "total" else self.cost_channels

    def constrained_view(self, batch: Batch) -> Batch:
        """The batch whose cost channels are the constraints."""
        return sum_cost_channels(batch) if self.cfg.constrain == "total" else batch

    def make_env(self, task: Any, seed: int) -> Any:
        from rl.envs import make

        kwargs: dict[str, Any] = {}
        if self.cfg.horizon is not None:
            kwargs["horizon"] = self.cfg.horizon
        return make(self.cfg.env, task=task, num_envs=self.cfg.num_envs, seed=seed, **kwargs)

    def collect(self, env: Any, params: Tensor, generator: torch.Generator, critics=None) -> Batch:
        reward_critic, cost_critic = critics or (self.reward_critic, self.cost_critic)
        c = self.cfg
        return collect(
            env,
            self.policy,
            params.detach(),
            c.batch_steps,
            self.normalizer,
            reward_critic,
            cost_critic,
            gamma=c.gamma,
            lam=c.lam,
            cost_gamma=c.cost_gamma,
            cost_lam=c.cost_lam,
            generator=generator,
            update_normalizer=False,  # frozen within a meta-iteration: tasks share no state
        )

    def env_spec(self, task: Any) -> EnvSpec:
        """The task's environment, buildable in any worker."""
        kwargs = () if self.cfg.horizon is None else (("horizon", self.cfg.horizon),)
        return EnvSpec(self.cfg.env, task, self.cfg.num_envs, kwargs)

    def collect_sharded(
        self, pool: Any, task: Any, params: Tensor, generator: torch.Generator, critics=None
    ) -> Batch:
        """A batch of ``task`` in ``cfg.shards`` shards on ``pool`` (:func:`rl.rollout.collect_sharded`)."""
        reward_critic, cost_critic = critics or (self.reward_critic, self.cost_critic)
        c = self.cfg
        return collect_sharded(
            pool,
            self.env_spec(task),
            self.policy,
            params.detach(),
            c.batch_steps,
            self.normalizer,
            reward_critic,
            cost_critic,
            shards=c.shards,
            gamma=c.gamma,
            lam=c.lam,
            cost_gamma=c.cost_gamma,
            cost_lam=c.cost_lam,
            generator=generator,
            update_normalizer=False,
        )


def resolve_limits(cfg: MetaCPOConfig, channels: tuple[str, ...]) -> list[float] | None:
    """Per-constraint limits (``None`` for meta-trpo); errors name the expected count."""
    if not cfg.constrained:
        return None
    n = 1 if cfg.constrain == "total" else len(channels)
    limits = list(cfg.cost_limit) if isinstance(cfg.cost_limit, tuple) else [float(cfg.cost_limit)]
    if len(limits) == 1:
        return limits * n
    if len(limits) != n:
        names = ("total",) if cfg.constrain == "total" else channels
        raise ConfigError(
            f"cost_limit has {len(limits)} values but there are {n} constraints {list(names)} "
            f"(--constrain {cfg.constrain}); give one value or one per constraint"
        )
    return limits


# ============================================================================== inner loop
def fisher_states(obs: Tensor, limit: int) -> Tensor:
    """At most ``limit`` states, an even stride of ``obs`` (the Fisher metric's sample: the
    gradients use the whole batch, the curvature a deterministic subsample, as TRPO does)."""
    stride = max(1, math.ceil(obs.shape[0] / limit))
    return obs[::stride]


def inner_direction(
    setup: Setup, phi: Tensor, batch: Batch, differentiable: bool
) -> tuple[Tensor, StepResult]:
    """One CPO step direction at ``phi`` on ``batch`` (differentiable in ``phi`` if asked)."""
    cfg, policy = setup.cfg, setup.policy
    p = phi if (differentiable and phi.requires_grad) else phi.detach().requires_grad_(True)
    view = setup.constrained_view(batch)
    with torch.enable_grad():
        loss_r, loss_c = surrogates(policy, p, view)
        (g,) = torch.autograd.grad(loss_r, p, create_graph=differentiable, retain_graph=True)
        if setup.limits is None:
            A = b = None
        else:
            A = torch.stack(
                [
                    torch.autograd.grad(loss_c[j], p, create_graph=differentiable, retain_graph=True)[0]
                    for j in range(loss_c.shape[0])
                ]
            )
            b = cost_offsets(view, setup.limits, p.dtype, cfg.cost_confidence)
    if not differentiable:
        g = g.detach()
        A = None if A is None else A.detach()
    psi = p if (differentiable and not cfg.frozen_metric) else p.detach()
    obs = fisher_states(batch.obs, cfg.fisher_states)
    metric = FisherMetric(lambda ref, q: policy.kl(ref, q, obs), psi, damping=cfg.damping)
    step = TrustRegionStep(delta=cfg.inner_delta, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol)
    if cfg.debias and b is not None:
        b, _ = debiased_offsets(
            policy, p, view, setup.limits, step, metric=metric, confidence=cfg.cost_confidence
        )
    res = step.solve(g, A, b, metric)
    return res.x, res


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
    theta_ = theta.detach().clone().requires_grad_(True)
    if env is None:
        sample, steps = _checked_sampler(
            lambda phi: setup.collect_sharded(pool, task, phi, generator), cfg.inner_steps
        )
    else:
        sample, steps = _checked_sampler(lambda phi: setup.collect(env, phi, generator), cfg.inner_steps)
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
        critic_data=[(b.obs, b.ret_r, b.ret_c) for b in [*batches, val]],
        cases=[str(r.case) for r in results],
        env_steps=sum(b.env_steps for b in [*batches, val]),
        problem=problem,
    )


# ============================================================================== meta-update
def meta_update(setup: Setup, theta: Tensor, results: Sequence[TaskResult]) -> tuple[Tensor, dict[str, Any]]:
    """Projected meta-step ``theta + step(dF, dG, b_theta, H_theta)`` with line search."""
    cfg, policy = setup.cfg, setup.policy
    theta = theta.detach()
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
        b_theta = torch.as_tensor(cost_val - np.asarray(setup.limits), dtype=theta.dtype)
    if cfg.meta_metric == "fisher":
        obs_h = fisher_states(obs, cfg.fisher_states)
        metric = FisherMetric(lambda ref, q: policy.kl(ref, q, obs_h), theta, damping=cfg.damping)
    else:
        metric = None
    step = TrustRegionStep(delta=cfg.meta_delta, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol)
    optimism = None
    if cfg.debias and b_theta is not None and len(results) >= 2:
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
        b_theta, optimism = optimism_offsets(
            rows[0], rows[1], half, len(results) - half, b_theta, metric, step
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
    }
    if not torch.isfinite(x).all():
        return theta.clone(), {**info, "accepted": 0.0, "kl": 0.0, "problem": "non-finite meta-step"}
    with torch.no_grad():
        for j in range(cfg.max_backtracks):
            frac = cfg.backtrack_coef**j
            new = theta + frac * x
            kl = float(policy.kl(theta, new, obs))
            if math.isfinite(kl) and kl <= cfg.kl_tolerance * cfg.meta_delta and torch.isfinite(new).all():
                return new, {**info, "accepted": frac, "kl": kl, "problem": ""}
    return theta.clone(), {**info, "accepted": 0.0, "kl": 0.0, "problem": "line search rejected every step"}


# ============================================================================== meta-test
def _with_batch(cfg: MetaCPOConfig, steps: int | None) -> MetaCPOConfig:
    """``cfg`` with batches of ``steps`` env steps (``None``: unchanged); the sub-environments
    scale with the batch, so that each still runs whole episodes."""
    if steps is None or steps == cfg.batch_steps:
        return cfg
    num_envs = (
        None if cfg.num_envs is None else min(max(1, round(cfg.num_envs * steps / cfg.batch_steps)), steps)
    )
    return replace(cfg, batch_steps=steps, num_envs=num_envs)


def evaluate(setup: Setup, params: Tensor, task: Any, steps: int, seed: int) -> dict[str, Any]:
    """Mean episode return and costs of ``params`` on ``task`` over one batch of ``steps`` env
    steps in ``steps // horizon`` sub-environments (whole episodes), with the standard error
    ``sem_<channel>`` of each channel's cost."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"evaluation steps must be an int >= 1, got {steps!r}")
    horizon = setup.cfg.horizon
    if horizon is None:
        probe = replace(setup, cfg=replace(setup.cfg, num_envs=1)).make_env(task, seed)
        horizon = int(probe.horizon)
        probe.close()
    local = replace(setup, cfg=replace(setup.cfg, batch_steps=steps, num_envs=max(1, steps // horizon)))
    env = local.make_env(task, seed)
    try:
        batch = local.collect(env, params, torch.Generator().manual_seed(seed))
    finally:
        env.close()
    row: dict[str, Any] = {"ep_ret": batch.ep_ret, "ep_cost": batch.ep_cost_total}
    for ch, v, e in zip(batch.cost_channels, batch.ep_cost, batch.ep_cost_sem, strict=True):
        row[f"cost_{ch}"] = float(v)
        row[f"sem_{ch}"] = float(e)
    row.update(episodes=batch.num_episodes, env_steps=batch.env_steps)
    return row


def adapt(
    setup: Setup,
    theta: Tensor,
    task: Any,
    steps: int,
    seed: int,
    constrained: bool = True,
) -> tuple[list[dict[str, Any]], list[Tensor]]:
    """Adapt ``theta`` to ``task`` with ``steps`` inner CPO steps, evaluating after each.

    Evaluation ``k`` is the on-policy batch of ``pi_{phi^k}`` (``k = 0``: before adaptation), of
    ``cfg.adapt_batch_steps`` env steps (default ``cfg.batch_steps``); the steps constrain the
    cost at ``cfg.adapt_confidence`` (default ``cfg.cost_confidence``).
    Critics are copies of the trained ones, refitted on each batch of this task.

    Returns:
        ``(rows, params)``: one row per evaluation (``adapt_step``, ``ep_ret``, ``ep_cost``,
        ``env_steps`` of its batch, per-channel ``cost_<channel>``) and ``phi^0 .. phi^steps``.
    """
    cfg = _with_batch(setup.cfg, setup.cfg.adapt_batch_steps)
    if cfg.adapt_confidence is not None:
        cfg = replace(cfg, cost_confidence=cfg.adapt_confidence)
    local = replace(
        setup,
        cfg=cfg,
        reward_critic=copy.deepcopy(setup.reward_critic),
        cost_critic=copy.deepcopy(setup.cost_critic),
    )
    if not constrained:
        local = replace(local, limits=None)
    opt_r = torch.optim.Adam(local.reward_critic.parameters(), lr=cfg.critic_lr)
    opt_c = torch.optim.Adam(local.cost_critic.parameters(), lr=cfg.critic_lr)
    generator = torch.Generator().manual_seed(seed)
    env = local.make_env(task, seed)
    phi = theta.detach().clone()
    rows, params = [], [phi]
    try:
        for k in range(steps + 1):
            batch = local.collect(env, phi, generator)
            row = {
                "adapt_step": k,
                "ep_ret": batch.ep_ret,
                "ep_cost": batch.ep_cost_total,
                "env_steps": batch.env_steps,
            }
            for ch, v in zip(batch.cost_channels, batch.ep_cost, strict=True):
                row[f"cost_{ch}"] = float(v)
            rows.append(row)
            if k == steps:
                break
            x, _ = inner_direction(local, phi, batch, differentiable=False)
            phi = (phi + x).detach()
            params.append(phi)
            fit_critics(
                (local.reward_critic, local.cost_critic),
                (opt_r, opt_c),
                batch.obs,
                (batch.ret_r, batch.ret_c),
                cfg.critic_epochs,
                cfg.critic_minibatch,
                generator,
            )
    finally:
        env.close()
    return rows, params


# ============================================================================== the trainer
def _concat(batches: Sequence[Batch]) -> Batch:
    """Pool batches of several tasks (multitask CPO)."""
    episodes = np.array([max(b.num_episodes, 1) for b in batches], dtype=float)
    w = episodes / episodes.sum()
    return replace(
        batches[0],
        **{name: torch.cat([getattr(b, name) for b in batches]) for name in Batch._TENSORS},
        ep_ret=float(sum(wi * b.ep_ret for wi, b in zip(w, batches, strict=True))),
        ep_cost=np.sum([wi * np.asarray(b.ep_cost) for wi, b in zip(w, batches, strict=True)], axis=0),
        ep_len=float(sum(wi * b.ep_len for wi, b in zip(w, batches, strict=True))),
        num_episodes=int(sum(b.num_episodes for b in batches)),
        env_steps=int(sum(b.env_steps for b in batches)),
        episode_costs=None
        if any(b.episode_costs is None for b in batches)
        else np.concatenate([b.episode_costs for b in batches]),
    )


class MetaCPOTrainer:
    """Meta-training, checkpoints and meta-test of one run.

    Example:
        >>> cfg = MetaCPOConfig(iterations=1, meta_batch=2, batch_steps=200, num_envs=2,
        ...                     test_tasks=1, adapt_steps=1, progress=False, tensorboard=False)
        >>> trainer = MetaCPOTrainer(cfg)            # doctest: +SKIP
        >>> run_dir = trainer.train()                # doctest: +SKIP
    """

    def __init__(self, cfg: MetaCPOConfig, run_dir: str | Path | None = None):
        from rl.envs import make, task_distribution

        cfg.validate()
        torch.set_num_threads(cfg.threads)
        self.dist = task_distribution(cfg.env)
        probe_task = self.dist.sample(1, split="train", seed=cfg.seed)[0]
        probe = make(cfg.env, task=probe_task, num_envs=1, seed=cfg.seed)
        obs_dim, act_dim, channels = probe.obs_dim, probe.act_dim, tuple(probe.cost_channels)
        horizon = cfg.horizon or probe.horizon
        probe.close()
        if cfg.num_envs is None:  # whole episodes per sub-environment (recorded in config.json)
            cfg = replace(cfg, num_envs=max(1, cfg.batch_steps // horizon))
        self.cfg = cfg
        init = torch.Generator().manual_seed(derive_seed(cfg.seed, 0, 0, 1))
        torch.manual_seed(derive_seed(cfg.seed, 0, 0, 2))  # critic initialisation
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        policy = GaussianPolicy(
            obs_dim, act_dim, hidden=cfg.hidden, init_log_std=cfg.init_log_std, dtype=dtype
        )
        self.setup = Setup(
            cfg=cfg,
            policy=policy,
            reward_critic=Critic(obs_dim, 1, hidden=cfg.critic_hidden, dtype=dtype),
            cost_critic=Critic(obs_dim, len(channels), hidden=cfg.critic_hidden, dtype=dtype),
            normalizer=ObsNormalizer(obs_dim),
            cost_channels=channels,
            limits=resolve_limits(cfg, channels),
        )
        self.theta = policy.init_params(init)
        self.opt_r = torch.optim.Adam(self.setup.reward_critic.parameters(), lr=cfg.critic_lr)
        self.opt_c = torch.optim.Adam(self.setup.cost_critic.parameters(), lr=cfg.critic_lr)
        self.iteration = 0
        self.env_steps = 0
        self.seconds = 0.0
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._pool = None

    @property
    def pool(self):
        """The :class:`rl.runtime.parallel.TaskPool` of ``cfg.backend`` (created on first use)."""
        from rl.runtime.parallel import TaskPool

        if self._pool is None:
            self._pool = TaskPool(
                self.cfg.backend, self.cfg.workers, self.cfg.ray_address, self.cfg.max_retries
            ).start()  # here, not in a task's thread: Ray's processes end with the thread that started them
        return self._pool

    def close(self) -> None:
        """Shut the worker pool down."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (loadable with ``weights_only=True``).

        Every random stream of an iteration is derived from ``(seed, iteration, task)``, so the
        counters fix them; the global RNG states are saved as well."""
        from rl.runtime.seeding import rng_state

        return {
            "theta": self.theta.clone(),
            "reward_critic": self.setup.reward_critic.state_dict(),
            "cost_critic": self.setup.cost_critic.state_dict(),
            "opt_r": self.opt_r.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "normalizer": self.setup.normalizer.state_dict(),
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "seconds": self.seconds,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from rl.runtime.seeding import set_rng_state

        theta = state["theta"]
        if not isinstance(theta, Tensor) or theta.shape != self.theta.shape:
            raise ValueError(
                f"checkpoint theta has shape {tuple(getattr(theta, 'shape', ()))}, the policy expects "
                f"{tuple(self.theta.shape)}"
            )
        self.theta = theta.to(self.theta.dtype).clone()
        self.setup.reward_critic.load_state_dict(state["reward_critic"])
        self.setup.cost_critic.load_state_dict(state["cost_critic"])
        self.opt_r.load_state_dict(state["opt_r"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.setup.normalizer.load_state_dict(state["normalizer"])
        self.iteration = int(state["iteration"])
        self.env_steps = int(state["env_steps"])
        self.seconds = float(state["seconds"])
        set_rng_state(state["rng"])

    @classmethod
    def from_run(cls, run_dir: str | Path) -> MetaCPOTrainer:
        """Load a run folder: its config.json and its newest checkpoint that loads, fits and
        was made with the settings of config.json (:meth:`restore_checkpoint`).

        Raises:
            FileNotFoundError: ``run_dir`` has no config.json.
            ConfigError: config.json is invalid, or differs from the checkpoints in a setting
                that defines the run (the message names it).
        """
        from rl.runtime import load_config

        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} has no config.json; expected a run folder of rl.meta_cpo")
        try:
            cfg = load_config(MetaCPOConfig, run_dir / "config.json")
        except ValueError as err:
            raise ConfigError(f"{run_dir / 'config.json'} is not a config of rl.meta_cpo: {err}") from err
        trainer = cls(cfg, run_dir)
        trainer.restore_checkpoint()
        return trainer

    def run_settings(self) -> dict[str, Any]:
        """The settings that define this run (recorded in every checkpoint)."""
        from rl.runtime.config import run_settings

        return run_settings(self.cfg, exclude=NOT_RUN_DEFINING)

    def restore_checkpoint(self) -> Path | None:
        """Restore the newest checkpoint of the run folder that loads, fits (every key, the shapes,
        its iteration that of its file name) and was made with this run's settings; earlier
        ones are tried after an unreadable or inconsistent one (a ``RuntimeWarning`` each).

        Returns:
            The checkpoint restored, or ``None`` (none could be: the run starts over).

        Raises:
            SettingsMismatchError: a checkpoint was made with other run-defining settings than
                ``self.cfg`` (config.json edited): the message names each of them.
        """
        from rl.runtime.checkpoint import checkpoint_step, restore_latest_checkpoint
        from rl.runtime.config import run_settings

        def restore(path: Path, state: dict[str, Any]) -> None:
            if int(state["iteration"]) != checkpoint_step(path) + 1:
                raise ValueError(
                    f"it holds iteration {state['iteration']!r}, expected {checkpoint_step(path) + 1}"
                )
            backup = copy.deepcopy(self.state_dict())  # module state dicts share storage
            try:
                self.load_state_dict(state)
            except Exception:
                self.load_state_dict(backup)  # a partly restored trainer must not remain
                raise

        defaults = run_settings(MetaCPOConfig(), exclude=NOT_RUN_DEFINING)
        found = restore_latest_checkpoint(self.run_dir, restore, self.run_settings(), defaults)
        return None if found is None else found[0]

    # ------------------------------------------------------------------ one iteration
    def train_tasks(self) -> list[Any]:
        return self.dist.sample(
            self.cfg.meta_batch, split="train", seed=derive_seed(self.cfg.seed, self.iteration, 0, 3)
        )

    def step(self) -> dict[str, Any]:
        """One meta-iteration; returns its progress row."""
        cfg, setup, it = self.cfg, self.setup, self.iteration
        t0 = time.perf_counter()
        tasks = self.train_tasks()
        seeds = [derive_seed(cfg.seed, it, i, 4) for i in range(len(tasks))]
        if cfg.algo == "multitask-cpo":
            row, critic_data, first_obs = self._multitask_step(tasks, seeds)
        else:
            results = self._task_results(tasks, seeds)
            problems = [f"task {i}: {r.problem}" for i, r in enumerate(results) if r.problem]
            if problems:
                info = {
                    "case": "skipped",
                    "lam": float("nan"),
                    "nu": [],
                    "b_theta": [],
                    "accepted": 0.0,
                    "kl": 0.0,
                }
                info["problem"] = "; ".join(problems)
                print(f"warning: meta-iteration {it} skipped: {info['problem']}", file=sys.stderr)
            else:
                self.theta, info = meta_update(setup, self.theta, results)
            # a skipped batch teaches nothing: it never reaches the critics, normaliser or checkpoint
            critic_data = [] if problems else [d for r in results for d in r.critic_data]
            first_obs = [r.first_obs for r in results]
            row = self._row(results, info)
        if critic_data:  # critics and normaliser learn from this iteration's data (after the meta-step)
            self._fit_critics_and_normalizer(critic_data, first_obs)
        self.env_steps += int(row.pop("_env_steps"))
        self.seconds += time.perf_counter() - t0
        self.iteration = it + 1
        row.update(iteration=it, env_steps=self.env_steps, seconds=round(self.seconds, 3))
        return row

    def _task_results(self, tasks: Sequence[Any], seeds: Sequence[int]) -> list[TaskResult]:
        """Every task's :func:`task_meta_gradient`, batches sampled in shards on the pool.

        With a parallel pool the tasks' inner loops run in threads of this process (each waits
        for its shards most of the time), so the shards of all tasks share one queue and no
        worker idles while ``M`` and the workers do not divide; results come in task order."""
        from concurrent.futures import ThreadPoolExecutor

        pool, setup = self.pool, self.setup
        jobs = [(setup, self.theta, task, s, pool) for task, s in zip(tasks, seeds, strict=True)]
        if not pool.parallel or len(jobs) == 1:
            return [task_meta_gradient(*job) for job in jobs]
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="meta-task") as threads:
            return list(threads.map(lambda job: task_meta_gradient(*job), jobs))

    def _fit_critics_and_normalizer(self, critic_data, first_obs) -> None:
        cfg, setup = self.cfg, self.setup
        obs = torch.cat([d[0] for d in critic_data])
        fit_critics_on_pool(
            self.pool,
            (setup.reward_critic, setup.cost_critic),
            (self.opt_r, self.opt_c),
            obs,
            [torch.cat([d[k] for d in critic_data]) for k in (1, 2)],
            cfg.critic_epochs,
            cfg.critic_minibatch,
            derive_seed(cfg.seed, self.iteration, 0, 5),
        )
        # New observation statistics; the policy and critics are re-expressed for them so that the
        # statistics update does not move the policy outside the meta trust region.
        norm = setup.normalizer
        before = norm.stats()
        norm.update(torch.cat(first_obs) * before[1] + before[0])
        after = norm.stats()
        self.theta = setup.policy.reparametrize_input(self.theta, before, after)
        setup.reward_critic.reparametrize_input(before, after)
        setup.cost_critic.reparametrize_input(before, after)

    def _multitask_step(self, tasks, seeds):
        cfg, setup = self.cfg, self.setup
        batches = []
        for task, s in zip(tasks, seeds, strict=True):
            env = setup.make_env(task, s)
            try:
                batches.append(setup.collect(env, self.theta, torch.Generator().manual_seed(s)))
            finally:
                env.close()
        pooled = _concat(batches)
        step = TrustRegionStep(delta=cfg.inner_delta, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol)
        self.theta, info = cpo_update(
            setup.policy,
            self.theta,
            setup.constrained_view(pooled),
            setup.limits,
            step,
            damping=cfg.damping,
            backtrack_coef=cfg.backtrack_coef,
            max_backtracks=cfg.max_backtracks,
            kl_tolerance=cfg.kl_tolerance,
            debias=cfg.debias,
            confidence=cfg.cost_confidence,
        )
        info["b_theta"] = info.pop("b", [])
        info["optimism_theta"] = info.pop("optimism", [])
        nan_c = np.full(len(setup.cost_channels), np.nan)
        fake = [
            TaskResult(
                grad_F=self.theta,
                grad_G=self.theta[:0],
                cost_val=np.zeros(0),
                ret_pre=b.ep_ret,
                cost_pre=np.asarray(b.ep_cost),
                ret_post=float("nan"),
                cost_post=nan_c,
                first_obs=b.obs,
                critic_data=[],
                cases=[],
                env_steps=b.env_steps,
            )
            for b in batches
        ]
        return self._row(fake, info), [(b.obs, b.ret_r, b.ret_c) for b in batches], [b.obs for b in batches]

    def _row(self, results: Sequence[TaskResult], info: dict[str, Any]) -> dict[str, Any]:
        setup = self.setup
        cost_pre = np.mean([r.cost_pre for r in results], axis=0)
        cost_post = np.mean([r.cost_post for r in results], axis=0)
        nu = list(info.get("nu", []))
        row: dict[str, Any] = {
            "iteration": self.iteration,
            "env_steps": 0,
            "ret_pre": float(np.mean([r.ret_pre for r in results])),
            "cost_pre": float(np.sum(cost_pre)),
            "ret_post": float(np.mean([r.ret_post for r in results])),
            "cost_post": float(np.sum(cost_post)),
            "kl": info.get("kl", 0.0),
            "lam": info.get("lam", float("nan")),
            "nu": float(np.sum(nu)) if nu else float("nan"),
            "case": info.get("case", ""),
            "accepted": info.get("accepted", 0.0),
            "inner_cases": " ".join(c for r in results for c in r.cases),
            "problem": info.get("problem", ""),
            "seconds": 0.0,
            "_env_steps": sum(r.env_steps for r in results),
        }
        if len(setup.cost_channels) > 1:
            for j, ch in enumerate(setup.cost_channels):
                row[f"cost_pre_{ch}"] = float(cost_pre[j])
                row[f"cost_post_{ch}"] = float(cost_post[j])
        names = setup.constraint_names
        if len(names) > 1:
            for j, name in enumerate(names):
                row[f"nu_{name}"] = nu[j] if j < len(nu) else float("nan")
        b_theta = list(info.get("b_theta", []))
        for j, name in enumerate(names):
            row[f"b_{name}"] = b_theta[j] if j < len(b_theta) else float("nan")
        if self.cfg.debias:
            optimism = list(info.get("optimism_theta", []))
            for j, name in enumerate(names):
                row[f"optimism_{name}"] = optimism[j] if j < len(optimism) else float("nan")
        return row

    # ------------------------------------------------------------------ the whole run
    def train(self) -> Path:
        """Meta-train to ``cfg.iterations`` (resuming if a checkpoint was loaded), then meta-test.

        Returns the run folder."""
        from rl.runtime import RunLogger, config_to_dict, make_run_dir, progress_bar, save_checkpoint
        from rl.runtime.checkpoint import settings_record

        cfg = self.cfg
        record = settings_record(self.run_settings())
        if self.run_dir is None:
            self.run_dir = make_run_dir("runs", [cfg.env, cfg.algo, f"seed{cfg.seed}"], out=cfg.out)
            wandb = config_to_dict(cfg) if cfg.wandb else None
            log = RunLogger(self.run_dir, tensorboard=cfg.tensorboard, wandb=wandb)
            log.write_config(config_to_dict(cfg))
        else:
            wandb = config_to_dict(cfg) if cfg.wandb else None
            log = RunLogger(
                self.run_dir, tensorboard=cfg.tensorboard, resume_iteration=self.iteration - 1, wandb=wandb
            )
            log.write_config(config_to_dict(replace(cfg, resume=None)))  # what changed on resuming
        total = 0 if cfg.algo == "cpo-scratch" else cfg.iterations
        bar = (
            progress_bar(total, initial=min(self.iteration, total), desc=f"{cfg.algo} {cfg.env}")
            if cfg.progress
            else None
        )
        try:
            while self.iteration < total:
                row = self.step()
                log.log(row)
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == total:
                    save_checkpoint(
                        self.run_dir,
                        {**self.state_dict(), **record},  # the record: --resume checks config.json
                        step=self.iteration - 1,
                        keep=cfg.keep_checkpoints,
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        ret=f"{row['ret_post']:.2f}", cost=f"{row['cost_post']:.2f}", case=row["case"]
                    )
        finally:
            if bar is not None:
                bar.close()
            log.close()
            self.close()
        self.meta_test()
        self.plot()
        return self.run_dir

    def meta_test(self) -> Path:
        """Adapt on the held-out test tasks; writes ``adaptation.csv`` and, with
        ``cfg.eval_steps``, ``evaluation.csv`` (each task's policy before and after adaptation
        on an independent batch of ``eval_steps`` env steps; the same seed for both)."""
        from rl.runtime import CSVLogger

        cfg = self.cfg
        path = self.run_dir / "adaptation.csv"
        eval_path = self.run_dir / "evaluation.csv"
        eval_tmp = eval_path.with_suffix(".csv.tmp")
        eval_tmp.unlink(missing_ok=True)
        eval_log = CSVLogger(eval_tmp) if cfg.eval_steps else None
        if eval_log is None:  # a repeated meta-test: an earlier evaluation no longer matches
            eval_path.unlink(missing_ok=True)
        tasks = self.dist.sample(cfg.test_tasks, split="test", seed=derive_seed(cfg.seed, 0, 0, 6))
        limit = limit_columns(cfg, self.setup.cost_channels)
        tmp = path.with_suffix(".csv.tmp")
        tmp.unlink(missing_ok=True)
        logger = CSVLogger(tmp)
        iterator = enumerate(tasks)
        if cfg.progress:
            from rl.runtime import progress_bar

            bar = progress_bar(len(tasks), desc="meta-test")
        for task_id, task in iterator:
            rows, params = adapt(
                self.setup,
                self.theta,
                task,
                cfg.adapt_steps,
                derive_seed(cfg.seed, 0, task_id, 7),
                cfg.constrained,
            )
            head = {"method": cfg.algo, "seed": cfg.seed, "task_id": task_id}
            for r in rows:
                logger.log({**head, **r, **limit})
            if eval_log is not None:
                for k in sorted({0, len(params) - 1}):
                    r = evaluate(
                        self.setup, params[k], task, cfg.eval_steps, derive_seed(cfg.seed, 0, task_id, 9)
                    )
                    eval_log.log({**head, "adapt_step": k, **r, **limit})
            if cfg.progress:
                bar.update(1)
                bar.set_postfix(ret=f"{rows[-1]['ep_ret']:.2f}", cost=f"{rows[-1]['ep_cost']:.2f}")
        if cfg.progress:
            bar.close()
        logger.close()
        if eval_log is not None:
            eval_log.close()
            eval_tmp.replace(eval_path)
        tmp.replace(path)
        return path

    def plot(self) -> None:
        """``training.png`` and ``adaptation.png`` in the run folder."""
        from rl.runtime.plots import plot_adaptation, plot_or_warn, plot_training

        # plots are a convenience, never fatal (a full disk, a missing matplotlib): warnings
        if (self.run_dir / "progress.csv").is_file():
            plot_or_warn(
                plot_training,
                self.run_dir / "progress.csv",
                self.run_dir / "training.png",
                panels=[("return", ["ret_pre", "ret_post"]), *self._cost_panels()],
            )
        plot_or_warn(plot_adaptation, self.run_dir / "adaptation.csv", self.run_dir / "adaptation.png")

    def _cost_panels(self) -> list[tuple[str, list[str], float | None]]:
        """The cost panels of ``training.png``: one per constraint, each with its own limit (the
        total with ``--constrain total``, else every channel)."""
        cfg, channels = self.cfg, self.setup.cost_channels
        limits = self.setup.limits
        if cfg.constrain == "total" or len(channels) == 1:
            name = "total" if cfg.constrain == "total" and len(channels) > 1 else channels[0]
            return [(f"cost: {name}", ["cost_pre", "cost_post"], limits[0] if limits else None)]
        return [
            (f"cost: {ch}", [f"cost_pre_{ch}", f"cost_post_{ch}"], limits[j] if limits else None)
            for j, ch in enumerate(channels)
        ]


def limit_columns(cfg: MetaCPOConfig, channels: Sequence[str]) -> dict[str, float]:
    """The limit columns of ``adaptation.csv`` and ``evaluation.csv``: ``limit_<name>`` for each
    constraint (``total``, or each cost channel) and ``cost_limit``, the limit on the total cost
    (that of the single constraint; NaN when several channels are constrained separately: the
    total then has no limit of its own). ``meta-trpo`` records the limits the constrained
    methods are given."""
    limits = resolve_limits(replace(cfg, algo="cpo-scratch"), tuple(channels))
    names = ("total",) if cfg.constrain == "total" else tuple(channels)
    out: dict[str, float] = {"cost_limit": float(limits[0]) if len(limits) == 1 else math.nan}
    out.update({f"limit_{name}": float(v) for name, v in zip(names, limits, strict=True)})
    return out


def within_limits(row: dict[str, Any]) -> bool:
    """Whether a row of ``adaptation.csv`` / ``evaluation.csv`` is within every constraint's
    limit (``limit_<name>`` columns; ``total`` compares ``ep_cost``, a channel ``cost_<name>``).

    Raises:
        ValueError: the row has no ``limit_<name>`` column.
    """
    names = [k[len("limit_") :] for k in row if k.startswith("limit_")]
    if not names:
        raise ValueError(f"no limit_<name> columns in {sorted(row)}; expected a meta-test row")
    value = lambda name: float(row["ep_cost"] if name == "total" else row[f"cost_{name}"])  # noqa: E731
    return all(value(name) <= float(row[f"limit_{name}"]) for name in names)


@dataclass
class MetaTestSummary:
    """Before and after adaptation on the held-out test tasks, from one run folder.

    Attributes:
        source: The CSV judged: ``evaluation.csv`` (the independent evaluation) when the run has
            one, else ``adaptation.csv`` (the adaptation batches).
        tasks: Number of test tasks.
        adapt_step: The step judged as "after" (the last one).
        within_before: Tasks within every limit before adaptation.
        within_after: Tasks within every limit after ``adapt_step`` steps.
        ret_before: Mean episode return over the tasks before adaptation.
        ret_after: Mean episode return after adaptation.
        costs_before: Mean episode cost per channel before adaptation.
        costs_after: Mean episode cost per channel after adaptation.
        limits: The limit of each constraint.
    """

    source: Path
    tasks: int
    adapt_step: int
    within_before: int
    within_after: int
    ret_before: float
    ret_after: float
    costs_before: dict[str, float]
    costs_after: dict[str, float]
    limits: dict[str, float]

    def text(self, run_dir: str | Path | None = None) -> str:
        """A few lines for the end of a run."""
        fmt = lambda costs: ", ".join(f"{k} {v:.2f}" for k, v in costs.items())  # noqa: E731
        lines = [
            f"meta-test on {self.tasks} held-out test tasks, judged on {self.source.name}:",
            f"  within every limit ({fmt(self.limits)}): {self.within_before}/{self.tasks} before "
            f"adaptation, {self.within_after}/{self.tasks} after {self.adapt_step} steps",
            f"  return: {self.ret_before:.2f} before, {self.ret_after:.2f} after",
            f"  mean cost: {fmt(self.costs_before)} before; {fmt(self.costs_after)} after",
        ]
        if run_dir is not None:
            run_dir = Path(run_dir)
            files = [
                f
                for f in (
                    "progress.csv",
                    "adaptation.csv",
                    "evaluation.csv",
                    "training.png",
                    "adaptation.png",
                )
                if (run_dir / f).is_file()
            ]
            lines.append(f"  files in {run_dir}: {', '.join(files)}")
        return "\n".join(lines)


def meta_test_summary(run_dir: str | Path) -> MetaTestSummary:
    """Summarise a run folder's meta-test (``evaluation.csv`` if present, else ``adaptation.csv``).

    Raises:
        FileNotFoundError: the folder has neither file.
        ValueError: the file has no rows or no limit columns.
    """
    from rl.runtime.logging import read_csv

    run_dir = Path(run_dir)
    source = run_dir / "evaluation.csv"
    if not source.is_file():
        source = run_dir / "adaptation.csv"
    if not source.is_file():
        raise FileNotFoundError(f"{run_dir} has no evaluation.csv or adaptation.csv; has the meta-test run?")
    rows = read_csv(source)
    if not rows:
        raise ValueError(f"{source} has no rows")
    last = max(int(r["adapt_step"]) for r in rows)
    before = [r for r in rows if int(r["adapt_step"]) == 0]
    after = [r for r in rows if int(r["adapt_step"]) == last]
    channels = [k[len("cost_") :] for k in rows[0] if k.startswith("cost_") and k != "cost_limit"]
    mean = lambda rs, key: float(np.mean([float(r[key]) for r in rs]))  # noqa: E731
    return MetaTestSummary(
        source=source,
        tasks=len(before),
        adapt_step=last,
        within_before=sum(within_limits(r) for r in before),
        within_after=sum(within_limits(r) for r in after),
        ret_before=mean(before, "ep_ret"),
        ret_after=mean(after, "ep_ret"),
        costs_before={ch: mean(before, f"cost_{ch}") for ch in channels},
        costs_after={ch: mean(after, f"cost_{ch}") for ch in channels},
        limits={k[len("limit_") :]: float(v) for k, v in rows[0].items() if k.startswith("limit_")},
    )


# ============================================================================== command line
def parse_args(argv: Sequence[str] | None = None) -> MetaCPOConfig:
    """Config from the command line (``--config FILE`` then overrides); with ``--resume DIR``
    from ``DIR/config.json`` plus the options allowed to change (from the command line or
    ``--config FILE``). Errors are usage errors (exit status 2)."""
    from rl.runtime.config import parse_config_or_resume

    return parse_config_or_resume(MetaCPOConfig, argv, RESUME_OVERRIDABLE, "rl.meta_cpo")


def prepare(cfg: MetaCPOConfig) -> MetaCPOTrainer:
    """The trainer of ``cfg``, restored from its run folder's checkpoint with ``--resume``;
    writes nothing.

    Raises:
        ValueError: the configuration does not fit the environment (``cost_limit`` count), the
            ``--out`` folder is taken, or the run folder does not match (a ``ConfigError``
            naming the setting; ``--iterations`` below the iterations the folder holds).
    """
    if cfg.resume is None:
        from rl.runtime.validation import check_new_run_folder

        check_new_run_folder(cfg.out)
        return MetaCPOTrainer(cfg)
    trainer = MetaCPOTrainer(cfg, run_dir=cfg.resume)
    path = trainer.restore_checkpoint()
    total = 0 if cfg.algo == "cpo-scratch" else cfg.iterations
    if total < trainer.iteration:
        raise ConfigError(
            f"--iterations {cfg.iterations} is below the {trainer.iteration} meta-iterations the run folder "
            f"{cfg.resume} holds ({path.name}); give --iterations {trainer.iteration} or more"
        )
    return trainer


def run(cfg: MetaCPOConfig) -> Path:
    """Train (or resume) and meta-test; returns the run folder."""
    return prepare(cfg).train()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m rl.meta_cpo``."""
    from rl.runtime.config import usage_error

    cfg = parse_args(argv)
    try:
        trainer = prepare(cfg)
    except ValueError as err:  # nothing has been written
        usage_error(MetaCPOConfig, str(err))
    run_dir = trainer.train()
    print(meta_test_summary(run_dir).text(run_dir))
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main()
