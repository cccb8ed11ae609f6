"""Acquisition functions and their optimization over the encoded search space.

* One objective, no reported noise, a point chosen alone: ``qLogExpectedImprovement`` (q = 1)
  over a plug-in incumbent, the best posterior mean at the observed feasible points
  (:func:`marginal_acquisition`), on the GP's cached marginals (:mod:`bbo.predictive`). On a
  noise-free fit that is what qLogNEI computes by Monte Carlo over the baseline jointly with the
  candidate; evaluating it costs a tenth.
* The same with points pending (other workers' trials, or this ask's earlier points): on the GP
  conditioned on them at its own posterior mean (:func:`believe`, the Kriging believer), their
  believed values in the incumbent's running.
* Otherwise (reported noise, no feasible point yet):
  ``qLogNoisyExpectedImprovement`` on ``sign * objective`` (a linear MC objective that
  picks the objective's output), outcome constraints as BoTorch constraint callables (feasible when
  ``<= 0``; the improvement is weighted by the probability of feasibility, not penalized),
  ``prune_baseline=True``.
* Several objectives, no reported noise, a point chosen alone: log expected hypervolume
  improvement in closed form (:class:`LogEHVI`) over a plug-in Pareto front, that of the
  posterior means at the observed points, on the GP's cached marginals
  (:func:`plugin_hypervolume`), as one objective takes a plug-in incumbent. One point's outputs
  are independent normals, so EHVI is a sum over the box decomposition's cells of products of
  one-dimensional expectations (Yang et al. 2019); qLogEHVI's Monte Carlo took 128 samples of
  every cell, and the cells run to the hundreds at four objectives. Against it (10 seeds x 30,
  ``bench_multiobjective.py``, one run each): an ask 0.17 / 0.26 / 0.17 s -> 0.06 / 0.07 / 0.11 s
  on BraninCurrin, DTLZ2 and ZDT1, 0.56 / 1.87 s -> 0.17 / 0.24 s on DTLZ2 with three and four
  objectives; the missing hypervolume at 30 (median log10) -1.05 / -0.44 / -1.77 / -0.17 / -0.16
  -> -0.92 / -0.42 / -2.14 / -0.18 / -0.14 (paired by seed: ZDT1 better on 10 of 10,
  BraninCurrin worse on 8, four objectives worse on 8 by 0.01; not traced further).
* Several objectives with points pending (a batch's later points, other workers' trials):
  the same on the GP with the pending points believed, over the plug-in Pareto front of
  posterior means at the baseline and pending points (:func:`plugin_hypervolume`), on the
  believed GP's cached marginals where they exist. qLogNEHVI would recompute its box
  decompositions, one per Monte Carlo sample, over the baseline and every pending point each
  time a point is added (Python loops over the samples for m > 2): on DTLZ2 (5-D, 3 objectives,
  25 trials) a batch point cost 4 s rising to 8-11 s, an ask(30) 244 s; believed, 1.6 to 2.3 s
  and 54 s, the batch as spread out, the hypervolume after 3 rounds of ask(10) 0.33 against
  0.31 (mean of 2 seeds, one each way). Two objectives, asks of 4 points (5 seeds x 30,
  ``bench_multiobjective.py --batch 4``): 0.29 / 0.42 / 0.38 -> 0.17 / 0.26 / 0.28 s a point,
  missing hypervolume -1.02 / -0.41 / -1.51 -> -1.02 / -0.41 / -1.66 against qLogNEHVI's
  Monte Carlo over the pending points.
* Otherwise (reported noise, no cached marginals):
  ``qLogNoisyExpectedHypervolumeImprovement`` on the signed objectives, same
  constraints, with a reference point from ``algorithm.reference_point`` where given and otherwise
  past the worst observed feasible value of each objective (:func:`reference_point`).
* Priors (:mod:`bbo.priors`): ``PriorGuidedAcquisitionFunction(log=True)`` adds
  ``beta / n * log prior(x)`` to each MC sample of the log-acquisition before reduction (piBO);
  on the marginals, where that is the same sum after reduction,
  :class:`~bbo.closed_form.MarginalPriorGuided` adds it in closed form.
  qLogNEHVI does not reduce over MC samples the way that class needs for pending points, so there
  the same weighting is added to the reduced value by :class:`AdditiveLogPrior`.
* Optimization (q = 1 per call; the strategy does sequential greedy batches via ``X_pending``):
  ``optimize_acqf`` on purely continuous spaces, ``optimize_acqf_mixed_alternating`` when int /
  ordinal / categorical columns exist. Linear parameter constraints are passed to both, so the
  optimizer itself stays inside the feasible polytope; its raw samples (the pool its starting
  points are picked from) are Sobol points inside the polytope (:meth:`Polytope.sobol`).
  Restarts and raw samples shrink as the model grows (:func:`budget`); the acquisition on
  marginals gets looser L-BFGS-B stops and a restart from near the incumbent
  (:mod:`bbo.strategy.acquisition_step`).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective import logei as _botorch_mo_logei
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.acquisition.multi_objective.utils import get_default_partitioning_alpha
from botorch.acquisition.objective import LinearMCObjective
from botorch.acquisition.prior_guided import PriorGuidedAcquisitionFunction
from botorch.exceptions.errors import CandidateGenerationError
from botorch.optim import optimize_acqf, optimize_mixed
from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated
from botorch.utils.transforms import t_batch_mode_transform
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

from bbo import discrete_search
from bbo.closed_form import (
    MC_SAMPLES,
    LinearConstraint,
    MarginalLogEI,
    MarginalPriorGuided,
    gen_candidates,
)
from bbo.device import Placement
from bbo.priors import LogPrior
from bbo.space import SearchSpace, dense_constraints, scaled_rows, split_equalities
from bbo.spec import StudySpec

# BoTorch's mixed optimizer takes no candidate generator: its continuous steps call the name
# gen_candidates_scipy in its module, so they run on the closed form where there is one (the
# replacement hands everything else back to gen_candidates_scipy unchanged).
optimize_mixed.gen_candidates_scipy = gen_candidates  # type: ignore[assignment]

# BoTorch 0.18 compiles a fused C++ kernel for qLog(N)EHVI the first time one is built in a
# process (torch's JIT extension build): minutes of a compiler inside an ask on a fresh machine,
# and, where a process died mid-build, every later build in every process waits for ever on the
# build's lock file. Marking the load as already tried keeps BoTorch's PyTorch path (same values).
_botorch_mo_logei._load_attempted = True

# Sobol points drawn at most (per pass: over the box, then the polytope's bounding box) to find
# raw samples inside linear parameter constraints, in batches of at most POLYTOPE_CHUNK numbers
# (16 MB in float64, whatever the number of parameters); a polytope that keeps fewer than the
# samples asked for in both passes is sampled by an ensemble of hit-and-run chains
# (:meth:`Polytope.walk`), and one without an interior by BoTorch's hit-and-run sampler
POLYTOPE_DRAWS = 1 << 16
POLYTOPE_CHUNK = 1 << 21
# Polytope.walk: steps in random directions, then sweeps with directions between other chains.
# On thin polytopes (a band |sum x| <= 0.01 of [-5, 5]^5 or ^10, a thin wedge, a diagonal sliver
# of the unit square) 512 chains were as close to uniform after 10 + 60 as 512 points drawn
# uniformly (mean per-parameter Wasserstein distance to 20,000 uniform points, and the mean
# distance of those to the nearest sample), in 0.04 s; BoTorch's chain (10,000 burn-in steps,
# every 32nd kept) took 3.5 s for 512 and stood 5-20x further from uniform.
WALK_ISOTROPIC, WALK_SWEEPS = 10, 60
WALK_MIN_RADIUS = 1e-9  # an inscribed ball below this (share of the box): no interior to walk in
# what a study's polytope costs to learn, kept across its asks (Polytope.of builds it anew each
# time): the bounding box (2 d linear programs), the inscribed ball (one), and the share of Sobol
# points over the box that landed inside where too few did; the last POLYTOPE_MEMO polytopes
POLYTOPE_MEMO = 64
_polytope_memo: OrderedDict[bytes, dict] = OrderedDict()
_polytope_memo_lock = threading.Lock()
INIT_BATCH_LIMIT = 128  # candidates per no-grad acquisition evaluation when picking optimizer starts: bounds transient memory (1024 held ~140 MB at n = 80)


@dataclass(frozen=True)
class Layout:
    """Which model outputs are objectives (with their sign) and which are constrained."""

    obj_idx: tuple[int, ...]
    signs: tuple[float, ...]
    constraints: tuple[tuple[int, str, float], ...]  # (output, op, bound)
    m: int
    # per objective, ``algorithm.reference_point`` in the objective's (unsigned) units, or None
    reference: tuple[float | None, ...] = ()

    def __post_init__(self):
        if len(self.reference) != len(self.obj_idx):
            object.__setattr__(self, "reference", (None,) * len(self.obj_idx))

    @classmethod
    def of(cls, spec: StudySpec) -> Layout:
        names = spec.modeled_metrics
        col = {n: i for i, n in enumerate(names)}
        given = spec.algorithm.reference_point or {}
        return cls(
            obj_idx=tuple(col[o.name] for o in spec.objectives),
            signs=tuple(o.sign for o in spec.objectives),
            constraints=tuple(
                (col[c.metric], c.op, float(c.bound)) for c in spec.outcome_constraints
            ),
            m=len(names),
            reference=tuple(
                float(given[o.name]) if o.name in given else None for o in spec.objectives
            ),
        )

    @property
    def multi(self) -> bool:
        return len(self.obj_idx) > 1

    def slack(self, Y: np.ndarray) -> np.ndarray:
        """n x c constraint values in the ``<= 0 is feasible`` convention."""
        cols = [(Y[:, j] - b) if op == "<=" else (b - Y[:, j]) for j, op, b in self.constraints]
        return np.stack(cols, axis=1) if cols else np.zeros((len(Y), 0))

    def feasible(self, Y: np.ndarray) -> np.ndarray:
        return np.all(self.slack(Y) <= 0, axis=1)

    def signed_objectives(self, Y: np.ndarray) -> np.ndarray:
        return Y[:, list(self.obj_idx)] * np.asarray(self.signs)

    def objective_weights(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Weights over the model outputs that pick the (first) objective, signed for maximization."""
        w = torch.zeros(self.m, dtype=dtype, device=device)
        w[self.obj_idx[0]] = self.signs[0]
        return w

    def signed_objective(self, dtype: torch.dtype, device: torch.device):
        """The MC objective of hypervolume acquisitions: every objective's output, signed for
        maximization."""
        return WeightedMCMultiOutputObjective(
            weights=torch.tensor(self.signs, dtype=dtype, device=device),
            outcomes=list(self.obj_idx),
            num_outcomes=self.m,
        )

    def linear_constraints(self) -> list[LinearConstraint]:
        """Each outcome constraint as ``(output j, a, c)``: ``a * Z_j + c <= 0`` is feasible."""
        return [(j, 1.0, -b) if op == "<=" else (j, -1.0, b) for j, op, b in self.constraints]

    def constraint_callables(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """:meth:`linear_constraints` as BoTorch constraint callables."""
        out: list[Callable[..., torch.Tensor]] = []  # mypy types a lambda's defaults as arguments
        for j, a, c in self.linear_constraints():
            out.append(lambda Z, j=j, a=a, c=c: a * Z[..., j] + c)
        return out


# restarts and raw samples at most for the Monte Carlo acquisitions a study needs throughout:
# qLogNEHVI (several objectives) and qLogNEI under reported standard errors, each of whose
# evaluations costs 30-50 ms. Against 10 x 512: on BraninCurrin, DTLZ2 and ZDT1 (6-D; 5 seeds x
# 30, bench_multiobjective.py) the missing hypervolume at 30 (median log10) moved -1.12 / -0.36 /
# -1.78 -> -1.07 / -0.36 / -1.77 and an ask took 0.49 / 0.83 / 0.63 -> 0.33 / 0.52 / 0.41 s; on
# Hartmann6 with noise of sd 0.2 reported as the standard error (6 seeds x 30) the true value of
# the reported point moved from a median of -2.73 to -2.92 (better on 3 seeds, worse on 1) and an
# ask took 0.29 -> 0.18 s
LEAN_BUDGET = (4, 256)


def budget(
    n_model: int, dim: int, marginal: bool = False, lean: bool = False
) -> tuple[int, int, int]:
    """(num_restarts, raw_samples, L-BFGS maxiter) for one q=1 optimization. Monte Carlo
    acquisitions: generous while the GP is small and fitting cheap, leaner as every evaluation gets
    dearer (each costs a few tens of ms of framework overhead regardless of n). Ones on the
    cached marginals cost a few ms an evaluation: 512 raw samples (one batch) pick the starts,
    and 3 to 6 restarts found the same maximum as 10 to 20 on every surface tried; the slowest
    restart, alone for its last 15 of ~45 iterations, is stopped at 40. ``lean``: a study whose
    every ask needs a Monte Carlo acquisition (:data:`LEAN_BUDGET`)."""
    if marginal:
        restarts, raw, maxiter = (5, 512, 40) if n_model <= 200 else (4, 512, 30)
    elif n_model <= 60:
        restarts, raw, maxiter = 10, 512, 100
    elif n_model <= 200:
        restarts, raw, maxiter = 3, 256, 30
    elif n_model <= 600:
        restarts, raw, maxiter = 3, 256, 30
    else:
        restarts, raw, maxiter = 2, 256, 25
    if lean:  # see LEAN_BUDGET
        restarts, raw = min(restarts, LEAN_BUDGET[0]), min(raw, LEAN_BUDGET[1])
    if dim > 10:
        raw = int(raw * 1.5)
    return restarts, raw, maxiter


def reference_point(layout: Layout, Y: np.ndarray) -> list[float]:
    """Reference point in maximization form (signed objectives): ``layout.reference`` where
    given (in ``Y``'s units: the model layout maps it as the data), else 10 % of the observed
    range past the worst observed feasible value, outliers aside (the Tukey fence), as Optuna's
    GPSampler puts it past the worst value. BoTorch's inference from the front alone (its nadir
    minus 10 % of its range) gives the front's ends no hypervolume to gain: on ZDT1 (6-D, 5 seeds
    x 30 evaluations) the search stalled with 9 % of the hypervolume (against the problem's
    reference point) missing, against 1.7 % this way; BraninCurrin 13 % -> 8 %, DTLZ2 42 % ->
    44 % (bench_multiobjective.py)."""
    obj = layout.signed_objectives(Y)
    feas = layout.feasible(Y)
    pool = obj[feas] if feas.any() else obj
    t = torch.as_tensor(pool, dtype=torch.float64)
    pareto = t[is_non_dominated(t)]
    ref = infer_reference_point(pareto, scale=0.1).tolist()
    if len(pool) >= 4:  # the observed worst, outliers aside: the front's whole extent counts
        q1, q3 = np.percentile(pool, [25, 75], axis=0)
        worst = np.maximum(pool.min(axis=0), q1 - 1.5 * (q3 - q1))
        span = pool.max(axis=0) - worst
        ref = np.minimum(ref, worst - 0.1 * span).tolist()
    for k, (sign, r) in enumerate(zip(layout.signs, layout.reference)):
        if r is not None:
            ref[k] = sign * r
    return ref


class AdditiveLogPrior(AcquisitionFunction):
    """``acqf(X) + exponent * sum_q log prior(x_q)`` for log-acquisitions that are not MC-sample
    reducing (qLogNEHVI). Pending points stay on the wrapped function."""

    def __init__(self, acq_function: AcquisitionFunction, prior: LogPrior, exponent: float):
        super().__init__(model=acq_function.model)
        self.acq_func = acq_function
        self.prior = prior
        self.exponent = exponent

    def set_X_pending(self, X_pending: torch.Tensor | None = None) -> None:
        self.acq_func.set_X_pending(X_pending)

    @property
    def X_pending(self):  # noqa: D401 - mirrors the wrapped function's pending points
        return getattr(self.acq_func, "X_pending", None)

    @X_pending.setter
    def X_pending(self, value):
        pass  # AcquisitionFunction.__init__ assigns None; pending points live on acq_func

    # botorch types the decorator's self as AcquisitionFunction itself, refusing subclasses
    @t_batch_mode_transform()  # type: ignore[arg-type]
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.acq_func(X) + self.exponent * self.prior(X).sum(-1)


def mc_samples(n_baseline: int) -> int:
    """Monte Carlo samples of a joint acquisition: :data:`MC_SAMPLES`, half above 60 baseline
    points (each sample's posterior then costs more)."""
    return MC_SAMPLES if n_baseline <= 60 else MC_SAMPLES // 2


def make_acquisition(
    model,
    layout: Layout,
    X_baseline: torch.Tensor,
    Y_baseline: np.ndarray,
    *,
    prior: LogPrior | None = None,
    prior_exponent: float = 0.0,
    seed: int = 0,
) -> AcquisitionFunction:
    """The Monte Carlo acquisition over the baseline points ``X_baseline`` (pending points are
    set on it with ``set_X_pending``): qLogNEI for one objective, qLogNEHVI for several (its
    reference point from ``Y_baseline``, :func:`reference_point`), with the outcome constraints'
    probability of feasibility and, where ``prior_exponent`` > 0, the piBO weighting."""
    n_mc = mc_samples(len(X_baseline))
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([n_mc]), seed=seed)
    constraints = layout.constraint_callables() or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acqf: AcquisitionFunction
        if not layout.multi:
            acqf = qLogNoisyExpectedImprovement(
                model,
                X_baseline,
                sampler=sampler,
                objective=LinearMCObjective(
                    layout.objective_weights(X_baseline.dtype, X_baseline.device)
                ),
                constraints=constraints,
                prune_baseline=True,
                cache_root=True,
            )
            if prior is not None and not prior.empty and prior_exponent > 0:
                return PriorGuidedAcquisitionFunction(
                    acqf, prior, log=True, prior_exponent=prior_exponent
                )
            return acqf
        ref = reference_point(layout, Y_baseline)
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model,
            ref_point=ref,
            X_baseline=X_baseline,
            sampler=sampler,
            objective=layout.signed_objective(X_baseline.dtype, X_baseline.device),
            constraints=constraints,
            prune_baseline=True,
            alpha=get_default_partitioning_alpha(len(layout.obj_idx)),
        )
        if prior is not None and not prior.empty and prior_exponent > 0:
            return AdditiveLogPrior(acqf, prior, prior_exponent)
        return acqf


