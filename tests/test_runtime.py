"""Tests for rl.runtime: config/CLI, checkpoints, RNG state, logging, plots."""

from __future__ import annotations

import csv
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.runtime import (
    ConfigError,
    ConfigTypeError,
    CSVLogger,
    RunLogger,
    adaptation_summary,
    build_parser,
    checkpoint_step,
    config_to_dict,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_config,
    load_latest_checkpoint,
    make_run_dir,
    parse_config,
    plot_adaptation,
    plot_training,
    progress_bar,
    read_csv,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    truncate_csv,
    write_config,
)

# ----------------------------------------------------------------------------- config


@dataclass
class SampleConfig:
    """Sample trainer config."""

    env: Literal["safenav-goal", "safenav-button"] = field(
        default="safenav-goal", metadata={"help": "task family"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    lr: float = field(default=3e-4, metadata={"help": "critic learning rate"})
    cost_limit: float | tuple[float, ...] = field(
        default=25.0, metadata={"help": "per-episode cost limit(s), one per constraint"}
    )
    hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "policy hidden sizes"})
    delta: float = field(default=0.01, metadata={"help": "trust-region size (KL)"})
    inner_steps: int = field(default=3, metadata={"help": "K, local steps per task"})
    first_order: bool = field(default=False, metadata={"help": "first-order meta-gradient"})
    render: bool = field(default=True, metadata={"help": "render the last episode"})
    max_iters: int | None = field(default=None, metadata={"help": "stop after this many iterations"})
    out: Path | None = field(default=None, metadata={"help": "run directory"})

    def validate(self) -> None:
        limits = self.cost_limit if isinstance(self.cost_limit, tuple) else (self.cost_limit,)
        if any(c < 0 for c in limits):
            raise ValueError(f"cost_limit must be >= 0, got {self.cost_limit}")
        if self.delta <= 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps (K) must be >= 1, got {self.inner_steps}")


