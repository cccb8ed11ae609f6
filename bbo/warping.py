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

import functools
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, stats

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

    def objective_units(self, Y: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values of the (single) objective in the model's warped units mapped back to the
        objective's own, the inverse of :meth:`apply` for the observed outcomes ``Y`` (the warp
        is recomputed from them). Values beyond the clipped bad tail map to its fence."""
        values = np.asarray(values, dtype=float)
        if not self.objective_cols:
            return values
        j, sign = self.objective_cols[0]
        fit = _yeo_johnson_fit(_clip_bad_side(sign * np.asarray(Y, dtype=float)[:, j]))
        if fit is None:
            return values
        mean, std, lam = fit
        return sign * (mean - std * _yeo_johnson_inverse(-sign * values, lam))

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
    fit = _yeo_johnson_fit(v)
    if fit is None:
        return v, np.ones_like(v)
    mean, std, lam = fit
    u = -(v - mean) / std
    t = stats.yeojohnson(u, lmbda=lam)
    slope = (
        np.where(u >= 0, np.power(np.abs(u) + 1.0, lam - 1.0), np.power(np.abs(u) + 1.0, 1.0 - lam))
        / std
    )
    return -np.asarray(t, dtype=float), slope


def _yeo_johnson_fit(v: np.ndarray) -> tuple[float, float, float] | None:
    """``(mean, std, lambda)`` of :func:`_yeo_johnson_bad_side`'s map of ``v``, or None where it
    leaves ``v`` unchanged. Remembered for the last few columns: an ask warps its data and its
    recommendation maps the estimate back through the same fit."""
    return _yeo_johnson_fit_of(np.ascontiguousarray(v, dtype=float).tobytes())


@functools.lru_cache(maxsize=4)
def _yeo_johnson_fit_of(key: bytes) -> tuple[float, float, float] | None:
    v = np.frombuffer(key)
    if len(v) < MIN_POINTS:
        return None
    mean, std = float(np.mean(v)), float(np.std(v))
    if not np.isfinite(std) or std <= 0:
        return None
    u = -(v - mean) / std
    try:
        with np.errstate(all="ignore"):
            lam = _yeo_johnson_lambda(u)
            t = stats.yeojohnson(u, lmbda=lam)
            slope = np.power(np.abs(u) + 1.0, np.where(u >= 0, lam - 1.0, 1.0 - lam))
    except (ValueError, FloatingPointError, OverflowError):
        return None
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(slope)) and np.ptp(t) > 0):
        return None
    return mean, std, lam


def _yeo_johnson_inverse(t: np.ndarray, lam: float) -> np.ndarray:
    """The inverse of the Yeo-Johnson transform with parameter ``lam``."""
    t = np.asarray(t, dtype=float)
    out = np.empty_like(t)
    pos = t >= 0
    with np.errstate(all="ignore"):
        if abs(lam) < 1e-12:
            out[pos] = np.expm1(t[pos])
        else:
            out[pos] = np.power(np.maximum(lam * t[pos] + 1.0, 0.0), 1.0 / lam) - 1.0
        if abs(lam - 2.0) < 1e-12:
            out[~pos] = -np.expm1(-t[~pos])
        else:
            out[~pos] = 1.0 - np.power(
                np.maximum(1.0 - (2.0 - lam) * t[~pos], 0.0), 1.0 / (2.0 - lam)
            )
    return out


def _yeo_johnson_lambda(x: np.ndarray) -> float:
    """The maximum-likelihood Yeo-Johnson lambda, as :func:`scipy.stats.yeojohnson_normmax` finds
    it (same bounds, same bounded Brent search and tolerance) but with the log-likelihood in a few
    numpy operations: SciPy's goes through its array-API and NaN-policy wrappers, ~1.4 ms a call
    and 20-40 calls, a tenth of a small study's ask."""
    if np.all(x == 0):
        return 1.0
    log1p_max = np.log1p(20 * np.max(np.abs(x)))
    eps, info = np.log(np.finfo(float).eps), np.finfo(float)
    lb = (np.log(info.tiny) - eps) / 2 / log1p_max
    ub = (np.log(info.max) + eps) / 2 / log1p_max
    if np.all(x < 0):
        lb, ub = 2 - ub, 2 - lb
    elif np.any(x < 0):
        lb, ub = max(2 - ub, lb), min(2 - lb, ub)
    pos = x >= 0
    lp, ln = np.log1p(x[pos]), np.log1p(-x[~pos])
    jac = float(np.sum(np.sign(x) * np.log1p(np.abs(x))))
    n, tiny = len(x), info.smallest_normal

    def neg_llf(lam: float) -> float:
        y = np.empty_like(x)
        y[pos] = lp if abs(lam) < info.eps else np.expm1(lam * lp) / lam
        y[~pos] = -ln if abs(lam - 2) < info.eps else -np.expm1((2 - lam) * ln) / (2 - lam)
        var = np.var(y)
        llf = -n / 2 * np.log(var) + (lam - 1) * jac if var >= tiny else -np.inf
        return np.inf if not np.isfinite(llf) else -llf

    with np.errstate(all="ignore"):
        return float(optimize.fminbound(neg_llf, lb, ub, xtol=1.48e-08))


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
