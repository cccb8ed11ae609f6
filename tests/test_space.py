"""Search-space encoding round trips (property-based) and rejection of malformed specs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbo.design import sobol_design
from bbo.errors import SpecError
from bbo.space import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    LinearConstraint,
    OrdinalParam,
    SearchSpace,
)
from bbo.spec import AlgorithmOptions, Objective, OutcomeConstraint, ParameterPrior, StudySpec

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def float_param_and_value(draw):
    log = draw(st.booleans())
    lo = draw(st.floats(min_value=1e-6, max_value=1e5)) if log else draw(finite)
    width = draw(st.floats(min_value=1e-3, max_value=1e6))
    hi = lo + width
    v = draw(st.floats(min_value=lo, max_value=hi))
    return FloatParam("x", lo, hi, log=log), v


@given(float_param_and_value())
@settings(max_examples=300, deadline=None)
def test_float_round_trip(pv):
    p, v = pv
    space = SearchSpace((p,))
    u = space.encode({"x": v})
    assert 0.0 - 1e-12 <= u[0] <= 1.0 + 1e-12
    back = space.decode(u)["x"]
    assert math.isclose(back, v, rel_tol=1e-9, abs_tol=1e-9 * (p.high - p.low))
    assert p.low <= back <= p.high


@st.composite
def int_param_and_value(draw):
    log = draw(st.booleans())
    lo = (
        draw(st.integers(min_value=1, max_value=10_000))
        if log
        else draw(st.integers(-10_000, 10_000))
    )
    hi = lo + draw(st.integers(min_value=1, max_value=100_000))
    return IntParam("n", lo, hi, log=log), draw(st.integers(lo, hi))


@given(int_param_and_value())
@settings(max_examples=300, deadline=None)
def test_int_round_trip_is_exact(pv):
    p, v = pv
    space = SearchSpace((p,))
    back = space.decode(space.encode({"n": v}))["n"]
    assert back == v and isinstance(back, int)


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True), st.data())
@settings(max_examples=200, deadline=None)
def test_categorical_round_trip_is_exact(choices, data):
    p = CategoricalParam("c", tuple(choices))
    space = SearchSpace((p,))
    v = data.draw(st.sampled_from(choices))
    assert space.decode(space.encode({"c": v}))["c"] == v


@given(
    st.lists(st.floats(min_value=0.01, max_value=1e4), min_size=2, max_size=10, unique=True),
    st.booleans(),
    st.data(),
)
@settings(max_examples=200, deadline=None)
def test_ordinal_round_trip_is_exact(values, log, data):
    values = sorted(set(values))
    if len(values) < 2 or any(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(values, values[1:])):
        return
    p = OrdinalParam("o", tuple(values), log=log)
    space = SearchSpace((p,))
    v = data.draw(st.sampled_from(values))
    assert space.decode(space.encode({"o": v}))["o"] == v


@given(st.lists(st.floats(0, 1), min_size=4, max_size=4))
@settings(max_examples=200, deadline=None)
def test_decode_always_yields_valid_params(u):
    space = SearchSpace(
        (
            FloatParam("a", 1e-4, 1.0, log=True),
            IntParam("b", 1, 64, log=True),
            OrdinalParam("c", (16, 32, 64)),
            CategoricalParam("d", ("x", "y", "z")),
            FixedParam("e", 3),
        )
    )
    x = np.array(u)
    x[3] = x[3] * 2
    p = space.decode(x)
    assert space.validate_params(p) == p


def test_fixed_params_take_no_column_and_come_back():
    space = SearchSpace((FloatParam("a", 0, 1), FixedParam("f", "adam")))
    assert space.dim == 1
    assert space.decode([0.5]) == {"a": 0.5, "f": "adam"}


def test_linear_constraint_in_encoding_matches_original_units():
    space = SearchSpace(
        (FloatParam("cpu", 0.1, 0.9), IntParam("mem", 1, 9)),
        (LinearConstraint({"cpu": 1.0, "mem": 0.1}, 1.0),),
    )
    ((idx, coef, rhs),) = space.inequality_constraints()
    rng = np.random.default_rng(0)
    for u in rng.random((200, 2)):
        p = space.decode(u)
        x = space.encode(p)
        enc_ok = sum(c * x[i] for i, c in zip(idx, coef)) >= rhs - 1e-12
        assert enc_ok == space.is_feasible(p)


def test_sobol_design_respects_constraints_and_is_reproducible():
    space = SearchSpace(
        (FloatParam("x", 0, 1), FloatParam("y", 0, 1), IntParam("k", 0, 10)),
        (LinearConstraint({"x": 1, "y": 1}, 0.3), LinearConstraint({"k": 1, "x": -5}, 2)),
    )
    pts = sobol_design(space, 20, seed=7)
    assert len(pts) == 20
    assert all(space.is_feasible(p) for p in pts)
    assert pts == sobol_design(space, 20, seed=7)
    assert sobol_design(space, 5, seed=7, skip=3) == pts[3:8]


def test_sobol_design_skip_without_constraints_continues_the_same_sequence():
    # unconstrained spaces jump over the skipped points instead of drawing them: same points
    space = SearchSpace(
        (FloatParam("x", -1, 1), IntParam("k", 0, 10), CategoricalParam("c", ("a", "b", "c")))
    )
    pts = sobol_design(space, 700, seed=11)
    for skip in (1, 255, 256, 257, 600):
        assert sobol_design(space, 3, seed=11, skip=skip) == pts[skip : skip + 3]


@pytest.mark.parametrize(
    "build, field, words",
    [
        (lambda: SearchSpace((FloatParam("x", 1, 1),)), "parameters[0].high", "greater than low"),
        (lambda: SearchSpace((FloatParam("x", 0, 1, log=True),)), "parameters[0].low", "low > 0"),
        (lambda: SearchSpace((IntParam("n", 0, 5, log=True),)), "parameters[0].low", "low > 0"),
        (lambda: SearchSpace((FloatParam("x", 0, float("nan")),)), "parameters[0].high", "finite"),
        (
            lambda: SearchSpace((CategoricalParam("c", ()),)),
            "parameters[0].choices",
            "at least one",
        ),
        (
            lambda: SearchSpace((CategoricalParam("c", ("a", "a")),)),
            "parameters[0].choices",
            "duplicate",
        ),
        (lambda: SearchSpace((OrdinalParam("o", (1, 1)),)), "parameters[0].values", "duplicate"),
        (lambda: SearchSpace((OrdinalParam("o", (3, 1)),)), "parameters[0].values", "sorted"),
        (
            lambda: SearchSpace((FloatParam("x", 0, 1), FloatParam("x", 0, 2))),
            "parameters[1].name",
            "duplicate",
        ),
        (lambda: SearchSpace(()), "parameters", "at least one"),
        (lambda: SearchSpace((FixedParam("f", 1),)), "parameters", "fixed"),
        (
            lambda: SearchSpace((FloatParam("x", 0, 1),), (LinearConstraint({"z": 1}, 1),)),
            "parameter_constraints[0].coefficients",
            "unknown parameter 'z'",
        ),
        (
            lambda: SearchSpace(
                (CategoricalParam("c", ("a", "b")), FloatParam("x", 0, 1)),
                (LinearConstraint({"c": 1}, 1),),
            ),
            "parameter_constraints[0].coefficients",
            "categorical",
        ),
        (
            lambda: SearchSpace(
                (FloatParam("x", 1, 2, log=True),), (LinearConstraint({"x": 1}, 1.5),)
            ),
            "parameter_constraints[0].coefficients",
            "log scale",
        ),
        (
            lambda: SearchSpace(
                (FloatParam("x", 0, 1), FloatParam("y", 0, 1)),
                (LinearConstraint({"x": 1, "y": 1}, -0.5),),
            ),
            "parameter_constraints",
            "admit no point",
        ),
        (
            lambda: StudySpec(SearchSpace((FloatParam("x", 0, 1),)), ()),
            "objectives",
            "at least one",
        ),
        (
            lambda: StudySpec(SearchSpace((FloatParam("x", 0, 1),)), (Objective("y", "up"),)),
            "objectives[0].goal",
            "minimize",
        ),
        (
            lambda: StudySpec(
                SearchSpace((FloatParam("x", 0, 1),)),
                (Objective("y"),),
                (OutcomeConstraint("t", "<", 1),),
            ),
            "outcome_constraints[0].op",
            "'<='",
        ),
        (
            lambda: StudySpec(
                SearchSpace((FloatParam("x", 0, 1),)),
                (Objective("y"),),
                priors=(ParameterPrior("x", 0.5, -1),),
            ),
            "priors[0].std",
            "std > 0",
        ),
        (
            lambda: StudySpec(
                SearchSpace((FloatParam("x", 0, 1),)),
                (Objective("y"),),
                priors=(ParameterPrior("q", 0.5, 1),),
            ),
            "priors[0].parameter",
            "unknown",
        ),
        (  # each finite, the sum not: normalizing made every probability NaN
            lambda: StudySpec(
                SearchSpace((CategoricalParam("k", ("a", "b")),)),
                (Objective("y"),),
                priors=(ParameterPrior("k", probabilities={"a": 1e308, "b": 1e308}),),
            ),
            "priors[0].probabilities",
            "finite sum",
        ),
        (
            lambda: StudySpec(
                SearchSpace((FloatParam("x", 0, 1),)),
                (Objective("y"),),
                algorithm=AlgorithmOptions(exploit_gap=-1),
            ),
            "algorithm.exploit_gap",
            "0 (no exploitation steps)",
        ),
        (
            lambda: StudySpec(
                SearchSpace((FloatParam("x", 0, 1),)),
                (Objective("y"),),
                algorithm=AlgorithmOptions(exploit_gap=2.5),
            ),
            "algorithm.exploit_gap",
            "integer",
        ),
    ],
)
def test_malformed_specs_are_rejected_with_field_and_fix(build, field, words):
    with pytest.raises(SpecError) as e:
        build()
    assert e.value.field == field
    assert words in e.value.message


def test_validate_params_rejects_out_of_range_wrong_type_unknown_and_constraint_violations():
    space = SearchSpace(
        (FloatParam("x", 0, 1), IntParam("n", 1, 4), CategoricalParam("c", ("a", "b"))),
        (LinearConstraint({"x": 1, "n": 1}, 4.5),),
    )
    ok = {"x": 0.5, "n": 2, "c": "a"}
    assert space.validate_params(ok) == ok
    for bad, words in [
        ({"x": 1.5, "n": 2, "c": "a"}, "outside"),
        ({"x": float("nan"), "n": 2, "c": "a"}, "outside"),
        ({"x": 0.5, "n": 2.5, "c": "a"}, "integer"),
        ({"x": 0.5, "n": 2, "c": "q"}, "not one of"),
        ({"x": 0.5, "n": 2}, "missing"),
        ({"x": 0.5, "n": 2, "c": "a", "zz": 1}, "unknown"),
        ({"x": 0.9, "n": 4, "c": "a"}, "violate constraint"),
    ]:
        with pytest.raises(SpecError, match=words):
            space.validate_params(bad)


def test_spec_json_round_trip():
    spec = StudySpec(
        SearchSpace(
            (
                FloatParam("lr", 1e-5, 1e-1, log=True),
                OrdinalParam("bs", (16, 32, 64)),
                CategoricalParam("opt", ("adam", "sgd")),
                FixedParam("epochs", 10),
            )
        ),
        (Objective("loss"), Objective("acc", "maximize")),
        (OutcomeConstraint("seconds", "<=", 60),),
        tracked_metrics=("memory",),
        description="tune a net",
        priors=(
            ParameterPrior("lr", 1e-3, 1e-3, confidence=0.8),
            ParameterPrior("opt", probabilities={"adam": 0.9, "sgd": 0.1}),
        ),
    )
    assert StudySpec.from_dict(spec.to_dict()) == spec
    assert spec.modeled_metrics == ["loss", "acc", "seconds"]


def test_a_spec_dict_with_fields_nobody_reads_is_refused_but_stored_ones_load():
    """A constraint is sum <= bound; ``"op": ">="`` was dropped silently and the opposite
    constraint enforced (x + z + w >= 1 asked, points summing to 0.49 handed out). Unknown keys
    of a spec or of a constraint are refused when a user gives them; a stored spec (another
    version may have written more keys) still loads."""
    base = {
        "parameters": [{"name": "x", "type": "float", "low": 0, "high": 1}],
        "objectives": [{"name": "f"}],
    }
    ge = {"coefficients": {"x": 1}, "bound": 0.5, "op": ">="}
    with pytest.raises(SpecError) as e:
        StudySpec.from_dict({**base, "parameter_constraints": [ge]})
    assert e.value.field == "parameter_constraints[0]"
    assert "unknown field(s) op" in e.value.message and "negate both" in e.value.message
    with pytest.raises(SpecError) as e:
        StudySpec.from_dict({**base, "contraints": []})
    assert e.value.field == "spec" and "contraints" in e.value.message
    stored = StudySpec.from_dict({**base, "parameter_constraints": [ge], "later": 1}, strict=False)
    assert stored.space.constraints[0].bound == 0.5


def test_weights_that_sum_to_one_get_a_spread_design_and_model_based_asks():
    """x + z + w <= 1 beside -x - z - w <= -1 (an equality: mixture weights) leaves the polytope
    no interior: hit-and-run found none and every ask handed out the same vertex (1, 0, 0),
    the acquisition's repeats falling back to it. The pair is sampled as an equality."""
    from bbo.strategy import GenerationStrategy
    from bbo.trial import Metric, Trial, TrialState

    names = ("x", "z", "w")
    spec = StudySpec.from_dict(
        {
            "parameters": [{"name": n, "type": "float", "low": 0, "high": 1} for n in names],
            "objectives": [{"name": "f"}],
            "parameter_constraints": [
                {"coefficients": dict.fromkeys(names, 1), "bound": 1},
                {"coefficients": dict.fromkeys(names, -1), "bound": -1},
            ],
            "algorithm": {"seed": 0},
        }
    )
    gs, trials = GenerationStrategy(spec), []
    for i in range(8):
        (s,) = gs.suggest(trials, 1)
        p = s.params
        assert spec.space.is_feasible(p) and abs(sum(p.values()) - 1) < 1e-8
        f = (p["x"] - 0.2) ** 2 + (p["z"] - 0.5) ** 2 + (p["w"] - 0.3) ** 2
        trials.append(Trial(i, p, TrialState.COMPLETED, {"f": Metric(f)}, origin=s.origin))
    assert len({tuple(round(t.params[n], 6) for n in names) for t in trials}) == 8
    assert all(t.origin in ("bo", "bo_exploit") for t in trials[6:])  # the model's, no fallback


