"""GP surrogate over the encoded search space, with bounded fit latency as a study grows.

Model: one exact GP per modeled metric (objectives, then constraint metrics: ``spec.modeled_metrics``),
batched in a single :class:`~botorch.models.SingleTaskGP` (with :func:`mixed_kernel` when the space
has categorical columns, which hold the choice index 0..k-1). Inputs are normalized
with the encoding's fixed box (``space.bounds()``), outcomes standardized. Observed standard errors
become fixed noise (``train_Yvar``) when every modeled value of every trial carries one; otherwise the
noise level is inferred. float64 on the device :mod:`bbo.device` picked.

Kernel (:func:`kernel`): ARD Matern-5/2 with a Gamma(3, 6) lengthscale prior (its rate divided by
sqrt(d / 2) above two dimensions, so the prior's lengthscales grow as sqrt(d), the scaling Hvarfner
et al. 2024 show high-dimensional BO needs; at 30 evaluations it helped Hartmann6, Levy10 and the
cloud kit over the fixed prior, 3 seeds each, and changes nothing on Branin) under a scale kernel
(Gamma(2, 0.15) outputscale prior), and a Gamma(1.1, 0.05) noise prior (BoTorch's long-standing
default before 0.12) floored at 1e-12 of the standardized variance: a higher floor's noise hides
the last digits of deterministic objectives, where the fitted noise sits on the floor (Branin median
regret at 50 evaluations 1.0e-4 with 1e-6, 1.1e-5 with 1e-8 before the exploitation steps; with them
9.1e-8 at 1e-8, 4.7e-9 at 1e-10, 1.9e-10 at 1e-12; Hartmann6 1.3e-6 vs 2.6e-7; 5-6 seeds). Measured against BoTorch 0.18's default (RBF with a
dimension-scaled log-normal lengthscale prior, noise floor 1e-4) on 5-10 seeds x 40 evaluations,
median regret: Branin 0.00025 vs 0.0042, Hartmann6 0.06 vs 0.15, Hartmann6 constrained 0.0017 vs
0.044, Levy10 14 vs 21. The 1e-4 noise floor alone is not the difference (Branin 0.0028 with it
lowered), the prior and kernel are. Categorical columns (:func:`mixed_kernel`): BoTorch's
categorical kernel and MixedSingleTaskGP's sum + product structure, with priors on every
lengthscale and outputscale (MixedSingleTaskGP has none). Mean true value of the reported best,
10 seeds, before -> after: categorical Ackley 2.42 -> 1.23 (Optuna GP 1.46), with noise 3.34 ->
2.56, NAS cell 6.40 -> 6.13, FCNet 0.543 -> 0.527; the forest landscapes -8.98 -> -8.48 and -8.49 ->
-7.79, within a seed's sd (about 3) and still first.

Noisy objectives and plateaus (``model(..., weigh_smooth=True)``: declared noisy, reported errors
or differing replicates, :attr:`bbo.strategy.noise.NoiseEstimate.known`; or a quarter of the
points sharing one value, :attr:`bbo.strategy.model_data.TrainingData.plateau`): a fit of 10-99
points is made twice, under the default lengthscale prior and under one
:data:`LONG_LENGTHSCALES` times longer, and the fit with the better leave-one-out log predictive
density is kept (Rasmussen & Williams 5.4.2).
Through noise the marginal likelihood hardly tells a rough function from a smooth trend, and the
prior decides; tree-ensemble search spaces (plateaus of failed models beside broad trends) want
the smooth model, Branin's three minima the rough one. Measured on cross-validated scikit-learn
problems kept out of tuning (10 model x dataset pairs, 5 seeds) and the 11-problem noisy family
(30 paired seeds): see ``bench/README.md``. A fitted noise level alone does not switch it on:
rugged deterministic functions fit as noisy too, and there the smooth model lost (Levy-10 median
regret 3.2 -> 9.7 at 50 evaluations, 5 seeds). A plateau does: left undeclared, the tree spaces'
CV errors sit on one chance-level value and look noise-free, and the default fit alone kept bbo
behind its declared self (decision tree / digits 0.647 against 0.509, 10 seeds; with the plateau
rule 0.528).

Hyperparameter cache and refit policy (one :class:`Surrogate` per generation strategy, i.e. per study):

* After each fit, the kernel, mean and likelihood state (not the outcome transform's mean/std, not
  fixed-noise buffers) is kept. The next ask *conditions* the new data on those hyperparameters
  without optimizing them, unless the data grew by ``algorithm.refit_growth`` (default 20 %) since
  the last fit, or a point added since then surprises them: its leave-one-out z-score under the
  conditioned GP exceeds :data:`SURPRISE_Z` (the hyperparameters do not explain it). Points they
  predict well change the fit little, and a fit costs most of an ask at small n. The exception: an
  objective fit as noise-free is refit on every ask below :data:`ALWAYS_REFIT_BELOW` points, since
  its fitted noise keeps falling as points gather at the optimum and the exploitation steps'
  precision follows it. A refit starts from the cached hyperparameters (warm start, gradient
  tolerance :data:`WARM_GTOL`), so it converges in few L-BFGS iterations; below :data:`FRESH_START_BELOW`
  points it also starts from the default values whenever the data doubled since that was last done
  (the likelihood is multimodal at small n), keeping the better of the two.
* After conditioning, the GP's :class:`~bbo.predictive.CachedPredictive` is built (it serves the
  acquisition optimizer cheap marginals and checks the GP's predictions are finite).
* Above ``algorithm.max_fit_points`` points the hyperparameters are fit on a subset of that size: the
  best quarter by the caller's quality score (feasible first), the rest a space-filling (greedy
  max-min distance) selection of the remaining points.
* Above ``algorithm.max_model_points`` the GP conditions on a subset of that size: a third the best by
  score, a third the nearest to the incumbent (the best point, where the acquisition will look
  hardest), the rest uniformly at random (seeded). The caller learns which rows were used.
* Exact Cholesky inference is forced up to ``max_model_points`` (GPyTorch would otherwise switch to
  iterative solvers above 800 points, which is slower and noisier on a CPU).

Failures never reach the caller: if the fit raises or produces non-finite hyperparameters or
predictions, the previous hyperparameters are used (conditioning only), or if there are none a model
with BoTorch's default hyperparameters; :attr:`ModelInfo.reason` says what happened.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass

import gpytorch
import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.kernels.categorical import CategoricalKernel
from botorch.models.model import Model
from botorch.models.transforms import Normalize, Standardize
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior

from bbo import marginal_likelihood
from bbo.device import Placement
from bbo.predictive import CachedPredictive, cached_predictive
from bbo.space import SearchSpace
from bbo.spec import AlgorithmOptions

log = logging.getLogger(__name__)

SURPRISE_Z = 3.0  # a new point's leave-one-out z-score above this calls for a refit
# below this many points a noise-free objective is refit on every ask: its fitted noise keeps
# falling as points gather at the optimum, and the exploitation steps' precision follows it (on
# Hartmann6 the noise went 9e-6 -> 1e-12 over the last 25 asks; held at one fit for 8 asks the
# steps stopped improving)
ALWAYS_REFIT_BELOW = 50
FRESH_START_BELOW = 100  # below this many fit points, also fit from the default initialization
FRESH_GROWTH = 2.0  # ... once the data grew this much since the last such fit
# kept with the hyperparameters (replicas share them): the size of the last fit from the default
# initialization, so a replica that adopts a fit makes the same fresh-start choice as its owner
N_FRESH_KEY = "bbo.n_fresh"
# L-BFGS-B's gradient tolerance for fits from the cached hyperparameters (scipy's default 1e-5): on
# the fits of Hartmann6 runs it reached the same likelihood to 4 digits with a third fewer steps
WARM_GTOL = 1e-3
COLD_SUBSET = 300  # cold start above this many fit points: fit a subset first, then refine on all
_HYPER_PREFIXES = ("covar_module.", "mean_module.", "likelihood.")
_MIN_YVAR = 1e-10
LENGTHSCALE_RATE = 6.0  # Gamma(3, rate) lengthscale prior at d <= 2; divided by sqrt(d / 2) above
# the alternative lengthscale prior of a smoothness-weighing fit (:meth:`Surrogate._smoother`):
# this many times longer than the default
LONG_LENGTHSCALES = 2.0
# ... tried on fits of this many points (a leave-one-out verdict on fewer is a coin flip; above,
# the data outweigh the prior)
SMOOTHER_POINTS = (10, 100)
CAT_LENGTHSCALE_RATE = 4.5  # Gamma(3, rate) prior of the categorical kernel's lengthscales
# fitted noise variance (standardized) under which an output counts as observed without noise
DETERMINISTIC_NOISE = 1e-4
# the noise-free alternative of :meth:`Surrogate.noise_evidence` (standardized variance)
NOISE_FREE_LEVEL = 1e-6
MIN_NOISE = 1e-12  # inferred noise variance floor (standardized units): deterministic objectives need it low (1e-8 held Branin near 1e-7 regret)


def kernel(
    batch_shape: torch.Size, ard_num_dims: int, active_dims=None, stretch: float = 1.0
) -> MaternKernel:
    """ARD Matern-5/2 with a Gamma(3, 6 / sqrt(d / 2)) lengthscale prior on the unit cube (mean 0.5 up
    to two dimensions, growing as sqrt(d) above; ``stretch`` multiplies the prior's lengthscales);
    the signature of BoTorch's ``cont_kernel_factory`` so the mixed model uses it for its continuous
    part too."""
    d = max(1, ard_num_dims or 1)
    rate = LENGTHSCALE_RATE / math.sqrt(max(1.0, d / 2.0)) / stretch
    return MaternKernel(
        nu=2.5,
        ard_num_dims=ard_num_dims,
        batch_shape=batch_shape,
        active_dims=active_dims,
        lengthscale_prior=GammaPrior(3.0, rate),
    )


def categorical_kernel(batch_shape: torch.Size, dims: list[int]) -> CategoricalKernel:
    """BoTorch's categorical kernel, exp(-mean_i [x_i != y_i] / l_i), with a Gamma(3, 4.5)
    lengthscale prior (mean 2/3: one of eight choices changed keeps a correlation near 0.83, all
    changed about 0.2). Unpriored (BoTorch's MixedSingleTaskGP) the fitted lengthscales ran to
    1e-6 or 1e8 at 17-30 points of a categorical Ackley, a model that cannot rank choices."""
    return CategoricalKernel(
        batch_shape=batch_shape,
        ard_num_dims=len(dims),
        active_dims=dims,
        lengthscale_prior=GammaPrior(3.0, CAT_LENGTHSCALE_RATE),
        lengthscale_constraint=GreaterThan(1e-6),
    )


def _scaled(base, batch_shape: torch.Size) -> ScaleKernel:
    return ScaleKernel(base, batch_shape=batch_shape, outputscale_prior=GammaPrior(2.0, 0.15))


def mixed_kernel(batch_shape: torch.Size, d: int, cat: list[int], stretch: float = 1.0):
    """The kernel of BoTorch's MixedSingleTaskGP (categorical alone; else the sum of a scaled
    continuous + scaled categorical kernel and a scaled continuous x categorical product), with
    priors on every lengthscale and outputscale (:func:`kernel`, :func:`categorical_kernel`)."""
    num = [i for i in range(d) if i not in cat]
    if not num:
        return _scaled(categorical_kernel(batch_shape, cat), batch_shape)
    additive = kernel(batch_shape, len(num), num, stretch) + _scaled(
        categorical_kernel(batch_shape, cat), batch_shape
    )
    product = kernel(batch_shape, len(num), num, stretch) * categorical_kernel(batch_shape, cat)
    return _scaled(additive, batch_shape) + _scaled(product, batch_shape)


def likelihood(batch_shape: torch.Size) -> GaussianLikelihood:
    return GaussianLikelihood(
        batch_shape=batch_shape,
        noise_prior=GammaPrior(1.1, 0.05),
        noise_constraint=GreaterThan(MIN_NOISE),
    )


def fitted_noise(model, output: int) -> float | None:
    """The noise variance the GP inferred for ``output`` (standardized units); None where the
    noise was given (a fixed-noise likelihood) or the model has none."""
    likelihood = getattr(model, "likelihood", None)
    if not isinstance(likelihood, GaussianLikelihood):  # fixed noise: given, not fitted
        return None
    level = likelihood.noise.detach().reshape(-1)
    return float(level[output if level.numel() > 1 else 0])


def noise_free(model, output: int) -> bool:
    """Whether the GP fitted ``output`` as observed without noise (an inferred noise level at most
    :data:`DETERMINISTIC_NOISE`); False where the noise was given (fixed-noise likelihood)."""
    level = fitted_noise(model, output)
    return level is not None and level <= DETERMINISTIC_NOISE


@dataclass
class ModelInfo:
    """What :meth:`Surrogate.model` did."""

    n_fit: int = 0  # points the hyperparameters were optimized on (0: not optimized this time)
    n_model: int = 0  # points the returned GP conditions on
    refit: bool = False
    reason: str = ""  # non-empty when a fallback was used
    fit_seconds: float = 0.0
    surprise: float = 0.0  # the leave-one-out z-score that called for a refit, if one did
    predictive: CachedPredictive | None = None  # the GP's cheap marginals, where available


class Surrogate:
    """Builds GPs for one study, caching hyperparameters between calls (see module docstring)."""

    def __init__(
        self, space: SearchSpace, n_outputs: int, options: AlgorithmOptions, placement: Placement
    ):
        self.space = space
        self.m = n_outputs
        self.options = options
        self.placement = placement
        self._hyper: dict[str, torch.Tensor] | None = None
        self._n_at_fit = 0
        self._n_fresh = 0  # points at the last fit that also started from the default values
        self._fit_keys: set[bytes] | None = None  # the points of the last fit (encoded rows)
        # the last fit's first output (an objective) has no noise; None: not known yet (another
        # replica's fit was imported), decided from the first model conditioned on it
        self._noise_free: bool | None = False
        # the hyperparameters whose cached marginals were compared with the GP's posterior
        self._verified: dict | None = None
        self._bounds = placement.tensor(space.bounds())

    # ---- public ------------------------------------------------------------------------------------
    def export_state(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """``(n at the last fit, hyperparameters)`` to share with other replicas, or None before any fit.
        The dict is the cache itself (read-only): each fit replaces it, so identity tells a new fit."""
        return None if self._hyper is None else (self._n_at_fit, self._hyper)

    def import_state(self, n_fit: int, hyper: dict[str, torch.Tensor]) -> None:
        """Adopt another replica's fit (unknown or mis-shaped entries are ignored when loaded)."""
        self._hyper, self._n_at_fit, self._fit_keys = hyper, int(n_fit), None
        self._noise_free = None
        self._n_fresh = int(hyper[N_FRESH_KEY]) if N_FRESH_KEY in hyper else 0

    def conditioned(
        self, X: np.ndarray, Y: np.ndarray, Yvar: np.ndarray | None, score: np.ndarray
    ) -> tuple[object, np.ndarray] | None:
        """A GP on (a subset of) the data with the cached hyperparameters, never fit: ``(model,
        rows)``, or None before any fit. For reads (the recommended trial): cheap, no state
        changed, safe beside a running ask."""
        hyper = self._hyper
        if hyper is None or len(X) == 0:
            return None
        rows = self._model_rows(X, score, np.random.default_rng(0))
        with gpytorch.settings.max_cholesky_size(max(self.options.max_model_points, 2000) + 1):
            yv = None if Yvar is None else Yvar[rows]
            return self._condition(X[rows], Y[rows], yv, hyper), rows

    def needs_refit(self, n: int) -> bool:
        """Whether ``n`` points call for a fit whatever they look like: no hyperparameters yet, the
        data grew by ``algorithm.refit_growth`` since the last fit, or the objective is fit as
        noise-free and there are fewer than :data:`ALWAYS_REFIT_BELOW` points."""
        return (
            self._hyper is None
            or n >= (1.0 + self.options.refit_growth) * self._n_at_fit
            or (bool(self._noise_free) and n < ALWAYS_REFIT_BELOW)
        )

    def model(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        Yvar: np.ndarray | None = None,
        score: np.ndarray | None = None,
        seed: int = 0,
        weigh_smooth: bool = False,
    ) -> tuple[Model, np.ndarray, ModelInfo]:
        """A GP on (a subset of) the data: ``(model, rows it conditions on, info)``.
        ``weigh_smooth``: a fit also weighs smoother lengthscales (:meth:`_smoother`), for an
        objective known to be noisy or with a plateau
        (:attr:`bbo.strategy.model_data.TrainingData.weigh_smooth`). Never raises for bad data or
        fit failures; raises only if even a default model cannot be built."""
        n = len(X)
        score = np.zeros(n) if score is None else np.asarray(score, dtype=float)
        info = ModelInfo()
        rng = np.random.default_rng(seed)
        model_rows = self._model_rows(X, score, rng)
        info.n_model = len(model_rows)
        Yv = None if Yvar is None else Yvar[model_rows]
        with gpytorch.settings.max_cholesky_size(max(self.options.max_model_points, 2000) + 1):
            if not self.needs_refit(n):
                m = self._conditioned(X[model_rows], Y[model_rows], Yv, info)
                if m is not None and self._noise_free is None:  # an imported fit: as its replica
                    self._noise_free = noise_free(m, 0)
                    if self.needs_refit(n):
                        m = None
                z = self._surprise(info.predictive, X, model_rows) if m is not None else 0.0
                if m is not None and z <= SURPRISE_Z:
                    return m, model_rows, info
                info.surprise = z
            fitted = self._refit(X, Y, Yvar, score, model_rows, info, weigh_smooth)
            if fitted is not None:
                info.predictive = self._predictive(fitted)
                return fitted, model_rows, info
            try:
                m = self._condition(X[model_rows], Y[model_rows], Yv, self._hyper)
                info.predictive = self._checked(m, X[model_rows])
            except Exception as e:  # noqa: BLE001
                if self._hyper is None:
                    raise
                info.reason = (
                    info.reason + "; " if info.reason else ""
                ) + f"cached hyperparameters unusable ({_short(e)}); using defaults"
                self._hyper = None
                m = self._condition(X[model_rows], Y[model_rows], Yv, None)
                info.predictive = self._predictive(m)
            return m, model_rows, info

    def _conditioned(self, X, Y, Yvar, info: ModelInfo):
        """The GP on the cached hyperparameters (no fit), checked; None where they are unusable
        (then the caller refits)."""
        try:
            m = self._condition(X, Y, Yvar, self._hyper)
            info.predictive = self._checked(m, X)
            return m
        except Exception as e:  # noqa: BLE001
            info.reason = f"cached hyperparameters unusable ({_short(e)}); refit"
            info.predictive = None
            return None

    def _predictive(self, m):
        """``m``'s cheap marginals, compared with its posterior once per set of hyperparameters
        (the model's kind is the study's, and its factorization the same as GPyTorch's)."""
        compare = self._verified is not self._hyper or self._hyper is None
        pred = cached_predictive(m, compare)
        if pred is not None and compare:
            self._verified = self._hyper
        return pred

    def _checked(self, m, X: np.ndarray):
        """``m``'s :class:`~bbo.predictive.CachedPredictive`, whose construction checks it against
        the GP's own finite predictions; where there is none, the plain finiteness check
        (raises)."""
        pred = self._predictive(m)
        if pred is None:
            _check_finite(m, self.placement.tensor(X))
        return pred

    def _surprise(self, pred, X: np.ndarray, rows: np.ndarray) -> float:
        """The largest leave-one-out z-score of the points the hyperparameters were not fit on
        (0 when there are none or no cheap predictive to tell)."""
        if pred is None:
            return 0.0
        keys = self._fit_keys
        if keys is not None:
            new = [k for k, i in enumerate(rows) if X[i].tobytes() not in keys]
        else:  # adopted from another replica: the points past its count
            new = list(range(min(self._n_at_fit, len(rows)), len(rows)))
        if not new:
            return 0.0
        try:
            z = pred.loo_z(torch.as_tensor(new, dtype=torch.long))
        except Exception:  # noqa: BLE001 - no verdict, no refit
            return 0.0
        return float(z.abs().max()) if torch.isfinite(z).all() else float("inf")

    def _refit(self, X, Y, Yvar, score, model_rows, info: ModelInfo, weigh_smooth: bool = False):
        """Fit the hyperparameters (on a subset above ``max_fit_points``) and cache them; the fitted
        GP where it conditions on exactly ``model_rows``, else None (the caller conditions)."""
        t0 = time.perf_counter()
        fit_rows = model_rows
        if len(model_rows) > self.options.max_fit_points:
            sub = _spread_rows(
                X[model_rows], score[model_rows], self.options.max_fit_points, self.space
            )
            fit_rows = model_rows[sub]
        fitted = None
        try:
            fitted = self._fit(
                X[fit_rows],
                Y[fit_rows],
                None if Yvar is None else Yvar[fit_rows],
                score[fit_rows],
                weigh_smooth,
            )
            self._hyper = _hyper_state(fitted)
            self._hyper[N_FRESH_KEY] = torch.tensor(self._n_fresh, dtype=torch.int64)
            self._n_at_fit = len(X)
            self._noise_free = noise_free(fitted, 0)
            self._fit_keys = {X[i].tobytes() for i in fit_rows}
            info.refit, info.n_fit = True, len(fit_rows)
            if not np.array_equal(fit_rows, model_rows):
                fitted = None
        except Exception as e:  # noqa: BLE001 - any fit failure falls back, by contract
            fitted = None
            info.reason = f"hyperparameter fit failed ({type(e).__name__}: {_short(e)}); " + (
                "kept previous hyperparameters"
                if self._hyper is not None
                else "using default hyperparameters"
            )
            log.info("surrogate: %s", info.reason)
        info.fit_seconds = time.perf_counter() - t0
        return fitted

    # ---- model construction -------------------------------------------------------------------------
    def _build(self, X: np.ndarray, Y: np.ndarray, Yvar: np.ndarray | None, stretch: float = 1.0):
        """A GP on the data, its lengthscale prior stretched by ``stretch`` (:func:`kernel`)."""
        p = self.placement
        tX, tY = p.tensor(X), p.tensor(Y)
        tYvar = p.tensor(np.maximum(Yvar, _MIN_YVAR)) if Yvar is not None else None
        d = self.space.dim
        cat = self.space.cat_dims
        bs = torch.Size([self.m]) if self.m > 1 else torch.Size([])
        lik = likelihood(bs) if tYvar is None else None
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # input/outcome scaling warnings: our encoding is exact by design
            if cat:
                num = [i for i in range(d) if i not in cat]
                model = SingleTaskGP(
                    tX,
                    tY,
                    tYvar,
                    likelihood=lik,
                    covar_module=mixed_kernel(bs, d, cat, stretch),
                    input_transform=Normalize(d, indices=num, bounds=self._bounds) if num else None,
                    outcome_transform=self._outcome_transform(),
                )
            else:
                covar = _scaled(kernel(bs, d, stretch=stretch), bs)
                model = SingleTaskGP(
                    tX,
                    tY,
                    tYvar,
                    likelihood=lik,
                    covar_module=covar,
                    input_transform=Normalize(d, bounds=self._bounds),
                    outcome_transform=self._outcome_transform(),
                )
        return model.to(**p.tkwargs)

    def _outcome_transform(self):
        """The models' outcome transform (a subclass adds a prior mean: :mod:`bbo.transfer_model`)."""
        return Standardize(self.m)

    def _condition(self, X, Y, Yvar, hyper):
        model = self._build(X, Y, Yvar)
        if hyper is not None:
            _load_hyper(model, hyper)
        model.eval()
        return model

    def _fit(self, X, Y, Yvar, score, weigh_smooth: bool = False):
        """Optimize hyperparameters. Small data: from the default initialization *and* from the cached
        hyperparameters, keeping the higher marginal likelihood (the likelihood is multimodal there and
        a warm start alone gets stuck in whatever basin an earlier, smaller data set chose). Larger
        data: from the cached hyperparameters only, with an iteration budget that shrinks with n (one
        likelihood gradient costs ~0.4 CPU-s at n=1000, 0.02 s at n=300). Large data and no cache
        (a cold start): first fit on a :data:`COLD_SUBSET`-point subset, then refine on all of X."""
        n = len(X)
        init = self._hyper
        if init is None and n > COLD_SUBSET:
            rows = _spread_rows(X, score, COLD_SUBSET, self.space)
            init = _hyper_state(
                self._fit_from(X[rows], Y[rows], None if Yvar is None else Yvar[rows], [None], 200)
            )
        starts: list[dict[str, torch.Tensor] | None] = [init] if init is not None else []
        if not starts or (n < FRESH_START_BELOW and n >= FRESH_GROWTH * self._n_fresh):
            starts.insert(0, None)
            self._n_fresh = n
        maxiter = 200 if n <= 200 else (60 if n <= 500 else 12)
        model = self._fit_from(X, Y, Yvar, starts, maxiter)
        if weigh_smooth and SMOOTHER_POINTS[0] <= n < SMOOTHER_POINTS[1]:
            model = self._smoother(model, X, Y, Yvar, maxiter)
        return model

    def _smoother(self, model, X, Y, Yvar, maxiter):
        """``model`` or a fit under a lengthscale prior :data:`LONG_LENGTHSCALES` times longer
        (from the default initialization), whichever predicts each observation from the others
        better (leave-one-out log predictive density). With noise the marginal likelihood barely
        tells a rough function from a smooth one seen through noise, and the prior decides; this
        lets the data choose between the two."""
        try:
            alt = self._fit_from(X, Y, Yvar, [None], maxiter, stretch=LONG_LENGTHSCALES)
            pred, alt_pred = cached_predictive(model, False), cached_predictive(alt, False)
            if pred is None or alt_pred is None:
                return model
            better = alt_pred.loo_log_density() > pred.loo_log_density()
        except Exception as e:  # noqa: BLE001 - the default prior's fit stands
            log.info("surrogate: long-lengthscale fit failed (%s)", _short(e))
            return model
        return alt if better else model

    def _fit_from(self, X, Y, Yvar, starts, maxiter, stretch: float = 1.0):
        """The best fit over ``starts`` (hyperparameter states, None: the defaults)."""
        return self._best_fit(X, Y, Yvar, starts, maxiter, stretch=stretch)[0]

    def _best_fit(
        self, X, Y, Yvar, starts, maxiter, fixed_noise=None, stretch: float = 1.0
    ) -> tuple[Model, float]:
        """The best fit over ``starts`` and its log marginal likelihood (nats);
        ``fixed_noise``: the inferred noise held at that (standardized) level; ``stretch``: the
        lengthscale prior's (:func:`kernel`)."""
        best, best_val, errors = None, -float("inf"), []
        for init in starts:
            try:
                model = self._build(X, Y, Yvar, stretch)
                if init is not None:
                    _load_hyper(model, init)
                if fixed_noise is not None:
                    model.likelihood.noise = fixed_noise
                    model.likelihood.raw_noise.requires_grad_(False)
                mll = ExactMarginalLogLikelihood(model.likelihood, model)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    options = {"maxiter": maxiter}
                    if init is not None:  # near the optimum already: stop at a looser gradient
                        options["gtol"] = WARM_GTOL
                    val = marginal_likelihood.fit(model, options)
                    if val is None:  # not a model the NumPy fit knows: GPyTorch's
                        fit_gpytorch_mll(
                            mll,
                            optimizer_kwargs={"options": options},
                            max_attempts=3,
                            warning_handler=lambda w: (
                                True
                            ),  # hitting maxiter is fine: warm starts are close already
                        )
                        val = _log_marginal_likelihood(model)
                _check_finite(model, self.placement.tensor(X))
            except Exception as e:  # noqa: BLE001 - try the other start, report if all fail
                errors.append(e)
                continue
            if best is None or (np.isfinite(val) and val > best_val):
                best, best_val = model, val
        if best is None:
            raise errors[-1]
        return best, best_val

    def noise_evidence(self, X: np.ndarray, Y: np.ndarray, model, output: int) -> float:
        """The data's evidence for ``output``'s fitted noise: how much higher (nats) the log
        marginal likelihood (with the priors) of ``model``'s hyperparameters for that output is
        than that of the same GP refit with the noise held at :data:`NOISE_FREE_LEVEL` on
        ``X, Y`` (the rows ``model`` conditions on). A few points of a deterministic function
        often fit as noisy, smooth, and as noise-free, wiggly, equally well: the fitted level
        alone is no evidence there (Branin, 8 points: 0.17 of the variance, evidence < 1 nat)."""
        one = Surrogate(self.space, 1, self.options, self.placement)
        y = Y[:, [output]]
        hyper = _hyper_state(model)
        if self.m > 1:  # the batched model's state, one output's slice
            hyper = {
                k: v[output] if v.dim() and v.shape[0] == self.m else v for k, v in hyper.items()
            }
        free = one._build(X, y, None)
        _load_hyper(free, hyper)  # the fitted noise included (its raw parameter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            free_val = _log_marginal_likelihood(free)
        _, fixed_val = one._best_fit(X, y, None, [hyper, None], 200, NOISE_FREE_LEVEL)
        return free_val - fixed_val

    # ---- subsets -------------------------------------------------------------------------------------
    def _model_rows(self, X: np.ndarray, score: np.ndarray, rng) -> np.ndarray:
        n, k = len(X), self.options.max_model_points
        if n <= k:
            return np.arange(n)
        order = np.argsort(-score, kind="stable")
        chosen = list(order[: k // 3])
        taken = np.zeros(n, dtype=bool)
        taken[chosen] = True
        dist = _scaled_dist(X, X[order[0]], self.space)
        for i in np.argsort(dist, kind="stable"):
            if len(chosen) >= 2 * k // 3:
                break
            if not taken[i]:
                taken[i] = True
                chosen.append(i)
        rest = np.flatnonzero(~taken)
        chosen.extend(rng.choice(rest, size=k - len(chosen), replace=False))
        return np.sort(np.asarray(chosen, dtype=int))


def _spread_rows(X: np.ndarray, score: np.ndarray, k: int, space: SearchSpace) -> np.ndarray:
    """``k`` row indices: the best quarter by score, the rest greedy max-min distance (space-filling)."""
    n = len(X)
    if n <= k:
        return np.arange(n)
    order = np.argsort(-score, kind="stable")
    chosen = list(order[: k // 4])
    Xs = X / np.maximum(space.bounds()[1], 1.0)
    mind = np.full(n, np.inf)
    for i in chosen:
        mind = np.minimum(mind, np.sum((Xs - Xs[i]) ** 2, axis=1))
    mind[chosen] = -1.0
    while len(chosen) < k:
        i = int(np.argmax(mind))
        chosen.append(i)
        mind = np.minimum(mind, np.sum((Xs - Xs[i]) ** 2, axis=1))
        mind[i] = -1.0
    return np.sort(np.asarray(chosen, dtype=int))


def _scaled_dist(X: np.ndarray, x: np.ndarray, space: SearchSpace) -> np.ndarray:
    scale = np.maximum(space.bounds()[1], 1.0)
    return np.sqrt(np.sum(((X - x) / scale) ** 2, axis=1))


def _hyper_state(model) -> dict[str, torch.Tensor]:
    """Kernel / mean / likelihood state to warm-start the next model (no data-sized buffers)."""
    fixed_noise = getattr(getattr(model.likelihood, "noise_covar", None), "noise", None)
    out = {}
    for k, v in model.state_dict().items():
        if not k.startswith(_HYPER_PREFIXES):
            continue
        if k.endswith("noise_covar.noise") or (fixed_noise is not None and v is fixed_noise):
            continue
        out[k] = v.detach().clone()
    return out


def _load_hyper(model, hyper: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    usable = {
        k: v.to(own[k].device, own[k].dtype)
        for k, v in hyper.items()
        if k in own and own[k].shape == v.shape
    }
    model.load_state_dict(usable, strict=False)


def _log_marginal_likelihood(model) -> float:
    """The fit's objective, in nats (GPyTorch's is per data point): the exact log marginal
    likelihood plus the hyperparameters' log prior; leaves ``model`` in eval mode."""
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    mll.train()
    try:
        with torch.no_grad():
            value = mll(model(*model.train_inputs), model.train_targets).sum()
        return float(value) * model.train_targets.shape[-1]
    finally:
        model.eval()


def _check_finite(model, X: torch.Tensor) -> None:
    """Raise unless the hyperparameters and a few predictions at the training inputs are finite."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"non-finite hyperparameter {name}")
    idx = torch.linspace(0, X.shape[0] - 1, min(8, X.shape[0]), device=X.device).long()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", gpytorch.utils.warnings.NumericalWarning
        )  # ~0 variance at a training point of a noiseless fit
        post = model.posterior(X[idx])
        if not (torch.isfinite(post.mean).all() and torch.isfinite(post.variance).all()):
            raise FloatingPointError("non-finite predictions")


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return s[:160]
