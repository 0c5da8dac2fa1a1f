"""Run directories, CSV/TensorBoard logging and progress bars.

A run writes into one directory (:func:`make_run_dir`):

* ``config.json``: the resolved config (:func:`write_config`);
* ``progress.csv``: one row per iteration (:class:`CSVLogger`);
* TensorBoard event files: every numeric field of each row as a scalar;
* optionally (``wandb=``, ``--wandb`` on the command line) the same scalars in a Weights &
  Biases run (the ``wandb`` package, ``pip install "difftrust[wandb]"``; the usual ``WANDB_*``
  environment variables apply, e.g. ``WANDB_PROJECT``, ``WANDB_MODE=offline``); the run id is
  kept in ``wandb_id.txt`` so that ``--resume`` continues the same W&B run;
* ``ckpt_*.pt``: checkpoints (:mod:`rl.runtime.checkpoint`).

On ``--resume`` the trainer loads the newest checkpoint (iteration ``i``) and
opens ``RunLogger(run_dir, resume_iteration=i)``: rows after ``i`` (written
after that checkpoint, before the kill) are cut from ``progress.csv`` and
TensorBoard is told to purge them, so every iteration appears exactly once.

>>> import tempfile
>>> run_dir = make_run_dir(tempfile.mkdtemp(), ["safenav-goal", "cpo", "seed0"])
>>> with RunLogger(run_dir, tensorboard=False) as log:
...     log.log({"iteration": 0, "return": 1.5, "cost": 3.0})
>>> (run_dir / "progress.csv").read_text().splitlines()
['iteration,return,cost', '0,1.5,3.0']
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import numbers
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "CSVLogger",
    "RunLogger",
    "make_run_dir",
    "progress_bar",
    "read_csv",
    "truncate_csv",
    "wandb_available",
    "write_config",
]

#: W&B project used when ``WANDB_PROJECT`` is not set.
WANDB_PROJECT = "difftrust"

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _scalar(value: Any) -> Any:
    """0-d tensors / numpy scalars -> python numbers; other values unchanged."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    return value


def _cell(value: Any) -> Any:
    value = _scalar(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


class CSVLogger:
    """Append rows (dicts) to a CSV file, flushing after each row.

    The columns are fixed: ``fieldnames`` if given, else the keys of the first
    row, else (when appending to a non-empty file) the file's header. Rows may
    omit columns (empty cell); keys that are not columns raise ``ValueError``.
    0-d tensors and numpy scalars are written as numbers, ``None`` as empty.

    Args:
        path: the CSV file (parent directories are created).
        fieldnames: the columns; must match the header of an existing file.
        fsync: also ``os.fsync`` after each row (durable, slower).

    Raises:
        ValueError: if ``fieldnames`` differ from an existing file's header.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fieldnames: Sequence[str] | None = None,
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        existing = _read_header(self.path)
        if existing is not None and fieldnames is not None and list(fieldnames) != existing:
            raise ValueError(
                f"{self.path} has columns {existing}, but fieldnames {list(fieldnames)} were given"
            )
        self.fieldnames: list[str] | None = existing or (list(fieldnames) if fieldnames else None)
        self._header_written = existing is not None
        if self._header_written:
            _drop_partial_last_line(self.path)
        elif self.path.is_file() and self.path.stat().st_size > 0:
            _atomic_write_bytes(self.path, b"")  # only a header cut mid-write: start over
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer: csv.DictWriter | None = None

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row.

        Raises:
            ValueError: if ``row`` has keys that are not columns (named), or the
                logger is closed.
        """
        if self._file.closed:
            raise ValueError(f"CSVLogger for {self.path} is closed")
        if self.fieldnames is None:
            self.fieldnames = [str(k) for k in row]
        extra = [k for k in row if k not in self.fieldnames]
        if extra:
            raise ValueError(
                f"row has keys {extra} that are not columns of {self.path}; columns: {self.fieldnames}"
            )
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=self.fieldnames, lineterminator="\n")
        if not self._header_written:
            self._writer.writeheader()
            self._header_written = True
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (idempotent)."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> CSVLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read_header(path: Path) -> list[str] | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, newline="", encoding="utf-8") as f:
        first = f.readline()
    if not first.endswith("\n"):
        return None  # a header cut mid-write: treat the file as empty
    return next(csv.reader([first]))


