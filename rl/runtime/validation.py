"""One validation of the training programs' settings (``rl.cpo`` and ``rl.meta_cpo``).

Both programs' configs are flat dataclasses that share most of their fields (batch sizes, trust
region, line search, discounts, networks, cost limits, ...). :func:`validate_settings` checks any
such config against one table, :data:`FIELD_RULES`, before anything is created:

* every number, in every field (tuples included), is finite: ``nan`` and ``inf`` are refused;
* a field of a ``Literal[...]`` type holds one of its choices;
* a field named in :data:`FIELD_RULES` lies in its range (a field that may be ``None`` may also
  be ``None``; each value of a tuple is checked).

Checks that concern one program only (its environments, cross-field rules) stay in that
program's ``validate()``, which calls :func:`validate_settings` first.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     delta: float = 0.01
...     gamma: float = 0.99
>>> validate_settings(Demo(delta=float("nan")))
Traceback (most recent call last):
...
rl.runtime.config.ConfigError: delta must be finite, got nan
>>> validate_settings(Demo(gamma=1.5))
Traceback (most recent call last):
...
rl.runtime.config.ConfigError: gamma must be in [0, 1], got 1.5
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from rl.runtime.config import ConfigError, ConfigTypeError

__all__ = ["FIELD_RULES", "Range", "check_new_run_folder", "validate_settings"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``low <= v <= high`` (``<`` where the end is open).

    ``integer`` also requires a whole number; ``nonempty`` requires a tuple field to hold at
    least one value.
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    nonempty: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """The range in words: ``>= 1``, ``> 0``, ``in (0, 1)``, ``in [0, 4294967295]``."""
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"


_COUNT = Range(low=1, integer=True)  # something there must be at least one of
_NON_NEGATIVE_INT = Range(low=0, integer=True)
_POSITIVE = Range(low=0, low_open=True)
_NON_NEGATIVE = Range(low=0)
_PROBABILITY = Range(low=0, high=1, low_open=True, high_open=True)
_DISCOUNT = Range(low=0, high=1)

#: The range of every numeric setting of ``CPOConfig`` and ``MetaCPOConfig`` (a field missing
#: from a config is simply not checked).
FIELD_RULES: dict[str, Range] = {
    "seed": Range(low=0, high=2**32 - 1, integer=True),
    # sizes of runs and batches
    "steps": _COUNT,
    "steps_per_iter": _COUNT,
    "iterations": _NON_NEGATIVE_INT,
    "meta_batch": _COUNT,
    "inner_steps": _COUNT,
    "batch_steps": _COUNT,
    "num_envs": _COUNT,
    "num_workers": _COUNT,
    "horizon": _COUNT,
    "test_tasks": _COUNT,
    "adapt_steps": _NON_NEGATIVE_INT,
    "adapt_batch_steps": _COUNT,
    "eval_steps": _NON_NEGATIVE_INT,
    # constraints
    "cost_limit": Range(low=0, nonempty=True),
    "cost_confidence": _PROBABILITY,
    "adapt_confidence": _PROBABILITY,
    # trust region, conjugate gradient and line search
    "delta": _POSITIVE,
    "inner_delta": _POSITIVE,
    "meta_delta": _POSITIVE,
    "damping": _NON_NEGATIVE,
    "cg_iters": _COUNT,
    "cg_tol": _NON_NEGATIVE,
    "fisher_states": _COUNT,
    "backtrack_coef": _PROBABILITY,
    "max_backtracks": _COUNT,
    "kl_tolerance": _POSITIVE,
    # returns and advantages
    "gamma": _DISCOUNT,
    "lam": _DISCOUNT,
    "cost_gamma": _DISCOUNT,
    "cost_lam": _DISCOUNT,
    # networks and critics
    "hidden": _COUNT,
    "critic_hidden": _COUNT,
    "critic_lr": _POSITIVE,
    "critic_epochs": _COUNT,
    "critic_minibatch": _COUNT,
    # machinery
    "threads": _COUNT,
    "workers": _COUNT,
    "shards": _COUNT,
    "max_retries": _NON_NEGATIVE_INT,
    "checkpoint_every": _COUNT,
    "keep_checkpoints": _COUNT,
}


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _numbers(value: Any) -> list[Any]:
    """The numbers a field holds (a scalar or a tuple/list of them)."""
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, numbers.Number)]
    return [value] if isinstance(value, numbers.Number) else []


def _check_number_type(name: str, value: Any, rule: Range, optional: bool) -> list[Any]:
    """The values a ranged field holds, or a ``ConfigTypeError`` naming the field."""
    values = list(value) if isinstance(value, tuple | list) else [value]
    kind = "an integer" if rule.integer else "a number"
    for v in values:
        ok = isinstance(v, numbers.Integral if rule.integer else numbers.Real) and not isinstance(v, bool)
        if not ok:
            expected = kind + (" or none" if optional else "")
            raise ConfigTypeError(f"{name} expects {expected}, got {value!r} ({type(value).__name__})")
    return values


def validate_settings(cfg: Any) -> None:
    """Check a config dataclass against :data:`FIELD_RULES`, its ``Literal`` choices and finiteness.

    Args:
        cfg: a dataclass instance (``CPOConfig``, ``MetaCPOConfig`` or any other).

    Raises:
        ConfigError: a value out of range, not finite, or not one of its choices; the message
            names the field and the value (a ``ValueError``).
        ConfigTypeError: a ranged field holds something other than numbers (also a
            ``TypeError``).
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        name, value = f.name, getattr(cfg, f.name)
        tp = hints.get(name, Any)
        optional = type(None) in _members(tp)
        for choice_type in _members(tp):
            if typing.get_origin(choice_type) is Literal:
                choices = typing.get_args(choice_type)
                if value not in choices and not (optional and value is None):
                    raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        if any(isinstance(v, float) and not math.isfinite(v) for v in _numbers(value)):
            raise ConfigError(f"{name} must be finite, got {value!r}")
        rule = FIELD_RULES.get(name)
        if rule is None or (value is None and optional):
            continue
        values = _check_number_type(name, value, rule, optional)
        if rule.nonempty and not values:
            raise ConfigError(f"{name} needs at least one value, got {value!r}")
        if not all(rule.contains(v) for v in values):
            each = " (each value)" if isinstance(value, tuple | list) else ""
            none = " or none" if optional else ""
            raise ConfigError(f"{name} must be {rule.describe()}{each}{none}, got {value!r}")


def check_new_run_folder(out: str | os.PathLike[str] | None) -> None:
    """Refuse an ``--out`` folder that a new run could not use (before anything is created).

    Args:
        out: the folder asked for; ``None`` (a dated folder under ``runs/``) is always fine.

    Raises:
        ConfigError: ``out`` is a file, or a folder that is not empty.
    """
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: that is a file; expected a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(
            f"--out {out}: the folder is not empty; choose a new --out, remove it, or continue "
            f"the run in it with --resume {out}"
        )