class LogEHVI(AcquisitionFunction):
    """log expected hypervolume improvement of one point over a box decomposition of the region
    the front does not dominate, exact for independent Gaussian outputs (the analytic EHVI of Yang
    et al. 2019, as BoTorch's ``ExpectedHypervolumeImprovement``, in log space): a cell
    ``[l, u]`` gains ``prod_j E[(min(Y_j, u_j) - l_j)^+]``, each factor
    ``sd_j (h(z_l) - h(z_u))`` with ``h(z) = phi(z) + z Phi(z)`` (expected improvement's own), and
    a log-sum-exp over cells adds them. Times the probability that the outcome constraints hold
    (exact where they constrain metrics other than the objectives: those are independent of the
    improvement). Against qLogEHVI's Monte Carlo, one evaluation costs the cells times the
    objectives rather than that times 128 samples: at four objectives the cells run to the
    hundreds and an ask took 2-4 s."""

    def __init__(self, model, layout: Layout, partitioning):
        super().__init__(model)
        self.layout = layout
        # cells x objectives, signed to maximize; an upper bound may be infinite
        self.lo, self.hi = cast(
            tuple[torch.Tensor, torch.Tensor], partitioning.get_hypercell_bounds()
        )
        self.above = torch.isfinite(self.hi)
        # where there is no upper bound, a finite stand-in for the branch torch.where masks out:
        # its gradient still flows, and (mu - 1e300) / s overflowed to inf once the posterior
        # sd fell below about 1e-4, inf * 0 made NaN and every ask of a confident model fell back
        self.hi_finite = torch.where(self.above, self.hi, self.lo)
        self.signs = torch.as_tensor(layout.signs, dtype=self.lo.dtype, device=self.lo.device)

    @t_batch_mode_transform(expected_q=1)  # type: ignore[arg-type]
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        from botorch.acquisition.analytic import _log_ei_helper
        from botorch.utils.safe_math import log1mexp

        model: Any = self.model
        if hasattr(model, "marginals"):  # CachedPredictive: no posterior object
            mean, var = model.marginals(X)
        else:
            post = model.posterior(X)
            mean, var = post.mean, post.variance
        mean, sd = mean[..., 0, :], var[..., 0, :].clamp_min(1e-18).sqrt()  # b x m
        obj = list(self.layout.obj_idx)
        mu, s = (mean[:, obj] * self.signs).unsqueeze(-2), sd[:, obj].unsqueeze(-2)
        log_lo = _log_ei_helper((mu - self.lo) / s)  # b x cells x objectives
        above = self.above.expand_as(log_lo)
        z_hi = torch.where(above, (mu - self.hi_finite) / s, torch.zeros_like(log_lo))
        gap = torch.where(above, _log_ei_helper(z_hi) - log_lo, torch.full_like(log_lo, -math.inf))
        log_cell = (log_lo + log1mexp(gap.clamp_max(0.0)) + s.log()).sum(-1)
        return torch.logsumexp(log_cell, dim=-1) + _log_pf(self.layout, mean, sd)


