"""Tenants, API keys and TLS against a real server: every RPC without a key, with a revoked or
garbage key, and with another tenant's key is refused with the right code."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import pytest
from sec_helpers import (
    RPCS,
    call,
    create_key,
    make_certs,
    mtls_server,
    request_for,
    revoke_key,
    stub,
)

import bbo_client as bc
from bbo_client.v1 import service_pb2 as svc

STUDY_RPCS = [r for r in RPCS if r not in ("CreateStudy", "ListStudies")]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    from bbo_server.process import ServerProcess

    d = tmp_path_factory.mktemp("auth")
    db = "sqlite:///" + str(d / "auth.db")
    srv = ServerProcess(db, log_path=str(d / "server.log"), args=["--auth", "--workers", "1"])
    srv.start()
    key_a, _ = create_key(db, "acme")
    key_b, _ = create_key(db, "globex")
    revoked, rid = create_key(db, "acme")
    assert revoke_key(db, rid)
    ch, st = stub(srv.address)
    # tenant A: a study with one completed trial (1) and one pending trial (2)
    assert call(st, "CreateStudy", request_for("CreateStudy", "secret"), key_a)[1] is None
    assert call(st, "AddTrial", request_for("AddTrial", "secret"), key_a)[1] is None
    assert call(st, "Ask", request_for("Ask", "secret"), key_a)[1] is None
    yield {"srv": srv, "db": db, "a": key_a, "b": key_b, "revoked": revoked, "stub": st}
    ch.close()
    srv.stop()


def _snapshot(st, key):
    trials, code = call(st, "ListTrials", request_for("ListTrials", "secret"), key)
    assert code is None
    return [
        (t.id, t.state, dict((k, v.value) for k, v in t.metrics.items())) for t in trials.trials
    ]


@pytest.mark.parametrize("rpc", RPCS)
def test_every_rpc_refuses_missing_garbage_and_revoked_keys(auth_server, rpc):
    st = auth_server["stub"]
    before = _snapshot(st, auth_server["a"])
    for key, header in [
        (None, "x-api-key"),
        ("", "x-api-key"),
        ("not-a-key", "x-api-key"),
        ("bbo_000000000000_" + "A" * 43, "x-api-key"),
        (auth_server["revoked"], "x-api-key"),
        (auth_server["revoked"], "authorization"),
        (auth_server["a"][:-1] + ("B" if auth_server["a"][-1] != "B" else "C"), "authorization"),
    ]:
        _, code = call(st, rpc, request_for(rpc, "secret", trial_id=2), key, header)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc, key, header, code)
    # a raw "authorization: Basic ..." is a wrong key, not a missing one: refused the same way
    try:
        getattr(st, rpc)(
            request_for(rpc, "secret", 2),
            metadata=(("authorization", "Basic Zm9vOmJhcg=="),),
            timeout=30,
        )
        raise AssertionError("accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _snapshot(st, auth_server["a"]) == before


@pytest.mark.parametrize("rpc", STUDY_RPCS)
def test_other_tenants_study_is_not_found(auth_server, rpc):
    st = auth_server["stub"]
    before = _snapshot(st, auth_server["a"])
    for header in ("x-api-key", "authorization"):
        _, code = call(st, rpc, request_for(rpc, "secret", trial_id=2), auth_server["b"], header)
        assert code == grpc.StatusCode.NOT_FOUND, (rpc, header, code)
    assert _snapshot(st, auth_server["a"]) == before
    # the owner still reaches it (read-only calls; the mutating ones are covered above by the snapshot)
    if rpc in ("GetStudy", "GetTrial", "ListTrials", "GetBest", "ListLlmCalls"):
        assert call(st, rpc, request_for(rpc, "secret", trial_id=2), auth_server["a"])[1] is None


@pytest.mark.parametrize("rpc", RPCS)
def test_request_bytes_that_do_not_parse_are_invalid_argument_after_auth(auth_server, rpc):
    """A request whose bytes are not its message (a string field that is not UTF-8, a field cut
    short) was INTERNAL "Exception deserializing request!" with an error-level traceback in the
    log, for anyone, key or not. Now: UNAUTHENTICATED without a key, else INVALID_ARGUMENT naming
    the request, nothing changed and nothing logged as an error."""
    st = auth_server["stub"]
    srv = auth_server["srv"]
    ch = grpc.insecure_channel(srv.address)
    method = ch.unary_unary(
        f"/bbo.v1.BboService/{rpc}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    string_tag = b"\x12" if rpc == "ListStudies" else b"\x0a"  # its first string field
    before = _snapshot(st, auth_server["a"])
    errors_before = srv.log_tail(10_000_000).count('"level": "error"')
    with ch:
        for body in (string_tag + b"\x02\xff\xfe", string_tag + b"\x05ab"):
            for key, code in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                (auth_server["a"], grpc.StatusCode.INVALID_ARGUMENT),
            ):
                md = () if key is None else (("x-api-key", key),)
                with pytest.raises(grpc.RpcError) as e:
                    method(body, metadata=md, timeout=30)
                assert e.value.code() == code, (rpc, body, e.value.code(), e.value.details())
                if key is not None:
                    assert e.value.details().startswith("request: ")
                    assert "not a valid bbo.v1." in e.value.details()
    assert _snapshot(st, auth_server["a"]) == before
    assert srv.log_tail(10_000_000).count('"level": "error"') == errors_before


def test_tenants_have_separate_namespaces(auth_server):
    st = auth_server["stub"]
    r, code = call(st, "ListStudies", request_for("ListStudies", ""), auth_server["b"])
    assert code is None and "secret" not in [s.name for s in r.studies]
    # the same name under another tenant is another study
    r, code = call(st, "CreateStudy", request_for("CreateStudy", "secret"), auth_server["b"])
    assert code is None and r.created and r.study.trial_count == 0
    r, _ = call(st, "GetStudy", request_for("GetStudy", "secret"), auth_server["a"])
    assert r.trial_count == 2
    r, _ = call(st, "ListStudies", request_for("ListStudies", ""), auth_server["a"])
    assert [s.name for s in r.studies] == ["secret"]


def test_python_client_with_key_and_env(auth_server, monkeypatch):
    addr = auth_server["srv"].address
    with bc.Client(addr, api_key=auth_server["a"], retries=0) as c:
        assert c.get_study("secret").trial_count >= 2
        c.create_study("only-a", parameters=[bc.Float("x", 0, 1)], objectives="y")
    monkeypatch.setenv("BBO_API_KEY", auth_server["b"])
    with bc.Client(addr, retries=0) as c:
        with pytest.raises(bc.NotFound):
            c.study("only-a")
    monkeypatch.delenv("BBO_API_KEY")
    with bc.Client(addr, retries=0) as c:
        with pytest.raises(bc.Unauthenticated):
            c.list_studies()
    # a key read from a file keeps its newline: it is stripped (before: a bare "Invalid metadata" error)
    monkeypatch.setenv("BBO_API_KEY", auth_server["a"] + "\n")
    with bc.Client(addr, retries=0) as c:
        assert c.get_study("secret").trial_count >= 2
    with pytest.raises(ValueError, match="api_key"):
        bc.Client(addr, api_key=auth_server["a"][:10] + "\n" + auth_server["a"][10:])


def test_health_and_reflection_stay_open(auth_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(auth_server["srv"].address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        resp = next(
            iter(
                reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        )
        assert "bbo.v1.BboService" in [s.name for s in resp.list_services_response.service]


def test_calls_that_never_send_their_request_hold_no_other_tenants_threads(auth_server):
    """gRPC reads a unary call's request on a handler thread before any interceptor runs: 64 calls
    without a key that never sent their request (or reflection streams left open) held every
    handler thread, and every tenant's calls timed out. Now a call without a key is refused before
    its request is read, reflection has threads of its own, and one tenant's calls waiting for
    their request are bounded by --max-tenant-rpcs (half the 64 threads), so another's still run."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    addr, st = auth_server["srv"].address, auth_server["stub"]
    stop = threading.Event()

    def nothing():
        stop.wait()
        yield from ()

    raw = lambda b: b  # noqa: E731
    held = []
    with grpc.insecure_channel(addr) as evil:
        get = evil.stream_unary("/bbo.v1.BboService/GetStudy", raw, raw)
        refl = reflection_pb2_grpc.ServerReflectionStub(evil).ServerReflectionInfo
        try:
            held += [get.future(nothing()) for _ in range(70)]
            held += [refl(nothing()) for _ in range(8)]
            keyed = [
                get.future(nothing(), metadata=(("x-api-key", auth_server["a"]),))
                for _ in range(40)
            ]
            held += keyed
            # until the server has answered the calls it refuses (a fixed 1 s sleep left a loaded
            # machine 1 s to get 118 calls and refuse 78), then a moment for any more refusals
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                all(f.done() for f in held[:70]) and sum(f.done() for f in keyed) >= 40 - 32
            ):
                time.sleep(0.02)
            time.sleep(0.5)
            # without a key: refused at once, no thread held
            assert all(f.done() and f.code() == grpc.StatusCode.UNAUTHENTICATED for f in held[:70])
            refused = [f for f in keyed if f.done()]
            assert len(refused) == 40 - 32
            assert all(f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for f in refused)
            assert "waiting for their request" in refused[0].details()
            # the other tenant's calls still run, on the threads left
            st.ListStudies(
                svc.ListStudiesRequest(), metadata=(("x-api-key", auth_server["b"]),), timeout=10
            )
        finally:
            stop.set()
            for f in held:
                f.cancel()


