"""Helpers shared by the resumable run-many-configurations benchmarks (adaptation.py, paper.py)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rl.runtime import read_csv

__all__ = ["iterations_done", "mean_std", "pct", "set_nice", "write_csv"]


def iterations_done(run_dir: Path) -> int:
    """Rows of a run folder's progress.csv (0 if it has none)."""
    progress = run_dir / "progress.csv"
    return len(read_csv(progress)) if progress.is_file() else 0


def set_nice(level: int) -> None:
    """Lower this process's priority to at least ``level``."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < level:
        os.setpriority(os.PRIO_PROCESS, 0, level)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (nan, nan for no values)."""
    a = np.asarray(values, dtype=float)
    return (float(a.mean()), float(a.std())) if a.size else (math.nan, math.nan)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (union of their keys as columns, floats to 6 significant digits) atomically."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(path)


def pct(x: float) -> str:
    """A fraction as a whole percentage."""
    return f"{100 * x:.0f}%"


def retest_copy(source: Path, dest: Path, changes: dict[str, Any]) -> None:
    """Copy a finished rl.meta_cpo run (config, checkpoints, training logs; not its meta-test
    outputs) to ``dest`` for a new meta-test, with ``changes`` written into its config.json."""
    shutil.copytree(
        source,
        dest,
        ignore=shutil.ignore_patterns("adaptation.csv", "evaluation.csv", "events.*", "*.png", "*.tmp"),
    )
    path = dest / "config.json"
    run_cfg = json.loads(path.read_text())
    run_cfg.update(changes)
    path.write_text(json.dumps(run_cfg, indent=2) + "\n")