def plugin_hypervolume(
    model,
    layout: Layout,
    X_baseline: torch.Tensor,
    Y_baseline: np.ndarray,
    X_pending: torch.Tensor | None = None,
    *,
    prior: LogPrior | None = None,
    prior_exponent: float = 0.0,
    seed: int = 0,
) -> AcquisitionFunction:
    """Several objectives: log expected hypervolume improvement (:class:`LogEHVI`, q = 1) over the
    Pareto front of the posterior means at the baseline (and pending) points that meet the outcome
    constraints (in mean): a plug-in front, as :func:`marginal_acquisition` takes a plug-in
    incumbent. ``model`` may be the GP's cached marginals
    (:class:`~bbo.predictive.CachedPredictive`) where no point is pending. With ``X_pending``, on
    the GP with them believed (:func:`believe`): the believed points sit on the front and their
    variance is gone, so a candidate at or beside one gains nothing; the box decomposition is
    one, of at most ``len(X_baseline) + len(X_pending)`` points, where qLogNEHVI recomputes one
    per Monte Carlo sample over the baseline and all pending points whenever a point is added
    (60 % of a 3-objective batch point's time, and growing with the front). ``Y_baseline``: the
    observed outcomes, for the reference point. ``seed`` is taken as the other acquisitions take
    it and not needed: nothing is sampled."""
    from botorch.utils.multi_objective.box_decompositions.non_dominated import (
        FastNondominatedPartitioning,
    )

    del seed
    at = X_baseline if X_pending is None else torch.cat([X_baseline, X_pending])
    with torch.no_grad():
        mean = model.posterior(at).mean
    Ym = to_numpy(mean)
    feas = layout.feasible(Ym)
    ref = torch.tensor(reference_point(layout, Y_baseline), dtype=mean.dtype, device=mean.device)
    obj = torch.as_tensor(layout.signed_objectives(Ym[feas]), dtype=mean.dtype, device=mean.device)
    front = obj[is_non_dominated(obj)] if len(obj) else obj.reshape(0, len(layout.obj_idx))
    partitioning = FastNondominatedPartitioning(ref_point=ref, Y=front)
    acqf: AcquisitionFunction = LogEHVI(
        model if X_pending is None else believe(model, X_pending), layout, partitioning
    )
    if prior is not None and not prior.empty and prior_exponent > 0:
        return AdditiveLogPrior(acqf, prior, prior_exponent)
    return acqf


