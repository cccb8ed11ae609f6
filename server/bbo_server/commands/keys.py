"""``bbo keys``: create, list and revoke API keys (works on the database directly).

    bbo keys create --tenant acme [--label ci] [--db URL]   # prints the key once
    bbo keys list [--tenant acme] [--json]
    bbo keys revoke KEY_ID

A running server sees new and revoked keys on the next call (keys are looked up per call).
"""

from __future__ import annotations

import json
import os
import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "keys", help="create, list and revoke API keys", description=__doc__.split("\n\n")[0]
    )
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True

    def db_arg(q):
        q.add_argument(
            "--db",
            default=os.environ.get("BBO_DB", ""),
            help="database URL (env BBO_DB; default ./bbo-data/bbo.db)",
        )

    c = ks.add_parser(
        "create", help="create a key for a tenant and print it (shown only this once)"
    )
    c.add_argument(
        "--tenant",
        required=True,
        help="the tenant the key acts as (letters, digits, '_', '-', '.')",
    )
    c.add_argument("--label", default="", help="a note: who or what uses the key")
    c.add_argument("--json", action="store_true", help="print {key, key_id, tenant} as JSON")
    db_arg(c)
    c.set_defaults(func=create)

    ls = ks.add_parser("list", help="list keys (ids, tenants, state; never the secrets)")
    ls.add_argument("--tenant", default=None)
    ls.add_argument("--json", action="store_true")
    db_arg(ls)
    ls.set_defaults(func=list_keys)

    r = ks.add_parser("revoke", help="revoke a key by its id (from `bbo keys list`)")
    r.add_argument("key_id")
    db_arg(r)
    r.set_defaults(func=revoke)


def _store(args, *, create: bool = False):
    """The key store of --db; only ``create`` makes (or migrates) the database: listing and
    revoking keys of a database that is not there, or not a bbo one, changes nothing."""
    from bbo.errors import NotFoundError
    from bbo.storage import default_url, open_storage, shown_url
    from bbo.storage.keys import KeyStore

    url = args.db or default_url()
    if create:
        return KeyStore(open_storage(url, pool_size=2))
    try:
        storage = open_storage(url, pool_size=2, migrate=False)
    except NotFoundError:
        storage = None
    if storage is None or storage.schema_revision() is None:
        if storage is not None:
            storage.close()
        shown = storage.describe()["db"] if storage is not None else shown_url(url)
        raise SystemExit(f"bbo keys: no bbo database at {shown} (`bbo keys create` makes one)")
    return KeyStore(storage)


def create(args) -> int:
    from bbo.storage.keys import check_tenant

    try:
        check_tenant(args.tenant)
    except ValueError as e:
        print(f"bbo keys create: {e}", file=sys.stderr)
        return 2
    store = _store(args, create=True)
    try:
        key, rec = store.create(args.tenant, args.label)
    finally:
        store.storage.close()
    if args.json:
        print(
            json.dumps({"key": key, "key_id": rec.key_id, "tenant": rec.tenant, "label": rec.label})
        )
    else:
        print(key)
        print(
            f"key id {rec.key_id}, tenant '{rec.tenant}': store the key now, it is not shown again "
            "(clients: BBO_API_KEY=<key> or Client(api_key=...))",
            file=sys.stderr,
        )
    return 0


def list_keys(args) -> int:
    store = _store(args)
    try:
        keys = store.list(args.tenant)
    finally:
        store.storage.close()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "key_id": k.key_id,
                        "tenant": k.tenant,
                        "label": k.label,
                        "created_at": k.created_at,
                        "revoked_at": k.revoked_at,
                    }
                    for k in keys
                ]
            )
        )
        return 0
    if not keys:
        print("no API keys")
        return 0
    fmt = "{:<14} {:<24} {:<8} {:<20} {}"
    print(fmt.format("KEY ID", "TENANT", "STATE", "CREATED (UTC)", "LABEL"))
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created_at))
        print(fmt.format(k.key_id, k.tenant, "active" if k.active else "revoked", created, k.label))
    return 0


def revoke(args) -> int:
    store = _store(args)
    try:
        ok = store.revoke(args.key_id)
    finally:
        store.storage.close()
    if not ok:
        print(f"bbo keys revoke: no active key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0
