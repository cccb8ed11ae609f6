"""Storage on a real PostgreSQL (a throwaway cluster): what only
matters with several server replicas on one database: the cross-process study lock, pool and session
settings, retries of transient errors, the shared model state, and registries that see each
other's deletions. Skipped (with the reason) where the PostgreSQL server binaries are absent."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest
import sqlalchemy as sa
from sql_helpers import Relay, listing_statements

from bbo.errors import StorageUnavailable
from bbo.model_sharing import ModelStateCache
from bbo.storage import NewTrial, open_storage
from bbo.storage import postgres as pgmod
from bbo.storage.sql import db_call
from bbo.testing import postgres as pg_cluster
from bbo.trial import TrialState

pytestmark = pytest.mark.skipif(
    pg_cluster.missing_reason() is not None, reason=str(pg_cluster.missing_reason())
)

SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y"}],
}


@pytest.fixture
def pg_url(cluster):
    return cluster.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture
def storage(pg_url):
    s = open_storage(pg_url, pool_size=4)
    yield s
    s.close()


def test_two_processes_migrating_at_once_agree(pg_url):
    """Replicas starting together race to migrate; the advisory lock in migrate() serializes them."""
    code = "import sys; from bbo.storage import open_storage; s = open_storage(sys.argv[1]); print(s.schema_revision()); s.close()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1


def test_migration_waits_for_another_replica_past_the_short_lock_timeout(pg_url):
    open_storage(pg_url).close()
    eng = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with eng.connect() as c, c.begin():
        c.execute(
            sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x6262_6F5F}
        )  # "another replica is migrating"
        out = {}
        t = threading.Thread(
            target=lambda: out.setdefault(
                "s",
                open_storage(pg_url + "?lock_timeout=100ms&statement_timeout=200ms", pool_size=2),
            )
        )
        t.start()
        t.join(1.0)  # well past both timeouts, still waiting
        assert t.is_alive()
    t.join(60)
    assert out["s"].schema_revision() is not None
    out["s"].close()
    eng.dispose()


# ---- session settings and pool ------------------------------------------------------------------------
def test_session_settings_and_url_overrides(pg_url):
    s = open_storage(pg_url)
    with s.engine.connect() as c:
        assert c.exec_driver_sql("SHOW statement_timeout").scalar() == "30s"
        assert c.exec_driver_sql("SHOW lock_timeout").scalar() == "10s"
        assert c.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() == "1min"
        assert c.exec_driver_sql("SHOW application_name").scalar().startswith("bbo-")
    assert s.engine.pool.size() == 16 and s.engine.dialect.name == "postgresql"
    s.close()
    s = open_storage(
        pg_url + "?statement_timeout=5s&lock_timeout=250ms&pool_size=3&max_overflow=1", pool_size=10
    )
    with s.engine.connect() as c:
        assert c.exec_driver_sql("SHOW statement_timeout").scalar() == "5s"
        assert c.exec_driver_sql("SHOW lock_timeout").scalar() == "250ms"
    assert s.engine.pool.size() == 3 and "statement_timeout" not in s.engine.url.query
    s.close()


def test_a_negative_pool_size_is_refused():
    """`--db-pool-size -1` (or `?pool_size=-1`, `?max_overflow=-1`) was taken by SQLAlchemy as no
    bound at all: a replica could open connections until PostgreSQL's max_connections."""
    from bbo.errors import DatabaseUrlError

    url = sa.engine.make_url("postgresql+psycopg://bbo@127.0.0.1:1/bbo")
    for query in ({"pool_size": "-1"}, {"max_overflow": "-2"}):
        with pytest.raises(DatabaseUrlError, match=next(iter(query))):
            pgmod.settings(url.set(query=query))
    assert (
        pgmod.settings(url.set(query={"pool_size": "0", "max_overflow": "0"}))[1]["pool_size"] == 0
    )


def test_statement_timeout_stops_a_runaway_query(storage):
    with pytest.raises(sa.exc.OperationalError) as e:
        with storage.engine.connect() as c:
            c.exec_driver_sql("SET statement_timeout = '200ms'")
            c.exec_driver_sql("SELECT pg_sleep(5)")
    assert (
        pgmod.sqlstate(e.value) == "57014" and pgmod.classify(e.value) is None
    )  # a timeout is not retried


def test_reconnects_after_connections_are_killed(storage):
    """A PostgreSQL restart / failover kills pooled connections: pre-ping replaces them unseen."""
    st = storage.create_study("t", "s", SPEC, 1)
    with storage.engine.connect() as c:
        app = c.exec_driver_sql("SHOW application_name").scalar()
    admin = sa.create_engine(
        storage.engine.url.set(database="postgres"), poolclass=sa.pool.NullPool
    )
    with admin.connect() as c:
        killed = c.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :a"
            ),
            {"a": app},
        ).scalar()
    admin.dispose()
    assert killed >= 1
    assert storage.get_study_by_uid(st.uid).name == "s"
    ts, _ = storage.insert_trials(st.uid, [NewTrial({"x": 0.5}, "bo")])
    assert [t.id for t in ts] == [1]


