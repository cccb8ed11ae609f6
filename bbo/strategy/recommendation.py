"""The recommended trial: on a noisy objective, the completed trial with the best posterior mean
of the objective rather than the best observed value.

Under noise the best observed value is the luckiest draw: among many similar trials the maximum
picks the one whose noise happened to be most favourable, and its true value is worse than the
GP's posterior mean at other trials says (the winner's curse; noisy BO reports the best posterior
mean for this reason). On a deterministic objective the best observed trial is the answer and
nothing changes: the recommendation is made only where :class:`~bbo.strategy.noise.NoiseEstimate`
finds the objective noisy. Where only the GP's fitted noise says so and the recommendation would
differ from the best observed trial, the data must also support that noise, the objective's or
a constraint metric's (at a lower bar, :data:`CONSTRAINT_EVIDENCE`): see
:meth:`~bbo.surrogate.Surrogate.noise_evidence`, a refit without it, made once per set of
hyperparameters and data up to :data:`EVIDENCE_MAX_POINTS` points, on the first read of them
rather than in the ask (a read's answer then depends on nothing but the data and the fit, which
replicas share). A few points of a deterministic function often fit as noisy as well as not, and
the posterior mean would then report a worse trial than the best one seen. Where the pick is the
best one seen anyway, that noise is not judged, and the selection names the best observed value
instead of claiming noise. Candidates are the trials observed feasible, preferring those the
model is confident are feasible (probability at least 0.9, else 1/2) where there are outcome
constraints. A recommendation carries the model's estimate of its objective in the objective's
units (:class:`~bbo.strategy.base.Estimate`: the posterior mean and a one-sd interval, mapped back
through the outcome warp), which GetBest reports.

Asks record their recommendation from the model they fit; reads (GetBest) made after further
tells condition a GP on the cached hyperparameters (no fit). Before any ask has fit one (a study
filled through AddTrial) a read of up to ``max_fit_points`` trials fits a surrogate of its own,
which asks never touch: GetBest reported the luckiest draw there until the first ask. One answer is cached per set of
completed trials and set of hyperparameters (another replica's, adopted, make it anew).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bbo.acquisition import log_prob_feasible, marginals
from bbo.strategy import noise as noise_rules
from bbo.strategy.base import Estimate, Recommendation
from bbo.strategy.context import Context
from bbo.strategy.model_data import TrainingData
from bbo.surrogate import Surrogate, fitted_noise
from bbo.trial import MODELED_STATES, Trial

MIN_TRIALS = 3  # fewer completed trials: the best observed one
# model probability that every outcome constraint holds, tried in turn: the best posterior mean
# among trials the model is confident are feasible, else among those more likely feasible than not.
# Under noise an observed-feasible trial near a bound is often infeasible in truth; on the cloud
# kit with random workloads (bench_families cloud_noise, 5 seeds) 0.5 reported a truly infeasible
# point on 4 seeds of 5, 0.9 on 2.
FEASIBLE_CONFIDENCE = (0.9, 0.5)
# above this many points a fitted noise level counts without a noise-free refit to compare (the
# refit would cost a fit; with this much data the fitted level is well determined)
EVIDENCE_MAX_POINTS = 100
# below this many points the fitted noise is no evidence: a noise-free refit's loss is then the
# lengthscale prior's verdict on a wiggly interpolant, not the data's (3 points of the noise-free
# (x - 0.3)^2, two of them 0.036 apart: 3.1 nats, over NOISE_EVIDENCE; a grid search of both fits
# agrees, so it is not the optimizer). The default design is at least this size.
EVIDENCE_MIN_POINTS = 5
# the evidence (nats) a constraint metric's fitted noise needs to keep the recommendation: lower
# than the objective's, as reporting a truly infeasible trial costs more than a slightly worse
# one. On the cloud kit with random workloads (5 seeds, 30 trials) the noisy constraint gained
# 2.1 nats where the objective's gained 0.9; with the bar at the objective's, the best observed
# trial, truly infeasible, was reported on 2 seeds where the confident one was feasible
CONSTRAINT_EVIDENCE = 1.0


class Evidence(NamedTuple):
    """What the data say of the GP's fitted noise (:meth:`Recommender.fit_evidence`)."""

    objective: float  # nats the objective's fitted noise gains over a noise-free refit
    constraint: str | None  # a constraint metric whose fitted noise they support, if any


@dataclass
class _Unjudged:
    """A recommendation an ask chose that waits for the evidence for the fitted noise: judged on
    the first read (an ask does not pay for the refit; most asks are never read)."""

    trial_id: int
    estimate: Estimate | None
    noise: noise_rules.NoiseEstimate
    data: TrainingData
    model: object
    rows: np.ndarray


