"""The SQLAlchemy implementation of :class:`Storage` (see the package docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy import event

from bbo.errors import NotFoundError
from bbo.storage import schema as S
from bbo.storage.pg import retry_transient
from bbo.trial import Metric, Trial, TrialState

DEFAULT_SQLITE_PATH = os.path.join("bbo-data", "bbo.db")

# SQLite synchronous level: FULL fsyncs the WAL on every commit (a committed tell survives power
# loss); NORMAL survives a process crash but not a power cut. FULL is the default; see README.
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL", "OFF", "EXTRA")


def default_url(path: str = DEFAULT_SQLITE_PATH) -> str:
    return "sqlite:///" + os.path.abspath(path)


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(
        json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass(frozen=True)
class StudyRecord:
    id: int
    tenant: str
    name: str
    spec: dict
    spec_hash: str
    seed: int
    state: str
    state_reason: str
    trial_counter: int
    created_at: float

    @property
    def uid(self) -> str:
        """This incarnation of the study. SQLite may give a deleted study's id to a new study, never
        with the same creation time, so (id, created_at) names one study for good."""
        return f"{self.id}.{round(self.created_at * 1e6)}"


@dataclass
class NewTrial:
    """A trial to insert (its number is allocated by storage)."""

    params: dict
    origin: str
    state: TrialState = TrialState.PENDING
    metrics: dict[str, Metric] = field(default_factory=dict)
    reason: str = ""
    rationale: str = ""


@dataclass(frozen=True)
class RequestKey:
    """An idempotency key: the stored response of (study, kind, request_id) is replayed."""

    tenant: str
    kind: str
    request_id: str
    request_hash: str


LLM_PURPOSES = (
    "warmstart",
    "priors",
    "proposal",
)  # what an LLM call was for (LlmCallRecord.purpose)


@dataclass(frozen=True)
class LlmCallRecord:
    purpose: str
    model: str
    prompt: str
    response: str
    outcome: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0
    created_at: float = 0.0
    id: int = 0  # assigned by the database; 0 before the record is stored


def _metrics_to_json(metrics: dict[str, Metric]) -> dict:
    return {k: {"value": m.value, "sem": m.sem} for k, m in metrics.items()}


def _metrics_from_json(d: dict) -> dict[str, Metric]:
    return {
        k: Metric(float(v["value"]), None if v.get("sem") is None else float(v["sem"]))
        for k, v in (d or {}).items()
    }


def _trial(row) -> Trial:
    return Trial(
        id=int(row.number),
        params=dict(row.params),
        state=TrialState(row.state),
        metrics=_metrics_from_json(row.metrics),
        origin=row.origin,
        reason=row.reason,
        rationale=row.rationale,
        worker_id=row.worker_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        lease_expires_at=row.lease_expires_at,
    )


def _study(row) -> StudyRecord:
    return StudyRecord(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        spec=dict(row.spec),
        spec_hash=row.spec_hash,
        seed=int(row.seed),
        state=row.state,
        state_reason=row.state_reason,
        trial_counter=int(row.trial_counter),
        created_at=row.created_at,
    )


class Storage:
    """Thread-safe access to the bbo database. One instance per process."""

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        pool_size: int = 16,
        migrate: bool = True,
        group_commit: bool = True,
    ):
        url = url or default_url()
        u = sa.engine.make_url(url)
        self.dialect = u.get_backend_name()
        kwargs: dict[str, Any] = {"future": True}
        self.sqlite_synchronous = "FULL"
        if self.dialect == "sqlite":
            q = dict(u.query)
            sync = str(
                q.pop("synchronous", os.environ.get("BBO_SQLITE_SYNCHRONOUS", "FULL"))
            ).upper()
            if sync not in SQLITE_SYNCHRONOUS:
                raise ValueError(f"synchronous={sync!r}: use one of {SQLITE_SYNCHRONOUS}")
            self.sqlite_synchronous = sync
            u = u.set(query=q)
            if u.database and u.database != ":memory:":
                if (
                    not migrate and not Path(u.database).exists()
                ):  # only reading: never create a stray file
                    raise NotFoundError(f"no database file at {u.database}")
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
                kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_timeout=60)
            else:
                kwargs.update(poolclass=sa.pool.StaticPool)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif self.dialect == "postgresql":
            from bbo.storage import pg

            # pool sizes, pre-ping, statement / lock timeouts, keepalives: see bbo.storage.pg
            u, pg_kwargs, self.pg_settings = pg.engine_kwargs(u, pool_size)
            kwargs.update(pg_kwargs)
        else:
            raise ValueError(
                f"unsupported database {self.dialect!r}: use sqlite:///PATH or postgresql+psycopg://..."
            )
        self.url = u
        self.engine = sa.create_engine(u, **kwargs)
        # SQLite allows one writer: a process-wide lock queues writers without busy-wait sleeps;
        # BEGIN IMMEDIATE (below) makes writers in other processes wait on the busy timeout instead.
        self._wlock: contextlib.AbstractContextManager = (
            threading.RLock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        if self.dialect == "sqlite":
            self._setup_sqlite()
        # SQLite: tells from many threads share one transaction and one fsync (see _GroupCommit).
        self._group = _GroupCommit(self) if self.dialect == "sqlite" and group_commit else None
        if migrate:
            self.migrate()

    # ---- engine setup ---------------------------------------------------------------------------
    def _setup_sqlite(self) -> None:
        sync = self.sqlite_synchronous
        in_memory = not self.url.database or self.url.database == ":memory:"

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
            cur = dbapi_conn.cursor()
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("bbo_write") else "BEGIN"
            )

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent, safe to race)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._write() as conn:
            if self.dialect == "postgresql":
                # another replica may be migrating (wait for it), and a migration may take long:
                # lift the short default timeouts of bbo.storage.pg for this transaction only
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x6262_6F5F})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def current_revision(self) -> Optional[str]:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        lock_engine = getattr(self, "_pg_lock_engine", None)
        if lock_engine is not None:
            lock_engine.dispose()
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._wlock:
            with self.engine.connect() as conn:
                conn.execution_options(bbo_write=True)
                with conn.begin():
                    yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def study_lock(self, study_id: int) -> Iterator[None]:
        """Serialize suggestion generation of one study across server processes (PostgreSQL).

        In-process callers also hold a per-study ``threading.Lock``; on SQLite (one server process
        per file) this is a no-op.
        """
        if self.dialect != "postgresql":
            yield
            return
        from bbo.storage import pg

        with pg.study_lock(self, study_id):  # advisory lock on a connection pool of its own
            yield

    # ---- studies --------------------------------------------------------------------------------
    @retry_transient
    def insert_study(self, tenant: str, name: str, spec: dict, seed: int) -> Optional[StudyRecord]:
        """Insert a study; None when (tenant, name) is taken."""
        now = time.time()
        try:
            with self._write() as conn:
                conn.execute(
                    S.studies.insert().values(
                        tenant=tenant,
                        name=name,
                        spec=spec,
                        spec_hash=spec_hash(spec),
                        seed=int(seed),
                        state="ACTIVE",
                        state_reason="",
                        trial_counter=0,
                        created_at=now,
                    )
                )
        except sa.exc.IntegrityError:
            return None
        return self.get_study(tenant, name)

    @retry_transient
    def get_study(self, tenant: str, name: str) -> Optional[StudyRecord]:
        with self._read() as conn:
            row = conn.execute(
                sa.select(S.studies).where(S.studies.c.tenant == tenant, S.studies.c.name == name)
            ).first()
        return _study(row) if row else None

    @retry_transient
    def get_study_by_id(self, study_id: int) -> Optional[StudyRecord]:
        with self._read() as conn:
            row = conn.execute(sa.select(S.studies).where(S.studies.c.id == study_id)).first()
        return _study(row) if row else None

    @retry_transient
    def list_studies(self, tenant: str, after_id: int = 0, limit: int = 100) -> list[StudyRecord]:
        q = (
            sa.select(S.studies)
            .where(S.studies.c.tenant == tenant, S.studies.c.id > after_id)
            .order_by(S.studies.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_study(r) for r in conn.execute(q)]

    @retry_transient
    def delete_study(self, study_id: int) -> bool:
        """Delete a study and everything of it (explicitly: SQLite FKs may be off elsewhere)."""
        tid = sa.select(S.trials.c.id).where(S.trials.c.study_id == study_id).scalar_subquery()
        with self._write() as conn:
            conn.execute(
                S.intermediate_values.delete().where(S.intermediate_values.c.trial_id.in_(tid))
            )
            conn.execute(S.trial_events.delete().where(S.trial_events.c.trial_id.in_(tid)))
            conn.execute(S.trials.delete().where(S.trials.c.study_id == study_id))
            conn.execute(S.llm_calls.delete().where(S.llm_calls.c.study_id == study_id))
            conn.execute(S.request_log.delete().where(S.request_log.c.study_id == study_id))
            conn.execute(S.model_state.delete().where(S.model_state.c.study_id == study_id))
            n = conn.execute(S.studies.delete().where(S.studies.c.id == study_id)).rowcount
        return n > 0

    @retry_transient
    def set_study_state(self, study_id: int, state: str, reason: str) -> None:
        with self._write() as conn:
            conn.execute(
                S.studies.update()
                .where(S.studies.c.id == study_id)
                .values(state=state, state_reason=reason)
            )

    @retry_transient
    def trial_counts(self, study_id: int) -> dict[str, int]:
        q = (
            sa.select(S.trials.c.state, sa.func.count())
            .where(S.trials.c.study_id == study_id)
            .group_by(S.trials.c.state)
        )
        with self._read() as conn:
            return {s: int(n) for s, n in conn.execute(q)}

    # ---- idempotency ----------------------------------------------------------------------------
    def lookup_request(
        self, study_id: int, kind: str, request_id: str, conn: Optional[sa.Connection] = None
    ) -> Optional[tuple[str, dict]]:
        if self.dialect == "sqlite":  # every Ask looks its request id up: plain DB-API (see _RAW_*)
            args = (study_id, kind, request_id)
            if conn is not None:
                raw_row = conn.connection.driver_connection.execute(
                    _RAW_LOOKUP_REQUEST, args
                ).fetchone()
            else:
                pooled = self.engine.raw_connection()
                try:
                    raw_row = pooled.driver_connection.execute(_RAW_LOOKUP_REQUEST, args).fetchone()
                finally:
                    pooled.close()
            return (raw_row[0], json.loads(raw_row[1])) if raw_row else None
        q = sa.select(S.request_log.c.request_hash, S.request_log.c.response).where(
            S.request_log.c.study_id == study_id,
            S.request_log.c.kind == kind,
            S.request_log.c.request_id == request_id,
        )
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self._read() as c:
                row = c.execute(q).first()
        return (row.request_hash, dict(row.response)) if row else None

    def _log_request(
        self, conn: sa.Connection, study_id: int, req: RequestKey, response: dict
    ) -> None:
        conn.execute(
            S.request_log.insert().values(
                tenant=req.tenant,
                study_id=study_id,
                kind=req.kind,
                request_id=req.request_id,
                request_hash=req.request_hash,
                response=response,
                created_at=time.time(),
            )
        )

    # ---- trials ---------------------------------------------------------------------------------
    @retry_transient(idempotent=lambda self, study_id, new, **kw: kw.get("request") is not None)
    def insert_trials(
        self,
        study_id: int,
        new: Sequence[NewTrial],
        *,
        worker_id: str = "",
        lease_expires_at: Optional[float] = None,
        request: Optional[RequestKey] = None,
        created_at: Optional[float] = None,
    ) -> tuple[list[Trial], Optional[dict]]:
        """Insert trials with freshly allocated numbers, in one transaction. With ``created_at``,
        only into the study created then (NotFoundError if it was deleted, its id reused or not).

        With ``request``, the (study, kind, request_id) key is recorded with the new numbers; if it
        was already recorded, nothing is inserted and ``(existing trials, stored response)`` comes
        back instead (the caller compares hashes).
        """
        now = time.time()
        with self._write() as conn:
            raw = (
                conn.connection.driver_connection if self.dialect == "sqlite" else None
            )  # plain DB-API on SQLite (see _RAW_*)
            if request is not None:
                prev = self.lookup_request(study_id, request.kind, request.request_id, conn)
                if prev is not None:
                    numbers = prev[1].get("trials", [])
                    return self._trials_by_number(conn, study_id, numbers), {
                        "hash": prev[0],
                        **prev[1],
                    }
            n = len(new)
            if raw is not None:
                sql, args = (
                    (_RAW_ALLOCATE_NUMBERS, (n, study_id))
                    if created_at is None
                    else (_RAW_ALLOCATE_NUMBERS_OF, (n, study_id, created_at))
                )
                top = next(iter(raw.execute(sql, args).fetchall()), (None,))[0]
            else:
                same = S.studies.c.created_at == created_at if created_at is not None else sa.true()
                top = conn.execute(
                    S.studies.update()
                    .where(S.studies.c.id == study_id, same)
                    .values(trial_counter=S.studies.c.trial_counter + n)
                    .returning(S.studies.c.trial_counter)
                ).scalar_one_or_none()
            if top is None:
                raise NotFoundError(f"study {study_id} no longer exists")
            first = int(top) - n + 1
            rows = []
            for i, t in enumerate(new):
                rows.append(
                    dict(
                        study_id=study_id,
                        number=first + i,
                        params=t.params,
                        state=t.state.value,
                        metrics=_metrics_to_json(t.metrics),
                        origin=t.origin,
                        reason=t.reason,
                        rationale=t.rationale,
                        worker_id=worker_id,
                        created_at=now,
                        updated_at=now,
                        lease_expires_at=lease_expires_at
                        if t.state is TrialState.PENDING
                        else None,
                    )
                )
            if raw is not None:
                _insert_trials_sqlite(raw, study_id, rows, request, now)
            else:
                if rows:
                    ids = (
                        conn.execute(
                            S.trials.insert().returning(
                                S.trials.c.id, sort_by_parameter_order=True
                            ),
                            rows,
                        )
                        .scalars()
                        .all()
                    )
                    conn.execute(
                        S.trial_events.insert(),
                        [
                            dict(
                                trial_id=pk,
                                state=r["state"],
                                detail=f"created ({r['origin']})",
                                at=now,
                            )
                            for pk, r in zip(ids, rows)
                        ],
                    )
                if request is not None:
                    self._log_request(
                        conn, study_id, request, {"trials": [r["number"] for r in rows]}
                    )
            return [self._row_trial(r) for r in rows], None

    @staticmethod
    def _row_trial(r: dict) -> Trial:
        return Trial(
            id=int(r["number"]),
            params=dict(r["params"]),
            state=TrialState(r["state"]),
            metrics=_metrics_from_json(r["metrics"]),
            origin=r["origin"],
            reason=r["reason"],
            rationale=r["rationale"],
            worker_id=r["worker_id"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            lease_expires_at=r["lease_expires_at"],
        )

    def _trials_by_number(
        self, conn: sa.Connection, study_id: int, numbers: Iterable[int]
    ) -> list[Trial]:
        numbers = list(numbers)
        if not numbers:
            return []
        rows = conn.execute(
            sa.select(S.trials).where(
                S.trials.c.study_id == study_id, S.trials.c.number.in_(numbers)
            )
        ).all()
        by = {int(r.number): _trial(r) for r in rows}
        return [by[n] for n in numbers if n in by]

    @retry_transient
    def get_trial(self, study_id: int, number: int) -> Optional[Trial]:
        with self._read() as conn:
            row = conn.execute(
                sa.select(S.trials).where(
                    S.trials.c.study_id == study_id, S.trials.c.number == number
                )
            ).first()
        return _trial(row) if row else None

    @retry_transient
    def list_trials(
        self,
        study_id: int,
        states: Optional[Iterable[TrialState]] = None,
        after: int = 0,
        limit: Optional[int] = None,
    ) -> list[Trial]:
        q = sa.select(S.trials).where(S.trials.c.study_id == study_id, S.trials.c.number > after)
        states = list(states or [])
        if states:
            q = q.where(S.trials.c.state.in_([s.value for s in states]))
        q = q.order_by(S.trials.c.number)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [_trial(r) for r in conn.execute(q)]

    @retry_transient
    def modify_trial(
        self,
        study_id: int,
        number: int,
        change: Callable[[Trial], Optional[Trial]],
        *,
        request: Optional[RequestKey] = None,
        event_detail: str = "",
    ) -> tuple[Optional[Trial], bool, Optional[dict]]:
        """Read-modify-write one trial in a single write transaction.

        ``change(current)`` returns the new trial to store, or None to leave it as is (it may raise
        to refuse). Returns ``(trial, changed, previous_request)``; ``trial`` is None if the trial
        does not exist. With ``request`` already recorded, nothing changes and the stored request
        comes back as ``previous_request`` (``{"hash": ..., ...}``).
        """
        if self._group is not None:
            return self._group.run(
                lambda raw: _modify_trial_sqlite(
                    raw, study_id, number, change, request, event_detail
                )
            )
        with self._write() as conn:
            return self._modify_trial_in(conn, study_id, number, change, request, event_detail)

    def _modify_trial_in(self, conn, study_id, number, change, request, event_detail):
        if self.dialect == "sqlite":
            return _modify_trial_sqlite(
                conn.connection.driver_connection, study_id, number, change, request, event_detail
            )
        if request is not None:
            prev = self.lookup_request(study_id, request.kind, request.request_id, conn)
            if prev is not None:
                cur = self._trials_by_number(conn, study_id, [number])
                return (cur[0] if cur else None), False, {"hash": prev[0], **prev[1]}
        # Prebuilt statements (module level): the hot path of every tell skips statement construction.
        row = conn.execute(_SELECT_TRIAL, {"b_study": study_id, "b_number": number}).first()
        if row is None:
            return None, False, None
        cur = _trial(row)
        new = change(cur)
        if new is None:
            return cur, False, None
        new.updated_at = time.time()
        conn.execute(
            _UPDATE_TRIAL,
            {
                "b_pk": row.id,
                "b_state": new.state.value,
                "b_metrics": _metrics_to_json(new.metrics),
                "b_reason": new.reason,
                "b_worker": new.worker_id,
                "b_updated": new.updated_at,
                "b_lease": new.lease_expires_at,
            },
        )
        if new.state is not cur.state:
            conn.execute(
                S.trial_events.insert(),
                {
                    "trial_id": row.id,
                    "state": new.state.value,
                    "detail": event_detail or new.reason,
                    "at": new.updated_at,
                },
            )
        if request is not None:
            self._log_request(
                conn, study_id, request, {"trials": [number], "state": new.state.value}
            )
        return new, True, None

    @retry_transient
    def expire_leases(self, study_id: int, now: Optional[float] = None) -> list[int]:
        """Mark PENDING trials whose lease ran out ABANDONED; returns their numbers."""
        now = time.time() if now is None else now
        cond = sa.and_(
            S.trials.c.study_id == study_id,
            S.trials.c.state == TrialState.PENDING.value,
            S.trials.c.lease_expires_at.is_not(None),
            S.trials.c.lease_expires_at < now,
        )
        with self._read() as conn:  # cheap check first: most asks find nothing to expire
            if conn.execute(sa.select(sa.func.count()).where(cond)).scalar_one() == 0:
                return []
        with self._write() as conn:
            # one conditional UPDATE: a trial told (or reaped by another replica) meanwhile no longer
            # matches, so a result is never turned into ABANDONED and each expiry is recorded once
            rows = conn.execute(
                S.trials.update()
                .where(cond)
                .values(state=TrialState.ABANDONED.value, reason=LEASE_EXPIRED, updated_at=now)
                .returning(S.trials.c.id, S.trials.c.number)
            ).all()
            if not rows:
                return []
            conn.execute(
                S.trial_events.insert(),
                [
                    dict(
                        trial_id=r.id,
                        state=TrialState.ABANDONED.value,
                        detail=LEASE_EXPIRED,
                        at=now,
                    )
                    for r in rows
                ],
            )
            return sorted(int(r.number) for r in rows)

    @retry_transient
    def trial_events(self, study_id: int, number: int) -> list[tuple[str, str, float]]:
        q = (
            sa.select(S.trial_events.c.state, S.trial_events.c.detail, S.trial_events.c.at)
            .join(S.trials, S.trials.c.id == S.trial_events.c.trial_id)
            .where(S.trials.c.study_id == study_id, S.trials.c.number == number)
            .order_by(S.trial_events.c.id)
        )
        with self._read() as conn:
            return [(r.state, r.detail, r.at) for r in conn.execute(q)]

    # ---- intermediate values --------------------------------------------------------------------
    @retry_transient
    def add_intermediate(self, study_id: int, number: int, step: int, value: float) -> bool:
        """Record (or overwrite) a trial's value at ``step``; False if the trial does not exist."""
        now = time.time()
        with self._write() as conn:
            # FOR UPDATE: two reports of one step at once (a retry racing its original, on two
            # replicas) take turns; otherwise both delete nothing and the second insert hits the key
            pk = conn.execute(
                sa.select(S.trials.c.id)
                .where(S.trials.c.study_id == study_id, S.trials.c.number == number)
                .with_for_update()
            ).scalar()
            if pk is None:
                return False
            conn.execute(
                S.intermediate_values.delete().where(
                    S.intermediate_values.c.trial_id == pk, S.intermediate_values.c.step == step
                )
            )
            conn.execute(
                S.intermediate_values.insert().values(
                    trial_id=pk, step=step, value=float(value), at=now
                )
            )
        return True

    @retry_transient
    def intermediates(self, study_id: int) -> dict[int, list[tuple[int, float]]]:
        """trial number -> [(step, value)] sorted by step."""
        q = (
            sa.select(
                S.trials.c.number, S.intermediate_values.c.step, S.intermediate_values.c.value
            )
            .join(S.trials, S.trials.c.id == S.intermediate_values.c.trial_id)
            .where(S.trials.c.study_id == study_id)
            .order_by(S.trials.c.number, S.intermediate_values.c.step)
        )
        out: dict[int, list[tuple[int, float]]] = {}
        with self._read() as conn:
            for number, step, value in conn.execute(q):
                out.setdefault(int(number), []).append((int(step), float(value)))
        return out

    # ---- LLM calls ------------------------------------------------------------------------------
    @retry_transient(idempotent=False)
    def log_llm_call(self, study_id: int, call: LlmCallRecord) -> None:
        with self._write() as conn:
            conn.execute(
                S.llm_calls.insert().values(
                    study_id=study_id,
                    purpose=call.purpose,
                    model=call.model,
                    prompt=call.prompt,
                    response=call.response,
                    outcome=call.outcome,
                    prompt_tokens=int(call.prompt_tokens),
                    completion_tokens=int(call.completion_tokens),
                    latency_seconds=float(call.latency_seconds),
                    created_at=call.created_at or time.time(),
                )
            )

    @retry_transient
    def list_llm_calls(
        self,
        study_id: int,
        purpose: Optional[str] = None,
        after: int = 0,
        limit: Optional[int] = None,
    ) -> list[LlmCallRecord]:
        c = S.llm_calls.c
        q = sa.select(S.llm_calls).where(c.study_id == study_id, c.id > after).order_by(c.id)
        if purpose is not None:
            q = q.where(c.purpose == purpose)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [
                LlmCallRecord(
                    r.purpose,
                    r.model,
                    r.prompt,
                    r.response,
                    r.outcome,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.latency_seconds,
                    r.created_at,
                    r.id,
                )
                for r in conn.execute(q)
            ]


