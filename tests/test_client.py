"""The Python client: builders, optimize() with failing objectives, typed errors, retries."""

from __future__ import annotations

import math
import re
import socket
import sys
import threading
import time

import pytest

import bbo_client as bc


def test_optimize_records_failures_and_finds_the_best(client, study_name):
    s = client.create_study(
        study_name, parameters=[bc.Float("x", -2, 2), bc.Int("n", 0, 3)], objectives="loss", seed=1
    )
    calls = []
    lock = threading.Lock()

    def fn(p):
        with lock:
            calls.append(p)
            k = len(calls)
        if k % 5 == 0:
            raise ValueError("diverged")
        if k % 7 == 0:
            return {"loss": math.nan}
        return (p["x"] - 0.5) ** 2 + p["n"]  # a bare number for a single objective

    best = s.optimize(fn, n_trials=14, n_workers=3, progress=False)
    trials = s.trials()
    assert len(trials) == 14 == len(calls)
    failed = [t for t in trials if t.state == "FAILED"]
    assert sorted(t.reason for t in failed) == sorted(
        ["ValueError: diverged"] * 2 + ["metric(s) not finite numbers: loss=nan"] * 2
    )
    done = [t for t in trials if t.state == "COMPLETED"]
    assert len(done) == 10
    assert best.trial.metrics["loss"] == min(t.metrics["loss"] for t in done)
    assert not s.trials(["PENDING"])
    assert {t.worker_id.rsplit("-", 1)[1] for t in trials} <= {"0", "1", "2"}


def test_a_trial_objective_returning_nothing_is_pruned_only_after_reporting(client, study_name):
    """fn(params, trial) returning None after trial.report(...) stopped early: PRUNED with its last
    value. Returning None with nothing reported is a forgotten return: FAILED naming the missing
    objective, as for fn(params) (before: PRUNED "stopped by the objective" with no values, and
    optimize returned an empty best without a word)."""
    s = client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="loss")

    def fn(p, trial):
        if trial.trial.id % 2 == 0:
            trial.report(1, p["x"])
        loss = p["x"]  # noqa: F841 (the forgotten return)

    s.optimize(fn, n_trials=4, progress=False)
    trials = s.trials()
    assert [t.state for t in trials] == ["FAILED", "PRUNED"] * 2
    assert all("missing metric(s) ['loss']" in t.reason for t in trials[::2])
    assert all(t.metrics == {"loss": t.params["x"]} for t in trials[1::2])


def test_a_report_at_a_fractional_step_is_refused_by_name(client, study_name):
    """trial.report(1.5, v) failed its trial with protobuf's "'float' object cannot be
    interpreted as an integer": a step is now checked, whole floats and numpy ints accepted."""
    import numpy as np

    s = client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="loss")
    (t,) = s.ask(1)
    with pytest.raises(bc.InvalidArgument, match="step.*whole number.*1.5"):
        s.report(t, 1.5, 0.3)
    assert not s.report(t, 2.0, 0.3).should_stop
    assert not s.report(t, np.int64(3), 0.2).should_stop


def test_an_objective_that_exits_ends_optimize_with_its_trial_failed(client, study_name):
    """sys.exit() inside the objective (a BaseException, not an Exception) ends the loop as it
    asks, but its trial is told FAILED first, not left PENDING until its lease runs out."""
    s = client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="loss")
    calls = []

    def fn(p):
        calls.append(p)
        if len(calls) == 3:
            sys.exit(3)
        return p["x"]

    with pytest.raises(SystemExit):
        s.optimize(fn, n_trials=6, progress=False)
    trials = s.trials()
    assert len(trials) == 3 and not s.trials(["PENDING"])
    assert [t.state for t in trials] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert trials[2].reason == "interrupted: SystemExit: 3"


