"""``bbo serve`` options for running several replicas on one PostgreSQL database.

They set the ``BBO_DB_*`` environment variables :mod:`bbo.storage.pg` reads (query parameters of
the ``--db`` URL take precedence). SQLite ignores them.
"""

from __future__ import annotations

import os

_FLAGS = [
    (
        "--db-pool-size",
        "pool_size",
        "connections per replica in the main pool (default: rpc-threads // 2, at least 8; as many again may overflow)",
    ),
    (
        "--db-statement-timeout",
        "statement_timeout",
        "PostgreSQL statement_timeout of the replica's sessions (default 30s)",
    ),
    (
        "--db-lock-timeout",
        "lock_timeout",
        "PostgreSQL lock_timeout (default 10s); lock waits past it are retried",
    ),
    (
        "--db-lock-wait-timeout",
        "lock_wait_timeout",
        "how long an Ask waits for another replica's Ask on the same study (default 600s)",
    ),
]


def add_serve_arguments(parser) -> None:
    g = parser.add_argument_group(
        "PostgreSQL (several replicas on one database; see deploy/README.md)"
    )
    for flag, key, help_ in _FLAGS:
        g.add_argument(flag, dest=f"db_{key}", default=None, help=help_)


def configure_server(opts, args) -> None:
    for _flag, key, _help in _FLAGS:
        v = getattr(args, f"db_{key}", None)
        if v not in (None, ""):
            os.environ["BBO_DB_" + key.upper()] = str(v)
