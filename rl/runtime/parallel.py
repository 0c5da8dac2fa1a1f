"""Run independent jobs (the tasks of a meta-batch) serially, in worker processes, or on Ray.

One level of parallelism only: each job runs single-threaded in its worker (``torch`` with one
thread), and environments step in-process inside it. Results come back in job order, and a job
computes the same thing wherever it runs, so every backend returns the same results (the
Meta-CPO trainer derives every random stream of a task from ``(seed, iteration, task)``).

Fault tolerance: a job whose worker *dies* (killed, out of memory, ``os._exit``) is run again,
up to ``max_retries`` times; an exception *raised* by the job is a bug or a bad input and
reaches the caller at once, unretried.

* ``serial``: ``[fn(*args) for args in jobs]`` in the calling process.
* ``processes``: a pool of ``workers`` spawned processes (:mod:`concurrent.futures`), kept
  between calls; a dead worker breaks the pool, which is rebuilt, and the jobs not finished
  are submitted again (finished ones are kept).
* ``ray``: one Ray task per job (``num_cpus=1``, ``max_retries`` reruns after a worker's
  death); arguments shared by several jobs (the same object) are put in the object store once.
  Without ``ray_address`` a local instance with ``workers`` CPUs is started (and shut down by
  :meth:`TaskPool.close`), and its workers get the driver's ``sys.path``; with an address the
  pool joins that cluster, whose nodes must have this package installed.

>>> def square(x):
...     return x * x
>>> with TaskPool("serial") as pool:
...     pool.map(square, [(1,), (2,), (3,)])
[1, 4, 9]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BACKENDS", "TaskPool", "default_backend"]

BACKENDS = ("serial", "processes", "ray")


def default_backend() -> str:
    """``"processes"`` when the machine has more than one core, else ``"serial"``."""
    return "processes" if (os.cpu_count() or 1) > 1 else "serial"


def _init_worker() -> None:
    """One torch thread per worker: parallelism comes from the workers, not from BLAS."""
    import torch

    torch.set_num_threads(1)


class TaskPool:
    """A map over independent jobs, results in order.

    Args:
        backend: ``"serial"``, ``"processes"`` (a pool of spawned processes) or ``"ray"``.
        workers: Worker processes (processes) or CPUs of a local Ray instance (ray).
        ray_address: Join this Ray cluster (``"HOST:PORT"`` or ``"auto"``; ``None``: start a
            local instance).
        max_retries: How often a job whose worker died is run again (``>= 0``).

    Raises:
        ValueError: on an unknown backend, ``workers < 1`` or ``max_retries < 0``.
    """

    def __init__(
        self, backend: str = "serial", workers: int = 2, ray_address: str | None = None, max_retries: int = 2
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.backend = backend
        self.workers = workers
        self.ray_address = ray_address
        self.max_retries = max_retries
        self.restarts = 0  # how often a dead worker made a job run again (processes backend)
        self._executor: Any = None
        self._ray_started = False
        self._ray_remote: Any = None

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        """``[fn(*args) for args in jobs]``, possibly in parallel, results in job order.

        ``fn`` must be importable by the workers (a module-level function) for ``processes``
        and picklable (cloudpickle) for ``ray``.

        Raises:
            RuntimeError: if a job's worker died more than ``max_retries`` times.
            Exception: whatever ``fn`` raised (not retried).
        """
        jobs = [tuple(args) for args in jobs]
        if not jobs:
            return []
        if self.backend == "serial" or (len(jobs) == 1 and self.backend == "processes"):
            return [fn(*args) for args in jobs]
        if self.backend == "processes":
            return self._map_processes(fn, jobs)
        return self._map_ray(fn, jobs)

    # ------------------------------------------------------------------ processes
    def _new_executor(self) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)

    def _map_processes(self, fn: Callable[..., Any], jobs: list[tuple]) -> list[Any]:
        from concurrent.futures.process import BrokenProcessPool

        results: dict[int, Any] = {}
        deaths = 0
        while len(results) < len(jobs):
            if self._executor is None:
                self._executor = self._new_executor()
            pending: dict[int, Any] = {}
            try:
                # inside the try: a worker that died between two calls breaks submit() as well
                for i in range(len(jobs)):
                    if i not in results:
                        pending[i] = self._executor.submit(fn, *jobs[i])
                for i, fut in pending.items():
                    results[i] = fut.result()
            except BrokenProcessPool as err:
                deaths += 1
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
                if deaths > self.max_retries:
                    raise RuntimeError(
                        f"a worker process died {deaths} times during one map of {len(jobs)} jobs "
                        f"(max_retries={self.max_retries}); last error: {err}"
                    ) from err
                for i, fut in pending.items():  # keep what finished before the pool broke
                    if i not in results and fut.done() and not fut.cancelled() and fut.exception() is None:
                        results[i] = fut.result()
                self.restarts += 1
                print(
                    f"warning: a worker process died; rerunning {len(jobs) - len(results)} job(s) "
                    f"(retry {deaths} of {self.max_retries})",
                    file=sys.stderr,
                )
        return [results[i] for i in range(len(jobs))]

    # ------------------------------------------------------------------ ray
    def _ensure_ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.ray_address is None:
                path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
                ray.init(
                    num_cpus=self.workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
                )
            else:
                ray.init(address=self.ray_address, log_to_driver=False)
            self._ray_started = True
        if self._ray_remote is None:
            self._ray_remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_ray_call)
        return ray

    def _map_ray(self, fn: Callable[..., Any], jobs: list[tuple]) -> list[Any]:
        ray = self._ensure_ray()
        # an object used by several jobs (the setup, theta) travels to the object store once
        counts: dict[int, int] = {}
        for args in jobs:
            for a in args:
                counts[id(a)] = counts.get(id(a), 0) + 1
        refs: dict[int, Any] = {}
        calls = []
        for args in jobs:
            packed = []
            for a in args:
                if counts[id(a)] > 1 and not isinstance(a, int | float | str | bool | type(None)):
                    if id(a) not in refs:
                        refs[id(a)] = ray.put(a)
                    packed.append(refs[id(a)])
                else:
                    packed.append(a)
            # refs as top-level arguments: Ray resolves them to values in the worker
            calls.append(self._ray_remote.remote(fn, *packed))
        return ray.get(calls)

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the worker processes, or the local Ray instance if this pool started it."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
        self._ray_remote = None


def _ray_call(fn: Callable[..., Any], *args: Any) -> Any:
    _init_worker()
    return fn(*args)
