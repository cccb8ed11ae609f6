"""The GP's log marginal likelihood with its hyperparameter priors, and its gradient, in NumPy.

Fitting hyperparameters runs L-BFGS-B for tens to hundreds of iterations on every ask below 50
trials; through GPyTorch each iteration (lazy tensors, modules, priors, autograd) costs ~1 ms of
framework overhead at tens of points, about ten times the arithmetic. For the models bbo builds
(``SingleTaskGP`` with scale, sum and product kernels over ARD Matern-5/2 and categorical kernels
with Gamma priors, a constant mean, an inferred noise with a Gamma prior or fixed noise, batched
outputs), :func:`fit` optimizes the same objective as ``botorch.fit.fit_gpytorch_mll`` (GPyTorch's
``ExactMarginalLogLikelihood``, per data point, summed over outputs, in the same raw parameters, by
SciPy's L-BFGS-B with the same options) with the gradient derived by hand (Rasmussen & Williams
eq. 5.9: ``d log p / d theta = 1/2 tr((alpha alpha^T - K^-1) dK / d theta)``, pushed through the
kernel tree in reverse), and writes the result into the model. It declines (returns None) for any
other model, which GPyTorch then fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from botorch.models import SingleTaskGP
from botorch.models.kernels.categorical import CategoricalKernel
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import AdditiveKernel, Kernel, MaternKernel, ProductKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.means import ConstantMean
from gpytorch.priors import GammaPrior
from scipy.linalg import LinAlgError, cho_solve, cholesky
from scipy.optimize import minimize
from scipy.special import gammaln

from bbo.predictive_grad import matern52, softplus, softplus_grad

MAX_POINTS = 400  # above this the per-dimension distance arrays outgrow their use: GPyTorch fits
JITTER = (1e-8, 1e-7, 1e-6)  # GPyTorch's psd_safe_cholesky: float64 jitter, three tries

# a kernel node evaluated for one output: raw parameters (that output's theta) -> (K, the log
# prior of its hyperparameters, backward); backward(G, grad) adds d(sum(G * K) + log prior) /
# d theta into grad (G: the upstream n x n weights)
Backward = Callable[[np.ndarray, np.ndarray], None]
Forward = Callable[[np.ndarray, int], tuple[np.ndarray, float, Backward]]


def fit(model, options: dict) -> float | None:
    """Fit ``model``'s hyperparameters from their current values as ``fit_gpytorch_mll`` would
    (L-BFGS-B, ``options`` as SciPy takes them), leave it in eval mode and return the fitted log
    marginal likelihood with priors (nats, summed over outputs); None, the model untouched,
    where it is not a model this module reproduces."""
    mll = MarginalLikelihood.of(model)
    if mll is None:
        return None
    theta = mll.theta0.reshape(mll.m, -1).copy()
    for j in range(mll.m):  # BoTorch fits a batch of outputs' hyperparameters independently
        res = minimize(
            lambda t, j=j: mll.output_loss(j, t),
            theta[j],
            jac=True,
            method="L-BFGS-B",
            options=options,
        )
        if np.isfinite(res.fun):
            theta[j] = res.x
    mll.write(theta.reshape(-1))
    model.eval()
    return -mll.loss_and_grad(theta.reshape(-1))[0] * mll.n


def _gamma_logpdf(x: np.ndarray, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Gamma(a, rate b) log density and its derivative in x."""
    return a * math.log(b) - gammaln(a) + (a - 1.0) * np.log(x) - b * x, (a - 1.0) / x - b


def _gamma(prior) -> tuple[float, float] | None:
    if type(prior) is not GammaPrior:
        return None
    a, b = prior.concentration.reshape(-1), prior.rate.reshape(-1)
    if a.numel() != 1 or b.numel() != 1:
        return None
    return float(a), float(b)


def _softplus_floor(constraint) -> float | None:
    """The lower bound of a softplus-transformed lower-bound constraint, else None."""
    if not isinstance(constraint, GreaterThan):
        return None
    t = constraint._transform
    if not isinstance(t, torch.nn.Softplus) or t.beta != 1.0 or t.threshold != 20.0:
        return None
    if math.isfinite(float(constraint.upper_bound)):
        return None
    return float(constraint.lower_bound)


class _Unsupported(Exception):
    """A model part this module does not reproduce."""


