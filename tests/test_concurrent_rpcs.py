"""``--max-concurrent-rpcs``: the calls a server holds at once, running or queued for a handler
thread, are bounded. Past the cap a call is refused at once with RESOURCE_EXHAUSTED, a message
naming the flag and a google.rpc.RetryInfo, so clients retry it; a Tell refused in a burst is stored
once the burst is over; health checks are answered while the handler threads are all held."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sec_helpers import BareRefusals, SobolStrategy, in_process_server

import bbo_client as bc
from bbo_client.errors import GRPC_CONCURRENCY_REFUSAL, ResourceExhausted, from_rpc_error, retryable
from bbo_client.v1 import service_pb2, service_pb2_grpc
from bbo_server.interceptor import MethodInterceptor

WAIT = 30.0  # seconds a test waits for something before it fails (never reached when it passes)


class Hold(MethodInterceptor):
    """Holds every ListStudies call on its handler thread until :attr:`release` is set, like an
    Ask waiting on a GP fit."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def _wrap(self, handler, method: str):
        if method != "ListStudies":
            return handler
        inner = handler.unary_unary

        def behavior(request, context):
            self.release.wait(WAIT)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior, handler.request_deserializer, handler.response_serializer
        )


def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"waited {WAIT:g}s for {what}"
        time.sleep(0.01)


class Capped:
    """A server with 1 handler thread and room for 2 calls, holding ListStudies calls, and one
    study with one PENDING trial."""

    def __init__(self, tmp_path):
        self.hold = Hold()
        self.held: list = []  # fill()'s calls, kept alive
        self.srv = in_process_server(
            tmp_path / "cap.db",
            strategy_factory=SobolStrategy,
            rpc_threads=1,
            max_concurrent_rpcs=2,
            interceptors=[self.hold],
        )
        assert self.srv.admission is not None
        self.admission = self.srv.admission
        self.channel = grpc.insecure_channel(self.srv.address)
        self.stub = service_pb2_grpc.BboServiceStub(self.channel)
        with bc.Client(self.srv.address, retries=0) as c:
            study = c.create_study("capped", parameters=[bc.Float("x", 0, 1)], objectives="y")
            (self.trial,) = study.ask(1)

    def fill(self) -> list:
        """Two held calls, the first running on the one thread, the second queued for it. Their
        futures are kept here until the test ends: a future that is garbage-collected cancels its
        call, and two tests dropped fill()'s list at once."""
        # a call's task ends just after its reply is sent: the Ask's may still be counted
        _until(lambda: self.admission.pool.pending == 0, "the calls so far to finish")
        held = []
        for n in (1, 2):
            held.append(self.stub.ListStudies.future(service_pb2.ListStudiesRequest()))
            _until(lambda: self.admission.pool.pending == n, f"held call {n} to reach the server")
        assert self.admission.refused == 0 and not any(f.done() for f in held)
        self.held = held
        return held

    def close(self) -> None:
        self.hold.release.set()
        self.channel.close()
        self.srv.stop(grace=5)


