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

import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from rl.runtime.config import ConfigError

__all__ = [
    "SETTINGS_KEY",
    "SettingsMismatchError",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "restore_latest_checkpoint",
    "save_checkpoint",
    "settings_record",
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
# What restoring a state that loads but does not fit (a missing key, a wrong shape or type) raises.
_RESTORE_ERRORS = (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError)
#: The checkpoint entry holding the run-defining settings (canonical JSON) and its fingerprint.
SETTINGS_KEY = "run_settings"
_FINGERPRINT_KEY = "run_settings_sha256"


class SettingsMismatchError(ConfigError):
    """A run's ``config.json`` differs from the settings its checkpoints were made with."""


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


# --------------------------------------------------------------------------- run settings


def settings_record(settings: Mapping[str, Any]) -> dict[str, str]:
    """Checkpoint entries recording a run's defining settings: their canonical JSON text
    (:data:`SETTINGS_KEY`) and its SHA-256 fingerprint.

    Raises:
        ValueError: if a setting is not JSON (``nan`` and ``inf`` included).
    """
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return {SETTINGS_KEY: text, _FINGERPRINT_KEY: hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _recorded_settings(path: Path, state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings a checkpoint records, ``None`` for a checkpoint older than the record;
    ``ValueError`` for a record that does not match its fingerprint (an inconsistent file)."""
    text = state.get(SETTINGS_KEY)
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"{SETTINGS_KEY} is a {type(text).__name__}, expected a JSON string")
    if state.get(_FINGERPRINT_KEY) != hashlib.sha256(text.encode("utf-8")).hexdigest():
        raise ValueError(f"{SETTINGS_KEY} does not match its fingerprint {_FINGERPRINT_KEY}")
    recorded = json.loads(text)
    if not isinstance(recorded, dict):
        raise TypeError(f"{SETTINGS_KEY} holds a {type(recorded).__name__}, expected a mapping")
    return recorded


def _check_settings(
    path: Path, recorded: Mapping[str, Any], settings: Mapping[str, Any], defaults: Mapping[str, Any]
) -> None:
    """Raise :class:`SettingsMismatchError` naming each setting that differs from the record.

    A setting the record lacks (added to the program after the checkpoint was written) counts
    as recorded with its default value."""
    differ = []
    for key, value in settings.items():
        if key in recorded:
            old = recorded[key]
        elif key in defaults:
            old = defaults[key]
        else:
            continue
        if old != value:
            differ.append(f"{key} is {value!r} in config.json but {old!r} in the checkpoint")
    if differ:
        raise SettingsMismatchError(
            f"{path.parent / 'config.json'} does not match the settings the run's checkpoint {path.name} "
            f"was made with: {'; '.join(differ)}. Restore config.json (these settings cannot change "
            "when resuming) or start a new run"
        )


def restore_latest_checkpoint(
    run_dir: str | os.PathLike[str],
    restore: Callable[[Path, dict[str, Any]], None],
    settings: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest checkpoint of ``run_dir`` that loads, fits and matches ``settings``.

    Newest first, each checkpoint is loaded (an unreadable file is skipped with a
    :class:`RuntimeWarning`), its recorded settings are compared with ``settings`` (a difference
    refuses to resume: :class:`SettingsMismatchError` names every differing key), and it is
    handed to ``restore(path, state)``. If ``restore`` raises ``KeyError``, ``ValueError``,
    ``TypeError``, ``RuntimeError``, ``AttributeError`` or ``IndexError`` (a key missing, a
    shape that does not fit, ...), the checkpoint is inconsistent: it is skipped with a
    :class:`RuntimeWarning` like an unreadable one, and the previous one is tried. ``restore``
    must leave its target as it was when it raises.

    Args:
        run_dir: the run folder.
        restore: puts a state into the trainer; raises on a state that does not fit.
        settings: the run's defining settings, as recorded with :func:`settings_record`
            (``None``: not checked). A checkpoint without a record (written before records
            existed) is restored with a warning that it could not be checked.
        defaults: default values of the settings, for keys a record lacks.

    Returns:
        ``(path, state)`` of the restored checkpoint, or ``None`` if none could be restored.

    Raises:
        SettingsMismatchError: a checkpoint was made with other settings than ``settings``.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except _LOAD_ERRORS as err:
            warnings.warn(
                f"skipping unreadable checkpoint {path}: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        try:
            recorded = _recorded_settings(path, state)
            if settings is not None and recorded is not None:
                _check_settings(path, recorded, settings, defaults or {})
            restore(path, state)
        except SettingsMismatchError:
            raise
        except _RESTORE_ERRORS as err:
            warnings.warn(
                f"skipping inconsistent checkpoint {path}: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if settings is not None and recorded is None:
            warnings.warn(
                f"checkpoint {path} records no run settings (written by an older version): "
                f"config.json could not be checked against it",
                RuntimeWarning,
                stacklevel=2,
            )
        return path, state
    return None
