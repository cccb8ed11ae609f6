"""A fitted GP's posterior marginals at a fraction of the call overhead, for acquisition optimizers.

A BoTorch / GPyTorch ``model.posterior(X)`` call costs ~10 ms of framework overhead on a CPU
(mode switches, input and outcome transforms, lazy linear operators), whatever the size of X; an
acquisition optimizer calls it hundreds of times per ask, so at tens to hundreds of trials that
overhead, not arithmetic, sets the ask's latency. :class:`CachedPredictive` is a BoTorch
:class:`~botorch.models.model.Model` holding the fitted GP's training Cholesky factor, whose
``posterior(X)`` computes the same marginal means and variances with the GP's own kernel, mean
and transforms in a few tensor operations. BoTorch's acquisition functions of one point at a
time (posterior mean, LogEI, q = 1 Monte Carlo ones: one point's outputs are independent
normals) take it as they take the GP.

It serves marginals only (independent per point and output: q = 1 acquisitions and MC-free
scores; pending points enter as believed observations, :func:`bbo.acquisition.believe`); joint
(q > 1) and MC acquisitions use the GP itself. Construction checks
the result against ``model.posterior`` at training and random points and raises
:class:`ValueError` when they differ, so a model it does not reproduce is never served wrongly
(:mod:`bbo.surrogate` compares once per set of hyperparameters, then checks finiteness only).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from botorch.models.kernels.categorical import CategoricalKernel
from botorch.models.model import Model
from botorch.models.transforms.input import Normalize
from botorch.posteriors.posterior import Posterior
from gpytorch.kernels import AdditiveKernel, Kernel, MaternKernel, ProductKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from linear_operator import to_dense
from linear_operator.utils.cholesky import psd_safe_cholesky

log = logging.getLogger(__name__)

CHECK_RTOL = 1e-6  # relative agreement with model.posterior required at construction


class CachedPredictive(Model):
    """Posterior marginals of a fitted, eval-mode exact GP (``SingleTaskGP``, ``MixedSingleTaskGP``,
    outputs batched or single; inferred or fixed noise; ``Normalize`` / ``Standardize``, or the
    transfer model's per-input prior mean: :class:`~bbo.transfer_model.PriorMeanStandardize`)."""

    # the fitted GP: Any, as its parts (train_inputs, likelihood, mean_module) are attributes
    # nn.Module resolves at run time, which torch's stubs type as ``Tensor | Module``
    _gp: Any
    _prior_var: torch.Tensor | None
    _loc: torch.Tensor | None
    _scale: torch.Tensor | None

    def __init__(self, model: Model, compare: bool = True):
        super().__init__()
        model.eval()
        model.requires_grad_(False)  # fitted: gradients are wanted in X only, and cost otherwise
        # not a submodule: BoTorch moves an acquisition's modules to X's device on every call,
        # and walking the GP's module tree there cost more than the whole prediction
        object.__setattr__(self, "_gp", model)
        gp = self._gp
        self._m = model.num_outputs
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Xt = gp.train_inputs[0]  # transformed (eval mode), (m x) n x d
            yt = gp.train_targets  # standardized, (m x) n
            K = gp.covar_module(Xt).to_dense()
            noise = gp.likelihood.noise
            if noise.shape[-1] != yt.shape[-1]:  # one inferred noise level per output
                noise = noise.expand(*yt.shape)
            K = K + torch.diag_embed(noise)
            L = psd_safe_cholesky(K)  # with GPyTorch's jitter where it needs one
            mu0 = gp.mean_module(Xt)
            self._alpha = torch.cholesky_solve((yt - mu0).unsqueeze(-1), L).squeeze(-1)
            self._L, self._Xt = L, Xt
            self._frozen = frozen_kernel(gp.covar_module, Xt)
            self._prior_var = None
            d = self._kernel(Xt, Xt, diag=True)  # a stationary kernel's prior variance: a constant
            if torch.allclose(d, d[..., :1], rtol=1e-12, atol=0.0):
                self._prior_var = d[..., :1]
        self._affine = _affine(getattr(model, "input_transform", None), self._Xt.shape[-1])
        ot = getattr(model, "outcome_transform", None)
        self._loc = None if ot is None else ot.means.reshape(-1)
        self._scale = None if ot is None else ot.stdvs.reshape(-1)
        # a per-input prior mean the outcome transform adds back (bbo.transfer_model's), if any
        self._prior_mean = getattr(ot, "prior_mean", None)
        # ... and that mean in closed form with its gradient, where it has one (bbo.predictive_grad)
        self._prior_closed_form = getattr(ot, "prior_closed_form", None)
        self._check(compare)

    @property
    def num_outputs(self) -> int:
        return self._m

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def marginals(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of every output at every point: ``X`` (... x d) gives
        ``(... x m, ... x m)``, in the outcomes' own (untransformed) units."""
        mean, var = self._predict(X, True)
        assert var is not None
        return mean, var

    def mean(self, X: torch.Tensor) -> torch.Tensor:
        """The posterior mean alone (``... x m``): no triangular solve for the variances, which
        cost most of a marginal. A transfer prior evaluates its sources' means at every
        acquisition step (:mod:`bbo.transfer_model`)."""
        return self._predict(X, False)[0]

    def _predict(self, X: torch.Tensor, variance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        gp, batched = self._gp, self._m > 1 and self._Xt.dim() == 3
        x = self._transform(X)
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if batched:
            x = x.unsqueeze(0).expand(self._m, *x.shape)  # m x N x d
        k = self._kernel(x, self._Xt)  # (m x) N x n
        mean = gp.mean_module.forward(x) + (k @ self._alpha.unsqueeze(-1)).squeeze(-1)
        var = None
        if variance:
            prior = self._prior_var if self._prior_var is not None else self._kernel(x, x, True)
            v = torch.linalg.solve_triangular(self._L, k.transpose(-1, -2), upper=False)
            var = (prior - v.pow(2).sum(-2)).clamp_min(0.0)
            var = var.transpose(0, 1) if batched else var.unsqueeze(-1)  # N x m
        mean = mean.transpose(0, 1) if batched else mean.unsqueeze(-1)
        if self._loc is not None and self._scale is not None:
            mean = mean * self._scale + self._loc
            var = None if var is None else var * self._scale.pow(2)
        if self._prior_mean is not None:
            mean = mean + self._prior_mean(X.reshape(-1, X.shape[-1])).reshape(mean.shape)
        mean = mean.reshape(*shape, self._m)
        return mean, None if var is None else var.reshape(*shape, self._m)

    def noise_variance(self) -> torch.Tensor | None:
        """The observation noise variance of each output (m, outcome units): the inferred one, or
        the mean of the reported ones where the noise is fixed (reported standard errors)."""
        lik = self._gp.likelihood
        if isinstance(lik, FixedNoiseGaussianLikelihood):  # the mean reported noise
            noise = lik.noise.detach()
            noise = noise.mean(-1).reshape(-1).expand(self._m)
            return noise * self._var_scale()
        if type(lik) is not GaussianLikelihood:
            return None
        noise = lik.noise.detach().reshape(-1).expand(self._m)
        return noise * self._var_scale()

    def train_mean(self) -> torch.Tensor:
        """Posterior means at the training points (n x m, outcome units), in O(n): there
        ``K (K + N)^-1 y = y - N alpha`` (N the noise variances), no kernel matrix to build."""
        noise = self._gp.likelihood.noise
        yt = self._gp.train_targets
        if noise.shape[-1] != yt.shape[-1]:
            noise = noise.expand(*yt.shape)
        mean = yt - noise * self._alpha  # (m x) n, standardized
        mean = mean.transpose(-1, -2) if mean.dim() == 2 else mean.unsqueeze(-1)
        if self._loc is not None and self._scale is not None:
            mean = mean * self._scale + self._loc
        if self._prior_mean is not None:
            mean = mean + self._prior_mean(self._train_x())
        return mean

    def loo_z(self, rows: torch.Tensor) -> torch.Tensor:
        """Leave-one-out z-scores ``(y_i - mean_-i) / sd_-i`` of training ``rows`` under these
        hyperparameters ((m x) k; Rasmussen & Williams eq. 5.12): large where the hyperparameters
        do not explain a point given all the others."""
        alpha, kinv_diag = self._loo_terms(rows)
        return alpha / kinv_diag.sqrt()

    def loo_log_density(self) -> float:
        """The leave-one-out log predictive density of all training points, summed over points and
        outputs (standardized units; Rasmussen & Williams eq. 5.10-5.12): how well these
        hyperparameters predict each observation from the others."""
        alpha, kinv_diag = self._loo_terms(torch.arange(self._alpha.shape[-1]))
        return float(
            (0.5 * torch.log(kinv_diag / (2 * math.pi)) - 0.5 * alpha.pow(2) / kinv_diag).sum()
        )

    def _loo_terms(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_i, [K^-1]_ii)`` of training ``rows``: the leave-one-out residual is their
        ratio, its variance ``1 / [K^-1]_ii``."""
        n = self._alpha.shape[-1]
        E = torch.zeros(n, len(rows), dtype=self._L.dtype, device=self._L.device)
        E[rows.to(E.device), torch.arange(len(rows), device=E.device)] = 1.0
        V = torch.linalg.solve_triangular(
            self._L, E.expand(*self._L.shape[:-2], n, len(rows)), upper=False
        )
        return self._alpha[..., rows.to(E.device)], V.pow(2).sum(-2)

    def _transform(self, X: torch.Tensor) -> torch.Tensor:
        """The GP's input transform: a plain affine map where it is one (on a subset of the
        columns, offset 0 and coefficient 1 leave the others exactly as they are)."""
        if self._affine is not None:
            offset, coefficient = self._affine
            return (X - offset) / coefficient
        return self._gp.transform_inputs(X)

    def _kernel(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False) -> torch.Tensor:
        if self._frozen is not None and x2 is self._Xt and not diag:
            return self._frozen(x1)
        return dense_kernel(self._gp.covar_module, x1, x2, diag)

    def posterior(
        self, X, output_indices=None, observation_noise=False, posterior_transform=None, **kw
    ) -> MarginalPosterior:
        """Independent normal marginals (b x q x m) of the latent outcomes at X (b x q x d)."""
        if observation_noise is not False:
            raise NotImplementedError("CachedPredictive serves latent (noise-free) marginals")
        mean, var = self.marginals(X)
        if output_indices is not None:
            mean, var = mean[..., output_indices], var[..., output_indices]
        if posterior_transform is not None:  # a linear scalarization of independent outputs
            w, offset = posterior_transform.weights, posterior_transform.offset
            mean = (mean @ w + offset).unsqueeze(-1)
            var = (var @ w.pow(2)).unsqueeze(-1)
        return MarginalPosterior(mean, var)

    def _check(self, compare: bool) -> None:
        """Raise unless the marginals at training and random points are finite and (``compare``)
        match ``model.posterior`` there. The comparison builds GPyTorch's own prediction caches
        (a second factorization: at 1000 points half an ask), so callers that verified a model
        of the same kind and hyperparameters already skip it."""
        Xo = self._train_x()
        g = torch.Generator(device="cpu").manual_seed(0)
        lo, hi = Xo.min(0).values, Xo.max(0).values
        R = lo + (hi - lo) * torch.rand(4, Xo.shape[-1], generator=g, dtype=Xo.dtype).to(Xo)
        X = torch.cat([Xo[:4], R]).unsqueeze(-2)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean, var = self.marginals(X)
            if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
                raise ValueError("non-finite predictions")
            if not compare:
                return
            post = self._gp.posterior(X)
            want_m, want_v = post.mean, post.variance.clamp_min(0.0)  # gpytorch warns below 0
        tol_m = CHECK_RTOL * (1.0 + want_m.abs())
        tol_v = CHECK_RTOL * (want_v.abs() + self._var_scale())
        if not ((mean - want_m).abs() <= tol_m).all() or not ((var - want_v).abs() <= tol_v).all():
            raise ValueError("cached marginals do not reproduce the model's posterior")

    def _train_x(self) -> torch.Tensor:
        """The training inputs as the model was given them (before its input transform), n x d."""
        Xo = getattr(self._gp, "_original_train_inputs", None)
        Xo = self._gp.train_inputs[0] if Xo is None else Xo
        return Xo[0] if Xo.dim() == 3 else Xo

    def _var_scale(self) -> torch.Tensor:
        return torch.ones(()) if self._scale is None else self._scale.pow(2)


def _affine(t, d: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(offset, coefficient)`` over all ``d`` columns of a :class:`Normalize` input transform
    (BoTorch's own arithmetic on its columns), None for any other transform."""
    if t is None or type(t) is not Normalize or t.training or len(getattr(t, "batch_shape", ())):
        return None
    offset, coefficient = t.offset.detach(), t.coefficient.detach()
    idx = getattr(t, "indices", None)
    if idx is None:
        return offset, coefficient
    full_o = torch.zeros(d, dtype=offset.dtype, device=offset.device)
    full_c = torch.ones(d, dtype=coefficient.dtype, device=coefficient.device)
    full_o[idx], full_c[idx] = offset.reshape(-1), coefficient.reshape(-1)
    return full_o, full_c


def cached_predictive(model: Model, compare: bool = True) -> CachedPredictive | None:
    """:class:`CachedPredictive` of ``model``, or None where it cannot reproduce the model (see
    :meth:`CachedPredictive._check` for ``compare``)."""
    try:
        return CachedPredictive(model, compare)
    except Exception as e:  # noqa: BLE001 - the GP itself still serves, only slower
        log.info("cached predictive unavailable: %s: %s", type(e).__name__, e)
        return None


def dense_kernel(
    kernel: Kernel, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, select: bool = True
):
    """``kernel(x1, x2)`` as a dense tensor, through each part's own ``forward``: sums and
    products of kernels are combined here and column selections (``active_dims``) applied as
    ``Kernel.__call__`` does (not again inside a scale kernel, whose ``forward`` calls its base's
    ``forward``), so no lazy tensor is built: that costs most of a small call."""
    if select and kernel.active_dims is not None:
        x1 = x1.index_select(-1, kernel.active_dims)
        x2 = x2.index_select(-1, kernel.active_dims)
    if isinstance(kernel, (AdditiveKernel, ProductKernel)):
        parts = [dense_kernel(k, x1, x2, diag) for k in kernel.kernels]
        out = parts[0]
        for p in parts[1:]:
            out = out + p if isinstance(kernel, AdditiveKernel) else out * p
        return out
    if isinstance(kernel, ScaleKernel):
        scale = kernel.outputscale
        scale = scale.unsqueeze(-1) if diag else scale.view(*scale.shape, 1, 1)
        return dense_kernel(kernel.base_kernel, x1, x2, diag, select=False) * scale
    return to_dense(kernel.forward(x1, x2, diag=diag))


def frozen_kernel(
    kernel: Kernel, Xt: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``x -> kernel(x, Xt)`` as :func:`dense_kernel` computes it, to the last bit, with every
    lengthscale and outputscale read from its raw parameter once, here, and the training side's
    column selections made once: GPyTorch derives each from its raw parameter through module
    lookups on every call, about half the kernel's cost in an acquisition optimizer's forward and
    backward passes. Scale, sum and product kernels over Matern-5/2 (two or more columns: GPyTorch
    computes one column another way without gradients) and categorical kernels; None for any
    other kernel."""
    return _frozen(kernel, Xt, select=True)


def _frozen(kernel: Kernel, Xt: torch.Tensor, select: bool):
    """:func:`dense_kernel`'s recursion, the column selection made where it makes it."""
    cols = kernel.active_dims if select else None
    if cols is not None:
        Xt = Xt.index_select(-1, cols)
    f = _frozen_node(kernel, Xt)
    if f is None or cols is None:
        return f
    return lambda x: f(x.index_select(-1, cols))


def _frozen_node(kernel: Kernel, Xt: torch.Tensor):
    if isinstance(kernel, (AdditiveKernel, ProductKernel)):
        parts = [_frozen(k, Xt, select=True) for k in kernel.kernels]
        if any(p is None for p in parts):
            return None
        add = isinstance(kernel, AdditiveKernel)

        def combined(x):
            out = parts[0](x)
            for p in parts[1:]:
                out = out + p(x) if add else out * p(x)
            return out

        return combined
    if isinstance(kernel, ScaleKernel):
        base = _frozen(kernel.base_kernel, Xt, select=False)
        if base is None:
            return None
        scale = kernel.outputscale.detach()
        scale = scale.view(*scale.shape, 1, 1)
        return lambda x: base(x) * scale
    return _frozen_leaf(kernel, Xt)


def _frozen_leaf(kernel: Kernel, Xt: torch.Tensor):
    """A Matern-5/2 or categorical kernel's own ``forward`` (columns already selected)."""
    if isinstance(kernel, MaternKernel) and kernel.nu == 2.5 and (kernel.ard_num_dims or 1) >= 2:
        ls = kernel.lengthscale.detach()

        def matern(x):
            mean = x.mean(dim=-2, keepdim=True)
            x1, x2 = (x - mean).div(ls), (Xt - mean).div(ls)
            d = torch.cdist(x1, x2).clamp_min(1e-15)
            exp_component = torch.exp(-math.sqrt(5.0) * d)
            return (math.sqrt(5.0) * d).add(1).add(5.0 / 3.0 * d**2) * exp_component

        return matern
    if isinstance(kernel, CategoricalKernel):
        cls = kernel.lengthscale.detach().unsqueeze(-2)

        def categorical(x):
            delta = x.unsqueeze(-2) != Xt.unsqueeze(-3)
            return torch.exp(-(delta / cls).mean(-1))

        return categorical
    return None


class MarginalPosterior(Posterior):
    """Independent normal marginals: what acquisition functions of one point read (mean,
    variance, samples)."""

    def __init__(self, mean: torch.Tensor, variance: torch.Tensor):
        self._mean, self._variance = mean, variance

    @property
    def mean(self) -> torch.Tensor:
        return self._mean

    @property
    def variance(self) -> torch.Tensor:
        return self._variance

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self._mean.dtype

    @property
    def base_sample_shape(self) -> torch.Size:
        return self._mean.shape

    @property
    def batch_range(self) -> tuple[int, int]:
        return (0, -2)

    def rsample_from_base_samples(self, sample_shape, base_samples: torch.Tensor) -> torch.Tensor:
        """Samples of each point's marginal (independent across points and outputs: for
        q = 1 Monte Carlo acquisitions, which see one point at a time)."""
        return self._mean + self._variance.clamp_min(0.0).sqrt() * base_samples

    def rsample(self, sample_shape=None) -> torch.Tensor:
        shape = torch.Size(sample_shape or ()) + self._mean.shape
        z = torch.randn(shape, dtype=self._mean.dtype, device=self._mean.device)
        return self.rsample_from_base_samples(sample_shape, z)
