"""The Node.js client (clients/node, grpc-js + proto-loader) runs a real study against a real server."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"


def _skip_reason():
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        return "clients/node dependencies not installed (make setup runs npm ci)"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_example_worker_runs_a_study(bbo_server, client, study_name):
    out = subprocess.run(
        ["node", str(NODE_DIR / "examples" / "worker.js"), bbo_server.address, study_name, "12"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["trials"] == 12
    best = result["best"]
    assert set(best["parameters"]) == {"x1", "x2"}
    # What node told is what the Python client reads back from the same server.
    told = client.study(study_name).trials(states=["COMPLETED"])
    assert len(told) == 12
    assert min(t.metrics["branin"] for t in told) == pytest.approx(best["metrics"]["branin"])


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
def test_node_client_gets_grpc_status_for_unknown_study(bbo_server):
    script = (
        "const {Client, Study}=require('./src');"
        f"const c=new Client('{bbo_server.address}');"
        "new Study(c,'no-such-study').ask(1).then(()=>process.exit(3)).catch(e=>{console.log(e.codeName);process.exit(0)});"
    )
    out = subprocess.run(["node", "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NOT_FOUND"
