"""Training curves and adaptation curves as PNG files (matplotlib, Agg backend).

* :func:`plot_training`: columns of a run's ``progress.csv`` against the
  iteration, one panel per group of columns, with optional cost limits drawn
  as dashed lines.
* :func:`plot_adaptation`: for a CSV with columns ``method, seed, task_id,
  adapt_step, ep_ret, ep_cost, cost_limit``, the mean +- std over tasks and
  seeds of each method's return and cost against the adaptation step, several
  methods in one figure, the cost limit dashed.

matplotlib is imported when a function is called, so importing :mod:`rl.runtime`
stays cheap. The figures are :class:`matplotlib.figure.Figure` objects written
straight to PNG: no pyplot state is touched and the caller's backend is left
as it is (this works headless).

:func:`plot_or_warn` runs a plot and turns any failure (a full disk, a broken
CSV, matplotlib missing) into a :class:`RuntimeWarning`: the training programs
use it, as their plots are a convenience that must never fail a finished run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rl.runtime.logging import read_csv

__all__ = ["ADAPTATION_COLUMNS", "adaptation_summary", "plot_adaptation", "plot_or_warn", "plot_training"]

#: Columns :func:`plot_adaptation` needs.
ADAPTATION_COLUMNS = ("method", "seed", "task_id", "adapt_step", "ep_ret", "ep_cost", "cost_limit")

Panel = tuple[str, Sequence[str]] | tuple[str, Sequence[str], float | Sequence[float] | None]


def _figure(figsize: tuple[float, float]) -> Any:
    """A figure outside pyplot: saving it needs no backend and changes no global state."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def plot_or_warn(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> Path | None:
    """``plot(*args, **kwargs)``, or ``None`` and a :class:`RuntimeWarning` naming the failure
    (``plot`` is :func:`plot_training` or :func:`plot_adaptation`; ``args[1]`` its PNG)."""
    try:
        return plot(*args, **kwargs)
    except Exception as err:  # any failure: the run's results are on disk already
        target = args[1] if len(args) > 1 else kwargs.get("out_png", "")
        warnings.warn(f"could not plot {target}: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
        return None


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _limits(limit: float | Sequence[float] | None) -> list[float]:
    if limit is None:
        return []
    if isinstance(limit, int | float):
        return [float(limit)]
    return [float(v) for v in limit]


def _default_panels(columns: Sequence[str], x: str) -> list[Panel]:
    ret = [c for c in columns if c != x and "ret" in c.lower()]
    cost = [c for c in columns if c != x and "cost" in c.lower() and "limit" not in c.lower()]
    panels: list[Panel] = []
    if ret:
        panels.append(("return", ret))
    if cost:
        panels.append(("cost", cost))
    if not panels:
        raise ValueError(f"no return/cost columns to plot by default; columns: {list(columns)}; pass panels=")
    return panels


def plot_training(
    progress_csv: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    x: str = "iteration",
    panels: Sequence[Panel] | None = None,
    title: str | None = None,
) -> Path:
    """Plot columns of a progress CSV against ``x``, one panel per group.

    Args:
        progress_csv: the CSV (e.g. ``run_dir/progress.csv``).
        out_png: where to write the PNG (parent directories are created).
        x: the column on the horizontal axis.
        panels: ``[(title, [columns]), (title, [columns], cost_limit), ...]``;
            ``cost_limit`` is a number, a list of numbers (one per constraint)
            or ``None``; each is drawn as a dashed horizontal line. Default: a
            "return" panel of columns containing ``ret`` and a "cost" panel of
            columns containing ``cost``.
        title: figure title (default: the CSV's parent directory name).

    Returns:
        The PNG path.

    Raises:
        ValueError: if a column is missing (the available ones are listed) or
            the CSV has no rows.
    """
    progress_csv = Path(progress_csv)
    rows = read_csv(progress_csv)
    if not rows:
        raise ValueError(f"{progress_csv} has no data rows to plot")
    columns = list(rows[0])
    if panels is None:
        panels = _default_panels(columns, x)
    wanted = [x] + [c for p in panels for c in p[1]]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{progress_csv} has no columns {missing}; columns: {columns}")
    xs = [_float(r[x]) for r in rows]

    fig = _figure((5.0 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        name, cols = panel[0], panel[1]
        for col in cols:
            ax.plot(xs, [_float(r[col]) for r in rows], label=col, linewidth=1.4)
        limits = _limits(panel[2] if len(panel) > 2 else None)
        paired = len(limits) == len(cols) > 1  # limit i belongs to column i: same colour
        for i, lim in enumerate(limits):
            label = "cost limit" if len(limits) == 1 else f"limit {cols[i] if paired else i}"
            color = f"C{i}" if paired else "k"
            ax.axhline(lim, linestyle="--", color=color, linewidth=1.0, label=label)
        ax.set_title(name)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title if title is not None else progress_csv.parent.name, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    var = sum((v - mean) ** 2 for v in finite) / len(finite)
    return mean, math.sqrt(var)


def adaptation_summary(
    adaptation_csv: str | os.PathLike[str],
) -> dict[str, dict[str, list[float]]]:
    """Mean and std over tasks and seeds, per method and adaptation step.

    Returns:
        ``{method: {"adapt_step", "ret_mean", "ret_std", "cost_mean",
        "cost_std": [...]}}``, methods in order of first appearance, steps
        sorted; std is the population std (0 for a single run).

    Raises:
        ValueError: if a required column is missing or there are no rows.
    """
    adaptation_csv = Path(adaptation_csv)
    rows = read_csv(adaptation_csv)
    if not rows:
        raise ValueError(f"{adaptation_csv} has no data rows")
    missing = [c for c in ADAPTATION_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"{adaptation_csv} misses columns {missing}; expected {list(ADAPTATION_COLUMNS)}")
    grouped: dict[str, dict[float, tuple[list[float], list[float]]]] = {}
    for r in rows:
        by_step = grouped.setdefault(r["method"], {})
        rets, costs = by_step.setdefault(_float(r["adapt_step"]), ([], []))
        rets.append(_float(r["ep_ret"]))
        costs.append(_float(r["ep_cost"]))
    summary: dict[str, dict[str, list[float]]] = {}
    for method, by_step in grouped.items():
        out: dict[str, list[float]] = {
            k: [] for k in ("adapt_step", "ret_mean", "ret_std", "cost_mean", "cost_std")
        }
        for step in sorted(by_step):
            rets, costs = by_step[step]
            rm, rs = _mean_std(rets)
            cm, cs = _mean_std(costs)
            for k, v in zip(out, (step, rm, rs, cm, cs), strict=True):
                out[k].append(v)
        summary[method] = out
    return summary


def _cost_panels(rows: Sequence[dict[str, str]]) -> list[tuple[str, str, list[float]]]:
    """``(title, column, limits)`` of each cost panel of :func:`plot_adaptation`: one per
    ``limit_<name>`` column (``total`` plots ``ep_cost``, a channel ``cost_<name>``), else one
    panel of ``ep_cost`` with the values of ``cost_limit``."""

    def values(column: str) -> list[float]:
        return sorted({v for r in rows if not math.isnan(v := _float(r[column]))})

    names = [c[len("limit_") :] for c in rows[0] if c.startswith("limit_")]
    if not names:
        return [("episode cost", "ep_cost", values("cost_limit"))]
    panels = []
    for name in names:
        column = "ep_cost" if name == "total" else f"cost_{name}"
        if column not in rows[0]:
            raise ValueError(f"column limit_{name} has no cost column {column!r}; columns: {list(rows[0])}")
        panels.append((f"episode cost: {name}", column, values(f"limit_{name}")))
    return panels


def _by_method_and_step(rows: Sequence[dict[str, str]], column: str) -> dict[str, tuple[list, list, list]]:
    """``{method: (steps, means, stds)}`` of ``column`` over the (seed, task) rows of each step."""
    grouped: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        grouped.setdefault(r["method"], {}).setdefault(_float(r["adapt_step"]), []).append(_float(r[column]))
    out = {}
    for method, by_step in grouped.items():
        steps = sorted(by_step)
        stats = [_mean_std(by_step[k]) for k in steps]
        out[method] = (steps, [m for m, _ in stats], [d for _, d in stats])
    return out


def plot_adaptation(
    adaptation_csv: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot return and cost against the adaptation step, one curve per method.

    Each curve is the mean over all (seed, task) rows at that step with a
    shaded +- one std band. With ``limit_<name>`` columns (what
    :mod:`rl.meta_cpo` writes) there is one cost panel per constraint, the
    channel's cost (``cost_<name>``, or ``ep_cost`` for ``total``) with its own
    limit dashed; without them one panel of ``ep_cost`` with the distinct values
    of ``cost_limit`` dashed.

    Args:
        adaptation_csv: CSV with columns ``method, seed, task_id, adapt_step,
            ep_ret, ep_cost, cost_limit`` (and optionally ``limit_<name>``).
        out_png: where to write the PNG (parent directories are created).
        title: figure title (default: "adaptation on test tasks").

    Returns:
        The PNG path.

    Raises:
        ValueError: if a required column is missing or there are no rows.
    """
    adaptation_summary(adaptation_csv)  # checks the columns and that there are rows
    rows = read_csv(adaptation_csv)
    panels = [("episode return", "ep_ret", [])] + _cost_panels(rows)
    fig = _figure((5.25 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, column, limits) in zip(axes, panels, strict=True):
        for i, (method, (steps, mean, std)) in enumerate(_by_method_and_step(rows, column).items()):
            color = f"C{i % 10}"
            ax.plot(steps, mean, color=color, label=method, linewidth=1.5, marker="o", markersize=3)
            ax.fill_between(
                steps,
                [m - d for m, d in zip(mean, std, strict=True)],
                [m + d for m, d in zip(mean, std, strict=True)],
                color=color,
                alpha=0.2,
                linewidth=0,
            )
        for j, lim in enumerate(limits):
            label = "cost limit" if len(limits) == 1 else f"cost limit {lim:g}"
            ax.axhline(
                lim, linestyle="--", color="k", linewidth=1.0, alpha=1.0 - 0.25 * min(j, 3), label=label
            )
        ax.set_title(name)
        ax.set_xlabel("adaptation step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title if title is not None else "adaptation on test tasks (mean ± std)", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png
