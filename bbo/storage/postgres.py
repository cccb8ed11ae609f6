"""PostgreSQL backend: several bbo server replicas on one database.

- :func:`engine_kwargs`: connection pool (size, overflow, pre-ping, recycle, LIFO), per-session
  timeouts sent in the startup packet (``statement_timeout``, ``lock_timeout``,
  ``idle_in_transaction_session_timeout``), TCP keepalives and an ``application_name`` naming the
  replica (visible in ``pg_stat_activity``).
- :meth:`PostgresStorage.study_lock`: the cross-replica critical section of an Ask (read pending
  trials -> suggest -> insert PENDING) as a session-level advisory lock held on a connection of
  its own pool; the insert commits in that session (:meth:`PostgresStorage._study_write`), so an
  ask whose lock was lost with its session stores nothing.
- :meth:`PostgresStorage._on_error`: re-run a storage call after a serialization failure, a
  deadlock, a lock timeout (always safe: the server rolled the transaction back) or a lost
  connection (only for calls that are idempotent, since the commit may have happened before the
  connection dropped); after a few tries, or when unsafe, :class:`bbo.errors.StorageUnavailable`.
- Study creation takes a per-tenant advisory transaction lock, so the per-tenant study limit holds
  under concurrent creates on several replicas.

Settings come from bbo-specific query parameters of the database URL (removed before the URL
reaches psycopg), else from environment variables, else from the defaults below::

    postgresql+psycopg://bbo@db/bbo?pool_size=16&statement_timeout=30s&lock_wait_timeout=600s

==========================  ==============================  =========
URL parameter               environment variable            default
==========================  ==============================  =========
``pool_size``               ``BBO_DB_POOL_SIZE``            server's (``rpc_threads // 2``, >= 8)
``max_overflow``            ``BBO_DB_MAX_OVERFLOW``         ``pool_size``
``statement_timeout``       ``BBO_DB_STATEMENT_TIMEOUT``    ``30s``
``lock_timeout``            ``BBO_DB_LOCK_TIMEOUT``         ``10s``
``lock_wait_timeout``       ``BBO_DB_LOCK_WAIT_TIMEOUT``    ``600s`` (waiting for a study's ask lock)
``idle_tx_timeout``         ``BBO_DB_IDLE_TX_TIMEOUT``      ``60s``
==========================  ==============================  =========
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from bbo.errors import DatabaseUrlError, StorageFull, StorageUnavailable
from bbo.storage import driver_error
from bbo.storage import schema as S
from bbo.storage.sql import SqlStorage

log = logging.getLogger("bbo.storage")

DEFAULTS = {
    "pool_size": None,
    "max_overflow": None,
    "statement_timeout": "30s",
    "lock_timeout": "10s",
    "lock_wait_timeout": "600s",
    "idle_tx_timeout": "60s",
}
_ENV = {k: "BBO_DB_" + k.upper() for k in DEFAULTS}

# SQLSTATEs after which the server has rolled the transaction back: re-running it is always safe.
ROLLED_BACK_STATES = {
    "40001": "serialization failure",
    "40P01": "deadlock detected",
    "55P03": "lock not available",
}
# SQLSTATE classes / codes meaning the connection (or the server) went away.
CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _duration_ms(v: Any) -> int:
    """'30s', '500ms', '2min', '0', 1500 -> milliseconds."""
    if isinstance(v, (int, float)):
        return int(v)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*", str(v))
    if not m:
        raise DatabaseUrlError(f"bad duration {v!r}: use e.g. 500ms, 30s, 2min")
    x = float(m.group(1))
    return int(x * {"ms": 1, None: 1000, "s": 1000, "min": 60_000, "h": 3_600_000}[m.group(2)])


def settings(url: sa.engine.URL) -> tuple[sa.engine.URL, dict[str, Any]]:
    """Split bbo's settings off a PostgreSQL URL: ``(url for psycopg, settings)``."""
    q = dict(url.query)
    out: dict[str, Any] = {}
    for k, default in DEFAULTS.items():
        v = q.pop(k, None)
        if v is None:
            v = os.environ.get(_ENV[k]) or default
        out[k] = v
    for k in ("statement_timeout", "lock_timeout", "lock_wait_timeout", "idle_tx_timeout"):
        out[k] = _duration_ms(out[k])
    for k in ("pool_size", "max_overflow"):
        try:
            out[k] = int(out[k]) if out[k] not in (None, "") else None
        except ValueError:
            raise DatabaseUrlError(f"{k}={out[k]!r}: a whole number") from None
        if out[k] is not None and out[k] < 0:  # SQLAlchemy reads a negative size as no bound
            raise DatabaseUrlError(f"{k}={out[k]}: a whole number >= 0")
    return url.set(query=q), out


