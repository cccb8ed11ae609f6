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

from bbo.storage.base import ApiKeyRecord, Storage

KEY_PREFIX = "bbo_"
# matched whole (fullmatch): "$" also matches before a final newline
_TENANT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
# a key: its public id, then its secret (also what a log line must never show: bbo_server.logs)
KEY_RE = re.compile(r"bbo_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    label: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-128 letters, digits, '_', '-', '.'")
    return tenant


def _key(r: ApiKeyRecord) -> ApiKey:
    return ApiKey(r.key_id, r.tenant, r.label, r.created_at, r.revoked_at)


class KeyStore:
    """Create, list, revoke and verify API keys in a :class:`bbo.storage.Storage` database."""

    def __init__(self, storage: Storage | None):
        self.storage = storage

    @property
    def _db(self) -> Storage:
        if self.storage is None:
            raise RuntimeError("no key storage configured")
        return self.storage

    def create(self, tenant: str, label: str = "") -> tuple[str, ApiKey]:
        """A new key for ``tenant``: returns (the secret key, to be shown once, its record)."""
        check_tenant(tenant)
        label = str(label or "")[:256]
        for _ in range(5):
            key_id = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            rec = ApiKeyRecord(key_id, tenant, hash_key(key), label, time.time(), None)
            if self._db.insert_api_key(rec):  # else a key_id collision (2^-48): draw again
                return key, _key(rec)
        raise RuntimeError("could not allocate a unique key id")

    def list(self, tenant: str | None = None, include_revoked: bool = True) -> list[ApiKey]:
        return [_key(r) for r in self._db.list_api_keys(tenant, include_revoked)]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by its id (or by the whole secret key); False if no active key matched."""
        if KEY_RE.fullmatch(key_id or ""):
            return self._db.revoke_api_key(key_hash=hash_key(key_id))
        return self._db.revoke_api_key(key_id=key_id)

    def verify(self, key: str) -> str | None:
        """The tenant of an active key, else None (malformed, unknown or revoked)."""
        if not isinstance(key, str):
            return None
        m = KEY_RE.fullmatch(key)
        if not m:
            return None
        rec = self._db.find_api_key(m.group(1))
        if rec is None or rec.revoked_at is not None:
            return None
        if not hmac.compare_digest(rec.key_hash, hash_key(key)):
            return None
        return rec.tenant

    def count_active(self) -> int:
        return self._db.count_active_api_keys()
