"""What the measurement scripts share: one thread, the machine's description, tables and results files.

A script writes its numbers to ``<stem>.json`` and the same numbers as Markdown tables to
``<stem>.md`` (:func:`write_results`); the prose about them is written by hand in ``docs/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def one_thread() -> None:
    """One BLAS thread in the processes started from here (torch: ``torch.set_num_threads(1)``)."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(key, "1")


def in_fresh_process(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new interpreter (spawned, one thread), so that each setting of a
    benchmark is measured alone, with nothing left over from the ones before it (a process that had
    run the serial and the processes backends of a Meta-CPO iteration could no longer fork Ray's
    servers: ENOMEM). ``fn`` is sent by its importable name, not as ``__main__``'s (Ray's workers
    look a job's function up by its module)."""
    module = fn.__module__
    if module == "__main__":
        module = sys.modules["__main__"].__spec__.name
    fn = getattr(importlib.import_module(module), fn.__qualname__)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=one_thread) as ex:
        return ex.submit(fn, *args, **kwargs).result()


def machine(**versions: str) -> dict[str, Any]:
    """The machine and the load average now, with the versions given (``torch=torch.__version__``)."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        **versions,
    }


def parser(doc: str | None, out: Path, backends: bool = False) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with ``--out`` (default ``out``)
    and with ``backends``, ``--backends`` (BACKEND:WORKERS settings, ``serial:1`` first)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=out, help=f"where the results go (default {out})")
    if backends:
        default = ["serial:1", "processes:2", "ray:2"]
        p.add_argument(
            "--backends", nargs="+", default=default, help="BACKEND:WORKERS settings, serial:1 first"
        )
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments (``--backends`` as (backend, workers) pairs), with one BLAS thread from now on."""
    args = p.parse_args(argv)
    try:
        args.backends = backend_pairs(args.backends) if hasattr(args, "backends") else None
    except ValueError as err:
        p.error(str(err))
    one_thread()
    return args


def positive(name: str, value: int) -> int:
    """``value`` if it is an integer >= 1, else a ValueError naming it."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def backend_pairs(items: Sequence[str]) -> list[tuple[str, int]]:
    """``["serial:1", "processes:2"]`` as (backend, workers) pairs; the first must be ``serial:1``."""
    pairs = []
    for item in items:
        backend, _, workers = item.partition(":")
        if not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"backend setting {item!r}: expected BACKEND:WORKERS such as processes:2")
        pairs.append((backend, int(workers)))
    if not pairs or pairs[0] != ("serial", 1):
        raise ValueError(f"the first backend setting must be serial:1 (the reference), got {list(items)}")
    return pairs


def speedups(runs: list[dict[str, Any]]) -> None:
    """Add ``speedup`` (the first run's ``median_s`` over this one's) and ``efficiency`` (per worker)."""
    for r in runs:
        r["speedup"] = runs[0]["median_s"] / r["median_s"]
        r["efficiency"] = r["speedup"] / r["workers"]


def target(name: str, measured: float, met: bool | None) -> dict[str, Any]:
    """One row of a script's table of targets."""
    return {"target": name, "measured": measured, "met": met}


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ", ".join(map(_cell, value))
    return "n/a" if value is None else str(value)


def table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table under ``## title``: one line per row, the columns of the first row (or
    ``columns``); floats to 3 significant digits, booleans yes/no, lists comma-separated."""
    columns = list(columns or (rows[0] if rows else []))
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(stem: Path, title: str, report: dict[str, Any], tables: Sequence[str]) -> None:
    """``report`` to ``stem.json`` and ``# title`` with ``tables`` to ``stem.md`` (atomically); prints the tables."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([f"# {title}\n", *tables])
    for suffix, content in ((".json", json.dumps(report, indent=1) + "\n"), (".md", text)):
        tmp = stem.with_name(stem.name + suffix + ".tmp")
        tmp.write_text(content)
        tmp.replace(stem.with_name(stem.name + suffix))
    print(text, flush=True)