def test_a_study_deleted_under_optimize_ends_it_without_a_retry_hint(client, study_name):
    """A result that cannot be told because the study is gone raises NotFound naming the trial;
    it does not suggest telling it again (nothing can take it)."""
    s = client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="loss")

    def fn(p):
        if len(s.trials()) == 2:
            client.delete_study(study_name)
        return p["x"]

    with pytest.raises(bc.NotFound) as e:
        s.optimize(fn, n_trials=4, progress=False)
    assert "trial 2 of" in str(e.value) and "nothing is left to tell it to" in str(e.value)
    assert "tell it again" not in str(e.value)


def test_optimize_progress_bar_shows_the_studys_best(client, study_name, capsys, monkeypatch):
    """The bar names GetBest's trial with its value; under noise with the model's estimate."""
    from bbo_client import client as client_module

    monkeypatch.setattr(client_module, "BEST_EVERY", 0.0)
    s = client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="y", seed=1)
    best = s.optimize(lambda p: (p["x"] - 0.3) ** 2, n_trials=6, progress=True)
    err = capsys.readouterr().err
    assert f"best y={best.trial.metrics['y']:.6g} (trial {best.trial.id})" in err
    assert "model estimate" not in err  # noise-free: the best observed trial

    noisy = client.create_study(
        study_name + "-noisy",
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Minimize("y", noise="noisy")],
        seed=1,
    )
    rng = iter([0.01 * ((7 * k) % 11 - 5) for k in range(12)])
    best = noisy.optimize(lambda p: (p["x"] - 0.3) ** 2 + next(rng), n_trials=12, progress=True)
    err = capsys.readouterr().err
    assert best.estimate is not None and best.selection
    assert f"(trial {best.trial.id}), model estimate {best.estimate.value:.6g}" in err


def test_progress_note_counts_the_whole_front_not_the_part_sent():
    """A front cut to fit one GetBest response (best_count above the trials sent): the bar
    names the front's size, not the shown prefix's."""
    from bbo_client.client import _best_note
    from bbo_client.model import Best, Objective, Trial

    shown = [Trial(i, {"x": 0.5}, "COMPLETED", {"a": i, "b": -i}) for i in range(1, 4)]
    objectives = [Objective("a"), Objective("b", "maximize")]
    assert _best_note(Best(shown, count=25000), objectives) == "Pareto front: 25000 trials"
    assert _best_note(Best(shown), objectives) == "Pareto front: 3 trials"  # an older server


def test_optimize_multi_objective_needs_dicts(client, study_name):
    s = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Minimize("a"), bc.Maximize("b")],
    )
    best = s.optimize(lambda p: {"a": p["x"], "b": p["x"] ** 2}, n_trials=4, progress=False)
    assert best.trials and all(t.state == "COMPLETED" for t in s.trials())
    s2 = client.create_study(
        study_name + "-2",
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Minimize("a"), bc.Maximize("b")],
    )
    s2.optimize(
        lambda p: 1.0, n_trials=1, progress=False
    )  # a bare number is ambiguous: recorded as a failure
    (t,) = s2.trials()
    assert t.state == "FAILED" and "single-objective" in t.reason


def test_a_tuple_for_several_objectives_is_refused_naming_them(client, study_name):
    """An Optuna-style objective returning a tuple in a multi-objective study: the failure says
    what came back and which objectives the dict needs, not only that a number is ambiguous."""
    s = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Minimize("a"), bc.Maximize("b")],
    )
    s.optimize(lambda p: (p["x"], 1 - p["x"]), n_trials=1, progress=False)
    (t,) = s.trials()
    assert t.state == "FAILED"
    assert "got tuple (" in t.reason and "(a, b)" in t.reason, t.reason
    (t2,) = s.ask()
    with pytest.raises(bc.InvalidArgument, match=r"2 objectives \(a, b\), got list \[0\.1, 0\.2\]"):
        s.tell(t2, [0.1, 0.2])


def test_an_objectives_declared_noise_reaches_the_server_and_back(client, study_name):
    s = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Maximize("acc", noise="noisy")],
    )
    assert s.info().objectives == [bc.Objective("acc", "maximize", "noisy")]
    with pytest.raises(bc.InvalidArgument, match="noise must be one of"):
        client.create_study(
            study_name + "-2", parameters=[bc.Float("x", 0, 1)], objectives=[bc.Minimize("a", "hi")]
        )