def test_the_health_read_rides_out_a_connection_killed_under_it(storage):
    """The health probe's read (schema_revision) had no retry: one connection killed under it (a
    failover, pg_terminate_backend) raised, and health went NOT_SERVING for a probe interval while
    every other call retried through it. It is retried like every other read."""
    admin = sa.create_engine(
        storage.engine.url.set(database="postgres"), poolclass=sa.pool.NullPool
    )
    killed: list[int] = []

    def kill_own_backend(conn, cursor, statement, *args):
        if "alembic_version" in statement and not killed:
            killed.append(conn.connection.dbapi_connection.info.backend_pid)
            with admin.connect() as c:
                c.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": killed[0]})

    sa.event.listen(storage.engine, "before_cursor_execute", kill_own_backend)
    try:
        assert storage.schema_revision() is not None
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", kill_own_backend)
        admin.dispose()
    assert killed


def test_an_unreachable_database_is_unavailable_in_the_drivers_words(monkeypatch):
    """A database nobody answers for is StorageUnavailable saying which server refused how (the
    driver's words: `bbo --db` printed them, and still does now that the read is retried)."""
    monkeypatch.setattr(pgmod, "RETRY_BASE_DELAY", 0.001)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    st = open_storage(f"postgresql+psycopg://bbo@127.0.0.1:{port}/bbo", migrate=False)
    try:
        with pytest.raises(StorageUnavailable, match=f"unreachable.*{port}.*refused"):
            st.schema_revision()
    finally:
        st.close()


# ---- transient errors ---------------------------------------------------------------------------------
def _dbapi_error(exc):
    return sa.exc.OperationalError("SELECT 1", {}, exc)


def test_transient_errors_are_retried_or_refused(storage, monkeypatch):
    """Rolled-back work (deadlock, serialization failure, lock timeout) is re-run; a lost connection
    only where the call is idempotent (a commit may have happened); after a few tries, or when not
    safe, StorageUnavailable; anything else is raised as it is."""
    import psycopg

    monkeypatch.setattr(pgmod, "RETRY_BASE_DELAY", 0.001)
    calls = []

    def flaky(n_failures, exc, idempotent=False):
        @db_call(idempotent=idempotent)
        def run(self):
            calls.append(1)
            if len(calls) <= n_failures:
                raise _dbapi_error(exc)
            return "ok"

        calls.clear()
        return run(storage)

    assert flaky(2, psycopg.errors.DeadlockDetected("deadlock detected")) == "ok"
    assert len(calls) == 3
    assert flaky(1, psycopg.errors.SerializationFailure("could not serialize")) == "ok"
    with pytest.raises(StorageUnavailable):  # a lost connection: the commit may have happened
        flaky(1, psycopg.OperationalError("server closed the connection unexpectedly"))
    assert len(calls) == 1
    with pytest.raises(StorageUnavailable):
        flaky(99, psycopg.errors.LockNotAvailable("lock timeout"))
    assert len(calls) == pgmod.RETRY_ATTEMPTS
    with pytest.raises(sa.exc.OperationalError):  # not transient: raised as it is
        flaky(1, psycopg.errors.QueryCanceled("statement timeout"))
    assert len(calls) == 1
    assert flaky(1, psycopg.OperationalError("connection refused"), idempotent=True) == "ok"
    assert len(calls) == 2


def test_transient_error_maps_to_unavailable():
    import grpc

    from bbo_server.errors import status_for

    assert status_for(StorageUnavailable("db away")).code == grpc.StatusCode.UNAVAILABLE


