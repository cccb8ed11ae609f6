"""The gRPC service end to end: a real `bbo serve` subprocess, driven through the real client."""

from __future__ import annotations

import math
import threading

import grpc
import pytest
from sec_helpers import SobolStrategy, in_process_server

import bbo_client as bc
from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import service_pb2_grpc
from bbo_client.v1 import study_pb2 as pb


def raw_stub(address):
    ch = grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    return ch, service_pb2_grpc.BboServiceStub(ch)


def snapshot(study):
    return [(t.id, t.state, t.metrics, t.params) for t in study.trials()]


# ---- happy paths ----------------------------------------------------------------------------------


def test_create_get_list_delete_study(client, study_name, make_study):
    s = make_study(client, study_name, description="tune x")
    assert s.created
    again = make_study(client, study_name, description="tune x")
    assert not again.created
    info = client.get_study(study_name)
    assert info.name == study_name and info.description == "tune x"
    assert [p.name for p in info.parameters] == ["x", "k"]
    assert info.objectives == [bc.Objective("y", "minimize")]
    assert study_name in [i.name for i in client.list_studies()]
    assert client.delete_study(study_name)
    with pytest.raises(bc.NotFound):
        client.get_study(study_name)


@pytest.mark.parametrize("name", [".", "..", "a b", ""])
def test_a_study_name_a_url_cannot_carry_is_refused(client, make_study, name):
    """``.`` and ``..`` passed the name check, and the dashboard's page of such a study asked the
    browser for ``api/studies/.``, which it resolves to the list of studies (or to nothing)."""
    with pytest.raises(bc.InvalidArgument, match="study name"):
        make_study(client, name)
    assert name not in [i.name for i in client.list_studies()]


def test_list_studies_pages(client, make_study, study_name):
    names = [f"{study_name}-{i}" for i in range(5)]
    for n in names:
        make_study(client, n)
    got = [s.name for s in client.list_studies(page_size=2)]
    assert all(n in got for n in names)
    assert len(got) == len(set(got))


def test_ask_tell_get_list_best(client, study_name, make_study):
    s = make_study(client, study_name)
    trials = s.ask(3, worker_id="w1")
    assert len(trials) == 3 and len({t.id for t in trials}) == 3
    assert all(
        t.state == "PENDING" and t.worker_id == "w1" and t.lease_expires is not None for t in trials
    )
    assert all(0.0 <= t.params["x"] <= 1.0 and t.params["k"] in "abc" for t in trials)
    for i, t in enumerate(trials):
        r = s.tell(t, {"y": float(i)})
        assert (
            not r.duplicate and r.trial.state == "COMPLETED" and r.trial.metrics == {"y": float(i)}
        )
    assert s.trial(trials[1].id).metrics == {"y": 1.0}
    assert [t.id for t in s.trials(["COMPLETED"])] == [t.id for t in trials]
    assert s.trials(["PENDING"]) == []
    best = s.best()
    assert best.trial.id == trials[0].id and best.state == "ACTIVE"
    info = s.info()
    assert info.trial_count == 3 and info.completed_count == 3


def test_tell_failed_with_reason_and_sem(client, study_name, make_study):
    s = make_study(client, study_name)
    a, b = s.ask(2)
    r = s.tell(a, failed=True, reason="OOM")
    assert r.trial.state == "FAILED" and r.trial.reason == "OOM"
    r = s.tell(b, {"y": (0.5, 0.1)})
    assert r.trial.metrics == {"y": 0.5} and r.trial.sems == {"y": 0.1}
    assert s.best().trial.id == b.id


