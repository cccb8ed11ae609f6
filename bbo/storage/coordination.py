"""Sharing a study's fitted model between server replicas (and across restarts).

Every replica keeps one generation strategy per study in memory, and any replica may serve any
study's next Ask. The expensive part of an Ask is the GP hyperparameter fit; its result (the kernel,
mean and likelihood hyperparameters, a few KB) is stored in the ``model_state`` table, keyed by study,
with the number of data points it was fit at. Inside the study's ask critical section (the
per-study lock, cross-replica on PostgreSQL) an Ask:

1. :meth:`ModelStateCache.pull`: if the stored state was fit on more data than the local strategy's
   (or the local one has none: a replica that has not served this study yet, or just restarted), load
   it into the strategy. Cheap: one indexed read of ``n_fit``; the blob only when it is newer.
2. computes its suggestions; the strategy refits only when its own refit policy says so (data grew by
   ``refit_growth``, or few points), warm-started from the loaded hyperparameters;
3. :meth:`ModelStateCache.push`: if the strategy refit, store the new state (one upsert).

Because the pull/suggest/push sequence runs under the study lock, replicas see one linear history of
fits: a replica picking up a study continues exactly where the last one stopped, instead of fitting
from scratch, and a study behaves the same whichever replicas its Asks land on.

The strategy exposes its state through ``export_state() -> (n_fit, {name: tensor}) | None`` and
``import_state(n_fit, hyper)``; a strategy without them is simply not shared. Any failure here is
logged and ignored: the cache only saves work, it is never needed for correctness.
"""

from __future__ import annotations

import io
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import sqlalchemy as sa

from bbo.storage import schema as S

log = logging.getLogger("bbo.storage")

FORMAT = 1


def export_state(strategy) -> Optional[tuple[int, dict]]:
    """``(n_fit, hyperparameters)`` of the strategy's fitted surrogate, or None if it has none."""
    fn = getattr(strategy, "export_state", None)
    return fn() if callable(fn) else None


def import_state(strategy, n_fit: int, hyper: dict) -> bool:
    fn = getattr(strategy, "import_state", None)
    if not callable(fn):
        return False
    fn(n_fit, hyper)
    return True


def supports(strategy) -> bool:
    return callable(getattr(strategy, "export_state", None)) and callable(
        getattr(strategy, "import_state", None)
    )


def dumps(hyper: dict, **meta: Any) -> bytes:
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

    hyper: Optional[dict]  # the very object (identity tells a refit apart)
    n_fit: int
    pulled: bool = False


class ModelStateCache:
    """Pull / push a study's fitted model state (see the module docstring). One per Storage."""

    def __init__(self, storage, replica: str = ""):
        self.storage = storage
        if not replica:
            from bbo.storage.pg import replica_name

            replica = replica_name()
        self.replica = replica[:128]
        self.pulls = 0  # states loaded from the database (for tests and metrics)
        self.pushes = 0
        # SQLite: one server process per database file, so once a strategy has been brought up to
        # date with the stored state (or stored its own), nothing else can change that state and
        # later pulls skip the read. Weak: a strategy dropped with its study drops out by itself.
        self._single_writer = getattr(storage, "dialect", None) == "sqlite"
        self._in_sync: "weakref.WeakSet" = weakref.WeakSet()

    def _synced(self, strategy) -> None:
        if self._single_writer:
            try:
                self._in_sync.add(strategy)
            except TypeError:  # not weak-referenceable: keep reading
                pass

    def pull(self, study_id: int, strategy) -> Token:
        local = None
        try:
            if not supports(strategy):
                return Token(None, 0)
            local = export_state(strategy)
            n_local = local[0] if local is not None else -1
            if self._single_writer and strategy in self._in_sync:
                return Token(local[1] if local else None, max(n_local, 0))
            with self.storage.engine.connect() as conn:
                n_db = conn.execute(
                    sa.select(S.model_state.c.n_fit).where(S.model_state.c.study_id == study_id)
                ).scalar()
                if n_db is None or int(n_db) <= n_local:
                    self._synced(strategy)
                    return Token(local[1] if local else None, max(n_local, 0))
                row = conn.execute(
                    sa.select(
                        S.model_state.c.n_fit, S.model_state.c.format, S.model_state.c.state
                    ).where(S.model_state.c.study_id == study_id)
                ).first()
            if row is None or row.format != FORMAT:
                return Token(local[1] if local else None, max(n_local, 0))
            state = loads(bytes(row.state))
            if import_state(strategy, int(row.n_fit), state["hyper"]):
                self._synced(strategy)
                self.pulls += 1
                log.debug(
                    "model state loaded", extra={"study_id": study_id, "n_fit": int(row.n_fit)}
                )
                cur = export_state(strategy)
                return Token(cur[1] if cur else None, int(row.n_fit), pulled=True)
        except Exception:  # noqa: BLE001 - a cache: never fail the ask
            log.warning(
                "loading the stored model state failed; the strategy fits on its own",
                exc_info=True,
                extra={"study_id": study_id},
            )
        return Token(local[1] if local else None, max(local[0], 0) if local else 0)

    def push(self, study_id: int, strategy, token: Token) -> bool:
        """Store the strategy's state if it refit since :meth:`pull`. True when stored."""
        try:
            cur = export_state(strategy) if supports(strategy) else None
            if cur is None or cur[1] is token.hyper:
                return False
            n_fit, hyper = cur
            blob = dumps(hyper, n_fit=int(n_fit))
            now = time.time()
            vals = dict(
                n_fit=int(n_fit), format=FORMAT, state=blob, updated_at=now, updated_by=self.replica
            )
            with self.storage._write() as conn:
                n = conn.execute(
                    S.model_state.update()
                    .where(S.model_state.c.study_id == study_id)
                    .values(**vals)
                ).rowcount
                if n == 0:
                    conn.execute(S.model_state.insert().values(study_id=study_id, **vals))
            self.pushes += 1
            self._synced(strategy)
            return True
        except Exception:  # noqa: BLE001 - e.g. the study was deleted meanwhile
            log.warning(
                "storing the model state failed", exc_info=True, extra={"study_id": study_id}
            )
            return False

    def get(self, study_id: int) -> Optional[dict]:
        """The stored state (``{"n_fit", "updated_by", "updated_at", "hyper"}``) or None."""
        with self.storage.engine.connect() as conn:
            row = conn.execute(
                sa.select(S.model_state).where(S.model_state.c.study_id == study_id)
            ).first()
        if row is None:
            return None
        return {
            "n_fit": int(row.n_fit),
            "updated_by": row.updated_by,
            "updated_at": row.updated_at,
            **loads(bytes(row.state)),
        }


def cache_for(storage) -> ModelStateCache:
    """The storage's (one per process) cache object."""
    c = getattr(storage, "_model_state_cache", None)
    if c is None:
        c = ModelStateCache(storage)
        storage._model_state_cache = c
    return c