class _Positive:
    """One positive hyperparameter vector (``k`` values per output) behind a softplus with a floor,
    under a Gamma prior: at ``where`` in each output's theta, or held at ``fixed`` (m x k raw
    values: a parameter that is not trained still counts in the objective through its prior)."""

    def __init__(self, where, fixed, floor: float | None, prior: tuple[float, float] | None):
        if floor is None or prior is None:
            raise _Unsupported
        self.where, self.fixed, self.floor, self.prior = where, fixed, floor, prior

    def value(self, t: np.ndarray, j: int) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """The values, their log prior, its gradient in the values, and d value / d raw."""
        raw = t[self.where] if self.fixed is None else self.fixed[j]
        v = softplus(raw) + self.floor
        lp, dlp = _gamma_logpdf(v, *self.prior)
        return v, float(lp.sum()), dlp, softplus_grad(raw)

    def add(self, grad: np.ndarray, g: np.ndarray) -> None:
        """Add ``g`` (the gradient in the raw values) into ``grad`` unless held fixed."""
        if self.fixed is None:
            grad[self.where] += g


class _Tree:
    """Compiles a GPyTorch kernel into :data:`Forward` nodes over the training inputs, recording
    the raw parameters and priors it consumed (so the caller can check nothing was missed)."""

    def __init__(self, X3: np.ndarray, m: int):
        self.X3, self.m = X3, m  # (1 or m) x n x d transformed training inputs
        self.params: list[tuple[torch.Tensor, int]] = []  # (raw tensor, values per output)
        self.held: set[int] = set()  # every raw parameter read, trained or not
        self._pairs: dict[tuple, np.ndarray] = {}
        self.priors: set[int] = set()
        self.width = 0

    def positive(self, module, name: str, k: int) -> _Positive:
        raw = getattr(module, f"raw_{name}")
        if raw.numel() not in (k, k * self.m):
            raise _Unsupported
        where, fixed = None, None
        if raw.requires_grad:
            where = self.slot(raw, k)
        else:
            fixed = np.broadcast_to(raw.detach().numpy().reshape(-1, k), (self.m, k)).copy()
            self.held.add(id(raw))
        prior = getattr(module, f"{name}_prior", None)
        if prior is not None:
            self.priors.add(id(prior))
        floor = _softplus_floor(getattr(module, f"raw_{name}_constraint"))
        return _Positive(where, fixed, floor, _gamma(prior))

    def pairs(self, cols: np.ndarray, kind: str) -> np.ndarray:
        """Per-column pairwise squared differences ("sq") or inequalities ("ne") of the inputs'
        ``cols``, (1 or m) x n x n x c; built once per set of columns (the mixed kernel's
        additive and product parts share them)."""
        key = (kind, tuple(int(c) for c in cols))
        if key not in self._pairs:
            X = self.X3[..., cols]
            if kind == "sq":
                diff = X[:, :, None, :] - X[:, None, :, :]
                self._pairs[key] = diff * diff
            else:
                self._pairs[key] = (X[:, :, None, :] != X[:, None, :, :]).astype(np.float64)
        return self._pairs[key]

    def slot(self, raw: torch.Tensor, k: int) -> slice:
        """Where the trained raw parameter ``raw`` (``k`` values per output) sits in theta."""
        self.params.append((raw, k))
        self.held.add(id(raw))
        self.width += k
        return slice(self.width - k, self.width)

    def node(self, kernel: Kernel, cols: np.ndarray, select: bool = True) -> Forward:
        """``kernel`` over columns ``cols``; its ``active_dims`` narrow them as ``Kernel.__call__``
        does, except inside a scale kernel (which calls its base's ``forward`` on its own
        selection, copied from the base)."""
        if select and kernel.active_dims is not None:
            cols = cols[kernel.active_dims.cpu().numpy().astype(int)]
        kind = type(kernel)
        if kind in (AdditiveKernel, ProductKernel):
            parts = [self.node(k, cols) for k in kernel.kernels]
            return _sum(parts) if kind is AdditiveKernel else _product(parts)
        if kind is ScaleKernel:
            s = self.positive(kernel, "outputscale", 1)
            return _scaled(self.node(kernel.base_kernel, cols, select=False), s)
        if kind is MaternKernel and kernel.nu == 2.5:
            return _matern52(
                self.positive(kernel, "lengthscale", len(cols)), self.pairs(cols, "sq")
            )
        if kind is CategoricalKernel:
            return _categorical(
                self.positive(kernel, "lengthscale", len(cols)), self.pairs(cols, "ne")
            )
        raise _Unsupported