def test_trial_fields_and_typed_values(client, study_name):
    s = client.create_study(
        study_name,
        parameters=[
            bc.Int("n", 1, 5),
            bc.Categorical("c", ["u", "v"]),
            bc.Ordinal("o", [1, 2, 4]),
            bc.Fixed("f", 3),
        ],
        objectives="y",
        description="typed",
    )
    (t,) = s.ask(worker_id="me")
    assert isinstance(t.params["n"], int) and t.params["c"] in ("u", "v") and t.params["f"] == 3
    assert t.params["o"] in (1, 2, 4) and isinstance(
        t.params["o"], int
    )  # whole-number ordinals come back as ints
    assert (
        t.worker_id == "me" and t.created is not None and t.lease_expires > t.created and t.origin
    )
    info = s.info()
    assert info.parameters == [
        bc.Int("n", 1, 5),
        bc.Categorical("c", ("u", "v")),
        bc.Ordinal("o", (1.0, 2.0, 4.0)),
        bc.Fixed("f", 3),
    ]
    assert info.description == "typed"
    r = client.create_study(
        study_name + "-r", parameters=[bc.Ordinal("rate", [0.5, 1, 2])], objectives="y"
    )
    (u,) = r.ask()
    assert isinstance(u.params["rate"], float) and u.params["rate"] in (0.5, 1.0, 2.0)
    r.tell(u, 1.0)
    assert r.add_trial({"rate": 2}, 0.5).params["rate"] == 2.0


def test_an_ordinal_refuses_a_whole_number_a_double_cannot_hold(client, study_name):
    """An ordinal of whole numbers took 2**53 + 1 for its value 2**53 (the same double) and stored
    2**53, a point the worker never ran."""
    s = client.create_study(study_name, [bc.Ordinal("o", [0, 2**53])], objectives="y")
    with pytest.raises(bc.InvalidArgument, match="not one of") as e:
        s.add_trial({"o": 2**53 + 1}, 1.0)
    assert e.value.field == "parameters['o']"
    t = s.add_trial({"o": 2**53}, 1.0)
    assert t.params == {"o": 2**53} and type(t.params["o"]) is int
    assert [u.params for u in s.trials()] == [{"o": 2**53}]


def test_tell_takes_numpy_scalars_and_a_missing_sem(client, study_name):
    np = pytest.importorskip("numpy")
    s = client.create_study(
        study_name,
        parameters=[bc.Float("x", 0, 1)],
        objectives=[bc.Minimize("a"), bc.Maximize("b")],
    )
    t1, t2, t3 = s.ask(3)
    s.tell(t1, {"a": np.float32(0.5), "b": np.int64(2)})
    s.tell(t2, {"a": (np.float64(0.25), None), "b": {"value": 1, "sem": np.float32(0.1)}})
    with pytest.raises(bc.InvalidArgument, match="must be a number"):
        s.tell(t3, {"a": "0.5", "b": 1.0})
    by = {t.id: t for t in s.trials()}
    assert by[t1.id].metrics == {"a": 0.5, "b": 2.0} and by[t2.id].metrics == {"a": 0.25, "b": 1.0}
    assert by[t3.id].state == "PENDING"  # the refused tell stored nothing