def test_a_real_deadlock_is_retried(storage):
    """Two transactions locking two rows in opposite orders: PostgreSQL aborts one (40P01) and the
    decorator runs it again, so both finish."""
    a = storage.create_study("t", "a", SPEC, 1)
    b = storage.create_study("t", "b", SPEC, 1)
    barrier = threading.Barrier(2)
    attempts = {"x": 0, "y": 0}

    def tx(name, first, second):
        @db_call
        def run(self):
            attempts[name] += 1
            with storage.engine.connect() as c, c.begin():
                c.execute(
                    sa.text("UPDATE studies SET seed = seed + 1 WHERE uid = :i"), {"i": first}
                )
                if attempts[name] == 1:
                    barrier.wait(10)
                c.execute(
                    sa.text("UPDATE studies SET seed = seed + 1 WHERE uid = :i"), {"i": second}
                )

        run(storage)

    threads = [
        threading.Thread(target=tx, args=("x", a.uid, b.uid)),
        threading.Thread(target=tx, args=("y", b.uid, a.uid)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert (
        attempts["x"] + attempts["y"] == 3
    )  # exactly one was chosen as the deadlock victim and re-run
    assert storage.get_study_by_uid(a.uid).seed == 3 and storage.get_study_by_uid(b.uid).seed == 3


# ---- the study lock across replicas -------------------------------------------------------------------
def _advisory_locks(url, key, granted: bool) -> list[int]:
    """The backend pids holding (``granted``) or waiting for the advisory lock ``key``."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with eng.connect() as c:
        pids = c.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = :g AND ((classid::bigint << 32) | objid::bigint) = :k"
            ),
            {"k": key, "g": granted},
        ).scalars()
        out = list(pids)
    eng.dispose()
    return out


def _advisory_waiters(url, key) -> int:
    return len(_advisory_locks(url, key, granted=False))


def test_study_lock_excludes_other_replicas(pg_url, storage):
    """Two Storage objects (two replicas, separate pools): the second waits until the first releases."""
    other = open_storage(pg_url, pool_size=2)
    st = storage.create_study("t", "s", SPEC, 1)
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def first():
        with storage.study_lock(st.uid):
            order.append("a in")
            holding.set()
            release.wait(30)
            order.append("a out")

    def second():
        holding.wait(30)
        with other.study_lock(st.uid):
            order.append("b in")

    ta, tb = threading.Thread(target=first), threading.Thread(target=second)
    ta.start()
    tb.start()
    deadline = time.time() + 30
    while _advisory_waiters(pg_url, pgmod.lock_key(st.uid)) == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert _advisory_waiters(pg_url, pgmod.lock_key(st.uid)) == 1 and order == ["a in"]
    release.set()
    ta.join(30)
    tb.join(30)
    assert order == ["a in", "a out", "b in"]
    # different studies do not wait for each other
    st2 = storage.create_study("t", "s2", SPEC, 1)
    with storage.study_lock(st.uid), other.study_lock(st2.uid):
        pass
    other.close()


def test_study_lock_of_a_killed_replica_is_released(pg_url, storage):
    st = storage.create_study("t", "s", SPEC, 1)
    code = (
        "import sys, time; from bbo.storage import open_storage; s = open_storage(sys.argv[1], migrate=False)\n"
        "with s.study_lock(sys.argv[2]):\n    print('locked', flush=True); time.sleep(600)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, pg_url, str(st.uid)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "locked"
        short = open_storage(pg_url + "?lock_wait_timeout=500ms", pool_size=2)
        with pytest.raises(
            StorageUnavailable
        ):  # held by the live process: bounded wait, then UNAVAILABLE
            with short.study_lock(st.uid):
                pass
        short.close()
        p.kill()  # SIGKILL: PostgreSQL drops its session and the lock with it
        p.wait(30)
        with storage.study_lock(st.uid):
            pass
    finally:
        if p.poll() is None:
            p.kill()


def _advisory_holder(url, key) -> int | None:
    """The backend pid holding the advisory lock ``key``, None when none does."""
    return next(iter(_advisory_locks(url, key, granted=True)), None)


def test_an_ask_that_lost_its_study_lock_stores_nothing(pg_url):
    """An ask's study lock lives in a database session of its own: killed while the ask computes
    (pg_terminate_backend, a network drop), PostgreSQL releases it and another replica's ask runs
    beside it. The first ask then stored the other's point a second time; its insert now commits
    on the lock's session only, so it is UNAVAILABLE and its retry plans around the other's trial.
    An ask whose caller went away releases the lock."""
    from bbo.errors import CallerGone
    from bbo.registry import StudyRegistry

    s1, s2 = open_storage(pg_url, pool_size=2), open_storage(pg_url, pool_size=2)
    spec = {**SPEC, "algorithm": {"seed": 5, "n_initial": 5}}
    a, _ = StudyRegistry(s1).create_study("s", spec)
    b = StudyRegistry(s2).get_study("s")
    key, other = pgmod.lock_key(a.uid), {}
    compute = a.generation.compute

    def lose_the_lock_then_compute(*args, **kw):
        admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
        with admin.connect() as c:
            c.execute(
                sa.text("SELECT pg_terminate_backend(:p)"), {"p": _advisory_holder(pg_url, key)}
            )
        admin.dispose()
        t = threading.Thread(target=lambda: other.setdefault("b", b.ask(1, request_id="b")))
        t.start()  # the other replica's ask takes the released lock
        t.join(60)
        return compute(*args, **kw)

    a.generation.compute = lose_the_lock_then_compute
    with pytest.raises(StorageUnavailable, match="lock was lost"):
        a.ask(1, request_id="a")
    (tb,) = other["b"].trials
    assert [(t.id, t.params) for t in s1.list_trials(a.uid)] == [(1, tb.params)]
    a.generation.compute = compute
    (ta,) = a.ask(1, request_id="a").trials  # the client's retry
    assert ta.id == 2 and ta.params != tb.params
    with pytest.raises(CallerGone):
        a.ask(1, alive=lambda: False)
    assert _advisory_holder(pg_url, key) is None
    s1.close()
    s2.close()


def test_lock_connections_do_not_starve_the_main_pool(pg_url):
    """More studies asking at once than the main pool has connections: each holds a lock connection
    (its own pool) and still gets main-pool connections to read and insert."""
    s = open_storage(pg_url + "?pool_size=2&max_overflow=0")
    ids = [s.create_study("t", f"s{i}", SPEC, 1).uid for i in range(6)]
    barrier = threading.Barrier(len(ids))
    done = []

    def ask(sid):
        with s.study_lock(sid):
            barrier.wait(30)  # every lock held at once
            s.list_trials(sid)
            s.insert_trials(sid, [NewTrial({"x": 0.1}, "bo")])
            done.append(sid)

    threads = [threading.Thread(target=ask, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(done) == sorted(ids)
    s.close()


# ---- model state shared between replicas --------------------------------------------------------------
class _FakeStrategy:
    """Stands in for GenerationStrategy's export/import of its surrogate's state (a real Surrogate)."""

    def __init__(self):
        from bbo.device import select_device
        from bbo.space import FloatParam, SearchSpace
        from bbo.spec import AlgorithmOptions
        from bbo.surrogate import Surrogate

        self.surrogate = Surrogate(
            SearchSpace((FloatParam("x", 0.0, 1.0),)), 1, AlgorithmOptions(), select_device("cpu")
        )
        self.export_state, self.import_state = (
            self.surrogate.export_state,
            self.surrogate.import_state,
        )

    def fit(self, n):
        import torch

        self.surrogate.import_state(
            n, {"covar_module.lengthscale": torch.full((1, 2), float(n), dtype=torch.float64)}
        )


def test_model_state_moves_between_replicas(pg_url, storage):
    other = open_storage(pg_url, pool_size=2)
    st = storage.create_study("t", "s", SPEC, 1)
    a, b = ModelStateCache(storage, "replica-a"), ModelStateCache(other, "replica-b")
    sa_, sb = _FakeStrategy(), _FakeStrategy()
    tok = a.pull(st.uid, sa_)
    assert not tok.pulled and not a.push(st.uid, sa_, tok)  # nothing fit, nothing stored
    sa_.fit(12)
    assert a.push(st.uid, sa_, tok)
    tok = b.pull(st.uid, sb)  # a fresh replica picks the study up: warm start from A's fit
    n_fit, hyper = sb.export_state()
    assert tok.pulled and n_fit == 12
    assert float(hyper["covar_module.lengthscale"][0, 0]) == 12.0
    assert not b.push(st.uid, sb, tok)  # conditioning on loaded hyperparameters stores nothing
    sb.fit(20)
    assert b.push(st.uid, sb, tok)
    assert a.pull(st.uid, sa_).pulled and sa_.export_state()[0] == 20
    assert not a.pull(st.uid, sa_).pulled  # already current: only n_fit was read
    got = a.get(st.uid)
    assert got["n_fit"] == 20 and got["updated_by"] == "replica-b"
    assert storage.delete_study(st.uid)
    assert a.get(st.uid) is None
    other.close()


def test_replicas_share_fits_and_see_each_others_deletions(pg_url):
    """Two registries (two replicas) on one database, real GP strategy. A study whose asks alternate
    between them gets exactly the points a study served by one replica gets (same spec and seed): the
    replica that did not fit continues from the stored fit instead of fitting from scratch (without
    the shared state the BO points differ in the 7th digit)."""
    from bbo.registry import StudyRegistry

    s1, s2 = open_storage(pg_url, pool_size=4), open_storage(pg_url, pool_size=4)
    r1, r2 = StudyRegistry(s1), StudyRegistry(s2)
    spec = {
        "parameters": [
            {"type": "float", "name": "x", "low": 0.0, "high": 1.0},
            {"type": "float", "name": "z", "low": 0.0, "high": 1.0},
        ],
        "objectives": [{"name": "y"}],
        "algorithm": {"seed": 5, "n_initial": 3},
    }
    r1.create_study("shared", spec)
    r1.create_study("alone", spec)

    def run(name, registries):
        points = []
        for i in range(7):
            study = registries[i % len(registries)].get_study(name)
            (t,) = study.ask(1, worker_id=f"w{i}").trials
            assert t.id == i + 1
            points.append((t.params, t.origin))
            study.tell(t.id, {"y": (t.params["x"] - 0.3) ** 2 + (t.params["z"] - 0.6) ** 2})
        return points

    alternating, alone = run("shared", [r1, r2]), run("alone", [r1])
    assert [o for _, o in alone].count("bo") >= 3
    assert alternating == alone
    c1, c2 = r1.model_cache, r2.model_cache
    assert c1.pushes >= 1 and c2.pushes >= 1 and c1.pulls >= 1 and c2.pulls >= 1
    assert ModelStateCache(s1).get(r1.get_study("shared").uid)["n_fit"] >= 2
    # replica 2 deletes and recreates the study; replica 1's cached handle must not serve the old one
    old_id = r1.get_study("shared").uid
    r2.delete_study("shared")
    with pytest.raises(Exception) as e:
        r1.get_study("shared")
    assert type(e.value).__name__ == "NotFoundError"
    r2.create_study("shared", spec)
    again = r1.get_study("shared")
    assert again.uid != old_id
    (t,) = again.ask(1).trials
    assert t.id == 1 and again.trials()[0].state is TrialState.PENDING
    s1.close()
    s2.close()


def test_concurrent_tells_of_one_trial_from_two_replicas_apply_once(pg_url, storage):
    """Two replicas completing the same trial at once: the second reads the first's result (the row is
    locked for the read-modify-write) and refuses, instead of overwriting it with a second event."""
    import dataclasses

    from bbo.trial import Metric

    other = open_storage(pg_url, pool_size=2)
    st = storage.create_study("t", "race", SPEC, 1)
    (t,), _ = storage.insert_trials(st.uid, [NewTrial({"x": 0.5}, "bo")])
    inside, release, outcome = threading.Event(), threading.Event(), {}

    def complete(value, hold=False):
        def change(cur):
            if cur.state is not TrialState.PENDING:
                return None  # already told: refuse
            if hold:
                inside.set()
                release.wait(30)
            return dataclasses.replace(
                cur, state=TrialState.COMPLETED, metrics={"y": Metric(value)}
            )

        return change

    def run(key, store, change):
        try:
            outcome[key] = store.modify_trial(st.uid, t.id, change)
        except Exception as e:  # noqa: BLE001 - reported by the asserts below
            outcome[key] = e
            inside.set()

    a = threading.Thread(target=run, args=("a", storage, complete(1.0, hold=True)))
    a.start()
    assert inside.wait(30) and "a" not in outcome, outcome
    b = threading.Thread(target=run, args=("b", other, complete(2.0)))
    b.start()
    b.join(1.0)  # give B time to reach the row (it must wait for A's transaction)
    release.set()
    a.join(30)
    b.join(30)
    assert outcome["a"][1] is True and outcome["b"][1] is False, outcome
    (final,) = storage.list_trials(st.uid)
    assert final.metrics["y"].value == 1.0
    with storage.engine.connect() as conn:
        n_done = conn.execute(
            sa.text("SELECT count(*) FROM trial_events WHERE state = 'COMPLETED'")
        ).scalar()
    assert n_done == 1
    other.close()


def test_nul_characters_are_stored_on_postgresql_not_an_internal_error(storage, cluster, tmp_path):
    """PostgreSQL text refuses NUL: a failure reason, worker id or LLM text holding one is stored
    with U+FFFD instead (before: DataError, INTERNAL, and an LLM rationale with NUL blocked every
    ask of its study); a SQLite file holding NULs copies to PostgreSQL."""
    from bbo.registry import StudyRegistry
    from bbo.storage import LlmCallRecord
    from bbo.storage.copy import copy_database

    reg = StudyRegistry(storage)
    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "y"}],
        "algorithm": {"n_initial": 100},
    }
    st, _ = reg.create_study("nul", spec)
    (t,) = st.ask(1, worker_id="w\x00").trials
    st.tell(t.id, failed=True, reason="OOM\x00 at step 3")
    got = st.get_trial(t.id)
    assert got.reason == "OOM\ufffd at step 3" and got.worker_id == "w\ufffd"
    storage.insert_trials(
        st.uid, [NewTrial({"x": 0.5}, "llm_warmstart", rationale="near the \x00 optimum")]
    )
    storage.log_llm_call(st.uid, LlmCallRecord("warmstart", "m", "prompt\x00", "answer\x00", "ok"))
    assert storage.get_trial(st.uid, 2).rationale == "near the \ufffd optimum"
    assert storage.list_llm_calls(st.uid)[0].response == "answer\ufffd"

    src = f"sqlite:///{tmp_path / 'nul.db'}"
    lite = open_storage(src)
    sreg = StudyRegistry(lite)
    s2, _ = sreg.create_study("nul", spec)
    (u,) = s2.ask(1).trials
    s2.tell(u.id, failed=True, reason="bad\x00")
    lite.close()
    target = cluster.create_database("t_" + uuid.uuid4().hex[:12])
    assert copy_database(src, target)["trials"] == 1
    moved = open_storage(target, pool_size=2)
    try:
        assert moved.get_trial(moved.get_study("default", "nul").uid, 1).reason == "bad\ufffd"
    finally:
        moved.close()


def _health_becomes(address: str, want: str, within: float = 20.0) -> None:
    """Poll the server's health (the service name Envoy checks) until it reads ``want``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline, got = time.monotonic() + within, None
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            req = health_pb2.HealthCheckRequest(service="bbo.v1.BboService")
            got = health_pb2.HealthCheckResponse.ServingStatus.Name(
                stub.Check(req, timeout=5).status
            )
            if got == want:
                return
            time.sleep(0.1)
    raise AssertionError(f"health stayed {got}, want {want}")


def test_a_database_outage_is_unavailable_with_auth_and_a_tell_rides_it_out(server_factory):
    """PostgreSQL stops under a server with API keys: every RPC (the key check, CreateStudy's study
    count included) answers UNAVAILABLE, which clients retry, not INTERNAL (before: the key lookup
    and the study-limit reads had no transient mapping). Health answers NOT_SERVING while the
    database is away (before: SERVING, so a load balancer kept sending calls that all failed) and
    SERVING once it is back. A Tell sent during the outage is stored once the database is back."""
    from sec_helpers import create_key

    import bbo_client as bc

    cl = pg_cluster.start(max_connections=40)
    try:
        url = cl.create_database("outage")
        key, _ = create_key(url, "t1")
        srv = server_factory(
            db=url, args=["--auth", "--workers", "1", "--health-probe-seconds", "0.2"]
        )
        with (
            bc.Client(srv.address, api_key=key, retries=0) as c0,
            bc.Client(srv.address, api_key=key, retries=40, backoff=0.1) as c,
        ):
            s = c.create_study("s", [bc.Float("x", 0, 1)], "y", seed=1)
            (t,) = s.ask()
            _health_becomes(srv.address, "SERVING")
            cl.pause()
            _health_becomes(srv.address, "NOT_SERVING")
            for call in (
                lambda: c0.study("s").tell(t, {"y": 1.0}),
                lambda: c0.get_study("s"),
                lambda: c0.create_study("s2", [bc.Float("x", 0, 1)], "y"),
            ):
                with pytest.raises(bc.BboError) as e:
                    call()
                assert e.value.code.name == "UNAVAILABLE", e.value
            back: list[BaseException] = []

            def resume():
                try:
                    cl.resume()
                except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                    back.append(e)

            timer = threading.Timer(2.0, resume)
            timer.start()
            told = s.tell(t, {"y": 0.25})  # retried through the outage
            timer.join()
            assert not back, f"the database did not come back: {back}"
            assert told.trial.state == "COMPLETED"
            assert [x.metrics["y"] for x in s.trials()] == [0.25]
            _health_becomes(srv.address, "SERVING")
    finally:
        pg_cluster.stop(cl, immediate=True)


def test_a_database_that_stops_answering_turns_health_not_serving(cluster, server_factory):
    """A replica whose database stops answering (a network partition: connections stay open,
    nothing comes back) kept answering SERVING (the probe's read hung like every call), so a load
    balancer kept sending it calls that hung to their deadline. A read unanswered past the probe's
    wait turns health NOT_SERVING; SERVING again once the database answers, and calls are served."""
    import bbo_client as bc

    url = cluster.create_database("t_" + uuid.uuid4().hex[:12])
    relay = Relay(cluster.port)
    try:
        srv = server_factory(
            db=url.replace(f":{cluster.port}/", f":{relay.port}/"),
            args=["--workers", "1", "--health-probe-seconds", "0.5"],
        )
        _health_becomes(srv.address, "SERVING")
        relay.hold()
        _health_becomes(srv.address, "NOT_SERVING")
        relay.heal()
        _health_becomes(srv.address, "SERVING")
        with bc.Client(srv.address, retries=5) as c:
            assert c.create_study("s", [bc.Float("x", 0, 1)], "y").name == "s"
    finally:
        relay.close()


def test_the_same_add_trial_on_two_replicas_at_once_is_stored_once(pg_url):
    """Two replicas receive one AddTrial (a client retry racing its original): both look the
    request_id up before either commits, so the second insert meets the unique key. It must be
    answered with the first one's trial (before: IntegrityError, INTERNAL, in 29 of 30 rounds)."""
    from bbo.registry import StudyRegistry

    s1, s2 = open_storage(pg_url, pool_size=4), open_storage(pg_url, pool_size=4)
    try:
        a, _ = StudyRegistry(s1).create_study("s", SPEC)
        b = StudyRegistry(s2).get_study("s")
        for i in range(30):
            rid, got, errors = uuid.uuid4().hex, [], []
            barrier = threading.Barrier(2)

            def add(st):
                barrier.wait()
                try:
                    got.append(st.add_trial({"x": 0.5}, {"y": float(i)}, request_id=rid).id)
                except Exception as e:  # noqa: BLE001 - collected for the assertion
                    errors.append(repr(e))

            threads = [threading.Thread(target=add, args=(st,)) for st in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors and len(set(got)) == 1, (errors, got)
        assert len(a.trials()) == 30
    finally:
        s1.close()
        s2.close()


def test_the_same_intermediate_step_from_two_replicas_at_once(pg_url):
    """Two replicas record one trial's value at one step at the same moment: they take turns on the
    trial's row (before: both deleted nothing, the second insert hit the key: 27 of 30 rounds)."""
    s1, s2 = open_storage(pg_url, pool_size=4), open_storage(pg_url, pool_size=4)
    try:
        st = s1.create_study("t", "s", SPEC, 1)
        (trial,), _ = s1.insert_trials(st.uid, [NewTrial({"x": 0.5}, "bo")])
        errors = []
        for step in range(30):
            barrier = threading.Barrier(2)

            def report(s, v):
                barrier.wait()
                try:
                    s.add_intermediate(st.uid, trial.id, step, v)
                except Exception as e:  # noqa: BLE001 - collected for the assertion
                    errors.append(repr(e))

            threads = [
                threading.Thread(target=report, args=(s, float(k))) for k, s in enumerate((s1, s2))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors[:3]
        assert [step for step, _ in s1.intermediates(st.uid)[trial.id]] == list(range(30))
    finally:
        s1.close()
        s2.close()


def test_an_intermediate_page_scans_no_trial_before_its_cursor(storage):
    """A page of intermediate values resuming inside trial ``after`` (``after_step``) is a range
    scan from that trial: with ``number > after OR (number = after AND step > s)`` alone,
    PostgreSQL scanned the study's trials from the first and filtered them out, so paging through a
    study's curves cost O(trials) a page."""
    import json

    import sqlalchemy as sa

    from bbo.storage import NewTrial

    uid = storage.create_study("default", "curves", SPEC, 0).uid
    storage.insert_trials(uid, [NewTrial({"x": 0.5}, "user", TrialState.PENDING)] * 3000)
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO intermediate_values (trial_id, step, value, at) "
                "SELECT id, g, 0.5, 1.0 FROM trials, generate_series(0, 3) g"
            )
        )
        conn.execute(sa.text("ANALYZE"))
    seen: list = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "intermediate_values" in statement and "ORDER BY" in statement:
            seen.append((statement, parameters))

    sa.event.listen(storage.engine, "before_cursor_execute", grab)
    page = storage.intermediate_page(uid, 2900, 1, 50)
    sa.event.remove(storage.engine, "before_cursor_execute", grab)
    assert page[0] == (2900, 2, 0.5) and len(page) == 50
    (statement, parameters), *_ = seen
    with storage.engine.connect() as conn:
        raw = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        plan = raw.scalar()
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def trial_rows(node) -> int:
        here = 0
        if node.get("Relation Name") == "trials":
            here = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            here += node.get("Rows Removed by Index Recheck", 0)
        return here + sum(trial_rows(n) for n in node.get("Plans", []))

    assert trial_rows(plan[0]["Plan"]) < 200, json.dumps(plan, indent=1)[:3000]


def test_a_study_listing_page_is_an_index_range_not_a_sort(storage):
    """A listing page (``after=(created_at, name)``) is read from the index on ``(tenant,
    created_at, name, uid)`` from its cursor on: no sort of the tenant's studies, and no scan of
    those before the cursor."""
    import json

    with storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO studies (uid, tenant, name, spec, spec_hash, seed, state, state_reason,"
                " trial_counter, llm_counter, created_at) SELECT t || g, t, 's' || g, '{}', 'h',"
                " 1, 'ACTIVE', '', 0, 0, 1700000000 + g FROM generate_series(1, 3000) g,"
                " (VALUES ('a'), ('b')) v(t)"
            )
        )
    with storage.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE studies"))  # as autovacuum would: all visible
    with listing_statements(storage.engine) as seen:
        after = (1700000100.0, "s100")  # 2,900 of the tenant's studies after the cursor
        page = storage.list_studies("a", after=after, limit=50)
        assert [r.name for r in page] == [f"s{i}" for i in range(101, 151)]
        keys = storage.list_study_keys("a", after=after, limit=500)
        assert [k.name for k in keys] == [f"s{i}" for i in range(101, 601)]
    assert len(seen) == 2
    for statement, parameters in seen:
        with storage.engine.connect() as conn:
            raw = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = raw.scalar()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        nodes, todo = [], [plan[0]["Plan"]]
        while todo:
            node = todo.pop()
            nodes.append(node)
            todo += node.get("Plans", [])
        shown = json.dumps(plan, indent=1)[:3000]
        assert not any(n["Node Type"] == "Sort" for n in nodes), shown
        (scan,) = [n for n in nodes if n.get("Relation Name") == "studies"]
        assert scan.get("Index Name") == "ix_studies_tenant_created_at_name_uid", shown
        assert scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) <= 500, shown
    assert "Index Only Scan" in json.dumps(plan), shown  # the keys: from the index alone


