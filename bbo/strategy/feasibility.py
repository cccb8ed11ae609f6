"""Feasibility judgement: whether a study with outcome constraints is likely infeasible.

CONFIG-style declaration: LIKELY_INFEASIBLE when no completed (or pruned) trial meets the
constraints after at least ``n_initial + 5`` completed trials and the GP's highest probability that
all constraints hold, over a dense Sobol sample of the space and the observed points, is below 1 %.
"""

from __future__ import annotations

import numpy as np
from botorch.utils.sampling import manual_seed
from scipy.stats import qmc

from bbo.acquisition import log_prob_feasible
from bbo.design import _to_box
from bbo.strategy.base import ACTIVE_STATUS, StudyStatus
from bbo.strategy.context import Ask, Context
from bbo.surrogate import Surrogate
from bbo.trial import StudyState

TINY_PROB = 1e-12  # below this a probability is reported as "less than 1e-12"
INFEASIBLE_PROB = 0.01  # max model probability of feasibility under which a study is infeasible
INFEASIBLE_EXTRA = 5  # completed trials beyond the initial design before that judgement is made
SAMPLES = 2048  # Sobol points the probability of feasibility is maximized over


class Feasibility:
    """Judges a study's feasibility from its trials, caching the verdict per set of trials."""

    def __init__(self, ctx: Context, surrogate: Surrogate):
        self.ctx = ctx
        self.surrogate = surrogate
        self._cache: tuple[tuple, StudyStatus] | None = None

    def status(self, ask: Ask) -> StudyStatus:
        ctx = self.ctx
        if not ctx.spec.outcome_constraints:
            return ACTIVE_STATUS
        data = ask.data
        n = data.n_completed  # pruned trials inform the model but are not counted
        if n == 0 or data.feasible.any() or n < ctx.n_initial + INFEASIBLE_EXTRA:
            return ACTIVE_STATUS
        key = tuple(t.id for t in data.trials)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        try:
            with manual_seed(ask.seed):
                model, _, info = data.model(self.surrogate, ctx.seed)
                model = info.predictive or model  # the same marginals, cheaper
                space = ctx.spec.space
                u = qmc.Sobol(space.dim, scramble=True, seed=ctx.seed).random(SAMPLES)
                X = ctx.placement.tensor(np.vstack([_to_box(space, u), data.X]))
                p_max = float(log_prob_feasible(model, data.layout, X).exp().max())
        except Exception as e:  # noqa: BLE001
            return StudyStatus(
                StudyState.ACTIVE, f"feasibility check failed: {type(e).__name__}: {e}"
            )
        if p_max >= INFEASIBLE_PROB:
            result = ACTIVE_STATUS
        else:
            slack = ctx.layout.slack(data.Y)
            worst = [
                f"{c} (closest observed: "
                f"{float(data.Y[np.argmin(slack[:, k]), ctx.layout.constraints[k][0]]):g})"
                for k, c in enumerate(ctx.spec.outcome_constraints)
                if (slack[:, k] > 0).all()
            ]
            result = StudyStatus(
                StudyState.LIKELY_INFEASIBLE,
                f"none of {n} completed trials meets the outcome constraints and the model gives "
                f"{_at_most(p_max)} probability that any point does; never met: "
                f"{', '.join(worst) or 'jointly'}",
            )
        self._cache = (key, result)
        return result


def _at_most(p: float) -> str:
    """A bound on a probability for people: its digits where they mean something, and one
    wording for the vanishing ones (their digits are the floating-point arithmetic's)."""
    return f"at most {p:.2g}" if p >= TINY_PROB else f"less than {TINY_PROB:g}"