def test_builder_errors_are_caught_client_side(client, study_name):
    with pytest.raises(bc.InvalidArgument):
        client.create_study(
            study_name, parameters=[bc.Float("x", 0, 1)], objectives=[bc.Objective("y", "up")]
        )
    with pytest.raises(bc.InvalidArgument):
        client.create_study(
            study_name,
            parameters=[bc.Float("x", 0, 1)],
            objectives="y",
            constraints=[bc.Constraint("m", "<", 1)],
        )
    # a space's builders name the parameter and what to use instead (before: a TypeError or
    # ValueError from inside protobuf naming neither, and "sgd" searched as 's', 'g', 'd')
    for param, says in [
        (bc.Categorical("batch", [16, 32]), "Categorical 'batch' takes a list of strings"),
        (bc.Categorical("opt", "sgd"), "Categorical 'opt' takes a list of strings"),
        (bc.Ordinal("opt", ["adam", "sgd"]), "Ordinal 'opt' takes a list of numbers"),
        (bc.Int("n", 0.5, 3), "Int 'n' needs whole-number bounds, got low=0.5"),
    ]:
        with pytest.raises(bc.InvalidArgument, match=re.escape(says)):
            client.create_study(study_name, parameters=[param], objectives="y")
    assert not any(i.name == study_name for i in client.list_studies())
    (t,) = client.create_study(
        study_name, parameters=[bc.Int("n", 1e3, 1e4), bc.Ordinal("b", (16, 32))], objectives="y"
    ).ask()
    assert 1000 <= t.params["n"] <= 10000 and t.params["b"] in (16, 32)
    s = client.create_study(study_name + "-x", parameters=[bc.Float("x", 0, 1)], objectives="y")
    with pytest.raises(bc.InvalidArgument):
        s.trials(["DONE"])
    with pytest.raises(bc.InvalidArgument):
        s.tell(1, {"y": "high"})


def test_the_clients_own_refusals_name_fields_as_the_server_does(client, study_name):
    """A mistake the client catches before sending names its field in the server's form
    (``spec.objectives[0].goal``), as the same mistake the server catches does; a bool parameter
    value is InvalidArgument, not a TypeError."""
    x = [bc.Float("x", 0, 1)]
    server = {}
    with pytest.raises(bc.InvalidArgument) as e:  # caught by the server
        client.create_study(study_name, parameters=x + [bc.Int("n", 3, 1)], objectives="y")
    server["int"] = e.value.field
    cases = {
        "int": dict(parameters=x + [bc.Int("n", 0.5, 3)], objectives="y"),
        "goal": dict(parameters=x, objectives=[bc.Objective("y", "up")]),
        "op": dict(parameters=x, objectives="y", constraints=[bc.Constraint("m", "<", 1)]),
        "choices": dict(parameters=x + [bc.Categorical("c", [1, 2])], objectives="y"),
        "policy": dict(
            parameters=x,
            objectives="y",
            fidelity=bc.Fidelity("epochs", 1, 9),
            pruning=bc.Pruning("sometimes"),
        ),
        "fixed": dict(parameters=x + [bc.Fixed("f", True)], objectives="y"),
    }
    fields = {}
    for k, kw in cases.items():
        with pytest.raises(bc.InvalidArgument) as e:
            client.create_study(study_name, **kw)
        fields[k] = e.value.field
    assert server["int"] == "spec.parameters[1].high"
    assert fields == {
        "int": "spec.parameters[1].low",
        "goal": "spec.objectives[0].goal",
        "op": "spec.outcome_constraints[0].op",
        "choices": "spec.parameters[1].choices",
        "policy": "spec.pruning.policy",
        "fixed": "spec.parameters[1].value",
    }
    assert not any(i.name == study_name for i in client.list_studies())
    s = client.create_study(study_name, parameters=x, objectives="y")
    with pytest.raises(bc.InvalidArgument) as e:
        s.add_trial({"x": True}, {"y": 1.0})
    assert e.value.field == "parameters['x']" and not s.trials()


def test_study_handle_for_unknown_study(client):
    with pytest.raises(bc.NotFound):
        client.study("never-created")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unavailable_after_retries():
    with bc.Client(f"127.0.0.1:{_free_port()}", retries=2, backoff=0.01) as c:
        with pytest.raises(bc.Unavailable):
            c.list_studies()
        with pytest.raises(bc.Unavailable):
            c.wait_ready(timeout=0.2)


