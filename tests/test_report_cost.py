"""ReportIntermediate's decision from the kept curves (bbo.curve_index) is the decision recomputed
from everything stored (the rules over the whole study read afresh: the median rule over each
stored curve scanned, bbo.pruning.Rungs over the stored curves), for the median rule, ASHA and Hyperband, on random
curves with trials that complete, fail and are pruned, values reported out of order and steps
reported again; after a restart; and with replicas sharing a PostgreSQL database."""

from __future__ import annotations

import random
import uuid

import pytest

from bbo.pruning import Rungs
from bbo.registry import StudyConfig, StudyRegistry
from bbo.spec import StudySpec
from bbo.stopping import MedianRule
from bbo.storage import open_storage
from bbo.study import Study
from bbo.testing.strategies import SpaceFilling
from bbo.trial import TrialState

X = [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}]
EPOCHS = {"name": "epochs", "min": 1, "max": 27, "integer": True}


def spec_for(policy: str, goal: str) -> dict:
    out: dict = {"parameters": X, "objectives": [{"name": "loss", "goal": goal}]}
    if policy != "median":
        out["fidelity"] = EPOCHS
        out["pruning"] = {"policy": policy}
    return out


class Raw:
    """A stored curve read from scratch: its best value so far by a scan (not the kept summary)."""

    def __init__(self, points: list[tuple[int, float]], sign: float):
        self.points, self.sign = points, sign

    def best_upto(self, step: int) -> float | None:
        vals = [self.sign * v for s, v in self.points if s <= step]
        return max(vals) if vals else None


def recomputed(st: Study, trial_id: int, step: int, budget: float | None) -> tuple[bool, str]:
    """The decision read from scratch off the database, as before the curves were kept."""
    storage, uid = st.storage, st.uid
    cur = storage.get_trial(uid, trial_id)
    if st.spec.pruning_policy == "median":
        sign = st.budgets.curves.sign
        completed = {t.id for t in storage.list_trials(uid, [TrialState.COMPLETED])}
        curves = {n: Raw(pts, sign) for n, pts in storage.intermediates(uid).items()}
        return st.config.stopping.should_stop(trial_id, step, sign, curves, completed)
    rungs = Rungs(st.spec, storage.list_trials(uid), storage.curves(uid))
    return rungs.should_stop(cur, budget if budget is not None else float(step))


def play(studies: list[Study], rng: random.Random, ops: int, answers: dict) -> None:
    """Random workers: ask, report (out of order, steps again with the same or another value),
    and end trials COMPLETED, FAILED or PRUNED; every answer is checked against the recomputed
    one and kept in ``answers`` ((trial, step, value) -> answer)."""
    fidelity = studies[0].spec.fidelity is not None
    running: list[int] = []
    reported: dict[int, list[tuple[int, float]]] = {}
    for _ in range(ops):
        st = rng.choice(studies)
        r = rng.random()
        if not running or (r < 0.12 and len(running) < 6):
            (t,) = st.ask().trials
            running.append(t.id)
            reported[t.id] = []
            continue
        tid = rng.choice(running)
        if r < 0.22:  # end it
            running.remove(tid)
            how = rng.random()
            value = rng.uniform(0, 2)
            if how < 0.6:
                st.tell(tid, {"loss": value}, budget=27.0 if fidelity else None)
            elif how < 0.8:
                st.tell(tid, failed=True)
            else:
                st.tell(tid, {"loss": value}, state=TrialState.PRUNED)
            continue
        past = reported[tid]
        if past and rng.random() < 0.25:  # a step again: the same value, or another
            step, value = rng.choice(past)
            if rng.random() < 0.5:
                value = rng.uniform(0, 2)
        else:
            step = rng.randint(1, 27) if fidelity else rng.randint(0, 30)
            value = round(rng.uniform(0, 2), 3)
        past.append((step, value))
        got = st.report_intermediate(tid, step, value)
        assert got == recomputed(st, tid, step, None), (tid, step, value)
        answers[(tid, step, value)] = got


