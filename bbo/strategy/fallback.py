"""Fallbacks: points when the model or the acquisition optimizer cannot give them.

One space-filling path (:func:`space_filling`): the Sobol points after those the study's design
and earlier fallbacks used, skipping existing points; the service can call it without a strategy.
Where a model exists, :meth:`Fallback.model_guided` first ranks random points by a cheap model
score, and falls back to the space-filling points if that fails too. A fully discrete space whose
every feasible point is measured or pending (:meth:`Fallback.exhausted`) has no new point for the
acquisition optimizer to find: the ask repeats the measured point the model rates best (origin
``replicate``) and says so, instead of reporting a failed optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bbo.acquisition import Layout, model_score
from bbo.design import sobol_design
from bbo.discrete_search import feasible_grid
from bbo.space import SearchSpace
from bbo.strategy.base import Suggestion
from bbo.strategy.context import Context
from bbo.strategy.model_data import Points
from bbo.trial import Origin, Trial

MODEL_GUIDED_CANDIDATES = 512


def space_filling(
    space: SearchSpace,
    seed: int,
    trials: Sequence[Trial],
    n: int,
    reason: str,
    taken: np.ndarray | None = None,
    points: Points | None = None,
) -> list[Suggestion]:
    """``n`` Sobol points of ``seed``'s sequence after the ones already used by initial-design and
    fallback trials, skipping existing points (``taken``: encoded, all of ``trials`` by default);
    origin ``fallback`` with ``reason``. In an (almost) exhausted discrete space the last ones
    repeat a point, and say so."""
    points = points or Points(space)
    if taken is None:
        taken = points.encode_trials(trials)
    used = sum(1 for t in trials if t.origin in (Origin.INITIAL.value, Origin.FALLBACK.value))
    out: list[Suggestion] = []
    skip = used
    for _ in range(8):
        for p in sobol_design(space, 2 * n, seed, skip=skip):
            xe = space.encode(p)
            if points.too_close(xe, taken):
                continue
            out.append(Suggestion(p, Origin.FALLBACK.value, reason))
            taken = np.vstack([taken, xe[None]])
            if len(out) == n:
                return out
        skip += 2 * n
    while len(out) < n:  # (almost) exhausted discrete space: repeats are all that is left
        out.append(
            Suggestion(
                sobol_design(space, 1, seed + len(out), skip=skip)[0],
                Origin.FALLBACK.value,
                reason + "; space exhausted, repeating a point",
            )
        )
    return out


EXHAUSTED = (
    "every point of the search space ({n} meet its constraints) has been evaluated or is pending: "
    "repeating the measured point the model rates best (under noise a repeat sharpens its "
    "estimate; a deterministic objective has nothing new to find)"
)


class Fallback:
    """The strategy's fallbacks, on its seed and point cache."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._grid: tuple[np.ndarray | None] | None = None  # (feasible_grid's answer,) once asked

    def exhausted(self, taken: np.ndarray) -> int:
        """The number of feasible points of a fully discrete space whose every point is in
        ``taken`` (measured or pending), else 0: no acquisition step can find a new one."""
        if self._grid is None:
            self._grid = (feasible_grid(self.ctx.spec.space),)
        grid = self._grid[0]
        if grid is None or len(grid) == 0 or len(taken) < len(grid):
            return 0
        # grid values are exact in the encoding (spacing >= 1/4096): rounded rows compare as sets,
        # linear in the points where a distance test of each grid point was grid x taken
        seen = {tuple(row) for row in np.round(taken, 6)}
        return len(grid) if all(tuple(g) in seen for g in np.round(grid, 6)) else 0

    def repeat_best(self, model, data, k: int, n_points: int) -> Suggestion:
        """In an exhausted space (:meth:`exhausted`), the ``k``-th best distinct measured point by
        the cheap model score (the best for the first repeat of an ask, the next for a second)."""
        c = self.ctx
        rows = data.distinct_rows[data.completed[data.distinct_rows]]  # pruned: never again
        rows = rows if len(rows) else data.distinct_rows
        X = data.X[rows]
        order: np.ndarray
        try:
            s = model_score(model, data.layout, c.placement.tensor(X))
            s = torch.nan_to_num(s, nan=-float("inf"))
            order = torch.argsort(s, descending=True).cpu().numpy()
        except Exception:  # noqa: BLE001 - the observed order then
            order = np.argsort(-data.score[rows], kind="stable")
        x = X[order[k % len(order)]]
        return Suggestion(
            c.spec.space.decode(x), Origin.REPLICATE.value, EXHAUSTED.format(n=n_points)
        )

    def space_filling(
        self, trials: Sequence[Trial], n: int, taken: np.ndarray, reason: str
    ) -> list[Suggestion]:
        c = self.ctx
        return space_filling(c.spec.space, c.seed, trials, n, reason, taken, c.points)

    def model_guided(
        self,
        model,
        layout: Layout,
        trials: Sequence[Trial],
        n: int,
        taken: np.ndarray,
        reason: str,
    ) -> list[Suggestion]:
        """Best of random feasible candidates under a cheap model score (``layout``: the model's,
        :attr:`TrainingData.layout`); space-filling points if that fails too."""
        c = self.ctx
        space, points = c.spec.space, c.points
        try:
            cands = sobol_design(space, MODEL_GUIDED_CANDIDATES, c.seed + 31 + len(taken))
            cands = [p for p in cands if not points.too_close(space.encode(p), taken)]
            X = c.placement.tensor(np.vstack([space.encode(p) for p in cands]))
            s = torch.nan_to_num(model_score(model, layout, X), nan=-float("inf"))
            out = []
            n_cands = MODEL_GUIDED_CANDIDATES
            note = f"{reason}; used the best of {n_cands} random points under the model"
            for i in torch.argsort(s, descending=True).tolist():
                xe = space.encode(cands[i])
                if points.too_close(xe, taken):
                    continue
                out.append(Suggestion(cands[i], Origin.FALLBACK.value, note))
                taken = np.vstack([taken, xe[None]])
                if len(out) == n:
                    return out
        except Exception as e:  # noqa: BLE001
            reason = f"{reason}; model scoring failed too ({type(e).__name__})"
        return self.space_filling(trials, n, taken, reason)
