"""bbo_client.optuna.BboSampler: unchanged Optuna objectives (``trial.suggest_*``) run on a real bbo
server; distributions map both ways; pruned / failed trials are told; processes share a study."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading

import pytest

optuna = pytest.importorskip("optuna", reason="Optuna is not installed: pip install '.[bench]'")

import bbo_client as bc
from bbo_client.optuna import TRIAL_ID_ATTR, BboSampler, bbo_parameter, bbo_value, optuna_value

optuna.logging.set_verbosity(optuna.logging.WARNING)
D = optuna.distributions


def objective(trial):
    """Optuna's example style: define-by-run, every suggest_* kind."""
    x = trial.suggest_float("x", -10, 10)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 9, step=2)
    opt = trial.suggest_categorical("opt", ["adam", "sgd", None, 1])
    return (x - 2) ** 2 + math.log10(lr) ** 2 + n + (0 if opt == "adam" else 1)


def test_unchanged_objective_asks_bbo_and_tells_every_result(bbo_server, client, study_name):
    sampler = BboSampler(bbo_server.address, study_name=study_name, n_initial=8)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=6)

    info = client.get_study(study_name)
    assert {p.name: p for p in info.parameters} == {
        "x": bc.Float("x", -10, 10),
        "lr": bc.Float("lr", 1e-5, 1e-1, log=True),
        "n": bc.Ordinal("n", (1, 3, 5, 7, 9)),
        "opt": bc.Categorical("opt", ("adam", "sgd", "None", "1")),
    }
    assert [(o.name, o.goal) for o in info.objectives] == [("value", "minimize")]
    got = {t.id: t for t in client.study(study_name).trials()}
    assert len(got) == 6 and all(t.state == "COMPLETED" for t in got.values())
    asked = [t for t in study.trials if TRIAL_ID_ATTR in t.system_attrs]
    assert len(asked) == 5, "every trial after the first is asked from bbo"
    for t in asked:
        b = got[t.system_attrs[TRIAL_ID_ATTR]]
        assert b.origin == "initial_design"
        assert b.metrics["value"] == pytest.approx(t.value)
        assert b.params["x"] == t.params["x"] and b.params["n"] == t.params["n"]
    (first,) = [t for t in got.values() if t.origin == "user"]  # the random start, attached
    assert first.params["x"] == study.trials[0].params["x"]
    assert first.metrics["value"] == pytest.approx(study.trials[0].value)