def test_replicas_set_and_judge_leases_by_the_databases_clock(pg_url, monkeypatch):
    """Replica B's machine clock 90 s ahead of A's: leases were set and reaped by each machine's
    own clock, so B reaped A's 60 s lease within seconds. Both now read the database's clock
    (an offset measured once a minute): B's reaper leaves A's lease, which expires on time."""
    from bbo.registry import StudyRegistry

    a, b = open_storage(pg_url, pool_size=2), open_storage(pg_url, pool_size=2)
    try:
        st, _ = StudyRegistry(a).create_study("s", SPEC)
        (t,) = st.ask(1, lease_seconds=60).trials
        assert abs(t.lease_expires_at - (time.time() + 60)) < 5
        assert abs(t.lease_expires_at - t.created_at - 60) < 1  # what a client reads as granted
        real = time.time
        monkeypatch.setattr(pgmod.time, "time", lambda: real() + 90)  # B's machine, after A's ask
        assert abs(b.clock() - real()) < 5
        reg_b = StudyRegistry(b)
        assert t.id not in reg_b.expire_leases().get(st.uid, [])
        assert b.get_trial(st.uid, t.id).state is TrialState.PENDING
        assert t.id in reg_b.expire_leases(now=b.clock() + 61).get(st.uid, [])
    finally:
        a.close()
        b.close()


