"""The transfer model: the target study's GP stacked on its sources' GPs (Vizier's residual
stacking), each source weighted by how well it ranks the target's own observations (RGPE's
ranking-loss weights, Feurer, Letham & Bakshy 2018).

Per ask, for each modeled metric j (objectives and constraint metrics alike):

1. every source s has a GP fit once on its own trials mapped into the target's encoding
   (:func:`bbo.transfer.encode_source_trials`; outcomes warped as the target's, :mod:`bbo.warping`),
   cached while its trials do not change; ``nu_s(x)`` is its posterior mean in the source's own
   z-units;
2. weights: 256 joint posterior samples of each source at the target's points, and leave-one-out
   samples of a GP on the target's points alone (hyperparameters fit on them, not the stacked
   model's), each scored by its number of mis-ordered pairs of target observations; a model's
   weight is the share of samples in which it has the lowest loss (ties split at random). A source
   whose median loss is above the 95th percentile of the target model's gets none (RGPE's guard
   against weight dilution). A source whose data disagree with the target's first observations
   loses weight this way as they arrive: a wrong source costs little;
3. calibration: ``beta_s`` maps the source's z-units onto the target's (least squares of the
   target's values on ``nu_s`` at its points, regularized towards one target standard deviation
   per source z-unit, never negative);
4. the prior mean ``m_j(x) = sum_s w_s beta_s (nu_s(x) - mean nu_s)``, and the target GP (bbo's
   usual surrogate, kernel and hyperparameter cache) is fit to the residuals ``y - m_j(x)``
   (:class:`PriorMeanStandardize`, an outcome transform, so the model stays a plain BoTorch GP
   whose posterior mean adds ``m_j(x)`` back for the acquisition function, exploitation steps and
   the feasibility check). With every source weight at 0 it is exactly the plain GP;
5. on a quantized objective, the best point of the source that outweighs the target's own model
   is also a decaying piBO prior for the acquisition (:meth:`Transfer.location_prior`).

Why stacking with RGPE weights and not a multi-task GP over (x, task) or RGPE's ensemble: a
multi-task GP learns the task correlation by marginal likelihood, which with a handful of target
points can trust a misleading source too much, and RGPE's weighted sum of GPs needs its own
posterior class where stacking keeps bbo's GP, warping and acquisition code unchanged. Against
Ax's multi-task GP on the same sources (``bench/bench_transfer.py``, variant ``ax``, 3 seeds):
stacking reaches no transfer's 30-evaluation result at evaluation 1 on shifted Hartmann6 (Ax 9),
on the HPO kit Ax at 13 (3 seeds), stacking at 14 (10); a BoTorch MultiTaskGP in bbo's loop, opened by
the sources' best points, reached it on 2 of 10 HPO seeds. See ``docs/transfer.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import cast

import gpytorch
import numpy as np
import torch
from botorch.models.model import Model
from botorch.models.transforms import Standardize
from botorch.posteriors.gpytorch import GPyTorchPosterior

from bbo.acquisition import marginals
from bbo.design import Region
from bbo.predictive import CachedPredictive
from bbo.predictive_grad import MarginalGradients, marginal_gradients
from bbo.priors import prior_in_units
from bbo.space import CategoricalParam, SearchSpace
from bbo.spec import AlgorithmOptions, ParameterPrior
from bbo.strategy.base import Suggestion
from bbo.strategy.context import Context
from bbo.strategy.model_data import TrainingData
from bbo.strategy.noise import same_point
from bbo.surrogate import Surrogate
from bbo.transfer import (
    MAX_SOURCE_TRIALS,
    SourceData,
    conditioning,
    encode_source_trials,
    map_point,
)
from bbo.trial import Metric, Origin, Trial, TrialState

log = logging.getLogger(__name__)

SAMPLES = 256  # posterior samples per model for the ranking losses
MAX_WEIGHT_ROWS = 100  # target points the weights are computed on (the best quarter, then random)
MIN_SOURCE_POINTS = 3  # mapped completed trials a source needs to get a GP
SOURCE_OPTIONS = AlgorithmOptions(max_fit_points=300, max_model_points=MAX_SOURCE_TRIALS)
CALIBRATION_PSEUDO = 3.0  # pseudo-observations pulling beta towards one target sd per z-unit
MIN_PRIOR_SD = 0.05  # a location prior's least spread, as a share of a parameter's range
MIN_WEIGHT = 0.01  # a source below this weight on every metric does not make a step "transfer"


TOP_SHARE = 0.2  # a source's good region: the box of its best fifth of trials (at least 3)
MIN_GAP = 0.1  # good regions this far apart (share of a range) and wider than either: disagree


@dataclasses.dataclass(frozen=True)
class DesignPlan:
    """A transfer study's initial design: its size and where its Sobol points go."""

    size: int
    region: Region | None  # where its Sobol points go; None: the whole space


