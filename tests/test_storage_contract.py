"""The storage interface's contract, run against both backends: a SQLite file and a real PostgreSQL
on a loopback port (skipped, with the reason, where the PostgreSQL binaries are absent).

Besides each call's behaviour: a study is named by its uid alone, so calls on a deleted study find
nothing and write nothing, ids are never reused, and races of deletes and re-creates against
lookups, asks, tells and LLM calls of two tenants never cross from one study into another."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest

from bbo.errors import LimitError, NotFoundError, StudyNotFound
from bbo.limits import LimitExceeded
from bbo.storage import Continuation, LlmCallRecord, NewTrial, RequestKey, open_storage, schema
from bbo.testing import postgres as pg_cluster
from bbo.trial import Metric, TrialState

SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y"}],
}
DESIGN_ONLY = {**SPEC, "algorithm": {"n_initial": 10000}}  # asks stay in the (cheap) Sobol design


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_storage("sqlite:///" + str(tmp_path / "contract.db"))
    else:
        reason = pg_cluster.missing_reason()
        if reason:
            pytest.skip(reason)
        cluster = request.getfixturevalue("cluster")
        s = open_storage(cluster.create_database("c_" + uuid.uuid4().hex[:12]), pool_size=8)
    yield s
    s.close()


def complete(value: float):
    return lambda cur: dataclasses.replace(
        cur, state=TrialState.COMPLETED, metrics={"y": Metric(value)}
    )


# ---- each call ----------------------------------------------------------------------------------
def test_studies_are_unique_per_tenant_with_random_uids(store):
    a = store.create_study("t1", "s", SPEC, 1)
    assert a is not None and a.trial_counter == 0 and len(a.uid) >= 16
    assert store.create_study("t1", "s", SPEC, 1) is None
    b = store.create_study("t2", "s", SPEC, 1)
    assert b is not None and b.uid != a.uid
    assert [r.name for r in store.list_studies("t1")] == ["s"]
    assert store.get_study("t1", "s") == a and store.get_study_by_uid(b.uid) == b
    assert store.count_studies("t1") == 1 and store.count_studies("nobody") == 0


def test_transfer_record_is_stored_with_the_study_and_replaced_on_its_row_only(store):
    src = store.create_study("t", "src", SPEC, 1)
    assert src.transfer is None
    record = {"sources": [{"uid": src.uid, "name": "src", "relatedness": 0.9}], "weights": {}}
    tgt = store.create_study("t", "tgt", SPEC, 2, transfer=record)
    assert tgt.transfer == record and store.get_study("t", "tgt").transfer == record
    later = {**record, "weights": {"by_metric": {"y": {src.uid: 0.7}}, "n": 4}, "deleted": []}
    store.set_study_transfer(tgt.uid, later)
    assert store.get_study_by_uid(tgt.uid).transfer == later
    assert store.get_study_by_uid(src.uid) == src  # the source's row is untouched
    assert [r.transfer for r in store.list_studies("t")] == [None, later]
    assert store.delete_study(tgt.uid)
    with pytest.raises(StudyNotFound):
        store.set_study_transfer(tgt.uid, record)


def test_the_study_limit_holds_under_concurrent_creates(store):
    outcomes: list[str] = []

    def create(i):
        try:
            outcomes.append(
                "ok" if store.create_study("t", f"s{i}", SPEC, 1, max_studies=5) else "taken"
            )
        except LimitError:
            outcomes.append("limit")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 5 and outcomes.count("limit") == 19
    assert store.count_studies("t") == 5


def test_list_studies_pages_in_creation_order(store):
    for name in ("c", "a", "b"):
        store.create_study("t", name, SPEC, 1)
        store.create_study("other", name + "x", SPEC, 1)
    first = store.list_studies("t", limit=2)
    assert [r.name for r in first] == ["c", "a"]
    rest = store.list_studies("t", after=(first[-1].created_at, first[-1].name), limit=2)
    assert [r.name for r in rest] == ["b"]
    # the same pages by their keys alone, and the studies read back by uid in the order asked
    keys = store.list_study_keys("t", limit=2)
    assert [(k.uid, k.name, k.created_at) for k in keys] == [
        (r.uid, r.name, r.created_at) for r in first
    ]
    after = (keys[-1].created_at, keys[-1].name)
    assert [k.uid for k in store.list_study_keys("t", after=after, limit=2)] == [rest[0].uid]
    uids = [r.uid for r in (*rest, *first)]
    assert store.studies_by_uid([*uids, "nowhere"]) == [*rest, *first]
    assert store.studies_by_uid([]) == []


def test_studies_created_at_the_same_instant_page_by_name(store):

    from bbo.storage import schema as S

    for name in ("d", "b", "c", "a", "e"):
        store.create_study("t", name, SPEC, 1)
    with store.engine.begin() as conn:  # a, b, c share one instant, between d and e
        for name, at in (("d", 1.0), ("a", 2.0), ("b", 2.0), ("c", 2.0), ("e", 3.0)):
            conn.execute(S.studies.update().where(S.studies.c.name == name).values(created_at=at))
    for limit in (1, 2, 3, 5):
        names, keys, after = [], [], None
        while page := store.list_studies("t", after=after, limit=limit):
            names += [r.name for r in page]
            after = (page[-1].created_at, page[-1].name)
        after = None
        while page := store.list_study_keys("t", after=after, limit=limit):
            keys += [k.name for k in page]
            after = (page[-1].created_at, page[-1].name)
        assert names == keys == ["d", "a", "b", "c", "e"], limit


def test_completed_counts_of_many_studies(store, monkeypatch):
    from bbo.storage import sql
    from bbo.storage.base import Storage

    uids = [store.create_study("t", f"s{i}", SPEC, 1).uid for i in range(5)]
    other = store.create_study("u", "s0", SPEC, 1).uid
    for i, uid in enumerate(uids):  # study i: i completed trials, and one pending
        ts, _ = store.insert_trials(uid, [NewTrial({"x": 0.1}, "bo")] * (i + 1))
        for t in ts[:i]:
            store.modify_trial(uid, t.id, complete(float(t.id)))
    store.insert_trials(other, [NewTrial({"x": 0.1}, "user", TrialState.COMPLETED)] * 2)
    gone = store.create_study("t", "gone", SPEC, 1).uid
    store.insert_trials(gone, [NewTrial({"x": 0.1}, "user", TrialState.COMPLETED)])
    assert store.delete_study(gone)
    asked = [uids[3], other, gone, "nowhere", *uids]
    want = {**{u: i for i, u in enumerate(uids)}, other: 2}  # those not found left out
    monkeypatch.setattr(sql, "COUNT_PAGE", 2)  # several pages
    assert store.completed_counts(asked) == want
    assert store.completed_counts([]) == {}
    assert Storage.completed_counts(store, asked) == want  # the fallback, one study at a time
    for uid, n in want.items():
        assert store.trial_counts(uid).get("COMPLETED", 0) == n


def test_concurrent_trial_numbers_are_unique_and_dense(store):
    uid = store.create_study("t", "s", SPEC, 1).uid
    got: list[int] = []
    lock = threading.Lock()

    def work():
        for _ in range(10):
            ts, _ = store.insert_trials(
                uid, [NewTrial({"x": 0.5}, "bo"), NewTrial({"x": 0.6}, "bo")]
            )
            with lock:
                got.extend(t.id for t in ts)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 161))
    assert store.get_study_by_uid(uid).trial_counter == 160


def test_request_log_replays(store):
    uid = store.create_study("t", "s", SPEC, 1).uid
    req = RequestKey("ask", "r1", "h1")
    first, prev = store.insert_trials(uid, [NewTrial({"x": 0.1}, "bo")], request=req)
    assert prev is None
    again, prev = store.insert_trials(uid, [NewTrial({"x": 0.9}, "bo")], request=req)
    assert prev.request_hash == "h1" and prev.response == {"trials": [first[0].id]}
    assert [t.id for t in again] == [first[0].id]
    assert len(store.list_trials(uid)) == 1
    assert store.lookup_request(uid, "ask", "r1") == prev
    assert store.lookup_request(uid, "ask", "r2") is None


def test_request_ids_with_nul_are_stored_as_every_text_column_stores_them(store):
    """PostgreSQL cannot store NUL, so text columns keep U+FFFD in its place on both backends: a
    request id with NUL and the same id with U+FFFD are one request on both (and a SQLite
    database holding both could not be copied to PostgreSQL)."""
    uid = store.create_study("t", "s", SPEC, 1).uid
    first, _ = store.insert_trials(
        uid, [NewTrial({"x": 0.1}, "bo")], request=RequestKey("add", "r\x00", "h1")
    )
    again, prev = store.insert_trials(
        uid, [NewTrial({"x": 0.9}, "bo")], request=RequestKey("add", "r\ufffd", "h2")
    )
    assert prev is not None and prev.request_hash == "h1"
    assert [t.id for t in again] == [first[0].id] and len(store.list_trials(uid)) == 1
    assert store.lookup_request(uid, "add", "r\ufffd") == store.lookup_request(uid, "add", "r\x00")
    tell = RequestKey("tell", "t\x00", "h3")
    _, changed, _ = store.modify_trial(uid, first[0].id, complete(1.0), request=tell)
    assert changed
    _, changed, prev = store.modify_trial(
        uid, first[0].id, complete(2.0), request=RequestKey("tell", "t\ufffd", "h3")
    )
    assert not changed and prev is not None and prev.request_hash == "h3"
    assert store.lookup_request(uid, "tell", "t\ufffd") is not None


def test_modify_trial_and_events(store):
    uid = store.create_study("t", "s", SPEC, 1).uid
    (t,), _ = store.insert_trials(uid, [NewTrial({"x": 0.1}, "bo")])
    new, changed, _ = store.modify_trial(
        uid,
        t.id,
        lambda cur: dataclasses.replace(
            cur, state=TrialState.COMPLETED, metrics={"y": Metric(1.5, 0.1)}
        ),
    )
    assert changed and new.state is TrialState.COMPLETED
    stored = store.get_trial(uid, t.id)
    assert stored.metrics == {"y": Metric(1.5, 0.1)} and stored.state is TrialState.COMPLETED
    assert [e[0] for e in store.trial_events(uid, t.id)] == ["PENDING", "COMPLETED"]
    same, changed, _ = store.modify_trial(uid, t.id, lambda cur: None)
    assert not changed and same.state is TrialState.COMPLETED
    missing, changed, _ = store.modify_trial(uid, 99, lambda cur: cur)
    assert missing is None and not changed

    def refuse(cur):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.modify_trial(uid, t.id, refuse)
    assert store.get_trial(uid, t.id) == stored  # the refused change rolled back
    assert store.trial_counts(uid) == {"COMPLETED": 1}
    (u,), _ = store.insert_trials(uid, [NewTrial({"x": 0.2}, "bo")])
    assert store.trial_numbers(uid, TrialState.COMPLETED) == {t.id}
    assert store.trial_numbers(uid, TrialState.PENDING) == {u.id}
    assert store.trial_numbers(uid, TrialState.FAILED) == set()


def test_expire_leases(store):
    uid = store.create_study("t", "s", SPEC, 1).uid
    other = store.create_study("t", "o", SPEC, 1).uid
    ts, _ = store.insert_trials(uid, [NewTrial({"x": 0.1}, "bo")], lease_expires_at=100.0)
    ts2, _ = store.insert_trials(uid, [NewTrial({"x": 0.2}, "bo")], lease_expires_at=10_000.0)
    store.insert_trials(other, [NewTrial({"x": 0.2}, "bo")], lease_expires_at=10_000.0)
    assert store.studies_with_expired_leases(200.0) == [uid]
    assert store.expire_leases(uid, now=200.0) == [ts[0].id]
    assert store.get_trial(uid, ts[0].id).state is TrialState.ABANDONED
    assert store.get_trial(uid, ts2[0].id).state is TrialState.PENDING
    assert (
        store.expire_leases(uid, now=200.0) == [] and store.studies_with_expired_leases(200.0) == []
    )


def test_intermediates_llm_calls_model_state_and_delete(store):
    uid = store.create_study("t", "s", SPEC, 1).uid
    (t,), _ = store.insert_trials(uid, [NewTrial({"x": 0.1}, "bo")])
    assert store.add_intermediate(uid, t.id, 1, 0.5)
    assert store.add_intermediate(uid, t.id, 1, 0.4)  # overwrite the same step
    assert store.add_intermediate(uid, t.id, 2, 0.3)
    assert not store.add_intermediate(uid, 42, 1, 0.3)
    with pytest.raises(LimitExceeded, match="trial 1 has 2 intermediate values") as e:
        store.add_intermediate(uid, t.id, 3, 0.2, max_steps=2)  # a new step past the bound
    assert e.value.field == "step" and e.value.flag == "max_steps_per_trial"
    assert store.add_intermediate(uid, t.id, 2, 0.35, max_steps=2)  # a stored step: replaced
    assert store.add_intermediate(uid, t.id, 2, 0.3, max_steps=2)
    assert store.intermediates(uid) == {t.id: [(1, 0.4), (2, 0.3)]}
    for purpose in ("warmstart", "priors", "warmstart"):
        store.log_llm_call(uid, LlmCallRecord(purpose, "m", "p", "r", "ok", 10, 5, 0.5))
    calls = store.list_llm_calls(uid)
    assert [c.number for c in calls] == [1, 2, 3] and calls[0].created_at > 0
    assert [c.number for c in store.list_llm_calls(uid, "warmstart", after=1)] == [3]
    assert store.model_state_n_fit(uid) is None and store.get_model_state(uid) is None
    store.put_model_state(uid, 7, 1, b"blob", "replica-a")
    store.put_model_state(uid, 9, 1, b"blob2", "replica-b")
    st = store.get_model_state(uid)
    assert (st.n_fit, st.blob, st.updated_by) == (9, b"blob2", "replica-b")
    assert store.model_state_n_fit(uid) == 9
    assert store.delete_study(uid)
    assert store.get_study("t", "s") is None and not store.delete_study(uid)


def test_intermediate_pages_resume_after_a_trial_and_step(store):
    """Pages of intermediate values in (trial, step) order, cut inside a trial and resumed after
    the last point: every value exactly once; another study's values never appear."""
    uid = store.create_study("t", "s", SPEC, 1).uid
    other = store.create_study("t", "o", SPEC, 1).uid
    ts, _ = store.insert_trials(uid, [NewTrial({"x": i / 4}, "bo") for i in range(4)])
    (o,), _ = store.insert_trials(other, [NewTrial({"x": 0.5}, "bo")])
    store.add_intermediate(other, o.id, 0, 9.0)
    for t in (ts[0], ts[2], ts[3]):  # trial 2 reports nothing
        for step in (0, 5, 2**62):
            store.add_intermediate(uid, t.id, step, t.id + step / 2**63)
    want = [(n, step, v) for n, pts in store.intermediates(uid).items() for step, v in pts]
    assert len(want) == 9 and want == sorted(want)
    assert store.intermediate_page(uid) == want
    seen, cursor = [], (0, None)
    while page := store.intermediate_page(uid, *cursor, limit=2):
        assert len(page) <= 2
        seen += page
        cursor = page[-1][:2]
    assert seen == want
    assert store.intermediate_page(uid, after=ts[2].id) == want[6:]  # the trials above 3
    assert store.intermediate_page(uid, ts[2].id, 0, limit=1) == want[4:5]
    assert store.intermediate_page(other) == [(o.id, 0, 9.0)]


