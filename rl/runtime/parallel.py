"""Run independent jobs (the tasks of a meta-batch) serially, in worker processes, or on Ray.

One level of parallelism only: each job runs single-threaded in its worker, and environments
step in-process inside it.

>>> def square(x):
...     return x * x
>>> with TaskPool("serial") as pool:
...     pool.map(square, [(1,), (2,), (3,)])
[1, 4, 9]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BACKENDS", "TaskPool", "default_backend"]

BACKENDS = ("serial", "processes", "ray")


def default_backend() -> str:
    """``"processes"`` when the machine has more than one core, else ``"serial"``."""
    return "processes" if (os.cpu_count() or 1) > 1 else "serial"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class TaskPool:
    """A map over independent jobs, results in order.

    Args:
        backend: ``"serial"``, ``"processes"`` (a pool of spawned processes) or ``"ray"``.
        workers: Worker processes (processes) or CPUs of a local Ray instance (ray).
        ray_address: Join this Ray cluster (``None``: start a local instance).
        max_retries: How often a job whose worker died is run again.
    """

    def __init__(
        self, backend: str = "serial", workers: int = 2, ray_address: str | None = None, max_retries: int = 2
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self.backend = backend
        self.workers = workers
        self.ray_address = ray_address
        self.max_retries = max_retries
        self._executor = None

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        """``[fn(*args) for args in jobs]``, possibly in parallel."""
        if self.backend == "serial" or len(jobs) <= 1 and self.backend != "ray":
            return [fn(*args) for args in jobs]
        if self.backend == "processes":
            return self._map_processes(fn, jobs)
        return self._map_ray(fn, jobs)

    def _map_processes(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        results: dict[int, Any] = {}
        attempts = 0
        while len(results) < len(jobs):
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker
                )
            pending = {i: self._executor.submit(fn, *jobs[i]) for i in range(len(jobs)) if i not in results}
            try:
                for i, fut in pending.items():
                    results[i] = fut.result()
            except BrokenProcessPool:
                attempts += 1
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
                if attempts > self.max_retries:
                    raise RuntimeError(f"a worker process died {attempts} times; giving up") from None
                for i, fut in pending.items():  # keep what finished before the pool broke
                    if i not in results and fut.done() and fut.exception() is None:
                        results[i] = fut.result()
        return [results[i] for i in range(len(jobs))]

    def _map_ray(self, fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        import ray

        if not ray.is_initialized():
            if self.ray_address is None:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.ray_address, log_to_driver=False)
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_ray_call)
        return ray.get([remote.remote(fn, args) for args in jobs])

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _ray_call(fn: Callable[..., Any], args: tuple) -> Any:
    _init_worker()
    return fn(*args)
