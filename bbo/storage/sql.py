"""The SQL implementation of :class:`bbo.storage.base.Storage` shared by both backends.

SQLAlchemy Core on the tables of :mod:`bbo.storage.schema`. A call that names a study resolves its
uid to the row id inside its own transaction (on PostgreSQL with a key-share lock on the study row,
so a concurrent delete waits for the write instead of leaving it half done), so nothing is ever
written into a study other than the one named. :class:`~bbo.storage.sqlite.SqliteStorage` and
:class:`~bbo.storage.postgres.PostgresStorage` add each dialect's engine, locking, error handling
and fast paths.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa

from bbo.errors import LimitError, SchemaTooNew, StudyNotFound
from bbo.limits import LimitExceeded
from bbo.storage import schema as S
from bbo.storage.base import (
    LEASE_EXPIRED,
    ApiKeyRecord,
    Continuation,
    CurvePoint,
    LlmCallRecord,
    ModelState,
    NewTrial,
    RequestKey,
    Storage,
    StoredRequest,
    StudyKey,
    StudyRecord,
    TrialChange,
)
from bbo.trial import Metric, Trial, TrialState

COUNT_PAGE = 500  # studies whose trials one completed_counts query counts
STAMP_STEP = 1e-6  # s: a stamp past the study's newest (float64 resolves 2.4e-7 s at today's epoch)


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(
        json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def new_uid() -> str:
    """A study uid: 128 random bits, URL-safe; says nothing about other studies."""
    return secrets.token_urlsafe(16)


def metrics_to_json(metrics: dict[str, Metric]) -> dict:
    return {k: {"value": m.value, "sem": m.sem} for k, m in metrics.items()}


def metrics_from_json(d: dict) -> dict[str, Metric]:
    return {
        k: Metric(float(v["value"]), None if v.get("sem") is None else float(v["sem"]))
        for k, v in (d or {}).items()
    }


def _trial(row) -> Trial:
    return Trial(
        id=int(row.number),
        params=dict(row.params),
        state=TrialState(row.state),
        metrics=metrics_from_json(row.metrics),
        origin=row.origin,
        reason=row.reason,
        rationale=row.rationale,
        worker_id=row.worker_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        lease_expires_at=row.lease_expires_at,
        budget=row.budget,
        bracket=row.bracket,
        resume_budget=row.resume_budget,
    )


def row_trial(r: dict) -> Trial:
    """A trial from the column dict about to be inserted."""
    return Trial(
        id=int(r["number"]),
        params=dict(r["params"]),
        state=TrialState(r["state"]),
        metrics=metrics_from_json(r["metrics"]),
        origin=r["origin"],
        reason=r["reason"],
        rationale=r["rationale"],
        worker_id=r["worker_id"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        lease_expires_at=r["lease_expires_at"],
        budget=r["budget"],
        bracket=r["bracket"],
        resume_budget=r["resume_budget"],
    )


def _study(row) -> StudyRecord:
    return StudyRecord(
        uid=row.uid,
        tenant=row.tenant,
        name=row.name,
        spec=dict(row.spec),
        spec_hash=row.spec_hash,
        seed=int(row.seed),
        state=row.state,
        state_reason=row.state_reason,
        trial_counter=int(row.trial_counter),
        created_at=row.created_at,
        transfer=dict(row.transfer) if row.transfer else None,
    )


def _study_page(q, tenant: str, after: tuple[float, str] | None, limit: int):
    """``q`` over the tenant's studies in creation order (ties by name), those after ``after``."""
    c = S.studies.c
    q = q.where(c.tenant == tenant)
    if after is not None:
        at, name = after
        # a row value, not ``created_at > at OR (created_at = at AND name > name)``: both backends
        # turn it into a range of the listing index (with the OR, SQLite scanned the index from
        # the tenant's first study on every page)
        q = q.where(sa.tuple_(c.created_at, c.name) > sa.tuple_(at, name))
    return q.order_by(c.created_at, c.name).limit(limit)


def _llm_call(r) -> LlmCallRecord:
    return LlmCallRecord(
        r.purpose,
        r.model,
        r.prompt,
        r.response,
        r.outcome,
        r.prompt_tokens,
        r.completion_tokens,
        r.latency_seconds,
        r.created_at,
        int(r.number),
    )


def _api_key(r) -> ApiKeyRecord:
    return ApiKeyRecord(r.key_id, r.tenant, r.key_hash, r.label, r.created_at, r.revoked_at)


