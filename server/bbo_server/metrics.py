"""Prometheus metrics of the server (``bbo serve --metrics-port N`` serves them on /metrics).

What is measured:

- ``bbo_rpc_requests_total{method,code}`` and ``bbo_rpc_duration_seconds{method,code}``: every
  BboService call, with its status code (auth refusals and limits included);
- ``bbo_rpc_in_flight{method}``: calls being handled now (asks waiting for a suggestion included:
  the queue depth of the service);
- ``bbo_trials_asked_total{origin}``, ``bbo_tells_total{state}``: trials handed out and finished;
- ``bbo_suggest_seconds``, ``bbo_gp_fit_seconds``, ``bbo_acquisition_seconds``: time in the
  generation strategy (whole suggestion, GP hyperparameter fit, acquisition optimization);
  ``bbo_suggest_in_progress``: suggestions being computed;
- ``bbo_llm_calls_total{purpose,outcome}`` (outcome ``ok``, ``failure``, or ``cached``: an
  answer from the cache, no request sent) and
  ``bbo_llm_call_seconds``: the LLM module's calls, counted where they are stored for audit
  (:func:`count_llm_call`); other code may call :func:`record_llm_call`;
- ``bbo_auth_failures_total{reason}``, ``bbo_limit_refusals_total{limit}``.

Metrics live in the process-wide default registry; counting is always on (it is cheap), the HTTP
endpoint only when a port is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from bbo.strategy.base import DescribesAsks
from bbo.study import REPLAYED_NOTE
from bbo_server.interceptor import MethodInterceptor

_LAT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)

RPC_REQUESTS = Counter(
    "bbo_rpc_requests", "BboService calls by method and status code", ["method", "code"]
)
RPC_DURATION = Histogram(
    "bbo_rpc_duration_seconds",
    "BboService call latency by method and status code",
    ["method", "code"],
    buckets=_LAT_BUCKETS,
)
RPC_IN_FLIGHT = Gauge("bbo_rpc_in_flight", "BboService calls being handled", ["method"])
TRIALS_ASKED = Counter("bbo_trials_asked", "trials handed out by Ask, by origin", ["origin"])
TELLS = Counter(
    "bbo_tells", "trials finished by Tell, by resulting state (duplicates counted apart)", ["state"]
)
SUGGEST_SECONDS = Histogram(
    "bbo_suggest_seconds", "time to compute one Ask's suggestions", buckets=_LAT_BUCKETS
)
GP_FIT_SECONDS = Histogram(
    "bbo_gp_fit_seconds", "GP hyperparameter fitting time per suggestion", buckets=_LAT_BUCKETS
)
ACQ_SECONDS = Histogram(
    "bbo_acquisition_seconds", "acquisition optimization time per suggestion", buckets=_LAT_BUCKETS
)
SUGGEST_IN_PROGRESS = Gauge("bbo_suggest_in_progress", "suggestions being computed now")
LLM_CALLS = Counter(
    "bbo_llm_calls",
    "LLM calls by purpose and outcome (ok / failure / cached)",
    ["purpose", "outcome"],
)
LLM_SECONDS = Histogram(
    "bbo_llm_call_seconds", "LLM call latency", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
)
AUTH_FAILURES = Counter(
    "bbo_auth_failures",
    "calls refused for missing, malformed, unknown or revoked API keys",
    ["reason"],
)
LIMIT_REFUSALS = Counter("bbo_limit_refusals", "calls refused by a per-tenant limit", ["limit"])

_TRIAL_STATES = {
    0: "UNSPECIFIED",
    1: "PENDING",
    2: "COMPLETED",
    3: "FAILED",
    4: "ABANDONED",
    5: "PAUSED",
    6: "PRUNED",
}


def record_llm_call(
    purpose: str, ok: bool, latency_seconds: float = 0.0, cached: bool = False
) -> None:
    """Count one LLM call (for the LLM integration; the strategy logger wrapper calls this); an
    answer from the cache (no request sent) as outcome ``cached``."""
    outcome = "cached" if cached else "ok" if ok else "failure"
    LLM_CALLS.labels(purpose=str(purpose or "unknown")[:64], outcome=outcome).inc()
    if latency_seconds and latency_seconds > 0:
        LLM_SECONDS.observe(float(latency_seconds))


def count_refused(method: str, code: str, seconds: float) -> None:
    """A BboService call refused before its request was read (the admission interceptor's: the
    concurrency cap, a missing key, no request), which reaches no MetricsInterceptor: counted
    and timed as the calls that do."""
    RPC_REQUESTS.labels(method=method, code=code).inc()
    RPC_DURATION.labels(method=method, code=code).observe(seconds)


def serve_http(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on ``host:port`` from a daemon thread."""
    start_http_server(int(port), addr=host)


