"""Early stopping of running trials from their intermediate values (``ReportIntermediate``)."""

from __future__ import annotations

import statistics
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Protocol


class BestSoFar(Protocol):
    """A trial's curve as the rule reads it (:class:`bbo.curve_index.CurveSummary`)."""

    def best_upto(self, step: int) -> float | None:
        """The best value (times the objective's sign) at steps up to ``step``; None if none."""


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
        curves: Mapping[int, BestSoFar],
        completed: Container[int],
    ) -> tuple[bool, str]:
        """``(stop, reason)`` from each trial's curve, its values times ``sign`` (+1 where larger
        values are better, -1 where smaller); ``completed``: the ids of the completed trials."""
        if step < self.warmup_steps:
            return False, ""
        others = [
            b
            for n, c in curves.items()
            if n in completed and n != trial_id and (b := c.best_upto(step)) is not None
        ]
        if len(others) < self.min_trials:
            return False, ""
        own = curves.get(trial_id)
        mine = own.best_upto(step) if own is not None else None
        med = statistics.median(others)
        if mine is not None and mine < med:
            return True, (
                f"best value so far {sign * mine:g} at step {step} is worse than the median "
                f"{sign * med:g} of {len(others)} completed trials"
            )
        return False, ""
