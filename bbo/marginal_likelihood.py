"""The GP's log marginal likelihood with its hyperparameter priors, and its gradient, in NumPy.

Fitting hyperparameters runs L-BFGS-B for tens to hundreds of iterations on every ask below 50
trials; through GPyTorch each iteration (lazy tensors, modules, priors, autograd) costs ~1 ms of
framework overhead at tens of points, about ten times the arithmetic. For the continuous model bbo
builds (``SingleTaskGP``: a scaled ARD Matern-5/2 kernel with Gamma priors, a constant mean, an
inferred noise with a Gamma prior or fixed noise, batched outputs), :func:`fit` optimizes the same
objective as ``botorch.fit.fit_gpytorch_mll`` (GPyTorch's ``ExactMarginalLogLikelihood``, per data
point, summed over outputs, in the same raw parameters, by SciPy's L-BFGS-B with the same options)
with the gradient derived by hand (Rasmussen & Williams eq. 5.9:
``d log p / d theta = 1/2 tr((alpha alpha^T - K^-1) dK / d theta)``), and writes the result into
the model. It declines (returns False) for any other model, which GPyTorch then fits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from botorch.models import SingleTaskGP
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.means import ConstantMean
from gpytorch.priors import GammaPrior
from scipy.linalg import LinAlgError, cho_solve, cholesky
from scipy.optimize import minimize
from scipy.special import gammaln

from bbo.predictive_grad import matern52, softplus, softplus_grad

MAX_POINTS = 400  # above this the per-dimension distance arrays outgrow their use: GPyTorch fits
JITTER = (1e-8, 1e-7, 1e-6)  # GPyTorch's psd_safe_cholesky: float64 jitter, three tries
RAW_LS, RAW_OS = "covar_module.base_kernel.raw_lengthscale", "covar_module.raw_outputscale"
RAW_C, RAW_NOISE = "mean_module.raw_constant", "likelihood.noise_covar.raw_noise"
LS_PRIOR, OS_PRIOR = "covar_module.base_kernel.lengthscale_prior", "covar_module.outputscale_prior"
NOISE_PRIOR = "likelihood.noise_covar.noise_prior"


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


class MarginalLikelihood:
    """``-sum_outputs (log N(y; c, os K_matern + noise) + log priors) / n`` and its gradient in the
    model's raw parameters (lengthscales, outputscale, noise, mean constant per output)."""

    def __init__(self, model, Xt, y, noise_fixed, priors, floors):
        self.model = model
        self.m, self.n, self.d = y.shape[0], y.shape[1], Xt.shape[-1]
        self.y = y
        self.noise_fixed = noise_fixed  # m x n, or None: inferred
        self.priors = priors  # (ls (a, b), os (a, b), noise (a, b) or None)
        self.floors = floors  # (ls, os, noise) softplus floors
        shared = all(np.array_equal(Xt[0], x) for x in Xt[1:])  # a batch over the same inputs
        X = Xt[:1] if shared else Xt
        diff = X[:, :, None, :] - X[:, None, :, :]
        self.S = diff * diff  # (1 or m) x n x n x d per-dimension squared distances
        self.theta0 = self._read()

    @classmethod
    def of(cls, model) -> MarginalLikelihood | None:
        """The objective of ``model`` (built, in train mode), or None where it is not one this
        class reproduces: exactly bbo's continuous model, every parameter trainable."""
        if type(model) is not SingleTaskGP or not model.training:
            return None
        gp: Any = model  # nn.Module attributes, typed as tensors or modules
        covar, lik = gp.covar_module, gp.likelihood
        if type(covar) is not ScaleKernel or type(covar.base_kernel) is not MaternKernel:
            return None
        base, X = covar.base_kernel, model.train_inputs[0]
        if base.nu != 2.5 or covar.active_dims is not None or base.active_dims is not None:
            return None
        if X.dtype != torch.float64 or X.device.type != "cpu" or X.shape[-2] > MAX_POINTS:
            return None
        if type(model.mean_module) is not ConstantMean or model.outcome_transform is None:
            return None
        params = {n: (p, c) for n, p, c in gp.named_parameters_and_constraints()}
        want = {RAW_LS, RAW_OS, RAW_C} | ({RAW_NOISE} if type(lik) is GaussianLikelihood else set())
        if set(params) != want or not all(p.requires_grad for p, _ in params.values()):
            return None
        if params[RAW_C][1] is not None or base.raw_lengthscale.shape[-1] != X.shape[-1]:
            return None
        priors = {n: _gamma(p) for n, _, p, _, _ in gp.named_priors()}
        ls_p, os_p = priors.pop(LS_PRIOR, None), priors.pop(OS_PRIOR, None)
        noise_p = priors.pop(NOISE_PRIOR, None)
        floors = [_softplus_floor(params[RAW_LS][1]), _softplus_floor(params[RAW_OS][1])]
        if type(lik) is GaussianLikelihood:
            floors.append(_softplus_floor(params[RAW_NOISE][1]))
            if noise_p is None:
                return None
        elif type(lik) is FixedNoiseGaussianLikelihood and lik.second_noise_covar is None:
            floors.append(0.0)  # no noise parameter
        else:
            return None
        if priors or ls_p is None or os_p is None or any(f is None for f in floors):
            return None  # another prior, a prior of another kind, another constraint
        with torch.no_grad():
            Xt = model.transform_inputs(X)  # train mode: train_inputs are the original ones
            y = model.train_targets
            m = 1 if y.dim() == 1 else y.shape[0]
            Xt3 = Xt.expand(m, *Xt.shape[-2:]) if Xt.dim() == 2 else Xt
            noise_fixed = None
            if type(lik) is FixedNoiseGaussianLikelihood:
                noise_fixed = lik.noise.detach().reshape(m, -1).numpy().astype(np.float64)
        return cls(
            model,
            Xt3.numpy().astype(np.float64),
            y.reshape(m, -1).numpy().astype(np.float64),
            noise_fixed,
            (ls_p, os_p, noise_p),
            tuple(floors),
        )

    # ---- raw parameters <-> the vector L-BFGS-B sees ---------------------------------------------
    def _params(self):
        mdl = self.model
        out = [
            mdl.covar_module.base_kernel.raw_lengthscale,
            mdl.covar_module.raw_outputscale,
            mdl.mean_module.raw_constant,
        ]
        if self.noise_fixed is None:
            out.append(mdl.likelihood.noise_covar.raw_noise)
        return out

    def _read(self) -> np.ndarray:
        m, d = self.m, self.d
        ls, os_, c, *noise = (p.detach().numpy() for p in self._params())
        parts = [
            np.broadcast_to(ls.reshape(-1, d), (m, d)),
            np.broadcast_to(os_.reshape(-1, 1), (m, 1)),
            np.broadcast_to(c.reshape(-1, 1), (m, 1)),
        ]
        if noise:
            parts.append(np.broadcast_to(noise[0].reshape(-1, 1), (m, 1)))
        return np.concatenate(parts, axis=1).reshape(-1).astype(np.float64)

    def write(self, theta: np.ndarray) -> None:
        """Copy ``theta`` into the model's raw parameters."""
        t = theta.reshape(self.m, -1)
        cols = [t[:, : self.d], t[:, self.d], t[:, self.d + 1]]
        if self.noise_fixed is None:
            cols.append(t[:, self.d + 2])
        with torch.no_grad():
            for p, v in zip(self._params(), cols, strict=True):
                p.copy_(torch.as_tensor(np.ascontiguousarray(v)).reshape(p.shape).to(p))

    # ---- the objective -------------------------------------------------------------------------------
    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """GPyTorch's negative MLL per point with priors, summed over outputs, and its gradient."""
        t = theta.reshape(self.m, -1)
        parts = [self.output_loss(j, t[j]) for j in range(self.m)]
        return sum(v for v, _ in parts), np.concatenate([g for _, g in parts])

    def output_loss(self, j: int, t: np.ndarray) -> tuple[float, np.ndarray]:
        """Output ``j``'s negative MLL per point with its priors, and its gradient in ``t`` (its
        raw lengthscales, outputscale, mean constant, noise); inf and a zero gradient where the
        covariance is not positive definite even with jitter."""
        (la, lb), (oa, ob), noise_p = self.priors
        f_ls, f_os, f_noise = self.floors
        r_ls, r_os, c = t[: self.d], t[self.d], t[self.d + 1]
        ls, os_ = softplus(r_ls) + f_ls, float(softplus(np.array(r_os))) + f_os
        S = self.S[min(j, len(self.S) - 1)] / (ls * ls)  # n x n x d scaled squared differences
        r2 = S.sum(-1)
        Km, g_r = matern52(r2)  # g_r: (dKm/dr) / r
        K = os_ * Km
        if self.noise_fixed is None:
            r_noise = t[self.d + 2]
            noise = float(softplus(np.array(r_noise))) + f_noise
            K[np.diag_indices(self.n)] += noise
        else:
            K[np.diag_indices(self.n)] += self.noise_fixed[j]
        L = _cholesky(K)
        if L is None:
            return math.inf, np.zeros_like(t)
        resid = self.y[j] - c
        alpha = cho_solve((L, True), resid, check_finite=False)
        logdet = 2.0 * np.log(np.diag(L)).sum()
        ll = -0.5 * (resid @ alpha + logdet + self.n * math.log(2.0 * math.pi))
        W = np.outer(alpha, alpha) - cho_solve((L, True), np.eye(self.n), check_finite=False)
        lp_ls, dlp_ls = _gamma_logpdf(ls, la, lb)
        lp_os, dlp_os = _gamma_logpdf(np.array(os_), oa, ob)
        lp = lp_ls.sum() + float(lp_os)
        # dK/dls_k = os (dKm/dr) dr/dls_k = -os g_r S_k / ls_k (S_k: scaled squared differences)
        g_ls = -0.5 * os_ * np.einsum("ab,abk->k", W * g_r, S) / ls + dlp_ls
        g_os = 0.5 * float((W * Km).sum()) + float(dlp_os)
        g = [g_ls * softplus_grad(r_ls), [g_os * softplus_grad(r_os), float(alpha.sum())]]
        if self.noise_fixed is None:
            lp_n, dlp_n = _gamma_logpdf(np.array(noise), *noise_p)
            lp += float(lp_n)
            g.append([(0.5 * float(np.trace(W)) + float(dlp_n)) * softplus_grad(r_noise)])
        return -(ll + lp) / self.n, -np.concatenate(g) / self.n


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
