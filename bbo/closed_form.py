"""Acquisition functions of one point at a time on a GP's cached marginals, gradients in closed form.

An acquisition optimizer evaluates them a few dozen times per ask on a handful of points, where
torch's per-operation dispatch and autograd tape cost ten times the arithmetic. Where the model's
marginals have closed-form gradients (:mod:`bbo.predictive_grad`) and constraints are linear in
the outputs, value and gradient are computed in NumPy by the chain rule and handed to autograd as
one node (:class:`_ClosedForm`), equal to autograd's to ~1e-10; BoTorch's optimizers see an
ordinary acquisition function.

* :class:`MarginalLogEI`: BoTorch's ``qLogExpectedImprovement`` for q = 1, where one point's
  outputs are independent normals, so samples are the marginals scaled by base samples drawn once
  (:func:`log_ei_and_grad`); for a noisy objective, times augmented EI's factor. Without the
  closed form, and for q > 1 or pending points, it is BoTorch's arithmetic to the last bit.
* :class:`MarginalExpectedObjective`: the exploitation step's score, the posterior mean of the
  objective, with outcome constraints BoTorch's ``qSimpleRegret`` of a ``ConstrainedMCObjective``
  (:func:`expected_objective_and_grad`).

:func:`gen_candidates` runs BoTorch's batched L-BFGS-B on these closed forms directly, without a
tensor or an autograd tape per evaluation (half the optimizer's time at n <= 100).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.sampling import SobolQMCNormalSampler
from scipy.special import expit

from bbo.predictive import MarginalPosterior
from bbo.predictive_grad import MarginalGradients, marginal_gradients, softplus, softplus_grad

FATMOID_M = 1.0 / math.sqrt(3.0)  # BoTorch's fatmoid inflection offset
FATPLUS_ALPHA = 0.1  # BoTorch's fatplus Cauchy weight
MC_SAMPLES = 128  # quasi-MC base samples per point
ETA = 1e-3  # BoTorch's default constraint temperature

# a constraint linear in one output: value a * Z[..., j] + c, feasible where <= 0
LinearConstraint = tuple[int, float, float]


class MarginalLogEI(qLogExpectedImprovement):
    """qLogEI of one point at a time on :class:`~bbo.predictive.CachedPredictive` marginals,
    without BoTorch's per-call posterior, sampler and q-reduction machinery. ``linear_constraints``
    (one ``(output, a, c)`` per constraint callable, in order) state the callables' form so the
    closed form can use them; without it, constrained evaluations take the autograd path.
    ``augmented``: ``(objective output, its noise variance)`` adds augmented EI's factor
    (:func:`augmented_factor`) for one point without pending ones."""

    _base_samples: torch.Tensor | None = None

    def __init__(
        self,
        *args,
        linear_constraints: list[LinearConstraint] | None = None,
        augmented: tuple[int, float] | None = None,
        **kw,
    ):
        super().__init__(*args, **kw)
        self._linear = linear_constraints
        self._augmented = augmented  # (objective output, its noise variance): see augmented_factor
        self._closed: MarginalGradients | None | bool = False  # False: not looked up yet
        self._terms: tuple | None = None  # closed_form's constants

    def _non_reduced_forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[-2] != 1 or self.X_pending is not None:
            return super()._non_reduced_forward(X)
        mean, var = self.model.marginals(X)  # b x 1 x m
        samples = mean + var.clamp_min(0.0).sqrt() * self._base(mean)  # s x b x 1 x m
        acqval = self._sample_forward(self.objective(samples, X=X))
        return self._apply_constraints(acqval=acqval, samples=samples)

    def _base(self, mean: torch.Tensor) -> torch.Tensor:
        base = self._base_samples
        if base is None:  # the sampler's base samples for one point's outputs
            base = self._base_samples = one_point_base(self.sampler, mean.shape[-1], mean)
        return base

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = X if X.dim() > 2 else X.unsqueeze(0)
        if X.shape[-2] != 1 or self.X_pending is not None:
            return super().forward(X)
        closed = self._closed_form()
        if closed is not None and X.device.type == "cpu" and X.dtype == torch.float64:
            return _ClosedForm.apply(X, self)
        val = self._sample_reduction(self._non_reduced_forward(X)[..., 0])
        if self._augmented is not None:
            j, noise = self._augmented
            var = self.model.marginals(X)[1][..., 0, j].clamp_min(0.0)
            val = val + torch.log1p(-torch.sqrt(noise / (var + noise)).clamp_max(1.0 - 1e-12))
        return val

    def _closed_form(self) -> MarginalGradients | None:
        if self._closed is False:
            self._closed = None
            fits = self._fat and (self._constraints is None or self._linear is not None)
            marginals = getattr(self.model, "marginals", None)
            if fits and marginals is not None:
                self._closed = marginal_gradients(self.model)
        return self._closed if isinstance(self._closed, MarginalGradients) else None

    def closed_form(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Value (b) and, with ``grad``, gradient (b x d) at ``x`` (b x d) in closed form."""
        mg = self._closed_form()
        assert mg is not None
        mean, var, dmean, dvar = mg(x, grad)
        if self._terms is None:  # base samples, objective weights, constraints as arrays, once
            own: Any = self  # BoTorch's attributes, typed by nn.Module as tensors or modules
            with torch.no_grad():
                base = self._base(torch.as_tensor(mean[:1, None, :])).reshape(-1, mg.m)
                w = own.objective.weights.reshape(-1)
            linear = self._linear or []
            eta = np.broadcast_to(np.asarray(self._eta, dtype=np.float64).reshape(-1), len(linear))
            cons = [(j, a, c, float(e)) for (j, a, c), e in zip(linear, eta, strict=True)]
            self._terms = (base.numpy(), w.numpy(), float(own.best_f), float(own.tau_relu), cons)
        val, g = log_ei_and_grad(mean, var, dmean, dvar, *self._terms)
        if self._augmented is not None:
            j, noise = self._augmented
            a, da = augmented_factor(var[:, j], noise)
            val = val + a
            if g is not None:
                g = g + da[:, None] * dvar[:, j, :]
        return val, g


