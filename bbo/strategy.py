"""Generation strategy: which point to evaluate next, given a study's trials.

Space-filling initial design first, then GP-based BO. One instance lives per study (it caches the
fitted surrogate's hyperparameters between asks) and is pure with respect to storage: it sees trials,
returns suggestions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from bbo.design import sobol_design
from bbo.spec import StudySpec
from bbo.space import Value
from bbo.trial import Origin, Trial, TrialState


@dataclass
class Suggestion:
    """A point to evaluate, where it came from, and why (fallback reason or LLM rationale)."""

    params: dict[str, Value]
    origin: str
    reason: str = ""
    rationale: str = ""


class GenerationStrategy:
    """Sobol initial design, then Bayesian optimization (see :mod:`bbo.bo`)."""

    def __init__(self, spec: StudySpec):
        self.spec = spec
        seed = spec.algorithm.seed
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.n_initial = spec.algorithm.initial_size(spec.space.dim)

    def suggest(self, trials: Sequence[Trial], n: int = 1) -> list[Suggestion]:
        """``n`` new points, distinct from pending ones, jointly chosen."""
        n_initial_used = sum(1 for t in trials if t.origin == Origin.INITIAL.value)
        completed = [t for t in trials if t.state is TrialState.COMPLETED]
        out: list[Suggestion] = []
        n_design = max(0, min(n, self.n_initial - len(trials)))
        if n_design:
            for p in sobol_design(self.spec.space, n_design, self.seed, skip=n_initial_used):
                out.append(Suggestion(p, Origin.INITIAL.value))
        if len(out) < n:
            out.extend(self._bo(trials, completed, n - len(out)))
        return out

    def _bo(self, trials: Sequence[Trial], completed: Sequence[Trial], n: int) -> list[Suggestion]:
        # Filled in by bbo.bo; until a model can be fit, keep the space-filling sequence going.
        n_used = sum(1 for t in trials if t.origin in (Origin.INITIAL.value, Origin.FALLBACK.value))
        pts = sobol_design(self.spec.space, n, self.seed, skip=n_used)
        return [Suggestion(p, Origin.FALLBACK.value, reason="no surrogate model yet") for p in pts]
