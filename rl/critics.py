"""Fitting the reward and cost critics of CPO and Meta-CPO: together in one process, or one per
worker on a pool, the same numbers either way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    critics of CPO, whose fitting is otherwise a large part of an update. Each epoch's rows are
    gathered in shuffled order once (minibatches are views), plain critics run their layers as
    functions, and Adam optimizers with equal settings step as one: the same numbers as one
    step per critic (tests/test_cpo.py compares them bit for bit).

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
    forwards = [_forward(critic) for critic in critics]
    step, finish = _stepper(optimizers)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                perm = torch.randperm(n, generator=generator)
                # the epoch's rows in shuffled order once: each minibatch is then a view
                obs_e, ys_e = obs[perm], [y[perm] for y in ys]
                for start in range(0, n, minibatch):
                    stop = start + minibatch
                    o = _aligned(obs_e[start:stop])
                    loss = None
                    for forward, y in zip(forwards, ys_e, strict=True):
                        term = F.mse_loss(forward(o), _aligned(y[start:stop]))
                        loss = term if loss is None else loss + term
                    step(loss)
    finally:
        finish()
    with torch.no_grad():
        return [float(F.mse_loss(critic(obs), y)) for critic, y in zip(critics, ys, strict=True)]


def _aligned(t: Tensor) -> Tensor:
    """``t``, copied where its data do not start on a 64-byte boundary: the matrix products of
    a minibatch view then run as on the freshly allocated (aligned) rows of an index gather, with
    the same rounding (BLAS kernels may round differently on unaligned data)."""
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _forward(critic: Critic) -> Callable[[Tensor], Tensor]:
    """``critic``'s forward pass: its layers called as functions (the same operations as the
    module's call, without its per-module overhead) for a plain :class:`rl.policy.Critic`, else
    the module itself."""
    net = getattr(critic, "net", None)
    plain = (
        type(critic) is Critic
        and isinstance(net, nn.Sequential)
        and all(type(m) in (nn.Linear, nn.Tanh) for m in net)
        and not any(m._forward_hooks or m._forward_pre_hooks for m in (critic, net, *net))
    )
    if not plain:
        return critic
    layers = [(m.weight, m.bias) if type(m) is nn.Linear else None for m in net]

    def forward(h: Tensor) -> Tensor:
        for layer in layers:
            h = torch.tanh(h) if layer is None else F.linear(h, *layer)
        return h

    return forward


def _stepper(optimizers: Sequence[Any]) -> tuple[Callable[[Tensor], None], Callable[[], None]]:
    """``(step, finish)``: ``step(loss)`` clears the gradients, backpropagates ``loss`` and steps
    every optimizer; ``finish()`` hands the state back. Adam optimizers with the same settings,
    one parameter group each, are stepped as one Adam over all their parameters (its update is
    per parameter: the same numbers, one call instead of one per critic); others one by one."""
    one = _combined_adam(optimizers)
    steppers = list(optimizers) if one is None else [one]

    def step(loss: Tensor) -> None:
        for opt in steppers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in steppers:
            opt.step()

    def finish() -> None:
        if one is None:
            return
        for opt in optimizers:
            for p in opt.param_groups[0]["params"]:
                if p in one.state:
                    opt.state[p] = one.state[p]

    return step, finish


def _combined_adam(optimizers: Sequence[Any]) -> torch.optim.Adam | None:
    """One Adam over the parameters of ``optimizers`` carrying their state (the same state
    objects), or ``None`` where they are not all plain Adam with one group and equal settings."""
    if len(optimizers) < 2 or any(
        type(o) is not torch.optim.Adam or len(o.param_groups) != 1 for o in optimizers
    ):
        return None
    settings = [{k: v for k, v in o.param_groups[0].items() if k != "params"} for o in optimizers]
    if any(s != settings[0] for s in settings[1:]):
        return None
    params = [p for o in optimizers for p in o.param_groups[0]["params"]]
    if len({id(p) for p in params}) != len(params):
        return None
    try:
        one = torch.optim.Adam(params, **settings[0])
    except (TypeError, ValueError, RuntimeError):  # a setting this Adam does not take
        return None
    if one.param_groups[0].keys() != optimizers[0].param_groups[0].keys():
        return None
    for opt in optimizers:
        for p in opt.param_groups[0]["params"]:
            if p in opt.state:
                one.state[p] = opt.state[p]
    return one


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
