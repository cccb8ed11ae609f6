"""The trials of one study as a process keeps them: an in-memory copy where this process owns the
database (asks then skip re-reading it), and the lease arithmetic on pending trials."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any

from bbo.errors import ConflictError, NotFoundError, SpecError
from bbo.storage import LEASE_EXPIRED, Storage
from bbo.study_budgets import MAX_STEP
from bbo.study_requests import metrics_key
from bbo.trial import Metric, Trial, TrialState


def trial_number(trial_id: Any) -> int:
    """A trial id from a request, checked: an integer, within the numbers a study hands out."""
    if isinstance(trial_id, bool) or not isinstance(trial_id, int):
        raise SpecError("trial_id", f"must be an integer, got {trial_id!r}")
    if not 0 <= trial_id <= MAX_STEP:
        raise NotFoundError(f"no trial {trial_id}")
    return trial_id


def lease_over(t: Trial, now: float) -> bool:
    """A pending trial whose lease ran out before ``now``."""
    return (
        t.state is TrialState.PENDING
        and t.lease_expires_at is not None
        and t.lease_expires_at < now
    )


def held_lease(t: Trial) -> float:
    """The length of the lease a pending trial was last granted (at its ask or last heartbeat: both
    set ``updated_at``), or 0 where it has none."""
    if t.lease_expires_at is None or not t.updated_at:
        return 0.0
    return max(0.0, t.lease_expires_at - t.updated_at)


def late(t: Trial) -> bool:
    """Abandoned only because its lease ran out: the worker may still be at it, and its
    (intermediate) results are welcome (a server restart or a network cut outlasting the lease must
    not lose them)."""
    return late_state(t.state, t.reason)


def late_state(state: TrialState, reason: str) -> bool:
    """:func:`late` of a trial in ``state`` for ``reason``."""
    return state is TrialState.ABANDONED and reason == LEASE_EXPIRED


def check_lease(lease_seconds: Any, default: float, maximum: float) -> float:
    """The lease a request asks for, in seconds: ``default`` for 0, at most ``maximum``."""
    try:
        lease = float(lease_seconds or 0.0)
    except (TypeError, ValueError):
        raise SpecError("lease_seconds", "must be a number") from None
    if lease < 0 or lease != lease or lease > maximum:
        raise SpecError(
            "lease_seconds", f"must be in [0, {maximum:g}] seconds (0 = server default)"
        )
    return lease or default


def accepts_tell(cur: Trial, state: TrialState) -> bool:
    """Whether a tell of ``state`` may change ``cur``: a pending trial, one whose lease ran out
    (its result is still welcome), or a paused one being given up (PRUNED)."""
    return (
        cur.state is TrialState.PENDING
        or (late(cur) and state is not TrialState.ABANDONED)
        or (cur.state is TrialState.PAUSED and state is TrialState.PRUNED)
    )


def apply_tell(
    cur: Trial,
    state: TrialState,
    metrics: dict[str, Metric],
    reason: str,
    budget: float | None,
    placed: Callable[[Trial], tuple[TrialState, float | None]],
) -> Trial | None:
    """What a tell of ``state`` with ``metrics`` (measured at ``budget``) makes of the stored trial
    ``cur``: the trial it leaves; None where it repeats the tell that finished the trial; a
    :class:`ConflictError` for a different tell on a finished trial. ``placed``: the state and
    budget the tell leaves an accepting trial in
    (:meth:`bbo.study_budgets.StudyBudgets.told_state`)."""
    if accepts_tell(cur, state):
        new_state, at = placed(cur)
        # a tell without a reason keeps the note generation left (a fallback's cause)
        note = reason or (cur.reason if cur.state is TrialState.PENDING else "")
        return dataclasses.replace(
            cur, state=new_state, metrics=metrics, reason=note, lease_expires_at=None, budget=at
        )
    told: TrialState = state
    if cur.state is TrialState.PAUSED and state is TrialState.COMPLETED:
        told = TrialState.PAUSED  # a repeated rung result
    if (
        cur.state is told
        and metrics_key(cur.metrics) == metrics_key(metrics)
        and (budget is None or cur.budget is None or abs(budget - cur.budget) < 1e-9)
    ):
        return None
    told_as = ", ".join(
        f"{k}={m.value:g}" + (f" ± {m.sem:g}" if m.sem is not None else "")
        for k, m in sorted(cur.metrics.items())
    )
    raise ConflictError(
        f"trial {cur.id} is already {cur.state.value}"
        + (f" with {told_as}" if told_as else "")
        + ": a different tell is refused (a trial is told once; ask a new trial to measure again)"
    )


class TrialCache:
    """Every trial of the study ``uid``, by id: kept in memory where this process owns the database
    (SQLite, which sees every write of the study), re-read on every call from a shared one."""

    def __init__(self, storage: Storage, uid: str):
        self.storage, self.uid = storage, uid
        self._trials: dict[int, Trial] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the in-memory copy exists (it never does on a shared database)."""
        return self._trials is not None

    def all(self) -> list[Trial]:
        """Every trial of the study, by id: from memory where this process owns the database,
        else read."""
        if self.storage.shared:
            return self.storage.list_trials(self.uid)
        with self._lock:
            if self._trials is None:
                self._trials = {t.id: t for t in self.storage.list_trials(self.uid)}
            return sorted(self._trials.values(), key=lambda t: t.id)

    def in_states(self, states: Collection[TrialState]) -> list[Trial]:
        """The trials in ``states``, by id: as :meth:`all`, but a shared database reads only those."""
        if self.storage.shared:
            return self.storage.list_trials(self.uid, list(states))
        return [t for t in self.all() if t.state in states]

    def remember(self, trials: Iterable[Trial]) -> None:
        """Record committed trial writes in the in-memory copy. Writes of one trial may arrive out
        of order (a heartbeat racing a tell): a finished state is never replaced by PENDING, and
        otherwise the later ``updated_at`` wins."""
        with self._lock:
            if self._trials is None:
                return
            for t in trials:
                cur = self._trials.get(t.id)
                if cur is not None and (
                    (cur.state.finished and not t.state.finished)
                    or (cur.state.finished == t.state.finished and t.updated_at < cur.updated_at)
                ):
                    continue
                self._trials[t.id] = t

    def lease_over(self, now: float) -> list[int]:
        """The ids of the remembered pending trials whose lease ran out before ``now``."""
        with self._lock:
            if self._trials is None:
                return []
            return [t.id for t in self._trials.values() if lease_over(t, now)]

    def reread(self, ids: Iterable[int]) -> None:
        """Refresh the remembered copies of trials ``ids`` from storage (written elsewhere)."""
        if self._trials is None:
            return
        fresh = (self.storage.get_trial(self.uid, n) for n in ids)
        self.remember(t for t in fresh if t is not None)