def _sum(parts: list[Forward]) -> Forward:
    def forward(t, j):
        outs = [p(t, j) for p in parts]

        def backward(G, grad):
            for _, _, back in outs:
                back(G, grad)

        return sum(K for K, _, _ in outs), sum(lp for _, lp, _ in outs), backward

    return forward


def _product(parts: list[Forward]) -> Forward:
    def forward(t, j):
        outs = [p(t, j) for p in parts]
        K = outs[0][0].copy()
        for Kp, _, _ in outs[1:]:
            K *= Kp

        def backward(G, grad):
            for i, (_, _, back) in enumerate(outs):
                others = G.copy()
                for i2, (Kp, _, _) in enumerate(outs):
                    if i2 != i:
                        others *= Kp
                back(others, grad)

        return K, sum(lp for _, lp, _ in outs), backward

    return forward


def _scaled(base: Forward, scale: _Positive) -> Forward:
    def forward(t, j):
        Kb, lp_b, back_b = base(t, j)
        s, lp, dlp, draw = scale.value(t, j)

        def backward(G, grad):
            scale.add(grad, (float((G * Kb).sum()) + dlp) * draw)
            back_b(G * s[0], grad)

        return s[0] * Kb, lp_b + lp, backward

    return forward


def _matern52(ls: _Positive, S0: np.ndarray) -> Forward:
    """ARD Matern-5/2 over the per-column squared distances ``S0`` ((1 or m) x n x n x c);
    dK/dl_k = (dK/dr) dr/dl_k = -g_r S_k / l_k with S_k the scaled squared difference in column
    k and g_r = (dK/dr) / r."""

    def forward(t, j):
        ell, lp, dlp, draw = ls.value(t, j)
        S = S0[min(j, len(S0) - 1)] / (ell * ell)
        K, g_r = matern52(S.sum(-1))

        def backward(G, grad):
            ls.add(grad, (-np.einsum("ab,abk->k", G * g_r, S) / ell + dlp) * draw)

        return K, lp, backward

    return forward


def _categorical(ls: _Positive, D0: np.ndarray) -> Forward:
    """BoTorch's categorical kernel exp(-mean_k [x_k != x'_k] / l_k) over the per-column
    inequalities ``D0`` ((1 or m) x n x n x c); dK/dl_k = K [x_k != x'_k] / (c l_k^2)."""
    c = D0.shape[-1]

    def forward(t, j):
        ell, lp, dlp, draw = ls.value(t, j)
        D = D0[min(j, len(D0) - 1)]
        K = np.exp(-(D / ell).mean(-1))

        def backward(G, grad):
            ls.add(grad, (np.einsum("ab,abk->k", G * K, D) / (c * ell * ell) + dlp) * draw)

        return K, lp, backward

    return forward