# FOR UPDATE (PostgreSQL; SQLite has one writer and omits it): a concurrent read-modify-write of the same
# trial from another replica waits for this one and then sees its result, instead of overwriting it.
_SELECT_TRIAL = (
    sa.select(S.trials)
    .where(
        S.trials.c.study_id == sa.bindparam("b_study"),
        S.trials.c.number == sa.bindparam("b_number"),
    )
    .with_for_update()
)
_UPDATE_TRIAL = (
    S.trials.update()
    .where(S.trials.c.id == sa.bindparam("b_pk"))
    .values(
        state=sa.bindparam("b_state"),
        metrics=sa.bindparam("b_metrics", type_=sa.JSON),
        reason=sa.bindparam("b_reason"),
        worker_id=sa.bindparam("b_worker"),
        updated_at=sa.bindparam("b_updated"),
        lease_expires_at=sa.bindparam("b_lease"),
    )
)


# ---- the Tell hot path on SQLite ------------------------------------------------------------------
# Every Tell is one read-modify-write of a trial. On SQLite it runs as plain DB-API statements on the
# connection of the (group-commit) write transaction: the same SQL and JSON encoding SQLAlchemy would
# issue (sa.JSON stores json.dumps text), without its per-statement compile / event / result
# machinery, which cost several times the SQLite work itself. Everything else stays SQLAlchemy.
_RAW_SELECT_TRIAL = (
    "SELECT id, number, params, state, metrics, origin, reason, rationale, worker_id, created_at, updated_at, lease_expires_at "
    "FROM trials WHERE study_id = ? AND number = ?"
)
_RAW_UPDATE_TRIAL = "UPDATE trials SET state = ?, metrics = ?, reason = ?, worker_id = ?, updated_at = ?, lease_expires_at = ? WHERE id = ?"
_RAW_INSERT_EVENT = "INSERT INTO trial_events (trial_id, state, detail, at) VALUES (?, ?, ?, ?)"
_RAW_LOOKUP_REQUEST = "SELECT request_hash, response FROM request_log WHERE study_id = ? AND kind = ? AND request_id = ?"
_RAW_INSERT_REQUEST = "INSERT INTO request_log (tenant, study_id, kind, request_id, request_hash, response, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"


