"""Huge but finite values must not leave a study unable to fit its model (bbo.warping's safety
map): after a trial at +-1e300 (or a multi-objective one at 1e50), or with a reference point or
outcome bound of 1e308, the next suggestions still come from the model, which still ranks the
ordinary points. Before the safety map every such ask fell back to space-filling points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from test_bo import UNIT2, run, spec_of, tell

from bbo.acquisition import marginals
from bbo.spec import MAXIMIZE, MINIMIZE, Objective, OutcomeConstraint
from bbo.strategy import Suggestion
from bbo.trial import Metric, Origin, Trial, TrialState

torch.set_num_threads(1)

BO = {o.value for o in (Origin.BO, Origin.BO_EXPLOIT, Origin.BO_LOCAL, Origin.PRIOR_BO)}
CORNER = {"a": 0.95, "b": 0.05}  # where the huge values are told, far from the optimum


def quad(p) -> dict:
    return {"f": (p["a"] - 0.3) ** 2 + (p["b"] - 0.7) ** 2, "c": p["a"]}


def two(p) -> dict:
    return {"f1": p["a"] ** 2 + p["b"] ** 2, "f2": (p["a"] - 1) ** 2 + (p["b"] - 1) ** 2}


def _after(spec, f, extra: list[dict], n: int = 8):
    """``n`` trials of ``f``, then ``extra`` (metrics told at CORNER and beside it), then the next
    two suggestions (one alone, one beside it: the joint acquisition)."""
    gs, trials = run(spec, f, n)
    for k, m in enumerate(extra):
        p = {"a": CORNER["a"] - 0.05 * k, "b": CORNER["b"]}
        tell(trials, Suggestion(p, Origin.USER.value), m)
    out = gs.suggest(trials, 2)
    for s in out:
        assert s.origin in BO, s.reason
    return gs, trials


def _ranks_ordinary(gs, trials, f, names) -> None:
    """The model's posterior means at points away from the huge values order them as ``f`` does."""
    data = gs.ctx.data.build(trials)
    model, _, _ = data.model(gs.surrogate, 0)
    u = stats.qmc.Sobol(2, seed=0).random(64)
    u = u[np.hypot(u[:, 0] - CORNER["a"], u[:, 1] - CORNER["b"]) > 0.3]
    X = gs.ctx.placement.tensor(u)
    mu = marginals(model, X)[0].cpu().numpy()
    truth = [f({"a": a, "b": b}) for a, b in u]
    for name in names:
        j = gs.spec.modeled_metrics.index(name)
        rho = stats.spearmanr(mu[:, j], [t[name] for t in truth]).statistic
        assert rho > 0.8, (name, rho)


@pytest.mark.parametrize(
    "goal, huge", [(MINIMIZE, 1e300), (MINIMIZE, -1e300), (MAXIMIZE, 1e300), (MAXIMIZE, -1e300)]
)
def test_one_huge_objective_value(goal, huge):
    """A huge bad value counts as very bad; a huge good one stays the incumbent (and, as a far
    good value of ordinary size already did, draws the model towards it: no ranking there)."""
    spec = spec_of(UNIT2, objectives=(Objective("f", goal),), seed=1, n_initial=6)
    gs, trials = _after(spec, quad, [{"f": huge, "c": 0.0}])
    sign = 1.0 if goal == MAXIMIZE else -1.0
    if sign * huge < 0:
        _ranks_ordinary(gs, trials, quad, ["f"])
        return
    data = gs.ctx.data.build(trials)  # the incumbent in the model's units too, alone
    best = np.flatnonzero(sign * data.Ym[:, 0] == np.max(sign * data.Ym[:, 0]))
    assert list(best) == [len(trials) - 1]


def test_huge_values_on_both_sides_and_a_huge_standard_error():
    spec = spec_of(UNIT2, seed=2, n_initial=6)
    gs, trials = _after(spec, quad, [{"f": 1e200}, {"f": -1e200}, {"f": 1.7e308}])
    for t in trials:
        t.metrics = {k: Metric(m.value, 1e-3) for k, m in t.metrics.items()}
    trials.append(
        Trial(len(trials), {"a": 0.5, "b": 0.5}, TrialState.COMPLETED, {"f": Metric(0.1, 1e300)})
    )
    assert all(s.origin in BO for s in gs.suggest(trials, 1))


@pytest.mark.parametrize("huge", [1e50, 1e300, -1e300])
def test_multi_objective_huge_value(huge):
    """The other objective's model is untouched by the huge value (the huge one's own model is
    drawn to it: multi-objective objectives get the safety map but no Tukey clip)."""
    spec = spec_of(UNIT2, objectives=("f1", "f2"), seed=5, n_initial=6)
    gs, trials = _after(spec, two, [{"f1": huge, "f2": 0.5}])
    _ranks_ordinary(gs, trials, two, ["f2"])


def test_multi_objective_reference_point_of_1e308():
    spec = spec_of(
        UNIT2, objectives=("f1", "f2"), seed=5, n_initial=6, reference_point={"f1": 1e308}
    )
    gs, trials = _after(spec, two, [two(CORNER)])
    _ranks_ordinary(gs, trials, two, ["f1", "f2"])


@pytest.mark.parametrize(
    "constraints",
    [
        (OutcomeConstraint("f", "<=", 1e308),),  # on the objective itself: not warped
        (OutcomeConstraint("c", "<=", 1e308), OutcomeConstraint("c", ">=", -1e308)),
        (OutcomeConstraint("c", ">=", -1e308),),
    ],
)
def test_outcome_bound_of_1e308(constraints):
    spec = spec_of(UNIT2, constraints=constraints, seed=5, n_initial=6)
    gs, trials = _after(spec, quad, [quad(CORNER)])
    _ranks_ordinary(gs, trials, quad, ["f"])