class MarginalLikelihood:
    """``-sum_outputs (log N(y; c, K + noise) + log priors) / n`` and its gradient in the model's
    raw parameters (each output's kernel hyperparameters, mean constant and noise)."""

    def __init__(self, model, kernel: Forward, params, c_at, y, noise_fixed, noise):
        self.model, self.kernel, self.params = model, kernel, params
        self.m, self.n = y.shape
        self.y = y
        self.noise_fixed = noise_fixed  # m x n, or None: inferred
        self.noise = noise  # the inferred noise (a _Positive), or None
        self.width = sum(k for _, k in params)  # theta per output
        self.c_at = c_at  # the mean constant's place in it
        self.theta0 = self._read()

    @classmethod
    def of(cls, model) -> MarginalLikelihood | None:
        """The objective of ``model`` (built, in train mode), or None where it is not one this
        class reproduces: exactly bbo's models (a parameter held fixed stays so)."""
        if type(model) is not SingleTaskGP or not model.training:
            return None
        gp: Any = model  # nn.Module attributes, typed as tensors or modules
        lik, X = gp.likelihood, model.train_inputs[0]
        if X.dtype != torch.float64 or X.device.type != "cpu" or X.shape[-2] > MAX_POINTS:
            return None
        if type(model.mean_module) is not ConstantMean or model.outcome_transform is None:
            return None
        fixed = type(lik) is FixedNoiseGaussianLikelihood and lik.second_noise_covar is None
        if type(lik) is not GaussianLikelihood and not fixed:
            return None
        with torch.no_grad():
            Xt = model.transform_inputs(X)  # train mode: train_inputs are the original ones
            y = model.train_targets
        m = 1 if y.dim() == 1 else y.shape[0]
        X3 = Xt.numpy().astype(np.float64).reshape(-1, *Xt.shape[-2:])
        if len(X3) > 1 and all(np.array_equal(X3[0], x) for x in X3[1:]):
            X3 = X3[:1]  # a batch over the same inputs
        tree = _Tree(X3, m)
        try:
            kernel = tree.node(gp.covar_module, np.arange(X3.shape[-1]))
            const = gp.mean_module.raw_constant
            if const.numel() not in (1, m) or getattr(
                gp.mean_module, "raw_constant_constraint", None
            ):
                return None
            if not const.requires_grad:
                return None
            c_at = tree.slot(const, 1).start
            noise = None
            if not fixed:
                noise = tree.positive(lik.noise_covar, "noise", 1)
        except _Unsupported:
            return None
        every = list(gp.parameters())
        if tree.held != {id(p) for p in every} or len(every) != len(tree.held):
            return None  # a parameter of something else
        if {id(p) for _, _, p, _, _ in gp.named_priors()} != tree.priors:
            return None  # a prior on something else
        noise_fixed = None
        if fixed:
            noise_fixed = lik.noise.detach().reshape(m, -1).numpy().astype(np.float64)
        return cls(
            model,
            kernel,
            tree.params,
            c_at,
            y.reshape(m, -1).numpy().astype(np.float64),
            noise_fixed,
            noise,
        )

    # ---- raw parameters <-> the vector L-BFGS-B sees ---------------------------------------------
    def _read(self) -> np.ndarray:
        parts = [
            np.broadcast_to(p.detach().numpy().reshape(-1, k), (self.m, k)) for p, k in self.params
        ]
        return np.concatenate(parts, axis=1).reshape(-1).astype(np.float64)

    def write(self, theta: np.ndarray) -> None:
        """Copy ``theta`` into the model's raw parameters."""
        t, at = theta.reshape(self.m, -1), 0
        with torch.no_grad():
            for p, k in self.params:
                v = np.ascontiguousarray(t[:, at : at + k])
                at += k
                p.copy_(torch.as_tensor(v).reshape(p.shape).to(p))

    # ---- the objective -------------------------------------------------------------------------------
    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """GPyTorch's negative MLL per point with priors, summed over outputs, and its gradient."""
        t = theta.reshape(self.m, -1)
        parts = [self.output_loss(j, t[j]) for j in range(self.m)]
        return sum(v for v, _ in parts), np.concatenate([g for _, g in parts])

    def output_loss(self, j: int, t: np.ndarray) -> tuple[float, np.ndarray]:
        """Output ``j``'s negative MLL per point with its priors, and its gradient in ``t`` (its
        raw hyperparameters); inf and a zero gradient where the covariance is not positive
        definite even with jitter."""
        K, lp, backward = self.kernel(t, j)
        K = K.copy()
        c_at = self.c_at
        c = t[c_at]
        if self.noise is not None:
            noise, lp_n, dlp_n, draw_n = self.noise.value(t, j)
            K[np.diag_indices(self.n)] += noise[0]
            lp += lp_n
        else:
            K[np.diag_indices(self.n)] += self.noise_fixed[j]
        L = _cholesky(K)
        if L is None:
            return math.inf, np.zeros_like(t)
        resid = self.y[j] - c
        alpha = cho_solve((L, True), resid, check_finite=False)
        logdet = 2.0 * np.log(np.diag(L)).sum()
        ll = -0.5 * (resid @ alpha + logdet + self.n * math.log(2.0 * math.pi))
        G = 0.5 * (
            np.outer(alpha, alpha) - cho_solve((L, True), np.eye(self.n), check_finite=False)
        )
        grad = np.zeros_like(t)
        backward(G, grad)  # kernel hyperparameters, their priors included
        grad[c_at] = float(alpha.sum())
        if self.noise is not None:
            self.noise.add(grad, (float(np.trace(G)) + dlp_n) * draw_n)
        return -(ll + lp) / self.n, -grad / self.n


def _cholesky(K: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor, adding GPyTorch's jitter where the plain one fails."""
    try:
        return cholesky(K, lower=True, check_finite=False)
    except LinAlgError:
        pass
    if not np.isfinite(K).all():
        return None
    for jitter in JITTER:
        try:
            return cholesky(K + jitter * np.eye(len(K)), lower=True, check_finite=False)
        except LinAlgError:
            continue
    return None
