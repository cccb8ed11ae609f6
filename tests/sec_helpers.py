"""Helpers of the reliability / security tests: API keys, raw stubs, one request per RPC, test certificates,
a stand-in strategy and an in-process server."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import grpc

from bbo.design import sobol_design
from bbo.strategy import Suggestion
from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import service_pb2_grpc
from bbo_client.v1 import study_pb2 as pb
from bbo_server.interceptor import MethodInterceptor


class SobolStrategy:
    """A strategy with no model (quick, no torch import): Sobol points. A subclass stands for a
    GP fit by waiting in :meth:`before_suggest`; ``skip_told`` starts each ask's points after the
    study's trials, so that asks do not repeat points."""

    skip_told = False

    def __init__(self, spec):
        self.spec = spec

    def status(self, trials):
        return ("ACTIVE", "")

    def before_suggest(self) -> None:
        pass

    def suggest(self, trials, n):
        self.before_suggest()
        skip = len(trials) if self.skip_told else 0
        return [
            Suggestion(p, "initial_design") for p in sobol_design(self.spec.space, n, 0, skip=skip)
        ]


RPCS = [
    "CreateStudy",
    "GetStudy",
    "ListStudies",
    "DeleteStudy",
    "Ask",
    "Tell",
    "AddTrial",
    "GetTrial",
    "ListTrials",
    "GetBest",
    "ReportIntermediate",
    "Heartbeat",
    "ListLlmCalls",
]


def create_key(db_url: str, tenant: str) -> tuple[str, str]:
    """(secret key, key id) for ``tenant`` in the database at ``db_url``."""
    from bbo.storage import open_storage
    from bbo.storage.keys import KeyStore

    s = open_storage(db_url, pool_size=2)
    try:
        key, rec = KeyStore(s).create(tenant, "test")
    finally:
        s.close()
    return key, rec.key_id


def revoke_key(db_url: str, key_id: str) -> bool:
    from bbo.storage import open_storage
    from bbo.storage.keys import KeyStore

    s = open_storage(db_url, pool_size=2)
    try:
        return KeyStore(s).revoke(key_id)
    finally:
        s.close()


def stub(address: str, credentials=None, **opts):
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)] + list(opts.items())
    ch = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials
        else grpc.insecure_channel(address, options=options)
    )
    return ch, service_pb2_grpc.BboServiceStub(ch)


def small_spec() -> pb.StudySpec:
    return pb.StudySpec(
        parameters=[
            pb.ParameterSpec(name="x", float=pb.FloatParameter(low=0.0, high=1.0)),
            pb.ParameterSpec(
                name="k", categorical=pb.CategoricalParameter(choices=["a", "b", "c"])
            ),
        ],
        objectives=[pb.Objective(name="y")],
    )


def request_for(rpc: str, study: str, trial_id: int = 1):
    """A well-formed request of ``rpc`` on ``study`` (and trial ``trial_id``)."""
    m = {"y": pb.MetricValue(value=0.5)}
    return {
        "CreateStudy": lambda: svc.CreateStudyRequest(name=study, spec=small_spec()),
        "GetStudy": lambda: svc.GetStudyRequest(name=study),
        "ListStudies": lambda: svc.ListStudiesRequest(),
        "DeleteStudy": lambda: svc.DeleteStudyRequest(name=study),
        "Ask": lambda: svc.AskRequest(study=study, count=1),
        "Tell": lambda: svc.TellRequest(study=study, trial_id=trial_id, metrics=m),
        "AddTrial": lambda: svc.AddTrialRequest(
            study=study,
            parameters={"x": pb.ParameterValue(number=0.5), "k": pb.ParameterValue(category="a")},
            metrics=m,
        ),
        "GetTrial": lambda: svc.GetTrialRequest(study=study, trial_id=trial_id),
        "ListTrials": lambda: svc.ListTrialsRequest(study=study),
        "GetBest": lambda: svc.GetBestRequest(study=study),
        "ReportIntermediate": lambda: svc.ReportIntermediateRequest(
            study=study, trial_id=trial_id, step=1, value=0.5
        ),
        "Heartbeat": lambda: svc.HeartbeatRequest(study=study, trial_id=trial_id),
        "ListLlmCalls": lambda: svc.ListLlmCallsRequest(study=study),
    }[rpc]()


def call(
    stub_,
    rpc: str,
    request,
    key: str | None = None,
    header: str = "x-api-key",
    timeout: float = 30.0,
):
    """(response, None) or (None, grpc.StatusCode)."""
    md = ()
    if key is not None:
        md = ((header, key),) if header == "x-api-key" else (("authorization", f"Bearer {key}"),)
    try:
        return getattr(stub_, rpc)(request, metadata=md, timeout=timeout), None
    except grpc.RpcError as e:
        return None, e.code()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# what a server's log says when its port was taken (the metrics' HTTP server, gRPC's own bind)
BIND_FAILURES = ("address already in use", "could not bind", "failed to bind")


def on_a_free_port(start, tries: int = 3):
    """``(start(port), port)`` with a port that was free a moment ago; another port where a process
    took it in between (tests run in parallel) and the server could not bind it."""
    for attempt in range(tries):
        port = free_port()
        try:
            return start(port), port
        except RuntimeError as e:
            taken = any(m in str(e).lower() for m in BIND_FAILURES)
            if not taken or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def mtls_server(server_factory, certs: dict[str, str], db: str | None = None, args=()):
    """A server (``server_factory``) requiring a client certificate of :func:`make_certs`' CA,
    one fit worker, ``args`` first; the harness's own calls present the client certificate."""
    import grpc

    def read(name: str) -> bytes:
        with open(certs[name], "rb") as f:
            return f.read()

    tls = ["--tls-cert", certs["server_cert"], "--tls-key", certs["server_key"]]
    return server_factory(
        db=db,
        args=[*args, *tls, "--tls-client-ca", certs["ca"], "--workers", "1"],
        credentials=grpc.ssl_channel_credentials(
            read("ca"), read("client_key"), read("client_cert")
        ),
    )


def make_certs(d: Path) -> dict[str, str]:
    """A test CA, a server certificate for 127.0.0.1 / localhost and a client certificate (openssl CLI)."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=bbo-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        run(
            "req",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={'localhost' if name == 'server' else 'bbo-client'}",
        )
        (d / f"{name}.ext").write_text(ext)
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return {
        k: str(d / v)
        for k, v in {
            "ca": "ca.pem",
            "server_cert": "server.pem",
            "server_key": "server.key",
            "client_cert": "client.pem",
            "client_key": "client.key",
        }.items()
    }


class BareRefusals(MethodInterceptor):
    """Refuses the first ``n`` calls as gRPC itself does past a server's maximum_concurrent_rpcs
    (the backstop behind --max-concurrent-rpcs): RESOURCE_EXHAUSTED with no RetryInfo."""

    def __init__(self, n: int):
        super().__init__()
        self.left = n

    def _wrap(self, handler, method: str):
        inner = handler.unary_unary

        def behavior(request, context):
            if self.left > 0:
                self.left -= 1
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior, handler.request_deserializer, handler.response_serializer
        )


def in_process_server(db_path: Path, **opts):
    """A bbo server in this process on a free loopback port, with no lease reaper, its database
    at ``db_path``: for tests that reach into it or wrap its handlers (``interceptors``)."""
    from bbo_server.server import ServerOptions, start

    return start(
        ServerOptions(port=0, db="sqlite:///" + str(db_path), lease_reap_seconds=0, **opts)
    )
