"""Per-tenant limits: studies, parameters, trials per ask, request size and request rate are refused
with RESOURCE_EXHAUSTED and a message naming the limit; other tenants are not affected."""

from __future__ import annotations

import time

import grpc
import pytest
from sec_helpers import call, create_key, request_for, small_spec, stub

from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import study_pb2 as pb


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    from bbo_server.process import ServerProcess

    d = tmp_path_factory.mktemp("limits")
    db = "sqlite:///" + str(d / "l.db")
    srv = ServerProcess(
        db,
        log_path=str(d / "server.log"),
        args=[
            "--auth",
            "--workers",
            "1",
            "--max-studies",
            "3",
            "--max-parameters",
            "4",
            "--max-ask",
            "5",
            "--max-message-bytes",
            "65536",
            "--max-choices",
            "5",
            "--max-linear-constraints",
            "2",
            "--max-objectives",
            "2",
            "--max-outcome-constraints",
            "2",
            "--max-tracked-metrics",
            "2",
            "--max-name-length",
            "20",
            "--max-description-bytes",
            "100",
            "--max-spec-bytes",
            "6000",
            "--max-metrics-per-trial",
            "4",
            "--max-steps-per-trial",
            "3",
            "--max-trials-per-study",
            "6",
        ],
    )
    srv.start()
    a, _ = create_key(db, "a")
    b, _ = create_key(db, "b")
    c, _ = create_key(db, "c")
    ch, st = stub(srv.address)
    yield {"srv": srv, "a": a, "b": b, "c": c, "stub": st, "db": db}
    ch.close()
    srv.stop()