def replica_name() -> str:
    return f"bbo-{socket.gethostname()}-{os.getpid()}"[:63]


def engine_kwargs(
    url: sa.engine.URL, pool_size: int
) -> tuple[sa.engine.URL, dict[str, Any], dict[str, Any]]:
    """``(url, create_engine kwargs, settings)`` for a replica's PostgreSQL engine."""
    url, st = settings(url)
    size = st["pool_size"] or pool_size
    overflow = st["max_overflow"] if st["max_overflow"] is not None else size
    st["pool_size"], st["max_overflow"] = size, overflow
    opts = [
        f"-c statement_timeout={st['statement_timeout']}",
        f"-c lock_timeout={st['lock_timeout']}",
        f"-c idle_in_transaction_session_timeout={st['idle_tx_timeout']}",
    ]
    q = dict(url.query)
    user_opts = str(q.pop("options", "") or "")
    # the user's own -c settings in the URL win over ours (later -c overrides earlier)
    connect_args: dict[str, Any] = {"options": " ".join(opts + ([user_opts] if user_opts else []))}
    for k, v in {
        "application_name": replica_name(),
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }.items():
        if k not in q:
            connect_args[k] = v
    st["connect_args"] = connect_args
    kwargs = dict(
        pool_size=size,
        max_overflow=overflow,
        pool_pre_ping=True,  # a connection that died while pooled (server restart, failover) is replaced, not handed out
        pool_recycle=1800,
        pool_use_lifo=True,  # idle surplus connections age out instead of all staying warm
        pool_timeout=30,
        connect_args=connect_args,
    )
    return url.set(query=q), kwargs, st


# ---- transient errors -------------------------------------------------------------------------------
def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "diag", None), "sqlstate", None)


def classify(exc: BaseException) -> str | None:
    """'rolled_back' (safe to re-run anything), 'connection' (the outcome of a commit in flight is
    unknown: re-run only idempotent work), or None (not transient)."""
    code = sqlstate(exc)
    if code in ROLLED_BACK_STATES:
        return "rolled_back"
    if code and code.startswith(CONNECTION_STATES):
        return "connection"
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return "connection"
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        psycopg = None  # type: ignore[assignment]
    orig = getattr(exc, "orig", exc)
    if psycopg is not None and isinstance(orig, psycopg.OperationalError) and code is None:
        return (
            "connection"  # e.g. "server closed the connection unexpectedly", "connection refused"
        )
    return None


# ---- the backend -------------------------------------------------------------------------------------
RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.05
RETRY_MAX_DELAY = 2.0
MIGRATION_LOCK = 0x6262_6F5F  # advisory lock key: replicas migrate one at a time
CLOCK_REFRESH = 60.0  # seconds between measurements of the database clock's offset (clock())


def _serial_columns() -> list[tuple[str, str]]:
    """(table, column) of each table whose single-column key a sequence gives out."""
    out = []
    for table in S.metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) == 1 and pk[0].autoincrement is True:
            out.append((table.name, pk[0].name))
    return out


def lock_key(uid: str) -> int:
    """The advisory-lock key of a study: a namespace tag and 32 bits of its uid's hash (a signed
    64-bit value). Two studies sharing a key only serialize their asks."""
    return (0x62626F << 32) | zlib.crc32(uid.encode())


def tenant_lock_key(tenant: str) -> int:
    return (0x626274 << 32) | zlib.crc32(tenant.encode())