class _Children:
    """A metric's labelled children, looked up once per label values (``labels()`` takes a lock and
    builds a key on every call: per-call cost on the hot path of every RPC)."""

    def __init__(self, metric, **fixed):
        self._metric, self._fixed, self._by = metric, fixed, {}

    def get(self, **labels):
        key = tuple(labels.values())
        child = self._by.get(key)
        if child is None:
            child = self._by[key] = self._metric.labels(**self._fixed, **labels)
        return child


_TRIALS_ASKED = _Children(TRIALS_ASKED)
_TELLS = _Children(TELLS)


class MetricsInterceptor(MethodInterceptor):
    """Times and counts every BboService call (the outermost interceptor: it sees every code)."""

    @staticmethod
    def _wrap(handler, method: str):
        inner = handler.unary_unary
        gauge = RPC_IN_FLIGHT.labels(method=method)
        requests, durations = (
            _Children(RPC_REQUESTS, method=method),
            _Children(RPC_DURATION, method=method),
        )

        def behavior(request, context):
            gauge.inc()
            t0 = time.perf_counter()
            code = "OK"
            try:
                response = inner(request, context)
                _count_payload(method, response)
                return response
            except BaseException:
                c = _context_code(context)
                code = c.name if c is not None else "UNKNOWN"
                raise
            finally:
                gauge.dec()
                requests.get(code=code).inc()
                durations.get(code=code).observe(time.perf_counter() - t0)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _context_code(context) -> grpc.StatusCode | None:
    try:
        return context.code()
    except Exception:  # pragma: no cover - older grpcio without ServicerContext.code()
        return None


def _count_payload(method: str, response) -> None:
    try:
        if method == "Ask":
            if response.note == REPLAYED_NOTE:  # the same trials again: counted when handed out
                return
            for t in response.trials:
                _TRIALS_ASKED.get(origin=t.origin or "unknown").inc()
        elif method == "Tell":
            state = _TRIAL_STATES.get(response.trial.state, "UNSPECIFIED")
            _TELLS.get(state=state + (" (duplicate)" if response.duplicate else "")).inc()
    except Exception:  # metrics never break a call
        pass


def instrument(strategy: Any) -> Any:
    """Time ``strategy.suggest`` (and the GP fit / acquisition parts the strategy reports in
    ``.last``) by replacing the bound method on the instance. The strategy itself is returned,
    not a proxy: the service finds its capabilities (:mod:`bbo.strategy.base`'s Protocols) with
    ``isinstance``, which from Python 3.12 on does not look through a proxy's ``__getattr__``."""
    inner = strategy.suggest

    def suggest(*args, **kwargs):
        SUGGEST_IN_PROGRESS.inc()
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SUGGEST_IN_PROGRESS.dec()
            SUGGEST_SECONDS.observe(time.perf_counter() - t0)
            if isinstance(strategy, DescribesAsks):
                last = strategy.last
                if last.fit_seconds > 0:
                    GP_FIT_SECONDS.observe(last.fit_seconds)
                if last.acq_seconds > 0:
                    ACQ_SECONDS.observe(last.acq_seconds)

    strategy.suggest = suggest
    return strategy


def count_llm_call(call) -> None:
    """Count an LLM call the service stored for audit (``StudyConfig.on_llm_call``), by purpose
    and outcome ("ok" or not; "cached" for an answer from the cache: no request was sent)."""
    record_llm_call(
        call.purpose,
        str(call.outcome).strip().lower() == "ok",
        float(call.latency_seconds or 0.0),
        cached=bool(getattr(call, "cached", False)),
    )


def instrument_factory(factory: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def make(spec):
        return instrument(factory(spec))

    make.__wrapped__ = factory  # type: ignore[attr-defined]
    return make
