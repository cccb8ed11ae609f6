"""bbo_client.ray.BboSearch: an unchanged ``tune.Tuner`` run asks a real bbo server for its configs
and tells it every result (an errored trial as FAILED); Tune's search domains map to bbo's."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

ray = pytest.importorskip(
    "ray",
    reason="Ray Tune is in the dev extra that `make setup` installs: pip install 'ray[tune]==2.60.0'",
)
tune = pytest.importorskip("ray.tune")

import bbo_client as bc
from bbo_client.ray import BboSearch, convert_search_space


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's real Tuner runs: a start takes ~10 s on 2 cores, and Ray
    gives its raylet 30 s to register, which a loaded machine has missed."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_tuner_asks_bbo_and_tells_it_every_result(
    ray_session, bbo_server, client, study_name, tmp_path
):
    marker = tmp_path / "failed-once"

    def trainable(config):  # a Tune function trainable, as in Tune's examples
        if not marker.exists():  # the first trial to run errors
            marker.touch()
            raise RuntimeError("CUDA out of memory")
        loss = (config["x"] - 2) ** 2 + config["model"]["layers"] + (config["opt"] != "adam")
        tune.report({"loss": loss, "const": config["const"]})

    search = BboSearch(bbo_server.address, study_name=study_name, n_initial=8)
    tuner = tune.Tuner(
        trainable,
        param_space={
            "x": tune.uniform(-5, 5),
            "model": {"layers": tune.randint(1, 4)},
            "opt": tune.choice(["adam", "sgd"]),
            "const": 7,
        },
        tune_config=tune.TuneConfig(
            search_alg=search, metric="loss", mode="min", num_samples=4, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
    )
    results = tuner.fit()

    info = client.get_study(study_name)
    assert {p.name: p for p in info.parameters} == {
        "x": bc.Float("x", -5, 5),
        "model.layers": bc.Int("model.layers", 1, 3),
        "opt": bc.Categorical("opt", ("adam", "sgd")),
    }
    trials = client.study(study_name).trials()
    assert sorted(t.state for t in trials) == ["COMPLETED"] * 3 + ["FAILED"]
    (failed,) = [t for t in trials if t.state == "FAILED"]
    assert "raised an error" in failed.reason
    done = sorted((t for t in trials if t.state == "COMPLETED"), key=lambda t: t.metrics["loss"])
    ok = sorted((r for r in results if r.error is None), key=lambda r: r.metrics["loss"])
    assert len(ok) == 3 and len(results.errors) == 1
    for r, t in zip(ok, done):
        assert r.config["x"] == t.params["x"] and r.config["const"] == 7
        assert r.config["model"]["layers"] == t.params["model.layers"]
        assert r.metrics["loss"] == pytest.approx(t.metrics["loss"])


def test_tune_domains_map_to_bbo_parameters_and_back():
    params = convert_search_space(
        {
            "lr": tune.loguniform(1e-4, 1e-1),
            "n": tune.lograndint(1, 64),
            "q": tune.quniform(0, 1, 0.25),
            "k": tune.qrandint(0, 20, 5),
            "c": tune.choice([1, "1", None]),
            "nested": {"deep": {"w": tune.uniform(-1, 1)}},
            "fixed": 3,
            "same": tune.uniform(0.5, 0.5),
        }
    )
    by = {p.path: p for p in params}
    assert by["lr"].parameter == bc.Float("lr", 1e-4, 1e-1, log=True)
    assert by["n"].parameter == bc.Int("n", 1, 63, log=True), "lograndint's upper is exclusive"
    assert by["q"].parameter == bc.Ordinal("q", [0.0, 0.25, 0.5, 0.75, 1.0])
    assert by["k"].parameter == bc.Ordinal("k", [0, 5, 10, 15, 20]), "qrandint's is inclusive"
    assert by["c"].parameter == bc.Categorical("c", ["0:1", "1:1", "2:None"])
    assert by["nested/deep/w"].parameter.name == "nested.deep.w"
    assert "fixed" not in by, "constants stay Tune's"
    assert by["same"].parameter == bc.Fixed("same", 0.5) and by["same"].decode(0.5) == 0.5
    assert by["c"].decode("1:1") == "1" and by["c"].decode("2:None") is None
    assert by["k"].decode(15) == 15 and isinstance(by["k"].decode(15.0), int)
    for p in params:
        p.parameter.to_pb()  # valid messages


@pytest.mark.parametrize(
    "space, field",
    [
        ({"x": tune.grid_search([1, 2])}, "param_space"),
        ({"a": {"x": tune.randn(0, 1)}}, "param_space['a/x']"),
        ({"x": tune.sample_from(lambda _: 1)}, "param_space['x']"),
        ({"o": {"c": tune.choice([{"lr": tune.uniform(0, 1)}, 1])}}, "param_space['o/c']"),
        ({"c": tune.choice([1, [2, tune.randint(0, 3)]])}, "param_space['c']"),
    ],
)
def test_unsupported_domains_are_refused_naming_the_parameter(space, field):
    with pytest.raises(bc.InvalidArgument) as e:
        convert_search_space(space)
    assert e.value.field == field


def test_searcher_pickles_without_its_connection(bbo_server, study_name):
    s = BboSearch(bbo_server.address, space={"x": tune.uniform(0, 1)}, metric="y", mode="max")
    s._study_name = study_name
    config = s.suggest("t1")
    assert 0 <= config["x"] <= 1
    s.on_trial_result("t1", {"y": 0.5, "training_iteration": 1})
    again = pickle.loads(pickle.dumps(s))  # Tune pickles searchers into its experiment state
    again.on_trial_complete("t1", {"y": 0.5, "training_iteration": 1})  # the trainable returned
    (t,) = again.client.study(study_name).trials()
    assert t.state == "COMPLETED" and t.metrics == {"y": 0.5}
    again.client.close()
    s.client.close()


def test_a_list_in_the_param_space_comes_back_a_list(bbo_server, study_name):
    from ray.tune.utils.util import merge_dicts

    space = {
        "layers": [tune.uniform(0, 1), 5, {"units": tune.randint(1, 4)}],
        "opt": {"betas": [0.9, tune.uniform(0.9, 1)], "name": "adam"},
        "x": tune.uniform(0, 1),
    }
    s = BboSearch(bbo_server.address, metric="y", mode="min")
    s._study_name = study_name
    assert s.set_search_properties(None, None, space)
    for again in (s, pickle.loads(pickle.dumps(s))):  # as Tune restores it
        config = merge_dicts(space, again.suggest("t1"))  # what Tune hands the trainable
        layers, betas = config["layers"], config["opt"]["betas"]
        assert isinstance(layers, list) and isinstance(betas, list), config
        assert 0 <= layers[0] <= 1 and layers[1] == 5 and layers[2]["units"] in (1, 2, 3)
        assert betas[0] == 0.9 and 0.9 <= betas[1] <= 1 and config["opt"]["name"] == "adam"
        assert 0 <= config["x"] <= 1
        assert space["layers"][1] == 5 and isinstance(space["layers"][0], tune.search.sample.Float)
    s.client.close()


def _relu(x):
    return max(x, 0.0)


def test_choice_labels_are_the_same_in_every_process():
    """A choice of functions or objects is labelled without the memory address in their repr, so
    a second Tuner process sharing the study builds the very same spec."""
    script = f"import sys; sys.path[:0] = {sys.path!r}\n" + (
        "from ray import tune\n"
        "from bbo_client.ray import convert_search_space\n"
        "def relu(x): return x\n"
        "class Net: pass\n"
        "choices = [relu, Net(), lambda x: x, lambda x: 1]\n"
        "(p,) = convert_search_space({'f': tune.choice(choices)})\n"
        "print(list(p.parameter.choices))\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout and "0x" not in runs[0].stdout, runs[0].stdout
    (p,) = convert_search_space({"f": tune.choice([_relu, len])})
    assert list(p.parameter.choices) == ["<function _relu>", "<built-in function len>"]
    assert p.decode("<function _relu>") is _relu


def test_options_create_study_would_refuse_are_refused_when_made():
    """Another searcher's option (``points_to_evaluate``) or a typo fails at once, not at the
    first suggest deep inside Tuner.fit()."""
    for bad in ({"points_to_evaluate": [{"x": 0.5}]}, {"n_intial": 4}):
        with pytest.raises(TypeError, match=next(iter(bad))):
            BboSearch("127.0.0.1:1", space={"x": tune.uniform(0, 1)}, **bad)
    BboSearch("127.0.0.1:1", n_initial=4, seed=1, tracked_metrics=["t"])


def test_the_tuneconfig_metric_and_mode_win_over_the_searchers(bbo_server, client, study_name):
    """As for Ray's own searchers: BboSearch's metric / mode are for a TuneConfig without them."""
    s = BboSearch(bbo_server.address, study_name=study_name, metric="loss", mode="min")
    assert s.set_search_properties("acc", "max", {"x": tune.uniform(0, 1)})
    s.suggest("t1")
    (o,) = client.get_study(study_name).objectives
    assert (o.name, o.goal) == ("acc", "maximize")
    kept = BboSearch(bbo_server.address, metric="loss", mode="min")
    kept.set_search_properties(None, None, {"x": tune.uniform(0, 1)})
    assert (kept.metric, kept.mode) == ("loss", "min")
    s.client.close()


def test_a_trial_stopped_while_paused_is_told_its_last_result(bbo_server, client, study_name):
    """HyperBandScheduler pauses trials and later stops them: Tune then calls on_trial_complete
    with no result, so the last one seen by on_trial_result is told; below the scheduler's max_t
    the trial was stopped early (PRUNED), at it the trial ran in full (COMPLETED)."""
    from ray.tune.schedulers import HyperBandScheduler

    hb = HyperBandScheduler(max_t=3)
    s = BboSearch(
        bbo_server.address, study_name=study_name, metric="loss", mode="min", scheduler=hb
    )
    s.set_search_properties(None, None, {"x": tune.uniform(0, 1)})
    for tid, it in (("bad", 2), ("full", 3)):
        s.suggest(tid)
        s.on_trial_result(tid, {"loss": 0.75, "training_iteration": it})
    s = pickle.loads(pickle.dumps(s))  # Tune may checkpoint the searcher while the trial is paused
    for tid in ("bad", "full"):
        s.on_trial_complete(tid)  # as TuneController.stop_trial does for a PAUSED trial
    bad, full = client.study(study_name).trials()
    assert (bad.state, bad.metrics) == ("PRUNED", {"loss": 0.75}), bad.reason
    assert (full.state, full.metrics) == ("COMPLETED", {"loss": 0.75}), full.reason
    s.client.close()


def test_an_errored_trial_rerun_after_a_restore_is_told(bbo_server, client, study_name):
    """Tuner.restore(restart_errored=True) reruns an errored trial, whose bbo trial was told FAILED,
    as a new Tune trial of the same config: its result joins the study as a trial of that point."""
    from ray.tune.utils.util import flatten_dict

    space = {"x": tune.uniform(0, 1), "o": {"c": tune.choice(["a", "b"]), "k": 3}}
    s = BboSearch(bbo_server.address, study_name=study_name, metric="loss", mode="min")
    s.set_search_properties(None, None, space)
    config = s.suggest("t1")
    s.on_trial_complete("t1", error=True)
    s = pickle.loads(pickle.dumps(s))  # the searcher as Tuner.restore brings it back
    other = flatten_dict({"config": {"x": -1.0, "o": {"c": "a", "k": 3}}, "loss": 9.0})
    s.on_trial_complete("t2", other)  # not the errored trial's config: nothing to tell
    rerun = {"config": {**config, "o": {**config["o"], "k": 3}}, "loss": 0.25}
    s.on_trial_complete("t3", flatten_dict(rerun))  # Tune hands searchers flattened results
    failed, again = client.study(study_name).trials()
    assert failed.state == "FAILED" and again.state == "COMPLETED"
    assert again.params == failed.params and again.metrics == {"loss": 0.25}
    s.client.close()


@pytest.mark.parametrize(
    "option", [{"pruning": bc.Pruning("asha")}, {"fidelity": bc.Fidelity("epochs", 1, 27)}]
)
def test_bbo_early_stopping_options_are_refused(option):
    """A Tune searcher cannot stop, pause or resume trials nor hand them budgets: with bbo's
    pruning / fidelity, Tune ran promoted points again from scratch and bbo's pruning never
    acted, so they are refused for Tune's schedulers."""
    with pytest.raises(TypeError, match="scheduler"):
        BboSearch("127.0.0.1:1", space={"x": tune.uniform(0, 1)}, **option)


