"""Sharing a study's fitted model between server replicas (and across restarts).

Every replica keeps one generation strategy per study in memory, and any replica may serve any
study's next Ask. The expensive part of an Ask is the GP hyperparameter fit; its result (the kernel,
mean and likelihood hyperparameters, a few KB) is stored with the study, with the number of data
points it was fit at. Inside the study's ask critical section (the per-study lock, cross-replica on
PostgreSQL) an Ask:

1. :meth:`ModelStateCache.pull`: if the stored state was fit on more data than the local strategy's
   (or the local one has none: a replica that has not served this study yet, or just restarted), load
   it into the strategy. Cheap: one indexed read of ``n_fit``; the blob only when it is newer.
2. computes its suggestions; the strategy refits only when its own refit policy says so, warm-started
   from the loaded hyperparameters;
3. :meth:`ModelStateCache.push`: if the strategy refit, store the new state (one upsert).

Because the pull/suggest/push sequence runs under the study lock, replicas see one linear history of
fits. Strategies take part by implementing :class:`SharesModelState`. Any failure here is logged and
ignored: the cache only saves work, it is never needed for correctness.
"""

from __future__ import annotations

import io
import logging
import weakref
from dataclasses import dataclass

from bbo.storage import Storage
from bbo.strategy.base import SharesModelState

log = logging.getLogger("bbo.model_sharing")

FORMAT = 1


def dumps(hyper: dict, **meta) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"hyper": {k: v.detach().cpu() for k, v in hyper.items()}, **meta}, buf)
    return buf.getvalue()


def loads(blob: bytes) -> dict:
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


@dataclass
class Token:
    """What the strategy held before an ask (to tell whether it refit)."""

    hyper: dict | None  # the very object (identity tells a refit apart)
    n_fit: int
    pulled: bool = False


class ModelStateCache:
    """Pull / push a study's fitted model state (see the module docstring). One per registry."""

    def __init__(self, storage: Storage, replica: str = ""):
        self.storage = storage
        if not replica:
            import os
            import socket

            replica = f"bbo-{socket.gethostname()}-{os.getpid()}"
        self.replica = replica[:128]
        self.pulls = 0  # states loaded from the database (for tests and metrics)
        self.pushes = 0
        # One process owns the database (SQLite): once a strategy has been brought up to date with
        # the stored state (or stored its own), nothing else can change it and later pulls skip the
        # read. Weak: a strategy dropped with its study drops out by itself.
        self._single_writer = not storage.shared
        self._in_sync: weakref.WeakSet = weakref.WeakSet()

    def _synced(self, strategy) -> None:
        if self._single_writer:
            try:
                self._in_sync.add(strategy)
            except TypeError:  # not weak-referenceable: keep reading
                pass

    def pull(self, uid: str, strategy) -> Token:
        if not isinstance(strategy, SharesModelState):
            return Token(None, 0)
        local = None
        try:
            local = strategy.export_state()
            n_local = local[0] if local is not None else -1
            if self._single_writer and strategy in self._in_sync:
                return Token(local[1] if local else None, max(n_local, 0))
            n_db = self.storage.model_state_n_fit(uid)
            if n_db is None or n_db <= n_local:
                self._synced(strategy)
                return Token(local[1] if local else None, max(n_local, 0))
            st = self.storage.get_model_state(uid)
            if st is None or st.format != FORMAT:
                return Token(local[1] if local else None, max(n_local, 0))
            strategy.import_state(st.n_fit, loads(st.blob)["hyper"])
            self._synced(strategy)
            self.pulls += 1
            cur = strategy.export_state()
            return Token(cur[1] if cur else None, st.n_fit, pulled=True)
        except Exception:  # noqa: BLE001 - a cache: never fail the ask
            log.warning(
                "loading the stored model state failed; the strategy fits on its own",
                exc_info=True,
                extra={"study_uid": uid},
            )
        return Token(local[1] if local else None, max(local[0], 0) if local else 0)

    def push(self, uid: str, strategy, token: Token) -> bool:
        """Store the strategy's state if it refit since :meth:`pull`. True when stored."""
        if not isinstance(strategy, SharesModelState):
            return False
        try:
            cur = strategy.export_state()
            if cur is None or cur[1] is token.hyper:
                return False
            n_fit, hyper = cur
            self.storage.put_model_state(
                uid, int(n_fit), FORMAT, dumps(hyper, n_fit=int(n_fit)), self.replica
            )
            self.pushes += 1
            self._synced(strategy)
            return True
        except Exception:  # noqa: BLE001 - e.g. the study was deleted meanwhile
            log.warning("storing the model state failed", exc_info=True, extra={"study_uid": uid})
            return False

    def get(self, uid: str) -> dict | None:
        """The stored state (``{"n_fit", "updated_by", "updated_at", "hyper"}``) or None."""
        st = self.storage.get_model_state(uid)
        if st is None:
            return None
        return {
            "n_fit": st.n_fit,
            "updated_by": st.updated_by,
            "updated_at": st.updated_at,
            **loads(st.blob),
        }
