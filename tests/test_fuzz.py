"""Fuzz every RPC of one real server with >= 10,000 generated protobuf requests (hypothesis):
garbage and extreme field values, NaN / inf, huge strings within the size limit, unknown studies
and trials. Never INTERNAL / UNKNOWN, the server never dies, and a refused request leaves the
database untouched (a digest of every table, read from a separate connection, before and after)."""

from __future__ import annotations

import math
import sqlite3

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sec_helpers import RPCS, small_spec, stub

from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import study_pb2 as pb

EXAMPLES = int(
    __import__("os").environ.get("BBO_FUZZ_EXAMPLES", "770")
)  # per RPC: 13 x 770 = 10,010 requests
MUTATING = {
    "CreateStudy",
    "DeleteStudy",
    "Ask",
    "Tell",
    "AddTrial",
    "ReportIntermediate",
    "Heartbeat",
}
KNOWN = ["fz-single", "fz-multi", "fz-single-copy"]
COUNTS: dict[str, int] = {}
BAD = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    from bbo_server.process import ServerProcess

    d = tmp_path_factory.mktemp("fuzz")
    path = d / "fuzz.db"
    # no background lease reaper: "a refused request leaves the database unchanged" must not see
    # leases expiring on their own between the two snapshots (the reaper has its own test)
    srv = ServerProcess(
        "sqlite:///" + str(path),
        log_path=str(d / "server.log"),
        args=["--workers", "1", "--max-ask", "20", "--lease-reap-seconds", "0"],
    )
    srv.start()
    ch, s = stub(srv.address)
    single = small_spec()
    single.algorithm.n_initial = 10000  # asks stay in the (cheap) initial design
    s.CreateStudy(svc.CreateStudyRequest(name="fz-single", spec=single), timeout=30)
    multi = pb.StudySpec(
        parameters=[
            pb.ParameterSpec(name="n", int=pb.IntParameter(low=1, high=64, scale=pb.SCALE_LOG)),
            pb.ParameterSpec(name="o", ordinal=pb.OrdinalParameter(values=[1, 2, 4, 8])),
            pb.ParameterSpec(
                name="f", fixed=pb.FixedParameter(value=pb.ParameterValue(category="const"))
            ),
        ],
        objectives=[pb.Objective(name="a"), pb.Objective(name="b", goal=pb.GOAL_MAXIMIZE)],
        outcome_constraints=[
            pb.OutcomeConstraint(metric="c", op=pb.CONSTRAINT_OP_LESS_EQUAL, bound=1.0)
        ],
        algorithm=pb.AlgorithmOptions(n_initial=10000),
    )
    s.CreateStudy(svc.CreateStudyRequest(name="fz-multi", spec=multi), timeout=30)
    s.CreateStudy(svc.CreateStudyRequest(name="fz-single-copy", spec=single), timeout=30)
    for name in KNOWN:
        r = s.Ask(svc.AskRequest(study=name, count=6), timeout=60)
        for t in r.trials[:3]:
            metrics = (
                {"y": pb.MetricValue(value=0.5)}
                if name != "fz-multi"
                else {k: pb.MetricValue(value=0.5) for k in "abc"}
            )
            s.Tell(svc.TellRequest(study=name, trial_id=t.id, metrics=metrics), timeout=30)
    con = sqlite3.connect(str(path), isolation_level=None)
    yield {"srv": srv, "stub": s, "con": con}
    con.close()
    ch.close()
    alive = srv.running()
    srv.stop()
    assert alive, "the server died during fuzzing"
    errors = [
        ln
        for ln in srv.log_tail(10_000_000).splitlines()
        if '"level": "error"' in ln or "Traceback" in ln
    ]
    assert not errors, errors[:3]


# ---- strategies ---------------------------------------------------------------------------------

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, math.inf, -math.inf, math.nan, 5e-324]
    ),
)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 30))
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 25))


