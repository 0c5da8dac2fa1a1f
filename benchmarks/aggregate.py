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
* ``rows.csv`` (rl.meta_cpo: every test task and adaptation step, ``source`` adapt or eval) or
  ``curves.csv`` (rl.cpo: every iteration);
* ``summary.csv``: per env and method (and adaptation step) the mean with a 95 % interval;
* ``adaptation.png`` and ``share_within.png``, or ``curves.png``.

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

from benchmarks.sweep import ROOT, RUN_KEYS, Spec, is_finished, load_spec, plan

PAPER_COLUMNS = ("env", "method", "seed", "meta_iterations", "env_steps", "ret_before", "ret_after")
PAPER_COLUMNS += ("cost_before", "cost_after", "share_within")
OMNISAFE_COLUMNS = ("env", "method", "seed", "env_steps", "ep_ret", "ep_cost")


def stratified_bootstrap_ci(
    scores: np.ndarray, reps: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a (seeds, tasks) score matrix and its percentile bootstrap interval.

    Each replicate draws, for every task column independently, as many seeds as there are with
    replacement, and takes the mean of the resampled matrix.

    Args:
        scores: finite scores, shape (seeds, tasks) (a 1-D array is one task).
        reps: bootstrap replicates.
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        (mean, low, high).
    """
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
    if columns is None:
        columns = tuple(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV file as a list of dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _flat(value: Any) -> Any:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else value


def limits_of(config: dict[str, Any], channels: list[str]) -> list[float]:
    """Per constraint limits of a run: one per channel, or one on the total (``constrain``)."""
    raw = config.get("cost_limit", 5.0)
    values = [float(v) for v in raw] if isinstance(raw, list) else [float(raw)]
    if config.get("constrain", "channels") == "total" or not channels:
        return [sum(values) if len(values) > 1 else values[0]]
    return values * len(channels) if len(values) == 1 else values


def is_within(row: dict[str, Any], channels: list[str], limits: list[float]) -> bool:
    """Every constrained quantity of a row within its limit (one limit: the total cost)."""
    if len(limits) == 1 and len(channels) != 1:
        return float(row["ep_cost"]) <= limits[0]
    return all(float(row[f"cost_{c}"]) <= lim for c, lim in zip(channels, limits, strict=True))


def load_runs(spec: Spec) -> list[dict[str, Any]]:
    """The spec's finished runs: settings, timings and their rows (adaptation, evaluation, progress)."""
    timings = (
        json.loads((spec.sweep_dir / "timings.json").read_text())
        if (spec.sweep_dir / "timings.json").is_file()
        else {}
    )
    found = []
    for run in plan(spec):
        run_dir = spec.sweep_dir / run.name
        if not is_finished(run_dir, run.settings.get("steps")):
            continue
        config = json.loads((run_dir / "config.json").read_text())
        progress = read_csv(run_dir / "progress.csv") if (run_dir / "progress.csv").is_file() else []
        tag = {"run": run.name, "env": run.env, "method": run.method, "seed": run.seed}
        entry = {**tag, "config": config, "progress": progress, "rows": []}
        entry["timing"] = timings.get(run.name, {})
        for source, label in (("adaptation", "adapt"), ("evaluation", "eval")):
            path = run_dir / f"{source}.csv"
            rows = read_csv(path) if path.is_file() else []
            channels = [
                c[5:] for c in (rows[0] if rows else {}) if c.startswith("cost_") and c != "cost_limit"
            ]
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
    rows = []
    for run in found:
        settings = {k: _flat(v) for k, v in run["config"].items() if k not in RUN_KEYS}
        timing = {"wall_s": run["timing"].get("wall_s", ""), "sessions": run["timing"].get("sessions", "")}
        rows.append({"run": run["run"], "method": run["method"], **settings, **timing})
    return rows


def _judged(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(before, after) rows of one run: the evaluation batches if any, else the adaptation batches."""
    source = "eval" if any(r["source"] == "eval" for r in rows) else "adapt"
    mine = [r for r in rows if r["source"] == source]
    steps = sorted({int(r["adapt_step"]) for r in mine})
    return [r for r in mine if int(r["adapt_step"]) == steps[0]], [
        r for r in mine if int(r["adapt_step"]) == steps[-1]
    ]


def meta_runs_table(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fixed per-run shape of rl.meta_cpo sweeps (``PAPER_COLUMNS``)."""
    table = []
    for run in found:
        cfg = run["config"]
        before, after = _judged(run["rows"])
        meta_steps = int(float(run["progress"][-1]["env_steps"])) if run["progress"] else 0
        adapt_batch = cfg.get("adapt_batch_steps") or cfg["batch_steps"]
        mean = lambda rows, key: float(np.mean([float(r[key]) for r in rows]))  # noqa: E731
        table.append(
            {
                "env": run["env"],
                "method": run["method"],
                "seed": run["seed"],
                "meta_iterations": len(run["progress"]),
                "env_steps": meta_steps + int(cfg["adapt_steps"]) * int(adapt_batch),
                "ret_before": mean(before, "ep_ret"),
                "ret_after": mean(after, "ep_ret"),
                "cost_before": mean(before, "ep_cost"),
                "cost_after": mean(after, "ep_cost"),
                "share_within": mean(after, "within"),
            }
        )
    return table


def cpo_runs_table(found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the fixed per-run shape of rl.cpo sweeps, ``OMNISAFE_COLUMNS``; every progress row tagged)."""
    table, curves = [], []
    for run in found:
        rows = run["progress"]
        tail = rows[-max(1, math.ceil(len(rows) / 10)) :]
        table.append(
            {
                "env": run["env"],
                "method": run["method"],
                "seed": run["seed"],
                "env_steps": int(float(rows[-1]["env_steps"])),
                "ep_ret": float(np.mean([float(r["ep_ret"]) for r in tail])),
                "ep_cost": float(np.mean([float(r["ep_cost"]) for r in tail])),
            }
        )
        keys = ("iteration", "env_steps", "ep_ret", "ep_cost")
        for r in rows:
            costs = {k: r[k] for k in r if k.startswith("cost_")}
            curves.append({k: run[k] for k in ("env", "method", "seed")} | {k: r[k] for k in keys} | costs)
    return table, curves


def _matrix(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """Scores as (seeds, tasks): the task ids every seed has, in order."""
    by_seed: dict[Any, dict[Any, float]] = defaultdict(dict)
    for r in rows:
        by_seed[r["seed"]][r.get("task_id", 0)] = float(r[key])
    tasks = sorted(set.intersection(*(set(t) for t in by_seed.values())), key=str)
    return np.array([[by_seed[s][t] for t in tasks] for s in sorted(by_seed, key=str)])


def summarize(rows: list[dict[str, Any]], keys: tuple[str, ...], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per group of ``by``: seeds, tasks, and for every key its mean and 95 % bootstrap interval."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in by)].append(r)
    out = []
    for group, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, group, strict=True))
        first = _matrix(members, keys[0])
        entry["seeds"], entry["tasks"] = first.shape
        for key in keys:
            entry[key], entry[f"{key}_low"], entry[f"{key}_high"] = stratified_bootstrap_ci(
                _matrix(members, key)
            )
        out.append(entry)
    return out


def adaptation_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per env, method and adaptation step (adaptation batches; eval-before/eval-after: evaluation)."""
    tagged = [{**r, "step": r["adapt_step"]} for r in rows if r["source"] == "adapt"]
    for key in {(r["env"], r["method"], r["seed"]) for r in rows if r["source"] == "eval"}:
        mine = [r for r in rows if r["source"] == "eval" and (r["env"], r["method"], r["seed"]) == key]
        steps = sorted({int(r["adapt_step"]) for r in mine})
        for label, step in (("eval-before", steps[0]), ("eval-after", steps[-1])):
            tagged += [{**r, "step": label} for r in mine if int(r["adapt_step"]) == step]
    return summarize(tagged, ("ep_ret", "ep_cost", "within"), ("env", "method", "step"))


def plot_adaptation(summary: list[dict[str, Any]], out: Path) -> None:
    """adaptation.png (return and cost per adaptation step, 95 % bands) and share_within.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({s["env"] for s in summary})
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False)
    fig2, axes2 = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.5), squeeze=False)
    for j, env in enumerate(envs):
        for i, method in enumerate(methods):
            pts = [s for s in summary if s["env"] == env and s["method"] == method]
            curve = sorted((int(s["step"]), s) for s in pts if str(s["step"]).isdigit())
            steps = [k for k, _ in curve]
            for ax, key in zip(axes[:, j], ("ep_ret", "ep_cost"), strict=True):
                ax.plot(steps, [s[key] for _, s in curve], color=f"C{i}", label=method)
                ax.fill_between(
                    steps, [s[f"{key}_low"] for _, s in curve], [s[f"{key}_high"] for _, s in curve],
                    color=f"C{i}", alpha=0.2,
                )  # fmt: skip
            final = next((s for s in pts if s["step"] == "eval-after"), curve[-1][1] if curve else None)
            if final is not None:
                err = [[final["within"] - final["within_low"]], [final["within_high"] - final["within"]]]
                axes2[0, j].bar(i, final["within"], yerr=err, color=f"C{i}", capsize=4)
        axes[0, j].set_title(env)
        axes[1, j].set_xlabel("adaptation step")
        axes[0, j].set_ylabel("episode return")
        axes[1, j].set_ylabel("episode cost (total)")
        axes2[0, j].set_xticks(range(len(methods)), methods, rotation=20)
        axes2[0, j].set_ylim(0, 1)
        axes2[0, j].set_title(f"{env}: share of test tasks within the limit")
    axes[0, 0].legend(fontsize=8)
    for f, name in ((fig, "adaptation.png"), (fig2, "share_within.png")):
        f.tight_layout()
        f.savefig(out / name, dpi=110)
        plt.close(f)


def plot_curves(curves: list[dict[str, Any]], out: Path) -> None:
    """curves.png: return and cost per env step, mean over seeds with a 95 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({c["env"] for c in curves})
    methods = list(dict.fromkeys(c["method"] for c in curves))
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 6), squeeze=False)
    for j, env in enumerate(envs):
        for i, method in enumerate(methods):
            mine = [
                {**c, "task_id": c["iteration"]} for c in curves if c["env"] == env and c["method"] == method
            ]
            if not mine:
                continue
            for ax, key in zip(axes[:, j], ("ep_ret", "ep_cost"), strict=True):
                scores = _matrix(mine, key)  # seeds x iterations: a band per iteration over seeds
                steps = _matrix(mine, "env_steps")[0]
                bands = np.array(
                    [stratified_bootstrap_ci(scores[:, t], reps=500) for t in range(scores.shape[1])]
                )
                ax.plot(steps, bands[:, 0], color=f"C{i}", label=method)
                ax.fill_between(steps, bands[:, 1], bands[:, 2], color=f"C{i}", alpha=0.2)
        axes[0, j].set_title(env)
        axes[1, j].set_xlabel("env steps")
        axes[0, j].set_ylabel("episode return")
        axes[1, j].set_ylabel("episode cost")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def aggregate_spec(spec: Spec, out: Path | None = None, plots: bool = True) -> Path:
    """Write the tables (and plots) of a spec's finished runs; returns the output folder."""
    out = out or ROOT / spec.output.get("dir", f"benchmarks/results/{spec.name}")
    found = load_runs(spec)
    if not found:
        raise ValueError(f"{spec.sweep_dir}: no finished run of spec {spec.name!r} yet")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "settings.csv", settings_table(found))
    if spec.program == "rl.meta_cpo":
        rows = [r for run in found for r in run["rows"]]
        write_csv(out / "runs.csv", meta_runs_table(found), PAPER_COLUMNS)
        write_csv(out / "rows.csv", rows)
        summary = adaptation_summary(rows)
        write_csv(out / "summary.csv", summary)
        if plots:
            plot_adaptation(summary, out)
    else:
        table, curves = cpo_runs_table(found)
        write_csv(out / "runs.csv", table, OMNISAFE_COLUMNS)
        write_csv(out / "curves.csv", curves)
        write_csv(out / "summary.csv", summarize(table, ("ep_ret", "ep_cost"), ("env", "method")))
        if plots:
            plot_curves(curves, out)
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
    for path in paths:
        for r in read_csv(path):
            if total_limit is not None:
                within = float(r["ep_cost"]) <= total_limit
            else:
                channels = [c[5:] for c in r if c.startswith("cost_") and c != "cost_limit"]
                within = is_within(r, channels, [channel_limit] * len(channels))
            rows.append({**r, "env": r.get("env", env), "source": "adapt", "within": int(within)})
    out.mkdir(parents=True, exist_ok=True)
    summary = adaptation_summary(rows)
    write_csv(out / "summary.csv", summary)
    if plots:
        plot_adaptation(summary, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.aggregate``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", help="a spec file (benchmarks/specs/*.toml)")
    parser.add_argument("--out", default=None, help="output folder (default: the spec's [output] dir)")
    parser.add_argument("--rows", nargs="+", default=None, help="committed per-task tables instead of a spec")
    parser.add_argument("--channel-limit", type=float, default=None, help="with --rows: limit per channel")
    parser.add_argument("--total-limit", type=float, default=None, help="with --rows: limit on the total")
    parser.add_argument("--env", default="safenav-button", help="with --rows: env of tables without one")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    if args.rows:
        if (args.channel_limit is None) == (args.total_limit is None) or args.out is None:
            parser.error("--rows needs --out and one of --channel-limit and --total-limit")
        out = aggregate_rows(
            [Path(p) for p in args.rows],
            Path(args.out),
            args.env,
            args.channel_limit,
            args.total_limit,
            not args.no_plots,
        )
    elif args.spec:
        try:
            out = aggregate_spec(
                load_spec(args.spec), Path(args.out) if args.out else None, not args.no_plots
            )
        except ValueError as err:
            parser.error(str(err))
    else:
        parser.error("give a spec file or --rows")
    print(f"tables written to {out}")


if __name__ == "__main__":
    main()
