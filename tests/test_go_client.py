"""The Go client (clients/go: code generated from proto/bbo/v1, a wrapper, an example worker)
builds offline from Debian's Go packages and runs a study against a real server."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sec_helpers import BareRefusals, in_process_server

GO_DIR = Path(__file__).resolve().parents[1] / "clients" / "go"
GO_SOURCES = Path(os.environ.get("BBO_GO_SOURCES", "/usr/share/gocode"))
GO_PACKAGES = (
    "golang-go golang-google-grpc-dev golang-google-protobuf-dev "
    "golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev "
    "golang-github-schollz-progressbar-dev"
)


def _skip_reason():
    if shutil.which("go") is None:
        return f"go is not installed (Debian: apt-get install {GO_PACKAGES}; .ci/run does)"
    for pkg in ("google.golang.org/grpc", "github.com/schollz/progressbar"):
        if not (GO_SOURCES / "src" / pkg).is_dir():
            return f"Debian's Go sources of {pkg} are not in {GO_SOURCES} (apt-get install {GO_PACKAGES})"
    return None


needs_go = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _build(
    *args: str, script: Path = GO_DIR / "build.sh", timeout: float = 600, env: dict | None = None
):
    """clients/go/build.sh with ``args`` (generate, worker OUT, test), its output captured
    (``env`` added to the environment)."""
    cmd = [str(script), *args]
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=timeout, env=full
    )


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("go") / "worker"
    r = _build("worker", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _run(worker: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The example worker with ``args`` (and ``env`` added to the environment), its output
    captured."""
    cmd = [str(worker), *args]
    full = {**os.environ, **(env or {})}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=full)


@needs_go
def test_go_worker_speaks_mutual_tls_from_the_environment(server_factory, tmp_path, worker):
    """Dial reads BBO_TLS_CA / BBO_CLIENT_CERT / BBO_CLIENT_KEY as the Python and Node clients
    do (the Go client had no TLS options: only ready credentials), so the example worker runs a
    study against a server that requires a client certificate."""
    from sec_helpers import make_certs, mtls_server

    import bbo_client as bc

    certs = make_certs(tmp_path / "certs")
    srv = mtls_server(server_factory, certs)
    env = {
        "BBO_TLS_CA": certs["ca"],
        "BBO_CLIENT_CERT": certs["client_cert"],
        "BBO_CLIENT_KEY": certs["client_key"],
    }
    r = _run(worker, "-workers", "1", "-trials", "3", srv.address, "go-mtls", env=env)
    assert r.returncode == 0, r.stderr
    tls = dict(
        tls_ca=env["BBO_TLS_CA"], tls_cert=env["BBO_CLIENT_CERT"], tls_key=env["BBO_CLIENT_KEY"]
    )
    with bc.Client(srv.address, **tls) as c:
        assert [t.state for t in c.study("go-mtls").trials()] == ["COMPLETED"] * 3