@st.composite
def strings(draw, known=()):
    r = draw(st.integers(0, 99))
    if r < 2:  # a huge one, still under the 4 MiB message limit
        return draw(st.sampled_from(["x", "é", "\u2603"])) * draw(
            st.sampled_from([70_000, 600_000, 1_200_000])
        )
    if known and r < 55:
        return draw(st.sampled_from(list(known)))
    return draw(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                [
                    "",
                    " ",
                    "..",
                    "a" * 129,
                    "x\x00y",
                    "../../etc",
                    "'; DROP TABLE trials; --",
                    "y",
                    "x",
                    "k",
                ]
            ),
        )
    )


study_names = strings(known=KNOWN)
metric_names = strings(known=("y", "a", "b", "c", "x"))
param_names = strings(known=("x", "k", "n", "o", "f"))
trial_ids = st.one_of(st.integers(1, 25), int64s)


@st.composite
def parameter_values(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return pb.ParameterValue(number=draw(floats))
    if kind == 1:
        return pb.ParameterValue(integer=draw(int64s))
    if kind == 2:
        return pb.ParameterValue(category=draw(strings(known=("a", "b", "c", "const"))))
    return pb.ParameterValue()


@st.composite
def metric_values(draw):
    m = pb.MetricValue(value=draw(floats))
    if draw(st.booleans()):
        m.sem = draw(floats)
    return m


metric_maps = st.dictionaries(metric_names, metric_values(), max_size=4)
param_maps = st.dictionaries(param_names, parameter_values(), max_size=5)


@st.composite
def parameter_specs(draw):
    p = pb.ParameterSpec(name=draw(param_names))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        p.float.CopyFrom(
            pb.FloatParameter(low=draw(floats), high=draw(floats), scale=draw(st.integers(0, 3)))
        )
    elif kind == 1:
        p.int.CopyFrom(
            pb.IntParameter(low=draw(int64s), high=draw(int64s), scale=draw(st.integers(0, 3)))
        )
    elif kind == 2:
        p.categorical.CopyFrom(
            pb.CategoricalParameter(choices=draw(st.lists(strings(), max_size=5)))
        )
    elif kind == 3:
        p.ordinal.CopyFrom(
            pb.OrdinalParameter(
                values=draw(st.lists(floats, max_size=5)), scale=draw(st.integers(0, 3))
            )
        )
    elif kind == 4:
        p.fixed.CopyFrom(pb.FixedParameter(value=draw(parameter_values())))
    return p


@st.composite
def specs(draw):
    if draw(st.integers(0, 9)) == 0:
        spec = small_spec()  # sometimes a valid one, so creation paths run too
        spec.algorithm.n_initial = (
            10000  # (asks on it stay cheap: this fuzzes the service, not the GP)
        )
        return spec
    spec = pb.StudySpec(
        parameters=draw(st.lists(parameter_specs(), max_size=4)),
        objectives=[
            pb.Objective(name=draw(metric_names), goal=draw(st.integers(0, 3)))
            for _ in range(draw(st.integers(0, 3)))
        ],
        outcome_constraints=[
            pb.OutcomeConstraint(
                metric=draw(metric_names), op=draw(st.integers(0, 3)), bound=draw(floats)
            )
            for _ in range(draw(st.integers(0, 2)))
        ],
        tracked_metrics=draw(st.lists(metric_names, max_size=3)),
        description=draw(strings()),
    )
    for _ in range(draw(st.integers(0, 2))):
        c = spec.parameter_constraints.add(bound=draw(floats))
        for k, v in draw(st.dictionaries(param_names, floats, max_size=3)).items():
            c.coefficients[k] = v
    a = spec.algorithm
    a.n_initial, a.device = (
        draw(int32s),
        draw(st.one_of(st.sampled_from(["", "auto", "cpu", "cuda"]), strings())),
    )
    a.max_fit_points, a.max_model_points, a.prior_exponent = (
        draw(int32s),
        draw(int32s),
        draw(floats),
    )
    if draw(st.booleans()):
        a.seed = draw(int64s)
    for k, v in draw(st.dictionaries(metric_names, floats, max_size=2)).items():
        a.reference_point[k] = v
    for _ in range(draw(st.integers(0, 2))):
        pr = spec.priors.add(parameter=draw(param_names), confidence=draw(floats))
        if draw(st.booleans()):
            pr.mean = draw(floats)
        if draw(st.booleans()):
            pr.std = draw(floats)
        for k, v in draw(st.dictionaries(strings(), floats, max_size=2)).items():
            pr.probabilities[k] = v
    if draw(st.booleans()):
        spec.llm.CopyFrom(
            pb.LlmOptions(
                enabled=draw(st.booleans()),
                warmstart_candidates=draw(int32s),
                derive_priors=draw(st.booleans()),
                propose_during_search=draw(st.booleans()),
                model=draw(strings()),
            )
        )
    return spec


states = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))