def test_budgets_curves_and_continuations(store):
    """Trials keep their budget and bracket; intermediate values their budget and first time; a
    PAUSED trial is continued once, in the ask's transaction, and the ask's request replays it."""
    uid = store.create_study("t", "s", SPEC, 1).uid
    (a, b), _ = store.insert_trials(
        uid, [NewTrial({"x": 0.1}, "bo", budget=1.0, bracket=0), NewTrial({"x": 0.2}, "bo")]
    )
    assert (a.budget, a.bracket, a.resume_budget) == (1.0, 0, None) and b.budget is None
    assert store.add_intermediate(uid, a.id, 1, 0.5, budget=1.0)
    first = store.curves(uid)[a.id][0]
    time.sleep(0.01)
    assert store.add_intermediate(uid, a.id, 1, 0.5, budget=1.0)  # a repeat keeps its time
    assert store.curves(uid)[a.id] == [first] and (first.step, first.budget) == (1, 1.0)
    store.add_intermediate(uid, b.id, 3, 0.7)
    assert store.curves(uid, [b.id])[b.id][0].budget is None and a.id not in store.curves(
        uid, [b.id]
    )
    # the values stored since a time (ReportIntermediate's kept curves read what changed)
    newest = store.curves(uid)[b.id][0].at
    assert store.curves(uid, since=newest) == {b.id: store.curves(uid)[b.id]}
    assert store.curves(uid, since=newest + 1) == {}
    assert store.curves(uid, since=0.0) == store.curves(uid)
    store.add_intermediate(uid, a.id, 1, 0.6, budget=1.0)  # overwritten: stored anew
    assert store.curves(uid, since=newest)[a.id][0].value == 0.6
    store.add_intermediate(uid, a.id, 1, 0.5, budget=1.0)
    first = store.curves(uid)[a.id][0]
    paused = store.modify_trial(
        uid,
        a.id,
        lambda cur: dataclasses.replace(
            cur, state=TrialState.PAUSED, metrics={"y": Metric(0.5)}, lease_expires_at=None
        ),
    )[0]
    assert (paused.state, paused.budget) == (TrialState.PAUSED, 1.0)
    go = Continuation(a.id, 1.0, 3.0, "continued to 3")
    req = RequestKey("ask", "r1", "h")
    (cont, new), prev = store.insert_trials(
        uid,
        [NewTrial({"x": 0.3}, "bo", budget=1.0, bracket=0)],
        worker_id="w",
        lease_expires_at=time.time() + 60,
        request=req,
        continuations=[go],
    )
    assert prev is None and cont.id == a.id and new.id == 3
    assert (cont.state, cont.budget, cont.resume_budget, cont.params) == (
        TrialState.PENDING,
        3.0,
        1.0,
        {"x": 0.1},
    )
    assert cont.metrics == {} and cont.worker_id == "w" and cont.lease_expires_at is not None
    assert store.get_trial(uid, a.id) == cont
    assert store.curves(uid)[a.id] == [first]  # the curve stays with the trial
    again, _ = store.insert_trials(uid, [], continuations=[go])  # no longer PAUSED at 1.0
    assert again == []
    replay, prev = store.insert_trials(uid, [], request=req, continuations=[go])
    assert prev is not None and [t.id for t in replay] == [a.id, 3]
    assert [e[1] for e in store.trial_events(uid, a.id)][-1] == "continued to 3"


