"""A fitted GP's posterior marginals and their gradients in x, in closed form with NumPy.

An acquisition optimizer evaluates a q = 1 acquisition and its gradient a few dozen times per ask
on a handful of points; there torch's per-operation dispatch and its autograd tape, not arithmetic,
set the cost (about 2.5 ms an evaluation on a CPU at n = 50, 90 % of it overhead).
:class:`MarginalGradients` computes the same means and variances as
:class:`~bbo.predictive.CachedPredictive` (from its Cholesky factor, kernel hyperparameters and
transforms) with the gradients derived by hand: the Matern-5/2 kernel's
``dk/dx = -5/3 s (1 + sqrt5 r) exp(-sqrt5 r) (x - x_i) / l^2``, the mean's ``dk/dx . alpha`` and the
variance's ``-2 dk/dx . K^-1 k``. Distances are computed directly rather than by GPyTorch's
``|a|^2 + |b|^2 - 2ab`` expansion, so values agree with the GP to ~1e-10 rather than to the bit.

Covers what bbo's surrogates are built of: scale, sum and product kernels over Matern-5/2 and
categorical kernels (categorical columns have zero gradient, as in autograd), constant means,
``Normalize`` (any affine input map) and ``Standardize``, one output or a batch of outputs, and
a transfer study's stacked prior mean where its sources have closed forms themselves
(:class:`bbo.transfer_model.TransferPrior`). Built
by :func:`marginal_gradients`, which returns None for anything else, on a GPU, or where a check at
random points disagrees with the torch marginals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from botorch.models.kernels.categorical import CategoricalKernel
from gpytorch.kernels import AdditiveKernel, Kernel, MaternKernel, ProductKernel, ScaleKernel
from gpytorch.means import ConstantMean
from scipy.linalg.lapack import dtrtrs
from scipy.spatial.distance import cdist
from scipy.special import expit

from bbo.predictive import CHECK_RTOL  # the agreement required with the torch marginals

log = logging.getLogger(__name__)

SQRT5 = math.sqrt(5.0)
SOFTPLUS_THRESHOLD = 20.0  # torch's softplus is the identity above this

# a kernel node: x (b x d, transformed inputs), grad -> (K: m x b x n, dK: m x b x n x d or None)
Node = Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]
# a prior mean: x (b x d, the model's inputs), grad -> (b x m, b x m x d or None)
PriorMean = Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]


def matern52(r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Matern-5/2 correlation at squared scaled distances ``r2`` and ``(dk/dr) / r``, which
    stays finite at r = 0 (every gradient of the kernel in its inputs or lengthscales is that
    times a squared-distance factor)."""
    r = np.sqrt(r2)
    e = np.exp(-SQRT5 * r)
    return (1.0 + SQRT5 * r + (5.0 / 3.0) * r2) * e, (-5.0 / 3.0) * (1.0 + SQRT5 * r) * e


def softplus(x: np.ndarray) -> np.ndarray:
    """torch's ``softplus`` (the identity above 20), GPyTorch's positive-parameter transform."""
    return np.where(x > SOFTPLUS_THRESHOLD, x, np.log1p(np.exp(np.minimum(x, SOFTPLUS_THRESHOLD))))


def softplus_grad(x: np.ndarray) -> np.ndarray:
    """The derivative of :func:`softplus` as torch's backward computes it."""
    return np.where(x > SOFTPLUS_THRESHOLD, 1.0, expit(x))


