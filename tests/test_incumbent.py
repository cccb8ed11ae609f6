"""bbo.incumbent: best feasible trial and feasible Pareto front (pure functions)."""

from bbo.incumbent import best_trial, hypervolume, incumbents, pareto_front
from bbo.space import FloatParam, SearchSpace
from bbo.spec import MAXIMIZE, Objective, OutcomeConstraint, StudySpec
from bbo.trial import Metric, Trial, TrialState

SPACE = SearchSpace((FloatParam("x", 0.0, 1.0),))


def T(i, state=TrialState.COMPLETED, **metrics):
    return Trial(i, {"x": 0.5}, state, {k: Metric(v) for k, v in metrics.items()})


def test_best_trial_respects_goal_constraints_and_state():
    spec = StudySpec(SPACE, (Objective("f"),), (OutcomeConstraint("c", "<=", 1.0),))
    trials = [
        T(0, f=3.0, c=0.0),
        T(1, f=1.0, c=2.0),  # better but infeasible
        T(2, f=2.0, c=1.0),  # feasible on the bound
        T(3, TrialState.PENDING),
        T(4, TrialState.FAILED),
        T(5, f=2.0, c=0.5),  # tie: the earlier trial wins
        T(6, f=0.5),  # missing the constrained metric: not usable
    ]
    assert best_trial(spec, trials).id == 2
    spec_max = StudySpec(SPACE, (Objective("f", MAXIMIZE),), (OutcomeConstraint("c", ">=", 0.4),))
    assert best_trial(spec_max, trials).id == 2  # f=2 beats f=1 (maximize); trial 0 fails c >= 0.4
    assert best_trial(spec, [T(0, f=1.0, c=5.0)]) is None
    assert incumbents(spec, [T(0, f=1.0, c=5.0)]) == []


def test_pareto_front_feasible_and_mixed_goals():
    spec = StudySpec(
        SPACE, (Objective("a"), Objective("b", MAXIMIZE)), (OutcomeConstraint("c", "<=", 0.0),)
    )
    trials = [
        T(0, a=1.0, b=1.0, c=0.0),
        T(1, a=2.0, b=2.0, c=0.0),
        T(2, a=2.0, b=0.5, c=0.0),  # dominated by 0
        T(3, a=0.0, b=9.0, c=1.0),  # would dominate all, infeasible
        T(4, a=1.0, b=1.0, c=-1.0),  # duplicate vector of 0: kept
        T(5, a=3.0, b=3.0, c=0.0),
    ]
    assert [t.id for t in pareto_front(spec, trials)] == [0, 1, 4, 5]
    assert incumbents(spec, trials) == pareto_front(spec, trials)
    hv = hypervolume(spec, trials, {"a": 4.0, "b": 0.0})
    # union of boxes [a, 4] x [0, b]: (4-1)*1 + (4-2)*(2-1) + (4-3)*(3-2) = 6
    assert abs(hv - 6.0) < 1e-9