REQUESTS = {
    "CreateStudy": st.builds(
        lambda n, s: svc.CreateStudyRequest(name=n, spec=s), study_names, specs()
    )
    | st.builds(lambda n: svc.CreateStudyRequest(name=n), study_names),
    "GetStudy": st.builds(lambda n: svc.GetStudyRequest(name=n), study_names),
    "ListStudies": st.builds(
        lambda p, t: svc.ListStudiesRequest(page_size=p, page_token=t),
        int32s,
        strings(known=("1", "0", "-1", "99999999999999999999")),
    ),
    "DeleteStudy": st.builds(
        lambda n: svc.DeleteStudyRequest(name=n), strings(known=("nope", "fz-gone"))
    ),
    "Ask": st.builds(
        lambda n, c, w, r, l: svc.AskRequest(
            study=n, count=c, worker_id=w, request_id=r, lease_seconds=l
        ),
        study_names,
        st.one_of(st.integers(-2, 25), int32s),
        strings(),
        strings(known=("r1", "r2")),
        floats,
    ),
    "Tell": st.builds(
        lambda n, t, m, s, r, q: svc.TellRequest(
            study=n, trial_id=t, metrics=m, state=s, reason=r, request_id=q
        ),
        study_names,
        trial_ids,
        metric_maps,
        states,
        strings(),
        strings(known=("r1", "r2")),
    ),
    "AddTrial": st.builds(
        lambda n, p, m, s, r: svc.AddTrialRequest(
            study=n, parameters=p, metrics=m, state=s, request_id=r
        ),
        study_names,
        param_maps,
        metric_maps,
        states,
        strings(known=("r1", "r2")),
    ),
    "GetTrial": st.builds(
        lambda n, t: svc.GetTrialRequest(study=n, trial_id=t), study_names, trial_ids
    ),
    "ListTrials": st.builds(
        lambda n, s, p, t: svc.ListTrialsRequest(study=n, states=s, page_size=p, page_token=t),
        study_names,
        st.lists(states, max_size=3),
        int32s,
        strings(known=("1", "-5", "2.5", "99999999999999999999")),
    ),
    "GetBest": st.builds(lambda n: svc.GetBestRequest(study=n), study_names),
    "ReportIntermediate": st.builds(
        lambda n, t, s, v: svc.ReportIntermediateRequest(study=n, trial_id=t, step=s, value=v),
        study_names,
        trial_ids,
        int64s,
        floats,
    ),
    "Heartbeat": st.builds(
        lambda n, t, l: svc.HeartbeatRequest(study=n, trial_id=t, lease_seconds=l),
        study_names,
        trial_ids,
        floats,
    ),
    "ListLlmCalls": st.builds(lambda n: svc.ListLlmCallsRequest(study=n), study_names),
}
assert sorted(REQUESTS) == sorted(RPCS)


DIGEST = [
    "SELECT count(*), total(trial_counter), group_concat(state || ':' || id) FROM studies",
    "SELECT count(*), total(updated_at), total(lease_expires_at), group_concat(state) FROM trials",
    "SELECT count(*), max(id) FROM trial_events",
    "SELECT count(*), total(value), total(at) FROM intermediate_values",
    "SELECT count(*), max(id) FROM request_log",
    "SELECT count(*) FROM llm_calls",
]


def _digest(con) -> tuple:
    """What a refused request must not change (the model_state cache table is left out)."""
    return tuple(con.execute(q).fetchone() for q in DIGEST)