def design_plan(ctx: Context, n_warm: int, regions: Sequence[Region]) -> DesignPlan:
    """The initial design of a study with usable sources (``n_warm`` of their best points map into
    its space; ``regions``: each modeled source's good region, :func:`good_region`).

    - Several sources whose good regions overlap agree on where the optimum is: the design is
      their best points (at least 2 points), and the stacked model climbs from there.
    - Sources whose good regions lie apart (:func:`regions_disagree`) leave the target's optimum
      anywhere between them: the design keeps its usual size, its Sobol points spread over the
      union of the regions (a learned search space, Perrone et al. 2019), the best points open
      and close it.
    - A lone source has no second opinion: ``ceil((d + 1) / 2)`` points (at least 2), its best
      point first, so that the RGPE weights judge it on the target's own points.

    An explicit n_initial wins."""
    if ctx.spec.algorithm.n_initial > 0:
        return DesignPlan(ctx.n_initial, None)
    if regions_disagree(ctx.spec.space, regions):
        box = ctx.spec.space.bounds()  # source points may lie a little outside the target's box
        lo = np.clip(np.min([r[0] for r in regions], axis=0), box[0], box[1])
        hi = np.clip(np.max([r[1] for r in regions], axis=0), box[0], box[1])
        return DesignPlan(ctx.n_initial, (lo, hi))
    if len(regions) > 1:
        return DesignPlan(min(ctx.n_initial, max(2, n_warm)), None)
    return DesignPlan(min(ctx.n_initial, max(2, math.ceil((ctx.spec.space.dim + 1) / 2))), None)


def good_region(X: np.ndarray, score: np.ndarray) -> Region:
    """The box (in the target's encoding) of a source's best :data:`TOP_SHARE` of mapped trials,
    at least :data:`MIN_SOURCE_POINTS` of them (``score``: higher is better)."""
    k = max(MIN_SOURCE_POINTS, math.ceil(TOP_SHARE * len(X)))
    top = X[np.argsort(-score, kind="stable")[:k]]
    return top.min(axis=0), top.max(axis=0)


def regions_disagree(space: SearchSpace, regions: Sequence[Region]) -> bool:
    """Whether two sources' good regions lie apart: in some non-categorical dimension the gap
    between them is over :data:`MIN_GAP` of the range and wider than either region."""
    num = np.setdiff1d(np.arange(space.dim), space.cat_dims)
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            gap = (np.maximum(a[0], b[0]) - np.minimum(a[1], b[1]))[num]
            width = np.maximum(a[1] - a[0], b[1] - b[0])[num]
            if np.any((gap > MIN_GAP) & (gap > width)):
                return True
    return False


