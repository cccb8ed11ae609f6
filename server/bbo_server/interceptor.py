"""Base for bbo's unary-unary server interceptors: wraps each BboService method's handler once."""

from __future__ import annotations

import grpc

SERVICE_PREFIX = "/bbo.v1.BboService/"


class MethodInterceptor(grpc.ServerInterceptor):
    """Calls :meth:`_wrap(handler, method)` once per method (not per call) and reuses the result while
    the inner handler stays the same; other services' and streaming methods pass through."""

    def __init__(self):
        self._wrapped: dict[str, tuple] = {}  # method path -> (inner handler, wrapped handler)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        path = handler_call_details.method or ""
        if handler is None or handler.unary_unary is None or not path.startswith(SERVICE_PREFIX):
            return handler
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        out = self._wrap(handler, path[len(SERVICE_PREFIX) :])
        self._wrapped[path] = (handler, out)
        return out

    def _wrap(self, handler, method: str):
        raise NotImplementedError
