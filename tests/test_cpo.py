"""Tests for rl.cpo: the step against an independent closed form, the line search, the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from difftrust import TrustRegionStep
from rl.cpo import (
    CPOConfig,
    cost_offsets,
    cpo_direction,
    cpo_update,
    debiased_offsets,
    fit_critics,
    line_search,
    main,
    parse_args,
    sum_cost_channels,
    surrogates,
    train,
)
from rl.policy import Critic, GaussianPolicy, fit_critic
from rl.rollout import Batch

torch.set_num_threads(1)

DELTA = 0.01
DAMPING = 0.1


def _recorded_batch(seed: int = 0, n_cost: int = 1, ep_cost=(0.0,), ep_len: float = 50.0):
    """A small batch with known contents, behaviour = the policy at ``params``.

    Cost advantages are correlated with the reward advantages so that the reward
    step raises the cost (the constraint can bind).
    """
    gen = torch.Generator().manual_seed(seed)
    pi = GaussianPolicy(3, 2, hidden=(4,))
    params = pi.init_params(gen) + 0.1 * torch.randn(pi.num_params, generator=gen, dtype=torch.float64)
    T = 64
    obs = torch.randn(T, 3, generator=gen, dtype=torch.float64)
    act = pi.sample(params, obs, gen)
    logp = pi.log_prob(params, obs, act).detach()
    adv_r = torch.randn(T, generator=gen, dtype=torch.float64)
    adv_r = (adv_r - adv_r.mean()) / adv_r.std()
    noise = torch.randn(T, n_cost, generator=gen, dtype=torch.float64)
    adv_c = 0.05 * (adv_r.unsqueeze(1) + 0.5 * noise)
    adv_c = adv_c - adv_c.mean(0)
    batch = Batch(
        obs=obs,
        act=act,
        logp=logp,
        adv_r=adv_r,
        adv_c=adv_c,
        ret_r=torch.zeros(T, dtype=torch.float64),
        ret_c=torch.zeros(T, n_cost, dtype=torch.float64),
        ep_ret=0.0,
        ep_cost=np.asarray(ep_cost, dtype=np.float64),
        ep_len=ep_len,
        num_episodes=1,
        env_steps=T,
        cost_channels=tuple(f"c{j}" for j in range(n_cost)),
    )
    return pi, params, batch


# ------------------------------------------------------------- independent reference
def _grads_and_fisher(pi, params, batch):
    """g, a (per channel) and the dense damped Fisher, written out independently."""

    def loss_r(p):
        ratio = torch.exp(pi.log_prob(p, batch.obs, batch.act) - batch.logp)
        return (ratio * batch.adv_r).mean()

    def loss_c(p, j):
        ratio = torch.exp(pi.log_prob(p, batch.obs, batch.act) - batch.logp)
        return batch.ep_len * (ratio * batch.adv_c[:, j]).mean()

    g = torch.autograd.functional.jacobian(loss_r, params)
    A = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda p, j=j: loss_c(p, j), params)
            for j in range(batch.adv_c.shape[1])
        ]
    )
    fisher = torch.autograd.functional.hessian(lambda q: pi.kl(params, q, batch.obs), params)
    H = fisher + DAMPING * torch.eye(pi.num_params, dtype=torch.float64)
    return g, A, H


def _reference_step_m1(g, a, H, c, delta):
    """The m = 1 CPO step of docs/concepts.md, "The closed form" (maximisation form), dense H."""
    Hg = torch.linalg.solve(H, g)
    Ha = torch.linalg.solve(H, a)
    q, r, s = float(g @ Hg), float(g @ Ha), float(a @ Ha)
    if c < 0 and c * c >= 2 * delta * s:
        return math.sqrt(2 * delta / q) * Hg, "trust-region"
    if c > 0 and c * c >= 2 * delta * s:
        return -math.sqrt(2 * delta / s) * Ha, "recovery"
    A_ = q - r * r / s
    B_ = 2 * delta - c * c / s
    # La = {lam > 0: lam c + r > 0}, Lb = {lam > 0: lam c + r <= 0}; skip empty intervals.
    brk = -r / c
    if c > 0:
        La, Lb = (max(0.0, brk), math.inf), ((0.0, brk) if brk > 0 else None)
    else:
        La, Lb = ((0.0, brk) if brk > 0 else None), (max(0.0, brk), math.inf)
    best = None
    if La is not None:
        lam = min(max(math.sqrt(A_ / B_), La[0]), La[1])
        f = -0.5 * (A_ / lam + B_ * lam) + r * c / s
        best = (f, lam)
    if Lb is not None:
        lam = min(max(math.sqrt(q / (2 * delta)), Lb[0]), Lb[1])
        f = -0.5 * (q / lam + 2 * delta * lam)
        if best is None or f > best[0]:
            best = (f, lam)
    lam = best[1]
    nu = max(0.0, (lam * c + r) / s)
    case = "constrained" if nu > 0 else "trust-region"
    return (Hg - nu * Ha) / lam, case


def _binding_offset(pi, params, batch) -> float:
    """An offset c < 0 with which the constraint binds the trust-region step."""
    g, A, H = _grads_and_fisher(pi, params, batch)
    Hg = torch.linalg.solve(H, g)
    x_tr = math.sqrt(2 * DELTA / float(g @ Hg)) * Hg
    rise = float(A[0] @ x_tr)
    assert rise > 0, "fixture: the reward step must raise the cost"
    return -0.4 * rise


def test_surrogates_units_and_values():
    pi, params, batch = _recorded_batch(ep_len=50.0)
    loss_r, loss_c = surrogates(pi, params, batch)
    # at the behaviour parameters the ratio is 1
    assert float(loss_r) == pytest.approx(float(batch.adv_r.mean()), abs=1e-14)
    assert loss_c.shape == (1,)
    assert float(loss_c[0]) == pytest.approx(50.0 * float(batch.adv_c[:, 0].mean()), abs=1e-14)
    other = params + 0.05
    ratio = torch.exp(pi.log_prob(other, batch.obs, batch.act) - batch.logp)
    loss_r, loss_c = surrogates(pi, other, batch)
    assert float(loss_r) == pytest.approx(float((ratio * batch.adv_r).mean()), rel=1e-12)
    assert float(loss_c[0]) == pytest.approx(50.0 * float((ratio * batch.adv_c[:, 0]).mean()), rel=1e-12)


@pytest.mark.parametrize("which", ["constrained", "trust-region", "recovery"])
def test_cpo_step_equals_independent_closed_form(which):
    pi, params, batch = _recorded_batch()
    c_bind = _binding_offset(pi, params, batch)
    c = {"constrained": c_bind, "trust-region": -10.0, "recovery": 10.0}[which]
    limit = 25.0
    batch.ep_cost = np.array([limit + c])
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x, res = cpo_direction(pi, params, batch, limit, step, damping=DAMPING)

    g, A, H = _grads_and_fisher(pi, params, batch)
    x_ref, case_ref = _reference_step_m1(g, A[0], H, c, DELTA)
    assert case_ref == which and res.case == which
    torch.testing.assert_close(x, x_ref, rtol=1e-6, atol=1e-9)
    if which == "constrained":
        # the linearised constraint is active and the trust region is full
        assert float(c + A[0] @ x) == pytest.approx(0.0, abs=1e-8)
        assert float(0.5 * x @ H @ x) == pytest.approx(DELTA, rel=1e-6)
        assert float(res.nu[0]) > 0


def test_trpo_step_without_constraint():
    pi, params, batch = _recorded_batch()
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x, res = cpo_direction(pi, params, batch, None, step, damping=DAMPING)
    g, _, H = _grads_and_fisher(pi, params, batch)
    Hg = torch.linalg.solve(H, g)
    torch.testing.assert_close(x, math.sqrt(2 * DELTA / float(g @ Hg)) * Hg, rtol=1e-6, atol=1e-9)
    assert res.case == "trust-region" and res.nu.numel() == 0


def test_create_graph_direction_matches_and_differentiates():
    """With create_graph the step is the same, and d(w'x)/d(params) matches finite differences."""
    pi, params, batch = _recorded_batch()
    batch.ep_cost = np.array([25.0 + _binding_offset(pi, params, batch)])
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x0, _ = cpo_direction(pi, params, batch, 25.0, step, damping=DAMPING)
    theta = params.clone().requires_grad_(True)
    x1, res = cpo_direction(pi, theta, batch, 25.0, step, damping=DAMPING, create_graph=True)
    assert res.case == "constrained"
    torch.testing.assert_close(x1.detach(), x0, rtol=1e-9, atol=1e-12)
    w = torch.randn(pi.num_params, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (grad,) = torch.autograd.grad(w @ x1, theta)
    v = torch.randn(pi.num_params, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eps = 1e-5

    def f(p):
        return float(w @ cpo_direction(pi, p, batch, 25.0, step, damping=DAMPING)[0])

    fd = (f(params + eps * v) - f(params - eps * v)) / (2 * eps)
    assert float(grad @ v) == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_two_constraints_satisfy_linearisation():
    pi, params, batch = _recorded_batch(n_cost=2, ep_cost=(25.0, 25.0))
    c_bind = _binding_offset(pi, params, batch)
    batch.ep_cost = np.array([25.0 + c_bind, 25.0 + 2 * c_bind])
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x, res = cpo_direction(pi, params, batch, [25.0, 25.0], step, damping=DAMPING)
    g, A, H = _grads_and_fisher(pi, params, batch)
    b = torch.as_tensor(batch.ep_cost) - 25.0
    assert bool((b + A @ x <= 1e-5).all())
    assert float(0.5 * x @ H @ x) <= DELTA * (1 + 1e-4)
    # better than the one-constraint step restricted to the first channel is impossible
    x1, _ = _reference_step_m1(g, A[0], H, float(b[0]), DELTA)
    assert float(g @ x) <= float(g @ x1) + 1e-8
    # summing the channels gives one constraint on the total
    total = sum_cost_channels(batch)
    assert total.adv_c.shape == (64, 1) and total.ep_cost.tolist() == [float(np.sum(batch.ep_cost))]


def test_cost_offsets_with_confidence_add_the_normal_quantile_of_the_standard_error():
    _, _, batch = _recorded_batch(n_cost=2, ep_cost=(3.0, 30.0))
    batch.episode_costs = np.array([[2.0, 28.0], [4.0, 32.0], [3.0, 30.0]])
    sem = np.array([1.0, 2.0]) / np.sqrt(3)
    np.testing.assert_allclose(batch.ep_cost_sem, sem, rtol=1e-12)
    z90 = 1.2815515655446004
    got = cost_offsets(batch, 25.0, torch.float64, confidence=0.9)
    np.testing.assert_allclose(got.numpy(), [-22.0 + z90 * sem[0], 5.0 + z90 * sem[1]], rtol=1e-10)
    lower = cost_offsets(batch, 25.0, torch.float64, confidence=0.1)
    np.testing.assert_allclose(lower.numpy(), [-22.0 - z90 * sem[0], 5.0 - z90 * sem[1]], rtol=1e-10)
    assert cost_offsets(batch, 25.0, torch.float64).tolist() == [-22.0, 5.0]
    total = sum_cost_channels(batch)  # the total's error comes from the per-episode totals
    np.testing.assert_allclose(total.ep_cost_sem, [np.std([30.0, 36.0, 33.0], ddof=1) / np.sqrt(3)])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"confidence must be in \\(0, 1\\), got {bad}"):
            cost_offsets(batch, 25.0, torch.float64, confidence=bad)
    with pytest.raises(ValueError, match="cost_confidence must be in"):
        CPOConfig(cost_confidence=1.0).validate()


def test_cost_offsets_shapes():
    _, _, batch = _recorded_batch(n_cost=2, ep_cost=(3.0, 30.0))
    assert cost_offsets(batch, 25.0, torch.float64).tolist() == [-22.0, 5.0]
    assert cost_offsets(batch, [1.0, 2.0], torch.float64).tolist() == [2.0, 28.0]
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cost_offsets(batch, [1.0, 2.0, 3.0], torch.float64)


# ---------------------------------------------------------------- constraint optimism
def _two_env_batch(n_cost: int = 1, identical_halves: bool = False, seed: int = 3):
    """A recorded batch laid out as two sub-environments (row i from env i % 2)."""
    pi, params, batch = _recorded_batch(seed=seed, n_cost=n_cost, ep_cost=(25.0,) * n_cost)
    batch.num_envs = 2
    if identical_halves:  # env 1 repeats env 0 row by row: the halves carry no noise
        from dataclasses import replace

        even = torch.arange(0, len(batch), 2)
        rep = torch.repeat_interleave(even, 2)
        batch = replace(batch, **{name: getattr(batch, name)[rep] for name in Batch._TENSORS})
    return pi, params, batch


def test_debiased_offsets_vanish_without_noise():
    pi, params, batch = _two_env_batch(n_cost=2, identical_halves=True)
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    b_eff, optimism = debiased_offsets(pi, params, batch, [24.0, 26.0], step, damping=DAMPING)
    assert b_eff.tolist() == pytest.approx([1.0, -1.0], abs=1e-12)
    assert optimism.tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


@pytest.mark.parametrize("limit", [25.0, 25.3, 20.0])
def test_debiased_offsets_equal_independent_formula(limit):
    """b' = b - D_a' H^-1 D' w at the fixed point, written out with dense matrices: D from
    the two halves' gradients, w the coefficients of the step solved with b'."""
    pi, params, batch = _two_env_batch()
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    b_eff, optimism = debiased_offsets(pi, params, batch, limit, step, damping=DAMPING, iterations=200)

    _, _, H = _grads_and_fisher(pi, params, batch)
    halves = []
    for rows in (slice(0, None, 2), slice(1, None, 2)):
        sub = Batch(**{**batch.__dict__, **{n: getattr(batch, n)[rows] for n in Batch._TENSORS}})
        g, A, _ = _grads_and_fisher(pi, params, sub)
        halves.append(torch.cat([g.unsqueeze(0), A]))
    G = (halves[0] + halves[1]) / 2
    D = (halves[0] - halves[1]) / 2
    x, _ = cpo_direction(pi, params, batch, limit, step, damping=DAMPING, offsets=b_eff)
    P = torch.linalg.solve(H, G.T)
    w = torch.linalg.lstsq(P, x.unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(P @ w, x, rtol=1e-6, atol=1e-10)  # x lies in span(H^-1 [g, a])
    o = D[1:] @ torch.linalg.solve(H, D.T) @ w
    b = float(batch.ep_cost[0]) - limit
    assert optimism.tolist() == pytest.approx((-o).tolist(), rel=1e-5, abs=1e-9)
    assert b_eff.tolist() == pytest.approx((b - o).tolist(), rel=1e-5, abs=1e-9)
    # the full-batch gradients are the mean of the halves: the step is CPO's step with b'
    g_full, A_full, _ = _grads_and_fisher(pi, params, batch)
    torch.testing.assert_close(G, torch.cat([g_full.unsqueeze(0), A_full]), rtol=1e-10, atol=1e-12)


def test_debiased_offsets_with_a_cost_free_channel_and_without_any_signal():
    pi, params, batch = _two_env_batch(n_cost=2)
    batch.adv_c[:, 1] = 0.0  # a channel that never costs: a_2 = 0 in both halves
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    b_eff, optimism = debiased_offsets(pi, params, batch, [25.0, 30.0], step, damping=DAMPING)
    assert optimism[1].item() == 0.0 and b_eff[1].item() == -5.0
    assert torch.isfinite(b_eff).all() and optimism[0].item() != 0.0
    batch.adv_r[:] = 0.0
    batch.adv_c[:] = 0.0  # g = 0 and A = 0: nothing to correct, and no error
    b_eff, optimism = debiased_offsets(pi, params, batch, [25.0, 30.0], step, damping=DAMPING)
    assert b_eff.tolist() == [0.0, -5.0] and optimism.tolist() == [0.0, 0.0]


def test_cpo_update_debias_reports_and_uses_corrected_offsets():
    pi, params, batch = _two_env_batch()
    batch.ep_cost = np.array([25.0 + _binding_offset(pi, params, batch)])
    step = TrustRegionStep(delta=DELTA, cg_iters=50)
    _, plain = cpo_update(pi, params, batch, 25.0, step, damping=DAMPING)
    _, info = cpo_update(pi, params, batch, 25.0, step, damping=DAMPING, debias=True)
    b_eff, optimism = debiased_offsets(pi, params, batch, 25.0, step, damping=DAMPING)
    assert plain["optimism"] == [0.0]
    assert info["optimism"] == pytest.approx(optimism.tolist(), rel=1e-9)
    assert info["b"] == pytest.approx(b_eff.tolist(), rel=1e-9)
    assert info["b"][0] == pytest.approx(plain["b"][0] + info["optimism"][0], rel=1e-9)
    assert info["change_c"][0] <= max(-info["b"][0], 0.0) + 1e-12


def test_debiased_offsets_errors():
    pi, params, batch = _two_env_batch()
    step = TrustRegionStep(delta=DELTA)
    with pytest.raises(ValueError, match="iterations must be a positive int, got 0"):
        debiased_offsets(pi, params, batch, 25.0, step, iterations=0)


# ------------------------------------------------------------------------ line search
def test_line_search_backtracks_to_kl_bound():
    pi, params, batch = _recorded_batch()
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x, _ = cpo_direction(pi, params, batch, None, step, damping=DAMPING)
    big = 6.0 * x  # KL about 36 delta
    new, info = line_search(pi, params, big, batch, None, "trust-region", DELTA)
    k = info["backtracks"]
    assert k > 0 and info["accepted"] == pytest.approx(0.8**k)
    torch.testing.assert_close(new, params + 0.8**k * big)
    kl_acc = float(pi.kl(params, new, batch.obs))
    kl_prev = float(pi.kl(params, params + 0.8 ** (k - 1) * big, batch.obs))
    assert kl_acc == pytest.approx(info["kl"]) and kl_acc <= 1.5 * DELTA < kl_prev
    # a tighter tolerance backtracks further
    _, info_tight = line_search(pi, params, big, batch, None, "trust-region", DELTA, kl_tolerance=1.0)
    assert info_tight["backtracks"] >= k and info_tight["kl"] <= DELTA


def test_line_search_rejects_reward_decrease_unless_recovery():
    pi, params, batch = _recorded_batch()
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x, _ = cpo_direction(pi, params, batch, None, step, damping=DAMPING)
    new, info = line_search(pi, params, -x, batch, None, "trust-region", DELTA)
    assert info["accepted"] == 0.0 and torch.equal(new, params)
    new, info = line_search(pi, params, -x, batch, None, "recovery", DELTA)
    assert info["accepted"] == 1.0 and info["improve_r"] < 0
    torch.testing.assert_close(new, params - x)


def test_line_search_limits_cost_rise_to_slack():
    pi, params, batch = _recorded_batch()
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    x, _ = cpo_direction(pi, params, batch, None, step, damping=DAMPING)  # ignores the cost
    _, loss_c0 = surrogates(pi, params, batch)
    rise_full = float(surrogates(pi, params + x, batch)[1][0] - loss_c0[0])
    assert rise_full > 0
    slack = 0.3 * rise_full
    b = torch.tensor([-slack], dtype=torch.float64)
    new, info = line_search(pi, params, x, batch, b, "constrained", DELTA)
    k = info["backtracks"]
    assert k > 0 and info["change_c"][0] <= slack
    prev = params + 0.8 ** (k - 1) * x
    assert float(surrogates(pi, prev, batch)[1][0] - loss_c0[0]) > slack
    # infeasible (b > 0): the cost surrogate must not rise at all -> rejected
    b = torch.tensor([1.0], dtype=torch.float64)
    new, info = line_search(pi, params, x, batch, b, "constrained", DELTA)
    assert info["accepted"] == 0.0 and torch.equal(new, params)


def test_cpo_update_reports():
    pi, params, batch = _recorded_batch()
    batch.ep_cost = np.array([25.0 + _binding_offset(pi, params, batch)])
    step = TrustRegionStep(delta=DELTA, cg_iters=50)
    new, info = cpo_update(pi, params, batch, 25.0, step, damping=DAMPING)
    assert info["case"] == "constrained" and info["accepted"] > 0
    assert info["kl"] == pytest.approx(float(pi.kl(params, new, batch.obs)))
    assert info["kl"] <= 1.5 * DELTA and info["improve_r"] >= 0
    assert info["change_c"][0] <= max(-info["b"][0], 0.0) + 1e-12
    assert len(info["nu"]) == 1 and info["lam"] > 0 and info["expected_improve"] > 0
    assert not new.requires_grad


# -------------------------------------------------------------------------------- CLI
_SMALL = [
    "--task",
    "corridor",
    "--steps",
    "1200",
    "--steps-per-iter",
    "400",
    "--num-envs",
    "2",
    "--hidden",
    "16",
    "--critic-hidden",
    "16",
    "--critic-epochs",
    "2",
    "--cost-limit",
    "5",
    "--no-progress",
    "--checkpoint-every",
    "1",
]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    from dataclasses import fields

    for f in fields(CPOConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_config_errors_name_the_value():
    with pytest.raises(SystemExit):
        parse_args(["--steps-per-iter", "401", "--num-envs", "2"])
    with pytest.raises(ValueError, match="multiple of num_envs"):
        CPOConfig(steps_per_iter=401, num_envs=2).validate()
    with pytest.raises(ValueError, match="corridor"):
        CPOConfig(env="safenav-button", task="corridor").validate()


def _rows(run_dir):
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cli_run_writes_outputs_and_resume_is_exact(tmp_path, capsys):
    full = tmp_path / "full"
    main([*_SMALL, "--out", str(full)])
    rows = _rows(full)
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    for col in (
        "iteration",
        "env_steps",
        "ep_ret",
        "ep_cost",
        "ep_len",
        "kl",
        "case",
        "lam",
        "nu",
        "seconds",
        "sample_seconds",
        "update_seconds",
    ):
        assert col in rows[0], col
    assert rows[-1]["env_steps"] == "1200"
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["cost_limit"] == 5.0 and cfg["task"] == "corridor"
    assert list(full.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert list(full.glob("ckpt_*.pt")) and (full / "training.png").is_file()
    state = torch.load(sorted(full.glob("ckpt_*.pt"))[-1], weights_only=True)
    for key in ("params", "reward_critic", "cost_critic", "reward_opt", "cost_opt", "normalizer", "rng"):
        assert key in state, key

    # Stop after 2 iterations, then resume to 3: identical rows (except wall time).
    part = tmp_path / "part"
    main([*_SMALL[: _SMALL.index("1200")], "800", *_SMALL[_SMALL.index("1200") + 1 :], "--out", str(part)])
    assert len(_rows(part)) == 2
    main(["--resume", str(part), "--steps", "1200", "--no-progress"])
    resumed = _rows(part)
    assert len(resumed) == 3
    for a, b in zip(rows, resumed, strict=True):
        for key in ("seconds", "sample_seconds", "update_seconds"):
            a.pop(key), b.pop(key)
        assert a == b
    with pytest.raises(SystemExit) as exc:  # a usage error naming the option and both values
        parse_args(["--resume", str(part), "--delta", "0.02"])
    assert exc.value.code == 2
    assert "delta (0.01 in the run, 0.02 asked) cannot change when resuming" in capsys.readouterr().err


def test_trpo_and_two_channel_runs(tmp_path):
    run = train(
        CPOConfig(
            env="safenav-button",
            steps=400,
            steps_per_iter=400,
            num_envs=2,
            hidden=(8,),
            critic_hidden=(8,),
            critic_epochs=1,
            cost_limit=(5.0, 1.0),
            progress=False,
            tensorboard=False,
            out=str(tmp_path / "button"),
        )
    )
    row = _rows(run)[0]
    for col in ("cost_hazards", "cost_buttons", "nu_hazards", "nu_buttons"):
        assert col in row, col
    run = train(
        CPOConfig(
            steps=400,
            steps_per_iter=400,
            num_envs=2,
            hidden=(8,),
            critic_hidden=(8,),
            critic_epochs=1,
            cost_limit=None,
            progress=False,
            tensorboard=False,
            out=str(tmp_path / "trpo"),
        )
    )
    row = _rows(run)[0]
    assert row["case"] == "trust-region" and row["nu"] == ""


def test_num_workers_only_for_safety_gym():
    with pytest.raises(ValueError, match="num_workers > 1.*built-in 'safenav-goal'"):
        CPOConfig(num_workers=2).validate()
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        CPOConfig(env="SafetyPointGoal1-v0", num_workers=0).validate()
    CPOConfig(env="SafetyPointGoal1-v0", num_workers=2).validate()
    CPOConfig(env="safety-button", num_workers=2).validate()
    CPOConfig(num_workers=1).validate()  # built-in envs: 1 (in-process) is fine
    assert parse_args(["--env", "SafetyPointGoal1-v0", "--num-workers", "2"]).num_workers == 2


def test_obs_normalize_off_keeps_raw_observations(tmp_path, monkeypatch):
    """--no-obs-normalize: the normaliser is never updated and never clips (raw inputs)."""
    import rl.cpo as cpo_mod

    seen = []
    real_gather = cpo_mod.gather_sharded

    def spy(*args, **kwargs):
        batch = real_gather(*args, **kwargs)
        seen.append((kwargs["update_normalizer"], args[1].count, args[1].clip))
        return batch

    monkeypatch.setattr(cpo_mod, "gather_sharded", spy)
    run = tmp_path / "raw"
    main([*_SMALL, "--no-obs-normalize", "--out", str(run)])
    assert seen == [(False, 0, math.inf)] * 3
    state = torch.load(sorted(run.glob("ckpt_*.pt"))[-1], weights_only=True)
    assert int(state["normalizer"]["count"]) == 0
    assert json.loads((run / "config.json").read_text())["obs_normalize"] is False
    seen.clear()
    main([*_SMALL, "--out", str(tmp_path / "normalised")])
    assert [s[0] for s in seen] == [True] * 3 and seen[-1][1] > 0 and seen[-1][2] == 10.0


@pytest.mark.parametrize("fused", [False, True])
def test_fit_critics_equals_separate_fits_on_the_same_minibatches(fused):
    """Joint fitting = each critic fitted alone with the same permutations (own loss, own step)."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(300, 5, dtype=torch.float64, generator=gen)
    targets = (torch.randn(300, dtype=torch.float64, generator=gen), torch.randn(300, 2, dtype=torch.float64))

    def fresh():
        g = torch.Generator().manual_seed(1)
        critics = (Critic(5, 1, (8,), generator=g), Critic(5, 2, (8,), generator=g))
        opts = tuple(torch.optim.Adam(c.parameters(), lr=1e-2, fused=fused) for c in critics)
        return critics, opts

    critics, opts = fresh()
    joint = fit_critics(critics, opts, obs, targets, 3, 64, torch.Generator().manual_seed(7))
    ref_critics, ref_opts = fresh()
    alone = [
        fit_critic(c, o, obs, y, 3, 64, torch.Generator().manual_seed(7))
        for c, o, y in zip(ref_critics, ref_opts, targets, strict=True)
    ]
    assert joint == pytest.approx(alone, rel=1e-12, abs=1e-14)
    for c, r in zip(critics, ref_critics, strict=True):
        for p, q in zip(c.parameters(), r.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="one optimizer and one target per critic"):
        fit_critics(critics, opts[:1], obs, targets, 1, 64)
    with pytest.raises(ValueError, match="targets must have shape"):
        fit_critics(critics, opts, obs, (targets[0], targets[0]), 1, 64)


@pytest.mark.safety
def test_safety_gym_workers_give_the_same_run(tmp_path):
    """Sub-environments stepped in 2 worker processes: the same rows as in-process."""
    pytest.importorskip("mujoco")
    rows = []
    for workers in (1, 2):
        run = train(
            CPOConfig(
                env="SafetyPointGoal1-v0",
                horizon=50,
                steps=400,
                steps_per_iter=200,
                num_envs=2,
                num_workers=workers,
                hidden=(8,),
                critic_hidden=(8,),
                critic_epochs=1,
                progress=False,
                tensorboard=False,
                out=str(tmp_path / f"w{workers}"),
            )
        )
        got = _rows(run)
        for r in got:
            for key in ("seconds", "sample_seconds", "update_seconds"):
                assert float(r.pop(key)) >= 0.0
        rows.append(got)
        assert json.loads((run / "config.json").read_text())["num_workers"] == workers
    assert len(rows[0]) == 2 and rows[0] == rows[1]


# ----------------------------------------------------------------------- integration
@pytest.mark.slow
def test_cpo_learns_corridor_within_cost_limit(tmp_path):
    """CPO on the corridor task: return rises while the episode cost stays within the limit.

    The direct path crosses the hazard (about 8 cost per crossing), so chasing the
    reward alone violates the limit (the early iterations do). The mean cost over the
    last 10 iterations (80 episodes) must be within the limit while the return rises
    from ~0.3 to >10. With the optimism correction (the default) it was 3.65, 4.29 and
    2.88 over seeds 0-2 for a limit of 5 (returns 13.6, 11.1, 16.9); the textbook
    step (``debias=False``) settles above it: 5.92, 5.16, 6.31 (returns 13.0, 13.4, 17.3).
    """
    limit = 5.0
    run = train(
        CPOConfig(
            task="corridor",
            steps=60_000,
            steps_per_iter=2000,
            num_envs=4,
            hidden=(32, 32),
            critic_hidden=(32, 32),
            cost_limit=limit,
            seed=0,
            progress=False,
            tensorboard=False,
            out=str(tmp_path / "corridor"),
        )
    )
    rows = _rows(run)
    ret = np.array([float(r["ep_ret"]) for r in rows])
    cost = np.array([float(r["ep_cost"]) for r in rows])
    assert len(rows) == 30
    assert cost[:15].max() > 2 * limit  # the reward-greedy path is costly
    assert ret[-5:].mean() > ret[:3].mean() + 5.0
    assert cost[-10:].mean() <= limit


def test_direction_debias_takes_k_from_the_uncorrected_steps_result():
    """The optimism correction works on difftrust's reduced problem of the plain step
    (StepResult.K and .w): the same offsets as from the halves' mean rows, and the step is the
    plain CPO step with those offsets."""
    from rl.cpo_step import direction

    pi, params, batch = _two_env_batch(n_cost=2)
    step = TrustRegionStep(delta=DELTA, cg_iters=200, cg_tol=1e-14)
    d = direction(pi, params, batch, [25.0, 24.0], step, damping=DAMPING, debias=True)
    b_eff, optimism = debiased_offsets(pi, params, batch, [25.0, 24.0], step, damping=DAMPING)
    assert float(optimism.abs().max()) > 0
    torch.testing.assert_close(d.b, b_eff, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(d.optimism, optimism, rtol=1e-9, atol=1e-12)
    x, _ = cpo_direction(pi, params, batch, [25.0, 24.0], step, damping=DAMPING, offsets=d.b)
    torch.testing.assert_close(d.x, x, rtol=1e-10, atol=1e-14)
    plain = direction(pi, params, batch, [25.0, 24.0], step, damping=DAMPING)
    assert plain.optimism.tolist() == [0.0, 0.0] and plain.b.tolist() == [0.0, 1.0] != d.b.tolist()


# ------------------------------------------------------------- the update's cuts (issue 11)
def _fit_one_step_per_optimizer(critics, optimizers, obs, targets, epochs, minibatch, generator):
    """The critic fit written plainly: an index gather per minibatch, the critics called as
    modules, one step of each optimizer (what fit_critics computes with fewer operations)."""
    ys = [y.unsqueeze(-1) if y.ndim == 1 else y for y in targets]
    for _ in range(epochs):
        perm = torch.randperm(obs.shape[0], generator=generator)
        for start in range(0, obs.shape[0], minibatch):
            idx = perm[start : start + minibatch]
            loss = sum(torch.nn.functional.mse_loss(c(obs[idx]), y[idx]) for c, y in zip(critics, ys))
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
    with torch.no_grad():
        return [float(torch.nn.functional.mse_loss(c(obs), y)) for c, y in zip(critics, ys)]


def _same(a, b) -> bool:
    """Equal bit for bit: tensors, and dicts and lists of them."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("optimizers", ["fused adam", "adam", "two learning rates", "sgd"])
@pytest.mark.parametrize("rows, obs_dim, minibatch", [(1000, 7, 101), (512, 8, 128)])
def test_fit_critics_equals_the_plain_fit_bit_for_bit(optimizers, rows, obs_dim, minibatch):
    """Views of the epoch's shuffled rows (copied where unaligned: 7 x 101 doubles), layers called
    as functions, Adam optimizers with equal settings stepped as one: the same critics, losses
    and optimizer states as the plain loop, over two fits (the state carried over)."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(rows, obs_dim, dtype=torch.float64, generator=gen)
    targets = (
        torch.randn(rows, dtype=torch.float64, generator=gen),
        torch.randn(rows, 3, dtype=torch.float64),
    )
    make = {
        "fused adam": lambda c, k: torch.optim.Adam(c.parameters(), lr=1e-3, fused=True),
        "adam": lambda c, k: torch.optim.Adam(c.parameters(), lr=1e-3),
        "two learning rates": lambda c, k: torch.optim.Adam(c.parameters(), lr=1e-3 * (k + 1), fused=True),
        "sgd": lambda c, k: torch.optim.SGD(c.parameters(), lr=1e-2, momentum=0.9),
    }[optimizers]

    def fresh():
        g = torch.Generator().manual_seed(1)
        critics = (Critic(obs_dim, 1, (16, 16), generator=g), Critic(obs_dim, 3, (16,), generator=g))
        return critics, tuple(make(c, k) for k, c in enumerate(critics))

    (critics, opts), (ref_critics, ref_opts) = fresh(), fresh()
    for epochs in (2, 1):
        losses = fit_critics(
            critics, opts, obs, targets, epochs, minibatch, torch.Generator().manual_seed(epochs)
        )
        ref = _fit_one_step_per_optimizer(
            ref_critics, ref_opts, obs, targets, epochs, minibatch, torch.Generator().manual_seed(epochs)
        )
        assert losses == ref
    for c, r in zip(critics, ref_critics, strict=True):
        assert _same(list(c.parameters()), list(r.parameters()))
    assert _same([o.state_dict() for o in opts], [o.state_dict() for o in ref_opts])


def test_repeated_products_look_up_what_they_computed():
    from rl.cpo_step import RepeatedProducts

    pi, params, batch = _recorded_batch()
    product = pi.fisher_product(params, batch.obs)
    v = torch.randn(pi.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    seen = RepeatedProducts(product)
    first = seen(v)
    assert torch.equal(seen(v.clone()), first) and torch.equal(first, product(v))
    assert (seen.calls, seen.hits) == (1, 1)
    first.add_(1.0)  # the caller's copy: the stored product is unchanged
    assert torch.equal(seen(v), product(v)) and seen.calls == 1
    two = RepeatedProducts(product, max_bytes=2 * 2 * 8 * pi.num_params)  # room for two (v, Fv) pairs
    vs = [v + k for k in range(3)]
    for u in [*vs, vs[0], vs[2]]:
        assert torch.equal(two(u), product(u))
    assert (two.calls, two.hits) == (4, 1)  # vs[0] was dropped (the oldest), vs[2] kept
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"max_bytes must be an int >= 0, got {bad!r}"):
            RepeatedProducts(product, max_bytes=bad)


def test_cpo_update_looks_up_the_plain_solves_products_with_the_same_numbers():
    """The corrected step repeats the plain step's conjugate gradient: its products are looked up
    (as many as the plain solve computed), and the update is bit for bit the one that computes
    every product; expected_improve uses the direction's g, equal to a fresh gradient."""
    from difftrust import OperatorMetric
    from rl.cpo_step import direction, fisher_metric

    pi, params, batch = _two_env_batch(n_cost=2)
    step = TrustRegionStep(delta=DELTA, cg_iters=8, cg_tol=None)
    limits = [25.0, 24.0]
    product = pi.fisher_product(params, batch.obs)
    computing = OperatorMetric(lambda v: product(v), damping=DAMPING)
    ref = direction(pi, params, batch, limits, step, metric=computing, debias=True)
    metric = fisher_metric(pi, params, batch.obs, DAMPING)
    d = direction(pi, params, batch, limits, step, metric=metric, debias=True)
    assert _same([d.x, d.b, d.optimism, d.g], [ref.x, ref.b, ref.optimism, ref.g])
    # plain solve: 8 iterations x 3 columns + 2 probe columns; optimism: 8 x 2; corrected: all found
    assert (metric.matvec.calls, metric.matvec.hits) == (8 * 3 + 2 + 8 * 2, 8 * 3 + 2)
    new, info = cpo_update(pi, params, batch, limits, step, damping=DAMPING, debias=True)
    ref_new, _ = line_search(pi, params, ref.x.detach(), batch, ref.b, str(ref.result.case), DELTA)
    assert torch.equal(new, ref_new)
    theta = params.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(surrogates(pi, theta, batch)[0], theta)
    assert info["expected_improve"] == float(g @ ref.x.detach())
    worst = max(float(ref.result.cg_residuals.max()), float(ref.optimism_residuals.max()))
    assert info["cg_residual"] == worst > 1e-8  # the optimism solve's residual counts too


def test_truncated_cg_is_not_warned_about_and_a_tolerance_of_ones_own_is(tmp_path):
    import warnings
    from dataclasses import replace

    from difftrust import CGNotConvergedWarning

    pi, params, batch = _two_env_batch()
    truncated = CPOConfig(cg_iters=2).step(DELTA)
    assert type(truncated) is TrustRegionStep and truncated.cg_tol is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = cpo_update(pi, params, batch, 25.0, truncated, damping=DAMPING, debias=True)
        run = train(replace(parse_args([*_SMALL, "--cg-iters", "2"]), out=str(tmp_path / "run")))
    assert not [w for w in caught if issubclass(w.category, CGNotConvergedWarning)]
    assert info["cg_residual"] > 1e-3  # 2 iterations on a 28-parameter metric: recorded, not hidden
    residuals = [float(r["cg_residual"]) for r in _rows(run)]
    assert len(residuals) == 3 and all(1e-6 < r < 1 for r in residuals)
    # a tolerance of one's own (a value no other solve in this process used: difftrust warns once
    # per metric type, cg_iters and cg_tol) is warned about when it is missed
    own = CPOConfig(cg_iters=2, cg_tol=3.21e-9).step(DELTA)
    assert type(own) is TrustRegionStep
    with pytest.warns(CGNotConvergedWarning, match=r"cg_tol = 3\.2e-09 in cg_iters = 2"):
        cpo_update(pi, params, batch, 25.0, own, damping=DAMPING, debias=True)


def test_differentiable_direction_reuses_constant_fisher_products_with_the_same_numbers():
    """Meta-CPO's inner step (the double-backward Fisher, a graph to the parameters, the optimism
    correction): with :class:`rl.cpo_step.ReusedFisherMetric` the three solves share one detached
    operator and the corrected step's conjugate gradient looks up the uncorrected one's products;
    the step, its diagnostics and its gradient are bit for bit those of the plain metric."""
    from difftrust import FisherMetric
    from rl.cpo_step import ReusedFisherMetric, direction, fisher_metric

    pi, params, batch = _two_env_batch(n_cost=2)
    step = TrustRegionStep(delta=DELTA, cg_iters=8, cg_tol=None)
    runs = []
    for metric_type in (FisherMetric, ReusedFisherMetric):
        theta = params.detach().clone().requires_grad_(True)
        phi = theta * 1.0  # a parameter vector with a graph, as in an inner loop
        metric = metric_type(lambda ref, p: pi.kl(ref, p, batch.obs), phi, DAMPING)
        d = direction(pi, phi, batch, [25.0, 24.0], step, create_graph=True, metric=metric, debias=True)
        seen = (
            None if metric_type is FisherMetric else (metric._shared[0][3].calls, metric._shared[0][3].hits)
        )
        (grad,) = torch.autograd.grad((d.x * torch.linspace(-1, 2, len(d.x))).sum(), theta)
        out = [d.x.detach(), d.b, d.optimism, d.optimism_residuals, d.result.cg_residuals, grad]
        runs.append((out, metric, seen))
    (ref, _, _), (new, metric, seen) = runs
    assert _same(new, ref) and float(grad.abs().max()) > 0
    # uncorrected solve: 8 products (of [g, a_1, a_2]); optimism: 8; the corrected solve's 8 found
    assert seen == (8 + 8, 8)
    assert metric._shared[0][3].calls == 8 + 8 + 8  # the backward's solve: new right-hand sides
    # the metric Meta-CPO's inner steps and meta-step get, and its operator at other parameters
    assert type(fisher_metric(pi, params, batch.obs, DAMPING, create_graph=True)) is ReusedFisherMetric
    other = metric.operator(params.detach() + 1e-3)
    assert (
        other is not metric.operator(params.detach()) and metric.operator(params.detach() + 1e-3) is not other
    )


def test_the_optimism_solve_of_a_truncated_step_is_truncated_conjugate_gradient():
    """``_optimism`` hands difftrust's conjugate gradient ``tol=None`` for a step with ``cg_tol``
    none (no tolerance to meet): the same numbers as the tolerance 1e-10 it used to pass."""
    from difftrust import conjugate_gradient as real_cg
    from difftrust.cg import TRUNCATED_TOL
    from rl import cpo_step
    from rl.cpo_step import _optimism, half_gradients

    pi, params, batch = _two_env_batch(n_cost=2)
    metric = cpo_step.fisher_metric(pi, params, batch.obs, DAMPING)
    halves = half_gradients(pi, params, batch)
    b = cost_offsets(batch, [25.0, 24.0], params.dtype)
    tols, outs = [], []
    for step in (
        TrustRegionStep(delta=DELTA, cg_iters=4, cg_tol=None),
        TrustRegionStep(DELTA, cg_iters=4, cg_tol=TRUNCATED_TOL),
    ):

        def cg(*args, **kwargs):
            tols.append(kwargs["tol"])
            return real_cg(*args, **kwargs)

        cpo_step.conjugate_gradient, saved = cg, cpo_step.conjugate_gradient
        try:
            outs.append(_optimism(*halves, b, metric, step, 5, None))
        finally:
            cpo_step.conjugate_gradient = saved
    assert tols == [None, TRUNCATED_TOL]
    assert _same(list(outs[0]), list(outs[1])) and float(outs[0][2].max()) > 1e-8  # truncated, recorded
