"""No stored value can poison a study: every spec the server accepts, however extreme its numbers
(bounds at the double and int64 limits, ordinals of huge whole numbers, extreme seeds, priors and
reference points), gives a study that answers Ask and Tell and can be read back by every read RPC
and every CLI command. A refused spec stores nothing."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sec_helpers import stub

from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import study_pb2 as pb

BIG = 1.7976931348623157e308
FLOATS = [-BIG, -1e300, -1e10, -1.0, -0.0, 0.0, 5e-324, 1e-300, 0.5, 1.0, 1e10, 1e300, BIG]
INTS = [-(2**63), -(2**53) - 1, -1, 0, 1, 7, 2**31, 2**53 + 1, 2**63 - 1]
ORDINALS = [-1e300, -(2.0**63), -1.0, 0.0, 0.5, 1.0, 2.0**53, 2.0**53 + 2, 2.0**63, 1e20, 1e300]
CHOICES = ["", "a", "é", "x\x00y", "z" * 100, " "]
SEEDS = [0, 1, 7, 2**62, 2**63 - 1, -1]
READS = ("GetStudy", "ListStudies", "GetTrial", "ListTrials", "GetBest", "ListLlmCalls")


@st.composite
def parameter(draw, i: int):
    p = pb.ParameterSpec(name=f"p{i}")
    kind = draw(st.integers(0, 4))
    log = draw(st.integers(0, 3)) == 0
    scale = pb.SCALE_LOG if log else pb.SCALE_LINEAR

    def pick(pool, k_min=2, k_max=2):
        pool = [v for v in pool if v > 0] if log else pool
        vals = st.lists(st.sampled_from(pool), min_size=k_min, max_size=k_max, unique=True)
        return sorted(draw(vals))

    if kind == 0:
        lo, hi = pick(FLOATS)
        p.float.CopyFrom(pb.FloatParameter(low=lo, high=hi, scale=scale))
    elif kind == 1:
        lo, hi = pick(INTS)
        p.int.CopyFrom(pb.IntParameter(low=lo, high=hi, scale=scale))
    elif kind == 2:
        p.ordinal.CopyFrom(pb.OrdinalParameter(values=pick(ORDINALS, 2, 4), scale=scale))
    elif kind == 3:
        choices = draw(st.lists(st.sampled_from(CHOICES), min_size=1, max_size=3, unique=True))
        p.categorical.CopyFrom(pb.CategoricalParameter(choices=choices))
    else:
        v = draw(
            st.one_of(
                st.builds(lambda x: pb.ParameterValue(number=x), st.sampled_from(FLOATS)),
                st.builds(lambda x: pb.ParameterValue(integer=x), st.sampled_from(INTS)),
                st.builds(lambda x: pb.ParameterValue(category=x), st.sampled_from(CHOICES)),
            )
        )
        p.fixed.CopyFrom(pb.FixedParameter(value=v))
    return p


@st.composite
def extreme_specs(draw):
    n = draw(st.integers(1, 3))
    spec = pb.StudySpec(parameters=[draw(parameter(i)) for i in range(n)])
    spec.objectives.add(name="y", goal=draw(st.sampled_from([pb.GOAL_MINIMIZE, pb.GOAL_MAXIMIZE])))
    if draw(st.booleans()):
        spec.objectives.add(name="y2")
    if draw(st.booleans()):
        spec.outcome_constraints.add(metric="c", bound=draw(st.sampled_from(FLOATS)))
    p0 = spec.parameters[0]
    linear = (
        p0.WhichOneof("kind") in ("float", "int") and getattr(p0, p0.WhichOneof("kind")).scale == 0
    )
    if linear and draw(st.integers(0, 3)) == 0:
        c = spec.parameter_constraints.add(bound=draw(st.sampled_from(FLOATS)))
        c.coefficients["p0"] = draw(st.sampled_from([1e-300, -1.0, 1.0, 1e300]))
    a = spec.algorithm
    a.n_initial = draw(st.sampled_from([0, 1, 3, 10000]))
    if draw(st.booleans()):
        a.seed = draw(st.sampled_from(SEEDS))
    odd = draw(st.integers(0, 5))  # at most one option at an extreme value
    a.prior_exponent = (
        draw(st.sampled_from([1e-300, 1e300, math.nan, math.inf, -1.0])) if odd == 0 else 0.0
    )
    a.max_fit_points = draw(st.sampled_from([10, 100000, 2**31 - 1])) if odd == 1 else 0
    a.exploit_gap = draw(st.sampled_from([-5, 1000, 2**31 - 1])) if odd == 2 else 0
    if draw(st.booleans()):
        for name in [o.name for o in spec.objectives]:
            a.reference_point[name] = draw(st.sampled_from(FLOATS + [math.nan, math.inf]))
    if draw(st.integers(0, 2)) == 0:  # budgets: accepted only with one objective, no constraints
        f = spec.fidelity
        f.name = draw(st.sampled_from(["epochs", "é" * 3, "x\x00y"]))
        f.min = draw(st.sampled_from([5e-324, 1e-300, 0.5, 1.0, 3.0]))
        f.max = draw(st.sampled_from([1.0, 27.0, 2.0**63, 1e300, BIG]))
        f.integer = draw(st.booleans())
        p = spec.pruning
        p.policy = draw(st.sampled_from(list(pb.PruningPolicy.values())))
        p.eta = draw(st.sampled_from([0.0, 2.0, 100.0, 1e300, math.nan]))
        p.promote = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:  # transfer: auto over this server's studies, odd bounds
        spec.transfer.auto = True
        spec.transfer.max_sources = draw(st.sampled_from([0, 1, 8, 9, 64, 2**31 - 1, -1]))
        spec.transfer.sources.extend(draw(st.sampled_from([[], [""], ["a b"], ["x"] * 2])))
    if draw(st.booleans()):
        pr = spec.priors.add(parameter="p0", confidence=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])))
        kind = spec.parameters[0].WhichOneof("kind")
        if kind == "categorical":
            for ch in spec.parameters[0].categorical.choices:
                pr.probabilities[ch] = draw(st.sampled_from([0.0, 1.0, BIG]))
        else:
            pr.mean = draw(st.sampled_from(FLOATS))
            pr.std = draw(st.sampled_from([5e-324, 1.0, 1e300, BIG]))
    return spec


def _metrics(spec, value: float) -> dict:
    names = [o.name for o in spec.objectives] + [c.metric for c in spec.outcome_constraints]
    return {k: pb.MetricValue(value=value) for k in names}


def _ok(fn, *args):
    try:
        return fn(*args, timeout=120)
    except grpc.RpcError as e:
        raise AssertionError(f"{fn._method}: {e.code().name}: {e.details()}") from None


@pytest.fixture(scope="module")
def api(bbo_server):
    ch, s = stub(bbo_server.address)
    yield s
    ch.close()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(spec=extreme_specs())
def test_any_accepted_spec_can_be_asked_told_and_read_back(api, spec):
    name = "rb-" + str(abs(hash(spec.SerializeToString())))[:12]
    try:
        api.CreateStudy(svc.CreateStudyRequest(name=name, spec=spec), timeout=60)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
            e.code(),
            e.details(),
        )
        with pytest.raises(grpc.RpcError) as gone:
            api.GetStudy(svc.GetStudyRequest(name=name), timeout=30)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # a refused spec stored nothing
        return
    try:
        for value in (BIG / 4, -1e300):
            r = _ok(api.Ask, svc.AskRequest(study=name, count=1))
            (t,) = r.trials
            told = svc.TellRequest(study=name, trial_id=t.id, metrics=_metrics(spec, value))
            _ok(api.Tell, told)
        _ok(api.Ask, svc.AskRequest(study=name, count=2))
        _ok(api.GetStudy, svc.GetStudyRequest(name=name))
        _ok(api.ListStudies, svc.ListStudiesRequest(page_size=1000))
        _ok(api.GetTrial, svc.GetTrialRequest(study=name, trial_id=1))
        listed = _ok(api.ListTrials, svc.ListTrialsRequest(study=name))
        assert len(listed.trials) == 4
        _ok(api.GetBest, svc.GetBestRequest(study=name))
        _ok(api.ListLlmCalls, svc.ListLlmCallsRequest(study=name))
    finally:
        api.DeleteStudy(svc.DeleteStudyRequest(name=name), timeout=60)


def test_cli_reads_back_extreme_studies(tmp_path, capsys):
    """Each CLI read command on a database holding studies of extreme (accepted) specs."""
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage

    db = f"sqlite:///{tmp_path / 'extreme.db'}"
    specs = {
        "huge-ordinal": {
            "parameters": [{"type": "ordinal", "name": "o", "values": [2.0**63, 1e20 * 2, 1e300]}],
            "objectives": [{"name": "y"}],
        },
        "int64-range": {
            "parameters": [
                {"type": "int", "name": "i", "low": -(2**63), "high": 2**63 - 1},
                {"type": "float", "name": "f", "low": -1e300, "high": 1e300},
            ],
            "objectives": [{"name": "y", "goal": "maximize"}],
            "algorithm": {"seed": 2**62, "n_initial": 1},
        },
        "odd-choices": {
            "parameters": [
                {"type": "categorical", "name": "c", "choices": ["", "x\x00y", "é"]},
                {"type": "fixed", "name": "k", "value": -(2**63)},
            ],
            "objectives": [{"name": "a"}, {"name": "b"}],
            "transfer": {"auto": True, "max_sources": 8},
        },
    }
    storage = open_storage(db)
    reg = StudyRegistry(storage)
    for name, spec in specs.items():
        s, _ = reg.create_study(name, spec)
        for v in (1e300, -1e300, 0.0):
            (t,) = s.ask().trials
            s.tell(t.id, {m: v for m in s.spec.required_metrics})
    reg.close()
    storage.close()

    def bbo(*args):  # in this process: the commands' own code, without a process start each
        from bbo_server.cli import main

        capsys.readouterr()
        assert main([*args, "--db", db]) == 0, args
        return capsys.readouterr().out

    out = bbo("studies")
    assert all(name in out for name in specs)
    for name in specs:
        assert "COMPLETED" in bbo("trials", name)
        assert "trial" in bbo("best", name)
        bbo("plot", name, "-o", str(tmp_path / f"{name}.png"))
        assert (tmp_path / f"{name}.png").stat().st_size > 0