def _details(st, rpc, req, key):
    try:
        getattr(st, rpc)(req, metadata=(("x-api-key", key),), timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None, ""


def _exhausted(st, rpc, req, key, flag: str, field: str) -> str:
    """Call ``rpc``, which must be refused RESOURCE_EXHAUSTED naming ``flag`` in its message and
    ``field`` in a BadRequest violation; returns the message."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        getattr(st, rpc)(req, metadata=(("x-api-key", key),), timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and flag in e.details(), e.details()
        br = error_details_pb2.BadRequest()
        assert rpc_status.from_call(e).details[0].Unpack(br), e.details()
        assert br.field_violations[0].field == field, br
        # the violation's description is the message without its field (a client shows both)
        assert not br.field_violations[0].description.startswith(f"{field}:"), br
        return e.details()
    raise AssertionError(f"{rpc} accepted")


def test_max_studies_per_tenant(limited):
    st, a, b = limited["stub"], limited["a"], limited["b"]
    for i in range(3):
        assert call(st, "CreateStudy", request_for("CreateStudy", f"s{i}"), a)[1] is None
    msg = _exhausted(
        st, "CreateStudy", request_for("CreateStudy", "s3"), a, "--max-studies", "name"
    )
    assert "3" in msg
    # reattaching to an existing study is not a new study
    r, code = call(st, "CreateStudy", request_for("CreateStudy", "s1"), a)
    assert code is None and not r.created
    # another tenant has its own allowance
    assert call(st, "CreateStudy", request_for("CreateStudy", "s3"), b)[1] is None
    # deleting frees a slot
    assert call(st, "DeleteStudy", request_for("DeleteStudy", "s0"), a)[1] is None
    assert call(st, "CreateStudy", request_for("CreateStudy", "s3"), a)[1] is None
    r, _ = call(st, "ListStudies", svc.ListStudiesRequest(), a)
    assert sorted(s.name for s in r.studies) == ["s1", "s2", "s3"]


def test_max_parameters(limited):
    st, b = limited["stub"], limited["b"]
    spec = pb.StudySpec(
        parameters=[
            pb.ParameterSpec(name=f"p{i}", float=pb.FloatParameter(low=0, high=1)) for i in range(5)
        ],
        objectives=[pb.Objective(name="y")],
    )
    code, msg = _details(st, "CreateStudy", svc.CreateStudyRequest(name="wide", spec=spec), b)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-parameters" in msg
    del spec.parameters[4]
    assert call(st, "CreateStudy", svc.CreateStudyRequest(name="wide", spec=spec), b)[1] is None


def _spec(n_choices=2, n_cons=0, n_obj=1, n_oc=0, n_tracked=0, name="x", desc="", fixed=None):
    spec = pb.StudySpec(
        parameters=[
            pb.ParameterSpec(name=name, float=pb.FloatParameter(low=0, high=1)),
            pb.ParameterSpec(
                name="c",
                categorical=pb.CategoricalParameter(choices=[f"c{i}" for i in range(n_choices)]),
            ),
        ],
        parameter_constraints=[
            pb.LinearConstraint(coefficients={name: 1.0}, bound=0.9 + i / 100)
            for i in range(n_cons)
        ],
        objectives=[pb.Objective(name=f"y{i}") for i in range(n_obj)],
        outcome_constraints=[pb.OutcomeConstraint(metric=f"m{i}", bound=1.0) for i in range(n_oc)],
        tracked_metrics=[f"t{i}" for i in range(n_tracked)],
        description=desc,
    )
    if fixed is not None:
        spec.parameters.add(
            name="f", fixed=pb.FixedParameter(value=pb.ParameterValue(category=fixed))
        )
    return spec


@pytest.mark.parametrize(
    "kw, flag, field",
    [
        (dict(n_choices=6), "--max-choices", "spec.parameters[1].choices"),
        (dict(n_cons=3), "--max-linear-constraints", "spec.parameter_constraints"),
        (dict(n_obj=3), "--max-objectives", "spec.objectives"),
        (dict(n_oc=3), "--max-outcome-constraints", "spec.outcome_constraints"),
        (dict(n_tracked=3), "--max-tracked-metrics", "spec.tracked_metrics"),
        (dict(name="p" * 21), "--max-name-length", "spec.parameters[0].name"),
        (dict(desc="é" * 51), "--max-description-bytes", "spec.description"),
        # a fixed string is stored with every trial: up to --max-spec-bytes (1 MiB) each, 90 GB
        # for a study of --max-trials-per-study trials
        (dict(fixed="f" * 21), "--max-name-length", "spec.parameters[2].value"),
    ],
)
def test_every_spec_bound_is_refused_naming_its_flag_and_stores_nothing(limited, kw, flag, field):
    """Just over a bound: RESOURCE_EXHAUSTED with the flag in the message and the field in a
    BadRequest violation; nothing is stored. At the bound: accepted."""
    st, b = limited["stub"], limited["c"]
    name = "over-" + flag.strip("-")[4:14]
    req = svc.CreateStudyRequest(name=name, spec=_spec(**kw))
    _exhausted(st, "CreateStudy", req, b, flag, field)
    assert call(st, "GetStudy", svc.GetStudyRequest(name=name), b)[1] == grpc.StatusCode.NOT_FOUND
    at = {k: (v - 1 if isinstance(v, int) else v[: len(v) - 1]) for k, v in kw.items()}
    r, code = call(st, "CreateStudy", svc.CreateStudyRequest(name=name, spec=_spec(**at)), b)
    assert code is None and r.created
    call(st, "DeleteStudy", svc.DeleteStudyRequest(name=name), b)


def test_request_limits_unit():
    """The spec's JSON size is bounded too, and a bound must be a positive integer."""
    from bbo.limits import LimitExceeded, RequestLimits

    lim = RequestLimits(max_spec_bytes=300)
    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0, "high": 1}],
        "objectives": [{"name": "y"}],
    }
    lim.check_spec(spec)
    with pytest.raises(LimitExceeded, match="--max-spec-bytes") as e:
        lim.check_spec({**spec, "description": "d" * 300})
    assert e.value.field == "spec"
    with pytest.raises(ValueError, match="--max-choices"):
        RequestLimits(max_choices=0)
    # asks of more objectives have no bound worth the name (6 and a 40-trial front: > 100 s)
    with pytest.raises(ValueError, match="--max-objectives can be at most 4"):
        RequestLimits(max_objectives=5)
    # Hyperband's bracket sizes eta^k overflowed a double past ~640 rungs at eta 3 (INTERNAL)
    with pytest.raises(ValueError, match="--max-rungs can be at most 100"):
        RequestLimits(max_rungs=1000)
    RequestLimits(max_rungs=100)