def test_constraints_met_only_within_the_tolerance_still_give_points(monkeypatch):
    """x + z <= -1e-13 on [0, 1]^2 is met (within the tolerance) only at the corner: the polytope
    sampler finds no interior and raised, failing every Ask; the known point is handed out (a new
    study is refused: nothing to search). A stored study whose constraints admit no grid point at
    all is a clear error, not a crash, found by the vectorized walk alone: BoTorch's chain (seconds
    an attempt) ran 20 times first, 35 s of CPU on every Ask."""
    import botorch.utils.sampling

    from bbo.design import polytope_samples
    from bbo.errors import ConflictError

    thin = SearchSpace(
        (FloatParam("x", 0, 1), FloatParam("z", 0, 1)),
        (LinearConstraint({"x": 1.0, "z": 1.0}, -1e-13),),
    )
    with pytest.raises(SpecError, match="leave one point"):
        thin.check_reachable()
    assert sobol_design(thin, 3, seed=1) == [{"x": 0.0, "z": 0.0}] * 3
    none = SearchSpace(
        (IntParam("n", 0, 1), FloatParam("x", 0, 1)),
        (LinearConstraint({"n": 2.0}, 1.0), LinearConstraint({"n": -2.0}, -1.0)),
    )  # a stored study's space is read as it was accepted
    with pytest.raises(SpecError, match="whole-number"):
        none.check_reachable()
    chains = []
    real = botorch.utils.sampling.get_polytope_samples
    monkeypatch.setattr(
        botorch.utils.sampling,
        "get_polytope_samples",
        lambda *a, **k: chains.append(k["seed"]) or real(*a, **k),
    )
    with pytest.raises(ConflictError, match="looser constraints"):
        polytope_samples(none, 2, seed=1)
    assert chains == []