def marginal_acquisition(
    predictive,
    layout: Layout,
    Y: np.ndarray,
    *,
    prior: LogPrior | None = None,
    prior_exponent: float = 0.0,
    seed: int = 0,
    augmented: bool = False,
    pending: np.ndarray | None = None,
) -> AcquisitionFunction | None:
    """q = 1 log expected improvement over a plug-in incumbent, the best posterior mean at the
    observed feasible points (observed outcomes ``Y``, model units, in the GP's training order)
    and at the ``pending`` points' believed outcomes (model units; a believer's bar),
    outcome constraints weighting it as in qLogNEI; on the GP's cached marginals
    (:class:`~bbo.predictive.CachedPredictive`: one point's outputs are independent normals, so
    their Monte Carlo is cheap). For one objective without reported noise this is what qLogNEI
    computes, without its joint sampling over the baseline; with fitted noise the posterior mean
    keeps a lucky observation from setting the bar (Picheny et al. 2013's plug-in EI). Monte Carlo
    with qLogNEI's smoothing rather than analytic LogEI: on Hartmann6 the analytic form left the
    final regret 10-100x higher (its exact, vanishing values near the incumbent stop refining).
    ``augmented`` (a noisy objective): times augmented EI's factor
    (:func:`bbo.closed_form.augmented_factor`) at the GP's inferred noise. None where no
    observed point is feasible yet (qLogNEI handles that)."""
    feas = layout.feasible(Y)
    j, sign = layout.obj_idx[0], layout.signs[0]
    if layout.multi or not feas.any():
        return None
    with torch.no_grad():
        mean = predictive.train_mean()[torch.as_tensor(feas), j]
    best_f = float((sign * mean).max())
    if pending is not None and layout.feasible(pending).any():
        best_f = max(best_f, float((sign * pending[layout.feasible(pending), j]).max()))
    w = layout.objective_weights(mean.dtype, mean.device)
    noise = predictive.noise_variance() if augmented else None
    if noise is not None and not float(noise[j]) > 0:  # no noise (or none finite): plain EI
        noise = None
    acqf = MarginalLogEI(
        predictive,
        best_f=best_f,
        sampler=SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed),
        objective=LinearMCObjective(w),
        constraints=layout.constraint_callables() or None,
        linear_constraints=layout.linear_constraints(),
        augmented=None if noise is None else (j, float(noise[j])),
    )
    if prior is not None and not prior.empty and prior_exponent > 0:
        return MarginalPriorGuided(acqf, prior, prior_exponent)
    return acqf


def believe(model, X_pending: torch.Tensor):
    """The GP conditioned on ``X_pending`` at its own posterior mean, hyperparameters kept: the
    Kriging believer (Ginsbourger et al. 2010). Its mean is the GP's; its variance shrinks at and
    around the pending points, so expected improvement on it (over a bar their believed values
    may raise) leaves them to the workers evaluating them. On bench_parallel's problems it did
    as well as qLogNEI's Monte Carlo over their outcomes, at a fraction of the ask's time."""
    with torch.no_grad():
        Y = model.posterior(X_pending).mean
    return model.condition_on_observations(X_pending, Y, **_believed_noise(model, Y))


