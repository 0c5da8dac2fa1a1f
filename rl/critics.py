"""Fitting the reward and cost critics of CPO and Meta-CPO: together in one process, or one per
worker on a pool, the same numbers either way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rl.policy import Critic

__all__ = ["adam", "fit_critics", "fit_critics_on_pool"]


def _check_one_each(critics: Sequence[Critic], optimizers: Sequence[Any], targets: Sequence[Tensor]) -> None:
    if not len(critics) == len(optimizers) == len(targets) >= 1:
        raise ValueError(
            f"need one optimizer and one target per critic, got {len(critics)} critics, "
            f"{len(optimizers)} optimizers and {len(targets)} targets"
        )


def fit_critics(
    critics: Sequence[Critic],
    optimizers: Sequence[torch.optim.Optimizer],
    obs: Tensor,
    targets: Sequence[Tensor],
    epochs: int,
    minibatch: int,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Fit several critics on the same inputs together: minibatch MSE steps of their optimizers.

    The same as :func:`rl.policy.fit_critic` per critic (each critic's loss is its own
    minibatch MSE, its gradient only its own, one step of its own optimizer per
    minibatch), except that all critics see the same shuffled minibatches (one
    permutation per epoch from ``generator``) and share one forward/backward pass
    per minibatch: half the autograd and Python overhead for the reward and cost
    critics of CPO, whose fitting is otherwise a large part of an update.

    Args:
        critics: The critics (updated in place).
        optimizers: One optimizer per critic.
        obs: ``(T, obs_dim)`` inputs.
        targets: One ``(T,)`` or ``(T, out_dim)`` target tensor per critic.
        epochs: Passes over the data.
        minibatch: Rows per optimizer step.
        generator: Shuffling generator (reproducibility).

    Returns:
        The full-batch MSE of each critic after fitting.
    """
    _check_one_each(critics, optimizers, targets)
    for name, value in (("epochs", epochs), ("minibatch", minibatch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    obs = obs.detach()
    n = obs.shape[0]
    ys = []
    for critic, y in zip(critics, targets, strict=True):
        y = y.detach()
        if y.ndim == 1:
            y = y.unsqueeze(-1)
        if y.shape != (n, critic.out_dim):
            raise ValueError(
                f"targets must have shape ({n},) or ({n}, {critic.out_dim}), got {tuple(y.shape)}"
            )
        ys.append(y)
    pairs = list(zip(critics, ys, strict=True))
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n, minibatch):
                idx = perm[start : start + minibatch]
                o = obs[idx]
                loss = sum(F.mse_loss(critic(o), y[idx]) for critic, y in pairs)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in optimizers:
                    opt.step()
    with torch.no_grad():
        return [float(F.mse_loss(critic(obs), y)) for critic, y in pairs]


def _fit_one_critic(
    critic: Critic,
    optimizer_cls: type,
    defaults: dict[str, Any],
    optimizer_state: dict[str, Any],
    obs: Tensor,
    target: Tensor,
    epochs: int,
    minibatch: int,
    seed: int,
) -> tuple[dict[str, Tensor], dict[str, Any], float]:
    """A worker's job of :func:`fit_critics_on_pool`: the fitted critic's and optimizer's states."""
    optimizer = optimizer_cls(critic.parameters(), **defaults)
    optimizer.load_state_dict(optimizer_state)
    gen = torch.Generator().manual_seed(seed)
    (loss,) = fit_critics([critic], [optimizer], obs, [target], epochs, minibatch, gen)
    return critic.state_dict(), optimizer.state_dict(), loss


def fit_critics_on_pool(
    pool: Any,
    critics: Sequence[Critic],
    optimizers: Sequence[torch.optim.Optimizer],
    obs: Tensor,
    targets: Sequence[Tensor],
    epochs: int,
    minibatch: int,
    seed: int,
) -> list[float]:
    """Fit each critic on its own, in parallel on ``pool``'s workers where it has several.

    Each critic is fitted as :func:`fit_critics` fits it (minibatches shuffled by a generator
    seeded ``seed``, the same permutations for every critic), so the result is the same, bit for
    bit, wherever it ran (``pool=None`` or a serial pool: here, one after the other). The critics
    and optimizers are updated in place.

    Returns:
        The full-batch MSE of each critic after fitting.
    """
    _check_one_each(critics, optimizers, targets)
    if pool is None or not pool.parallel:
        # together: one shared forward/backward per minibatch, the same numbers as one by one
        # (each critic's gradient is its own loss's; tests/test_cpo.py checks it)
        gen = torch.Generator().manual_seed(seed)
        return fit_critics(critics, optimizers, obs, targets, epochs, minibatch, gen)
    obs = obs.detach()
    futures = [
        pool.submit(
            _fit_one_critic,
            c,
            type(o),
            dict(o.defaults),
            o.state_dict(),
            obs,
            t.detach(),
            epochs,
            minibatch,
            seed,
        )
        for c, o, t in zip(critics, optimizers, targets, strict=True)
    ]
    losses = []
    for critic, optimizer, fut in zip(critics, optimizers, futures, strict=True):
        state, opt_state, loss = fut.result()
        critic.load_state_dict(state)
        optimizer.load_state_dict(opt_state)
        losses.append(loss)
    return losses


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it (same update rule, less overhead)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch: no fused CPU Adam
        return torch.optim.Adam(params, lr=lr)
