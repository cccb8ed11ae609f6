"""Transfer across studies (bbo.transfer, bbo.transfer_model): which stored studies a study learns
from (related vs unrelated, never another tenant's), how their points map between spaces with
different ranges, how the model weighs them (a misleading source loses its weight), and that the
choice survives a deleted source and a server restart, readable through the API and `bbo trials`."""

from __future__ import annotations

import dataclasses
import json
import math

import grpc
import numpy as np
import pytest
from sec_helpers import create_key

import bbo_client as bc
from bbo.errors import NotFoundError, SpecError
from bbo.limits import LimitExceeded, RequestLimits
from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam, SearchSpace
from bbo.spec import Objective, StudySpec, TransferOptions
from bbo.transfer import (
    SourceData,
    description_similarities,
    encode_source_trials,
    map_point,
    relatedness,
)
from bbo.trial import Metric, Trial, TrialState


def bowl(p, cx=0.3, cz=0.6):
    return (p["x"] - cx) ** 2 + (p["z"] - cz) ** 2


def spec_dict(desc="a quadratic bowl in x and z", names=("x", "z"), obj="y", **extra):
    return {
        "parameters": [
            {"type": "float", "name": names[0], "low": 0.0, "high": 1.0},
            {"type": "float", "name": names[1], "low": 0.0, "high": 1.0},
        ],
        "objectives": [{"name": obj}],
        "description": desc,
        "algorithm": {"seed": 3},
        **extra,
    }


def grid_points(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": float(a), "z": float(b)} for a, b in rng.uniform(0, 1, (n, 2))]


def add(study, fn, n, seed=0, metric="y"):
    for p in grid_points(n, seed):
        study.add_trial(p, {metric: fn(p)})


# ---- relatedness and spec ------------------------------------------------------------------------
def test_relatedness_prefers_same_parameters_objectives_and_description():
    base = StudySpec.from_dict(spec_dict())
    same = relatedness(base, StudySpec.from_dict(spec_dict()), 1.0)
    narrow = StudySpec.from_dict(
        {
            **spec_dict(),
            "parameters": [
                {"type": "float", "name": "x", "low": 0.0, "high": 0.25},
                {"type": "float", "name": "z", "low": 0.0, "high": 1.0},
            ],
        }
    )
    assert same.compatible and same.score > relatedness(base, narrow, 1.0).score
    assert same.score > relatedness(base, StudySpec.from_dict(spec_dict()), 0.0).score
    other_names = relatedness(base, StudySpec.from_dict(spec_dict(names=("a", "b"))))
    assert not other_names.compatible and "no parameter 'x'" in other_names.why
    other_obj = relatedness(base, StudySpec.from_dict(spec_dict(obj="loss")))
    assert not other_obj.compatible and "objective 'y'" in other_obj.why
    cat = StudySpec.from_dict(
        {
            **spec_dict(),
            "parameters": [
                {"type": "categorical", "name": "x", "choices": ["a"]},
                {"type": "float", "name": "z", "low": 0.0, "high": 1.0},
            ],
        }
    )
    assert "categorical in the source" in relatedness(base, cat).why


def test_transfer_options_are_checked_and_bounded():
    ok = StudySpec.from_dict(spec_dict(transfer={"sources": ["a", "b.c"], "max_sources": 4}))
    assert ok.transfer == TransferOptions(("a", "b.c"), False, 4)
    assert StudySpec.from_dict(ok.to_dict()) == ok
    for bad, field in [
        ({"sources": ["a", "a"]}, "transfer.sources[1]"),
        ({"sources": ["no spaces"]}, "transfer.sources[0]"),
        ({"sources": "a"}, "transfer.sources"),
        ({"auto": 1}, "transfer.auto"),
        ({"max_sources": -1}, "transfer.max_sources"),
        ({"sources": ["a", "b"], "max_sources": 1}, "transfer.max_sources"),
    ]:
        with pytest.raises(SpecError) as e:
            StudySpec.from_dict(spec_dict(transfer=bad))
        assert e.value.field == field
    limits = RequestLimits(max_transfer_sources=2)
    with pytest.raises(LimitExceeded, match="max-transfer-sources"):
        limits.check_spec(spec_dict(transfer={"sources": ["a", "b", "c"]}))
    with pytest.raises(LimitExceeded, match="max-transfer-sources"):
        limits.check_spec(spec_dict(transfer={"auto": True, "max_sources": 3}))


# ---- mapping -------------------------------------------------------------------------------------
def test_mapping_between_spaces_with_different_ranges_keeps_units():
    source = SearchSpace(
        (
            FloatParam("rho", 1e-3, 1e3, log=True),
            FloatParam("alpha", 1.0, 1.9),
            IntParam("k", 1, 10),
            CategoricalParam("mode", ("a", "b", "c")),
            FloatParam("extra", 0.0, 1.0),  # the target has no such parameter: ignored
        )
    )
    target = SearchSpace(
        (
            FloatParam("rho", 1e-2, 1e2, log=True),
            FloatParam("alpha", 1.2, 2.0),
            IntParam("k", 2, 8),
            CategoricalParam("mode", ("b", "a")),
            OrdinalParam("batch", (16, 32, 64), log=True),
            FixedParam("problem", "lasso"),
        )
    )
    # the source held "batch" fixed: its value is what it ran with
    source = SearchSpace(source.params + (FixedParam("batch", 32),))
    trials = [
        Trial(
            1,
            {"rho": 1.0, "alpha": 1.6, "k": 5, "mode": "a", "extra": 0.1, "batch": 32},
            TrialState.COMPLETED,
            {"y": Metric(1.0)},
        ),
        Trial(
            2,
            {"rho": 1e-3, "alpha": 1.2, "k": 2, "mode": "b", "extra": 0.1, "batch": 32},
            TrialState.COMPLETED,
            {"y": Metric(2.0)},
        ),
        Trial(
            3,
            {"rho": 1e-4, "alpha": 1.6, "k": 5, "mode": "a", "extra": 0.1, "batch": 32},
            TrialState.COMPLETED,
            {"y": Metric(3.0)},
        ),  # far below the target's range: dropped
        Trial(
            4,
            {"rho": 1.0, "alpha": 1.6, "k": 5, "mode": "c", "extra": 0.1, "batch": 32},
            TrialState.COMPLETED,
            {"y": Metric(4.0)},
        ),  # a choice the target lacks: dropped
        Trial(
            5,
            {"rho": 1.0, "alpha": 1.6, "k": 5, "mode": "a", "extra": 0.1, "batch": 32},
            TrialState.FAILED,
        ),
    ]
    X, Y, used = encode_source_trials(target, source, trials, ["y"])
    assert [t.id for t in used] == [1, 2] and Y[:, 0].tolist() == [1.0, 2.0]
    # rho = 1 sits in the middle of both log ranges; 1e-3 a quarter range below the target's low
    np.testing.assert_allclose(X[0], [0.5, 0.5, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(X[1], [-0.25, 0.0, 0.0, 0.0, 0.5])
    # the design's opening point: clipped to the target's bounds, rounded onto its grid
    p = map_point(
        target, source, {"rho": 1e3, "alpha": 1.0, "k": 10, "mode": "b", "extra": 0.5, "batch": 32}
    )
    assert p == {"rho": 100.0, "alpha": 1.2, "k": 8, "mode": "b", "batch": 32, "problem": "lasso"}
    assert (
        map_point(target, source, {"rho": 1.0, "alpha": 1.5, "k": 3, "mode": "c", "batch": 32})
        is None
    )


def test_a_sources_points_are_encoded_as_the_target_encodes_its_own():
    """An ordinal grid is encoded by position (16, 32, ..., 512 at 0, 0.2, ..., 1), but source
    trials were put on the value scale (32 at 0.03): the source's model ranked the wrong batch
    sizes best at the target's points and the location prior pointed at 16, not the source's 64.
    A source with the target's own spec now encodes every point exactly as the target does."""
    space = SearchSpace(
        (OrdinalParam("bs", (16, 32, 64, 128, 256, 512)), FloatParam("lr", 1e-4, 1e-1, log=True))
    )
    assert "bs" in space.by_rank
    points = [
        {"bs": b, "lr": lr}
        for b, lr in zip((16, 32, 64, 128, 256, 512), np.geomspace(1e-4, 0.1, 6))
    ]
    trials = [
        Trial(i, p, TrialState.COMPLETED, {"y": Metric(float(i))}) for i, p in enumerate(points)
    ]
    X, _, used = encode_source_trials(space, space, trials, ["y"])
    assert len(used) == 6
    np.testing.assert_allclose(X, np.stack([space.encode(p) for p in points]), atol=1e-12)
    np.testing.assert_allclose(X[:, 0], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


# ---- the model's weights -------------------------------------------------------------------------
def test_a_related_source_carries_weight_and_a_misleading_one_loses_it():
    """Both at once: a shifted, rescaled copy of the target's function and a misleading one (best
    where the target is worst), 25 trials each, against the target's first 8 observations."""
    from bbo.strategy import GenerationStrategy

    space = SearchSpace((FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0)))
    spec = StudySpec(space, (Objective("y"),), transfer=TransferOptions(("good", "bad")))
    gs = GenerationStrategy(spec)

    def source(name, fn):
        trials = [
            Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(fn(p))})
            for i, p in enumerate(grid_points(25, seed=1))
        ]
        return SourceData(f"uid-{name}", name, StudySpec(space, (Objective("y"),)), trials)

    gs.set_sources(
        [source("good", lambda p: 3.0 * bowl(p) + 5.0), source("bad", lambda p: 2.0 - bowl(p))]
    )
    target = [
        Trial(
            i + 1,
            p,
            TrialState.COMPLETED,
            {"y": Metric(bowl(p, 0.35, 0.55))},
            origin="initial_design",
        )
        for i, p in enumerate(grid_points(8, seed=2))
    ]
    (s,) = gs.suggest(target, 1)
    rep = gs.transfer_report()
    w = rep["by_metric"]["y"]
    assert w["uid-good"] > 0.5 and w["uid-bad"] < 0.1 and rep["n"] == 8
    assert w["uid-good"] + w["uid-bad"] + rep["target"]["y"] == pytest.approx(1.0, abs=1e-3)
    assert s.origin == "transfer_bo" and "transfer weights (y): 'good'" in s.reason


def test_the_targets_own_fit_takes_over_from_a_shifted_source():
    """RGPE weighs each source against a GP fit on the target's points alone: once 15 points pin
    the target's bowl, that model ranks them better than a source whose bowl is shifted, and the
    weights do not follow the stacked model's hyperparameters (fit to the prior's residuals)."""
    import torch

    from bbo.strategy import GenerationStrategy

    space = SearchSpace((FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0)))
    spec = StudySpec(space, (Objective("y"),), transfer=TransferOptions(("shifted",)))
    gs = GenerationStrategy(spec)
    trials = [
        Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(bowl(p, 0.3, 0.6))})
        for i, p in enumerate(grid_points(25, seed=1))
    ]
    gs.set_sources([SourceData("uid-s", "shifted", StudySpec(space, (Objective("y"),)), trials)])
    target = [
        Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(bowl(p, 0.2, 0.7))})
        for i, p in enumerate(grid_points(15, seed=2))
    ]
    gs.suggest(target, 1)
    rep = gs.transfer_report()
    assert rep["by_metric"]["y"]["uid-s"] < 0.5 < rep["target"]["y"]
    n_fit, hyper = gs.transfer.surrogate.export_state()
    key = "likelihood.noise_covar.raw_noise"  # a stacked model that explains nothing
    gs.transfer.surrogate.import_state(n_fit, {**hyper, key: torch.full_like(hyper[key], 8.0)})
    gs.suggest(target, 1)
    assert gs.transfer_report() == rep


