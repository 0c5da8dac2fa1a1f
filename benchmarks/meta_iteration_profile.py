"""CPU seconds of the parts of a Meta-CPO meta-iteration at the paper comparison's settings.

Builds the trainer of a run of ``benchmarks/specs/paper.toml`` as the sweep starts it (the spec's
settings through ``rl.meta_cpo``'s own ``--config`` parsing, ``--threads 1 --backend serial``), runs
``--iters`` meta-iterations of its training loop (:meth:`rl.meta_cpo.MetaCPOTrainer.train`: the
step, the progress row and the checkpoint of every iteration; no meta-test) and charges the CPU
time of this process (``time.process_time``, which load on the other cores inflates far less than
wall time) to the building block running at the time: timers around functions and methods,
nested, each charged only what its callees' timers did not take (``self``). The first iteration
(world compilation, imports, first allocations) is reported apart; the table gives the median and
the least of the others. Writes ``meta_iteration_profile_<env>.json`` and ``.md``::

    .venv/bin/python -m benchmarks.meta_iteration_profile --env safety-button [--iters 4]
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from benchmarks.sweep import load_spec, plan, program_defaults

#: What each timer stands for (name -> what it measures, its self time). The blocks are wrapped
#: by :func:`timers`; times below a block's own callees' timers are charged to those.
BLOCKS = {
    "iteration": "the rest of MetaCPOTrainer.step (tasks drawn, the progress row built)",
    "task": "the rest of task_meta_gradient: reverse passes (autograd through the inner steps), results",
    "reverse_cg": "conjugate gradient in the reverse passes (difftrust's backward solves)",
    "reverse_fisher": "Fisher products in the reverse passes' solves",
    "inner_direction": "the rest of an inner step: surrogates, their gradients, the layer's other work",
    "half_gradients": "the optimism correction's gradients of the two halves of the batch",
    "cg": "conjugate gradient of the inner steps (less the Fisher products; the optimism's too)",
    "fisher": "Fisher-vector products (double backward) of the inner steps' solves",
    "layer": "difftrust.TrustRegionStep.solve of the inner steps and the meta-step (less CG)",
    "meta_objective": "the validation batch's surrogates (meta_objectives less inner loop and sampling)",
    "sampling": "the rest of a batch: reset seeds, batch checks",
    "segment": "run_segment's own work: policy forward, noise, buffers, log-probabilities",
    "vec_step": "SafetyGymVecEnv.step and its group: our adapter around the sub-environments",
    "sub_step": "_SubEnv.step_into: our per-sub-environment adapter",
    "fast_step": "FastStep.step: our copy of the package's step (observation, lidar, reward, costs)",
    "physics": "FastStep._simulate: MuJoCo mj_step x frameskip and mj_forward, controls",
    "reset": "_SubEnv.reset: the package's world rebuild (XML, YAML, compile) and layout",
    "assemble": "critic values, GAE and episode figures of a batch (rollout.assemble)",
    "meta_update": "the rest of the meta-step: gradients averaged, optimism, line search",
    "meta_cg": "conjugate gradient of the meta-step (less the Fisher products)",
    "meta_fisher": "Fisher-vector products of the meta-step's solves",
    "critics": "the critic fit and the normaliser update",
    "checkpoint": "save_checkpoint (torch.save, fsync, prune)",
    "log": "the progress row written (RunLogger.log)",
}


def paper_config(env: str, out: Path, method: str = "meta-cpo", seed: int = 0) -> Any:
    """The :class:`rl.meta_cpo.MetaCPOConfig` of the paper spec's run ``(env, method, seed)``, as the
    sweep's command line gives it (its config file, ``--threads 1 --backend serial``, no progress
    bar, no TensorBoard)."""
    from rl.meta_cpo import parse_args

    spec = load_spec("paper")
    run = next((r for r in plan(spec) if (r.env, r.method, r.seed) == (env, method, seed)), None)
    if run is None:
        raise ValueError(f"the paper spec has no run of env {env!r}, method {method!r}, seed {seed}")
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config_in.json"
    config.write_text(json.dumps({**program_defaults("rl.meta_cpo"), **run.settings}))
    argv = ["--config", str(config), "--threads", "1", "--backend", "serial"]
    return parse_args([*argv, "--no-progress", "--no-tensorboard", "--out", str(out / "run")])


class Timers:
    """Nested CPU-time timers: each block is charged its own time less its callees' timers."""

    def __init__(self) -> None:
        self.iterations: list[dict[str, float]] = []
        self._stack: list[list[float]] = []  # [start, time charged to callees]
        self.names: list[str] = []  # the blocks running now, outermost first

    @contextmanager
    def block(self, name: str) -> Iterator[None]:
        if name == "iteration":
            self.iterations.append(defaultdict(float))
        frame = [time.process_time(), 0.0]
        self._stack.append(frame)
        self.names.append(name)
        try:
            yield
        finally:
            total = time.process_time() - frame[0]
            self._stack.pop()
            self.names.pop()
            if self.iterations:
                self.iterations[-1][name] += total - frame[1]
            if self._stack:
                self._stack[-1][1] += total

    def wrap(self, fn: Callable[..., Any], name: str | Callable[[], str]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.block(name() if callable(name) else name):
                return fn(*args, **kwargs)

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


@contextmanager
def timers(t: Timers) -> Iterator[None]:
    """Wrap the building blocks of a meta-iteration (``BLOCKS``) with ``t``'s timers."""
    import difftrust.layer as layer_mod
    import rl.cpo_step as cpo_step
    import rl.meta_cpo as meta_cpo
    import rl.meta_update as meta_update
    import rl.rollout as rollout
    from difftrust import TrustRegionStep
    from rl.envs import safety_gym, safety_gym_fast
    from rl.runtime import RunLogger

    reversing = [False]

    def where() -> str:
        return "meta_" if "meta_update" in t.names else "reverse_" if reversing[0] else ""

    def cg_name() -> str:
        return where() + "cg"

    def fisher_name() -> str:
        return where() + "fisher"

    def timed_cg(fn: Callable[..., Any]) -> Callable[..., Any]:
        def cg(matvec: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return t.wrap(fn, cg_name)(t.wrap(matvec, fisher_name), *args, **kwargs)

        return cg

    def timed_task(fn: Callable[..., Any]) -> Callable[..., Any]:
        def task(*args: Any, **kwargs: Any) -> Any:
            objectives = meta_update.meta_objectives

            def meta_objectives(*args: Any, **kwargs: Any) -> Any:
                out = objectives(*args, **kwargs)
                reversing[0] = True  # what follows in the task is its reverse passes
                return out

            meta_update.meta_objectives = meta_objectives
            try:
                return t.wrap(fn, "task")(*args, **kwargs)
            finally:
                reversing[0] = False
                meta_update.meta_objectives = objectives

        return task

    patches: list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (meta_cpo.MetaCPOTrainer, "step", lambda f: t.wrap(f, "iteration")),
        (meta_cpo.MetaCPOTrainer, "_fit_critics_and_normalizer", lambda f: t.wrap(f, "critics")),
        (meta_cpo, "save_checkpoint", lambda f: t.wrap(f, "checkpoint")),
        (RunLogger, "log", lambda f: t.wrap(f, "log")),
        (meta_cpo, "meta_update", lambda f: t.wrap(f, "meta_update")),
        (meta_update, "task_meta_gradient", timed_task),
        (meta_cpo, "task_meta_gradient", timed_task),
        (meta_update, "meta_objectives", lambda f: t.wrap(f, "meta_objective")),
        (meta_update, "inner_direction", lambda f: t.wrap(f, "inner_direction")),
        (cpo_step, "half_gradients", lambda f: t.wrap(f, "half_gradients")),
        (TrustRegionStep, "solve", lambda f: t.wrap(f, "layer")),
        (layer_mod, "conjugate_gradient", timed_cg),
        (cpo_step, "conjugate_gradient", timed_cg),
        (meta_update.Setup, "collect_sharded", lambda f: t.wrap(f, "sampling")),
        (rollout, "run_segment", lambda f: t.wrap(f, "segment")),
        (rollout, "assemble", lambda f: t.wrap(f, "assemble")),
        (safety_gym.SafetyGymVecEnv, "step", lambda f: t.wrap(f, "vec_step")),
        (safety_gym._SubEnv, "step_into", lambda f: t.wrap(f, "sub_step")),
        (safety_gym._SubEnv, "reset", lambda f: t.wrap(f, "reset")),
        (safety_gym_fast.FastStep, "step", lambda f: t.wrap(f, "fast_step")),
        (safety_gym_fast.FastStep, "_simulate", lambda f: t.wrap(f, "physics")),
    ]
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, make in patches:
            setattr(owner, name, make(getattr(owner, name)))
        yield
    finally:
        for owner, name, fn in reversed(originals):
            setattr(owner, name, fn)


def profile(env: str, iters: int, out: Path) -> dict[str, Any]:
    """``iters`` meta-iterations of a fresh trainer of the paper run on ``env``, timed by block."""
    from rl.meta_cpo import prepare

    cfg = paper_config(env, out)
    t = Timers()
    trainer = prepare(replace_iterations(cfg, iters))
    trainer.meta_test = lambda: None  # type: ignore[method-assign]
    trainer.plot = lambda: None  # type: ignore[method-assign]
    wall = time.perf_counter()
    cpu = time.process_time()
    load_before = os.getloadavg()[0]
    with timers(t):
        trainer.train()
    with open(trainer.run_dir / "progress.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    return {
        "env": env,
        "iterations": [dict(it) for it in t.iterations],
        # what the run computed, to compare runs of two versions of the code bit for bit
        "progress_rows": rows,
        "state_sha256": state_digests(trainer.state_dict()),
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def state_digests(state: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of every tensor and number of each part of a trainer's state (its parameters,
    critics, optimizers and normaliser), in a fixed order."""

    def leaves(value: Any) -> Iterator[bytes]:
        if isinstance(value, torch.Tensor):
            yield value.detach().cpu().contiguous().numpy().tobytes()
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                yield str(key).encode()
                yield from leaves(value[key])
        elif isinstance(value, list | tuple):
            for item in value:
                yield from leaves(item)
        else:
            yield repr(value).encode()

    parts = ("theta", "reward_critic", "cost_critic", "opt_r", "opt_c", "normalizer")
    return {k: hashlib.sha256(b"".join(leaves(state[k]))).hexdigest() for k in parts}


def replace_iterations(cfg: Any, iters: int) -> Any:
    from dataclasses import replace

    return replace(cfg, iterations=iters)


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per block: the first iteration, then the median and least of the others."""
    its = result["iterations"]
    later = its[1:] or its
    totals = [sum(it.values()) for it in later]
    rows = []
    for name, what in BLOCKS.items():
        values = [it.get(name, 0.0) for it in later]
        med = statistics.median(values)
        rows.append(
            {
                "block": name,
                "first_s": its[0].get(name, 0.0),
                "median_s": med,
                "least_s": min(values),
                "share": f"{med / statistics.median(totals):.1%}",
                "what": what,
            }
        )
    rows.append(
        {
            "block": "**total**",
            "first_s": sum(its[0].values()),
            "median_s": statistics.median(totals),
            "least_s": min(totals),
            "share": "100%",
            "what": "CPU seconds of a meta-iteration with its progress row and checkpoint",
        }
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__, common.RESULTS)
    p.add_argument("--env", default="safety-button", choices=("safety-button", "safety-circle"))
    p.add_argument("--iters", type=int, default=4, help="meta-iterations (the first is reported apart)")
    args = common.parse(p, argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = profile(args.env, args.iters, Path(tmp))
    rows = summary(result)
    report = {"benchmark": "meta_iteration_profile", **result, "blocks": rows}
    report |= common.machine(torch=torch.__version__)
    title = (
        f"Meta-CPO meta-iteration at the paper settings ({args.env}, M 3, K 3, 4,000-step batches "
        "of 4 x 500, policy (24, 12), critics (128, 128), fisher_states 2000, one shard, serial): "
        "CPU seconds by block"
    )
    note = (
        f"{args.iters} meta-iterations of one fresh trainer, one process, one thread; "
        f"{result['cpu_s']:.1f} s CPU, {result['wall_s']:.1f} s wall; load average "
        f"{result['load_before']:.1f} before, {result['load_after']:.1f} after."
    )
    common.write_results(
        args.out / f"meta_iteration_profile_{args.env}", title, report, [note, common.table("Blocks", rows)]
    )
    return report


if __name__ == "__main__":
    main()
