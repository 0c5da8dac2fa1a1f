"""Settings groups shared by ``python -m rl.cpo`` and ``python -m rl.meta_cpo``.

Each group is a dataclass of flat, named settings with their ``--help`` text: trust region
(:class:`TrustRegionSettings`), constraints (:class:`ConstraintSettings`, the one place where
cost limits are resolved), advantage estimation (:class:`AdvantageSettings`), critics
(:class:`CriticSettings`), runtime (:class:`RuntimeSettings`) and meta-test
(:class:`MetaTestSettings`). A program's config (:class:`rl.cpo.CPOConfig`,
:class:`rl.meta_cpo.MetaCPOConfig`) inherits the groups it uses, so its command-line flags
(``--damping``, ``--cost-limit`` ...), ``--config`` files and the ``config.json`` of its run
folders stay flat and unchanged; a program that wants another default redeclares the field.
:func:`group` takes a group's values out of a config::

    >>> from rl.meta_cpo import MetaCPOConfig
    >>> group(AdvantageSettings, MetaCPOConfig(gamma=0.9))
    AdvantageSettings(gamma=0.9, lam=0.95, cost_gamma=0.99, cost_lam=0.95)
    >>> ConstraintSettings(cost_limit=(5.0, 8.0)).limits(("hazard", "wall"))
    [5.0, 8.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from difftrust import TrustRegionStep
from rl.cpo_step import sum_cost_channels
from rl.rollout import Batch
from rl.runtime.config import ConfigError

__all__ = [
    "AdvantageSettings",
    "ConstraintSettings",
    "CriticSettings",
    "MetaTestSettings",
    "RuntimeSettings",
    "TrustRegionSettings",
    "group",
    "resolve_device",
]

G = TypeVar("G")


def group(cls: type[G], cfg: Any) -> G:
    """The values of group ``cls`` in ``cfg`` (a config that inherits the group)."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@dataclass
class ConstraintSettings:
    """The cost constraints: limits, one per channel or one on the total, and their estimates."""

    cost_limit: float | tuple[float, ...] | None = field(
        default=25.0,
        metadata={
            "help": "per-episode cost limit: one value for every constraint, one per channel, "
            "or none (no constraint: TRPO)"
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
            "gradients, estimated from two halves of the data: of each batch, and for Meta-CPO's "
            "meta-step of the meta-batch (rl.cpo_step.optimism_offsets; the offsets are constants of "
            "the data); --no-debias: the textbook CPO step, whose costs settle above the limits"
        },
    )
    cost_confidence: float = field(
        default=0.5,
        metadata={
            "help": "constrain an upper confidence bound of the episode cost: ep_cost + z * standard "
            "error, z the normal quantile of this level (0.5: the estimated mean, as in CPO); "
            "Meta-CPO's meta-step bounds the mean over the meta-batch + z * its standard error over tasks"
        },
    )

    def constraint_names(self, channels: Sequence[str]) -> tuple[str, ...]:
        """``("total",)`` with ``constrain="total"``, else the channels."""
        return ("total",) if self.constrain == "total" else tuple(channels)

    def limits(self, channels: Sequence[str]) -> list[float] | None:
        """The limit of each constraint (``None``: no constraint), from one value or one per
        constraint.

        Raises:
            ConfigError: the number of values is neither 1 nor the number of constraints.
        """
        if self.cost_limit is None:
            return None
        names = self.constraint_names(channels)
        values = [float(v) for v in self.cost_limit] if isinstance(self.cost_limit, tuple | list) else None
        limits = [float(self.cost_limit)] if values is None else values
        if len(limits) == 1:
            return limits * len(names)
        if len(limits) != len(names):
            are = "is 1 constraint" if len(names) == 1 else f"are {len(names)} constraints"
            raise ConfigError(
                f"cost_limit has {len(limits)} values but there {are} {list(names)} "
                f"(--constrain {self.constrain}); give one value or one per constraint"
            )
        return limits

    def view(self, batch: Batch) -> Batch:
        """The batch whose cost channels are the constraints."""
        return sum_cost_channels(batch) if self.constrain == "total" else batch


