"""bbo.incumbent: best feasible trial and feasible Pareto front (pure functions)."""

import numpy as np
import pytest

from bbo.incumbent import (
    FrontCache,
    best_trial,
    hypervolume,
    incumbents,
    nondominated,
    pareto_front,
)
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


def _brute_front(spec, trials):
    """Every feasible trial compared with every other (the definition; O(n^2))."""
    import numpy as np

    from bbo.incumbent import feasible_trials

    c = sorted(feasible_trials(spec, trials), key=lambda t: t.id)
    F = np.array([[o.sign * t.value(o.name) for o in spec.objectives] for t in c])
    return [
        c[i]
        for i in range(len(c))
        if not np.any(np.all(F >= F[i], axis=1) & np.any(F > F[i], axis=1))
    ]


def _spec(goals, constrained=False):
    return StudySpec.from_dict(
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": f"m{j}", "goal": g} for j, g in enumerate(goals)],
            "outcome_constraints": [{"metric": "c", "op": "<=", "bound": 1.0}]
            if constrained
            else [],
        }
    )


@pytest.fixture
def small_blocks(monkeypatch):
    """The divide and conquer's all-against-all steps made tiny, so that small inputs take every
    branch of it (the splits, ties on a split's value, a column equal throughout)."""
    import bbo.incumbent as inc

    monkeypatch.setattr(inc, "_BLOCK", 3)
    monkeypatch.setattr(inc, "_PAIRS", 8)


def _brute_mask(F):
    return np.array(
        [not np.any(np.all(F >= f, axis=1) & np.any(F > f, axis=1)) for f in F], dtype=bool
    )


