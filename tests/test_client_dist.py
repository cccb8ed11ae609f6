"""The thin client distribution (clients/python, ``bbo-client``): it installs into a fresh
virtualenv with grpcio, protobuf, grpcio-status and tqdm only, runs a study there against a real
server without torch, and the repository holds one copy of the generated stubs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
THIN = {"bbo-client", "grpcio", "grpcio-status", "protobuf", "tqdm"}
# what those pull in themselves (grpcio-status: googleapis-common-protos; grpcio: typing-extensions)
TRANSITIVE = {"googleapis-common-protos", "typing-extensions"}

_RUN = """
import importlib.util, json, sys
from importlib.metadata import distributions

import bbo_client as bc

absent = [m for m in ("torch", "botorch", "gpytorch", "sklearn", "bbo", "bbo_server")
          if importlib.util.find_spec(m) is not None]
with bc.Client(sys.argv[1]) as client:
    study = client.create_study(
        sys.argv[2],
        parameters=[bc.Float("x", -2.0, 2.0), bc.Categorical("k", ["a", "b"])],
        objectives="y",
    )
    best = study.optimize(
        lambda p: (p["x"] - 0.5) ** 2 + (p["k"] == "b"), n_trials=3, progress=False
    )
print(json.dumps({
    "present": absent,
    "dists": sorted({d.metadata["Name"].lower().replace("_", "-") for d in distributions()}),
    "client": bc.__file__,
    "best": best.trial.metrics["y"],
}))
"""


def test_fresh_virtualenv_runs_a_study_without_torch(bbo_server, client, study_name, tmp_path):
    """``pip install ./clients/python`` into an empty virtualenv (one install, from PyPI) and run a
    study from it: neither torch nor bbo's core is importable there, only the thin deps are in."""
    src = tmp_path / "src"  # a copy: pip builds in the source tree and leaves build/ there
    shutil.copytree(
        CLIENT, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # the venv has no pip of its own: this interpreter's pip installs into it (saves ensurepip)
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-compile"]
    r = subprocess.run(
        [*pip, str(src)], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"pip install ./clients/python failed:\n{r.stdout}\n{r.stderr}"

    r = subprocess.run(
        [str(py), "-c", textwrap.dedent(_RUN), bbo_server.address, study_name],
        check=False,
        env=env,
        cwd=tmp_path,  # not the repository root, whose bbo/ would be importable from there
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["present"] == [], f"the thin client's venv can import {out['present']}"
    assert set(out["dists"]) <= THIN | TRANSITIVE, f"extra packages: {out['dists']}"
    assert THIN <= set(out["dists"])
    assert out["client"].startswith(str(venv)), "bbo_client came from the venv, not the checkout"
    done = client.study(study_name).trials(states=["COMPLETED"])
    assert len(done) == 3 and min(t.metrics["y"] for t in done) == pytest.approx(out["best"])


def test_client_distribution_declares_only_the_thin_dependencies():
    meta = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in meta["dependencies"]}
    assert meta["name"] == "bbo-client" and names == THIN - {"bbo-client"}
    assert set(meta["optional-dependencies"]) >= {"optuna", "ray"}
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("bbo-client") for d in root["project"]["dependencies"])
    assert "clients/python" not in root["tool"]["setuptools"]["packages"]["find"]["where"]


def test_one_copy_of_the_generated_stubs():
    """Two modules registering bbo/v1/*.proto in protobuf's pool collide at import: one copy."""
    skip = {".venv", "node_modules", ".git", "build"}
    found = [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*_pb2*.py")
        if not skip & set(p.relative_to(ROOT).parts)
    ]
    stubs = "clients/python/bbo_client/v1"
    assert sorted(found) == [
        f"{stubs}/service_pb2.py",
        f"{stubs}/service_pb2_grpc.py",
        f"{stubs}/study_pb2.py",
        f"{stubs}/study_pb2_grpc.py",
    ]


def test_importing_the_client_loads_neither_torch_nor_the_core():
    code = (
        "import sys, bbo_client; print(sorted({'torch', 'bbo', 'bbo_server'} & set(sys.modules)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
