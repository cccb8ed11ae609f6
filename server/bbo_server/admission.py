"""A cap on the calls the server holds at once (``--max-concurrent-rpcs``): running on a handler
thread or queued for one.

gRPC's sync server hands every accepted call to its thread pool, whose queue has no bound: a burst of
slow calls (asks waiting on GP fits) queued without limit, in memory and in latency. :class:`Admission`
is the outermost interceptor. gRPC runs interceptors on its one polling thread when a call arrives,
before the call is queued, so it sees queued calls too: it compares the handler pool's count of
queued + running calls (:class:`CountingPool`) with the cap, and over it answers with a refusal
instead of the service's handler: RESOURCE_EXHAUSTED, a message naming the flag, and a
google.rpc.RetryInfo, so the clients back off and retry (a refused Tell or Heartbeat never ran: its
retry is its first try). Refusals and health checks run on a small pool of their own (gRPC's
``experimental_thread_pool`` of a handler), so a full handler pool neither delays a refusal nor fails
a health probe; a refusal never reads the request.

gRPC reads a unary call's request on its handler thread before any interceptor's code runs, so a
call that never sent its request held a thread, keyless, for as long as its client kept it open.
BboService methods are therefore served as client streams (:meth:`Admission._reader`): the call's
tenant comes from its metadata first, a call without a valid key is refused without reading, and
a tenant's calls waiting for their request are bounded (``--max-tenant-rpcs``). Reflection's
streams, open to any caller, run on a pool of their own.

gRPC's own ``maximum_concurrent_rpcs`` stays as a backstop over all pools (:func:`backstop`): past it
gRPC refuses a call itself, as RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" without
RetryInfo, which bbo's clients retry too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from bbo.errors import BboError
from bbo.registry import DEFAULT_TENANT
from bbo_server import metrics as M
from bbo_server.errors import status_for
from bbo_server.interceptor import SERVICE_PREFIX
from bbo_server.limits import TenantCalls, busy

log = logging.getLogger("bbo.server")

HEALTH_CHECK = (
    "/grpc.health.v1.Health/Check"  # unary, cheap: never refused, never queued behind calls
)
SIDE_THREADS = 4  # threads for refusals and health checks
REFLECTION_THREADS = 2  # threads for reflection's streams (grpcurl, grpcui)
REFLECTION_PREFIX = "/grpc.reflection."


def default_cap(rpc_threads: int) -> int:
    """``--max-concurrent-rpcs`` when not given: 4 calls per handler thread (one running, three
    queued)."""
    return 4 * max(1, rpc_threads)


def backstop(cap: int) -> int:
    """gRPC's ``maximum_concurrent_rpcs`` for a cap: the cap plus as many refusals and health checks
    waiting for their own pool, at least 256 (a refusal reads no request: it costs little)."""
    return cap + max(cap, 256)


class CountingPool(futures.ThreadPoolExecutor):
    """A thread pool that knows how many of its tasks are queued or running (:attr:`pending`). gRPC
    submits one task per call and the task ends with the call (cancelled ones too), so the count is
    exact."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending = 0
        self._count_lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn, /, *args, **kwargs):
        with self._count_lock:
            self._pending += 1
        try:
            fut = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _fut) -> None:
        with self._count_lock:
            self._pending -= 1


