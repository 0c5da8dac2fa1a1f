"""Meta-CPO: constrained meta-RL through a differentiable CPO inner loop.

``python -m rl.meta_cpo`` meta-trains on the built-in hiddennav distribution (the task, a goal in a
ring of hazards, is hidden from the observation, so a policy must adapt), adapts on held-out test
tasks, judges each before and after adaptation on an independent evaluation batch, prints a
summary and writes every artifact into a run folder (``--help`` lists every option).

The algorithm (Cho & Sun, AAAI-24; ``docs/concepts.md``) is spread over modules a newcomer
reads in this order:

* :mod:`rl.cpo_step`: the CPO step (direction, optimism correction, line search) of every inner
  step, of the adaptation and of the multi-task baseline;
* :mod:`rl.meta_update`: each task's inner loop and meta-gradient, and the projected meta-step;
* :mod:`rl.baselines`: the baselines' step functions;
* :mod:`rl.meta_test`: adaptation and evaluation on held-out test tasks, the judgement of a run;
* this module: the settings (:class:`MetaCPOConfig`, grouped as :mod:`rl.settings` describes),
  the trainer (set-up, worker pool, critics and normaliser, checkpoints, log) and the program.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rl.baselines import multitask_step
from rl.cpo_step import fisher_states
from rl.critics import fit_critics_on_pool
from rl.envs import make, task_distribution
from rl.meta_test import (
    MetaTestSummary,
    adapt,
    evaluate,
    limit_columns,
    meta_test,
    meta_test_summary,
    within_limits,
)
from rl.meta_update import (
    NonFiniteBatch,
    Setup,
    TaskResult,
    inner_direction,
    inner_loop,
    meta_objectives,
    meta_update,
    task_meta_gradient,
)
from rl.policy import Critic, GaussianPolicy, ObsNormalizer
from rl.records import IterationRecord
from rl.runtime import (
    RunLogger,
    config_to_dict,
    load_config,
    make_run_dir,
    parallel,
    progress_bar,
    save_checkpoint,
)
from rl.runtime.checkpoint import checkpoint_step, restore_latest_checkpoint, settings_record
from rl.runtime.config import ConfigError, parse_config_or_resume, run_settings, usage_error
from rl.runtime.plots import plot_adaptation, plot_or_warn, plot_training
from rl.runtime.seeding import rng_state, set_rng_state
from rl.runtime.validation import check_new_run_folder, validate_settings
from rl.seeds import Seed, derive_seed
from rl.settings import (
    AdvantageSettings,
    ConstraintSettings,
    CriticSettings,
    MetaTestSettings,
    RuntimeSettings,
    TrustRegionSettings,
)

__all__ = [
    "ALGOS",
    "MetaCPOConfig",
    "MetaCPOTrainer",
    "MetaTestSummary",
    "NonFiniteBatch",
    "Setup",
    "TaskResult",
    "adapt",
    "derive_seed",
    "evaluate",
    "fisher_states",
    "inner_direction",
    "inner_loop",
    "limit_columns",
    "main",
    "meta_objectives",
    "meta_test_summary",
    "meta_update",
    "resolve_limits",
    "task_meta_gradient",
    "within_limits",
]

ALGOS = ("meta-cpo", "fo-meta-cpo", "meta-trpo", "cpo-scratch", "multitask-cpo")
ENVS = ("hiddennav", "hiddennav-hazard", "safenav-button", "safenav-goal", "safety-button", "safety-circle")


# ============================================================================== configuration
@dataclass
class _MetaRun:
    """The settings of ``rl.meta_cpo`` outside the shared groups (:mod:`rl.settings`)."""

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
    fisher_states: int = field(
        default=1000,
        metadata={"help": "states (an even stride of the batch) on which Fisher metrics are built"},
    )
    hidden: tuple[int, ...] = field(default=(32, 32), metadata={"help": "policy hidden sizes (tanh)"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial policy log-std"})
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
    keep_checkpoints: int = field(default=3, metadata={"help": "checkpoints kept"})


@dataclass
class MetaCPOConfig(
    MetaTestSettings,
    RuntimeSettings,
    CriticSettings,
    AdvantageSettings,
    TrustRegionSettings,
    ConstraintSettings,
    _MetaRun,
):
    """Meta-train on a task distribution, then adapt on held-out test tasks. Writes
    progress.csv, adaptation.csv, config.json, TensorBoard events, checkpoints and PNG plots."""

    # the shared groups' settings whose default differs from rl.cpo's
    cost_limit: float | tuple[float, ...] = field(  # no "none": that is --algo meta-trpo
        default=5.0,
        metadata={
            "help": "per-episode cost limit: one value for every constraint, or one per channel "
            "(meta-trpo: the limits the meta-test reports)"
        },
    )
    cg_iters: int = field(default=10, metadata={"help": "conjugate-gradient iterations"})
    max_backtracks: int = field(default=10, metadata={"help": "line-search trials"})
    critic_epochs: int = field(default=5, metadata={"help": "critic epochs per meta-iteration"})
    critic_minibatch: int = field(default=256, metadata={"help": "critic minibatch size"})
    workers: int | None = field(
        default=2, metadata={"help": "worker processes / Ray CPUs (none: one per core)"}
    )
    checkpoint_every: int = field(default=1, metadata={"help": "meta-iterations between checkpoints"})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the key and the valid values: the ranges shared with
        ``rl.cpo`` (:func:`rl.runtime.validation.validate_settings`), then Meta-CPO's own rules."""
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
    "device",
)
#: Settings that do not define a run: those that may change on resuming, and where it is written.
NOT_RUN_DEFINING = (*RESUME_OVERRIDABLE, "out")


