"""Outcome warping (bbo.warping): order, feasibility and the incumbent are kept; tails are tamed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bbo.acquisition import Layout
from bbo.space import FloatParam, SearchSpace
from bbo.spec import MAXIMIZE, MINIMIZE, Objective, OutcomeConstraint, StudySpec
from bbo.warping import OutcomeWarp

SPACE = SearchSpace([FloatParam("x", 0.0, 1.0)])


def layout(goal=MINIMIZE, constraints=(), objectives=None):
    objs = objectives or [Objective("f", goal)]
    return Layout.of(StudySpec(SPACE, objs, outcome_constraints=list(constraints)))


values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    f=values,
    g=st.data(),
    goal=st.sampled_from([MINIMIZE, MAXIMIZE]),
    op=st.sampled_from(["<=", ">="]),
    bound=st.floats(-100, 100),
)
def test_warp_keeps_order_and_feasibility(f, g, goal, op, bound):
    c = g.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(f), max_size=len(f)))
    lay = layout(goal, [OutcomeConstraint("c", op, bound)])
    Y = np.column_stack([f, c])
    w = OutcomeWarp.of(lay)
    Ym, _ = w.apply(Y)
    assert np.isfinite(Ym).all()
    np.testing.assert_array_equal(lay.feasible(Y), w.model_layout.feasible(Ym))
    assert w.model_layout.constraints[0][2] == 0.0
    for j in range(2):  # weakly monotone per column: never reorders
        o = np.argsort(Y[:, j], kind="stable")
        assert np.all(np.diff(Ym[o, j]) >= -1e-12)
    # the incumbent stays the incumbent: every row tied for the best is still tied for the best
    s = np.asarray(f) * (1 if goal == MAXIMIZE else -1)
    sm = Ym[:, 0] * (1 if goal == MAXIMIZE else -1)
    assert set(np.flatnonzero(s == s.max())) <= set(
        np.flatnonzero(sm >= sm.max() - 1e-9 * max(1.0, abs(sm.max())))
    )


def test_heavy_tail_is_clipped_to_the_tukey_fence():
    f = np.array([10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 200.0, 180.0])
    Ym, _ = OutcomeWarp.of(layout(MINIMIZE)).apply(f[:, None])
    w = Ym[:, 0]
    assert w[7] == w[8] == w.max()  # both outliers land on the fence, then on one warped value
    gaps = np.diff(w[:7])  # the good side keeps its resolution: the outlier is not 70 steps away
    assert np.all(gaps > 0) and (w[7] - w[6]) < 10 * gaps.mean()


def test_skewed_objective_is_made_more_symmetric_and_variances_follow_the_slope():
    """Branin-like values (most near the minimum, a few hundreds) lose their skew; the standard
    errors follow the map's derivative (delta method), checked against a finite difference."""
    rng = np.random.default_rng(0)
    f = 0.4 + rng.gamma(0.6, 30.0, size=2000)  # many points: one moved point barely moves lambda
    lay = layout(MINIMIZE)
    w = OutcomeWarp.of(lay)
    Ym, Ymvar = w.apply(f[:, None], np.full((len(f), 1), 1e-4))
    assert abs(stats.skew(Ym[:, 0])) < 0.25 * abs(stats.skew(f))  # the clip alone leaves 0.47 of it
    h = 1e-3  # large enough that the lambda fit's own tolerance is noise
    for i in (int(np.argmin(f)), int(np.argsort(f)[1000])):
        fp = f.copy()
        fp[i] += h
        d = (w.apply(fp[:, None])[0][i, 0] - Ym[i, 0]) / h
        np.testing.assert_allclose(Ymvar[i, 0], 1e-4 * d * d, rtol=0.02)


def test_constraint_is_bilogged_around_its_bound_with_delta_method_variances():
    lay = layout(MINIMIZE, [OutcomeConstraint("c", "<=", 5.0)])
    Y = np.array([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0], [4.0, 5.5]])
    Yvar = np.full_like(Y, 0.04)
    Ym, Ymvar = OutcomeWarp.of(lay).apply(Y, Yvar)
    np.testing.assert_allclose(Ym[:, 1], np.sign(Y[:, 1] - 5) * np.log1p(np.abs(Y[:, 1] - 5)))
    np.testing.assert_allclose(Ymvar[:, 1], 0.04 / (1 + np.abs(Y[:, 1] - 5)) ** 2)
    np.testing.assert_array_equal(Ymvar[:, 0], Yvar[:, 0])


def test_shared_columns_and_multi_objective_objectives_are_left_alone():
    """Heavy tails within the safety map's window (SAFE_IQRS) stay as they are."""
    lay = layout(MINIMIZE, [OutcomeConstraint("f", "<=", 3.0)])  # the objective is also constrained
    Y = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [200.0]])
    w = OutcomeWarp.of(lay)
    np.testing.assert_array_equal(w.apply(Y)[0], Y)
    assert w.model_layout == lay == w.layout_for(Y)
    mo = layout(objectives=[Objective("a", MINIMIZE), Objective("b", MAXIMIZE)])
    Y2 = np.column_stack([np.r_[np.arange(8.0), 300.0], np.arange(9.0)])
    np.testing.assert_array_equal(OutcomeWarp.of(mo).apply(Y2)[0], Y2)


