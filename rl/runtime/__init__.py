"""Infrastructure shared by the training programs (``python -m rl.cpo``, ``python -m rl.meta_cpo``).

* :mod:`rl.runtime.config`: typed dataclass configs, generated CLI, YAML/JSON files;
* :mod:`rl.runtime.checkpoint`: atomic, verified checkpoints (``weights_only`` loading);
* :mod:`rl.runtime.seeding`: seeding and RNG state capture/restore;
* :mod:`rl.runtime.logging`: run directories, ``progress.csv``, TensorBoard, progress bars;
* :mod:`rl.runtime.plots`: training and adaptation curves (PNG).

A trainer's skeleton::

    cfg = parse_config(Config, argv, exit_on_error=True)
    if cfg.resume:                                   # an existing run directory
        run_dir = Path(cfg.resume)
        path, state = load_latest_checkpoint(run_dir)  # None -> start over
        set_rng_state(state["rng"], {"env": env_rng})
        start = state["iteration"] + 1
        log = RunLogger(run_dir, resume_iteration=state["iteration"])
    else:
        seed_everything(cfg.seed)
        run_dir = make_run_dir("runs", [cfg.env, "cpo", f"seed{cfg.seed}"], out=cfg.out)
        log = RunLogger(run_dir)
        log.write_config(config_to_dict(cfg))
        start = 0
    for it in range(start, cfg.iterations):
        ...
        log.log({"iteration": it, "ep_ret": ..., "ep_cost": ...})
        save_checkpoint(run_dir, {"iteration": it, "policy": policy.state_dict(),
                                  "rng": rng_state({"env": env_rng})}, step=it)
    plot_training(run_dir / "progress.csv", run_dir / "training.png")

Heavy imports (tensorboard, matplotlib, tqdm) happen only when used.
"""

from rl.runtime.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from rl.runtime.config import (
    ConfigError,
    ConfigTypeError,
    build_parser,
    config_to_dict,
    load_config,
    parse_config,
    read_config_file,
)
from rl.runtime.logging import (
    CSVLogger,
    RunLogger,
    make_run_dir,
    progress_bar,
    read_csv,
    truncate_csv,
    write_config,
)
from rl.runtime.plots import ADAPTATION_COLUMNS, adaptation_summary, plot_adaptation, plot_training
from rl.runtime.seeding import RandomGenerator, rng_state, seed_everything, set_rng_state

__all__ = [
    "ADAPTATION_COLUMNS",
    "CSVLogger",
    "ConfigError",
    "ConfigTypeError",
    "RandomGenerator",
    "RunLogger",
    "adaptation_summary",
    "build_parser",
    "checkpoint_step",
    "config_to_dict",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_config",
    "make_run_dir",
    "parse_config",
    "plot_adaptation",
    "plot_training",
    "progress_bar",
    "read_config_file",
    "read_csv",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "truncate_csv",
    "write_config",
]
