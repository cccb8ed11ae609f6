"""The fidelity and early-stopping side of one study (:mod:`bbo.pruning`, :mod:`bbo.stopping`):
which budget each trial runs at, what a tell at a budget leaves a trial in, the values kept on its
curve, and whether a reported intermediate value stops the trial. A study without a fidelity
passes through unchanged."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bbo.errors import SpecError
from bbo.spec import MAXIMIZE, MEDIAN, NO_PRUNING, StudySpec
from bbo.storage import Continuation, CurvePoint
from bbo.storage.base import Storage
from bbo.strategy.base import Suggestion, UsesCurves
from bbo.trial import Metric, Trial, TrialState

if TYPE_CHECKING:
    from bbo.pruning import Placement
    from bbo.stopping import MedianRule

MAX_STEP = 2**63 - 1


class StudyBudgets:
    """Budgets of the trials of the study ``uid`` (its spec's fidelity and pruning)."""

    def __init__(self, spec: StudySpec, storage: Storage, uid: str):
        from bbo.curve_index import CurveIndex
        from bbo.pruning import ladder

        self.spec, self.storage, self.uid = spec, storage, uid
        sign = 1.0 if spec.objectives[0].goal == MAXIMIZE else -1.0
        # the curves as ReportIntermediate's decision reads them (kept, not re-read each time)
        self.curves = CurveIndex(storage, uid, sign, ladder(spec))

    def add_intermediate(
        self,
        number: int,
        step: int,
        value: float,
        budget: float | None,
        max_steps: int = 0,
        check: Callable[[TrialState, str], None] | None = None,
    ) -> bool:
        """Store a trial's value (:meth:`bbo.storage.base.Storage.add_intermediate`) and tell the
        kept curves."""
        self.curves.writing([number])
        try:
            return self.storage.add_intermediate(
                self.uid, number, step, value, budget, max_steps=max_steps, check=check
            )
        finally:  # whether it failed before or after the commit, re-read the trial's curve
            self.curves.written([number])

    def plan(
        self, trials: list[Trial], count: int, plan: dict[str, Any], strategy: object
    ) -> tuple[dict | None, list[Continuation]]:
        """For a study with a fidelity: its curves (the rungs are rebuilt from them, and a
        strategy that models budgets gets them in ``plan``) and, with promotion, the paused trials
        this ask continues. ``(None, [])`` otherwise.

        The curves are the few values of each that Ask's readers use
        (:meth:`bbo.curve_index.CurveSummary.points`), from :attr:`curves` (kept up to date, not
        re-read): reading every stored value made each Ask cost O(all values of the study), up to
        ``--max-steps-per-trial`` per trial (3.5 s for 100 trials of 10,000 values)."""
        if self.spec.fidelity is None:
            return None, []
        from bbo.pruning import Rungs

        summaries = self.curves.summaries()
        curves = {n: summaries[n].points() for n in sorted(summaries)}
        if isinstance(strategy, UsesCurves) and strategy.uses_curves:
            plan["curves"] = curves
        conts = []
        if self.spec.pruning.promote:
            conts = Rungs(self.spec, trials, curves).promotions(count)
        return curves, conts

    def placements(
        self, trials: list[Trial], curves: dict | None, suggestions: Sequence[Suggestion]
    ) -> list[Placement]:
        """The bracket and budget each new trial starts at (None, None without a fidelity)."""
        if self.spec.fidelity is None:
            from bbo.pruning import Placement

            return [Placement(None, None) for _ in suggestions]
        from bbo.pruning import Rungs

        rungs = Rungs(self.spec, trials, curves or {})
        return rungs.placements([s.full_budget for s in suggestions])

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

    def check_added(self, budget: Any) -> float | None:
        """The budget of an added trial: the fidelity's full budget (``budget`` must be unset or
        that); None without a fidelity."""
        checked = self.check(budget)
        f = self.spec.fidelity
        if f is None:
            return checked
        from bbo.pruning import at_least

        if checked is not None and not at_least(checked, f.max):
            raise SpecError(
                "budget",
                f"an added trial is a result at the full budget ({f.name} {f.max:g}); got "
                f"{checked:g}",
            )
        return float(f.max)

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
        self.add_intermediate(cur.id, step, float(value), float(budget))

    def last_reported(
        self, number: int, state: TrialState, metrics: Mapping[str, Metric]
    ) -> dict[str, Metric] | None:
        """For a PRUNED tell without the objective: ``metrics`` plus the objective's last reported
        value (as Optuna keeps a pruned trial's last intermediate value), so the stopped trial
        shows where it stood. None where there is nothing to add."""
        obj = self.spec.objectives[0].name
        if state is not TrialState.PRUNED or obj in metrics:
            return None
        curve = self.storage.curves(self.uid, [number]).get(number, [])
        if not curve:
            return None
        return {**metrics, obj: Metric(max(curve, key=lambda p: p.step).value)}

    def told_trial(self, number: int) -> Trial | None:
        """The stored trial a tell is about, read once for :meth:`earlier_run` and
        :meth:`before_tell` (None without a fidelity: neither needs it)."""
        return None if self.spec.fidelity is None else self.storage.get_trial(self.uid, number)

    def before_tell(
        self,
        cur: Trial | None,
        state: TrialState,
        budget: float | None,
        metrics: Mapping[str, Metric],
        accepts: Callable[[Trial, TrialState], bool],
    ) -> tuple[float | None, bool]:
        """For a COMPLETED or PRUNED tell in a study with a fidelity, the told objective joins the
        trial's curve first (one that fails after it leaves a value the retry writes again).
        Returns the highest budget on the trial's curve (None where there is none, or nothing to
        do) and whether a value was written: a tell the trial then refuses (another, different
        tell won the race) calls :meth:`after_refused_tell`. ``accepts``: whether the tell may
        change the trial."""
        if self.spec.fidelity is None or state not in (TrialState.COMPLETED, TrialState.PRUNED):
            return None, False
        if cur is None or not accepts(cur, state):
            return None, False
        curve = self.storage.curves(self.uid, [cur.id]).get(cur.id, [])
        curve_top = max((p.budget for p in curve if p.budget is not None), default=None)
        _, at = self.told_state(cur, state, budget, curve_top)
        obj = self.spec.objectives[0].name
        if at is not None and obj in metrics:
            self.record_value(cur, at, metrics[obj].value)
            return curve_top, True
        return curve_top, False

    def earlier_run(
        self,
        cur: Trial | None,
        state: TrialState,
        budget: float | None,
        metrics: Mapping[str, Metric],
        curve: Sequence[CurvePoint] | None = None,
    ) -> Trial | None:
        """A tell about a run the trial has since moved past: with promotion a PAUSED trial is
        continued by a later Ask (PENDING again, from ``resume_budget`` to a higher ``budget``).
        A tell at or below where it resumed is about an earlier hand-out: the same result again
        (a retry whose reply was lost: the curve holds that value at that budget) returns the
        trial, to be answered as a duplicate; anything else is refused, as it would otherwise
        finish, fail or prune the continuation another worker is running. A COMPLETED tell without
        a budget (the trial named by its id alone) is about the run handed out last, unless its
        objective is the result of one of the trial's earlier runs (the curve's value at a budget
        it was paused at): then it is the tell that paused the trial, repeated, and returns the
        trial as well; it never finishes or pauses the continuation with the earlier result (a
        continuation whose result is exactly its earlier one is told apart by its budget). None:
        not such a tell. ``curve``: the trial's curve, where the caller has read it."""
        if self.spec.fidelity is None or cur is None or cur.resume_budget is None:
            return None
        from bbo.pruning import at_least, same_budget

        if budget is not None and not at_least(cur.resume_budget, budget):
            return None
        obj = self.spec.objectives[0].name
        if state is TrialState.COMPLETED and obj in metrics:
            if curve is None:
                curve = self.storage.curves(self.uid, [cur.id]).get(cur.id, [])
            told = metrics[obj].value
            runs = [budget] if budget is not None else self._paused_at(cur)
            if any(p.value == told and any(same_budget(p.budget, b) for b in runs) for p in curve):
                return cur
        if budget is None:
            return None
        name = self.spec.fidelity.name
        raise SpecError(
            "budget",
            f"trial {cur.id} told at {name} {budget:g}, but it was continued from "
            f"{cur.resume_budget:g} since and is handed out at {cur.budget:g}: this tell is about "
            "the earlier run, whose result is stored; the continuation is told at its own budget",
        )

    def _paused_at(self, cur: Trial) -> list[float]:
        """The budgets a continued trial was paused at: the rungs from its bracket's first (where
        Ask handed it out) up to the one it resumed from."""
        from bbo.pruning import at_least, ladder, trial_bracket

        levels = ladder(self.spec)
        first = trial_bracket(cur, len(levels) - 1)
        resumed = cur.resume_budget if cur.resume_budget is not None else 0.0
        return [b for b in levels[first:] if at_least(resumed, b)]

    def run_check(
        self,
        number: int,
        state: TrialState,
        budget: float | None,
        metrics: Mapping[str, Metric],
    ) -> Callable[[Trial], bool] | None:
        """With promotion, :meth:`earlier_run` for the trial as a tell's write finds it (under its
        row lock): an Ask may continue the trial between the tell's first read and its write, and
        a repeated tell checked against that read alone finished the continuation with the earlier
        result. True: a repeat of an earlier run's result (raises for another tell about an
        earlier run). None where no continuation can be met (no promotion, or a tell that names
        no run)."""
        if self.spec.fidelity is None or not self.spec.pruning.promote:
            return None
        if budget is None and state is not TrialState.COMPLETED:
            return None
        curve = self.storage.curves(self.uid, [number]).get(number, [])
        return lambda cur: self.earlier_run(cur, state, budget, metrics, curve) is not None

    def after_refused_tell(self, number: int) -> None:
        """Put the stored result back on the curve after a tell that wrote its value first
        (:meth:`before_tell`) and was then refused: two different tells of one pending trial both
        write before the trial takes one of them, and the loser's value, written last, stood in
        the rungs' and the model's curve beside the winner's metrics."""
        cur = self.storage.get_trial(self.uid, number)
        obj = self.spec.objectives[0].name
        if cur is not None and cur.budget is not None and obj in cur.metrics:
            self.record_value(cur, cur.budget, cur.metrics[obj].value)

    def check_report(self, step: Any, value: Any, budget: Any) -> float | None:
        """Check an intermediate report's step and value; returns the budget it was measured at (a
        study with a fidelity takes the step for it when unset; None without a fidelity)."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            raise SpecError("step", f"step must be an integer from 0 to 2**63 - 1, got {step!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value
            or value in (float("inf"), float("-inf"))
        ):
            raise SpecError("value", f"value must be a finite number, got {value!r}")
        checked = self.check(budget)
        f = self.spec.fidelity
        if f is not None and checked is None:
            if step > f.max * (1 + 1e-9):
                raise SpecError(
                    "budget",
                    f"step {step} read as the budget is past the full {f.name} {f.max:g}: pass "
                    "the budget the value was measured at",
                )
            checked = float(step)
        return checked

    def should_stop(
        self,
        cur: Trial,
        step: int,
        budget: float | None,
        trials: Callable[[], list[Trial]],
        stopping: MedianRule,
    ) -> tuple[bool, str]:
        """Whether the trial ``cur``, having reported a value at ``step`` (``budget``), stops now,
        and why, by the study's pruning policy (median rule, ASHA, Hyperband). ``trials``: every
        trial of the study. The curves come from :attr:`curves` (kept up to date, not re-read):
        the decision reads no stored value but the ones written since the last one."""
        policy = self.spec.pruning_policy
        if policy == NO_PRUNING:
            return False, ""
        if policy == MEDIAN:
            sign = self.curves.sign
            summaries = self.curves.summaries()
            if self.storage.shared:  # trials() would read every trial: ask which completed
                completed = self.storage.trial_numbers(self.uid, TrialState.COMPLETED)
            else:
                completed = {t.id for t in trials() if t.state is TrialState.COMPLETED}
            return stopping.should_stop(cur.id, step, sign, summaries, completed)
        if self.spec.pruning.promote:
            return False, ""  # promotion: trials run to the budget they were handed
        from bbo.pruning import Rungs

        curves = {n: c.points() for n, c in self.curves.summaries().items()}
        rungs = Rungs(self.spec, trials(), curves)
        return rungs.should_stop(cur, budget if budget is not None else 0.0)
