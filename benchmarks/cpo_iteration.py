"""Wall time of one ``rl.cpo`` iteration on Safety-Gymnasium, in one process and with workers.

``rl.cpo`` at its defaults (16,000-step batches in 16 sub-environments, 4 shards, the optimism
correction) on ``SafetyPointGoal1-v0``, once per ``--backends`` setting (``serial:1`` first, the
reference): ``--iters`` + 1 iterations, the first (environment construction, worker start)
dropped, medians of the per-iteration ``seconds``, ``sample_seconds`` and ``update_seconds`` of
``progress.csv`` (with workers the next batch's shards run while the critics are fitted, so
sampling and update overlap). Every setting must give the same progress rows (checked).
Writes ``cpo_iteration.json`` and ``.md``::

    .venv/bin/python -m benchmarks.cpo_iteration [--iters 3] [--backends serial:1 processes:2]
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from rl.cpo import CPOConfig, train

TARGET_SPEEDUP = 1.7  # 2 workers against one process, per iteration
TARGET_S_PER_20K = 8.0  # with 2 workers, update included


def run(env: str, backend: str, workers: int, iters: int, steps_per_iter: int, out: Path) -> dict[str, Any]:
    """Train ``iters + 1`` iterations; the timings of all but the first, and the progress rows."""
    cfg = CPOConfig(env=env, steps=steps_per_iter * (iters + 1), steps_per_iter=steps_per_iter, out=str(out))
    cfg = replace(
        cfg, backend=backend, workers=workers, checkpoint_every=1000, progress=False, tensorboard=False
    )
    load_before = os.getloadavg()[0]
    with open(train(cfg) / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    median = lambda key: statistics.median(float(r[key]) for r in rows[1:])
    per_iter = [float(b["seconds"]) - float(a["seconds"]) for a, b in zip(rows, rows[1:])]
    return {
        "backend": backend,
        "workers": workers,
        "median_s": statistics.median(per_iter),
        "sample_s": median("sample_seconds"),
        "update_s": median("update_seconds"),
        "s_per_20k": statistics.median(per_iter) * 20000 / steps_per_iter,
        "iteration_s": per_iter,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "rows": [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON and Markdown results."""
    p = common.parser(__doc__, common.RESULTS, backends=True)
    p.add_argument("--env", default="SafetyPointGoal1-v0")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per setting")
    p.add_argument("--steps-per-iter", type=int, default=16000)
    args = common.parse(p, argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i, (backend, workers) in enumerate(args.backends):
            print(f"{backend} x{workers} ...", flush=True)
            runs.append(
                common.in_fresh_process(
                    run, args.env, backend, workers, args.iters, args.steps_per_iter, Path(tmp) / f"{i}-{backend}"
                )
            )
    common.speedups(runs)
    reference = runs[0]["rows"]
    same = all(r.pop("rows") == reference for r in runs)
    targets = [common.target("every setting gives the same progress rows", float(same), same)]
    for r in (r for r in runs if r["workers"] == 2):
        speedup, per_20k = r["speedup"], r["s_per_20k"]
        targets.append(
            common.target(
                f"{r['backend']} x2 speed-up >= {TARGET_SPEEDUP:g}x", speedup, speedup >= TARGET_SPEEDUP
            )
        )
        name = f"{r['backend']} x2 <= {TARGET_S_PER_20K:g} s per 20,000 steps"
        targets.append(common.target(name, per_20k, per_20k <= TARGET_S_PER_20K))
    report = {"benchmark": "cpo_iteration", "env": args.env, "iters": args.iters}
    report |= {"steps_per_iter": args.steps_per_iter, "same_rows": same, "runs": runs, "targets": targets}
    report |= common.machine(torch=torch.__version__)
    columns = "backend workers median_s sample_s update_s s_per_20k speedup load_before load_after".split()
    tables = [
        common.table("Seconds per iteration (medians)", runs, columns),
        common.table("Targets", targets),
    ]
    title = f"One rl.cpo iteration: {args.env}, {args.steps_per_iter}-step batches"
    common.write_results(args.out / "cpo_iteration", title, report, tables)
    return report


if __name__ == "__main__":
    main()