def test_add_trial_and_constraints_in_best(client, study_name):
    s = client.create_study(
        study_name,
        parameters=[
            bc.Float("x", 0, 1),
            bc.Int("n", 1, 10),
            bc.Ordinal("b", [16, 32, 64]),
            bc.Fixed("f", "on"),
        ],
        objectives=[bc.Maximize("acc")],
        constraints=[bc.Constraint("lat", "<=", 100)],
    )
    good = s.add_trial({"x": 0.5, "n": 3, "b": 32, "f": "on"}, {"acc": 0.8, "lat": 50})
    assert (
        good.origin == "user"
        and good.state == "COMPLETED"
        and good.params["n"] == 3
        and isinstance(good.params["n"], int)
        and isinstance(good.params["b"], int)
    )
    s.add_trial(
        {"x": 0.6, "n": 4, "b": 64}, {"acc": 0.95, "lat": 500}
    )  # infeasible, better objective
    s.add_trial({"x": 0.7, "n": 5, "b": 16}, failed=True)
    assert s.best().trial.id == good.id
    (t,) = s.ask()
    assert (
        t.params["f"] == "on" and t.params["b"] in (16, 32, 64) and isinstance(t.params["b"], int)
    )


def test_multi_objective_best_is_pareto_front(client, study_name):
    s = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Minimize("a"), bc.Minimize("b")],
    )
    ids = [
        s.add_trial({"x": x}, {"a": a, "b": b}).id
        for x, a, b in [(0.1, 1, 3), (0.2, 2, 2), (0.3, 3, 1), (0.4, 3, 3)]
    ]
    best = s.best()
    assert sorted(t.id for t in best.trials) == ids[:3] and best.count == 3


def test_heartbeat_extends_lease(client, study_name, make_study):
    s = make_study(client, study_name)
    (t,) = s.ask(lease_seconds=5)
    t2 = s.heartbeat(t, lease_seconds=3600)
    assert t2.lease_expires > t.lease_expires


def test_heartbeat_without_a_length_keeps_the_lease_the_trial_holds(client, study_name, make_study):
    """A heartbeat with no lease_seconds renews the trial's own lease (before: it fell back to the
    server's 600 s default, so a trial asked for 2 h had 10 min after its first heartbeat)."""
    s = make_study(client, study_name)

    def length(t):
        return (t.lease_expires - t.updated).total_seconds()

    long_, short = s.ask(lease_seconds=7200)[0], s.ask(lease_seconds=60)[0]
    assert length(s.heartbeat(long_)) == pytest.approx(7200, abs=1)
    assert length(s.heartbeat(short)) == pytest.approx(60, abs=1)
    assert length(s.heartbeat(short, lease_seconds=30)) == pytest.approx(30, abs=1)
    assert length(s.heartbeat(short)) == pytest.approx(30, abs=1)  # the lease last granted


def test_expired_lease_is_abandoned_on_next_ask_and_late_tell_accepted(
    client, study_name, make_study
):
    s = make_study(client, study_name)
    (t,) = s.ask(lease_seconds=0.05)
    import time

    time.sleep(0.2)
    s.ask()
    assert s.trial(t.id).state == "ABANDONED" and s.trial(t.id).reason == "lease expired"
    r = s.tell(t, {"y": 1.0})  # a late result is still welcome
    assert r.trial.state == "COMPLETED"


def test_report_intermediate_median_rule(client, study_name, make_study):
    s = make_study(client, study_name)
    for i in range(3):  # three completed trials with curves 1.0, 0.9, 0.8 at steps 0..2
        (t,) = s.ask()
        for step in range(3):
            assert not s.report_intermediate(t, step, 1.0 - 0.1 * i + 0.01 * step) or step >= 1
        s.tell(t, {"y": 1.0 - 0.1 * i})
    (bad,) = s.ask()
    assert not s.report_intermediate(bad, 0, 5.0)  # warm-up step: never stop
    assert s.report_intermediate(bad, 1, 5.0)  # far worse than the median (minimize)
    (good,) = s.ask()
    assert not s.report_intermediate(good, 1, 0.1)


def test_list_llm_calls_empty(client, study_name, make_study):
    s = make_study(client, study_name)
    assert s.llm_calls() == []