class MarginalExpectedObjective(AcquisitionFunction):
    """``E[(w . Z + M)_+ prod_k sigmoid(-g_k(Z) / eta) - M]`` over one point's marginals: BoTorch's
    ``qSimpleRegret`` of ``ConstrainedMCObjective(w . Z, constraints, infeasible_cost=M)`` on the
    same base samples; with no constraints the posterior mean ``w . E[Z]``. Closed form only:
    built by :func:`expected_objective` where the marginals have one."""

    def __init__(self, model, mg: MarginalGradients, w, base, cost: float, linear, eta: float):
        super().__init__(model)
        self._mg, self._w, self._base, self._cost = mg, w, base, cost
        self._cons = [(j, a, c, eta) for j, a, c in linear]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return _ClosedForm.apply(X if X.dim() > 2 else X.unsqueeze(0), self)

    def closed_form(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
        mean, var, dmean, dvar = self._mg(x, grad)
        return expected_objective_and_grad(
            mean, var, dmean, dvar, self._base, self._w, self._cost, self._cons
        )


def expected_objective(
    predictive, w: torch.Tensor, cost: float, linear: list[LinearConstraint], seed: int
) -> MarginalExpectedObjective | None:
    """:class:`MarginalExpectedObjective` on ``predictive``'s marginals (objective weights ``w``,
    infeasible cost ``cost``, BoTorch's default eta), base samples as a ``SobolQMCNormalSampler``
    of ``MC_SAMPLES`` and ``seed`` draws them; None without a closed form."""
    mg = marginal_gradients(predictive)
    if mg is None:
        return None
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed)
    base = one_point_base(sampler, mg.m).reshape(-1, mg.m).numpy()
    return MarginalExpectedObjective(
        predictive, mg, w.detach().cpu().numpy().reshape(-1), base, cost, linear, ETA
    )


