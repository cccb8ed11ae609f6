"""The intermediate values of one study as a process keeps them for ReportIntermediate's decision
(:meth:`bbo.study_budgets.StudyBudgets.should_stop`): each trial's curve with what the pruning
policies read off it, kept up to date as values are stored, so a report reads only what changed
since the last one instead of every value of the study.

Per trial: its steps in order with the best value so far at each (the median rule) and its value at
each rung (ASHA, Hyperband: :func:`bbo.pruning.rung_points`), recomputed from that trial's curve
alone when it changes (at most ``--max-steps-per-trial`` values).

Coherence, as :class:`bbo.study_trials.TrialCache`'s: where this process owns the database
(SQLite), every write of the study goes through it, and a written trial is marked; the next
decision re-reads the curves of the marked trials (after the writes committed, so nothing
acknowledged is missed, whatever order concurrent writers finish in). On a shared database
(PostgreSQL) other replicas write too: a study's values are stamped with the database's clock in
commit order, each later than the study's last even where that clock steps back
(:meth:`bbo.storage.sql.SqlStorage._report_time`), so each decision reads the values stored since
the newest stamp seen (less :data:`CLOCK_MARGIN`), and the trials they belong to are
re-summarized. The first decision, after a restart too, reads the study's curves once.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bbo.pruning import rung_points
from bbo.storage import CurvePoint, Storage

# seconds re-read before the newest stamp seen on a shared database: a second line of defence
# behind the study's stamps only growing (values re-read are applied again harmlessly)
CLOCK_MARGIN = 1.0


@dataclass(frozen=True)
class CurveSummary:
    """What the pruning policies read off one trial's curve."""

    steps: Sequence[int]  # ascending (an array of int64)
    best: Sequence[float]  # best[i]: the best value (times the sign) at steps[:i + 1] (float64)
    rungs: tuple[CurvePoint | None, ...]  # the value at each rung (bbo.pruning.rung_point)
    top: CurvePoint | None = None  # the value at the largest budget (None: no budget)

    def best_upto(self, step: int) -> float | None:
        i = bisect.bisect_right(self.steps, step)
        return self.best[i - 1] if i else None

    def points(self) -> list[CurvePoint]:
        """The few values of the curve Ask reads (at most a rung's each and one more), by step:
        the first value at or past each rung's budget, and the one at the largest budget. Each
        reader of a curve at Ask reads the same off them as off the whole curve: a rung's value
        (:func:`bbo.pruning.rung_point`: the first at or past its budget) is one of them; the
        multi-fidelity model's value between two rungs' budgets is that rung's value where it lies
        below the next one's budget, else there is none; the budget spent is the largest."""
        kept = {p.step: p for p in self.rungs if p is not None}
        if self.top is not None:
            kept[self.top.step] = self.top
        return [kept[s] for s in sorted(kept)]


def summarize(curve: Sequence[CurvePoint], sign: float, levels: Sequence[float]) -> CurveSummary:
    """``curve`` sorted by step."""
    steps: list[int] = []
    best: list[float] = []
    top = None
    for p in curve:
        v = sign * p.value
        top = v if top is None else max(top, v)
        steps.append(p.step)
        best.append(top)
    budgeted = [p for p in curve if p.budget]
    widest = max(budgeted, key=lambda p: p.budget or 0.0) if budgeted else None
    return CurveSummary(
        array("q", steps), array("d", best), tuple(rung_points(curve, levels)), widest
    )


class CurveIndex:
    """The curves of the study ``uid``, summarized (:class:`CurveSummary`); ``sign`` +1 where
    larger values are better, ``levels`` the fidelity's rung budgets (none without one).

    Only the summaries are kept (16 bytes a value, in arrays), not the values read: a trial whose
    values changed is summarized again from its whole curve, read again (at most
    ``--max-steps-per-trial`` values). Keeping every value read as objects took about 250 bytes a
    value, 240 MiB for a study of 100 trials of 10,000 values, in every process that decided a
    report of it."""

    def __init__(self, storage: Storage, uid: str, sign: float, levels: Sequence[float]):
        self.storage, self.uid, self.sign, self.levels = storage, uid, sign, tuple(levels)
        self._loaded = False  # the whole study read once (set only once that read succeeded)
        self._summaries: dict[int, CurveSummary] = {}
        self._dirty: set[int] = set()
        # trials whose values this process is writing: between a commit and written() another
        # thread's decision missed a value stored before it (a restart's rebuild answered
        # otherwise), so these are re-read until their write is told done
        self._writing: Counter[int] = Counter()
        self._newest = float("-inf")  # the newest stamp read (a shared database)
        self._lock = threading.Lock()

    def writing(self, numbers: Iterable[int]) -> None:
        """Call before writing these trials' values (this process's writes), then :meth:`written`."""
        with self._lock:
            self._writing.update(numbers)

    def written(self, numbers: Iterable[int]) -> None:
        """Call after a write of these trials' values committed or failed (this process's
        writes)."""
        with self._lock:
            self._dirty.update(numbers)
            self._writing.subtract(numbers)
            self._writing = +self._writing  # the counts left above zero

    def summaries(self) -> dict[int, CurveSummary]:
        """Every trial with a value, by id, up to date with what is stored (a copy)."""
        with self._lock:
            if not self._loaded:
                self._apply(self.storage.curves(self.uid))
                self._loaded = True
            elif self.storage.shared:
                if not self._summaries:
                    self._apply(self.storage.curves(self.uid))
                else:  # the trials with values stored since: their whole curves again
                    since = self._newest - CLOCK_MARGIN
                    touched = sorted(self.storage.curves(self.uid, since=since))
                    if touched:
                        whole = self.storage.curves(self.uid, touched)
                        self._apply({n: whole.get(n, []) for n in touched})
            if self._dirty or self._writing:
                dirty, self._dirty = sorted(self._dirty | set(self._writing)), set()
                fresh = self.storage.curves(self.uid, dirty)
                self._apply({n: fresh.get(n, []) for n in dirty})
            return dict(self._summaries)

    def _apply(self, curves: dict[int, list[CurvePoint]]) -> None:
        """Summarize the whole ``curves`` (by step) of their trials. Under the lock."""
        for n, pts in curves.items():
            for p in pts:
                self._newest = max(self._newest, p.at)
            if not pts:
                self._summaries.pop(n, None)
                continue
            self._summaries[n] = summarize(pts, self.sign, self.levels)
