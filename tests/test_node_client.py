"""The Node.js client (clients/node, grpc-js + proto-loader) runs a real study against a real server."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import bbo_client as bc

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"


def _skip_reason():
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        return "clients/node dependencies not installed (make setup runs npm ci)"
    return None


def _node_json(script: str, *args: str, timeout: float = 240) -> dict:
    """Run ``script`` in Node (args after it) from clients/node; its last line, as JSON."""
    out = subprocess.run(
        ["node", "-e", script, *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_example_worker_runs_a_study(bbo_server, client, study_name):
    out = subprocess.run(
        ["node", str(NODE_DIR / "examples" / "worker.js"), bbo_server.address, study_name, "12"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["trials"] == 12
    best = result["best"]
    assert set(best["parameters"]) == {"x1", "x2"}
    # What node told is what the Python client reads back from the same server.
    told = client.study(study_name).trials(states=["COMPLETED"])
    assert len(told) == 12
    # GetBest through Python names the trial Node got: the best observed one, or, where the
    # server's surrogate judged the objective noisy (from its fit, where the data support it),
    # the best posterior mean, which `selection` then says
    py = client.study(study_name).best()
    assert py.trial.metrics["branin"] == pytest.approx(best["metrics"]["branin"])
    if not py.selection:
        assert min(t.metrics["branin"] for t in told) == pytest.approx(best["metrics"]["branin"])


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_client_gets_grpc_status_for_unknown_study(bbo_server):
    script = (
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');"
        "new Study(c,'no-such-study').ask(1).then(()=>process.exit(3)).catch(e=>{console.log(e.codeName);process.exit(0)});"
    )
    out = subprocess.run(
        ["node", "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NOT_FOUND"


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_asks_have_their_own_deadline(bbo_server, client, study_name, make_study):
    """An Ask runs under askDeadlineMs (10 min: a batch over a wide mixed space takes minutes),
    not the 2-minute deadline of other calls: it timed out on a server still answering it."""
    make_study(client, study_name)
    script = (
        "const {Client, Study}=require('./src');"
        "const opts=JSON.parse(process.argv[1]);"
        f"const c=new Client('{bbo_server.address}', {{retries: 0, ...opts}});"
        f"new Study(c,'{study_name}').ask(1)"
        ".then(()=>console.log(JSON.stringify({ok: true})))"
        ".catch(e=>console.log(JSON.stringify({ok: false, code: e.codeName})))"
        ".finally(()=>c.close());"
    )
    assert _node_json(script, json.dumps({"deadlineMs": 1}), timeout=60) == {"ok": True}
    out = _node_json(script, json.dumps({"askDeadlineMs": 1}), timeout=60)
    assert out == {"ok": False, "code": "DEADLINE_EXCEEDED"}


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_refuses_durations_that_are_not_finite_numbers():
    """deadlineMs Infinity or '5000' made every call's deadline an invalid date: each call failed
    DEADLINE_EXCEEDED at once. Refused when the client is made, naming the option; 0 is the
    default, as before."""
    out = _node_json(
        "const {Client}=require('./src');"
        "const made=(o)=>{try{const c=new Client('127.0.0.1:1',o);const d=c.deadlineMs;c.close();"
        "return d;}catch(e){return e.message;}};"
        "console.log(JSON.stringify([Infinity,'5000',-1,0].map((v)=>made({deadlineMs:v}))"
        ".concat([made({askDeadlineMs:NaN}),made({backoffMs:0})])));",
        timeout=60,
    )
    assert [m.split(",")[0] for m in out[:3]] == [
        "deadlineMs must be a finite number of milliseconds >= 1"
    ] * 3
    assert out[3] == 120000 and "askDeadlineMs" in out[4] and out[5] == 120000


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_a_call_after_close_is_refused_with_a_code(bbo_server):
    """A call after ``close()`` rejected with grpc-js's plain Error ("Channel has been shut
    down"), no ``code`` or ``codeName`` for a caller's error handling to read."""
    out = _node_json(
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}', {{retries: 0}});"
        "c.close();"
        "new Study(c,'any').ask(1).then(()=>process.exit(3))"
        ".catch(e=>console.log(JSON.stringify({name: e.codeName, message: e.message})));"
    )
    assert out["name"] == "CANCELLED" and "closed" in out["message"], out


_TLS_SCRIPT = r"""
const {Client} = require('./src');
const [address, optsJson, study] = process.argv.slice(1);
const opts = JSON.parse(optsJson);
(async () => {
  let c = null;
  try {
    c = new Client(address, {deadlineMs: 20000, retries: 0, ...opts});  // refusals are the point here: no retries
    const s = await c.createStudy(study, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
    const [t] = await s.ask(1, 'node-tls');
    const told = await s.tell(t.id, {y: t.parameters.x});
    console.log(JSON.stringify({ok: true, state: told.state, x: t.parameters.x, id: t.id}));
  } catch (e) {
    console.log(JSON.stringify({ok: false, code: e.codeName || String(e.message)}));
  }
  if (c) c.close();
})();
"""


