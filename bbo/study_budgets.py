"""The fidelity side of one study (:mod:`bbo.pruning`): which budget each trial runs at, what a
tell at a budget leaves a trial in, and the values kept on its curve. A study without a fidelity
passes through unchanged."""

from __future__ import annotations

from typing import Any

from bbo.errors import SpecError
from bbo.spec import StudySpec
from bbo.storage import Continuation
from bbo.storage.base import Storage
from bbo.trial import Trial, TrialState

MAX_STEP = 2**63 - 1


class StudyBudgets:
    """Budgets of the trials of the study ``uid`` (its spec's fidelity and pruning)."""

    def __init__(self, spec: StudySpec, storage: Storage, uid: str):
        self.spec, self.storage, self.uid = spec, storage, uid

    def plan(
        self, trials: list[Trial], count: int, plan: dict[str, Any], strategy: object
    ) -> tuple[dict | None, list[Continuation]]:
        """For a study with a fidelity: its stored curves (the rungs are rebuilt from them, and a
        strategy that models budgets gets them in ``plan``) and, with promotion, the paused trials
        this ask continues. ``(None, [])`` otherwise."""
        if self.spec.fidelity is None:
            return None, []
        from bbo.pruning import Rungs

        curves = self.storage.curves(self.uid)
        if getattr(strategy, "uses_curves", False):
            plan["curves"] = curves
        conts = []
        if self.spec.pruning.promote:
            conts = Rungs(self.spec, trials, curves).promotions(count)
        return curves, conts

    def placements(self, trials: list[Trial], curves: dict | None, suggestions) -> list:
        """The bracket and budget each new trial starts at (None, None without a fidelity)."""
        if self.spec.fidelity is None:
            from bbo.pruning import Placement

            return [Placement(None, None) for _ in suggestions]
        from bbo.pruning import Rungs

        rungs = Rungs(self.spec, trials, curves or {})
        return rungs.placements([bool(getattr(s, "full_budget", False)) for s in suggestions])

    def check(self, budget: Any, field: str = "budget") -> float | None:
        """A budget given with a request: None when unset (0), else a number within the study's
        fidelity (a study without one takes none)."""
        if budget is None or (not isinstance(budget, bool) and budget == 0):
            return None
        f = self.spec.fidelity
        if f is None:
            raise SpecError(field, "this study declares no fidelity: leave the budget unset")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget != budget:
            raise SpecError(field, f"must be a number, got {budget!r}")
        if not 0 < budget <= f.max * (1 + 1e-9):
            raise SpecError(
                field, f"must be in (0, {f.max:g}], the fidelity's full budget; got {budget!r}"
            )
        return float(budget)

    def told_state(
        self, cur: Trial, state: TrialState, budget: float | None, curve_top: float | None
    ) -> tuple[TrialState, float | None]:
        """The state and budget a tell leaves ``cur`` in. A study with a fidelity completes a trial
        only at the full budget; with promotion, a result at the budget Ask handed out pauses it
        (PAUSED: a later Ask may continue it). Anything else below the full budget is refused:
        such a trial was stopped early and is told PRUNED."""
        from bbo.pruning import at_least, same_budget

        f = self.spec.fidelity
        if f is None:
            return state, cur.budget
        if state is TrialState.PRUNED:
            return state, budget if budget is not None else (curve_top or cur.resume_budget)
        if state is not TrialState.COMPLETED:
            return state, cur.budget
        b = budget if budget is not None else (cur.budget if cur.budget is not None else f.max)
        if at_least(b, f.max):
            return TrialState.COMPLETED, float(f.max)
        if self.spec.pruning.promote and cur.budget is not None and same_budget(b, cur.budget):
            return TrialState.PAUSED, float(cur.budget)
        handed = f" (it was handed out at {cur.budget:g})" if cur.budget is not None else ""
        raise SpecError(
            "budget",
            f"trial {cur.id} told at {f.name} {b:g}, below the full budget {f.max:g}{handed}: "
            "a trial stopped early is told with state PRUNED; a completed one at the full budget"
            + (
                " or, with promotion, at the budget Ask handed out"
                if self.spec.pruning.promote
                else ""
            ),
        )

    def record_value(self, cur: Trial, budget: float, value: float) -> None:
        """Keep a told value at ``budget`` in the trial's curve (where the rungs and the model read
        it, also after the trial is continued): at the step of an earlier value at that budget,
        else at step ``budget`` for an integer fidelity, else after the trial's last step."""
        from bbo.pruning import same_budget

        curve = self.storage.curves(self.uid, [cur.id]).get(cur.id, [])
        step = None
        for p in curve:
            if same_budget(p.budget, budget):
                if p.value == value:
                    return
                step = p.step
                break
        if step is None:
            used = {p.step for p in curve}
            whole = int(round(budget))
            integer = self.spec.fidelity is not None and self.spec.fidelity.integer
            if integer and whole not in used and 0 <= whole <= MAX_STEP:
                step = whole
            else:
                step = max(used, default=0) + 1
        self.storage.add_intermediate(self.uid, cur.id, step, float(value), float(budget))
