"""Early stopping of running trials from their intermediate values (``ReportIntermediate``)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
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
        if len(others) < self.min_trials:
            return False, ""
        mine = best_upto(curves.get(trial_id, []))
        med = statistics.median(others)
        if mine is not None and mine < med:
            return True, (
                f"best value so far {sign * mine:g} at step {step} is worse than the median "
                f"{sign * med:g} of {len(others)} completed trials"
            )
        return False, ""
