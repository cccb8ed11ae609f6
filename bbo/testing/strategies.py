"""A strategy without a model, for tests of what surrounds the optimizer (rungs, pruning, storage)."""

from __future__ import annotations

from bbo.spec import StudySpec
from bbo.strategy import space_filling
from bbo.strategy.base import ACTIVE_STATUS


class SpaceFilling:
    """Space-filling points (scrambled Sobol, seed 7) and never a model: cheap and deterministic
    asks, for tests whose subject is not the suggestions."""

    def __init__(self, s: StudySpec):
        self.spec = s

    def suggest(self, trials, n=1, **_):
        return space_filling(self.spec.space, 7, trials, n, "")

    def status(self, trials):
        return ACTIVE_STATUS