def db_call(fn: Callable | None = None, *, idempotent: bool | Callable[..., bool] = True):
    """Run a storage method, handing database errors to the backend's :meth:`SqlStorage._on_error`
    (which retries what is safe to retry, turns an unreachable or locked database into
    StorageUnavailable, and re-raises anything else). ``idempotent``: whether re-running after a
    lost connection is safe (a bool, or a function of the call's arguments)."""

    def deco(f):
        @functools.wraps(f)
        def wrapper(self, *args, **kwargs):
            attempt = 0
            while True:
                attempt += 1
                try:
                    return f(self, *args, **kwargs)
                except (sa.exc.DBAPIError, *self.RAW_ERRORS) as e:  # noqa: PERF203
                    ok = idempotent(self, *args, **kwargs) if callable(idempotent) else idempotent
                    time.sleep(self._on_error(e, f.__name__, attempt, ok))

        return wrapper

    return deco(fn) if fn is not None else deco


class SqlStorage(Storage):
    """Storage on a SQLAlchemy engine (see the module docstring)."""

    # the driver's own errors, raised where a backend runs statements on its raw connection (not
    # wrapped by SQLAlchemy), which :func:`db_call` hands to :meth:`_on_error` as well
    RAW_ERRORS: tuple[type[Exception], ...] = ()

    def __init__(self, engine: sa.Engine, url: sa.engine.URL):
        self.engine = engine
        self.url = url

    # ---- hooks for the backends -----------------------------------------------------------------
    def _on_error(self, exc: Exception, call: str, attempt: int, idempotent: bool) -> float:
        """Seconds to wait before retrying ``call``, or raise. The default: re-raise."""
        raise exc

    def _lock_tenant(self, conn: sa.Connection, tenant: str) -> None:
        """Serialize study creation of one tenant for the rest of the transaction."""

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def _study_write(self, uid: str) -> contextlib.AbstractContextManager[sa.Connection]:
        """The write transaction of an insert or change of the study's trials: :meth:`_write`,
        unless the backend fences it with the study's lock (PostgreSQL)."""
        return self._write()

    def _report_time(self, conn: sa.Connection, sid: int) -> float:
        """The time an intermediate value is stored at: later than every stamp of the study before
        it, so in commit order (rung decisions compare these times with what they could see, and a
        replica reads the values stamped since the newest it saw). The clock's reading, or just
        past the study's newest stamp where the clock stepped back."""
        now = self._report_clock(conn, sid)
        c = S.studies.c
        last = conn.execute(sa.select(c.report_clock).where(c.id == sid)).scalar()
        if last is not None and now <= last:
            now = last + STAMP_STEP
        conn.execute(S.studies.update().where(c.id == sid).values(report_clock=now))
        return now

    def _report_clock(self, conn: sa.Connection, sid: int) -> float:
        """The clock of :meth:`_report_time`, read once the study's reports are serialized. The
        default: writes of the process are serialized already (SQLite's one writer), so the local
        clock."""
        return time.time()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            yield conn

    def _sid(self, conn: sa.Connection, uid: str, *, lock: bool = False) -> int:
        """The row id of the study ``uid``; with ``lock``, the study row is key-share locked (on
        PostgreSQL) until the transaction ends, so it cannot be deleted under the write."""
        q = sa.select(S.studies.c.id).where(S.studies.c.uid == uid)
        if lock:
            q = q.with_for_update(read=True, key_share=True)
        sid = conn.execute(q).scalar()
        if sid is None:
            raise StudyNotFound("the study no longer exists (it was deleted)")
        return int(sid)

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.engine.dispose()

    def describe(self) -> dict:
        return {"db": self.url.render_as_string(hide_password=True), "dialect": self.dialect}

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        with self._write() as conn:
            self._run_migrations(conn)

    def _run_migrations(self, conn: sa.Connection) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        cfg.attributes["connection"] = conn
        script = ScriptDirectory.from_config(cfg)
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in {r.revision for r in script.walk_revisions()}:
            # a downgrade: Alembic's own "Can't locate revision" came out as a traceback
            raise SchemaTooNew(
                f"the database is at schema revision {current}, written by a newer bbo than this "
                f"one (schema {script.get_current_head()}): run that version, or restore a backup "
                "made before the upgrade"
            )
        command.upgrade(cfg, "head")

    @db_call
    def schema_revision(self) -> str | None:
        """The schema's Alembic revision; the health probe's read, so retried like any read (one
        lost connection must not flip health)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # ---- studies --------------------------------------------------------------------------------
    @db_call
    def create_study(
        self,
        tenant: str,
        name: str,
        spec: dict,
        seed: int,
        *,
        max_studies: int = 0,
        transfer: dict | None = None,
    ) -> StudyRecord | None:
        c = S.studies.c
        with self._write() as conn:
            self._lock_tenant(conn, tenant)
            if conn.execute(sa.select(c.id).where(c.tenant == tenant, c.name == name)).first():
                return None
            if max_studies > 0:
                n = conn.execute(
                    sa.select(sa.func.count()).select_from(S.studies).where(c.tenant == tenant)
                ).scalar_one()
                if n >= max_studies:
                    raise LimitError(
                        f"tenant '{tenant}' has {n} studies, the limit is {max_studies}: "
                        "delete some first",
                        field="name",
                        limit="max_studies",
                    )
            values = dict(
                uid=new_uid(),
                tenant=tenant,
                name=name,
                spec=spec,
                spec_hash=spec_hash(spec),
                seed=int(seed),
                state="ACTIVE",
                state_reason="",
                trial_counter=0,
                llm_counter=0,
                created_at=time.time(),
                transfer=transfer,
            )
            try:
                with conn.begin_nested():
                    conn.execute(S.studies.insert().values(**values))
            except sa.exc.IntegrityError:  # the name was taken after all
                return None
            return _study(conn.execute(sa.select(S.studies).where(c.uid == values["uid"])).one())

    @db_call
    def get_study(self, tenant: str, name: str) -> StudyRecord | None:
        c = S.studies.c
        with self._read() as conn:
            row = conn.execute(
                sa.select(S.studies).where(c.tenant == tenant, c.name == name)
            ).first()
        return _study(row) if row else None

    @db_call
    def get_study_by_uid(self, uid: str) -> StudyRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(S.studies).where(S.studies.c.uid == uid)).first()
        return _study(row) if row else None

    @db_call
    def list_studies(
        self, tenant: str, *, after: tuple[float, str] | None = None, limit: int = 100
    ) -> list[StudyRecord]:
        q = _study_page(sa.select(S.studies), tenant, after, limit)
        with self._read() as conn:
            return [_study(r) for r in conn.execute(q)]

    @db_call
    def list_study_keys(
        self, tenant: str, *, after: tuple[float, str] | None = None, limit: int = 100
    ) -> list[StudyKey]:
        c = S.studies.c
        q = _study_page(sa.select(c.uid, c.name, c.created_at), tenant, after, limit)
        with self._read() as conn:
            return [StudyKey(r.uid, r.name, r.created_at) for r in conn.execute(q)]

    @db_call
    def studies_by_uid(self, uids: Sequence[str]) -> list[StudyRecord]:
        if not uids:
            return []
        q = sa.select(S.studies).where(S.studies.c.uid.in_(list(uids)))
        with self._read() as conn:
            found = {r.uid: _study(r) for r in conn.execute(q)}
        return [found[u] for u in uids if u in found]

    @db_call
    def count_studies(self, tenant: str) -> int:
        q = sa.select(sa.func.count()).select_from(S.studies).where(S.studies.c.tenant == tenant)
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    @db_call
    def delete_study(self, uid: str) -> bool:
        with self._write() as conn:
            sid = conn.execute(
                sa.select(S.studies.c.id).where(S.studies.c.uid == uid).with_for_update()
            ).scalar()
            if sid is None:
                return False
            # explicitly, children first (SQLite enforces foreign keys only where they are on)
            tid = sa.select(S.trials.c.id).where(S.trials.c.study_id == sid).scalar_subquery()
            iv, ev = S.intermediate_values, S.trial_events
            conn.execute(iv.delete().where(iv.c.trial_id.in_(tid)))
            conn.execute(ev.delete().where(ev.c.trial_id.in_(tid)))
            for t in (S.trials, S.llm_calls, S.request_log, S.model_state):
                conn.execute(t.delete().where(t.c.study_id == sid))
            conn.execute(S.studies.delete().where(S.studies.c.id == sid))
        return True

    @db_call
    def set_study_state(self, uid: str, state: str, reason: str) -> None:
        with self._write() as conn:
            n = conn.execute(
                S.studies.update()
                .where(S.studies.c.uid == uid)
                .values(state=state, state_reason=reason)
            ).rowcount
        if n == 0:
            raise StudyNotFound("the study no longer exists (it was deleted)")

    @db_call
    def set_study_transfer(self, uid: str, transfer: dict) -> None:
        with self._write() as conn:
            n = conn.execute(
                S.studies.update().where(S.studies.c.uid == uid).values(transfer=transfer)
            ).rowcount
        if n == 0:
            raise StudyNotFound("the study no longer exists (it was deleted)")

    @db_call
    def trial_counts(self, uid: str) -> dict[str, int]:
        t = S.trials.c
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = sa.select(t.state, sa.func.count()).where(t.study_id == sid).group_by(t.state)
            return {s: int(n) for s, n in conn.execute(q)}

    @db_call
    def completed_counts(self, uids: Sequence[str]) -> dict[str, int]:
        st, t = S.studies, S.trials
        done = sa.and_(t.c.study_id == st.c.id, t.c.state == TrialState.COMPLETED.value)
        out: dict[str, int] = {}
        with self._read() as conn:
            for i in range(0, len(uids), COUNT_PAGE):
                q = (
                    sa.select(st.c.uid, sa.func.count(t.c.id))
                    .select_from(st.outerjoin(t, done))
                    .where(st.c.uid.in_(list(uids[i : i + COUNT_PAGE])))
                    .group_by(st.c.uid)
                )
                out.update((u, int(n)) for u, n in conn.execute(q))
        return out

    @db_call
    def trial_numbers(self, uid: str, state: TrialState) -> set[int]:
        t = S.trials.c
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = sa.select(t.number).where(t.study_id == sid, t.state == state.value)
            return {int(n) for (n,) in conn.execute(q)}

    # ---- idempotency ----------------------------------------------------------------------------
    def _lookup(self, conn: sa.Connection, sid: int, kind: str, request_id: str):
        c = S.request_log.c
        row = conn.execute(
            sa.select(c.request_hash, c.response).where(
                c.study_id == sid, c.kind == kind, c.request_id == request_id
            )
        ).first()
        return StoredRequest(row.request_hash, dict(row.response)) if row else None

    def _log_request(self, conn: sa.Connection, sid: int, req: RequestKey, response: dict) -> None:
        conn.execute(
            S.request_log.insert().values(
                study_id=sid,
                kind=req.kind,
                request_id=req.request_id,
                request_hash=req.request_hash,
                response=response,
                created_at=time.time(),
            )
        )

    @db_call
    def lookup_request(self, uid: str, kind: str, request_id: str) -> StoredRequest | None:
        with self._read() as conn:
            return self._lookup(conn, self._sid(conn, uid), kind, request_id)

    # ---- trials ---------------------------------------------------------------------------------
    @db_call(idempotent=lambda self, uid, new, **kw: kw.get("request") is not None)
    def insert_trials(
        self,
        uid: str,
        new: Sequence[NewTrial],
        *,
        worker_id: str = "",
        lease_expires_at: float | None = None,
        request: RequestKey | None = None,
        continuations: Sequence[Continuation] = (),
        max_trials: int = 0,
    ) -> tuple[list[Trial], StoredRequest | None]:
        try:
            return self._insert_trials(
                uid, new, worker_id, lease_expires_at, request, continuations, max_trials
            )
        except sa.exc.IntegrityError:
            if request is None:
                raise
            # the same request id committed by another replica at the same moment: replay it
            with self._read() as conn:
                sid = self._sid(conn, uid)
                prev = self._lookup(conn, sid, request.kind, request.request_id)
                if prev is None:
                    raise
                return self._trials_by_number(conn, sid, prev.response.get("trials", [])), prev

    def _insert_trials(
        self, uid, new, worker_id, lease_expires_at, request, continuations=(), max_trials=0
    ):
        now = self.clock()  # the lease's clock: a client reads the lease granted as the difference
        with self._study_write(uid) as conn:
            sid = self._sid(conn, uid, lock=True)
            if request is not None:
                prev = self._lookup(conn, sid, request.kind, request.request_id)
                if prev is not None:
                    numbers = prev.response.get("trials", [])
                    return self._trials_by_number(conn, sid, numbers), prev
            n = len(new)
            top = conn.execute(
                S.studies.update()
                .where(S.studies.c.id == sid)
                .values(trial_counter=S.studies.c.trial_counter + n)
                .returning(S.studies.c.trial_counter)
            ).scalar_one()
            first = int(top) - n + 1
            if max_trials > 0 and n and int(top) > max_trials:
                raise LimitExceeded(
                    "study",
                    f"the study has {first - 1} trials and this request adds {n}, at most "
                    f"{max_trials} allowed: continue in a new study (a transfer source keeps "
                    "what this one learned)",
                    "max_trials_per_study",
                )
            # after the study row (as every writer locks it first), then the trial rows
            continued = [
                c.number
                for c in continuations
                if self._continue(conn, sid, c, worker_id, lease_expires_at, now)
            ]
            rows = [
                dict(
                    study_id=sid,
                    number=first + i,
                    params=t.params,
                    state=t.state.value,
                    metrics=metrics_to_json(t.metrics),
                    origin=t.origin,
                    reason=t.reason,
                    rationale=t.rationale,
                    worker_id=worker_id,
                    created_at=now,
                    updated_at=now,
                    lease_expires_at=lease_expires_at if t.state is TrialState.PENDING else None,
                    budget=t.budget,
                    bracket=t.bracket,
                    resume_budget=None,
                )
                for i, t in enumerate(new)
            ]
            if not continued:
                self._insert_trial_rows(conn, sid, rows, request, now)
                return [row_trial(r) for r in rows], None
            self._insert_trial_rows(conn, sid, rows, None, now)
            if request is not None:
                numbers = continued + [r["number"] for r in rows]
                self._log_request(conn, sid, request, {"trials": numbers})
            out = self._trials_by_number(conn, sid, continued)
            return out + [row_trial(r) for r in rows], None

    def _continue(self, conn, sid: int, c: Continuation, worker_id, lease_expires_at, now) -> bool:
        """Hand the PAUSED trial ``c.number`` out again at ``c.budget``: one conditional UPDATE,
        so a trial no longer PAUSED at ``c.from_budget`` (continued by another ask) is left alone."""
        t = S.trials.c
        row = conn.execute(
            S.trials.update()
            .where(
                t.study_id == sid,
                t.number == c.number,
                t.state == TrialState.PAUSED.value,
                t.budget == c.from_budget,
            )
            .values(
                state=TrialState.PENDING.value,
                metrics={},
                reason=c.reason,
                worker_id=worker_id,
                updated_at=now,
                lease_expires_at=lease_expires_at,
                budget=c.budget,
                resume_budget=c.from_budget,
            )
            .returning(t.id)
        ).first()
        if row is None:
            return False
        conn.execute(
            S.trial_events.insert().values(
                trial_id=row.id, state=TrialState.PENDING.value, detail=c.reason, at=now
            )
        )
        return True

    def _insert_trial_rows(
        self, conn: sa.Connection, sid: int, rows: list[dict], req: RequestKey | None, now: float
    ) -> None:
        if rows:
            ids = (
                conn.execute(
                    S.trials.insert().returning(S.trials.c.id, sort_by_parameter_order=True), rows
                )
                .scalars()
                .all()
            )
            conn.execute(
                S.trial_events.insert(),
                [
                    dict(trial_id=pk, state=r["state"], detail=f"created ({r['origin']})", at=now)
                    for pk, r in zip(ids, rows)
                ],
            )
        if req is not None:
            self._log_request(conn, sid, req, {"trials": [r["number"] for r in rows]})

    def _trials_by_number(self, conn, sid: int, numbers: Iterable[int]) -> list[Trial]:
        numbers = list(numbers)
        if not numbers:
            return []
        t = S.trials.c
        rows = conn.execute(
            sa.select(S.trials).where(t.study_id == sid, t.number.in_(numbers))
        ).all()
        by = {int(r.number): _trial(r) for r in rows}
        return [by[n] for n in numbers if n in by]

    @db_call
    def get_trial(self, uid: str, number: int) -> Trial | None:
        t = S.trials.c
        with self._read() as conn:
            sid = self._sid(conn, uid)
            row = conn.execute(
                sa.select(S.trials).where(t.study_id == sid, t.number == number)
            ).first()
        return _trial(row) if row else None

    @db_call
    def trials_by_number(self, uid: str, numbers: Iterable[int]) -> list[Trial]:
        numbers = list(numbers)
        out: list[Trial] = []
        with self._read() as conn:
            sid = self._sid(conn, uid)
            for i in range(0, len(numbers), 500):  # within any backend's bound on parameters
                out += self._trials_by_number(conn, sid, numbers[i : i + 500])
        return out

    @db_call
    def list_trials(
        self,
        uid: str,
        states: Iterable[TrialState] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        t = S.trials.c
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = sa.select(S.trials).where(t.study_id == sid, t.number > after)
            wanted = sorted({s.value for s in states or []})  # each once, however often asked
            if wanted:
                q = q.where(t.state.in_(wanted))
            q = q.order_by(t.number)
            if limit is not None:
                q = q.limit(limit)
            return [_trial(r) for r in conn.execute(q)]

    @db_call
    def modify_trial(
        self,
        uid: str,
        number: int,
        change: TrialChange,
        *,
        request: RequestKey | None = None,
        event_detail: str = "",
    ) -> tuple[Trial | None, bool, StoredRequest | None]:
        with self._study_write(uid) as conn:
            sid = self._sid(conn, uid, lock=True)
            if request is not None:
                prev = self._lookup(conn, sid, request.kind, request.request_id)
                if prev is not None:
                    done = self._trials_by_number(conn, sid, [number])
                    return (done[0] if done else None), False, prev
            row = conn.execute(_SELECT_TRIAL, {"b_study": sid, "b_number": number}).first()
            if row is None:
                return None, False, None
            cur = _trial(row)
            new = change(cur)
            if new is None:
                return cur, False, None
            new.updated_at = self.clock()
            conn.execute(
                _UPDATE_TRIAL,
                {
                    "b_pk": row.id,
                    "b_state": new.state.value,
                    "b_metrics": metrics_to_json(new.metrics),
                    "b_reason": new.reason,
                    "b_worker": new.worker_id,
                    "b_updated": new.updated_at,
                    "b_lease": new.lease_expires_at,
                    "b_budget": new.budget,
                    "b_bracket": new.bracket,
                    "b_resume": new.resume_budget,
                },
            )
            if new.state is not cur.state:
                conn.execute(
                    S.trial_events.insert().values(
                        trial_id=row.id,
                        state=new.state.value,
                        detail=event_detail or new.reason,
                        at=new.updated_at,
                    )
                )
            if request is not None:
                self._log_request(
                    conn, sid, request, {"trials": [number], "state": new.state.value}
                )
            return new, True, None

    @db_call
    def expire_leases(self, uid: str, now: float) -> list[int]:
        t = S.trials.c
        with self._read() as conn:  # cheap check first: most asks find nothing to expire
            sid = self._sid(conn, uid)
            cond = sa.and_(
                t.study_id == sid,
                t.state == TrialState.PENDING.value,
                t.lease_expires_at.is_not(None),
                t.lease_expires_at < now,
            )
            if conn.execute(sa.select(sa.func.count()).where(cond)).scalar_one() == 0:
                return []
        with self._write() as conn:
            self._sid(conn, uid, lock=True)
            # one conditional UPDATE: a trial told (or reaped by another replica) meanwhile no
            # longer matches, so a result is never turned into ABANDONED and each expiry is
            # recorded once
            rows = conn.execute(
                S.trials.update()
                .where(cond)
                .values(state=TrialState.ABANDONED.value, reason=LEASE_EXPIRED, updated_at=now)
                .returning(t.id, t.number)
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

    @db_call
    def studies_with_expired_leases(self, now: float) -> list[str]:
        t = S.trials.c
        # per study through the (study_id, state) index: O(studies + pending trials)
        over = sa.select(t.id).where(
            t.study_id == S.studies.c.id,
            t.state == TrialState.PENDING.value,
            t.lease_expires_at.is_not(None),
            t.lease_expires_at < now,
        )
        with self._read() as conn:
            return [r[0] for r in conn.execute(sa.select(S.studies.c.uid).where(over.exists()))]

    @db_call
    def trial_events(self, uid: str, number: int) -> list[tuple[str, str, float]]:
        ev = S.trial_events.c
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = (
                sa.select(ev.state, ev.detail, ev.at)
                .join(S.trials, S.trials.c.id == ev.trial_id)
                .where(S.trials.c.study_id == sid, S.trials.c.number == number)
                .order_by(ev.id)
            )
            return [(r.state, r.detail, r.at) for r in conn.execute(q)]

    # ---- intermediate values --------------------------------------------------------------------
    @db_call
    def add_intermediate(
        self,
        uid: str,
        number: int,
        step: int,
        value: float,
        budget: float | None = None,
        *,
        max_steps: int = 0,
        check: Callable[[TrialState, str], None] | None = None,
    ) -> bool:
        iv = S.intermediate_values
        with self._write() as conn:
            sid = self._sid(conn, uid, lock=True)
            now = self._report_time(conn, sid)
            # FOR UPDATE: two reports of one step at once (a retry racing its original, on two
            # replicas) take turns; otherwise both delete nothing and the second insert hits the key
            row = conn.execute(
                sa.select(S.trials.c.id, S.trials.c.state, S.trials.c.reason)
                .where(S.trials.c.study_id == sid, S.trials.c.number == number)
                .with_for_update()
            ).first()
            if row is None:
                return False
            if check is not None:
                check(TrialState(row.state), row.reason or "")
            pk = row.id
            b = None if budget is None else float(budget)
            old = conn.execute(
                sa.select(iv.c.value, iv.c.budget).where(iv.c.trial_id == pk, iv.c.step == step)
            ).first()
            if old is not None and (old.value, old.budget) == (float(value), b):
                return True  # a repeated report: it keeps the time it was first stored
            if old is None and max_steps > 0:
                n = conn.execute(
                    sa.select(sa.func.count()).select_from(iv).where(iv.c.trial_id == pk)
                ).scalar_one()
                if n >= max_steps:
                    raise LimitExceeded(
                        "step",
                        f"trial {number} has {n} intermediate values, at most {max_steps} "
                        "allowed: report fewer steps (a step reported again replaces its value)",
                        "max_steps_per_trial",
                    )
            conn.execute(iv.delete().where(iv.c.trial_id == pk, iv.c.step == step))
            conn.execute(
                iv.insert().values(trial_id=pk, step=step, value=float(value), at=now, budget=b)
            )
        return True

    @db_call
    def intermediates(self, uid: str) -> dict[int, list[tuple[int, float]]]:
        iv = S.intermediate_values.c
        out: dict[int, list[tuple[int, float]]] = {}
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = (
                sa.select(S.trials.c.number, iv.step, iv.value)
                .join(S.trials, S.trials.c.id == iv.trial_id)
                .where(S.trials.c.study_id == sid)
                .order_by(S.trials.c.number, iv.step)
            )
            for number, step, value in conn.execute(q):
                out.setdefault(int(number), []).append((int(step), float(value)))
        return out

    @db_call
    def intermediate_page(
        self, uid: str, after: int = 0, after_step: int | None = None, limit: int | None = None
    ) -> list[tuple[int, int, float]]:
        iv = S.intermediate_values.c
        number = S.trials.c.number
        with self._read() as conn:
            sid = self._sid(conn, uid)
            where = number > after
            if after_step is not None:  # the rest of trial ``after``, then the trials above it:
                # ``number >= after`` bounds the trials' index range (with the OR alone,
                # PostgreSQL scanned the study's trials from its first and filtered them)
                where = sa.and_(number >= after, sa.or_(where, iv.step > after_step))
            q = (
                sa.select(number, iv.step, iv.value)
                .join(S.trials, S.trials.c.id == iv.trial_id)
                .where(S.trials.c.study_id == sid, where)
                .order_by(number, iv.step)
            )
            if limit is not None:
                q = q.limit(limit)
            return [(int(n), int(s), float(v)) for n, s, v in conn.execute(q)]

    @db_call
    def curves(
        self, uid: str, numbers: Sequence[int] | None = None, *, since: float | None = None
    ) -> dict[int, list[CurvePoint]]:
        iv = S.intermediate_values.c
        out: dict[int, list[CurvePoint]] = {}
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = (
                sa.select(S.trials.c.number, iv.step, iv.value, iv.budget, iv.at)
                .join(S.trials, S.trials.c.id == iv.trial_id)
                .where(S.trials.c.study_id == sid)
                .order_by(S.trials.c.number, iv.step)
            )
            if numbers is not None:
                q = q.where(S.trials.c.number.in_([int(n) for n in numbers]))
            if since is not None:
                q = q.where(iv.at >= float(since))
            for number, step, value, budget, at in conn.execute(q):
                b = None if budget is None else float(budget)
                out.setdefault(int(number), []).append(
                    CurvePoint(int(step), float(value), b, float(at))
                )
        return out

    # ---- LLM calls ------------------------------------------------------------------------------
    @db_call(idempotent=False)
    def log_llm_call(self, uid: str, call: LlmCallRecord) -> int:
        with self._write() as conn:
            sid = self._sid(conn, uid, lock=True)
            number = conn.execute(
                S.studies.update()
                .where(S.studies.c.id == sid)
                .values(llm_counter=S.studies.c.llm_counter + 1)
                .returning(S.studies.c.llm_counter)
            ).scalar_one()
            conn.execute(
                S.llm_calls.insert().values(
                    study_id=sid,
                    number=int(number),
                    purpose=call.purpose,
                    model=call.model[: S.MODEL_CHARS],
                    prompt=call.prompt,
                    response=call.response,
                    outcome=call.outcome,
                    prompt_tokens=min(max(int(call.prompt_tokens), 0), S.MAX_INT32),
                    completion_tokens=min(max(int(call.completion_tokens), 0), S.MAX_INT32),
                    latency_seconds=float(call.latency_seconds),
                    created_at=call.created_at or time.time(),
                )
            )
        return int(number)

    @db_call
    def list_llm_calls(
        self, uid: str, purpose: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LlmCallRecord]:
        c = S.llm_calls.c
        with self._read() as conn:
            sid = self._sid(conn, uid)
            q = sa.select(S.llm_calls).where(c.study_id == sid, c.number > after).order_by(c.number)
            if purpose is not None:
                q = q.where(c.purpose == purpose)
            if limit is not None:
                q = q.limit(limit)
            return [_llm_call(r) for r in conn.execute(q)]

    # ---- model state ----------------------------------------------------------------------------
    @db_call
    def model_state_n_fit(self, uid: str) -> int | None:
        m = S.model_state.c
        with self._read() as conn:
            n = conn.execute(
                sa.select(m.n_fit)
                .join(S.studies, S.studies.c.id == m.study_id)
                .where(S.studies.c.uid == uid)
            ).scalar()
        return None if n is None else int(n)

    @db_call
    def get_model_state(self, uid: str) -> ModelState | None:
        m = S.model_state.c
        with self._read() as conn:
            row = conn.execute(
                sa.select(S.model_state)
                .join(S.studies, S.studies.c.id == m.study_id)
                .where(S.studies.c.uid == uid)
            ).first()
        if row is None:
            return None
        return ModelState(
            int(row.n_fit), int(row.format), bytes(row.state), row.updated_at, row.updated_by
        )

    @db_call
    def put_model_state(self, uid: str, n_fit: int, fmt: int, blob: bytes, replica: str) -> None:
        vals = dict(
            n_fit=int(n_fit),
            format=int(fmt),
            state=blob,
            updated_at=time.time(),
            updated_by=replica[:128],
        )
        m = S.model_state
        with self._write() as conn:
            sid = self._sid(conn, uid, lock=True)
            if conn.execute(m.update().where(m.c.study_id == sid).values(**vals)).rowcount == 0:
                conn.execute(m.insert().values(study_id=sid, **vals))

    # ---- API keys -------------------------------------------------------------------------------
    @db_call(idempotent=False)
    def insert_api_key(self, record: ApiKeyRecord) -> bool:
        try:
            with self._write() as conn:
                conn.execute(
                    S.api_keys.insert().values(
                        key_id=record.key_id,
                        tenant=record.tenant,
                        key_hash=record.key_hash,
                        label=record.label,
                        created_at=record.created_at,
                        revoked_at=record.revoked_at,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    @db_call
    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(S.api_keys).where(S.api_keys.c.key_id == key_id)).first()
        return _api_key(row) if row else None

    @db_call
    def list_api_keys(
        self, tenant: str | None = None, include_revoked: bool = True
    ) -> list[ApiKeyRecord]:
        k = S.api_keys.c
        q = sa.select(S.api_keys).order_by(k.id)
        if tenant is not None:
            q = q.where(k.tenant == tenant)
        if not include_revoked:
            q = q.where(k.revoked_at.is_(None))
        with self._read() as conn:
            return [_api_key(r) for r in conn.execute(q)]

    @db_call
    def revoke_api_key(self, *, key_id: str = "", key_hash: str = "") -> bool:
        k = S.api_keys.c
        cond = k.key_hash == key_hash if key_hash else k.key_id == key_id
        with self._write() as conn:
            n = conn.execute(
                S.api_keys.update()
                .where(cond, k.revoked_at.is_(None))
                .values(revoked_at=time.time())
            ).rowcount
        return n > 0

    @db_call
    def count_active_api_keys(self) -> int:
        q = (
            sa.select(sa.func.count())
            .select_from(S.api_keys)
            .where(S.api_keys.c.revoked_at.is_(None))
        )
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    # ---- whole-database access for bbo.storage.copy ---------------------------------------------
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sa.Connection]:
        """A connection reading one consistent snapshot of the whole database."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def id_counters(self, conn: sa.Connection) -> dict[str, int]:
        """The last row id each table's counter gave out, read on ``conn`` (a copy's snapshot): it
        can be past the table's largest id, whose row was deleted, and a copy keeps it so that id
        is never given again."""
        return {}

    def after_bulk_copy(self, conn: sa.Connection, counters: dict[str, int]) -> None:
        """Called in the copy's write transaction after rows were inserted with their ids: move
        each id counter past them and past the source's ``counters`` (:meth:`id_counters`)."""


# FOR UPDATE (PostgreSQL; SQLite has one writer and omits it): a concurrent read-modify-write of the
# same trial from another replica waits for this one and then sees its result.
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
        budget=sa.bindparam("b_budget", type_=sa.Float),
        bracket=sa.bindparam("b_bracket", type_=sa.Integer),
        resume_budget=sa.bindparam("b_resume", type_=sa.Float),
    )
)
