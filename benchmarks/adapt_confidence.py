"""Re-adapt finished Meta-CPO runs with a confidence margin on the cost (``--adapt-confidence``).

A run of ``python -m rl.meta_cpo`` constrains the *estimated mean* episode cost of each test
task during adaptation, so a task adapted right up to its limit is judged within it about half
of the time (the judging batch has its own noise). ``adapt_confidence = p`` constrains
``ep_cost + z_p * standard error`` instead. This script takes finished run folders (for example
``benchmarks/results/adaptation_debias/runs/meta-cpo-seed0``), repeats their meta-test (same test
tasks, seeds and adaptation steps; ``--adapt-steps`` and ``--adapt-batch-steps`` change those
too) with each ``--levels`` value, and writes
``<name>.csv`` (every run, level, task and step) and ``<name>.md`` (return,
cost and the share of test tasks within every channel's limit after the last step) to ``--out``
(``--name``, default ``adapt_confidence``). ``benchmarks/adaptation.py --retest-from`` does the same
for whole benchmark folders, one setting at a time, with the full report::

    python benchmarks/adapt_confidence.py benchmarks/results/adaptation_debias/runs/meta-cpo-seed*
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import retest_copy  # noqa: E402
from rl.meta_cpo import MetaCPOTrainer  # noqa: E402
from rl.runtime import read_csv  # noqa: E402


def readapt(
    run_dir: Path, level: float, adapt_steps: int | None = None, adapt_batch_steps: int | None = None
) -> list[dict[str, str]]:
    """The meta-test of ``run_dir`` repeated with ``adapt_confidence = level`` (and
    ``adapt_steps`` / ``adapt_batch_steps`` if given) in a copy; the run's own ``adaptation.csv``
    when all are the run's settings (the meta-test is deterministic)."""
    own = json.loads((run_dir / "config.json").read_text())
    own_level = own.get("adapt_confidence") or own.get("cost_confidence", 0.5)
    changes = {"adapt_steps": adapt_steps, "adapt_batch_steps": adapt_batch_steps}
    changes = {k: v for k, v in changes.items() if v is not None and v != own.get(k)}
    if level != own_level:
        changes["adapt_confidence"] = level
    tag = {"run": run_dir.name, "level": str(level), "adapt_batch_steps": str(adapt_batch_steps or "")}
    if not changes:
        return [{**r, **tag} for r in read_csv(run_dir / "adaptation.csv")]
    with tempfile.TemporaryDirectory(prefix="adapt_confidence_") as tmp:
        copy = Path(tmp) / run_dir.name
        retest_copy(run_dir, copy, {**changes, "progress": False, "tensorboard": False})
        trainer = MetaCPOTrainer.from_run(copy)
        return [{**r, **tag} for r in read_csv(trainer.meta_test())]


def summary(rows: list[dict[str, str]]) -> list[str]:
    channels = sorted(k for k in rows[0] if k.startswith("cost_") and k != "cost_limit")
    last = max(int(r["adapt_step"]) for r in rows)
    lines = [
        "| method | level | runs | tasks | return | cost | "
        + " | ".join(c[5:] for c in channels)
        + " | within every "
        "channel's limit | within the total limit |",
        "|---" * (8 + len(channels)) + "|",
    ]
    for method, level in dict.fromkeys((r["method"], r["level"]) for r in rows):
        sel = [
            r for r in rows if (r["method"], r["level"]) == (method, level) and int(r["adapt_step"]) == last
        ]
        limit = float(sel[0]["cost_limit"])
        per = limit / len(channels)  # the benchmarks give every channel the same limit
        ok = [all(float(r[c]) <= per for c in channels) for r in sel]
        ok_total = [float(r["ep_cost"]) <= limit for r in sel]
        lines.append(
            f"| {method} | {level} | {len({r['run'] for r in sel})} | {len(sel)} | "
            f"{np.mean([float(r['ep_ret']) for r in sel]):.2f} | {np.mean([float(r['ep_cost']) for r in sel]):.2f} | "
            + " | ".join(f"{np.mean([float(r[c]) for r in sel]):.2f}" for c in channels)
            + f" | {sum(ok)}/{len(ok)} ({100 * np.mean(ok):.0f}%) | {sum(ok_total)}/{len(ok_total)} "
            f"({100 * np.mean(ok_total):.0f}%) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished rl.meta_cpo run folders")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.9], help="adapt_confidence values")
    parser.add_argument("--adapt-steps", type=int, default=None, help="adaptation steps (default: the runs')")
    parser.add_argument(
        "--adapt-batch-steps",
        type=int,
        default=None,
        help="env steps per adaptation/evaluation batch (default: the runs')",
    )
    parser.add_argument("--name", default="adapt_confidence", help="stem of the output files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows: list[dict[str, str]] = []
    for run in args.runs:
        if not (run / "adaptation.csv").is_file():
            print(f"skipping {run}: not finished (no adaptation.csv)", file=sys.stderr)
            continue
        for level in args.levels:
            print(f"{run.name}: adapt_confidence {level}", file=sys.stderr, flush=True)
            rows += readapt(run, level, args.adapt_steps, args.adapt_batch_steps)
    if not rows:
        sys.exit("no finished run folder given")
    args.out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    runs = sorted({r["run"] for r in rows})
    text = [
        "# Adapting with a confidence margin on the cost",
        "",
        f"`python benchmarks/adapt_confidence.py` on {', '.join(runs)} (their meta-policies, test tasks, "
        "seeds and adaptation steps; only the options named below change). After the last adaptation step; "
        "level 0.5 constrains the estimated mean (the runs' own setting), a higher level "
        "`ep_cost + z * standard error`. "
        f"Measured {time.strftime('%Y-%m-%d')} in {time.perf_counter() - t0:.0f} s, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        *summary(rows),
    ]
    for name in ("adapt_steps", "adapt_batch_steps"):
        if getattr(args, name) is not None:
            text[3:3] = ["", f"`{name}`: {getattr(args, name)} (the runs' own: see their config.json)."]
    (args.out / f"{args.name}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
