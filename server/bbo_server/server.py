"""Build and run the gRPC server: BboService + health checking + reflection, size limits, graceful
shutdown on SIGTERM / SIGINT (in-flight calls finish within the grace period)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bbo.errors import BboError
from bbo.limits import RequestLimits
from bbo.registry import StudyConfig, StudyRegistry
from bbo.storage import Storage, default_url, open_storage
from bbo_client.v1 import service_pb2
from bbo_server.admission import (
    REFLECTION_THREADS,
    SIDE_THREADS,
    Admission,
    CountingPool,
    backstop,
    default_cap,
)
from bbo_server.auth import Gate
from bbo_server.limits import TenantCalls, default_tenant_rpcs
from bbo_server.servicer import Authenticate, BboServicer, add_to_server

if TYPE_CHECKING:
    from bbo.llm import LlmAdvisor

log = logging.getLogger("bbo.server")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["BboService"].full_name


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(fit_workers: int, torch_threads: int = 0) -> int:
    """Pick torch's intra-op thread count on purpose: ``cores // fit_workers`` (at least 1).

    On a 2-core box, two OpenMP pools spinning against each other (a fit plus anything else busy)
    collapse throughput ~10x, so concurrent fits share the cores instead of each taking all.
    Must run before torch is imported for the environment variables to matter.
    """
    n = torch_threads if torch_threads > 0 else max(1, available_cores() // max(1, fit_workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import sys

    torch = sys.modules.get("torch")  # not imported yet: the variables above take effect on import
    if torch is not None:
        torch.set_num_threads(n)
    return n


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    db: str = ""
    fit_workers: int = 0  # concurrent suggestion computations (0 = one per core)
    torch_threads: int = 0  # 0 = cores // fit_workers
    rpc_threads: int = 64  # gRPC handler threads (tells are cheap; asks may wait on fits)
    # calls running or queued for a handler thread; past it refused with a RetryInfo (bbo_server/
    # admission.py). 0 = 4 x rpc_threads
    max_concurrent_rpcs: int = 0
    # calls one tenant has running at once (Tell and Heartbeat apart), less with several tenants
    # busy; past it refused with a RetryInfo (bbo_server/limits.py: TenantCalls). 0 = rpc_threads // 2
    max_tenant_rpcs: int = 0
    device: str = "auto"
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_ask: int = 100
    max_ask_seconds: float = 300.0  # see StudyConfig.max_ask_seconds
    default_lease_seconds: float = 600.0
    lease_reap_seconds: float = (
        5.0  # how often expired leases are ABANDONED, for all studies (0 = only on Ask)
    )
    health_probe_seconds: float = 5.0  # how often health reads the database (0 = never)
    grace_seconds: float = 30.0
    authenticate: Authenticate | None = None
    interceptors: Sequence[grpc.ServerInterceptor] = field(default_factory=tuple)
    strategy_factory: Callable | None = None
    server_credentials: grpc.ServerCredentials | None = (
        None  # TLS (bbo_server.tls); None = plaintext
    )
    on_start: Sequence[Callable[[StudyRegistry], None]] = field(
        default_factory=tuple
    )  # called before serving
    llm: LlmAdvisor | None = None  # plugins/llm.py; None = plain BO
    max_studies: int = 10000  # per tenant (0 = unlimited)
    max_cached_studies: int = 1000  # studies kept in memory, least recently used dropped (0 = all)
    limits: RequestLimits = field(default_factory=RequestLimits)
    on_llm_call: Callable | None = None  # an observer of every stored LLM call (metrics)
    unix_socket: str = ""  # serve on this Unix socket path instead of host:port
    # called once the server has stopped (e.g. a plugin's child process: the local LLM engine)
    on_stop: Sequence[Callable[[], None]] = field(default_factory=tuple)


class Periodic:
    """A daemon thread that runs :meth:`round` every ``interval`` seconds until stopped."""

    name = "bbo-periodic"

    def __init__(self, interval: float):
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def round(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.round()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class LeaseReaper(Periodic):
    """ABANDONs expired leases of every study every ``interval`` seconds, so a dead worker's trial
    is released without waiting for the next Ask of its study."""

    name = "bbo-lease-reaper"

    def __init__(self, registry: StudyRegistry, interval: float):
        super().__init__(interval)
        self.registry = registry

    def round(self) -> None:
        try:
            self.registry.expire_leases()
        except Exception:  # e.g. the database is briefly unavailable: try again next round
            log.warning("lease reaper round failed", exc_info=True)


class DatabaseProbe(Periodic):
    """Health follows the database: every ``interval`` seconds the schema revision is read; while
    that fails both health names answer NOT_SERVING, so a load balancer's health checks send calls
    to replicas that can store them (every call here would be UNAVAILABLE), and SERVING again
    once it passes. A read unanswered after ``max(interval, MIN_WAIT)`` seconds counts as failed
    (a database that stops answering, e.g. a network partition, hangs calls rather than failing
    them); no other read starts until it ends. A server shutting down stays NOT_SERVING (gRPC's
    health servicer)."""

    name = "bbo-database-probe"
    MIN_WAIT = 2.0  # seconds a read may take before health turns NOT_SERVING

    def __init__(self, storage: Storage, health_servicer: health.HealthServicer, interval: float):
        super().__init__(interval)
        self.storage, self.health, self.reachable = storage, health_servicer, True
        self.wait = max(self.interval, self.MIN_WAIT)
        self._read: futures.Future | None = None

    def _start_read(self) -> futures.Future:
        """The read on a daemon thread of its own: one stuck on a dead socket holds neither the
        probe nor the process's exit."""
        done: futures.Future = futures.Future()

        def read() -> None:
            try:
                done.set_result(self.storage.schema_revision())
            except BaseException as e:  # noqa: BLE001 - handed to round()
                done.set_exception(e)

        threading.Thread(target=read, name="bbo-database-read", daemon=True).start()
        return done

    def round(self) -> None:
        if self._read is None or self._read.done():
            self._read = self._start_read()
        why: object = None
        try:
            self._read.result(timeout=self.wait)
            reachable = True
        except futures.TimeoutError:
            reachable, why = False, f"a read has not answered in {self.wait:g} s"
        except Exception as e:  # noqa: BLE001 - any failure to read means calls would fail too
            reachable, why = False, e
        if reachable == self.reachable:
            return
        self.reachable = reachable
        status = health_pb2.HealthCheckResponse.SERVING
        if reachable:
            log.info("database reachable again: health SERVING")
        else:
            log.warning("database unreachable: health NOT_SERVING (%s)", why)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)


