"""Meta-test: adapt a meta-policy on held-out test tasks, evaluate it, judge it against the limits.

:func:`adapt` takes ``steps`` inner CPO steps (:func:`rl.meta_update.inner_direction`) on one task,
:func:`evaluate` measures a policy on an independent batch, :func:`meta_test` does both for every
test task of a run and writes ``adaptation.csv`` and ``evaluation.csv`` atomically, and
:func:`meta_test_summary` judges a run folder (:func:`within_limits`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from rl.cpo_step import on_device
from rl.critics import fit_critics
from rl.meta_update import Setup, inner_direction
from rl.runtime import CSVLogger, progress_bar
from rl.runtime.logging import read_csv
from rl.seeds import Seed, derive_seed

if TYPE_CHECKING:
    from rl.meta_cpo import MetaCPOConfig

__all__ = [
    "MetaTestSummary",
    "adapt",
    "evaluate",
    "limit_columns",
    "meta_test",
    "meta_test_summary",
    "within_limits",
]


def batch_size(cfg: MetaCPOConfig, steps: int | None) -> tuple[int, int]:
    """``(batch_steps, num_envs)`` of batches of ``steps`` env steps (``None``: the run's); the
    sub-environments scale with the batch, so that each still runs whole episodes."""
    if steps is None or steps == cfg.batch_steps:
        return cfg.batch_steps, cfg.num_envs
    num_envs = (
        None if cfg.num_envs is None else min(max(1, round(cfg.num_envs * steps / cfg.batch_steps)), steps)
    )
    return steps, num_envs


def evaluate(setup: Setup, params: Tensor, task: Any, steps: int, seed: int) -> dict[str, Any]:
    """Mean episode return and costs of ``params`` on ``task`` over one batch of ``steps`` env
    steps in ``steps // horizon`` sub-environments (whole episodes), with the standard error
    ``sem_<channel>`` of each channel's cost."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"evaluation steps must be an int >= 1, got {steps!r}")
    horizon = setup.cfg.horizon
    if horizon is None:
        probe = setup.make_env(task, seed, num_envs=1)
        horizon = int(probe.horizon)
        probe.close()
    env = setup.make_env(task, seed, num_envs=max(1, steps // horizon))
    try:
        batch = setup.collect(env, params, torch.Generator().manual_seed(seed), steps=steps)
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
    *,
    batch_steps: int | None = None,
    confidence: float | None = None,
) -> tuple[list[dict[str, Any]], list[Tensor]]:
    """Adapt ``theta`` to ``task`` with ``steps`` inner CPO steps, evaluating after each.

    Evaluation ``k`` is the on-policy batch of ``pi_{phi^k}`` (``k = 0``: before adaptation), of
    ``batch_steps`` env steps (default ``cfg.adapt_batch_steps``, else ``cfg.batch_steps``); the
    steps constrain the cost at ``confidence`` (default ``cfg.adapt_confidence``, else
    ``cfg.cost_confidence``). Critics are copies of the trained ones, refitted on each batch of
    this task.

    Returns:
        ``(rows, params)``: one row per evaluation (``adapt_step``, ``ep_ret``, ``ep_cost``,
        ``env_steps`` of its batch, per-channel ``cost_<channel>``) and ``phi^0 .. phi^steps``.
    """
    cfg = setup.cfg
    steps_per_batch, num_envs = batch_size(cfg, cfg.adapt_batch_steps if batch_steps is None else batch_steps)
    if confidence is None:
        confidence = cfg.cost_confidence if cfg.adapt_confidence is None else cfg.adapt_confidence
    local = replace(
        setup,
        reward_critic=copy.deepcopy(setup.reward_critic),
        cost_critic=copy.deepcopy(setup.cost_critic),
        limits=setup.limits if constrained else None,
    )
    opt_r = torch.optim.Adam(local.reward_critic.parameters(), lr=cfg.critic_lr)
    opt_c = torch.optim.Adam(local.cost_critic.parameters(), lr=cfg.critic_lr)
    generator = torch.Generator().manual_seed(seed)
    env = local.make_env(task, seed, num_envs=num_envs)
    phi = theta.detach().clone()
    rows, params = [], [phi]
    try:
        for k in range(steps + 1):
            batch = local.collect(env, phi, generator, steps=steps_per_batch)
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
            on = on_device(batch, local.device)
            x, _ = inner_direction(
                local, phi.to(local.device), on, differentiable=False, confidence=confidence
            )
            phi = (phi + x.cpu()).detach()
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


def meta_test(setup: Setup, theta: Tensor, dist: Any, run_dir: Path, constrained: bool = True) -> Path:
    """Adapt ``theta`` on the run's held-out test tasks; writes ``adaptation.csv`` and, with
    ``cfg.eval_steps``, ``evaluation.csv`` (each task's policy before and after adaptation on an
    independent batch of ``eval_steps`` env steps; the same seed for both) in ``run_dir``, each
    atomically (a ``.tmp`` file renamed at the end). Returns the path of ``adaptation.csv``."""
    cfg = setup.cfg
    path = run_dir / "adaptation.csv"
    eval_path = run_dir / "evaluation.csv"
    eval_tmp = eval_path.with_suffix(".csv.tmp")
    eval_tmp.unlink(missing_ok=True)
    eval_log = CSVLogger(eval_tmp) if cfg.eval_steps else None
    if eval_log is None:  # a repeated meta-test: an earlier evaluation no longer matches
        eval_path.unlink(missing_ok=True)
    tasks = dist.sample(cfg.test_tasks, split="test", seed=derive_seed(cfg.seed, 0, 0, Seed.TEST_TASKS))
    limit = limit_columns(cfg, setup.cost_channels)
    tmp = path.with_suffix(".csv.tmp")
    tmp.unlink(missing_ok=True)
    logger = CSVLogger(tmp)
    bar = progress_bar(len(tasks), desc="meta-test") if cfg.progress else None
    for task_id, task in enumerate(tasks):
        seed = derive_seed(cfg.seed, 0, task_id, Seed.ADAPT)
        rows, params = adapt(setup, theta, task, cfg.adapt_steps, seed, constrained)
        head = {"method": cfg.algo, "seed": cfg.seed, "task_id": task_id}
        for r in rows:
            logger.log({**head, **r, **limit})
        if eval_log is not None:
            for k in sorted({0, len(params) - 1}):
                seed = derive_seed(cfg.seed, 0, task_id, Seed.EVALUATION)
                r = evaluate(setup, params[k], task, cfg.eval_steps, seed)
                eval_log.log({**head, "adapt_step": k, **r, **limit})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ret=f"{rows[-1]['ep_ret']:.2f}", cost=f"{rows[-1]['ep_cost']:.2f}")
    if bar is not None:
        bar.close()
    logger.close()
    if eval_log is not None:
        eval_log.close()
        eval_tmp.replace(eval_path)
    tmp.replace(path)
    return path


def limit_columns(cfg: MetaCPOConfig, channels: Sequence[str]) -> dict[str, float]:
    """The limit columns of ``adaptation.csv`` and ``evaluation.csv``: ``limit_<name>`` for each
    constraint (``total``, or each cost channel) and ``cost_limit``, the limit on the total cost
    (that of the single constraint; NaN when several channels are constrained separately: the
    total then has no limit of its own). ``meta-trpo`` records the limits the constrained
    methods are given."""
    limits = cfg.limits(tuple(channels))
    names = cfg.constraint_names(channels)
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
