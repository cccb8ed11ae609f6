"""What only the SQLite backend does: migrations (AUTOINCREMENT rebuild of an older file), pragmas,
group commit, the in-memory model state, closing under load. The storage contract both backends
meet is tests/test_storage_contract.py."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sql_helpers import listing_statements

from bbo.storage import NewTrial, RequestKey, open_storage
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
    s = open_storage(url)
    assert s.schema_revision() == head
    s.close()
    s2 = open_storage(url)  # second start: nothing to do
    assert s2.schema_revision() == head
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
    s = open_storage("sqlite:///" + str(tmp_path / "n.db") + "?synchronous=normal")
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    assert s._group._raw().execute("PRAGMA synchronous").fetchone()[0] == 1
    s.close()
    with pytest.raises(ValueError):
        open_storage("sqlite:///" + str(tmp_path / "n.db") + "?synchronous=sometimes")


def test_migrated_schema_matches_metadata(storage):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bbo.storage.schema import metadata

    with storage.engine.connect() as c:
        diff = compare_metadata(
            MigrationContext.configure(c, opts={"compare_type": True}), metadata
        )
    assert diff == [], f"schema.py and the migrations disagree: {diff}"


def test_group_commit_rolls_back_only_the_failed_update_of_a_shared_batch(storage):
    """Tells queued together share one transaction; one whose write fails half way (its trial row
    already updated, then the request-log insert violates NOT NULL) is undone alone."""
    import dataclasses

    sid = storage.create_study("t", "s", SPEC, 1).uid
    trials, _ = storage.insert_trials(sid, [NewTrial({"x": i / 10}, "initial") for i in range(9)])

    def complete(value):
        return lambda cur: dataclasses.replace(
            cur, state=TrialState.COMPLETED, metrics={"y": Metric(value)}
        )

    bad = RequestKey(
        "tell", None, "h"
    )  # request_id NULL: the request-log insert fails after the update
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
    """The model-state protocol of bbo.model_sharing (export_state / import_state)."""

    def __init__(self):
        self.n_fit, self.hyper = 0, None

    def export_state(self):
        return None if self.hyper is None else (self.n_fit, self.hyper)

    def import_state(self, n_fit, hyper):
        self.n_fit, self.hyper = n_fit, hyper


def test_model_state_on_sqlite_is_read_once_per_strategy_then_kept_in_memory(storage):
    import torch

    from bbo.model_sharing import ModelStateCache

    sid = storage.create_study("t", "s", SPEC, 1).uid
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

    from bbo.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'close.db'}")
    sid = storage.create_study("t", "s", SPEC, 1).uid
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
    reopened = open_storage(f"sqlite:///{tmp_path / 'close.db'}")
    try:
        done = {t.id for t in reopened.list_trials(sid, [TrialState.COMPLETED])}
        assert done == {
            n for n, o in outcomes.items() if o == "stored"
        }  # what was acknowledged is there
    finally:
        reopened.close()


def test_an_older_database_keeps_its_rows_and_uids_through_the_identity_migration(tmp_path):
    """Revision 0004 rebuilds tables with AUTOINCREMENT: nothing may cascade away, studies keep the
    uids workers hold, LLM calls get per-study numbers, and a deleted row id is not reused."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import bbo.storage

    url = "sqlite:///" + str(tmp_path / "old.db")
    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(bbo.storage.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        for sid in (1, 2, 3):
            conn.exec_driver_sql(
                "INSERT INTO studies (id, tenant, name, spec, spec_hash, seed, state, state_reason, "
                f"trial_counter, created_at) VALUES ({sid}, 't', 's{sid}', '{{}}', 'h', 1, 'ACTIVE', "
                f"'', 1, 1700000000.{sid})"
            )
            conn.exec_driver_sql(
                "INSERT INTO trials (study_id, number, params, state, metrics, origin, reason, "
                f"rationale, worker_id, created_at, updated_at) VALUES ({sid}, 1, '{{}}', "
                "'COMPLETED', '{}', 'bo', '', '', '', 1, 1)"
            )
            for _ in range(2):
                conn.exec_driver_sql(
                    "INSERT INTO llm_calls (study_id, purpose, model, prompt, response, outcome, "
                    "prompt_tokens, completion_tokens, latency_seconds, created_at) VALUES "
                    f"({sid}, 'priors', 'm', 'p', 'r', 'ok', 1, 1, 0.1, 1)"
                )
        conn.exec_driver_sql("DELETE FROM trials WHERE study_id = 3")
        conn.exec_driver_sql("DELETE FROM llm_calls WHERE study_id = 3")
        conn.exec_driver_sql("DELETE FROM studies WHERE id = 3")
    engine.dispose()
    s = open_storage(url)
    try:
        assert s.schema_revision() == "0009"  # through 0004 to 0006 to the head
        r1 = s.get_study("t", "s1")
        assert r1.uid == f"1.{round(1700000000.1 * 1e6)}"
        assert [t.id for t in s.list_trials(r1.uid)] == [1]
        assert [c.number for c in s.list_llm_calls(s.get_study("t", "s2").uid)] == [1, 2]
        s.log_llm_call(r1.uid, bbo.storage.LlmCallRecord("priors", "m", "p", "r", "ok"))
        assert [c.number for c in s.list_llm_calls(r1.uid)] == [1, 2, 3]
        s.delete_study(s.get_study("t", "s2").uid)
        new = s.create_study("t", "s4", SPEC, 1)
        with s.engine.connect() as c:
            assert (
                c.exec_driver_sql("SELECT id FROM studies WHERE uid = ?", (new.uid,)).scalar() == 3
            )
    finally:
        s.close()


def test_a_database_locked_by_another_process_is_unavailable(tmp_path):
    """SQLite locked past its busy timeout (a second process writing the file) is StorageUnavailable
    (UNAVAILABLE: clients retry), on the plain write path and the group-commit (Tell) path alike."""
    import dataclasses
    import sqlite3

    from bbo.errors import StorageUnavailable

    path = tmp_path / "locked.db"
    s = open_storage(f"sqlite:///{path}?busy_timeout=200")
    try:
        uid = s.create_study("t", "s", SPEC, 1).uid
        (t,), _ = s.insert_trials(uid, [NewTrial({"x": 0.5}, "bo")])
        other = sqlite3.connect(str(path), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageUnavailable, match="locked"):
                s.create_study("t", "s2", SPEC, 1)
            with pytest.raises(StorageUnavailable, match="locked"):
                s.modify_trial(uid, t.id, lambda cur: dataclasses.replace(cur, reason="x"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert s.create_study("t", "s2", SPEC, 1) is not None
    finally:
        s.close()


def test_a_full_sqlite_disk_is_storage_full_and_stores_nothing(tmp_path):
    """A database that cannot grow (here SQLite's max_page_count; a full disk gives the same
    SQLITE_FULL) answered INTERNAL, which clients do not retry: it is StorageFull
    (RESOURCE_EXHAUSTED with a delay to retry after, saying the disk is full) on the plain write
    path, the raw connection's trial inserts and the group-commit (Tell) path, nothing is stored,
    and writes go on once there is room."""
    import dataclasses

    from sqlalchemy import event

    from bbo.errors import StorageFull
    from bbo_server.errors import status_for

    s = open_storage(f"sqlite:///{tmp_path / 'full.db'}")
    uid = s.create_study("t", "s", SPEC, 1).uid
    (t,), _ = s.insert_trials(uid, [NewTrial({"x": 0.5}, "bo")])
    s.close()
    room = {"cap": True}

    def cap(conn, _record):  # every connection the reopened storage makes
        if room["cap"]:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(sa.engine.Engine, "connect", cap)
    s = open_storage(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        big = {"x": "y" * 20000}
        with pytest.raises(StorageFull, match="disk is full") as e:
            s.insert_trials(uid, [NewTrial(big, "bo") for _ in range(20)])
        with pytest.raises(StorageFull):
            s.create_study("t", "s2" + "z" * 100, {**SPEC, "description": "d" * 100000}, 1)
        with pytest.raises(StorageFull):
            s.modify_trial(uid, t.id, lambda cur: dataclasses.replace(cur, reason="r" * 100000))
        status = status_for(e.value)
        assert status.code.name == "RESOURCE_EXHAUSTED" and "disk is full" in status.details
        assert [x.id for x in s.list_trials(uid)] == [t.id] and s.get_trial(uid, t.id).reason == ""
        assert [r.name for r in s.list_studies("t")] == ["s"]
        room["cap"] = False
        s.close()
        s = open_storage(f"sqlite:///{tmp_path / 'full.db'}")
        assert len(s.insert_trials(uid, [NewTrial(big, "bo")])[0]) == 1
    finally:
        event.remove(sa.engine.Engine, "connect", cap)
        s.close()


def test_a_sqlite_file_is_served_by_one_process_at_a_time(tmp_path):
    """A server claims its SQLite file (``exclusive``): a second claim, under any name of the
    file, is DatabaseInUse before it reads or migrates anything; readers (bbo copy, bbo keys)
    still open it; the claim ends with the storage (the next server starts)."""
    import os

    from bbo.errors import DatabaseInUse

    path = tmp_path / "served.db"
    first = open_storage(f"sqlite:///{path}", exclusive=True)
    try:
        uid = first.create_study("t", "s", SPEC, 1).uid
        os.symlink(path, tmp_path / "alias.db")
        for name in (path, tmp_path / "alias.db", tmp_path / "." / "served.db"):
            with pytest.raises(DatabaseInUse, match=f"pid {os.getpid()}"):
                open_storage(f"sqlite:///{name}", exclusive=True)
        reader = open_storage(f"sqlite:///{path}", migrate=False)
        assert reader.get_study_by_uid(uid) is not None
        reader.close()
    finally:
        first.close()
    second = open_storage(f"sqlite:///{path}", exclusive=True)
    assert second.get_study_by_uid(uid) is not None
    second.close()


def test_a_server_refuses_a_sqlite_url_naming_no_file():
    """`bbo serve --db sqlite://` (or `sqlite:///$UNSET`) served an in-memory database: every
    acknowledged tell was lost when the server stopped. A reader may still open one."""
    from bbo.errors import DatabaseUrlError

    for url in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        with pytest.raises(DatabaseUrlError, match="names no database file"):
            open_storage(url, exclusive=True)
    open_storage("sqlite://").close()


def test_a_lock_file_that_cannot_be_written_is_a_clear_error_or_no_error(tmp_path, monkeypatch):
    """The claim's lock file beside the database: where it cannot be opened (a read-only
    directory; here a directory in its place) start-up stopped with an OSError traceback, now a
    StorageUnavailable naming the file; where only our pid cannot be written into it (a full
    disk) the server went down the same way, now it serves on (the flock is the claim)."""
    import os

    from bbo.errors import DatabaseInUse, StorageUnavailable

    path = tmp_path / "db.db"
    open_storage(f"sqlite:///{path}").close()
    os.mkdir(str(path) + "-serve.lock")
    with pytest.raises(StorageUnavailable, match="cannot open the lock file .*db.db-serve.lock"):
        open_storage(f"sqlite:///{path}", exclusive=True)
    os.rmdir(str(path) + "-serve.lock")

    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    s = open_storage(f"sqlite:///{path}", exclusive=True)
    try:
        with pytest.raises(DatabaseInUse):  # still claimed
            open_storage(f"sqlite:///{path}", exclusive=True)
    finally:
        s.close()


def test_study_listings_are_a_range_of_the_listing_index_unsorted(storage):
    """Every listing pages in ``(created_at, name)`` order: a page is read from the index on
    ``(tenant, created_at, name, uid)`` from the cursor on, with no sort of the tenant's studies,
    and a page of keys from the index alone (the row holds the spec, up to 1 MiB, before
    created_at: without the index a page of keys read every spec of the tenant)."""
    for i in range(20):
        storage.create_study("t", f"s{i:02d}", SPEC, 1)
        storage.create_study("u", f"s{i:02d}", SPEC, 1)
    with listing_statements(storage.engine) as seen:
        first = storage.list_studies("t", limit=5)
        after = (first[-1].created_at, first[-1].name)
        assert [r.name for r in storage.list_studies("t", after=after, limit=5)] == [
            f"s{i:02d}" for i in range(5, 10)
        ]
        assert [k.name for k in storage.list_study_keys("t", after=after, limit=5)] == [
            f"s{i:02d}" for i in range(5, 10)
        ]
    assert len(seen) == 3
    with storage.engine.connect() as c:
        plans = [
            [row[3] for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + q, p)] for q, p in seen
        ]
    for plan in plans:
        assert not any("TEMP B-TREE" in step for step in plan), plan
        (step,) = plan
        assert "INDEX ix_studies_tenant_created_at_name_uid (tenant=?" in step, plan
    for plan in plans[1:]:  # from the cursor on, not from the tenant's first study
        assert "(created_at,name)>(?,?)" in plan[0], plan
    assert "COVERING INDEX" in plans[2][0], plans[2]


def test_postgresql_out_of_disk_or_resources_is_a_clear_refusal():
    """PostgreSQL's class 53 (53100: disk full) fell through to INTERNAL: a full disk is
    StorageFull (RESOURCE_EXHAUSTED, retried later), other exhausted resources StorageUnavailable;
    other errors are left to the caller as before."""
    from bbo.errors import StorageFull, StorageUnavailable
    from bbo.storage.postgres import PostgresStorage

    class Orig(Exception):
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    def error(code):
        return sa.exc.OperationalError("INSERT ...", {}, Orig(code))

    with pytest.raises(StorageFull, match="disk is full"):
        PostgresStorage._on_error(None, error("53100"), "tell", 1, False)
    with pytest.raises(StorageUnavailable, match="53200"):
        PostgresStorage._on_error(None, error("53200"), "tell", 1, False)
    with pytest.raises(sa.exc.OperationalError):
        PostgresStorage._on_error(None, error("22003"), "tell", 1, False)
