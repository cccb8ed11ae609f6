"""Early stopping of running trials from their intermediate values (``ReportIntermediate``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MedianRule:
    """Median stopping: stop a trial whose best value so far at step s is worse than the median of
    the best-so-far values (up to s) of completed trials, once ``min_trials`` completed trials
    reported at or before s and s >= ``warmup_steps``."""

    min_trials: int = 3
    warmup_steps: int = 1

    def should_stop(
        self,
        trial_id: int,
        step: int,
        sign: float,
        curves: Mapping[int, Sequence[tuple[int, float]]],
        completed: set[int],
    ) -> tuple[bool, str]:
        """``(stop, reason)``; ``sign`` is +1 where larger values are better, -1 where smaller."""
        if step < self.warmup_steps:
            return False, ""

        def best_upto(points: Sequence[tuple[int, float]]) -> float | None:
            vals = [sign * v for s, v in points if s <= step]
            return max(vals) if vals else None

        others = [
            b
            for n, pts in curves.items()
            if n in completed and n != trial_id and (b := best_upto(pts)) is not None
        ]
        return self.decide(
            step,
            sign,
            len(others),
            lambda: statistics.median(others),
            lambda: best_upto(curves.get(trial_id, [])),
        )

    def decide(
        self,
        step: int,
        sign: float,
        n: int,
        median: Callable[[], float],
        mine: Callable[[], float | None],
    ) -> tuple[bool, str]:
        """The rule given the ``n`` completed trials with a value at or before ``step``, the
        ``median`` of their best values so far (times ``sign``) and the trial's own (``mine``,
        None where it has none yet); shared by :meth:`should_stop` and
        :meth:`bbo.study_budgets.StudyBudgets.should_stop` (from the kept curves)."""
        if step < self.warmup_steps or n < self.min_trials:
            return False, ""
        med = median()
        best = mine()
        if best is not None and best < med:
            return True, (
                f"best value so far {sign * best:g} at step {step} is worse than the median "
                f"{sign * med:g} of {n} completed trials"
            )
        return False, ""
