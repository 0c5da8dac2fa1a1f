"""Tests for rl.policy: densities, KL, Fisher, critics, normaliser."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from rl.policy import Critic, GaussianPolicy, ObsNormalizer, fit_critic

torch.set_num_threads(1)


def _policy_and_params(seed: int = 0, hidden=(8, 8), obs_dim=3, act_dim=2):
    pi = GaussianPolicy(obs_dim, act_dim, hidden=hidden)
    gen = torch.Generator().manual_seed(seed)
    params = pi.init_params(gen)
    # perturb so that the mean head and log-std are not at their init values
    params = params + 0.3 * torch.randn(pi.num_params, generator=gen, dtype=torch.float64)
    obs = torch.randn(7, obs_dim, generator=gen, dtype=torch.float64)
    return pi, params, obs, gen


def test_num_params_and_layout():
    pi = GaussianPolicy(3, 2, hidden=(8, 5))
    assert pi.num_params == (3 * 8 + 8) + (8 * 5 + 5) + (5 * 2 + 2) + 2
    params = pi.init_params(torch.Generator().manual_seed(0))
    assert params.dtype == torch.float64
    assert torch.equal(pi.log_std(params), torch.full((2,), -0.5, dtype=torch.float64))
    # hidden weights orthogonal with gain sqrt(2): W W' = 2 I (8 >= 3 columns -> W'W = 2 I)
    w1 = params[: 3 * 8].view(8, 3)
    torch.testing.assert_close(w1.T @ w1, 2.0 * torch.eye(3, dtype=torch.float64))
    same = pi.init_params(torch.Generator().manual_seed(0))
    assert torch.equal(params, same)


def test_log_prob_matches_torch_normal():
    pi, params, obs, gen = _policy_and_params()
    act = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    mean, log_std = pi.mean_log_std(params, obs)
    ref = Normal(mean, log_std.exp()).log_prob(act).sum(-1)
    torch.testing.assert_close(pi.log_prob(params, obs, act), ref, rtol=1e-12, atol=1e-12)


def test_sample_statistics_and_determinism():
    pi, params, _, _ = _policy_and_params()
    obs = torch.zeros(20000, 3, dtype=torch.float64)
    a1 = pi.sample(params, obs, torch.Generator().manual_seed(5))
    a2 = pi.sample(params, obs, torch.Generator().manual_seed(5))
    assert torch.equal(a1, a2)
    mean, log_std = pi.mean_log_std(params, obs[:1])
    torch.testing.assert_close(a1.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(a1.std(0), log_std.exp(), atol=0.03, rtol=0)


def test_kl_matches_torch_distributions():
    pi, p0, obs, gen = _policy_and_params(0)
    p1 = p0 + 0.2 * torch.randn(pi.num_params, generator=gen, dtype=torch.float64)
    m0, s0 = pi.mean_log_std(p0, obs)
    m1, s1 = pi.mean_log_std(p1, obs)
    ref = kl_divergence(Normal(m0, s0.exp()), Normal(m1, s1.exp())).sum(-1).mean()
    torch.testing.assert_close(pi.kl(p0, p1, obs), ref, rtol=1e-12, atol=1e-12)


def test_kl_self_is_zero_with_zero_gradient():
    pi, p0, obs, _ = _policy_and_params()
    p = p0.clone().requires_grad_(True)
    kl = pi.kl(p0, p, obs)
    assert kl.item() == 0.0
    (grad,) = torch.autograd.grad(kl, p)
    assert float(grad.abs().max()) < 1e-14


def test_kl_differentiable_in_both_arguments():
    pi, p0, obs, gen = _policy_and_params()
    p1 = p0 + 0.2 * torch.randn(pi.num_params, generator=gen, dtype=torch.float64)
    ref = p0.clone().requires_grad_(True)
    new = p1.clone().requires_grad_(True)
    g_ref, g_new = torch.autograd.grad(pi.kl(ref, new, obs), (ref, new))
    assert float(g_ref.abs().max()) > 1e-3 and float(g_new.abs().max()) > 1e-3


def test_kl_hessian_equals_fisher_exactly():
    """Hessian of KL(pi_p || pi_q) in q at q = p equals E_s E_a[grad logp grad logp'].

    For a diagonal Gaussian the inner expectation is analytic:
    F = J' diag(1/sigma^2 for the mean, 2 for the log-std) J (per state), J the
    Jacobian of (mean, log_std) in the parameters. Checked also by Monte Carlo.
    """
    pi, p0, obs, gen = _policy_and_params(hidden=(4,))
    n = pi.num_params
    hess = torch.autograd.functional.hessian(lambda q: pi.kl(p0, q, obs), p0)

    fisher = torch.zeros(n, n, dtype=torch.float64)
    jacobians = []
    for t in range(obs.shape[0]):
        o = obs[t : t + 1]
        jac_mu = torch.autograd.functional.jacobian(lambda q, o=o: pi.mean_log_std(q, o)[0][0], p0)
        jac_ls = torch.autograd.functional.jacobian(lambda q, o=o: pi.mean_log_std(q, o)[1], p0)
        jacobians.append((jac_mu, jac_ls, o))
        inv_var = torch.exp(-2.0 * pi.log_std(p0))
        fisher += jac_mu.T @ (inv_var[:, None] * jac_mu) + 2.0 * jac_ls.T @ jac_ls
    fisher /= obs.shape[0]
    torch.testing.assert_close(hess, fisher, rtol=1e-10, atol=1e-12)

    # Monte Carlo: E_a[grad logp grad logp'] with actions sampled from pi_p0; the score
    # in (mean, log_std) is (a - mu) / sigma^2 and z^2 - 1, chained through the Jacobians.
    reps = 20000
    mc = torch.zeros(n, n, dtype=torch.float64)
    gen_mc = torch.Generator().manual_seed(1)
    for jac_mu, jac_ls, o in jacobians:
        act = pi.sample(p0, o.expand(reps, -1), gen_mc)
        mu, ls = pi.mean_log_std(p0, o)
        z = (act - mu) * torch.exp(-ls)
        score = (z * torch.exp(-ls)) @ jac_mu + (z * z - 1.0) @ jac_ls  # (reps, n)
        mc += score.T @ score / reps
    mc /= obs.shape[0]
    scale = float(fisher.abs().max())
    assert float((mc - fisher).abs().max()) < 0.05 * scale


def test_twice_differentiable():
    pi, p0, obs, gen = _policy_and_params()
    act = pi.sample(p0, obs, gen)
    p = p0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pi.log_prob(p, obs, act).mean(), p, create_graph=True)
    (hv,) = torch.autograd.grad(g @ torch.ones_like(g), p)
    assert torch.isfinite(hv).all() and float(hv.abs().max()) > 0


def test_entropy_matches_normal():
    pi, p0, obs, _ = _policy_and_params()
    mean, log_std = pi.mean_log_std(p0, obs)
    ref = Normal(mean[0], log_std.exp()).entropy().sum()
    torch.testing.assert_close(pi.entropy(p0), ref)


def test_bad_inputs_name_the_value():
    pi = GaussianPolicy(3, 2, hidden=(4,))
    p = pi.init_params(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\(28,\)"):
        pi.mean_log_std(p[:-1], torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        pi.mean_log_std(p, torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden"):
        GaussianPolicy(3, 2, hidden=(4, 0))
    with pytest.raises(ValueError, match="obs_dim"):
        GaussianPolicy(0, 2)


def test_float32_policy():
    pi = GaussianPolicy(3, 2, hidden=(8,), dtype=torch.float32)
    p = pi.init_params(torch.Generator().manual_seed(0))
    assert p.dtype == torch.float32
    obs = torch.randn(4, 3)
    act = pi.sample(p, obs, torch.Generator().manual_seed(0))
    assert pi.log_prob(p, obs, act).dtype == torch.float32


def test_critic_fit_reduces_loss():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(512, 3, generator=gen, dtype=torch.float64)
    targets = torch.stack([obs[:, 0] * 2.0 + 1.0, obs[:, 1] ** 2], dim=1)
    critic = Critic(3, out_dim=2, hidden=(32, 32), generator=gen)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(((critic(obs) - targets) ** 2).mean())
    after = fit_critic(critic, opt, obs, targets, epochs=30, minibatch=64, generator=gen)
    assert after < 0.1 * before
    with pytest.raises(ValueError, match="targets must have shape"):
        fit_critic(critic, opt, obs, targets[:, 0], epochs=1)


def test_obs_normalizer_matches_numpy_over_chunks():
    rng = np.random.default_rng(0)
    data = rng.normal(loc=[1.0, -3.0, 10.0], scale=[0.5, 2.0, 7.0], size=(1000, 3))
    norm = ObsNormalizer(3)
    for chunk in np.array_split(data, [1, 5, 200, 201, 777]):
        norm.update(chunk)
    assert norm.count == 1000
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-10)
    z = norm.normalize(data).numpy()
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-6)
    # clipping
    big = norm.normalize(np.array([[1e6, 0.0, 0.0]]))
    assert float(big[0, 0]) == 10.0


def test_obs_normalizer_state_dict_round_trip():
    rng = np.random.default_rng(1)
    norm = ObsNormalizer(4, clip=5.0)
    norm.update(rng.normal(size=(50, 4)))
    buf = io.BytesIO()
    torch.save(norm.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = ObsNormalizer(4)
    other.load_state_dict(state)
    x = rng.normal(size=(6, 4)) * 10
    assert torch.equal(norm.normalize(x), other.normalize(x))
    assert other.count == 50 and other.clip == 5.0
    # the copy is independent
    other.update(rng.normal(size=(3, 4)))
    assert norm.count == 50
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"mean": torch.zeros(4)})


def test_reparametrize_input_keeps_policy_and_critic_functions_unchanged():
    from rl.policy import Critic, GaussianPolicy, ObsNormalizer

    gen = torch.Generator().manual_seed(0)
    policy = GaussianPolicy(5, 2, hidden=(8, 8))
    params = policy.init_params(gen)
    critic = Critic(5, 2, hidden=(8,), generator=gen)
    norm = ObsNormalizer(5)
    norm.update(3.0 + 2.0 * torch.randn(100, 5, generator=gen, dtype=torch.float64))
    raw = 3.0 + 2.0 * torch.randn(50, 5, generator=gen, dtype=torch.float64)
    before = norm.stats()
    mean0, log_std0 = policy.mean_log_std(params, norm.normalize(raw))
    v0 = critic(norm.normalize(raw)).detach()
    norm.update(-1.0 + 0.5 * torch.randn(300, 5, generator=gen, dtype=torch.float64))
    after = norm.stats()
    assert not torch.allclose(before[0], after[0])
    new = policy.reparametrize_input(params, before, after)
    critic.reparametrize_input(before, after)
    mean1, log_std1 = policy.mean_log_std(new, norm.normalize(raw))
    assert torch.allclose(mean0, mean1, atol=1e-10) and torch.equal(log_std0, log_std1)
    assert torch.allclose(v0, critic(norm.normalize(raw)).detach(), atol=1e-10)
    # without the re-expression the policy would have moved
    moved, _ = policy.mean_log_std(params, norm.normalize(raw))
    assert (moved - mean0).abs().max() > 1e-3


def test_closed_form_fisher_product_equals_the_kl_hessian():
    from difftrust import FisherMetric

    gen = torch.Generator().manual_seed(0)
    for hidden in ((), (7,), (6, 5)):
        pi = GaussianPolicy(4, 3, hidden=hidden)
        params = pi.init_params(gen)
        params = params + 0.3 * torch.randn(params.shape, generator=gen, dtype=torch.float64)
        obs = torch.randn(50, 4, generator=gen, dtype=torch.float64)
        kl = functools.partial(pi.kl, obs=obs)
        hessian = FisherMetric(lambda ref, p, kl=kl: kl(ref, p), params, damping=0.0).operator(params)
        product = pi.fisher_product(params, obs)
        for _ in range(3):
            v = torch.randn(params.shape, generator=gen, dtype=torch.float64)
            torch.testing.assert_close(product(v), hessian(v), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"v must have shape \(" + str(pi.num_params)):
        product(torch.zeros(3, dtype=torch.float64))