def _drop_partial_last_line(path: Path) -> None:
    """Remove a final line without its newline (a row cut by a kill)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        _atomic_write_bytes(path, keep)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Complete rows of a CSV file as dicts of strings (a final partial line is ignored)."""
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    width = len(reader.fieldnames or [])
    return [row for row in reader if None not in row and len(row) == width]


def truncate_csv(path: str | os.PathLike[str], last_iteration: int, key: str = "iteration") -> int:
    """Keep only the rows with ``row[key] <= last_iteration`` (for ``--resume``).

    Rows written after the last checkpoint, a final line cut mid-write, and rows
    with the wrong number of cells are dropped; the file is rewritten
    atomically. A missing file is left missing.

    Args:
        path: the CSV file.
        last_iteration: the iteration of the checkpoint being resumed; ``-1``
            keeps only the header.
        key: the column holding the iteration.

    Returns:
        The number of data rows kept.

    Raises:
        ValueError: if the file has no ``key`` column, or a kept row's ``key``
            is not a number.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    header = _read_header(path)
    if header is None:
        _atomic_write_bytes(path, b"")
        return 0
    if key not in header:
        raise ValueError(f"{path} has no column {key!r}; columns: {header}")
    rows = read_csv(path)
    kept: list[dict[str, str]] = []
    for row in rows:
        try:
            iteration = float(row[key])
        except ValueError:
            raise ValueError(f"{path}: column {key!r} holds {row[key]!r}, expected a number") from None
        if iteration <= last_iteration:
            kept.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    _atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return len(kept)


def write_config(run_dir: str | os.PathLike[str], cfg_dict: Mapping[str, Any]) -> Path:
    """Write ``run_dir/config.json`` atomically (indented, keys in field order).

    Args:
        run_dir: the run directory (created if missing).
        cfg_dict: a JSON-ready dict, e.g. :func:`rl.runtime.config.config_to_dict`.

    Returns:
        The path of ``config.json``.

    Raises:
        TypeError: if ``cfg_dict`` holds a value JSON cannot encode.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(cfg_dict), indent=2) + "\n"
    path = run_dir / "config.json"
    _atomic_write_bytes(path, text.encode("utf-8"))
    return path


