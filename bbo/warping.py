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

Before both, every column passes a **safety map** (:class:`SafeMap`) that keeps any finite value a
user can send from breaking the model's arithmetic (a diverged solver's 1e300 once overflowed the
spreads, and every later ask fell back to random points): values more than :data:`SAFE_IQRS`
interquartile ranges from the median are log-compressed, and a column whose magnitudes would
still exceed :data:`MAX_MODEL` is scaled down by a power of two. The map is strictly increasing
and, for ordinary data, the identity (nothing changes); the column's constraint bounds and
reference point go through the same map (:meth:`OutcomeWarp.layout_for`), so feasibility and
dominance keep their meaning, and one within :data:`ANCHOR_IQRS` of the median keeps its value.
Statistics are taken on the column scaled by a power of two (exact), so no spread overflows.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, stats

from bbo.acquisition import Layout

MIN_POINTS = 5  # fewer observations than this: quartiles say nothing, no clipping
# safety map (:class:`SafeMap`): values this many interquartile ranges from the median are kept as
# they are, farther ones log-compressed (Gaussian data reach ~5, a lognormal's 1-in-1000 tail ~130)
SAFE_IQRS = 100.0
# a constraint bound or reference point this many IQRs from the median keeps its value (the
# identity region widens to it); farther ones are compressed with the data beyond the window
ANCHOR_IQRS = 1e6
# largest magnitude of a modeled value: above it the column is scaled down by a power of two (the
# GP's standardization squares deviations, a hypervolume multiplies one box edge per objective)
MAX_MODEL = 1e30
_LOG2 = float(np.log(2.0))
# standard errors in model units are capped at this many times the column's range
VAR_CAP = 1e8