def _node(address: str, opts: dict, study: str, env: dict | None = None) -> dict:
    import os

    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BBO_API_KEY", "BBO_TLS", "BBO_CLIENT"))
    }
    e.update(env or {})
    out = subprocess.run(
        ["node", "-e", _TLS_SCRIPT, address, json.dumps(opts), study],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env=e,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_client_mutual_tls_and_api_key(server_factory, tmp_path):
    """The Node client's tlsCa / tlsCert / tlsKey / apiKey options against a real server with API keys
    and mutual TLS on: what it tells is stored under its key's tenant; each missing piece is refused."""
    from sec_helpers import create_key, make_certs, mtls_server

    import bbo_client as bc

    certs = make_certs(tmp_path / "certs")
    db = "sqlite:///" + str(tmp_path / "tls.db")
    key, _ = create_key(db, "acme")
    other, _ = create_key(db, "globex")
    srv = mtls_server(server_factory, certs, db=db, args=["--auth"])
    full = {
        "apiKey": key,
        "tlsCa": certs["ca"],
        "tlsCert": certs["client_cert"],
        "tlsKey": certs["client_key"],
    }
    r = _node(srv.address, full, "node-mtls")
    assert r["ok"] and r["state"] == "COMPLETED", r
    # stored under the key's tenant: the Python client with the same key reads it back, another tenant cannot
    tls = dict(
        tls_ca=certs["ca"], tls_cert=certs["client_cert"], tls_key=certs["client_key"], retries=0
    )
    with bc.Client(srv.address, api_key=key, **tls) as c:
        (t,) = c.study("node-mtls").trials()
        assert (t.id, t.state, t.metrics["y"]) == (r["id"], "COMPLETED", pytest.approx(r["x"]))
    with bc.Client(srv.address, api_key=other, **tls) as c:
        with pytest.raises(bc.NotFound):
            c.study("node-mtls")
    # the same options from the environment variables the Python client reads (a key read from a file
    # with its newline is trimmed)
    env = {
        "BBO_API_KEY": key + "\n",
        "BBO_TLS_CA": certs["ca"],
        "BBO_CLIENT_CERT": certs["client_cert"],
        "BBO_CLIENT_KEY": certs["client_key"],
    }
    assert _node(srv.address, {}, "node-mtls-env", env=env)["ok"]
    # PEM contents instead of paths; a wrong tlsServerName is checked against the certificate
    pem = {
        k: open(v).read()
        for k, v in (
            ("tlsCa", certs["ca"]),
            ("tlsCert", certs["client_cert"]),
            ("tlsKey", certs["client_key"]),
        )
    }
    assert _node(
        srv.address, {"apiKey": key, **pem, "tlsServerName": "localhost"}, "node-mtls-pem"
    )["ok"]
    assert _node(
        srv.address, {**full, "tlsServerName": "not-the-server.example"}, "node-bad-name"
    ) == {"ok": False, "code": "UNAVAILABLE"}
    # each missing piece is refused
    assert _node(srv.address, {k: v for k, v in full.items() if k != "apiKey"}, "node-nokey") == {
        "ok": False,
        "code": "UNAUTHENTICATED",
    }
    assert _node(srv.address, {"apiKey": key, "tlsCa": certs["ca"]}, "node-nocert") == {
        "ok": False,
        "code": "UNAVAILABLE",
    }
    assert _node(srv.address, {"apiKey": key}, "node-plaintext") == {
        "ok": False,
        "code": "UNAVAILABLE",
    }
    half = _node(
        srv.address,
        {"apiKey": key, "tlsCa": certs["ca"], "tlsCert": certs["client_cert"]},
        "node-half",
    )
    assert half["ok"] is False and "both tlsCert and tlsKey" in half["code"]
    with bc.Client(srv.address, api_key=key, **tls) as c:
        names = {s.name for s in c.list_studies()}
    assert {"node-mtls", "node-mtls-env", "node-mtls-pem"} <= names
    assert not names & {"node-bad-name", "node-nokey", "node-nocert", "node-plaintext", "node-half"}


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_tell_of_a_trial_carries_its_study_uid(bbo_server, client, study_name, make_study):
    """A trial object from ask() is told with its study's uid: after the study is deleted and created
    again under the name, the stale tell is NOT_FOUND and the new study's trial 1 stays PENDING."""
    ask = (
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');"
        f"new Study(c,'{study_name}').ask(1).then(([t])=>{{console.log(JSON.stringify(t));c.close();}});"
    )
    make_study(client, study_name)
    stale = _node_json(ask, timeout=60)
    assert stale["studyUid"]
    client.delete_study(study_name)
    (fresh,) = make_study(client, study_name).ask()
    assert fresh.id == stale["id"]
    tell = (
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');"
        f"new Study(c,'{study_name}').tell(JSON.parse(process.argv[1]),{{y:1}})"
        ".then(()=>{console.log('OK');c.close();}).catch(e=>{console.log(e.codeName);c.close();});"
    )
    out = subprocess.run(
        ["node", "-e", tell, json.dumps(stale)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "NOT_FOUND", out.stderr
    assert client.study(study_name).trial(fresh.id).state == "PENDING"


_RESTART_SCRIPT = r"""
const fs = require('fs');
const {Client} = require('./src');
const [address, study, marker] = process.argv.slice(1);
(async () => {
  const c = new Client(address, {retries: 40, backoffMs: 50, maxBackoffMs: 500, deadlineMs: 20000});
  const s = await c.createStudy(study, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  let k = 0;
  await s.optimize(async (p) => {
    k += 1;
    if (k === 2) {  // the test kills the server now and brings it back a little later
      fs.writeFileSync(marker, 'x');
      await new Promise((r) => setTimeout(r, 500));
    }
    return {y: p.x};
  }, 4, 'node-restart');
  console.log(JSON.stringify({done: k}));
  c.close();
})().catch((e) => { console.log(JSON.stringify({error: e.codeName || String(e.message)})); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_worker_rides_out_a_server_restart(server_factory, tmp_path):
    """The server is killed during an evaluation and comes back 2 s later on the same port: the Node
    client's retries carry its tell and the next ask through, and no trial is asked twice."""
    import time

    import bbo_client as bc

    srv = server_factory()
    port = srv.port
    marker = tmp_path / "evaluating"
    proc = subprocess.Popen(
        ["node", "-e", _RESTART_SCRIPT, srv.address, "node-restart", str(marker)],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate(timeout=10)
    srv.kill()
    time.sleep(2.0)
    srv.requested_port = port
    srv.start()
    out, err = proc.communicate(timeout=180)
    assert json.loads(out.strip().splitlines()[-1]) == {"done": 4}, err
    with bc.Client(srv.address) as c:
        trials = c.study("node-restart").trials()
    assert [t.state for t in trials] == ["COMPLETED"] * 4


_WORKER_SCRIPT = r"""
const {Client} = require('./src');
const [address, study, mode] = process.argv.slice(1);
(async () => {
  const c = new Client(address, {retries: 2, backoffMs: 20});
  const s = await c.createStudy(study, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  const seen = [];
  if (mode === 'rate') {  // 10 trials and their reads on a server allowing 2 requests/s
    await s.optimize(async (p) => ({y: p.x}), 10, 'node-rate');
  } else if (mode === 'lease') {  // 3 s leases, 4.5 s evaluations: the state seen mid-evaluation
    await s.optimize(async (p, trial) => {
      for (let i = 0; i < 3; i += 1) {
        await new Promise((r) => setTimeout(r, 1500));
        seen.push((await s.trials(['PENDING'])).map((t) => t.id).includes(trial.id));
        await s.reportIntermediate(trial, i, p.x);
      }
      return {y: p.x};
    }, 2, 'node-lease');
  } else if (mode === 'progress') {  // the progress bar on standard error (not a terminal here)
    await s.optimize(async (p) => ({y: p.x}), 3, {workerId: 'node-progress', progress: true});
  } else {  // metrics refused, and an evaluation that throws: those trials FAILED, loop goes on
    let k = 0;
    await s.optimize(async (p) => {
      k += 1;
      if (k === 1) return {y: NaN};
      if (k === 2) return {wrong: 1};
      if (k === 3) throw new Error('solver diverged');
      if (k === 4) return {y: String(p.x)};  // not a number: protobufjs would send 0
      if (k === 5) return;  // no metrics at all
      return {y: p.x};
    }, 6, 'node-refused');
  }
  const trials = await s.trials();
  console.log(JSON.stringify({states: trials.map((t) => t.state), reasons: trials.map((t) => t.reason), seen}));
  c.close();
})().catch((e) => { console.log(JSON.stringify({error: e.codeName || String(e.message)})); });
"""


def _worker(address: str, study: str, mode: str) -> dict:
    return _node_json(_WORKER_SCRIPT, address, study, mode)


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_worker_waits_out_rate_refusals(server_factory):
    """A rate-limited server's refusals carry RetryInfo; the Node client waits as told and every
    trial is stored (before: RESOURCE_EXHAUSTED reached the caller on the fourth request)."""
    srv = server_factory(args=["--workers", "1", "--rate-limit", "2", "--rate-burst", "3"])
    r = _worker(srv.address, "node-rate", "rate")
    assert r.get("states") == ["COMPLETED"] * 10, r


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_heartbeats_at_the_servers_lease(server_factory):
    """3 s leases and 4.5 s evaluations: the Node worker's heartbeats (every 1 s) keep each trial
    PENDING while it runs, so its intermediate reports are accepted (before: no heartbeats, the
    reaper abandoned it). 1 s leases left a heartbeat 0.67 s to arrive: too tight for a loaded CI."""
    srv = server_factory(
        args=["--workers", "1", "--lease-seconds", "3", "--lease-reap-seconds", "0.1"]
    )
    r = _worker(srv.address, "node-lease", "lease")
    assert r.get("seen") == [True] * 6 and r["states"] == ["COMPLETED"] * 2, r


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_draws_a_progress_bar_with_the_best(bbo_server, client, study_name):
    """optimize(..., {progress: true}) draws its bar on standard error, ending on every trial done
    and the study's best as the server reports it; stdout stays the caller's."""
    out = subprocess.run(
        ["node", "-e", _WORKER_SCRIPT, bbo_server.address, study_name, "progress"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip())["states"] == ["COMPLETED"] * 3
    best = client.study(study_name).best().trial
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(study_name) and "3/3 trials" in last, out.stderr
    shown = re.search(r"best y=(\S+) \(trial (\d+)\)", last)
    assert shown is not None, last
    assert (
        float(shown[1]) == pytest.approx(best.metrics["y"], rel=1e-5) and int(shown[2]) == best.id
    )


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_fails_refused_metrics_and_goes_on(bbo_server, study_name):
    """NaN, a missing objective, a throw, a string value and no metrics: each trial FAILED with
    why, and the loop goes on (before: the string was told COMPLETED as y=0, and returning
    nothing threw a TypeError out of optimize, its trial left PENDING)."""
    r = _worker(bbo_server.address, study_name, "refused")
    assert r.get("states") == ["FAILED"] * 5 + ["COMPLETED"], r
    assert (
        r["reasons"][0].startswith("metrics refused")
        and "y" in r["reasons"][1]
        and r["reasons"][2] == "solver diverged"
        and r["reasons"][3].startswith(
            "metrics refused: metrics['y']: metric value must be a number"
        )
        and r["reasons"][4].startswith("metrics refused: metrics: missing metric(s) ['y']")
    ), r


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_add_trial_refuses_values_that_are_not_numbers_or_strings(
    bbo_server, client, study_name, make_study
):
    """protobufjs encoded true as 1 and [0.5] as 0.5: a point nobody meant was stored."""
    make_study(client, study_name)
    script = (
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');const s=new Study(c,'{study_name}');"
        "const tries=[{x:true,k:'a'},{x:[0.5],k:'a'},{x:0.5,k:null},[0.5,'a']];"
        "(async()=>{const out=[];for(const p of tries){try{await s.addTrial(p,{y:1});"
        "out.push('stored');}catch(e){out.push(e.codeName+' '+e.message);}}"
        "await s.addTrial({x:0.5,k:'b'},{y:2});"
        "console.log(JSON.stringify({out}));c.close();})();"
    )
    out = _node_json(script, timeout=60)["out"]
    assert [o.split(" ")[0] for o in out] == ["INVALID_ARGUMENT"] * 4, out
    assert "parameters['x']: a parameter value is a number or a choice's string" in out[0], out
    assert "parameters['k']" in out[2] and "parameters: must be an object" in out[3], out
    assert [(t.params, t.metrics) for t in client.study(study_name).trials()] == [
        ({"x": 0.5, "k": "b"}, {"y": 2.0})
    ]


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_reads_every_page_of_llm_calls(bbo_server, client, study_name, make_study):
    from bbo.storage import LlmCallRecord, open_storage

    make_study(client, study_name)
    st = open_storage(bbo_server.db, migrate=False)
    try:
        rec = st.get_study("default", study_name)
        for i in range(230):
            st.log_llm_call(
                rec.uid,
                LlmCallRecord(
                    ("warmstart", "priors", "proposal")[i % 3], "m", f"p{i}", f"a{i}", "ok", i
                ),
            )
    finally:
        st.close()
    script = (
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');const s=new Study(c,'{study_name}');"
        "(async()=>{const all=await s.llmCalls();const pr=await s.llmCalls('priors');"
        "console.log(JSON.stringify({all:all.map(x=>x.response),priors:pr.map(x=>x.promptTokens)}));c.close();})();"
    )
    r = _node_json(script, timeout=60)
    assert r["all"] == [f"a{i}" for i in range(230)] and r["priors"] == list(range(1, 230, 3))


_NOISY_SCRIPT = r"""
const {Client} = require('./src');
const [address, study] = process.argv.slice(1);
(async () => {
  const c = new Client(address);
  const s = await c.createStudy(study, {
    parameters: [{name: 'x', float: {low: 0, high: 1}}],
    objectives: [{name: 'f', noise: 'OBSERVATION_NOISE_NOISY'}],
  });
  const xs = [0.1, 0.1, 0.1, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.95];
  const ys = [0.3, -0.4, 0.35, 0.05, 0.02, 0.0, 0.01, -0.01, 0.0, 0.02, 0.05, 0.14];
  for (let i = 0; i < xs.length; i += 1) await s.addTrial({x: xs[i]}, {f: ys[i]});
  await s.ask(1, 'node');
  console.log(JSON.stringify(await s.bestResult()));
  c.close();
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_best_result_carries_the_selection_and_the_models_estimate(bbo_server, study_name):
    """A declared-noisy study: the lucky draw (-0.4 at x = 0.1) is passed over, and Node reads why
    and the model's estimate of the chosen trial, as the Python client does."""
    best = _node_json(_NOISY_SCRIPT, bbo_server.address, study_name, timeout=120)
    assert best["state"] == "ACTIVE" and len(best["trials"]) == 1 and best["count"] == 1
    assert abs(best["trials"][0]["parameters"]["x"] - 0.6) < 0.2
    assert "posterior mean" in best["selection"]
    e = best["estimate"]
    assert e["lower"] < e["value"] < e["upper"] < 0.2


_BACKSTOP_SCRIPT = r"""
const grpc = require('@grpc/grpc-js');
const { Client, BboError } = require('./src/index.js');
// no retries: a refusal for load is retried for ratePatienceMs, as the Python client's
const c = new Client('127.0.0.1:9', { backoffMs: 1, retries: 0 });
const answers = [
  { code: grpc.status.RESOURCE_EXHAUSTED, details: 'Concurrent RPC limit exceeded!' },
  { code: grpc.status.RESOURCE_EXHAUSTED, details: 'Concurrent RPC limit exceeded!' },
  'ok',
  { code: grpc.status.RESOURCE_EXHAUSTED, details: 'spec.parameters: over --max-parameters (256)' },
];
let calls = 0;
c.callOnce = async () => {
  const a = answers[calls++];
  if (a === 'ok') return { ok: true };
  throw new BboError(a);
};
(async () => {
  const first = await c.call('Tell', {});
  let second = null;
  try { await c.call('CreateStudy', {}); } catch (e) { second = e.message; }
  console.log(JSON.stringify({ first, second, calls }));
  process.exit(0);
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_client_retries_grpcs_own_concurrency_refusal():
    """Past the server's gRPC maximum_concurrent_rpcs (the backstop behind --max-concurrent-rpcs)
    gRPC refuses on its own with no RetryInfo: the Node client retries it for ratePatienceMs, as
    the Python client does (it counted against `retries`, meant for a server away), and a size
    bound's refusal without RetryInfo is still final."""
    r = _node_json(_BACKSTOP_SCRIPT, timeout=60)
    assert r == {
        "first": {"ok": True},
        "second": "spec.parameters: over --max-parameters (256)",
        "calls": 4,
    }, r


_SPEC_CHECK_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
const x = [{name: 'x', float: {low: 0, high: 1}}];
(async () => {
  const c = new Client(address, {retries: 0});
  const out = {refused: {}};
  const s = await c.createStudy(name, {
    parameters: [{name: 'lr', float: {low: 1e-5, high: 1, scale: 'log'}}, {name: 'n', int: {low: 1, high: 8}}],
    objectives: [{name: 'acc', goal: 'maximize', noise: 'Noisy'}],
    fidelity: {name: 'epochs', min: 1, max: 27, integer: true}, pruning: {policy: 'hyperband'},
  });
  const sp = s.spec;
  out.stored = [sp.objectives[0].goal, sp.objectives[0].noise, sp.parameters[0].float.scale, sp.pruning.policy];
  const bad = {
    typo: {parameters: x, objectives: [{name: 'acc', goal: 'GOAL_MAXIMISE'}]},
    unknown_key: {parameters: x, objectives: [{name: 'acc', direction: 'maximize'}]},
    fractional_int: {parameters: [{name: 'n', int: {low: 0.5, high: 3.7}}], objectives: [{name: 'l'}]},
    not_a_list: {parameters: x[0], objectives: [{name: 'l'}]},
    string_bound: {parameters: [{name: 'x', float: {low: '0', high: 1}}], objectives: [{name: 'l'}]},
  };
  for (const [k, spec] of Object.entries(bad)) {
    try { await c.createStudy(`${name}-${k}`, spec); out.refused[k] = 'accepted'; }
    catch (e) { out.refused[k] = [e.codeName, e.message]; }
  }
  try { await s.trials(['DONE']); out.states = 'accepted'; } catch (e) { out.states = [e.codeName, e.message]; }
  out.completed = (await s.trials(['completed'])).length;
  out.studies = (await c.listStudies()).map((s) => s.name);
  console.log(JSON.stringify(out));
  c.close();
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_create_study_refuses_what_protobufjs_would_change(bbo_server, study_name):
    """An enum name protobufjs does not know would be sent as 0 (GOAL_MINIMIZE), an unknown key
    dropped, 0.5 in an int64 truncated: each is refused before it is sent, with the field's path in
    the server's form, and nothing is stored; an enum's short name ('maximize') is spelled out."""
    out = _node_json(_SPEC_CHECK_SCRIPT, bbo_server.address, study_name)
    assert out["stored"] == [
        "GOAL_MAXIMIZE",
        "OBSERVATION_NOISE_NOISY",
        "SCALE_LOG",
        "PRUNING_POLICY_HYPERBAND",
    ]
    fields = {
        "typo": "spec.objectives[0].goal: unknown Goal",
        "unknown_key": "spec.objectives[0].direction: Objective has no field",
        "fractional_int": "spec.parameters[0].int.low: must be a whole number",
        "not_a_list": "spec.parameters: must be an array",
        "string_bound": "spec.parameters[0].float.low: must be a number",
    }
    for k, start in fields.items():
        code, message = out["refused"][k]
        assert code == "INVALID_ARGUMENT" and message.startswith(start), (k, message)
    assert out["states"][0] == "INVALID_ARGUMENT" and "TrialState" in out["states"][1]
    assert out["completed"] == 0
    assert not [n for n in out["studies"] if n.startswith(f"{study_name}-")]


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_trials_read_back_carry_their_standard_errors(bbo_server, client, study_name):
    """Node sent {value, sem} but read trials back with their values only; the Python client's
    Trial.sems kept them. A trial read back now has ``sems`` for the metrics told with one."""
    s = client.create_study(
        study_name, parameters=[bc.Float("x", 0, 1)], objectives="y", tracked_metrics=["t"]
    )
    (t,) = s.ask()
    s.tell(t, {"y": {"value": 0.5, "sem": 0.1}, "t": 2.0})
    got = _node_json(
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');"
        f"new Study(c,'{study_name}').trials().then((ts)=>{{console.log(JSON.stringify(ts));c.close();}});",
        timeout=60,
    )
    assert got[0]["metrics"] == {"y": 0.5, "t": 2.0} and got[0]["sems"] == {"y": 0.1}


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_add_trial_keeps_whole_numbers_past_2_53(bbo_server, client, study_name):
    """A whole number past 2**53 went as int64 ``integer``: protobufjs clipped 1e20 on a float
    parameter to 2**63 - 1, a point nobody meant, stored without a word."""
    script = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
(async () => {
  const c = new Client(address);
  const s = await c.createStudy(name, {parameters: [
    {name: 'x', float: {low: 0, high: 1e30}},
    {name: 'k', int: {low: '-9223372036854775808', high: '9223372036854775807'}},
  ], objectives: [{name: 'y'}]});
  const out = [];
  for (const p of [{x: 1e20, k: 2 ** 62}, {x: 3, k: -(2 ** 60)}]) {
    const t = await s.addTrial(p, {y: 1});
    out.push([t.parameters.x, t.parameters.k]);
  }
  let over = null;
  try { await s.addTrial({x: 1, k: 2 ** 64}, {y: 1}); } catch (e) { over = e.codeName; }
  console.log(JSON.stringify({out, over}));
  c.close();
})();
"""
    r = _node_json(script, bbo_server.address, study_name, timeout=60)
    # JSON.stringify writes 2**62 as 4611686018427388000: the same double
    out = [[float(v) for v in row] for row in r["out"]]
    assert out == [[1e20, 2.0**62], [3.0, -(2.0**60)]] and r["over"] == "INVALID_ARGUMENT", r
    got = [t.params for t in client.study(study_name).trials()]
    assert got == [{"x": 1e20, "k": 2**62}, {"x": 3.0, "k": -(2**60)}], got


_LONG_LEASE_SCRIPT = r"""
const {Study} = require('./src');
// a study whose server grants a 1e7 s lease (bbo serve --lease-seconds 1e7): no server needed
const s = new Study(null, 'long-lease');
let beats = 0;
s.ask = async () => [{id: 1, parameters: {x: 0.5}, created: 1000, updated: 1000, leaseExpires: 1000 + 1e7}];
s.heartbeat = async () => { beats += 1; };
s.tell = async () => {};
s.bestResult = async () => ({trials: []});
(async () => {
  await s.optimize(async (p) => { await new Promise((r) => setTimeout(r, 300)); return {y: p.x}; }, 1, {progress: false});
  console.log(JSON.stringify({beats}));
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_heartbeats_are_not_a_flood_under_a_long_lease():
    """A third of a lease over ~74 days is past setInterval's 2**31 - 1 ms, which Node then runs
    every 1 ms: a 0.5 s evaluation sent ~370 heartbeats (Heartbeat is exempt from --rate-limit)."""
    assert _node_json(_LONG_LEASE_SCRIPT, timeout=60) == {"beats": 0}


_PATIENCE_SCRIPT = r"""
const grpc = require('@grpc/grpc-js');
const {Client, Study, BboError} = require('./src');
// the server is away for the first 6 calls of one method (argv: Ask or Tell) and answers the 7th:
// past the call's own retries (2 tries here; 8, ~15 s, by default), within optimize's patience
const away = process.argv[1];
const c = new Client('127.0.0.1:1', {retries: 1, backoffMs: 1, maxBackoffMs: 5});
const seen = [];
const trial = {id: '1', parameters: {x: {number: 0.5, kind: 'number'}}, state: 'TRIAL_STATE_PENDING', metrics: {}};
c.callOnce = async (method, request) => {
  if (method === 'GetBest') return {trials: [], state: 'STUDY_STATE_ACTIVE'};
  if (method === away) {
    seen.push(request.request_id);
    if (seen.length < 7) throw new BboError({code: grpc.status.UNAVAILABLE, details: 'connection refused'});
  }
  if (method === 'Ask') return {trials: [trial]};
  return {trial: {...trial, state: 'TRIAL_STATE_COMPLETED', metrics: {y: {value: request.metrics.y.value}}}};
};
(async () => {
  const out = {};
  try {
    await new Study(c, 'away').optimize(async (p) => ({y: p.x}), 1, {progress: false});
    out.result = 'ok';
  } catch (e) { out.result = e.codeName; }
  out.calls = seen.length;
  out.requestIds = new Set(seen).size;
  console.log(JSON.stringify(out));
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
@pytest.mark.parametrize("method", ["Tell", "Ask"])
def test_node_optimize_rides_out_a_server_away_longer_than_a_calls_retries(method):
    """A server away longer than a call's retries (~15 s by default) at the end of an evaluation:
    optimize threw UNAVAILABLE and the result was lost, its trial left PENDING until its lease
    ran out; a server that crashed under an Ask ended optimize the same way. Both are retried for
    up to tellPatienceMs, as the Python client's tell_patience, under one request id (an Ask
    retried never makes two trials)."""
    assert _node_json(_PATIENCE_SCRIPT, method, timeout=60) == {
        "result": "ok",
        "calls": 7,
        "requestIds": 1,
    }


_ABORT_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
const code = (p) => p.then(() => 'ok', (e) => e.codeName || String(e));
(async () => {
  const c = new Client(address);
  const s = await c.createStudy(name, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  const out = {};
  // aborted during the third evaluation, which still finishes and is told
  const ac = new AbortController();
  let n = 0;
  out.finishing = await code(s.optimize(async (p) => { n += 1; if (n === 3) ac.abort(); return {y: p.x}; }, 10, {signal: ac.signal, progress: false}));
  out.evaluated = n;
  // an objective that honours the same signal: its trial is ABANDONED, not FAILED
  const ac2 = new AbortController();
  out.honoured = await code(s.optimize(async () => { ac2.abort(); throw new Error('stopped early'); }, 10, {signal: ac2.signal, progress: false}));
  out.preAborted = await code(s.ask(1, 'w', {signal: AbortSignal.abort()}));
  out.notSignal = await s.ask(1, 'w', {signal: 'soon'}).then(() => 'ok', (e) => e.constructor.name);
  out.states = (await s.trials()).map((t) => t.state);
  out.reason = (await s.trials(['ABANDONED'])).map((t) => t.reason);
  c.close();
  // a call retrying an absent server (UNAVAILABLE) without end is cut short by its signal
  const away = new Client('127.0.0.1:1', {retries: 1e9, maxBackoffMs: 200});
  out.retrying = await code(away.call('ListStudies', {}, AbortSignal.timeout(500)));
  away.close();
  console.log(JSON.stringify(out));
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_calls_and_optimize_stop_on_an_abort_signal(bbo_server, study_name):
    """The Node client had no way to stop: optimize ran its n trials and a call retried an absent
    server for as long as its retries allowed. An AbortSignal now ends optimize after the trial
    under way is told (ABANDONED if fn gives up on the abort), and cancels a call and its retries."""
    out = _node_json(_ABORT_SCRIPT, bbo_server.address, study_name, timeout=120)
    assert out["finishing"] == "CANCELLED" and out["evaluated"] == 3, out
    assert out["honoured"] == "CANCELLED" and out["preAborted"] == "CANCELLED", out
    assert out["notSignal"] == "TypeError", out
    assert out["states"] == ["COMPLETED"] * 3 + ["ABANDONED"], out
    assert out["reason"] == ["optimize aborted: stopped early"], out
    assert out["retrying"] == "CANCELLED", out


_INT_RANGE_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
const x = [{name: 'x', float: {low: 0, high: 1}}];
const y = [{name: 'y'}];
(async () => {
  const c = new Client(address, {retries: 0});
  const out = {};
  const bad = {
    int32: {parameters: x, objectives: y, algorithm: {n_initial: 2 ** 32 + 5}},
    int64_number: {parameters: [{name: 'k', int: {low: 0, high: 1e20}}], objectives: y},
    int64_string: {parameters: [{name: 'k', int: {low: 0, high: '99999999999999999999'}}], objectives: y},
    int64_bigint: {parameters: x, objectives: y, algorithm: {seed: 2n ** 63n}},
  };
  for (const [k, spec] of Object.entries(bad)) {
    try { await c.createStudy(`${name}-${k}`, spec); out[k] = 'accepted'; }
    catch (e) { out[k] = [e.codeName, e.message]; }
  }
  const k = [{name: 'k', int: {low: -(2n ** 63n), high: '9223372036854775807'}}];
  await c.createStudy(name, {parameters: k, objectives: y, algorithm: {seed: 2n ** 60n + 1n}});
  console.log(JSON.stringify(out));
  c.close();
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_refuses_whole_numbers_past_their_fields_range(bbo_server, client, study_name):
    """protobufjs wraps a whole number past its field's range: n_initial 2**32 + 5 was stored as
    5, an int64 '99999999999999999999' as 7766279631452241919 and 1e20 as 2**63 - 1, each
    without a word. Each is refused, naming the field; the range's ends still pass exactly."""
    out = _node_json(_INT_RANGE_SCRIPT, bbo_server.address, study_name, timeout=60)
    fields = {
        "int32": "spec.algorithm.n_initial: must be a whole number from -2147483648 to 2147483647",
        "int64_number": "spec.parameters[0].int.high: must be a whole number from",
        "int64_string": "spec.parameters[0].int.high: must be a whole number from",
        "int64_bigint": "spec.algorithm.seed: must be a whole number from",
    }
    for k, start in fields.items():
        assert out[k][:1] == ["INVALID_ARGUMENT"] and out[k][1].startswith(start), (k, out[k])
    assert not [s.name for s in client.list_studies() if s.name.startswith(f"{study_name}-")]
    spec = client.get_study(study_name).spec
    assert (spec.parameters[0].int.low, spec.parameters[0].int.high) == (-(2**63), 2**63 - 1)
    assert spec.algorithm.seed == 2**60 + 1


_CALL_SIGNAL_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
(async () => {
  const c = new Client(address, {retries: 0});
  const spec = {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]};
  const out = {};
  // {signal} as ask() takes it, where call() takes the signal itself
  try { await c.call('CreateStudy', {name, spec}, {signal: new AbortController().signal}); out.call = 'ok'; }
  catch (e) { out.call = e.constructor.name; }
  await new Promise((r) => setTimeout(r, 300));
  out.created = (await c.listStudies()).some((s) => s.name === name);
  console.log(JSON.stringify(out));
  c.close();
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_call_refuses_what_is_not_an_abort_signal(bbo_server, study_name):
    """client.call(method, request, {signal}) sent the call, then threw from grpc-js's callback
    (signal.removeEventListener is not a function): an uncaught exception that ended the process,
    the study created. It is now a TypeError before anything is sent, as ask() gives."""
    assert _node_json(_CALL_SIGNAL_SCRIPT, bbo_server.address, study_name, timeout=60) == {
        "call": "TypeError",
        "created": False,
    }


_LONG_FAILURE_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
(async () => {
  const c = new Client(address, {retries: 0});
  const s = await c.createStudy(name, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  let n = 0;
  const out = {};
  // an objective that fails with a long message, as one quoting a crashed run's output does; one
  // whose message holds half of a surrogate pair (protobufjs sends it as bytes that are not UTF-8),
  // whole or where the cut falls
  const errors = ['x'.repeat(5e6), 'bad \ud800 byte', 'x'.repeat(1999) + '\u{1F600}'];
  try {
    await s.optimize((p) => { n += 1; if (n <= 3) throw new Error(errors[n - 1]); return {y: p.x}; }, 4, {progress: false});
    out.result = 'ok';
  } catch (e) { out.result = e.codeName; }
  out.trials = (await s.trials()).map((t) => [t.state, t.reason.length]);
  console.log(JSON.stringify(out));
  c.close();
})();
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_fails_a_trial_whose_error_is_long(bbo_server, study_name):
    """fn's error message went whole into the failing Tell: past the server's 4 MiB a message,
    optimize rejected RESOURCE_EXHAUSTED and the trial stayed PENDING until its lease ran out.
    The reason is cut to 2000 characters, as the Python client's; half of a surrogate pair in it
    (the server refused the Tell: not UTF-8) is sent as U+FFFD."""
    out = _node_json(_LONG_FAILURE_SCRIPT, bbo_server.address, study_name, timeout=60)
    assert out == {
        "result": "ok",
        "trials": [["FAILED", 2000], ["FAILED", 10], ["FAILED", 2000], ["COMPLETED", 0]],
    }, out


_RATE_PATIENCE_SCRIPT = r"""
const grpc = require('@grpc/grpc-js');
const {Client, Study} = require('./src');
const [address, name] = process.argv.slice(1);
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  const setup = new Client(address);
  await setup.createStudy(name, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  // a client whose own patience with a rate limit is 1 ms: optimize's is tellPatienceMs
  const c = new Client(address, {ratePatienceMs: 1});
  let refused = 0;
  const once = c.callOnce.bind(c);
  c.callOnce = (...a) => once(...a).catch((e) => { if (e.code === grpc.status.RESOURCE_EXHAUSTED) refused += 1; throw e; });
  const s = new Study(c, name);
  const out = {};
  let n = 0;
  const fn = async (p, trial, report) => {
    n += 1;
    await report(0, p.x);
    if (n === 4) await wait(1500);  // the rate's tokens back for the GetBest at the end
    return {y: p.x};
  };
  try { await s.optimize(fn, 4, {progress: false}); out.default = 'ok'; } catch (e) { out.default = e.codeName; }
  out.refused = refused;
  await Promise.all([1, 2, 3].map(() => c.call('ListStudies', {}).catch(() => {})));  // no tokens left
  try { await s.optimize(fn, 4, {progress: false, tellPatienceMs: 1}); out.impatient = 'ok'; } catch (e) { out.impatient = e.codeName; }
  console.log(JSON.stringify(out));
  c.close();
  setup.close();
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_waits_out_a_rate_limit_for_its_tell_patience(server_factory, study_name):
    """optimize waited out a rate limit's refusals for the client's ratePatienceMs only (120 s)
    and then rejected RESOURCE_EXHAUSTED; the Python client's optimize waits for its
    tell_patience. Node's now waits for tellPatienceMs (600 s by default) too."""
    srv = server_factory(args=["--workers", "1", "--rate-limit", "2", "--rate-burst", "2"])
    out = _node_json(_RATE_PATIENCE_SCRIPT, srv.address, study_name, timeout=120)
    assert out["default"] == "ok" and out["refused"] > 0, out
    assert out["impatient"] == "RESOURCE_EXHAUSTED", out
    with bc.Client(srv.address) as c:
        assert [t.state for t in c.study(study_name).trials()][:4] == ["COMPLETED"] * 4


_BARE_NUMBER_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
const x = [{name: 'x', float: {low: 0, high: 1}}];
const code = (p) => p.then(() => 'ok', (e) => `${e.codeName} ${e.message}`);
(async () => {
  const c = new Client(address, {retries: 0});
  const one = await c.createStudy(name, {parameters: x, objectives: [{name: 'y'}]});
  const two = await c.createStudy(`${name}-2`, {parameters: x, objectives: [{name: 'y'}, {name: 'z'}]});
  const out = {};
  // one objective: the number is its value, as fn's result, a tell's and an added trial's
  let n = 0;
  await one.optimize((p) => { n += 1; return n === 3 ? NaN : p.x; }, 3, {progress: false});
  const [t] = await one.ask(1);
  await one.tell(t, 0.25);
  await one.addTrial({x: 0.5}, 0.75);
  out.told = t.id;
  out.one = (await one.trials()).map((u) => [u.id, u.state, u.parameters.x, u.metrics.y ?? u.reason]);
  // two objectives: which one a number is the value of is unknown; refused naming them
  await two.optimize((p) => p.x, 1, {progress: false});
  const [u] = await two.ask(1);
  out.tell2 = await code(two.tell(u, 0.5));
  out.add2 = await code(two.addTrial({x: 0.5}, 0.5));
  out.two = (await two.trials()).map((v) => [v.state, v.reason]);
  console.log(JSON.stringify(out));
  c.close();
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_takes_a_bare_number_for_a_single_objective(bbo_server, study_name):
    """An objective returning a number failed every trial ("must be an object of metric values"),
    and tell / addTrial refused one; the Python client takes a bare number for a study with one
    objective. Node now does too; with several objectives it is refused naming them."""
    out = _node_json(_BARE_NUMBER_SCRIPT, bbo_server.address, study_name, timeout=120)
    (a, b, nan, told, added) = out["one"]
    assert [a[1], b[1], told[1], added[1]] == ["COMPLETED"] * 4, out
    assert a[3] == a[2] and b[3] == b[2] and told[3] == 0.25 and added[2:] == [0.5, 0.75], out
    assert told[0] == out["told"], out
    # NaN: refused by the server, the trial FAILED with why
    assert nan[1] == "FAILED" and nan[3].startswith("metrics refused: metrics['y']"), out
    bare = "metrics: a bare number is only accepted for a single-objective study"
    assert out["tell2"].startswith(f"INVALID_ARGUMENT {bare}") and "(y, z)" in out["tell2"], out
    assert out["add2"].startswith(f"INVALID_ARGUMENT {bare}"), out
    (state, reason), pending = out["two"][0], out["two"][1]
    assert state == "FAILED" and reason.startswith(f"metrics refused: {bare}"), out
    assert "(y, z)" in reason and pending == ["PENDING", ""], out


_STUDY_CALLS_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
const code = (p) => p.then((v) => v, (e) => e.codeName);
(async () => {
  const c = new Client(address, {retries: 0});
  await c.waitReady(30000);
  const out = {};
  out.missing = await code(c.study(name));
  await c.createStudy(name, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  const s = await c.study(name);
  const [t] = await s.ask(1);
  await s.tell(t, {y: 0.5});
  const info = await c.getStudy(name);
  out.info = [info.name, info.state, info.trialCount, info.completedCount, info.spec.objectives[0].name, typeof info.created, info.uid === t.studyUid];
  out.cached = (await s.info(true)).completedCount;
  out.fresh = (await s.info()).completedCount;
  const got = await s.trial(t.id);
  out.trial = [got.id === t.id, got.state, got.metrics];
  out.noTrial = await code(s.trial(t.id + 100));
  out.deleted = [await s.delete(), await code(c.deleteStudy(name))];
  out.gone = await code(c.getStudy(name));
  c.close();
  out.closed = await code(c.waitReady(1000));
  const away = new Client('127.0.0.1:1');
  out.away = await away.waitReady(300).then(() => 'ready', (e) => [e.codeName, e.message]);
  away.close();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_has_the_python_clients_study_calls(bbo_server, study_name):
    """The Python client's study(), get_study(), delete_study(), wait_ready(), Study.info(),
    trial() and delete() had no Node counterpart: a Node user could not delete a study."""
    out = _node_json(_STUDY_CALLS_SCRIPT, bbo_server.address, study_name, timeout=60)
    assert out["missing"] == "NOT_FOUND", out
    assert out["info"] == [study_name, "ACTIVE", 1, 1, "y", "number", True], out
    assert out["cached"] == 0 and out["fresh"] == 1, out
    assert out["trial"] == [True, "COMPLETED", {"y": 0.5}] and out["noTrial"] == "NOT_FOUND", out
    assert out["deleted"] == [True, "NOT_FOUND"] and out["gone"] == "NOT_FOUND", out
    assert out["closed"] == "CANCELLED", out
    assert out["away"] == ["UNAVAILABLE", "no bbo server answered at 127.0.0.1:1 within 0.3s"], out


_PARITY_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
const lease = (t) => Math.round(t.leaseExpires - t.updated);
(async () => {
  const c = new Client(address, {retries: 0});
  const spec = {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]};
  const s = await c.createStudy(name, spec);
  await c.createStudy(`${name}-2`, spec);
  const out = {};
  const [t] = await s.ask(1, 'node-w', {leaseSeconds: 37});
  out.askLease = lease(t);
  const told = await s.tell(t, {y: 0.25});
  out.told = [told.id === t.id, told.state, told.metrics, told.workerId, told.duplicate];
  const leases = [];
  const best = await s.optimize(async (p, trial) => { leases.push(lease(trial)); return {y: p.x}; }, 2,
    {workerId: 'node-opt', leaseSeconds: 41, progress: false});
  out.optimizeLeases = leases;
  out.best = {isArray: Array.isArray(best), keys: Object.keys(best).sort(), id: best.trial && best.trial.id,
    ids: best.trials.map((b) => b.id)};
  const listed = await c.listStudies(2);
  out.listed = listed.filter((i) => i.name.startsWith(name))
    .map((i) => [i.name, i.state, i.trialCount, i.completedCount, typeof i.uid]);
  out.listedCount = listed.length;
  const added = [];
  for (let i = 0; i < 2; i += 1) added.push(await s.addTrial({x: 0.5}, null, {failed: true, requestId: `${name}-add`}));
  out.added = [added[0].id === added[1].id, added[0].state, (await s.trials(['FAILED'])).length];
  console.log(JSON.stringify(out));
  c.close();
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_calls_match_the_python_clients(bbo_server, client, study_name):
    """As Python's: ask and optimize take the lease (lease_seconds; Node could not set it), a tell
    resolves to the stored trial with ``duplicate`` (TellResult), optimize to the study's best as
    GetBest reads it (Best: selection, estimate, trial; Node gave its trials only), and
    listStudies(pageSize) to every study's info over every page (Node gave their names);
    addTrial takes add_trial's failed and request id."""
    out = _node_json(_PARITY_SCRIPT, bbo_server.address, study_name, timeout=120)
    assert out["askLease"] == 37 and out["optimizeLeases"] == [41, 41], out
    assert out["told"] == [True, "COMPLETED", {"y": 0.25}, "node-w", False], out
    py = client.study(study_name).best()
    assert out["best"] == {
        "isArray": False,
        "keys": ["count", "estimate", "selection", "state", "stateReason", "trial", "trials"],
        "id": py.trial.id,
        "ids": [t.id for t in py.trials],
    }, out
    assert out["listed"] == [
        [study_name, "ACTIVE", 3, 3, "string"],
        [f"{study_name}-2", "ACTIVE", 0, 0, "string"],
    ], out
    assert out["listedCount"] == len(client.list_studies()), out
    assert out["added"] == [True, "FAILED", 1], out


_OPTIMIZE_ARGS_SCRIPT = r"""
const {Client} = require('./src');
const [address, name] = process.argv.slice(1);
(async () => {
  const c = new Client(address, {retries: 0});
  const s = await c.createStudy(name, {parameters: [{name: 'x', float: {low: 0, high: 1}}], objectives: [{name: 'y'}]});
  const out = [];
  for (const [fn, n] of [[(p) => p.x, 1.5], [(p) => p.x, -1], [(p) => p.x, '2'], ['not a function', 2]]) {
    try { await s.optimize(fn, n, {progress: false}); out.push('ran'); } catch (e) { out.push(`${e.codeName || e.constructor.name} ${e.message}`); }
  }
  console.log(JSON.stringify({out, trials: (await s.trials()).length}));
  c.close();
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_optimize_refuses_a_bad_trial_count_or_objective(bbo_server, study_name):
    """optimize(fn, 1.5) ran 2 trials, -1 none without a word, '2' was taken as 2, and a fn that
    is not a function failed every trial it asked for; the Python client refuses n_trials < 0.
    Each is now refused before any call, naming what to fix."""
    r = _node_json(_OPTIMIZE_ARGS_SCRIPT, bbo_server.address, study_name, timeout=60)
    assert r["out"] == [
        "INVALID_ARGUMENT nTrials: must be a whole number >= 0, got 1.5",
        "INVALID_ARGUMENT nTrials: must be a whole number >= 0, got -1",
        'INVALID_ARGUMENT nTrials: must be a whole number >= 0, got "2"',
        'TypeError fn must be a function (the objective), got "not a function"',
    ], r
    assert r["trials"] == 0, r


# a Node worker whose call under way loses its answer: it says "ready" once connected, sends the
# call when told to on standard input, and prints what came of it
_LOST_ANSWER_SCRIPT = r"""
const {Client, Study} = require('./src');
const [address, study, call, trialId] = process.argv.slice(1);
(async () => {
  const c = new Client(address, {backoffMs: 20});
  await c.call('GetStudy', {name: study});
  console.log('ready');
  await new Promise((r) => process.stdin.once('data', r));
  if (call === 'delete') {
    const deleted = await c.deleteStudy(study);
    console.log(JSON.stringify({deleted}));
  } else {
    const t = await new Study(c, study).tell(Number(trialId), {loss: 1.0});
    console.log(JSON.stringify({state: t.state, budget: t.budget, duplicate: t.duplicate}));
  }
  c.close();
})().catch((e) => { console.log(JSON.stringify({error: e.codeName || String(e.message)})); process.exit(0); });
"""


def _lose_the_answer(address: str, study: str, stored, call: str, *args: str) -> dict:
    """Run ``call`` in Node through a proxy that holds back the server's answer until ``stored()``
    says the server has done the work, then cuts the connection (the client retries)."""
    from lossy_proxy import LossyProxy

    with LossyProxy(address) as proxy:
        node = subprocess.Popen(
            ["node", "-e", _LOST_ANSWER_SCRIPT, proxy.address, study, call, *args],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert node.stdout.readline().strip() == "ready"
            with proxy.losing_answers(stored):
                node.stdin.write("go\n")
                node.stdin.flush()
            out, _ = node.communicate(timeout=120)
        finally:
            node.kill()
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_delete_retried_after_a_lost_answer_is_true(bbo_server, client, study_name):
    """The delete ran, its answer was lost, and the retry's NOT_FOUND rejected a delete that
    worked: deleteStudy reads it as done, as the Python and Go clients do. A first attempt's
    NOT_FOUND still rejects."""
    client.create_study(study_name, [bc.Float("x", 0, 1)], "y")

    def gone() -> bool:
        return study_name not in {s.name for s in client.list_studies()}

    assert _lose_the_answer(bbo_server.address, study_name, gone, "delete") == {"deleted": True}
    missing = (
        "const {Client}=require('./src');"
        f"const c=new Client('{bbo_server.address}');"
        f"c.deleteStudy('{study_name}').then(d=>console.log(JSON.stringify({{deleted: d}})))"
        ".catch(e=>console.log(JSON.stringify({error: e.codeName}))).finally(()=>c.close());"
    )
    assert _node_json(missing, timeout=60) == {"error": "NOT_FOUND"}


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_tell_retried_after_a_lost_answer_leaves_the_continuation(
    bbo_server, client, study_name
):
    """A tell of a bare trial id pausing the trial, its answer lost while another worker's Ask
    continued the trial: the retry came back as the continuation's result (PAUSED at 3 with the
    value measured at 1). The retry carries the tell's request id, and is answered as the
    duplicate it is."""
    s = client.create_study(
        study_name,
        [bc.Float("x", 0, 1)],
        "loss",
        fidelity=bc.Fidelity("epochs", 1, 9, integer=True),
        pruning=bc.Pruning("asha", promote=True),
    )
    a, b, best = s.ask(3)
    s.tell(a, 3.0)
    s.tell(b, 2.0)
    continued = []

    def paused_then_continued() -> bool:
        if not continued and s.trial(best.id).state == "PAUSED":
            continued.extend(s.ask(worker_id="w2"))
        return bool(continued)

    out = _lose_the_answer(
        bbo_server.address, study_name, paused_then_continued, "tell", str(best.id)
    )
    assert [(t.id, t.budget) for t in continued] == [(best.id, 3.0)]
    assert out == {"state": "PENDING", "budget": 3, "duplicate": True}
    t = s.trial(best.id)
    assert (t.state, t.budget, t.metrics) == ("PENDING", 3.0, {})