_RAW_ALLOCATE_NUMBERS = (
    "UPDATE studies SET trial_counter = trial_counter + ? WHERE id = ? RETURNING trial_counter"
)
_RAW_ALLOCATE_NUMBERS_OF = "UPDATE studies SET trial_counter = trial_counter + ? WHERE id = ? AND created_at = ? RETURNING trial_counter"
_RAW_INSERT_TRIAL = (
    "INSERT INTO trials (study_id, number, params, state, metrics, origin, reason, rationale, worker_id, created_at, updated_at, lease_expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_trials_sqlite(
    raw, study_id: int, rows: list[dict], request: Optional[RequestKey], now: float
) -> None:
    """The inserts of ``Storage.insert_trials`` (trials, their creation events, the request log) on
    a sqlite3 connection inside the caller's write transaction."""
    try:
        for r in rows:
            pk = raw.execute(
                _RAW_INSERT_TRIAL,
                (
                    study_id,
                    r["number"],
                    json.dumps(r["params"]),
                    r["state"],
                    json.dumps(r["metrics"]),
                    r["origin"],
                    r["reason"],
                    r["rationale"],
                    r["worker_id"],
                    r["created_at"],
                    r["updated_at"],
                    r["lease_expires_at"],
                ),
            ).lastrowid
            raw.execute(_RAW_INSERT_EVENT, (pk, r["state"], f"created ({r['origin']})", now))
        if request is not None:
            raw.execute(
                _RAW_INSERT_REQUEST,
                (
                    request.tenant,
                    study_id,
                    request.kind,
                    request.request_id,
                    request.request_hash,
                    json.dumps({"trials": [r["number"] for r in rows]}),
                    time.time(),
                ),
            )
    except sqlite3.IntegrityError as e:  # what callers catch from the SQLAlchemy path
        raise sa.exc.IntegrityError("insert_trials", None, e) from e