@pytest.mark.parametrize("policy", ["median", "asha", "hyperband"])
@pytest.mark.parametrize("seed", [0, 1])
def test_kept_curves_decide_as_recomputed_ones_and_after_a_restart(tmp_path, policy, seed):
    rng = random.Random(seed)
    url = "sqlite:///" + str(tmp_path / "r.db")
    rule = MedianRule(min_trials=rng.randint(1, 4), warmup_steps=rng.randint(0, 5))
    goal = rng.choice(["minimize", "maximize"])

    def registry() -> StudyRegistry:
        return StudyRegistry(
            open_storage(url), strategy_factory=SpaceFilling, config=StudyConfig(stopping=rule)
        )

    reg = registry()
    st, _ = reg.create_study("s", spec_for(policy, goal))
    answers: dict = {}
    play([st], rng, 260, answers)
    assert any(stop for stop, _ in answers.values())  # the policy did stop trials
    assert not all(stop for stop, _ in answers.values())
    reg.storage.close()

    st = registry().get_study("s")  # a restart: the kept curves are rebuilt from the database
    pending = {t.id for t in st.trials() if t.state is TrialState.PENDING}
    again = [(k, a) for k, a in answers.items() if k[0] in pending]
    assert again
    for (tid, step, value), _ in again:
        got = st.report_intermediate(tid, step, value)
        assert got == recomputed(st, tid, step, None)
    play([st], rng, 80, answers)  # and it keeps up after the restart
    st.storage.close()


@pytest.mark.parametrize("policy", ["median", "asha"])
def test_replicas_sharing_a_database_decide_from_every_stored_value(request, policy):
    """Two replicas (each its own Study over one PostgreSQL database) take turns at random: each
    answer counts the values the other replica stored."""
    from bbo.testing import postgres as pg_cluster

    reason = pg_cluster.missing_reason()
    if reason:
        pytest.skip(reason)
    url = request.getfixturevalue("cluster").create_database("rc_" + uuid.uuid4().hex[:12])
    rule = MedianRule(min_trials=2, warmup_steps=1)
    regs = [
        StudyRegistry(
            open_storage(url), strategy_factory=SpaceFilling, config=StudyConfig(stopping=rule)
        )
        for _ in range(2)
    ]
    regs[0].create_study("s", spec_for(policy, "minimize"))
    studies = [r.get_study("s") for r in regs]
    answers: dict = {}
    play(studies, random.Random(7), 200, answers)
    assert any(stop for stop, _ in answers.values())
    for r in regs:
        r.storage.close()


@pytest.mark.parametrize("seed", range(6))
def test_an_ask_reads_off_the_kept_points_what_it_read_off_whole_curves(seed):
    """Ask rebuilt the rungs and the multi-fidelity model's view from every stored value of the
    study (O(all values) each Ask: 3.5 s for 100 trials of 10,000 values); it now reads the few
    kept points of each curve (bbo.curve_index.CurveSummary.points). On random curves (budgets
    between and on the rungs, steps in any order, trials in every state and bracket) promotions,
    placements, stop decisions, the model's view and the budget spent are the same."""
    from bbo.curve_index import summarize
    from bbo.pruning import ladder
    from bbo.storage import CurvePoint
    from bbo.strategy.multi_fidelity import MultiFidelityStrategy
    from bbo.trial import Metric, Trial

    rng = random.Random(seed)
    policy = rng.choice(["asha", "hyperband"])
    spec = StudySpec.from_dict(
        {
            **spec_for(policy, rng.choice(["minimize", "maximize"])),
            "pruning": {"policy": policy, "promote": rng.random() < 0.5},
        }
    )
    levels = ladder(spec)
    states = [TrialState.PENDING, TrialState.COMPLETED, TrialState.FAILED, TrialState.PRUNED]
    states += [TrialState.PAUSED]
    trials, full = [], {}
    for tid in range(1, rng.randint(5, 60)):
        state = rng.choice(states)
        metrics = {"loss": Metric(rng.uniform(0, 2))} if state is TrialState.COMPLETED else {}
        budget = rng.choice([None, *levels])
        trials.append(
            Trial(
                tid, {"x": rng.random()}, state, metrics, budget=budget, bracket=rng.randint(0, 3)
            )
        )
        steps = rng.sample(range(1, 60), rng.randint(0, 12))
        if steps:
            full[tid] = sorted(
                (
                    CurvePoint(
                        s,
                        round(rng.uniform(0, 2), 2),
                        rng.choice([None, *levels, round(rng.uniform(1, 27), 1)]),
                        0.0,
                    )
                    for s in steps
                ),
                key=lambda p: p.step,
            )
    kept = {n: summarize(c, 1.0, levels).points() for n, c in full.items()}
    assert sum(map(len, kept.values())) <= sum(len(levels) + 1 for _ in kept)
    a, b = Rungs(spec, trials, full), Rungs(spec, trials, kept)
    assert a.promotions(5) == b.promotions(5)
    full_flags = [rng.random() < 0.3 for _ in range(4)]
    assert a.placements(full_flags) == b.placements(full_flags)
    for t in trials:
        for budget in levels:
            assert a.should_stop(t, budget) == b.should_stop(t, budget)
    mf = MultiFidelityStrategy(spec)
    assert mf.model_view(trials, full) == mf.model_view(trials, kept)
    assert mf.spent(trials, full) == mf.spent(trials, kept)