def _worst(results: Sequence[TaskResult]) -> float:
    """The largest ``cg_residual`` of ``results`` (NaN when none has one)."""
    values = [r.cg_residual for r in results if not math.isnan(r.cg_residual)]
    return max(values) if values else float("nan")


def resolve_limits(cfg: MetaCPOConfig, channels: tuple[str, ...]) -> list[float] | None:
    """Per-constraint limits (``None`` for meta-trpo; :meth:`rl.settings.ConstraintSettings.limits`)."""
    return cfg.limits(channels) if cfg.constrained else None


# ============================================================================== the trainer
class MetaCPOTrainer:
    """Meta-training, checkpoints and meta-test of one run.

    Example:
        >>> cfg = MetaCPOConfig(iterations=1, meta_batch=2, batch_steps=200, num_envs=2,
        ...                     test_tasks=1, adapt_steps=1, progress=False, tensorboard=False)
        >>> trainer = MetaCPOTrainer(cfg)            # doctest: +SKIP
        >>> run_dir = trainer.train()                # doctest: +SKIP
    """

    def __init__(self, cfg: MetaCPOConfig, run_dir: str | Path | None = None):
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
        init = torch.Generator().manual_seed(derive_seed(cfg.seed, 0, 0, Seed.POLICY_INIT))
        torch.manual_seed(derive_seed(cfg.seed, 0, 0, Seed.CRITIC_INIT))  # critic initialisation
        dtype = cfg.torch_dtype()
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
            device=cfg.torch_device(),
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
        if self._pool is None:
            self._pool = parallel.TaskPool(  # looked up here: a test may replace it
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
        seed = derive_seed(self.cfg.seed, self.iteration, 0, Seed.TRAIN_TASKS)
        return self.dist.sample(self.cfg.meta_batch, split="train", seed=seed)

    def step(self) -> dict[str, Any]:
        """One meta-iteration (or one step of the ``multitask-cpo`` baseline); returns its line of
        ``progress.csv`` (:meth:`rl.records.IterationRecord.row`)."""
        cfg, setup, it = self.cfg, self.setup, self.iteration
        t0 = time.perf_counter()
        tasks = self.train_tasks()
        seeds = [derive_seed(cfg.seed, it, i, Seed.TASK) for i in range(len(tasks))]
        if cfg.algo == "multitask-cpo":
            self.theta, record, batches = multitask_step(setup, self.theta, tasks, seeds)
            critic_data = [(b.obs, b.ret_r, b.ret_c) for b in batches]
            first_obs = [b.obs for b in batches]
        else:
            results = self._task_results(tasks, seeds)
            problems = [f"task {i}: {r.problem}" for i, r in enumerate(results) if r.problem]
            if problems:
                info = {"case": "skipped", "lam": float("nan"), "nu": [], "b_theta": [], "accepted": 0.0}
                info.update(kl=0.0, problem="; ".join(problems), cg_residual=_worst(results))
                print(f"warning: meta-iteration {it} skipped: {info['problem']}", file=sys.stderr)
            else:
                self.theta, info = meta_update(setup, self.theta, results)
            # a skipped batch teaches nothing: it never reaches the critics, normaliser or checkpoint
            critic_data = [] if problems else [d for r in results for d in r.critic_data]
            first_obs = [r.first_obs for r in results]
            record = IterationRecord.from_tasks(results, info)
        if critic_data:  # critics and normaliser learn from this iteration's data (after the meta-step)
            self._fit_critics_and_normalizer(critic_data, first_obs)
        self.env_steps += record.env_steps
        self.seconds += time.perf_counter() - t0
        self.iteration = it + 1
        row = record.row(
            it,
            self.env_steps,
            round(self.seconds, 3),
            setup.cost_channels,
            setup.constraint_names,
            cfg.debias,
        )
        # the worst relative residual of the iteration's conjugate-gradient solves (every inner
        # step's and the meta-step's, or the multi-task update's), as rl.cpo reports its own
        row["cg_residual"] = record.step.get("cg_residual", float("nan"))
        return row

    def _task_results(self, tasks: Sequence[Any], seeds: Sequence[int]) -> list[TaskResult]:
        """Every task's :func:`rl.meta_update.task_meta_gradient`, batches sampled in shards on the pool.

        With a parallel pool the tasks' inner loops run in threads of this process (each waits
        for its shards most of the time), so the shards of all tasks share one queue and no
        worker idles while ``M`` and the workers do not divide; results come in task order."""
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
            derive_seed(cfg.seed, self.iteration, 0, Seed.CRITIC_FIT),
        )
        # New observation statistics; the policy and critics are re-expressed for them so that the
        # statistics update does not move the policy outside the meta trust region.
        norm = setup.normalizer
        before = norm.stats()
        norm.update(torch.cat(first_obs).cpu() * before[1] + before[0])
        after = norm.stats()
        self.theta = setup.policy.reparametrize_input(self.theta, before, after)
        setup.reward_critic.reparametrize_input(before, after)
        setup.cost_critic.reparametrize_input(before, after)

    # ------------------------------------------------------------------ the whole run
    def train(self) -> Path:
        """Meta-train to ``cfg.iterations`` (resuming if a checkpoint was loaded), then meta-test.

        Returns the run folder."""
        cfg = self.cfg
        record = settings_record(self.run_settings())
        wandb = config_to_dict(cfg) if cfg.wandb else None
        if self.run_dir is None:
            self.run_dir = make_run_dir("runs", [cfg.env, cfg.algo, f"seed{cfg.seed}"], out=cfg.out)
            log = RunLogger(self.run_dir, tensorboard=cfg.tensorboard, wandb=wandb)
            log.write_config(config_to_dict(cfg))
        else:
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
        # a run folder from before the cg_residual column keeps its columns (it resumes as it was)
        columns = log.csv.fieldnames
        try:
            while self.iteration < total:
                row = self.step()
                if columns is not None and "cg_residual" not in columns:
                    del row["cg_residual"]
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
        """:func:`rl.meta_test.meta_test` of the meta-parameters in the run folder."""
        return meta_test(self.setup, self.theta, self.dist, self.run_dir, self.cfg.constrained)

    def plot(self) -> None:
        """``training.png`` and ``adaptation.png`` in the run folder."""
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


# ============================================================================== command line
def parse_args(argv: Sequence[str] | None = None) -> MetaCPOConfig:
    """Config from the command line (``--config FILE`` then overrides); with ``--resume DIR``
    from ``DIR/config.json`` plus the options allowed to change (from the command line or
    ``--config FILE``). Errors are usage errors (exit status 2)."""
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