def test_ask_retry_with_same_request_id_is_not_duplicated(client, study_name, make_study):
    s = make_study(client, study_name)
    a = s.ask(2, request_id="fixed")
    b = s.ask(2, request_id="fixed")
    assert [t.id for t in a] == [t.id for t in b] and len(s.trials()) == 2


def test_optimize_under_a_rate_limit_stores_every_result(server_factory, study_name):
    """A rate-limited server refuses with RESOURCE_EXHAUSTED + RetryInfo; the client waits and
    retries, Tells are exempt, so every evaluated point is stored (before: 3 evaluated, 1 stored)."""
    srv = server_factory(args=["--workers", "4", "--rate-limit", "2", "--rate-burst", "3"])
    evaluated = []
    lock = threading.Lock()

    def fn(p):
        with lock:
            evaluated.append(p["x"])
        return (p["x"] - 0.3) ** 2

    with bc.Client(srv.address, retries=2, backoff=0.01) as c:
        s = c.create_study(
            study_name, parameters=[bc.Float("x", 0, 1)], objectives="y", n_initial=3
        )
        s.optimize(fn, n_trials=8, n_workers=3, progress=False)
        done = s.trials(["COMPLETED"])
    assert len(evaluated) == 8 and sorted(t.params["x"] for t in done) == sorted(evaluated)


def test_rate_refusal_carries_retry_info(server_factory):
    import grpc

    from bbo_client.v1 import service_pb2 as svc
    from bbo_client.v1 import service_pb2_grpc

    srv = server_factory(args=["--workers", "1", "--rate-limit", "0.5", "--rate-burst", "1"])
    with grpc.insecure_channel(srv.address) as ch:
        stub = service_pb2_grpc.BboServiceStub(ch)
        stub.ListStudies(svc.ListStudiesRequest(), timeout=30)
        with pytest.raises(grpc.RpcError) as e:
            stub.ListStudies(svc.ListStudiesRequest(), timeout=30)
    err = bc.errors.from_rpc_error(e.value)
    assert (
        isinstance(err, bc.ResourceExhausted)
        and 0 < err.retry_after <= 2.0
        and bc.errors.retryable(err)
    )


def test_optimize_heartbeats_at_the_servers_lease(server_factory, study_name):
    """The server grants 3 s leases (--lease-seconds); an evaluation of 4.5 s must stay PENDING
    throughout, so its intermediate report is accepted (before: heartbeats every 200 s, the reaper
    abandoned it and the report's Conflict failed the trial). A heartbeat every 1 s leaves 2 s for
    one to arrive on a loaded machine (1 s leases left 0.67 s: CI once missed it)."""
    srv = server_factory(
        args=["--workers", "2", "--lease-seconds", "3", "--lease-reap-seconds", "0.1"]
    )
    with bc.Client(srv.address, retries=2) as c:
        s = c.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="y")

        def fn(p):
            (t,) = [t for t in s.trials(["PENDING"])]
            for step in range(3):
                time.sleep(1.5)
                assert s.trial(t.id).state == "PENDING"
                s.report_intermediate(t, step, p["x"])
            return p["x"]

        s.optimize(fn, n_trials=1, progress=False)
        (t,) = s.trials()
    assert t.state == "COMPLETED", t.reason


_CTRL_C = r"""
import json, os, signal, sys, threading, time
import bbo_client as bc
# as in a driver started from a terminal (a pytest-xdist worker's children inherit SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
address, name = sys.argv[1:3]
evaluated, lock = [], threading.Lock()
def fn(p):
    with lock:
        evaluated.append(p["x"])
        k = len(evaluated)
    if k == 3:
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
    time.sleep(0.3)
    return p["x"]
with bc.Client(address) as c:
    s = c.create_study(name, parameters=[bc.Float("x", 0, 1)], objectives="y")
    try:
        s.optimize(fn, n_trials=40, n_workers=2, progress=False)
        print(json.dumps({"interrupted": False, "evaluated": len(evaluated)}))
    except KeyboardInterrupt:
        print(json.dumps({"interrupted": True, "evaluated": len(evaluated)}))
"""


