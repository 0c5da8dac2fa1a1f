"""Run independent jobs serially, in persistent worker processes, or on persistent Ray actors.

A :class:`TaskPool` keeps ``workers`` long-lived workers (spawned processes, or Ray actors with
one CPU each). A worker keeps whatever a job stores in :func:`worker_state` (the rollout code
keeps its environments there, so they are built once and reused until the task changes), and a
job submitted with a ``key`` goes preferably to the worker that last ran a job with that key
(the one that already holds its environments). Jobs are queued centrally and handed to whichever
worker is free, so ``M`` tasks split into shards keep ``W`` workers busy whether or not ``W``
divides ``M``.

Every job computes the same thing wherever it runs (each runs single-threaded, ``torch`` with one
thread; every random stream is derived from its arguments), and results are returned per job, so
every backend and every number of workers gives the same results, bit for bit.

Fault tolerance: a job whose worker *dies* (killed, out of memory, ``os._exit``) is run again on
a fresh worker, up to ``max_retries`` times; an exception *raised* by the job is a bug or a bad
input and reaches the caller at once, unretried.

Workers end with their parent: a worker process exits when its driver dies, even by SIGKILL (a
``PR_SET_PDEATHSIG`` request on Linux, and a watchdog thread that polls the parent process id
everywhere); a local Ray instance started by the pool shares the driver's fate the same way (Ray
starts its node processes with ``fate_share``).

* ``serial``: jobs run in the calling thread, at :meth:`TaskPool.submit`.
* ``processes``: ``workers`` spawned processes, each connected by a pipe.
* ``ray``: ``workers`` Ray actors (``num_cpus=1``). Without ``ray_address`` a local instance
  with ``workers`` CPUs is started (and shut down by :meth:`TaskPool.close`), and its workers get
  the driver's ``sys.path``; with an address the pool joins that cluster, whose nodes must have
  this package installed.

Both parallel backends run the same dispatcher thread in the driver (:meth:`TaskPool._dispatch`):
it hands queued jobs to free workers, delivers their results and replaces a worker that died;
only starting, reaching and replacing a worker differ (``_ProcessSlots``, ``_RaySlots``).

>>> def square(x):
...     return x * x
>>> with TaskPool("serial") as pool:
...     pool.map(square, [(1,), (2,), (3,)])
[1, 4, 9]
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

__all__ = [
    "BACKENDS",
    "TaskPool",
    "available_cores",
    "default_backend",
    "resolve_parallelism",
    "worker_state",
]

BACKENDS = ("serial", "processes", "ray")

_WORKER_STATE: dict[Hashable, Any] = {}


def worker_state() -> dict[Hashable, Any]:
    """The calling process's per-worker store: kept between the jobs a worker runs (the driver
    has one too, used by the serial backend)."""
    return _WORKER_STATE


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_backend() -> str:
    """``"processes"`` when the machine has more than one core, else ``"serial"``."""
    return "processes" if available_cores() > 1 else "serial"


def resolve_parallelism(backend: str, workers: int | None) -> tuple[str, int]:
    """The concrete ``(backend, workers)`` for ``backend`` (``"auto"`` allowed) and ``workers``
    (``None``: one per core).

    ``"auto"`` is ``processes`` with one worker per core when there is more than one core
    (sampling, split in shards, keeps them all busy), else ``serial``.

    Raises:
        ValueError: on an unknown backend or ``workers < 1``.
    """
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {backend!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int or None (one per core), got {workers!r}")
    cores = available_cores()
    if backend == "auto":
        backend = default_backend()
    if workers is None:
        workers = 1 if backend == "serial" else cores
    return backend, workers


def _init_worker() -> None:
    """One torch thread per worker: parallelism comes from the workers, not from BLAS."""
    torch.set_num_threads(1)


def _register_ray_tensor_serializer() -> None:
    """Ray pickles a tensor through ``torch.save``; a tensor that owns its storage goes as its numpy
    array instead, which Ray's serializer sends without a copy (a Fisher-vector product's 64 KB
    vector there and back: see ``docs/scaling.md``). In the driver and in every actor."""
    import ray.util

    ray.util.register_serializer(torch.Tensor, serializer=_tensor_out, deserializer=_tensor_in)


def _tensor_out(t: Any) -> tuple[bool, Any]:
    if _sent_as_array(t, limit=None):
        return True, t.numpy()
    buf = io.BytesIO()
    torch.save(t, buf)
    return False, buf.getvalue()


def _tensor_in(payload: tuple[bool, Any]) -> Any:
    as_array, data = payload
    if as_array:
        return torch.from_numpy(data if data.flags.writeable else data.copy())
    return torch.load(io.BytesIO(data), weights_only=False)


def _die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` is no longer its parent (the driver died)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # died before the request above was made
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _descendants(root: int) -> dict[int, str]:
    """``{pid: start time}`` of every live descendant of ``root`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        starts[int(entry)] = fields[19]
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in found and pid in starts:
            found[pid] = starts[pid]
            stack.extend(children.get(pid, []))
    return found


def _reaper_main(driver_pid: int) -> None:
    """Watch the driver's descendants; when the driver dies, SIGKILL those still alive.

    Ray's node processes mostly share the fate of the process that started them, but not all
    of them (its agents check their parent only with optional dependencies installed): this
    process, started next to a local Ray instance, makes sure nothing outlives the driver."""
    import signal

    me = os.getpid()
    known: dict[int, str] = {}
    while os.getppid() == driver_pid:
        known.update({pid: start for pid, start in _descendants(driver_pid).items() if pid != me})
        time.sleep(0.5)
    for pid, start in known.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                alive_start = f.read().rsplit(")", 1)[1].split()[19]
        except OSError:
            continue
        if alive_start == start:  # the same process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _worker_main(conn: Any, parent_pid: int) -> None:
    """A worker process: run ``(job_id, fn, args)`` messages until ``None`` or the pipe closes."""
    _die_with_parent(parent_pid)
    _init_worker()
    while True:
        try:
            msg = _recv(conn)
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if msg is None:
            break
        job_id, fn, args = msg
        try:
            reply = (job_id, True, fn(*args))
        except BaseException as err:  # noqa: BLE001 - reported to the driver, which re-raises it
            reply = (job_id, False, _picklable_error(err))
        try:
            _send(conn, reply)
        except (BrokenPipeError, OSError):
            break
    for value in _WORKER_STATE.values():
        close = getattr(value, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
    os._exit(0)


#: dtypes a tensor may have to travel as its numpy array (those ``torch.from_numpy`` takes back).
_NUMPY_DTYPES = frozenset(
    {
        torch.float64,
        torch.float32,
        torch.float16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)


class _Pickler(ForkingPickler):
    """multiprocessing's pickler, except for small tensors: a tensor of at most
    :data:`SMALL_TENSOR_BYTES` that owns its whole storage (CPU, dense, contiguous, not a view, no
    gradient) travels as its numpy array, in one copy of its bytes. ``Connection.send``'s pickler
    moves every tensor's storage into shared memory and passes its file descriptor over a socket,
    about half a millisecond a tensor each way: cheaper than the copy for a megabyte, several times
    dearer for a Fisher-vector product's 64 KB vector, of which ``rl.cpo`` sends about 190 per
    update (``benchmarks.meta_iteration.job_overhead``)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and _sent_as_array(obj):
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


#: The largest tensor that :class:`_Pickler` copies instead of sharing (measured crossover).
SMALL_TENSOR_BYTES = 256 * 1024


def _sent_as_array(t: Any, limit: int | None = SMALL_TENSOR_BYTES) -> bool:
    """Whether ``t`` owns its whole storage (CPU, dense, contiguous, no gradient, not a view) in a
    dtype numpy has, of at most ``limit`` bytes."""
    return (
        t.device.type == "cpu"
        and t.layout == torch.strided
        and not t.requires_grad
        and t._base is None
        and t.storage_offset() == 0
        and t.is_contiguous()
        and t.dtype in _NUMPY_DTYPES
        and t.numel() > 0  # an empty array may come back with other strides
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        and (limit is None or t.numel() * t.element_size() <= limit)
    )


def _send(conn: Any, obj: Any) -> None:
    """``obj`` through a pipe, pickled by :class:`_Pickler`."""
    buf = io.BytesIO()
    _Pickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    conn.send_bytes(buf.getbuffer())


def _recv(conn: Any) -> Any:
    """What :func:`_send` sent."""
    return pickle.loads(conn.recv_bytes())


def _picklable_error(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        return RuntimeError(f"a job raised an exception that cannot be pickled:\n{text}")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    key: Hashable | None
    future: Future
    deaths: int = 0
    index: int = field(default=0)


class TaskPool:
    """Persistent workers that run jobs; :meth:`map` returns results in job order.

    Args:
        backend: ``"serial"``, ``"processes"``, ``"ray"`` or ``"auto"`` (see
            :func:`resolve_parallelism`).
        workers: Worker processes (processes), actors and CPUs of a local instance (ray);
            ``None``: one per core.
        ray_address: Join this Ray cluster (``"HOST:PORT"`` or ``"auto"``; ``None``: start a
            local instance).
        max_retries: How often a job whose worker died is run again (``>= 0``).

    Raises:
        ValueError: on an unknown backend, ``workers < 1`` or ``max_retries < 0``.
    """

    def __init__(
        self,
        backend: str = "serial",
        workers: int | None = 2,
        ray_address: str | None = None,
        max_retries: int = 2,
    ):
        backend, workers = resolve_parallelism(backend, workers)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.backend = backend
        self.workers = workers
        self.ray_address = ray_address
        self.max_retries = max_retries
        self.restarts = 0  # how often a dead worker made a job run again
        self._lock = threading.Lock()
        self._queue: collections.deque[_Job] = collections.deque()
        self._affinity: dict[Hashable, int] = {}
        self._dispatcher: threading.Thread | None = None
        self._closing = False
        self._wake_r: Any = None
        self._wake_w: Any = None
        self._slots: _ProcessSlots | _RaySlots | None = None  # the workers (see _dispatch)
        self._running: list[_Job | None] = []
        self._ray_started = False
        self._ray_actor_cls: Any = None
        self._reaper: Any = None  # watches a local Ray instance's processes (see _reaper_main)

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def parallel(self) -> bool:
        """Whether jobs run outside the calling thread."""
        return self.backend != "serial"

    # ------------------------------------------------------------------ public API
    def start(self) -> TaskPool:
        """Start the workers now (otherwise: at the first :meth:`submit`). Call it from a thread that
        lives as long as the pool, normally the main one: a local Ray instance's processes share
        the fate of the thread that started them, and end with it."""
        if self.backend == "serial":
            return self
        with self._lock:
            if self.backend == "ray":
                self._ensure_ray()
            self._ensure_dispatcher()
        return self

    def submit(self, fn: Callable[..., Any], *args: Any, key: Hashable | None = None) -> Future:
        """Run ``fn(*args)`` on a worker; ``key`` prefers the worker that last ran that key.

        ``fn`` must be importable by the workers (a module-level function). Thread-safe.
        """
        fut: Future = Future()
        if self.backend == "serial":
            try:
                fut.set_result(fn(*args))
            except Exception as err:  # noqa: BLE001 - the caller sees it through the future
                fut.set_exception(err)
            return fut
        with self._lock:
            if self._closing:
                raise RuntimeError("the pool is closed")
            if self.backend == "ray":
                self._ensure_ray()  # in the caller's thread (usually the main one)
            self._queue.append(_Job(fn, tuple(args), key, fut))
            self._ensure_dispatcher()
        self._wake()
        return fut

    def map(
        self, fn: Callable[..., Any], jobs: Sequence[tuple], keys: Sequence[Hashable] | None = None
    ) -> list[Any]:
        """``[fn(*args) for args in jobs]``, possibly in parallel, results in job order.

        Raises:
            RuntimeError: if a job's worker died more than ``max_retries`` times.
            Exception: whatever ``fn`` raised (not retried).
        """
        jobs = [tuple(args) for args in jobs]
        keys = [None] * len(jobs) if keys is None else list(keys)
        futures = [self.submit(fn, *args, key=k) for args, k in zip(jobs, keys, strict=True)]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the workers, or the local Ray instance if this pool started it."""
        with self._lock:
            self._closing = True
            dispatcher = self._dispatcher
        if dispatcher is not None:
            self._wake()
            dispatcher.join()
        for job in list(self._queue):
            if not job.future.done():
                job.future.set_exception(RuntimeError("the pool was closed before the job ran"))
        self._queue.clear()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        self._running = []
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.join()
            self._reaper = None
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()
        self._wake_r = self._wake_w = None
        self._dispatcher = None
        self._closing = False

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes (processes backend; tests and diagnostics)."""
        slots = self._slots
        return slots.pids() if slots is not None else []

    # ------------------------------------------------------------------ dispatching
    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is not None:
            return
        import multiprocessing as mp

        self._wake_r, self._wake_w = mp.Pipe(duplex=False)
        self._dispatcher = threading.Thread(target=self._dispatch, name="taskpool-dispatcher", daemon=True)
        self._dispatcher.start()

    def _wake(self) -> None:
        with self._lock:
            w = self._wake_w
        if w is not None:
            try:
                w.send_bytes(b"x")
            except (BrokenPipeError, OSError):
                pass

    def _next_job_for(self, slot: int) -> _Job | None:
        """The first queued job whose key lives on ``slot``; else the first without a home;
        else the first (its environments get built here)."""
        with self._lock:
            if not self._queue:
                return None
            chosen = None
            for job in self._queue:
                home = self._affinity.get(job.key) if job.key is not None else None
                if home == slot:
                    chosen = job
                    break
                if chosen is None and home is None:
                    chosen = job
            if chosen is None:
                chosen = self._queue[0]
            self._queue.remove(chosen)
            if chosen.key is not None:
                self._affinity[chosen.key] = slot
            return chosen

    def _lost(self, job: _Job, why: str) -> None:
        """``job``'s worker died: queue it again, or fail it after ``max_retries`` deaths."""
        job.deaths += 1
        if job.deaths > self.max_retries:
            job.future.set_exception(
                RuntimeError(
                    f"a worker died {job.deaths} times running one job (max_retries={self.max_retries}); "
                    f"last: {why}"
                )
            )
            return
        self.restarts += 1
        print(
            f"warning: a worker died ({why}); rerunning its job (retry {job.deaths} of {self.max_retries})",
            file=sys.stderr,
        )
        with self._lock:
            self._queue.appendleft(job)

    def _dispatch(self) -> None:
        """The dispatcher thread, one loop for every parallel backend: hand queued jobs to free
        workers, deliver their outcomes, replace a worker that died and queue its job again.

        The workers are started here (and replaced here), so they live as long as this thread."""
        if self.backend == "processes":
            self._slots = _ProcessSlots(self.workers)
        else:
            self._slots = _RaySlots(self._ray_actor_cls, self.workers)
        self._running = [None] * self.workers
        while True:
            with self._lock:
                if self._closing:
                    break
            for slot in range(self.workers):
                if self._running[slot] is None:
                    job = self._next_job_for(slot)
                    if job is None:
                        break
                    self._running[slot] = job
                    try:
                        self._slots.send(slot, job)
                    except _WorkerDied as died:
                        self._replace(slot, str(died))
                    except Exception as err:  # noqa: BLE001 - unpicklable arguments: the caller's error
                        self._running[slot] = None
                        job.future.set_exception(err)
            for slot, outcome, value in self._slots.wait(self._wake_r):
                if outcome == "died":
                    self._replace(slot, value)
                    continue
                job = self._running[slot]
                self._running[slot] = None
                if job is not None:
                    (job.future.set_result if outcome == "returned" else job.future.set_exception)(value)

    def _replace(self, slot: int, why: str) -> None:
        """The worker of ``slot`` died: a fresh one takes its place, its job is queued again."""
        why = self._slots.replace(slot, why)
        job = self._running[slot]
        self._running[slot] = None
        with self._lock:  # the environments built there are gone
            for key in [k for k, s in self._affinity.items() if s == slot]:
                del self._affinity[key]
        if job is not None:
            self._lost(job, why)

    # ray ---------------------------------------------------------------------------
    def _ensure_ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.ray_address is None:
                if sys.platform.startswith("linux") and self._reaper is None:
                    import multiprocessing as mp

                    ctx = mp.get_context("spawn")
                    self._reaper = ctx.Process(target=_reaper_main, args=(os.getpid(),), daemon=True)
                    self._reaper.start()
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
        if self._ray_actor_cls is None:
            free = int(ray.available_resources().get("CPU", 0))
            if free < self.workers:
                total = int(ray.cluster_resources().get("CPU", 0))
                raise ValueError(
                    f"workers={self.workers} needs {self.workers} Ray actors of 1 CPU each, but the "
                    f"instance has {free} of {total} CPUs free (its actors would wait for ever); "
                    "expected workers <= the free CPUs"
                )
            self._ray_actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_RayWorker)
            _register_ray_tensor_serializer()
        return ray


class _WorkerDied(Exception):
    """A worker could not be reached (its pipe broke)."""


def _drain(conn: Any) -> None:
    while conn.poll():
        conn.recv_bytes()


class _ProcessSlots:
    """The workers of the processes backend: one spawned process per slot, each connected by a
    pipe. :meth:`wait` reports ``(slot, outcome, value)`` events: ``"returned"`` with the job's
    result, ``"raised"`` with its exception, ``"died"`` with what happened."""

    def __init__(self, count: int) -> None:
        self.procs = [self._start() for _ in range(count)]

    @staticmethod
    def _start() -> tuple[Any, Any]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def send(self, slot: int, job: _Job) -> None:
        try:
            _send(self.procs[slot][1], (id(job), job.fn, job.args))
        except (BrokenPipeError, EOFError, OSError) as err:
            raise _WorkerDied("its pipe broke") from err

    def wait(self, wake: Any) -> list[tuple[int, str, Any]]:
        from multiprocessing.connection import wait

        conns = {conn: slot for slot, (_, conn) in enumerate(self.procs)}
        sentinels = {proc.sentinel: slot for slot, (proc, _) in enumerate(self.procs)}
        events: list[tuple[int, str, Any]] = []
        dead: set[int] = set()
        for obj in wait([wake, *conns, *sentinels], timeout=1.0):
            if obj is wake:
                _drain(wake)
            elif obj in conns:
                try:
                    _job_id, ok, value = _recv(obj)
                except (EOFError, OSError):
                    dead.add(conns[obj])
                    continue
                events.append((conns[obj], "returned" if ok else "raised", value))
            elif not conns_has_data(self.procs[sentinels[obj]][1]):
                dead.add(sentinels[obj])
        return events + [(slot, "died", "its process ended") for slot in dead]

    def replace(self, slot: int, why: str) -> str:
        proc, conn = self.procs[slot]
        if proc.is_alive():
            proc.kill()
        proc.join()
        conn.close()
        self.procs[slot] = self._start()
        return f"{why}, exit code {proc.exitcode}"

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs if proc.is_alive()]

    def close(self) -> None:
        for _proc, conn in self.procs:
            try:
                _send(conn, None)
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.procs = []


class _RaySlots:
    """The workers of the Ray backend: one actor per slot; events as :class:`_ProcessSlots`'s."""

    def __init__(self, actor_cls: Any, count: int) -> None:
        self.actor_cls = actor_cls
        self.actors = [actor_cls.remote() for _ in range(count)]
        self.refs: dict[Any, int] = {}

    def send(self, slot: int, job: _Job) -> None:
        self.refs[self.actors[slot].run.remote(job.fn, job.args)] = slot

    def wait(self, wake: Any) -> list[tuple[int, str, Any]]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if not self.refs:
            wake.poll(0.5)
            _drain(wake)
            return []
        done, _ = ray.wait(list(self.refs), num_returns=1, timeout=0.05)
        _drain(wake)
        events: list[tuple[int, str, Any]] = []
        for ref in done:
            slot = self.refs.pop(ref)
            try:
                events.append((slot, "returned", ray.get(ref)))
            except RayTaskError as err:  # the job raised: the caller sees its exception
                events.append((slot, "raised", err.as_instanceof_cause()))
            except RayActorError as err:  # the actor's process died: a fresh actor, rerun
                events.append((slot, "died", f"Ray actor died: {type(err).__name__}"))
            except Exception as err:  # noqa: BLE001
                events.append((slot, "raised", err))
        return events

    def replace(self, slot: int, why: str) -> str:
        self.actors[slot] = self.actor_cls.remote()
        return why

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def conns_has_data(conn: Any) -> bool:
    """Whether a result is waiting in ``conn`` (a worker that ended after replying)."""
    try:
        return bool(conn.poll())
    except (OSError, EOFError):
        return False


class _RayWorker:
    """A Ray actor that runs jobs and keeps :func:`worker_state` between them."""

    def __init__(self) -> None:
        _init_worker()
        _register_ray_tensor_serializer()

    def run(self, fn: Callable[..., Any], args: tuple) -> Any:
        return fn(*args)

    def pid(self) -> int:
        return os.getpid()
