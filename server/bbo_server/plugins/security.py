"""``bbo serve`` options for authentication, TLS, per-tenant limits and Prometheus metrics.

- Authentication (API keys, :mod:`bbo_server.auth`) is on by default when the server listens on a
  non-loopback address; ``--auth`` turns it on for a loopback one too; ``--no-auth`` is refused
  unless the host is loopback.
- TLS: ``--tls-cert`` / ``--tls-key`` (PEM); ``--tls-client-ca`` additionally requires client
  certificates signed by that CA (mutual TLS).
- Limits (:mod:`bbo_server.limits`): ``--max-studies``, ``--max-parameters``, ``--rate-limit``,
  ``--rate-burst``.
- Metrics (:mod:`bbo_server.metrics`): ``--metrics-port`` (0 = off), ``--metrics-host``.
"""

from __future__ import annotations

import argparse
import os
import sys


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security and limits")
    auth = g.add_mutually_exclusive_group()
    auth.add_argument(
        "--auth",
        dest="auth",
        action="store_true",
        default=None,
        help="require API keys (default: on when --host is not a loopback address)",
    )
    auth.add_argument(
        "--no-auth",
        dest="auth",
        action="store_false",
        help="no API keys, every caller is tenant 'default' (only allowed on a loopback --host)",
    )
    g.add_argument(
        "--tls-cert",
        default=os.environ.get("BBO_TLS_CERT"),
        help="TLS certificate chain, PEM (env BBO_TLS_CERT)",
    )
    g.add_argument(
        "--tls-key",
        default=os.environ.get("BBO_TLS_KEY"),
        help="TLS private key, PEM (env BBO_TLS_KEY)",
    )
    g.add_argument(
        "--tls-client-ca",
        default=os.environ.get("BBO_TLS_CLIENT_CA"),
        help="require client certificates signed by this CA, PEM (mutual TLS; env BBO_TLS_CLIENT_CA)",
    )
    g.add_argument(
        "--max-studies",
        type=int,
        default=10000,
        help="studies per tenant (0 = unlimited; default %(default)s)",
    )
    g.add_argument(
        "--max-parameters",
        type=int,
        default=256,
        help="parameters per study (0 = unlimited; default %(default)s)",
    )
    g.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="requests per second per tenant, token bucket; Tell and Heartbeat are exempt (0 = unlimited; default %(default)s)",
    )
    g.add_argument(
        "--rate-burst",
        type=float,
        default=0.0,
        help="token bucket size (default: 2 x --rate-limit)",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("BBO_METRICS_PORT", 0),
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0 = off; env BBO_METRICS_PORT)",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="interface of the metrics endpoint (default %(default)s)",
    )


def configure_server(opts, args) -> None:
    from bbo.storage.keys import KeyStore
    from bbo.study import default_strategy_factory
    from bbo_server import auth, metrics, tls
    from bbo_server.limits import LimitChecker, Limits

    loopback = auth.is_loopback(opts.host)
    want_auth = getattr(args, "auth", None)
    if want_auth is False and not loopback:
        raise SystemExit(
            f"bbo serve: refusing --no-auth on {opts.host}: without API keys anyone who can reach the port "
            "could read and change every study. Use a loopback --host (127.0.0.1) or create keys with "
            "`bbo keys create --tenant NAME` and drop --no-auth."
        )
    use_auth = (not loopback) if want_auth is None else want_auth
    for v in ("max_studies", "max_parameters"):
        if getattr(args, v, 0) < 0:
            raise SystemExit(f"bbo serve: --{v.replace('_', '-')} must be >= 0")
    if getattr(args, "rate_limit", 0.0) < 0 or getattr(args, "rate_burst", 0.0) < 0:
        raise SystemExit("bbo serve: --rate-limit and --rate-burst must be >= 0")

    if (
        getattr(args, "tls_cert", None)
        or getattr(args, "tls_key", None)
        or getattr(args, "tls_client_ca", None)
    ):
        try:
            opts.server_credentials = tls.server_credentials(
                args.tls_cert, args.tls_key, args.tls_client_ca
            )
        except ValueError as e:
            raise SystemExit(f"bbo serve: {e}") from None

    limits = LimitChecker(
        Limits(args.max_studies, args.max_parameters, args.rate_limit, args.rate_burst)
    )
    gate = auth.Gate(KeyStore(None) if use_auth else None, limits)
    opts.interceptors = [metrics.MetricsInterceptor(), gate, *opts.interceptors]
    opts.authenticate = auth.authenticate
    opts.on_start = [
        *opts.on_start,
        lambda registry: gate.bind(registry.storage),
        lambda registry: metrics.count_llm_calls(registry.storage),
    ]
    if use_auth:

        def warn_without_keys(registry) -> None:
            if KeyStore(registry.storage).count_active() == 0:
                print(
                    "bbo serve: authentication is on but no API key exists yet: create one with "
                    "`bbo keys create --tenant NAME --db URL`",
                    file=sys.stderr,
                    flush=True,
                )

        opts.on_start = [*opts.on_start, warn_without_keys]
    opts.strategy_factory = metrics.instrument_factory(
        opts.strategy_factory or default_strategy_factory
    )
    if args.metrics_port:
        metrics.serve_http(args.metrics_port, args.metrics_host)
        print(
            f"bbo serve: metrics on http://{args.metrics_host}:{args.metrics_port}/metrics",
            flush=True,
        )
    print(
        f"bbo serve: authentication {'on (API keys)' if use_auth else 'off (loopback only)'}, "
        f"TLS {'on' + (' (mutual)' if args.tls_client_ca else '') if opts.server_credentials is not None else 'off'}",
        flush=True,
    )
