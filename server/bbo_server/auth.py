"""API-key authentication and per-tenant limits, as one gRPC server interceptor (the "gate").

A caller sends its key as metadata ``x-api-key: <key>`` or ``authorization: Bearer <key>``. The key
names a tenant (``bbo keys create --tenant T``); every BboService call then acts on that tenant's
studies only (another tenant's study is simply NOT_FOUND). A missing, malformed, unknown or revoked
key is UNAUTHENTICATED, before the call's request is read (:meth:`Gate.identified`, called by
admission). Health checking and reflection stay open.

The gate resolves the tenant, applies :mod:`bbo_server.limits`, and hands the tenant to the
servicer through :func:`authenticate` (the servicer's ``Authenticate`` hook), which reads it from
the handling thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time

import grpc

from bbo.errors import LimitError
from bbo.registry import DEFAULT_TENANT
from bbo.storage.keys import KeyStore
from bbo_server import metrics as M
from bbo_server.errors import Unauthenticated, status_for
from bbo_server.interceptor import MethodInterceptor
from bbo_server.limits import LimitChecker
from bbo_server.logs import request_ids

log = logging.getLogger("bbo.auth")

# seconds a key checked before its call's request was read stays trusted for that call: a call
# whose request comes later has its key checked again (a call opened before its key was revoked,
# its request held back, ran as the key's tenant whenever it came: hours later)
IDENTIFIED_S = 1.0

_current = threading.local()

# how a call refused for what it asked ends: a Tell or Heartbeat that ends so finished no work, and
# takes from the tenant's bucket of misses (LimitChecker.missed). Not only NOT_FOUND: one refused
# as invalid (no metrics, a bad state or lease) named a new trial id, so a fresh per-trial bucket,
# on every call as well, and went through at any rate.
REFUSED = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; False for 0.0.0.0, ::, names and other addresses."""
    h = (host or "").strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def key_from_metadata(metadata) -> str | None:
    """The API key in ``x-api-key`` or ``authorization: Bearer``; None if neither is present."""
    bearer = None
    for k, v in metadata or ():
        k = k.lower()
        if isinstance(v, bytes):
            continue
        if k == "x-api-key":
            return v.strip()
        if k == "authorization":
            parts = v.strip().split(None, 1)
            if len(parts) == 2 and parts[0].lower() == "bearer":
                bearer = parts[1].strip()
            else:
                bearer = ""  # present but not a bearer token: a wrong key, not a missing one
    return bearer


def authenticate(context: grpc.ServicerContext, method: str) -> str:
    """The servicer's Authenticate hook: the tenant the gate resolved for this call."""
    tenant = getattr(_current, "tenant", None)
    if tenant is None:  # the gate did not run for this call: refuse rather than guess
        raise Unauthenticated("not authenticated")
    return tenant


class Gate(MethodInterceptor):
    """Authenticate (when ``keys`` is given) and rate-limit each BboService call.

    ``keys``: a :class:`bbo.storage.keys.KeyStore`, or None for no authentication (every call is
    tenant ``default``). ``limits``: a :class:`LimitChecker` or None. Call :meth:`bind` with the
    server's storage once it exists (the key store reads the keys there).
    """

    def __init__(
        self,
        keys: KeyStore | None = None,
        limits: LimitChecker | None = None,
        default_tenant: str = DEFAULT_TENANT,
    ):
        self.keys = keys
        self.limits = limits
        self.default_tenant = default_tenant
        super().__init__()

    def bind(self, storage) -> None:
        if self.keys is not None and self.keys.storage is None:
            self.keys.storage = storage

    @contextlib.contextmanager
    def identified(self, context):
        """The call's tenant from its metadata alone, before its request is read (admission's
        first step, :class:`bbo_server.admission.Admission`); raises Unauthenticated. Within the
        block the gate's own step reuses it for this call instead of looking the key up again,
        if the request came within :data:`IDENTIFIED_S` (a key revoked meanwhile is refused)."""
        tenant = self._tenant(context)
        _current.identified = (context, tenant, time.monotonic())
        try:
            yield tenant
        finally:
            _current.identified = None

    def _tenant(self, context) -> str:
        if self.keys is None:
            return self.default_tenant
        known = getattr(_current, "identified", None)
        if known is not None and known[0] is context and time.monotonic() - known[2] < IDENTIFIED_S:
            return known[1]
        key = key_from_metadata(context.invocation_metadata())
        if key is None:
            M.AUTH_FAILURES.labels(reason="missing").inc()
            raise Unauthenticated(
                "missing API key: send metadata 'x-api-key: <key>' or 'authorization: Bearer <key>' (create one with `bbo keys create --tenant NAME`)"
            )
        tenant = self.keys.verify(key) if key else None
        if tenant is None:
            M.AUTH_FAILURES.labels(reason="invalid").inc()
            raise Unauthenticated("invalid API key (unknown, malformed or revoked)")
        return tenant

    def _wrap(self, handler, method: str):
        inner = handler.unary_unary

        def behavior(request, context):
            try:
                tenant = self._tenant(context)
                if self.limits is not None:
                    self.limits.check(tenant, method, request)
            except Unauthenticated as e:
                log.info(
                    "unauthenticated",
                    extra={
                        "rpc": method,
                        "peer": context.peer(),
                        "detail": e.message,
                        **request_ids(request),
                    },
                )
                context.abort_with_status(status_for(e))
            except (
                Exception
            ) as e:  # LimitError -> RESOURCE_EXHAUSTED; anything else INTERNAL (logged)
                limit = e.limit if isinstance(e, LimitError) else None
                if limit:
                    M.LIMIT_REFUSALS.labels(limit=limit).inc()
                    log.info(
                        "limit",
                        extra={
                            "rpc": method,
                            "limit": limit,
                            "tenant": tenant,
                            "detail": str(e),
                            **request_ids(request),
                        },
                    )
                else:
                    log.exception("gate failed", extra={"rpc": method})
                context.abort_with_status(status_for(e))
            prev = getattr(_current, "tenant", None)
            _current.tenant = tenant
            try:
                return inner(request, context)
            finally:
                _current.tenant = prev
                if self.limits is not None and context.code() in REFUSED:
                    self.limits.missed(tenant, method)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
