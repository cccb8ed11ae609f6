"""Copy a whole bbo database into an empty one: a consistent backup of a live server's database,
or a move from the embedded SQLite file to PostgreSQL when a deployment grows to several replicas.

Everything is copied with its ids (studies keep their uids, so workers holding trials carry on
against the copy), from one read snapshot of the source: a server may keep writing meanwhile, and
the copy is the database as it was at one instant (SQLite's WAL and PostgreSQL's REPEATABLE READ
both give that). Rows are streamed in batches, so the size of a study does not matter.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from bbo.errors import BboError, NotFoundError
from bbo.storage import open_storage, shown_url
from bbo.storage import schema as S
from bbo.storage.sql import SqlStorage


class CopyError(BboError):
    """The copy cannot be made as asked (not a bbo database, a target that is not empty...)."""


BATCH = 1000


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
        for table in S.metadata.sorted_tables:
            n = 0
            result = conn_in.execution_options(yield_per=BATCH).execute(
                sa.select(table).order_by(*table.primary_key.columns)
            )
            for rows in result.partitions():
                out.execute(table.insert(), [dict(r._mapping) for r in rows])
                n += len(rows)
                if progress is not None:
                    progress(table.name, n)
            counts[table.name] = n
        dst.after_bulk_copy(out)
    return counts
