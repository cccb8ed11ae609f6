"""``bbo serve``: run the gRPC server."""

from __future__ import annotations

import argparse
import os

from bbo_server import env

DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("debug", "info", "warning", "error")


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the bbo gRPC server",
        description="Run the bbo gRPC server until SIGTERM / Ctrl-C.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default %(default)s; 0.0.0.0 for all)",
    )
    p.add_argument(
        "--port", type=int, default=50051, help="port (0 = pick a free one; default %(default)s)"
    )
    p.add_argument(
        "--db",
        default=os.environ.get("BBO_DB", ""),
        help="database URL: sqlite:///PATH (default ./bbo-data/bbo.db) or postgresql+psycopg://user@host/db (env BBO_DB)",
    )
    p.add_argument(
        "--device",
        default=env.default("BBO_DEVICE", "auto", str.lower, DEVICES),
        choices=DEVICES,
        help="where GP fits run (default %(default)s; env BBO_DEVICE)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="concurrent suggestion computations (default: one per core)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads per fit (default: cores // workers, at least 1)",
    )
    p.add_argument(
        "--rpc-threads", type=int, default=64, help="gRPC handler threads (default %(default)s)"
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=0,
        help="calls running or queued for a handler thread; past it a call is refused at once with "
        "RESOURCE_EXHAUSTED and a RetryInfo, and clients retry (0, the default: 4 x --rpc-threads)",
    )
    p.add_argument(
        "--max-tenant-rpcs",
        type=int,
        default=0,
        help="calls one tenant has running at once, Tell and Heartbeat apart, and with n >= 2 "
        "tenants busy at most --rpc-threads / (n + 1) each; past it a call is refused at once with "
        "RESOURCE_EXHAUSTED and a RetryInfo, and clients retry (0, the default: half of "
        "--rpc-threads; --rpc-threads or more: no bound for a tenant alone)",
    )
    p.add_argument(
        "--max-ask",
        type=int,
        default=100,
        help="most trials one Ask may request (default %(default)s)",
    )
    p.add_argument(
        "--max-ask-seconds",
        type=float,
        default=300.0,
        help="an ask starts no acquisition step for a batch's later points past this many seconds "
        "(nor past 3/4 of its caller's deadline): the rest are the best of random points under "
        "the model (default %(default)s)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=600.0,
        help="default trial lease, at most 7 days; unheartbeated pending trials are ABANDONED after it (default %(default)s)",
    )
    p.add_argument(
        "--lease-reap-seconds",
        type=float,
        default=5.0,
        help="how often expired leases of all studies are ABANDONED (0 = only on the study's next Ask; default %(default)s)",
    )
    p.add_argument(
        "--health-probe-seconds",
        type=float,
        default=5.0,
        help="how often the database is read for the health service: NOT_SERVING while it cannot "
        "be (0 = never; default %(default)s)",
    )
    p.add_argument(
        "--max-cached-studies",
        type=int,
        default=1000,
        help="studies kept in memory (strategy, fitted model, trials), least recently used dropped and "
        "read back from the database on their next call (0 = every study ever used; default %(default)s)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest accepted request (default 4 MiB)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight calls may take (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default=env.default("BBO_LOG_LEVEL", "info", str.lower, LOG_LEVELS),
        choices=LOG_LEVELS,
        help="log level (default %(default)s; env BBO_LOG_LEVEL)",
    )
    p.add_argument(
        "--port-file", default=None, help=argparse.SUPPRESS
    )  # written once serving (tests, demo)
    from bbo_server import plugins

    for mod in plugins.load():
        if hasattr(mod, "add_serve_arguments"):
            mod.add_serve_arguments(p)
    p.set_defaults(func=run)


# gRPC takes message sizes as a C int, and reads -1 as "no limit"
MAX_MESSAGE_BYTES_CAP = 2**31 - 1
# --workers starts its threads at once, --torch-threads is a C int of OpenMP's: 2**63 of either
# hung or failed the start
MAX_THREADS = 1024
# the lease reaper's and the health probe's intervals, and the grace: past a week the waits on
# them overflowed (the reaper's and the probe's threads died, the stop was not graceful)
LONGEST_WAIT = 7 * 24 * 3600.0
SHORTEST_INTERVAL = 0.01  # reaper and probe: shorter spun a thread on the database
SHORTEST_LEASE = 1.0  # shorter (1e-300) abandoned a trial before its first Heartbeat


def check_args(args) -> None:
    """Refuse a numeric flag out of its range with a message naming it (exit status 1): gRPC
    would bind a port modulo 65536 and read a negative message size as no limit, and a lease of
    0 or less would abandon every trial as soon as it is asked (one past 7 days failed every Ask)."""
    import math

    bad = env.refuse
    env.check(args)

    if not 0 <= args.port <= 65535:
        bad("port", "in 0..65535 (0 = pick a free one)", args.port)
    for flag, low, high in (
        ("workers", 0, MAX_THREADS),
        ("torch-threads", 0, MAX_THREADS),
        ("rpc-threads", 1, MAX_THREADS),
        ("max-concurrent-rpcs", 0, None),
        ("max-tenant-rpcs", 0, None),
        ("max-ask", 1, None),
        ("max-cached-studies", 0, None),
        ("max-message-bytes", 1, MAX_MESSAGE_BYTES_CAP),
    ):
        v = getattr(args, flag.replace("-", "_"))
        if v < low or (high is not None and v > high):
            bad(flag, f"in {low}..{high}" if high is not None else f">= {low}", v)
    if not (math.isfinite(args.max_ask_seconds) and args.max_ask_seconds > 0):
        bad("max-ask-seconds", "a number of seconds > 0", args.max_ask_seconds)
    from bbo.registry import StudyConfig

    longest = StudyConfig.max_lease_seconds  # an Ask's own lease_seconds is held to it too
    if not (SHORTEST_LEASE <= args.lease_seconds <= longest):  # False for nan
        bad(
            "lease-seconds",
            f"a number of seconds in [{SHORTEST_LEASE:g}, {longest:g}] (7 days)",
            args.lease_seconds,
        )
    for flag, shortest in (
        ("lease-reap-seconds", SHORTEST_INTERVAL),
        ("health-probe-seconds", SHORTEST_INTERVAL),
        ("grace-seconds", 0.0),
    ):
        v = getattr(args, flag.replace("-", "_"))
        if not (v == 0 or shortest <= v <= LONGEST_WAIT):
            zero = "0 or " if shortest else ""
            bad(flag, f"{zero}a number of seconds in [{shortest:g}, {LONGEST_WAIT:g}] (7 days)", v)


def run(args) -> int:
    from bbo_server import logs
    from bbo_server.server import ServerOptions, serve_forever

    check_args(args)
    logs.setup(args.log_level)
    from bbo.memory import disable_mkl_fast_mm, limit_malloc_arenas

    limit_malloc_arenas()  # before the RPC threads exist: their arenas are what a long run accumulates
    disable_mkl_fast_mm()  # before torch (and MKL) load
    opts = ServerOptions(
        host=args.host,
        port=args.port,
        db=args.db,
        fit_workers=args.workers,
        torch_threads=args.torch_threads,
        rpc_threads=args.rpc_threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_tenant_rpcs=args.max_tenant_rpcs,
        device=args.device,
        max_message_bytes=args.max_message_bytes,
        max_ask=args.max_ask,
        max_ask_seconds=args.max_ask_seconds,
        default_lease_seconds=args.lease_seconds,
        lease_reap_seconds=args.lease_reap_seconds,
        health_probe_seconds=args.health_probe_seconds,
        grace_seconds=args.grace_seconds,
        max_cached_studies=args.max_cached_studies,
    )
    from bbo_server import plugins

    for mod in plugins.load():
        if hasattr(mod, "configure_server"):
            mod.configure_server(opts, args)
    return serve_forever(opts, port_file=args.port_file)
