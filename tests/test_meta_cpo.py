"""Meta-CPO: exact meta-gradient vs finite differences, no aliasing, the meta-step's guarantees,
an end-to-end run with every artifact, and exact resumption."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from difftrust import FisherMetric, TrustRegionStep
from rl.cpo import cost_offsets, debiased_offsets, surrogates
from rl.envs import make, task_distribution
from rl.meta_cpo import (
    MetaCPOTrainer,
    TaskResult,
    fisher_states,
    inner_direction,
    main,
    meta_objectives,
    meta_update,
    parse_args,
    task_meta_gradient,
)
from tests._configs import tiny_meta_config


def _tiny_cfg(**kw):
    return tiny_meta_config(**{"inner_steps": 2, "test_tasks": 2, "adapt_steps": 1, **kw})


def _fixed_data_setup(constrain: str):
    """A linear policy and three fixed batches (two inner, one validation) of one task.

    The textbook inner step (``debias=False``): with the optimism correction the offsets are
    constants of the data, so finite differences of the whole inner loop would see their
    dependence on theta, which the meta-gradient leaves out by design."""
    cfg = _tiny_cfg(
        hidden=(),
        inner_steps=2,
        constrain=constrain,
        cg_iters=300,
        cg_tol=1e-13,
        inner_delta=0.05,
        debias=False,
    )
    trainer = MetaCPOTrainer(cfg)
    setup = trainer.setup
    task = task_distribution("safenav-button").sample(1, split="train", seed=3)[0]
    env = make("safenav-button", task=task, num_envs=2, seed=0)
    gen = torch.Generator().manual_seed(0)
    theta0 = trainer.theta.clone()
    data = [setup.collect(env, theta0, gen) for _ in range(3)]
    env.close()
    # limits on the boundary of the first batch's cost: the inner constraint binds
    view = setup.constrained_view(data[0])
    setup = replace(setup, limits=[float(v) + 0.5 for v in view.ep_cost])
    return setup, theta0, data


@pytest.mark.parametrize("constrain", ["total", "channels"])
def test_meta_gradient_matches_finite_differences_of_the_whole_inner_loop(constrain):
    setup, theta0, data = _fixed_data_setup(constrain)

    def objectives(theta):
        it = iter(data)
        objs, _, _, results = meta_objectives(setup, theta, lambda phi: next(it), differentiable=True)
        return objs, [r.case for r in results]

    theta = theta0.clone().requires_grad_(True)
    objs, cases = objectives(theta)
    assert len(objs) == 1 + len(setup.constraint_names)
    grads = [torch.autograd.grad(o, theta, retain_graph=True)[0] for o in objs]
    assert torch.equal(theta.detach(), theta0)  # the inner loop never writes into theta
    rng = torch.Generator().manual_seed(1)
    checked = 0
    for _ in range(3):
        v = torch.randn(theta0.shape, generator=rng, dtype=theta0.dtype)
        v /= v.norm()
        fds = []
        for h in (1e-5, 2e-5):
            plus = [float(o.detach()) for o in objectives(theta0 + h * v)[0]]
            minus = [float(o.detach()) for o in objectives(theta0 - h * v)[0]]
            fds.append(np.subtract(plus, minus) / (2 * h))
        if not np.allclose(fds[0], fds[1], rtol=1e-6, atol=1e-9):
            continue  # a case boundary of some inner step lies in the stencil
        ad = np.array([float(g @ v) for g in grads])
        np.testing.assert_allclose(ad, fds[0], rtol=2e-6, atol=1e-8 * max(1.0, np.abs(fds[0]).max()))
        checked += 1
    assert checked >= 2
    assert any(c == "constrained" for c in cases) or constrain == "channels"


def test_first_order_variant_differs_from_exact_gradient():
    setup, theta0, data = _fixed_data_setup("total")
    grads = {}
    for differentiable in (True, False):
        theta = theta0.clone().requires_grad_(True)
        stream = iter(data)
        objs, *_ = meta_objectives(
            setup, theta, lambda phi, stream=stream: next(stream), differentiable=differentiable
        )
        grads[differentiable] = torch.autograd.grad(objs[0], theta)[0]
    rel = (grads[True] - grads[False]).norm() / grads[True].norm()
    assert rel > 1e-3  # the first-order shortcut is an approximation, and measurably so


@pytest.mark.parametrize("differentiable", [False, True])
def test_debiased_inner_step_is_cpo_step_with_corrected_offsets(differentiable):
    setup, theta0, data = _fixed_data_setup("channels")
    setup = replace(setup, cfg=replace(setup.cfg, debias=True))
    theta = theta0.clone().requires_grad_(differentiable)
    x, res = inner_direction(setup, theta, data[0], differentiable=differentiable)
    cfg, view = setup.cfg, setup.constrained_view(data[0])
    obs = fisher_states(view.obs, cfg.fisher_states)
    metric = FisherMetric(lambda ref, q: setup.policy.kl(ref, q, obs), theta0, damping=cfg.damping)
    step = TrustRegionStep(delta=cfg.inner_delta, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol)
    b_eff, optimism = debiased_offsets(setup.policy, theta0, view, setup.limits, step, metric=metric)
    assert float(optimism.abs().max()) > 0  # the correction is not a no-op on real data
    plain, _ = inner_direction(replace(setup, cfg=replace(cfg, debias=False)), theta0, data[0], False)
    assert not torch.allclose(plain, x.detach())
    # the reference: CPO's step on the same data and metric, offsets replaced by b_eff
    ref = step.solve(*_rows(setup, theta0, view), b_eff, metric).x
    torch.testing.assert_close(x.detach(), ref, rtol=1e-8, atol=1e-12)
    assert x.requires_grad == differentiable


def test_inner_step_with_confidence_constrains_the_upper_bound():
    setup, theta0, data = _fixed_data_setup("channels")
    batch = replace(data[0], episode_costs=np.array([[1.0, 0.0], [0.0, 2.0]]))  # spread: a margin
    cfg = replace(setup.cfg, cost_confidence=0.9)
    x, _ = inner_direction(replace(setup, cfg=cfg), theta0, batch, differentiable=False)
    view = setup.constrained_view(batch)
    b = cost_offsets(view, setup.limits, theta0.dtype, 0.9)
    assert bool((b > cost_offsets(view, setup.limits, theta0.dtype)).all())  # a margin was added
    obs = fisher_states(view.obs, cfg.fisher_states)
    metric = FisherMetric(lambda ref, q: setup.policy.kl(ref, q, obs), theta0, damping=cfg.damping)
    step = TrustRegionStep(delta=cfg.inner_delta, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol)
    ref = step.solve(*_rows(setup, theta0, view), b, metric).x
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-12)


def _rows(setup, theta, view):
    p = theta.detach().requires_grad_(True)
    loss_r, loss_c = surrogates(setup.policy, p, view)
    rows = [torch.autograd.grad(o, p, retain_graph=True)[0] for o in [loss_r, *loss_c]]
    return rows[0], torch.stack(rows[1:])


def test_inner_loop_leaves_theta_untouched_and_tasks_share_no_state():
    trainer = MetaCPOTrainer(_tiny_cfg())
    setup = trainer.setup
    theta = trainer.theta.clone()
    tasks = trainer.train_tasks()
    a1 = task_meta_gradient(setup, trainer.theta, tasks[0], seed=11)
    assert torch.equal(trainer.theta, theta)
    b_after_a = task_meta_gradient(setup, trainer.theta, tasks[1], seed=12)
    b_alone = task_meta_gradient(MetaCPOTrainer(_tiny_cfg()).setup, theta, tasks[1], seed=12)
    assert torch.equal(b_after_a.grad_F, b_alone.grad_F)
    assert torch.equal(b_after_a.grad_G, b_alone.grad_G)
    a2 = task_meta_gradient(setup, theta, tasks[0], seed=11)
    assert torch.equal(a1.grad_F, a2.grad_F)
    assert torch.equal(trainer.theta, theta)


def _task_results(obs, grads, costs):
    """TaskResults with the given meta-gradients ``(grad_F, grad_G)`` and validation costs."""
    return [
        TaskResult(
            grad_F=grad_F,
            grad_G=grad_G,
            cost_val=np.array([c]),
            ret_pre=0.0,
            cost_pre=np.zeros(2),
            ret_post=0.0,
            cost_post=np.zeros(2),
            first_obs=obs,
            critic_data=[],
            cases=[],
            env_steps=0,
        )
        for (grad_F, grad_G), c in zip(grads, costs, strict=True)
    ]


def _dense_fisher(setup, theta, obs):
    H = torch.autograd.functional.hessian(lambda q: setup.policy.kl(theta, q, obs), theta)
    return H + setup.cfg.damping * torch.eye(theta.numel(), dtype=theta.dtype)


@pytest.mark.parametrize("offset", [-3.0, 0.05, 2.0])
def test_meta_step_satisfies_linearised_constraint_and_trust_region(offset):
    trainer = MetaCPOTrainer(_tiny_cfg(constrain="total", meta_delta=0.01, debias=False))
    setup, theta = trainer.setup, trainer.theta
    n = theta.numel()
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(300, setup.policy.obs_dim, generator=gen, dtype=theta.dtype)
    grads = [
        (
            torch.randn(n, generator=gen, dtype=theta.dtype),
            torch.randn(1, n, generator=gen, dtype=theta.dtype),
        )
        for _ in range(3)
    ]
    results = _task_results(obs, grads, [setup.limits[0] + offset] * 3)
    new, info = meta_update(setup, theta, results)
    x = new - theta
    dG = torch.stack([r.grad_G for r in results]).mean(0)
    b = torch.tensor(info["b_theta"], dtype=theta.dtype)
    assert float(b[0]) == pytest.approx(offset)
    H = _dense_fisher(setup, theta, obs)
    full = x / info["accepted"]
    assert 0.5 * float(full @ H @ full) <= setup.cfg.meta_delta * (1 + 1e-4)
    assert float(setup.policy.kl(theta, new, obs)) <= setup.cfg.kl_tolerance * setup.cfg.meta_delta
    if info["case"] != "recovery":
        assert float(b + dG @ full) <= 1e-6 * max(1.0, abs(offset))
    else:
        assert float(dG @ full) < 0  # recovery decreases the linearised cost
    assert info["accepted"] > 0


@pytest.mark.parametrize("offset", [-30.0, 30.0])
def test_debiased_meta_step_corrects_offsets_from_halves_of_the_meta_batch(offset):
    """The meta-step's optimism from tasks {0, 1} vs {2, 3}, written out with dense matrices
    (offsets far from the boundary: the step's coefficients w do not depend on b')."""
    trainer = MetaCPOTrainer(_tiny_cfg(constrain="total", meta_delta=0.01, debias=True))
    setup, theta = trainer.setup, trainer.theta
    n = theta.numel()
    gen = torch.Generator().manual_seed(5)
    obs = torch.randn(300, setup.policy.obs_dim, generator=gen, dtype=theta.dtype)
    common_F = torch.randn(n, generator=gen, dtype=theta.dtype)
    common_G = torch.randn(1, n, generator=gen, dtype=theta.dtype)
    grads = [
        (
            common_F + 0.5 * torch.randn(n, generator=gen, dtype=theta.dtype),
            common_G + 0.5 * torch.randn(1, n, generator=gen, dtype=theta.dtype),
        )
        for _ in range(4)
    ]
    results = _task_results(obs, grads, [setup.limits[0] + offset] * 4)
    new, info = meta_update(setup, theta, results)
    assert info["case"] == ("recovery" if offset > 0 else "trust-region")
    H = _dense_fisher(setup, theta, obs)
    rows = [
        torch.stack([torch.stack([r.grad_F, r.grad_G[0]]) for r in part]).mean(0)
        for part in (results[:2], results[2:])
    ]
    G, D = (rows[0] + rows[1]) / 2, (rows[0] - rows[1]) / 2
    K = G @ torch.linalg.solve(H, G.T)
    if offset > 0:  # recovery: x = -sqrt(2 delta / s) H^-1 a
        w = torch.stack([torch.zeros(()), -torch.sqrt(2 * 0.01 / K[1, 1])]).to(theta.dtype)
    else:  # trust region: x = sqrt(2 delta / q) H^-1 g
        w = torch.stack([torch.sqrt(2 * 0.01 / K[0, 0]), torch.zeros(())]).to(theta.dtype)
    o = float(D[1] @ torch.linalg.solve(H, D.T) @ w)
    assert info["optimism_theta"][0] == pytest.approx(-o, rel=1e-4)
    assert info["b_theta"][0] == pytest.approx(offset - o, rel=1e-4, abs=1e-6)
    plain = MetaCPOTrainer(_tiny_cfg(constrain="total", meta_delta=0.01, debias=False))
    _, info_plain = meta_update(plain.setup, theta, results)
    assert info_plain["b_theta"][0] == pytest.approx(offset) and info_plain["optimism_theta"] == []


def test_meta_step_with_confidence_bounds_the_mean_over_tasks():
    trainer = MetaCPOTrainer(_tiny_cfg(constrain="total", debias=False, cost_confidence=0.9))
    setup, theta = trainer.setup, trainer.theta
    n = theta.numel()
    gen = torch.Generator().manual_seed(4)
    obs = torch.randn(200, setup.policy.obs_dim, generator=gen, dtype=theta.dtype)
    costs = [2.0, 6.0, 4.0]
    grads = [
        (
            torch.randn(n, generator=gen, dtype=theta.dtype),
            torch.randn(1, n, generator=gen, dtype=theta.dtype),
        )
        for _ in costs
    ]
    results = _task_results(obs, grads, costs)
    _, info = meta_update(setup, theta, results)
    expected = 4.0 + 1.2815515655446004 * 2.0 / math.sqrt(3) - setup.limits[0]  # std of (2, 6, 4) is 2
    assert info["b_theta"][0] == pytest.approx(expected, rel=1e-9)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TINY_CLI = (
    "--meta-batch 2 --inner-steps 1 --batch-steps 400 --num-envs 2 --hidden 8 --critic-hidden 16 "
    "--critic-epochs 1 --test-tasks 2 --adapt-steps 1 --no-progress --backend serial "
    # the assertions below were written for safenav-button's two cost channels; a small meta-test
    "--env safenav-button --fisher-states 2000 --adapt-batch-steps 400 --adapt-confidence none --eval-steps 0"
).split()


@pytest.mark.slow
def test_end_to_end_artifacts_and_exact_resume(tmp_path):
    full = tmp_path / "full"
    main(["--iterations", "3", *TINY_CLI, "--out", str(full)])
    for name in ("progress.csv", "adaptation.csv", "config.json", "training.png", "adaptation.png"):
        assert (full / name).is_file() and (full / name).stat().st_size > 0, name
    assert list(full.glob("ckpt_*.pt")) and list(full.glob("events.out.tfevents*"))
    rows = _read_csv(full / "progress.csv")
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    for key in (
        "env_steps",
        "ret_pre",
        "cost_pre",
        "ret_post",
        "cost_post",
        "kl",
        "lam",
        "nu",
        "seconds",
        "cost_pre_hazards",
        "cost_post_buttons",
        "nu_hazards",
        "nu_buttons",
    ):
        assert key in rows[0], key
    adapt_rows = _read_csv(full / "adaptation.csv")
    assert {"method", "seed", "task_id", "adapt_step", "ep_ret", "ep_cost", "cost_limit"} <= set(
        adapt_rows[0]
    )
    assert {int(r["adapt_step"]) for r in adapt_rows} == {0, 1}
    assert all(r["method"] == "meta-cpo" for r in adapt_rows)
    assert json.loads((full / "config.json").read_text())["iterations"] == 3

    # the same run stopped after iteration 1, then resumed to 3
    part = tmp_path / "part"
    args = [*TINY_CLI, "--out", str(part)]
    main(["--iterations", "2", *args])
    # an extra row past the checkpoint, as if the process died after logging it: resume cuts it back
    with open(part / "progress.csv", "a") as f:
        f.write("2,99,0,0,0,0,0,0,0,x,0,,,0" + "," * 8 + "\n")
    main(["--resume", str(part), "--iterations", "3", "--no-progress", "--backend", "serial"])
    resumed = _read_csv(part / "progress.csv")
    assert [int(r["iteration"]) for r in resumed] == [0, 1, 2]
    for a, b in zip(rows, resumed, strict=True):
        for key in a:
            if key == "seconds":
                continue
            assert a[key] == b[key], (key, a[key], b[key])
    t_full = MetaCPOTrainer.from_run(full).theta
    t_part = MetaCPOTrainer.from_run(part).theta
    assert torch.equal(t_full, t_part)

    # resuming the finished run with other meta-test options repeats only its meta-test
    before = (part / "progress.csv").read_text()
    main(
        [
            "--resume",
            str(part),
            "--adapt-batch-steps",
            "800",
            "--adapt-confidence",
            "0.9",
            "--eval-steps",
            "2000",
        ]
    )
    assert (part / "progress.csv").read_text() == before
    assert torch.equal(MetaCPOTrainer.from_run(part).theta, t_part)
    saved = json.loads((part / "config.json").read_text())
    assert (saved["adapt_batch_steps"], saved["adapt_confidence"], saved["eval_steps"]) == (800, 0.9, 2000)
    assert saved["resume"] is None and saved["iterations"] == 3
    assert {int(r["env_steps"]) for r in _read_csv(part / "adaptation.csv")} == {800}
    evaluation = _read_csv(part / "evaluation.csv")
    assert [(int(r["task_id"]), int(r["adapt_step"])) for r in evaluation] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in evaluation:  # whole episodes of the 200-step horizon, with standard errors per channel
        assert (int(r["env_steps"]), int(r["episodes"])) == (2000, 10)
        assert float(r["ep_cost"]) == pytest.approx(float(r["cost_hazards"]) + float(r["cost_buttons"]))
        assert float(r["sem_hazards"]) >= 0 and float(r["sem_buttons"]) >= 0
    # and again without the evaluation: the earlier evaluation.csv, which no longer matches, goes
    main(["--resume", str(part), "--eval-steps", "0"])
    assert not (part / "evaluation.csv").exists() and (part / "adaptation.csv").is_file()


def test_existing_non_empty_out_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        MetaCPOTrainer(_tiny_cfg(out=str(tmp_path))).train()
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(env="atari"), "env must be one of"),
        (dict(algo="ppo"), "algo must be one of"),
        (dict(inner_delta=0.0), "inner_delta must be > 0"),
        (dict(meta_delta=-1.0), "meta_delta must be > 0"),
        (dict(inner_steps=0), "inner_steps must be >= 1"),
        (dict(cost_limit=-1.0), "cost_limit must be >= 0, got -1.0"),
        (dict(cost_limit=(1.0, math.inf)), r"cost_limit must be finite, got \(1.0, inf\)"),
        (dict(cost_confidence=0.0), r"cost_confidence must be in \(0, 1\), got 0.0"),
        (dict(adapt_batch_steps=0), "adapt_batch_steps must be >= 1 or none, got 0"),
        (dict(damping=math.nan), "damping must be finite, got nan"),
        (dict(cg_tol=math.nan), "cg_tol must be finite, got nan"),
        (dict(init_log_std=math.nan), "init_log_std must be finite, got nan"),
        (dict(kl_tolerance=math.inf), "kl_tolerance must be finite, got inf"),
        (dict(max_retries=-1), "max_retries must be >= 0, got -1"),
        (dict(seed=-1), r"seed must be in \[0, 4294967295\], got -1"),
        (dict(hidden=(8, 0)), r"hidden must be >= 1 \(each value\), got \(8, 0\)"),
        (dict(batch_steps=401), r"batch_steps \(401\) must be a multiple of num_envs \(2\)"),
        (dict(meta_batch="2"), "meta_batch expects an integer, got '2'"),
    ],
)
def test_invalid_configuration_raises_named_errors(override, message):
    with pytest.raises(ValueError, match=message):
        MetaCPOTrainer(_tiny_cfg(**override))


def test_cli_rejects_unknown_keys_and_wrong_limit_count(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"iterations": 1, "inner_stepz": 2}))
    with pytest.raises((ValueError, SystemExit)):
        parse_args(["--config", str(cfg_file)])
    with pytest.raises(ValueError, match="cost_limit has 3 values but there are 2 constraints"):
        MetaCPOTrainer(_tiny_cfg(cost_limit=(1.0, 2.0, 3.0)))
    cfg = parse_args(["--cost-limit", "7", "--algo", "meta-trpo", "--iterations", "5"])
    assert cfg.cost_limit == 7.0 and cfg.algo == "meta-trpo" and not cfg.constrained
    assert math.isfinite(cfg.meta_delta)


def test_fisher_states_is_an_even_stride_of_at_most_the_limit():
    from rl.meta_cpo import fisher_states

    obs = torch.arange(10.0).unsqueeze(1)
    assert fisher_states(obs, 20).squeeze(1).tolist() == list(range(10))
    assert fisher_states(obs, 5).squeeze(1).tolist() == [0, 2, 4, 6, 8]
    assert fisher_states(obs, 3).squeeze(1).tolist() == [0, 4, 8]
    with pytest.raises(ValueError, match="fisher_states must be >= 1"):
        MetaCPOTrainer(_tiny_cfg(fisher_states=0))


def test_num_envs_defaults_to_whole_episodes_per_sub_environment():
    trainer = MetaCPOTrainer(_tiny_cfg(num_envs=None, batch_steps=800, horizon=100))
    assert trainer.cfg.num_envs == 8 and trainer.setup.cfg.num_envs == 8
    assert MetaCPOTrainer(_tiny_cfg(num_envs=None, batch_steps=400)).cfg.num_envs == 2  # horizon 200
    with pytest.raises(ValueError, match="num_envs must be in"):
        MetaCPOTrainer(_tiny_cfg(num_envs=500, batch_steps=400))


def test_progress_reports_the_worst_conjugate_gradient_residual(monkeypatch, tmp_path):
    """``cg_residual``: the largest relative residual of the iteration's solves, every inner step's
    (the step's and the optimism correction's) and the meta-step's; truncated at 3 iterations it
    is well above the 1e-10 at which conjugate gradient stops early."""
    import rl.meta_cpo as meta_cpo
    import rl.meta_update as meta_update_module

    steps, updates = [], []
    real_direction, real_update = meta_update_module.inner_direction, meta_cpo.meta_update

    def direction_spy(*args, **kwargs):
        x, res = real_direction(*args, **kwargs)
        steps.append(res)
        return x, res

    def update_spy(setup, theta, results):
        new, info = real_update(setup, theta, results)
        updates.append(([r.cg_residual for r in results], info))
        return new, info

    monkeypatch.setattr(meta_update_module, "inner_direction", direction_spy)
    monkeypatch.setattr(meta_cpo, "meta_update", update_spy)
    trainer = MetaCPOTrainer(_tiny_cfg(cg_iters=3, inner_steps=2))
    row = trainer.step()
    assert len(steps) == 2 * 2  # M tasks x K inner steps
    for res in steps:  # each inner step's worst covers its own solve and its optimism solve
        assert math.isfinite(res.cg_worst) and res.cg_worst >= float(res.cg_residuals.max()) > 1e-6
    ((tasks, info),) = updates
    assert tasks == [max(s.cg_worst for s in steps[:2]), max(s.cg_worst for s in steps[2:])]
    assert row["cg_residual"] == info["cg_residual"] >= max(tasks)
    assert list(row)[-1] == "cg_residual"
    # the multi-task baseline reports its CPO update's
    baseline = MetaCPOTrainer(_tiny_cfg(algo="multitask-cpo", cg_iters=3))
    assert 1e-6 < baseline.step()["cg_residual"] < 1


def test_a_run_folder_without_the_cg_residual_column_resumes_with_its_columns(tmp_path):
    """A run started before ``cg_residual`` existed keeps its progress.csv's columns on resuming."""
    run = tmp_path / "run"
    main(["--iterations", "1", *TINY_CLI, "--test-tasks", "1", "--adapt-steps", "0", "--out", str(run)])
    rows = _read_csv(run / "progress.csv")
    assert "cg_residual" in rows[0] and float(rows[0]["cg_residual"]) > 0
    with open(run / "progress.csv", "w", newline="") as f:  # as written before the column existed
        columns = [k for k in rows[0] if k != "cg_residual"]
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: r[k] for k in columns} for r in rows)
    main(["--resume", str(run), "--iterations", "2", "--no-progress", "--backend", "serial"])
    resumed = _read_csv(run / "progress.csv")
    assert [int(r["iteration"]) for r in resumed] == [0, 1] and list(resumed[1]) == columns