def test_list_llm_calls_pages_by_count_and_size(bbo_server, client, study_name, make_study):
    """A long study's LLM log comes back in pages that stay under gRPC's default 4 MiB receive limit
    (20 calls of 500 KB here), in order, filtered by purpose on request; the client reads every page."""
    from bbo.storage import LlmCallRecord, open_storage

    s = make_study(client, study_name)
    st = open_storage(bbo_server.db, migrate=False)
    try:
        rec = st.get_study("default", study_name)
        purposes = ("warmstart", "priors", "proposal")
        for i in range(230):
            prompt = f"prompt {i} " + ("x" * 500_000 if 100 <= i < 120 else "")
            st.log_llm_call(
                rec.uid, LlmCallRecord(purposes[i % 3], "m", prompt, f"answer {i}", "ok", i, 1, 0.1)
            )
    finally:
        st.close()
    calls = s.llm_calls()
    assert [c.response for c in calls] == [f"answer {i}" for i in range(230)]
    assert [c.prompt_tokens for c in s.llm_calls(purpose="priors")] == list(range(1, 230, 3))
    ch, stub = raw_stub(bbo_server.address)
    with ch:
        pages, token = [], ""
        while True:
            r = stub.ListLlmCalls(svc.ListLlmCallsRequest(study=study_name, page_token=token))
            pages.append(r)
            token = r.next_page_token
            if not token:
                break
        sizes = [len(p.calls) for p in pages]
        assert (
            sum(sizes) == 230 and max(sizes) == 100 and len(pages) > 4
        )  # 100 by default, fewer where prompts are long
        assert max(p.ByteSize() for p in pages) < 4 * 1024 * 1024
        assert [c.response for p in pages for c in p.calls] == [f"answer {i}" for i in range(230)]
        r = stub.ListLlmCalls(
            svc.ListLlmCallsRequest(study=study_name, page_size=7, purpose="proposal")
        )
        assert [c.prompt_tokens for c in r.calls] == list(range(2, 23, 3)) and r.next_page_token
        for bad in (
            svc.ListLlmCallsRequest(study=study_name, purpose="chat"),
            svc.ListLlmCallsRequest(study=study_name, page_token="7x"),
            svc.ListLlmCallsRequest(study=study_name, page_size=-1),
        ):
            with pytest.raises(grpc.RpcError) as e:
                stub.ListLlmCalls(bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert any(f in e.value.details() for f in ("purpose", "page_token", "page_size"))


def test_health_and_reflection(bbo_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(bbo_server.address) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="bbo.v1.BboService")
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in resp.list_services_response.service}
        assert "bbo.v1.BboService" in names and "grpc.health.v1.Health" in names


# ---- bad input: right code, field named, state unchanged -----------------------------------------


def test_unknown_study_is_not_found_everywhere(client):
    h = bc.StudyHandle(client, "no-such-study")
    for call in (
        lambda: h.ask(),
        lambda: h.tell(1, {"y": 1}),
        lambda: h.trials(),
        lambda: h.best(),
        lambda: h.trial(1),
        lambda: h.heartbeat(1),
        lambda: h.report_intermediate(1, 1, 1.0),
        lambda: h.add_trial({"x": 0.5, "k": "a"}, {"y": 1}),
        lambda: h.llm_calls(),
        lambda: client.delete_study("no-such-study"),
        lambda: client.get_study("no-such-study"),
    ):
        with pytest.raises(bc.NotFound):
            call()


@pytest.mark.parametrize(
    "params, field",
    [
        ([bc.Float("x", 1.0, 0.0)], "spec.parameters[0].high"),
        ([bc.Float("x", 0.0, 1.0, log=True)], "spec.parameters[0].low"),
        ([bc.Float("x", 0.0, 1.0), bc.Float("x", 0.0, 2.0)], "spec.parameters[1].name"),
        ([bc.Categorical("c", [])], "spec.parameters[0].choices"),
        ([bc.Int("n", 5, 5)], "spec.parameters[0].high"),
        ([bc.Float("bad name!", 0, 1)], "spec.parameters[0].name"),
        ([], "spec.parameters"),
    ],
)
def test_malformed_spec_is_invalid_argument_naming_the_field(client, study_name, params, field):
    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study(study_name, parameters=params, objectives="y")
    assert e.value.field == field
    with pytest.raises(bc.NotFound):
        client.get_study(study_name)


