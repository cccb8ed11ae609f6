"""Model data: the study's trials as the surrogate sees them, built once per ask.

:class:`Points` encodes trials (cached by trial id, since re-encoding every trial on every ask
dominated initial-design asks) and tells whether two points count as the same point.
:class:`ModelData` turns the completed (and pruned), readable trials into :class:`TrainingData`:
encodings, raw and warped outcomes (:mod:`bbo.warping`), feasibility, and one quality score per
row.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bbo.acquisition import Layout
from bbo.space import SearchSpace, Value
from bbo.spec import NOISE_AUTO
from bbo.strategy.noise import NoiseEstimate, same_point
from bbo.trial import MODELED_STATES, WARMSTART_ORIGINS, Origin, Trial, TrialState
from bbo.warping import OutcomeWarp

# scaled encoded distance under which two points count as the same point (local model steps
# resolve ~1e-7)
MIN_SEPARATION = 1e-8
# a plateau: one objective value shared exactly by this share of the distinct points, and by at
# least PLATEAU_MIN of them (see TrainingData.plateau)
PLATEAU_SHARE = 0.25
PLATEAU_MIN = 3
# reported standard errors above this are taken as this (squared, a larger one overflows; it says
# the observation tells nothing either way)
MAX_SEM = 1e150


class Points:
    """Encodings of a study's points, cached by trial id, and the same-point test."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self._scale = np.maximum(space.bounds()[1], 1.0)
        self._encoded: dict[int, tuple[dict, np.ndarray]] = {}  # trial id -> (params, encoding)

    def encode_trials(self, trials: Sequence[Trial]) -> np.ndarray:
        """Encoded points of ``trials`` (unreadable ones skipped), reusing the last call's
        encodings by trial id; the cache then holds only these trials."""
        new, rows = {}, []
        for t in trials:
            try:
                x = self.encoding(t)
            except Exception:  # noqa: BLE001, S112 - an unreadable trial is no point
                continue
            new[t.id] = (t.params, x)
            rows.append(x)
        self._encoded = new  # only the current trials: nothing accumulates for deleted ones
        return np.vstack(rows) if rows else np.zeros((0, self.space.dim))

    def encoding(self, t: Trial) -> np.ndarray:
        """``t``'s encoded point: the cached one while its params are unchanged (raises if
        unreadable)."""
        hit = self._encoded.get(t.id)
        return hit[1] if hit is not None and hit[0] == t.params else self.space.encode(t.params)

    def too_close(self, x: np.ndarray, taken: np.ndarray) -> bool:
        """Whether ``x`` is (numerically) one of the points in ``taken``."""
        if len(taken) == 0:
            return False
        d = np.sqrt(np.sum(((taken - x) / self._scale) ** 2, axis=1))
        return bool(np.min(d) < MIN_SEPARATION)

    def valid(self, params) -> dict[str, Value] | None:
        """``params`` validated for the space, or None where they are not a valid point."""
        try:
            return self.space.validate_params(params)
        except Exception:  # noqa: BLE001 - invalid candidates are skipped, not errors
            return None