@dataclass
class TrustRegionSettings:
    """The Fisher metric, its conjugate-gradient solves and the line search of every CPO step."""

    damping: float = field(default=0.1, metadata={"help": "Fisher damping"})
    cg_iters: int = field(default=15, metadata={"help": "conjugate-gradient iterations"})
    cg_tol: float | None = field(
        default=None,
        metadata={
            "help": "conjugate-gradient relative tolerance; none: truncated conjugate gradient as TRPO "
            "and CPO define it, cg_iters iterations (fewer only below a residual of 1e-10) without a "
            "warning (rl.cpo writes the worst residual of each update to progress.csv, cg_residual); "
            "a number: difftrust warns (CGNotConvergedWarning) when cg_iters iterations do not reach it"
        },
    )
    backtrack_coef: float = field(default=0.8, metadata={"help": "line-search step shrink factor"})
    max_backtracks: int = field(default=15, metadata={"help": "line-search trials"})
    kl_tolerance: float = field(
        default=1.5, metadata={"help": "line search accepts mean KL <= kl_tolerance * delta"}
    )

    def step(self, delta: float) -> TrustRegionStep:
        """The trust-region layer of size ``delta`` with these CG settings (``cg_tol`` none:
        truncated conjugate gradient, ``cg_iters`` iterations and no convergence warning)."""
        return TrustRegionStep(delta=delta, cg_iters=self.cg_iters, cg_tol=self.cg_tol)

    def update_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`rl.cpo_step.cpo_update` these settings hold."""
        return {
            "damping": self.damping,
            "backtrack_coef": self.backtrack_coef,
            "max_backtracks": self.max_backtracks,
            "kl_tolerance": self.kl_tolerance,
        }


@dataclass
class AdvantageSettings:
    """Discounts and GAE lambdas of the reward and the costs."""

    gamma: float = field(default=0.99, metadata={"help": "reward discount"})
    lam: float = field(default=0.95, metadata={"help": "reward GAE lambda"})
    cost_gamma: float = field(default=0.99, metadata={"help": "cost discount"})
    cost_lam: float = field(default=0.95, metadata={"help": "cost GAE lambda"})

    def gae(self) -> dict[str, float]:
        """The keyword arguments of :func:`rl.rollout.collect` these settings hold."""
        return {
            "gamma": self.gamma,
            "lam": self.lam,
            "cost_gamma": self.cost_gamma,
            "cost_lam": self.cost_lam,
        }


@dataclass
class CriticSettings:
    """The reward and cost critics and their fitting."""

    critic_hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "critic hidden sizes"})
    critic_lr: float = field(default=1e-3, metadata={"help": "critic Adam learning rate"})
    critic_epochs: int = field(default=10, metadata={"help": "critic epochs per iteration"})
    critic_minibatch: int = field(default=128, metadata={"help": "critic minibatch size"})


@dataclass
class RuntimeSettings:
    """Where and how a run computes: workers, threads, dtype, device, logging, checkpoints. The
    results do not depend on these, except ``shards`` and ``dtype`` (and the last bits on
    ``device``)."""

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
    threads: int = field(default=1, metadata={"help": "torch CPU threads (of the driver)"})
    dtype: Literal["float64", "float32"] = field(
        default="float64", metadata={"help": "dtype of the policy, the critics and the steps"}
    )
    device: Literal["cpu", "cuda"] = field(
        default="cpu",
        metadata={
            "help": "where the policy updates are computed (cuda: the current GPU); sampling, critics "
            "and checkpoints stay on the CPU; the last bits of the results depend on it"
        },
    )
    checkpoint_every: int = field(default=10, metadata={"help": "iterations between checkpoints"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard events"})
    wandb: bool = field(
        default=False, metadata={"help": "also log to Weights & Biases (needs the wandb package)"}
    )

    def torch_dtype(self) -> torch.dtype:
        """``torch.float64`` or ``torch.float32``."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    def torch_device(self) -> torch.device:
        """The device of the policy updates (:func:`resolve_device`)."""
        return resolve_device(self.device)


def resolve_device(device: str) -> torch.device:
    """``torch.device(device)`` for ``"cpu"`` or ``"cuda"``.

    Raises:
        ConfigError: another name, or ``"cuda"`` where torch sees no GPU (the message says why).
    """
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of ['cpu', 'cuda'], got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no GPU"
        raise ConfigError(f"--device cuda: {why}; use --device cpu")
    return torch.device(device)


@dataclass
class MetaTestSettings:
    """Adaptation on held-out test tasks after meta-training, and its independent evaluation."""

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