def test_pruned_failed_and_nonfinite_trials_are_told_with_reasons(bbo_server, client, study_name):
    def obj(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 2:
            trial.report(0.5, step=3)
            raise optuna.TrialPruned()
        if trial.number == 3:
            raise RuntimeError("out of memory")
        if trial.number == 4:
            return float("inf")
        return x

    sampler = BboSampler(client=client, study_name=study_name, n_initial=8)
    study = optuna.create_study(sampler=sampler)
    study.optimize(obj, n_trials=5, catch=(RuntimeError,))
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    by_id = {t.id: t for t in client.study(study_name).trials()}
    told = {t.number: by_id[t.system_attrs[TRIAL_ID_ATTR]] for t in study.trials[1:]}
    assert told[1].state == "COMPLETED"
    assert (
        told[2].state == "PRUNED"
        and told[2].reason == "pruned by Optuna at step 3 (last value 0.5)"
        and told[2].metrics == {"value": 0.5}  # bbo's model learns why it was stopped
    )
    assert told[3].state == "FAILED" and "Optuna trial 3 failed" in told[3].reason
    assert told[4].state == "FAILED" and told[4].reason == "not finite: value=inf"


@pytest.mark.parametrize(
    "pruner",
    [optuna.pruners.HyperbandPruner(1, 9, 3), optuna.pruners.SuccessiveHalvingPruner()],
    ids=["hyperband", "successive-halving"],
)
def test_optunas_rung_pruners_run_with_the_sampler(client, study_name, pruner):
    """Optuna's HyperbandPruner hands the sampler a per-bracket view of the study that lacks most
    attributes (metric_names): the sampler binds the whole study, so such a script runs, asks
    bbo, and its pruned trials are told PRUNED."""

    def obj(trial):
        x = trial.suggest_float("x", 0, 1)
        for step in range(1, 10):
            trial.report((x - 0.3) ** 2 + 1 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return (x - 0.3) ** 2

    sampler = BboSampler(client=client, study_name=study_name, n_initial=20)
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    study.optimize(obj, n_trials=12)
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    assert sum(TRIAL_ID_ATTR in t.system_attrs for t in study.trials) == 11
    told = {t.state for t in client.study(study_name).trials()}
    assert told == {"COMPLETED", "PRUNED"} if "PRUNED" in states else {"COMPLETED"}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_multi_objective_with_constraints_and_an_enqueued_trial(bbo_server, client, study_name):
    def obj(trial):
        x = trial.suggest_float("x", 0, 1)
        k = trial.suggest_categorical("k", [True, False])
        trial.set_user_attr("c", x - 0.8)
        return x, (1 - x) ** 2 + (0.1 if k else 0)

    sampler = BboSampler(
        client=client,
        study_name=study_name,
        constraints_func=lambda t: [t.user_attrs["c"]],
        n_initial=8,
    )
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    study.set_metric_names(["cost", "score"])
    study.optimize(obj, n_trials=3)
    study.enqueue_trial({"x": 0.25, "k": False})
    study.optimize(obj, n_trials=1)

    info = client.get_study(study_name)
    assert [(o.name, o.goal) for o in info.objectives] == [
        ("cost", "minimize"),
        ("score", "maximize"),
    ]
    assert [(c.metric, c.op, c.bound) for c in info.constraints] == [("constraint_0", "<=", 0.0)]
    trials = client.study(study_name).trials()
    assert len(trials) == 4 and all(t.state == "COMPLETED" for t in trials)
    enq = [t for t in trials if t.params["x"] == 0.25]
    assert len(enq) == 1 and enq[0].origin == "user" and enq[0].params["k"] == "False"
    assert enq[0].metrics == pytest.approx({"cost": 0.25, "score": 0.5625, "constraint_0": -0.55})
    assert client.study(study_name).best().trials, "a feasible Pareto front"


def test_a_conditional_space_keeps_branch_parameters_out_of_bbo(client, study_name):
    def obj(trial):  # Optuna's sklearn example shape: parameters depend on the classifier
        kind = trial.suggest_categorical("classifier", ["svc", "rf"])
        if kind == "svc":
            return abs(math.log10(trial.suggest_float("svc_c", 1e-3, 1e3, log=True)))
        return trial.suggest_int("rf_depth", 2, 32, log=True) / 32

    sampler = BboSampler(client=client, study_name=study_name, n_startup_trials=2, n_initial=8)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"classifier": "svc", "svc_c": 10.0})
    study.enqueue_trial({"classifier": "rf", "rf_depth": 8})
    study.optimize(obj, n_trials=5)
    info = client.get_study(study_name)
    assert [p.name for p in info.parameters] == ["classifier"]
    trials = client.study(study_name).trials()
    assert len(trials) == 5 and all(t.state == "COMPLETED" for t in trials)
    asked = [t for t in study.trials if TRIAL_ID_ATTR in t.system_attrs]
    assert len(asked) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_a_trial_evaluated_off_the_asked_point_is_not_told_for_it(client, study_name, caplog):
    """The objective narrows x from [0, 10] to [0, 1] after the bbo study was made: bbo's x = 5
    (its centre) is outside, so Optuna samples x itself; that result is not bbo's point's. Such
    a trial is told ABANDONED with why, every COMPLETED bbo trial holds the x Optuna evaluated,
    and a warning says so once (before: x = 5 was told COMPLETED with the value of another x)."""

    def obj(trial):
        return trial.suggest_float("x", 0, 10 if trial.number == 0 else 1)

    sampler = BboSampler(client=client, study_name=study_name, n_initial=8)
    study = optuna.create_study(sampler=sampler)
    with caplog.at_level("WARNING", logger="bbo_client.optuna"):
        study.optimize(obj, n_trials=5)
    got = {t.id: t for t in client.study(study_name).trials()}
    asked = [t for t in study.trials if TRIAL_ID_ATTR in t.system_attrs]
    assert len(asked) == 4
    states = []
    for t in asked:
        b = got[t.system_attrs[TRIAL_ID_ATTR]]
        states.append(b.state)
        if b.params["x"] == t.params["x"]:
            assert b.state == "COMPLETED" and b.metrics["value"] == t.value
        else:
            assert b.state == "ABANDONED" and not b.metrics, b
            assert f"evaluated x={t.params['x']!r}" in b.reason and "not bbo's x=" in b.reason
    assert states[0] == "ABANDONED"  # bbo's first ask is its centre, x = 5
    assert len([r for r in caplog.records if "searches FloatDistribution" in r.message]) == 1