def test_outcome_constraints_no_value_meets_are_refused(client, study_name):
    """m <= 0 beside m >= 1 was accepted: no trial could ever be feasible, GetBest stayed empty
    however long the study ran. Refused, naming the pair; nothing is stored."""
    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study(
            study_name,
            parameters=[bc.Float("x", 0, 1)],
            objectives=["y", bc.Objective("z", "maximize")],
            constraints=[
                bc.Constraint("m", "<=", 0.0),
                bc.Constraint("n", ">=", 5.0),
                bc.Constraint("m", ">=", 1.0),
            ],
        )
    assert e.value.field == "spec.outcome_constraints[2]"
    assert "m >= 1" in str(e.value) and "m <= 0" in str(e.value)
    with pytest.raises(bc.NotFound):
        client.get_study(study_name)
    # a window that holds a value (a single one included) is accepted
    study = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1)],
        objectives="y",
        constraints=[bc.Constraint("m", "<=", 1.0), bc.Constraint("m", ">=", 1.0)],
    )
    assert len(study.info().spec.outcome_constraints) == 2


@pytest.mark.parametrize(
    "params, cons",
    [
        # 0.5 <= n <= 0.5: the box has room, no whole number fits
        ([bc.Int("n", 0, 1), bc.Float("x", 0, 1)], [({"n": 2}, 1), ({"n": -2}, -1)]),
        (
            [bc.Int("n", 0, 100), bc.Int("m", 0, 100)],
            [({"n": 2, "m": 2}, 101), ({"n": -2, "m": -2}, -101)],
        ),
        # 4 <= b <= 5 between the ordinal's values 1 and 10
        ([bc.Ordinal("b", [1, 10]), bc.Float("x", 0, 1)], [({"b": 1}, 5), ({"b": -1}, -4)]),
    ],
)
def test_constraints_without_a_grid_point_are_refused(client, study_name, params, cons):
    """Constraints met only between whole numbers / ordinal values were accepted, and every Ask of
    the study then failed INTERNAL (the design found no point to hand out)."""
    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study(
            study_name,
            parameters=params,
            objectives="y",
            parameter_constraints=[bc.LinearConstraint(c, b) for c, b in cons],
        )
    assert e.value.field == "spec.parameter_constraints"
    with pytest.raises(bc.NotFound):
        client.get_study(study_name)
    # a thin polytope that does hold a grid point is accepted and asks hand it out
    study = client.create_study(
        study_name,
        parameters=[bc.Int("n", 0, 10), bc.Float("x", 0, 1)],
        objectives="y",
        parameter_constraints=[
            bc.LinearConstraint({"n": 1}, 5.5),
            bc.LinearConstraint({"n": -1}, -4.2),
        ],
        n_initial=2,
    )
    for _ in range(3):
        (t,) = study.ask()
        assert t.params["n"] == 5
        study.tell(t, {"y": t.params["x"]})
    assert study.best().trial is not None


def _spec_with_enum(where: str, value: int) -> pb.StudySpec:
    spec = pb.StudySpec(
        parameters=[pb.ParameterSpec(name="x", float=pb.FloatParameter(low=1, high=2))],
        objectives=[pb.Objective(name="y")],
        outcome_constraints=[pb.OutcomeConstraint(metric="c", bound=1.0)],
    )
    if where == "goal":
        spec.objectives[0].goal = value
    elif where == "op":
        spec.outcome_constraints[0].op = value
    elif where == "scale":
        spec.parameters[0].float.scale = value
    else:
        spec.pruning.policy = value
    return spec


@pytest.mark.parametrize(
    "where, field",
    [
        ("goal", "spec.objectives[0].goal"),
        ("op", "spec.outcome_constraints[0].op"),
        ("scale", "spec.parameters[0].float.scale"),
        ("policy", "spec.pruning.policy"),
    ],
)
def test_unknown_enum_values_in_a_spec_are_refused(bbo_server, client, study_name, where, field):
    """proto3 enums are open: a goal of 7 was stored as minimize, an op of 9 as '<=', a scale of 5
    as linear (a client built from a newer proto silently got another study than it asked for)."""
    ch, s = raw_stub(bbo_server.address)
    with ch:
        with pytest.raises(grpc.RpcError) as e:
            s.CreateStudy(
                svc.CreateStudyRequest(name=study_name, spec=_spec_with_enum(where, 7)), timeout=30
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(field) and "unknown value 7" in e.value.details()
        with pytest.raises(bc.NotFound):
            client.get_study(study_name)
        s.CreateStudy(svc.CreateStudyRequest(name=study_name, spec=_spec_with_enum(where, 1)))


def test_spec_without_objective_and_bad_name(client, study_name):
    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives=[])
    assert e.value.field == "spec.objectives"
    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study("bad name/with slash", parameters=[bc.Float("x", 0, 1)], objectives="y")
    assert e.value.field == "name"


