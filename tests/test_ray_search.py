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


class _Tune:
    """What Tune's controller does around a real scheduler and the searcher, for stub trials and
    in Tune's order: the trial's ``done`` (or a stopper) is asked first, then the scheduler; the
    searcher sees only results not stopped on; a PAUSED trial stopped is completed without one."""

    def __init__(self, scheduler, search):
        from ray.tune.experiment import Trial

        self.scheduler, self.search, self.last, self.Trial = scheduler, search, {}, Trial

    def add(self, tid):
        self.search.suggest(tid)
        trial = self.Trial("__fake", stub=True, trial_id=tid)
        self.scheduler.on_trial_add(self, trial)
        trial.set_status(self.Trial.RUNNING)
        return trial

    def report(self, trial, it, loss, done=False):
        """One result; ``done``: the trainable said so (or returned), or a stopper stops it."""
        result = {"loss": loss, "training_iteration": it}
        decision = "STOP" if done else self.scheduler.on_trial_result(self, trial, result)
        self.last[trial.trial_id] = {**result, "done": decision == "STOP"}
        if decision == "STOP":
            self.stop_trial(trial)
        else:
            self.search.on_trial_result(trial.trial_id, result)
        if decision == "PAUSE":
            trial.set_status(self.Trial.PAUSED)
        return decision

    def stop_trial(self, trial):  # as TuneController.stop_trial
        if trial.status == self.Trial.PAUSED:
            self.scheduler.on_trial_remove(self, trial)
            self.search.on_trial_complete(trial.trial_id)
        else:
            self.scheduler.on_trial_complete(self, trial, self.last[trial.trial_id])
            self.search.on_trial_complete(trial.trial_id, self.last[trial.trial_id])
        trial.set_status(self.Trial.TERMINATED)


def _told(client, study_name):
    return [(t.state, t.metrics.get("loss")) for t in client.study(study_name).trials()]


def test_trials_hyperband_stops_while_paused_are_told_their_last_result(
    bbo_server, client, study_name
):
    """HyperBandScheduler pauses trials and later stops them itself: Tune then completes them
    with no result, so the last one seen is told; below max_t PRUNED, at it COMPLETED."""
    from ray.tune.schedulers import HyperBandScheduler

    hb = HyperBandScheduler(max_t=3, metric="loss", mode="min")
    s = BboSearch(bbo_server.address, study_name=study_name, scheduler=hb)
    s.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)})
    tune_ = _Tune(hb, s)
    full_a, full_b, bad, good, worst = [tune_.add(f"t{i}") for i in range(5)]  # 2 brackets
    assert [tune_.report(t, 1, v) for t, v in zip((bad, good), (0.7, 0.6))] == ["PAUSE"] * 2
    tune_.search = pickle.loads(pickle.dumps(s))  # Tune may save the searcher while paused
    assert tune_.report(worst, 1, 0.8) == "STOP"  # halving: bad, paused, is stopped too
    for it in (1, 2):
        tune_.report(full_a, it, 0.5), tune_.report(full_b, it, 0.9)
    assert (tune_.report(full_a, 3, 0.45), tune_.report(full_b, 3, 0.85)) == ("PAUSE", "STOP")
    assert bad.status == worst.status == full_a.status == "TERMINATED"
    tune_.search.close()  # good is left paused
    assert _told(client, study_name) == [
        ("COMPLETED", 0.45),  # stopped while paused at max_t
        ("COMPLETED", 0.85),
        ("PRUNED", 0.7),  # stopped while paused at the first rung
        ("ABANDONED", None),
        ("PRUNED", 0.8),
    ]
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