def test_two_optuna_studies_in_threads_share_one_bbo_study(bbo_server, client, study_name):
    studies = []

    def run(seed: int) -> None:
        s = optuna.create_study(
            sampler=BboSampler(bbo_server.address, study_name=study_name, seed=seed, n_initial=10)
        )
        studies.append(s)
        s.optimize(objective, n_trials=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bbo_trials = client.study(study_name).trials()
    ours = [t for s in studies for t in s.trials]
    assert len(ours) == 8 and len(bbo_trials) == 8, "every Optuna trial recorded once in bbo"
    assert sorted(b.params["x"] for b in bbo_trials) == sorted(t.params["x"] for t in ours)
    assert all(b.state == "COMPLETED" for b in bbo_trials)
    assert len({b.params["x"] for b in bbo_trials}) == 8, "concurrent asks got different points"


_PROCESS = """
import sys, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from bbo_client.optuna import BboSampler
optuna.logging.set_verbosity(optuna.logging.WARNING)
def objective(trial):
    return (trial.suggest_float("x", -1, 1) - 0.3) ** 2 + trial.suggest_int("k", 0, 3)
storage = JournalStorage(JournalFileBackend(sys.argv[2]))
sampler = BboSampler(sys.argv[1], study_name=sys.argv[3], n_initial=10)
study = optuna.load_study(study_name="shared", storage=storage, sampler=sampler)
study.optimize(objective, n_trials=3)
"""


def _journal(path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def test_two_processes_sharing_an_optuna_storage_record_each_trial_once(
    bbo_server, client, study_name, tmp_path
):
    path = tmp_path / "optuna.log"
    optuna.create_study(study_name="shared", storage=_journal(path))
    args = [bbo_server.address, str(path), study_name]
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PROCESS), *args]) for _ in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    trials = optuna.load_study(study_name="shared", storage=_journal(path)).trials
    bbo_trials = client.study(study_name).trials()
    assert len(trials) == 6
    assert len(bbo_trials) == 6, "a shared start-up trial attached by both processes counts once"
    assert sorted(t.params["x"] for t in trials) == sorted(b.params["x"] for b in bbo_trials)


def test_a_bbo_study_with_another_space_is_refused_with_what_differs(client, study_name):
    client.create_study(study_name, parameters=[bc.Float("x", 0, 5)], objectives="value")
    study = optuna.create_study(sampler=BboSampler(client=client, study_name=study_name))
    with pytest.raises(bc.InvalidArgument, match="this Optuna study suggests 'x'") as e:
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert e.value.field == "study_name"
    assert client.get_study(study_name).trial_count == 0, "nothing was added to it"
    with pytest.raises(bc.InvalidArgument, match="bbo study names"):
        BboSampler(client=client, study_name="has spaces")


@pytest.mark.parametrize(
    "dist, value",
    [
        (D.FloatDistribution(-1.5, 2.0), 0.25),
        (D.FloatDistribution(1e-4, 1.0, log=True), 0.003),
        (D.FloatDistribution(0.0, 1.0, step=0.1), 0.30000000000000004),
        (D.IntDistribution(2, 64, log=True), 17),
        (D.IntDistribution(0, 20, step=5), 15),
        (D.CategoricalDistribution([1, "1", None, 2.5, False]), "1"),
        (D.CategoricalDistribution([1, "1", None, 2.5, False]), None),
    ],
)
def test_distributions_round_trip_through_bbo_values(dist, value):
    p = bbo_parameter("p", dist)
    v = bbo_value(dist, value)
    p.to_pb()  # a valid message
    back = optuna_value(dist, v)
    assert back == value and type(back) is type(value)
    assert dist._contains(dist.to_internal_repr(back))


def test_a_seeded_sampler_seeds_its_bbo_study(bbo_server, client, study_name):
    """``BboSampler(seed=s)`` repeats: the bbo study it creates is seeded with s."""
    runs = []
    for k in range(2):
        name = f"{study_name}-{k}"
        s = optuna.create_study(sampler=BboSampler(bbo_server.address, study_name=name, seed=7))
        s.optimize(objective, n_trials=5)
        runs.append([t.params["x"] for t in s.trials])
        assert client.get_study(name).spec.algorithm.seed == 7
    assert runs[0] == runs[1]


def test_options_create_study_would_refuse_are_refused_when_made():
    """A typo or another sampler's option fails at once, not after the first completed trial."""
    for bad in ({"multivariate": True}, {"n_intial": 4}, {"constraints": []}):
        with pytest.raises(TypeError, match=next(iter(bad))):
            BboSampler("127.0.0.1:1", **bad)
    BboSampler("127.0.0.1:1", n_initial=4, seed=1, description="d")


