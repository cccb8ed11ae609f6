"""The core Study on SQLite, in-process: group commit under concurrency, the in-memory trial copy,
strategy failures, status, the median stopping rule."""

from __future__ import annotations

import threading

import pytest

from bbo.errors import ConflictError, SpecError
from bbo.registry import StudyConfig, StudyRegistry
from bbo.stopping import MedianRule
from bbo.trial import TrialState

SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y"}],
    "algorithm": {"n_initial": 1000},
}


def test_concurrent_tells_conflicts_and_heartbeats_in_shared_batches(registry):
    st, _ = registry.create_study("s", SPEC)
    trials = st.ask(60).trials
    outcomes: dict[int, list] = {t.id: [] for t in trials}
    lock = threading.Lock()

    def teller(k):
        for t in trials:
            try:
                r = st.tell(
                    t.id, {"y": float(t.id if k == 0 else -t.id)}
                )  # thread 0 and 1 race with different values
                res = ("ok", r.trial.metrics["y"].value, r.duplicate)
            except ConflictError:
                res = ("conflict",)
            with lock:
                outcomes[t.id].append(res)

    def beater():
        for t in trials:
            try:
                st.heartbeat(t.id, 60)
            except ConflictError:
                pass

    threads = [threading.Thread(target=teller, args=(k,)) for k in (0, 1)] + [
        threading.Thread(target=beater)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stored = {t.id: t for t in registry.storage.list_trials(st.uid)}
    for t in trials:
        oks = [o for o in outcomes[t.id] if o[0] == "ok"]
        assert len(oks) == 1 and len(outcomes[t.id]) == 2, outcomes[
            t.id
        ]  # exactly one tell won, the other was refused
        assert (
            stored[t.id].state is TrialState.COMPLETED
            and stored[t.id].metrics["y"].value == oks[0][1]
        )
    # the in-memory copy the next ask uses agrees with the database
    mem = {t.id: (t.state, t.metrics) for t in st.trial_cache.all()}
    assert mem == {i: (t.state, t.metrics) for i, t in stored.items()}


def test_restarted_registry_sees_everything(storage):
    reg = StudyRegistry(storage)
    st, _ = reg.create_study("s", SPEC)
    a, b = st.ask(2).trials
    st.tell(a.id, {"y": 1.0})
    reg2 = StudyRegistry(storage)  # a new process on the same database
    st2 = reg2.get_study("s")
    assert [(t.id, t.state) for t in st2.trial_cache.all()] == [
        (a.id, TrialState.COMPLETED),
        (b.id, TrialState.PENDING),
    ]
    c = st2.ask(1).trials[0]
    assert c.id == 3


def test_reattach_after_an_upgrade_changed_algorithm_defaults(storage):
    """A study stored by an older server (fewer algorithm keys, another default) is reattached by a
    create with default options; an explicit different option or another space is still refused."""

    from bbo.registry import AlreadyExistsError
    from bbo.storage import schema as S

    reg = StudyRegistry(storage)
    st, created = reg.create_study("old", SPEC)
    assert created
    old = dict(
        st.record.spec,
        algorithm={"n_initial": 1000, "seed": None, "device": "auto", "prior_exponent": 1.0},
    )
    with storage.engine.begin() as conn:
        conn.execute(S.studies.update().where(S.studies.c.uid == st.uid).values(spec=old))
    reg = StudyRegistry(storage)  # the upgraded server
    again, created = reg.create_study("old", SPEC)
    assert not created and again.uid == st.uid
    assert again.spec.algorithm.prior_exponent == 1.0  # the study keeps what it was created with
    # the refusal says what differs and what to do (before: "already exists with a different spec")
    with pytest.raises(
        AlreadyExistsError, match=r"spec\.algorithm\.exploit_gap is 2 there, 5 here"
    ):
        reg.create_study("old", dict(SPEC, algorithm={"n_initial": 1000, "exploit_gap": 5}))
    with pytest.raises(
        AlreadyExistsError,
        match=r"\(spec\.parameters\[0\]\.high is 1\.0 there, 2\.0 here\): create this one under "
        "another name, or delete that study first",
    ):
        reg.create_study(
            "old", dict(SPEC, parameters=[{"type": "float", "name": "x", "low": 0.0, "high": 2.0}])
        )
    with pytest.raises(AlreadyExistsError, match=r"spec\.parameters has 1 entries there, 2 here"):
        reg.create_study(
            "old",
            dict(SPEC, parameters=[*SPEC["parameters"], dict(SPEC["parameters"][0], name="z")]),
        )
    with pytest.raises(AlreadyExistsError, match=r"spec\.algorithm\.n_initial is 1000 there, 7"):
        reg.create_study("old", dict(SPEC, algorithm={"n_initial": 7}))


def test_stale_study_object_never_writes_into_the_next_study(storage):
    """An Ask or AddTrial still running on a deleted study's object fails with NotFound rather than
    insert trials into the study created next (which, before uids, could get its id)."""
    from bbo.errors import NotFoundError

    reg = StudyRegistry(storage)
    st, _ = reg.create_study("a", SPEC)
    st.ask(1)
    reg.delete_study("a")
    other, _ = reg.create_study("b", SPEC)
    assert other.uid != st.uid
    with pytest.raises(NotFoundError, match="deleted"):
        st.ask(1)
    with pytest.raises(NotFoundError):
        st.add_trial({"x": 0.5}, {"y": 1.0})
    assert other.trials() == []


def test_another_tenants_trial_uid_is_answered_as_a_deleted_study(storage):
    """A trial's study uid from another tenant is refused as a deleted study's would be: the
    message neither names that study nor tells that it exists; one of the same tenant is named."""
    from bbo.errors import NotFoundError

    reg = StudyRegistry(storage)
    mine, _ = reg.create_study("s", SPEC, tenant="t1")
    sibling, _ = reg.create_study("sib", SPEC, tenant="t1")
    theirs, _ = reg.create_study("secret-name", SPEC, tenant="t2")
    (t,) = mine.ask(1).trials
    with pytest.raises(NotFoundError, match="belongs to study 'sib'"):
        mine.tell(t.id, {"y": 1.0}, study_uid=sibling.uid)
    with pytest.raises(NotFoundError) as e:
        mine.tell(t.id, {"y": 1.0}, study_uid=theirs.uid)
    assert "deleted since" in str(e.value) and "secret-name" not in str(e.value)
    gone = "0" * len(theirs.uid)  # a uid no study has: the same answer
    with pytest.raises(NotFoundError) as e2:
        mine.tell(t.id, {"y": 1.0}, study_uid=gone)
    assert str(e2.value).replace(gone, theirs.uid) == str(e.value)
    assert mine.get_trial(t.id).state is TrialState.PENDING


class _Broken:
    def __init__(self, spec):
        self.spec = spec

    def suggest(self, trials, n):
        raise RuntimeError("boom")

    def status(self, trials):
        return ("LIKELY_INFEASIBLE", "nothing meets the constraints")


def test_broken_strategy_falls_back_and_status_is_stored(storage):
    reg = StudyRegistry(storage, strategy_factory=_Broken)
    st, _ = reg.create_study("s", SPEC)
    res = st.ask(3)
    assert len(res.trials) == 3 and all(
        t.origin == "fallback" and "boom" in t.reason for t in res.trials
    )
    assert len({t.params["x"] for t in res.trials}) == 3
    assert "nothing meets" in res.note
    a, f, _ = res.trials
    assert (
        "boom" in st.tell(a.id, {"y": 1.0}).trial.reason
    )  # the generation note outlives a tell without a reason
    assert st.tell(f.id, failed=True, reason="OOM").trial.reason == "OOM"
    b = st.best()
    assert b.state == "LIKELY_INFEASIBLE" and b.state_reason == "nothing meets the constraints"


class _Says:
    """A strategy whose infeasibility verdict the test sets (a replica's own GP would compute it)."""

    def __init__(self, spec, verdict=("ACTIVE", "")):
        self.spec, self.verdict = spec, verdict

    def suggest(self, trials, n):
        raise RuntimeError("no points needed here")

    def status(self, trials):
        return self.verdict


CONSTRAINED = dict(SPEC, outcome_constraints=[{"metric": "c", "op": "<=", "bound": 0.0}])


def test_infeasible_state_is_compared_with_the_stored_one_across_replicas(storage):
    """Two registries on one database (two replicas): A declares LIKELY_INFEASIBLE; B, whose copy of
    the study still says ACTIVE, computes ACTIVE on its next ask and must store it (before: B
    compared with its own stale copy, wrote nothing, and the state stuck)."""
    a = StudyRegistry(
        storage, strategy_factory=lambda spec: _Says(spec, ("LIKELY_INFEASIBLE", "nothing meets c"))
    )
    b = StudyRegistry(storage, strategy_factory=_Says)
    sa_, _ = a.create_study("s", CONSTRAINED)
    sb = b.get_study("s")
    sb.ask(1)
    sa_.ask(1)
    assert sb.best().state == "LIKELY_INFEASIBLE"
    sb.ask(1)
    assert sa_.best().state == "ACTIVE" and sb.best().state == "ACTIVE"


def test_a_feasible_result_ends_likely_infeasible_without_waiting_for_an_ask(storage):
    reg = StudyRegistry(
        storage, strategy_factory=lambda spec: _Says(spec, ("LIKELY_INFEASIBLE", "nothing meets c"))
    )
    st, _ = reg.create_study("s", CONSTRAINED)
    (t,) = st.ask(1).trials
    st.tell(t.id, {"y": 1.0, "c": 2.0})
    assert st.best().state == "LIKELY_INFEASIBLE"
    st.add_trial({"x": 0.5}, {"y": 3.0, "c": 1.0})  # still infeasible: no change
    assert st.best().state == "LIKELY_INFEASIBLE"
    st.add_trial({"x": 0.25}, {"y": 3.0, "c": -1.0})
    assert st.best().state == "ACTIVE" and st.best().state_reason == ""


def test_median_rule_for_maximize(storage):
    reg = StudyRegistry(
        storage, config=StudyConfig(stopping=MedianRule(min_trials=2, warmup_steps=2))
    )
    spec = dict(SPEC, objectives=[{"name": "acc", "goal": "maximize"}])
    st, _ = reg.create_study("m", spec)
    for v in (0.8, 0.9):
        (t,) = st.ask().trials
        for step in range(4):
            st.report_intermediate(t.id, step, v)
        st.tell(t.id, {"acc": v})
    (t,) = st.ask().trials
    assert st.report_intermediate(t.id, 1, 0.1) == (False, "")  # still warming up
    stop, why = st.report_intermediate(t.id, 2, 0.1)
    assert stop and "median" in why
    (u,) = st.ask().trials
    assert not st.report_intermediate(u.id, 3, 0.95)[0]
    with pytest.raises(SpecError, match="value must be a finite number"):
        st.report_intermediate(u.id, 4, float("nan"))


def test_server_device_is_the_default_for_auto_specs(storage):
    seen = []

    class Capture:
        def __init__(self, spec):
            seen.append(spec.algorithm.device)

    reg = StudyRegistry(storage, strategy_factory=Capture, config=StudyConfig(device="cpu"))
    auto, _ = reg.create_study("auto", SPEC)
    cuda, _ = reg.create_study("cuda", dict(SPEC, algorithm={"n_initial": 5, "device": "cuda"}))
    assert auto.strategy is not None and cuda.strategy is not None  # built on first use
    assert seen == ["cpu", "cuda"]
