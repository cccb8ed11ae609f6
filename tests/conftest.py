"""Shared fixtures: a real ``bbo serve`` subprocess on a free loopback port with a temp SQLite file,
clients connected to it, and storage / registry objects for in-process tests.

Other test modules use them as they are:

- ``bbo_server``: one server for the whole session (``.address``, ``.db``); give studies unique
  names (``study_name``).
- ``server_factory(db=None, args=())``: a fresh ``ServerProcess`` (started), stopped at the end;
  for restart / kill / configuration tests. ``.address``, ``.kill()``, ``.stop()``, ``.start()``.
- ``client``: a ``bbo_client.Client`` on ``bbo_server``.
- ``study_name``: a name unique to the test.
- ``make_study(client, name, **kw)``: a small 2-parameter study (x in [0,1], k in {a,b,c}) minimizing ``y``.
- ``storage`` / ``registry``: a migrated temp SQLite ``Storage`` / ``StudyRegistry`` in-process.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def sqlite_url(path) -> str:
    return "sqlite:///" + str(path)


@pytest.fixture(scope="session")
def bbo_server(tmp_path_factory):
    from bbo_server.process import ServerProcess

    d = tmp_path_factory.mktemp("bbo-server")
    srv = ServerProcess(
        sqlite_url(d / "bbo.db"), log_path=str(d / "server.log"), args=["--workers", "1"]
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path):
    from bbo_server.process import ServerProcess

    started: list[ServerProcess] = []

    def start(db: str | None = None, args=(), **kw) -> ServerProcess:
        n = len(started)
        srv = ServerProcess(
            db or sqlite_url(tmp_path / f"bbo-{n}.db"),
            log_path=str(tmp_path / f"server-{n}.log"),
            args=list(args),
            **kw,
        )
        started.append(srv)
        return srv.start()

    yield start
    for s in started:
        s.kill() if s.running() else None


@pytest.fixture
def client(bbo_server):
    from bbo_client import Client

    with Client(bbo_server.address, retries=3) as c:
        yield c


@pytest.fixture
def study_name(request) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80].strip("-")
    return f"{base}-{uuid.uuid4().hex[:6]}"


def _make_study(client, name, **kw):
    from bbo_client import Categorical, Float

    kw.setdefault("parameters", [Float("x", 0.0, 1.0), Categorical("k", ["a", "b", "c"])])
    kw.setdefault("objectives", "y")
    return client.create_study(name, **kw)


@pytest.fixture
def make_study():
    return _make_study


@pytest.fixture
def storage(tmp_path):
    from bbo.storage import open_storage

    s = open_storage(sqlite_url(tmp_path / "unit.db"))
    yield s
    s.close()


@pytest.fixture
def registry(storage):
    from bbo.registry import StudyRegistry

    return StudyRegistry(storage)


@pytest.fixture(scope="session")
def cluster():
    """A throwaway PostgreSQL cluster shared by the tests that need one (bbo/testing/postgres.py)."""
    from bbo.testing import postgres as pg_cluster

    c = pg_cluster.start()
    yield c
    pg_cluster.stop(c, immediate=True)