class Recommender:
    """Chooses a study's recommended trial; thread-safe, apart from the strategy's lock."""

    def __init__(self, ctx: Context, surrogate: Surrogate):
        self.ctx = ctx
        self.surrogate = surrogate
        self._data = ctx.data.fresh()
        self._lock = threading.Lock()
        # (the trials' fingerprint, the surrogate's hyperparameters, the answer for them)
        self._cache: tuple[tuple, object, Recommendation | _Unjudged | None] | None = None
        # (the surrogate's hyperparameters, the data, the evidence for the fitted noise judged
        # under them: see fit_evidence)
        self._evidence: tuple[object, bytes, Evidence] | None = None
        # the reads' own GP while no ask has fit the surrogate (:meth:`_read_fit`), and its lock
        self._own = Surrogate(ctx.spec.space, surrogate.m, surrogate.options, ctx.placement)
        self._own_lock = threading.Lock()

    def recommend(self, trials: Sequence[Trial]) -> Recommendation | None:
        """The recommended trial among the completed ones of ``trials`` (see the module)."""
        # the rows an ask's model has (pruned ones too): its cached pick then serves this read
        modeled = [t for t in trials if t.state in MODELED_STATES]
        with self._lock:
            data = self._data.build(modeled)
            key = data.key
            cached = self._cache
        hyper = self._hyper()
        if cached is not None and cached[0] == key and cached[1] is hyper:
            out = cached[2]
            if not isinstance(out, _Unjudged):
                return out
            rec = self._judge(out)
        else:
            cond: tuple | None = None
            if self._worth_a_model(data):
                cond = self.surrogate.conditioned(data.X, data.Ym, data.Ymvar, data.score)
                if cond is None and len(data.trials) <= self._own.options.max_fit_points:
                    cond = self._read_fit(data)  # no ask has fit a model yet: a fit of its own
            choice = self._choose(data, *cond) if cond is not None else None
            rec = self._judge(choice) if isinstance(choice, _Unjudged) else choice
        with self._lock:
            self._cache = (key, hyper, rec)
        return rec

    def remember(self, data: TrainingData, model, rows: np.ndarray, predictive=None) -> None:
        """Record the recommendation of an ask's fitted model (reads of the same trials then
        cost nothing, or the noise evidence's refit once per set of hyperparameters);
        ``predictive``: its cheap marginals (:class:`~bbo.predictive.CachedPredictive`), if any."""
        worth = self._worth_a_model(data)
        rec = self._choose(data, model, rows, predictive) if worth else None
        with self._lock:
            self._cache = (data.key, self._hyper(), rec)

    def _read_fit(self, data: TrainingData) -> tuple[object, np.ndarray, object]:
        """``(model, rows, predictive)`` of the reads' own surrogate on ``data``, fit as an ask
        would (refit as the data grow), so that the pick under noise does not wait for an ask;
        the asks' surrogate and cached state are left as they are. Only up to ``max_fit_points``
        trials: past them (20,000 added trials: 13-30 s of CPU a read, the subset's refit nearly
        every time) a read answers the best observed trial until an ask has fit the model."""
        with self._own_lock:
            model, rows, info = data.model(self._own, self.ctx.call_seed(list(data.trials)))
        return model, rows, info.predictive

    def _hyper(self) -> object:
        """The surrogate's current hyperparameters (a new object after each fit or adoption)."""
        state = self.surrogate.export_state()
        return None if state is None else state[1]

    def _worth_a_model(self, data: TrainingData) -> bool:
        return not self.ctx.layout.multi and len(data.trials) >= MIN_TRIALS

    def _choose(self, data: TrainingData, model, rows: np.ndarray, predictive=None):
        """The recommendation, None, or where the fitted noise still needs its evidence (not
        judged under the surrogate's current hyperparameters yet) an :class:`_Unjudged` one;
        posterior marginals from ``predictive`` where given (the same as ``model``'s)."""
        layout = data.layout
        noise = data.noise.with_model(model, layout)
        if not noise.noisy:
            return None
        model_rows, rows = rows, rows[data.completed[rows]]  # a pruned trial is never the best
        if not len(rows):
            return None
        observed_best = int(rows[int(np.argmax(data.score[rows]))])
        rows = rows[data.feasible[rows]]
        if not len(rows):
            return None
        X = self.ctx.placement.tensor(data.X[rows])
        post = model if predictive is None else predictive
        mu, sd = marginals(post, X)
        j = layout.obj_idx[0]
        mean = (layout.signs[0] * mu[:, j]).detach().cpu().numpy()
        if layout.constraints:
            lpf = log_prob_feasible(post, layout, X).cpu().numpy()
            for p in FEASIBLE_CONFIDENCE:
                likely = lpf >= np.log(p)
                if likely.any():
                    mean = np.where(likely, mean, -np.inf)
                    break
        k = int(np.argmax(mean))
        best = int(rows[k])
        estimate = self._estimate(data, float(mu[k, j]), float(sd[k, j]))
        if self._needs_evidence(noise, data):
            if best == observed_best:  # the same trial either way: the fit's noise is not judged
                why = f"best observed value of the objective over {data.n_completed} completed "
                why += "trials, and its best posterior mean"
                return Recommendation(data.trials[best].id, why, estimate)
            evidence = self._known_evidence(_data_key(data, model_rows))
            if evidence is None:
                return _Unjudged(best, estimate, noise, data, model, model_rows)
            return self._supported(data, best, estimate, noise, evidence)
        return self._recommendation(data, best, estimate, noise)

    def _estimate(self, data: TrainingData, mu: float, sd: float) -> Estimate | None:
        """The posterior ``mu`` and ``sd`` of the objective (the model's warped units) as an
        :class:`~bbo.strategy.base.Estimate` in the objective's units; None where not finite."""
        warped = np.array([mu, mu - sd, mu + sd])
        value, a, b = self.ctx.warp.objective_units(data.Y, warped)
        if not np.all(np.isfinite([value, a, b])):
            return None
        return Estimate(float(value), float(min(a, b)), float(max(a, b)))

    def _judge(self, u: _Unjudged) -> Recommendation | None:
        """Settle an :class:`_Unjudged` recommendation (see :meth:`_supported`)."""
        evidence = self.fit_evidence(u.data, u.model, u.rows, exact=True)
        return self._supported(u.data, u.trial_id, u.estimate, u.noise, evidence)

    def _supported(
        self,
        data: TrainingData,
        row: int,
        estimate: Estimate | None,
        noise: noise_rules.NoiseEstimate,
        evidence: Evidence,
    ) -> Recommendation | None:
        """The posterior mean's trial where the data support the fitted noise of the objective,
        or of a constraint metric, else None (the best observed trial)."""
        noise = noise.with_evidence(evidence.objective)
        if not noise.noisy and evidence.constraint is None:
            return None
        return self._recommendation(data, row, estimate, noise, evidence.constraint)

    def _recommendation(
        self,
        data: TrainingData,
        row: int,
        estimate: Estimate | None,
        noise: noise_rules.NoiseEstimate,
        constraint: str | None = None,
    ) -> Recommendation:
        n = data.n_completed
        what = noise.describe() if noise.noisy else f"constraint metric {constraint!r}, fitted"
        why = f"best posterior mean of the objective over {n} completed trials (noisy: {what})"
        return Recommendation(data.trials[row].id, why, estimate)

    def _needs_evidence(self, noise: noise_rules.NoiseEstimate, data: TrainingData) -> bool:
        """Whether the fitted noise alone makes the objective noisy, with few enough points to
        refit."""
        return not noise.known and len(data.trials) <= EVIDENCE_MAX_POINTS

    def _known_evidence(self, key: bytes | None = None) -> Evidence | None:
        """The evidence judged under the surrogate's current hyperparameters, if it was (and on
        the data of :func:`_data_key` ``key``, where given)."""
        state = self.surrogate.export_state()
        with self._lock:
            cached = self._evidence
        if state is None or cached is None or cached[0] is not state[1]:
            return None
        return cached[2] if key is None or cached[1] == key else None

    def fit_evidence(
        self, data: TrainingData, model, rows: np.ndarray, exact: bool = False
    ) -> Evidence:
        """:meth:`~bbo.surrogate.Surrogate.noise_evidence` of the objective on the ``rows``
        ``model`` conditions on and, unless that supports the fitted noise, of each constraint
        metric fitted as noisy (a fit of a one-output GP per output judged); none (0 nats) on
        fewer than :data:`EVIDENCE_MIN_POINTS`. Judged once per set of the surrogate's
        hyperparameters for asks; ``exact`` (reads): once per set of hyperparameters and data,
        so that a replica that judged earlier data answers as one that did not."""
        if len(rows) < EVIDENCE_MIN_POINTS:
            return Evidence(0.0, None)
        key = _data_key(data, rows)
        known = self._known_evidence(key if exact else None)
        if known is not None:
            return known
        state = self.surrogate.export_state()
        layout = data.layout
        X, Y = data.X[rows], data.Ym[rows]
        objective = self.surrogate.noise_evidence(X, Y, model, layout.obj_idx[0])
        constraint = None
        if objective < noise_rules.NOISE_EVIDENCE:
            for j, _, _ in layout.constraints:
                level = fitted_noise(model, j)
                if level is None or level <= noise_rules.NOISY_FIT:
                    continue
                if self.surrogate.noise_evidence(X, Y, model, j) >= CONSTRAINT_EVIDENCE:
                    constraint = self.ctx.data.names[j]
                    break
        evidence = Evidence(objective, constraint)
        with self._lock:
            self._evidence = (None if state is None else state[1], key, evidence)
        return evidence


def _data_key(data: TrainingData, rows: np.ndarray) -> bytes:
    """The points and outcomes of ``rows`` that the noise evidence is judged on."""
    return data.X[rows].tobytes() + data.Ym[rows].tobytes()
