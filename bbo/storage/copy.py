"""Copy a whole bbo database into an empty one: a consistent backup of a live server's database,
or a move from the embedded SQLite file to PostgreSQL when a deployment grows to several replicas.

Everything is copied with its ids (studies keep their uids, so workers holding trials carry on
against the copy), from one read snapshot of the source: a server may keep writing meanwhile, and
the copy is the database as it was at one instant (SQLite's WAL and PostgreSQL's REPEATABLE READ
both give that). Rows are streamed in batches bounded in rows and in bytes, so neither the size of
a study nor that of a row (a spec of up to ``--max-spec-bytes``, an LLM call's prompt and answer)
matters: the copy holds about :data:`BATCH_BYTES` of rows at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa

from bbo.errors import BboError, NotFoundError
from bbo.storage import open_storage, shown_url
from bbo.storage import schema as S
from bbo.storage.sql import SqlStorage


class CopyError(BboError):
    """The copy cannot be made as asked (not a bbo database, a target that is not empty...)."""


BATCH = 1000  # rows written per insert at most
BATCH_BYTES = 8 * 1024 * 1024  # and about this many bytes of their values
# Rows read from the source at a time: few of a table whose rows may each take MiBs (1,000 study
# rows of 1 MiB specs were 2.5 GiB in memory at once), BATCH of the others.
FETCH = {"studies": 8, "llm_calls": 8, "model_state": 8, "trials": 100}


def _row_bytes(row) -> int:
    """About how many bytes a row's values take (its JSON, text and binary columns)."""
    n = 0
    for v in row:
        if isinstance(v, (str, bytes)):
            n += len(v)
        elif isinstance(v, (dict, list)):
            n += len(json.dumps(v, default=str))
        else:
            n += 8
    return n


def _fitter(table: sa.Table) -> Callable[[dict], dict]:
    """Fit a row into the target's column types: SQLite stores any length and any integer, so a
    database written before bbo bounded a value (an LLM call's model name, its token counts) may
    hold one PostgreSQL refuses. Text that no index holds is cut to its column's length, a plain
    integer (not a key) clipped to 32 bits, as :meth:`SqlStorage.log_llm_call` stores them today."""
    keys = {c.name for i in table.indexes for c in i.columns}  # identities are never altered
    cut = {
        c.name: c.type.length
        for c in table.columns
        if isinstance(c.type, S.String) and c.type.length and c.name not in keys
    }
    clip = [
        c.name
        for c in table.columns
        if type(c.type) is sa.Integer and not c.primary_key and not c.foreign_keys
    ]
    if not cut and not clip:
        return lambda row: row

    def fit(row: dict) -> dict:
        for name, n in cut.items():
            v = row.get(name)
            if isinstance(v, str) and len(v) > n:
                row[name] = v[:n]
        for name in clip:
            v = row.get(name)
            if isinstance(v, int) and not -S.MAX_INT32 - 1 <= v <= S.MAX_INT32:
                row[name] = max(-S.MAX_INT32 - 1, min(v, S.MAX_INT32))
        return row

    return fit


def copy_database(
    src_url: str, dst_url: str, *, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every table of ``src_url`` into ``dst_url`` (migrated to this version's schema, and
    required empty); returns the rows copied per table. ``progress(table, rows)`` after each batch."""
    try:
        src = open_storage(src_url, migrate=False, group_commit=False)
    except NotFoundError as e:
        raise CopyError(f"{shown_url(src_url)}: {e}") from None
    try:
        rev = src.schema_revision()
        if rev is None:
            raise CopyError(
                f"{shown_url(src_url)} is not a bbo database (no schema revision found)"
            )
        dst = open_storage(dst_url, group_commit=False)
        try:
            if dst.schema_revision() != rev:
                raise CopyError(
                    f"the source is at schema revision {rev}, this bbo writes "
                    f"{dst.schema_revision()}: start `bbo serve` on the source once (it migrates), "
                    "then copy"
                )
            assert isinstance(src, SqlStorage) and isinstance(dst, SqlStorage)
            return _copy(src, dst, progress)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: SqlStorage, dst: SqlStorage, progress) -> dict[str, int]:
    counts: dict[str, int] = {}
    with (
        src.snapshot() as conn_in,
        dst._write() as out,
    ):  # one read snapshot in, one transaction out
        for table in S.metadata.sorted_tables:  # parents before children
            if out.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                raise CopyError(
                    f"the target database already holds rows in '{table.name}': copy into an "
                    "empty database"
                )
        counters = src.id_counters(conn_in)
        for table in S.metadata.sorted_tables:
            fit = _fitter(table)
            n = 0
            result = conn_in.execution_options(yield_per=FETCH.get(table.name, BATCH)).execute(
                sa.select(table).order_by(*table.primary_key.columns)
            )
            batch: list[dict] = []
            size = 0
            for row in result:
                batch.append(fit(dict(row._mapping)))
                size += _row_bytes(row)
                if len(batch) >= BATCH or size >= BATCH_BYTES:
                    out.execute(table.insert(), batch)
                    n += len(batch)
                    batch, size = [], 0
                    if progress is not None:
                        progress(table.name, n)
            if batch:
                out.execute(table.insert(), batch)
                n += len(batch)
                if progress is not None:
                    progress(table.name, n)
            counts[table.name] = n
        dst.after_bulk_copy(out, counters)
    return counts
