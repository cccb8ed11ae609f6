"""Per-tenant request rate (token buckets), applied by the gate before a call reaches the service.

A call over the rate is refused with RESOURCE_EXHAUSTED, a message naming the flag, and a
google.rpc.RetryInfo saying when to retry (clients do). Tell and Heartbeat are exempt from the
tenant's rate: they finish or keep alive work the server handed out, so refusing them could only
lose results; instead each trial has a small bucket of its own (``--trial-rate``), so a worker
looping on one trial is bounded too. One that names no study or trial (NOT_FOUND), or is refused
for what it asks (INVALID_ARGUMENT, FAILED_PRECONDITION, ...: :data:`bbo_server.auth.REFUSED`),
finished no work: such misses take from a bucket of the tenant's (its rate and burst), and while that is empty
the tenant's Tells and Heartbeats are refused, so naming a new trial id on every call, each with a
fresh per-trial bucket, does not go around the rate. The dashboard's HTTP requests (:meth:`LimitChecker.check_dashboard`)
are held to the same rate and burst in a bucket of their own per tenant, so its polls neither take
the workers' tokens nor go around the rate. The other costs of a request are bounded in the core
(:mod:`bbo.limits`: spec and metric sizes; ``--max-ask``; ``--max-studies``) and by gRPC
(``--max-message-bytes``), all answering RESOURCE_EXHAUSTED. How many calls one tenant has running
at once is bounded by :class:`TenantCalls` (``--max-tenant-rpcs``).
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from dataclasses import dataclass

from bbo.errors import LimitError
from bbo_server import metrics as M

# calls that finish or keep alive work the server handed out: exempt from the tenant's rate (see
# the module docstring) and from --max-tenant-rpcs (see TenantCalls)
FINISHING = frozenset({"Tell", "Heartbeat"})
BUSY_RETRY_AFTER = (0.25, 1.0)  # seconds a refusal for load asks to wait: random, so retries spread
MAX_STUDY_NAME = 128  # characters of a study name (bbo.spec.STUDY_NAME)
# the least --rate-limit / --trial-rate: a refusal asks to wait up to 1 / rate (one a day: a day)
MIN_RATE = 1 / 86400


@dataclass
class Limits:
    rate: float = 0.0  # requests per second per tenant (0 = unlimited)
    burst: float = 0.0  # bucket size (0 = max(1, 2 * rate))
    trial_rate: float = 2.0  # Tell / Heartbeat calls per second on one trial (with a rate limit)
    trial_burst: float = 10.0


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

    MAX_TRIAL_BUCKETS = 100_000  # per-trial buckets kept (least recently used dropped)

    def __init__(self, limits: Limits):
        self.limits = limits
        self._buckets: dict[object, TokenBucket] = {}  # by tenant, and ("dashboard", tenant)
        self._trial_buckets: collections.OrderedDict[tuple, TokenBucket] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, key: object) -> TokenBucket:
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                burst = self.limits.burst or max(1.0, 2.0 * self.limits.rate)
                b = self._buckets[key] = TokenBucket(self.limits.rate, burst)
            return b

    def _trial_bucket(self, key: tuple) -> TokenBucket:
        with self._lock:
            b = self._trial_buckets.pop(key, None)
            if b is None:
                b = TokenBucket(self.limits.trial_rate, self.limits.trial_burst)
                while len(self._trial_buckets) >= self.MAX_TRIAL_BUCKETS:
                    self._trial_buckets.popitem(last=False)
            self._trial_buckets[key] = b
            return b

    def check(self, tenant: str, method: str, request) -> None:
        """Raises LimitError (with ``retry_after``) when the call is over a rate."""
        lim = self.limits
        if lim.rate <= 0:
            return
        study = getattr(request, "study", "")
        # A name no study can have (over 128 characters: NOT_FOUND once past this gate) finishes
        # no work: the tenant's rate holds. Keyed by it, each of MAX_TRIAL_BUCKETS kept the whole
        # name a request sent (up to --max-message-bytes, 4 MiB: 400 GiB in all).
        if method in FINISHING and isinstance(study, str) and len(study) <= MAX_STUDY_NAME:
            misses = self._bucket(("missed", tenant))
            if misses.wait() > 0:
                raise Refused(
                    "rate",
                    f"rate limit: tenant '{tenant}' named over {lim.rate:g} missing studies or "
                    f"trials/s, or was refused as often, in Tell / Heartbeat calls (burst "
                    f"{misses.burst:g}); retry later "
                    "(--rate-limit)",
                    misses.wait(),
                )
            key = (tenant, study, getattr(request, "trial_id", 0), method)
            bucket = self._trial_bucket(key)
            _take(
                bucket,
                "trial_rate",
                f"trial {key[2]} of study '{key[1][:128]}': over {lim.trial_rate:g} {method} "
                f"calls/s (burst {lim.trial_burst:g}); retry later (--trial-rate)",
            )
            return
        bucket = self._bucket(tenant)
        _take(
            bucket,
            "rate",
            f"rate limit: tenant '{tenant}' is over {lim.rate:g} requests/s (burst "
            f"{bucket.burst:g}); retry later (--rate-limit)",
        )

    def missed(self, tenant: str, method: str) -> None:
        """A call of ``tenant`` that ended NOT_FOUND or refused (:data:`bbo_server.auth.REFUSED`):
        a Tell or Heartbeat of it takes a token
        from the tenant's bucket of misses, which :meth:`check` reads (see the module)."""
        if self.limits.rate > 0 and method in FINISHING:
            self._bucket(("missed", tenant)).take()

    def check_dashboard(self, tenant: str) -> None:
        """One dashboard (HTTP) request of ``tenant``: over the rate, raises LimitError (with
        ``retry_after``). The rate and burst are the API's, in a bucket of the tenant's dashboard
        requests (its API calls' bucket is left to them): without it, a tenant held to the rate on
        ListTrials read the same pages of up to 2 MiB through the dashboard as fast as it liked."""
        lim = self.limits
        if lim.rate <= 0:
            return
        bucket = self._bucket(("dashboard", tenant))
        _take(
            bucket,
            "rate",
            f"rate limit: tenant '{tenant}' is over {lim.rate:g} dashboard requests/s (burst "
            f"{bucket.burst:g}); retry later (--rate-limit)",
        )