@dataclass
class TrainingData:
    """The completed (and pruned), readable trials, row-aligned."""

    trials: list[Trial]
    X: np.ndarray
    Y: np.ndarray
    Yvar: np.ndarray | None
    score: np.ndarray  # quality per row, higher is better, feasible rows above infeasible ones
    feasible: np.ndarray
    Ym: np.ndarray  # Y warped for the model (:mod:`bbo.warping`), in ``layout``'s units
    Ymvar: np.ndarray | None
    noise: NoiseEstimate  # the data's evidence of noise (the fit adds its own: with_model)
    layout: Layout  # the outcome layout in the model's units (bounds, reference points warped)

    @cached_property
    def key(self) -> tuple:
        """:func:`fingerprint` of :attr:`trials`: what a cache of anything computed from this
        data is keyed by (:meth:`ModelData.build` gives it the one it took where it can)."""
        return fingerprint(self.trials)

    @cached_property
    def distinct_rows(self) -> np.ndarray:
        """The first row of each distinct point (:func:`~bbo.strategy.noise.same_point`): one
        value per point, replicates aside."""
        return np.unique(same_point(self.X), axis=0, return_index=True)[1]

    @cached_property
    def completed(self) -> np.ndarray:
        """Per row, whether its trial COMPLETED: a PRUNED one informs the model but is never
        evaluated again (not replicated, not repeated in an exhausted space)."""
        return np.array([t.state is TrialState.COMPLETED for t in self.trials], dtype=bool)

    @property
    def n_completed(self) -> int:
        """How many rows are COMPLETED trials (what a study's messages count as completed)."""
        return int(self.completed.sum())

    @cached_property
    def plateau(self) -> bool:
        """A quarter or more of the distinct points (three at least) share one quality exactly:
        a response with a floor or failure value (a tree that never splits scores the chance-level
        CV error whatever the folds, a capped solver run, a crash value). Beside it the objective's
        broad trend matters more than its local wiggles, as under noise, so the surrogate weighs a
        smoother fit too (:attr:`weigh_smooth`)."""
        if len(self.score) < PLATEAU_MIN:
            return False
        first = self.distinct_rows
        shared = int(np.unique(self.score[first], return_counts=True)[1].max())
        return shared >= PLATEAU_MIN and shared >= PLATEAU_SHARE * len(first)

    @property
    def weigh_smooth(self) -> bool:
        """Whether the surrogate also fits under longer lengthscales and keeps the fit that predicts
        left-out points better (:meth:`bbo.surrogate.Surrogate.model`): where the objective is
        known to be noisy, or has a :attr:`plateau`."""
        return self.noise.known or self.plateau

    def model(self, surrogate, seed: int):
        """``surrogate``'s GP on these data (:meth:`bbo.surrogate.Surrogate.model`: the warped
        outcomes, the quality scores, the smoothness weighing :attr:`weigh_smooth` asks for)."""
        return surrogate.model(
            self.X, self.Ym, self.Ymvar, self.score, seed=seed, weigh_smooth=self.weigh_smooth
        )

    def design_rows(self) -> list[int]:
        """Rows that are initial-design trials (Sobol / centre / prior guess, or warm start)."""
        design = (Origin.INITIAL.value, *WARMSTART_ORIGINS)
        return [i for i, t in enumerate(self.trials) if t.origin in design]


class ModelData:
    """Builds :class:`TrainingData` for one study; the last build is reused while the trials are
    unchanged (an ask and the status check after it see the same trials)."""

    def __init__(
        self,
        names: Sequence[str],
        layout: Layout,
        warp: OutcomeWarp,
        points: Points,
        noise: str = NOISE_AUTO,
        *,
        reuse: bool = False,
    ):
        self.names = tuple(names)
        self.noise = noise  # the first objective's declared observation noise
        self.layout = layout
        self.warp = warp
        self.points = points
        self._last: tuple[tuple, TrainingData] | None = None
        # the last build's trials and their fingerprints, kept where ``reuse``: see _fingerprint
        self.reuse = reuse
        self._fps: tuple[list[Trial], tuple] = ([], ())

    def fresh(self) -> ModelData:
        """A builder of the same study's data with a cache of its own (for a reader beside the
        asks, whose last build it must not evict), for the study's own copies of its trials
        (:class:`~bbo.study_trials.TrialCache`), replaced when they change: ``reuse``."""
        return ModelData(self.names, self.layout, self.warp, self.points, self.noise, reuse=True)

    def build(self, trials: Sequence[Trial]) -> TrainingData:
        key = self._fingerprint(trials)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        data = self._build(trials)
        # every trial a row, in order: the same fingerprint, not taken twice (a second one was
        # half of a GetBest of 20,000 trials)
        if len(data.trials) == len(trials):
            data.__dict__["key"] = key
        self._last = (key, data)
        return data

    def _fingerprint(self, trials: Sequence[Trial]) -> tuple:
        """:func:`fingerprint` of ``trials``; where ``reuse`` (trials replaced when they change,
        never changed in place, as the study keeps them) each trial object's is taken from the last
        build where it was in it: on a study kept in memory only new results are fingerprinted (all
        20,000 trials were over a third of an unchanged study's GetBest)."""
        if not self.reuse:
            return fingerprint(trials)
        prev, fps = self._fps
        if len(prev) == len(trials) and all(map(operator.is_, prev, trials)):
            return fps
        known = {id(t): fp for t, fp in zip(prev, fps, strict=True)}  # prev held: ids not reused
        out = tuple(known.get(id(t)) or trial_fingerprint(t) for t in trials)
        self._fps = (list(trials), out)
        return out

    def _build(self, trials: Sequence[Trial]) -> TrainingData:
        names, dim = self.names, self.points.space.dim
        used, X, Y, S = [], [], [], []
        for t in trials:
            if t.state not in MODELED_STATES:
                continue
            try:
                y = [float(t.metrics[k].value) for k in names]
                x = self.points.encoding(t)
            except Exception:  # noqa: BLE001, S112 - a trial we cannot read is not modeled
                continue
            if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x))):
                continue
            used.append(t)
            X.append(x)
            Y.append(y)
            S.append([t.metrics[k].sem for k in names])
        done = [i for i, t in enumerate(used) if t.state is TrialState.COMPLETED]
        if len(done) < len(used):
            # a pruned trial's value, from part of the run, is a row only where no completed trial
            # measured its point (else the two read as noise), and only with standard errors where
            # the completed trials report them (else every reported error is dropped with it)
            sems = bool(done) and all(_reported(S[i]) for i in done)
            measured = {same_point(X[i]).tobytes() for i in done}
            keep = [
                i
                for i, t in enumerate(used)
                if t.state is TrialState.COMPLETED
                or (same_point(X[i]).tobytes() not in measured and (not sems or _reported(S[i])))
            ]
            used, X = [used[i] for i in keep], [X[i] for i in keep]
            Y, S = [Y[i] for i in keep], [S[i] for i in keep]
        Xa = np.asarray(X, dtype=float).reshape(-1, dim)
        Ya = np.asarray(Y, dtype=float).reshape(-1, len(names))
        # the model takes standard errors only where every value has one; the noise judgement
        # takes the objective's wherever every row reports them (a constraint's may be missing)
        judged, full = _reported_columns(S) if used else (None, False)
        Yvar = judged if full else None
        feas = self.layout.feasible(Ya)
        Ym, Ymvar, model_layout = self.warp.warp(Ya, Yvar)
        noise = NoiseEstimate.of(Xa, Ya, judged, self.layout, self.noise)
        score = self.score(Ya, feas)
        return TrainingData(used, Xa, Ya, Yvar, score, feas, Ym, Ymvar, noise, model_layout)

    def score(self, Y: np.ndarray, feas: np.ndarray) -> np.ndarray:
        """Quality per row, higher is better (:func:`quality`)."""
        return quality(self.layout, Y, feas)


