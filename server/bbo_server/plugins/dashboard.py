"""``bbo serve --dashboard-port N``: the read-only web dashboard (:mod:`bbo_server.dashboard`),
served by the server process itself, off by default.

It takes the gRPC API's authentication as it is: when the API requires keys (``--auth``, or a
non-loopback ``--host``) so does the dashboard, with the same keys and tenants. Without keys it
only listens on a loopback ``--dashboard-host``. With ``--tls-cert`` / ``--tls-key`` it serves
HTTPS with the same certificate (and requires client certificates under ``--tls-client-ca``).
"""

from __future__ import annotations

import os
import sys

from bbo_server import env


def add_serve_arguments(p) -> None:
    g = p.add_argument_group("web dashboard (read-only)")
    g.add_argument(
        "--dashboard-port",
        type=int,
        default=env.default("BBO_DASHBOARD_PORT", 0, int, rule="a whole number (a port)"),
        help="serve the read-only web dashboard on http://DASHBOARD_HOST:PORT/ "
        "(0 = off, the default; env BBO_DASHBOARD_PORT); it needs the API's keys when auth is on",
    )
    g.add_argument(
        "--dashboard-host",
        default=os.environ.get("BBO_DASHBOARD_HOST", "127.0.0.1"),
        help="interface of the dashboard (default %(default)s; env BBO_DASHBOARD_HOST)",
    )


def configure_server(opts, args) -> None:
    port = getattr(args, "dashboard_port", 0) or 0
    if port == 0:
        return
    host = args.dashboard_host
    if not 0 < port < 65536:
        env.refuse("dashboard-port", "in 1..65535 (0 = off)", port)
    from bbo_server import dashboard

    try:
        sock = dashboard.bind(host, port)
    except OSError as e:
        raise SystemExit(
            f"bbo serve: cannot listen on {host}:{port} for the dashboard ({e.strerror or e}): "
            "choose another --dashboard-port or stop what holds it"
        ) from None
    server = dashboard.DashboardServer(
        sock,
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
        getattr(args, "tls_client_ca", None),
    )

    def start(registry) -> None:
        # Runs after every plugin configured the server: the API's gate (plugins/security.py)
        # is in opts.interceptors by then, and the dashboard takes its authentication as it is.
        from bbo.registry import DEFAULT_TENANT
        from bbo.storage.keys import KeyStore
        from bbo_server.auth import Gate, is_loopback

        gate = next((i for i in opts.interceptors if isinstance(i, Gate)), None)
        keys = KeyStore(registry.storage) if gate is not None and gate.keys is not None else None
        if keys is None and not is_loopback(host):
            sock.close()
            raise SystemExit(
                f"bbo serve: refusing --dashboard-host {host} without API keys: anyone who can "
                "reach it could read every study. Use a loopback --dashboard-host (127.0.0.1) or "
                "turn keys on (--auth)."
            )
        tenant = gate.default_tenant if gate is not None else DEFAULT_TENANT
        limits = gate.limits if gate is not None else None  # --rate-limit holds here too
        server.start(dashboard.create_app(registry, keys, tenant, limits))
        shown = f"[{host}]" if ":" in host else host
        print(
            f"bbo serve: dashboard on {server.scheme}://{shown}:{server.port}/ "
            f"({'API keys required' if keys is not None else 'no keys: loopback only'})",
            flush=True,
        )
        if server.scheme == "http" and not is_loopback(host):
            print(
                "bbo serve: warning: the dashboard is plain HTTP on a non-loopback address, so "
                "API keys cross the network in clear: add --tls-cert / --tls-key",
                file=sys.stderr,
                flush=True,
            )

    opts.on_start = [*opts.on_start, start]
