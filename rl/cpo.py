"""``python -m rl.cpo``: train CPO (Achiam et al., 2017) on one task.

The CPO step itself (surrogates, direction, optimism correction, line search) is the library
:mod:`rl.cpo_step`; the critics are fitted by :mod:`rl.critics`. One iteration of :func:`train`:

1. **Collect** ``steps_per_iter`` env steps with the current policy, in ``--shards`` blocks of
   sub-environments (:func:`rl.rollout.gather_sharded`): GAE advantages for the reward and for
   every cost channel, per-episode return and cost.
2. **Update** the policy with :func:`rl.cpo_step.cpo_update` (the direction with the damped
   Fisher metric of the whole batch, the optimism correction with ``--debias``, the line search).
3. **Critics**: Adam on the TD(lambda) targets of the batch, reward and cost critic together on
   the same minibatches (:func:`rl.critics.fit_critics`).

Command line::

    python -m rl.cpo --env safenav-goal --steps 300000 --seed 0 --cost-limit 25 --out runs/cpo
    python -m rl.cpo --resume runs/cpo --steps 400000     # continue (and extend) a run

The run folder receives ``config.json``, ``progress.csv`` (one row per iteration),
TensorBoard events, ``ckpt_*.pt`` (full state; ``--resume`` continues exactly where
the checkpoint left off) and ``training.png``.

The library's names (``surrogates``, ``cost_offsets``, ``cpo_direction``, ``cpo_update``,
``line_search``, ``debiased_offsets``, ``fit_critics`` ...) are importable from here as well.
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

from rl import envs
from rl.cpo_step import (
    confidence_z,
    cost_offsets,
    cpo_direction,
    cpo_update,
    debiased_offsets,
    fisher_metric,
    line_search,
    on_device,
    optimism_offsets,
    sum_cost_channels,
    surrogates,
)
from rl.critics import adam as _adam
from rl.critics import fit_critics, fit_critics_on_pool
from rl.envs.safenav import corridor_task
from rl.policy import Critic, GaussianPolicy, ObsNormalizer
from rl.rollout import Batch, EnvSpec, gather_sharded, submit_sharded
from rl.runtime import (
    RunLogger,
    config_to_dict,
    make_run_dir,
    parallel,
    progress_bar,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rl.runtime.checkpoint import checkpoint_step, restore_latest_checkpoint, settings_record
from rl.runtime.config import ConfigError, parse_config_or_resume, run_settings, usage_error
from rl.runtime.plots import plot_or_warn, plot_training
from rl.runtime.validation import validate_settings
from rl.seeds import CPOSeed
from rl.settings import (
    AdvantageSettings,
    ConstraintSettings,
    CriticSettings,
    RuntimeSettings,
    TrustRegionSettings,
)

__all__ = [
    "CPOConfig",
    "confidence_z",
    "cost_offsets",
    "cpo_direction",
    "cpo_update",
    "debiased_offsets",
    "fisher_metric",
    "fit_critics",
    "fit_critics_on_pool",
    "optimism_offsets",
    "line_search",
    "main",
    "make_env",
    "surrogates",
    "sum_cost_channels",
    "train",
]


# --------------------------------------------------------------------------------- config
@dataclass
class _CPORun:
    """The settings of ``rl.cpo`` outside the shared groups (:mod:`rl.settings`)."""

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
    horizon: int | None = field(default=None, metadata={"help": "episode length (none: the env default)"})
    seed: int = field(default=0, metadata={"help": "random seed (task, env, policy, sampling)"})
    delta: float = field(default=0.01, metadata={"help": "trust region: 0.5 x'Hx <= delta"})
    hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "policy hidden sizes (tanh)"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial policy log-std"})
    obs_normalize: bool = field(
        default=True,
        metadata={
            "help": "normalise observations with running statistics (frozen during a batch, merged "
            "after it); false: raw observations, as OmniSafe's CPO defaults. The first merge shifts "
            "the policy's inputs from raw to normalised ones, a large policy change that the trust "
            "region does not see when iterations are few and batches large"
        },
    )
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


@dataclass
class CPOConfig(
    RuntimeSettings, CriticSettings, AdvantageSettings, TrustRegionSettings, ConstraintSettings, _CPORun
):
    """Train CPO (or TRPO with --cost-limit none) on one task; writes progress.csv,
    config.json, TensorBoard events, checkpoints and training.png in the run folder."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value: the ranges shared with ``rl.meta_cpo``
        (:func:`rl.runtime.validation.validate_settings`), then CPO's own rules."""
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
    "device",
    "resume",
)