def make_run_dir(
    root: str | os.PathLike[str],
    name_parts: Sequence[str | int],
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Create a fresh run directory; never reuse a non-empty one.

    By default ``<root>/<part1>-<part2>-...-<YYYYmmdd-HHMMSS>/`` (e.g.
    ``runs/safenav-goal-cpo-seed0-20250101-120000``); characters other than
    letters, digits and ``._+=-`` in the parts become ``_``. If that name is
    taken (two runs in the same second), ``-1``, ``-2``, ... is appended.

    Args:
        root: parent directory of default run directories (e.g. ``"runs"``).
        name_parts: parts of the name, e.g. ``[env, algo, f"seed{seed}"]``.
        out: an explicit directory to use instead; it may exist only if empty.

    Returns:
        The created (empty) directory.

    Raises:
        FileExistsError: if ``out`` exists and is not empty (to continue a run,
            resume it in place instead of creating a new one).
        NotADirectoryError: if ``out`` is an existing file.
    """
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"run directory {path} exists and is a file")
        if path.is_dir() and any(path.iterdir()):
            n = sum(1 for _ in path.iterdir())
            raise FileExistsError(
                f"refusing to write into non-empty run directory {path} ({n} entries); "
                "choose a new --out, remove it, or resume that run"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    parts = [_UNSAFE.sub("_", str(p)).strip("_") for p in name_parts]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = "-".join([p for p in parts if p] + [stamp])
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a fresh run directory {root / base}-N")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)  # bools too (logged as 0/1)


def wandb_available() -> bool:
    """Whether the ``wandb`` package is installed (``--wandb`` needs it)."""
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def _start_wandb(run_dir: Path, config: Mapping[str, Any]) -> Any:
    """A W&B run for ``run_dir`` (resumed when ``run_dir/wandb_id.txt`` names one)."""
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            "--wandb needs the wandb package: pip install 'difftrust[wandb]' (or pip install wandb)"
        ) from exc
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=dict(config),
    )


class RunLogger:
    """``progress.csv`` plus TensorBoard scalars (and optionally W&B) for one run directory.

    Args:
        run_dir: the run directory.
        fieldnames: CSV columns (default: keys of the first row).
        tensorboard: also write TensorBoard events (``torch.utils.tensorboard``,
            imported lazily).
        resume_iteration: when resuming from a checkpoint at this iteration,
            rows after it are cut from ``progress.csv`` (:func:`truncate_csv`)
            and TensorBoard purges its events after it.
        step_key: the row field used as the TensorBoard step.
        fsync: ``os.fsync`` the CSV after each row.
        wandb: also log to Weights & Biases: ``None`` / ``False`` (no), ``True``, or the
            run's config (a mapping recorded with the W&B run). On resuming, rows whose
            step the W&B run already has are not sent again (W&B keeps steps increasing).

    Raises:
        ImportError: ``wandb`` is requested but the package is not installed (the message
            says how to install it).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        fieldnames: Sequence[str] | None = None,
        tensorboard: bool = True,
        resume_iteration: int | None = None,
        step_key: str = "iteration",
        fsync: bool = False,
        wandb: bool | Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.step_key = step_key
        self.csv_path = self.run_dir / "progress.csv"
        if resume_iteration is not None:
            truncate_csv(self.csv_path, resume_iteration, key=step_key)
        self.csv = CSVLogger(self.csv_path, fieldnames=fieldnames, fsync=fsync)
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_iteration is None else resume_iteration + 1
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)
        self.wandb_run: Any = None
        if wandb:
            self.wandb_run = _start_wandb(self.run_dir, wandb if isinstance(wandb, Mapping) else {})
        self._rows = 0

    def log(self, row: Mapping[str, Any], step: int | None = None) -> None:
        """Append ``row`` to the CSV and its numeric fields to TensorBoard.

        Args:
            row: one iteration's values.
            step: TensorBoard step (default: ``row[step_key]``, else a counter).
        """
        self.csv.log(row)
        if step is None:
            step = int(_scalar(row[self.step_key])) if self.step_key in row else self._rows
        self._rows += 1
        scalars = {}
        for name, value in row.items():
            value = _scalar(value)
            if name != self.step_key and _is_number(value):
                scalars[str(name)] = float(value)
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, global_step=step)
            self.writer.flush()
        if self.wandb_run is not None and step >= self.wandb_run.step:
            self.wandb_run.log(scalars, step=step)

    def write_config(self, cfg_dict: Mapping[str, Any]) -> Path:
        """Write ``config.json`` in the run directory (see :func:`write_config`)."""
        return write_config(self.run_dir, cfg_dict)

    def close(self) -> None:
        """Close the CSV and TensorBoard writers and finish the W&B run (idempotent)."""
        self.csv.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress_bar(total: int, initial: int = 0, desc: str | None = None) -> Any:
    """A ``tqdm`` bar on stderr (``initial`` > 0 when resuming).

    Use as ``with progress_bar(n, start, "meta-cpo") as bar: ... bar.update()``;
    ``bar.set_postfix(ret=..., cost=...)`` shows the latest numbers.
    """
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        smoothing=0.1,
    )
