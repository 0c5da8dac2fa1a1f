"""Tables and plots of a sweep's finished runs, with stratified bootstrap confidence intervals.

Reads the run folders of a spec (``benchmarks.sweep``) and writes to the spec's ``[output] dir``
(default ``benchmarks/results/<spec>``), tables and plots only (a results page is written by hand):

* ``settings.csv``: one row per run, every setting of its ``config.json`` and its timings;
* ``runs.csv``: one row per run. rl.meta_cpo: ``env, method, seed, meta_iterations, env_steps,
  ret_before, ret_after, cost_before, cost_after, share_within`` (before: the meta-policy, after:
  the last adaptation step, on the independent evaluation batches where the runs have them; the
  share of test tasks within every constrained limit; env steps of meta-training plus the
  adaptation batches of one test task). rl.cpo: ``env, method, seed, env_steps, ep_ret, ep_cost``
  (the mean of the last 10 % of the iterations);
* ``rows.csv`` (rl.meta_cpo: every test task and adaptation step, ``source`` adapt or eval) and
  ``learning.csv`` (rl.meta_cpo: every meta-iteration of meta-training, the meta-policy's return
  and cost on the training tasks before and after the inner steps), or ``curves.csv`` (rl.cpo:
  every iteration);
* ``summary.csv``: per env and method (and adaptation step) the mean with a 95 % interval;
* ``learning.png`` (meta-training), ``adaptation.png`` (with the evaluation before and after as
  points) and ``share_within.png`` (before and after adaptation), or ``curves.png``; the cost
  panels draw the limit where one limit applies to the plotted total.

Intervals are percentile intervals of a stratified bootstrap as in rliable (Agarwal et al., 2021):
the scores form a seeds x test-tasks matrix and every replicate resamples the seeds with
replacement within each task column (for rl.cpo, one column: a bootstrap over seeds)::

    .venv/bin/python -m benchmarks.aggregate benchmarks/specs/adaptation.toml
    .venv/bin/python -m benchmarks.aggregate --rows A/adaptation_rows.csv B/adaptation_rows.csv \\
        --channel-limit 5 --out docs/results/adaptation   # from committed per-task tables
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from benchmarks.sweep import ROOT, RUN_KEYS, Spec, is_finished, load_spec, plan

PAPER_COLUMNS = ("env", "method", "seed", "meta_iterations", "env_steps", "ret_before", "ret_after")
PAPER_COLUMNS += ("cost_before", "cost_after", "share_within")
OMNISAFE_COLUMNS = ("env", "method", "seed", "env_steps", "ep_ret", "ep_cost")


def stratified_bootstrap_ci(
    scores: np.ndarray, reps: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of finite ``scores`` (seeds, tasks) (1-D: one task) and its
    percentile interval of coverage ``level`` over ``reps`` replicates (resampling seeded by
    ``seed``), each drawing, for every task column independently, as many seeds as there are with
    replacement and taking the mean of the resampled matrix."""
    x = np.asarray(scores, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"scores must be a non-empty finite (seeds, tasks) array, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n, m = x.shape
    idx = np.random.default_rng(seed).integers(0, n, size=(reps, n, m))
    means = x[idx, np.arange(m)].mean(axis=(1, 2))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(low), float(high)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> None:
    """Rows to CSV (``columns``, else the union of the rows' keys); floats to 6 significant digits."""
    columns = columns or tuple(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV file as a list of dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def limits_of(config: dict[str, Any], channels: list[str]) -> list[float]:
    """Per constraint limits of a run: one per channel, or one on the total (``constrain``)."""
    raw = config.get("cost_limit", 5.0)
    values = [float(v) for v in raw] if isinstance(raw, list) else [float(raw)]
    if config.get("constrain", "channels") == "total" or not channels:
        return [sum(values) if len(values) > 1 else values[0]]
    return values * len(channels) if len(values) == 1 else values


def _total_limit(config: dict[str, Any]) -> float | None:
    """The limit on the total cost where the run constrains the total (``None`` where it constrains
    each channel: no one line on a plot of the total stands for those)."""
    return limits_of(config, [])[0] if config.get("constrain", "channels") == "total" else None


def is_within(row: dict[str, Any], channels: list[str], limits: list[float]) -> bool:
    """Every constrained quantity of a row within its limit (one limit: the total cost)."""
    if len(limits) == 1 and len(channels) != 1:
        return float(row["ep_cost"]) <= limits[0]
    return all(float(row[f"cost_{c}"]) <= lim for c, lim in zip(channels, limits, strict=True))


def _channels(row: dict[str, Any]) -> list[str]:
    return [c[5:] for c in row if c.startswith("cost_") and c != "cost_limit"]


def load_runs(spec: Spec) -> list[dict[str, Any]]:
    """The spec's finished runs: settings, timings and their rows (adaptation, evaluation, progress)."""
    path = spec.sweep_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    found = []
    for run in plan(spec):
        run_dir = spec.sweep_dir / run.name
        if not is_finished(run_dir, run.settings.get("steps")):
            continue
        config = json.loads((run_dir / "config.json").read_text())
        progress = read_csv(run_dir / "progress.csv") if (run_dir / "progress.csv").is_file() else []
        tag = {"run": run.name, "env": run.env, "method": run.method, "seed": run.seed}
        entry = tag | {
            "config": config,
            "progress": progress,
            "rows": [],
            "timing": timings.get(run.name, {}),
        }
        for source, label in (("adaptation", "adapt"), ("evaluation", "eval")):
            rows = read_csv(run_dir / f"{source}.csv") if (run_dir / f"{source}.csv").is_file() else []
            channels = _channels(rows[0]) if rows else []
            limits = limits_of(config, channels)
            for r in rows:
                keep = {k: r[k] for k in ("task_id", "adapt_step", "ep_ret", "ep_cost") if k in r}
                keep |= {f"cost_{c}": r[f"cost_{c}"] for c in channels}
                entry["rows"].append(
                    {**tag, "source": label, **keep, "within": int(is_within(r, channels, limits))}
                )
        found.append(entry)
    return found


def settings_table(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: every setting of its config.json, then its wall time and sessions."""
    flat = lambda v: " ".join(map(str, v)) if isinstance(v, list | tuple) else v
    rows = []
    for run in found:
        settings = {k: flat(v) for k, v in run["config"].items() if k not in RUN_KEYS}
        timing = {k: run["timing"].get(k, "") for k in ("wall_s", "sessions")}
        rows.append({"run": run["run"], "method": run["method"], **settings, **timing})
    return rows


def first_and_last(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ...]:
    """The rows of the first and of the last adaptation step."""
    steps = sorted({int(r["adapt_step"]) for r in rows})
    return tuple([r for r in rows if int(r["adapt_step"]) == step] for step in (steps[0], steps[-1]))


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows]))


def meta_runs_table(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fixed per-run shape of rl.meta_cpo sweeps (``PAPER_COLUMNS``), judged on the evaluation
    batches if the run has them, else on the adaptation batches."""
    table = []
    for run in found:
        cfg, rows = run["config"], run["rows"]
        source = "eval" if any(r["source"] == "eval" for r in rows) else "adapt"
        before, after = first_and_last([r for r in rows if r["source"] == source])
        meta_steps = int(float(run["progress"][-1]["env_steps"])) if run["progress"] else 0
        adapt_steps = int(cfg["adapt_steps"]) * int(cfg.get("adapt_batch_steps") or cfg["batch_steps"])
        entry = {k: run[k] for k in ("env", "method", "seed")}
        entry |= {"meta_iterations": len(run["progress"]), "env_steps": meta_steps + adapt_steps}
        entry |= {"ret_before": _mean(before, "ep_ret"), "ret_after": _mean(after, "ep_ret")}
        entry |= {"cost_before": _mean(before, "ep_cost"), "cost_after": _mean(after, "ep_cost")}
        table.append(entry | {"share_within": _mean(after, "within")})
    return table


def cpo_runs_table(found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the fixed per-run shape of rl.cpo sweeps, ``OMNISAFE_COLUMNS``; every progress row tagged)."""
    table, curves = [], []
    for run in found:
        rows, tag = run["progress"], {k: run[k] for k in ("env", "method", "seed")}
        tail = rows[-max(1, math.ceil(len(rows) / 10)) :]
        final = {"env_steps": int(float(rows[-1]["env_steps"]))}
        table.append(tag | final | {k: _mean(tail, k) for k in ("ep_ret", "ep_cost")})
        keys = ("iteration", "env_steps", "ep_ret", "ep_cost")
        curves += [
            tag | {k: r[k] for k in keys} | {k: r[k] for k in r if k.startswith("cost_")} for r in rows
        ]
    return table, curves


def _matrix(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """Scores as (seeds, tasks): the task ids every seed has, in order (numbers as numbers: 2 < 10)."""
    by_seed: dict[Any, dict[Any, float]] = defaultdict(dict)
    for r in rows:
        by_seed[r["seed"]][r.get("task_id", 0)] = float(r[key])
    order = lambda v: (0, int(v), "") if str(v).isdigit() else (1, 0, str(v))
    tasks = sorted(set.intersection(*(set(t) for t in by_seed.values())), key=order)
    return np.array([[by_seed[s][t] for t in tasks] for s in sorted(by_seed, key=order)])


def summarize(rows: list[dict[str, Any]], keys: tuple[str, ...], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per group of ``by``: seeds, tasks, and for every key its mean and 95 % bootstrap interval."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in by)].append(r)
    out = []
    for group, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, group, strict=True))
        entry["seeds"], entry["tasks"] = _matrix(members, keys[0]).shape
        for key in keys:
            stats = stratified_bootstrap_ci(_matrix(members, key))
            entry |= dict(zip((key, f"{key}_low", f"{key}_high"), stats, strict=True))
        out.append(entry)
    return out


def adaptation_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per env, method and adaptation step (adaptation batches; eval-before/eval-after: evaluation)."""
    tagged = [{**r, "step": r["adapt_step"]} for r in rows if r["source"] == "adapt"]
    evaluations: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in (r for r in rows if r["source"] == "eval"):
        evaluations[r["env"], r["method"], r["seed"]].append(r)
    for before, after in map(first_and_last, evaluations.values()):
        tagged += [{**r, "step": "eval-before"} for r in before] + [
            {**r, "step": "eval-after"} for r in after
        ]
    return summarize(tagged, ("ep_ret", "ep_cost", "within"), ("env", "method", "step"))


def _plot_bands(
    curves: dict[tuple[str, str], tuple[list, dict]],
    xlabel: str,
    cost: str,
    path: Path,
    limits: dict[str, float] | None = None,
    reference: dict[str, Any] | None = None,
    points: dict[tuple[str, str], tuple[list, dict]] | None = None,
    points_label: str = "",
) -> None:
    """Return and cost against x of every (env, method): ``(x, {key: (mean, low, high)})``, a line
    and its 95 % band per method, one column of panels per env. ``limits`` (env -> cost limit) draws
    the limit on the cost panel; ``reference`` (``{"label": ..., env: {"ep_ret": [mean, std],
    "ep_cost": [mean, std]}}``) draws published final figures as a dotted line with a +-1 std band;
    ``points`` (the same shape as ``curves``) draws markers with 95 % error bars, labelled
    ``points_label``."""
    envs, methods = sorted({e for e, _ in curves}), list(dict.fromkeys(m for _, m in curves))
    fig = Figure(figsize=(5 * len(envs), 6), layout="tight")
    axes = fig.subplots(2, len(envs), squeeze=False)
    for (env, method), (x, series) in curves.items():
        i = methods.index(method)
        for ax, key in zip(axes[:, envs.index(env)], ("ep_ret", "ep_cost"), strict=True):
            ax.plot(x, series[key][0], color=f"C{i}", label=method)
            ax.fill_between(x, series[key][1], series[key][2], color=f"C{i}", alpha=0.2)
    for (env, method), (x, series) in (points or {}).items():
        i = methods.index(method) if method in methods else len(methods)
        for ax, key in zip(axes[:, envs.index(env)], ("ep_ret", "ep_cost"), strict=True):
            mean, low, high = (np.asarray(v, dtype=float) for v in series[key])
            err = [mean - low, high - mean]
            ax.errorbar(x, mean, yerr=err, fmt="o", color=f"C{i}", capsize=3, markersize=5)
    if points:
        for ax in axes.flat:  # one legend entry for all the markers
            ax.errorbar([], [], yerr=[], fmt="o", color="grey", capsize=3, label=points_label)
    reference = reference or {}
    for j, env in enumerate(envs):
        axes[0, j].set(title=env, ylabel="episode return")
        axes[1, j].set(xlabel=xlabel, ylabel=cost)
        if env in (limits or {}):
            axes[1, j].axhline(limits[env], color="black", linestyle="--", linewidth=1, label="cost limit")
        for ax, key in zip(axes[:, j], ("ep_ret", "ep_cost"), strict=True):
            if key in reference.get(env, {}):
                mean, std = reference[env][key]
                ax.axhline(
                    mean,
                    color="grey",
                    linestyle=":",
                    linewidth=1.5,
                    label=reference.get("label", "reference"),
                )
                ax.axhspan(mean - std, mean + std, color="grey", alpha=0.12)
    for ax in axes.flat:  # every panel names its own lines (an env may lack a method so far)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def _series(points: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list[list[float]]]:
    """``{key: [means, lows, highs]}`` of summary rows."""
    return {k: [[s[k + end] for s in points] for end in ("", "_low", "_high")] for k in keys}


def plot_adaptation(summary: list[dict[str, Any]], out: Path, limits: dict[str, float] | None = None) -> None:
    """adaptation.png (return and cost per adaptation step, 95 % bands, and the independent
    evaluation before and after as points where there is one; ``limits``: env -> the limit of the
    plotted total cost) and share_within.png (before and after adaptation: on the evaluation
    batches where there are some, else on the first and last adaptation batches)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summary:
        groups[s["env"], s["method"]].append(s)
    curves, evals, pairs = {}, {}, {}
    for key, pts in groups.items():
        curve = sorted((s for s in pts if str(s["step"]).isdigit()), key=lambda s: int(s["step"]))
        curves[key] = ([int(s["step"]) for s in curve], _series(curve, ("ep_ret", "ep_cost")))
        ends = [next((s for s in pts if s["step"] == f"eval-{w}"), None) for w in ("before", "after")]
        if all(ends) and curve:
            evals[key] = (
                [int(curve[0]["step"]), int(curve[-1]["step"])],
                _series(ends, ("ep_ret", "ep_cost")),
            )
        elif curve:
            ends = [curve[0], curve[-1]]
        pairs[key] = ends
    _plot_bands(
        curves,
        "adaptation step",
        "episode cost (total)",
        out / "adaptation.png",
        limits,
        points=evals,
        points_label="independent evaluation",
    )
    envs, methods = sorted({e for e, _ in groups}), list(dict.fromkeys(m for _, m in groups))
    fig = Figure(figsize=(5 * len(envs), 3.5), layout="tight")
    axes = fig.subplots(1, len(envs), squeeze=False)[0]
    for (env, method), ends in pairs.items():
        i = methods.index(method)
        for j, s in enumerate(ends):
            if s is None:
                continue
            err = [[s["within"] - s["within_low"]], [s["within_high"] - s["within"]]]
            style = {"color": f"C{i}", "alpha": 0.4 if j == 0 else 1.0, "hatch": "//" if j == 0 else None}
            ax, x = axes[envs.index(env)], i + (j - 0.5) * 0.4
            ax.bar(x, s["within"], width=0.4, yerr=err, capsize=3, **style)
            ax.text(x, s["within_high"] + 0.02, f"{s['within']:.2f}", ha="center", fontsize=7)
    handles = [
        Patch(facecolor="grey", alpha=0.4, hatch="//", label="before adaptation"),
        Patch(facecolor="grey", label="after"),
    ]
    for ax, env in zip(axes, envs, strict=True):
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set(ylim=(0, 1.1), title=f"{env}: share of test tasks within the limit")
        ax.legend(handles=handles, fontsize=8)
    fig.savefig(out / "share_within.png", dpi=110)


def learning_table(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every meta-iteration of every run that meta-trained (rl.meta_cpo's ``progress.csv``): the
    meta-policy's return and cost on its training tasks before and after the inner steps."""
    keys = ("iteration", "env_steps", "ret_pre", "cost_pre", "ret_post", "cost_post")
    return [
        {k: run[k] for k in ("env", "method", "seed")} | {k: r.get(k, "") for k in keys}
        for run in found
        for r in run["progress"]
    ]


def plot_learning(rows: list[dict[str, Any]], out: Path, limits: dict[str, float] | None = None) -> None:
    """learning.png: the meta-policy's return and cost on the training tasks (before the inner
    steps) per meta-iteration, mean over seeds with a 95 % band (iterations every seed reached)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["env"], r["method"]].append(
            {**r, "task_id": r["iteration"], "ep_ret": r["ret_pre"], "ep_cost": r["cost_pre"]}
        )
    bands = _seed_bands(groups, "iteration")
    _plot_bands(bands, "meta-iteration", "episode cost (total, training tasks)", out / "learning.png", limits)


def _seed_bands(groups: dict[tuple[str, str], list[dict[str, Any]]], x: str) -> dict[tuple, tuple]:
    """Per (env, method), rows tagged ``task_id`` by their position on the curve: ``x`` (as numbers)
    and, for return and cost, the mean over seeds and its 95 % band at each position every seed
    reached (a bootstrap over seeds)."""
    bands = {}
    for key, mine in groups.items():
        ci = {
            k: [stratified_bootstrap_ci(col, reps=500) for col in _matrix(mine, k).T]
            for k in ("ep_ret", "ep_cost")
        }
        xs = [float(v) for v in _matrix(mine, x)[0]]
        bands[key] = (xs, {k: list(zip(*v, strict=True)) for k, v in ci.items()})
    return bands


def plot_curves(
    curves: list[dict[str, Any]],
    out: Path,
    limits: dict[str, float] | None = None,
    reference: dict[str, Any] | None = None,
) -> None:
    """curves.png: return and cost per env step, mean over seeds with a 95 % band (with the cost
    limit of each env and published reference figures where given, see ``_plot_bands``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in curves:
        groups[c["env"], c["method"]].append({**c, "task_id": c["iteration"]})  # seeds x iterations
    bands = _seed_bands(groups, "env_steps")
    _plot_bands(bands, "env steps", "episode cost", out / "curves.png", limits, reference)


def reference_figures(spec: Spec) -> dict[str, Any]:
    """The spec's ``[output] reference``: published final figures per env, checked
    (``{"label": str, env: {"ep_ret": [mean, std], "ep_cost": [mean, std]}}``)."""
    raw = spec.output.get("reference", {})
    if not isinstance(raw, dict):
        raise ValueError(f"{spec.path}: [output] reference must be a table, got {raw!r}")
    for env, figures in raw.items():
        if env == "label":
            continue
        if env not in spec.envs:
            raise ValueError(
                f"{spec.path}: [output] reference names env {env!r}; expected one of {spec.envs}"
            )
        if not isinstance(figures, dict):
            raise ValueError(f"{spec.path}: [output] reference.{env} = {figures!r}; expected a table")
        for key, value in figures.items():
            ok = (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, (int, float)) for v in value)
            )
            if key not in ("ep_ret", "ep_cost") or not ok:
                raise ValueError(
                    f"{spec.path}: [output] reference.{env}.{key} = {value!r}; expected ep_ret or ep_cost "
                    "= [mean, std]"
                )
    return raw


def aggregate_spec(spec: Spec, out: Path | None = None, plots: bool = True) -> Path:
    """Write the tables (and plots) of a spec's finished runs; returns the output folder."""
    out = out or ROOT / spec.output.get("dir", f"benchmarks/results/{spec.name}")
    found = load_runs(spec)
    if not found:
        raise ValueError(f"{spec.sweep_dir}: no finished run of spec {spec.name!r} yet")
    write_csv(out / "settings.csv", settings_table(found))
    if spec.program == "rl.meta_cpo":
        rows = [r for run in found for r in run["rows"]]
        write_csv(out / "runs.csv", meta_runs_table(found), PAPER_COLUMNS)
        write_csv(out / "rows.csv", rows)
        summary = adaptation_summary(rows)
        write_csv(out / "summary.csv", summary)
        learning = learning_table(found)
        if learning:
            write_csv(out / "learning.csv", learning)
        if plots:
            limits = {run["env"]: _total_limit(run["config"]) for run in found}
            limits = {env: lim for env, lim in limits.items() if lim is not None}
            plot_adaptation(summary, out, limits)
            if learning:
                plot_learning(learning, out, limits)
    else:
        table, curves = cpo_runs_table(found)
        write_csv(out / "runs.csv", table, OMNISAFE_COLUMNS)
        write_csv(out / "curves.csv", curves)
        write_csv(out / "summary.csv", summarize(table, ("ep_ret", "ep_cost"), ("env", "method")))
        if plots:
            limits = {run["env"]: limits_of(run["config"], [])[0] for run in found}
            plot_curves(curves, out, limits, reference_figures(spec))
    return out


def aggregate_rows(
    paths: list[Path],
    out: Path,
    env: str,
    channel_limit: float | None,
    total_limit: float | None,
    plots: bool = True,
) -> Path:
    """summary.csv (and plots) from committed per-task tables (columns method, seed, task_id,
    adapt_step, ep_ret, ep_cost, cost_<channel>; ``env`` where they have no env column), each
    channel judged against ``channel_limit``, or the total cost against ``total_limit``."""
    if (channel_limit is None) == (total_limit is None):
        raise ValueError(f"give one of channel_limit and total_limit, got {channel_limit} and {total_limit}")
    rows = []
    for r in (r for path in paths for r in read_csv(path)):
        if total_limit is not None:
            within = float(r["ep_cost"]) <= total_limit
        else:
            within = is_within(r, _channels(r), [channel_limit] * len(_channels(r)))
        rows.append({**r, "env": r.get("env", env), "source": "adapt", "within": int(within)})
    summary = adaptation_summary(rows)
    write_csv(out / "summary.csv", summary)
    if plots:
        plot_adaptation(summary, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.aggregate``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="a spec file (benchmarks/specs/*.toml)")
    parser.add_argument("--out", type=Path, help="output folder (default: the spec's [output] dir)")
    parser.add_argument("--rows", nargs="+", type=Path, help="committed per-task tables instead of a spec")
    parser.add_argument("--channel-limit", type=float, default=None, help="with --rows: limit per channel")
    parser.add_argument("--total-limit", type=float, default=None, help="with --rows: limit on the total")
    parser.add_argument("--env", default="safenav-button", help="with --rows: env of tables without one")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        help="the folder of the sweep folders (default: the spec's runs_dir); a saved state "
        "(benchmarks/state) holds what the tables need",
    )
    args = parser.parse_args(argv)
    if bool(args.rows) == bool(args.spec) or (args.rows and args.out is None):
        parser.error("give a spec file, or --rows with --out and one of --channel-limit and --total-limit")
    try:
        if args.rows:
            limits = (args.channel_limit, args.total_limit)
            out = aggregate_rows(args.rows, args.out, args.env, *limits, plots=not args.no_plots)
        else:
            spec = load_spec(args.spec)
            if args.runs_dir is not None:
                spec.runs_dir = args.runs_dir.resolve()
            out = aggregate_spec(spec, args.out, not args.no_plots)
    except ValueError as err:
        parser.error(str(err))
    print(f"tables written to {out}")


if __name__ == "__main__":
    main()
