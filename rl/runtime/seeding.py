"""Seeding and capture/restore of every random number generator a run uses.

A resumed run must draw exactly the numbers the uninterrupted run would have
drawn. :func:`rng_state` captures the global generators (python ``random``,
numpy's legacy global ``np.random``, torch CPU and, when present, CUDA) plus
any generator objects the caller owns (``numpy.random.Generator``,
``numpy.random.RandomState``, ``torch.Generator``, ``random.Random``), and
:func:`set_rng_state` puts them back.

The captured state holds only strings, tensors, lists and dicts, so it can be
stored in a checkpoint and read back with ``torch.load(weights_only=True)``.
Python and numpy states (which hold 128-bit integers and numpy arrays) are
stored as JSON strings, which keep every integer exactly.

>>> import numpy as np, torch
>>> gen = np.random.default_rng(0)
>>> tgen = torch.Generator().manual_seed(1)
>>> state = rng_state({"env": gen, "sampler": tgen})
>>> a = gen.random(), torch.rand(1, generator=tgen).item()
>>> set_rng_state(state, {"env": gen, "sampler": tgen})
>>> a == (gen.random(), torch.rand(1, generator=tgen).item())
True
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["RandomGenerator", "rng_state", "seed_everything", "set_rng_state"]

#: Generator objects :func:`rng_state` knows how to capture.
RandomGenerator = np.random.Generator | np.random.RandomState | torch.Generator | random.Random

_MAX_SEED = 2**32 - 1


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA).

    Args:
        seed: an integer in ``[0, 2**32 - 1]`` (numpy's legacy seeding range).

    Raises:
        TypeError: if ``seed`` is not an ``int`` (``bool`` is refused).
        ValueError: if ``seed`` is outside ``[0, 2**32 - 1]``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    seed = int(seed)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be in [0, {_MAX_SEED}], got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _to_json_safe(obj: Any) -> Any:
    """Turn numpy arrays/scalars and tuples into lists and python numbers."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json_safe(v) for v in obj]
    return obj


def _python_state(rng: random.Random | None = None) -> str:
    version, internal, gauss_next = (rng or random).getstate()
    return json.dumps([version, list(internal), gauss_next])


def _set_python_state(text: str, rng: random.Random | None = None) -> None:
    version, internal, gauss_next = json.loads(text)
    (rng or random).setstate((version, tuple(internal), gauss_next))


def _legacy_numpy_state(rs: np.random.RandomState | None = None) -> str:
    state = (rs.get_state if rs is not None else np.random.get_state)(legacy=False)
    return json.dumps(_to_json_safe(state))


def _set_legacy_numpy_state(text: str, rs: np.random.RandomState | None = None) -> None:
    state = json.loads(text)
    state["state"]["key"] = np.asarray(state["state"]["key"], dtype=np.uint32)
    (rs.set_state if rs is not None else np.random.set_state)(state)


def _capture(name: str, gen: Any) -> dict[str, Any]:
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy.Generator", "state": json.dumps(_to_json_safe(gen.bit_generator.state))}
    if isinstance(gen, np.random.RandomState):
        return {"kind": "numpy.RandomState", "state": _legacy_numpy_state(gen)}
    if isinstance(gen, torch.Generator):
        return {"kind": "torch.Generator", "state": gen.get_state()}
    if isinstance(gen, random.Random):
        return {"kind": "random.Random", "state": _python_state(gen)}
    raise TypeError(
        f"generator {name!r} has unsupported type {type(gen).__name__}; expected "
        "numpy.random.Generator, numpy.random.RandomState, torch.Generator or random.Random"
    )


def _restore(name: str, gen: Any, saved: Mapping[str, Any]) -> None:
    expected = _capture(name, gen)["kind"]  # also validates the type of ``gen``
    if saved.get("kind") != expected:
        raise TypeError(
            f"generator {name!r} is a {expected} but the saved state is for a {saved.get('kind')!r}"
        )
    if expected == "numpy.Generator":
        state = json.loads(saved["state"])
        if state.get("bit_generator") != type(gen.bit_generator).__name__:
            raise TypeError(
                f"generator {name!r} uses {type(gen.bit_generator).__name__} but the saved "
                f"state is for {state.get('bit_generator')!r}"
            )
        gen.bit_generator.state = state
    elif expected == "numpy.RandomState":
        _set_legacy_numpy_state(saved["state"], gen)
    elif expected == "torch.Generator":
        gen.set_state(saved["state"])
    else:
        _set_python_state(saved["state"], gen)


def rng_state(generators: Mapping[str, RandomGenerator] | None = None) -> dict[str, Any]:
    """Capture the global RNG states and those of the given generator objects.

    Args:
        generators: optional ``{name: generator}`` of generator objects the
            caller owns (environment streams, samplers, ...).

    Returns:
        A dict of strings, tensors and lists (``torch.load(weights_only=True)``
        safe) with keys ``"python"``, ``"numpy"``, ``"torch"``, ``"cuda"``
        (a list of per-device states; empty without CUDA) and ``"generators"``.

    Raises:
        TypeError: if a generator has an unsupported type.
    """
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    return {
        "python": _python_state(),
        "numpy": _legacy_numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "generators": {name: _capture(name, gen) for name, gen in (generators or {}).items()},
    }


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, RandomGenerator] | None = None) -> None:
    """Restore the states captured by :func:`rng_state`.

    Args:
        state: the dict returned by :func:`rng_state` (possibly after a
            ``torch.save`` / ``torch.load(weights_only=True)`` round trip).
        generators: the same ``{name: generator}`` objects (or fresh ones of
            the same types) whose states were captured; they are set in place.
            Saved generators that are not passed are ignored.

    Raises:
        ValueError: if ``state`` misses a key, or a passed generator's name has
            no saved state (the valid names are listed).
        TypeError: if a generator's type differs from the saved one.
    """
    missing = [k for k in ("python", "numpy", "torch", "generators") if k not in state]
    if missing:
        raise ValueError(f"RNG state misses keys {missing}; expected the dict returned by rng_state()")
    saved = state["generators"]
    for name in generators or {}:
        if name not in saved:
            raise ValueError(f"no saved RNG state for generator {name!r}; saved generators: {sorted(saved)}")
    _set_python_state(state["python"])
    _set_legacy_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    for name, gen in (generators or {}).items():
        _restore(name, gen, saved[name])