def test_an_ask_reads_no_stored_value_but_those_written_since_the_last(tmp_path):
    """After a study's curves are loaded once, an Ask of a study with a fidelity reads the curves
    of the trials written since (none here), never every stored value of the study."""
    reg = StudyRegistry(
        open_storage("sqlite:///" + str(tmp_path / "a.db")), strategy_factory=SpaceFilling
    )
    st, _ = reg.create_study("s", spec_for("hyperband", "minimize"))
    for t in st.ask(count=4).trials:
        for step in (1, 3, 9):
            st.report_intermediate(t.id, step, step / 10)
    st.ask()
    reads: list = []
    real = reg.storage.curves

    def counting(uid, numbers=None, **kw):
        reads.append(numbers)
        return real(uid, numbers, **kw)

    reg.storage.curves = counting
    for _ in range(3):
        st.ask()
    assert reads == [], reads
    reg.storage.close()


class _Curves:
    """A storage that holds curves in memory: ``fail`` first full reads raise."""

    shared = False

    def __init__(self, curves, fail: int = 0):
        self.data, self.fail = curves, fail

    def curves(self, uid, numbers=None, *, since=None):
        from bbo.storage import CurvePoint

        if numbers is None and self.fail:
            self.fail -= 1
            raise ConnectionError("database away")
        # new objects each read, as a database's rows are
        return {
            n: [CurvePoint(p.step, p.value + 0.0, p.budget, p.at + 0.0) for p in c]
            for n, c in self.data.items()
            if numbers is None or n in numbers
        }


def _random_curves(trials: int, steps: int) -> dict:
    from bbo.storage import CurvePoint

    rng = random.Random(3)
    return {
        n: [CurvePoint(s, rng.random(), float(1 + s % 27), 1.0) for s in range(steps)]
        for n in range(1, trials + 1)
    }


def test_the_kept_curves_take_a_few_bytes_a_value():
    """The index kept every value read as objects besides its summaries, about 250 bytes a value
    (240 MiB for 100 trials of 10,000 values, per study a process decided a report of); it keeps
    the summaries alone, in arrays."""
    import gc
    import tracemalloc

    from bbo.curve_index import CurveIndex, summarize
    from bbo.pruning import ladder

    levels = ladder(StudySpec.from_dict(spec_for("asha", "minimize")))
    data = _random_curves(40, 2_500)
    index = CurveIndex(_Curves(data), "uid", -1.0, levels)  # type: ignore[arg-type]
    gc.collect()
    tracemalloc.start()
    try:
        got = index.summaries()
        del got
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 40 * 100_000, kept  # 40 bytes a value
    assert index.summaries() == {n: summarize(c, -1.0, levels) for n, c in data.items()}


def test_a_failed_first_read_of_the_curves_is_read_again():
    """The first decision reads the study's curves; where that read failed, the index took the
    study as read (with no values) and decided every later report from the trials written since
    alone."""
    from bbo.curve_index import CurveIndex

    data = _random_curves(5, 10)
    index = CurveIndex(_Curves(data, fail=1), "uid", 1.0, ())  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        index.summaries()
    index.written([2])
    assert sorted(index.summaries()) == [1, 2, 3, 4, 5]


def test_a_report_racing_the_tell_that_finishes_its_trial_stores_nothing(tmp_path):
    """ReportIntermediate checked the trial was pending before its write, outside the write's
    transaction: a tell finishing the trial in between let the value in after the trial's end. The
    state is now checked again under the write's row lock. The race is made certain here: the
    report reads the trial as it was before the tell."""
    from bbo.errors import ConflictError

    reg = StudyRegistry(
        open_storage("sqlite:///" + str(tmp_path / "r.db")), strategy_factory=SpaceFilling
    )
    st, _ = reg.create_study("race", spec_for("median", "minimize"))
    (t,) = st.ask().trials
    st.report_intermediate(t.id, 1, 0.5)
    before = st.get_trial(t.id)  # PENDING
    st.tell(t.id, {"loss": 0.4})
    st.get_trial = lambda trial_id: before  # the report's read came before the tell
    with pytest.raises(ConflictError, match="COMPLETED"):
        st.report_intermediate(t.id, 2, 0.1)
    assert st.intermediates()[t.id] == [(1, 0.5)]