class PostgresStorage(SqlStorage):
    dialect = "postgresql"
    shared = True

    def __init__(self, url: sa.engine.URL, *, pool_size: int = 16, migrate: bool = True):
        url, kwargs, self.settings = engine_kwargs(url, pool_size)
        super().__init__(sa.create_engine(url, **kwargs), url)
        self._lock_engine: sa.Engine | None = None
        self._lock_engine_guard = threading.Lock()
        self._held = threading.local()  # .locks: {uid: lock connection} of the thread's study locks
        self._clock = (0.0, -math.inf)  # (the database clock's offset, when measured): clock()
        if migrate:
            self.migrate()

    def describe(self) -> dict:
        s = self.settings
        return {
            **super().describe(),
            "pool_size": s["pool_size"],
            "max_overflow": s["max_overflow"],
        }

    def close(self) -> None:
        if self._lock_engine is not None:
            self._lock_engine.dispose()
        super().close()

    def migrate(self) -> None:
        with self._write() as conn:
            # another replica may be migrating (wait for it), and a migration may take long: lift
            # the short default timeouts for this transaction only
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            self._run_migrations(conn)

    def clock(self) -> float:
        """This machine's clock moved to the database's, by an offset measured at most every
        :data:`CLOCK_REFRESH` seconds (a round trip, halved): replicas on machines whose clocks
        disagree by 90 s reaped each other's leases of 60 s within seconds."""
        now = time.time()
        offset, measured = self._clock
        if now - measured > CLOCK_REFRESH or now < measured:
            try:
                with self.engine.connect() as conn:
                    t0 = time.time()
                    db = conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())"))
                    t1 = time.time()
                    offset = float(db.scalar() or 0.0) - 0.5 * (t0 + t1)
                self._clock = (offset, t1)
                now = t1
            except sa.exc.DBAPIError:  # the database is away: the last offset serves
                log.warning("reading the database's clock failed; keeping the last offset")
        return now + offset

    def _report_clock(self, conn: sa.Connection, sid: int) -> float:
        """Replicas write one study's intermediate values in turn (the study row, locked against
        other such writes but not against tells), each stamped with the database's clock: one
        clock, in commit order, whichever replica writes."""
        conn.execute(
            sa.select(S.studies.c.id).where(S.studies.c.id == sid).with_for_update(key_share=True)
        )
        now = conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar()
        assert now is not None
        return float(now)

    def _lock_tenant(self, conn: sa.Connection, tenant: str) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": tenant_lock_key(tenant)})

    def _on_error(self, exc, call: str, attempt: int, idempotent: bool) -> float:
        kind = classify(exc)
        code = sqlstate(exc) or ""
        if kind is None and code == "53100":
            raise StorageFull(
                f"the PostgreSQL server's disk is full ({call} stored nothing): its operator "
                "must free space; retry later"
            ) from exc
        if kind is None and code.startswith("53"):  # out of memory, a configured limit
            raise StorageUnavailable(
                f"the PostgreSQL server is out of resources ({code}; {call} stored nothing); "
                "retry the request"
            ) from exc
        if kind is None:
            raise exc
        if kind == "connection" and not idempotent:
            raise StorageUnavailable(
                f"database connection lost during {call}; the change may or may not be stored: "
                "retry the request"
            ) from exc
        if attempt >= RETRY_ATTEMPTS:
            orig = getattr(exc, "orig", exc)  # the driver's words: which server, refused how
            why = f"{kind}, {code or type(orig).__name__}: {(driver_error(exc) or str(orig))[:300]}"
            raise StorageUnavailable(
                f"database unreachable or busy ({why}); retry the request"
            ) from exc
        log.warning(
            "transient database error; retrying",
            extra={"call": call, "kind": kind, "sqlstate": sqlstate(exc), "attempt": attempt},
        )
        delay = min(RETRY_BASE_DELAY * 2 ** (attempt - 1), RETRY_MAX_DELAY)
        return delay * (0.5 + random.random())

    # ---- the per-study ask lock -----------------------------------------------------------------
    def _locks(self) -> sa.Engine:
        """A pool of its own for lock-holding connections: an ask holds one for the whole fit, and
        if they came from the main pool, enough concurrent asks on different studies could take
        every connection and wait forever for a second one to read trials with."""
        with self._lock_engine_guard:
            if self._lock_engine is None:
                self._lock_engine = sa.create_engine(
                    self.engine.url,
                    pool_size=max(2, int(self.settings.get("pool_size") or 8) // 2),
                    max_overflow=64,
                    pool_pre_ping=True,
                    pool_recycle=1800,
                    pool_timeout=60,
                    isolation_level="AUTOCOMMIT",  # lock and unlock are one round trip each
                    connect_args=dict(self.settings.get("connect_args") or {}),
                )
            return self._lock_engine

    @contextlib.contextmanager
    def study_lock(self, uid: str) -> Iterator[None]:
        """Hold the study's advisory lock (session level) for the body.

        The lock is taken on a connection that does nothing else, so it is held across the body's
        own transactions and released afterwards; if the process dies, PostgreSQL drops the
        connection and the lock with it, so a SIGKILLed replica never leaves a study locked.
        Waiting is bounded by ``lock_wait_timeout``.
        """
        key = lock_key(uid)
        wait_ms = int(self.settings.get("lock_wait_timeout", 600_000))
        held = self._held_locks()
        try:
            conn = self._locks().connect()
        except sa.exc.DBAPIError as e:
            raise StorageUnavailable(
                f"could not reach the database to lock a study ({e.orig})"
            ) from e
        locked = False
        try:
            try:
                # one simple-query message; if the wait times out, the SETs roll back with it
                conn.exec_driver_sql(
                    f"SET statement_timeout = {wait_ms}; SET lock_timeout = {wait_ms}; "
                    f"SELECT pg_advisory_lock({key}); RESET statement_timeout; RESET lock_timeout"
                )
                locked = True
            except sa.exc.DBAPIError as e:
                if classify(e) is not None or sqlstate(e) == "57014":
                    raise StorageUnavailable(
                        f"could not lock the study for an ask ({sqlstate(e) or 'connection'}): "
                        "retry the request"
                    ) from e
                raise
            held[uid] = conn
            yield
        finally:
            held.pop(uid, None)
            try:
                if locked and not conn.invalidated:  # an invalidated one would reconnect to unlock
                    ok = conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})").scalar()
                    if not ok:
                        log.warning("study lock was not held at release", extra={"study": uid})
                conn.close()
            except Exception:  # never return a connection that may still hold the lock
                log.warning("releasing a study lock failed; dropping its connection", exc_info=True)
                try:
                    conn.invalidate()
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    def _held_locks(self) -> dict[str, sa.Connection]:
        """The study locks this thread holds: ``{uid: the connection holding it}``."""
        if not hasattr(self._held, "locks"):
            self._held.locks = {}
        return self._held.locks

    @contextlib.contextmanager
    def _study_write(self, uid: str) -> Iterator[sa.Connection]:
        """Under the study's lock (an Ask's insert, a tell of a PAUSED trial), the write runs on
        the lock's own session: it commits only while that session, and so the lock, is alive. A
        session killed meanwhile (pg_terminate_backend, a network drop) released the lock, and
        another replica's ask may have run without seeing this one's points: the write fails,
        StorageUnavailable, and the client's retry plans again under the lock."""
        conn = self._held_locks().get(uid)
        if conn is None:
            with self._write() as out:
                yield out
            return
        lost = StorageUnavailable(
            "the study's ask lock was lost (its database session ended) while the ask computed: "
            "retry the request (the same request id replays it if it was stored)"
        )
        if conn.invalidated or conn.closed:
            raise lost
        try:
            conn.commit()  # ends the autobegun (autocommit) one of the lock statement: no trip
            conn.execution_options(isolation_level="READ COMMITTED")  # the driver's flag: no trip
            with conn.begin():
                yield conn
        except sa.exc.DBAPIError as e:
            if classify(e) != "connection":
                raise  # a rolled-back transaction: retried on the same session, still locked
            conn.invalidate()
            raise lost from e
        finally:
            if not conn.invalidated:
                conn.execution_options(isolation_level="AUTOCOMMIT")

    def id_counters(self, conn: sa.Connection) -> dict[str, int]:
        out = {}
        for table, col in _serial_columns():
            seq = conn.execute(
                sa.text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": col}
            ).scalar()
            if seq:  # a name the database quoted; after setval(n, false) the last given is n - 1
                last, called = conn.execute(
                    sa.text(f"SELECT last_value, is_called FROM {seq}")
                ).one()
                out[table] = int(last) - (0 if called else 1)
        return out

    def after_bulk_copy(self, conn: sa.Connection, counters: dict[str, int]) -> None:
        for table, col in _serial_columns():
            conn.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence(:t, :c), GREATEST(:n, "
                    f"COALESCE((SELECT max({col}) FROM {table}), 0)) + 1, false)"
                ),
                {"t": table, "c": col, "n": counters.get(table, 0)},
            )

    @contextlib.contextmanager
    def snapshot(self):
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
