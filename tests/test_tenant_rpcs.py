"""``--max-tenant-rpcs``: the calls one tenant has running at once are bounded, so a tenant with as
many workers as the server has handler threads cannot hold them all while its asks wait on fits.
Past the bound its next call is refused at once with RESOURCE_EXHAUSTED, a message naming the flag
and a google.rpc.RetryInfo (clients retry), while another tenant's calls run; its Tells still pass;
a call is counted until its handler returns, however it ends. With several tenants busy each has
its share of the threads, so a third tenant's calls run while two others saturate."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from sec_helpers import SobolStrategy

import bbo_client as bc
from bbo.errors import LimitError
from bbo_client.errors import from_rpc_error, retryable
from bbo_client.v1 import service_pb2, service_pb2_grpc, study_pb2
from bbo_server.limits import TenantCalls, default_tenant_rpcs
from bbo_server.server import ServerOptions, start

WAIT = 30.0  # seconds a test waits for something before it fails (never reached when it passes)
THREADS = 4  # handler threads of the test server
CAP = 2  # --max-tenant-rpcs of the test server


class Held(SobolStrategy):
    """Studies described ``slow`` wait for :attr:`release` in ``suggest``, on the Ask's handler
    thread, like an Ask waiting on a GP fit."""

    release = threading.Event()

    def before_suggest(self) -> None:
        if self.spec.description == "slow":
            assert Held.release.wait(WAIT)


def _tenant(context, method: str) -> str:
    """The authenticate hook of the test server: the tenant is the ``x-tenant`` metadata."""
    return dict(context.invocation_metadata()).get("x-tenant", "default")


def _until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"waited {WAIT:g}s for {what}"
        time.sleep(0.01)


def _md(tenant: str):
    return (("x-tenant", tenant),)


class Shared:
    """A server with 4 handler threads and --max-tenant-rpcs 2; tenants 'a' and 'b' each have a
    study ``slow`` (asks wait for :attr:`Held.release`) and ``quick`` with one PENDING trial."""

    def __init__(self, tmp_path):
        Held.release = threading.Event()
        self.srv = start(
            ServerOptions(
                port=0,
                db="sqlite:///" + str(tmp_path / "shared.db"),
                strategy_factory=Held,
                rpc_threads=THREADS,
                max_tenant_rpcs=CAP,
                fit_workers=THREADS,  # held asks take fit slots: leave some to the other tenant
                lease_reap_seconds=0,
                authenticate=_tenant,
            )
        )
        assert self.srv.tenant_calls is not None
        self.calls = self.srv.tenant_calls
        self.channel = grpc.insecure_channel(self.srv.address)
        self.stub = service_pb2_grpc.BboServiceStub(self.channel)
        self.trial = {}
        for t in ("a", "b"):
            with bc.Client(self.srv.address, retries=0) as c:
                c._metadata = _md(t)
                for name in ("slow", "quick"):
                    c.create_study(
                        name, parameters=[bc.Float("x", 0, 1)], objectives="y", description=name
                    )
                (self.trial[t],) = c.study("quick").ask(1)

    def ask(self, tenant: str, study: str = "slow"):
        return self.stub.Ask.future(
            service_pb2.AskRequest(study=study, count=1), metadata=_md(tenant), timeout=WAIT
        )

    def get(self, tenant: str, study: str = "quick"):
        return self.stub.GetStudy(
            service_pb2.GetStudyRequest(name=study), metadata=_md(tenant), timeout=WAIT
        )

    def close(self) -> None:
        Held.release.set()
        self.channel.close()
        self.srv.stop(grace=5)


@pytest.fixture
def shared(tmp_path):
    s = Shared(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _refused(f) -> bool:
    return f.done() and f.exception() is not None


def test_a_tenant_past_its_bound_is_refused_and_another_tenant_runs(shared):
    # tenant a asks with as many workers as the server has threads: without the bound its asks
    # held all four, and b's calls queued behind them
    held = [shared.ask("a") for _ in range(THREADS)]
    _until(
        lambda: sum(map(_refused, held)) == THREADS - CAP, "a's asks past the bound to be refused"
    )
    _until(lambda: shared.calls.running("a") == CAP, "a's asks within the bound to run")
    for f in filter(_refused, held):
        e = f.exception()
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = from_rpc_error(e)
        assert "--max-tenant-rpcs" in err.message and "'a'" in err.message
        assert err.retry_after is not None and err.retry_after > 0  # the google.rpc.RetryInfo
        assert retryable(err)
    # a's next call, even a cheap one, is refused too
    with pytest.raises(grpc.RpcError) as e:
        shared.get("a")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-tenant-rpcs" in from_rpc_error(e.value).message
    # a's Tell and Heartbeat are neither counted nor refused: they finish work handed out
    t = shared.trial["a"]
    shared.stub.Heartbeat(
        service_pb2.HeartbeatRequest(study="quick", trial_id=t.id), metadata=_md("a"), timeout=WAIT
    )
    told = shared.stub.Tell(
        service_pb2.TellRequest(
            study="quick", trial_id=t.id, metrics={"y": study_pb2.MetricValue(value=0.5)}
        ),
        metadata=_md("a"),
        timeout=WAIT,
    )
    assert told.trial.state == study_pb2.TRIAL_STATE_COMPLETED and not told.duplicate
    # tenant b's calls run meanwhile, asks included
    assert shared.get("b").name == "quick"
    assert len(shared.ask("b", "quick").result(timeout=WAIT).trials) == 1
    assert shared.calls.running("a") == CAP and shared.calls.running("b") == 0
    # once a's held asks are answered, its count is back to 0 and its calls pass again
    Held.release.set()
    for f in held:
        if not _refused(f):
            assert len(f.result(timeout=WAIT).trials) == 1
    _until(lambda: shared.calls.running("a") == 0, "a's held asks to be uncounted")
    assert shared.get("a").name == "quick"


def test_a_third_tenant_is_answered_while_two_others_hold_their_share(shared):
    """With the bound a fixed half of the threads, two busy tenants held all four and a third
    one's calls queued until theirs returned. Each of several busy tenants has at most its share
    (the threads divided among them and one more), so a third tenant still finds a thread."""
    with bc.Client(shared.srv.address, retries=0) as c:
        c._metadata = _md("c")
        c.create_study("quick", parameters=[bc.Float("x", 0, 1)], objectives="y")
    held = {t: [shared.ask(t) for _ in range(THREADS)] for t in ("a", "b")}
    for t in ("a", "b"):
        _until(
            lambda: shared.calls.running(t) + sum(map(_refused, held[t])) == THREADS,
            f"{t}'s asks to run or be refused (not queued for a thread)",
        )
    # b, busy with a, has its share: 4 threads // (2 tenants + 1)
    assert shared.calls.running("b") == shared.calls.bound(2) == 1
    for f in filter(_refused, held["b"]):
        assert f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = from_rpc_error(f.exception())
        assert "--max-tenant-rpcs" in err.message and "2 tenants are busy" in err.message
        assert err.retry_after is not None and err.retry_after > 0
    # c is answered while a's and b's asks are still held, an Ask included
    assert shared.get("c").name == "quick"
    assert len(shared.ask("c", "quick").result(timeout=WAIT).trials) == 1
    assert not any(f.done() for t in ("a", "b") for f in held[t] if not _refused(f))
    # a, over its share now that three tenants are busy, is refused even a cheap call
    with pytest.raises(grpc.RpcError) as e:
        shared.get("a")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    Held.release.set()
    for f in (f for t in ("a", "b") for f in held[t] if not _refused(f)):
        assert len(f.result(timeout=WAIT).trials) == 1


def test_a_refused_call_is_retried_by_the_client_once_a_place_is_free(shared):
    held = [shared.ask("a") for _ in range(CAP)]
    _until(lambda: shared.calls.running("a") == CAP, "a's asks to run")
    got: list = []
    with bc.Client(shared.srv.address, retries=0) as c:
        c._metadata = _md("a")
        th = threading.Thread(target=lambda: got.append(c.get_study("quick")))
        refused = shared.calls.refused
        th.start()
        _until(lambda: shared.calls.refused > refused, "a's GetStudy to be refused")
        Held.release.set()
        th.join(WAIT)
    assert not th.is_alive() and got and got[0].name == "quick"
    for f in held:
        f.result(timeout=WAIT)


def test_calls_that_fail_or_are_cancelled_are_uncounted(shared, monkeypatch):
    # a handler that fails on a core error (NOT_FOUND), more times than the bound
    for _ in range(CAP + 1):
        with pytest.raises(grpc.RpcError) as e:
            shared.get("a", "nowhere")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert shared.calls.running("a") == 0

    # a handler that raises something unexpected (INTERNAL)
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(shared.srv.registry, "list_studies", broken)
    for _ in range(CAP + 1):
        with pytest.raises(grpc.RpcError) as e:
            shared.stub.ListStudies(
                service_pb2.ListStudiesRequest(), metadata=_md("a"), timeout=WAIT
            )
        assert e.value.code() == grpc.StatusCode.INTERNAL
    assert shared.calls.running("a") == 0
    monkeypatch.undo()

    # calls cancelled by their client while the handler runs: counted until the handler returns
    held = [shared.ask("a") for _ in range(CAP)]
    _until(lambda: shared.calls.running("a") == CAP, "a's asks to run")
    for f in held:
        f.cancel()
    with pytest.raises(grpc.RpcError) as e:
        shared.get("a")  # the cancelled asks' handlers still hold their threads
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    Held.release.set()
    _until(lambda: shared.calls.running("a") == 0, "the cancelled asks' handlers to return")
    assert shared.get("a").name == "quick"
    assert shared.stub.ListStudies(
        service_pb2.ListStudiesRequest(), metadata=_md("a"), timeout=WAIT
    ).studies


def test_the_count_is_released_whatever_the_body_raises():
    calls = TenantCalls(1, 4)
    for exc in (ValueError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with calls.hold("a", "Ask"):
                assert calls.running("a") == 1
                raise exc
        assert calls.running("a") == 0
    with calls.hold("a", "Ask"):
        with pytest.raises(Exception, match="--max-tenant-rpcs"):
            with calls.hold("a", "GetStudy"):
                pass  # pragma: no cover - refused before the body
        with calls.hold("a", "Tell"), calls.hold("a", "Heartbeat"), calls.hold("b", "Ask"):
            assert calls.running("a") == 1 and calls.running("b") == 1
    assert calls.running("a") == 0 and calls.running("b") == 0 and calls.refused == 1
    assert calls._running == {}  # tenants without running calls are not kept


def test_the_default_bound_is_half_the_handler_threads():
    assert default_tenant_rpcs(64) == 32
    assert default_tenant_rpcs(1) == 1
    with pytest.raises(ValueError):
        TenantCalls(0, 4)


def test_several_busy_tenants_share_the_threads_and_leave_one_free():
    calls = TenantCalls(default_tenant_rpcs(64), 64)
    assert [calls.bound(n) for n in (1, 2, 3, 4, 63, 64, 200)] == [32, 21, 16, 12, 1, 1, 1]
    for n in range(2, 64):  # n tenants at their share leave a thread to one more
        assert n * calls.bound(n) < 64
    assert TenantCalls(48, 64).bound(1) == 48 and TenantCalls(2, 64).bound(3) == 2
    odd = TenantCalls(1, 4)  # a tenant name with braces (an authenticate hook's) is refused, named
    with odd.serving("a{0}{n}", "tenant 'a{0}{n}' has {n} calls{share}"):
        with pytest.raises(LimitError, match="has 1 calls"):
            with odd.serving("a{0}{n}", "tenant 'a{0}{n}' has {n} calls{share}"):
                pass