def test_a_feasible_constraint_with_huge_coefficients_is_accepted():
    """x - y <= 0 over [0, 1e15]: its encoded row holds 1e15, which HiGHS refuses as a model
    error, and scipy reports that as infeasible: CreateStudy refused a constraint that half the
    box meets with "admit no point inside the parameter bounds"."""
    for hi in (1e15, 1e100):
        space = SearchSpace(
            (FloatParam("x", 0, hi), FloatParam("y", 0, hi), IntParam("n", 0, 10**18)),
            (
                LinearConstraint({"x": 1.0, "y": -1.0}, 0.0),
                LinearConstraint({"n": 1.0, "x": 1e-300}, 5e17),
            ),
        )
        space.check_reachable()
        assert space.feasible_params is not None
    with pytest.raises(SpecError, match="admit no point"):  # still infeasible where it is
        SearchSpace(
            (FloatParam("x", 0, 1e15), FloatParam("y", 0, 1e15)),
            (LinearConstraint({"x": 1.0, "y": -1.0}, -2e15),),
        )


def test_constraints_far_from_zero_are_met_to_the_parameters_scale():
    """x + y <= 1e9 + 1 over x in [1e9, 1e9 + 1], y in [0, 1] is u_x + u_y <= 1 in the encoding.
    The tolerance was 1e-9 of the bound, 1.0 here, the whole range: the initial design handed out
    points with u_x + u_y up to 1.15, repaired optimizer points up to 1.57, and AddTrial took them."""
    space = SearchSpace(
        (FloatParam("x", 1e9, 1e9 + 1), FloatParam("y", 0, 1)),
        (LinearConstraint({"x": 1.0, "y": 1.0}, 1e9 + 1),),
    )
    assert not space.is_feasible({"x": 1e9 + 0.75, "y": 0.5})
    with pytest.raises(SpecError, match="violate constraint 0"):
        space.validate_params({"x": 1e9 + 0.75, "y": 0.5})
    assert space.is_feasible({"x": 1e9 + 0.5, "y": 0.5})  # on the bound, in doubles
    assert space.is_feasible({"x": 1e9 + 0.25, "y": 0.5})
    pts = sobol_design(space, 16, seed=3)
    assert len(pts) == 16
    assert all(space.encode(p).sum() <= 1 + 1e-6 for p in pts)
    # a unit-scale constraint keeps its tolerance: 1e-9, as before
    unit = SearchSpace(
        (FloatParam("x", 0, 1), FloatParam("y", 0, 1)),
        (LinearConstraint({"x": 1.0, "y": 1.0}, 1.0),),
    )
    assert unit.is_feasible({"x": 0.5, "y": 0.5 + 5e-10})
    assert not unit.is_feasible({"x": 0.5, "y": 0.5 + 5e-9})