@pytest.mark.safety
@pytest.mark.slow
def test_the_meta_iteration_cuts_leave_every_number_unchanged(monkeypatch, tmp_path):
    """Two meta-iterations on safety-button (one shard, sub-environments running whole episodes to
    the batch's end) with this package's cuts, and with what they replace: the package's own step
    (``fast_step=False``), the plain double-backward Fisher metric (every operator built and every
    product computed), PyYAML parsing the package's assets at every reset, and every episode end
    reset at once (no ``step_final``). Progress rows, parameters, critics and normaliser are
    the same bit for bit."""
    from rl import cpo_step
    from rl import meta_update as meta_update_module
    from rl.envs import safety_gym
    from rl.meta_update import Setup
    from rl.rollout import EnvSpec

    cfg = tiny_meta_config(
        env="safety-button",
        iterations=2,
        batch_steps=1000,
        num_envs=2,
        horizon=500,
        hidden=(24, 12),
        critic_hidden=(32, 32),
        cost_limit=10.0,
        constrain="total",
        debias=True,
        shards=1,
        fisher_states=400,
    )

    def run():
        trainer = MetaCPOTrainer(cfg)
        rows = [trainer.step() for _ in range(cfg.iterations)]
        trainer.close()
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows], trainer.state_dict()

    rows, state = run()
    real_metric = cpo_step.fisher_metric
    real_cache = safety_gym._cache_world_yaml
    real_spec = Setup.env_spec

    def plain_metric(policy, params, obs, damping, create_graph=False, **kwargs):
        if create_graph:
            return FisherMetric(lambda ref, p: policy.kl(ref, p, obs), params, damping)
        return real_metric(policy, params, obs, damping, create_graph, **kwargs)

    def package_step(self, task):
        spec = real_spec(self, task)
        return EnvSpec(spec.name, spec.task, spec.num_envs, (*spec.kwargs, ("fast_step", False)))

    with monkeypatch.context() as m:
        m.setattr(cpo_step, "fisher_metric", plain_metric)
        m.setattr(meta_update_module, "fisher_metric", plain_metric)
        m.setattr(safety_gym, "_cache_world_yaml", lambda enabled=True: real_cache(False))
        m.delattr(safety_gym.SafetyGymVecEnv, "step_final")
        m.setattr(Setup, "env_spec", package_step)
        ref_rows, ref_state = run()
    assert _same_state(rows, ref_rows) and rows[1]["env_steps"] == 2 * 2 * 2 * 1000
    assert all(math.isfinite(r["cg_residual"]) for r in rows)
    for key in ("theta", "reward_critic", "cost_critic", "opt_r", "opt_c", "normalizer"):
        assert _same_state(state[key], ref_state[key]), key


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
