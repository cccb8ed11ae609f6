"""Model-based configurations for studies with a fidelity (BOHB-like, with a GP).

New trials of a multi-fidelity study start at low budgets, so most of what is known about a point is
its value at some rung, not at the full budget. :class:`MultiFidelityStrategy` fits the study's GP
(the whole :class:`~bbo.strategy.generation.GenerationStrategy`: warping, acquisition, refinement
steps) on every trial that has a value, pruned ones included: each enters with its value at the
highest rung it reached, carried to the full budget by straight lines between neighbouring rungs
(least squares over the trials measured at both; the identity until three are). So the model sees
how the objective changes with the budget (a learning curve's drop, a simulator's bias) where
BOHB's models see one budget at a time and drop the pruned points, and new configurations for the
lowest rung come from BO over everything measured. Pruning decides how far each configuration gets.

Once the map into the full budget is fit, the model's refinement steps (``bo_exploit``,
``bo_local``: the predicted optimum, a local quadratic step) start at the full budget, where they
refine the optimum by amounts low budgets cannot resolve, while such trials hold at most one
Hyperband bracket's share of the budget spent (``1 / rungs``); past it they start low like the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from bbo.pruning import at_least, ladder
from bbo.spec import ParameterPrior, StudySpec
from bbo.storage import CurvePoint
from bbo.strategy.base import ACTIVE_STATUS, AskInfo, StudyStatus, Suggestion
from bbo.strategy.generation import GenerationStrategy
from bbo.trial import Metric, Origin, Trial, TrialState

REFINEMENT = (Origin.BO_EXPLOIT.value, Origin.BO_LOCAL.value)
MIN_PAIRS = 3  # trials measured at two neighbouring rungs before the map between them is fit


class MultiFidelityStrategy:
    """Suggestions for a study with a fidelity (see the module docstring). Implements
    :class:`~bbo.strategy.base.Strategy`, :class:`~bbo.strategy.base.SharesModelState` and
    :class:`~bbo.strategy.base.UsesCurves` (the study hands it the stored curves) and
    :class:`~bbo.strategy.base.UsesSources`."""

    uses_curves: Literal[True] = True

    def __init__(self, spec: StudySpec, priors: Sequence[ParameterPrior] | None = None):
        if spec.fidelity is None:
            raise ValueError("MultiFidelityStrategy needs a study with a fidelity")
        self.spec = spec
        self.inner = GenerationStrategy(spec, priors)
        self.levels = ladder(spec)
        self.level: int | None = None  # the rung the last suggestion was modeled on

    @property
    def last(self) -> AskInfo:
        return self.inner.last

    def bound_time(self, until: float | None) -> None:
        self.inner.bound_time(until)

    def suggest(
        self,
        trials: Sequence[Trial],
        n: int = 1,
        *,
        warmstart: Sequence[Suggestion] = (),
        proposals: Sequence[Suggestion] = (),
        priors: Sequence[ParameterPrior] | None = None,
        curves: Mapping[int, Sequence[CurvePoint]] | None = None,
    ) -> list[Suggestion]:
        """``n`` new points from the GP over every measured trial (see the module docstring)."""
        curves = curves or {}
        level, view = self.model_view(trials, curves)
        self.level = level
        out = self.inner.suggest(view, n, warmstart=warmstart, proposals=proposals, priors=priors)
        top = len(self.levels) - 1
        if level == top:
            full, total = self.spent(trials, curves)
            for s in out:
                if s.origin in REFINEMENT and full <= total / (top + 1):
                    s.full_budget = True
                    full += self.levels[-1]
        return out

    def spent(
        self, trials: Sequence[Trial], curves: Mapping[int, Sequence[CurvePoint]]
    ) -> tuple[float, float]:
        """``(budget of the trials started at the full budget, budget of all)``: a trial counts
        the largest budget it reported or was told at (a running one at the full budget: what it
        will take). Refinement steps start at the full budget while those hold at most the share
        of one Hyperband bracket, ``1 / rungs`` of the budget."""
        top = len(self.levels) - 1
        full = total = 0.0
        for t in trials:
            reached = max((p.budget for p in curves.get(t.id, ()) if p.budget), default=0.0)
            if t.state is not TrialState.PENDING and t.budget:
                reached = max(reached, t.budget)
            if t.bracket == top:
                reached = max(reached, self.levels[-1])
                full += reached
            total += reached
        return full, total

    def status(self, trials: Sequence[Trial]) -> StudyStatus:
        """Always ACTIVE: a study with a fidelity has no outcome constraints."""
        return ACTIVE_STATUS

    def set_sources(self, sources: Sequence) -> None:
        """The source studies' data (:mod:`bbo.transfer`): the GP over every measured trial
        learns from them as a study without a fidelity does. (Without this the service read the
        sources on every ask, listed them as used, and no ask used them.)"""
        self.inner.set_sources(sources)

    def transfer_report(self) -> dict | None:
        return self.inner.transfer_report()

    def export_state(self):
        return self.inner.export_state()

    def import_state(self, n_fit: int, hyper: dict) -> None:
        self.inner.import_state(n_fit, hyper)

    # ---- the trials as the model sees them -----------------------------------------------------
    def value_at(
        self, t: Trial, k: int, curves: Mapping[int, Sequence[CurvePoint]]
    ) -> float | None:
        """``t``'s objective measured at rung ``k``: its first value at a budget from the rung's
        to the next one's (the full budget's: its told result)."""
        top = len(self.levels) - 1
        obj = self.spec.objectives[0].name
        if k == top and t.state is TrialState.COMPLETED and obj in t.metrics:
            return t.metrics[obj].value
        lo = self.levels[k]
        hi = self.levels[k + 1] if k < top else float("inf")
        best: CurvePoint | None = None
        for p in curves.get(t.id, ()):
            if p.budget is None or not at_least(p.budget, lo) or at_least(p.budget, hi):
                continue
            if best is None or (p.budget, p.step) < (best.budget, best.step):
                best = p
        return None if best is None else best.value

    def rung_maps(self, values: list[dict[int, float]]) -> list[tuple[float, float, int]]:
        """Per pair of neighbouring rungs ``k -> k + 1``: ``(slope, intercept, pairs)`` of the
        least-squares line from the trials measured at both (identity below
        :data:`MIN_PAIRS` pairs). A slope that is not positive is a shift of the means instead:
        the pairs are the best of a rung, which noise often ranks anew at the next, and a slope
        of 0 gave every trial of the lower rung one value (the map must keep the order)."""
        maps = []
        for k in range(len(values) - 1):
            both = [(values[k][i], values[k + 1][i]) for i in values[k] if i in values[k + 1]]
            if len(both) < MIN_PAIRS:
                maps.append((1.0, 0.0, len(both)))
                continue
            a = np.array(both, dtype=float)
            x, y = a[:, 0], a[:, 1]
            var = float(np.var(x))
            slope = float(np.cov(x, y, bias=True)[0, 1] / var) if var > 0 else 0.0
            if not slope > 0.0:
                slope = 1.0
            maps.append((slope, float(np.mean(y) - slope * np.mean(x)), len(both)))
        return maps

    def model_view(
        self, trials: Sequence[Trial], curves: Mapping[int, Sequence[CurvePoint]]
    ) -> tuple[int | None, list[Trial]]:
        """``(rung, trials)`` for the GP: every trial with a value, completed at its value at the
        highest rung it reached carried to the full budget through :meth:`rung_maps`; running ones
        without a value pending, the rest spent. ``rung``: the full budget once the map into it is
        fit on trials (then refinement steps start there), else the highest rung with values."""
        obj = self.spec.objectives[0].name
        top = len(self.levels) - 1
        values: list[dict[int, float]] = [{} for _ in self.levels]
        for t in trials:
            if t.state is TrialState.FAILED:
                continue
            for k in range(top + 1):
                v = self.value_at(t, k, curves)
                if v is not None:
                    values[k][t.id] = v
        maps = self.rung_maps(values)
        view = []
        for t in trials:
            reached = [k for k in range(top + 1) if t.id in values[k]]
            if reached:
                k = reached[-1]
                v = values[k][t.id]
                for slope, icpt, _ in maps[k:]:
                    v = slope * v + icpt
                state, metrics = TrialState.COMPLETED, {obj: Metric(v)}
            elif t.state is TrialState.PENDING:
                state, metrics = TrialState.PENDING, {}
            else:
                state, metrics = TrialState.FAILED, {}
            view.append(
                Trial(id=t.id, params=t.params, state=state, metrics=metrics, origin=t.origin)
            )
        level: int | None
        if top > 0 and maps[-1][2] >= MIN_PAIRS:
            level = top
        else:  # the map into the full budget not fit: a rung below it, unless none has values
            below = [k for k in range(top) if values[k]]
            level = below[-1] if below else (top if values[top] else None)
        return level, view