@needs_go
def test_go_example_worker_runs_a_study(bbo_server, client, study_name, worker):
    r = _run(
        worker, "-workers", "2", "-trials", "8", "-initial", "6", bbo_server.address, study_name
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["study"] == study_name
    assert result["workers"] == {"go-worker-0": 4, "go-worker-1": 4}
    # What Go told is what the Python client reads back from the same server.
    told = client.study(study_name).trials(states=["COMPLETED"])
    assert len(told) == 8
    assert sorted({t.worker_id for t in told}) == ["go-worker-0", "go-worker-1"]
    assert sum(t.origin == "initial_design" for t in told) == 6  # then 2 model-based asks
    # GetBest through Python names the trial Go got: the best one seen, unless the model finds
    # the objective noisy (then `selection` says why it reports the best posterior mean)
    py = client.study(study_name).best()
    best = py.trial
    assert result["best"]["id"] == best.id
    if not py.selection:
        assert best.metrics["branin"] == min(t.metrics["branin"] for t in told)
    assert result["best"]["branin"] == pytest.approx(best.metrics["branin"])
    assert result["best"]["parameters"] == pytest.approx(best.params)
    # ... and how it was chosen, with the model's estimate where that was by the model
    assert result["selection"] == py.selection
    est = py.estimate
    want = None if est is None else pytest.approx([est.value, est.lower, est.upper])
    assert result.get("estimate") == want


@needs_go
def test_go_optimize_draws_a_progress_bar_with_the_best(bbo_server, client, study_name, worker):
    args = ("-workers", "1", "-trials", "5", "-initial", "4", "-progress")
    r = _run(worker, *args, bbo_server.address, study_name)
    assert r.returncode == 0, r.stderr
    last = r.stderr.replace("\r", "\n").strip().splitlines()[-1]  # the bar's final drawing
    best = client.study(study_name).best().trial
    assert "100%" in last and "(5/5" in last, r.stderr
    assert f"best branin={best.metrics['branin']:.6g} (trial {best.id})" in last, r.stderr


@needs_go
def test_go_unit_tests_pass():
    """The client package's own tests (clients/go/bbo/*_test.go): Optimize's errors keep their
    gRPC status."""
    r = _build("test")
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


GO_SERVER_TESTS = (
    "TestServerStudyLifecycle",
    "TestServerBareValues",
    "TestServerPythonParity",
    "TestServerTellWith",
    "TestServerTellBudget",
    "TestServerHeartbeatLease",
    "TestServerLlmCalls",
    "TestServerAddTrialWith",
    "TestServerBuilders",
)


def _log_llm_calls(db: str, study: str, n: int) -> None:
    """``n`` LLM calls logged for ``study`` straight into the server's database: response
    ``a<i>``, purposes warmstart, priors, proposal in turn, ``i`` prompt tokens."""
    from bbo.storage import LlmCallRecord, open_storage

    st = open_storage(db, migrate=False)
    try:
        uid = st.get_study("default", study).uid
        for i in range(n):
            purpose = ("warmstart", "priors", "proposal")[i % 3]
            st.log_llm_call(uid, LlmCallRecord(purpose, "m", f"p{i}", f"a{i}", "ok", i))
    finally:
        st.close()


@needs_go
def test_go_client_against_a_real_server(bbo_server, client, study_name, make_study):
    """The package's TestServer* tests (clients/go/bbo/server_test.go) against a real server: the
    study lifecycle and reads of Python's client (WaitReady, GetStudy, ListStudies, AddTrial,
    Trial, DeleteStudy), its bare values for one objective (TellValue, OptimizeValue), its
    study(name), ask lease and optimize result (OpenStudy, AskWith, OptimizeBest), and its tell,
    heartbeat, llm_calls, add_trial keywords and spec builders (TellWith, HeartbeatLease,
    LlmCalls over every page of a study's 230 calls, AddTrialWith, Log*/Ordinal/Fixed/Constraint/
    Prior)."""
    make_study(client, study_name)
    _log_llm_calls(bbo_server.db, study_name, 230)
    env = {"BBO_TEST_ADDRESS": bbo_server.address, "BBO_TEST_LLM_STUDY": study_name}
    r = _build("test", "-count=1", "-v", "-run", "^TestServer", env=env)
    out = r.stdout + r.stderr
    for name in GO_SERVER_TESTS:
        assert r.returncode == 0 and f"--- PASS: {name}" in out, out
    assert "SKIP" not in out, out


@needs_go
def test_go_worker_reports_the_servers_refusal(bbo_server, worker):
    r = _run(worker, "-trials", "1", bbo_server.address, "no spaces allowed")
    assert r.returncode == 1
    assert "code = InvalidArgument" in r.stderr and "name" in r.stderr, r.stderr


@pytest.mark.skipif(
    shutil.which("protoc") is None
    or shutil.which("protoc-gen-go") is None
    or shutil.which("protoc-gen-go-grpc") is None,
    reason="protoc, protoc-gen-go or protoc-gen-go-grpc is not installed "
    "(Debian: protobuf-compiler protoc-gen-go protoc-gen-go-grpc; .ci/run installs them)",
)
def test_go_generated_code_matches_the_protos(tmp_path):
    copy = tmp_path / "clients" / "go"  # build.sh finds proto/ two levels up
    shutil.copytree(GO_DIR, copy, ignore=shutil.ignore_patterns("bbov1"))
    (tmp_path / "proto").symlink_to(GO_DIR.parents[1] / "proto")
    r = _build("generate", script=copy / "build.sh", timeout=120)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (GO_DIR / "bbov1").iterdir())
    assert names == sorted(p.name for p in (copy / "bbov1").iterdir())
    _, mismatch, errors = filecmp.cmpfiles(GO_DIR / "bbov1", copy / "bbov1", names, shallow=False)
    assert not mismatch and not errors, (
        f"clients/go/bbov1 is stale ({mismatch + errors}): run clients/go/build.sh generate"
    )


@needs_go
def test_go_client_retries_grpcs_own_concurrency_refusal(tmp_path, worker):
    """gRPC's own refusal past the server's concurrent calls carries no RetryInfo; the Go client
    retries it as it retries UNAVAILABLE, and the worker's study runs."""
    refusals = BareRefusals(2)
    srv = in_process_server(tmp_path / "bare.db", rpc_threads=2, interceptors=[refusals])
    try:
        r = _run(worker, "-workers", "1", "-trials", "2", srv.address, "bare-refusals")
    finally:
        srv.stop(grace=5)
    assert r.returncode == 0, r.stderr
    assert refusals.left == 0
    assert json.loads(r.stdout.strip().splitlines()[-1])["workers"] == {"go-worker-0": 2}