def test_a_quantized_sources_best_point_is_a_location_prior_while_it_outweighs_the_target():
    """On a quantized objective (values rounded: distinct points tie) a source the target's points
    agree with lends its best point as a piBO prior (spread: half its good region's width per
    parameter) and the step stays a transfer step. None from the same source unrounded (a smooth
    response: the stacked model carries its optimum), nor from a misleading source that lost its
    weight to the target's own model. A fixed parameter listed first has no column: the prior
    reads each free parameter's own."""
    from bbo.strategy import GenerationStrategy
    from bbo.transfer_model import MIN_PRIOR_SD

    space = SearchSpace(
        (FixedParam("solver", "lbfgs"), FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0))
    )
    src_points = grid_points(25, seed=1)

    def run(name, fn):
        spec = StudySpec(space, (Objective("y"),), transfer=TransferOptions((name,)))
        gs = GenerationStrategy(spec)
        trials = [
            Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(fn(p))})
            for i, p in enumerate(src_points)
        ]
        gs.set_sources([SourceData(f"u-{name}", name, StudySpec(space, (Objective("y"),)), trials)])
        target = [
            Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(bowl(p, 0.35, 0.55))})
            for i, p in enumerate(grid_points(8, seed=2))
        ]
        (s,) = gs.suggest(target, 1)
        return gs, s, target

    def good(p):
        return round(3.0 * bowl(p) + 5.0, 1)

    gs, s, target = run("good", good)
    best = min(src_points, key=good)  # the first of tied points, as the source ranks them
    data = gs.ctx.data.build(target)
    by = {p.parameter: p for p in gs.transfer.location_prior(data)}
    assert set(by) == {"x", "z"} and all(p.source == "transfer" for p in by.values())
    assert by["x"].mean == pytest.approx(best["x"]) and by["z"].mean == pytest.approx(best["z"])
    assert all(MIN_PRIOR_SD <= p.std <= 0.5 for p in by.values())
    assert s.origin == "transfer_bo"
    assert "EI bent towards the best point of source 'good' (a quantized objective)" in s.reason

    gs, s, _ = run("smooth", lambda p: 3.0 * bowl(p) + 5.0)
    assert "EI bent" not in s.reason
    assert gs.transfer_report()["by_metric"]["y"]["u-smooth"] > 0.5
    assert gs.transfer.location_prior(data) == ()

    gs, s, _ = run("bad", lambda p: round(2.0 - bowl(p), 1))
    rep = gs.transfer_report()
    assert rep["by_metric"]["y"]["u-bad"] < rep["target"]["y"]
    assert gs.transfer.location_prior(data) == ()


