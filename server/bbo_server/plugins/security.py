"""``bbo serve`` options for authentication, TLS, per-tenant limits and Prometheus metrics.

- Authentication (API keys, :mod:`bbo_server.auth`) is on by default when the server listens on a
  non-loopback address; ``--auth`` turns it on for a loopback one too; ``--no-auth`` is refused
  unless the host is loopback.
- TLS: ``--tls-cert`` / ``--tls-key`` (PEM); ``--tls-client-ca`` additionally requires client
  certificates signed by that CA (mutual TLS).
- Limits: ``--max-studies`` per tenant; the size of a request (:mod:`bbo.limits`:
  ``--max-parameters``, ``--max-choices``, ``--max-objectives``, ... one flag per bound); the request
  rate per tenant (:mod:`bbo_server.limits`: ``--rate-limit``, ``--rate-burst``) and per trial for
  the calls exempt from it (``--trial-rate``, ``--trial-burst``).
- Metrics (:mod:`bbo_server.metrics`): ``--metrics-port`` (0 = off), ``--metrics-host``.
"""

from __future__ import annotations

import argparse
import os
import sys

from bbo_server import env


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
    from bbo.limits import RequestLimits

    for name, default, what in RequestLimits.flags():
        g.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=default,
            help=f"most {what} (default %(default)s)",
        )
    g.add_argument(
        "--trial-rate",
        type=float,
        default=2.0,
        help="with --rate-limit: Tell / Heartbeat calls per second on one trial (default %(default)s)",
    )
    g.add_argument(
        "--trial-burst",
        type=float,
        default=10.0,
        help="token bucket size of --trial-rate (default %(default)s)",
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
        default=env.default("BBO_METRICS_PORT", 0, int, rule="a whole number (a port)"),
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0 = off; env BBO_METRICS_PORT)",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="interface of the metrics endpoint (default %(default)s)",
    )


def check_rates(args) -> None:
    """Refuse a rate or burst no token bucket can serve (:func:`bbo_server.env.refuse`): one
    under :data:`~bbo_server.limits.MIN_RATE` (1e-300 asked clients to wait 1e300 s, and every
    refusal failed INTERNAL), a trial rate of 0 (a trial's Tells refused for ever once its burst
    was spent), a burst under one token (every call refused), or one not finite."""
    import math

    from bbo_server.limits import MIN_RATE

    rate = (MIN_RATE, f"a number of calls/s >= {MIN_RATE:.3g} (one a day)")
    burst = (1.0, "a finite number of tokens >= 1")
    for flag, zero, (low, what) in (
        ("rate-limit", "0 (no limit) or ", rate),
        ("trial-rate", "", rate),
        ("rate-burst", "0 (2 x --rate-limit) or ", burst),
        ("trial-burst", "0 (1) or ", burst),
    ):
        v = getattr(args, flag.replace("-", "_"))
        if not ((zero and v == 0) or (math.isfinite(v) and v >= low)):
            env.refuse(flag, zero + what, v)


def configure_server(opts, args) -> None:
    from bbo.limits import RequestLimits
    from bbo.registry import default_strategy_factory
    from bbo.storage.keys import KeyStore
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
    if args.max_studies < 0:
        env.refuse("max-studies", ">= 0 (0 = unlimited)", args.max_studies)
    check_rates(args)
    try:
        opts.limits = RequestLimits(**{n: getattr(args, n) for n, _, _ in RequestLimits.flags()})
    except ValueError as e:
        raise SystemExit(f"bbo serve: {e}") from None
    opts.max_studies = args.max_studies

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
        Limits(args.rate_limit, args.rate_burst, args.trial_rate, args.trial_burst or 1.0)
    )
    gate = auth.Gate(KeyStore(None) if use_auth else None, limits)
    opts.interceptors = [metrics.MetricsInterceptor(), gate, *opts.interceptors]
    opts.authenticate = auth.authenticate
    opts.on_start = [*opts.on_start, lambda registry: gate.bind(registry.storage)]
    opts.on_llm_call = metrics.count_llm_call
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
        if not 0 < args.metrics_port < 65536:
            env.refuse("metrics-port", "in 1..65535 (0 = off)", args.metrics_port)
        try:
            metrics.serve_http(args.metrics_port, args.metrics_host)
        except OSError as e:
            raise SystemExit(
                f"bbo serve: cannot listen on {args.metrics_host}:{args.metrics_port} for metrics "
                f"({e.strerror or e}): choose another --metrics-port or stop what holds it"
            ) from None
        print(
            f"bbo serve: metrics on http://{args.metrics_host}:{args.metrics_port}/metrics",
            flush=True,
        )
    print(
        f"bbo serve: authentication {'on (API keys)' if use_auth else 'off (loopback only)'}, "
        f"TLS {'on' + (' (mutual)' if args.tls_client_ca else '') if opts.server_credentials is not None else 'off'}",
        flush=True,
    )