def test_replicas_agree_on_the_best_of_a_noisy_study(pg_url):
    """GetBest under noise is the surrogate's pick: a replica that serves only reads takes each
    newer stored fit, and answers anew on it for the same trials (it once kept the first fit it
    loaded, and its pick and estimate drifted from those of the replica that served the asks)."""
    import random

    from bbo.registry import StudyRegistry

    s1, s2 = open_storage(pg_url, pool_size=4), open_storage(pg_url, pool_size=4)
    spec = {
        "parameters": [
            {"type": "float", "name": "x", "low": 0.0, "high": 1.0},
            {"type": "float", "name": "z", "low": 0.0, "high": 1.0},
        ],
        "objectives": [{"name": "y", "noise": "noisy"}],
        "algorithm": {"seed": 3},
    }
    r1 = StudyRegistry(s1)
    a, b = r1.create_study("noisy", spec)[0], StudyRegistry(s2).get_study("noisy")
    rng = random.Random(2)

    def evaluate(n):
        for _ in range(n):
            x, z = rng.random(), rng.random()
            y = (x - 0.3) ** 2 + (z - 0.6) ** 2 + rng.gauss(0, 0.05)
            a.add_trial({"x": x, "z": z}, {"y": y}, request_id=uuid.uuid4().hex)
        b.best()  # on the fit before: its answer must not outlive the fit below
        (t,) = a.ask(1).trials  # a fit on replica a, stored for b; the same completed trials
        a.tell(t.id, failed=True)

    def agree():
        got_a, got_b = a.best(), b.best()
        assert got_a.estimate is not None and got_a.trials[0].id == got_b.trials[0].id
        assert got_b.estimate.value == pytest.approx(got_a.estimate.value, rel=1e-9)

    evaluate(8)
    agree()
    evaluate(8)  # grown by far more than refit_growth: replica a fits again
    assert r1.model_cache.pushes == 2
    agree()
    s1.close()
    s2.close()


