"""Per-tenant limits: studies, parameters, trials per ask, request size and request rate are refused
with RESOURCE_EXHAUSTED and a message naming the limit; other tenants are not affected."""

from __future__ import annotations

import grpc
import pytest

from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import study_pb2 as pb
from sec_helpers import call, create_key, request_for, small_spec, stub


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
        ],
    )
    srv.start()
    a, _ = create_key(db, "a")
    b, _ = create_key(db, "b")
    ch, st = stub(srv.address)
    yield {"srv": srv, "a": a, "b": b, "stub": st, "db": db}
    ch.close()
    srv.stop()


def _details(st, rpc, req, key):
    try:
        getattr(st, rpc)(req, metadata=(("x-api-key", key),), timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None, ""


def test_max_studies_per_tenant(limited):
    st, a, b = limited["stub"], limited["a"], limited["b"]
    for i in range(3):
        assert call(st, "CreateStudy", request_for("CreateStudy", f"s{i}"), a)[1] is None
    code, msg = _details(st, "CreateStudy", request_for("CreateStudy", "s3"), a)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-studies" in msg and "3" in msg
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


def test_max_ask_and_message_size(limited):
    st, b = limited["stub"], limited["b"]
    call(st, "CreateStudy", svc.CreateStudyRequest(name="asks", spec=small_spec()), b)
    code, msg = _details(st, "Ask", svc.AskRequest(study="asks", count=6), b)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "5" in msg
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
