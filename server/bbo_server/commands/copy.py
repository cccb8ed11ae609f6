"""``bbo copy SRC DST``: copy a whole bbo database into an empty one (a backup, or SQLite -> PostgreSQL).

bbo copy sqlite:///bbo-data/bbo.db sqlite:///backups/bbo-2026-11-24.db   # while the server runs
bbo copy sqlite:///bbo-data/bbo.db postgresql+psycopg://bbo@db/bbo      # then serve from PostgreSQL
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "copy",
        help="copy a bbo database into an empty one (a live backup, or SQLite -> PostgreSQL)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("source", help="database URL to read (a server may be running on it)")
    p.add_argument("target", help="database URL to write: created or migrated, and required empty")
    p.set_defaults(func=copy)


def copy(args) -> int:
    from bbo.storage import shown_url
    from bbo.storage.copy import CopyError, copy_database

    if args.source == args.target:
        print("bbo copy: source and target are the same database", file=sys.stderr)
        return 2
    try:
        counts = copy_database(args.source, args.target)
    except CopyError as e:
        print(f"bbo copy: {e}", file=sys.stderr)
        return 1
    print(
        ", ".join(f"{n} {t}" for t, n in counts.items()) + f": copied to {shown_url(args.target)}"
    )
    return 0
