"""Model-based configurations for studies with a fidelity (BOHB-like).

New trials of a multi-fidelity study start at low budgets, so most of what is known about a point is
its value at some rung, not at the full budget. :class:`MultiFidelityStrategy` fits the study's GP
(the whole :class:`~bbo.strategy.generation.GenerationStrategy`: warping, acquisition, refinement
steps) on the values at one budget: the largest rung with enough trials to model (BOHB's rule, Falkner
et al. 2018, with a GP instead of a KDE). Trials running count as pending points (the acquisition
keeps away from them), the others without a value there as spent points (never suggested again).
So pruning decides how far each configuration gets, and the model decides which configurations are
tried: the first ones come from the space-filling design, later ones from BO over the best-informed
rung.

Once the full budget itself has enough results, the model's refinement steps (``bo_exploit``,
``bo_local``: the predicted optimum, a local quadratic step) are started at the full budget: they
refine the optimum by amounts low budgets cannot resolve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bbo.pruning import at_least, ladder
from bbo.spec import ParameterPrior, StudySpec
from bbo.storage import CurvePoint
from bbo.strategy.base import ACTIVE_STATUS, AskInfo, StudyStatus, Suggestion
from bbo.strategy.generation import GenerationStrategy
from bbo.trial import Metric, Origin, Trial, TrialState

REFINEMENT = (Origin.BO_EXPLOIT.value, Origin.BO_LOCAL.value)


def model_points(dim: int) -> int:
    """Results a rung needs before the model is fit on it: d + 2 (BOHB's d + 1, and one more: a
    GP's hyperparameters need a little more than the minimum)."""
    return dim + 2


class MultiFidelityStrategy:
    """Suggestions for a study with a fidelity (see the module docstring). Implements
    :class:`~bbo.strategy.base.Strategy` and :class:`~bbo.strategy.base.SharesModelState`; the
    study hands it the stored curves (``uses_curves``)."""

    uses_curves = True

    def __init__(self, spec: StudySpec, priors: Sequence[ParameterPrior] | None = None):
        if spec.fidelity is None:
            raise ValueError("MultiFidelityStrategy needs a study with a fidelity")
        self.spec = spec
        self.inner = GenerationStrategy(spec, priors)
        self.levels = ladder(spec)
        self.n_min = model_points(spec.space.dim)
        self.level: int | None = None  # the rung the last suggestion was modeled on

    @property
    def last(self) -> AskInfo:
        return self.inner.last

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
        """``n`` new points, from the GP on the best-informed rung (see the module docstring)."""
        level, view = self.model_view(trials, curves or {})
        self.level = level
        out = self.inner.suggest(view, n, warmstart=warmstart, proposals=proposals, priors=priors)
        if level == len(self.levels) - 1:
            for s in out:
                s.full_budget = s.origin in REFINEMENT
        return out

    def status(self, trials: Sequence[Trial]) -> StudyStatus:
        """Always ACTIVE: a study with a fidelity has no outcome constraints."""
        return ACTIVE_STATUS

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

    def model_view(
        self, trials: Sequence[Trial], curves: Mapping[int, Sequence[CurvePoint]]
    ) -> tuple[int | None, list[Trial]]:
        """``(rung, trials)``: the highest rung with :func:`model_points` values, and the trials
        as completed at that rung's values, pending while running, spent otherwise.
        ``(None, ...)`` before any rung has enough: then nothing is modeled (design points)."""
        obj = self.spec.objectives[0].name
        level, values = None, {}
        for k in range(len(self.levels) - 1, -1, -1):
            vals = {}
            for t in trials:
                if t.state is TrialState.FAILED:
                    continue
                v = self.value_at(t, k, curves)
                if v is not None:
                    vals[t.id] = v
            if len(vals) >= self.n_min:
                level, values = k, vals
                break
        view = []
        for t in trials:
            if t.id in values:
                state, metrics = TrialState.COMPLETED, {obj: Metric(values[t.id])}
            elif t.state is TrialState.PENDING:
                state, metrics = TrialState.PENDING, {}
            else:
                state, metrics = TrialState.FAILED, {}
            view.append(
                Trial(id=t.id, params=t.params, state=state, metrics=metrics, origin=t.origin)
            )
        return level, view
