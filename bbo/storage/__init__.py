"""Durable storage of studies and trials: SQLite (default) or PostgreSQL, through SQLAlchemy Core.

``Storage(url)`` opens the database and brings its schema to the newest Alembic revision. Every
write is one transaction committed before the call returns, so what a caller acknowledges is on
disk. Trial numbers are allocated per study by an atomic counter update, safe across threads and
across server processes sharing a PostgreSQL database.
"""

from bbo.storage.sql import (
    DEFAULT_SQLITE_PATH,
    LlmCallRecord,
    NewTrial,
    RequestKey,
    Storage,
    StudyRecord,
    default_url,
)

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "LlmCallRecord",
    "NewTrial",
    "RequestKey",
    "Storage",
    "StudyRecord",
    "default_url",
]
