"""rl.runtime.parallel: every backend gives the serial results bit for bit, and a job whose
worker dies is run again (processes and Ray) while the run goes on."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

import rl.runtime.parallel as parallel
from rl.runtime.parallel import TaskPool
from tests._configs import tiny_meta_config

# rl.meta_cpo is imported inside the tests that need it: spawned workers import this module to
# find the job functions, and stay light that way.

TOL = 1e-10


def _tiny_cfg(**kw):
    return tiny_meta_config(**{"workers": 2, **kw})


def _trainer(**kw):
    from rl.meta_cpo import MetaCPOTrainer

    return MetaCPOTrainer(_tiny_cfg(**kw))


def _two_steps(trainer) -> tuple[torch.Tensor, list[dict]]:
    """theta and the progress rows after two meta-iterations."""
    try:
        rows = [trainer.step(), trainer.step()]
    finally:
        trainer.close()
    return trainer.theta.clone(), rows


def _assert_same_run(theta, rows, ref_theta, ref_rows) -> None:
    assert theta.dtype == torch.float64
    assert torch.equal(theta, ref_theta)  # bit for bit
    for row, ref in zip(rows, ref_rows, strict=True):
        for key in ("ret_pre", "cost_pre", "ret_post", "cost_post", "kl", "accepted"):
            assert row[key] == pytest.approx(ref[key], rel=1e-9, abs=TOL), key
        assert (row["case"], row["inner_cases"], row["env_steps"]) == (
            ref["case"],
            ref["inner_cases"],
            ref["env_steps"],
        )


@pytest.fixture(scope="module")
def serial_run() -> tuple[torch.Tensor, list[dict]]:
    """The reference: two meta-iterations of the tiny config on the serial backend."""
    theta, rows = _two_steps(_trainer())
    assert not torch.equal(theta, _trainer().theta)  # the meta-steps moved theta
    assert rows[0]["env_steps"] == 1600 and rows[1]["env_steps"] == 3200  # M (K + 1) 400 each
    return theta, rows


# ---------------------------------------------------------------------------- job functions
def _job(seed: int, n: int) -> torch.Tensor:
    """Some float64 work whose result depends on the seed only."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return torch.linalg.solve(a @ a.T + n * torch.eye(n, dtype=torch.float64), a.sum(1))