@pytest.fixture
def capped(tmp_path):
    c = Capped(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_a_call_past_the_cap_is_refused_naming_the_flag_with_retry_info(capped):
    held = capped.fill()
    with pytest.raises(grpc.RpcError) as e:
        # queued behind the held calls without the cap: DEADLINE_EXCEEDED after the timeout
        capped.stub.GetStudy(service_pb2.GetStudyRequest(name="capped"), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    err = from_rpc_error(e.value)
    assert "--max-concurrent-rpcs" in err.message and "retry" in err.message
    assert err.retry_after is not None and err.retry_after > 0  # the google.rpc.RetryInfo
    assert retryable(err)
    # a health check is answered on a pool of its own, neither refused nor queued
    health = health_pb2_grpc.HealthStub(capped.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # the held calls were neither refused nor lost: once released, both are answered
    capped.hold.release.set()
    for f in held:
        assert [s.name for s in f.result(timeout=WAIT).studies] == ["capped"]
    _until(lambda: capped.admission.pool.pending == 0, "the held calls to finish")
    capped.stub.GetStudy(service_pb2.GetStudyRequest(name="capped"), timeout=WAIT)


def test_a_tell_refused_in_a_burst_is_retried_by_the_client_and_stored(capped):
    told: list = []
    with bc.Client(capped.srv.address, retries=0) as c:
        study = c.study("capped")
        capped.fill()
        th = threading.Thread(target=lambda: told.append(study.tell(capped.trial, 0.5)))
        th.start()
        _until(lambda: capped.admission.refused > 0, "the Tell to be refused")
        capped.hold.release.set()  # the burst is over
        th.join(WAIT)
        assert not th.is_alive() and len(told) == 1 and not told[0].duplicate
        (stored,) = study.trials()
        assert stored.id == capped.trial.id and stored.state == "COMPLETED"
        assert stored.metrics["y"] == 0.5


def test_grpcs_own_concurrency_refusal_is_retryable():
    """Past gRPC's maximum_concurrent_rpcs (the backstop behind the cap) gRPC refuses on its own,
    with no RetryInfo: the client retries it all the same. Other RESOURCE_EXHAUSTED refusals
    without a RetryInfo (a size bound) are final."""
    assert retryable(ResourceExhausted(GRPC_CONCURRENCY_REFUSAL))
    assert not retryable(ResourceExhausted("spec.parameters: over --max-parameters (256)"))


def test_the_client_waits_out_grpcs_own_refusal_as_a_load_refusal(tmp_path):
    """gRPC's bare refusal past the server's concurrent calls is a refusal for load, as the cap's
    is: a client retries it for its rate_patience, not only its few UNAVAILABLE retries (none
    here), and the call passes once the server takes calls again."""
    refusals = BareRefusals(3)
    srv = in_process_server(
        tmp_path / "bare.db", strategy_factory=SobolStrategy, rpc_threads=2, interceptors=[refusals]
    )
    try:
        with bc.Client(srv.address, retries=0, backoff=0.01, rate_patience=WAIT) as c:
            study = c.create_study("bare", parameters=[bc.Float("x", 0, 1)], objectives="y")
            assert study.name == "bare"
        assert refusals.left == 0
    finally:
        srv.stop(grace=5)


def test_an_ask_whose_caller_went_away_stores_nothing(registry):
    """An Ask whose client's deadline passed was computed to the end on a fit slot and its trials
    stored PENDING for a whole lease, though nobody received them. Once the call is no longer
    active (before the model's work or before the insert) nothing more is done or stored."""
    from bbo.errors import CallerGone

    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0, "high": 1}],
        "objectives": [{"name": "y"}],
        "algorithm": {"n_initial": 2},
    }
    st, _ = registry.create_study("gone", spec)
    for t in st.ask(2).trials:
        st.tell(t.id, {"y": t.params["x"]})
    answers = iter([True, False])  # alive while it waits for the study, gone once computed
    for alive in (lambda: False, lambda: next(answers)):
        with pytest.raises(CallerGone):
            st.ask(3, alive=alive, request_id="r1")
        assert len(st.trials()) == 2
    (t,) = st.ask(1, alive=lambda: True, request_id="r1").trials  # the retry computes afresh
    assert t.id == 3 and t.origin == "bo"


def test_a_call_refused_past_the_cap_is_counted_in_the_metrics(capped):
    """The refusal reaches no other interceptor: it was in no metric, so an overloaded server
    looked idle on /metrics."""
    from bbo_server import metrics as M

    def counts():
        timed = M.RPC_DURATION.labels(method="GetStudy", code="RESOURCE_EXHAUSTED")
        return (
            M.RPC_REQUESTS.labels(method="GetStudy", code="RESOURCE_EXHAUSTED")._value.get(),
            M.LIMIT_REFUSALS.labels(limit="concurrent_rpcs")._value.get(),
            sum(b.get() for b in timed._buckets),  # the histogram's count
        )

    before = counts()
    capped.fill()
    with pytest.raises(grpc.RpcError) as e:
        capped.stub.GetStudy(service_pb2.GetStudyRequest(name="capped"), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert counts() == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_a_call_that_sends_no_request_is_counted_in_the_metrics(tmp_path):
    """Refused INVALID_ARGUMENT before any handler ran, it was in no metric."""
    from bbo_server import metrics as M

    srv = in_process_server(tmp_path / "n.db", strategy_factory=SobolStrategy)
    counted = M.RPC_REQUESTS.labels(method="GetStudy", code="INVALID_ARGUMENT")
    n0 = counted._value.get()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            raw = ch.stream_unary(
                "/bbo.v1.BboService/GetStudy",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as e:
                raw(iter(()), timeout=WAIT)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert counted._value.get() == n0 + 1
    finally:
        srv.stop(grace=5)