def test_a_location_prior_reads_back_where_it_was_placed():
    """The location prior is placed in the encoding and written in each parameter's own units;
    bbo.priors maps it back onto the same column position and spread (log floats, ints, grids
    by position)."""
    from bbo.priors import prior_in_units, unit_normal
    from bbo.spec import ParameterPrior

    space = SearchSpace(
        (
            FloatParam("rho", 1e-3, 1e3, log=True),
            IntParam("k", 1, 50),
            OrdinalParam("batch", (16, 32, 64, 128, 256)),
            OrdinalParam("depth", (1, 2, 3, 5, 8, 13, 21)),
        )
    )
    cases = [("rho", 0.62, 0.05), ("k", 0.3, 0.2)]
    # a grid read by position: inside, at either end (one side reaches), across uneven steps
    cases += [("batch", 0.75, 0.1), ("batch", 1.0, 0.3), ("batch", 0.0, 0.05), ("depth", 0.5, 0.4)]
    for name, u, sd in cases:
        prm = space.by_name[name]
        mean, std = prior_in_units(space, prm, u, sd)
        mu, back = unit_normal(space, ParameterPrior(name, mean, std))
        assert mu == pytest.approx(u) and back == pytest.approx(sd), (name, u, sd)
    assert prior_in_units(space, space.by_name["batch"], 0.75, 0.1)[0] == 128
    # a spread past both ends of the grid: its whole range, read back as far as the grid goes
    mean, std = prior_in_units(space, space.by_name["depth"], 0.5, 0.9)
    assert std == 20 and unit_normal(space, ParameterPrior("depth", mean, std))[1] == 0.5


def test_a_lone_source_is_scaled_on_the_targets_better_points():
    """A lone source that predicts the target's failures but orders its good points the other
    way: fitted on every point, its scale follows the failures' trend (and would lend its own
    optimum that weight); fitted on the better half it is the pseudo-observations' small prior
    value. Several sources are scaled on every point."""
    from bbo.transfer_model import _calibrate, _calibration_rows

    y = np.array([-5.0, -5.0, -5.0, -5.0, -1.0, -0.8, -0.6, -0.4, -0.2, 0.0])  # higher is better
    nu = np.array([-3.0, -3.0, -3.0, -3.0, 0.0, -0.2, -0.4, -0.6, -0.8, -1.0])  # good ones reversed
    lone = _calibration_rows(y, 1)
    assert lone.tolist() == [False] * 5 + [True] * 5
    assert _calibration_rows(y, 2).all()
    assert _calibrate(y, nu) > 1.5 and _calibrate(y[lone], nu[lone]) < 0.15
    few = np.array([-5.0, -5.0, -1.0, 0.0])  # two points above the median: all four are used
    assert _calibration_rows(few, 1).all()


@pytest.mark.parametrize("apart", [False, True])
def test_the_design_starts_at_agreeing_sources_and_spans_disagreeing_ones(apart):
    """Two sources whose good regions overlap: the design is their best points, then transfer
    steps. Two whose good regions lie apart: the usual design, its Sobol points inside the union
    of the regions, the best points opening and closing it (a seeded study: the warm-start gate
    may set the second best point aside where a Sobol point comes out better than the first)."""
    from bbo.spec import AlgorithmOptions
    from bbo.strategy import GenerationStrategy

    space = SearchSpace((FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0)))
    spec = StudySpec(
        space,
        (Objective("y"),),
        algorithm=AlgorithmOptions(seed=3),
        transfer=TransferOptions(("a", "b")),
    )
    gs = GenerationStrategy(spec)
    centres = {"a": (0.2, 0.3), "b": (0.85, 0.7) if apart else (0.25, 0.35)}

    def source(name):  # as an optimizer leaves it: a design, then points near its optimum
        rng = np.random.default_rng(ord(name))
        near = [
            {"x": float(a), "z": float(b)}
            for a, b in np.clip(rng.normal(centres[name], 0.03, (20, 2)), 0, 1)
        ]
        trials = [
            Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(bowl(p, *centres[name]))})
            for i, p in enumerate(grid_points(10, seed=ord(name)) + near)
        ]
        return SourceData(f"uid-{name}", name, StudySpec(space, (Objective("y"),)), trials)

    gs.set_sources([source("a"), source("b")])
    trials: list[Trial] = []
    for i in range(gs.n_initial + 1):
        (s,) = gs.suggest(trials, 1)
        y = {"y": Metric(bowl(s.params, 0.3, 0.4))}
        trials.append(Trial(i + 1, s.params, TrialState.COMPLETED, y, s.origin, s.reason))
    origins = [t.origin for t in trials]
    if not apart:
        assert origins[:3] == ["transfer_warmstart"] * 2 + ["transfer_bo"]
        return
    # the second best point closes the design (early where the first is confirmed the best)
    n = origins.index("transfer_warmstart", 1)
    assert origins[0] == "transfer_warmstart" and origins[n + 1] == "transfer_bo"
    assert origins[1:n] == ["initial_design"] * (n - 1) and n >= 3
    from bbo.transfer_model import good_region

    regions = [
        good_region(
            np.array([[t.params["x"], t.params["z"]] for t in src.trials]),
            -np.array([t.metrics["y"].value for t in src.trials]),
        )
        for src in (source("a"), source("b"))
    ]
    lo, hi = np.min([r[0] for r in regions], axis=0), np.max([r[1] for r in regions], axis=0)
    assert np.all(hi - lo < 0.8)
    for t in trials[1:n]:  # inside the region the sources' good points span, not beyond
        assert np.all(
            (lo <= [t.params["x"], t.params["z"]]) & ([t.params["x"], t.params["z"]] <= hi)
        )
    assert all("region the source studies' best trials span" in t.reason for t in trials[1:n])


def test_regions_disagree_only_when_apart_by_more_than_their_width():
    from bbo.transfer_model import regions_disagree

    space = SearchSpace((FloatParam("x", 0.0, 1.0), CategoricalParam("c", ("p", "q", "r"))))
    box = lambda a, b, ca, cb: (np.array([a, ca]), np.array([b, cb]))  # noqa: E731
    assert not regions_disagree(space, [box(0.2, 0.4, 0, 0)])  # one source: nothing to compare
    assert not regions_disagree(space, [box(0.2, 0.4, 0, 0), box(0.35, 0.6, 2, 2)])  # overlap
    assert not regions_disagree(space, [box(0.2, 0.4, 0, 0), box(0.45, 0.9, 2, 2)])  # gap < width
    assert not regions_disagree(space, [box(0.30, 0.30, 0, 0), box(0.35, 0.35, 1, 1)])  # < MIN_GAP
    assert regions_disagree(space, [box(0.1, 0.2, 0, 0), box(0.5, 0.6, 0, 0)])
    # categories never count: their encoding has no distance
    assert not regions_disagree(space, [box(0.1, 0.2, 0, 0), box(0.15, 0.2, 2, 2)])