def test_a_clock_stepped_back_never_stamps_a_value_before_the_studys_newest(store):
    """Replicas read the values stamped since the newest they saw: a value stamped earlier, as a
    clock stepped back an hour would stamp it, is stamped just past the study's newest instead,
    and every reader still finds it."""
    uid = store.create_study("t", "s", SPEC, 1).uid
    other = store.create_study("t", "o", SPEC, 1).uid
    (a,), _ = store.insert_trials(uid, [NewTrial({"x": 0.1}, "bo")])
    (b,), _ = store.insert_trials(other, [NewTrial({"x": 0.1}, "bo")])
    store.add_intermediate(uid, a.id, 1, 0.5)
    seen = store.curves(uid)[a.id][0].at
    ahead = seen + 3600.0  # the clock read an hour ahead for the last report, then stepped back
    with store._write() as conn:
        c = schema.studies.c
        conn.execute(schema.studies.update().where(c.uid == uid).values(report_clock=ahead))
    store.add_intermediate(uid, a.id, 2, 0.4)
    store.add_intermediate(uid, a.id, 3, 0.3)
    steps = store.curves(uid, since=ahead)[a.id]
    assert [p.step for p in steps] == [2, 3] and ahead < steps[0].at < steps[1].at
    store.add_intermediate(other, b.id, 1, 0.5)  # another study keeps its own clock
    assert store.curves(other)[b.id][0].at < ahead