def _believed_noise(model, Y: torch.Tensor) -> dict:
    """``noise=`` for a GP whose noise was reported (a fixed-noise likelihood, which takes no
    point without it): the mean reported noise of each output, as BoTorch's ``fantasize`` gives
    its fantasies. Without it every believer under reported noise failed, and the ask fell back
    to qLogNEHVI's Monte Carlo over every pending point (3 objectives, ask(10): 25 s)."""
    lik = getattr(model, "likelihood", None)
    if not isinstance(lik, FixedNoiseGaussianLikelihood):
        return {}
    noise = lik.noise  # (m x) n, in the outcome transform's units, as BoTorch expects it
    noise = noise.mean(-1) if model.num_outputs > 1 else noise.mean(-1, keepdim=True)
    return {"noise": noise.detach().expand_as(Y)}


# posterior variance (in the model's units: the z-scored outcome) below which a pending point,
# given the data and the other pending points kept, is known and left out of the believer
PENDING_KNOWN_VARIANCE = 1e-6


def informative_pending(model, X_pending: torch.Tensor) -> torch.Tensor:
    """Indices of the pending points the believer conditions on: greedy pivoted Cholesky of their
    joint posterior covariance (summed over outputs), which keeps the point the model knows
    least, then the least known given it, until every other one is known to
    :data:`PENDING_KNOWN_VARIANCE`: the believer's second try, where believing them all gave a
    GP its cached marginals cannot reproduce. A batch ask on a small space crowds its points
    where the model is sure (40 on one float beside a two-choice categorical): conditioning on
    them all was ill-conditioned, and each later point took Monte Carlo over every pending point,
    2-4 s apiece (ask(100): 287 s on a real server). Only a second try: near a noise-free
    optimum the variances that steer the next point are far below it, and a pending point there
    must still push the next one away."""
    m, p = model.num_outputs, len(X_pending)
    with torch.no_grad():
        dist = model.posterior(X_pending).distribution
        S = dist.covariance_matrix
    if m > 1:  # each output's p x p block, summed (a multitask normal: interleaved or not)
        if getattr(dist, "_interleaved", True):
            S = S.reshape(p, m, p, m).diagonal(dim1=1, dim2=3).sum(-1)
        else:
            S = S.reshape(m, p, m, p).diagonal(dim1=0, dim2=2).sum(-1)
    residual = S.diagonal().clone()
    L = S.new_zeros(p, 0)
    keep: list[int] = []
    while len(keep) < p:
        i = int(torch.argmax(residual))
        if not float(residual[i]) > PENDING_KNOWN_VARIANCE * m:
            break
        col = (S[:, i] - L @ L[i]) / residual[i].sqrt()
        L = torch.cat([L, col[:, None]], dim=1)
        residual = residual - col.square()
        residual[i] = -float("inf")
        keep.append(i)
    return torch.tensor(sorted(keep), dtype=torch.long, device=X_pending.device)


def constraint_tensors(cons: list, placement: Placement) -> list | None:
    """Encoded linear constraints ``(indices, coefficients, rhs)`` as BoTorch takes them, each
    divided by its largest coefficient; None for none. A row is in the parameters' units times
    their ranges (memory in bytes: ~1e10), and SLSQP stopped on such rows ("Positive directional
    derivative for linesearch", "Singular matrix E") on 2-5 of 20 asks, then fell back."""
    out = []
    for idx, coef, rhs in cons:
        norm = max((abs(float(a)) for a in coef), default=0.0) or 1.0
        out.append(
            (
                torch.tensor(idx, dtype=torch.long, device=placement.device),
                placement.tensor([float(a) / norm for a in coef]),
                float(rhs) / norm,
            )
        )
    return out or None


def inequality_tensors(space: SearchSpace, placement: Placement) -> list | None:
    """The space's constraints for BoTorch's discrete and mixed optimizers, each bound loosened by
    half the slack :meth:`SearchSpace.is_feasible` allows: BoTorch checks them exactly, so a grid
    point on a constraint with decimal coefficients (0.25 gpus + 0.1 workers <= 2) failed by
    rounding, and most BO steps there fell back (or the optimum was never a candidate)."""
    cons = space.inequality_constraints()
    return constraint_tensors(
        [(idx, coef, rhs - s / 2) for (idx, coef, rhs), s in zip(cons, space.slack)], placement
    )