def test_the_points_a_gp_is_fit_on_are_bounded_by_the_server(registry):
    """A spec chose how many points its GP is fit and conditioned on, up to 100,000, and no server
    setting capped it: exact GP work grows with the cube (an ask on 1,500 points took 6.3 s where
    the subset took 1.2 s; 100,000 would be 75 GiB of kernel matrix). --max-model-points (10,000)
    bounds both; it cannot go below a study's default (3,000)."""
    from bbo.limits import LimitExceeded, RequestLimits

    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0, "high": 1}],
        "objectives": [{"name": "y"}],
    }
    for key in ("max_fit_points", "max_model_points"):
        big = {**spec, "algorithm": {"max_fit_points": 1000, key: 100_000}}
        with pytest.raises(LimitExceeded, match="--max-model-points") as e:
            registry.create_study(f"big-{key}", big)
        assert e.value.field == f"spec.algorithm.{key}"
        assert registry.storage.get_study("default", f"big-{key}") is None
    ok = {**spec, "algorithm": {"max_fit_points": 5000, "max_model_points": 10_000}}
    assert registry.create_study("at-the-bound", ok)[1]
    with pytest.raises(LimitExceeded, match="at most 3000"):
        RequestLimits(max_model_points=3000).check_spec(
            {**spec, "algorithm": {"max_model_points": 3001}}
        )
    with pytest.raises(ValueError, match="at least 3000"):
        RequestLimits(max_model_points=2999)