def test_api_keys(store):
    from bbo.storage.keys import KeyStore

    keys = KeyStore(store)
    key, rec = keys.create("tenant-a", "ci")
    assert keys.verify(key) == "tenant-a" and keys.count_active() == 1
    assert keys.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert [k.key_id for k in keys.list("tenant-a")] == [rec.key_id]
    assert keys.revoke(rec.key_id) and not keys.revoke(rec.key_id)
    assert keys.verify(key) is None and keys.count_active() == 0


# ---- identity -----------------------------------------------------------------------------------
def test_every_call_on_a_deleted_study_finds_nothing_and_writes_nothing(store):
    gone = store.create_study("a", "s", SPEC, 1).uid
    (t,), _ = store.insert_trials(gone, [NewTrial({"x": 0.1}, "bo")])
    assert store.delete_study(gone)
    # the name (and, on SQLite without AUTOINCREMENT, the row id) is taken again at once
    new = store.create_study("a", "s", SPEC, 1).uid
    other = store.create_study("b", "s", SPEC, 1).uid
    (t2,), _ = store.insert_trials(new, [NewTrial({"x": 0.7}, "bo")])
    calls = [
        lambda: store.insert_trials(gone, [NewTrial({"x": 0.2}, "bo")]),
        lambda: store.modify_trial(gone, t.id, complete(1.0)),
        lambda: store.get_trial(gone, t.id),
        lambda: store.list_trials(gone),
        lambda: store.trial_counts(gone),
        lambda: store.trial_numbers(gone, TrialState.COMPLETED),
        lambda: store.trial_events(gone, t.id),
        lambda: store.add_intermediate(gone, t.id, 1, 0.5),
        lambda: store.intermediates(gone),
        lambda: store.intermediate_page(gone),
        lambda: store.log_llm_call(gone, LlmCallRecord("priors", "m", "secret", "r", "ok")),
        lambda: store.list_llm_calls(gone),
        lambda: store.set_study_state(gone, "LIKELY_INFEASIBLE", "a reason"),
        lambda: store.set_study_transfer(gone, {"sources": []}),
        lambda: store.put_model_state(gone, 5, 1, b"x", "r"),
        lambda: store.expire_leases(gone, time.time()),
        lambda: store.lookup_request(gone, "tell", "r"),
    ]
    for call in calls:
        with pytest.raises(StudyNotFound):
            call()
    assert store.get_study_by_uid(gone) is None and store.model_state_n_fit(gone) is None
    for uid in (new, other):
        rec = store.get_study_by_uid(uid)
        assert (rec.state, rec.state_reason) == ("ACTIVE", "")
        assert store.list_llm_calls(uid) == [] and store.intermediates(uid) == {}
        assert store.model_state_n_fit(uid) is None
    assert [(x.id, x.state, x.params) for x in store.list_trials(new)] == [
        (1, TrialState.PENDING, {"x": 0.7})
    ]
    assert store.list_trials(other) == []