def test_ctrl_c_stops_optimize_after_the_running_evaluations_are_told(
    bbo_server, client, study_name
):
    """SIGINT during optimize: no new trial is started, the evaluations under way finish and are
    told, and KeyboardInterrupt reaches the caller (before: the loop ran on to n_trials). In a
    process of its own, as a user's driver is (inside the full suite the signal went unseen)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", _CTRL_C, bbo_server.address, study_name],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    trials = client.study(study_name).trials()
    done = [t for t in trials if t.state == "COMPLETED"]
    assert r["interrupted"] and r["evaluated"] <= 6 and len(done) == r["evaluated"], (
        r,
        out.stderr[-2000:],
    )
    # nothing left PENDING, no result lost; a trial whose Ask was in flight is not started
    rest = [t for t in trials if t.state != "COMPLETED"]
    assert all(t.state == "ABANDONED" and "before it started" in t.reason for t in rest), rest


def test_lease_length_of_a_continued_trial_runs_from_its_ask():
    """A PAUSED trial continued by promotion keeps its creation time: its lease (and so optimize's
    heartbeat interval) is measured from the ask that handed it out again, not from its creation."""
    import datetime as dt

    from bbo_client.client import _lease_length
    from bbo_client.model import Trial

    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    asked = created + dt.timedelta(hours=2)
    t = Trial(
        id=1,
        params={},
        created=created,
        updated=asked,
        lease_expires=asked + dt.timedelta(seconds=60),
        resume_budget=1.0,
    )
    assert _lease_length(t, 0.0) == 60.0
    fresh = Trial(id=2, params={}, created=asked, lease_expires=asked + dt.timedelta(seconds=30))
    assert _lease_length(fresh, 0.0) == 30.0  # no update time (an older server): from creation


def test_a_trial_asked_while_optimize_stops_is_abandoned_not_evaluated(client, study_name):
    """Optimize stops (Ctrl-C, or another worker's error) while a worker's Ask is in flight: the
    trial it returns is not evaluated (no new trial starts) but told ABANDONED at once (before:
    the objective ran on it in full after the stop)."""
    s = client.create_study(study_name, parameters=[bc.Float("x", 0, 1)], objectives="y")
    real_ask, calls, lock = s.ask, [], threading.Lock()
    second_asking = threading.Event()

    def ask(*a, **k):
        with lock:
            calls.append(1)
            first = len(calls) == 1
        if first:
            # once the other worker is asking (a 0.3 s sleep gave a loaded machine's thread 0.3 s
            # to get there; else it claimed no trial and there was none to look at)
            assert second_asking.wait(30)
            raise bc.InvalidArgument("refused", field="study")
        second_asking.set()
        time.sleep(1.5)  # still asking when the loop stops
        return real_ask(*a, **k)

    s.ask = ask
    evaluated = []
    with pytest.raises(bc.InvalidArgument):
        s.optimize(lambda p: evaluated.append(p) or p["x"], n_trials=4, n_workers=2, progress=False)
    assert evaluated == []
    (t,) = s.trials()
    assert t.state == "ABANDONED" and "before it started" in t.reason, t


def test_a_python_int_past_int64_goes_as_a_number(client, study_name):
    """``add_trial({"x": 10**20})`` for a float parameter raised protobuf's ValueError ("Value out
    of range") instead of sending the number, as the Node client does; too large for a double, it
    is InvalidArgument naming the parameter."""
    s = client.create_study(study_name, [bc.Float("x", 0, 1e30)], objectives="y")
    assert s.add_trial({"x": 10**20}, 1.0).params == {"x": 1e20}
    with pytest.raises(bc.InvalidArgument, match="outside"):
        s.add_trial({"x": 10**31}, 1.0)
    with pytest.raises(bc.InvalidArgument, match="too large") as e:
        s.add_trial({"x": 10**400}, 1.0)
    assert e.value.field == "parameters['x']"
    assert [u.params for u in s.trials()] == [{"x": 1e20}]