def test_metrics_per_trial_bound(limited):
    st, b = limited["stub"], limited["c"]
    call(st, "CreateStudy", svc.CreateStudyRequest(name="metrics", spec=small_spec()), b)
    (t,) = call(st, "Ask", svc.AskRequest(study="metrics"), b)[0].trials
    many = {k: pb.MetricValue(value=1.0) for k in ("y", "a", "b", "c", "d")}
    code, msg = _details(
        st, "Tell", svc.TellRequest(study="metrics", trial_id=t.id, metrics=many), b
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-metrics-per-trial" in msg
    del many["d"]
    assert (
        call(st, "Tell", svc.TellRequest(study="metrics", trial_id=t.id, metrics=many), b)[1]
        is None
    )


def test_intermediate_values_per_trial_bound(limited):
    """A trial stores at most --max-steps-per-trial steps: a new step past it is refused on `step`
    and stores nothing (every report used to add a row, and each report reads them all); a step
    already stored may still be reported again, and other trials have their own count."""

    st, b = limited["stub"], limited["c"]
    call(st, "CreateStudy", svc.CreateStudyRequest(name="steps", spec=small_spec()), b)
    t, u = call(st, "Ask", svc.AskRequest(study="steps", count=2), b)[0].trials

    def report(trial, step, value=1.0):
        req = svc.ReportIntermediateRequest(
            study="steps", trial_id=trial.id, step=step, value=value
        )
        return call(st, "ReportIntermediate", req, b)[1]

    assert [report(t, s) for s in (1, 2, 3)] == [None] * 3
    req = svc.ReportIntermediateRequest(study="steps", trial_id=t.id, step=4, value=1.0)
    msg = _exhausted(st, "ReportIntermediate", req, b, "--max-steps-per-trial", "step")
    assert "3 intermediate values" in msg
    assert report(t, 2, 0.5) is None  # a stored step may be replaced
    assert report(u, 4) is None  # another trial counts its own


def test_trials_per_study_bound(limited):
    """A study holds at most --max-trials-per-study trials, asked or added: an Ask or AddTrial
    past it is RESOURCE_EXHAUSTED on `study` and stores nothing (the count is checked in the
    insert's transaction); below it, asks go on."""

    st, c = limited["stub"], limited["c"]
    call(st, "CreateStudy", svc.CreateStudyRequest(name="full", spec=small_spec()), c)
    assert len(call(st, "Ask", svc.AskRequest(study="full", count=5), c)[0].trials) == 5
    req = svc.AskRequest(study="full", count=2)
    assert "5 trials" in _exhausted(st, "Ask", req, c, "--max-trials-per-study", "study")
    listed = call(st, "ListTrials", svc.ListTrialsRequest(study="full"), c)[0].trials
    assert len(listed) == 5  # nothing stored
    (sixth,) = call(st, "Ask", svc.AskRequest(study="full"), c)[0].trials
    assert sixth.id == 6  # the refused ask used up no trial number
    _exhausted(
        st, "AddTrial", request_for("AddTrial", "full"), c, "--max-trials-per-study", "study"
    )
    assert len(call(st, "ListTrials", svc.ListTrialsRequest(study="full"), c)[0].trials) == 6


def test_max_ask_and_message_size(limited):
    st, b = limited["stub"], limited["b"]
    call(st, "CreateStudy", svc.CreateStudyRequest(name="asks", spec=small_spec()), b)
    msg = _exhausted(st, "Ask", svc.AskRequest(study="asks", count=6), b, "--max-ask", "count")
    assert "5" in msg
    r, code = call(st, "Ask", svc.AskRequest(study="asks", count=5), b)
    assert code is None and len(r.trials) == 5
    big = svc.TellRequest(
        study="asks",
        trial_id=r.trials[0].id,
        reason="x" * 70000,
        metrics={"y": pb.MetricValue(value=1.0)},
    )
    assert call(st, "Tell", big, b)[1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    r2, _ = call(st, "GetTrial", svc.GetTrialRequest(study="asks", trial_id=r.trials[0].id), b)
    assert r2.state == pb.TRIAL_STATE_PENDING  # the refused tell changed nothing


def test_rate_limit_is_per_tenant(server_factory, tmp_path):
    db = "sqlite:///" + str(tmp_path / "rate.db")
    srv = server_factory(
        db=db, args=["--auth", "--workers", "1", "--rate-limit", "1", "--rate-burst", "5"]
    )
    a, _ = create_key(db, "a")
    b, _ = create_key(db, "b")
    ch, st = stub(srv.address)
    with ch:
        codes = [call(st, "ListStudies", svc.ListStudiesRequest(), a)[1] for _ in range(40)]
        refused = [c for c in codes if c is not None]
        assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert 5 <= codes.count(None) < 40  # the burst went through, then the bucket ran dry
        code, msg = _details(st, "ListStudies", svc.ListStudiesRequest(), a)
        if code is not None:
            assert "--rate-limit" in msg
        assert (
            call(st, "ListStudies", svc.ListStudiesRequest(), b)[1] is None
        )  # b has its own bucket


def test_heartbeats_are_exempt_from_the_rate_but_bounded_per_trial(server_factory, tmp_path):
    db = "sqlite:///" + str(tmp_path / "beat.db")
    srv = server_factory(
        db=db,
        args=[
            "--auth",
            "--workers",
            "1",
            "--rate-limit",
            "1",
            "--rate-burst",
            "3",
            # a token per 100 s: none comes back while the test runs (at 1/s one did once its 20
            # heartbeats took 1 s, and the refusal asserted after them went through)
            "--trial-rate",
            "0.01",
            "--trial-burst",
            "5",
        ],
    )
    a, _ = create_key(db, "a")
    ch, st = stub(srv.address)
    with ch:
        call(st, "CreateStudy", svc.CreateStudyRequest(name="s", spec=small_spec()), a)
        (t1, t2) = call(st, "Ask", svc.AskRequest(study="s", count=2), a)[0].trials
        codes = [
            call(st, "Heartbeat", svc.HeartbeatRequest(study="s", trial_id=t1.id), a)[1]
            for _ in range(20)
        ]
        assert codes[:5] == [None] * 5  # more than the tenant's burst of 3: exempt from the rate
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]  # but not unbounded
        code, msg = _details(st, "Heartbeat", svc.HeartbeatRequest(study="s", trial_id=t1.id), a)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--trial-rate" in msg
        # another trial has its own bucket, and its Tell goes through
        told = svc.TellRequest(study="s", trial_id=t2.id, metrics={"y": pb.MetricValue(value=1.0)})
        assert call(st, "Tell", told, a)[1] is None


def test_tells_naming_missing_trials_are_held_to_the_tenants_rate(server_factory, tmp_path):
    """Each (study, trial) a Tell or Heartbeat names gets its own bucket: naming a new trial id,
    or a new study name, on every call went around the rate. Calls that end NOT_FOUND take from
    a bucket of the tenant's; once it is empty its Tells are refused (and retried: a real one
    passes once the bucket refills); another tenant's are not."""
    db = "sqlite:///" + str(tmp_path / "miss.db")
    args = ["--auth", "--workers", "1", "--rate-limit", "1", "--rate-burst", "2"]
    srv = server_factory(db=db, args=args + ["--trial-rate", "1", "--trial-burst", "5"])
    a, _ = create_key(db, "a")
    b, _ = create_key(db, "b")
    ch, st = stub(srv.address)
    with ch:
        for key in (a, b):
            call(st, "CreateStudy", svc.CreateStudyRequest(name="s", spec=small_spec()), key)
        (t,) = call(st, "Ask", svc.AskRequest(study="s", count=1), a)[0].trials
        (u,) = call(st, "Ask", svc.AskRequest(study="s", count=1), b)[0].trials
        value = {"y": pb.MetricValue(value=1.0)}
        codes = [
            call(st, "Tell", svc.TellRequest(study="s", trial_id=1000 + i, metrics=value), a)[1]
            for i in range(10)
        ] + [
            call(st, "Heartbeat", svc.HeartbeatRequest(study=f"nope{i}", trial_id=1), a)[1]
            for i in range(10)
        ]
        assert codes[:2] == [grpc.StatusCode.NOT_FOUND] * 2
        assert codes.count(grpc.StatusCode.NOT_FOUND) <= 6, codes
        code, msg = _details(
            st, "Tell", svc.TellRequest(study="s", trial_id=t.id, metrics=value), a
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "missing" in msg, msg
        told = svc.TellRequest(study="s", trial_id=u.id, metrics=value)
        assert call(st, "Tell", told, b)[1] is None  # b's misses are its own
        time.sleep(1.5)
        assert (
            call(st, "Tell", svc.TellRequest(study="s", trial_id=t.id, metrics=value), a)[1] is None
        )


def test_refused_tells_naming_new_trials_are_held_to_the_tenants_rate(server_factory, tmp_path):
    """A Tell or Heartbeat refused as invalid (INVALID_ARGUMENT: a Tell without metrics, a bad
    state, a lease over 7 days) finished no work either: each named a new trial id, so a fresh
    per-trial bucket, and only NOT_FOUND charged the tenant's bucket of misses, so such calls went
    through at any rate. They take from it as NOT_FOUND ones do."""
    db = "sqlite:///" + str(tmp_path / "invalid.db")
    args = ["--auth", "--workers", "1", "--rate-limit", "1", "--rate-burst", "2"]
    srv = server_factory(db=db, args=args)
    a, _ = create_key(db, "a")
    ch, st = stub(srv.address)
    with ch:
        call(st, "CreateStudy", svc.CreateStudyRequest(name="s", spec=small_spec()), a)
        time.sleep(2.5)  # the tenant's bucket refills after the create
        requests = [svc.TellRequest(study="s", trial_id=1000 + i) for i in range(10)]
        requests += [svc.TellRequest(study="s", trial_id=2000 + i, state=99) for i in range(10)]
        requests += [
            svc.HeartbeatRequest(study="s", trial_id=3000 + i, lease_seconds=10**9)
            for i in range(10)
        ]
        codes = [call(st, type(r).__name__[: -len("Request")], r, a)[1] for r in requests]
        assert codes[0] == grpc.StatusCode.INVALID_ARGUMENT  # the first says what to fix
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 20, codes


def test_fit_slots_serve_tenants_in_turn():
    """A tenant that queued many jobs does not keep another tenant's job waiting behind them all."""
    import threading

    from bbo.fit_slots import FitSlots

    slots = FitSlots(1)
    order: list[str] = []
    gate = threading.Event()
    first = threading.Thread(target=slots.run, args=(lambda: gate.wait(10), "a"))
    first.start()
    while not slots.queued() == {} and first.is_alive():
        pass
    threads = [
        threading.Thread(target=slots.run, args=(lambda i=i: order.append(f"a{i}"), "a"))
        for i in range(5)
    ]
    for t in threads:
        t.start()
    while sum(slots.queued().values()) < 5:
        threading.Event().wait(0.001)
    b = threading.Thread(target=slots.run, args=(lambda: order.append("b"), "b"))
    b.start()
    while sum(slots.queued().values()) < 6:
        threading.Event().wait(0.001)
    gate.set()
    for t in [first, b, *threads]:
        t.join(10)
    assert order.index("b") <= 1, order  # b's job ran after at most one more of a's
    slots.close()


def test_token_bucket_unit():
    from bbo_server.limits import TokenBucket

    now = [0.0]
    b = TokenBucket(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert b.take() and not b.take()
    now[0] += 100
    assert sum(b.take() for _ in range(10)) == 3  # never above the burst


def test_negative_limits_refused(tmp_path):
    from bbo_server.process import ServerProcess

    srv = ServerProcess(
        "sqlite:///" + str(tmp_path / "n.db"),
        args=["--rate-limit", "-1"],
        log_path=str(tmp_path / "n.log"),
    )
    with pytest.raises(RuntimeError) as e:
        srv.start(timeout=60)
    assert "--rate-limit" in str(e.value)


def test_a_study_list_page_reads_no_more_specs_than_it_can_send(registry):
    """A ListStudies page ends at page_size studies or about PAGE_BYTES of them: it read page_size
    (up to 1,000) whole records first, each with a spec of up to --max-spec-bytes, so one call over
    a tenant's large studies read up to a GiB to send 2 MiB. Now it reads the records a few at a
    time and stops past PAGE_BYTES; paging still returns every study once, in order."""
    choices = [f"{'v' * 120}{k:04d}" for k in range(1000)]  # 125 KiB a parameter
    spec = {
        "parameters": [
            {"type": "categorical", "name": f"c{j}", "choices": choices} for j in range(4)
        ],
        "objectives": [{"name": "y", "goal": "minimize"}],
    }
    n = 40  # 20 MiB of specs
    names = [f"big-{i:02d}" for i in range(n)]
    for name in names:
        registry.create_study(name, spec)

    read = []
    real = registry.storage.list_studies

    def counting(*a, **kw):
        recs = real(*a, **kw)
        read.extend(recs)
        return recs

    registry.storage.list_studies = counting
    seen, token = [], ""
    while True:
        read.clear()
        page, token = registry.list_studies(page_size=1000, page_token=token)
        assert 0 < len(page) < n and len(read) <= len(page) + 16  # READ_CHUNK
        seen += [s.name for s in page]
        if not token:
            break
    assert seen == names


def test_list_pages_read_no_more_than_they_can_send(registry):
    """ListTrials and ListLlmCalls read page_size + 1 whole records before cutting the page at
    PAGE_BYTES: an LLM call holds up to a 1 MiB answer (1,001 of them: a GiB read for a 2 MiB
    page), a trial up to a 4,000-character reason and hundreds of metrics. They now read as the
    page fills; paging still returns everything once, in order."""
    from bbo.storage import LlmCallRecord, NewTrial
    from bbo.trial import TrialState
    from bbo_server.servicer import BboServicer

    study, _ = registry.create_study(
        "paged",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "y", "goal": "minimize"}],
        },
    )
    n_trials, n_calls = 3000, 30
    registry.storage.insert_trials(
        study.uid,
        [
            NewTrial({"x": 0.5}, "user", TrialState.FAILED, reason="r" * 4000)
            for _ in range(n_trials)
        ],
    )
    for _ in range(n_calls):
        study.log_llm_call(LlmCallRecord("warmstart", "m", "p", "a" * 900_000, "ok"))

    counted: dict[str, int] = {"trials": 0, "calls": 0}
    real_trials, real_calls = registry.storage.list_trials, registry.storage.list_llm_calls

    def trials(*a, **kw):
        out = real_trials(*a, **kw)
        counted["trials"] += len(out)
        return out

    def calls(*a, **kw):
        out = real_calls(*a, **kw)
        counted["calls"] += len(out)
        return out

    registry.storage.list_trials, registry.storage.list_llm_calls = trials, calls
    servicer = BboServicer(registry)

    def pages(rpc, request, field, what, cursor, slack):
        seen, token = [], ""
        while True:
            counted[what] = 0
            request.page_token = token
            r = getattr(servicer, rpc)(request, None)
            got = list(getattr(r, field))
            assert got and counted[what] <= len(got) + slack, (rpc, len(got), counted[what])
            seen += [cursor(x) for x in got]
            token = r.next_page_token
            if not token:
                return seen

    req = svc.ListTrialsRequest(study="paged", page_size=10000)
    assert pages("ListTrials", req, "trials", "trials", lambda t: t.id, 513) == list(
        range(1, n_trials + 1)
    )
    req2 = svc.ListLlmCallsRequest(study="paged", page_size=1000)
    got = pages("ListLlmCalls", req2, "calls", "calls", lambda c: len(c.response), 17)
    assert got == [900_000] * n_calls