def test_a_trial_a_scheduler_stops_early_is_told_pruned(bbo_server, client, study_name):
    """Tune shows a searcher every result but the one a stop decision was made on: a trial ASHA
    stops below its max_t is PRUNED, never the study's best; one that
    reached max_t, met the run's stop criteria, or whose trainable returned is COMPLETED."""
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(max_t=4)
    s = BboSearch(bbo_server.address, study_name=study_name, scheduler=asha)
    s.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)}, stop={"acc": 0.9})

    def run(tid, losses, final=None, **extra):
        s.suggest(tid)
        for i, loss in enumerate(losses, 1):
            s.on_trial_result(tid, {"loss": loss, "training_iteration": i})
        s.on_trial_complete(
            tid, final and {"training_iteration": final[0], "loss": final[1], **extra}
        )

    run("rung", [0.5], (2, 0.1))  # ASHA's stop at a rung: that result was never shown
    run("max_t", [0.5, 0.4, 0.3], (4, 0.25))  # ASHA's stop at max_t
    run("returned", [0.5, 0.3], (2, 0.3))  # the trainable returned: its last result repeated
    run("stop", [0.5], (2, 0.35), acc=0.95)  # RunConfig(stop={"acc": 0.9}) met
    trials = client.study(study_name).trials()
    assert [(t.state, t.metrics["loss"]) for t in trials] == [
        ("PRUNED", 0.1),
        ("COMPLETED", 0.25),
        ("COMPLETED", 0.3),
        ("COMPLETED", 0.35),
    ]
    assert [t.id for t in client.study(study_name).best().trials] == [trials[1].id]
    s.client.close()

    # without the scheduler a stop at max_t reads like an early one: every stop is COMPLETED
    plain = BboSearch(bbo_server.address, study_name=study_name + "-plain")
    plain.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)})
    plain.suggest("rung")
    plain.on_trial_result("rung", {"loss": 0.5, "training_iteration": 1})
    plain.on_trial_complete("rung", {"loss": 0.1, "training_iteration": 2})
    (t,) = client.study(study_name + "-plain").trials()
    assert (t.state, t.metrics["loss"]) == ("COMPLETED", 0.1)
    plain.client.close()


