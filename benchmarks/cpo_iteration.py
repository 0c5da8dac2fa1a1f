"""Wall time of one ``rl.cpo`` iteration on Safety-Gymnasium, in one process and with workers.

``rl.cpo`` at its defaults (16,000-step batches in 16 sub-environments, 4 shards, the optimism
correction, critics fitted 10 epochs) on ``SafetyPointGoal1-v0``, run side by side on each
``--backends`` setting (``serial:1`` first, the reference): each run trains ``--iters`` + 1
iterations, the first (environment construction, worker start) is dropped, and the medians of
the per-iteration ``seconds``, ``sample_seconds`` and ``update_seconds`` of ``progress.csv`` are
reported (with workers, the next batch's shards run while the critics are fitted, so sampling
and update overlap). Every setting gives the same progress rows (checked here too).

    OMP_NUM_THREADS=1 python benchmarks/cpo_iteration.py [--iters 3] [--backends serial:1 processes:2]

Writes ``benchmarks/results/cpo_iteration.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rl.cpo import CPOConfig, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SPEEDUP = 1.7  # 2 workers vs one process, per iteration
TARGET_S_PER_20K = 8.0  # with 2 workers, update included


def run(env: str, backend: str, workers: int, iters: int, steps_per_iter: int, out: Path) -> dict[str, Any]:
    """Train ``iters + 1`` iterations; timings of all but the first."""
    cfg = CPOConfig(
        env=env,
        steps=steps_per_iter * (iters + 1),
        steps_per_iter=steps_per_iter,
        backend=backend,
        workers=workers,
        progress=False,
        tensorboard=False,
        out=str(out),
        checkpoint_every=1000,
    )
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run_dir = train(cfg)
    wall = time.perf_counter() - t0
    with open(run_dir / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    timed = rows[1:]
    per_iter = [float(b["seconds"]) - float(a["seconds"]) for a, b in zip(rows, rows[1:], strict=False)]
    return {
        "backend": backend,
        "workers": workers,
        "wall_s": wall,
        "iteration_s": per_iter,
        "median_s": statistics.median(per_iter),
        "median_sample_s": statistics.median(float(r["sample_seconds"]) for r in timed),
        "median_update_s": statistics.median(float(r["update_seconds"]) for r in timed),
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "rows": [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows],
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# One rl.cpo iteration on `{report['env']}`",
        "",
        f"{report['steps_per_iter']}-step batches, rl.cpo defaults; medians of {report['iters']} "
        f"iterations after one warm-up; {report['cpu_count']} cores, torch {report['torch']}. "
        f"Progress rows identical on every setting: **{report['same_rows']}**.",
        "",
        "| backend | workers | s / iteration | sampling s | update s | s / 20,000 steps | speed-up | load before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['backend']} | {r['workers']} | {r['median_s']:.2f} | {r['median_sample_s']:.2f} | "
            f"{r['median_update_s']:.2f} | {r['median_s'] * 20000 / report['steps_per_iter']:.2f} | "
            f"{r['speedup']:.2f}x | {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f} |"
        )
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['name']} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per setting")
    parser.add_argument("--steps-per-iter", type=int, default=16000)
    parser.add_argument("--backends", nargs="+", default=["serial:1", "processes:2", "ray:2"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.backends:
            backend, workers = item.split(":")
            print(f"{backend} x{workers} ...", file=sys.stderr, flush=True)
            runs.append(
                run(
                    args.env,
                    backend,
                    int(workers),
                    args.iters,
                    args.steps_per_iter,
                    Path(tmp) / item.replace(":", "_"),
                )
            )
            print(f"  median {runs[-1]['median_s']:.2f} s", file=sys.stderr, flush=True)
    for r in runs:
        r["speedup"] = runs[0]["median_s"] / r["median_s"]
    same = all(r["rows"] == runs[0]["rows"] for r in runs)
    targets = [{"name": "every setting gives the same progress rows", "measured": float(same), "met": same}]
    for r in runs[1:]:
        if r["workers"] == 2:
            per_20k = r["median_s"] * 20000 / args.steps_per_iter
            targets.append(
                {
                    "name": f"{r['backend']} x2 speed-up over one process >= {TARGET_SPEEDUP:g}x",
                    "measured": r["speedup"],
                    "met": r["speedup"] >= TARGET_SPEEDUP,
                }
            )
            targets.append(
                {
                    "name": f"{r['backend']} x2: <= {TARGET_S_PER_20K:g} s per 20,000 steps",
                    "measured": per_20k,
                    "met": per_20k <= TARGET_S_PER_20K,
                }
            )
    report = {
        "benchmark": "cpo_iteration",
        "env": args.env,
        "iters": args.iters,
        "steps_per_iter": args.steps_per_iter,
        "same_rows": same,
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
        "targets": targets,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpo_iteration.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "cpo_iteration.md").write_text(render(report))
    print(render(report))
    return report


if __name__ == "__main__":
    main()