def test_get_best_fits_one_response_whatever_the_front(registry):
    """GetBest sent the whole Pareto front: a front of large trials passed a client's 4 MiB
    receive limit and the call failed for good. Its trials now end past about PAGE_BYTES, the
    first by id, and best_count says how many the front has."""
    from bbo.paging import PAGE_BYTES
    from bbo.storage import NewTrial
    from bbo.trial import Metric, TrialState
    from bbo_server.servicer import BboServicer

    study, _ = registry.create_study(
        "front",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "a", "goal": "minimize"}, {"name": "b", "goal": "minimize"}],
        },
    )
    n = 1000  # every trial on the front, each with a 4,000-character reason: 4 MB in all
    registry.storage.insert_trials(
        study.uid,
        [
            NewTrial(
                {"x": i / n},
                "user",
                TrialState.COMPLETED,
                {"a": Metric(float(i)), "b": Metric(float(n - i))},
                reason="r" * 4000,
            )
            for i in range(n)
        ],
    )
    r = BboServicer(registry).GetBest(svc.GetBestRequest(study="front"), None)
    assert r.best_count == n
    assert 0 < len(r.trials) < n and r.ByteSize() <= PAGE_BYTES + 10_000
    assert [t.id for t in r.trials] == list(range(1, len(r.trials) + 1))  # the first by id


