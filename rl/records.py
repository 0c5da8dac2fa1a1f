"""The typed record of one meta-iteration, and its line of ``progress.csv``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["IterationRecord"]


@dataclass
class IterationRecord:
    """What one meta-iteration (or one step of a baseline) did, before and after adaptation.

    Attributes:
        ret_pre: Mean episode return of ``pi_theta`` over the iteration's tasks (before adaptation).
        cost_pre: Mean episode cost per channel, ``(C,)``, before adaptation.
        ret_post: Mean episode return after the inner loop (NaN for a baseline without one).
        cost_post: Mean episode cost per channel after the inner loop, ``(C,)`` (NaN likewise).
        step: The meta-step's diagnostics: ``case``, ``lam``, ``nu``, ``b_theta``,
            ``optimism_theta``, ``accepted``, ``kl``, ``problem`` (those of :func:`rl.meta_update.meta_update`).
        inner_cases: The cases of every inner step, space-separated.
        env_steps: Env steps this iteration sampled.
    """

    ret_pre: float
    cost_pre: np.ndarray
    ret_post: float
    cost_post: np.ndarray
    step: Mapping[str, Any]
    inner_cases: str
    env_steps: int

    @classmethod
    def from_tasks(cls, results: Sequence[Any], step: Mapping[str, Any]) -> IterationRecord:
        """The record of a meta-iteration from its tasks' :class:`rl.meta_update.TaskResult`."""
        return cls(
            ret_pre=float(np.mean([r.ret_pre for r in results])),
            cost_pre=np.mean([r.cost_pre for r in results], axis=0),
            ret_post=float(np.mean([r.ret_post for r in results])),
            cost_post=np.mean([r.cost_post for r in results], axis=0),
            step=step,
            inner_cases=" ".join(c for r in results for c in r.cases),
            env_steps=sum(r.env_steps for r in results),
        )

    def row(
        self,
        iteration: int,
        env_steps: int,
        seconds: float,
        channels: Sequence[str],
        constraint_names: Sequence[str],
        debias: bool,
    ) -> dict[str, Any]:
        """The line of ``progress.csv``: ``env_steps`` and ``seconds`` are the run's totals so far;
        per channel ``cost_pre_<ch>``/``cost_post_<ch>`` (several channels), per constraint
        ``nu_<name>`` (several constraints), ``b_<name>`` and with ``debias`` ``optimism_<name>``."""
        info = self.step
        nu = list(info.get("nu", []))
        row: dict[str, Any] = {
            "iteration": iteration,
            "env_steps": env_steps,
            "ret_pre": self.ret_pre,
            "cost_pre": float(np.sum(self.cost_pre)),
            "ret_post": self.ret_post,
            "cost_post": float(np.sum(self.cost_post)),
            "kl": info.get("kl", 0.0),
            "lam": info.get("lam", float("nan")),
            "nu": float(np.sum(nu)) if nu else float("nan"),
            "case": info.get("case", ""),
            "accepted": info.get("accepted", 0.0),
            "inner_cases": self.inner_cases,
            "problem": info.get("problem", ""),
            "seconds": seconds,
        }
        if len(channels) > 1:
            for j, ch in enumerate(channels):
                row[f"cost_pre_{ch}"] = float(self.cost_pre[j])
                row[f"cost_post_{ch}"] = float(self.cost_post[j])
        if len(constraint_names) > 1:
            for j, name in enumerate(constraint_names):
                row[f"nu_{name}"] = nu[j] if j < len(nu) else float("nan")
        b_theta = list(info.get("b_theta", []))
        for j, name in enumerate(constraint_names):
            row[f"b_{name}"] = b_theta[j] if j < len(b_theta) else float("nan")
        if debias:
            optimism = list(info.get("optimism_theta", []))
            for j, name in enumerate(constraint_names):
                row[f"optimism_{name}"] = optimism[j] if j < len(optimism) else float("nan")
        return row
