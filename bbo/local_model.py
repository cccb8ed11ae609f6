"""A local quadratic model around the incumbent: the model step of derivative-free trust-region
methods (Powell's NEWUOA / BOBYQA; Conn, Scheinberg & Vicente 2009), for the exploitation step.

Near a smooth optimum the GP stops resolving: its outcomes are standardized over the whole study,
so the differences left (1e-8 of the objective's spread) sit below its noise floor, and its
predicted best point lands about as far off as the data near it are apart. A quadratic through the
incumbent's nearest neighbours, in values relative to the incumbent, has no such floor: each of its
steps gains orders of magnitude where the GP's gains one. Only well-posed fits are used: enough
points, all of them near the incumbent, a strictly concave model whose optimum lies among them.
Hand-written (a least-squares fit and one linear solve): the DFO libraries (Py-BOBYQA, PDFO) run
their own evaluation loop and cannot take one step inside an ask/tell service.
"""

from __future__ import annotations

import numpy as np

MAX_RADIUS = (
    0.2  # the points a model uses lie within this distance of the incumbent (unit cube): local only
)
MAX_CONDITION = 1e10  # a worse-conditioned fit (points nearly on a line or a conic) is not trusted


def n_coefficients(d: int) -> int:
    """A full quadratic in ``d`` variables: 1 + d + d (d + 1) / 2 coefficients."""
    return (d + 1) * (d + 2) // 2


def quadratic_step(X: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The maximizer of the quadratic interpolating the ``n_coefficients(d)`` points nearest the
    best one (``y`` larger is better, ``X`` in the unit cube), or None where that model is not
    trustworthy: too few points, points too far apart, ill-conditioned, not concave, or an optimum
    outside the ball the points span (an extrapolation)."""
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    n, d = X.shape
    k = n_coefficients(d)
    if n < k or not np.all(np.isfinite(y)):
        return None
    b = int(np.argmax(y))
    dist = np.linalg.norm(X - X[b], axis=1)
    idx = np.argsort(dist, kind="stable")[:k]
    r = float(dist[idx].max())
    if not 0 < r <= MAX_RADIUS:
        return None
    Z = (X[idx] - X[b]) / r  # scaled to the unit ball: the fit's conditioning does not depend on r
    iu = np.triu_indices(d)
    A = np.hstack([np.ones((k, 1)), Z, Z[:, iu[0]] * Z[:, iu[1]]])
    if np.linalg.cond(A) > MAX_CONDITION:
        return None
    coef = np.linalg.solve(A, y[idx] - y[b])
    g = coef[1 : 1 + d]
    H = np.zeros((d, d))
    H[iu] = coef[1 + d :]
    H = H + H.T  # off-diagonal terms appear once in the fit, the diagonal's doubled: H = hessian
    if np.max(np.linalg.eigvalsh(H)) >= 0:
        return None  # not concave: no maximizer, or a saddle
    z = -np.linalg.solve(H, g)
    if not np.all(np.isfinite(z)) or np.linalg.norm(z) > 1.0:
        return None
    return np.clip(X[b] + r * z, 0.0, 1.0)