def test_a_row_far_tinier_than_its_bound_is_judged_not_crashed_on():
    """1e-300 * x <= 1e12: the LP's row, scaled by its largest coefficient, had a side of inf,
    which linprog refused with a ValueError (CreateStudy failed INTERNAL). Met everywhere it is
    accepted; its opposite, met nowhere, is refused."""
    box = (FloatParam("x", 0, 31), IntParam("n", 0, 31))
    for name in ("x", "n"):
        SearchSpace(box, (LinearConstraint({name: 1e-300}, 1e12),)).check_reachable()
    with pytest.raises(SpecError, match="admit no point"):
        SearchSpace(box, (LinearConstraint({"x": -1e-300}, -1e12),))


def test_constraints_broken_past_the_tolerance_everywhere_are_refused():
    """x + y <= -5e-8 over [0, 1]^2 (and 1e-300 * x <= 0 over x >= 1e-4) break by less than the
    LP's 1e-7 feasibility tolerance but more than the space's own: CreateStudy accepted them and
    every ask then searched a minute for a point and failed FAILED_PRECONDITION."""
    for params, cons in [
        ((FloatParam("x", 0, 1), FloatParam("y", 0, 1)), ({"x": 1.0, "y": 1.0}, -5e-8)),
        ((CategoricalParam("k", ("a", "b")), FloatParam("x", 1e-4, 1e4)), ({"x": 1e-300}, 0.0)),
    ]:
        space = SearchSpace(params, (LinearConstraint(*cons),))  # a stored one still loads
        with pytest.raises(SpecError, match="admit no point"):
            space.check_reachable()
    met = SearchSpace(  # within the tolerance at the corner: one point, as before
        (FloatParam("x", 0, 1), FloatParam("y", 0, 1)),
        (LinearConstraint({"x": 1.0, "y": 1.0}, -5e-10),),
    )
    assert met.is_feasible({"x": 0.0, "y": 0.0})
    with pytest.raises(SpecError, match="leave one point"):
        met.check_reachable()


