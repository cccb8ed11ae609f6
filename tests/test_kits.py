"""Application kits: valid specs, deterministic seeded evaluations, solver and simulator checks,
and a short study through a real server for each kit."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bbo.design import sobol_design
from bbo.errors import SpecError
from bbo.kits import KITS, get_kit
from bbo.kits import admm as admm_mod
from bbo.kits import cloud as cloud_mod
from bbo.spec import StudySpec

# (kit, options) pairs cheap enough to evaluate a few times each
VARIANTS = [
    ("hpo", {"model": "svm", "dataset": "breast_cancer"}),
    ("hpo", {"model": "knn", "dataset": "wine"}),
    ("hpo", {"model": "linear", "dataset": "diabetes"}),
    ("hpo", {"model": "hgb", "dataset": "iris", "max_train_seconds": 1.0}),
    ("hpo", {"model": "rf", "dataset": "wine"}),
    ("hpo", {"model": "mlp", "dataset": "iris"}),
    ("hpo", {"model": "sgd_mlp", "dataset": "iris", "max_epochs": 9}),
    ("admm", {"problem": "lasso"}),
    ("admm", {"problem": "qp", "accuracy": 1e-4}),
    ("cloud", {"variant": "single"}),
    ("cloud", {"variant": "multi"}),
]


def _ids(v):
    return f"{v[0]}-" + "-".join(str(x) for x in v[1].values())


def test_registry():
    assert set(KITS) == {"hpo", "admm", "cloud"}
    for name, kit in KITS.items():
        assert kit.name == name
        assert isinstance(kit.description, str) and len(kit.description) > 200
        assert get_kit(name) is kit
    with pytest.raises(SpecError, match="unknown kit"):
        get_kit("nope")


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_spec_valid_and_round_trips(variant):
    name, opts = variant
    kit = KITS[name]
    spec = kit.spec(**opts)
    assert isinstance(spec, StudySpec)
    assert spec.description and len(spec.description) > 200
    again = StudySpec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    # the variant's options travel as fixed parameters, so params alone say what to run
    fixed = {p.name for p in spec.space.params} - set(spec.space.names)
    assert fixed, "options should be fixed parameters"
    assert not (set(spec.all_metrics) - set(spec.modeled_metrics + list(spec.tracked_metrics)))


def test_unknown_options_rejected():
    with pytest.raises(SpecError):
        KITS["hpo"].spec(model="xgboost")
    with pytest.raises(SpecError):
        KITS["hpo"].spec(dataset="mnist")
    with pytest.raises(SpecError):
        KITS["admm"].spec(problem="svm")
    with pytest.raises(SpecError):
        KITS["cloud"].spec(variant="both")
    with pytest.raises(SpecError, match="no option"):
        KITS["cloud"].spec(colour="red")


@pytest.mark.parametrize(
    "name,opts",
    [
        ("hpo", dict(cv_folds=1)),
        ("hpo", dict(cv_folds=2.5)),
        ("hpo", dict(max_samples=0)),
        ("hpo", dict(part="0/3")),
        ("hpo", dict(part="4/3")),
        ("hpo", dict(part="half")),
        ("hpo", dict(part="1/6", dataset="iris")),
        ("hpo", dict(max_train_seconds=-1.0)),
        ("hpo", dict(model="sgd_mlp", max_epochs="x")),
        ("admm", dict(accuracy=0.0)),
        ("admm", dict(max_iter=-5)),
        ("cloud", dict(horizon=0.0)),
        ("cloud", dict(load_scale=-1.0)),
        ("cloud", dict(sla_bound=2.0)),
        # runs no evaluation can finish in reason (every trial would fail or run for hours)
        ("hpo", dict(cv_folds=51, dataset="iris")),  # 50 rows a class
        ("hpo", dict(cv_folds=101)),
        ("hpo", dict(max_samples=1, dataset="iris")),
        # a one-row test fold: R^2 is NaN, every trial failed ("metric(s) not finite numbers")
        ("hpo", dict(max_samples=5, dataset="diabetes")),
        ("hpo", dict(max_samples=9, dataset="diabetes", cv_folds=5)),
        # breast_cancer's first five rows kept are of one class: nothing to tell apart
        ("hpo", dict(max_samples=5)),
        ("hpo", dict(max_samples=5, model="sgd_mlp")),
        # sgd_mlp's 30% hold-out of 25 digits: 8 rows for 9 classes (every trial failed)
        ("hpo", dict(max_samples=25, model="sgd_mlp", dataset="digits")),
        ("hpo", dict(part="1/59", model="sgd_mlp", dataset="digits")),  # named cv_folds
        ("hpo", dict(max_samples=2, model="sgd_mlp", dataset="iris")),
        ("hpo", dict(model="sgd_mlp", max_epochs=10**9)),
        ("admm", dict(max_iter=10**9)),
        pytest.param("admm", dict(max_iter=10**400), id="admm-max_iter-10**400"),  # OverflowError
        ("cloud", dict(horizon=1e9)),
        ("cloud", dict(load_scale=1e6)),
        # infinite bounds: the server refused them without naming the option
        ("cloud", dict(cost_budget=math.inf)),
        ("cloud", dict(sla_wait_minutes=math.inf)),
        ("hpo", dict(max_train_seconds=math.inf)),
        ("admm", dict(accuracy=math.inf)),
    ],
    ids=str,
)
def test_out_of_range_options_are_refused_naming_the_option(name, opts):
    """An option no evaluation can run with (every trial would fail, or measure an empty run) is a
    SpecError on that option, not a crash in the spec builder or a study of failed trials."""
    option = "max_epochs" if "max_epochs" in opts else next(iter(opts))
    with pytest.raises(SpecError, match=f"option {option} must ") as e:
        KITS[name].spec(**opts)
    assert e.value.field == option


@pytest.mark.parametrize(
    "opts",
    [
        dict(model="sgd_mlp", max_train_seconds=0.5),
        dict(model="sgd_mlp", cv_folds=5),
        dict(model="svm", max_epochs=20),
    ],
    ids=str,
)
def test_hpo_refuses_an_option_its_model_ignores(opts):
    """``-o model=sgd_mlp -o max_train_seconds=0.5`` made a study with no time constraint (and
    ``cv_folds`` one scored on a hold-out, ``max_epochs`` on svm nothing): silently not the study
    asked for. Refused, naming the option."""
    option = next(k for k in opts if k != "model")
    with pytest.raises(SpecError, match=f"option {option} does not apply") as e:
        KITS["hpo"].spec(**opts)
    assert e.value.field == option


def test_cloud_multi_refuses_a_cost_budget():
    """variant=multi makes cost an objective: cost_budget=1.5 was dropped without a word."""
    with pytest.raises(SpecError, match="cost_budget does not apply") as e:
        KITS["cloud"].spec(variant="multi", cost_budget=1.5)
    assert e.value.field == "cost_budget"
    assert KITS["cloud"].spec(variant="multi").objectives[1].name == "cost_machine_hours"


def test_knn_asks_no_more_neighbours_than_a_training_fold_holds():
    """A fifth of iris (30 rows) leaves 20 rows a training fold in 3-fold CV: k-NN's n_neighbors
    up to 50 failed on every point above 20; the space stops at the fold's rows."""
    kit = KITS["hpo"]
    assert kit.spec(model="knn", dataset="iris").space.by_name["n_neighbors"].high == 50
    spec = kit.spec(model="knn", dataset="iris", part="5/5")
    assert spec.space.by_name["n_neighbors"].high == 20
    p = spec.space.validate_params({"n_neighbors": 20, "weights": "distance", "p": 2.0})
    assert 0.0 <= kit.evaluate(p)["cv_error"] <= 1.0


