"""The generation strategy's parts and seams: Protocols instead of attribute probing, the training
data built once per ask, one space-filling fallback path the service can call on its own."""

from __future__ import annotations

import numpy as np
import torch

from bbo.space import FloatParam, IntParam, SearchSpace
from bbo.spec import AlgorithmOptions, Objective, OutcomeConstraint, StudySpec
from bbo.strategy import (
    GenerationStrategy,
    SharesModelState,
    Strategy,
    StudyState,
    Suggestion,
    space_filling,
)
from bbo.strategy.model_data import ModelData
from bbo.trial import Metric, Origin, Trial, TrialState

UNIT2 = SearchSpace((FloatParam("a", 0.0, 1.0), FloatParam("b", 0.0, 1.0)))


def _spec(**kw) -> StudySpec:
    return StudySpec(
        UNIT2,
        (Objective("f"),),
        (OutcomeConstraint("c", "<=", 0.5),),
        algorithm=AlgorithmOptions(seed=1, n_initial=4, **kw),
    )


def _completed(points) -> list[Trial]:
    return [
        Trial(
            i + 1,
            {"a": float(a), "b": float(b)},
            TrialState.COMPLETED,
            {"f": Metric(float((a - 0.3) ** 2 + b)), "c": Metric(float(a * b))},
            origin=Origin.INITIAL.value,
        )
        for i, (a, b) in enumerate(points)
    ]


def test_the_strategy_meets_the_protocols_the_service_uses():
    gs = GenerationStrategy(_spec())
    assert isinstance(gs, Strategy) and isinstance(gs, SharesModelState)
    assert not isinstance(object(), Strategy)
    assert not hasattr(gs, "set_llm_logger")
    state, reason = gs.status([])
    assert state is StudyState.ACTIVE and str(state) == "ACTIVE" and reason == ""


def test_an_ask_and_the_status_after_it_build_the_training_data_once(monkeypatch):
    torch.set_num_threads(1)
    builds = []
    real = ModelData._build

    def counting(self, trials):
        builds.append(len(trials))
        return real(self, trials)

    monkeypatch.setattr(ModelData, "_build", counting)
    gs = GenerationStrategy(_spec())
    trials = _completed(np.random.default_rng(0).random((5, 2)))
    (s,) = gs.suggest(trials, 1)
    assert s.origin in (Origin.BO.value, Origin.BO_EXPLOIT.value)
    gs.status(trials)
    assert builds == [5]  # the ask and the service's status check after it share one build
    trials.append(Trial(6, dict(s.params), TrialState.COMPLETED, dict(trials[0].metrics)))
    gs.status(trials)
    assert builds == [5, 6]  # new data, new build


def test_space_filling_skips_used_design_points_and_existing_points():
    space = SearchSpace((FloatParam("x", 0.0, 1.0), IntParam("k", 0, 3)))
    first = space_filling(space, 7, [], 3, "no model")
    assert [s.origin for s in first] == [Origin.FALLBACK.value] * 3
    assert all(s.reason == "no model" and space.is_feasible(s.params) for s in first)
    trials = [Trial(i + 1, s.params, origin=s.origin) for i, s in enumerate(first)]
    more = space_filling(space, 7, trials, 3, "no model")  # the sequence goes on after them
    X = np.array([space.encode(t.params) for t in trials] + [space.encode(s.params) for s in more])
    assert len(np.unique(X.round(12), axis=0)) == 6
    # a tiny space runs out: the last points repeat one, and say so
    tiny = SearchSpace((IntParam("k", 0, 1),))
    out = space_filling(tiny, 7, [], 3, "no model")
    assert {s.params["k"] for s in out} == {0, 1}
    assert out[-1].reason.endswith("space exhausted, repeating a point")


def test_a_failing_part_gives_fallback_points_not_an_error(monkeypatch):
    from bbo.strategy import generation

    def broken(self, ask, n, warmstart, taken):
        raise RuntimeError("design broke")

    monkeypatch.setattr(generation.InitialDesign, "suggest", broken)
    gs = GenerationStrategy(_spec())
    out = gs.suggest([], 2, warmstart=[Suggestion({"a": 0.1, "b": 0.1}, "llm_warmstart")])
    assert [s.origin for s in out] == [Origin.FALLBACK.value] * 2
    assert all("generation failed: RuntimeError: design broke" in s.reason for s in out)


