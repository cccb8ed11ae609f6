"""Errors the core raises; the service maps each to a gRPC status code."""

from __future__ import annotations


class BboError(Exception):
    """Base class of every error bbo raises on purpose."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SpecError(BboError, ValueError):
    """A malformed study spec, parameter assignment or metric: names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(BboError, LookupError):
    """An unknown study or trial."""


class ConflictError(BboError):
    """A request that contradicts stored state (e.g. a different tell on a finished trial)."""


class LimitError(BboError):
    """A request over a configured limit (too many trials per ask, parameters, studies...).
    ``retry_after`` (seconds) is set when the same request will pass later (a rate limit)."""

    retry_after: float | None = None
    field: str | None = None  # the part of the request over the limit, where one is named
    limit: str = ""  # the limit's name (a metrics label), where one is named

    def __init__(self, message: str, *, field: str | None = None, limit: str = ""):
        super().__init__(message)
        if field is not None:
            self.field = field
        if limit:
            self.limit = limit


class StorageFull(LimitError):
    """The database refuses writes for want of space (SQLite's disk full, PostgreSQL's class 53):
    nothing was changed. RESOURCE_EXHAUSTED with a delay to retry after, so clients come back
    once an operator has freed space rather than dropping a finished result on an INTERNAL."""

    limit = "storage"
    retry_after = 5.0


class StudyNotFound(NotFoundError):
    """The study a call names (by uid) no longer exists: it was deleted, perhaps re-created since."""


class DatabaseUrlError(BboError, ValueError):
    """A database URL bbo cannot use: it does not parse, names an unsupported backend or carries a
    bad setting (``?synchronous=``, a PostgreSQL timeout...)."""


class DatabaseInUse(BboError):
    """A SQLite database another ``bbo serve`` process serves already (one process owns a file)."""


class SchemaTooNew(BboError):
    """A database whose schema a newer bbo wrote: this version cannot read or migrate it."""


class StorageUnavailable(BboError):
    """The database is unreachable, restarting or stayed locked: nothing was changed, or the change
    may or may not have been stored where the message says so; the service answers UNAVAILABLE and
    clients retry."""


class CallerGone(BboError):
    """The caller went away (its deadline passed, or it cancelled) before its work was stored:
    nothing was written, and a retry under the same request id computes it afresh."""
