"""API keys: random secrets shown once, stored only as a SHA-256 hash, each belonging to a tenant.

A key looks like ``bbo_<key_id>_<secret>``: ``key_id`` (12 hex characters) is public and names the
key in ``bbo keys list`` / ``bbo keys revoke``; ``secret`` is 32 random bytes (base64url). Because
the secret has 256 bits of entropy a plain SHA-256 is enough to store it (no salt or slow hash is
needed: there is nothing to brute-force), and lookups are one indexed query on the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Optional

import sqlalchemy as sa

from bbo.storage import schema as S
from bbo.storage.pg import retry_transient

KEY_PREFIX = "bbo_"
_TENANT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_KEY_RE = re.compile(r"^bbo_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    label: str
    created_at: float
    revoked_at: Optional[float]

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-128 letters, digits, '_', '-', '.'")
    return tenant


def _row(r) -> ApiKey:
    return ApiKey(r.key_id, r.tenant, r.label, r.created_at, r.revoked_at)


class KeyStore:
    """Create, list, revoke and verify API keys in a :class:`bbo.storage.Storage` database."""

    def __init__(self, storage):
        self.storage = storage

    def create(self, tenant: str, label: str = "") -> tuple[str, ApiKey]:
        """A new key for ``tenant``: returns (the secret key, to be shown once, its record)."""
        check_tenant(tenant)
        label = str(label or "")[:256]
        for _ in range(5):
            key_id = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            now = time.time()
            try:
                with self.storage._write() as conn:
                    conn.execute(
                        S.api_keys.insert().values(
                            key_id=key_id,
                            tenant=tenant,
                            key_hash=hash_key(key),
                            label=label,
                            created_at=now,
                            revoked_at=None,
                        )
                    )
            except sa.exc.IntegrityError:  # a key_id collision (2^-48): draw again
                continue
            return key, ApiKey(key_id, tenant, label, now, None)
        raise RuntimeError("could not allocate a unique key id")

    def list(self, tenant: Optional[str] = None, include_revoked: bool = True) -> list[ApiKey]:
        q = sa.select(S.api_keys).order_by(S.api_keys.c.id)
        if tenant is not None:
            q = q.where(S.api_keys.c.tenant == tenant)
        if not include_revoked:
            q = q.where(S.api_keys.c.revoked_at.is_(None))
        with self.storage._read() as conn:
            return [_row(r) for r in conn.execute(q)]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by its id (or by the whole secret key); False if no active key matched."""
        m = _KEY_RE.match(key_id or "")
        cond = S.api_keys.c.key_hash == hash_key(key_id) if m else S.api_keys.c.key_id == key_id
        with self.storage._write() as conn:
            n = conn.execute(
                S.api_keys.update()
                .where(cond, S.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            ).rowcount
        return n > 0

    @retry_transient
    def verify(self, key: str) -> Optional[str]:
        """The tenant of an active key, else None (malformed, unknown or revoked)."""
        if not isinstance(key, str):
            return None
        m = _KEY_RE.match(key)
        if not m:
            return None
        h = hash_key(key)
        with self.storage._read() as conn:
            row = conn.execute(
                sa.select(
                    S.api_keys.c.tenant, S.api_keys.c.key_hash, S.api_keys.c.revoked_at
                ).where(S.api_keys.c.key_id == m.group(1))
            ).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, h):
            return None
        return row.tenant

    @retry_transient
    def count_active(self) -> int:
        with self.storage._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(S.api_keys)
                    .where(S.api_keys.c.revoked_at.is_(None))
                ).scalar_one()
            )