def test_a_huge_coefficient_on_an_int_excuses_no_violation_of_another_term():
    """1e12 * n + 2 * m <= 1 over ints: the tolerance was 1e-9 of n's term range (1e12 * 11),
    1,000, so n = 0, m = 3 (left-hand side 6) passed; the design and BO handed out such points
    and AddTrial took them. Ints and ordinals are exact: they leave only the sum's rounding."""
    space = SearchSpace(
        (IntParam("n", -1, 10), IntParam("m", 0, 5), OrdinalParam("o", (0.0, 1.0, 2.0))),
        (LinearConstraint({"n": 1e12, "m": 2.0}, 1.0), LinearConstraint({"o": 1e12}, 1e12)),
    )
    assert not space.is_feasible({"n": 0, "m": 1, "o": 0.0})
    assert not space.is_feasible({"n": -1, "m": 0, "o": 2.0})
    assert space.is_feasible({"n": 0, "m": 0, "o": 1.0})
    with pytest.raises(SpecError, match="violate constraint 0"):
        space.validate_params({"n": 0, "m": 2, "o": 0.0})
    pts = sobol_design(space, 12, seed=5)
    assert len(pts) == 12
    assert all(1e12 * p["n"] + 2 * p["m"] <= 1 and p["o"] <= 1 for p in pts), pts


