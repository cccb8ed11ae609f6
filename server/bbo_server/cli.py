"""The ``bbo`` command line. Subcommands live in :mod:`bbo_server.commands`, one module each with
``register(subparsers)``; a new module there adds a subcommand without touching this file."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import bbo_server.commands as commands_pkg

if TYPE_CHECKING:
    from bbo_client import Client

# Listed first in --help, in this order; other modules follow alphabetically.
ORDER = ["serve", "demo", "studies", "trials", "best", "plot"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bbo", description="Bayesian optimization as a service.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    mods = sorted(
        m.name for m in pkgutil.iter_modules(commands_pkg.__path__) if not m.name.startswith("_")
    )
    for name in mods:
        try:
            mod = importlib.import_module(f"bbo_server.commands.{name}")
        except (
            Exception
        ) as e:  # an extension that cannot load must not take the other commands down
            if name in ORDER:
                raise
            print(f"bbo: subcommand {name!r} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        reg = getattr(mod, "register", None)
        if reg is not None:
            reg(sub)
    # Reorder the help listing: well-known commands first.
    acts = sub._choices_actions
    acts.sort(key=lambda a: (ORDER.index(a.dest) if a.dest in ORDER else len(ORDER), a.dest))
    return ap


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """--address (a running server) or --db (read a database directly)."""
    p.add_argument(
        "--address",
        default=os.environ.get("BBO_ADDRESS", "127.0.0.1:50051"),
        help="server address (env BBO_ADDRESS; default %(default)s)",
    )
    p.add_argument(
        "--db",
        default=None,
        help="read this database directly instead (e.g. sqlite:///bbo-data/bbo.db)",
    )
    p.add_argument(
        "--api-key", default=os.environ.get("BBO_API_KEY"), help="API key (env BBO_API_KEY)"
    )
    p.add_argument(
        "--tenant",
        default=None,
        help="with --db: the tenant whose studies to read (default: 'default', the studies of a server without --auth)",
    )


READ_ONLY_RPCS = frozenset(
    {"GetStudy", "ListStudies", "GetTrial", "ListTrials", "GetBest", "ListLlmCalls"}
)


@contextlib.contextmanager
def connect(args) -> Iterator[Client]:
    """A bbo_client.Client to --address, or to a read-only in-process server on --db.

    The --db server listens on a Unix socket in a directory only this user can enter (no TCP
    port another local process could reach) and answers only the read RPCs."""
    from bbo_client import Client

    if getattr(args, "tenant", None) and not getattr(args, "db", None):
        raise SystemExit(
            "bbo: --tenant goes with --db; through --address the API key decides the tenant"
        )
    if not getattr(args, "db", None):
        with Client(args.address, api_key=getattr(args, "api_key", None), retries=2) as c:
            yield c
        return
    import shutil
    import tempfile

    from bbo.errors import NotFoundError
    from bbo.registry import DEFAULT_TENANT
    from bbo.storage import open_storage, shown_url
    from bbo.storage.keys import check_tenant
    from bbo_server.errors import PermissionDenied
    from bbo_server.server import ServerOptions, start

    tenant = DEFAULT_TENANT
    if args.tenant:
        try:
            tenant = check_tenant(args.tenant)
        except ValueError as e:
            raise SystemExit(f"bbo: --tenant: {e}") from None

    def read_only(context, method: str) -> str:
        if method not in READ_ONLY_RPCS:
            raise PermissionDenied(f"{method}: bbo --db only reads the database")
        return tenant

    # only to read: no migration of a database a live server may be using, no lease reaper
    try:
        storage = open_storage(args.db, migrate=False)
    except NotFoundError:
        storage = None
    if storage is None or storage.schema_revision() is None:
        if storage is not None:
            storage.close()
        shown = shown_url(args.db)  # never the URL's password
        raise SystemExit(f"bbo: no bbo database at {shown} (`bbo serve --db {shown}` creates one)")
    private = tempfile.mkdtemp(prefix="bbo-cli-")  # mode 0700: other users cannot connect
    opts = ServerOptions(
        unix_socket=os.path.join(private, "bbo.sock"),
        rpc_threads=8,
        lease_reap_seconds=0,
        authenticate=read_only,
    )
    running = start(opts, storage=storage)
    try:
        with Client(running.address, retries=0) as c:
            yield c
    finally:
        running.stop(1.0)
        storage.close()
        shutil.rmtree(private, ignore_errors=True)


# commands that read or write a database once and end (`serve`, `demo` and `kit` run a service)
ONE_SHOT = frozenset({"studies", "trials", "best", "plot", "keys", "copy"})


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a character the terminal cannot show: escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    if args.command in ONE_SHOT:
        # a one-shot command's retries of a database read are its own: its one line says what
        # failed in the end (a server logs each retry)
        logging.getLogger("bbo.storage").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output went away (`bbo trials S | head`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit's flush of stdout must not fail again
        return 1
    except Exception as e:
        message = failure_message(e)
        if message is None:
            raise
        print(f"bbo {args.command}: {message}", file=sys.stderr)
        return 1


def failure_message(e: BaseException) -> str | None:
    """What to print for an error of the server, of the core (a database URL bbo cannot use, a
    database that is away) or of the database driver (a file that is not a database, a server
    that refuses the connection), or of a file the user named (`plot -o`, `demo --runs-dir`: a
    missing folder, no permission); None for anything else (a bug: its traceback is shown)."""
    from bbo.errors import BboError as CoreError
    from bbo.storage import driver_error
    from bbo_client.errors import BboError

    if isinstance(e, BboError):
        return f"{type(e).__name__}: {e}"
    if isinstance(e, CoreError):
        return e.message
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    detail = driver_error(e)
    return None if detail is None else f"database error: {detail}"


if __name__ == "__main__":
    sys.exit(main())
