"""Adapt a trained run to a task of your choice, evaluate it, and render episodes to GIF.

Command line::

    python -m rl.adapt RUN_DIR                       # first held-out test task, K_test steps
    python -m rl.adapt RUN_DIR --split train --task-index 3 --steps 5 --gif adapted.gif
    python -m rl.adapt RUN_DIR --task-file my_task.json   # a task dict (task.to_dict())

From Python::

    from rl.adapt import load_run, adapt_to_task, render_gif
    trainer = load_run("runs/safenav-button-meta-cpo-seed0-...")
    task = trainer.dist.sample(1, split="test", seed=123)[0]
    rows, params = adapt_to_task(trainer, task, steps=3)
    render_gif(trainer, params[-1], task, "adapted.gif")
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor

from rl.envs import safenav
from rl.envs.hiddennav import HiddenNavTask
from rl.meta_cpo import MetaCPOTrainer
from rl.meta_test import adapt
from rl.runtime import CSVLogger
from rl.seeds import Seed, derive_seed

__all__ = ["adapt_to_task", "load_run", "load_task_file", "main", "render_gif"]


def load_run(run_dir: str | Path) -> MetaCPOTrainer:
    """A trainer holding a run's config and its latest checkpoint (meta-parameters, critics,
    observation normaliser)."""
    return MetaCPOTrainer.from_run(run_dir)


def adapt_to_task(
    trainer: MetaCPOTrainer,
    task: Any,
    steps: int | None = None,
    seed: int = 0,
    batch_steps: int | None = None,
) -> tuple[list[dict[str, Any]], list[Tensor]]:
    """Adapt the run's meta-parameters to ``task`` with ``steps`` CPO steps (default: the run's
    ``adapt_steps``) on batches of ``batch_steps`` env steps (default: the run's
    ``adapt_batch_steps``, else its ``batch_steps``). Returns one evaluation row per step
    (0 = before adaptation) and the parameters ``phi^0 .. phi^steps``."""
    steps = trainer.cfg.adapt_steps if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_steps is not None and int(batch_steps) < 1:
        raise ValueError(f"batch_steps must be >= 1, got {batch_steps}")
    return adapt(
        trainer.setup,
        trainer.theta,
        task,
        steps,
        derive_seed(seed, 0, 0, Seed.ADAPT_TO_TASK),
        trainer.cfg.constrained,
        batch_steps=None if batch_steps is None else int(batch_steps),
    )


def render_gif(
    trainer: MetaCPOTrainer,
    params: Tensor,
    task: Any,
    path: str | Path,
    steps: int | None = None,
    seed: int = 0,
    fps: int = 20,
) -> Path:
    """Roll out the policy's mean action on ``task`` (built-in family) and write a GIF."""
    import imageio.v2 as imageio  # here: with Pillow about 0.7 s of import (measured), only GIFs need it

    env = trainer.setup.make_env(task, seed)
    if type(env).render is gymnasium.Env.render:  # the vector env draws no pictures
        env.close()
        raise ValueError(f"rendering is available for the built-in families, not {trainer.cfg.env!r}")
    policy, norm = trainer.setup.policy, trainer.setup.normalizer
    steps = env.horizon if steps is None else int(steps)
    obs, _ = env.reset(seed=seed)
    frames = [env.render(0)]
    with torch.no_grad():
        for _ in range(steps):
            mean, _ = policy.mean_log_std(params, norm.normalize(obs, dtype=params.dtype))
            obs, _, term, trunc, _ = env.step(mean.numpy().astype(np.float64))
            frames.append(env.render(0))
            if term[0] or trunc[0]:
                break
    env.close()
    path = Path(path)
    imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
    return path


def load_task_file(path: str | Path, env: str) -> Any:
    """The task in a JSON file: a task dict (``to_dict()`` of a ``SafeNavTask`` or ``HiddenNavTask`` for
    the built-in families, read back as that class; other families get the dict).

    Raises:
        ValueError: the file cannot be read, is not JSON, does not hold a JSON object, or not a
            task of ``env``; the message names the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"task file {path}: cannot read it ({type(err).__name__}: {err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"task file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"task file {path} holds a JSON {type(data).__name__}; expected an object (a task dict)"
        )
    task_cls = {"safenav": safenav.SafeNavTask, "hiddennav": HiddenNavTask}.get(env.split("-")[0])
    if task_cls is None:
        return data
    try:
        return task_cls.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"task file {path} is not a task of {env!r}: {err}") from err


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m rl.adapt``; bad arguments, run folders and task files are
    usage errors (exit status 2)."""
    parser = argparse.ArgumentParser(prog="python -m rl.adapt", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder of rl.meta_cpo")
    parser.add_argument(
        "--split", choices=("train", "test"), default="test", help="task split to draw from (default: test)"
    )
    parser.add_argument(
        "--task-index", type=int, default=0, help="which task of the split, from 0 (default: 0)"
    )
    parser.add_argument(
        "--task-seed",
        type=int,
        default=None,
        help="seed of the task draw, >= 0 (default: the seed of the run's meta-test tasks)",
    )
    parser.add_argument(
        "--task-file",
        default=None,
        help="JSON file with a task dict (a task's to_dict()), used instead of --split and "
        "--task-index (default: none)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="adaptation steps, >= 0 (default: the run's adapt_steps)"
    )
    parser.add_argument(
        "--batch-steps",
        type=int,
        default=None,
        help="env steps per adaptation/evaluation batch, >= 1 (default: the run's adapt_batch_steps, "
        "else its batch_steps)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument(
        "--gif", default=None, help="write an episode of the adapted policy to this GIF (default: none)"
    )
    parser.add_argument("--out", default=None, help="write the evaluation rows to this CSV (default: none)")
    args = parser.parse_args(argv)
    for name, value, low in (("steps", args.steps, 0), ("batch-steps", args.batch_steps, 1)):
        if value is not None and value < low:
            parser.error(f"--{name} must be >= {low}, got {value}")
    if args.task_file is None and args.task_index < 0:
        parser.error(f"--task-index must be >= 0, got {args.task_index}")
    if args.task_seed is not None and args.task_seed < 0:
        parser.error(f"--task-seed must be >= 0, got {args.task_seed}")
    if args.gif is not None and not Path(args.gif).resolve().parent.is_dir():
        parser.error(f"--gif {args.gif}: the folder {Path(args.gif).parent} does not exist")
    try:
        trainer = load_run(args.run_dir)
        task = load_task_file(args.task_file, trainer.cfg.env) if args.task_file is not None else None
    except (FileNotFoundError, ValueError) as err:  # not a run folder, an edited one, a bad task file
        parser.error(str(err))
    if task is None:
        seed = (
            derive_seed(trainer.cfg.seed, 0, 0, Seed.TEST_TASKS) if args.task_seed is None else args.task_seed
        )
        task = trainer.dist.sample(args.task_index + 1, split=args.split, seed=seed)[args.task_index]
    rows, params = adapt_to_task(trainer, task, args.steps, args.seed, args.batch_steps)
    print("adapt_step  ep_ret  ep_cost")
    for r in rows:
        print(f"{r['adapt_step']:>10d}  {r['ep_ret']:6.2f}  {r['ep_cost']:7.2f}")
    if args.out:
        with CSVLogger(args.out) as log:
            for r in rows:
                log.log(r)
    if args.gif:
        try:
            path = render_gif(trainer, params[-1], task, args.gif, seed=args.seed)
        except ValueError as err:  # a family that draws no pictures
            parser.error(str(err))
        print(f"gif: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
