"""The Prometheus endpoint of ``bbo serve --metrics-port``: RPCs by method and code, asks, tells,
suggestion time, auth refusals; LLM call counting through the strategy wrapper."""

from __future__ import annotations

import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families
from sec_helpers import call, create_key, on_a_free_port, request_for, stub

from bbo_client.v1 import service_pb2 as svc


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    deadline = time.time() + 30
    while True:
        try:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
                .read()
                .decode()
            )
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m, name, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint(server_factory, tmp_path):
    db = "sqlite:///" + str(tmp_path / "m.db")
    srv, port = on_a_free_port(
        lambda p: server_factory(db=db, args=["--auth", "--workers", "1", "--metrics-port", str(p)])
    )
    key, _ = create_key(db, "t")
    ch, st = stub(srv.address)
    with ch:
        assert call(st, "CreateStudy", request_for("CreateStudy", "m"), key)[1] is None
        for _ in range(3):
            r, code = call(st, "Ask", request_for("Ask", "m"), key)
            assert code is None
            assert call(st, "Tell", request_for("Tell", "m", r.trials[0].id), key)[1] is None
        call(st, "Tell", request_for("Tell", "m", r.trials[0].id), key)  # a duplicate
        assert (
            call(st, "GetStudy", request_for("GetStudy", "nope"), key)[1]
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            call(st, "ListStudies", svc.ListStudiesRequest())[1] == grpc.StatusCode.UNAUTHENTICATED
        )
    m = scrape(port)
    assert value(m, "bbo_rpc_requests_total", method="Ask", code="OK") == 3
    assert value(m, "bbo_rpc_requests_total", method="Tell", code="OK") == 4
    assert value(m, "bbo_rpc_requests_total", method="GetStudy", code="NOT_FOUND") == 1
    assert value(m, "bbo_rpc_requests_total", method="ListStudies", code="UNAUTHENTICATED") == 1
    assert value(m, "bbo_rpc_duration_seconds_count", method="Ask", code="OK") == 3
    # refused before its request was read (no key): timed too, not only counted
    assert (
        value(m, "bbo_rpc_duration_seconds_count", method="ListStudies", code="UNAUTHENTICATED")
        == 1
    )
    assert value(m, "bbo_trials_asked_total", origin="initial_design") == 3
    assert value(m, "bbo_tells_total", state="COMPLETED") == 3
    assert value(m, "bbo_tells_total", state="COMPLETED (duplicate)") == 1
    assert value(m, "bbo_suggest_seconds_count") == 3
    assert value(m, "bbo_auth_failures_total", reason="missing") == 1
    assert ("bbo_rpc_in_flight", (("method", "Ask"),)) in m and value(
        m, "bbo_rpc_in_flight", method="Ask"
    ) == 0
    assert ("bbo_suggest_in_progress", ()) in m


def test_metrics_off_by_default(bbo_server):
    assert "metrics on" not in bbo_server.log_tail(100000)


def test_strategy_wrapper_times_and_forwards_and_llm_calls_are_counted(storage):
    from bbo.registry import StudyConfig, StudyRegistry
    from bbo.storage import LlmCallRecord
    from bbo_server import metrics as M

    class Fake:
        last = type("L", (), {"fit_seconds": 0.25, "acq_seconds": 0.5})()

        def suggest(self, trials, n):
            return ["s"] * n

        def status(self, trials):
            return ("ACTIVE", "")

    def count(**labels):
        return M.LLM_CALLS.labels(**labels)._value.get()

    fit0, n0 = M.GP_FIT_SECONDS._sum.get(), M.SUGGEST_SECONDS._sum.get()
    strat = M.instrument_factory(lambda spec: Fake())(None)
    assert isinstance(strat, Fake)  # the strategy itself: its capabilities stay visible
    assert strat.suggest([], 2) == ["s", "s"]
    assert strat.status([]) == ("ACTIVE", "")
    assert M.GP_FIT_SECONDS._sum.get() == fit0 + 0.25 and M.SUGGEST_SECONDS._sum.get() > n0

    reg = StudyRegistry(storage, config=StudyConfig(on_llm_call=M.count_llm_call))
    st, _ = reg.create_study(
        "llm",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "y"}],
        },
    )
    ok0, bad0 = count(purpose="warmstart", outcome="ok"), count(purpose="priors", outcome="failure")
    st.log_llm_call(LlmCallRecord("warmstart", "m", "p", "r", "ok", latency_seconds=0.2))
    st.log_llm_call(LlmCallRecord("priors", "m", "p", "", "timeout after 30s"))
    assert count(purpose="warmstart", outcome="ok") == ok0 + 1
    assert count(purpose="priors", outcome="failure") == bad0 + 1
    assert len(st.llm_calls()) == 2  # still stored
    M.record_llm_call("proposal", ok=False)
    assert count(purpose="proposal", outcome="failure") >= 1


def test_an_ask_replayed_by_request_id_counts_its_trials_once(tmp_path):
    """A replay hands out the trials of the first answer again: they were counted twice."""
    from sec_helpers import SobolStrategy, in_process_server

    from bbo_server import metrics as M

    srv = in_process_server(
        tmp_path / "r.db", strategy_factory=SobolStrategy, interceptors=[M.MetricsInterceptor()]
    )
    ch, st = stub(srv.address)
    try:
        with ch:
            st.CreateStudy(request_for("CreateStudy", "r"))
            asked = M.TRIALS_ASKED.labels(origin="initial_design")
            n0 = asked._value.get()
            first = st.Ask(svc.AskRequest(study="r", count=2, request_id="q1"))
            again = st.Ask(svc.AskRequest(study="r", count=2, request_id="q1"))
            assert [t.id for t in again.trials] == [t.id for t in first.trials]
            assert asked._value.get() == n0 + 2
    finally:
        srv.stop(grace=5)


def test_an_llm_answer_from_the_cache_is_counted_apart_from_calls():
    """A cache hit sent no request: it was counted as an ``ok`` call."""
    from bbo.storage import LlmCallRecord
    from bbo_server import metrics as M

    ok, cached = (M.LLM_CALLS.labels(purpose="warmstart", outcome=o) for o in ("ok", "cached"))
    ok0, cached0 = ok._value.get(), cached._value.get()
    M.count_llm_call(LlmCallRecord("warmstart", "m", "p", "r", "ok", cached=True))
    assert (ok._value.get(), cached._value.get()) == (ok0, cached0 + 1)
