"""Atomic, self-verifying checkpoints.

Files are named ``ckpt_<step:06d>.pt`` inside the run directory. A save writes
to a temporary file in the same directory, flushes and ``fsync``s it, renames it
into place with :func:`os.replace` (atomic on POSIX) and ``fsync``s the
directory, so a crash leaves either the old set of checkpoints or the new one,
never a half-written ``ckpt_*.pt``. :func:`latest_checkpoint` still verifies
that the newest file loads (a disk may lie, a user may copy a file half-way) and
falls back to the previous one otherwise.

States are loaded with ``torch.load(weights_only=True)``: no pickled code runs
at load time. A state may therefore hold only tensors, ``None``, ``bool``,
``int``, ``float``, ``str`` and lists, tuples and dicts of those; capture RNG
states with :func:`rl.runtime.seeding.rng_state`, which follows that rule.
:func:`save_checkpoint` checks it before writing and names the offending entry.

>>> import tempfile, torch
>>> run_dir = tempfile.mkdtemp()
>>> for it in range(5):
...     _ = save_checkpoint(run_dir, {"iteration": it, "w": torch.zeros(2)}, step=it)
>>> sorted(p.name for p in Path(run_dir).glob("ckpt_*.pt"))
['ckpt_000002.pt', 'ckpt_000003.pt', 'ckpt_000004.pt']
>>> load_checkpoint(latest_checkpoint(run_dir))["iteration"]
4
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
]

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_TMP_PREFIX = ".ckpt_"
_TMP_SUFFIX = ".tmp"
_PLAIN = (type(None), bool, int, float, str)
# What torch.load raises on truncated or corrupted files.
_LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError if ``obj`` would not load with ``weights_only=True``."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(
                    f"checkpoint key {where}[{k!r}] has type {type(k).__name__}; expected str or int keys"
                )
            _check_plain(v, f"{where}[{k!r}]")
        return
    hint = ""
    if type(obj).__module__ == "numpy":
        hint = " (convert numpy values with torch.as_tensor(...) or .item())"
    raise TypeError(
        f"checkpoint entry {where} has type {type(obj).__module__}.{type(obj).__name__}; "
        "expected a tensor, None, bool, int, float, str, or a list/tuple/dict of those" + hint
    )


def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step encoded in a checkpoint file name (``ckpt_000012.pt`` -> 12).

    Raises:
        ValueError: if the name is not of the form ``ckpt_<digits>.pt``.
    """
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"not a checkpoint file name: {Path(path).name!r}; expected ckpt_<N>.pt")
    return int(m.group(1))


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """All ``ckpt_*.pt`` files in ``run_dir``, oldest step first (unverified)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if _NAME.match(p.name) and p.is_file()]
    return sorted(found, key=checkpoint_step)


def save_checkpoint(
    run_dir: str | os.PathLike[str], state: Mapping[str, Any], step: int, keep: int = 3
) -> Path:
    """Atomically write ``state`` to ``run_dir/ckpt_<step:06d>.pt``; keep the last ``keep``.

    Args:
        run_dir: directory of the run (created if missing).
        state: a dict of tensors and plain python values (see module docs).
        step: a non-negative integer, usually the iteration just completed.
            Saving the same step again replaces that file.
        keep: how many checkpoints (highest steps) to keep, ``>= 1``; older ones
            are deleted after the new one is safely in place.

    Returns:
        The path of the written checkpoint.

    Raises:
        TypeError: if ``state`` is not a dict or holds a value that
            ``torch.load(weights_only=True)`` could not read (the entry is named).
        ValueError: if ``step < 0`` or ``keep < 1``.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    state = dict(state)
    _check_plain(state, "state")

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt_{step:06d}.pt"
    fd, tmp_name = tempfile.mkstemp(dir=run_dir, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(run_dir)

    # Prune: older checkpoints beyond ``keep`` and temp files of crashed saves.
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in run_dir.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, CPU).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RuntimeError (or another loader error): if the file is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def load_latest_checkpoint(
    run_dir: str | os.PathLike[str],
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``run_dir`` that loads, with its state.

    Files that fail to load (truncated by a kill, corrupted) are skipped with a
    :class:`RuntimeWarning` and the previous one is tried.

    Returns:
        ``(path, state)``, or ``None`` if no checkpoint loads.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except _LOAD_ERRORS as err:
            warnings.warn(
                f"skipping unreadable checkpoint {path}: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=2,
            )
    return None


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """Path of the newest checkpoint in ``run_dir`` that loads, or ``None``.

    Verifies the file by loading it; use :func:`load_latest_checkpoint` to
    avoid loading it twice.
    """
    found = load_latest_checkpoint(run_dir)
    return None if found is None else found[0]