def test_ids_are_never_reused(store):
    """A deleted study's row id is never given to a new one (SQLite AUTOINCREMENT)."""
    import sqlalchemy as sa

    from bbo.storage import schema as S

    def ids():
        with store.engine.connect() as c:
            return [r[0] for r in c.execute(sa.select(S.studies.c.id).order_by(S.studies.c.id))]

    a = store.create_study("t", "a", SPEC, 1).uid
    store.create_study("t", "b", SPEC, 1)
    top = max(ids())
    store.delete_study(store.get_study("t", "b").uid)
    store.delete_study(a)
    store.create_study("t", "c", SPEC, 1)
    assert ids() == [top + 1]


# ---- races through the registry ------------------------------------------------------------------
def _registry(store, **kw):
    from bbo.registry import StudyRegistry

    return StudyRegistry(store, **kw)


def test_delete_recreate_and_lookup_races_never_cross_tenants(store):
    """100 rounds: tenant A deletes and re-creates its study 's' while other threads of A look it
    up and tell on the Study objects they hold, and tenant B creates studies. No write of A ever
    lands in a study of B, and every lookup of A finds A's study."""
    reg = _registry(store)
    stop = threading.Event()
    errors: list[str] = []
    b_uids: list[str] = []
    st, _ = reg.create_study("s", DESIGN_ONLY, tenant="A")

    def a_worker():
        while not stop.is_set():
            try:
                s = reg.get_study("s", tenant="A")
                if s.tenant != "A" or s.name != "s":
                    errors.append(f"lookup of A/s gave {s.tenant}/{s.name}")
                info = s.info()
                if info.name != "s":
                    errors.append(f"info of A/s named {info.name}")
                (t,) = s.ask().trials
                s.tell(t.id, {"y": 1.0})
            except NotFoundError:
                pass  # deleted meanwhile: the right answer

    def b_worker():
        i = 0
        while not stop.is_set():
            b, _ = reg.create_study(f"b{i}", DESIGN_ONLY, tenant="B")
            b_uids.append(b.uid)
            i += 1

    threads = [threading.Thread(target=a_worker) for _ in range(2)] + [
        threading.Thread(target=b_worker)
    ]
    for t in threads:
        t.start()
    try:
        for _ in range(100):
            reg.delete_study("s", tenant="A")
            reg.create_study("s", DESIGN_ONLY, tenant="A")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    for uid in b_uids:  # B's studies: never asked or told by anyone
        assert store.list_trials(uid) == [], "a write of tenant A reached a study of tenant B"
    # the name works after the storm: the registry holds the live study, not a deleted one
    s = reg.get_study("s", tenant="A")
    assert s.uid == store.get_study("A", "s").uid
    (t,) = s.ask().trials
    assert s.tell(t.id, {"y": 0.5}).trial.state is TrialState.COMPLETED
    reg.close()