class PriorMeanStandardize(Standardize):
    """Standardize the residuals ``Y - prior(X)``; posteriors get ``prior(X)`` added back.

    A per-input mean, as BoTorch's ``StratifiedStandardize`` has: ``prior`` maps inputs
    (``... x n x d``, the model's own encoding) to ``... x n x m`` and stays differentiable, so the
    acquisition optimizer sees its gradient."""

    def __init__(self, m: int, prior: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(m)
        self._prior = prior

    def prior_mean(self, X: torch.Tensor) -> torch.Tensor:
        """The prior mean at ``X`` (``... x n x d``, the model's encoding): ``... x n x m``, in
        outcome units (also what :class:`~bbo.predictive.CachedPredictive` adds to its
        marginals)."""
        if self._m > 1 and X.dim() >= 3:
            if X.shape[-3] == 1:
                X = X.squeeze(-3)  # the output dimension a batched multi-output model inserts
            elif X.shape[-3] == self._m and bool((X == X[..., :1, :, :]).all()):
                # the model's training inputs, one copy per output (BoTorch's load_state_dict
                # re-transforms the ``n x m`` targets with them): one copy
                X = X[..., 0, :, :]
        return self._prior(X)

    def forward(self, Y, Yvar=None, X=None):
        if X is None:
            raise RuntimeError("PriorMeanStandardize needs the inputs X")
        p = self.prior_mean(X).detach()  # training targets: constants for the hyperparameter fit
        if self.training:
            super().forward(Y - p, Yvar)  # the statistics of the residuals
        Y_tf = (Y - p - self.means) / self.stdvs
        return Y_tf, (Yvar / self._stdvs_sq if Yvar is not None else None)

    @property
    def prior_closed_form(self):
        """The prior mean and its gradient in NumPy, ``(x, grad) -> (b x m, b x m x d | None)``,
        where the prior has one (:class:`TransferPrior`); None otherwise."""
        return getattr(self._prior, "closed_form", None)

    def _get_per_input_means_stdvs(self, X, include_stdvs_sq):
        if X is None:
            return self.means, self.stdvs, self._stdvs_sq
        return self.means + self.prior_mean(X), self.stdvs, self._stdvs_sq

    def subset_output(self, idcs):
        raise NotImplementedError("a transfer prior is not split by output")


class TransferSurrogate(Surrogate):
    """bbo's surrogate with the ask's transfer prior as the models' mean (None: plain)."""

    prior: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _outcome_transform(self):
        if self.prior is None:
            return super()._outcome_transform()
        return PriorMeanStandardize(self.m, self.prior)


@dataclasses.dataclass
class SourceModel:
    """One source's GP in the target's encoding and its best points (target's view)."""

    uid: str
    name: str
    n: int  # mapped, usable trials
    model: Model | None  # None below MIN_SOURCE_POINTS
    mean: np.ndarray  # per metric, of the warped outcomes it was fit on
    sd: np.ndarray
    predictive: CachedPredictive | None = None  # the GP's cheap marginals, where they serve

    def z(self, X: torch.Tensor) -> torch.Tensor:
        """Posterior mean at ``X`` (``... x n x d``) in the source's z-units, ``... x n x m``.
        From the GP's :class:`~bbo.predictive.CachedPredictive` where there is one: the prior is
        evaluated at every acquisition step, and GPyTorch's posterior (with the covariance of
        every output, below) made a two-source ADMM ask 7x a plain one's. Otherwise variances are
        skipped for one output only: GPyTorch's stand-in covariance for skipped variances has the
        wrong shape for a batched multi-output posterior (``1 x bnm x bnm`` for a ``b x n x m``
        mean), which made every transfer fit and acquisition with constraint metrics fail over to
        random points."""
        if self.predictive is not None:
            mu = self.predictive.mean(X)
            return (mu - mu.new_tensor(self.mean)) / mu.new_tensor(self.sd)
        one = self.model is not None and self.model.num_outputs == 1
        with gpytorch.settings.skip_posterior_variances(True) if one else contextlib.nullcontext():
            mu = self.posterior(X).mean
        return (mu - mu.new_tensor(self.mean)) / mu.new_tensor(self.sd)

    def posterior(self, X: torch.Tensor) -> GPyTorchPosterior:
        """The source GP's posterior at ``X``, for a source with enough points for a GP."""
        if self.model is None:
            raise ValueError(f"source '{self.name}' has too few points for a model")
        # botorch types every model's posterior as the base Posterior, a GP's is a GPyTorch one
        return self.model.posterior(X)  # type: ignore[return-value]


class TransferPrior:
    """The stacked model's prior mean: ``sum_i coef_i (z_i(X) - centre_i)`` over the weighted
    sources (``z_i``: source i's posterior mean in its z-units, :meth:`SourceModel.z`), in torch
    for the GP and, where every source's marginals have a closed form
    (:func:`bbo.predictive_grad.marginal_gradients`), in NumPy with its gradient, so the
    acquisition optimizer keeps its closed-form path (autograd through the sources' kernels was
    the largest part of a transfer ask)."""

    def __init__(self, models: list[SourceModel], coef: np.ndarray, centre: np.ndarray, placement):
        self.models, self.coef, self.centre = models, coef, centre  # k, k x m, k x m
        self._tcoef, self._tcentre = placement.tensor(coef), placement.tensor(centre)
        grads = [marginal_gradients(sm.predictive) for sm in models if sm.predictive is not None]
        full = [g for g in grads if g is not None]
        self._grads: list[MarginalGradients] | None = full if len(full) == len(models) else None

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        out = self._tcoef[0] * (self.models[0].z(X) - self._tcentre[0])
        for i in range(1, len(self.models)):
            out = out + self._tcoef[i] * (self.models[i].z(X) - self._tcentre[i])
        return out

    @property
    def closed_form(self):
        """``(x, grad) -> (b x m, b x m x d | None)`` in NumPy, or None (see the class)."""
        return self._closed_form if self._grads is not None else None

    def _closed_form(self, x: np.ndarray, grad: bool):
        assert self._grads is not None
        out, dout = 0.0, None
        for sm, mg, c, cent in zip(self.models, self._grads, self.coef, self.centre, strict=True):
            mean, dmean = mg.mean(x, grad)
            w = c / sm.sd  # per output
            out = out + w * (mean - sm.mean) - c * cent
            if dmean is not None:
                d = w[:, None] * dmean
                dout = d if dout is None else dout + d
        return np.asarray(out), dout


@dataclasses.dataclass(frozen=True)
class SourceFacts:
    """A source's best mapped point, good region (:func:`good_region`) and whether its objective
    is quantized (:func:`_quantized`), in the target's encoding."""

    best: np.ndarray
    region: Region
    quantized: bool


@dataclasses.dataclass
class Weights:
    """One ask's weights: ``by_metric[name][uid]``, the target model's share, on how many points."""

    by_metric: dict[str, dict[str, float]]
    target: dict[str, float]
    n: int


class Transfer:
    """A study's sources (set by the service before each ask) and its transfer prior."""

    def __init__(self, ctx: Context, surrogate: TransferSurrogate):
        self.ctx = ctx
        self.surrogate = surrogate
        # RGPE's target model: a GP on the target's points alone, with hyperparameters of its own
        self._target = Surrogate(ctx.spec.space, surrogate.m, surrogate.options, ctx.placement)
        self._sources: list[SourceData] = []  # as read at the target's fixed values
        self._given: list[SourceData] = []  # as set
        self._models: dict[str, tuple[str, SourceModel]] = {}  # uid -> (fingerprint, model)
        self._usable: dict[str, tuple[str, bool]] = {}  # uid -> (fingerprint, any point maps)
        self._plan: tuple[tuple, DesignPlan] | None = None  # (sources' fingerprints, plan)
        self._facts: dict[str, tuple[str, SourceFacts | None]] = {}  # uid -> (fingerprint, facts)
        # uid -> (fingerprint of its trials as read, the source at the target's fixed values)
        self._read: dict[str, tuple[str, SourceData]] = {}
        self.weights: Weights | None = None
        self.note = ""
        self.located_from: str | None = None  # the source of the last location prior, if any

    # ---- sources ---------------------------------------------------------------------------------
    @property
    def sources(self) -> list[SourceData]:
        """The source studies' data in use, as last set (not as read at the fixed values)."""
        return list(self._given)

    def set_sources(self, sources: Sequence[SourceData]) -> None:
        live = {s.uid for s in sources}
        self._models = {k: v for k, v in self._models.items() if k in live}
        self._facts = {k: v for k, v in self._facts.items() if k in live}
        self._read = {k: v for k, v in self._read.items() if k in live}
        self._given = list(sources)
        self._sources = [self._at_fixed_values(s) for s in sources]
        space, names = self.ctx.spec.space, self.ctx.spec.modeled_metrics
        usable = {}
        for s in self._sources:
            fp = _fingerprint(s)
            hit = self._usable.get(s.uid)
            if hit is None or hit[0] != fp:
                X, _, _ = encode_source_trials(space, s.spec.space, s.trials, names)
                hit = (fp, len(X) > 0)
            usable[s.uid] = hit
        self._usable = usable

    def _at_fixed_values(self, s: SourceData) -> SourceData:
        """``s`` as it reads at the target's fixed values (:func:`bbo.transfer.conditioning`):
        where the target fixes a parameter the source varied, a GP on all the source's trials with
        that parameter as an input gives each trial's outcomes at the target's value instead of
        its own, so trials at other values inform the model, the design's opening point and the
        good region only as far as the source's data say they carry over (a source whose optimum
        moves with that parameter: the target's design opened at the source's best point at
        another value). Cached while the source's trials do not change."""
        cond = conditioning(self.ctx.spec.space, s.spec.space)
        if cond is None:
            return s
        fp = _fingerprint(s)
        hit = self._read.get(s.uid)
        if hit is not None and hit[0] == fp:
            return hit[1]
        names = self.ctx.spec.modeled_metrics
        X, Y, used = encode_source_trials(cond.space, s.spec.space, s.trials, names)
        trials: list[Trial] = []
        if cond.at is not None and len(X) >= MIN_SOURCE_POINTS:
            sur = Surrogate(cond.space, len(names), SOURCE_OPTIONS, self.ctx.placement)
            score = self.ctx.data.score(Y, self.ctx.layout.feasible(Y))
            model, _, info = sur.model(X, Y, None, score, seed=_seed(s))
            X[:, self.ctx.spec.space.dim :] = cond.at
            mu, _ = marginals(info.predictive or model, self.ctx.placement.tensor(X))
            at = mu.cpu().numpy()
            trials = [
                dataclasses.replace(
                    t,
                    params={**t.params, **cond.values},
                    metrics={k: Metric(float(at[i, j])) for j, k in enumerate(names)},
                )
                for i, t in enumerate(used)
            ]
        out = dataclasses.replace(s, trials=trials)
        self._read[s.uid] = (fp, out)
        return out

    @property
    def active(self) -> bool:
        """Whether any source has completed trials that map into the target's space."""
        return any(ok for _, ok in self._usable.values())

    def _scored(self, s: SourceData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A source's mapped completed trials: inputs in the target's encoding, the modeled
        metrics' values, and each row's score by the target's objectives and constraints."""
        ctx = self.ctx
        names = ctx.spec.modeled_metrics
        X, Y, _ = encode_source_trials(ctx.spec.space, s.spec.space, s.trials, names)
        return X, Y, ctx.data.score(Y, ctx.layout.feasible(Y))

    def _fingerprint(self, s: SourceData) -> str:
        """The source's completed trials' fingerprint, as :meth:`set_sources` took it."""
        hit = self._usable.get(s.uid)
        return hit[0] if hit is not None else _fingerprint(s)

    def _source_facts(self, s: SourceData) -> SourceFacts | None:
        """What the design and the location prior read off a source's mapped trials (None below
        :data:`MIN_SOURCE_POINTS` of them), cached while its trials do not change."""
        fp = self._fingerprint(s)
        hit = self._facts.get(s.uid)
        if hit is None or hit[0] != fp:
            X, Y, score = self._scored(s)
            facts = None
            if len(X) >= MIN_SOURCE_POINTS:
                best = X[int(np.argmax(score))]
                facts = SourceFacts(best, good_region(X, score), _quantized(X, Y[:, 0]))
            hit = (fp, facts)
            self._facts[s.uid] = hit
        return hit[1]

    def _model(self, s: SourceData) -> SourceModel:
        fp = self._fingerprint(s)
        hit = self._models.get(s.uid)
        if hit is not None and hit[0] == fp:
            return hit[1]
        ctx = self.ctx
        X, Y, score = self._scored(s)
        m = len(ctx.spec.modeled_metrics)
        if len(X) < MIN_SOURCE_POINTS:
            sm = SourceModel(s.uid, s.name, len(X), None, np.zeros(m), np.ones(m))
        else:
            Ym, _ = ctx.warp.apply(Y)
            sur = Surrogate(ctx.spec.space, m, SOURCE_OPTIONS, ctx.placement)
            model, rows, info = sur.model(X, Ym, None, score, seed=_seed(s))
            for prm in model.parameters():  # fixed from now on: gradients flow to X only
                prm.requires_grad_(False)
            mean = Ym[rows].mean(axis=0)
            sd = np.maximum(Ym[rows].std(axis=0), 1e-9)
            sm = SourceModel(s.uid, s.name, len(X), model, mean, sd, info.predictive)
        self._models[s.uid] = (fp, sm)
        return sm

    def design(self, n_warm: int) -> DesignPlan:
        """This study's initial design given its sources (:func:`design_plan`), cached while
        their trials do not change."""
        key = (n_warm, tuple(sorted((uid, fp) for uid, (fp, _) in self._usable.items())))
        if self._plan is not None and self._plan[0] == key:
            return self._plan[1]
        regions = [f.region for s in self._sources if (f := self._source_facts(s)) is not None]
        plan = design_plan(self.ctx, n_warm, regions)
        self._plan = (key, plan)
        return plan

    def warmstart(self) -> list[Suggestion]:
        """Each source's best completed point (by the target's objectives and constraints),
        mapped into the target's space; best sources (by their relatedness order) first."""
        ctx, out = self.ctx, []
        names = ctx.spec.modeled_metrics
        for s in self._sources:
            done = [t for t in s.trials if t.state is TrialState.COMPLETED]
            rows = []
            for t in done:
                try:
                    y = [float(t.metrics[k].value) for k in names]
                except KeyError:
                    continue
                if all(math.isfinite(v) for v in y):
                    rows.append((t, y))
            if not rows:
                continue
            Y = np.asarray([y for _, y in rows])
            score = ctx.data.score(Y, ctx.layout.feasible(Y))
            for i in np.argsort(-score, kind="stable"):
                p = map_point(ctx.spec.space, s.spec.space, rows[i][0].params)
                if p is not None:
                    why = f"transfer: the best point of source study '{s.name}' (trial {rows[i][0].id})"
                    out.append(Suggestion(p, Origin.TRANSFER_WARMSTART.value, why))
                    break
        return out

    def location_prior(self, data: TrainingData) -> tuple[ParameterPrior, ...]:
        """piBO priors at the best point of the source with the most weight in this ask's prior
        (on the first objective), each parameter's spread half its good region's width
        (:func:`good_region`, at least :data:`MIN_PRIOR_SD` of the range). Empty unless that
        source outweighs the target's own model and the objective is quantized (two distinct
        points of the source or the target share a value exactly). The acquisition step bends EI
        towards it with the decaying piBO exponent and sets it aside once the target's best
        trials contradict it.

        Why quantized only: a quantized response is flat where the GP's mean slopes, so neither
        the stacked model nor the exploitation steps (:mod:`bbo.strategy.exploitation`) refine
        around a good point; the source's best point says where to look. On the ADMM kit (integer
        iterations) two related sources reached no transfer's 30-evaluation result by evaluation
        10 in 93 % of 10-seed subsets instead of 74 %; on smooth responses the stacked model
        already carries the source's optimum, and the prior held the search at the source's best
        point where the optimum had moved (cloud kit: evaluation 20 instead of 10)."""
        self.located_from = None
        w = self.weights
        if not self.carries_weight or w is None:
            return ()
        name = self.ctx.spec.modeled_metrics[0]
        first = w.by_metric[name]
        uid = max(first, key=lambda k: first[k])
        if first[uid] < max(MIN_WEIGHT, w.target[name]):
            return ()
        source = next((s for s in self._sources if s.uid == uid), None)
        if source is None or (facts := self._source_facts(source)) is None:
            return ()
        best, (lo, hi) = facts.best, facts.region
        if not (facts.quantized or _quantized(data.X, data.Y[:, 0])):
            return ()
        space = self.ctx.spec.space
        out = []
        for i, prm in enumerate(space.free):  # the encoding's columns: fixed ones have none
            if isinstance(prm, CategoricalParam):
                choice = prm.choices[int(round(float(best[i])))]
                out.append(ParameterPrior(prm.name, probabilities={choice: 1.0}, source="transfer"))
                continue
            sd = max(MIN_PRIOR_SD, 0.5 * float(hi[i] - lo[i]))
            mean, std = prior_in_units(space, prm, float(best[i]), sd)
            out.append(ParameterPrior(prm.name, mean, std, source="transfer"))
        self.located_from = source.name
        return tuple(out)

    # ---- the prior of one ask --------------------------------------------------------------------
    def prepare(self, data: TrainingData, seed: int) -> str:
        """Compute this ask's weights and set the surrogate's prior; the note for the trials."""
        self.surrogate.prior, self.weights, self.note = None, None, ""
        models = [m for s in self._sources if (m := self._model(s)).model is not None]
        if not models or len(data.trials) < 2:
            return ""
        ctx, P = self.ctx, self.ctx.placement
        rng = np.random.default_rng(seed)
        rows = _weight_rows(data.score, rng)
        Xt = P.tensor(data.X[rows])
        Y = data.Ym[rows]
        names = ctx.spec.modeled_metrics
        with torch.no_grad():
            z_mean, z_samp = [], []
            for sm in models:
                post = sm.posterior(Xt)
                samp = post.rsample(torch.Size([SAMPLES]))
                shift, scale = Xt.new_tensor(sm.mean), Xt.new_tensor(sm.sd)
                z_mean.append(((post.mean - shift) / scale).cpu().numpy())
                z_samp.append(((samp - shift) / scale).cpu().numpy())
            loo_mu, loo_sd = self._target_loo(data, rows, seed)
        k = len(models)
        cal = _calibration_rows(data.score[rows], k)
        W = np.zeros((k, len(names)))
        B = np.zeros((k, len(names)))
        C = np.zeros((k, len(names)))
        target_w: dict[str, float] = {}
        for j, name in enumerate(names):
            y = Y[:, j]
            losses = [_rank_loss(z_samp[i][..., j], y) for i in range(k)]
            eps = rng.standard_normal((SAMPLES, len(y)))
            losses.append(_rank_loss(loo_mu[j] + loo_sd[j] * eps, y))
            w = _rgpe_weights(losses, rng)
            W[:, j] = w[:k]
            target_w[name] = float(w[k])
            for i in range(k):
                nu = z_mean[i][:, j]
                B[i, j] = _calibrate(y[cal], nu[cal])
                C[i, j] = float(nu.mean())
        self.weights = Weights(
            {
                name: {sm.uid: round(float(W[i, j]), 4) for i, sm in enumerate(models)}
                for j, name in enumerate(names)
            },
            {k_: round(v, 4) for k_, v in target_w.items()},
            len(data.trials),
        )
        coef = W * B  # k x m
        if not np.any(coef > 0):
            self.note = _note(models, W, names, target_w, "the prior is flat")
            return self.note
        used = [i for i in range(k) if np.any(coef[i] > 0)]
        self.surrogate.prior = TransferPrior([models[i] for i in used], coef[used], C[used], P)
        self.note = _note(models, W, names, target_w, "")
        return self.note

    @property
    def carries_weight(self) -> bool:
        """Whether a source has weight on some metric in this ask's prior."""
        w = self.weights
        return (
            self.surrogate.prior is not None
            and w is not None
            and any(v >= MIN_WEIGHT for ws in w.by_metric.values() for v in ws.values())
        )

    def _target_loo(self, data: TrainingData, rows: np.ndarray, seed: int):
        """Leave-one-out predictive means and sds (per metric, at ``rows``) of a GP on the target's
        points alone, with hyperparameters fit on them (cached and refit as any study's): the
        target model RGPE weighs the sources against. Not the transfer surrogate's: those are fit
        to what the sources' prior leaves unexplained, and a target model judged with them kept a
        weakly related source's weight high while it pinned the search to its optimum (HPO kit,
        the first source alone: 3.0x no transfer's final regret, 1.0x with its own fit)."""
        target = self._target
        fit, on, _ = data.model(target, seed)
        model = cast(gpytorch.models.ExactGP, fit)
        if not np.array_equal(on, rows):  # it conditions on other rows: on these instead
            Yvar = None if data.Ymvar is None else data.Ymvar[rows]
            model = target._condition(data.X[rows], data.Ym[rows], Yvar, target._hyper)
        Xtr = model.train_inputs[0]
        prior = model.forward(Xtr)
        K = model.likelihood(prior, Xtr).covariance_matrix
        y = model.train_targets - prior.mean
        L = torch.linalg.cholesky(K + 1e-9 * torch.eye(K.shape[-1], dtype=K.dtype))
        Kinv = torch.cholesky_inverse(L)
        alpha = (Kinv @ y.unsqueeze(-1)).squeeze(-1)
        d = torch.diagonal(Kinv, dim1=-2, dim2=-1).clamp_min(1e-12)
        mu = (model.train_targets - alpha / d).reshape(-1, len(rows)).cpu().numpy()
        sd = (1.0 / d).sqrt().reshape(-1, len(rows)).cpu().numpy()
        return mu, sd  # standardized units: rankings are all that is compared


def _quantized(X: np.ndarray, y: np.ndarray) -> bool:
    """Whether two distinct points (rows of ``X``) share a finite value of ``y`` exactly."""
    v = y[np.unique(same_point(X), axis=0, return_index=True)[1]]
    v = v[np.isfinite(v)]
    return len(np.unique(v)) < len(v)


def _note(models, W, names, target_w, extra: str) -> str:
    j = 0  # the first objective's weights stand for the rest in the note
    parts = ", ".join(f"'{m.name}' {W[i, j]:.2f}" for i, m in enumerate(models))
    s = f"transfer weights ({names[j]}): {parts}, target {target_w[names[j]]:.2f}"
    return f"{s}; {extra}" if extra else s


def _fingerprint(s: SourceData) -> str:
    h = hashlib.sha256()
    for t in s.trials:
        if t.state is TrialState.COMPLETED:
            h.update(repr((t.id, sorted((k, m.value) for k, m in t.metrics.items()))).encode())
    return h.hexdigest()


def _seed(s: SourceData) -> int:
    """A source's GP fits' seed: the same for it at every ask."""
    return int.from_bytes(hashlib.sha256(s.uid.encode()).digest()[:4], "little")


def _weight_rows(score: np.ndarray, rng) -> np.ndarray:
    n = len(score)
    if n <= MAX_WEIGHT_ROWS:
        return np.arange(n)
    order = np.argsort(-score, kind="stable")
    best = order[: MAX_WEIGHT_ROWS // 4]
    rest = rng.choice(order[MAX_WEIGHT_ROWS // 4 :], MAX_WEIGHT_ROWS - len(best), replace=False)
    return np.sort(np.concatenate([best, rest]))


def _rank_loss(F: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mis-ordered pairs of ``y`` under each sample (row) of ``F``: ``(S,)``."""
    n = len(y)
    upper = np.triu(np.ones((n, n), dtype=bool), 1) & (y[:, None] != y[None, :])
    yl = y[:, None] < y[None, :]
    fl = F[:, :, None] < F[:, None, :]
    return ((fl != yl) & upper).sum(axis=(1, 2))


def _rgpe_weights(losses: list[np.ndarray], rng) -> np.ndarray:
    """RGPE: each model's share of samples with the lowest loss (the target model last); sources
    whose median loss exceeds the target model's 95th percentile are left out."""
    L = np.stack(losses, axis=1).astype(float)  # S x (k + 1)
    cap = np.percentile(L[:, -1], 95)
    out = np.median(L[:, :-1], axis=0) > cap
    L[:, :-1][:, out] = np.inf
    L = L + rng.uniform(0.0, 0.5, L.shape)  # losses are integers: this breaks ties at random
    best = np.argmin(L, axis=1)
    return np.bincount(best, minlength=L.shape[1]) / L.shape[0]


def _calibration_rows(score: np.ndarray, k: int) -> np.ndarray:
    """The target points (a mask over ``score``, higher is better) each of ``k`` modeled sources'
    scale is fitted on: all of them, except for a lone source, which is fitted on the better half
    (at least :data:`MIN_SOURCE_POINTS`). A lone source has no second opinion, and fitted on every
    point its scale follows the global trend it rightly predicts (failures are bad), which lends
    its own optimum that trend's weight even where the target's good points are ordered otherwise:
    on the HPO kit the first source alone then ended at 2.01x no transfer's final regret, 1.00x
    when fitted on the better half (20 seeds). Several sources' weighted sum draws on the global
    trend between their optima (fitted on the better half, two related sources reached no
    transfer's result at evaluation 11 instead of 9)."""
    good = score >= np.median(score)
    if k > 1 or int(good.sum()) < MIN_SOURCE_POINTS:
        return np.ones(len(score), dtype=bool)
    return good


def _calibrate(y: np.ndarray, nu: np.ndarray) -> float:
    """Target units per source z-unit: least squares of ``y`` on ``nu`` with
    :data:`CALIBRATION_PSEUDO` pseudo-observations at one target standard deviation; >= 0."""
    yc, nc = y - y.mean(), nu - nu.mean()
    sy = float(yc.std())
    if not np.isfinite(sy) or sy <= 0:
        return 0.0
    b = (float(yc @ nc) + CALIBRATION_PSEUDO * sy) / (float(nc @ nc) + CALIBRATION_PSEUDO)
    return max(0.0, b)