def _claim(marker: str) -> bool:
    """True for exactly one caller across processes: the one that creates ``marker``."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die_first_time(marker: str, fn, *args):
    """``fn(*args)``, except that the first call (over all workers) SIGKILLs its own process."""
    if _claim(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args)


def _die_once(marker: str, how: str, fn, *args):
    """``fn(*args)``; the first call with this ``marker`` ends its process (``how``: ``"kill"``
    SIGKILL, ``"exit"`` ``os._exit(1)``, ``""`` never)."""
    if how and _claim(marker):
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)
    return fn(*args)


def _dying_jobs(tmp_path: Path) -> list[tuple]:
    """JOBS where job 0 SIGKILLs its worker and job 1 calls ``os._exit(1)``, on first attempt."""
    hows = ["kill", "exit"] + [""] * (len(JOBS) - 2)
    return [(str(tmp_path / f"died{i}"), how, _job, *job) for i, (how, job) in enumerate(zip(hows, JOBS))]


def _raise(x: int) -> int:
    raise ValueError(f"bad job {x}")


def _tensor_kinds() -> list:
    """Tensors of every kind a job sends or returns: small ones that own their storage (sent as
    numpy arrays), views, leaves with gradients, a Parameter, a dtype numpy lacks, a large one."""
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7
    return [
        base,
        base[1],  # a view: its storage is larger than it
        base.T,  # not contiguous
        torch.tensor([1.5, -2.0], dtype=torch.float32, requires_grad=True),
        torch.nn.Parameter(torch.ones(3)),
        torch.arange(5, dtype=torch.int64),
        torch.tensor([True, False]),
        torch.ones(4, dtype=torch.bfloat16),
        torch.tensor(3.25),
        torch.empty(0),
        torch.linspace(0, 1, 40000, dtype=torch.float64),  # 320 KB: shared, not copied
    ]


def _echo_tensors(ts: list) -> list:
    """The tensors back, each with its kind, after a write into the small copy-sent one."""
    ts[0].add_(0.0)  # writable in the worker
    return ts


def _assert_same_tensors(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w) and g.dtype == w.dtype and g.shape == w.shape
        assert g.stride() == w.stride() and g.requires_grad == w.requires_grad
        assert torch.equal(g.detach(), w.detach())
    got[0].add_(1.0)  # what comes back is writable too


def test_processes_send_every_kind_of_tensor_unchanged():
    want = _tensor_kinds()
    with TaskPool("processes", workers=1) as pool:
        _assert_same_tensors(pool.submit(_echo_tensors, _tensor_kinds()).result(), want)
    assert parallel._sent_as_array(want[0]) and not parallel._sent_as_array(want[1])
    assert not parallel._sent_as_array(want[-1])  # above SMALL_TENSOR_BYTES


JOBS = [(seed, 20) for seed in range(5)]


# ---------------------------------------------------------------------------- pool basics
def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'serial', 'processes', 'ray'\]"):
        TaskPool("mpi")
    with pytest.raises(ValueError, match="workers must be a positive int"):
        TaskPool("processes", workers=0)
    with pytest.raises(ValueError, match="max_retries must be an int >= 0"):
        TaskPool("processes", max_retries=-1)
    assert TaskPool("serial").map(_job, []) == []


def test_processes_results_equal_serial_and_survive_a_killed_worker(tmp_path):
    serial = TaskPool("serial").map(_job, JOBS)
    with TaskPool("processes", workers=2, max_retries=2) as pool:
        assert all(torch.equal(a, b) for a, b in zip(pool.map(_job, JOBS), serial, strict=True))
        # one worker SIGKILLed and one that os._exit(1)s in the middle of a map: the pool is
        # rebuilt (once or twice) and the lost jobs run again
        out = pool.map(_die_once, _dying_jobs(tmp_path))
        assert (tmp_path / "died0").exists() and (tmp_path / "died1").exists()
        assert 1 <= pool.restarts <= 2
        assert all(torch.equal(a, b) for a, b in zip(out, serial, strict=True))
        # a worker killed while idle, between two maps: the next map notices and recovers
        for pid in pool.worker_pids():
            os.kill(pid, signal.SIGKILL)
        assert all(torch.equal(a, b) for a, b in zip(pool.map(_job, JOBS), serial, strict=True))
        # an exception raised by a job is not a death: no retry, the caller sees it
        with pytest.raises(ValueError, match="bad job 3"):
            pool.map(_raise, [(3,), (4,)])
        # arguments that cannot be sent fail their job (no worker lost), not the pool
        restarts = pool.restarts
        with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
            pool.map(_job, [(threading.Lock(), 3)])
        assert torch.equal(pool.map(_job, JOBS[:1])[0], serial[0]) and pool.restarts == restarts


def test_processes_give_up_after_max_retries(tmp_path):
    # a job that always kills its worker: no retry allowed, a RuntimeError that says so
    with TaskPool("processes", workers=2, max_retries=0) as pool:
        with pytest.raises(RuntimeError, match=r"died 1 times .*max_retries=0"):
            pool.map(os._exit, [(1,), (1,)])


# ---------------------------------------------------------------------------- the trainer
def test_processes_backend_gives_the_serial_meta_parameters_even_when_a_worker_dies(
    serial_run, tmp_path, monkeypatch
):
    # iteration 0: the worker of the first shard is SIGKILLed, the pool reruns the lost job on a
    # fresh worker (which builds the environments again); iteration 1 runs plainly. Both give
    # the serial numbers.
    marker = str(tmp_path / "died")

    class DyingOncePool(TaskPool):
        """Kills the worker of the first job it runs (a shard of a batch), once."""

        def submit(self, fn, *args, key=None):
            return super().submit(_die_first_time, marker, fn, *args, key=key)

    monkeypatch.setattr(parallel, "TaskPool", DyingOncePool)
    theta, rows = _two_steps(_trainer(backend="processes", workers=2))
    assert Path(marker).exists()
    _assert_same_run(theta, rows, *serial_run)


# ---------------------------------------------------------------------------- Ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_pool():
    """A local Ray instance with 2 CPUs, started by a TaskPool and shut down by its close()."""
    assert not ray.is_initialized()
    pool = TaskPool("ray", workers=2, max_retries=2)
    assert pool.map(_job, JOBS[:1])[0].shape == (20,)
    assert ray.cluster_resources()["CPU"] == 2
    yield pool
    pool.close()
    assert not ray.is_initialized()


@pytest.mark.ray
def test_ray_backend_gives_the_serial_meta_parameters(serial_run):
    # the trainer's pool starts a local instance (its 2 actors hold its 2 CPUs for the run) and
    # shuts it down when it closes
    assert not ray.is_initialized()
    theta, rows = _two_steps(_trainer(backend="ray", workers=2))
    assert not ray.is_initialized()
    _assert_same_run(theta, rows, *serial_run)


@pytest.mark.ray
def test_ray_results_equal_serial_and_survive_a_dead_worker(ray_pool, tmp_path):
    serial = TaskPool("serial").map(_job, JOBS)
    assert all(torch.equal(a, b) for a, b in zip(ray_pool.map(_job, JOBS), serial, strict=True))
    out = ray_pool.map(_die_once, _dying_jobs(tmp_path))
    assert (tmp_path / "died0").exists() and (tmp_path / "died1").exists()
    assert all(torch.equal(a, b) for a, b in zip(out, serial, strict=True))
    with pytest.raises(ValueError, match="bad job 7"):
        ray_pool.map(_raise, [(7,)])
    with pytest.raises(TypeError, match="_thread.lock"):  # arguments Ray cannot serialize
        ray_pool.map(_job, [(threading.Lock(), 3)])
    assert torch.equal(ray_pool.map(_job, JOBS[:1])[0], serial[0])
    _assert_same_tensors(ray_pool.submit(_echo_tensors, _tensor_kinds()).result(), _tensor_kinds())
    # a second pool on the instance: its actors would wait for CPUs the first one holds
    with pytest.raises(ValueError, match=r"2 Ray actors of 1 CPU each, but .* 0 of 2 CPUs free"):
        TaskPool("ray", workers=2).start()


# ---------------------------------------------------------------------------- parent death
_DRIVER = """
import os, sys, time
from rl.runtime.parallel import TaskPool
pool = TaskPool(sys.argv[1], workers=2)
print(*pool.map(os.getpid, [(), (), (), ()]), flush=True)
time.sleep(600)
"""


def _processes_with(marker: str) -> list[int]:
    """Process ids whose environment holds ``marker`` (every descendant of the driver inherits it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _sigkill_driver_and_wait(backend: str, tmp_path: Path, grace: float) -> tuple[list[int], list[int]]:
    """Start a driver with a pool of ``backend``, SIGKILL it once its workers ran a job, and return
    (the workers' pids, the processes of its family still alive ``grace`` seconds later)."""
    import subprocess
    import sys
    import time
    import uuid

    marker = f"TASKPOOL_DEATH_TEST={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    root = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, backend], cwd=root, env=env, stdout=subprocess.PIPE, text=True
    )
    pids = [int(p) for p in driver.stdout.readline().split()]
    assert pids and driver.pid not in pids
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _processes_with(marker):
        time.sleep(0.2)
    return pids, _processes_with(marker)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_process_workers_end_with_a_sigkilled_driver(tmp_path):
    pids, alive = _sigkill_driver_and_wait("processes", tmp_path, grace=5.0)
    assert len(set(pids)) == 2  # two distinct workers ran the jobs
    assert alive == [], f"processes of the killed driver still alive: {alive}"


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_ray_workers_end_with_a_sigkilled_driver(tmp_path):
    pids, alive = _sigkill_driver_and_wait("ray", tmp_path, grace=30.0)
    assert len(pids) == 4
    assert alive == [], f"processes of the killed driver (Ray) still alive: {alive}"


