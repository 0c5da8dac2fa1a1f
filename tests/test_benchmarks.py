"""The sweep runner (benchmarks.sweep) and the aggregator (benchmarks.aggregate)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common
from benchmarks.aggregate import (
    OMNISAFE_COLUMNS,
    PAPER_COLUMNS,
    _matrix,
    _total_limit,
    aggregate_rows,
    aggregate_spec,
    read_csv,
    reference_figures,
    stratified_bootstrap_ci,
)
from benchmarks.sweep import (
    ROOT,
    code_commit,
    is_finished,
    load_spec,
    plan,
    restore_state,
    run_sweep,
    save_state,
    select_methods,
)

TINY_META = """
program = "rl.meta_cpo"
envs = ["safenav-button"]
seeds = [0]
methods = ["meta-cpo", "cpo-scratch"]
jobs = 2
runs_dir = "{runs}"
[base]
iterations = 2
batch_steps = 200
num_envs = 1
meta_batch = 2
inner_steps = 1
hidden = [8]
critic_hidden = [8]
fisher_states = 100
test_tasks = 2
adapt_steps = 1
adapt_batch_steps = 200
eval_steps = 0
"""

RETEST = """
program = "rl.meta_cpo"
envs = ["safenav-button"]
seeds = [0]
methods = ["meta-cpo"]
runs_dir = "{runs}"
[meta_test]
adapt_steps = 2
adapt_batch_steps = 200
eval_steps = 400
[retest]
from = "tiny"
"""

TINY_CPO = """
program = "rl.cpo"
envs = ["safenav-goal"]
seeds = [3]
runs_dir = "{runs}"
[methods.cpo-textbook]
debias = false
[base]
steps = 2000
steps_per_iter = 100
num_envs = 1
num_workers = 1
hidden = [8]
critic_hidden = [8]
checkpoint_every = 1
"""


def _spec(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "specs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.format(runs=tmp_path / "runs"))
    return path


def test_bootstrap_width_matches_closed_form():
    # iid N(0, 2^2) scores, 10 seeds x 20 tasks: the mean's standard error is 2 / sqrt(200); the
    # bootstrap (plug-in variance, factor (n-1)/n) gives an interval 2 * 1.96 * that wide
    rng = np.random.default_rng(1)
    scores = rng.normal(3.0, 2.0, size=(10, 20))
    mean, low, high = stratified_bootstrap_ci(scores, reps=4000)
    closed = 2 * 1.96 * 2.0 / np.sqrt(200) * np.sqrt(9 / 10)
    assert mean == pytest.approx(scores.mean())
    assert low < mean < high
    assert high - low == pytest.approx(closed, rel=0.12)
    # constant scores: no uncertainty
    assert stratified_bootstrap_ci(np.full((4, 3), 0.7)) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_coverage():
    rng = np.random.default_rng(2)
    hits = 0
    for i in range(300):
        mean, low, high = stratified_bootstrap_ci(rng.normal(1.0, 1.0, size=(10, 8)), reps=400, seed=i)
        hits += low <= 1.0 <= high
    assert 0.89 <= hits / 300 <= 0.98  # nominal 0.95, a little under with 10 seeds


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        stratified_bootstrap_ci(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="level"):
        stratified_bootstrap_ci(np.ones(3), level=1.5)


def test_spec_errors_name_the_value(tmp_path):
    bad = _spec(tmp_path, "bad", TINY_META.replace("iterations = 2", "iteratons = 2"))
    with pytest.raises(ValueError, match="iteratons"):
        load_spec(bad)
    bad = _spec(tmp_path, "bad", TINY_META.replace('"cpo-scratch"', '"maml"'))
    with pytest.raises(ValueError, match="maml"):
        load_spec(bad)
    with pytest.raises(ValueError, match="not a file"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="nice must be an integer from 0 to 19, got 'low'"):
        load_spec(_spec(tmp_path, "bad", TINY_META.replace("jobs = 2", 'jobs = 2\nnice = "low"')))
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        load_spec(_spec(tmp_path, "bad", TINY_META.replace("jobs = 2", "jobs = 0")))


def test_reference_figures_are_checked(tmp_path):
    spec = load_spec(_spec(tmp_path, "tiny", TINY_META))
    good = {"label": "x", "safenav-button": {"ep_ret": [20.46, 1.38], "ep_cost": [28, 7.76]}}
    assert reference_figures(replace(spec, output={"reference": good})) == good
    assert reference_figures(spec) == {}
    bad = {"safenav-button": {"ep_ret": [20.46]}}
    with pytest.raises(ValueError, match=r"reference.safenav-button.ep_ret = \[20.46\]; expected"):
        reference_figures(replace(spec, output={"reference": bad}))
    with pytest.raises(ValueError, match="names env 'SafetyPointGoal1-v0'"):
        reference_figures(replace(spec, output={"reference": {"SafetyPointGoal1-v0": {}}}))


def test_select_methods_keeps_run_names_and_names_bad_values(tmp_path):
    spec = load_spec(_spec(tmp_path, "tiny", TINY_META))
    every = {r.name: r.settings for r in plan(spec)}
    part = plan(select_methods(load_spec(_spec(tmp_path, "tiny", TINY_META)), " cpo-scratch ,"))
    assert [r.method for r in part] == ["cpo-scratch"] * len(spec.seeds) * len(spec.envs)
    assert all(every[r.name] == r.settings for r in part)  # same folders and settings as the full grid
    assert select_methods(spec, None) is spec
    with pytest.raises(ValueError, match=r"--methods 'maml'.*meta-cpo, cpo-scratch.*\['maml'\]"):
        select_methods(spec, "maml")
    with pytest.raises(ValueError, match="got unknown nothing"):
        select_methods(spec, ",")


def test_committed_specs_load():
    specs = sorted((ROOT / "benchmarks" / "specs").glob("*.toml"))
    assert specs
    for path in specs:
        assert plan(load_spec(path)), path


@pytest.mark.slow
def test_sweep_runs_retests_and_aggregates(tmp_path):
    spec = load_spec(_spec(tmp_path, "tiny", TINY_META))
    assert run_sweep(spec, poll_s=60) == 0
    names = [r.name for r in plan(spec)]
    assert names == ["safenav-button-meta-cpo-seed0", "safenav-button-cpo-scratch-seed0"]
    timings = json.loads((spec.sweep_dir / "timings.json").read_text())
    assert all(timings[n]["finished"] and timings[n]["sessions"] == 1 for n in names)
    assert run_sweep(spec) == 0  # finished runs are skipped
    assert json.loads((spec.sweep_dir / "timings.json").read_text()) == timings

    out = aggregate_spec(spec, tmp_path / "out", plots=False)
    runs = read_csv(out / "runs.csv")
    assert tuple(runs[0]) == PAPER_COLUMNS and len(runs) == 2
    assert [r["meta_iterations"] for r in runs] == ["2", "0"]
    # meta-training curves: every meta-iteration of the run that meta-trained (none of cpo-scratch)
    learning = read_csv(out / "learning.csv")
    progress = read_csv(spec.sweep_dir / names[0] / "progress.csv")
    assert [(r["method"], r["iteration"]) for r in learning] == [("meta-cpo", "0"), ("meta-cpo", "1")]
    assert [r["ret_pre"] for r in learning] == [r["ret_pre"] for r in progress]
    assert [r["cost_post"] for r in learning] == [r["cost_post"] for r in progress]
    settings = read_csv(out / "settings.csv")
    assert settings[0]["batch_steps"] == "200" and settings[0]["hidden"] == "8"
    assert settings[0]["inner_delta"] == "0.02"  # a default, pinned and recorded

    retest = load_spec(_spec(tmp_path, "retest", RETEST))
    assert run_sweep(retest) == 0
    run_dir = retest.sweep_dir / "safenav-button-meta-cpo-seed0"
    trained = spec.sweep_dir / run_dir.name
    assert (run_dir / "progress.csv").read_text() == (trained / "progress.csv").read_text()
    assert {r["adapt_step"] for r in read_csv(run_dir / "adaptation.csv")} == {"0", "1", "2"}
    assert json.loads((run_dir / "config.json").read_text())["eval_steps"] == 400
    out = aggregate_spec(retest, tmp_path / "out_retest", plots=True)
    rows = read_csv(out / "rows.csv")
    assert {r["source"] for r in rows} == {"adapt", "eval"}
    after = [r for r in rows if r["source"] == "eval" and r["adapt_step"] == "2"]
    (run,) = read_csv(out / "runs.csv")
    assert float(run["share_within"]) == pytest.approx(np.mean([int(r["within"]) for r in after]))
    assert (out / "adaptation.png").is_file() and (out / "share_within.png").is_file()
    assert (out / "learning.png").stat().st_size > 0


@pytest.mark.slow
def test_sweep_resumes_after_interruption(tmp_path):
    path = _spec(tmp_path, "cpo", TINY_CPO)
    spec = load_spec(path)
    run_dir = spec.sweep_dir / "safenav-goal-cpo-textbook-seed3"
    cmd = [sys.executable, "-m", "benchmarks.sweep", str(path), "--poll", "1"]
    runner = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300  # a loaded machine may take minutes to start torch in a niced run
    while not list(run_dir.glob("ckpt_*.pt")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(run_dir.glob("ckpt_*.pt")), "the run wrote no checkpoint within 300 s"
    with pytest.raises(RuntimeError, match="holds the lock"):
        run_sweep(spec)  # a second runner is refused while the first one runs
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=300)
    assert runner.returncode == 1 and "stopped" in output, output
    done = len(read_csv(run_dir / "progress.csv"))
    assert 1 <= done < 20

    assert run_sweep(spec) == 0
    log = (spec.sweep_dir / "logs" / f"{run_dir.name}.log").read_text()
    assert "resumed:" in log and "--resume" in log
    progress = read_csv(run_dir / "progress.csv")
    assert [int(r["iteration"]) for r in progress] == list(range(20))
    assert json.loads((spec.sweep_dir / "timings.json").read_text())[run_dir.name]["sessions"] == 2
    assert json.loads((run_dir / "config.json").read_text())["debias"] is False
    assert is_finished(run_dir) and not is_finished(run_dir, steps=4000)  # a larger spec extends it

    out = aggregate_spec(spec, tmp_path / "out", plots=True)
    (row,) = read_csv(out / "runs.csv")
    assert tuple(row) == OMNISAFE_COLUMNS
    assert row["env_steps"] == "2000" and row["method"] == "cpo-textbook"
    tail = [float(r["ep_cost"]) for r in progress[-2:]]  # the last 10 % of 20 iterations
    assert float(row["ep_cost"]) == pytest.approx(np.mean(tail), rel=1e-5)
    assert (out / "curves.png").is_file()
    published = {"label": "published", "safenav-goal": {"ep_ret": [1.0, 0.5], "ep_cost": [25.0, 2.0]}}
    again = aggregate_spec(replace(spec, output={"reference": published}), tmp_path / "ref", plots=True)
    assert (again / "curves.png").stat().st_size > 0 and read_csv(again / "runs.csv") == [row]


def test_aggregate_rows_judges_channels_or_total(tmp_path):
    path = tmp_path / "rows.csv"
    lines = ["method,seed,task_id,adapt_step,ep_ret,ep_cost,cost_hazards,cost_buttons"]
    for seed in (0, 1):
        lines += [f"m,{seed},0,0,1.0,6.0,3.0,3.0", f"m,{seed},1,0,2.0,8.0,6.0,2.0"]
    path.write_text("\n".join(lines) + "\n")
    by_channel = aggregate_rows([path], tmp_path / "a", "env-x", 5.0, None, plots=False)
    (row,) = read_csv(by_channel / "summary.csv")
    assert row["env"] == "env-x" and (row["seeds"], row["tasks"]) == ("2", "2")
    assert float(row["within"]) == 0.5 and float(row["ep_ret"]) == 1.5  # task 1: hazards 6 > 5
    (row,) = read_csv(aggregate_rows([path], tmp_path / "b", "env-x", None, 7.0, plots=False) / "summary.csv")
    assert float(row["within"]) == 0.5  # task 1: total 8 > 7
    with pytest.raises(ValueError, match="one of"):
        aggregate_rows([path], tmp_path / "c", "env-x", 5.0, 7.0)
    # the plots' limit line: one limit on the total; none where each channel has its own
    assert _total_limit({"constrain": "total", "cost_limit": [10.0]}) == 10.0
    assert _total_limit({"constrain": "total", "cost_limit": [4.0, 6.0]}) == 10.0
    assert _total_limit({"constrain": "channels", "cost_limit": 5.0}) is None


def test_measurement_tables_and_backend_settings(tmp_path):
    rows = [
        {"backend": "serial", "median_s": 53.125, "runs": [1.0, 2.5], "met": True, "steps_per_s": 338510.2}
    ]
    rows.append({"backend": "processes", "median_s": 0.0123, "runs": [], "met": None, "steps_per_s": 1.0})
    text = common.table("Backends", rows)
    assert text.splitlines()[0] == "## Backends"
    assert text.splitlines()[2] == "| backend | median_s | runs | met | steps_per_s |"
    assert text.splitlines()[4] == "| serial | 53.1 | 1, 2.5 | yes | 338,510 |"
    assert text.splitlines()[5] == "| processes | 0.0123 |  | n/a | 1 |"
    common.write_results(tmp_path / "x", "Title", {"a": 1.5}, [text])
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5}
    assert (tmp_path / "x.md").read_text() == "# Title\n\n" + text
    assert common.backend_pairs(["serial:1", "processes:2"]) == [("serial", 1), ("processes", 2)]
    with pytest.raises(ValueError, match="'ray'"):
        common.backend_pairs(["serial:1", "ray"])
    with pytest.raises(ValueError, match="serial:1"):
        common.backend_pairs(["processes:2"])
    runs = [{"median_s": 10.0, "workers": 1}, {"median_s": 4.0, "workers": 2}]
    common.speedups(runs)
    assert (runs[1]["speedup"], runs[1]["efficiency"]) == (2.5, 1.25)


def test_meta_iteration_phases_and_amdahl_prediction():
    from benchmarks import meta_iteration
    from rl.meta_cpo import MetaCPOConfig, MetaCPOTrainer

    raw = {"_sampling": 8.0, "env_setup": 1.0, "inner_steps": 0.5, "_meta_objectives": 9.0}
    raw |= {"_task_meta_gradient": 10.5, "meta_update": 0.25, "critics": 2.0}
    phases = meta_iteration.split(raw, total=13.0)
    assert phases["sampling"] == 7.0 and phases["meta_objective_forward"] == 0.5
    assert phases["meta_gradient_reverse"] == 1.5 and phases["other"] == pytest.approx(0.25)
    # S = 13 - 8 - 2 / 2 = 4 s; P = 8 s over min(4, M shards = 6) workers; J = 3 (1 + 1) 2 = 12 jobs
    cfg = MetaCPOConfig(meta_batch=3, inner_steps=1, shards=2)
    expected = 13.0 / (4.0 + 8.0 / 4 + 0.01 * 12 / 4)
    assert meta_iteration.predicted_speedup(phases, cfg, 0.01, 4) == pytest.approx(expected)
    # every building block is timed in one real meta-iteration, and unwrapped afterwards
    cfg = replace(
        meta_iteration.make_config(quick=True, shards=1), batch_steps=200, num_envs=1, fisher_states=100
    )
    raw: dict[str, float] = defaultdict(float)
    trainer = MetaCPOTrainer(cfg)
    try:
        with meta_iteration.timed_building_blocks(raw):
            t0 = time.perf_counter()
            trainer.step()
            total = time.perf_counter() - t0
    finally:
        trainer.close()
    timers = {*meta_iteration.FUNCTIONS.values()} | {key for *_, key in meta_iteration.METHODS}
    assert {k for k, v in raw.items() if v > 0} == timers
    phases = meta_iteration.split(raw, total)
    assert all(v > 0 for k, v in phases.items() if k != "other") and abs(phases["other"]) < 0.5 * total
    wrapped = [
        getattr(m, n) for m in meta_iteration.MODULES for n in meta_iteration.FUNCTIONS if hasattr(m, n)
    ]
    wrapped += [getattr(owner, name) for owner, name, _ in meta_iteration.METHODS]
    assert [f.__name__ for f in wrapped if f.__name__ == "timed"] == []  # the originals are back


def test_score_matrix_orders_numbers_as_numbers():
    # iterations and task ids come from CSV as strings: "10" must follow "9", not "1"
    rows = [{"seed": s, "task_id": str(t), "x": 10 * s + t} for s in (0, 1) for t in (10, 2, 1, 9)]
    assert _matrix(rows, "x").tolist() == [[1, 2, 9, 10], [11, 12, 19, 20]]


@pytest.mark.slow
def test_sweep_state_continues_a_run_on_another_machine(tmp_path):
    # a run of 1,000 steps saved as state, restored into an empty runs folder (a new machine) and
    # extended to 2,000 steps gives the rows of an uninterrupted 2,000-step run, bit for bit
    short = TINY_CPO.replace("steps = 2000", "steps = 1000")
    first = load_spec(_spec(tmp_path / "a", "cpo", short))
    assert run_sweep(first) == 0
    state = save_state(first, tmp_path / "state")
    (run,) = [p for p in state.iterdir() if p.is_dir() and p.name != "configs"]
    assert sorted(p.suffix for p in run.iterdir()) == [".csv", ".json", ".pt"]
    assert (state / "code.txt").read_text().split()[-1] == code_commit()
    # the state holds what the tables need: the same runs.csv from it as from the run folders
    tables = [
        read_csv(
            aggregate_spec(replace(first, runs_dir=where), tmp_path / f"tables{i}", plots=False) / "runs.csv"
        )
        for i, where in enumerate((first.runs_dir, tmp_path / "state"))
    ]
    assert len(tables[0]) == 1 and tables[0] == tables[1]

    moved = load_spec(_spec(tmp_path / "b", "cpo", TINY_CPO))
    assert restore_state(moved, tmp_path / "state") == [run.name]
    assert restore_state(moved, tmp_path / "state") == []  # runs already there are left alone
    assert run_sweep(moved) == 0
    assert "resumed:" in (moved.sweep_dir / "logs" / f"{run.name}.log").read_text()

    whole = load_spec(_spec(tmp_path / "c", "cpo", TINY_CPO))
    assert run_sweep(whole) == 0
    timing = ("seconds", "sample_seconds", "update_seconds")
    rows = [
        [
            {k: v for k, v in r.items() if k not in timing}
            for r in read_csv(s.sweep_dir / run.name / "progress.csv")
        ]
        for s in (moved, whole)
    ]
    assert len(rows[0]) == 20 and rows[0] == rows[1]

    (state / "code.txt").write_text("0123abc\n")
    with pytest.raises(
        RuntimeError, match="run by code 0123abc, the checkout .* is code .*git worktree add <folder> 0123abc"
    ):
        restore_state(load_spec(_spec(tmp_path / "d", "cpo", TINY_CPO)), tmp_path / "state")
    with pytest.raises(FileNotFoundError, match="no saved state of spec 'cpo'"):
        restore_state(moved, tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no started run of spec 'cpo'"):
        save_state(load_spec(_spec(tmp_path / "e", "cpo", TINY_CPO)), tmp_path / "state")
    # a sweep started afresh (not restored) never overwrites a state that is further along
    (state / "code.txt").write_text(code_commit() + "\n")
    behind = load_spec(_spec(tmp_path / "g", "cpo", TINY_CPO.replace("steps = 2000", "steps = 300")))
    assert run_sweep(behind) == 0
    with pytest.raises(ValueError, match=f"further along than .*{run.name}.*restore them first"):
        save_state(behind, tmp_path / "state")
    # nor does a sweep of other methods (or with --methods) drop the saved runs it lacks
    other = load_spec(_spec(tmp_path / "h", "cpo", short.replace("cpo-textbook", "cpo-plain")))
    assert run_sweep(other) == 0
    with pytest.raises(ValueError, match=f"further along than .*{run.name}"):
        save_state(other, tmp_path / "state")
    assert save_state(moved, tmp_path / "state") == state  # the restored and extended one may
    # a save whose spec selects other methods (--methods) keeps every started run of the folder
    kept = save_state(replace(other, methods={"absent": {}}), tmp_path / "other")
    assert [p.name for p in kept.iterdir() if p.is_dir() and p.name != "configs"] == [
        "safenav-goal-cpo-plain-seed3"
    ]


def test_in_fresh_process_runs_in_a_new_interpreter():
    import math
    import os

    assert common.in_fresh_process(os.getpid) != os.getpid()
    assert common.in_fresh_process(math.hypot, 3.0, 4.0) == 5.0
    with pytest.raises(ValueError, match="math domain error"):
        common.in_fresh_process(math.sqrt, -1.0)
