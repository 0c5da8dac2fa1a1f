import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from difftrust import conjugate_gradient


@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), k=st.integers(1, 4))
def test_cg_solves_several_right_hand_sides(seed, n, k):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    H = torch.as_tensor(M @ M.T + 0.1 * np.eye(n))
    R = torch.as_tensor(rng.normal(size=(n, k)))
    res = conjugate_gradient(lambda V: H @ V, R, max_iter=4 * n, tol=1e-12)
    X = torch.linalg.solve(H, R)
    assert torch.allclose(res.x, X, rtol=1e-7, atol=1e-8 * float(X.abs().max()))
    assert res.residuals.shape == (k,)
    assert float(res.residuals.max()) <= 1e-10
    # each column equals its own single-rhs solve
    single = conjugate_gradient(lambda v: H @ v, R[:, 0], max_iter=4 * n, tol=1e-12)
    assert torch.allclose(single.x, res.x[:, 0], rtol=1e-9, atol=1e-12)


def test_cg_zero_rhs_and_early_stop():
    H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    R = torch.zeros(3, 2, dtype=torch.float64)
    R[0, 1] = 1.0
    res = conjugate_gradient(lambda V: H @ V, R, max_iter=10)
    assert torch.equal(res.x[:, 0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(res.x[:, 1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert res.iterations == 1


def test_cg_detects_non_positive_curvature():
    H = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not positive definite"):
        conjugate_gradient(lambda V: H @ V, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_cg_bad_arguments():
    H = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(lambda V: H @ V, torch.ones(2, dtype=torch.float64), max_iter=0)
    with pytest.raises(ValueError, match="rhs must have shape"):
        conjugate_gradient(lambda V: H @ V, torch.ones(2, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="rhs must be a torch.Tensor"):
        conjugate_gradient(lambda V: H @ V, [1.0, 2.0])


@pytest.mark.parametrize("max_iter", [3, 40])  # truncated, and converged before max_iter
def test_truncated_cg_is_the_solve_at_the_default_tolerance_without_one(max_iter):
    import warnings

    from difftrust.cg import TRUNCATED_TOL

    rng = np.random.default_rng(3)
    M = rng.normal(size=(12, 12))
    H = torch.as_tensor(M @ M.T + 0.5 * np.eye(12))
    R = torch.as_tensor(rng.normal(size=(12, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # truncated conjugate gradient warns about nothing
        trunc = conjugate_gradient(lambda V: H @ V, R, max_iter=max_iter, tol=None)
    ref = conjugate_gradient(lambda V: H @ V, R, max_iter=max_iter, tol=TRUNCATED_TOL)
    assert torch.equal(trunc.x, ref.x) and torch.equal(trunc.residuals, ref.residuals)
    assert trunc.iterations == ref.iterations
    assert trunc.tol is None and trunc.converged is None and ref.tol == TRUNCATED_TOL
    if max_iter == 3:  # stopped by max_iter well above the tolerance: the method, not a failure
        assert trunc.iterations == 3 and float(trunc.residuals.max()) > 1e-3 and ref.converged is False
    else:  # 12 unknowns: stops early at the tolerance, as tol=1e-10 does
        assert trunc.iterations < max_iter and float(trunc.residuals.max()) <= TRUNCATED_TOL
        assert ref.converged is True


@pytest.mark.parametrize("tol", [-1.0, math.nan, "1e-10", True])
def test_cg_rejects_a_bad_tolerance_naming_it(tol):
    H = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"tol must be a number >= 0 or None .*got " + re.escape(repr(tol))):
        conjugate_gradient(lambda V: H @ V, torch.ones(2, dtype=torch.float64), tol=tol)