class Admission(grpc.ServerInterceptor):
    """Refuses a call (with RetryInfo) while ``pool`` holds ``cap`` calls or more; health checks pass
    on ``side``. Must be the first interceptor: refused calls reach no other."""

    def __init__(
        self,
        pool: CountingPool,
        cap: int,
        side: futures.ThreadPoolExecutor,
        reflection: futures.ThreadPoolExecutor | None = None,
    ):
        if cap < 1:
            raise ValueError(f"max_concurrent_rpcs must be >= 1, got {cap}")
        self.pool, self.cap, self.side, self.reflection = pool, cap, side, reflection
        self.refused = 0  # calls refused so far (tests, logs)
        # who a call is and how many of its tenant's wait for their request (set by start(): the
        # Gate's identified() and the --max-tenant-rpcs bound); None: every call is one tenant's
        self.identified: Callable[[grpc.ServicerContext], Any] | None = None
        self.tenant_calls: TenantCalls | None = None
        self._readers: dict[str, tuple] = {}  # method path -> (inner handler, reader)

        def refuse(request_iterator, context):
            del request_iterator  # never read: the refusal does not wait for the request
            e = busy(
                "concurrent_rpcs",
                f"server busy: {self.cap} calls are running or queued, the most "
                f"--max-concurrent-rpcs allows; retry later (bbo's clients do, after the "
                f"RetryInfo delay), or raise --max-concurrent-rpcs or --rpc-threads",
            )
            context.abort_with_status(status_for(e))

        refuse.experimental_thread_pool = side  # type: ignore[attr-defined]
        self._refusal = grpc.stream_unary_rpc_method_handler(refuse)
        self._health: tuple | None = None  # (gRPC's handler, the same on the side pool)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED, as without the cap
        path = handler_call_details.method or ""
        if path == HEALTH_CHECK and handler.unary_unary is not None:
            return self._on_side(handler)
        if path.startswith(REFLECTION_PREFIX) and self.reflection is not None:
            return self._on_reflection(handler)
        if self.pool.pending < self.cap:
            if path.startswith(SERVICE_PREFIX) and handler.unary_unary is not None:
                return self._reader(handler, path)
            return handler
        self.refused += 1
        # counted here: the refusal reaches no other interceptor (MetricsInterceptor included)
        M.LIMIT_REFUSALS.labels(limit="concurrent_rpcs").inc()
        if path.startswith(SERVICE_PREFIX) and handler.unary_unary is not None:
            M.count_refused(path[len(SERVICE_PREFIX) :], "RESOURCE_EXHAUSTED", 0.0)  # at once
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning(
                "refusing calls: --max-concurrent-rpcs reached",
                extra={"max_concurrent_rpcs": self.cap, "refused": self.refused},
            )
        return self._refusal

    def _reader(self, handler: grpc.RpcMethodHandler, path: str) -> grpc.RpcMethodHandler:
        """The BboService method as a call whose handler learns its tenant before it reads the
        request: gRPC reads a unary call's request on the handler thread before any interceptor's
        code runs, so a call that never sent it held the thread, with no key, for as long as its
        client kept it open. A call without a valid key is refused at once without reading; a
        tenant's calls waiting for their request are bounded (:meth:`TenantCalls.reading`)."""
        cached = self._readers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        inner = handler.unary_unary
        method = path[len(SERVICE_PREFIX) :]

        def read(request_iterator, context):
            started = False  # the request came: the inner handler (MetricsInterceptor) counts it
            t0 = time.perf_counter()
            try:
                with (
                    self.identified(context)
                    if self.identified
                    else contextlib.nullcontext(DEFAULT_TENANT)
                ) as tenant:
                    with (
                        # per tenant: only where the Gate names the tenant before the read (a
                        # server built without one may tell tenants apart later, in its servicer)
                        self.tenant_calls.reading(tenant)
                        if self.tenant_calls is not None and self.identified is not None
                        else contextlib.nullcontext()
                    ):
                        request = next(request_iterator, None)
                    if request is None:
                        context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"{method} takes exactly one request message; none came",
                        )
                    started = True
                    return inner(request, context)
            except BboError as e:
                log.info(
                    "refused before the request",
                    extra={"rpc": method, "peer": context.peer(), "detail": e.message},
                )
                status = status_for(e)
                M.count_refused(method, status.code.name, time.perf_counter() - t0)
                context.abort_with_status(status)
            except BaseException:
                if not started:  # no request came (INVALID_ARGUMENT), or its caller went away
                    code = context.code()
                    name = code.name if code is not None else "CANCELLED"
                    M.count_refused(method, name, time.perf_counter() - t0)
                raise

        out = grpc.stream_unary_rpc_method_handler(
            read, handler.request_deserializer, handler.response_serializer
        )
        self._readers[path] = (handler, out)
        return out

    def _on_reflection(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Reflection (open to any caller, a stream held as long as the client likes) on a small
        pool of its own: streams left open fill that pool, not the service's handler threads."""
        inner = handler.stream_stream
        if inner is None:
            return handler

        def stream(request_iterator, context):
            return inner(request_iterator, context)

        stream.experimental_thread_pool = self.reflection  # type: ignore[attr-defined]
        return grpc.stream_stream_rpc_method_handler(
            stream, handler.request_deserializer, handler.response_serializer
        )

    def _on_side(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if self._health is not None and self._health[0] is handler:
            return self._health[1]
        inner = handler.unary_unary

        def check(request, context):
            return inner(request, context)

        check.experimental_thread_pool = self.side  # type: ignore[attr-defined]
        out = grpc.unary_unary_rpc_method_handler(
            check, handler.request_deserializer, handler.response_serializer
        )
        self._health = (handler, out)
        return out