def _raw_trial(r) -> Trial:
    return Trial(
        id=int(r[1]),
        params=json.loads(r[2]),
        state=TrialState(r[3]),
        metrics=_metrics_from_json(json.loads(r[4])),
        origin=r[5],
        reason=r[6],
        rationale=r[7],
        worker_id=r[8],
        created_at=r[9],
        updated_at=r[10],
        lease_expires_at=r[11],
    )


def _modify_trial_sqlite(raw, study_id, number, change, request, event_detail):
    """``Storage._modify_trial_in`` on a sqlite3 connection inside the caller's write transaction."""
    if request is not None:
        prev = raw.execute(
            _RAW_LOOKUP_REQUEST, (study_id, request.kind, request.request_id)
        ).fetchone()
        if prev is not None:
            row = raw.execute(_RAW_SELECT_TRIAL, (study_id, number)).fetchone()
            return (
                (_raw_trial(row) if row else None),
                False,
                {"hash": prev[0], **json.loads(prev[1])},
            )
    row = raw.execute(_RAW_SELECT_TRIAL, (study_id, number)).fetchone()
    if row is None:
        return None, False, None
    cur = _raw_trial(row)
    new = change(cur)
    if new is None:
        return cur, False, None
    new.updated_at = time.time()
    raw.execute(
        _RAW_UPDATE_TRIAL,
        (
            new.state.value,
            json.dumps(_metrics_to_json(new.metrics)),
            new.reason,
            new.worker_id,
            new.updated_at,
            new.lease_expires_at,
            row[0],
        ),
    )
    if new.state is not cur.state:
        raw.execute(
            _RAW_INSERT_EVENT, (row[0], new.state.value, event_detail or new.reason, new.updated_at)
        )
    if request is not None:
        raw.execute(
            _RAW_INSERT_REQUEST,
            (
                request.tenant,
                study_id,
                request.kind,
                request.request_id,
                request.request_hash,
                json.dumps({"trials": [number], "state": new.state.value}),
                time.time(),
            ),
        )
    return new, True, None


class _GroupCommit:
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

    def __init__(self, storage: "Storage"):
        self._storage = storage
        self._pooled = None  # the writer's pooled connection, checked out on first use
        self._q: "queue.SimpleQueue" = queue.SimpleQueue()
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


LEASE_EXPIRED = "lease expired"