huge = st.floats(-1.7e308, 1.7e308, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    v=st.lists(st.one_of(st.floats(-10, 10), huge), min_size=1, max_size=30),
    anchors=st.lists(huge, max_size=3),
)
def test_safety_map_is_finite_bounded_and_strictly_increasing(v, anchors):
    """Any finite values and anchors map to finite values under MAX_MODEL, in the same strict
    order, the variances' slope finite and positive; the inverse takes them back."""
    from bbo.warping import MAX_MODEL, SafeMap

    v = np.asarray(v)
    m = SafeMap.of(v, tuple(anchors))
    if m is None:
        assert np.max(np.abs(v)) <= MAX_MODEL
        return
    x = np.r_[v, anchors]
    out = m(x)
    assert np.isfinite(out).all() and np.max(np.abs(out)) <= MAX_MODEL
    o = np.argsort(x, kind="stable")
    assert np.all(np.diff(out[o]) >= 0)  # never reorders; distinct where doubles can tell
    xs, gap = x[o], np.diff(x[o])
    apart = (gap > 1e-6 * np.maximum(np.abs(xs[1:]), np.abs(xs[:-1]))) & (
        gap > 1e-9 * np.max(np.abs(v))
    )
    assert np.all(np.diff(out[o])[apart] > 0)
    slope = m.slope(x)
    assert np.isfinite(slope).all() and (slope >= 0).all()
    np.testing.assert_allclose(m.inverse(m(v)), v, rtol=1e-6, atol=1e-12 * np.max(np.abs(v)))


def test_safety_map_keeps_ordinary_data_and_compresses_the_absurd():
    """The identity where nothing is far; a 1e300 (or a bound of 1e308) lands a few hundred
    interquartile ranges out, leaving the ordinary values untouched; a tie-heavy column too."""
    from bbo.warping import SafeMap

    f = np.array([10.0, 10.5, 11.0, 11.5, 12.0, 12.5])
    assert SafeMap.of(f) is None and SafeMap.of(f, (3.0, 1e6)) is None  # 1e6: 4e5 IQRs, kept
    for v, a in ((np.r_[f, 1e300], ()), (f, (1e308,)), (np.r_[np.ones(7), 2.0, -1e300], ())):
        m = SafeMap.of(v, a)
        out = m(np.r_[v, a])
        ordinary = np.abs(v) < 100
        np.testing.assert_array_equal(out[: len(v)][ordinary], v[ordinary])
        spread = max(np.ptp(v[ordinary]), 1.0)
        assert np.all(np.abs(out - np.median(v)) < 1000 * spread)


def test_huge_values_warp_to_a_model_the_gp_can_fit():
    """Single objective with values at +-1e300 and a huge standard error, constraint bounds of
    1e308: warped values, variances and the model layout's bounds are finite, order and
    feasibility kept."""
    lay = layout(
        MINIMIZE, [OutcomeConstraint("c", ">=", -1e308), OutcomeConstraint("f", "<=", 1e308)]
    )
    f = np.r_[np.linspace(0.0, 1.0, 8), 1e300, -1e300, 1.7e308]
    c = np.r_[np.linspace(-1.0, 1.0, 8), -1.7e308, 1e300, 0.0]
    Y = np.column_stack([f, c])
    w = OutcomeWarp.of(lay)
    Ym, Ymvar, model_lay = w.warp(Y, np.full_like(Y, 1e300))
    assert np.isfinite(Ym).all() and np.isfinite(Ymvar).all() and np.isfinite(Ym.std(axis=0)).all()
    assert all(np.isfinite(b) and abs(b) < 1e30 for _, _, b in model_lay.constraints)
    np.testing.assert_array_equal(lay.feasible(Y), model_lay.feasible(Ym))
    for j in range(2):
        o = np.argsort(Y[:, j], kind="stable")
        assert np.all(np.diff(Ym[o, j]) >= 0)


def test_yeo_johnson_lambda_is_scipys():
    """The fast maximum-likelihood lambda is SciPy's ``yeojohnson_normmax``, on skewed, negative,
    mixed-sign and tiny-spread data."""
    from bbo.warping import _yeo_johnson_lambda

    rng = np.random.default_rng(3)
    for i in range(60):
        x = rng.standard_normal(int(rng.integers(5, 120))) * [0.01, 1.0, 30.0][i % 3]
        if i % 4 == 0:
            x = np.expm1(x)
        if i % 5 == 0:
            x = -np.abs(x)
        assert _yeo_johnson_lambda(x) == pytest.approx(stats.yeojohnson_normmax(x), rel=1e-9)
    assert _yeo_johnson_lambda(np.zeros(6)) == 1.0


@settings(max_examples=300, deadline=None)
@given(f=values, goal=st.sampled_from([MINIMIZE, MAXIMIZE]))
def test_objective_units_inverts_the_objective_warp(f, goal):
    """Model units map back to the objective's (the recommendation's estimate): each observation
    to itself, one clipped on the bad side to the Tukey fence."""
    w = OutcomeWarp.of(layout(goal))
    Y = np.array(f, dtype=float)[:, None]
    back = w.objective_units(Y, w.apply(Y)[0][:, 0])
    sign = 1.0 if goal == MAXIMIZE else -1.0
    v = sign * Y[:, 0]
    if len(v) >= 5:  # the fence as warping computes it (MIN_POINTS)
        q1, q3 = np.percentile(v, [25, 75])
        v = np.maximum(v, q1 - 1.5 * (q3 - q1)) if q3 > q1 else v
    np.testing.assert_allclose(back, sign * v, rtol=1e-6, atol=1e-6 * (np.ptp(v) + 1.0))