def test_a_design_region_stays_inside_the_targets_box():
    """Source points up to a quarter range outside the target's bounds still map: the region of
    the design's Sobol points is clipped to the box; an explicit n_initial wins over any plan."""
    from bbo.device import select_device
    from bbo.spec import AlgorithmOptions
    from bbo.strategy.context import Context
    from bbo.transfer_model import DesignPlan, design_plan

    space = SearchSpace((FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0)))
    spec = StudySpec(space, (Objective("y"),), transfer=TransferOptions(("a", "b")))
    regions = [
        (np.array([-0.2, 0.1]), np.array([-0.1, 0.2])),
        (np.array([0.8, 0.7]), np.array([1.2, 0.8])),
    ]
    plan = design_plan(Context.of(spec, 0, select_device("cpu")), 2, regions)
    assert plan.size == spec.algorithm.initial_size(2) and plan.region is not None
    assert plan.region[0].tolist() == [0.0, 0.1] and plan.region[1].tolist() == [1.0, 0.8]
    fixed = dataclasses.replace(spec, algorithm=AlgorithmOptions(n_initial=7))
    assert design_plan(Context.of(fixed, 0, select_device("cpu")), 2, regions) == DesignPlan(
        7, None
    )


def test_a_constrained_study_models_its_sources_instead_of_falling_back():
    """An objective and a constraint metric (a batched two-output GP): the prior from a related
    source carries weight, every step is a transfer step and no fit or acquisition fails (the
    sources' two-output posteriors and BoTorch's re-transform of the targets with one copy of the
    inputs per output once broke both, and every step went to random points)."""
    from bbo.spec import OutcomeConstraint
    from bbo.strategy import GenerationStrategy

    space = SearchSpace((FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0)))
    objs, cons = (Objective("y"),), (OutcomeConstraint("c", "<=", 0.8),)

    def metrics(p, cx, cz):
        return {"y": Metric(bowl(p, cx, cz)), "c": Metric(p["x"] + 0.2 * p["z"])}

    src = [
        Trial(i + 1, p, TrialState.COMPLETED, metrics(p, 0.3, 0.6))
        for i, p in enumerate(grid_points(25, seed=1))
    ]
    spec = StudySpec(space, objs, outcome_constraints=cons, transfer=TransferOptions(("src",)))
    gs = GenerationStrategy(spec)
    gs.set_sources(
        [SourceData("uid-src", "src", StudySpec(space, objs, outcome_constraints=cons), src)]
    )
    trials = [
        Trial(i + 1, p, TrialState.COMPLETED, metrics(p, 0.35, 0.55), origin="initial_design")
        for i, p in enumerate(grid_points(6, seed=2))
    ]
    for _ in range(3):  # the first fit, then fits and conditioning from the cached state
        (s,) = gs.suggest(trials, 1)
        assert s.origin == "transfer_bo", s.reason
        assert "failed" not in s.reason and "unusable" not in s.reason, s.reason
        trials.append(
            Trial(len(trials) + 1, s.params, TrialState.COMPLETED, metrics(s.params, 0.35, 0.55))
        )
    assert gs.transfer_report()["by_metric"]["y"]["uid-src"] > 0
    # the prior reads the source's two-output mean off its cached marginals, as the GP gives it
    import dataclasses

    import torch

    assert gs.transfer is not None
    (source,) = [m for _, m in gs.transfer._models.values()]
    assert source.predictive is not None
    X = torch.rand(7, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, slow = source.z(X), dataclasses.replace(source, predictive=None).z(X)
    assert fast.shape == slow.shape == (7, 1, 2)
    assert torch.allclose(fast, slow, rtol=1e-8, atol=1e-10)
    # the stacked prior's NumPy closed form (the acquisition optimizer's path) is torch's, value
    # and gradient
    from bbo.device import select_device
    from bbo.transfer_model import TransferPrior

    coef, centre = np.array([[0.7, 0.4]]), np.array([[0.1, -0.2]])
    prior = TransferPrior([source], coef, centre, select_device("cpu"))
    assert prior.closed_form is not None
    x = X[:, 0, :].clone().requires_grad_(True)
    want = prior(x)
    want_grad = torch.stack(
        [torch.autograd.grad(want[:, j].sum(), x, retain_graph=True)[0] for j in range(2)], 1
    )
    got, got_grad = prior.closed_form(x.detach().numpy(), True)
    assert np.allclose(got, want.detach().numpy(), rtol=1e-8, atol=1e-10)
    assert np.allclose(got_grad, want_grad.numpy(), rtol=1e-6, atol=1e-8)
    # ... so a target GP stacked on it keeps closed-form marginals and gradients
    from bbo.predictive_grad import marginal_gradients
    from bbo.transfer_model import TransferSurrogate

    sur = TransferSurrogate(space, 2, spec.algorithm, select_device("cpu"))
    sur.prior = prior
    Xt = np.array([[p["x"], p["z"]] for p in (t.params for t in trials)])
    Yt = np.array([[t.metrics["y"].value, t.metrics["c"].value] for t in trials])
    _, _, info = sur.model(Xt, Yt)
    assert info.predictive is not None
    mg = marginal_gradients(info.predictive)
    assert mg is not None
    mean, var, _, _ = mg(x.detach().numpy())
    want_m, want_v = info.predictive.marginals(x.detach())
    assert np.allclose(mean, want_m.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["float", "categorical"])
def test_a_target_follows_its_own_fixed_value_of_a_parameter_its_source_varied(kind):
    """The source varied ``c``, which moves its optimum (x = 0.2 at c = 0 or "a", 0.8 at c = 1 or
    "b"); each target fixes ``c``. Its source's trials were read as if ``c`` did not matter: both
    targets opened at the source's best point (x = 0.78, at c near 1) and the one at c = 0 or "a"
    had not found its optimum 5 asks later. Read at the target's value, each opens at and finds its
    own."""
    from bbo.strategy import GenerationStrategy

    def f(p):
        c = {"a": 0.0, "b": 1.0}[p["c"]] if kind == "categorical" else p["c"]
        return (p["x"] - 0.2 - 0.6 * c) ** 2 + (p["z"] - 0.5) ** 2

    rng = np.random.default_rng(1)
    cp = CategoricalParam("c", ("a", "b")) if kind == "categorical" else FloatParam("c", 0.0, 1.0)
    pts = [
        {"x": float(x), "z": float(z), "c": ("a" if c < 0.7 else "b") if kind != "float" else c}
        for x, z, c in rng.uniform(0, 1, (30, 3))
    ]
    source = SourceData(
        "uid-s",
        "s",
        StudySpec(
            SearchSpace((FloatParam("x", 0.0, 1.0), cp, FloatParam("z", 0.0, 1.0))),
            (Objective("y"),),
        ),
        [Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(f(p))}) for i, p in enumerate(pts)],
    )
    for fixed, best_x in (
        (("a", 0.2), ("b", 0.8)) if kind == "categorical" else ((0.0, 0.2), (1.0, 0.8))
    ):
        space = SearchSpace(
            (FloatParam("x", 0.0, 1.0), FixedParam("c", fixed), FloatParam("z", 0.0, 1.0))
        )
        gs = GenerationStrategy(
            StudySpec(space, (Objective("y"),), transfer=TransferOptions(("s",)))
        )
        gs.set_sources([source])
        trials: list[Trial] = []
        for i in range(5):
            (s,) = gs.suggest(trials, 1)
            if i == 0:
                assert s.origin == "transfer_warmstart" and abs(s.params["x"] - best_x) < 0.1, s
            trials.append(
                Trial(
                    i + 1,
                    s.params,
                    TrialState.COMPLETED,
                    {"y": Metric(f(s.params))},
                    origin=s.origin,
                )
            )
        assert min(t.metrics["y"].value for t in trials) < 0.01, [t.params for t in trials]


