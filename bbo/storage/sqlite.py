"""SQLite backend: the embedded default. One ``bbo serve`` process owns a database file.

- A server opens it with ``exclusive=True``: an exclusive ``flock`` on ``<file>-serve.lock`` beside
  it, held while the storage is open (the kernel drops it when the process ends, however it
  ends), so a second server on the same file is refused (:class:`bbo.errors.DatabaseInUse`)
  instead of serving studies whose trials the first keeps in memory. Readers (``bbo copy``,
  ``bbo keys``, ``bbo --db``) take no lock.

- WAL journal, ``synchronous=FULL`` by default (a committed tell survives power loss; NORMAL
  survives a process crash but not a power cut), foreign keys on, a 30 s busy timeout (URL query
  parameters ``?synchronous=normal&busy_timeout=30000``).
- SQLite allows one writer: a process-wide lock queues this process's writers without busy-wait
  sleeps, and ``BEGIN IMMEDIATE`` makes writers in other processes wait on the busy timeout.
- Tells from many threads share one transaction and one fsync (:class:`GroupCommit`).
- The hot paths of Ask and Tell run as plain DB-API statements on the write transaction's
  connection: the same SQL and JSON encoding SQLAlchemy would issue, without its per-statement
  machinery, which cost several times the SQLite work itself.
- A database that stays locked past the busy timeout is :class:`bbo.errors.StorageUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from bbo.errors import (
    DatabaseInUse,
    DatabaseUrlError,
    NotFoundError,
    StorageFull,
    StorageUnavailable,
    StudyNotFound,
)
from bbo.storage import schema as S
from bbo.storage.base import RequestKey, StoredRequest, TrialChange
from bbo.storage.sql import SqlStorage, db_call, metrics_from_json, metrics_to_json
from bbo.trial import Trial, TrialState

SYNCHRONOUS = ("FULL", "NORMAL", "OFF", "EXTRA")
CLAIM_SUFFIX = "-serve.lock"  # the file beside the database a server holds its flock on


def claim(path: str) -> int | None:
    """Lock the SQLite database ``path`` for one serving process: an exclusive ``flock`` on the
    file ``<path>-serve.lock`` (the path's symlinks resolved, so every name of the file meets the
    same lock), held as long as the returned descriptor is open. Raises
    :class:`~bbo.errors.DatabaseInUse` where another open descriptor holds it, in this process or
    another. None where the platform has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Unix
        return None
    lock_path = os.path.realpath(path) + CLAIM_SUFFIX
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only directory or mount: was a traceback at start-up
        raise StorageUnavailable(
            f"cannot open the lock file {lock_path} beside the SQLite database ({e.strerror}): "
            "bbo serve needs to write in the database's directory"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise DatabaseInUse(
            f"the SQLite database {path} is served by another bbo serve process{by}: a SQLite "
            "file belongs to one server (it keeps the studies' trials in memory); stop that one, "
            "or use PostgreSQL to run several servers on one database"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:  # our pid, for another server's refusal to name; the flock alone is the claim
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # a full disk: serve on, its writes refused RESOURCE_EXHAUSTED as usual
        pass
    return fd


def _locked(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.OperationalError) and (
        "database is locked" in str(orig) or "database is busy" in str(orig)
    )


def _write_failure(exc: BaseException) -> int | None:
    """SQLITE_FULL, SQLITE_IOERR or SQLITE_READONLY (primary codes) where ``exc`` or an error it
    arose from says the database could not be written, else None. Followed through the chain: on
    a full disk SQLite rolls the transaction back itself, and the savepoint's own rollback then
    fails with "no such savepoint", the full disk only in its context."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(getattr(e, "orig", e), "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (
            sqlite3.SQLITE_FULL,
            sqlite3.SQLITE_IOERR,
            sqlite3.SQLITE_READONLY,
        ):
            return code & 0xFF
        e = e.__cause__ or e.__context__
    return None


def _nonul(v):
    """As the schema's text types store it: NUL becomes U+FFFD (PostgreSQL refuses NUL). Every
    text value the raw fast paths below bind, written or compared, goes through it, so a SQLite
    database holds and matches exactly what PostgreSQL would."""
    return v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v


class SqliteStorage(SqlStorage):
    dialect = "sqlite"
    shared = False
    RAW_ERRORS = (sqlite3.Error,)  # statements on the raw sqlite3 connection (trial inserts...)

    def __init__(
        self,
        url: sa.engine.URL,
        *,
        pool_size: int = 16,
        migrate: bool = True,
        group_commit: bool = True,
        exclusive: bool = False,
    ):
        """``exclusive``: claim the file for this serving process (:func:`claim`), before anything
        is read or migrated."""
        q = dict(url.query)
        where = "the URL's synchronous" if "synchronous" in q else "BBO_SQLITE_SYNCHRONOUS"
        sync = str(q.pop("synchronous", os.environ.get("BBO_SQLITE_SYNCHRONOUS", "FULL"))).upper()
        if sync not in SYNCHRONOUS:
            raise DatabaseUrlError(f"{where}={sync!r}: use one of {SYNCHRONOUS}")
        self.synchronous = sync
        try:
            self.busy_timeout_ms = int(str(q.pop("busy_timeout", 30000)))
        except ValueError:
            raise DatabaseUrlError("busy_timeout: milliseconds, e.g. busy_timeout=30000") from None
        url = url.set(query=q)
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": self.busy_timeout_ms / 1000},
        }
        self._in_memory = not url.database or url.database == ":memory:"
        if exclusive and self._in_memory:  # `--db sqlite:///$UNSET`: every tell gone at a restart
            raise DatabaseUrlError(
                f"{url.render_as_string()!r} names no database file: a server's studies would live "
                "in memory only, lost when it stops; use sqlite:///PATH"
            )
        self._claim: int | None = None
        if url.database and not self._in_memory:
            if not migrate and not Path(url.database).exists():  # only reading: no stray file
                raise NotFoundError(f"no database file at {url.database}")
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=60)
            if exclusive:
                self._claim = claim(url.database)
        else:
            kwargs.update(poolclass=sa.pool.StaticPool)
        self._group: GroupCommit | None = None
        try:
            super().__init__(sa.create_engine(url, **kwargs), url)
            self._wlock = threading.RLock()
            self._setup()
            self._group = GroupCommit(self) if group_commit else None
            if migrate:
                self.migrate()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        sync, in_memory, busy = self.synchronous, self._in_memory, self.busy_timeout_ms

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
            cur = dbapi_conn.cursor()
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={busy}")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _begin(conn):
            write = conn.get_execution_options().get("bbo_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    def describe(self) -> dict:
        return {**super().describe(), "sqlite_synchronous": self.synchronous}

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        if hasattr(self, "engine"):
            super().close()
        if self._claim is not None:  # after the last write: the next server may start
            os.close(self._claim)
            self._claim = None

    def _on_error(self, exc, call: str, attempt: int, idempotent: bool) -> float:
        if _locked(exc):
            raise StorageUnavailable(
                "the SQLite database stayed locked by another process (a second server on the "
                "same file?); retry the request"
            ) from exc
        code = _write_failure(exc)
        if code == sqlite3.SQLITE_FULL:
            raise StorageFull(
                f"the SQLite database's disk is full ({call} stored nothing): the server's "
                "operator must free space; retry later"
            ) from exc
        if code is not None:
            raise StorageUnavailable(
                f"the SQLite database could not be written ({call} stored nothing: "
                f"{getattr(exc, 'orig', exc)}); the server's operator must check its disk; "
                "retry the request"
            ) from exc
        raise exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._wlock:
            with self.engine.connect() as conn:
                conn.execution_options(bbo_write=True)
                with conn.begin():
                    yield conn

    def migrate(self) -> None:
        """Migrate with foreign-key enforcement off (SQLite's procedure for schema changes: a
        table rebuilt by a migration is dropped and re-created, which must not cascade), then
        check every reference still holds."""
        with self._wlock, self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA foreign_keys=OFF")  # outside a transaction, or it is a no-op
            try:
                conn.execution_options(bbo_write=True)
                with conn.begin():
                    self._run_migrations(conn)
                    bad = raw.execute("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise RuntimeError(f"migration broke foreign keys: {bad[:5]}")
            finally:
                raw.execute("PRAGMA foreign_keys=ON")

    def id_counters(self, conn: sa.Connection) -> dict[str, int]:
        rows = conn.execute(sa.text("SELECT name, seq FROM sqlite_sequence")).all()
        return {str(name): int(seq) for name, seq in rows}

    def after_bulk_copy(self, conn: sa.Connection, counters: dict[str, int]) -> None:
        # inserting ids moved each AUTOINCREMENT counter to the largest; past it, the source's
        for table in S.metadata.sorted_tables:
            n = counters.get(table.name)
            if n is None or not table.dialect_options["sqlite"].get("autoincrement"):
                continue
            params = {"t": table.name, "n": n}
            if not conn.execute(
                sa.text("UPDATE sqlite_sequence SET seq = max(seq, :n) WHERE name = :t"), params
            ).rowcount:
                conn.execute(
                    sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :n)"), params
                )

    # ---- fast paths -----------------------------------------------------------------------------
    @staticmethod
    def _raw(conn: sa.Connection):
        return conn.connection.driver_connection

    def _insert_trial_rows(self, conn, sid, rows, req, now) -> None:
        raw = self._raw(conn)
        try:
            for r in rows:
                pk = raw.execute(
                    _INSERT_TRIAL,
                    (
                        sid,
                        r["number"],
                        json.dumps(r["params"]),
                        r["state"],
                        json.dumps(r["metrics"]),
                        r["origin"],
                        _nonul(r["reason"]),
                        _nonul(r["rationale"]),
                        _nonul(r["worker_id"]),
                        r["created_at"],
                        r["updated_at"],
                        r["lease_expires_at"],
                        r["budget"],
                        r["bracket"],
                        r["resume_budget"],
                    ),
                ).lastrowid
                raw.execute(_INSERT_EVENT, (pk, r["state"], f"created ({r['origin']})", now))
            if req is not None:
                numbers = json.dumps({"trials": [r["number"] for r in rows]})
                raw.execute(
                    _INSERT_REQUEST,
                    (sid, req.kind, _nonul(req.request_id), req.request_hash, numbers, time.time()),
                )
        except sqlite3.IntegrityError as e:  # what callers catch from the SQLAlchemy path
            raise sa.exc.IntegrityError("insert_trials", None, e) from e

    def _lookup(self, conn, sid, kind, request_id):
        row = self._raw(conn).execute(_LOOKUP_REQUEST, (sid, kind, _nonul(request_id))).fetchone()
        return StoredRequest(row[0], json.loads(row[1])) if row else None

    @db_call
    def modify_trial(
        self,
        uid: str,
        number: int,
        change: TrialChange,
        *,
        request: RequestKey | None = None,
        event_detail: str = "",
    ):
        def apply(raw):
            return _modify_trial_raw(raw, uid, number, change, request, event_detail)

        try:
            if self._group is not None:
                return self._group.run(apply)
            with self._write() as conn:
                return apply(self._raw(conn))
        except sqlite3.OperationalError as e:  # from the group-commit writer: not wrapped
            return self._on_error(e, "modify_trial", 1, False)


_SELECT_STUDY = "SELECT id FROM studies WHERE uid = ?"
_SELECT_TRIAL = (
    "SELECT id, number, params, state, metrics, origin, reason, rationale, worker_id, created_at, "
    "updated_at, lease_expires_at, budget, bracket, resume_budget FROM trials "
    "WHERE study_id = ? AND number = ?"
)
_UPDATE_TRIAL = (
    "UPDATE trials SET state = ?, metrics = ?, reason = ?, worker_id = ?, updated_at = ?, "
    "lease_expires_at = ?, budget = ?, bracket = ?, resume_budget = ? WHERE id = ?"
)
_INSERT_EVENT = "INSERT INTO trial_events (trial_id, state, detail, at) VALUES (?, ?, ?, ?)"
_LOOKUP_REQUEST = (
    "SELECT request_hash, response FROM request_log "
    "WHERE study_id = ? AND kind = ? AND request_id = ?"
)
_INSERT_REQUEST = (
    "INSERT INTO request_log (study_id, kind, request_id, request_hash, response, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_TRIAL = (
    "INSERT INTO trials (study_id, number, params, state, metrics, origin, reason, rationale, "
    "worker_id, created_at, updated_at, lease_expires_at, budget, bracket, resume_budget) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _raw_trial(r) -> Trial:
    return Trial(
        id=int(r[1]),
        params=json.loads(r[2]),
        state=TrialState(r[3]),
        metrics=metrics_from_json(json.loads(r[4])),
        origin=r[5],
        reason=r[6],
        rationale=r[7],
        worker_id=r[8],
        created_at=r[9],
        updated_at=r[10],
        lease_expires_at=r[11],
        budget=r[12],
        bracket=r[13],
        resume_budget=r[14],
    )


def _modify_trial_raw(raw, uid, number, change, request, event_detail):
    """``Storage.modify_trial`` on a sqlite3 connection inside the caller's write transaction."""
    sid = raw.execute(_SELECT_STUDY, (uid,)).fetchone()
    if sid is None:
        raise StudyNotFound("the study no longer exists (it was deleted)")
    sid = sid[0]
    if request is not None:
        prev = raw.execute(
            _LOOKUP_REQUEST, (sid, request.kind, _nonul(request.request_id))
        ).fetchone()
        if prev is not None:
            row = raw.execute(_SELECT_TRIAL, (sid, number)).fetchone()
            return (
                (_raw_trial(row) if row else None),
                False,
                StoredRequest(prev[0], json.loads(prev[1])),
            )
    row = raw.execute(_SELECT_TRIAL, (sid, number)).fetchone()
    if row is None:
        return None, False, None
    cur = _raw_trial(row)
    new = change(cur)
    if new is None:
        return cur, False, None
    new.updated_at = time.time()
    raw.execute(
        _UPDATE_TRIAL,
        (
            new.state.value,
            json.dumps(metrics_to_json(new.metrics)),
            _nonul(new.reason),
            _nonul(new.worker_id),
            new.updated_at,
            new.lease_expires_at,
            new.budget,
            new.bracket,
            new.resume_budget,
            row[0],
        ),
    )
    if new.state is not cur.state:
        raw.execute(
            _INSERT_EVENT,
            (row[0], new.state.value, _nonul(event_detail or new.reason), new.updated_at),
        )
    if request is not None:
        body = json.dumps({"trials": [number], "state": new.state.value})
        raw.execute(
            _INSERT_REQUEST,
            (
                sid,
                request.kind,
                _nonul(request.request_id),
                request.request_hash,
                body,
                time.time(),
            ),
        )
    return new, True, None


class GroupCommit:
    """Group commit for SQLite: trial updates queued by many RPC threads are applied by one writer
    thread in a single transaction, each under its own SAVEPOINT (one refused update does not undo
    the others), and committed with one fsync. A caller returns only after that commit, so an
    acknowledged tell is durable; under load the fsync cost is shared by the whole batch.

    The writer keeps one sqlite3 connection of the engine's pool for itself and drives it with
    plain DB-API calls (BEGIN IMMEDIATE / SAVEPOINT / COMMIT), under the storage's writer lock like
    every other write of the process. Queued functions receive that sqlite3 connection."""

    MAX_BATCH = 256

    class _Item:
        __slots__ = ("fn", "done", "result", "exc")

        def __init__(self, fn):
            self.fn, self.done, self.result, self.exc = fn, threading.Event(), None, None

    def __init__(self, storage: SqliteStorage):
        self._storage = storage
        self._pooled = None  # the writer's pooled connection, checked out on first use
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._qlock = (
            threading.Lock()
        )  # nothing is queued after close()'s end marker, so nothing waits forever
        self._thread = threading.Thread(target=self._loop, name="bbo-group-commit", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[Any], Any]) -> Any:
        item = self._Item(fn)
        with self._qlock:
            if self._closed or not self._thread.is_alive():
                raise RuntimeError("storage is closed")
            self._q.put(item)
        item.done.wait()
        if item.exc is not None:
            raise item.exc
        return item.result

    def close(self) -> None:
        with self._qlock:
            if self._closed:
                return
            self._closed = True
            self._q.put(None)
        self._thread.join(10)

    def _loop(self) -> None:
        try:
            stop = False
            while not stop:
                first = self._q.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < self.MAX_BATCH:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._apply(batch)
                # not kept while waiting for the next: a batch's functions hold what their callers
                # held (a study the registry dropped would stay alive until the next write)
                del first, batch
        finally:
            if self._pooled is not None:
                self._pooled.close()  # back to the pool (disposed with the engine)
                self._pooled = None

    def _raw(self):
        if self._pooled is None:
            self._pooled = (
                self._storage.engine.raw_connection()
            )  # runs the engine's connect hook (PRAGMAs)
        return self._pooled.driver_connection

    def _apply(self, batch: list) -> None:
        try:
            with self._storage._wlock:
                raw = self._raw()
                raw.execute("BEGIN IMMEDIATE")
                try:
                    if len(batch) == 1:
                        batch[0].result = batch[0].fn(raw)
                    else:
                        for it in batch:
                            raw.execute("SAVEPOINT bbo_gc")
                            try:
                                it.result = it.fn(raw)
                            except (
                                Exception
                            ) as e:  # refused or failed: only this update is rolled back
                                it.exc, it.result = e, None
                                raw.execute("ROLLBACK TO bbo_gc")
                            raw.execute("RELEASE bbo_gc")
                    raw.execute("COMMIT")
                except BaseException:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
                    raise
        except (
            BaseException
        ) as e:  # the commit failed (or the only update raised): nobody's write stands
            for it in batch:
                if it.exc is None:
                    it.exc, it.result = e, None
        finally:
            for it in batch:
                it.done.set()