def one_point_base(sampler: Any, m: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The base samples (s x 1 x 1 x m) ``sampler`` draws for one point's ``m`` outputs (dtype and
    device of ``like``, else float64 on the CPU); BoTorch shares them across a batch of points,
    so they are drawn once."""
    one = torch.zeros(1, 1, m, dtype=torch.float64)
    if like is not None:
        one = one.to(like)
    sampler(MarginalPosterior(one, torch.ones_like(one)))
    return sampler.base_samples


class _ClosedForm(torch.autograd.Function):
    """One autograd node for an acquisition's ``closed_form``: its gradient, saved in forward."""

    @staticmethod
    def forward(ctx, X: torch.Tensor, acqf) -> torch.Tensor:  # type: ignore[override]
        want = bool(ctx.needs_input_grad[0])
        x = X.detach().reshape(-1, X.shape[-1]).numpy()
        val, g = acqf.closed_form(x, want)
        if want and g is not None:
            ctx.save_for_backward(torch.from_numpy(g).reshape(X.shape))
        return torch.from_numpy(val).reshape(X.shape[:-2])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return grad_out[..., None, None] * g, None


def log_ei_and_grad(mean, var, dmean, dvar, base, w, best_f, tau, constraints):
    """BoTorch's q = 1 qLogEI with fat-tailed smoothing from independent normal marginals:
    ``log mean_s exp(log fatplus(w . Z_s - best_f; tau) + sum_k log fatmoid(-g_k(Z_s) / eta_k))``
    with ``Z_s = mean + sd * base_s``, and its gradient through ``dmean`` / ``dvar`` (b x m x d,
    or None for the value alone). ``constraints``: ``(j, a, c, eta)`` with ``g = a Z_j + c``."""
    sd = np.sqrt(var)  # b x m
    Z = mean[None] + sd[None] * base[:, None, :]  # s x b x m
    u = (Z @ w - best_f) / tau  # s x b
    sp = softplus(u)
    cau = 1.0 / (1.0 + u * u)
    fp = sp + FATPLUS_ALPHA * cau
    t = np.log(tau * fp)  # s x b
    dZ = None
    if dmean is not None:
        sig = softplus_grad(u)
        dt_du = (sig - 2.0 * FATPLUS_ALPHA * u * cau * cau) / fp  # d log fp / du
        dZ = (dt_du / tau)[..., None] * w  # s x b x m: d t / d Z
    for j, a, c, eta in constraints:
        X = -(a * Z[..., j] + c) / eta
        neg = X < 0
        y = np.where(neg, X - FATMOID_M, X + FATMOID_M)
        cy = 1.0 / (1.0 + y * y)
        f = np.where(neg, (2.0 / 3.0) * cy, 1.0 - (2.0 / 3.0) * cy)
        t = t + np.log(f)
        if dZ is not None:
            df = (4.0 / 3.0) * y * cy * cy * np.where(neg, -1.0, 1.0)
            dZ[..., j] += (df / f) * (-a / eta)
    top = t.max(axis=0)
    e = np.exp(t - top)
    total = e.sum(axis=0)
    val = top + np.log(total) - math.log(t.shape[0])  # b: log mean exp over samples
    if dZ is None:
        return val, None
    p = e / total  # s x b, the samples' weights in the mean
    G = np.einsum("sb,sbm->bm", p, dZ)  # d val / d mean
    H = np.einsum("sb,sbm,sm->bm", p, dZ, base)  # d val / d sd
    return val, _chain(G, H, sd, dmean, dvar)


def augmented_factor(var: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Augmented EI's factor (Huang et al. 2006), in logs: ``log(1 - sqrt(noise / (var +
    noise)))`` at the objective's posterior variance ``var`` (b) and its derivative in ``var``.
    Near 0 where the model is unsure; strongly negative where its variance is already small
    next to the noise, so a noisy objective's EI stops spending evaluations re-measuring the
    incumbent's neighbourhood, which plug-in EI favours there."""
    v = np.maximum(var, 0.0) + noise
    r = np.minimum(np.sqrt(noise / v), 1.0 - 1e-12)
    return np.log1p(-r), r / (2.0 * v * (1.0 - r))