def test_names_ending_in_a_newline_are_refused(client, study_name):
    """'$' also matches before a final newline: 'x' and 'x\\n' were two studies (two tenants, two
    transfer sources) that print alike."""
    from bbo.storage.keys import check_tenant

    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study(study_name + "\n", parameters=[bc.Float("x", 0, 1)], objectives="y")
    assert e.value.field == "name"
    with pytest.raises(bc.InvalidArgument) as e:
        client.create_study(
            study_name,
            parameters=[bc.Float("x", 0, 1)],
            objectives="y",
            transfer=bc.Transfer(sources=[study_name + "-src\n"]),
        )
    assert e.value.field == "spec.transfer.sources[0]"
    assert [s.name for s in client.list_studies(page_size=1000) if study_name in s.name] == []
    with pytest.raises(ValueError, match="tenant"):
        check_tenant("acme\n")


def test_same_name_different_spec_already_exists(client, study_name, make_study):
    make_study(client, study_name)
    with pytest.raises(bc.AlreadyExists):
        client.create_study(study_name, parameters=[bc.Float("x", 0, 2)], objectives="y")
    assert client.get_study(study_name).parameters[0] == bc.Float("x", 0.0, 1.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_rejected_and_trial_stays_pending(client, study_name, make_study, value):
    s = make_study(client, study_name)
    (t,) = s.ask()
    before = snapshot(s)
    with pytest.raises(bc.InvalidArgument) as e:
        s.tell(t, {"y": value})
    assert e.value.field == "metrics['y']"
    assert snapshot(s) == before and s.trial(t.id).state == "PENDING"


def test_missing_metric_and_negative_sem(client, study_name, make_study):
    s = make_study(client, study_name)
    (t,) = s.ask()
    with pytest.raises(bc.InvalidArgument) as e:
        s.tell(t, {"other": 1.0})
    assert e.value.field == "metrics"
    with pytest.raises(bc.InvalidArgument) as e:
        s.tell(t, {"y": (1.0, -1.0)})
    assert e.value.field == "metrics['y'].sem"
    assert s.trial(t.id).state == "PENDING"


def test_out_of_range_params_in_add_trial(client, study_name, make_study):
    s = make_study(client, study_name)
    for params, field in [
        ({"x": 2.0, "k": "a"}, "parameters['x']"),
        ({"x": 0.5, "k": "z"}, "parameters['k']"),
        ({"x": 0.5}, "parameters"),
        ({"x": 0.5, "k": "a", "extra": 1}, "parameters"),
    ]:
        with pytest.raises(bc.InvalidArgument) as e:
            s.add_trial(params, {"y": 1.0})
        assert e.value.field == field
    assert s.trials() == []


def test_tell_unknown_trial_not_found_and_finished_trial_conflict(client, study_name, make_study):
    s = make_study(client, study_name)
    with pytest.raises(bc.NotFound):
        s.tell(999, {"y": 1.0})
    (t,) = s.ask()
    s.tell(t, {"y": 1.0})
    before = snapshot(s)
    with pytest.raises(bc.Conflict):
        s.tell(t, {"y": 2.0})
    with pytest.raises(bc.Conflict):
        s.tell(t, failed=True, reason="late")
    with pytest.raises(bc.Conflict):
        s.heartbeat(t)
    with pytest.raises(bc.Conflict):
        s.report_intermediate(t, 1, 0.5)
    assert snapshot(s) == before


@pytest.mark.parametrize(
    "rpc, request_of, field",
    [
        (
            "ListTrials",
            lambda n: svc.ListTrialsRequest(study=n, page_token="9" * 5000),
            "page_token",
        ),
        (
            "ListTrials",
            lambda n: svc.ListTrialsRequest(study=n, page_token="é" * 3000),
            "page_token",
        ),
        ("ListLlmCalls", lambda n: svc.ListLlmCallsRequest(study=n, purpose="ü" * 5000), "purpose"),
    ],
)
def test_an_error_quoting_a_long_value_still_arrives(
    bbo_server, client, study_name, make_study, rpc, request_of, field
):
    """The message quoted the whole value: its trailers passed the client's 8 KiB limit, and the
    caller got a transport RESOURCE_EXHAUSTED ("received metadata size exceeds soft limit") instead
    of INVALID_ARGUMENT naming the field."""
    make_study(client, study_name)
    ch, s = raw_stub(bbo_server.address)
    with ch:
        with pytest.raises(grpc.RpcError) as e:
            getattr(s, rpc)(request_of(study_name), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(field) and e.value.details().endswith("...")
    assert len(e.value.details().encode()) <= 1000


def test_idempotent_tell(client, study_name, make_study):
    s = make_study(client, study_name)
    (t,) = s.ask()
    r1 = s.tell(t, {"y": 0.25}, request_id="tell-1")
    r2 = s.tell(t, {"y": 0.25}, request_id="tell-1")
    r3 = s.tell(t, {"y": 0.25})
    assert not r1.duplicate and r2.duplicate and r3.duplicate
    assert r2.trial.metrics == {"y": 0.25}
    with pytest.raises(bc.Conflict):  # a request id reused for a different tell
        s.tell(t, {"y": 0.5}, request_id="tell-1")
    assert s.info().completed_count == 1


def test_idempotent_ask(client, study_name, make_study):
    s = make_study(client, study_name)
    a = s.ask(2, request_id="ask-1", worker_id="w")
    b = s.ask(2, request_id="ask-1", worker_id="w")
    assert [t.id for t in a] == [t.id for t in b]
    assert len(s.trials()) == 2
    with pytest.raises(bc.Conflict):
        s.ask(3, request_id="ask-1", worker_id="w")


def test_ask_count_limits(client, study_name, make_study):
    s = make_study(client, study_name)
    with pytest.raises(bc.ResourceExhausted):
        s.ask(101)
    with pytest.raises(bc.InvalidArgument) as e:
        s.ask(-1)
    assert e.value.field == "count"
    with pytest.raises(bc.InvalidArgument) as e:
        s.ask(1, lease_seconds=-5)
    assert e.value.field == "lease_seconds"
    assert s.trials() == []


def test_bad_raw_requests(bbo_server, client, study_name, make_study):
    make_study(client, study_name)
    ch, stub = raw_stub(bbo_server.address)
    with ch:
        cases = [
            (
                stub.CreateStudy,
                svc.CreateStudyRequest(name=study_name + "-nospec"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.CreateStudy,
                svc.CreateStudyRequest(
                    name="p",
                    spec=pb.StudySpec(
                        parameters=[pb.ParameterSpec(name="x")], objectives=[pb.Objective(name="y")]
                    ),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (stub.Ask, svc.AskRequest(study=""), grpc.StatusCode.INVALID_ARGUMENT),
            (
                stub.Ask,
                svc.AskRequest(study=study_name, worker_id="w" * 1000),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.ListTrials,
                svc.ListTrialsRequest(study=study_name, page_token="garbage"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.ListTrials,
                svc.ListTrialsRequest(study=study_name, states=[99]),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.ListStudies,
                svc.ListStudiesRequest(page_token="x"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.ReportIntermediate,
                svc.ReportIntermediateRequest(study=study_name, trial_id=1, step=-1, value=1),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.Tell,
                svc.TellRequest(study=study_name, trial_id=1, state=pb.TRIAL_STATE_PENDING),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.AddTrial,
                svc.AddTrialRequest(study=study_name, parameters={"x": pb.ParameterValue()}),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for fn, req, code in cases:
            with pytest.raises(grpc.RpcError) as e:
                fn(req, timeout=10)
            assert e.value.code() == code, (req, e.value.details())
        # a request over the 4 MiB limit
        big = svc.AskRequest(study=study_name, worker_id="w" * (5 * 1024 * 1024))
        with pytest.raises(grpc.RpcError) as e:
            stub.Ask(big, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.study(study_name).trials() == []


@pytest.mark.parametrize(
    "raw",
    [
        '[1,"\\ud800"]',  # a lone surrogate: the database could not encode it (was INTERNAL)
        "[1" + "0" * 400 + ',"x"]',  # a time no float holds: OverflowError (was INTERNAL)
        "[" * 100_000,  # nested past the JSON parser's recursion limit
        '[NaN,"x"]',
        '[-Infinity,"x"]',
        '[1,"' + "x" * 129 + '"]',  # no study name is that long
    ],
)
def test_a_forged_study_page_token_is_invalid_argument(
    bbo_server, client, study_name, make_study, raw
):
    """A ListStudies token is base64 JSON ``[created_at, name]``: one the server never issues is
    INVALID_ARGUMENT naming page_token; a token it issued still pages on."""
    import base64

    make_study(client, study_name + "-a")
    make_study(client, study_name + "-b")
    ch, stub = raw_stub(bbo_server.address)
    with ch:
        token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        with pytest.raises(grpc.RpcError) as e:
            stub.ListStudies(svc.ListStudiesRequest(page_token=token), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert e.value.details().startswith("page_token"), e.value.details()
        first = stub.ListStudies(svc.ListStudiesRequest(page_size=1), timeout=30)
        assert first.next_page_token
        nxt = stub.ListStudies(
            svc.ListStudiesRequest(page_size=1, page_token=first.next_page_token), timeout=30
        )
        assert [s.name for s in nxt.studies] != [s.name for s in first.studies]


def test_a_state_filter_repeating_a_state_is_that_filter(
    bbo_server, client, study_name, make_study
):
    """ListTrials' states are a filter: one repeated a million times (2 MiB of request) was as
    many SQL parameters and answered INTERNAL; each distinct state now counts once."""
    s = make_study(client, study_name)
    done = s.add_trial({"x": 0.5, "k": "a"}, {"y": 1.0})
    s.ask(1)
    ch, stub = raw_stub(bbo_server.address)
    with ch:
        r = stub.ListTrials(
            svc.ListTrialsRequest(study=study_name, states=[pb.TRIAL_STATE_COMPLETED] * 1_000_000),
            timeout=30,
        )
        assert [t.id for t in r.trials] == [done.id]
        with pytest.raises(grpc.RpcError) as e:  # a bad one is still named by its first index
            stub.ListTrials(
                svc.ListTrialsRequest(
                    study=study_name, states=[pb.TRIAL_STATE_COMPLETED] * 1000 + [99, 99]
                ),
                timeout=30,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "states[1000]" in e.value.details()


# ---- concurrency ------------------------------------------------------------------------------------


def test_16_concurrent_workers_get_distinct_points(client, study_name):
    s = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1), bc.Float("z", 0, 1)],
        objectives="y",
        n_initial=8,
    )
    results: list = []
    errors: list = []
    barrier = threading.Barrier(16)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(2):
                got = s.ask(1, worker_id=f"w{i}")
                results.extend(got)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 32
    assert len({t.id for t in results}) == 32
    points = {(round(t.params["x"], 12), round(t.params["z"], 12)) for t in results}
    assert len(points) == 32, "two pending trials got the same point"
    stored = s.trials(["PENDING"])
    assert sorted(t.id for t in stored) == sorted(t.id for t in results)


def test_stale_worker_cannot_touch_a_study_recreated_under_its_name(client, study_name, make_study):
    """Delete and re-create a study while a worker holds trial 1 of the old one: its Tell, Heartbeat
    and intermediate report carry the old study's uid and are NOT_FOUND; the new trial 1 is untouched."""
    old = make_study(client, study_name)
    (stale,) = old.ask()
    assert stale.study_uid and stale.study_uid == old.info().uid
    old.delete()
    new = make_study(client, study_name)
    (fresh,) = new.ask()
    assert fresh.id == stale.id and fresh.study_uid != stale.study_uid
    for call in (
        lambda: new.tell(stale, {"y": 0.1}),
        lambda: new.heartbeat(stale),
        lambda: new.report_intermediate(stale, 0, 0.1),
    ):
        with pytest.raises(bc.NotFound, match="deleted since"):
            call()
    t = new.trial(fresh.id)
    assert t.state == "PENDING" and not t.metrics
    assert new.tell(fresh, {"y": 0.2}).trial.metrics == {"y": 0.2}


def test_a_trial_sent_to_another_live_study_is_refused_naming_its_own(
    client, study_name, make_study
):
    """A worker's trial of study A sent to study B (both live): NOT_FOUND naming A, not a claim
    that the study was deleted; B's trial of the same number is untouched."""
    a = make_study(client, study_name + "-a")
    b = make_study(client, study_name + "-b")
    (ta,) = a.ask()
    (tb,) = b.ask()
    assert ta.id == tb.id
    for call in (
        lambda: b.tell(ta, {"y": 0.1}),
        lambda: b.heartbeat(ta),
        lambda: b.report_intermediate(ta, 0, 0.1),
    ):
        with pytest.raises(bc.NotFound, match=f"belongs to study '{a.name}'") as e:
            call()
        assert "deleted" not in str(e.value)
    assert b.trial(tb.id).state == "PENDING" and a.trial(ta.id).state == "PENDING"


def test_a_trials_page_token_pages_only_the_listing_it_came_from(
    bbo_server, client, study_name, make_study
):
    """A ListTrials token was the last trial number, bare: accepted on another study, under
    another filter, or on a study deleted and created again under the name, it paged through
    their trials from that number. It is bound to its study's uid and filter now; elsewhere it is
    INVALID_ARGUMENT naming page_token, and it still pages on where it came from."""
    for name in (study_name, study_name + "-b"):
        s = make_study(client, name)
        for i in range(5):
            s.add_trial({"x": i / 10, "k": "a"}, {"y": float(i)})
    ch, stub = raw_stub(bbo_server.address)
    done = [pb.TRIAL_STATE_COMPLETED]
    with ch:
        first = stub.ListTrials(svc.ListTrialsRequest(study=study_name, page_size=2), timeout=30)
        token = first.next_page_token
        nxt = stub.ListTrials(
            svc.ListTrialsRequest(study=study_name, page_size=2, page_token=token), timeout=30
        )
        assert [t.id for t in [*first.trials, *nxt.trials]] == [1, 2, 3, 4]
        elsewhere = [
            svc.ListTrialsRequest(study=study_name + "-b", page_token=token),
            svc.ListTrialsRequest(study=study_name, states=done, page_token=token),
            svc.ListTrialsRequest(study=study_name, page_token="2"),  # a bare number
        ]
        client.delete_study(study_name)
        make_study(client, study_name).add_trial({"x": 0.5, "k": "b"}, {"y": 1.0})
        elsewhere.append(svc.ListTrialsRequest(study=study_name, page_token=token))
        for request in elsewhere:
            with pytest.raises(grpc.RpcError) as e:
                stub.ListTrials(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert e.value.details().startswith("page_token"), e.value.details()


def test_a_listing_racing_a_delete_leaves_the_deleted_study_out(tmp_path):
    """ListStudies read its page, then each study's info: a study deleted in between failed the
    whole listing NOT_FOUND (a client listing while another deleted, or retried a delete). It is
    left out, as the dashboard's list leaves it out."""
    srv = in_process_server(tmp_path / "l.db", strategy_factory=SobolStrategy)
    try:
        with bc.Client(srv.address) as c:
            for name in ("a", "b", "c", "d"):
                c.create_study(name, [bc.Float("x", 0, 1)], "y")
            listed, doomed = srv.registry.list_studies, ["b"]

            def then_one_is_deleted(*args, **kwargs):
                out = listed(*args, **kwargs)
                if doomed and any(s.name == doomed[0] for s in out[0]):
                    srv.registry.delete_study(doomed.pop())
                return out

            srv.registry.list_studies = then_one_is_deleted
            assert [s.name for s in c.list_studies(page_size=2)] == ["a", "c", "d"]
            doomed.append("c")
            assert [s.name for s in c.list_studies()] == ["a", "d"]
    finally:
        srv.stop()
