"""Helpers of the storage tests: the SQL statements a block of code sends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa


@contextlib.contextmanager
def listing_statements(engine: sa.engine.Engine) -> Iterator[list[tuple[str, object]]]:
    """Collects ``(statement, parameters)`` of every ordered read of ``studies`` (a listing page)
    sent through ``engine`` inside the block, for the tests to explain their plans."""
    seen: list[tuple[str, object]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "FROM studies" in statement and "ORDER BY" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