# ---------------------------------------------------------------------------- rl.cpo
def _cpo_run(tmp_path: Path, name: str, **kw) -> tuple[list[dict], torch.Tensor]:
    """Progress rows (timings dropped) and final parameters of a tiny rl.cpo run."""
    import csv

    from rl.cpo import CPOConfig, train
    from rl.runtime import load_latest_checkpoint

    cfg = CPOConfig(
        env="safenav-goal",
        horizon=50,
        steps=600,
        steps_per_iter=200,
        num_envs=4,
        shards=3,
        hidden=(8,),
        critic_hidden=(8,),
        critic_epochs=1,
        progress=False,
        tensorboard=False,
        out=str(tmp_path / name),
        **kw,
    )
    run = train(cfg)
    with open(run / "progress.csv") as f:
        rows = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in csv.DictReader(f)]
    return rows, load_latest_checkpoint(run)[1]["params"]


def test_cpo_gives_the_same_run_on_every_backend_and_worker_count(tmp_path):
    rows, params = _cpo_run(tmp_path, "serial", backend="serial")
    assert len(rows) == 3
    for name, kw in (("p1", {"workers": 1}), ("p2", {"workers": 2})):
        other_rows, other_params = _cpo_run(tmp_path, name, backend="processes", **kw)
        assert other_rows == rows
        assert torch.equal(other_params, params)