@dataclass(frozen=True)
class Polytope:
    """The encoded box cut by a space's linear parameter constraints, in BoTorch's form
    (``(indices, coefficients, rhs)``: ``sum >= rhs``); a pair of opposite inequalities, or one
    the box leaves no room to be strict, is kept as the equality it is
    (:func:`bbo.space.split_equalities`), which SLSQP meets exactly."""

    bounds: torch.Tensor  # 2 x d
    ineq: list | None  # BoTorch's tensors, on the placement's device
    eq: list | None
    dense_ineq: tuple[np.ndarray, np.ndarray]  # the same as A @ x >= b (sampling, bounding box)
    dense_eq: tuple[np.ndarray, np.ndarray]  # A @ x = b

    @classmethod
    def of(cls, space: SearchSpace, placement: Placement) -> Polytope | None:
        """None for a space without linear constraints (a box)."""
        cons = space.inequality_constraints()
        if not cons:
            return None
        ineq, eq = split_equalities(cons, space.bounds())
        return cls(
            placement.tensor(space.bounds()),
            constraint_tensors(ineq, placement),
            constraint_tensors(eq, placement),
            dense_constraints(ineq, space.dim),
            dense_constraints(eq, space.dim),
        )

    def sobol(self, n: int, seed: int | None) -> torch.Tensor | None:
        """``n`` points (n x d, on the CPU) of a scrambled Sobol sequence that meet the
        inequalities, each first projected onto the equalities' plane where there are any: uniform
        on the polytope (near-uniform on a plane's slice), in one vectorized pass. Drawn over the
        box, and where fewer than ``n`` of :data:`POLYTOPE_DRAWS` land inside, once more over the
        polytope's own bounding box (a sliver along an axis, e.g. a budget far below the ranges);
        None where that too finds too few. ``seed`` None: one from torch's generator (a seeded ask
        stays reproducible)."""
        if seed is None:
            seed = int(torch.randint(2**31 - 1, (1,)))
        lo, hi = self.bounds[0].cpu(), self.bounds[1].cpu()
        memo = self._memo()
        X = None
        rate = memo.get("box_rate")  # where an earlier ask's pass over the box fell short
        if rate is None or rate * POLYTOPE_DRAWS >= n / 2:
            X = self._rejection(n, seed, lo, hi, memo)
        if X is None and (box := self.bounding_box()) is not None:
            if bool(((box[1] - box[0]) < 0.5 * (hi - lo)).any()):
                X = self._rejection(n, seed, *box)
        return X

    def _memo(self) -> dict:
        """What earlier asks learned about this polytope (:data:`POLYTOPE_MEMO`)."""
        key = b"".join(
            np.ascontiguousarray(a, dtype=np.float64).tobytes() + bytes(str(np.shape(a)), "ascii")
            for a in (self.bounds.cpu().numpy(), *self.dense_ineq, *self.dense_eq)
        )
        with _polytope_memo_lock:
            memo = _polytope_memo.setdefault(key, {})
            _polytope_memo.move_to_end(key)
            while len(_polytope_memo) > POLYTOPE_MEMO:
                _polytope_memo.popitem(last=False)
        return memo

    def _rejection(
        self, n: int, seed: int, lo: torch.Tensor, hi: torch.Tensor, memo: dict | None = None
    ) -> torch.Tensor | None:
        """Sobol points over ``lo .. hi`` (inside the bounds) that land in the polytope; where
        too few do, the share that did goes to ``memo`` (``box_rate``)."""
        from torch.quasirandom import SobolEngine

        d = lo.numel()
        G, g = (torch.from_numpy(a).to(lo.dtype) for a in self.dense_ineq)
        project = None
        if self.eq:
            A, b = (torch.from_numpy(a).to(lo.dtype) for a in self.dense_eq)
            pinv = torch.linalg.pinv(A)  # least-norm move onto A x = b

            def project(X):
                return X - (X @ A.T - b) @ pinv.T

        low, high = self.bounds[0].cpu(), self.bounds[1].cpu()
        engine = SobolEngine(d, scramble=True, seed=seed)
        kept: list[torch.Tensor] = []
        most = max(1, POLYTOPE_CHUNK // d)
        found, drawn, chunk = 0, 0, max(1024, 4 * n)
        while found < n and drawn < POLYTOPE_DRAWS:
            m = min(chunk, most, POLYTOPE_DRAWS - drawn)
            X = lo + (hi - lo) * engine.draw(m, dtype=lo.dtype)
            if project is not None:
                X = project(X)
            inside = ((X >= low) & (X <= high)).all(-1) & (X @ G.T >= g).all(-1)
            kept.append(X[inside])
            found += int(inside.sum())
            drawn += m
            chunk *= 4
        if found < n and memo is not None:
            memo["box_rate"] = found / drawn
        return torch.cat(kept)[:n] if found >= n else None

    def walk(self, n: int, seed: int | None) -> torch.Tensor | None:
        """``n`` points (n x d, on the CPU) near-uniform on the polytope, for one where Sobol
        points seldom land (a thin band or wedge across the box): ``n`` hit-and-run chains run
        side by side from the centre of its largest inscribed ball, first in random directions
        (:data:`WALK_ISOTROPIC` steps), then in directions between two chains of the other half
        (:data:`WALK_SWEEPS` sweeps; the differential-evolution move, which keeps each half's
        stationary law uniform and follows the polytope's own shape, where random directions
        cross a thin polytope in short chords). Each step is one vectorized pass over all
        chains. Within the equalities' plane where there are any. None where the polytope has
        no interior (:data:`WALK_MIN_RADIUS`) or the program fails."""
        from scipy.optimize import linprog

        if seed is None:
            seed = int(torch.randint(2**31 - 1, (1,)))
        lo, hi = (t.cpu().double().numpy() for t in self.bounds)
        d = lo.size
        (G, g), (E, e) = self.dense_ineq, self.dense_eq
        A = np.vstack([-G, np.eye(d), -np.eye(d)])  # A x <= b
        b = np.concatenate([-g, hi, -lo])
        N = None  # the equalities' null space: directions that stay on their plane
        if len(E):
            _, sv, vt = np.linalg.svd(E)
            rank = int((sv > 1e-12 * max(1.0, sv.max())).sum())
            N = vt[rank:].T
            if N.shape[1] == 0:
                return None
        memo = self._memo()
        if "centre" not in memo:
            norms = np.linalg.norm(A if N is None else A @ N @ N.T, axis=1)
            res = linprog(  # the largest ball inside (within the plane): centre x, radius r
                np.r_[np.zeros(d), -1.0],
                A_ub=np.c_[A, norms],
                b_ub=b,
                A_eq=np.c_[E, np.zeros(len(E))] if len(E) else None,
                b_eq=e if len(E) else None,
                bounds=[(None, None)] * d + [(0, None)],
                method="highs",
            )
            ok = res.status == 0 and res.x[-1] > WALK_MIN_RADIUS * float(np.max(hi - lo))
            memo["centre"] = res.x[:d].copy() if ok else None
        if memo["centre"] is None:
            return None
        rng = np.random.default_rng(seed)
        X = np.repeat(memo["centre"][None], n, axis=0)

        def step(X: np.ndarray, R: np.ndarray) -> np.ndarray:
            """One hit-and-run step of each row of X along the matching row of R (on the
            equalities' plane: a direction between two chains there is only to rounding)."""
            if N is not None:
                R = R @ N @ N.T
            AR = R @ A.T
            slack = np.maximum(b - X @ A.T, 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                W = slack / AR
            up = np.where(AR > 0, W, np.inf).min(axis=1)
            down = np.where(AR < 0, W, -np.inf).max(axis=1)
            ok = np.isfinite(up) & np.isfinite(down)  # a zero direction stays put
            up, down = np.where(ok, up, 0.0), np.where(ok, down, 0.0)
            return X + (down + (up - down) * rng.random(len(X)))[:, None] * R

        for _ in range(WALK_ISOTROPIC):
            X = step(X, rng.standard_normal((n, d)))
        if n >= 4:
            halves = (slice(0, n // 2), slice(n // 2, n))
            for _ in range(WALK_SWEEPS):
                for mine, other in (halves, halves[::-1]):
                    Y = X[other]
                    j = rng.integers(len(Y), size=(len(X[mine]), 2))
                    X[mine] = step(X[mine], Y[j[:, 0]] - Y[j[:, 1]])
        X = np.clip(X, lo, hi)
        return torch.from_numpy(X).to(self.bounds.dtype)

    def bounding_box(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The smallest box around the polytope (two linear programs per parameter, HiGHS), on
        the CPU; None where a program fails. Solved once per polytope (:meth:`_memo`)."""
        memo = self._memo()
        if "box" not in memo:
            memo["box"] = self._bounding_box()
        return memo["box"]

    def _bounding_box(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        from scipy.optimize import linprog

        lo, hi = (t.cpu().double().numpy() for t in self.bounds)
        d = lo.size
        # rows scaled to a largest coefficient of 1: HiGHS refuses entries of 1e15 or more
        (A_ge, b_ge), (A_eq, b_eq) = (
            scaled_rows(*rows) for rows in (self.dense_ineq, self.dense_eq)
        )
        box = np.stack([lo, hi])
        for i in range(d):
            for k, sign in enumerate((1.0, -1.0)):  # min x_i, then max x_i
                c = np.zeros(d)
                c[i] = sign
                res = linprog(
                    c,
                    A_ub=-A_ge if len(A_ge) else None,
                    b_ub=-b_ge if len(b_ge) else None,
                    A_eq=A_eq if len(A_eq) else None,
                    b_eq=b_eq if len(b_eq) else None,
                    bounds=list(zip(lo, hi)),
                    method="highs",
                )
                if res.status != 0:
                    return None
                box[k, i] = res.x[i]
        pad = 1e-9 * (hi - lo)  # the programs' tolerance: never cut the polytope
        box = np.stack([np.maximum(lo, box[0] - pad), np.minimum(hi, box[1] + pad)])
        return torch.from_numpy(box[0]).to(self.bounds.dtype), torch.from_numpy(box[1]).to(
            self.bounds.dtype
        )

    def generator(self) -> Callable:
        """Raw samples for BoTorch's ``gen_batch_initial_conditions`` (its ``generator``):
        :meth:`sobol` where it finds enough, else :meth:`walk`, instead of the hit-and-run chain
        BoTorch runs step by step in Python (10,000 burn-in steps and 32 per sample: 1.5 s of a
        1.55 s ask on a 3-D box with one constraint, 3.5 s on a thin band), which stays the
        fallback for a polytope without an interior."""
        from botorch.optim.initializers import sample_q_batches_from_polytope

        def generate(n: int, q: int, seed: int | None) -> torch.Tensor:
            X = self.sobol(n * q, seed)
            if X is None:
                X = self.walk(n * q, seed)
            if X is not None:
                return X.reshape(n, q, -1)
            return sample_q_batches_from_polytope(
                n=n,
                q=q,
                bounds=self.bounds,
                n_burnin=10000,
                n_thinning=32,
                seed=seed,
                inequality_constraints=self.ineq,
                equality_constraints=self.eq,
            )

        return generate


def optimize(
    acqf: AcquisitionFunction,
    space: SearchSpace,
    placement: Placement,
    *,
    num_restarts: int,
    raw_samples: int,
    maxiter: int = 100,
    initial_conditions: torch.Tensor | None = None,
    avoid: np.ndarray | None = None,
    seed: int = 0,
    tolerances: dict | None = None,
) -> tuple[torch.Tensor, float]:
    """The best point found (1 x d) and its acquisition value. ``initial_conditions``
    (k x 1 x d; continuous spaces only) are k of the restarts' starting points, BoTorch's
    raw-sample initialization picks the others; ``tolerances``: L-BFGS-B's ``pgtol`` / ``factr``.
    On fully discrete spaces the search is on the grid where :func:`discrete_search.on_grid`
    says so, and leaves out the ``avoid`` points (encoded, n x d)."""
    discrete = space.discrete_values()
    if discrete_search.on_grid(space):
        ineq = inequality_tensors(space, placement)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return discrete_search.maximize(acqf, space, placement, ineq, avoid, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not discrete:
            return _continuous(
                acqf,
                space,
                placement,
                num_restarts,
                raw_samples,
                maxiter,
                initial_conditions,
                tolerances,
            )
        return _mixed(acqf, space, placement, discrete, num_restarts, raw_samples, tolerances, seed)


def _continuous(
    acqf: AcquisitionFunction,
    space: SearchSpace,
    placement: Placement,
    num_restarts: int,
    raw_samples: int,
    maxiter: int,
    initial_conditions: torch.Tensor | None,
    tolerances: dict | None,
) -> tuple[torch.Tensor, float]:
    """:func:`optimize` on a space without discrete columns: BoTorch's ``optimize_acqf`` inside
    the linear parameter constraints, its raw samples from :meth:`Polytope.generator`."""
    polytope = Polytope.of(space, placement)
    x, v = optimize_acqf(
        acqf,
        bounds=placement.tensor(space.bounds()),
        q=1,
        num_restarts=num_restarts,
        raw_samples=raw_samples,
        inequality_constraints=polytope.ineq if polytope else None,
        equality_constraints=polytope.eq if polytope else None,
        options={
            "batch_limit": 64,
            "init_batch_limit": raw_samples if tolerances else INIT_BATCH_LIMIT,
            "maxiter": maxiter,
            **(tolerances or {}),
        },
        retry_on_optimization_warning=False,
        batch_initial_conditions=initial_conditions,
        gen_candidates=gen_candidates,
        generator=polytope.generator() if polytope else None,
    )
    return _best(x, v)


def _mixed(
    acqf: AcquisitionFunction,
    space: SearchSpace,
    placement: Placement,
    discrete: dict,
    num_restarts: int,
    raw_samples: int,
    tolerances: dict | None,
    seed: int,
) -> tuple[torch.Tensor, float]:
    """:func:`optimize` on a space with float and discrete columns: BoTorch's alternating
    optimizer, or :func:`completed_search` where rounding its samples breaks the constraints."""
    # each alternating step costs several continuous solves: fewer, better-chosen starts; an
    # acquisition on marginals (``tolerances``) scores its raw samples in one batch, and 3
    # restarts of 3 alternations (tolerance 1e-6) found the maximum 5 x 6 (1e-8) found on the
    # mixed benchmark's surfaces at n = 20 to 100, in 60 to 90 % of the time
    lean = tolerances is not None
    num_restarts = min(num_restarts, 3 if lean else 5)
    raw_samples = min(raw_samples, 512 if lean else 256)
    polytope = Polytope.of(space, placement)
    memo = polytope._memo() if polytope is not None else {}
    if memo.get("rounding_breaks"):
        return completed_search(acqf, space, placement, num_restarts, seed)
    try:
        x, v = _mixed_alternating(acqf, space, placement, discrete, num_restarts, raw_samples, lean)
    except CandidateGenerationError:
        if polytope is None or not space.floats_constrained:
            raise
        # rounding its samples' ints broke the constraints every time: so it will on this
        # polytope's every ask (a property of the space, not of the data)
        memo["rounding_breaks"] = True
        return completed_search(acqf, space, placement, num_restarts, seed)
    return _best(x, v)


def _best(x: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """A BoTorch optimizer's point as 1 x d and its value as a float (NaN where it gave none)."""
    return x.reshape(1, -1), float(v.reshape(-1)[0]) if v is not None else float("nan")


def _mixed_alternating(
    acqf,
    space: SearchSpace,
    placement: Placement,
    discrete: dict,
    num_restarts: int,
    raw_samples: int,
    lean: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BoTorch's alternating optimizer over a space with a float and a discrete column."""
    cat = set(space.cat_dims)
    x, v = optimize_acqf_mixed_alternating(
        acqf,
        bounds=placement.tensor(space.bounds()),
        discrete_dims={i: g.tolist() for i, g in discrete.items() if i not in cat} or None,
        cat_dims={i: g.tolist() for i, g in discrete.items() if i in cat} or None,
        q=1,
        num_restarts=num_restarts,
        raw_samples=raw_samples,
        inequality_constraints=inequality_tensors(space, placement),
        options={
            "initialization_strategy": "random",
            "num_spray_points": 20,
            "maxiter_alternating": 3 if lean else 6,
            "batch_limit": 64,
            "init_batch_limit": raw_samples if lean else INIT_BATCH_LIMIT,
            **({"tol": 1e-6} if lean else {}),
        },
    )
    return x, cast(torch.Tensor, v)


# completed_search: feasible starting points it scores, and how many of the best it polishes
COMPLETED_SAMPLES, COMPLETED_RESTARTS = 64, 5


def completed_search(
    acqf, space: SearchSpace, placement: Placement, num_restarts: int, seed: int
) -> tuple[torch.Tensor, float]:
    """The acquisition's maximum where constraints tie a float to an int or ordinal so tightly
    that rounding a sampled point almost never meets them (``a + x == 2.5``), and BoTorch's mixed
    optimizer finds no feasible start: the best of feasible points with their floats completed
    (:func:`bbo.design.polytope_samples`), each of the best few then polished over its floats
    with its ints and ordinals held (SLSQP under the constraints)."""
    from bbo.design import polytope_samples

    starts = polytope_samples(space, COMPLETED_SAMPLES, seed)
    X = placement.tensor(np.vstack([space.encode(p) for p in starts]))
    vals = torch.nan_to_num(evaluate(acqf, X), nan=-float("inf"))
    order = torch.argsort(vals, descending=True)[: min(num_restarts, COMPLETED_RESTARTS)]
    best, best_v = X[order[0]], float(vals[order[0]])
    disc = list(space.discrete_values())
    bounds = placement.tensor(space.bounds())
    ineq = inequality_tensors(space, placement)
    for i in order.tolist():
        try:
            x, v = optimize_acqf(
                acqf,
                bounds=bounds,
                q=1,
                num_restarts=1,
                batch_initial_conditions=X[i].reshape(1, 1, -1),
                fixed_features={j: float(X[i, j]) for j in disc},
                inequality_constraints=ineq,
                options={"maxiter": 100, "batch_limit": 1},
                retry_on_optimization_warning=False,
            )
        except Exception:  # noqa: BLE001 - the start itself stands
            continue
        if v is None:
            continue
        if float(v) > best_v and space.is_feasible(space.decode(to_numpy(x.reshape(-1)))):
            best, best_v = x.reshape(-1), float(v)
    return best.reshape(1, -1), best_v


BASELINE_MAX = (
    32  # single objective: X_baseline is the best this many points when the model is larger
)
BASELINE_MAX_MO = 100


def baseline_rows(score: np.ndarray, multi: bool) -> np.ndarray:
    """Indices of the points the noisy acquisition treats as incumbent candidates. qLogNEI samples
    the joint posterior of the baseline with every candidate (cost ~ n_model^2 per baseline point),
    so on large models only the best points by observed score (feasible first) are kept; pruning
    then removes the ones with no chance of being the best."""
    k = BASELINE_MAX_MO if multi else BASELINE_MAX
    if len(score) <= 2 * k:
        return np.arange(len(score))
    return np.sort(np.argsort(-score, kind="stable")[:k])


def cheap_initial_conditions(
    model,
    layout: Layout,
    space: SearchSpace,
    placement: Placement,
    Y: np.ndarray,
    n_raw: int,
    k: int,
    seed: int,
) -> torch.Tensor:
    """``k`` starting points for the optimizer (k x 1 x d) chosen from ``n_raw`` Sobol points by
    analytic log-EI of the objective plus log probability of feasibility, from marginal posteriors.
    Costs a fraction of scoring raw samples with the MC acquisition jointly with the baseline (which
    dominates ask time on large models). Single objective, continuous spaces; inside the linear
    parameter constraints where the polytope is wide enough to sample by rejection."""
    from botorch.acquisition.analytic import _log_ei_helper
    from torch.quasirandom import SobolEngine

    polytope = Polytope.of(space, placement)
    X = polytope.sobol(n_raw, seed) if polytope else None
    if X is None:  # no constraints, or a polytope too thin to hit: the box's points
        X = SobolEngine(space.dim, scramble=True, seed=seed).draw(n_raw)
    X = X.to(**placement.tkwargs)
    feas = layout.feasible(Y)
    obj = layout.signed_objectives(Y)[:, 0]
    best = float(obj[feas].max()) if feas.any() else float(np.median(obj))
    mu, sd = marginals(model, X)
    j, sign = layout.obj_idx[0], layout.signs[0]
    u = (sign * mu[:, j] - best) / sd[:, j]
    val = _log_ei_helper(u) + sd[:, j].log() + _log_pf(layout, mu, sd)
    top = torch.argsort(torch.nan_to_num(val, nan=-float("inf")), descending=True)[:k]
    return X[top].unsqueeze(-2)


def evaluate(acqf: AcquisitionFunction, X: torch.Tensor) -> torch.Tensor:
    """Acquisition values of each row of X (n x d), one q=1 batch per row."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acqf(X.unsqueeze(-2)).reshape(-1)


def marginals(model, X: torch.Tensor, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation (n x m) at each row of X, in chunks: a joint posterior
    over all rows would build an n x n covariance, a batched one copies the GP's caches per row."""
    from gpytorch.utils.warnings import NumericalWarning

    mus, sds = [], []
    with torch.no_grad(), warnings.catch_warnings():
        # a variance rounding below zero (a noise-free fit at its data) is clamped here anyway
        warnings.simplefilter("ignore", NumericalWarning)
        for Xc in X.split(chunk):
            post = model.posterior(Xc)
            mus.append(post.mean)
            sds.append(post.variance.clamp_min(1e-12).sqrt())
    return torch.cat(mus), torch.cat(sds)


def _log_pf(layout: Layout, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(mu.shape[0], dtype=mu.dtype, device=mu.device)
    for j, op, b in layout.constraints:
        z = (b - mu[:, j]) / sd[:, j] if op == "<=" else (mu[:, j] - b) / sd[:, j]
        out = out + torch.special.log_ndtr(z)
    return out


def log_prob_feasible(model, layout: Layout, X: torch.Tensor) -> torch.Tensor:
    """log P(all outcome constraints hold) at each row of X (marginals, independent outputs)."""
    if not layout.constraints:
        return torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    return _log_pf(layout, *marginals(model, X))


def model_score(model, layout: Layout, X: torch.Tensor) -> torch.Tensor:
    """A cheap stand-in for the acquisition (used by fallbacks): optimistic standardized objective
    (UCB, beta = 1; averaged over objectives) plus log probability of feasibility."""
    mu, sd = marginals(model, X)
    s = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    for k, sign in zip(layout.obj_idx, layout.signs):
        u = sign * mu[:, k] + sd[:, k]
        s = s + (u - u.mean()) / u.std().clamp_min(1e-12)
    return s / len(layout.obj_idx) + _log_pf(layout, mu, sd)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()
