"""Map core errors onto gRPC status codes with google.rpc details (BadRequest field violations)."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from bbo.errors import (
    BboError,
    CallerGone,
    ConflictError,
    LimitError,
    NotFoundError,
    SpecError,
    StorageUnavailable,
)
from bbo.registry import AlreadyExistsError


class Unauthenticated(BboError):
    """Missing or unknown credentials (raised by an authenticate hook)."""


class PermissionDenied(BboError):
    """Known credentials without the right to do this."""


_CODES = [
    (SpecError, code_pb2.INVALID_ARGUMENT),
    (NotFoundError, code_pb2.NOT_FOUND),
    (AlreadyExistsError, code_pb2.ALREADY_EXISTS),
    (ConflictError, code_pb2.FAILED_PRECONDITION),
    (LimitError, code_pb2.RESOURCE_EXHAUSTED),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (StorageUnavailable, code_pb2.UNAVAILABLE),  # the database is away: clients retry
    (CallerGone, code_pb2.CANCELLED),  # nobody reads it: the code the client already has
]


# A status travels in the trailers: its message (percent-encoded, up to 3 bytes a byte) and again in
# grpc-status-details-bin (base64) with the field violation. Clients refuse trailers past 8 KiB
# (gRPC's default soft limit), answering their own RESOURCE_EXHAUSTED instead of the status: a
# message that quotes a request's long value (a forged page token, an unknown purpose) is cut.
MAX_MESSAGE_BYTES = 1000
MAX_FIELD_BYTES = 200


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), marked with ..."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def status_for(exc: BaseException, field_prefix: str = ""):
    """The grpc.Status to abort with for a core error (INTERNAL for anything unexpected)."""
    code = code_pb2.INTERNAL
    for cls, c in _CODES:
        if isinstance(exc, cls):
            code = c
            break
    message = str(exc) if code != code_pb2.INTERNAL else f"internal error: {type(exc).__name__}"
    st = status_pb2.Status(code=code, message=_clip(message, MAX_MESSAGE_BYTES))
    field = exc.field if isinstance(exc, (SpecError, LimitError)) else None
    if isinstance(exc, (SpecError, LimitError)) and isinstance(field, str):
        if field_prefix and not field.startswith(field_prefix.rstrip(".")):
            field = f"{field_prefix}{field}"
        br = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_clip(field, MAX_FIELD_BYTES),
                    description=_clip(exc.message, MAX_MESSAGE_BYTES),
                )
            ]
        )
        d = any_pb2.Any()
        d.Pack(br)
        st.details.append(d)
    retry_after = exc.retry_after if isinstance(exc, LimitError) else None
    if retry_after is not None:
        ri = error_details_pb2.RetryInfo()
        ri.retry_delay.FromNanoseconds(int(retry_after * 1e9))
        d = any_pb2.Any()
        d.Pack(ri)
        st.details.append(d)
    return rpc_status.to_status(st)
