"""Multi-fidelity bookkeeping: the budget ladder, Hyperband brackets, the rungs, and asynchronous
successive halving (ASHA) decisions: stop a running trial (ReportIntermediate) or continue a paused
one (Ask, promotion).

Everything here is a pure function of the spec, the trials (state, budget, bracket) and their stored
curves (intermediate values with the budget each was measured at and the time it was stored).
Nothing is kept between calls, so after a restart, and on every replica sharing the database, the
rungs are rebuilt from what is stored and decide alike.

- **Ladder**: the budgets ``max / eta^j`` down to ``min`` (rounded for an integer fidelity), e.g.
  epochs 1, 3, 9, 27 for min 1, max 27, eta 3. Level ``K`` (the last) is the full budget.
- **Brackets** (Hyperband): bracket ``s`` starts at level ``s``; ASHA uses bracket 0 only (and
  bracket ``K``, the full budget at once, for the model's refinement steps). Hyperband spreads new
  trials over the brackets in proportion to Hyperband's trial counts per bracket.
- **Rung value**: a trial's value at level ``k`` is the first value it recorded at a budget at or
  past ``ladder[k]``.
- **Stopping** (``promote`` off): at every report, for each rung of its bracket the trial has
  reached (the full budget excepted), it must rank among the best ``max(1, n // eta)`` of the ``n``
  trials of its bracket that had reached that rung when it did (their rung value stored no later
  than its own; one that failed since still counts). That comparison is fixed once the trial
  reaches the rung, so repeated or late reports get the same answer, whichever replica answers.
- **Promotion** (``promote`` on): at an Ask, from the highest rung down, a PAUSED trial among the
  best ``n / e`` of the ``n`` trials of its bracket at its rung is continued to the next rung's
  budget (ASHA, Li et al. 2020: ``e = eta``); the storage applies it only while the trial is still
  PAUSED there. ``e`` grows to ``eta^(1 + STRICTNESS * rho)`` with the rank correlation ``rho > 0``
  of the values at this rung and the next (trials measured at both): when new configurations come
  from a model, most of each rung's newcomers beat its old members, and where low budgets already
  rank them as higher ones do, promoting fewer leaves more budget for new configurations. Until
  the study has a full-budget value, the best trial at the highest rung reached (the study's one
  best there, of any bracket) goes on even alone, rung by rung, while no trial runs above it,
  once that rung is the third (:data:`LONE_FROM`) or the one below the full budget. So GetBest
  has a result after eta^2 trials at the lowest rung and one trial's way up, whatever the number
  of rungs (bench_fidelity's four: about 1.5 full budgets, where waiting for eta trials at the
  rung below took 2-2.4; waiting at every rung took eta^(rungs - 2) trials, thousands for eleven).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bbo.spec import HYPERBAND, MAXIMIZE, StudySpec
from bbo.storage import Continuation, CurvePoint
from bbo.trial import Trial, TrialState

# the lowest rung from which the study's best trial goes on alone before the first full-budget
# value (below the full budget's own rung): the third, so it was best of eta twice over
LONE_FROM = 2
_REL = 1e-9  # budgets compared with this relative tolerance (a told 3.0 is the rung 3)
# Promotion's share (Rungs.share_divisor): the rank agreement of two rungs counts once this many
# trials were measured at both; at full agreement the best 1 / eta^(1 + STRICTNESS) go on (eta 3:
# 1 / 9). bench_fidelity, budget fraction to reach the plain run's final value (median), with the
# first full-budget value promoted early (Rungs.promotions): STRICTNESS 0.5 / 1: mf-Hartmann6 0.34 /
# 0.22 (20 seeds), sgd_mlp 0.16 / 0.21 (10 seeds; final error mean 0.032 / 0.030). Without that
# early value, 1 left two sgd_mlp seeds with no full-budget result at 3 budgets.
AGREEMENT_PAIRS = 3
STRICTNESS = 1.0


def ladder(spec: StudySpec) -> tuple[float, ...]:
    """The rung budgets of ``spec``'s fidelity, ascending; the last is the full budget. Empty
    without a fidelity."""
    f = spec.fidelity
    if f is None:
        return ()
    eta = float(spec.pruning.eta)
    out: list[float] = []
    b = float(f.max)
    while b >= f.min * (1 - _REL) and len(out) < 1000:
        out.append(b)
        b /= eta
    if f.integer:
        out = [float(max(f.min, math.floor(x + 0.5))) for x in out]
    return tuple(sorted(set(out)))


def rung_count(fidelity: Mapping, eta: float) -> int:
    """How many rungs a fidelity in its dict form has (for request limits, before parsing)."""
    lo, hi = float(fidelity["min"]), float(fidelity["max"])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= lo or eta <= 1:
        return 1
    # log(hi) - log(lo), not log(hi / lo): the ratio of 1e-300 and 1e300 overflows to inf
    return int(math.floor((math.log(hi) - math.log(lo)) / math.log(eta) + _REL)) + 1


def at_least(budget: float, level_budget: float) -> bool:
    return budget >= level_budget * (1 - _REL)


def same_budget(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= _REL * max(abs(a), abs(b))


def rung_point(curve: Iterable[CurvePoint], level_budget: float) -> CurvePoint | None:
    """A curve's value at the rung of ``level_budget``: its first value (smallest budget, then
    step) at a budget at or past it; None where it has none."""
    best: CurvePoint | None = None
    for p in curve:
        if p.budget is None or not at_least(p.budget, level_budget):
            continue
        if best is None or (p.budget, p.step) < (best.budget, best.step):
            best = p
    return best


def rung_points(curve: Sequence[CurvePoint], levels: Sequence[float]) -> list[CurvePoint | None]:
    """A curve's rung values at each level of ``levels`` (:func:`rung_point`)."""
    return [rung_point(curve, b) for b in levels]