#: Settings that do not define a run: those that may change on resuming, and where it is written.
_NOT_RUN_DEFINING = (*_RESUME_OVERRIDABLE, "out")


def _restore_checkpoint(run_dir: Path, st: _State, settings: dict[str, Any]) -> tuple[Path, dict] | None:
    """Restore ``st`` from the newest checkpoint of ``run_dir`` that loads, fits and was made with
    ``settings`` (:func:`rl.runtime.checkpoint.restore_latest_checkpoint`); ``None``: none did."""

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
    try:
        return make_run_dir("runs", [cfg.env, "cpo", f"seed{cfg.seed}"], out=cfg.out)
    except (FileExistsError, NotADirectoryError) as err:
        raise ConfigError(f"--out {cfg.out}: {err}") from err


def _is_safety_gym(env: str) -> bool:
    """Whether ``env`` names a Safety-Gymnasium environment (a family or a raw id)."""
    return env not in envs.BUILTIN_FAMILIES


# --------------------------------------------------------------------------------- training
def make_env(cfg: CPOConfig) -> Any:
    """The vectorised environment of ``cfg`` (task per ``cfg.task``)."""
    kwargs: dict[str, Any] = {}
    if cfg.horizon is not None:
        kwargs["horizon"] = cfg.horizon
    if cfg.num_workers > 1:
        kwargs["num_workers"] = cfg.num_workers
    task = None
    if cfg.task == "corridor":
        task = corridor_task()
    return envs.make(cfg.env, task=task, num_envs=cfg.num_envs, seed=cfg.seed, **kwargs)


def make_pool(cfg: CPOConfig) -> Any:
    """The :class:`rl.runtime.parallel.TaskPool` that samples the shards of every batch
    (``--num-workers N > 1``, deprecated, is ``--backend processes --workers N``). ``auto`` with
    batches under :data:`PARALLEL_MIN_STEPS` steps is ``serial``: starting workers would cost more
    than they save."""
    if cfg.num_workers > 1:
        return parallel.TaskPool("processes", cfg.num_workers, max_retries=cfg.max_retries)
    backend = "serial" if cfg.backend == "auto" and cfg.steps_per_iter < PARALLEL_MIN_STEPS else cfg.backend
    return parallel.TaskPool(backend, cfg.workers, cfg.ray_address, cfg.max_retries).start()


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
    derived = int(np.random.SeedSequence([int(seed), int(iteration), CPOSeed.SAMPLING]).generate_state(1)[0])
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
    dtype = cfg.torch_dtype()
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
    cfg.validate()
    device = cfg.torch_device()  # --device cuda without a GPU: a ConfigError before any work
    torch.set_num_threads(cfg.threads)
    try:
        env = make_env(cfg)
    except ValueError as err:  # an environment this program cannot make: a configuration error
        raise ConfigError(f"--env {cfg.env}: {err}") from err
    try:  # nothing is written before the run's settings and its checkpoints are checked
        st = _init_state(cfg, env)
        channels = tuple(env.cost_channels)
        limits = cfg.limits(channels)
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
    constraint_names = cfg.constraint_names(channels)
    step = cfg.step(cfg.delta)
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
                **cfg.gae(),
                update_normalizer=cfg.obs_normalize,
            )
            started = None
            t_sampled = time.perf_counter()
            new, info = cpo_update(  # on --device; sampling and critics stay on the CPU
                st.policy,
                st.params.to(device),
                on_device(cfg.view(batch), device),
                limits,
                step,
                **cfg.update_options(),
                debias=cfg.debias,
                confidence=cfg.cost_confidence,
                pool=pool if device.type == "cpu" else None,
                fisher_parts=cfg.shards,
            )
            st.params = new.cpu()
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
    return parse_config_or_resume(CPOConfig, argv, _RESUME_OVERRIDABLE, "rl.cpo")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m rl.cpo`` (``--help`` lists every option)."""
    cfg = parse_args(argv)
    try:
        run_dir = train(cfg)
    except ConfigError as err:  # raised before anything is written
        usage_error(CPOConfig, str(err))
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main()
