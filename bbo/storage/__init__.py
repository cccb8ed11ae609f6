"""Durable storage of studies and trials behind one interface (:class:`Storage`).

``open_storage(url)`` opens the database, SQLite (the default, embedded) or PostgreSQL (several
server replicas), and brings its schema to the newest Alembic revision. Nothing outside this package
imports SQLAlchemy or touches a table.
"""

from __future__ import annotations

import os

from bbo.storage.base import (
    LEASE_EXPIRED,
    LLM_PURPOSES,
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
)

DEFAULT_SQLITE_PATH = os.path.join("bbo-data", "bbo.db")


def default_url(path: str = DEFAULT_SQLITE_PATH) -> str:
    return "sqlite:///" + os.path.abspath(path)


def shown_url(url: str) -> str:
    """``url`` as messages may show it: its password hidden."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def driver_error(e: BaseException) -> str | None:
    """The database driver's own words where ``e`` is its error (a file that is not a database, a
    server that refuses the connection), without the statement and its values; else None."""
    import sqlalchemy as sa

    if not isinstance(e, sa.exc.DBAPIError):
        return None
    return " ".join(line.strip() for line in str(e.orig).splitlines() if line.strip())[:500]


def open_storage(
    url: str | None = None,
    *,
    pool_size: int = 16,
    migrate: bool = True,
    group_commit: bool = True,
    exclusive: bool = False,
) -> Storage:
    """The storage backend for ``url`` (``sqlite:///PATH`` or ``postgresql+psycopg://...``).

    ``migrate=False`` opens an existing database only to read it: a missing SQLite file is
    NotFoundError instead of being created. ``group_commit`` (SQLite): tells of many threads share
    one transaction and one fsync. ``exclusive`` (SQLite): claim the file for this serving
    process; a second claim, by any process, raises :class:`~bbo.errors.DatabaseInUse` (a server
    passes it; PostgreSQL is shared by design and takes no claim)."""
    import sqlalchemy as sa

    from bbo.errors import DatabaseUrlError

    try:
        u = sa.engine.make_url(url or default_url())
    except sa.exc.ArgumentError:
        raise DatabaseUrlError(
            "not a database URL: use sqlite:///PATH or postgresql+psycopg://user@host/db"
        ) from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        from bbo.storage.sqlite import SqliteStorage

        return SqliteStorage(
            u, pool_size=pool_size, migrate=migrate, group_commit=group_commit, exclusive=exclusive
        )
    if backend == "postgresql":
        from bbo.storage.postgres import PostgresStorage

        return PostgresStorage(u, pool_size=pool_size, migrate=migrate)
    raise DatabaseUrlError(
        f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://..."
    )


__all__ = [
    "DEFAULT_SQLITE_PATH",
    "LEASE_EXPIRED",
    "LLM_PURPOSES",
    "ApiKeyRecord",
    "Continuation",
    "CurvePoint",
    "LlmCallRecord",
    "ModelState",
    "NewTrial",
    "RequestKey",
    "Storage",
    "StoredRequest",
    "StudyKey",
    "StudyRecord",
    "default_url",
    "open_storage",
]