def test_tells_naming_no_possible_study_keep_no_trial_bucket():
    """Tell and Heartbeat are exempt from the tenant's rate and get a bucket per (study, trial),
    kept up to MAX_TRIAL_BUCKETS: keyed by whatever study name a request sent, 100,000 of them kept
    100,000 names of up to --max-message-bytes (1 MiB each retained 50 MiB for 50 tells here). A
    name over 128 characters is no study's (NOT_FOUND past the gate): the tenant's rate holds."""
    import tracemalloc
    from types import SimpleNamespace

    from bbo.errors import LimitError
    from bbo_server.limits import LimitChecker, Limits

    checker = LimitChecker(Limits(rate=1000, burst=1000))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50):
            req = SimpleNamespace(study="s" * 1_000_000 + str(i), trial_id=1)
            checker.check("t", "Tell" if i % 2 else "Heartbeat", req)
        del req
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, kept
    slow = LimitChecker(Limits(rate=0.1, burst=2))
    long_name = SimpleNamespace(study="s" * 200, trial_id=1)
    slow.check("t", "Tell", long_name)
    slow.check("t", "Tell", long_name)
    with pytest.raises(LimitError, match="--rate-limit"):
        slow.check("t", "Tell", long_name)
    for _ in range(5):  # a real name keeps its own bucket (the tenant's is spent)
        slow.check("t", "Tell", SimpleNamespace(study="s" * 128, trial_id=1))


