"""Metrics ``H`` of the trust region ``0.5 x'Hx <= delta``.

A metric is a small object with

* ``tensors``: the tensors ``H`` depends on (routed through autograd, so that the step
  is differentiable with respect to them), and
* ``operator(*tensors, create_graph=False) -> matvec``: ``matvec(V)`` returns ``H V`` for
  ``V`` of shape ``(n,)`` or ``(n, k)``. With ``create_graph=True`` the products must be
  differentiable functions of the given ``tensors``.

:class:`DenseMetric` is special-cased by the layer (Cholesky factorisation, exact), and so is
:class:`CholeskyMetric` (``H = L L'`` given by its lower-triangular factor: no factorisation).
Operator metrics (:class:`FisherMetric`, :class:`OperatorMetric`) are solved with
conjugate gradient; nothing of size ``n x n`` is formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["CholeskyMetric", "DenseMetric", "FisherMetric", "Metric", "OperatorMetric"]

MatVec = Callable[[Tensor], Tensor]


def _columns(V: Tensor, fn: MatVec) -> Tensor:
    """Apply a vector function to ``V`` of shape (n,) or to each column of (n, k)."""
    if V.dim() == 1:
        return fn(V)
    return torch.stack([fn(V[:, j]) for j in range(V.shape[1])], dim=1)


class Metric:
    """Base class: a symmetric positive-definite ``H`` given by its products."""

    tensors: tuple[Tensor, ...] = ()

    def operator(self, *tensors: Tensor, create_graph: bool = False) -> MatVec:
        raise NotImplementedError


class DenseMetric(Metric):
    """An explicit symmetric positive-definite matrix ``H`` of shape ``(n, n)`` or ``(B, n, n)``.

    The layer factorises it (Cholesky) instead of calling :meth:`operator`; passing the
    plain tensor as ``metric`` is equivalent.
    """

    def __init__(self, H: Tensor):
        if not isinstance(H, Tensor):
            raise TypeError(f"H must be a torch.Tensor, got {type(H).__name__}")
        self.H = H
        self.tensors = (H,)

    def operator(self, H: Tensor, create_graph: bool = False) -> MatVec:
        return lambda V: H @ V


class CholeskyMetric(Metric):
    """A dense metric ``H = L L'`` given by its Cholesky factor ``L``, ``(n, n)`` or ``(B, n, n)``.

    ``L`` must be lower triangular (exact zeros above the diagonal, as
    :func:`torch.linalg.cholesky` returns it) with a positive diagonal; the layer checks both and
    solves with ``L`` directly (no ``L L'``, no factorisation). The step and its gradients equal
    those of ``DenseMetric(L @ L.mT)``, the gradient to ``L`` included (every entry, as for
    ``H = L L'`` with a full ``L``), within rounding.

    Example:
        >>> L = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        >>> metric = CholeskyMetric(L)           # H = [[4, 2], [2, 2]]
    """

    def __init__(self, L: Tensor):
        if not isinstance(L, Tensor):
            raise TypeError(f"L must be a torch.Tensor, got {type(L).__name__}")
        self.L = L
        self.tensors = (L,)

    def operator(self, L: Tensor, create_graph: bool = False) -> MatVec:
        return lambda V: L @ (L.mT @ V)


class OperatorMetric(Metric):
    """A user operator ``H(tensors) v``.

    Args:
        matvec: ``matvec(v, *tensors) -> H v`` for a vector ``v`` of shape ``(n,)``; it must be a
            differentiable torch function of ``tensors`` if gradients should reach them.
        tensors: The tensors ``H`` depends on.
        damping: Added as ``damping * v`` (>= 0).

    Example:
        >>> d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
        >>> metric = OperatorMetric(lambda v, d: d * v, tensors=(d,))
    """

    def __init__(
        self,
        matvec: Callable[..., Tensor],
        tensors: Sequence[Tensor] = (),
        damping: float = 0.0,
    ):
        if not callable(matvec):
            raise TypeError(f"matvec must be callable, got {type(matvec).__name__}")
        if not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError("tensors must be a sequence of torch.Tensor")
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping!r}")
        self.matvec = matvec
        self.tensors = tuple(tensors)
        self.damping = float(damping)

    def operator(self, *tensors: Tensor, create_graph: bool = False) -> MatVec:
        def hv(v: Tensor) -> Tensor:
            out = self.matvec(v, *tensors)
            return out + self.damping * v if self.damping else out

        return lambda V: _columns(V, hv)


class FisherMetric(Metric):
    """The damped Fisher metric of a policy: ``H = d^2/dphi^2 KL(pi_psi || pi_phi)|_{phi=psi} + damping I``.

    Built from ``kl(ref_params, params)``, a scalar function (e.g. the mean KL over a batch of
    states). Both arguments are fed the same parameters ``psi``: the Hessian is taken with
    respect to the second argument, and when gradients flow back to ``psi`` they do so through
    BOTH arguments (the Fisher depends on ``psi`` through both; a detached reference would lose
    one of them).

    For the forward solves the first-order graph ``grad_phi KL`` is built once and reused for
    every product (cheaper on CPU than rebuilding it or batching with vmap).

    Args:
        kl: ``kl(ref_params, params) -> scalar``, twice differentiable in ``params`` and
            differentiable in ``ref_params``.
        params: The flat parameter vector ``psi`` at which the Fisher is taken.
        damping: Damping added to the diagonal (>= 0).

    Example:
        >>> from torch.distributions import Normal, kl_divergence
        >>> obs = torch.randn(8, 3, dtype=torch.float64)
        >>> def kl(ref, p):
        ...     mean = lambda w: obs @ w.view(3, 1)
        ...     return kl_divergence(Normal(mean(ref), 1.0), Normal(mean(p), 1.0)).mean()
        >>> psi = torch.randn(3, dtype=torch.float64)
        >>> metric = FisherMetric(kl, psi, damping=0.1)
    """

    def __init__(self, kl: Callable[[Tensor, Tensor], Tensor], params: Tensor, damping: float = 0.1):
        if not callable(kl):
            raise TypeError(f"kl must be callable kl(ref_params, params), got {type(kl).__name__}")
        if not isinstance(params, Tensor) or params.dim() != 1:
            raise TypeError(
                "params must be a flat 1-D torch.Tensor, got "
                + (f"shape {tuple(params.shape)}" if isinstance(params, Tensor) else type(params).__name__)
            )
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping!r}")
        self.kl = kl
        self.params = params
        self.damping = float(damping)
        self.tensors = (params,)

    def operator(self, psi: Tensor, create_graph: bool = False) -> MatVec:
        with torch.enable_grad():
            if create_graph:
                # psi feeds both arguments; phi is a separate node so that the Hessian is
                # taken in the second argument only, while d/dpsi sees both paths.
                ref = psi
                phi = psi.clone()
            else:
                ref = psi.detach()
                phi = psi.detach().requires_grad_(True)
            (grad1,) = torch.autograd.grad(self.kl(ref, phi), phi, create_graph=True)
        damping = self.damping

        def hv(v: Tensor) -> Tensor:
            with torch.enable_grad():
                (out,) = torch.autograd.grad(
                    grad1, phi, grad_outputs=v, retain_graph=True, create_graph=create_graph
                )
            return out + damping * v if damping else out

        return lambda V: _columns(V, hv)
