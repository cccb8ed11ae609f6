"""The study's best so far: the best feasible trial (one objective) or the feasible Pareto front.

Pure functions of the spec and a list of trials, and :class:`FrontCache`, a study's front kept
between calls. Only COMPLETED trials that report every modeled metric as a finite number count; a
trial is feasible when it meets every outcome constraint.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Collection, Sequence

import numpy as np

from bbo.spec import StudySpec
from bbo.trial import Trial, TrialState


def usable(spec: StudySpec, trial: Trial) -> bool:
    """Completed, with a finite value for every objective and constrained metric."""
    if trial.state is not TrialState.COMPLETED:
        return False
    for name in spec.modeled_metrics:
        m = trial.metrics.get(name)
        if m is None or not math.isfinite(m.value):
            return False
    return True


def is_feasible(spec: StudySpec, trial: Trial) -> bool:
    return usable(spec, trial) and spec.is_feasible({k: m.value for k, m in trial.metrics.items()})


def feasible_trials(spec: StudySpec, trials: Sequence[Trial]) -> list[Trial]:
    return [t for t in trials if is_feasible(spec, t)]


def best_trial(
    spec: StudySpec, trials: Sequence[Trial], objective: str | None = None
) -> Trial | None:
    """The feasible trial with the best value of ``objective`` (default: the first objective),
    respecting its goal; ties go to the earliest trial id. None when no trial is feasible."""
    obj = (
        next((o for o in spec.objectives if o.name == objective), None)
        if objective
        else spec.objectives[0]
    )
    if obj is None:
        raise KeyError(f"unknown objective {objective!r}")
    best: Trial | None = None
    for t in sorted(feasible_trials(spec, trials), key=lambda t: t.id):
        if best is None or obj.sign * t.value(obj.name) > obj.sign * best.value(obj.name):
            best = t
    return best


def pareto_front(spec: StudySpec, trials: Sequence[Trial]) -> list[Trial]:
    """Feasible trials no other feasible trial dominates (at least as good in every objective and
    better in one), sorted by id. Trials with identical objective vectors are all kept."""
    cands = sorted(feasible_trials(spec, trials), key=lambda t: t.id)
    if not cands:
        return []
    keep = nondominated(objective_matrix(spec, cands))
    return [t for t, k in zip(cands, keep, strict=True) if k]


def objective_matrix(spec: StudySpec, trials: Sequence[Trial]) -> np.ndarray:
    """``len(trials) x objectives``, every column to maximize (a minimized objective negated)."""
    k = len(spec.objectives)
    F = np.array(
        [[o.sign * t.value(o.name) for o in spec.objectives] for t in trials], dtype=np.float64
    ).reshape(len(trials), k)
    return F + 0.0  # -0.0 is 0.0


_BLOCK = 64  # rows compared all against all in one step of the divide and conquer
_PAIRS = 16384  # row pairs compared all against all in one step of _covered


def nondominated(F: np.ndarray) -> np.ndarray:
    """Whether each row of ``F`` (n x m, every column to maximize, finite) is on the Pareto front:
    no other row is at least as large in every column and larger in one. Equal rows share their
    fate (all kept or none).

    The distinct rows in decreasing lexicographic order, where a row's dominators all come before
    it. Two columns: a running max of the second. More: a divide and conquer after Kung, Luccio
    and Preparata (J. ACM 22(4), 1975), numpy doing the inner loops: each half's front found
    recursively, then the second half's rows that the first half's front dominates, by
    :func:`_covered` (the first half is at least as large in the first column: only the other
    m - 1 count). O(n log n) time for 2 objectives, O(n log^(m-1) n) for m >= 3, whatever the
    front's size (comparing each row with the front kept so far costs n x front: quadratic where
    every row is on it, 22 s for 20,000 rows of 3 columns); memory linear in n, no n x n array.
    """
    n, m = F.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if m == 1:
        return F[:, 0] == F[:, 0].max()
    order = np.lexsort(F.T[::-1])[::-1]  # decreasing lexicographic order
    S = F[order]
    first = np.ones(n, dtype=bool)  # the first of each run of equal rows
    first[1:] = np.any(S[1:] != S[:-1], axis=1)
    U = np.ascontiguousarray(S[first])
    if m == 2:  # a row's dominators come before it: the running max of the second column
        top = np.maximum.accumulate(U[:, 1])
        dominated = np.zeros(len(U), dtype=bool)
        dominated[1:] = top[:-1] >= U[1:, 1]
    else:
        dominated = np.zeros(len(U), dtype=bool)
        _dominated(U, 0, len(U), dominated)
    keep = np.empty(n, dtype=bool)
    keep[order] = ~dominated[np.cumsum(first) - 1]
    return keep


def _dominated(U: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Set ``out[i]`` for the rows ``U[lo:hi]`` (distinct, decreasing lexicographic order) that
    another of them dominates: one at least as large in every column (being distinct)."""
    if hi - lo <= _BLOCK:
        B = U[lo:hi]
        ge = np.all(B[:, None, :] >= B[None, :, :], axis=2)  # ge[j, i]: row j >= row i
        np.fill_diagonal(ge, False)
        out[lo:hi] |= ge.any(axis=0)
        return
    mid = (lo + hi) // 2
    _dominated(U, lo, mid, out)
    _dominated(U, mid, hi, out)
    # a row the first half dominates is dominated by the first half's front (transitivity)
    a = lo + np.flatnonzero(~out[lo:mid])
    b = mid + np.flatnonzero(~out[mid:hi])
    if len(a) and len(b):
        out[b[_covered(U[a, 1:], U[b, 1:])]] = True