def _discrete_run(space: SearchSpace, n: int, pending: int = 0) -> tuple[list, list[Trial]]:
    """``n`` asks told a deterministic value, then ``pending`` asks left pending, then one more."""
    gs = GenerationStrategy(StudySpec(space, (Objective("f"),), algorithm=AlgorithmOptions(seed=3)))
    trials: list[Trial] = []
    for i in range(n + pending):
        (s,) = gs.suggest(trials, 1)
        f = sum(ord(v) % 5 if isinstance(v, str) else (v - 1.4) ** 2 for v in s.params.values())
        value = {"f": Metric(float(f))}
        done = i < n
        state = TrialState.COMPLETED if done else TrialState.PENDING
        trials.append(Trial(i + 1, s.params, state, value if done else {}, origin=s.origin))
    return gs.suggest(trials, 2), trials


def test_an_exhausted_discrete_space_repeats_its_best_point_and_says_why():
    from bbo.space import CategoricalParam, LinearConstraint

    space = SearchSpace((CategoricalParam("c", ("x", "y")), IntParam("k", 1, 3)))
    out, trials = _discrete_run(space, 6)
    design = [tuple(t.params.values()) for t in trials if t.origin == Origin.INITIAL.value]
    assert len(set(design)) == len(design)  # no repeat in the design while points are left
    assert len({tuple(t.params.values()) for t in trials}) == 6
    assert [s.origin for s in out] == [Origin.REPLICATE.value] * 2
    assert all("every point of the search space (6 meet" in s.reason for s in out)
    assert out[0].params != out[1].params  # a batch repeats the best points, not one twice
    best = min(trials, key=lambda t: t.metrics["f"].value)
    assert any(s.params == best.params for s in out)
    # pending points count as taken; a linear constraint leaves fewer points to exhaust
    out, _ = _discrete_run(space, 4, pending=2)
    assert [s.origin for s in out] == [Origin.REPLICATE.value] * 2
    two = SearchSpace(
        (IntParam("a", 0, 2), IntParam("b", 0, 2)), (LinearConstraint({"a": 1, "b": 1}, 2),)
    )
    out, trials = _discrete_run(two, 6)
    assert all(t.params["a"] + t.params["b"] <= 2 for t in trials)
    assert [s.origin for s in out] == [Origin.REPLICATE.value] * 2
    assert "(6 meet its constraints)" in out[0].reason
    out, _ = _discrete_run(two, 5)  # one point left: found, then the space is exhausted
    assert [s.origin != Origin.REPLICATE.value for s in out] == [True, False]


def test_a_discrete_design_does_not_repeat_a_point_while_others_are_left():
    from bbo.space import CategoricalParam

    space = SearchSpace((CategoricalParam("c", ("x", "y")), IntParam("k", 1, 3)))
    for seed in range(4):  # rounded Sobol points land on one of 6 grid points: they collided
        spec = StudySpec(space, (Objective("f"),), algorithm=AlgorithmOptions(seed=seed))
        points = [tuple(s.params.values()) for s in GenerationStrategy(spec).suggest([], 5)]
        assert len(set(points)) == 5, (seed, points)
    # asked for more than the space holds: the repeats come last, and say why
    spec = StudySpec(space, (Objective("f"),), algorithm=AlgorithmOptions(seed=0))
    out = GenerationStrategy(spec).suggest([], 8)
    assert len({tuple(s.params.values()) for s in out}) == 6
    assert ["repeat" in s.reason for s in out] == [False] * 6 + [True] * 2


def test_the_objectives_standard_errors_make_it_noisy_without_the_constraints():
    """Standard errors reported for the objective alone (a CV score's, not a constraint metric's
    such as the training time) make the noise known; the model still fits its own noise, since it
    takes errors only where every value has one. They were ignored altogether."""
    trials = _completed(np.random.default_rng(0).random((6, 2)))
    gs = GenerationStrategy(_spec())
    assert not gs.ctx.data.build(trials).noise.known
    for t in trials:
        t.metrics["f"] = Metric(t.metrics["f"].value, sem=0.05)
    data = gs.ctx.data.build(trials)
    assert data.noise.reported and data.noise.known and data.Yvar is None
    trials[0].metrics["f"] = Metric(trials[0].metrics["f"].value)  # one row without: not judged
    assert not gs.ctx.data.build(trials).noise.reported