def test_nondominated_is_the_definition_on_random_matrices(small_blocks):
    rnd = np.random.default_rng(3)
    for m in (1, 2, 3, 4, 5):
        for _ in range(60):
            n = int(rnd.integers(0, 120))
            levels = int(rnd.choice([2, 3, 5, 1000]))  # few levels: many ties and duplicates
            F = rnd.integers(0, levels, size=(n, m)).astype(float)
            if rnd.random() < 0.3:  # points on a sphere: (nearly) every one on the front
                F = np.abs(rnd.normal(size=(n, m)))
                F /= np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
            if n and rnd.random() < 0.3:
                F = np.concatenate([F, F[rnd.integers(0, n, size=n // 3)]])  # duplicates
            if rnd.random() < 0.2:
                F[:, rnd.integers(0, m)] = 0.0  # a column equal throughout
            assert np.array_equal(nondominated(F), _brute_mask(F)), (m, F.tolist())


def _random_trials(rnd, k, n, constrained):
    states = [TrialState.COMPLETED] * 5 + [TrialState.FAILED]
    return [
        Trial(
            i + 1,
            {"x": 0.5},
            rnd.choice(states),
            {f"m{j}": Metric(float(rnd.randrange(4))) for j in range(k)}  # many ties
            | ({"c": Metric(float(rnd.randrange(3)))} if constrained else {}),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("blocks", ["default", "small"])
def test_pareto_front_is_the_definitions_on_random_ties_and_goals(blocks, request):
    import random

    if blocks == "small":
        request.getfixturevalue("small_blocks")
    rnd = random.Random(7)
    for k in (1, 2, 3, 4):
        for _ in range(100):
            constrained = rnd.random() < 0.3
            spec = _spec([rnd.choice(["minimize", "maximize"]) for _ in range(k)], constrained)
            trials = _random_trials(rnd, k, rnd.randrange(60), constrained)
            rnd.shuffle(trials)
            want = [t.id for t in _brute_front(spec, trials)]  # k = 1: every trial of the best
            assert [t.id for t in pareto_front(spec, trials)] == want
            if k > 1:
                assert [t.id for t in incumbents(spec, trials)] == want


def _sphere_trials(n, k, rnd, first=1):
    """Every point on the front: on a sphere's positive orthant, every objective maximized."""
    X = np.abs(rnd.normal(size=(n, k)))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return [
        Trial(
            first + i,
            {"x": 0.5},
            TrialState.COMPLETED,
            {f"m{j}": Metric(float(X[i, j])) for j in range(k)},
        )
        for i in range(n)
    ]


def test_pareto_front_of_many_trials_all_on_it():
    """GetBest (and the dashboard's summary) find the front among every completed trial. Compared
    with the front kept so far, a trial on it costs a pass over it: 20,000 trials of three
    objectives, every one on the front, took 22 s, and 100,000 would have taken minutes. The
    divide and conquer never compares a trial with the whole front (and builds no n x n array)."""
    rnd = np.random.default_rng(0)
    n = 20_000
    spec = _spec(["maximize"] * 3)
    trials = _sphere_trials(n, 3, rnd)
    assert len(pareto_front(spec, trials)) == n
    line = [
        Trial(i + 1, {"x": 0.5}, TrialState.COMPLETED, {"m0": Metric(i / n), "m1": Metric(i / n)})
        for i in range(n)
    ]
    assert len(pareto_front(_spec(["minimize", "maximize"]), line)) == n


def test_front_cache_follows_new_trials_as_a_search_of_all(small_blocks):
    """The kept front, brought up to date one trial at a time, in batches, or found again where a
    trial left the set, is the front of all of them; a call without new trials reads nothing."""
    import random

    rnd = random.Random(11)
    for k in (2, 3, 4):
        spec = _spec(["minimize", "maximize", "minimize", "maximize"][:k], constrained=True)
        trials = _random_trials(rnd, k, 400, True)
        cache = FrontCache(spec)
        reads = []

        def read(numbers, pool):
            reads.append(None if numbers is None else sorted(numbers))
            return list(pool.values()) if numbers is None else [pool[i] for i in numbers]

        done: dict[int, Trial] = {}
        order = list(trials)
        rnd.shuffle(order)  # trials complete in any order
        while order:
            step = rnd.choice([1, 1, 2, FrontCache.ONE_BY_ONE + 5])
            for t in order[:step]:
                done[t.id] = t
            order = order[step:]
            if rnd.random() < 0.05 and len(done) > 3:  # a trial leaves the set: searched again
                done.pop(rnd.choice(list(done)))
            pool = {i: t for i, t in done.items() if t.state is TrialState.COMPLETED}
            front = cache.front(set(pool), lambda ns: read(ns, pool))
            assert [t.id for t in front] == [t.id for t in _brute_front(spec, done.values())]
            reads.clear()
            again = cache.front(set(pool), lambda ns: read(ns, pool))
            assert again == front and reads == []


def test_front_cache_of_one_objective_starts_with_the_best_trial():
    """Of one objective the kept front, brought up to date one trial at a time or in batches, is
    the trials of its best value, first the one :func:`best_trial` picks (ties to the earliest,
    -0.0 as 0.0, constraints, either goal): GetBest's best observed trial is read from it."""
    import random

    rnd = random.Random(3)
    for goal in ("minimize", "maximize"):
        for constrained in (False, True):
            spec = _spec([goal], constrained)
            trials = _random_trials(rnd, 1, 300, constrained)
            for t in trials[::7]:
                t.metrics["m0"] = Metric(rnd.choice([0.0, -0.0]))
            cache, done = FrontCache(spec), {}
            order = list(trials)
            rnd.shuffle(order)
            while order:
                step = rnd.choice([1, 1, 3, FrontCache.ONE_BY_ONE + 5])
                done.update((t.id, t) for t in order[:step])
                order = order[step:]
                pool = {i: t for i, t in done.items() if t.state is TrialState.COMPLETED}

                def read(ns, pool=pool):
                    return list(pool.values()) if ns is None else [pool[i] for i in ns]

                front = cache.front(set(pool), read)
                best = best_trial(spec, list(done.values()))
                assert front[:1] == ([] if best is None else [best])
                assert front == [t for t in _brute_front(spec, done.values())]


def test_get_best_of_a_study_all_on_the_front_answers_as_before(registry):
    """GetBest on a study whose every feasible point is on the front (plus duplicates, dominated
    and infeasible trials, mixed goals) answers with the front the definition gives, before and
    after new results; asked again without new ones it reads no trial."""
    from bbo.storage import NewTrial
    from bbo_client.v1 import service_pb2 as svc
    from bbo_server.servicer import BboServicer

    goals = ["maximize", "minimize", "maximize"]
    study, _ = registry.create_study("all-front", _spec(goals, constrained=True).to_dict())
    sign = [1.0, -1.0, 1.0]
    rnd = np.random.default_rng(5)

    def new(n, scale=1.0):
        X = np.abs(rnd.normal(size=(n, 3)))
        X *= scale / np.linalg.norm(X, axis=1, keepdims=True)
        c = rnd.choice([0.0, 0.0, 0.0, 5.0], size=n)  # a quarter infeasible
        return [
            NewTrial(
                {"x": 0.5},
                "user",
                TrialState.COMPLETED,
                {f"m{j}": Metric(float(sign[j] * X[i, j])) for j in range(3)} | {"c": Metric(c[i])},
            )
            for i in range(n)
        ]

    batch = new(1500)
    batch += batch[:50]  # duplicates of front points
    batch += new(100, scale=0.5)  # dominated
    registry.storage.insert_trials(study.uid, batch)
    servicer = BboServicer(registry)

    def best_ids():
        r = servicer.GetBest(svc.GetBestRequest(study="all-front"), None)
        return r.best_count, [t.id for t in r.trials]

    list_trials = registry.storage.list_trials

    def want():
        trials = list_trials(study.uid)
        return [t.id for t in _brute_front(study.spec, trials)]

    count, shown = best_ids()
    expected = want()
    assert count == len(expected) > 1000 and shown == expected[: len(shown)] and shown
    assert [t.id for t in study.best().trials] == expected

    calls = []
    registry.storage.list_trials = lambda *a, **kw: calls.append(a) or list_trials(*a, **kw)
    try:
        assert [t.id for t in study.best().trials] == expected and calls == []
        for b in (new(3, scale=1.5), new(1, scale=0.5), new(80, scale=1.2)):  # one by one, batch
            for nt in b:
                study.add_trial({"x": 0.5}, {k: m.value for k, m in nt.metrics.items()})
            assert [t.id for t in study.best().trials] == want()
        assert calls == []
    finally:
        registry.storage.list_trials = list_trials
