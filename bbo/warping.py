"""Outcome warping before the GP: monotone maps that tame heavy tails without changing what the
acquisition decides on (the order of objective values, the side of each constraint bound).

A GP with a stationary kernel on standardized outcomes fits badly when a few observations are far
worse than the rest (a scheduler policy that takes 200 minutes next to ones at 10-12): the outliers
set the output scale and the region that matters looks flat. Two warps, recomputed on every ask from
the data, the same family of heuristics as Ax's ``Winsorize`` and ``BilogY`` transforms:

* **Objective** (single-objective studies): values worse than the Tukey fence (``q3 + 1.5 IQR``
  when minimizing, ``q1 - 1.5 IQR`` when maximizing) are clipped to it; then the z-scored values get
  a Yeo-Johnson power transform with its maximum-likelihood lambda (as Ax's ``PowerTransformY``), so
  a skewed objective (Branin's few hundreds beside a minimum of 0.4) looks Gaussian to the GP and
  the region near the optimum keeps its resolution. Both maps are monotone: the incumbent stays the
  incumbent.
* **Constraint metrics**: values beyond the infeasible-side fence (computed with the bound counted
  as a quartile, so no infeasible value is ever made feasible) are clipped, then
  ``sign(y - b) * log(1 + |y - b|)`` puts the bound at 0 and compresses far-off values, keeping
  resolution near the bound where feasibility is decided.

A column that is both an objective and constrained, or constrained twice, is left as it is.
Standard errors follow the map (delta method). Multi-objective studies warp constraint metrics only:
their reference point lives in the objectives' own units.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from bbo.acquisition import Layout

MIN_POINTS = 5  # fewer observations than this: quartiles say nothing, no clipping


@dataclass(frozen=True)
class OutcomeWarp:
    """Warps outcome columns for the model; :attr:`model_layout` is the layout in warped units."""

    model_layout: Layout
    objective_cols: tuple[tuple[int, float], ...]  # (column, sign) winsorized on the bad side
    constraint_cols: tuple[tuple[int, str, float], ...]  # (column, op, bound) clipped and bilogged

    @classmethod
    def of(cls, layout: Layout) -> OutcomeWarp:
        uses = Counter(list(layout.obj_idx) + [j for j, _, _ in layout.constraints])
        obj = (
            ()
            if layout.multi
            else tuple((j, s) for j, s in zip(layout.obj_idx, layout.signs) if uses[j] == 1)
        )
        cons = tuple((j, op, b) for j, op, b in layout.constraints if uses[j] == 1)
        warped = {j for j, _, _ in cons}
        model_cons = tuple((j, op, 0.0 if j in warped else b) for j, op, b in layout.constraints)
        return cls(replace(layout, constraints=model_cons), obj, cons)

    def apply(
        self, Y: np.ndarray, Yvar: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(warped Y, warped Yvar)``; rows keep their order and feasibility."""
        Y = np.array(Y, dtype=float, copy=True)
        Yvar = None if Yvar is None else np.array(Yvar, dtype=float, copy=True)
        if len(Y) == 0:
            return Y, Yvar
        for j, sign in self.objective_cols:
            v, slope = _yeo_johnson_bad_side(_clip_bad_side(sign * Y[:, j]))
            Y[:, j] = sign * v
            if Yvar is not None:
                Yvar[:, j] = Yvar[:, j] * slope**2
        for j, op, b in self.constraint_cols:
            s = Y[:, j] - b if op == "<=" else b - Y[:, j]  # slack: > 0 infeasible
            s = -_clip_bad_side(-s, anchor=0.0)
            w = np.sign(s) * np.log1p(np.abs(s))
            if Yvar is not None:
                Yvar[:, j] = Yvar[:, j] / (1.0 + np.abs(s)) ** 2
            Y[:, j] = w if op == "<=" else -w
        return Y, Yvar


def _yeo_johnson_bad_side(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(warped v, dwarped/dv)``: Yeo-Johnson of the z-scored values (larger is better), applied
    to ``-z`` so that a lambda below 1 compresses the bad tail. Unchanged (slope 1) when there are
    too few points, no spread, or the fit gives anything non-finite."""
    one = np.ones_like(v)
    if len(v) < MIN_POINTS:
        return v, one
    mean, std = float(np.mean(v)), float(np.std(v))
    if not np.isfinite(std) or std <= 0:
        return v, one
    u = -(v - mean) / std
    try:
        t, lam = stats.yeojohnson(u)
    except (ValueError, FloatingPointError, OverflowError):
        return v, one
    slope = (
        np.where(u >= 0, np.power(np.abs(u) + 1.0, lam - 1.0), np.power(np.abs(u) + 1.0, 1.0 - lam))
        / std
    )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(slope)) and np.ptp(t) > 0):
        return v, one
    return -np.asarray(t, dtype=float), slope


def _clip_bad_side(v: np.ndarray, anchor: float | None = None) -> np.ndarray:
    """Clip values below the lower Tukey fence (larger is better). With ``anchor`` (the constraint
    bound in these units), the lower quartile is taken as at most the anchor, so clipping never
    crosses it."""
    if len(v) < MIN_POINTS:
        return v
    q1, q3 = np.percentile(v, 25), np.percentile(v, 75)
    if anchor is not None:
        q1 = min(q1, anchor)
    iqr = q3 - q1
    if not np.isfinite(iqr) or iqr <= 0:
        return v
    return np.maximum(v, q1 - 1.5 * iqr)