def expected_objective_and_grad(mean, var, dmean, dvar, base, w, cost, constraints):
    """:class:`MarginalExpectedObjective`'s value and gradient (arguments as
    :func:`log_ei_and_grad`'s; ``cost``: the infeasible cost M)."""
    if not constraints:  # the posterior mean: no sampling needed
        return mean @ w, (None if dmean is None else np.einsum("bmd,m->bd", dmean, w))
    sd = np.sqrt(var)
    Z = mean[None] + sd[None] * base[:, None, :]  # s x b x m
    o = Z @ w + cost
    pos = o > 0
    F = np.ones(o.shape)
    dlogF = np.zeros(Z.shape) if dmean is not None else None
    for j, a, c, eta in constraints:
        X = -(a * Z[..., j] + c) / eta
        F = F * expit(X)
        if dlogF is not None:
            dlogF[..., j] += expit(-X) * (-a / eta)  # d log sigmoid(X) / dX = sigmoid(-X)
    v = np.where(pos, o, 0.0) * F
    val = v.mean(axis=0) - cost
    if dlogF is None:
        return val, None
    dZ = (pos * F)[..., None] * w + v[..., None] * dlogF  # s x b x m
    G = dZ.mean(axis=0)
    H = np.einsum("sbm,sm->bm", dZ, base) / dZ.shape[0]
    return val, _chain(G, H, sd, dmean, dvar)


def _chain(G, H, sd, dmean, dvar) -> np.ndarray:
    """``d value / dx`` from ``d value / d mean`` (G) and ``d value / d sd`` (H), b x m each."""
    dsd = np.divide(dvar, 2.0 * sd[..., None], out=np.zeros_like(dvar), where=sd[..., None] > 0)
    return np.einsum("bm,bmd->bd", G, dmean) + np.einsum("bm,bmd->bd", H, dsd)


# L-BFGS-B options gen_candidates passes on (``tol``: pgtol, as in BoTorch's batched L-BFGS-B),
# and BoTorch's own options that do not change the result here
LBFGSB_OPTIONS = ("maxiter", "pgtol", "factr", "ftol", "maxls", "tol")
IGNORED_OPTIONS = ("batch_limit", "init_batch_limit", "max_optimization_problem_aggregation_size")