class MarginalGradients:
    """Posterior marginals of every output at ``b`` points and, on request, their gradients."""

    def __init__(
        self, node: Node, Xt, L, alpha, const, prior, offset, coef, loc, scale, prior_mean=None
    ):
        self._node, self._Xt, self._L, self._alpha = node, Xt, L, alpha
        self._const, self._prior = const, prior  # m, m
        self._offset, self._coef = offset, coef  # d, d
        self._loc, self._scale = loc, scale  # m, m
        # a transfer prior's mean in closed form (x, grad) -> (b x m, b x m x d or None), outcome
        # units, added as the torch marginals add it (bbo.transfer_model.TransferPrior)
        self._prior_mean: PriorMean | None = prior_mean
        self.m, self.d = alpha.shape[0], Xt.shape[-1]

    def mean(self, x: np.ndarray, grad: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The posterior mean alone (b x m, outcome units) and, with ``grad``, its gradient
        (b x m x d): no triangular solves (a transfer prior reads its sources' means so)."""
        xt = (x - self._offset) / self._coef
        K, dK = self._node(xt, grad)
        mean = np.stack([self._const[j] + K[j] @ self._alpha[j] for j in range(self.m)], axis=1)
        mean = mean * self._scale + self._loc
        dmean = None
        if dK is not None:
            dmean = np.stack([self._alpha[j] @ dK[j] for j in range(self.m)], axis=1) / self._coef
            dmean *= self._scale[:, None]
        return self._with_prior_mean(x, mean, dmean)

    def _with_prior_mean(self, x: np.ndarray, mean: np.ndarray, dmean: np.ndarray | None):
        """``mean`` (and ``dmean``) plus the prior mean's, where there is one."""
        if self._prior_mean is None:
            return mean, dmean
        pm, dpm = self._prior_mean(x, dmean is not None)
        return mean + pm, (dmean + dpm if dmean is not None and dpm is not None else dmean)

    def __call__(self, x: np.ndarray, grad: bool = False):
        """``x`` (b x d, the model's input space) -> mean, variance (b x m, outcome units) and,
        with ``grad``, their gradients d mean / dx, d var / dx (b x m x d); else None, None."""
        xt = (x - self._offset) / self._coef
        K, dK = self._node(xt, grad)  # m x b x n (x d)
        b = x.shape[0]
        mean = np.empty((b, self.m))
        var = np.empty((b, self.m))
        dmean = np.zeros((b, self.m, self.d)) if grad else None
        dvar = np.zeros((b, self.m, self.d)) if grad else None
        for j in range(self.m):
            mean[:, j] = self._const[j] + K[j] @ self._alpha[j]
            v, _ = dtrtrs(self._L[j], K[j].T, lower=1)  # n x b: L^-1 k (LAPACK, no wrapper)
            var[:, j] = self._prior[j] - np.einsum("nb,nb->b", v, v)
            if dK is not None and dmean is not None and dvar is not None:
                w, _ = dtrtrs(self._L[j], v, lower=1, trans=1)  # K^-1 k
                dmean[:, j] = (self._alpha[j] @ dK[j]) / self._coef
                dvar[:, j] = -2.0 * (w.T[:, None, :] @ dK[j])[:, 0, :] / self._coef
        np.maximum(var, 0.0, out=var)
        mean = mean * self._scale + self._loc
        var = var * self._scale**2
        if dmean is not None and dvar is not None:
            dmean *= self._scale[:, None]
            dvar *= (self._scale**2)[:, None]
        mean, dmean = self._with_prior_mean(x, mean, dmean)
        return mean, var, dmean, dvar


def marginal_gradients(predictive) -> MarginalGradients | None:
    """:class:`MarginalGradients` of a :class:`~bbo.predictive.CachedPredictive`, or None where
    its model is not one this module reproduces (checked against its torch marginals); built once
    per predictive and kept on it."""
    cached = predictive.__dict__.get("_marginal_gradients", False)
    if cached is not False:
        return cached
    try:
        mg = _build(predictive)
    except (TypeError, ValueError) as e:
        log.debug("closed-form gradients unavailable: %s", e)
        mg = None
    if mg is not None and not _agrees(mg, predictive):
        log.info("closed-form marginals disagree with the model's; using autograd")
        mg = None
    predictive.__dict__["_marginal_gradients"] = mg
    return mg


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64, copy=False)


def _build(p) -> MarginalGradients | None:
    gp = p._gp
    Xt = p._Xt
    if Xt.device.type != "cpu" or Xt.dtype != torch.float64 or p._prior_var is None:
        return None
    prior_mean = None
    if p._prior_mean is not None:  # a transfer prior's mean: in closed form where it has one
        prior_mean = p._prior_closed_form
        if prior_mean is None:
            return None
    batched = Xt.dim() == 3
    m = p.num_outputs
    if m > 1 and not batched:
        return None
    d = Xt.shape[-1]
    if getattr(gp, "input_transform", None) is not None and p._affine is None:
        return None
    if not isinstance(gp.mean_module, ConstantMean):
        return None
    offset, coef = (np.zeros(d), np.ones(d)) if p._affine is None else map(_np, p._affine)
    X3 = _np(Xt if batched else Xt.unsqueeze(0))  # m x n x d
    node = _node(gp.covar_module, X3, np.arange(d), d, m)
    if node is None:
        return None
    const = np.broadcast_to(_np(gp.mean_module.constant).reshape(-1), (m,)).copy()
    L = [np.asfortranarray(Lj) for Lj in _np(p._L if batched else p._L.unsqueeze(0))]
    alpha = _np(p._alpha if batched else p._alpha.unsqueeze(0))
    prior = np.broadcast_to(_np(p._prior_var).reshape(-1), (m,)).copy()
    loc = np.zeros(m) if p._loc is None else _np(p._loc).reshape(-1)
    scale = np.ones(m) if p._scale is None else _np(p._scale).reshape(-1)
    return MarginalGradients(
        node,
        X3,
        L,
        alpha,
        const,
        prior,
        offset.reshape(-1),
        coef.reshape(-1),
        loc,
        scale,
        prior_mean,
    )


def _agrees(mg: MarginalGradients, p) -> bool:
    """The closed form's marginals match the torch marginals at training and random points."""
    X = p._Xt[0] if p._Xt.dim() == 3 else p._Xt
    if p._affine is not None:  # back to the model's input space
        X = X * p._affine[1] + p._affine[0]
    g = torch.Generator(device="cpu").manual_seed(1)
    lo, hi = X.min(0).values, X.max(0).values
    Xc = torch.cat([X[:3], lo + (hi - lo) * torch.rand(3, X.shape[-1], generator=g, dtype=X.dtype)])
    with torch.no_grad():
        want_m, want_v = p.marginals(Xc)
    mean, var, _, _ = mg(_np(Xc))
    wm, wv = _np(want_m), _np(want_v)
    vs = 1.0 if p._scale is None else _np(p._scale.pow(2)).reshape(-1)
    ok_m = np.abs(mean - wm) <= CHECK_RTOL * (1.0 + np.abs(wm))
    ok_v = np.abs(var - wv) <= CHECK_RTOL * (np.abs(wv) + vs)
    return bool(ok_m.all() and ok_v.all())


def _per_output(t: torch.Tensor, m: int, tail: int) -> np.ndarray:
    """A hyperparameter as ``m x tail``: one row per output (or one for all), one column per
    kernel column (or one for all)."""
    a = _np(t).reshape(-1)
    for rows in (m, 1):
        for width in (tail, 1):
            if a.size == rows * width:
                return np.broadcast_to(a.reshape(rows, width), (m, tail)).copy()
    raise ValueError(f"hyperparameter of shape {tuple(t.shape)} for {m} outputs, {tail} columns")


def _node(
    kernel: Kernel, X3: np.ndarray, cols: np.ndarray, d: int, m: int, select: bool = True
) -> Node | None:
    """``kernel`` over the columns ``cols`` of the training inputs ``X3`` (m x n x d); its own
    ``active_dims`` narrow them as ``Kernel.__call__`` does, except inside a scale kernel (whose
    ``forward`` calls its base's ``forward``: GPyTorch ignores the base's selection there)."""
    if select and kernel.active_dims is not None:
        cols = cols[_np(kernel.active_dims).astype(int)]
    if isinstance(kernel, (AdditiveKernel, ProductKernel)):
        parts = [_node(k, X3, cols, d, m) for k in kernel.kernels]
        if any(p is None for p in parts):
            return None
        return _sum(parts) if isinstance(kernel, AdditiveKernel) else _product(parts)  # type: ignore[arg-type]
    if isinstance(kernel, ScaleKernel):
        base = _node(kernel.base_kernel, X3, cols, d, m, select=False)
        if base is None:
            return None
        s = _per_output(kernel.outputscale, m, 1).reshape(m, 1, 1)
        return _scaled(base, s)
    if isinstance(kernel, MaternKernel) and kernel.nu == 2.5:
        return _matern52(_per_output(kernel.lengthscale, m, len(cols)), X3, cols, d)
    if isinstance(kernel, CategoricalKernel):
        return _categorical(_per_output(kernel.lengthscale, m, len(cols)), X3, cols)
    return None


def _sum(parts: list[Node]) -> Node:
    def f(x, grad):
        K, dK = parts[0](x, grad)
        for p in parts[1:]:
            Kp, dKp = p(x, grad)
            K = K + Kp
            dK = None if dK is None or dKp is None else dK + dKp
        return K, dK

    return f


def _product(parts: list[Node]) -> Node:
    def f(x, grad):
        K, dK = parts[0](x, grad)
        for p in parts[1:]:
            Kp, dKp = p(x, grad)
            if dK is not None and dKp is not None:
                dK = dK * Kp[..., None] + K[..., None] * dKp
            K = K * Kp
        return K, dK

    return f


def _scaled(base: Node, s: np.ndarray) -> Node:
    def f(x, grad):
        K, dK = base(x, grad)
        return K * s, None if dK is None else dK * s[..., None]

    return f


def _matern52(ls: np.ndarray, X3: np.ndarray, cols: np.ndarray, d: int) -> Node:
    """Matern-5/2 with one lengthscale per column (ARD) or one for all."""
    Z = X3[..., cols] / ls[:, None, :]  # m x n x c, scaled once

    def f(x, grad):
        z = x[None, :, cols] / ls[:, None, :]  # m x b x c
        if not grad:  # direct squared distances, no b x n x c intermediate
            r2 = np.stack([cdist(z[j], Z[j], "sqeuclidean") for j in range(len(Z))])
        else:
            diff = z[:, :, None, :] - Z[:, None, :, :]  # m x b x n x c
            r2 = np.einsum("mbnc,mbnc->mbn", diff, diff)
        K, g = matern52(r2)
        if not grad:
            return K, None
        dK = np.zeros((*K.shape, d))
        dK[..., cols] = g[..., None] * diff / ls[:, None, None, :]
        return K, dK

    return f


def _categorical(ls: np.ndarray, X3: np.ndarray, cols: np.ndarray) -> Node:
    """BoTorch's categorical kernel: exp(-mean over columns of [x_c != x'_c] / l_c)."""
    Xc = X3[..., cols]  # m x n x c
    d = X3.shape[-1]

    def f(x, grad):
        delta = x[None, :, None, cols] != Xc[:, None, :, :]  # m x b x n x c
        K = np.exp(-(delta / ls[:, None, None, :]).mean(-1))
        return K, (np.zeros((*K.shape, d)) if grad else None)

    return f