def quality(lay: Layout, Y: np.ndarray, feas: np.ndarray) -> np.ndarray:
    """Quality per row of ``Y`` (the modeled metrics of ``lay``), higher is better, every feasible
    row above every infeasible one. Computed on values scaled down by a power of two (exact), so
    that no difference or sum of finite values overflows."""
    if len(Y) == 0:
        return np.zeros(0)
    k = 2.0 ** -(2 + int(np.ceil(np.log2(max(1, len(lay.constraints))))))
    obj = lay.signed_objectives(Y)
    if obj.shape[1] == 1:
        s = obj[:, 0] * k
    else:  # mean percentile rank over objectives
        ranks = np.argsort(np.argsort(obj, axis=0), axis=0)
        s = np.mean(ranks / max(1, len(Y) - 1), axis=1) * k
    s = (s - s.min()) / max(np.ptp(s), 1e-12 * k)
    slack = [(Y[:, j] * k - b * k) * (1 if op == "<=" else -1) for j, op, b in lay.constraints]
    violation = np.clip(np.stack(slack, axis=1), 0, None).sum(axis=1) if slack else 0 * s
    return np.where(feas, s + 2.0, -violation / max(violation.max(), 1e-12 * k))


def _reported_columns(S: Sequence[Sequence[float | None]]) -> tuple[np.ndarray, bool]:
    """Squared standard errors of the columns every row reports (finite), 0 in the others; and
    whether every column is reported."""
    out = np.zeros((len(S), len(S[0])))
    full = True
    for j in range(out.shape[1]):
        col = [row[j] for row in S]
        if _reported(col):
            out[:, j] = np.minimum(np.abs(np.asarray(col, dtype=float)), MAX_SEM) ** 2
        else:
            full = False
    return out, full


def _reported(sems: Sequence[float | None]) -> bool:
    """Whether every one of a row's standard errors was reported, finite."""
    return all(s is not None and np.isfinite(s) for s in sems)


def fingerprint(trials: Sequence[Trial]) -> tuple:
    """Everything of ``trials`` that the training data depend on."""
    return tuple(map(trial_fingerprint, trials))


def trial_fingerprint(t: Trial) -> tuple:
    """Everything of one trial that the training data depend on."""
    return (
        t.id,
        t.state,
        t.origin,
        tuple(t.params.items()),
        tuple((k, m.value, m.sem) for k, m in t.metrics.items()),
    )