def test_a_source_prior_is_the_models_mean_where_the_target_has_no_data():
    import torch

    from bbo.device import select_device
    from bbo.transfer_model import TransferSurrogate

    space = SearchSpace((FloatParam("x", 0.0, 1.0),))
    sur = TransferSurrogate(
        space, 1, StudySpec(space, (Objective("y"),)).algorithm, select_device("cpu")
    )
    sur.prior = lambda X: 10.0 * X[..., :1]  # a steep slope the data near x = 0 cannot show
    X = np.array([[0.0], [0.05], [0.1], [0.15]])
    Y = 10.0 * X + 0.01 * np.sin(40 * X)
    model, _, info = sur.model(X, Y)
    assert info.reason == ""
    with torch.no_grad():
        far = model.posterior(torch.tensor([[1.0]], dtype=torch.float64)).mean.item()
        near = model.posterior(torch.tensor([[0.05]], dtype=torch.float64)).mean.item()
    assert far == pytest.approx(10.0, abs=0.5) and near == pytest.approx(Y[1, 0], abs=0.05)
    # the cached marginals (the acquisition's and the recommendation's) add the prior back too,
    # also for hyperparameters whose marginals were checked while the prior was flat
    flat = TransferSurrogate(
        space, 1, StudySpec(space, (Objective("y"),)).algorithm, select_device("cpu")
    )
    _, _, info = flat.model(X, Y)
    assert info.predictive is not None
    flat.prior = sur.prior
    model, _, info = flat.model(X, Y)
    assert info.predictive is not None
    grid = torch.tensor([[0.05], [0.5], [1.0]], dtype=torch.float64)
    with torch.no_grad():
        mean, var = info.predictive.marginals(grid)
        post = model.posterior(grid)
        train = info.predictive.train_mean()
    assert torch.allclose(mean, post.mean, rtol=1e-6, atol=1e-6)
    assert torch.allclose(var, post.variance, rtol=1e-6, atol=1e-6)
    assert mean[-1].item() == pytest.approx(10.0, abs=0.5)
    assert train[:, 0].numpy() == pytest.approx(Y[:, 0], abs=0.05)


# ---- the service: selection, isolation, deletion, restart ----------------------------------------
def test_auto_picks_related_studies_of_the_tenant_only(registry):
    related, _ = registry.create_study("bowl-a", spec_dict())
    add(related, bowl, 8)
    related2, _ = registry.create_study("bowl-b", spec_dict("a quadratic bowl"))
    add(related2, bowl, 5)
    few, _ = registry.create_study("bowl-new", spec_dict())
    add(few, bowl, 2)  # too few completed trials to pick automatically
    names, _ = registry.create_study("names", spec_dict(names=("a", "b")))
    objective, _ = registry.create_study("objective", spec_dict(obj="loss"))
    add(objective, bowl, 8, metric="loss")
    elsewhere, _ = registry.create_study("bowl-c", spec_dict(), tenant="other")
    add(elsewhere, bowl, 30)
    target, created = registry.create_study(
        "target", spec_dict(transfer={"auto": True, "max_sources": 3})
    )
    rec = target.record.transfer
    assert created and [s["name"] for s in rec["sources"]] == ["bowl-a", "bowl-b"]
    assert all(not s["explicit"] and s["uid"] != elsewhere.uid for s in rec["sources"])
    assert "description similarity 1.00" in rec["sources"][0]["why"]
    assert rec["sources"][0]["relatedness"] > rec["sources"][1]["relatedness"]
    assert "2 related of 5 stored studies" in rec["note"]
    # named sources: another tenant's study is not found, like one that does not exist
    for name in ("bowl-c", "nowhere"):
        with pytest.raises(NotFoundError, match=f"source study '{name}' not found"):
            registry.create_study("t2", spec_dict(transfer={"sources": [name]}))
    with pytest.raises(SpecError, match="'names' cannot be a source: no parameter 'x'"):
        registry.create_study("t2", spec_dict(transfer={"sources": ["names"]}))
    assert registry.storage.get_study("default", "t2") is None  # nothing stored
    # the other tenant's auto finds its own study only
    theirs, _ = registry.create_study("target", spec_dict(transfer={"auto": True}), "other")
    assert [s["uid"] for s in theirs.record.transfer["sources"]] == [elsewhere.uid]
    # reattaching does not resolve again (a source deleted since does not lock the driver out)
    registry.delete_study("bowl-b")
    again, created = registry.create_study(
        "target", spec_dict(transfer={"auto": True, "max_sources": 3})
    )
    assert not created and again.record.transfer == rec


def test_auto_picks_no_more_sources_than_the_server_allows(storage):
    """``--max-transfer-sources`` below the default ``max_sources`` (3): ``auto`` without a
    ``max_sources`` picked 3 sources all the same."""
    from bbo.registry import StudyConfig, StudyRegistry

    registry = StudyRegistry(
        storage, config=StudyConfig(limits=RequestLimits(max_transfer_sources=2))
    )
    for i in range(4):
        s, _ = registry.create_study(f"bowl-{i}", spec_dict())
        add(s, bowl, 4, seed=i)
    t, _ = registry.create_study("target", spec_dict(transfer={"auto": True}))
    assert len(t.record.transfer["sources"]) == 2


def test_auto_asks_the_llm_which_descriptions_are_related(storage):
    """With the LLM module on and the study's ``llm.enabled``, ``auto`` ranks its candidates by the
    LLM's judgement of their descriptions instead of TF-IDF: the prompt shows the tenant's
    candidates only, the exchange is in the new study's LLM log, and an unusable answer leaves
    TF-IDF (the note says so); a study without ``llm.enabled`` asks nothing."""
    from bbo.llm import LlmAdvisor, LlmConfig
    from bbo.registry import StudyConfig, StudyRegistry
    from bbo.testing.chat_server import ChatServer, Reply

    verdict = {"lasso": (0.95, "Lasso is L1-regularized least squares"), "poly": (0.1, "a fit")}
    answers = {"good": True}

    def responder(body: dict) -> Reply:
        if "Stored studies" not in ChatServer.prompt_of(body):
            return Reply("{}")  # the target's own warm-start / priors prompts
        if not answers["good"]:
            return Reply("no idea")
        rows = [{"name": n, "relatedness": v, "why": w} for n, (v, w) in verdict.items()]
        return Reply(json.dumps({"studies": rows}))

    with ChatServer(responder) as srv:
        llm = LlmAdvisor(LlmConfig(base_url=srv.url, api_key="k", model="test-model", timeout_s=5))
        reg = StudyRegistry(storage, config=StudyConfig(llm=llm))
        on = {"enabled": True, "warmstart_candidates": 1, "derive_priors": False}
        for name, desc in (
            ("poly", "least squares fit of a polynomial to 2000 noisy samples"),
            ("lasso", "ADMM for a Lasso problem"),
        ):
            st, _ = reg.create_study(name, spec_dict(desc))
            add(st, bowl, 5)
        secret, _ = reg.create_study("theirs", spec_dict("a secret study"), tenant="other")
        add(secret, bowl, 5)
        target_desc = "L1-regularized least squares on 2000 noisy samples"
        plain, _ = reg.create_study("tfidf", spec_dict(target_desc, transfer={"auto": True}))
        assert [s["name"] for s in plain.record.transfer["sources"]] == ["poly", "lasso"]
        assert srv.requests == []  # the study did not enable the LLM: nothing asked

        target, _ = reg.create_study(
            "target", spec_dict(target_desc, transfer={"auto": True}, llm=on)
        )
        rec = target.record.transfer
        assert [s["name"] for s in rec["sources"]] == ["lasso", "poly"]
        assert (
            "judged related 0.95 (Lasso is L1-regularized least squares)"
            in rec["sources"][0]["why"]
        )
        assert "the LLM judged the descriptions of 2 of 2 candidates" in rec["note"]
        (call,) = target.llm_calls("related")
        assert call.outcome == "ok" and "ADMM for a Lasso problem" in call.prompt
        assert "secret" not in call.prompt and "tfidf" not in call.prompt.split("Stored studies")[1]

        answers["good"] = False
        again, _ = reg.create_study(
            "again", spec_dict(target_desc, transfer={"auto": True}, llm=on)
        )
        rec = again.record.transfer
        assert [s["name"] for s in rec["sources"]][:2] == ["poly", "lasso"]
        assert "no LLM judgement (unusable answer" in rec["note"] and "TF-IDF" in rec["note"]
        (call,) = again.llm_calls("related")
        assert call.outcome.startswith("unusable answer")