def test_parts_of_a_data_set_are_disjoint_and_cover_it():
    """``part="k/n"``: n disjoint parts of the rows that together are the data set, each a fixed
    draw; the whole data set's spec is the one written before the option existed."""
    from bbo.kits.hpo import load_dataset

    X, _ = load_dataset("wine")
    parts = [load_dataset("wine", part=f"{k}/3")[0] for k in (1, 2, 3)]
    assert sorted(len(p) for p in parts) == [59, 59, 60]
    rows = {tuple(r) for p in parts for r in p}
    assert len(rows) == len(X) == sum(len(p) for p in parts)
    assert {tuple(r) for r in X} == rows
    assert "part" not in [p.name for p in KITS["hpo"].spec().space.params]
    spec = KITS["hpo"].spec(dataset="wine", part="2/3")
    fixed = {p.name: p.value for p in spec.space.params if p.name not in spec.space.names}
    assert fixed["part"] == "2/3"
    assert "part 2 of 3 disjoint parts" in spec.description
    (p,) = sobol_design(spec.space, 1, seed=3)
    p = spec.space.validate_params(p)
    other = {**p, "part": "3/3"}
    assert KITS["hpo"].evaluate(p)["cv_error"] != KITS["hpo"].evaluate(other)["cv_error"]


def test_cloud_description_states_the_scaled_load():
    """The LLM's facts follow ``load_scale``: at 2x they said 2.5 jobs/min and 100 busy cores,
    half the load it simulates; the default description is unchanged (stored specs match)."""
    default = KITS["cloud"].spec().description
    assert "2.5 jobs/min with bursts of 10 jobs/min" in default
    assert "about 100 busy cores (7 machines), bursts need 20 or more" in default
    doubled = KITS["cloud"].spec(load_scale=2.0).description
    assert "5 jobs/min with bursts of 20 jobs/min" in doubled
    assert "about 200 busy cores (13 machines), bursts need 40 or more" in doubled