def bracket_shares(k: int, eta: float) -> list[int]:
    """Hyperband's trial count per bracket for a ladder of ``k + 1`` levels: bracket ``s`` (first
    rung ``s``, ``k - s`` halvings) gets ``ceil((k + 1) / (k - s + 1) * eta^(k - s))``, so each
    bracket spends about the same budget."""
    return [math.ceil((k + 1) / (k - s + 1) * eta ** (k - s) - 1e-9) for s in range(k + 1)]


def trial_bracket(t: Trial, top: int) -> int:
    return min(max(int(t.bracket or 0), 0), top)


@dataclass(frozen=True)
class Placement:
    """Where a new trial starts: its bracket and the budget it is handed out at."""

    bracket: int | None
    budget: float | None


class Rungs:
    """The study's rungs, rebuilt from its trials and curves (see the module docstring)."""

    def __init__(
        self,
        spec: StudySpec,
        trials: Sequence[Trial],
        curves: Mapping[int, Sequence[CurvePoint]],
    ):
        """``curves``: each trial's values, whole or only those a rung reads
        (:meth:`bbo.curve_index.CurveSummary.points`: the same rung values)."""
        self.spec = spec
        self.levels = ladder(spec)
        self.top = len(self.levels) - 1
        self.eta = float(spec.pruning.eta)
        self.sign = 1.0 if spec.objectives[0].goal == MAXIMIZE else -1.0
        self.trials = {t.id: t for t in trials}
        self.curves = curves
        self.name = spec.fidelity.name if spec.fidelity is not None else "budget"

    # ---- reading the rungs ------------------------------------------------------------------------
    def point(self, trial_id: int, k: int) -> CurvePoint | None:
        """The trial's rung value at level ``k``: its first value at a budget at or past it."""
        return rung_point(self.curves.get(trial_id, ()), self.levels[k])

    def members(
        self, bracket: int, k: int, failed_after: float | None = None
    ) -> list[tuple[int, CurvePoint]]:
        """``(trial id, rung value)`` of the trials of ``bracket`` that reached level ``k`` (failed
        trials left out: their values are not trusted; with ``failed_after``, kept where they
        failed after that time, when they still counted)."""
        out = []
        for tid in self.curves:
            t = self.trials.get(tid)
            if t is None:
                continue
            if t.state is TrialState.FAILED and (
                failed_after is None or t.updated_at <= failed_after
            ):
                continue
            if trial_bracket(t, self.top) != bracket:
                continue
            p = self.point(tid, k)
            if p is not None:
                out.append((tid, p))
        return out

    # ---- stopping (ReportIntermediate) ------------------------------------------------------------
    def should_stop(self, trial: Trial, budget: float) -> tuple[bool, str]:
        """Whether ``trial``, now at ``budget``, failed a rung it has reached (see the module
        docstring); the reason names the rung and the rank. Never at the full budget: the trial
        has run its course, and stopping it would only turn its full-budget result into PRUNED."""
        if self.levels and at_least(budget, self.levels[-1]):
            return False, ""
        s = trial_bracket(trial, self.top)
        for k in range(s, self.top):
            if not at_least(budget, self.levels[k]):
                break
            mine = self.point(trial.id, k)
            if mine is None:
                continue
            # those there before it, as they stood then: a rival that failed since still counts
            # (else the decision changed after the trial had passed the rung)
            rivals = [
                p
                for tid, p in self.members(s, k, failed_after=mine.at)
                if tid == trial.id or p.at <= mine.at
            ]
            n = len(rivals)
            keep = max(1, int(n // self.eta))
            rank = 1 + sum(1 for p in rivals if self.sign * p.value > self.sign * mine.value)
            if rank > keep:
                return True, (
                    f"{self._policy()}: value {mine.value:g} at {self.name} {self.levels[k]:g} "
                    f"ranks {rank} of the {n} trials of bracket {s} that reached it; only the best "
                    f"{keep} continue"
                )
        return False, ""

    # ---- promotion (Ask) --------------------------------------------------------------------------
    def promotions(self, n: int) -> list[Continuation]:
        """Up to ``n`` PAUSED trials to continue, from the highest rung down: each among the best
        ``n_k / e`` of the ``n_k`` trials of its bracket at its rung (:meth:`share_divisor`); while
        the study has no full-budget value, the best one at the highest rung reached goes on alone
        (where no trial runs above it)."""
        out: list[Continuation] = []
        if n <= 0 or not self.levels:
            return out
        brackets = sorted({trial_bracket(t, self.top) for t in self.trials.values()})
        # the study's first full-budget value: the one best trial of the highest rung reached, of
        # any bracket, goes on alone (not each bracket's best), rung by rung, while no trial runs
        # above that rung, once that rung is the third or the one below the full budget: waiting
        # for eta trials at every rung takes eta^(rungs - 1) trials, and a chain from the lowest
        # rung would carry the study's first trial, however poor, to the full budget
        alone, alone_k = None, -1
        if not any(self.members(s, self.top) for s in brackets):
            for k in range(self.top - 1, -1, -1):
                reached = [m for s in brackets if s <= k for m in self.members(s, k)]
                if reached and k >= min(LONE_FROM, self.top - 1):
                    running = any(
                        t.state is TrialState.PENDING
                        and t.budget is not None
                        and t.budget > self.levels[k]
                        and not same_budget(t.budget, self.levels[k])
                        for t in self.trials.values()
                    )
                    if not running:
                        alone_k = k
                        alone = min(reached, key=lambda m: (-self.sign * m[1].value, m[0]))[0]
                    break
        for k in range(self.top - 1, -1, -1):
            e = self.share_divisor(k)
            for s in brackets:
                if s > k:
                    continue
                members = self.members(s, k)
                top = int(len(members) / e + 1e-9)
                if k == alone_k and any(tid == alone for tid, _ in members):
                    top = max(top, 1)  # alone is this bracket's best: ranked first
                ranked = sorted(members, key=lambda m: (-self.sign * m[1].value, m[0]))
                for rank, (tid, p) in enumerate(ranked[:top], start=1):
                    t = self.trials[tid]
                    if (
                        t.budget is None
                        or t.state is not TrialState.PAUSED
                        or not same_budget(t.budget, self.levels[k])
                    ):
                        continue
                    out.append(
                        Continuation(
                            tid,
                            float(t.budget),
                            self.levels[k + 1],
                            f"continued to {self.name} {self.levels[k + 1]:g}: value {p.value:g} "
                            f"at {self.levels[k]:g} ranks {rank} of {len(members)} (the best "
                            f"{top} go on)",
                        )
                    )
                    if len(out) >= n:
                        return out
        return out

    def agreement(self, k: int) -> tuple[float, int]:
        """``(Spearman rank correlation, pairs)`` of the values at rungs ``k`` and ``k + 1`` of
        the trials measured at both (the first measured below rung ``k + 1``'s budget)."""
        lo, hi = [], []
        for tid in self.curves:
            t = self.trials.get(tid)
            if t is None or t.state is TrialState.FAILED:
                continue
            a, b = self.point(tid, k), self.point(tid, k + 1)
            if a is None or b is None or a.budget is None or at_least(a.budget, self.levels[k + 1]):
                continue
            lo.append(a.value)
            hi.append(b.value)
        if len(lo) < AGREEMENT_PAIRS:
            return 0.0, len(lo)
        from scipy.stats import spearmanr  # here: scipy.stats is seconds of every CLI call's import

        rho = float(spearmanr(lo, hi).statistic)
        return (rho if math.isfinite(rho) else 0.0), len(lo)

    def share_divisor(self, k: int) -> float:
        """Promotion keeps the best ``1 / e`` of rung ``k``: ``e = eta^(1 + STRICTNESS * rho)`` for
        the rank correlation ``rho > 0`` between rungs ``k`` and ``k + 1`` (:meth:`agreement`, once
        :data:`AGREEMENT_PAIRS` trials reached both), ASHA's ``e = eta`` otherwise: where low
        budgets rank configurations as the next rung does, fewer go on and more budget buys new
        ones."""
        rho, pairs = self.agreement(k)
        if pairs < AGREEMENT_PAIRS or rho <= 0:
            return self.eta
        return self.eta ** (1.0 + STRICTNESS * rho)

    # ---- new trials -------------------------------------------------------------------------------
    def placements(self, full: Sequence[bool]) -> list[Placement]:
        """Bracket and budget of each new trial; ``full[i]``: start it at the full budget (a model
        refinement step, which low budgets cannot judge)."""
        spec, top = self.spec, self.top
        if not spec.rung_based:
            return [Placement(None, self.levels[-1] if self.levels else None) for _ in full]
        counts = [0] * (top + 1)
        for t in self.trials.values():
            if t.bracket is not None:
                counts[trial_bracket(t, top)] += 1
        shares = bracket_shares(top, self.eta) if spec.pruning_policy == HYPERBAND else None
        out = []
        for f in full:
            if f:
                s = top
            elif shares is None:
                s = 0
            else:  # the bracket furthest below its share of the trials so far
                total = sum(counts) + 1
                weight = sum(shares)
                s = max(range(top + 1), key=lambda j: (shares[j] * total / weight - counts[j], -j))
            counts[s] += 1
            budget = self.levels[s] if spec.pruning.promote else self.levels[-1]
            out.append(Placement(s, budget))
        return out

    def _policy(self) -> str:
        return "Hyperband" if self.spec.pruning_policy == HYPERBAND else "ASHA"