def _fuzz(env, rpc: str, request) -> None:
    con, s = env["con"], env["stub"]
    before = _digest(con) if rpc in MUTATING else None
    try:
        getattr(s, rpc)(request, timeout=120)
        ok, code, details = True, grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        ok, code, details = False, e.code(), e.details()
    COUNTS[rpc] = COUNTS.get(rpc, 0) + 1
    assert code not in BAD, (rpc, code, details, str(request)[:2000])
    if not ok and before is not None:
        after = _digest(con)
        assert after == before, (
            "a refused request changed the database",
            rpc,
            code,
            details,
            str(request)[:2000],
            [(q, x, y) for q, x, y in zip(DIGEST, before, after) if x != y],
        )


def _make_test(rpc: str):
    @SETTINGS
    @given(req=REQUESTS[rpc])
    def test(fuzz_env, req):
        _fuzz(fuzz_env, rpc, req)

    test.__name__ = f"test_fuzz_{rpc}"
    return test


for _rpc in RPCS:
    globals()[f"test_fuzz_{_rpc}"] = _make_test(_rpc)


def test_fuzz_total_and_server_still_serves(fuzz_env):
    if set(COUNTS) == set(RPCS):
        assert sum(COUNTS.values()) >= 10_000, COUNTS
    s = fuzz_env["stub"]
    r = s.Ask(svc.AskRequest(study="fz-single", count=1), timeout=60)
    t = s.Tell(
        svc.TellRequest(
            study="fz-single", trial_id=r.trials[0].id, metrics={"y": pb.MetricValue(value=0.1)}
        ),
        timeout=30,
    )
    assert t.trial.state == pb.TRIAL_STATE_COMPLETED


def _constrained_spec(rng) -> pb.StudySpec:
    """2-4 int / ordinal parameters under one or two linear constraints whose coefficients span
    1e-3 to 1e12, a float beside them, n_initial 3 (so the asks reach the BO step too)."""
    spec = pb.StudySpec(objectives=[pb.Objective(name="y")])
    spec.algorithm.n_initial, spec.algorithm.seed = 3, int(rng.integers(1 << 30))
    names = []
    for i in range(int(rng.integers(2, 5))):
        p = spec.parameters.add(name=f"p{i}")
        if rng.random() < 0.6:
            lo = int(rng.integers(-3, 3))
            p.int.CopyFrom(pb.IntParameter(low=lo, high=lo + int(rng.integers(1, 12))))
        else:
            p.ordinal.CopyFrom(pb.OrdinalParameter(values=[0.0, 1.0, 2.5, 4.0]))
        names.append(p.name)
    spec.parameters.add(name="x", float=pb.FloatParameter(low=0.0, high=1.0))
    for _ in range(int(rng.integers(1, 3))):
        c = spec.parameter_constraints.add(bound=float(rng.choice([0.0, 1.0, 3.0])))
        for n in rng.choice(names, size=2, replace=False):
            c.coefficients[str(n)] = float(rng.choice([1.0, -1.0, 2.0, 1e-3, 1e12, -1e12]))
    return spec


def test_random_constrained_specs_hand_out_points_that_meet_them(fuzz_env):
    """Seeded random specs of ints and ordinals under linear constraints with huge and tiny
    coefficients: every asked point (initial design and BO) meets every constraint exactly (ints
    and ordinals are exact: only the sum's rounding is excused). A 1e12 coefficient once excused
    1,000 of violation of its constraint's other terms."""
    import numpy as np

    s, rng = fuzz_env["stub"], np.random.default_rng(7)
    checked = 0
    for k in range(12):
        spec = _constrained_spec(rng)
        name = f"fz-constrained-{k}"
        try:
            s.CreateStudy(svc.CreateStudyRequest(name=name, spec=spec), timeout=60)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
            continue
        for count in (4, 2):
            for t in s.Ask(svc.AskRequest(study=name, count=count), timeout=60).trials:
                v = {n: getattr(x, x.WhichOneof("kind")) for n, x in t.parameters.items()}
                for c in spec.parameter_constraints:
                    terms = [a * v[n] for n, a in c.coefficients.items()]
                    tol = 1e-12 * (abs(c.bound) + sum(map(abs, terms)))
                    assert sum(terms) <= c.bound + tol, (name, t.origin, v, c)
                checked += 1
                y = {"y": pb.MetricValue(value=float(rng.normal()))}
                s.Tell(svc.TellRequest(study=name, trial_id=t.id, metrics=y), timeout=30)
    assert checked >= 30