def _covered(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """For each row of ``B``: whether some row of ``A`` is at least as large in every column."""
    na, nb, k = len(A), len(B), B.shape[1]
    if na == 0 or nb == 0:
        return np.zeros(nb, dtype=bool)
    if k == 1:
        return A[:, 0].max() >= B[:, 0]
    if k == 2:  # A by its first column, largest first, with the running max of the second
        order = np.argsort(-A[:, 0], kind="stable")
        top = np.maximum.accumulate(A[order, 1])
        at_least = np.searchsorted(-A[order, 0], -B[:, 0], side="right")  # rows of A >= b's first
        out = np.zeros(nb, dtype=bool)
        some = at_least > 0
        out[some] = top[at_least[some] - 1] >= B[some, 1]
        return out
    if na * nb * k <= _PAIRS:
        return np.any(np.all(A[None, :, :] >= B[:, None, :], axis=2), axis=1)
    # split on the first column, every value of the high part above every value of the low part
    v = np.concatenate([A[:, 0], B[:, 0]])
    least = v.min()
    if least == v.max():  # the first column holds for every pair
        return _covered(A[:, 1:], B[:, 1:])
    t = np.partition(v, len(v) // 2)[len(v) // 2]
    a_high = A[:, 0] > t if t == least else A[:, 0] >= t
    b_high = B[:, 0] > t if t == least else B[:, 0] >= t
    out = np.zeros(nb, dtype=bool)
    # a high row of B: a low row of A is smaller in the first column
    out[b_high] = _covered(A[a_high], B[b_high])
    # a low row of B: a high row of A is larger in the first column, the others are compared whole
    low = np.flatnonzero(~b_high)
    hit = _covered(A[a_high, 1:], B[low, 1:])
    rest = low[~hit]
    out[low[hit]] = True
    out[rest] = _covered(A[~a_high], B[rest])
    return out


class FrontCache:
    """A study's feasible Pareto front, kept between calls and keyed by the set of its completed
    trials (a completed trial's metrics never change). Found once among all of them
    (:func:`nondominated`), then brought up to date with the trials completed since: a new one is
    compared with the front only (dominated by it, or joins it and drops those it dominates), so a
    GetBest or a dashboard summary without new results costs no search. Of one objective the
    front is the trials of its best value, the first by id :func:`best_trial`. Thread-safe."""

    ONE_BY_ONE = 32  # more new feasible trials at once: the front found again among front + them

    def __init__(self, spec: StudySpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._ids: set[int] | None = None  # the completed trials the front is of
        self._front: list[Trial] = []  # by id
        self._F = np.zeros((0, len(spec.objectives)))  # their objective_matrix rows

    def front(
        self, completed: Collection[int], read: Callable[[Collection[int] | None], Sequence[Trial]]
    ) -> list[Trial]:
        """The front of the completed trials numbered ``completed``. ``read(numbers)``: those
        trials (those completed since the last call); ``read(None)``: every completed trial (the
        first call, or where a trial left the set)."""
        with self._lock:
            if self._ids is None or not self._ids.issubset(completed):
                trials = [t for t in read(None) if t.state is TrialState.COMPLETED]
                self._set(pareto_front(self.spec, trials))
                self._ids = {t.id for t in trials}
            elif len(self._ids) < len(completed):
                new = set(completed) - self._ids
                self._add(feasible_trials(self.spec, read(sorted(new))))
                self._ids |= new
            return list(self._front)

    def _set(self, front: list[Trial]) -> None:
        self._front = front
        self._F = objective_matrix(self.spec, front)

    def _add(self, trials: Sequence[Trial]) -> None:
        if len(trials) > self.ONE_BY_ONE:
            self._set(pareto_front(self.spec, [*self._front, *trials]))
            return
        for t, f in zip(trials, objective_matrix(self.spec, trials), strict=True):
            F = self._F
            if np.any(np.all(F >= f, axis=1) & np.any(F > f, axis=1)):
                continue  # dominated by the front
            gone = np.all(f >= F, axis=1) & np.any(f > F, axis=1)
            if gone.any():
                self._front = [u for u, g in zip(self._front, gone, strict=True) if not g]
                F = F[~gone]
            at = bisect.bisect_left(self._front, t.id, key=lambda u: u.id)
            self._front.insert(at, t)
            self._F = np.insert(F, at, f, axis=0)


def incumbents(spec: StudySpec, trials: Sequence[Trial]) -> list[Trial]:
    """``[best_trial]`` for one objective (empty when none is feasible), the Pareto front for several."""
    if len(spec.objectives) == 1:
        b = best_trial(spec, trials)
        return [b] if b is not None else []
    return pareto_front(spec, trials)


def hypervolume(spec: StudySpec, trials: Sequence[Trial], reference: dict[str, float]) -> float:
    """Hypervolume of the feasible Pareto front w.r.t. ``reference`` (metric units, per objective)."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    front = pareto_front(spec, trials)
    ref = torch.tensor(
        [o.sign * float(reference[o.name]) for o in spec.objectives], dtype=torch.float64
    )
    if not front:
        return 0.0
    F = torch.tensor(
        [[o.sign * t.value(o.name) for o in spec.objectives] for t in front], dtype=torch.float64
    )
    F = F[(F > ref).all(dim=1)]
    if len(F) == 0:
        return 0.0
    return float(Hypervolume(ref_point=ref).compute(F))
