"""Gaussian MLP policy with a flat parameter vector, critics and observation normaliser.

The policy is *architecture only*: its parameters live in one flat 1-D tensor that
the caller owns. A :class:`difftrust.TrustRegionStep` step ``x`` applies directly
(``params + x``), and an adapted parameter vector carrying an autograd graph (the
Meta-CPO inner loop) is just another tensor passed to the same methods.

>>> import torch
>>> from rl.policy import GaussianPolicy
>>> pi = GaussianPolicy(obs_dim=3, act_dim=2, hidden=(8, 8))
>>> params = pi.init_params(torch.Generator().manual_seed(0))
>>> params.shape == (pi.num_params,)
True
>>> obs = torch.zeros(5, 3, dtype=torch.float64)
>>> mean, log_std = pi.mean_log_std(params, obs)
>>> tuple(mean.shape), tuple(log_std.shape)
((5, 2), (2,))
>>> float(pi.kl(params, params, obs))
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Critic", "GaussianPolicy", "ObsNormalizer", "fit_critic"]

_LOG_2PI = math.log(2.0 * math.pi)


def _check_positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_hidden(hidden: Any) -> tuple[int, ...]:
    if isinstance(hidden, int | str) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of positive ints such as (64, 64), got {hidden!r}")
    out = tuple(hidden)
    if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in out):
        raise ValueError(f"hidden must contain positive ints only, got {hidden!r}")
    return out


class GaussianPolicy:
    """Diagonal Gaussian policy: tanh MLP mean, state-independent log-std.

    Layout of the flat parameter vector: for each linear layer (hidden layers, then
    the mean head) its weight ``(out, in)`` row-major followed by its bias ``(out,)``;
    the last ``act_dim`` entries are the log-std.

    Args:
        obs_dim: Observation size.
        act_dim: Action size.
        hidden: Hidden layer widths (tanh activations); ``()`` gives a linear policy.
        init_log_std: Initial value of every log-std entry.
        dtype: Floating dtype of the parameters produced by :meth:`init_params`.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (64, 64),
        init_log_std: float = -0.5,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.obs_dim = _check_positive_int("obs_dim", obs_dim)
        self.act_dim = _check_positive_int("act_dim", act_dim)
        self.hidden = _check_hidden(hidden)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self.init_log_std = float(init_log_std)
        sizes = (self.obs_dim, *self.hidden, self.act_dim)
        # (weight slice, weight shape, bias slice) per linear layer.
        self._layers: list[tuple[slice, tuple[int, int], slice]] = []
        offset = 0
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            w = slice(offset, offset + fan_in * fan_out)
            offset += fan_in * fan_out
            b = slice(offset, offset + fan_out)
            offset += fan_out
            self._layers.append((w, (fan_out, fan_in), b))
        self._log_std = slice(offset, offset + self.act_dim)
        self.num_params: int = offset + self.act_dim

    def __repr__(self) -> str:
        return (
            f"GaussianPolicy(obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
            f"hidden={self.hidden}, num_params={self.num_params})"
        )

    # ------------------------------------------------------------------ params
    def init_params(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh flat parameter vector.

        Hidden layers: orthogonal weights with gain sqrt(2), zero biases; mean head:
        orthogonal with gain 0.01 (near-zero initial mean); log-std ``init_log_std``.
        """
        params = torch.zeros(self.num_params, dtype=self.dtype)
        n = len(self._layers)
        for i, (w, shape, _b) in enumerate(self._layers):
            gain = 0.01 if i == n - 1 else math.sqrt(2.0)
            params[w] = _orthogonal(shape, gain, generator, self.dtype).reshape(-1)
        params[self._log_std] = self.init_log_std
        return params

    def reparametrize_input(
        self, params: Tensor, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]
    ) -> Tensor:
        """Parameters that act on inputs normalised with ``new = (mean, std)`` exactly as ``params`` act
        on inputs normalised with ``old`` (up to the normaliser's clipping).

        With ``z = (x - m0)/s0`` and ``z' = (x - m1)/s1``: ``z = (s1/s0) z' + (m1 - m0)/s0``, so the first
        layer becomes ``W' = W diag(s1/s0)``, ``b' = b + W (m1 - m0)/s0``. Updating the observation
        statistics then leaves the policy unchanged, instead of moving it outside the trust region.
        """
        w, shape, b = self._layers[0]
        return _reparametrize_first_layer(params, w, shape, b, old, new)

    def _check_params(self, params: Tensor) -> None:
        if not isinstance(params, Tensor):
            raise TypeError(f"params must be a torch.Tensor, got {type(params).__name__}")
        if params.shape != (self.num_params,):
            raise ValueError(
                f"params must be a flat tensor of shape ({self.num_params},), got {tuple(params.shape)}"
            )

    def _check_obs(self, obs: Tensor) -> None:
        if not isinstance(obs, Tensor):
            raise TypeError(f"obs must be a torch.Tensor, got {type(obs).__name__}")
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (T, {self.obs_dim}), got {tuple(obs.shape)}")

    # ----------------------------------------------------------------- forward
    def mean_log_std(self, params: Tensor, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(T, act_dim)`` and log-std ``(act_dim,)`` (differentiable in params)."""
        self._check_params(params)
        self._check_obs(obs)
        h = obs
        n = len(self._layers)
        for i, (w, shape, b) in enumerate(self._layers):
            h = F.linear(h, params[w].view(shape), params[b])
            if i < n - 1:
                h = torch.tanh(h)
        return h, params[self._log_std]

    def log_prob(self, params: Tensor, obs: Tensor, act: Tensor) -> Tensor:
        """Log-density of ``act`` ``(T, act_dim)`` under pi_params(.|obs): shape ``(T,)``."""
        mean, log_std = self.mean_log_std(params, obs)
        if act.shape != mean.shape:
            raise ValueError(f"act must have shape {tuple(mean.shape)}, got {tuple(act.shape)}")
        z = (act - mean) * torch.exp(-log_std)
        return -0.5 * (z * z).sum(-1) - log_std.sum() - 0.5 * self.act_dim * _LOG_2PI

    @torch.no_grad()
    def sample(self, params: Tensor, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw one action per row of ``obs`` (no gradient)."""
        mean, log_std = self.mean_log_std(params, obs)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + noise * torch.exp(log_std)

    def kl(self, ref_params: Tensor, params: Tensor, obs: Tensor) -> Tensor:
        """Mean over ``obs`` of KL(pi_ref(.|s) || pi_params(.|s)), a scalar.

        Differentiable in *both* arguments (nothing is detached): the Fisher metric
        at psi is the Hessian in ``params`` at ``params = ref_params = psi`` and
        depends on psi through both (``docs/concepts.md``).
        """
        mu0, ls0 = self.mean_log_std(ref_params, obs)
        mu1, ls1 = self.mean_log_std(params, obs)
        var_ratio = torch.exp(2.0 * (ls0 - ls1))
        mean_term = ((mu1 - mu0) * torch.exp(-ls1)) ** 2
        per_state = (ls1 - ls0).sum() + 0.5 * (var_ratio.sum() + mean_term.sum(-1) - self.act_dim)
        return per_state.mean()

    def entropy(self, params: Tensor) -> Tensor:
        """Entropy of the (state-independent) action distribution, a scalar."""
        self._check_params(params)
        log_std = params[self._log_std]
        return log_std.sum() + 0.5 * self.act_dim * (1.0 + _LOG_2PI)

    def log_std(self, params: Tensor) -> Tensor:
        """The log-std slice of ``params``."""
        self._check_params(params)
        return params[self._log_std]

    @torch.no_grad()
    def fisher_product(self, params: Tensor, obs: Tensor, parts: int = 1) -> Callable[[Tensor], Tensor]:
        """``v -> F v``: the Fisher matrix at ``params`` over the states ``obs``, in closed form.

        ``F`` is the Hessian of :meth:`kl` ``(params, .)`` at ``params`` (the same matrix as the
        double-backward product, up to rounding): for the mean network ``mean_t J_t' diag(exp(-2
        log_std)) J_t`` (``J_t`` the Jacobian of the mean at state ``t``), ``2 I`` for the log-std,
        no cross terms. Each product is one forward-mode pass (``J v``) and one reverse pass
        (``J' u``) through the stored activations: no autograd graph, about half the work of the
        double-backward product. Not differentiable (for steps that need no gradient).

        Args:
            params: Flat parameters.
            obs: ``(T, obs_dim)`` states.
            parts: The states' sum is taken over this many contiguous blocks of rows, added in
                order (:meth:`fisher_block`; the same numbers as the blocks computed elsewhere).

        Returns:
            A function of ``v`` ``(num_params,)`` returning ``F v`` (same shape and dtype).
        """
        self._check_params(params)
        self._check_obs(obs)
        blocks = [self.fisher_block(params, rows) for rows in torch.tensor_split(obs, parts)]
        return self.fisher_from_blocks(params, obs.shape[0], lambda v: [block(v) for block in blocks])

    def fisher_from_blocks(
        self, params: Tensor, num_states: int, block_products: Callable[[Tensor], list[Tensor]]
    ) -> Callable[[Tensor], Tensor]:
        """``v -> F v`` from the blocks' unnormalised products ``block_products(v)`` (see
        :meth:`fisher_block`), summed in order, over ``num_states`` states."""
        self._check_params(params)
        log_std = self._log_std
        precision_scale = 1.0 / num_states

        def product(v: Tensor) -> Tensor:
            if v.shape != params.shape:
                raise ValueError(f"v must have shape {tuple(params.shape)}, got {tuple(v.shape)}")
            parts = block_products(v)
            out = parts[0]
            for part in parts[1:]:
                out = out + part
            out = out * precision_scale
            out[log_std] = 2.0 * v[log_std]
            return out

        return product

    @torch.no_grad()
    def fisher_block(self, params: Tensor, obs: Tensor) -> Callable[[Tensor], Tensor]:
        """``v -> sum_t J_t' diag(exp(-2 log_std)) J_t v`` over the rows of ``obs`` (unnormalised,
        log-std entries 0): the activations are computed once, every product reuses them."""
        self._check_params(params)
        self._check_obs(obs)
        params = params.detach()
        obs = obs.detach().to(params.dtype)
        weights = [params[w].view(shape) for w, shape, _ in self._layers]
        acts = [obs]  # inputs of every layer
        for i, (w, b) in enumerate(zip(weights, (params[b] for _, _, b in self._layers), strict=True)):
            if i == len(weights) - 1:
                break
            acts.append(torch.tanh(F.linear(acts[-1], w, b)))
        slopes = [1.0 - a * a for a in acts[1:]]  # tanh' of every hidden layer
        precision = torch.exp(-2.0 * params[self._log_std])
        layers = self._layers

        def block(v: Tensor) -> Tensor:
            # forward mode: the change of every layer's output along v
            d = None
            for i, (w, shape, b) in enumerate(layers):
                dz = F.linear(acts[i], v[w].view(shape), v[b])
                if d is not None:
                    dz = dz + d @ weights[i].T
                d = dz * slopes[i] if i < len(layers) - 1 else dz
            u = d * precision
            # reverse mode: J' u
            out = torch.zeros_like(v)
            for i in range(len(layers) - 1, -1, -1):
                w, shape, b = layers[i]
                out[w] = (u.T @ acts[i]).reshape(-1)
                out[b] = u.sum(0)
                if i > 0:
                    u = (u @ weights[i]) * slopes[i - 1]
            return out

        return block


def _reparametrize_first_layer(
    params: Tensor,
    w: slice,
    shape: tuple[int, int],
    b: slice,
    old: tuple[Tensor, Tensor],
    new: tuple[Tensor, Tensor],
) -> Tensor:
    (m0, s0), (m1, s1) = old, new
    W = params[w].view(shape)
    scale = (s1 / s0).to(params.dtype)
    shift = ((m1 - m0) / s0).to(params.dtype)
    out = params.clone()
    out[w] = (W * scale).reshape(-1)
    out[b] = params[b] + W @ shift
    return out


def _orthogonal(
    shape: tuple[int, int], gain: float, generator: torch.Generator | None, dtype: torch.dtype
) -> Tensor:
    """Orthogonal matrix of ``shape`` scaled by ``gain`` (QR of a Gaussian, sign-fixed)."""
    rows, cols = shape
    flat = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if rows < cols:
        q = q.T
    return (gain * q[:rows, :cols]).to(dtype)


# ---------------------------------------------------------------------- critics
class Critic(nn.Module):
    """Tanh MLP value function ``obs (T, obs_dim) -> values (T, out_dim)``.

    ``out_dim`` is 1 for the reward critic and the number of cost channels for the
    cost critic (one head per channel).
    """

    def __init__(
        self,
        obs_dim: int,
        out_dim: int = 1,
        hidden: Sequence[int] = (64, 64),
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        obs_dim = _check_positive_int("obs_dim", obs_dim)
        self.out_dim = _check_positive_int("out_dim", out_dim)
        sizes = (obs_dim, *_check_hidden(hidden), self.out_dim)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(fan_in, fan_out, dtype=dtype)
            last = i == len(sizes) - 2
            with torch.no_grad():
                lin.weight.copy_(
                    _orthogonal((fan_out, fan_in), 1.0 if last else math.sqrt(2.0), generator, dtype)
                )
                lin.bias.zero_()
            layers.append(lin)
            if not last:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    @torch.no_grad()
    def reparametrize_input(self, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> None:
        """In place: act on inputs normalised with ``new`` as before on ``old`` (see
        :meth:`GaussianPolicy.reparametrize_input`)."""
        lin = self.net[0]
        (m0, s0), (m1, s1) = old, new
        W = lin.weight
        lin.bias += W @ ((m1 - m0) / s0).to(W.dtype)
        W *= (s1 / s0).to(W.dtype)


def fit_critic(
    critic: Critic,
    optimizer: torch.optim.Optimizer,
    obs: Tensor,
    targets: Tensor,
    epochs: int = 5,
    minibatch: int = 128,
    generator: torch.Generator | None = None,
) -> float:
    """Regress ``critic(obs)`` onto ``targets`` by minibatch MSE steps of ``optimizer``.

    Args:
        critic: The critic to fit (updated in place).
        optimizer: Its optimizer (Adam in this package; its state persists).
        obs: ``(T, obs_dim)`` inputs.
        targets: ``(T,)`` (single head) or ``(T, out_dim)`` regression targets.
        epochs: Passes over the data.
        minibatch: Rows per optimizer step.
        generator: Shuffling generator (reproducibility).

    Returns:
        The full-batch MSE after fitting.
    """
    epochs = _check_positive_int("epochs", epochs)
    minibatch = _check_positive_int("minibatch", minibatch)
    obs = obs.detach()
    targets = targets.detach()
    if targets.ndim == 1:
        targets = targets.unsqueeze(-1)
    if targets.shape != (obs.shape[0], critic.out_dim):
        raise ValueError(
            f"targets must have shape ({obs.shape[0]},) or ({obs.shape[0]}, {critic.out_dim}), "
            f"got {tuple(targets.shape)}"
        )
    n = obs.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, minibatch):
            idx = perm[start : start + minibatch]
            loss = F.mse_loss(critic(obs[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float(F.mse_loss(critic(obs), targets))


# ------------------------------------------------------------------ normaliser
class ObsNormalizer:
    """Running mean / variance of observations (parallel Welford update, Chan et al.).

    ``normalize(x) = clip((x - mean) / sqrt(var + eps), -clip, clip)``. Before any
    update the statistics are mean 0 and variance 1 (identity up to clipping).

    Args:
        obs_dim: Observation size.
        clip: Symmetric clipping bound of normalised values.
        eps: Variance floor inside the square root.
    """

    def __init__(self, obs_dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.obs_dim = _check_positive_int("obs_dim", obs_dim)
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        self.clip = float(clip)
        self.eps = float(eps)
        self.count = 0
        self.mean = torch.zeros(self.obs_dim, dtype=torch.float64)
        self._m2 = torch.zeros(self.obs_dim, dtype=torch.float64)

    def stats(self) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` as used by :meth:`normalize` (copies)."""
        return self.mean.clone(), torch.sqrt(self.var + self.eps)

    @property
    def var(self) -> Tensor:
        """Population variance (1 before the first update)."""
        if self.count == 0:
            return torch.ones(self.obs_dim, dtype=torch.float64)
        return self._m2 / self.count

    def _as_tensor(self, x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(
                f"observations must have shape (N, {self.obs_dim}) or ({self.obs_dim},), got {tuple(x.shape)}"
            )
        return x

    def update(self, x: Tensor | np.ndarray) -> None:
        """Merge the rows of ``x`` ``(N, obs_dim)`` into the running statistics."""
        x = self._as_tensor(x)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n

    def normalize(self, x: Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> Tensor:
        """Normalised, clipped copy of ``x`` as a tensor of ``dtype`` (shape kept)."""
        t = torch.as_tensor(x, dtype=torch.float64)
        if t.shape[-1] != self.obs_dim:
            raise ValueError(f"observations must end in dimension {self.obs_dim}, got {tuple(t.shape)}")
        z = (t - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp(-self.clip, self.clip).to(dtype)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "count": torch.tensor(self.count, dtype=torch.int64),
            "mean": self.mean.clone(),
            "m2": self._m2.clone(),
            "clip": torch.tensor(self.clip, dtype=torch.float64),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore statistics written by :meth:`state_dict`."""
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"normalizer state is missing keys {sorted(missing)}; got {sorted(state)}")
        mean = torch.as_tensor(state["mean"], dtype=torch.float64)
        if mean.shape != (self.obs_dim,):
            raise ValueError(f"normalizer mean must have shape ({self.obs_dim},), got {tuple(mean.shape)}")
        self.count = int(state["count"])
        self.mean = mean.clone()
        self._m2 = torch.as_tensor(state["m2"], dtype=torch.float64).clone()
        if "clip" in state:
            self.clip = float(state["clip"])
        if "eps" in state:
            self.eps = float(state["eps"])