@dataclass(frozen=True)
class SafeMap:
    """A strictly increasing map of one column (data units to model units) that is the identity
    on ``[lo, hi]`` (in the frame ``v * 2**-e``), log-compressed beyond (slope 1 at the edges,
    ``hi + s * log1p((u - hi) / s)``), then scaled by ``2**shift``. Overflow-safe for every
    finite input: no finite value maps to more than a few thousand ``s`` past the window."""

    e: int
    lo: float
    hi: float
    s: float
    shift: int = 0

    @classmethod
    def of(cls, v: np.ndarray, anchors: tuple[float, ...] = ()) -> SafeMap | None:
        """The map for observed values ``v``, or None where it is the identity: every value within
        :data:`SAFE_IQRS` of the median, every anchor (constraint bound, reference point) within
        :data:`ANCHOR_IQRS`, every magnitude under :data:`MAX_MODEL`."""
        v = np.asarray(v, dtype=float)
        if len(v) == 0:
            return None
        # statistics first in the frame of the largest value (no overflow, maybe subnormal), then
        # again in the frame of the median and scale they give (full precision there; the far
        # values may overflow to +-inf in it, which the quartiles never reach)
        e = int(np.frexp(np.max(np.abs(v)))[1])
        c, s = _center_scale(np.ldexp(v, -e))
        e += int(np.frexp(max(abs(c), s))[1])
        with np.errstate(over="ignore"):
            u = np.ldexp(v, -e)
        c, s = _center_scale(u)
        lo, hi = c - SAFE_IQRS * s, c + SAFE_IQRS * s
        a = np.asarray(anchors, dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):
            au = np.ldexp(a, -e)
            near = au[np.abs(au - c) <= ANCHOR_IQRS * s]
        if len(near):
            lo, hi = min(lo, float(near.min())), max(hi, float(near.max()))
        m = cls(e, lo, hi, s)
        top = float(np.max(np.abs(np.concatenate([m._soft(v), m._soft(a)]))))
        inside = lo <= u.min() and u.max() <= hi
        if len(near) == len(a) and inside and np.ldexp(top, e) <= MAX_MODEL:
            return None
        over = int(np.frexp(top)[1]) + e - int(np.log2(MAX_MODEL))
        return replace(m, shift=-over) if over > 0 else m

    def _excess(self, x: np.ndarray, u: np.ndarray, edge: float, side: float) -> np.ndarray:
        """``log1p(side * (u - edge) / s)`` for values past ``edge``, in logs where it overflows."""
        with np.errstate(over="ignore", invalid="ignore"):
            d = side * (u - edge) / self.s
            out = np.log1p(np.where(np.isfinite(d) & (d < 1e300), d, 0.0))
            far = ~(np.isfinite(d) & (d < 1e300))
            out[far] = np.log(np.abs(x[far])) - self.e * _LOG2 - np.log(self.s)
        return out

    def _soft(self, x: np.ndarray) -> np.ndarray:
        """``x`` compressed beyond the window, in the frame ``2**-e`` (before the shift)."""
        x = np.asarray(x, dtype=float)
        with np.errstate(over="ignore"):
            u = np.ldexp(x, -self.e)
        out = u.copy()
        up, down = u > self.hi, u < self.lo
        out[up] = self.hi + self.s * self._excess(x[up], u[up], self.hi, 1.0)
        out[down] = self.lo - self.s * self._excess(x[down], u[down], self.lo, -1.0)
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x`` (data units) in model units."""
        x = np.asarray(x, dtype=float)
        out = np.ldexp(self._soft(x), self.e + self.shift)
        if self.shift == 0:  # the window itself, exactly as given
            with np.errstate(over="ignore"):
                u = np.ldexp(x, -self.e)
            inside = (u >= self.lo) & (u <= self.hi)
            out[inside] = x[inside]
        return out

    def slope(self, x: np.ndarray) -> np.ndarray:
        """The map's derivative at ``x`` (for standard errors: the delta method)."""
        x = np.asarray(x, dtype=float)
        with np.errstate(over="ignore"):
            u = np.ldexp(x, -self.e)
            d = np.maximum(u - self.hi, self.lo - u) / self.s
        return np.ldexp(np.where(d > 0, 1.0 / (1.0 + np.maximum(d, 0.0)), 1.0), self.shift)

    def inverse(self, t: np.ndarray) -> np.ndarray:
        """Model units back to data units (beyond the largest double: +-inf)."""
        t = np.asarray(t, dtype=float)
        o = np.ldexp(t, -(self.e + self.shift))
        out = np.ldexp(o, self.e) if self.shift else t.copy()
        for side, edge in ((1.0, self.hi), (-1.0, self.lo)):
            past = side * (o - edge) > 0
            r = side * (o[past] - edge) / self.s  # log1p of the excess in units of s
            with np.errstate(over="ignore"):
                near = np.ldexp(edge + side * self.s * np.expm1(np.minimum(r, 700.0)), self.e)
                far = side * np.exp(r + np.log(self.s) + self.e * _LOG2)  # the edge negligible
            out[past] = np.where(r < 700.0, near, far)
        return out


def _center_scale(u: np.ndarray) -> tuple[float, float]:
    """Median and interquartile range of ``u``; with half the values tied, the median distance of
    the others (``lower``: one of them), else ``|median|`` or 1."""
    q1, c, q3 = (float(q) for q in np.percentile(u, [25, 50, 75]))
    s = q3 - q1
    if not (np.isfinite(s) and s > 0):
        with np.errstate(invalid="ignore"):
            dev = np.abs(u - c)
        dev = dev[(dev > 0) & np.isfinite(dev)]
        s = float(np.percentile(dev, 50, method="lower")) if len(dev) else (abs(c) or 1.0)
    return c, s


def _map(m: SafeMap | None, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=float) if m is None else m(x)