@pytest.mark.parametrize(
    "low, high, log",
    [(2**62, 2**62 + 1, False), (2**53, 2**53 + 1, False), (2**62, 2**62 + 1000, True)],
)
def test_int_range_one_double_wide_is_refused_at_create(registry, low, high, log):
    """Whole numbers beyond 2**53 that are one double (or one logarithm): every ask of such a
    study divided by zero (INTERNAL). Refused where the study is created."""
    spec = {
        "parameters": [{"type": "int", "name": "n", "low": low, "high": high, "log": log}],
        "objectives": [{"name": "y"}],
    }
    with pytest.raises(SpecError, match="too wide or too narrow for a double"):
        registry.create_study("int-one-double", spec)


def test_int_values_a_double_cannot_tell_apart_are_refused_at_create(registry):
    """[2**62, 2**62 + 1000]: its 1001 values encoded at two points, so only its ends were ever
    handed out (every ask after the design a fallback repeating them)."""
    spec = {
        "parameters": [{"type": "int", "name": "n", "low": 2**62, "high": 2**62 + 1000}],
        "objectives": [{"name": "y"}],
    }
    with pytest.raises(SpecError, match="too close together"):
        registry.create_study("int-coarse", spec)
    # the same width nearer zero, and a wide range treated as continuous, are still accepted
    ok = {"type": "int", "name": "n", "low": 2**52, "high": 2**52 + 1000}
    registry.create_study("int-fine", {**spec, "parameters": [ok]})
    wide = {"type": "int", "name": "n", "low": -(2**63), "high": 2**63 - 1}
    registry.create_study("int-wide", {**spec, "parameters": [wide]})


def test_constrained_ordinal_values_a_double_cannot_tell_apart_are_refused_at_create(registry):
    """An ordinal in a linear constraint is encoded on its value scale: values 0, 1e-300, 2e-300
    and 1 were one point there, so only 0 and 1 were handed out and asks fell back to repeats.
    Refused at create; the same values unconstrained (encoded by rank) are still accepted."""
    params = [
        {"type": "ordinal", "name": "o", "values": [0.0, 1e-300, 2e-300, 1.0]},
        {"type": "int", "name": "n", "low": 0, "high": 3},
    ]
    spec = {"parameters": params, "objectives": [{"name": "y"}]}
    cons = [{"coefficients": {"o": 1.0, "n": 1.0}, "bound": 2.0}]
    with pytest.raises(SpecError, match="too close together"):
        registry.create_study("ord-close", {**spec, "parameter_constraints": cons})
    registry.create_study("ord-free", spec)


def test_a_large_constrained_ordinal_space_finds_its_grid_point_within_the_time_limit():
    """20 ordinals of 1,000 values under 8 constraints (a spec within every limit): HiGHS's presolve
    of the create-time integer program ran 14-18 s past its 2 s limit and then could not tell
    (None); without presolve the branch and bound finds a point in under a second."""
    rng = np.random.default_rng(0)
    params = tuple(OrdinalParam(f"o{i}", tuple(float(v) for v in range(1000))) for i in range(20))
    cons = []
    for _ in range(8):
        a = rng.normal(size=20)
        coefficients = {f"o{i}": float(a[i]) for i in range(20)}
        cons.append(LinearConstraint(coefficients, float(abs(a).sum() * 300)))
    space = SearchSpace(params, tuple(cons))
    space.check_reachable()
    point = space.feasible_params
    assert point is not None and space.is_feasible(point)


