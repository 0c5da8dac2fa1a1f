"""Import shim for Safety-Gymnasium 1.0.0 on Python 3.11.

Safety-Gymnasium 1.0.0 declares dataclass fields whose class-level default is a
numpy array (``color: np.array = COLOR['hazard']``). Python 3.11 rejects every
default whose type is unhashable (``ndarray.__hash__ is None``), so a plain
``import safety_gymnasium`` fails with::

    ValueError: mutable default <class 'numpy.ndarray'> for field color is not allowed:
    use default_factory

:func:`import_safety_gymnasium` imports the package while ``dataclasses.dataclass``
is temporarily wrapped: before a class is processed, each annotated attribute
whose default is unhashable (or a ``field(default=...)`` holding one) is turned
into ``field(default_factory=...)`` returning a deep copy of that default. Every
instance therefore starts with an equal value, exactly as before; it merely no
longer shares the object with other instances. Nothing in site-packages is
edited, and ``dataclasses.dataclass`` is restored as soon as the import returns
(the wrapper is only in place during this one import; do not import other
modules concurrently from another thread while it runs).

>>> sg = import_safety_gymnasium()
>>> sg.__version__
'1.0.0'
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import io
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

__all__ = ["import_safety_gymnasium", "unhashable_defaults_to_factories"]

_IMPORT_LOCK = threading.Lock()


def _is_unhashable(value: Any) -> bool:
    return type(value).__hash__ is None


def unhashable_defaults_to_factories(cls: type) -> type:
    """Turn the unhashable class-level defaults of ``cls`` into default factories.

    Only attributes annotated in ``cls`` itself are touched (as ``dataclasses``
    does). The factory returns ``copy.deepcopy(default)``. Returns ``cls``
    (modified in place), ready for ``dataclasses.dataclass``.
    """
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, dataclasses.MISSING)
        if isinstance(value, dataclasses.Field):
            if value.default is not dataclasses.MISSING and _is_unhashable(value.default):
                default = value.default
                value.default = dataclasses.MISSING
                value.default_factory = functools.partial(copy.deepcopy, default)
        elif value is not dataclasses.MISSING and _is_unhashable(value):
            factory = functools.partial(copy.deepcopy, value)
            setattr(cls, name, dataclasses.field(default_factory=factory))
    return cls


def _tolerant_dataclass(original):
    """A drop-in ``dataclasses.dataclass`` that first applies the default fix."""

    @functools.wraps(original)
    def dataclass(cls=None, /, **kwargs):
        if cls is None:
            return lambda c: original(unhashable_defaults_to_factories(c), **kwargs)
        return original(unhashable_defaults_to_factories(cls), **kwargs)

    return dataclass


def _forward_stderr(text: str) -> None:
    """Re-emit captured import-time stderr, minus gymnasium-robotics' Adroit notice."""
    kept = [line for line in text.splitlines() if "AdroitHand" not in line]
    if any(line.strip() for line in kept):
        print("\n".join(kept), file=sys.stderr)


def import_safety_gymnasium() -> ModuleType:
    """Import and return ``safety_gymnasium`` on Python 3.11 (see the module docstring).

    Idempotent: when the package is already imported, it is returned as is. The
    import-time notice that gymnasium-robotics prints to stderr about its Adroit
    environments is dropped (other stderr output is passed through).

    Raises:
        ImportError: if safety-gymnasium (or one of its dependencies) is missing.
    """
    module = sys.modules.get("safety_gymnasium")
    if module is not None and hasattr(module, "make"):
        return module
    with _IMPORT_LOCK:
        original = dataclasses.dataclass
        dataclasses.dataclass = _tolerant_dataclass(original)
        try:
            captured = io.StringIO()
            try:
                with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
                    warnings.simplefilter("ignore")
                    module = importlib.import_module("safety_gymnasium")
            finally:
                _forward_stderr(captured.getvalue())
        except ImportError as exc:
            raise ImportError(
                "safety-gymnasium 1.0.0 is not importable; install it with "
                "`pip install 'difftrust[safety]'` (or `pip install -e '.[safety]'` in a checkout) "
                f"and then `python -m rl.envs.install_safety`: {exc}"
            ) from exc
        finally:
            dataclasses.dataclass = original
    return module