def test_keys_command(tmp_path):
    db = "sqlite:///" + str(tmp_path / "k.db")
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "bbo_server", "keys", *a, "--db", db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    r = run("create", "--tenant", "acme", "--label", "ci", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["tenant"] == "acme" and made["key"].startswith("bbo_" + made["key_id"])
    r = run("list", "--json")
    listed = json.loads(r.stdout)
    assert [(k["key_id"], k["tenant"], k["revoked_at"]) for k in listed] == [
        (made["key_id"], "acme", None)
    ]
    assert made["key"] not in r.stdout  # the secret is never shown again
    r = run("list")
    assert made["key_id"] in r.stdout and "active" in r.stdout and made["key"] not in r.stdout
    r = run("revoke", made["key_id"])
    assert r.returncode == 0 and "revoked" in r.stdout
    assert run("revoke", made["key_id"]).returncode == 1
    assert json.loads(run("list", "--json").stdout)[0]["revoked_at"] is not None
    assert run("create", "--tenant", "bad tenant!").returncode == 2
    # the database keeps only a hash
    from bbo.storage import open_storage
    from bbo.storage import schema as S

    s = open_storage(db)
    with s.engine.connect() as c:
        rows = c.execute(S.api_keys.select()).mappings().all()
    s.close()
    assert made["key"] not in json.dumps([dict(r) for r in rows], default=str)


def test_no_auth_refused_on_a_public_address_and_auth_is_the_default_there(
    server_factory, tmp_path
):
    from bbo_server.process import ServerProcess

    srv = ServerProcess(
        "sqlite:///" + str(tmp_path / "p.db"),
        host="0.0.0.0",
        args=["--no-auth"],
        log_path=str(tmp_path / "p.log"),
    )
    with pytest.raises(RuntimeError) as e:
        srv.start(timeout=60)
    assert "refusing --no-auth" in str(e.value)
    srv = server_factory(host="0.0.0.0", args=["--workers", "1"])  # no flag: auth on by default
    ch, st = stub(f"127.0.0.1:{srv.port}")
    with ch:
        assert (
            call(st, "ListStudies", svc.ListStudiesRequest())[1] == grpc.StatusCode.UNAUTHENTICATED
        )
    assert "authentication on" in srv.log_tail()


def test_loopback_without_flags_is_open(bbo_server):
    ch, st = stub(bbo_server.address)
    with ch:
        assert call(st, "ListStudies", svc.ListStudiesRequest())[1] is None


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_and_mutual_tls(server_factory, certs):
    creds = grpc.ssl_channel_credentials(open(certs["ca"], "rb").read())
    srv = server_factory(
        args=[
            "--tls-cert",
            certs["server_cert"],
            "--tls-key",
            certs["server_key"],
            "--workers",
            "1",
        ],
        credentials=creds,
    )
    with bc.Client(srv.address, tls_ca=certs["ca"], retries=0) as c:
        s = c.create_study("tls", parameters=[bc.Float("x", 0, 1)], objectives="y")
        (t,) = s.ask()
        assert s.tell(t, {"y": 1.0}).trial.state == "COMPLETED"
    with bc.Client(srv.address, retries=0, timeout=5) as c:  # plaintext to a TLS port
        with pytest.raises(bc.Unavailable):
            c.list_studies()
    srv.stop()

    srv = mtls_server(server_factory, certs)
    with bc.Client(
        srv.address,
        tls_ca=certs["ca"],
        tls_cert=certs["client_cert"],
        tls_key=certs["client_key"],
        retries=0,
    ) as c:
        assert c.list_studies() == []
    with bc.Client(
        srv.address, tls_ca=certs["ca"], retries=0, timeout=5
    ) as c:  # no client certificate
        with pytest.raises(bc.Unavailable):
            c.list_studies()


def test_log_lines_stay_bounded_and_show_no_api_key():
    """A request naming 4 MiB of control characters wrote 25 MB of escaped JSON into the log,
    unauthenticated; a key with a stray byte grpc could not decode was logged whole by grpc's own
    logger. Names are cut past any study's length, and a key in any field keeps its public id."""
    import io
    import logging
    from types import SimpleNamespace

    from bbo_server import logs

    ids = logs.request_ids(SimpleNamespace(name="\x01" * 4_000_000, trial_id=3))
    assert len(ids["study"]) < 200 and "4000000 characters" in ids["study"]
    assert logs.request_ids(SimpleNamespace(study="s", trial_id=1)) == {"study": "s", "trial": 1}
    key = "bbo_0123456789ab_" + "A" * 43
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("grpc._cython.cygrpc.test")
    log.addHandler(handler)
    try:
        try:
            raise ValueError(f"Invalid encoding on b'Bearer {key}\\xa0'")
        except ValueError:
            log.error("Invalid encoding on %r", f"Bearer {key}", exc_info=True, extra={"k": key})
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "A" * 43 not in text and text.count("bbo_0123456789ab_***") >= 3, text


def test_a_call_whose_request_comes_after_its_key_was_revoked_is_refused(auth_server):
    """The tenant is known from the call's metadata before its request is read; a call opened
    with a valid key whose request came after the key was revoked ran as the key's tenant (a
    DeleteStudy sent hours later deleted the study). Its key is checked again."""
    db, st = auth_server["db"], auth_server["stub"]
    key, key_id = create_key(db, "acme")
    assert call(st, "CreateStudy", request_for("CreateStudy", "armed"), key)[1] is None
    release = threading.Event()

    def later():
        release.wait()
        yield svc.DeleteStudyRequest(name="armed")

    with grpc.insecure_channel(auth_server["srv"].address) as ch:
        armed = ch.stream_unary(
            "/bbo.v1.BboService/DeleteStudy",
            request_serializer=svc.DeleteStudyRequest.SerializeToString,
            response_deserializer=svc.DeleteStudyResponse.FromString,
        ).future(later(), metadata=(("x-api-key", key),), timeout=30)
        time.sleep(0.5)  # its key has been checked
        assert revoke_key(db, key_id)
        time.sleep(1.5)
        release.set()
        with pytest.raises(grpc.RpcError) as e:
            armed.result()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call(st, "GetStudy", request_for("GetStudy", "armed"), auth_server["a"])[1] is None


def test_a_key_cut_short_in_a_logged_study_name_is_redacted():
    """A log line keeps no part of an API key's secret, even where a field is cut inside the key
    (KEY_RE matched only whole keys: a cut study name kept 42 of its 43 secret characters)."""
    import io
    import logging
    from types import SimpleNamespace

    from bbo_server import logs

    key = "bbo_0123456789ab_" + "S" * 43
    # 69 + 17 + 42 = 128 characters kept (MAX_LOGGED_NAME): the cut drops the key's last one
    ids = logs.request_ids(SimpleNamespace(name="x" * 69 + key, trial_id=None))
    assert "S" * 42 in ids["study"]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("bbo.test.keys_cut")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("rpc refused", extra=ids)
    finally:
        log.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert "SSS" not in out.getvalue() and "bbo_0123456789ab_***" in line["study"], line


def test_tls_files_that_are_not_a_certificate_and_its_key_are_refused(certs, tmp_path):
    """A swapped, mismatched or non-PEM --tls-cert / --tls-key / --tls-client-ca started no
    server: gRPC logged "Invalid private key" and the bind failed (a traceback, or a message
    blaming the port); now a ValueError naming the flags, which `bbo serve` prints."""
    from bbo_server.tls import server_credentials

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cert, key, ca = certs["server_cert"], certs["server_key"], certs["ca"]
    for args, flag in (
        ((cert, certs["client_key"]), "--tls-key"),  # another certificate's key
        ((key, cert), "--tls-cert"),  # swapped
        ((str(junk), key), "--tls-cert"),
        ((cert, key, str(junk)), "--tls-client-ca"),
    ):
        with pytest.raises(ValueError, match=flag):
            server_credentials(*args)
    assert server_credentials(cert, key, ca) is not None
