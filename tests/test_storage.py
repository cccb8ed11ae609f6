"""Storage on SQLite: migrations, trial-number allocation under concurrency, idempotency log,
read-modify-write, leases, intermediate values, LLM calls, deletion."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from bbo.storage import LlmCallRecord, NewTrial, RequestKey, Storage
from bbo.trial import Metric, TrialState

SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y"}],
}


def test_migrates_to_head_and_is_idempotent(tmp_path):
    url = "sqlite:///" + str(tmp_path / "m.db")
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import bbo.storage

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(bbo.storage.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()  # one head: migrations form a chain
    s = Storage(url)
    assert s.current_revision() == head
    s.close()
    s2 = Storage(url)  # second start: nothing to do
    assert s2.current_revision() == head
    s2.close()


def test_sqlite_pragmas(storage):
    with storage.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    # the group-commit writer (every Tell's commit) runs on a connection of its own: same settings
    raw = storage._group._raw()
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert raw.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_synchronous_from_url(tmp_path):
    s = Storage("sqlite:///" + str(tmp_path / "n.db") + "?synchronous=normal")
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    assert s._group._raw().execute("PRAGMA synchronous").fetchone()[0] == 1
    s.close()
    with pytest.raises(ValueError):
        Storage("sqlite:///" + str(tmp_path / "n.db") + "?synchronous=sometimes")


def test_migrated_schema_matches_metadata(storage):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bbo.storage.schema import metadata

    with storage.engine.connect() as c:
        diff = compare_metadata(
            MigrationContext.configure(c, opts={"compare_type": True}), metadata
        )
    assert diff == [], f"schema.py and the migrations disagree: {diff}"


def test_study_unique_per_tenant(storage):
    a = storage.insert_study("t1", "s", SPEC, 1)
    assert a is not None and a.trial_counter == 0
    assert storage.insert_study("t1", "s", SPEC, 1) is None
    assert storage.insert_study("t2", "s", SPEC, 1) is not None
    assert [r.name for r in storage.list_studies("t1")] == ["s"]


def test_concurrent_trial_numbers_are_unique_and_dense(storage):
    st = storage.insert_study("t", "s", SPEC, 1)
    got: list[int] = []
    lock = threading.Lock()

    def work():
        for _ in range(10):
            ts, _ = storage.insert_trials(
                st.id, [NewTrial({"x": 0.5}, "bo"), NewTrial({"x": 0.6}, "bo")]
            )
            with lock:
                got.extend(t.id for t in ts)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 161))
    assert storage.get_study_by_id(st.id).trial_counter == 160


def test_request_log_replays(storage):
    st = storage.insert_study("t", "s", SPEC, 1)
    req = RequestKey("t", "ask", "r1", "h1")
    first, prev = storage.insert_trials(st.id, [NewTrial({"x": 0.1}, "bo")], request=req)
    assert prev is None
    again, prev = storage.insert_trials(st.id, [NewTrial({"x": 0.9}, "bo")], request=req)
    assert prev == {"hash": "h1", "trials": [first[0].id]} and [t.id for t in again] == [
        first[0].id
    ]
    assert len(storage.list_trials(st.id)) == 1


def test_modify_trial_and_events(storage):
    st = storage.insert_study("t", "s", SPEC, 1)
    (t,), _ = storage.insert_trials(st.id, [NewTrial({"x": 0.1}, "bo")])
    import dataclasses

    new, changed, _ = storage.modify_trial(
        st.id,
        t.id,
        lambda cur: dataclasses.replace(
            cur, state=TrialState.COMPLETED, metrics={"y": Metric(1.5, 0.1)}
        ),
    )
    assert changed and new.state is TrialState.COMPLETED
    stored = storage.get_trial(st.id, t.id)
    assert stored.metrics == {"y": Metric(1.5, 0.1)} and stored.state is TrialState.COMPLETED
    assert [e[0] for e in storage.trial_events(st.id, t.id)] == ["PENDING", "COMPLETED"]
    same, changed, _ = storage.modify_trial(st.id, t.id, lambda cur: None)
    assert not changed and same.state is TrialState.COMPLETED
    missing, changed, _ = storage.modify_trial(st.id, 99, lambda cur: cur)
    assert missing is None and not changed

    def refuse(cur):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        storage.modify_trial(st.id, t.id, refuse)
    assert storage.get_trial(st.id, t.id) == stored  # the refused change rolled back


def test_expire_leases(storage):
    st = storage.insert_study("t", "s", SPEC, 1)
    ts, _ = storage.insert_trials(st.id, [NewTrial({"x": 0.1}, "bo")], lease_expires_at=100.0)
    ts2, _ = storage.insert_trials(st.id, [NewTrial({"x": 0.2}, "bo")], lease_expires_at=10_000.0)
    assert storage.expire_leases(st.id, now=200.0) == [ts[0].id]
    assert storage.get_trial(st.id, ts[0].id).state is TrialState.ABANDONED
    assert storage.get_trial(st.id, ts2[0].id).state is TrialState.PENDING
    assert storage.expire_leases(st.id, now=200.0) == []


def test_intermediates_llm_calls_and_delete(storage):
    st = storage.insert_study("t", "s", SPEC, 1)
    (t,), _ = storage.insert_trials(st.id, [NewTrial({"x": 0.1}, "bo")])
    assert storage.add_intermediate(st.id, t.id, 1, 0.5)
    assert storage.add_intermediate(st.id, t.id, 1, 0.4)  # overwrite the same step
    assert storage.add_intermediate(st.id, t.id, 2, 0.3)
    assert not storage.add_intermediate(st.id, 42, 1, 0.3)
    assert storage.intermediates(st.id) == {t.id: [(1, 0.4), (2, 0.3)]}
    storage.log_llm_call(st.id, LlmCallRecord("warmstart", "m", "p", "r", "ok", 10, 5, 0.5))
    (c,) = storage.list_llm_calls(st.id)
    assert (c.purpose, c.prompt_tokens, c.completion_tokens) == (
        "warmstart",
        10,
        5,
    ) and c.created_at > 0
    assert storage.delete_study(st.id)
    assert storage.get_study("t", "s") is None
    with storage.engine.connect() as conn:
        for table in ("trials", "trial_events", "intermediate_values", "llm_calls", "request_log"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0
    assert not storage.delete_study(st.id)


def test_group_commit_rolls_back_only_the_failed_update_of_a_shared_batch(storage):
    """Tells queued together share one transaction; one whose write fails half way (its trial row
    already updated, then the request-log insert violates NOT NULL) is undone alone."""
    import dataclasses

    sid = storage.insert_study("t", "s", SPEC, 1).id
    trials, _ = storage.insert_trials(sid, [NewTrial({"x": i / 10}, "initial") for i in range(9)])

    def complete(value):
        return lambda cur: dataclasses.replace(
            cur, state=TrialState.COMPLETED, metrics={"y": Metric(value)}
        )

    bad = RequestKey(
        None, "tell", "r-bad", "h"
    )  # tenant NULL: the request-log insert fails after the update
    results: dict[int, object] = {}

    def tell(t, request=None):
        try:
            results[t.id] = storage.modify_trial(sid, t.id, complete(float(t.id)), request=request)
        except Exception as e:  # noqa: BLE001 - recorded and checked below
            results[t.id] = e

    def wait_queue(cond):
        deadline = time.monotonic() + 30
        while not cond(storage._group._q.qsize()) and time.monotonic() < deadline:
            time.sleep(0.001)

    # Hold the writer lock so that everything queued after the first tell lands in one batch.
    with storage._wlock:
        threads = [threading.Thread(target=tell, args=(trials[0],))]
        threads[0].start()
        time.sleep(0.2)
        wait_queue(lambda n: n == 0)  # the writer took the first tell and waits for the lock
        threads += [
            threading.Thread(target=tell, args=(t, bad if t.id == 5 else None)) for t in trials[1:]
        ]
        for th in threads[1:]:
            th.start()
        wait_queue(lambda n: n == len(trials) - 1)
    for th in threads:
        th.join()
    assert "NOT NULL" in str(results[5]), results[5]
    stored = {t.id: t for t in storage.list_trials(sid)}
    assert stored[5].state is TrialState.PENDING and stored[5].metrics == {}
    assert storage.trial_events(sid, 5)[-1][0] == "PENDING"
    for t in trials:
        if t.id != 5:
            assert stored[t.id].state is TrialState.COMPLETED and stored[t.id].metrics[
                "y"
            ].value == float(t.id)
            assert results[t.id][1] is True


class _StatefulStrategy:
    """The model-state protocol of bbo.storage.coordination (export_state / import_state)."""

    def __init__(self):
        self.n_fit, self.hyper = 0, None

    def export_state(self):
        return None if self.hyper is None else (self.n_fit, self.hyper)

    def import_state(self, n_fit, hyper):
        self.n_fit, self.hyper = n_fit, hyper


def test_model_state_on_sqlite_is_read_once_per_strategy_then_kept_in_memory(storage):
    import torch

    from bbo.storage.coordination import ModelStateCache

    sid = storage.insert_study("t", "s", SPEC, 1).id
    statements = []
    sa.event.listen(
        storage.engine, "before_cursor_execute", lambda *a, **k: statements.append(a[2])
    )
    writer = ModelStateCache(storage)
    a = _StatefulStrategy()
    tok = writer.pull(sid, a)
    a.n_fit, a.hyper = 5, {"lengthscale": torch.tensor([0.5])}  # a fit
    assert writer.push(sid, a, tok)
    # a restarted process (new cache, new strategy) loads the stored state from the database
    restarted = ModelStateCache(storage)
    b = _StatefulStrategy()
    assert restarted.pull(sid, b).n_fit == 5 and b.n_fit == 5 and restarted.pulls == 1
    # from then on this process is the only writer of the file: pulls read nothing
    del statements[:]
    assert restarted.pull(sid, b).n_fit == 5 and writer.pull(sid, a).n_fit == 5
    assert statements == []
    assert restarted.pull(sid, _StatefulStrategy()).n_fit == 5 and any(
        "model_state" in s for s in statements
    )


def test_tells_racing_a_close_are_written_or_refused_never_left_waiting(tmp_path):
    """Tells queued around Storage.close either commit or fail with 'storage is closed'; none hangs
    (before, one queued behind close's end marker waited forever)."""
    import dataclasses
    import threading

    from bbo.storage import Storage

    storage = Storage(f"sqlite:///{tmp_path / 'close.db'}")
    sid = storage.insert_study("t", "s", SPEC, 1).id
    trials, _ = storage.insert_trials(sid, [NewTrial({"x": i / 100}, "initial") for i in range(60)])
    outcomes: dict[int, str] = {}
    go = threading.Event()

    def tell(t):
        go.wait()
        try:
            storage.modify_trial(
                sid,
                t.id,
                lambda cur: dataclasses.replace(
                    cur, state=TrialState.COMPLETED, metrics={"y": Metric(1.0)}
                ),
            )
            outcomes[t.id] = "stored"
        except RuntimeError as e:
            outcomes[t.id] = str(e)

    threads = [threading.Thread(target=tell, args=(t,), daemon=True) for t in trials]
    for th in threads:
        th.start()
    go.set()
    storage.close()
    deadline = time.monotonic() + 60
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    assert not any(th.is_alive() for th in threads), "a tell was left waiting on a closed storage"
    assert set(outcomes.values()) <= {"stored", "storage is closed"} and len(outcomes) == 60
    reopened = Storage(f"sqlite:///{tmp_path / 'close.db'}")
    try:
        done = {t.id for t in reopened.list_trials(sid, [TrialState.COMPLETED])}
        assert done == {
            n for n, o in outcomes.items() if o == "stored"
        }  # what was acknowledged is there
    finally:
        reopened.close()