def test_asha_in_a_tuner_run(ray_session, bbo_server, client, study_name, tmp_path):
    """A real run under ASHA: bbo's trials are PRUNED where Tune stopped them below max_t."""
    from ray.tune.schedulers import ASHAScheduler

    def trainable(config):
        for i in range(1, 10):
            tune.report({"loss": config["x"] + 1.0 / i})

    asha = ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    search = BboSearch(bbo_server.address, study_name=study_name, scheduler=asha, n_initial=6)
    results = tune.Tuner(
        trainable,
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            search_alg=search, scheduler=asha, metric="loss", mode="min", num_samples=6
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
    ).fit()
    tune_says = sorted((r.config["x"], r.metrics["training_iteration"]) for r in results)
    trials = sorted(client.study(study_name).trials(), key=lambda t: t.params["x"])
    assert [t.params["x"] for t in trials] == [x for x, _ in tune_says]
    assert [t.state for t in trials] == [
        "COMPLETED" if it == 9 else "PRUNED" for _, it in tune_says
    ], tune_says
    assert "PRUNED" in {t.state for t in trials}, tune_says


def test_leases_are_renewed_while_tune_runs_a_trial(server_factory, study_name):
    """A trial running past its lease stays PENDING (renewed in the background), and is told."""
    import threading
    import time
    from datetime import timedelta

    srv = server_factory(args=["--workers", "1", "--lease-reap-seconds", "0.1"])
    s = BboSearch(srv.address, study_name=study_name, metric="y", mode="min", lease_seconds=5)
    s.set_search_properties(None, None, {"x": tune.uniform(0, 1)})
    s.suggest("t1")
    study = s.client.study(study_name)
    (t,) = study.trials()
    for _ in range(200):  # until its lease, renewed, ends well past where it first did
        cur = study.trial(t.id)
        if cur.state != "PENDING" or cur.lease_expires - t.lease_expires > timedelta(seconds=6):
            break
        time.sleep(0.2)
    assert (cur.state, cur.reason) == ("PENDING", "")
    s.on_trial_result("t1", {"y": 0.5, "training_iteration": 1})
    s.on_trial_complete("t1", {"y": 0.5, "training_iteration": 1})  # the trainable returned
    assert study.trial(t.id).state == "COMPLETED"
    renewals = [th for th in threading.enumerate() if th.name == f"bbo-lease-{study_name}-{t.id}"]
    for th in renewals:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in renewals)  # renewing stopped
    s.client.close()