def _random_constrained_space(rng) -> SearchSpace | None:
    params: list = []
    for i in range(int(rng.integers(2, 6))):
        kind = rng.integers(3)
        if kind == 0:
            params.append(
                FloatParam(f"p{i}", float(rng.uniform(-5, 0)), float(rng.uniform(0.1, 5)))
            )
        elif kind == 1:
            params.append(IntParam(f"p{i}", int(rng.integers(-5, 0)), int(rng.integers(1, 8))))
        else:
            vals = sorted(set(np.round(rng.uniform(-5, 5, int(rng.integers(2, 6))), 2).tolist()))
            params.append(
                OrdinalParam(f"p{i}", tuple(vals)) if len(vals) > 1 else FloatParam(f"p{i}", 0, 1)
            )
    cons = []
    for _ in range(int(rng.integers(1, 4))):
        coef = {p.name: float(np.round(rng.normal(), 2)) for p in params if rng.random() < 0.7}
        cons.append(LinearConstraint(coef or {"p0": 1.0}, float(np.round(rng.normal(), 2))))
    try:
        return SearchSpace(tuple(params), tuple(cons))
    except SpecError:
        return None


def test_the_design_prefilter_never_drops_a_feasible_point():
    """may_be_feasible rules rows out before the Python decode (the design walked every skipped
    Sobol point through it: 14 s an ask at 3,000 trials under a constraint few points meet); it
    must never rule out a row whose decoded point is feasible, on or off a bound."""
    rng = np.random.default_rng(0)
    ruled_out = 0
    for _ in range(60):
        space = _random_constrained_space(rng)
        if space is None:
            continue
        X = rng.random((500, space.dim))
        keep = space.may_be_feasible(X)
        feasible = np.array([space.is_feasible(space.decode(x)) for x in X])
        assert not (feasible & ~keep).any()
        ruled_out += int((~keep).sum())
        on_bound = [space.complete(x) for x in X[:50]]
        on_bound = [p for p in on_bound if p is not None]
        assert all(space.is_feasible(p) for p in on_bound)
        if on_bound:
            assert space.may_be_feasible(np.vstack([space.encode(p) for p in on_bound])).all()
    assert ruled_out > 0


def test_the_design_decodes_few_rows_under_a_constraint_few_points_meet(monkeypatch):
    """8 ints of 0..20 summing to at most 3: an Ask deep in the sequence (skip 3,000) decoded
    every Sobol row it drew, about 200,000, in Python; now only rows that may meet the
    constraint. The points are the same."""
    space = SearchSpace(
        tuple(IntParam(f"i{j}", 0, 20) for j in range(8)),
        (LinearConstraint({f"i{j}": 1 for j in range(8)}, 3),),
    )
    before = sobol_design(space, 2, seed=5, skip=40)
    calls = 0
    decode = SearchSpace.decode

    def counted(self, x):
        nonlocal calls
        calls += 1
        return decode(self, x)

    monkeypatch.setattr(SearchSpace, "decode", counted)
    assert sobol_design(space, 2, seed=5, skip=40) == before
    assert sobol_design(space, 2, seed=5, skip=3000)
    assert calls < 20_000


def test_a_violation_message_shows_how_far_past_the_bound():
    space = SearchSpace(
        (FloatParam("x", 0, 1), FloatParam("y", 0, 1)), (LinearConstraint({"x": 1, "y": 1}, 0.6),)
    )
    with pytest.raises(SpecError) as e:
        space.validate_params({"x": 0.3, "y": 0.3 + 1e-7})
    assert "0.60000009" in e.value.message and "1e-07 over the bound" in e.value.message


def test_a_grid_the_constraints_leave_one_point_of_is_refused_however_written():
    """Over ints a, b in 0..5, ``a + b <= 0`` was refused as leaving one point while
    ``a + b <= 0.5``, the same single grid point, was accepted (its relaxation has room)."""
    ab = (IntParam("a", 0, 5), IntParam("b", 0, 5))
    for bound in (0.0, 0.5):
        space = SearchSpace(ab, (LinearConstraint({"a": 1, "b": 1}, bound),))
        with pytest.raises(SpecError, match=r"leave one point \(a = 0, b = 0\)"):
            space.check_reachable()
    SearchSpace(ab, (LinearConstraint({"a": 1, "b": 1}, 1.5),)).check_reachable()
