"""The local quadratic model step (bbo.local_model): exact on quadratics, and refused wherever the
fit would be an extrapolation or ill-posed."""

from __future__ import annotations

import numpy as np
import pytest

from bbo.local_model import MAX_RADIUS, n_coefficients, quadratic_step


def _concave(X, centre, H):
    D = X - centre
    return -0.5 * np.einsum("ni,ij,nj->n", D, H, D)


@pytest.mark.parametrize("d", [2, 3])
def test_recovers_the_optimum_of_a_quadratic(d):
    rng = np.random.default_rng(d)
    centre = np.full(d, 0.4) + 0.003 * rng.standard_normal(d)
    A = rng.standard_normal((d, d))
    H = A @ A.T + d * np.eye(d)  # positive definite: -0.5 x'Hx is concave
    X = np.clip(centre + 0.02 * rng.standard_normal((n_coefficients(d) + 4, d)), 0, 1)
    x = quadratic_step(X, _concave(X, centre, H))
    assert x is not None and np.linalg.norm(x - centre) < 1e-9


def test_refuses_what_it_cannot_trust():
    rng = np.random.default_rng(0)
    H = np.diag([2.0, 1.0])
    near = 0.5 + 0.01 * rng.standard_normal((6, 2))
    assert (
        quadratic_step(near[:5], _concave(near[:5], np.array([0.5, 0.5]), H)) is None
    )  # fewer points than coefficients
    far = np.array([[0.5, 0.5], [0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9], [0.5, 0.1]])
    assert np.linalg.norm(far[1:] - far[0], axis=1).max() > MAX_RADIUS
    assert quadratic_step(far, _concave(far, np.array([0.5, 0.5]), H)) is None  # not local
    assert (
        quadratic_step(near, -_concave(near, np.array([0.5, 0.5]), H)) is None
    )  # a bowl when maximizing: no maximizer
    assert (
        quadratic_step(near, _concave(near, np.array([0.7, 0.5]), H)) is None
    )  # optimum outside the points' ball
    saddle = np.diag([2.0, -1.0])
    assert quadratic_step(near, _concave(near, np.array([0.5, 0.5]), saddle)) is None
    line = np.column_stack([np.linspace(0.45, 0.55, 6), np.linspace(0.45, 0.55, 6)])
    assert (
        quadratic_step(line, _concave(line, np.array([0.5, 0.5]), H)) is None
    )  # points on a line: ill-posed
    assert (
        quadratic_step(
            near, np.where(np.arange(6) == 2, np.nan, _concave(near, np.array([0.5, 0.5]), H))
        )
        is None
    )