def test_a_restore_abandons_trials_asked_after_the_searchers_save(
    bbo_server, client, study_name, tmp_path
):
    """Tuner.restore brings back the searcher's last save: a trial asked after it is not rerun by
    Tune, so it is ABANDONED; a trial it tracks is told as Tune reruns it. close() (at exit)
    abandons the trials Tune never told (a run that ended early)."""
    s = BboSearch(bbo_server.address, study_name=study_name, metric="y", mode="min")
    s.set_search_properties(None, None, {"x": tune.uniform(0, 1)})
    s.suggest("kept")
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("lost")  # asked after the save, then the driver died
    again = BboSearch(bbo_server.address)  # as the script calling Tuner.restore makes it
    again.restore(str(tmp_path / "searcher.pkl"))
    assert [t.state for t in client.study(study_name).trials()] == ["PENDING", "ABANDONED"]
    again.on_trial_result("kept", {"y": 0.5, "training_iteration": 1})  # Tune resumed it
    again.on_trial_complete("kept", {"y": 0.5, "training_iteration": 1})
    again.suggest("unfinished")
    again.close()
    kept, lost, unfinished = client.study(study_name).trials()
    assert (kept.state, lost.state, unfinished.state) == ("COMPLETED", "ABANDONED", "ABANDONED")
    s.client.close()
    again.client.close()