def test_help_lists_every_field_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(SampleConfig, ["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    for flag, help_text in [
        ("--env {safenav-goal,safenav-button}", "task family"),
        ("--seed INT", "random seed"),
        ("--lr FLOAT", "critic learning rate"),
        ("--cost-limit FLOAT [FLOAT ...]", "per-episode cost limit(s), one per constraint"),
        ("--hidden INT [INT ...]", "policy hidden sizes"),
        ("--delta FLOAT", "trust-region size (KL)"),
        ("--inner-steps INT", "K, local steps per task"),
        ("--first-order, --no-first-order", "first-order meta-gradient"),
        ("--render, --no-render", "render the last episode"),
        ("--max-iters INT", "stop after this many iterations"),
        ("--out PATH", "run directory"),
        ("--config FILE", "YAML or JSON"),
    ]:
        assert flag in text, flag
        assert help_text in text, help_text
    assert "Sample trainer config." in text
    assert "(default: 64 64)" in text


def test_defaults_and_overrides() -> None:
    assert parse_config(SampleConfig, []) == SampleConfig()
    cfg = parse_config(
        SampleConfig,
        ["--env", "safenav-button", "--seed", "7", "--lr", "1e-3", "--inner-steps", "5", "--out", "r/x"],
    )
    assert cfg.env == "safenav-button"
    assert cfg.seed == 7 and isinstance(cfg.seed, int)
    assert cfg.lr == 1e-3
    assert cfg.inner_steps == 5
    assert cfg.out == Path("r/x")
    assert cfg.delta == 0.01  # untouched


def test_tuple_and_union_arguments() -> None:
    assert parse_config(SampleConfig, ["--cost-limit", "25"]).cost_limit == 25.0
    assert parse_config(SampleConfig, ["--cost-limit", "10", "5"]).cost_limit == (10.0, 5.0)
    assert parse_config(SampleConfig, ["--hidden", "32", "16", "8"]).hidden == (32, 16, 8)
    assert parse_config(SampleConfig, ["--hidden", "128"]).hidden == (128,)
    with pytest.raises(SystemExit):
        parse_config(SampleConfig, ["--hidden", "64", "x"])


def test_bool_flags_and_optional() -> None:
    cfg = parse_config(SampleConfig, ["--first-order", "--no-render", "--max-iters", "12"])
    assert cfg.first_order is True and cfg.render is False and cfg.max_iters == 12
    assert parse_config(SampleConfig, ["--max-iters", "none"]).max_iters is None


def test_bad_command_line_values_exit() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(SampleConfig, ["--env", "mujoco"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parse_config(SampleConfig, ["--seed", "1.5"])
    with pytest.raises(SystemExit):
        parse_config(SampleConfig, ["--no-such-option", "1"])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_with_cli_overrides_on_top(tmp_path: Path, suffix: str) -> None:
    data = {"seed": 3, "lr": 0.002, "cost_limit": [10, 5], "hidden": [32, 32], "render": False}
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(
            "seed: 3\nlr: 2e-3\ncost_limit: [10, 5]\nhidden: [32, 32]\nrender: false\n"
        )  # PyYAML reads 2e-3 as a string: accepted for a float field
    cfg = parse_config(SampleConfig, ["--config", str(path)])
    assert (cfg.seed, cfg.lr, cfg.cost_limit, cfg.hidden, cfg.render) == (
        3,
        0.002,
        (10.0, 5.0),
        (32, 32),
        False,
    )
    # Only options given on the command line override the file.
    cfg = parse_config(SampleConfig, ["--seed", "9", "--config", str(path), "--render"])
    assert (cfg.seed, cfg.lr, cfg.cost_limit, cfg.hidden, cfg.render) == (
        9,
        0.002,
        (10.0, 5.0),
        (32, 32),
        True,
    )
    assert load_config(SampleConfig, path) == parse_config(SampleConfig, ["--config", str(path)])


def test_unknown_keys_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(SampleConfig, {"cost_limt": 5})
    msg = str(exc.value)
    assert "'cost_limt'" in msg and "did you mean 'cost_limit'" in msg
    assert "valid keys: env, seed, lr, cost_limit, hidden, delta, inner_steps" in msg
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nbatch: 4000\n")
    with pytest.raises(ValueError, match=r"unknown config key 'batch'.*valid keys: env, seed"):
        parse_config(SampleConfig, ["--config", str(path)])
    with pytest.raises(SystemExit):
        parse_config(SampleConfig, ["--config", str(path)], exit_on_error=True)


def test_type_mismatch_names_key_and_expected_type() -> None:
    with pytest.raises(ConfigTypeError, match=r"'seed' expects int, got 'abc'"):
        load_config(SampleConfig, {"seed": "abc"})
    with pytest.raises(TypeError, match=r"'hidden' expects a list of int"):
        load_config(SampleConfig, {"hidden": [64, "wide"]})
    with pytest.raises(ValueError, match=r"'env' expects one of \['safenav-goal', 'safenav-button'\]"):
        load_config(SampleConfig, {"env": "safety-button"})
    with pytest.raises(ConfigTypeError, match=r"'render' expects bool"):
        load_config(SampleConfig, {"render": "yes"})
    with pytest.raises(ConfigTypeError, match=r"'seed' expects int, got 1.5"):
        load_config(SampleConfig, {"seed": 1.5})
    # Lenient where unambiguous: integral floats for ints, a scalar for a tuple.
    cfg = load_config(SampleConfig, {"seed": 4.0, "hidden": 16, "inner-steps": 2})
    assert (cfg.seed, cfg.hidden, cfg.inner_steps) == (4, (16,), 2)


def test_validate_hook_runs() -> None:
    with pytest.raises(ValueError, match=r"cost_limit must be >= 0, got -1.0"):
        load_config(SampleConfig, {"cost_limit": -1})
    with pytest.raises(ValueError, match=r"delta must be > 0"):
        parse_config(SampleConfig, ["--delta", "0"])
    with pytest.raises(ValueError, match=r"inner_steps \(K\) must be >= 1"):
        parse_config(SampleConfig, ["--inner-steps", "0"])
    with pytest.raises(ValueError, match=r"cost_limit must be >= 0"):
        parse_config(SampleConfig, ["--cost-limit", "10", "-5"])
    with pytest.raises(SystemExit) as exc:
        parse_config(SampleConfig, ["--delta", "-1"], exit_on_error=True)
    assert exc.value.code == 2


def test_config_round_trip_and_missing_required(tmp_path: Path) -> None:
    cfg = parse_config(SampleConfig, ["--cost-limit", "10", "5", "--out", "runs/a", "--max-iters", "3"])
    d = config_to_dict(cfg)
    assert d["cost_limit"] == [10.0, 5.0] and d["out"] == "runs/a" and d["hidden"] == [64, 64]
    path = write_config(tmp_path, d)
    assert load_config(SampleConfig, json.loads(path.read_text())) == cfg

    @dataclass
    class Needs:
        steps: int
        name: str = "x"

    with pytest.raises(ConfigError, match=r"missing required config keys for Needs: \['steps'\]"):
        load_config(Needs, {})
    assert load_config(Needs, {"steps": 2}) == Needs(steps=2)
    with pytest.raises(ConfigError, match=r"suffix '.toml'"):
        (tmp_path / "c.toml").write_text("")
        load_config(Needs, tmp_path / "c.toml")
    with pytest.raises(ValueError, match="field named 'config'"):

        @dataclass
        class Clash:
            config: str = "a"

        build_parser(Clash)


# ----------------------------------------------------------------------------- seeding


def _draw(gens: dict) -> list[float]:
    return [
        random.random(),
        float(np.random.rand()),
        float(np.random.normal()),
        *torch.rand(3).tolist(),
        *gens["np"].normal(size=2).tolist(),
        float(gens["legacy"].rand()),
        *torch.randn(2, generator=gens["torch"]).tolist(),
        gens["py"].random(),
    ]


def _gens(seed: int) -> dict:
    return {
        "np": np.random.default_rng(seed),
        "legacy": np.random.RandomState(seed),
        "torch": torch.Generator().manual_seed(seed),
        "py": random.Random(seed),
    }


def test_seed_everything_is_reproducible() -> None:
    seed_everything(123)
    a = (random.random(), float(np.random.rand()), torch.rand(1).item())
    seed_everything(123)
    assert a == (random.random(), float(np.random.rand()), torch.rand(1).item())
    with pytest.raises(ValueError, match="seed must be in"):
        seed_everything(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(1.5)  # type: ignore[arg-type]


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    seed_everything(0)
    gens = _gens(1)
    _draw(gens)  # advance everything, including numpy's cached gaussian
    np.random.normal()
    path = save_checkpoint(tmp_path, {"rng": rng_state(gens)}, step=0)
    expected = _draw(gens)
    for _ in range(3):
        _draw(gens)  # wander off
    fresh = _gens(99)  # new objects of the same types, as after a restart
    set_rng_state(load_checkpoint(path)["rng"], fresh)
    assert _draw(fresh) == expected


def test_set_rng_state_errors() -> None:
    state = rng_state({"a": np.random.default_rng(0)})
    with pytest.raises(ValueError, match=r"no saved RNG state for generator 'b'; saved generators: \['a'\]"):
        set_rng_state(state, {"b": np.random.default_rng(0)})
    with pytest.raises(
        TypeError, match=r"'a' is a torch.Generator but the saved state is for a 'numpy.Generator'"
    ):
        set_rng_state(state, {"a": torch.Generator()})
    with pytest.raises(TypeError, match="unsupported type"):
        rng_state({"x": object()})  # type: ignore[dict-item]


# ----------------------------------------------------------------------------- checkpoints


def _state(it: int) -> dict:
    return {
        "iteration": it,
        "policy": {"w": torch.full((3, 2), float(it), dtype=torch.float64), "b": torch.arange(2)},
        "optim": [{"lr": 1e-3, "betas": (0.9, 0.999)}],
        "name": "cpo",
        "best": None,
        "history": [1.5, 2.5],
        "rng": rng_state({"env": np.random.default_rng(it), "t": torch.Generator().manual_seed(it)}),
    }


def test_keep_last_three_and_names(tmp_path: Path) -> None:
    for it in range(6):
        path = save_checkpoint(tmp_path, _state(it), step=it)
        assert path.name == f"ckpt_{it:06d}.pt"
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_000003.pt",
        "ckpt_000004.pt",
        "ckpt_000005.pt",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in list_checkpoints(tmp_path)]
    assert checkpoint_step(latest_checkpoint(tmp_path)) == 5
    save_checkpoint(tmp_path, _state(12), step=12, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000012.pt"]


def test_weights_only_full_state(tmp_path: Path) -> None:
    state = _state(4)
    path = save_checkpoint(tmp_path, state, step=4)
    loaded = torch.load(path, weights_only=True)  # the strict loader itself
    assert loaded["iteration"] == 4 and loaded["name"] == "cpo" and loaded["best"] is None
    assert torch.equal(loaded["policy"]["w"], state["policy"]["w"])
    assert loaded["policy"]["w"].dtype == torch.float64
    assert loaded["optim"][0]["betas"] == (0.9, 0.999)
    assert loaded["rng"]["numpy"] == state["rng"]["numpy"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    gen = np.random.default_rng(0)
    set_rng_state(loaded["rng"], {"env": gen})
    assert gen.random() == np.random.default_rng(4).random()


def test_corrupt_latest_checkpoint_falls_back(tmp_path: Path) -> None:
    for it in range(3):
        save_checkpoint(tmp_path, _state(it), step=it)
    newest = tmp_path / "ckpt_000002.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated mid-write
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "ckpt_000001.pt" and state["iteration"] == 1
    (tmp_path / "ckpt_000001.pt").write_bytes(b"\x00garbage" * 10)  # corrupt
    with pytest.warns(RuntimeWarning):
        assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_000000.pt"
    (tmp_path / "ckpt_000000.pt").write_bytes(b"")
    with pytest.warns(RuntimeWarning):
        assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_interrupted_save_leaves_only_a_temp_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(0), step=0)
    (tmp_path / ".ckpt_abc.tmp").write_bytes(b"PK\x03\x04half")  # a save killed before its rename
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt_000000.pt"
    save_checkpoint(tmp_path, _state(1), step=1)
    assert not list(tmp_path.glob("*.tmp"))


def test_save_rejects_values_weights_only_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['obs_rms'\]\['mean'\] has type numpy.ndarray"):
        save_checkpoint(tmp_path, {"obs_rms": {"mean": np.zeros(3)}}, step=0)
    with pytest.raises(TypeError, match=r"state\['x'\]\[1\]"):
        save_checkpoint(tmp_path, {"x": [1, object()]}, step=0)
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        save_checkpoint(tmp_path, {}, step=-1)
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        save_checkpoint(tmp_path, {}, step=0, keep=0)
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "ckpt_000000.pt")


# ----------------------------------------------------------------------------- logging


def test_csv_logger_header_once_and_fixed_columns(tmp_path: Path) -> None:
    path = tmp_path / "progress.csv"
    with CSVLogger(path) as log:
        log.log({"iteration": 0, "ret": 1.25, "cost": torch.tensor(3.0)})
        log.log({"iteration": 1, "ret": np.float64(2.5)})  # missing column -> empty cell
        with pytest.raises(ValueError, match=r"keys \['kl'\] that are not columns"):
            log.log({"iteration": 2, "kl": 0.01})
    with CSVLogger(path) as log:  # reopen: append, no second header
        log.log({"iteration": 2, "ret": 0.1, "cost": 1})
    assert path.read_text() == "iteration,ret,cost\n0,1.25,3.0\n1,2.5,\n2,0.1,1\n"
    with pytest.raises(ValueError, match="has columns"):
        CSVLogger(path, fieldnames=["iteration", "other"])


def test_truncate_csv(tmp_path: Path) -> None:
    path = tmp_path / "progress.csv"
    path.write_text("iteration,ret\n0,1.0\n1,2.0\n2,3.0\n3,4.0\n4,5")  # last row cut by a kill
    assert truncate_csv(path, 2) == 3
    assert path.read_text() == "iteration,ret\n0,1.0\n1,2.0\n2,3.0\n"
    assert truncate_csv(path, -1) == 0
    assert path.read_text() == "iteration,ret\n"
    assert truncate_csv(tmp_path / "missing.csv", 3) == 0
    with pytest.raises(ValueError, match=r"no column 'iteration'"):
        (tmp_path / "b.csv").write_text("step,ret\n0,1\n")
        truncate_csv(tmp_path / "b.csv", 0)
    assert truncate_csv(tmp_path / "b.csv", 0, key="step") == 1


def test_run_logger_resume_logs_each_iteration_once(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=False) as log:
        for it in range(5):
            log.log({"iteration": it, "ret": float(it), "cost": 10.0 - it})
    # Killed after iteration 4; the last checkpoint was at iteration 2.
    with RunLogger(tmp_path, tensorboard=False, resume_iteration=2) as log:
        for it in range(3, 6):
            log.log({"iteration": it, "ret": float(it), "cost": 10.0 - it})
    rows = read_csv(tmp_path / "progress.csv")
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [float(r["cost"]) for r in rows] == [10.0, 9.0, 8.0, 7.0, 6.0, 5.0]


def test_run_logger_tensorboard_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path) as log:
        cfg = config_to_dict(SampleConfig())
        assert json.loads(log.write_config(cfg).read_text()) == cfg
        for it in range(3):
            log.log({"iteration": it, "ret": 2.0 * it, "cost": torch.tensor(1.5), "note": "x"})
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["cost", "ret"]
    assert [(e.step, e.value) for e in acc.Scalars("ret")] == [(0, 0.0), (1, 2.0), (2, 4.0)]


def test_make_run_dir(tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "runs", ["safenav-goal", "meta_cpo", "seed3"])
    assert re.fullmatch(r"safenav-goal-meta_cpo-seed3-\d{8}-\d{6}", a.name)
    assert a.is_dir() and a.parent == tmp_path / "runs"
    b = make_run_dir(tmp_path / "runs", ["safenav-goal", "meta_cpo", "seed3"])
    assert b != a and b.is_dir()  # same second: a suffix, never the same folder
    assert make_run_dir(tmp_path, ["a/b c"]).name.startswith("a_b_c-")
    out = tmp_path / "mine"
    assert make_run_dir("unused", ["x"], out=out) == out and out.is_dir()
    assert make_run_dir("unused", ["x"], out=out) == out  # empty: fine
    (out / "progress.csv").write_text("iteration\n0\n")
    with pytest.raises(FileExistsError, match="refusing to write into non-empty run directory"):
        make_run_dir("unused", ["x"], out=out)
    assert (out / "progress.csv").read_text() == "iteration\n0\n"  # untouched


def test_progress_bar_resumes_at_initial() -> None:
    with progress_bar(10, initial=4, desc="cpo") as bar:
        bar.update(2)
        assert (bar.n, bar.total, bar.desc) == (6, 10, "cpo")


# ----------------------------------------------------------------------------- plots


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_plot_training(tmp_path: Path) -> None:
    with CSVLogger(tmp_path / "progress.csv") as log:
        for it in range(20):
            log.log({"iteration": it, "ep_ret": math.sqrt(it), "ep_cost": 30.0 - it, "ep_cost_1": 5.0})
    out = plot_training(
        tmp_path / "progress.csv",
        tmp_path / "figs" / "train.png",
        panels=[("return", ["ep_ret"]), ("cost", ["ep_cost", "ep_cost_1"], [25.0, 10.0])],
    )
    assert out == tmp_path / "figs" / "train.png" and _is_png(out)
    assert _is_png(plot_training(tmp_path / "progress.csv", tmp_path / "default.png"))
    with pytest.raises(ValueError, match=r"no columns \['kl'\]; columns: \['iteration', 'ep_ret'"):
        plot_training(tmp_path / "progress.csv", tmp_path / "x.png", panels=[("kl", ["kl"])])


def test_plot_adaptation(tmp_path: Path) -> None:
    path = tmp_path / "adaptation.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "task_id", "adapt_step", "ep_ret", "ep_cost", "cost_limit"])
        for method, offset in [("meta-cpo", 0.0), ("cpo", 10.0)]:
            for seed in range(2):
                for task in range(2):
                    for step in range(4):
                        # ret = step + offset + (-1, +1) over tasks; cost = 20 - step + seed
                        w.writerow(
                            [method, seed, task, step, step + offset + 2 * task - 1, 20 - step + seed, 10]
                        )
    summary = adaptation_summary(path)
    assert list(summary) == ["meta-cpo", "cpo"]
    s = summary["cpo"]
    assert s["adapt_step"] == [0.0, 1.0, 2.0, 3.0]
    assert s["ret_mean"] == [10.0, 11.0, 12.0, 13.0]
    assert s["ret_std"] == [1.0] * 4
    assert s["cost_mean"] == [20.5, 19.5, 18.5, 17.5]
    assert s["cost_std"] == [0.5] * 4
    out = plot_adaptation(path, tmp_path / "adapt.png")
    assert _is_png(out)
    (tmp_path / "bad.csv").write_text("method,seed\nx,0\n")
    with pytest.raises(ValueError, match=r"misses columns \['task_id', 'adapt_step'"):
        plot_adaptation(tmp_path / "bad.csv", tmp_path / "bad.png")


# ----------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    warmup=st.integers(0, 5),
    cost_limit=st.one_of(
        st.floats(0, 1e6, allow_nan=False), st.lists(st.floats(0, 1e6), min_size=1, max_size=3)
    ),
    hidden=st.lists(st.integers(1, 512), min_size=1, max_size=4),
)
def test_config_round_trip_and_rng_restore_properties(
    seed: int, warmup: int, cost_limit: float | list[float], hidden: list[int]
) -> None:
    cfg = load_config(SampleConfig, {"seed": seed, "cost_limit": cost_limit, "hidden": hidden})
    assert load_config(SampleConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    gens = _gens(seed)
    for _ in range(warmup):
        _draw(gens)
    state = rng_state(gens)
    expected = _draw(gens)
    set_rng_state(state, gens)
    assert _draw(gens) == expected


# ------------------------------------------------------------------------ plots never fatal, no global state
def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    import matplotlib

    with CSVLogger(tmp_path / "progress.csv") as log:
        for it in range(3):
            log.log({"iteration": it, "ep_ret": float(it), "ep_cost": 1.0})
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # the caller's choice
    try:
        assert _is_png(plot_training(tmp_path / "progress.csv", tmp_path / "train.png"))
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)


def test_plot_or_warn_turns_any_failure_into_a_warning(tmp_path: Path) -> None:
    from rl.runtime.plots import plot_or_warn

    (tmp_path / "empty.csv").write_text("iteration,ep_ret\n")
    with pytest.warns(RuntimeWarning, match=r"could not plot .*out\.png: ValueError: .*has no data rows"):
        assert plot_or_warn(plot_training, tmp_path / "empty.csv", tmp_path / "out.png") is None
    with pytest.warns(RuntimeWarning, match=r"could not plot .*out\.png: FileNotFoundError"):
        assert plot_or_warn(plot_training, tmp_path / "missing.csv", tmp_path / "out.png") is None
    assert not (tmp_path / "out.png").exists()


# ------------------------------------------------------------------------ run settings in checkpoints
def test_restore_checks_the_recorded_settings_and_skips_inconsistent_checkpoints(tmp_path: Path) -> None:
    from rl.runtime.checkpoint import SettingsMismatchError, restore_latest_checkpoint, settings_record

    settings = {"seed": 0, "algo": "meta-cpo"}
    record = settings_record(settings)
    assert set(record) == {"run_settings", "run_settings_sha256"}
    save_checkpoint(tmp_path, {"iteration": 1, "w": torch.ones(2), **record}, step=0)
    save_checkpoint(tmp_path, {"iteration": 2, **record}, step=1)  # loads, but lacks "w"
    restored: list[torch.Tensor] = []

    def restore(path: Path, state: dict) -> None:
        restored.append(state["w"])

    with pytest.warns(RuntimeWarning, match=r"skipping inconsistent checkpoint .*ckpt_000001\.pt: KeyError"):
        path, _ = restore_latest_checkpoint(tmp_path, restore, settings)
    assert path.name == "ckpt_000000.pt" and torch.equal(restored[-1], torch.ones(2))
    # another value of a recorded setting refuses, naming it with both values
    with pytest.raises(SettingsMismatchError, match="seed is 3 in config.json but 0 in the checkpoint"):
        restore_latest_checkpoint(tmp_path, restore, {"seed": 3, "algo": "meta-cpo"})
    # a setting added to the program later counts as recorded with its default
    found = restore_latest_checkpoint(tmp_path, lambda p, s: None, {**settings, "shards": 4}, {"shards": 4})
    assert found is not None and found[0].name == "ckpt_000001.pt"
    with pytest.raises(SettingsMismatchError, match="shards is 2 in config.json but 4 in the checkpoint"):
        restore_latest_checkpoint(tmp_path, lambda p, s: None, {**settings, "shards": 2}, {"shards": 4})
    # a checkpoint of an older version, without a record: restored with a warning
    save_checkpoint(tmp_path, {"iteration": 3}, step=2)
    with pytest.warns(RuntimeWarning, match="records no run settings"):
        path, _ = restore_latest_checkpoint(tmp_path, lambda p, s: None, {"seed": 9})
    assert path.name == "ckpt_000002.pt"
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        settings_record({"damping": math.nan})


def test_resume_config_applies_allowed_changes_and_names_refused_ones(tmp_path: Path) -> None:
    from rl.runtime.config import ConfigError, resume_config

    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(SampleConfig(max_iters=5))))
    cfg = resume_config(SampleConfig, tmp_path, {"max-iters": 9, "lr": 3e-4}, ["max_iters"], "demo")
    assert cfg == SampleConfig(max_iters=9)  # lr asked at the run's own value: allowed
    with pytest.raises(ConfigError, match=r"lr \(0.0003 in the run, 0.1 asked\) cannot change when resuming"):
        resume_config(SampleConfig, tmp_path, {"lr": 0.1}, ["max_iters"], "demo")
    with pytest.raises(ConfigError, match="no config.json there; expected a run folder of demo"):
        resume_config(SampleConfig, tmp_path / "nothing", {}, ["max_iters"], "demo")