class MarginalPriorGuided(AcquisitionFunction):
    """piBO's log form for a one-point acquisition on marginals (Hvarfner et al. 2022):
    ``acqf(X) + exponent * log prior(x)``, what BoTorch's ``PriorGuidedAcquisitionFunction(
    log=True)`` computes for q = 1, but through the wrapped function's own forward (augmented
    EI's factor included, which that class skips by reading its Monte Carlo samples) and in closed
    form where the wrapped function has one (``prior``: a :class:`bbo.priors.LogPrior`)."""

    def __init__(self, acq_function: MarginalLogEI, prior, exponent: float):
        super().__init__(model=acq_function.model)
        self.acq_func, self.prior, self.exponent = acq_function, prior, float(exponent)
        self.set_X_pending(None)  # one point alone (pending ones take the joint form)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = X if X.dim() > 2 else X.unsqueeze(0)
        if closed_form_of(self) is not None and X.device.type == "cpu" and X.dtype == torch.float64:
            return _ClosedForm.apply(X, self)
        return self.acq_func(X) + self.exponent * self.prior(X).sum(-1)

    def closed_form(self, x: np.ndarray, grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
        val, g = self.acq_func.closed_form(x, grad)
        pv, pg = self.prior.closed_form(x, grad)
        if g is not None and pg is not None:
            g = g + self.exponent * pg
        return val + self.exponent * pv, g


def closed_form_of(acqf) -> Any | None:
    """``acqf.closed_form`` where ``acqf`` evaluates through it (CPU, float64, q = 1, no pending
    points), else None."""
    if isinstance(acqf, MarginalPriorGuided):
        inner = closed_form_of(acqf.acq_func)
        return acqf.closed_form if inner is not None and acqf.X_pending is None else None
    if isinstance(acqf, MarginalLogEI):
        return acqf.closed_form if acqf.X_pending is None and acqf._closed_form() else None
    return acqf.closed_form if isinstance(acqf, MarginalExpectedObjective) else None


def gen_candidates(
    initial_conditions: torch.Tensor,
    acquisition_function,
    lower_bounds=None,
    upper_bounds=None,
    options: dict | None = None,
    fixed_features=None,
    timeout_sec=None,
    **constraints,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BoTorch's ``gen_candidates_scipy`` (one L-BFGS-B per restart, run batched) with values and
    gradients straight from the closed form: no tensors or autograd per evaluation, the same
    optima. ``fixed_features`` (a value, or one per restart, by dimension) stay fixed, as in the
    mixed optimizer's continuous steps. Anything else (pending points, constraints on the inputs,
    a time limit, other options, non-finite values) goes to ``gen_candidates_scipy`` itself."""
    from botorch.generation.gen import gen_candidates_scipy

    def botorch() -> tuple[torch.Tensor, torch.Tensor]:
        return gen_candidates_scipy(
            initial_conditions,
            acquisition_function,
            lower_bounds=lower_bounds,
            upper_bounds=upper_bounds,
            options=options,
            fixed_features=fixed_features,
            timeout_sec=timeout_sec,
            **constraints,
        )

    options = options or {}
    X0 = initial_conditions
    cf = closed_form_of(acquisition_function)
    lbfgsb = _batched_lbfgsb()
    others = set(options) - set(LBFGSB_OPTIONS) - set(IGNORED_OPTIONS)
    usable = cf is not None and lbfgsb is not None and X0.dim() == 3 and X0.shape[-2] == 1
    usable = usable and X0.device.type == "cpu" and X0.dtype == torch.float64
    free = [j for j in range(X0.shape[-1]) if j not in (fixed_features or {})]
    if not usable or not free or timeout_sec is not None or others or any(constraints.values()):
        return botorch()
    assert cf is not None and lbfgsb is not None
    from botorch.optim.utils import columnwise_clamp

    fmin, translate = lbfgsb
    b, d = len(X0), X0.shape[-1]
    full = X0.detach().reshape(b, d).numpy().copy()
    for j, v in (fixed_features or {}).items():  # per restart or one for all
        full[:, j] = v.detach().reshape(-1).numpy() if torch.is_tensor(v) else v
    lo, hi = (None if t is None else t[free] for t in (lower_bounds, upper_bounds))
    x0 = columnwise_clamp(torch.from_numpy(full[:, free]), lo, hi, raise_on_violation=True)
    opts = {"maxiter": 2000, **{k: v for k, v in options.items() if k in LBFGSB_OPTIONS}}
    value_and_grad = cf

    def fun(x: np.ndarray, batch_indices=None) -> tuple[np.ndarray, np.ndarray]:
        rows = full[batch_indices] if batch_indices is not None else full.copy()
        rows[:, free] = x
        val, g = value_and_grad(rows, True)
        if not (np.isfinite(val).all() and np.isfinite(g).all()):
            raise _NotFinite
        return -val, -g[:, free]

    try:
        xs, _, _ = fmin(
            func=fun,
            x0=x0.numpy().copy(),
            bounds=translate(lower_bounds=lo, upper_bounds=hi, num_features=len(free), q=1),
            pass_batch_indices=True,
            **opts,
        )
    except _NotFinite:
        return botorch()
    full[:, free] = columnwise_clamp(torch.from_numpy(np.asarray(xs)), lo, hi).numpy()
    X = torch.from_numpy(full).reshape(X0.shape).to(X0)
    with torch.no_grad():
        return X, acquisition_function(X)


class _NotFinite(Exception):
    """A closed-form value or gradient was not finite: BoTorch's own path takes over."""


def _batched_lbfgsb():
    """BoTorch's batched L-BFGS-B and its bounds helper, where this SciPy has them (else None)."""
    try:
        from botorch.generation import gen

        return gen.fmin_l_bfgs_b_batched, gen.translate_bounds_for_lbfgsb
    except AttributeError:
        return None