def test_get_best_sees_another_replicas_writes_at_once(pg_url):
    """GetBest keeps the best observed trial and the recommender's key between calls: on a
    shared database the next read on one replica sees a result told, a trial added and a better
    infeasible one on the other, as a search of all the trials says."""
    from bbo.incumbent import best_trial
    from bbo.registry import StudyRegistry

    s1, s2 = open_storage(pg_url, pool_size=4), open_storage(pg_url, pool_size=4)
    try:
        r1, r2 = StudyRegistry(s1), StudyRegistry(s2)
        spec = {
            **SPEC,
            "objectives": [{"name": "y", "noise": "deterministic"}],
            "outcome_constraints": [{"metric": "c", "op": "<=", "bound": 0.5}],
            "algorithm": {"n_initial": 1000},
        }
        here, _ = r1.create_study("seen", spec)
        there = r2.get_study("seen")
        for i in range(20):
            there.add_trial({"x": (i + 0.5) / 20}, {"y": float(i % 5), "c": 0.0})

        def best_id():
            b = here.best().trials[0].id
            assert b == best_trial(here.spec, here.trials()).id
            return b

        first = best_id()
        assert best_id() == first
        (t,) = there.ask(1).trials
        there.tell(t.id, {"y": -1.0, "c": 0.1})
        assert best_id() == t.id
        there.add_trial({"x": 0.0123}, {"y": -2.0, "c": 0.9})  # better, infeasible
        assert best_id() == t.id
        added = there.add_trial({"x": 0.0456}, {"y": -3.0, "c": 0.2})
        assert best_id() == added.id
    finally:
        s1.close()
        s2.close()