def test_a_full_disk_at_create_keeps_its_retry_delay(registry, monkeypatch):
    """The registry rewrote every LimitError of a create as a --max-studies refusal: a disk full
    (StorageFull, 5 s RetryInfo) lost its delay and named the wrong flag."""
    from bbo.errors import StorageFull

    def full(*a, **kw):
        raise StorageFull("database or disk is full: free space, then retry")

    monkeypatch.setattr(registry.storage, "create_study", full)
    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0, "high": 1}],
        "objectives": [{"name": "y"}],
    }
    with pytest.raises(StorageFull) as e:
        registry.create_study("disk-full", spec)
    assert e.value.retry_after == 5.0 and "--max-studies" not in e.value.message


def test_a_stored_study_over_the_caps_is_readable_and_its_ask_refused(server_factory, tmp_path):
    """A database from an older server, whose --max-objectives and --max-rungs had no cap, holds a
    6-objective study and a Hyperband study of 1,000 rungs. Their asks were answered (the first
    in unbounded time: over 100 s at a 40-trial front; the second failed INTERNAL, eta^k
    overflowing); now FAILED_PRECONDITION saying why, while reads, tells, adds and deletes go on."""
    from unittest import mock

    import bbo_client as bc
    from bbo.limits import RequestLimits
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage

    url = "sqlite:///" + str(tmp_path / "old.db")
    x = [{"type": "float", "name": "x", "low": 0, "high": 1}]
    six = [{"name": f"o{i}"} for i in range(6)]
    hyper = {
        "parameters": x,
        "objectives": [{"name": "y"}],
        "fidelity": {"name": "epochs", "min": 1e-300, "max": 1e300},
        "pruning": {"policy": "hyperband"},
    }
    storage = open_storage(url)
    with mock.patch.object(RequestLimits, "check_spec", lambda self, d: None):
        reg = StudyRegistry(storage)
        moo, _ = reg.create_study("six", {"parameters": x, "objectives": six})
        reg.create_study("hyper", hyper)
    moo.add_trial({"x": 0.5}, {f"o{i}": float(i) for i in range(6)})
    storage.close()
    srv = server_factory(db=url, args=["--workers", "1"])
    with bc.Client(srv.address, retries=0) as c:
        for name, why in (("six", "6 objectives"), ("hyper", "spans 1000 rungs")):
            s = c.study(name)
            with pytest.raises(bc.BboError, match=why) as e:
                s.ask()
            assert e.value.code.name == "FAILED_PRECONDITION"
            assert len(s.trials()) == (0 if name == "hyper" else 1)
        s = c.study("six")
        assert [t.id for t in s.best().trials] == [1]
        assert s.add_trial({"x": 0.25}, {f"o{i}": -1.0 for i in range(6)}).id == 2
        assert c.delete_study("six") and c.delete_study("hyper")
