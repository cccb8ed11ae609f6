"""A throwaway PostgreSQL cluster on a loopback port, from the machine's own initdb / pg_ctl.

initdb refuses to run as root, so when we are root the cluster is created and run as the
``postgres`` system user. Used by tests that need a real database (several bbo replicas).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def _find(binary: str) -> str | None:
    for d in ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"):
        p = os.path.join(d, binary)
        if os.access(p, os.X_OK):
            return p
    return shutil.which(binary)


def _bin(binary: str) -> str:
    path = _find(binary)
    if path is None:
        raise FileNotFoundError(missing_reason())
    return path


def missing_reason() -> str | None:
    """Why a cluster can't be started here, or None if it can."""
    for b in ("initdb", "pg_ctl"):
        if _find(b) is None:
            return f"PostgreSQL server binary '{b}' not found (install postgresql-15)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' system user to run initdb as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    datadir: str
    port: int
    user: str = "bbo"
    opts: str = ""

    def pause(self) -> None:
        """Stop the server but keep its data (a database outage); :meth:`resume` brings it back."""
        subprocess.run(
            _as_pg([_bin("pg_ctl"), "-D", self.datadir, "-m", "fast", "-w", "stop"]),
            check=True,
            capture_output=True,
        )

    def resume(self) -> None:
        """Start the server on its data directory (after :meth:`pause`, or the first time)."""
        log = os.path.join(os.path.dirname(self.datadir), "log")
        done = subprocess.run(
            _as_pg(
                [
                    _bin("pg_ctl"),
                    "-D",
                    self.datadir,
                    "-o",
                    self.opts,
                    "-l",
                    log,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 and self.running():
            return  # pg_ctl's wait gave up on a server that did start (seen once under load)
        if done.returncode != 0:  # say why: pg_ctl's own words and the server log's last lines
            tail = Path(log).read_text(errors="replace")[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(
                f"pg_ctl start failed ({done.returncode}): {done.stdout}{done.stderr}\nlog: {tail}"
            )

    def running(self) -> bool:
        """Whether a server runs on the data directory (``pg_ctl status``)."""
        status = _as_pg([_bin("pg_ctl"), "-D", self.datadir, "status"])
        return subprocess.run(status, capture_output=True).returncode == 0

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start(max_connections: int = 200) -> PgCluster:
    """initdb + start a cluster in a fresh temp dir; call :func:`stop` when done."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    root = tempfile.mkdtemp(prefix="bbo-pg-")
    datadir = os.path.join(root, "data")
    os.makedirs(datadir)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(datadir, "postgres")
    port = _free_port()
    subprocess.run(
        _as_pg(
            [_bin("initdb"), "-D", datadir, "-U", "bbo", "--auth=trust", "-E", "UTF8", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c max_connections={max_connections} -c fsync=on -k {root}"
    cluster = PgCluster(datadir, port, opts=opts)
    cluster.resume()
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    return cluster


def stop(cluster: PgCluster, immediate: bool = False) -> None:
    """Stop and delete the cluster; ``immediate`` skips the shutdown checkpoint (throwaway data:
    it takes tens of seconds after many CREATE DATABASEs)."""
    mode = "immediate" if immediate else "fast"
    subprocess.run(
        _as_pg([_bin("pg_ctl"), "-D", cluster.datadir, "-m", mode, "-w", "stop"]),
        capture_output=True,
    )
    shutil.rmtree(os.path.dirname(cluster.datadir), ignore_errors=True)