def test_fisher_blocks_on_workers_equal_the_serial_product_even_after_a_worker_dies():
    from rl.cpo import fisher_metric
    from rl.policy import GaussianPolicy

    gen = torch.Generator().manual_seed(0)
    pi = GaussianPolicy(5, 2, hidden=(8, 8))
    params = pi.init_params(gen)
    obs = torch.randn(301, 5, generator=gen, dtype=torch.float64)
    vs = [torch.randn(pi.num_params, generator=gen, dtype=torch.float64) for _ in range(3)]
    here = fisher_metric(pi, params, obs, 0.1, parts=3).operator()
    expected = [here(v) for v in vs]
    with TaskPool("processes", workers=2) as pool:
        remote = fisher_metric(pi, params, obs, 0.1, pool=pool, parts=3).operator()
        assert all(torch.equal(remote(v), e) for v, e in zip(vs, expected, strict=True))
        for pid in pool.worker_pids():  # the blocks are lost: the workers are sent their states again
            os.kill(pid, signal.SIGKILL)
        assert all(torch.equal(remote(v), e) for v, e in zip(vs, expected, strict=True))


def test_critics_fitted_on_workers_equal_the_joint_fit_here_bit_for_bit():
    from rl.cpo import fit_critics_on_pool
    from rl.policy import Critic

    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    targets = (
        torch.randn(500, generator=gen, dtype=torch.float64),
        torch.randn(500, 2, generator=gen, dtype=torch.float64),
    )

    def fit(pool):
        g = torch.Generator().manual_seed(1)
        critics = (Critic(6, 1, (16, 16), generator=g), Critic(6, 2, (16, 16), generator=g))
        opts = [torch.optim.Adam(c.parameters(), lr=1e-3) for c in critics]
        losses = fit_critics_on_pool(pool, critics, opts, obs, targets, 2, 64, seed=5)
        fit_critics_on_pool(pool, critics, opts, obs, targets, 1, 64, seed=6)  # optimizer state carried over
        return losses, [p.detach().clone() for c in critics for p in c.parameters()]

    here_losses, here = fit(None)
    with TaskPool("processes", workers=2) as pool:
        losses, there = fit(pool)
    assert losses == here_losses
    assert all(torch.equal(a, b) for a, b in zip(there, here, strict=True))