@dataclass(frozen=True)
class OutcomeWarp:
    """Warps outcome columns for the model. :attr:`model_layout` is the layout in warped units as
    far as it is fixed (warped constraints' bounds at 0); :meth:`layout_for` completes it for
    one data set (the other bounds and the reference points through the safety maps)."""

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

    def _anchors(self, j: int) -> tuple[float, ...]:
        """Values of column ``j`` that must keep their place among its data: its constraint
        bounds and its reference point."""
        lay = self.model_layout
        out = [b for k, _, b in self.constraint_cols if k == j]
        out += [b for k, _, b in lay.constraints if k == j and k not in self._warped]
        out += [r for k, r in zip(lay.obj_idx, lay.reference) if k == j and r is not None]
        return tuple(out)

    @functools.cached_property
    def _warped(self) -> frozenset[int]:
        return frozenset(j for j, _, _ in self.constraint_cols)

    def maps(self, Y: np.ndarray) -> tuple[SafeMap | None, ...]:
        """Each column's safety map for the observed outcomes ``Y`` (None: the identity)."""
        Y = np.asarray(Y, dtype=float).reshape(-1, self.model_layout.m)
        return tuple(SafeMap.of(Y[:, j], self._anchors(j)) for j in range(Y.shape[1]))

    def layout_for(self, Y: np.ndarray, maps: tuple[SafeMap | None, ...] | None = None) -> Layout:
        """The model layout for the observed outcomes ``Y``: the bounds of constraints left
        unwarped and the reference points mapped as the columns are."""
        lay = self.model_layout
        maps = self.maps(Y) if maps is None else maps
        if not any(maps):
            return lay
        cons = tuple(
            (j, op, b if j in self._warped else float(_map(maps[j], np.array([b]))[0]))
            for j, op, b in lay.constraints
        )
        ref = tuple(
            r if r is None else float(_map(maps[j], np.array([r]))[0])
            for j, r in zip(lay.obj_idx, lay.reference)
        )
        return replace(lay, constraints=cons, reference=ref)

    def objective_units(self, Y: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values of the (single) objective in the model's warped units mapped back to the
        objective's own, the inverse of :meth:`apply` for the observed outcomes ``Y`` (the warp
        is recomputed from them). Values beyond the clipped bad tail map to its fence."""
        values = np.asarray(values, dtype=float)
        if not self.objective_cols:
            return values
        j, sign = self.objective_cols[0]
        col = np.asarray(Y, dtype=float)[:, j]
        m = SafeMap.of(col, self._anchors(j))
        fit = _yeo_johnson_fit(_clip_bad_side(sign * _map(m, col)))
        if fit is not None:
            mean, std, lam = fit
            values = sign * (mean - std * _yeo_johnson_inverse(-sign * values, lam))
        return values if m is None else m.inverse(values)

    def apply(
        self, Y: np.ndarray, Yvar: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(warped Y, warped Yvar)``; rows keep their order and feasibility."""
        return self.warp(Y, Yvar)[:2]

    def warp(
        self, Y: np.ndarray, Yvar: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, Layout]:
        """``(warped Y, warped Yvar, model layout for them)`` (:meth:`apply`, :meth:`layout_for`)."""
        Y = np.array(Y, dtype=float, copy=True)
        Yvar = None if Yvar is None else np.array(Yvar, dtype=float, copy=True)
        if len(Y) == 0:
            return Y, Yvar, self.model_layout
        maps = self.maps(Y)
        layout = self.layout_for(Y, maps)
        raw = Y.copy()
        for j, m in enumerate(maps):
            if m is not None:
                Y[:, j] = m(raw[:, j])
                if Yvar is not None:
                    Yvar[:, j] = Yvar[:, j] * m.slope(raw[:, j]) ** 2
        for j, sign in self.objective_cols:
            v, slope = _yeo_johnson_bad_side(_clip_bad_side(sign * Y[:, j]))
            Y[:, j] = sign * v
            if Yvar is not None:
                Yvar[:, j] = Yvar[:, j] * slope**2
        for j, op, b in self.constraint_cols:
            b = float(_map(maps[j], np.array([b]))[0])
            s = Y[:, j] - b if op == "<=" else b - Y[:, j]  # slack: > 0 infeasible
            s = -_clip_bad_side(-s, anchor=0.0)
            w = np.sign(s) * np.log1p(np.abs(s))
            if Yvar is not None:
                Yvar[:, j] = Yvar[:, j] / (1.0 + np.abs(s)) ** 2
            Y[:, j] = w if op == "<=" else -w
        if Yvar is not None:  # a huge reported error: the observation says nothing, finitely
            scale = np.maximum(np.maximum(np.ptp(Y, axis=0), np.max(np.abs(Y), axis=0)), 1.0)
            Yvar = np.minimum(Yvar, (VAR_CAP * scale) ** 2)
        return Y, Yvar, layout


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