def _take(bucket: TokenBucket, limit: str, message: str) -> None:
    """A token from ``bucket``, else :class:`Refused` for ``limit`` with ``message`` and
    when to retry."""
    if not bucket.take():
        raise Refused(limit, message, max(bucket.wait(), 0.001))


class Refused(LimitError):
    """A request over ``limit``, to be retried after ``retry_after`` seconds."""

    def __init__(self, limit: str, message: str, retry_after: float):
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


def busy(limit: str, message: str) -> Refused:
    """A refusal for load (the server's or a tenant's calls at once): retried after a random
    :data:`BUSY_RETRY_AFTER` delay, so the refused callers do not come back together."""
    return Refused(limit, message, random.uniform(*BUSY_RETRY_AFTER))


def default_tenant_rpcs(rpc_threads: int) -> int:
    """``--max-tenant-rpcs`` when not given: half the handler threads (at least 1), so one tenant
    leaves the other half to the others whatever it asks (several: :meth:`TenantCalls.bound`)."""
    return max(1, rpc_threads // 2)


class TenantCalls:
    """A bound on the calls one tenant has running at once (``--max-tenant-rpcs``).

    Without it a tenant with as many workers as the server has handler threads (``--rpc-threads``),
    all asking at once, held every thread while its asks waited on GP fits, and every other
    tenant's calls, Tells included, queued behind them or were refused by ``--max-concurrent-rpcs``
    until the burst drained. The servicer checks it once the call's tenant is known (after
    authentication: the admission interceptor, which runs before, cannot), in :meth:`hold`: a call
    is counted from there until its handler returns, whatever way it ends (an error, a cancelled
    call whose handler runs on, an abort), as a try/finally. Over the bound the call is refused at
    once, before any work, with RESOURCE_EXHAUSTED, a message naming the flag and a
    google.rpc.RetryInfo, so the clients back off and retry. The count only covers calls on a
    handler thread, so a bound of ``--rpc-threads`` or more never refuses.

    Tell and Heartbeat (:data:`FINISHING`) are neither counted nor refused, as the rate limit
    exempts them: they finish or keep alive work the server already handed out and are cheap (a
    write, no fit), holding a thread for milliseconds where an ask may hold it for seconds. Counted,
    a tenant's own asks would starve its tells: with the bound full of asks waiting on fits, every
    freed place raced between the asks' retries and the tells', a tell could be refused until its
    client gave up (its result lost, its trial abandoned when the lease ran out), and the asks would
    be fitted on fewer results. Their number is bounded elsewhere: by the trials handed out, per
    trial by ``--trial-rate`` and those naming no trial by the tenant's rate (with
    ``--rate-limit``), and in all by ``--max-concurrent-rpcs``.

    The bound is ``cap`` while one tenant has calls running; with more, each has at most its share
    (:meth:`bound`): the ``threads`` divided among them and one more, so at their shares the
    tenants running leave threads free and a tenant that comes next finds one (one that took more
    while fewer were busy starts no new call until its running ones return below its share). With
    a fixed half, two busy tenants held every thread and a third one's calls queued until one of
    theirs returned.
    """

    def __init__(self, cap: int, threads: int):
        if cap < 1:
            raise ValueError(f"max_tenant_rpcs must be >= 1, got {cap}")
        self.cap, self.threads = cap, threads
        self._running: dict[str, int] = {}  # tenants with calls running only: a bounded map
        self._reading: dict[str, int] = {}  # tenants with calls waiting for their request
        self._lock = threading.Lock()
        self.refused = 0  # calls refused so far (tests, logs)

    @contextlib.contextmanager
    def reading(self, tenant: str):
        """Counts the body (reading a call's request: a handler thread waits for it) as one of
        ``tenant``'s calls waiting for their request, every method alike; over the bound, raises
        LimitError instead. A client's request arrives with the call, so its wait is short; a
        call that never sends its request held a thread for as long as its client kept it open,
        and 64 of them held every thread. Counted apart from :meth:`hold`: a burst of tells never
        meets a tenant's running asks here."""
        with self._counted(
            self._reading,
            tenant,
            f"tenant '{tenant}' has {{n}} calls waiting for their request message, the most "
            "--max-tenant-rpcs allows{share}; send each call's request (bbo's clients do) or "
            "retry later",
        ):
            yield

    def running(self, tenant: str) -> int:
        """Calls of ``tenant`` counted now."""
        with self._lock:
            return self._running.get(tenant, 0)

    @contextlib.contextmanager
    def hold(self, tenant: str, method: str):
        """Counts the body as one call of ``tenant``; over the bound, raises LimitError (with
        ``retry_after``) instead of running it."""
        if method in FINISHING:
            yield
            return
        with self._counted(
            self._running,
            tenant,
            f"tenant '{tenant}' has {{n}} calls running, the most --max-tenant-rpcs "
            "allows{share} (Tell and Heartbeat apart); retry later (bbo's clients do, after the "
            "RetryInfo delay), or raise --max-tenant-rpcs",
        ):
            yield

    @contextlib.contextmanager
    def serving(self, tenant: str, refusal: str):
        """Counts the body as one request of ``tenant``, every request alike, for a server other
        than the API (the dashboard's, with a TenantCalls of its own); over the bound, raises
        LimitError with ``refusal`` (``{n}``: the count, ``{share}``: see :meth:`_counted`) instead
        of running it."""
        with self._counted(self._running, tenant, refusal):
            yield

    def bound(self, tenants: int) -> int:
        """The most calls one tenant may have running while ``tenants`` tenants (it included)
        have some: ``cap`` alone; else ``threads // (tenants + 1)``, at least 1, at most ``cap``
        (past ``threads`` tenants, a floor of 1 each no longer leaves a thread free)."""
        if tenants <= 1:
            return self.cap
        return min(self.cap, max(1, self.threads // (tenants + 1)))

    @contextlib.contextmanager
    def _counted(self, counts: dict[str, int], tenant: str, refusal: str):
        """One place of ``tenant`` in ``counts`` for the body (a map of tenants with calls only:
        bounded); at its :meth:`bound`, raises :func:`busy` with ``refusal`` (``{n}``: the
        count, ``{share}``: how many tenants share the threads, with several)."""
        with self._lock:
            n = counts.get(tenant, 0)
            tenants = len(counts) + (tenant not in counts)
            if n >= self.bound(tenants):
                self.refused += 1
                M.LIMIT_REFUSALS.labels(limit="tenant_rpcs").inc()
                share = (
                    f" while {tenants} tenants are busy (the {self.threads} threads shared among "
                    "them and one more)"
                    if tenants > 1
                    else ""
                )
                # replace, not str.format: a tenant name (from an authenticate hook) may hold braces
                raise busy("tenant_rpcs", refusal.replace("{n}", str(n)).replace("{share}", share))
            counts[tenant] = n + 1
        try:
            yield
        finally:
            with self._lock:
                n = counts[tenant] - 1
                if n:
                    counts[tenant] = n
                else:
                    del counts[tenant]
