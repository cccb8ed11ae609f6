"""Fit slots: where suggestions are computed, at most ``n`` at once, shared fairly between tenants.

Each tenant has its own queue; a free slot takes the oldest job of the next tenant in turn (round
robin), so a tenant that queues many expensive asks delays another tenant's ask by at most one job
per slot, not by its whole queue.

Why threads of their own rather than a semaphore on the RPC threads: glibc gives each thread a
malloc arena, and a GP fit's temporary buffers, freed, stayed cached in whichever of up to
8 x cores arenas the RPC thread had; a soak's RSS grew with no live data behind it. ``n`` threads
touch ``n``. After each computation the freed pages go back to the OS (glibc ``malloc_trim``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from bbo.memory import malloc_trim


class FitSlots:
    """Runs computations on ``n`` dedicated threads, tenants served round robin."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self._queues: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"bbo-fit-{i}", daemon=True)
            for i in range(self.n)
        ]
        for t in self._threads:
            t.start()

    def run(self, fn: Callable[[], Any], tenant: str = "") -> Any:
        """Run ``fn`` on a slot (in its tenant's turn) and return its result or raise its error."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("fit slots are closed")
            self._queues.setdefault(tenant, collections.deque()).append((fn, fut))
            self._cv.notify()
        return fut.result()

    def queued(self) -> dict[str, int]:
        """Jobs waiting per tenant (for metrics and tests)."""
        with self._cv:
            return {t: len(q) for t, q in self._queues.items()}

    def _next(self):
        """The oldest job of the tenant whose turn it is; that tenant goes to the back."""
        tenant, q = next(iter(self._queues.items()))
        job = q.popleft()
        del self._queues[tenant]
        if q:
            self._queues[tenant] = q  # re-inserted last: the next tenant is served next
        return job

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queues and not self._closed:
                    self._cv.wait()
                if not self._queues:
                    return
                fn, fut = self._next()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
            finally:
                malloc_trim()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
