"""Per-tenant protection: request rate (token bucket), studies per tenant, parameters per study.

Requests over a limit are refused with RESOURCE_EXHAUSTED and a message naming the limit and its
flag; a rate refusal also carries a google.rpc.RetryInfo saying when to retry (clients do). Tell and
Heartbeat are exempt from the rate: they finish or keep alive work the server handed out, and their
number is bounded by the asks, so refusing them could only lose results. (Trials per Ask are
limited by the core, ``--max-ask``; request size by gRPC itself, ``--max-message-bytes``: both
answer RESOURCE_EXHAUSTED too.)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional

import sqlalchemy as sa

from bbo.errors import LimitError
from bbo.storage.pg import retry_transient


RATE_EXEMPT = frozenset({"Tell", "Heartbeat"})  # see the module docstring


@dataclass
class Limits:
    max_studies: int = 10000  # per tenant (0 = unlimited)
    max_parameters: int = 256  # per study (0 = unlimited)
    rate: float = 0.0  # requests per second per tenant (0 = unlimited)
    burst: float = 0.0  # bucket size (0 = max(1, 2 * rate))


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` is thread-safe and never blocks."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens = float(burst)
        self._t = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False

    def wait(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens will be there (0 if they are now)."""
        with self._lock:
            missing = n - min(self.burst, self._tokens + (self._clock() - self._t) * self.rate)
        return max(0.0, missing / self.rate) if self.rate > 0 else 0.0


class LimitChecker:
    """Checks one call of a tenant against :class:`Limits`; raises :class:`LimitError`."""

    def __init__(self, limits: Limits, storage=None):
        self.limits = limits
        self.storage = storage
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, tenant: str) -> TokenBucket:
        with self._lock:
            b = self._buckets.get(tenant)
            if b is None:
                burst = self.limits.burst or max(1.0, 2.0 * self.limits.rate)
                b = self._buckets[tenant] = TokenBucket(self.limits.rate, burst)
            return b

    def check(self, tenant: str, method: str, request) -> Optional[str]:
        """None if the call may go on, else the name of the limit it broke (LimitError raised)."""
        lim = self.limits
        bucket = self._bucket(tenant) if lim.rate > 0 and method not in RATE_EXEMPT else None
        if bucket is not None and not bucket.take():
            e = _Refused(
                "rate",
                f"rate limit: tenant '{tenant}' is over {lim.rate:g} requests/s (burst {bucket.burst:g}); retry later (--rate-limit)",
            )
            e.retry_after = max(bucket.wait(), 0.001)
            raise e
        if method == "CreateStudy":
            n_params = len(request.spec.parameters)
            if lim.max_parameters and n_params > lim.max_parameters:
                raise _Refused(
                    "parameters",
                    f"a study may have at most {lim.max_parameters} parameters, this spec has {n_params} (--max-parameters)",
                )
            if (
                lim.max_studies
                and self.storage is not None
                and not self._exists(tenant, request.name)
            ):
                n = self._count_studies(tenant)
                if n >= lim.max_studies:
                    raise _Refused(
                        "studies",
                        f"tenant '{tenant}' has {n} studies, the limit is {lim.max_studies}: delete some first (--max-studies)",
                    )
        return None

    @retry_transient
    def _exists(self, tenant: str, name: str) -> bool:
        from bbo.storage import schema as S

        with self.storage._read() as conn:
            return (
                conn.execute(
                    sa.select(S.studies.c.id).where(
                        S.studies.c.tenant == tenant, S.studies.c.name == name
                    )
                ).first()
                is not None
            )

    @retry_transient
    def _count_studies(self, tenant: str) -> int:
        from bbo.storage import schema as S

        with self.storage._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(S.studies)
                    .where(S.studies.c.tenant == tenant)
                ).scalar_one()
            )


class _Refused(LimitError):
    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit
