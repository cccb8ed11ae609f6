"""Run ``bbo serve`` as a child process (used by ``bbo demo``, the tests and the benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence


class ServerProcess:
    """A ``bbo serve`` subprocess on a free loopback port.

    ``start()`` returns once the server answers health checks; ``address`` is then ``host:port``.
    ``stop()`` sends SIGTERM (graceful), ``kill()`` SIGKILL; ``start()`` again reopens the same
    database (on a new port unless ``port`` was given).
    """

    def __init__(
        self,
        db: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        args: Sequence[str] = (),
        log_path: str | None = None,
        env: dict | None = None,
        credentials=None,
    ):
        """``credentials``: grpc.ChannelCredentials for the health check of a TLS server."""
        self.db, self.host, self.requested_port = db, host, port
        self.credentials = credentials
        self.args = list(args)
        self.log_path = (
            log_path
            or tempfile.NamedTemporaryFile(prefix="bbo-serve-", suffix=".log", delete=False).name
        )
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        fd, port_file = tempfile.mkstemp(prefix="bbo-port-")
        os.close(fd)
        os.unlink(port_file)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [
            sys.executable,
            "-m",
            "bbo_server",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.requested_port),
            "--db",
            self.db,
            "--port-file",
            port_file,
            *self.args,
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.time() + timeout
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bbo serve exited with code {self.proc.returncode}; log: {self.log_path}\n{self.log_tail()}"
                )
            if time.time() > deadline:
                self.kill()
                raise TimeoutError(
                    f"bbo serve did not start within {timeout:g}s; log: {self.log_path}\n{self.log_tail()}"
                )
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        os.unlink(port_file)
        self._wait_healthy(deadline)
        return self

    def _wait_healthy(self, deadline: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        ch = (
            grpc.secure_channel(self.address, self.credentials)
            if self.credentials is not None
            else grpc.insecure_channel(self.address)
        )
        with ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    if (
                        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.time() > deadline:
                    raise TimeoutError(f"bbo serve not healthy; log: {self.log_path}")
                time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: in-flight calls finish. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """SIGKILL: no chance to flush or finish anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