def test_a_study_created_again_under_a_name_gets_its_own_llm_judgement(storage):
    """The judgement of ``auto``'s candidates was cached under the tenant and the study's name
    only: a study deleted and created again under the name got the deleted study's exchange back
    from the cache (logged in its LLM log as its own, cached). Each creation asks for its own."""
    from bbo.llm import LlmAdvisor, LlmConfig
    from bbo.registry import StudyConfig, StudyRegistry
    from bbo.testing.chat_server import ChatServer, Reply

    def responder(body: dict) -> Reply:
        if "Stored studies" not in ChatServer.prompt_of(body):
            return Reply("{}")
        return Reply(json.dumps({"studies": [{"name": "src", "relatedness": 0.9, "why": "w"}]}))

    with ChatServer(responder) as srv:
        llm = LlmAdvisor(LlmConfig(base_url=srv.url, api_key="k", model="test-model", timeout_s=5))
        reg = StudyRegistry(storage, config=StudyConfig(llm=llm))
        src, _ = reg.create_study("src", spec_dict("ADMM for a Lasso problem"))
        add(src, bowl, 5)
        on = {"enabled": True, "warmstart_candidates": 1, "derive_priors": False}
        spec = spec_dict("a Lasso problem", transfer={"auto": True}, llm=on)
        first, _ = reg.create_study("target", spec)
        assert reg.delete_study("target")
        again, _ = reg.create_study("target", spec)
        judged = [b for b in srv.requests if "Stored studies" in ChatServer.prompt_of(b)]
    assert again.uid != first.uid and len(judged) == 2
    (call,) = again.llm_calls("related")
    assert call.outcome == "ok" and not call.cached


def big_studies(storage, n: int, desc: str = "a quadratic bowl in x and z") -> list[str]:
    """``n`` stored studies with specs of 160 KiB (a categorical of 1000 long choices) related to
    ``spec_dict()``; the first two with enough completed trials to be picked."""
    from bbo.storage import NewTrial

    spec = spec_dict(desc)
    choices = [f"choice-{j:04d}-" + "x" * 140 for j in range(1000)]
    spec["parameters"].append({"type": "categorical", "name": "c", "choices": choices})
    uids = [storage.create_study("default", f"big-{i:02d}", spec, 1).uid for i in range(n)]
    for uid in uids[:2]:
        done = [
            NewTrial(p, "manual", state=TrialState.COMPLETED, metrics={"y": Metric(bowl(p))})
            for p in grid_points(3)
        ]
        storage.insert_trials(uid, done)
    return uids


