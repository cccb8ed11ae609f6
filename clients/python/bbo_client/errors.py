"""Typed errors of the client: one class per gRPC status the service uses."""

from __future__ import annotations

import grpc


class BboError(Exception):
    """Base class: ``code`` is the gRPC status code, ``field`` the offending request field if any."""

    code: grpc.StatusCode | None = None

    def __init__(
        self,
        message: str,
        field: str = "",
        code: grpc.StatusCode | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field
        self.retry_after = (
            retry_after  # seconds, when the server said the same call will pass later
        )
        if code is not None:
            self.code = code


class TrialPruned(Exception):
    """Raised by an objective's ``report(step, value)`` (see ``StudyHandle.optimize``) when the
    study's pruning policy says to stop the trial; ``optimize`` then tells it PRUNED. Not an error
    of the service: the evaluation worked and was not worth finishing."""

    def __init__(self, reason: str = "", step: int | None = None, value: float | None = None):
        super().__init__(reason or "pruned")
        self.reason, self.step, self.value = reason, step, value


class InvalidArgument(BboError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BboError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BboError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Conflict(BboError):
    """FAILED_PRECONDITION: e.g. a different tell on a finished trial."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(BboError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(BboError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(BboError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(BboError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE = {
    c.code: c
    for c in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Conflict,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
    )
}


def from_rpc_error(e: grpc.RpcError) -> BboError:
    """The typed error for a failed call, with the BadRequest field violation's field and the
    RetryInfo delay if sent."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = e.details() if hasattr(e, "details") else str(e)
    field = ""
    retry_after = None
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        st = rpc_status.from_call(e)
        if st is not None:
            message = st.message or message
            for d in st.details:
                if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    br = error_details_pb2.BadRequest()
                    d.Unpack(br)
                    if br.field_violations:
                        field = br.field_violations[0].field
                        message = br.field_violations[0].description
                elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    ri = error_details_pb2.RetryInfo()
                    d.Unpack(ri)
                    retry_after = ri.retry_delay.ToNanoseconds() / 1e9
    except Exception:  # details are a bonus: never mask the error itself
        pass
    cls = _BY_CODE.get(code, BboError)
    return cls(message or str(code), field=field, code=code, retry_after=retry_after)


# gRPC's own refusal past a server's maximum_concurrent_rpcs (bbo's backstop behind
# --max-concurrent-rpcs): it carries no RetryInfo, yet the same call passes once the burst is over
GRPC_CONCURRENCY_REFUSAL = "Concurrent RPC limit exceeded!"


def retryable(err: BboError) -> bool:
    """The same call may pass later: the server is away, or it refused with a RetryInfo (a rate
    limit, --max-concurrent-rpcs), or gRPC refused it past the server's concurrent calls."""
    return isinstance(err, Unavailable) or (
        isinstance(err, ResourceExhausted)
        and (err.retry_after is not None or err.message == GRPC_CONCURRENCY_REFUSAL)
    )


def answer_lost(err: BboError) -> bool:
    """The call may have run on the server though no answer came back: the connection broke
    (UNAVAILABLE: also when the call never left, which cannot be told apart) or its deadline passed
    (DEADLINE_EXCEEDED). A retry's answer then says what became of it."""
    return err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
