"""Idempotent requests of one study: a retried ask, tell or add carrying the same ``request_id``
gets the stored answer back, and a different request reusing an id is refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from bbo.errors import ConflictError
from bbo.storage import RequestKey, Storage, StoredRequest
from bbo.trial import Metric, Trial


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON with sorted keys: equal for equal content, whatever the key order."""
    return json.dumps(obj, sort_keys=True, default=str)


def metrics_key(metrics: Mapping[str, Metric]) -> dict:
    """Metrics as plain data, for comparing two tells and for messages."""
    return {k: [m.value, m.sem] for k, m in sorted(metrics.items())}


def request_key(kind: str, request_id: str, content: Any) -> RequestKey | None:
    """The key a request is logged under (None without a ``request_id``): its kind, its id and a
    hash of what it asks, which a retry must repeat."""
    if not request_id:
        return None
    digest = hashlib.sha256(canonical_json(content).encode()).hexdigest()
    return RequestKey(kind, request_id, digest)


def check_same(req: RequestKey | None, prev: StoredRequest) -> None:
    """A stored answer came back for ``req``: it must be for the same request."""
    if req is None or prev.request_hash != req.request_hash:
        raise ConflictError(
            f"request_id {req.request_id if req else ''!r} was already used for a different"
            f" {req.kind if req else ''} request"
        )


class RequestLog:
    """The answered requests of the study ``uid`` (stored with the writes they made)."""

    def __init__(self, storage: Storage, uid: str):
        self.storage, self.uid = storage, uid

    def answered(self, req: RequestKey) -> StoredRequest | None:
        """The stored answer of an earlier request with ``req``'s kind and id, if any."""
        return self.storage.lookup_request(self.uid, req.kind, req.request_id)

    def replay(self, req: RequestKey) -> list[Trial] | None:
        """The trials an earlier request with this key was answered with; None if there was none."""
        prev = self.answered(req)
        if prev is None:
            return None
        check_same(req, prev)
        numbers = [int(n) for n in prev.response.get("trials", [])]
        return [t for n in numbers if (t := self.storage.get_trial(self.uid, n)) is not None]