def test_hpo_description_states_the_rows_max_samples_keeps():
    """digits' facts say "subsampled to 1000": a study of max_samples=200 (or of all 1797 rows)
    now says how many rows it keeps; where the default cut holds, the text is unchanged."""
    kit = KITS["hpo"]
    assert "keeps" not in kit.spec(dataset="digits").description
    assert (
        "keeps" not in kit.spec(dataset="wine", max_samples=5000).description
    )  # 178 rows either way
    assert (
        "this study keeps 200 rows (max_samples 200)"
        in kit.spec(dataset="digits", max_samples=200).description
    )
    assert "keeps 1797 rows" in kit.spec(dataset="digits", max_samples=2000).description
    assert (
        "keeps 100 rows" in kit.spec(model="sgd_mlp", dataset="wine", max_samples=100).description
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_evaluate_deterministic_and_complete(variant):
    name, opts = variant
    kit = KITS[name]
    spec = kit.spec(**opts)
    (p,) = sobol_design(spec.space, 1, seed=3)
    p = spec.space.validate_params(p)
    a = kit.evaluate(p, seed=1)
    b = kit.evaluate(dict(p), seed=1)
    missing = set(spec.all_metrics) - set(a)
    assert not missing, f"{name} misses metrics {missing}"
    assert all(isinstance(v, float) and math.isfinite(v) for v in a.values())
    det = {k: v for k, v in a.items() if k not in kit.wall_clock_metrics}
    assert det == {k: v for k, v in b.items() if k not in kit.wall_clock_metrics}


@pytest.mark.parametrize(
    "name,opts",
    [("hpo", {"model": "knn", "dataset": "breast_cancer"}), ("admm", {}), ("cloud", {})],
)
def test_seed_changes_the_black_box(name, opts):
    kit = KITS[name]
    spec = kit.spec(**opts)
    pts = sobol_design(spec.space, 3, seed=0)
    objective = spec.objectives[0].name
    r0 = [kit.evaluate(p, seed=0)[objective] for p in pts]
    r1 = [kit.evaluate(p, seed=1)[objective] for p in pts]
    assert r0 != r1


def test_hpo_constraint_and_train_seconds():
    kit = KITS["hpo"]
    spec = kit.spec(model="knn", dataset="iris", max_train_seconds=0.5)
    assert [str(c) for c in spec.outcome_constraints] == ["train_seconds <= 0.5"]
    assert "train_seconds" in spec.modeled_metrics
    m = kit.evaluate(
        {"n_neighbors": 5, "weights": "distance", "p": 2.0, "model": "knn", "dataset": "iris"}
    )
    assert (
        0 <= m["cv_error"] <= 0.2 and m["train_seconds"] > 0 and math.isfinite(m["train_seconds"])
    )
    # a terrible configuration is clearly worse than a sensible one
    bad = kit.evaluate(
        {"C": 1e-3, "gamma": 1e-4, "tol": 1e-3, "model": "svm", "dataset": "breast_cancer"}
    )
    good = kit.evaluate(
        {"C": 10.0, "gamma": 0.01, "tol": 1e-3, "model": "svm", "dataset": "breast_cancer"}
    )
    assert good["cv_error"] < 0.06 < 0.3 < bad["cv_error"]


def test_hpo_epoch_model_trains_epoch_by_epoch():
    """sgd_mlp: a fidelity of epochs; a trainer continued from epoch 3 ends where one trained
    straight to 9 does; a sensible configuration learns, a huge learning rate does not, and a run
    whose weights went non-finite keeps the majority-class error; regression data sets are
    refused."""
    kit = KITS["hpo"]
    spec = kit.spec(model="sgd_mlp", dataset="wine", max_epochs=9)
    assert (spec.fidelity.name, spec.fidelity.min, spec.fidelity.max) == ("epochs", 1, 9)
    assert [o.name for o in spec.objectives] == ["val_error"]
    p = {
        "model": "sgd_mlp",
        "dataset": "wine",
        "hidden_units": 32,
        "learning_rate_init": 0.05,
        "momentum": 0.9,
        "alpha": 1e-4,
        "batch_size": 16,
    }
    resumed = kit.trainer(p, seed=2)
    curve = list(resumed.curve(3))
    assert [e for e, _ in curve] == [1, 2, 3]
    assert (
        resumed.train_to(9)
        == kit.trainer(p, seed=2).train_to(9)
        == pytest.approx(kit.evaluate(p, seed=2, budget=9)["val_error"])
    )
    assert resumed.error < curve[0][1] and resumed.error < 0.15
    wild = kit.trainer({**p, "learning_rate_init": 10.0, "momentum": 0.99}, seed=2)
    assert wild.train_to(9) > 0.4 > 0.15 > resumed.error
    wild.model.coefs_[0][0, 0] = float("nan")  # weights gone non-finite: broken for good
    assert wild.step() == wild.chance_error and wild.diverged
    assert wild.train_to(12) == wild.chance_error and wild.epochs == 12
    with pytest.raises(SpecError, match="classification"):
        kit.spec(model="sgd_mlp", dataset="diabetes")


# ---- ADMM ---------------------------------------------------------------------------------------


def test_admm_lasso_matches_sklearn_on_small_instance():
    from sklearn.linear_model import Lasso

    inst = admm_mod.make_lasso(seed=5, m=40, n=60, k=5)
    res = admm_mod.admm(inst, rho=1.0, alpha=1.5, max_iter=20_000, eps_abs=1e-10, eps_rel=1e-10)
    assert res.converged
    # recover A and b from the instance: H = A^T A, c = -A^T b is enough for sklearn via a Cholesky-like factor
    w, V = inst.evals, inst.evecs
    keep = w > 1e-10
    A = (V[:, keep] * np.sqrt(w[keep])).T  # A' with A'^T A' = H
    b = np.linalg.lstsq(A.T, -inst.c, rcond=None)[0]  # A'^T b' = -c
    m = A.shape[0]
    sk = Lasso(alpha=inst.lam / m, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(A, b)
    assert np.max(np.abs(sk.coef_ - res.x)) < 1e-5
    _, xstar, fstar = admm_mod.reference.__wrapped__(
        "lasso", 0
    )  # the kit's reference is exact (KKT)
    inst0 = admm_mod.make_lasso(0)
    assert admm_mod.kkt_residual(inst0, xstar) < 1e-8
    assert abs(inst0.objective(xstar) - fstar) < 1e-12


def test_admm_qp_matches_scipy():
    from scipy.optimize import minimize

    inst = admm_mod.make_qp(seed=3, n=30, cond=1e2)
    res = admm_mod.admm(inst, rho=1.0, alpha=1.6, max_iter=20_000, eps_abs=1e-10, eps_rel=1e-10)
    assert res.converged
    sp = minimize(
        lambda x: 0.5 * x @ inst.H @ x + inst.c @ x,
        np.zeros(inst.n),
        jac=lambda x: inst.H @ x + inst.c,
        bounds=list(zip(inst.lo, inst.hi)),
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    assert np.max(np.abs(sp.x - res.x)) < 1e-5
    assert inst.objective(res.x) <= sp.fun + 1e-8
    _, xstar, _ = admm_mod.reference("qp", 0)
    assert admm_mod.kkt_residual(admm_mod.make_qp(0), xstar) < 1e-8


@pytest.mark.parametrize("problem", ["lasso", "qp"])
def test_admm_bad_parameters_take_longer(problem):
    kit = KITS["admm"]
    base = {
        "alpha": 1.6,
        "adaptive": "off",
        "mu": 10.0,
        "tau_incr": 2.0,
        "tau_decr": 2.0,
        "problem": problem,
    }
    good = kit.evaluate({**base, "rho": 3.0})
    too_small = kit.evaluate({**base, "rho": 1e-3})
    too_big = kit.evaluate({**base, "rho": 1e3})
    assert good["converged"] == 1.0 and good["iterations"] < 100
    assert good["log10_rel_subopt"] <= -6
    assert too_small["iterations"] > 10 * good["iterations"]
    assert too_big["iterations"] > 10 * good["iterations"]
    # over-relaxation helps at a good rho; residual balancing rescues a bad one
    plain = kit.evaluate({**base, "rho": 3.0, "alpha": 1.0})
    assert good["iterations"] < plain["iterations"]
    rescued = kit.evaluate({**base, "rho": 1e-3, "adaptive": "on"})
    assert rescued["iterations"] < too_small["iterations"] / 5


# ---- cloud simulator ------------------------------------------------------------------------------


def test_workload_matches_its_documentation():
    wl = cloud_mod.make_workload(0)
    assert 1000 < len(wl) < 1800
    assert np.all(np.diff(wl.arrival) >= 0) and wl.arrival[-1] < wl.horizon
    assert 5.0 < np.median(wl.duration) < 7.5
    assert set(np.unique(wl.cpu)) <= {1.0, 2.0, 4.0, 8.0}
    assert 0.15 < wl.high.mean() < 0.25
    assert cloud_mod.make_workload(0) is wl  # cached, read-only
    with pytest.raises(ValueError):
        wl.cpu[0] = 3.0


@pytest.mark.parametrize(
    "policy",
    [
        cloud_mod.Policy(),
        cloud_mod.Policy(
            backfill_depth=0, target_fill=0.0, max_machines=4, min_machines=10
        ),  # starved cluster
        cloud_mod.Policy(
            scale_up_threshold=0.4, scale_down_ratio=0.9, idle_minutes=0.0, cooldown_minutes=0.0
        ),
    ],
)
def test_simulator_conserves_jobs(policy):
    wl = cloud_mod.make_workload(2)
    r = cloud_mod.simulate(policy, wl, record=True)
    m = r.metrics
    assert m["jobs_arrived"] == len(wl)
    assert m["jobs_completed"] + m["jobs_unfinished"] == m["jobs_arrived"]
    assert np.all(r.wait >= -1e-9) and np.all(r.completion >= r.wait - 1e-9)
    assert 0 <= m["sla_violation_rate"] <= 1 and 0 < m["mean_utilization"] <= 1
    assert m["cost_overhead"] >= 0.99  # nothing beats a perfectly packed, never idle cluster
    assert m["peak_machines"] <= max(policy.max_machines, 1)
    if m["jobs_unfinished"] == 0:
        # every job ran at least its nominal duration
        assert np.all(r.completion >= wl.duration - 1e-9)


def test_starved_cluster_leaves_jobs_unfinished_and_counts_them():
    wl = cloud_mod.make_workload(0, load_scale=3.0)
    r = cloud_mod.simulate(cloud_mod.Policy(max_machines=2, min_machines=2), wl)
    m = r.metrics
    assert m["jobs_unfinished"] > 0
    assert m["jobs_completed"] + m["jobs_unfinished"] == m["jobs_arrived"] == len(wl)
    assert m["sla_violation_rate"] > 0.5


def test_autoscaling_responds_to_load():
    policy = cloud_mod.Policy(min_machines=1, max_machines=40)
    light = cloud_mod.simulate(policy, cloud_mod.make_workload(1, load_scale=0.5), record=True)
    heavy = cloud_mod.simulate(policy, cloud_mod.make_workload(1, load_scale=2.0), record=True)
    assert heavy.metrics["peak_machines"] > light.metrics["peak_machines"]
    assert heavy.metrics["cost_machine_hours"] > 2 * light.metrics["cost_machine_hours"]
    # within one run, the fleet tracks demand: more machines when demand is high
    t = np.array(heavy.timeline)
    machines, demand = t[:, 1], t[:, 2]
    assert np.corrcoef(machines[:-1], demand[:-1])[0, 1] > 0.5
    # and it scales back down after the arrivals stop
    assert machines[-1] < machines.max()


def test_cloud_policy_tradeoffs():
    wl = cloud_mod.make_workload(0)
    cheap = cloud_mod.simulate(cloud_mod.Policy(max_machines=8, min_machines=1), wl).metrics
    rich = cloud_mod.simulate(
        cloud_mod.Policy(max_machines=40, min_machines=10, scale_up_threshold=0.5), wl
    ).metrics
    assert rich["cost_machine_hours"] > cheap["cost_machine_hours"]
    assert rich["mean_completion_minutes"] < cheap["mean_completion_minutes"]
    strict = cloud_mod.simulate(cloud_mod.Policy(max_machines=8, priority_weight=0.1), wl).metrics
    favoured = cloud_mod.simulate(
        cloud_mod.Policy(max_machines=8, priority_weight=100.0), wl
    ).metrics
    assert favoured["high_priority_mean_wait_minutes"] < strict["high_priority_mean_wait_minutes"]


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_options_and_spec_conversion():
    from bbo.kits.cli import parse_options, spec_to_client_kwargs

    kit = KITS["hpo"]
    assert parse_options(kit, ["model=rf", "cv_folds=5", "max_train_seconds=2"]) == {
        "model": "rf",
        "cv_folds": 5,
        "max_train_seconds": 2.0,
    }
    with pytest.raises(SystemExit):
        parse_options(kit, ["colour=red"])
    with pytest.raises(
        SystemExit, match="cv_folds='1.5'.*must be int"
    ):  # was a ValueError traceback
        parse_options(kit, ["cv_folds=1.5"])
    kw = spec_to_client_kwargs(KITS["cloud"].spec())
    names = [p.name for p in kw["parameters"]]
    assert names == [p.name for p in KITS["cloud"].spec().space.params]
    assert [c.metric for c in kw["constraints"]] == ["sla_violation_rate", "cost_overhead"]


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_cli_refuses_an_eval_seed_every_trial_would_fail_with(seed, capsys):
    """``--eval-seed -1`` created the study and then failed every trial ("expected non-negative
    integer", scikit-learn's random_state range): argparse refuses it, naming the flag, before
    any server is contacted."""
    from bbo.kits.cli import kit_main

    with pytest.raises(SystemExit) as e:
        kit_main(["admm", "--server", "127.0.0.1:1", "--eval-seed", seed])
    assert e.value.code == 2
    assert "--eval-seed: must be >= 0 and <= 4294967295" in capsys.readouterr().err


def test_cli_list_runs():
    from bbo.kits.cli import kit_main

    assert kit_main(["list"]) == 0


# ---- end to end through a real server --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("bbo_server")
    from bbo_server.process import ServerProcess

    d = tmp_path_factory.mktemp("kits-server")
    proc = ServerProcess(f"sqlite:///{d}/bbo.db", log_path=str(d / "server.log"))
    proc.start()
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    "name,opts,entry",
    [
        ("hpo", ["-o", "model=knn", "-o", "dataset=iris"], ["-m", "bbo.kits.cli"]),
        ("admm", [], ["-m", "bbo_server", "kit"]),  # through the `bbo` command's dispatcher
        ("cloud", [], ["-m", "bbo.kits.cli"]),
    ],
)
def test_kit_study_end_to_end(server, name, opts, entry):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        *entry,
        name,
        "--server",
        server.address,
        "--trials",
        "6",
        "--workers",
        "2",
        "--seed",
        "0",
        "--quiet",
        "--study",
        f"e2e-{name}",
        *opts,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 of 6 trials completed, 0 failed" in r.stdout, r.stdout + r.stderr
    import bbo_client as bc

    with bc.Client(server.address) as c:
        trials = c.study(f"e2e-{name}").trials()
    assert len(trials) == 6 and all(t.state == "COMPLETED" for t in trials)
    spec = KITS[name].spec()
    assert all(set(spec.all_metrics) <= set(t.metrics) for t in trials)


def test_kit_epoch_model_study_end_to_end(server):
    """``bbo kit hpo -o model=sgd_mlp``: a multi-fidelity study whose trials report every epoch and
    end COMPLETED at the full budget or PRUNED."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bbo.kits.cli", "hpo", "--server", server.address]
    cmd += ["--trials", "8", "--seed", "0", "--quiet", "--study", "e2e-sgd"]
    cmd += ["-o", "model=sgd_mlp", "-o", "dataset=iris", "-o", "max_epochs=9"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    import bbo_client as bc

    with bc.Client(server.address) as c:
        trials = c.study("e2e-sgd").trials()
    assert len(trials) == 8 and {t.state for t in trials} <= {"COMPLETED", "PRUNED"}
    assert any(t.state == "COMPLETED" and t.budget == 9 for t in trials)
    done = sum(t.state == "COMPLETED" for t in trials)
    assert f"{done} of 8 trials completed, 0 failed" in r.stdout


def _kit(server, study: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bbo.kits.cli", "hpo", "--server", server.address, "--quiet"]
    cmd += ["--seed", "0", "--study", study, "-o", "model=knn", "-o", "dataset=iris", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_kit_transfer_from_another_part_of_the_data(server):
    """The re-tuning use: ``bbo kit --transfer`` on new rows of a data set learns from the study
    of other rows, named or picked by ``auto``, and prints the sources it used."""
    import bbo_client as bc

    _kit(server, "e2e-part1", "--trials", "6", "-o", "part=1/2")
    named = _kit(server, "e2e-part2", "--trials", "3", "-o", "part=2/2", "--transfer", "e2e-part1")
    assert "transfer: source e2e-part1 (named, used)" in named.stdout, named.stdout
    auto = _kit(server, "e2e-part2-auto", "--trials", "3", "-o", "part=2/2", "--transfer", "auto")
    assert "transfer: source e2e-part1 (auto, relatedness" in auto.stdout, auto.stdout
    with bc.Client(server.address) as c:
        for name in ("e2e-part2", "e2e-part2-auto"):
            first = c.study(name).trials()[0]
            assert first.origin == "transfer_warmstart", (name, first)
        source = c.study("e2e-part1").info().transfer
        assert source is None or not source.sources  # a source is read, never made a target


def test_kit_transfer_needs_a_source():
    from bbo.kits.cli import parse_transfer

    assert parse_transfer("auto").auto and not parse_transfer("auto").sources
    t = parse_transfer(" a , auto,b ")
    assert t.auto and tuple(t.sources) == ("a", "b")
    with pytest.raises(SystemExit, match="--transfer needs"):
        parse_transfer(" , ")