class _GatedStrategy:
    """A real GenerationStrategy whose suggest waits for a signal (to hold an ask in flight)."""

    def __init__(self, spec, started: threading.Event, release: threading.Event):
        from bbo.strategy import GenerationStrategy

        self.inner = GenerationStrategy(spec)
        self.started, self.release = started, release

    def suggest(self, trials, n=1, **kw):
        self.started.set()
        self.release.wait(30)
        return self.inner.suggest(trials, n, **kw)

    def status(self, trials):
        return ("LIKELY_INFEASIBLE", "a reason only tenant A wrote")


def test_asks_tells_and_llm_calls_in_flight_when_their_study_is_deleted_write_nothing(store):
    started, release = threading.Event(), threading.Event()
    reg = _registry(store, strategy_factory=lambda spec: _GatedStrategy(spec, started, release))
    a, _ = reg.create_study("s", DESIGN_ONLY, tenant="A")
    result: dict = {}

    def ask():
        try:
            result["ask"] = a.ask()
        except NotFoundError as e:
            result["ask"] = e

    th = threading.Thread(target=ask)
    th.start()
    assert started.wait(30)
    reg.delete_study("s", tenant="A")
    b, _ = reg.create_study("s", DESIGN_ONLY, tenant="B")
    b2, _ = reg.create_study("x", DESIGN_ONLY, tenant="B")
    release.set()
    th.join(30)
    assert isinstance(result["ask"], NotFoundError), result["ask"]
    for call in (
        lambda: a.tell(1, {"y": 1.0}),
        lambda: a.heartbeat(1),
        lambda: a.report_intermediate(1, 1, 0.5),
        lambda: a.log_llm_call(LlmCallRecord("priors", "m", "A's private description", "r", "ok")),
        lambda: a.add_trial({"x": 0.5}, {"y": 1.0}),
        lambda: a.info(),
        lambda: a.best(),
        lambda: a.trials(),
    ):
        with pytest.raises(NotFoundError):
            call()
    for s in (b, b2):
        info = s.info()
        assert (info.state, info.state_reason, info.trial_count) == ("ACTIVE", "", 0)
        assert s.llm_calls() == []
    reg.close()


def test_an_llm_calls_model_name_and_token_counts_are_stored_within_the_schema(store):
    """An endpoint reports any model name and token counts: SQLite stored a 300-character name
    and 2**40 tokens, PostgreSQL refused them (varchar(256), a 32-bit integer), so the call went
    unrecorded there and a SQLite database holding one could not be copied to PostgreSQL."""
    uid = store.create_study("t", "llm-sizes", SPEC, 1).uid
    store.log_llm_call(uid, LlmCallRecord("priors", "m" * 300, "p", "r", "ok", 2**40, -5, 0.1))
    (call,) = store.list_llm_calls(uid)
    assert call.model == "m" * 256 and (call.prompt_tokens, call.completion_tokens) == (
        2**31 - 1,
        0,
    )