class RunningServer:
    """A started server: ``address``, ``registry``; :meth:`stop` shuts it down gracefully."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        host: str,
        registry: StudyRegistry,
        health_servicer: health.HealthServicer,
        storage: Storage,
        owns_storage: bool,
        reaper: LeaseReaper | None = None,
        on_stop: Sequence[Callable[[], None]] = (),
        probe: DatabaseProbe | None = None,
    ):
        self.server, self.port, self.host = server, port, host
        self.registry, self.health, self.storage = registry, health_servicer, storage
        self._owns_storage = owns_storage
        self.reaper, self.probe = reaper, probe
        self.unix_socket = ""
        self.admission: Admission | None = None  # the --max-concurrent-rpcs gate (set by start)
        self.tenant_calls: TenantCalls | None = None  # the --max-tenant-rpcs bound (set by start)
        self._on_stop = list(on_stop)

    @property
    def address(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        return f"{bracketed(self.host)}:{self.port}"

    def stop(self, grace: float = 30.0) -> None:
        self.health.enter_graceful_shutdown()
        for periodic in (self.probe, self.reaper):
            if periodic is not None:
                periodic.stop()
        self.server.stop(grace).wait()
        self.registry.close()
        while self._on_stop:
            hook = self._on_stop.pop()
            try:
                hook()
            except Exception:  # one failing hook must not keep the others (or the storage) open
                log.exception("a shutdown hook failed")
        if self._owns_storage:
            self.storage.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def bracketed(host: str) -> str:
    """``host`` as it goes before ``:PORT``: an IPv6 address in brackets, once."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def start(opts: ServerOptions, storage: Storage | None = None) -> RunningServer:
    """Open the database (migrating it), build the registry and start serving."""
    owns = storage is None
    if storage is None:
        storage = open_storage(
            opts.db or default_url(), pool_size=max(8, opts.rpc_threads // 2), exclusive=True
        )
    fit_workers = opts.fit_workers or available_cores()
    if opts.llm is not None and opts.llm.cache is None:
        from bbo.llm import StoredAnswers

        opts.llm.cache = StoredAnswers(storage)  # answers survive restarts, shared by replicas
    registry = StudyRegistry(
        storage,
        strategy_factory=opts.strategy_factory,
        config=StudyConfig(
            default_lease_seconds=opts.default_lease_seconds,
            max_ask=opts.max_ask,
            max_ask_seconds=opts.max_ask_seconds,
            device=opts.device,
            llm=opts.llm,
            max_studies=opts.max_studies,
            max_cached_studies=opts.max_cached_studies,
            limits=opts.limits,
            on_llm_call=opts.on_llm_call,
        ),
        fit_slots=fit_workers,
    )
    cap = opts.max_concurrent_rpcs or default_cap(opts.rpc_threads)
    pool = CountingPool(max_workers=opts.rpc_threads, thread_name_prefix="bbo-rpc")
    side = futures.ThreadPoolExecutor(max_workers=SIDE_THREADS, thread_name_prefix="bbo-rpc-side")
    shown = futures.ThreadPoolExecutor(
        max_workers=REFLECTION_THREADS, thread_name_prefix="bbo-rpc-reflection"
    )
    admission = Admission(pool, cap, side, shown)
    server = grpc.server(
        pool,
        # first: a refused call reaches no other interceptor (no key lookup, no rate token)
        interceptors=[admission, *opts.interceptors],
        maximum_concurrent_rpcs=backstop(cap),
        options=[
            ("grpc.max_receive_message_length", opts.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    tenant_calls = TenantCalls(
        opts.max_tenant_rpcs or default_tenant_rpcs(opts.rpc_threads), opts.rpc_threads
    )
    # a call's tenant is known from its metadata before its request is read (admission's reader)
    gate = next((i for i in opts.interceptors if isinstance(i, Gate)), None)
    admission.identified = gate.identified if gate is not None else None
    admission.tenant_calls = tenant_calls
    add_to_server(BboServicer(registry, opts.authenticate, tenant_calls), server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    host = bracketed(opts.host)
    for hook in opts.on_start:
        hook(registry)
    address = f"unix:{opts.unix_socket}" if opts.unix_socket else f"{host}:{opts.port}"
    try:  # grpcio returns 0 for a port it cannot bind, or (newer ones) raises RuntimeError
        if opts.server_credentials is not None and not opts.unix_socket:
            port = server.add_secure_port(address, opts.server_credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        if owns:
            storage.close()  # and with it the SQLite file's claim
        raise BboError(
            f"cannot listen on {opts.unix_socket or f'{host}:{opts.port}'} (in use, or not "
            "an address of this machine): choose another --port or --host, or stop what holds it"
        )
    server.start()
    for name in ("", SERVICE_NAME):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    reaper = (
        LeaseReaper(registry, opts.lease_reap_seconds).start()
        if opts.lease_reap_seconds > 0
        else None
    )
    probe = (
        DatabaseProbe(storage, hs, opts.health_probe_seconds).start()
        if opts.health_probe_seconds > 0
        else None
    )
    # hooks run last first: the pools go once everything else has stopped
    on_stop = [
        lambda: pool.shutdown(wait=False),
        lambda: side.shutdown(wait=False),
        lambda: shown.shutdown(wait=False),
        *opts.on_stop,
    ]
    running = RunningServer(
        server, port, opts.host, registry, hs, storage, owns, reaper, on_stop=on_stop, probe=probe
    )
    running.unix_socket = opts.unix_socket
    running.admission = admission
    running.tenant_calls = tenant_calls
    return running


def _preload() -> None:
    """Import the model-based strategies (torch, BoTorch: seconds) so the first Ask does not.
    ``bbo.strategy`` alone imports them lazily, on first use."""
    try:
        import bbo.strategy.generation  # noqa: F401
        import bbo.strategy.multi_fidelity  # noqa: F401
    except Exception:  # the first Ask will report it
        log.exception("could not import the generation strategy")


def serve_forever(opts: ServerOptions, port_file: str | None = None) -> int:
    """Run until SIGTERM / SIGINT; then stop accepting calls and let in-flight ones finish."""
    fit_workers = opts.fit_workers or available_cores()
    threads = configure_threads(fit_workers, opts.torch_threads)
    running = start(opts)
    facts = running.storage.describe()
    db = facts["db"]
    log.info(
        "serving",
        extra={
            "address": running.address,
            "fit_workers": fit_workers,
            "torch_threads": threads,
            "rpc_threads": opts.rpc_threads,
            "max_concurrent_rpcs": opts.max_concurrent_rpcs or default_cap(opts.rpc_threads),
            "max_tenant_rpcs": opts.max_tenant_rpcs or default_tenant_rpcs(opts.rpc_threads),
            "device": opts.device,
            **facts,
        },
    )
    print(f"bbo serve: listening on {running.address} (db {db})", flush=True)
    # Import the generation strategy (torch, BoTorch: seconds) now rather than in the first Ask.
    threading.Thread(target=_preload, name="bbo-preload", daemon=True).start()
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(running.port))
        os.replace(tmp, port_file)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info(
            "shutting down",
            extra={"signal": signal.Signals(signum).name, "grace_seconds": opts.grace_seconds},
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    running.stop(opts.grace_seconds)
    log.info("stopped")
    left = running.admission.pool.pending if running.admission is not None else 0
    if left:
        # calls still running past the grace (an ask's fit): cancelled, they store nothing
        # (Study.ask checks its caller), and waiting for them kept the process, and a SQLite
        # file's lock, seconds past --grace-seconds
        log.info("exiting with calls still running", extra={"calls": left})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