def test_the_adapter_is_reached_from_import_bbo_client_alone():
    """README: ``optuna.create_study(sampler=bbo_client.optuna.BboSampler(...))`` after ``import
    bbo_client``; the package did not load its adapter submodules (AttributeError)."""
    code = (
        "import bbo_client, sys\n"
        "assert 'bbo_client.optuna' not in sys.modules\n"
        "print(bbo_client.optuna.BboSampler.__name__)\n"
        "try:\n"
        "    bbo_client.no_such_thing\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "BboSampler",
        "module 'bbo_client' has no attribute 'no_such_thing'",
    ]


def test_a_long_stepped_grid_is_searched_within_the_servers_choice_limit(client, study_name):
    """A stepped distribution of 1,001 to 10,000 values became an Ordinal of them, which a server's
    default --max-choices (1,000) refused: the first trial after the start-up one failed with
    RESOURCE_EXHAUSTED. Such a grid is searched continuously and snapped to its steps."""

    def obj(trial):
        x = trial.suggest_float("x", 0.0, 20.0, step=0.01)  # 2,001 values
        n = trial.suggest_int("n", 0, 4000, step=2)
        return x + n

    study = optuna.create_study(sampler=BboSampler(client=client, study_name=study_name))
    study.optimize(obj, n_trials=3)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    by = {p.name: p for p in client.get_study(study_name).parameters}
    assert by == {"x": bc.Float("x", 0.0, 20.0), "n": bc.Int("n", 0, 4000)}
    for t in study.trials[1:]:
        assert TRIAL_ID_ATTR in t.system_attrs
        assert t.params["x"] == pytest.approx(round(t.params["x"] / 0.01) * 0.01)
        assert t.params["n"] % 2 == 0 and type(t.params["n"]) is int


def test_a_study_made_with_a_long_ordinal_grid_is_still_adopted(server_factory, study_name):
    """Earlier versions made an Ordinal of up to 10,000 steps, which a server allowing that many
    values (--max-choices) took: the sampler still adopts such a study, not refusing its space."""
    srv = server_factory(args=["--workers", "1", "--max-choices", "3000"])
    with bc.Client(srv.address) as c:
        grid = [k * 0.01 for k in range(2001)]
        c.create_study(study_name, [bc.Ordinal("x", grid)], "value", n_initial=8)
        study = optuna.create_study(sampler=BboSampler(client=c, study_name=study_name))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 20.0, step=0.01), n_trials=3)
        asked = [t for t in study.trials if TRIAL_ID_ATTR in t.system_attrs]
        assert len(asked) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
        for t in asked:
            assert t.params["x"] in grid


def _capped(trial):
    """-x, feasible while x <= 0.5: the unconstrained best (x = 1) is infeasible."""
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("c", x - 0.5)
    return -x


def test_constraints_func_keeps_infeasible_trials_out_of_best(client, study_name):
    """Optuna's best_trial / best_trials skip trials whose constraints_func values are > 0 when
    the sampler stores them as Optuna's samplers do; before, the sampler kept them to itself and
    best_value was the infeasible -1.0 (plain Optuna with TPESampler: -0.2)."""
    sampler = BboSampler(
        client=client, study_name=study_name, constraints_func=lambda t: [t.user_attrs["c"]]
    )
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 0.2})
    study.optimize(_capped, n_trials=4)
    assert study.best_value >= -0.5 and study.best_trial.user_attrs["c"] <= 0
    assert [c.metric for c in client.get_study(study_name).constraints] == ["constraint_0"]
    told = [t.metrics for t in client.study(study_name).trials()]
    assert len(told) == 4 and told[0] == pytest.approx({"value": -1.0, "constraint_0": 0.5})