def test_only_the_schedulers_own_early_stops_are_told_pruned(bbo_server, client, study_name):
    """Tune stops a trial on a result it does not show the searcher whoever decides: a trial ASHA
    stops below its max_t is PRUNED, never the study's best; one it stops at max_t, one whose
    trainable said done (or a stopper stopped) and one whose trainable returned are COMPLETED.
    The scheduler and the searcher, pickled apart (Tuner.restore), still agree."""
    from ray import cloudpickle
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(max_t=4, grace_period=1, reduction_factor=2, metric="loss", mode="min")
    s = BboSearch(bbo_server.address, study_name=study_name, scheduler=asha)
    s.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)})
    tune_ = _Tune(asha, s)
    full = tune_.add("max_t")
    assert [tune_.report(full, it, v) for it, v in enumerate((0.5, 0.4, 0.3, 0.1), 1)][-1] == "STOP"
    assert tune_.report(tune_.add("rung"), 1, 0.9) == "STOP"  # below the rung's cutoff
    done = tune_.add("done")
    tune_.report(done, 1, 0.45), tune_.report(done, 2, 0.35, done=True)
    returned = tune_.add("returned")
    tune_.report(returned, 1, 0.4), tune_.report(returned, 2, 0.3)
    tune_.report(returned, 2, 0.3, done=True)  # Tune repeats the last result, done
    tune_ = _Tune(cloudpickle.loads(cloudpickle.dumps(asha)), pickle.loads(pickle.dumps(s)))
    assert tune_.report(tune_.add("late"), 1, 0.95) == "STOP"
    assert _told(client, study_name) == [
        ("COMPLETED", 0.1),
        ("PRUNED", 0.9),
        ("COMPLETED", 0.35),
        ("COMPLETED", 0.3),
        ("PRUNED", 0.95),
    ]
    trials = client.study(study_name).trials()
    assert trials[1].reason == "stopped early by the Ray Tune scheduler at training_iteration=1"
    # GetBest names a trial that ran to its end (which one is the model's pick: noise is "auto")
    assert [t.state for t in client.study(study_name).best().trials] == ["COMPLETED"]
    tune_.search.client.close()
    s.client.close()


def test_the_full_budget_is_read_through_a_resource_changing_scheduler():
    """A ResourceChangingScheduler stops trials by the scheduler it wraps: its max_t is that one's
    (before, none was found, and its stops at max_t were told PRUNED)."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, ResourceChangingScheduler

    from bbo_client.ray import _full_budget

    asha = ASHAScheduler(max_t=9, time_attr="epoch", metric="loss", mode="min")
    assert _full_budget(ResourceChangingScheduler(base_scheduler=asha)) == ("epoch", 9.0)
    assert _full_budget(asha) == ("epoch", 9.0)
    assert _full_budget(ResourceChangingScheduler(base_scheduler=MedianStoppingRule())) is None


def test_a_scheduler_that_never_stops_early_leaves_every_trial_completed(
    bbo_server, client, study_name
):
    """FIFOScheduler (as PopulationBasedTraining) never answers STOP: a trial that ends by its
    own done or a stopper is COMPLETED; with no scheduler given, every trial is."""
    from ray.tune.schedulers import FIFOScheduler

    for i, scheduler in enumerate((FIFOScheduler(), None)):
        s = BboSearch(bbo_server.address, study_name=f"{study_name}-{i}", scheduler=scheduler)
        s.set_search_properties("loss", "min", {"x": tune.uniform(0, 1)})
        tune_ = _Tune(scheduler or FIFOScheduler(), s)
        trial = tune_.add("done")
        tune_.report(trial, 1, 0.5), tune_.report(trial, 2, 0.4, done=True)
        assert _told(client, f"{study_name}-{i}") == [("COMPLETED", 0.4)]
        s.client.close()


def test_asha_in_a_tuner_run(ray_session, bbo_server, client, study_name, tmp_path):
    """A real run under ASHA: bbo's trials are PRUNED where ASHA stopped them below max_t; the
    trial a stopper ends early is COMPLETED (Tune shows the searcher neither's last result)."""
    from ray.tune.schedulers import ASHAScheduler

    def trainable(config):
        for i in range(1, 10):
            tune.report({"loss": config["x"] + 1.0 / i})

    first: list[str] = []

    def stopper(trial_id, result):  # ends the first trial to report (ASHA continues it) at 2
        first[:] = first or [trial_id]
        return trial_id == first[0] and result["training_iteration"] == 2

    asha = ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    search = BboSearch(bbo_server.address, study_name=study_name, scheduler=asha, n_initial=6)
    results = tune.Tuner(
        trainable,
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            search_alg=search, scheduler=asha, metric="loss", mode="min", num_samples=6
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0, stop=stopper),
    ).fit()
    tune_says = sorted(
        (r.config["x"], r.metrics["training_iteration"], r.metrics["trial_id"]) for r in results
    )
    trials = sorted(client.study(study_name).trials(), key=lambda t: t.params["x"])
    assert [t.params["x"] for t in trials] == [x for x, _, _ in tune_says]
    assert [t.state for t in trials] == [
        "COMPLETED" if it == 9 or tid == first[0] else "PRUNED" for _, it, tid in tune_says
    ], tune_says
    assert [it for _, it, tid in tune_says if tid == first[0]] == [2], tune_says
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