def test_auto_holds_a_few_stored_specs_at_a_time(storage):
    """``auto`` lists the stored studies by their keys, reads their specs a few at a time and keeps
    of each only what the ranking needs: its peak memory does not grow with the number of stored
    studies or the size of their specs (here 60 specs of 160 KiB, 9.4 MiB as JSON: 2.1 MiB at the
    peak; reading them all at once, as ``auto`` did, peaked at 15.5 MiB)."""
    import tracemalloc

    from bbo.transfer import resolve_sources

    uids = big_studies(storage, 60)
    target = StudySpec.from_dict(spec_dict(transfer={"auto": True, "max_sources": 3}))
    description_similarities("warm up", ["the imports"])  # what importing scikit-learn takes
    tracemalloc.start()
    try:
        rec = resolve_sources(storage, "default", "target", target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [s["uid"] for s in rec["sources"]] == [uids[1], uids[0]]  # the newer first
    assert "2 related of 60 stored studies (60 compatible" in rec["note"]
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_auto_compares_the_best_descriptions_that_fit(storage, monkeypatch):
    """Past ``MAX_TEXT_BYTES`` of descriptions, ``auto`` leaves out the candidates with the lowest
    score apart from the description (the oldest first among equals), as many as it takes, and
    the note says so; a worse one read later is left out too, even where its description fits."""
    from bbo import transfer
    from bbo.storage import NewTrial

    monkeypatch.setattr(transfer, "MAX_TEXT_BYTES", 100)
    desc = "a quadratic bowl in x and z"  # 27 bytes
    wide = spec_dict(desc)
    wide["parameters"].append({"type": "float", "name": "w", "low": 0.0, "high": 1.0})
    for name, spec in [("wide", wide), *((n, spec_dict(desc)) for n in "abcd"), ("late", wide)]:
        if name == "late":
            spec = {**spec, "description": ""}
        uid = storage.create_study("default", name, spec, 1).uid
        done = [
            NewTrial(p, "manual", state=TrialState.COMPLETED, metrics={"y": Metric(bowl(p))})
            for p in grid_points(3)
        ]
        storage.insert_trials(uid, done)
    target = StudySpec.from_dict(spec_dict(desc, transfer={"auto": True, "max_sources": 8}))
    rec = transfer.resolve_sources(storage, "default", "target", target)
    assert [s["name"] for s in rec["sources"]] == ["d", "c", "b"]
    assert "3 related of 6 stored studies (6 compatible" in rec["note"]
    assert "the descriptions of 3 of them compared" in rec["note"]
    monkeypatch.setattr(transfer, "MAX_TEXT_BYTES", 8 << 20)
    rec = transfer.resolve_sources(storage, "default", "target", target)
    assert [s["name"] for s in rec["sources"]] == ["d", "c", "b", "a", "wide", "late"]
    assert "compared" not in rec["note"]


def test_tenants_never_see_each_others_sources_over_grpc(server_factory, tmp_path):
    db = "sqlite:///" + str(tmp_path / "tenants.db")
    srv = server_factory(db=db, args=["--auth", "--workers", "1"])
    key_a, _ = create_key(db, "acme")
    key_b, _ = create_key(db, "globex")
    params = [bc.Float("x", 0.0, 1.0), bc.Float("z", 0.0, 1.0)]
    with bc.Client(srv.address, api_key=key_a) as a, bc.Client(srv.address, api_key=key_b) as b:
        src = a.create_study("src", params, "y", description="bowl")
        for p in grid_points(6):
            src.add_trial(p, {"y": bowl(p)})
        with pytest.raises(bc.NotFound) as e:
            b.create_study("mine", params, "y", transfer=bc.Transfer(["src"]))
        assert "source study 'src' not found" in e.value.message
        with pytest.raises(bc.NotFound) as e2:
            b.create_study("mine", params, "y", transfer=bc.Transfer(["does-not-exist"]))
        assert e2.value.code == e.value.code == grpc.StatusCode.NOT_FOUND
        auto_b = b.create_study(
            "mine", params, "y", description="bowl", transfer=bc.Transfer(auto=True)
        )
        assert auto_b.info().transfer.sources == []
        auto_a = a.create_study(
            "mine", params, "y", description="bowl", transfer=bc.Transfer(auto=True)
        )
        info = auto_a.info()
        assert [s.name for s in info.transfer.sources] == ["src"]
        assert info.transfer.sources[0].uid == src.info().uid and not info.transfer.sources[0].named
        assert info.spec.transfer.auto and list(info.spec.transfer.sources) == []


def test_the_llm_judgement_ends_before_the_create_deadline(server_factory):
    """An LLM timeout longer than the caller's CreateStudy deadline does not fail the create: the
    judgement of ``auto``'s candidates is cut at the RPC's deadline (less a margin) and TF-IDF
    ranks them, as the transfer note says."""
    from bbo.testing.chat_server import ChatServer, Reply

    def responder(body: dict) -> Reply:
        slow = "Stored studies" in ChatServer.prompt_of(body)
        return Reply("{}", delay_s=30.0 if slow else 0.0)

    with ChatServer(responder) as llm:
        llm_args = ["--llm-base-url", llm.url, "--llm-model", "test-model"]
        srv = server_factory(args=llm_args + ["--llm-timeout", "60", "--llm-ask-budget", "90"])
        params = [bc.Float("x", 0.0, 1.0), bc.Float("z", 0.0, 1.0)]
        # 20 s: the judgement is cut at 14 s, well before the LLM's 30 s, and the 6 s left hold
        # the rest of the create on a loaded machine (10 s, cut at 7 s, failed under load 6-7)
        with bc.Client(srv.address, timeout=20.0) as c:
            src = c.create_study("src", params, "y", description="bowl")
            for p in grid_points(4):
                src.add_trial(p, {"y": bowl(p)})
            on = bc.Llm(derive_priors=False)
            target = c.create_study(
                "target", params, "y", description="bowl", transfer=bc.Transfer(auto=True), llm=on
            )
            info = target.info().transfer
        assert [s.name for s in info.sources] == ["src"]
        assert "no LLM judgement" in info.note and "TF-IDF" in info.note


def test_sources_survive_a_restart_and_a_deleted_source_is_left_out(tmp_path, capsys):
    """The service restarted on its database (a new registry on a new storage, as `bbo serve`
    builds at start-up) reads the same sources and weights; a source deleted and re-created under
    its name is recognised by its uid and left out; `bbo trials` and `bbo studies` show it all."""
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage
    from bbo_server.cli import main

    db = "sqlite:///" + str(tmp_path / "restart.db")
    storage = open_storage(db)
    reg = StudyRegistry(storage)
    src, _ = reg.create_study("src", spec_dict())
    add(src, lambda p: 2.0 * bowl(p) + 1.0, 12)
    t, _ = reg.create_study("target", spec_dict(transfer={"sources": ["src"]}))
    (first,) = t.ask().trials
    assert first.origin == "transfer_warmstart" and "'src'" in first.reason
    t.tell(first.id, {"y": bowl(first.params, 0.32, 0.58)})
    for _ in range(2):  # the design's second point, then the first model-based step
        (tr,) = t.ask().trials
        t.tell(tr.id, {"y": bowl(tr.params, 0.32, 0.58)})
    assert tr.origin == "transfer_bo"
    before = t.info().transfer
    w = before["weights"]["by_metric"]["y"][src.uid]
    assert before["weights"]["n"] == 2 and w > 0
    assert before["weights"]["target"]["y"] == pytest.approx(1 - w)
    reg.close()
    storage.close()

    storage = open_storage(db)  # the restart
    reg = StudyRegistry(storage)
    t = reg.get_study("target")
    assert t.info().transfer == before  # stored, not recomputed at start-up
    (tr,) = t.ask().trials
    assert "transfer weights (y): 'src'" in tr.reason
    t.tell(tr.id, {"y": bowl(tr.params, 0.32, 0.58)})
    reg.delete_study("src")
    again, _ = reg.create_study("src", spec_dict())  # the same name, another study: no source
    again.add_trial({"x": 0.9, "z": 0.9}, {"y": 5.0})
    (tr,) = t.ask().trials
    assert "transfer" not in tr.origin and "transfer weights" not in tr.reason
    assert t.info().transfer["deleted"] == [src.uid] != [again.uid]
    # its weight is gone with it (it read as the last weight the strategy gave it)
    assert t.info().transfer["weights"]["by_metric"]["y"] == {}
    assert t.info().transfer["weights"]["target"]["y"] == 1.0
    reg.close()
    storage.close()

    capsys.readouterr()
    assert main(["trials", "target", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "transfer from 1 source study(ies)" in out and "DELETED" in out
    assert "transfer_warmstart" in out and "transfer_bo" in out
    assert main(["studies", "--db", db, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (target,) = [r for r in rows if r["name"] == "target"]
    assert target["transfer"]["sources"][0]["state"] == "deleted"
    assert main(["studies", "--db", db]) == 0  # the table marks it too
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("target ")]
    assert line.rstrip().endswith("src (deleted)")


def _weighted_source_and_target(registry, asks: int):
    """A source of 8 trials on the bowl and a target from it, asked and told ``asks`` times."""
    src, _ = registry.create_study("src", spec_dict())
    add(src, bowl, 8)
    t, _ = registry.create_study("t", spec_dict(transfer={"sources": ["src"]}))
    for _ in range(asks):
        (tr,) = t.ask().trials
        t.tell(tr.id, {"y": bowl(tr.params)})
    return src, t


def test_a_deleted_last_source_loses_its_weight_at_a_model_based_ask(registry):
    """With its only source deleted, a study's model-based ask weighs no source and reports no
    weights: the stored record kept the deleted source's last weight, shown beside "deleted"."""
    src, t = _weighted_source_and_target(registry, asks=5)
    assert t.info().transfer["weights"]["by_metric"]["y"][src.uid] > 0
    registry.delete_study("src")
    (tr,) = t.ask().trials
    assert tr.origin.startswith("bo")
    rec = t.info().transfer
    assert rec["deleted"] == [src.uid]
    assert rec["weights"]["by_metric"]["y"] == {} and rec["weights"]["target"]["y"] == 1.0


def test_a_deleted_source_reads_deleted_before_the_next_ask(registry):
    """GetStudy (``info``) showed a source deleted since the study's last ask as "used", with its
    weight, until an ask noticed; it reads deleted, with no weight, at once."""
    src, t = _weighted_source_and_target(registry, asks=4)
    assert t.info().transfer["deleted"] == [] and t.info().transfer["weights"]["by_metric"]["y"]
    registry.delete_study("src")
    rec = t.info().transfer
    assert rec["deleted"] == [src.uid] and rec["weights"]["by_metric"]["y"] == {}
    assert rec["weights"]["target"]["y"] == 1.0


def test_source_reads_never_write_the_source(registry):
    src, _ = registry.create_study("src", spec_dict())
    add(src, bowl, 6)
    before = (registry.storage.get_study_by_uid(src.uid), src.trials())
    t, _ = registry.create_study("t", spec_dict(transfer={"sources": ["src"]}))
    for _ in range(3):
        (tr,) = t.ask().trials
        t.tell(tr.id, {"y": bowl(tr.params)})
    assert (registry.storage.get_study_by_uid(src.uid), src.trials()) == before
    assert not math.isnan(t.record.transfer["resolved_at"])


def _source_reads(monkeypatch, storage, uid: str) -> list[tuple]:
    """Records each ``storage.list_trials`` call reading study ``uid``: its arguments after the uid."""
    calls: list[tuple] = []
    real = storage.list_trials
    monkeypatch.setattr(
        storage,
        "list_trials",
        lambda u, *a, **k: (calls.append(a) if u == uid else None) or real(u, *a, **k),
    )
    return calls


def test_a_running_source_is_read_again_only_once_it_grew(registry, monkeypatch):
    """A source still receiving results changed before nearly every target ask, and each ask
    re-read all its trials and refit its GP (20,000 trials: 1.8-3 s an ask). It is read again
    once its completed trials changed by more than a tenth; a small one on every change."""
    src, _ = registry.create_study("src", spec_dict())
    add(src, bowl, 40)
    t, _ = registry.create_study("t", spec_dict(transfer={"sources": ["src"]}))
    reads = _source_reads(monkeypatch, registry.storage, src.uid)

    def ask_tell():
        (tr,) = t.ask().trials
        t.tell(tr.id, {"y": bowl(tr.params)})

    ask_tell()
    assert len(reads) <= 1
    reads.clear()
    add(src, bowl, 4, seed=5)  # 40 -> 44: not past a tenth
    ask_tell()
    assert len(reads) == 0
    add(src, bowl, 1, seed=6)  # 45: past it
    ask_tell()
    assert len(reads) == 1
    small, _ = registry.create_study("small", spec_dict())
    add(small, bowl, 3)
    u, _ = registry.create_study("u", spec_dict(transfer={"sources": ["small"]}))
    data = u.sources.read(u.record.transfer)
    add(small, bowl, 1, seed=7)
    assert len(u.sources.read(u.record.transfer)[0].trials) == len(data[0].trials) + 1


def test_a_large_source_is_read_in_pages_and_kept_to_a_bound(registry, monkeypatch):
    """Each ask held and passed over every completed trial of every source (8 sources of 10,000:
    70 MB held by the target, 0.8-1 s an ask before any model). A source is read a page at a
    time and at most ``MAX_SOURCE_TRIALS`` of its trials are kept: the best by the target's score,
    a seeded sample of the rest, and the best point, which still opens the design."""
    import bbo.study_transfer as st
    from bbo.storage.base import NewTrial
    from bbo.transfer import kept_source_trials

    monkeypatch.setattr(st, "MAX_SOURCE_TRIALS", 40)
    monkeypatch.setattr(st, "SOURCE_PAGE", 64)
    src, _ = registry.create_study("src", spec_dict())
    new = [
        NewTrial(p, "user", state=TrialState.COMPLETED, metrics={"y": Metric(bowl(p))})
        for p in grid_points(300, seed=4)
    ]
    registry.storage.insert_trials(src.uid, new)
    best = min(src.trials(), key=lambda tr: tr.metrics["y"].value)
    t, _ = registry.create_study("t", spec_dict(transfer={"sources": ["src"]}))
    pages = _source_reads(monkeypatch, registry.storage, src.uid)
    (data,) = t.sources.read(t.record.transfer)
    assert len(pages) == 5 and all(a[-1] == 64 for a in pages)  # 300 trials, 64 at a time
    assert len(data.trials) == 40 and best.id in {tr.id for tr in data.trials}
    ys = sorted(tr.metrics["y"].value for tr in src.trials())
    assert sorted(tr.metrics["y"].value for tr in data.trials)[:20] == ys[:20]  # the best half
    # page by page it keeps what it keeps of all of them at once
    whole = kept_source_trials(t.spec, src.spec, src.uid, src.trials(), 40)
    assert [tr.id for tr in whole] == [tr.id for tr in data.trials]
    origins = []
    for _ in range(3):
        (tr,) = t.ask().trials
        origins.append(tr.origin)
        if tr.origin == "transfer_warmstart":
            assert tr.params == best.params
        t.tell(tr.id, {"y": bowl(tr.params)})
    assert origins[0] == "transfer_warmstart" and "transfer_bo" in origins
    (model,) = [m for _, m in t.strategy.transfer._models.values()]
    assert model.n == 40  # its GP's points


def test_a_transfer_study_believes_its_pending_points(monkeypatch):
    """With workers' points pending, the stacked model (the sources' prior mean added back by its
    outcome transform) is conditioned on them at its own mean: the mean stays, the variance at
    them shrinks, and the ask stays on the closed-form marginals (no Monte Carlo acquisition)."""
    import torch

    from bbo.acquisition import believe
    from bbo.spec import AlgorithmOptions
    from bbo.strategy import GenerationStrategy, acquisition_step

    space = SearchSpace((FloatParam("x", 0.0, 1.0), FloatParam("z", 0.0, 1.0)))
    spec = StudySpec(
        space,
        (Objective("y"),),
        transfer=TransferOptions(("good",)),
        algorithm=AlgorithmOptions(exploit_gap=0),
    )
    gs = GenerationStrategy(spec)
    source = [
        Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(3.0 * bowl(p) + 5.0)})
        for i, p in enumerate(grid_points(25, seed=1))
    ]
    gs.set_sources([SourceData("uid-good", "good", StudySpec(space, (Objective("y"),)), source)])
    trials = [
        Trial(i + 1, p, TrialState.COMPLETED, {"y": Metric(bowl(p, 0.35, 0.55))})
        for i, p in enumerate(grid_points(8, seed=2))
    ]
    built = []
    make = acquisition_step.make_acquisition
    monkeypatch.setattr(
        acquisition_step, "make_acquisition", lambda *a, **k: built.append(1) or make(*a, **k)
    )
    for _ in range(3):
        (s,) = gs.suggest(trials, 1)
        assert s.origin == "transfer_bo"
        trials.append(Trial(len(trials) + 1, s.params, TrialState.PENDING, origin=s.origin))
    assert not built
    data = gs.ctx.data.build(trials)
    model, _, _ = data.model(gs.surrogate, 0)
    pending = torch.tensor([[0.7, 0.2], [0.1, 0.9]], dtype=torch.float64)
    believed = believe(model, pending)
    X = torch.rand(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.posterior(X).mean, believed.posterior(X).mean, atol=1e-9)
        ratio = believed.posterior(pending).variance / model.posterior(pending).variance
    assert (ratio < 0.5).all()