@pytest.mark.skipif(
    not hasattr(optuna.trial.Trial, "set_constraint"), reason="Optuna 5's trial.set_constraint"
)
def test_trial_set_constraint_becomes_a_bbo_outcome_constraint(client, study_name):
    """Optuna 5's ``trial.set_constraint(key, value)`` (feasible when <= 0) is a bbo constraint
    ``constraint_<key> <= 0``; before, bbo was told the objective alone and searched unconstrained."""

    def obj(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.set_constraint("mem", x - 0.5)
        return -x

    study = optuna.create_study(sampler=BboSampler(client=client, study_name=study_name))
    study.optimize(obj, n_trials=3)
    info = client.get_study(study_name)
    assert [(c.metric, c.op, c.bound) for c in info.constraints] == [("constraint_mem", "<=", 0.0)]
    trials = client.study(study_name).trials()
    assert len(trials) == 3 and all(t.state == "COMPLETED" for t in trials)
    for b, t in zip(trials, study.trials):
        assert b.metrics == pytest.approx(
            {"value": -t.params["x"], "constraint_mem": t.params["x"] - 0.5}
        )


def test_a_trial_added_after_the_study_is_bound_is_attached(client, study_name):
    """``study.add_trial(create_trial(...))`` feeds Optuna's samplers at any time; it reached bbo
    only when added before the bbo study was made. It is attached at the next ask."""
    dists = {"x": D.FloatDistribution(0, 1)}
    study = optuna.create_study(sampler=BboSampler(client=client, study_name=study_name))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.add_trial(
        optuna.trial.create_trial(params={"x": 0.125}, distributions=dists, value=0.125)
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    trials = client.study(study_name).trials()
    assert len(trials) == 4
    (added,) = [t for t in trials if t.params["x"] == 0.125]
    assert added.origin == "user" and added.metrics == {"value": 0.125}


@pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::optuna.exceptions.ExperimentalWarning", "ignore::UserWarning"
)
def test_a_trial_optuna_fails_as_stale_is_failed_in_bbo_and_its_retry_recorded(
    client, study_name, tmp_path
):
    """With heartbeats on an RDB storage, ``optimize`` fails a dead worker's trial as stale
    without the sampler's after_trial: its bbo trial stayed PENDING (until its lease ran out),
    and RetryFailedTrialCallback's retry, carrying a copy of its system attributes, told that
    bbo trial its own result. Now bbo has what Optuna has: FAILED, then the retry, COMPLETED."""
    import time

    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    storage = RDBStorage(
        f"sqlite:///{tmp_path / 'optuna.db'}",
        heartbeat_interval=1,
        grace_period=1,
        failed_trial_callback=RetryFailedTrialCallback(max_retry=1),
    )
    sampler = BboSampler(client=client, study_name=study_name, n_initial=8)
    study = optuna.create_study(storage=storage, sampler=sampler)
    obj = lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2  # noqa: E731
    study.optimize(obj, n_trials=2)
    dead = study.ask()  # a worker that asks, sends one heartbeat, and dies
    dead.suggest_float("x", 0, 1)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)  # past the grace period: the next optimize fails it as stale
    study.optimize(obj, n_trials=2)

    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    stale, retry = study.trials[2], study.trials[3]
    assert retry.system_attrs["failed_trial"] == stale.number
    got = {t.id: t for t in client.study(study_name).trials()}
    assert len(got) == 5 and "PENDING" not in {t.state for t in got.values()}
    b = got[stale.system_attrs[TRIAL_ID_ATTR]]
    assert b.state == "FAILED" and "Optuna failed trial 2 as stale" in b.reason
    (again,) = [t for t in got.values() if t.params["x"] == stale.params["x"] and t.id != b.id]
    assert again.state == "COMPLETED" and again.metrics == {"value": pytest.approx(retry.value)}


@pytest.mark.skipif(
    not hasattr(optuna.trial.Trial, "set_constraint"), reason="Optuna 5's trial.set_constraint"
)
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
@pytest.mark.parametrize(
    "keys, metric_names, refused",
    [
        (["a b", "a_b"], None, "constraints 'a b' and 'a_b' both become bbo constraint"),
        (["mem"], ["constraint_mem"], "'constraint_mem', the name of an objective"),
    ],
    ids=["two-keys-one-metric", "constraint-named-as-objective"],
)
def test_constraints_that_would_share_a_bbo_metric_are_refused(
    client, study_name, keys, metric_names, refused
):
    """Constraint ``key`` is bbo metric ``constraint_<key>`` made valid: two keys naming one
    metric, or a constraint named as an objective, left bbo one value for two (before: the
    objective's value was told as the constraint's, or one constraint was dropped)."""

    def obj(trial):
        x = trial.suggest_float("x", 0, 1)
        for k in keys:
            trial.set_constraint(k, x - 0.5)
        return x

    study = optuna.create_study(sampler=BboSampler(client=client, study_name=study_name))
    if metric_names:
        study.set_metric_names(metric_names)
    with pytest.raises(bc.InvalidArgument, match=refused):
        study.optimize(obj, n_trials=3)
    with pytest.raises(bc.NotFound):
        client.get_study(study_name)
