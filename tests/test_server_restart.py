"""Durability: a server SIGKILLed mid-study loses no acknowledged tell; restarts rebuild studies;
SIGTERM lets in-flight calls finish."""

from __future__ import annotations

import threading

import bbo_client as bc


def test_sigkill_mid_study_loses_no_acknowledged_tell(server_factory):
    srv = server_factory()
    acked: dict[int, float] = {}
    errors: list = []
    stop = threading.Event()
    with bc.Client(srv.address, retries=0) as c:
        # y = id / 7 is unrelated to x: left to bbo to judge, a read's model calls it noise and
        # GetBest names the best posterior mean, not the trial told 0.0 last
        y = bc.Minimize("y", noise="deterministic")
        s = c.create_study(
            "durable", parameters=[bc.Float("x", 0, 1)], objectives=[y], n_initial=1000
        )

        def worker(i):
            while not stop.is_set():
                try:
                    (t,) = s.ask(worker_id=f"w{i}")
                    v = float(t.id) / 7.0
                    s.tell(t, {"y": v})
                    acked[t.id] = v  # only after the server acknowledged
                except bc.BboError as e:
                    errors.append(e)
                    return

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 40 and all(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
        srv.kill()  # SIGKILL while workers are asking and telling
        stop.set()
        for t in threads:
            t.join(30)
    assert len(acked) >= 40
    assert all(isinstance(e, bc.Unavailable) for e in errors)
    srv.start()  # same database, new process
    with bc.Client(srv.address) as c:
        s = c.study("durable")
        stored = {t.id: t for t in s.trials()}
        for tid, v in acked.items():
            assert stored[tid].state == "COMPLETED" and stored[tid].metrics == {"y": v}
        # the rebuilt study keeps allocating fresh ids and keeps working
        (t,) = s.ask()
        assert t.id > max(stored)
        assert s.tell(t, {"y": 0.0}).trial.state == "COMPLETED"
        assert s.best().trial.id == t.id


def test_restart_rebuilds_every_study(server_factory):
    srv = server_factory()
    with bc.Client(srv.address) as c:
        a = c.create_study("a", parameters=[bc.Float("x", 0, 1)], objectives="y", seed=3)
        b = c.create_study(
            "b",
            parameters=[bc.Int("n", 1, 9)],
            objectives=[bc.Maximize("acc")],
            constraints=[bc.Constraint("lat", "<=", 5)],
        )
        ta = a.ask(2)
        a.tell(ta[0], {"y": 0.5})
        b.add_trial({"n": 3}, {"acc": 0.9, "lat": 1})
        before = {
            n: [(t.id, t.state, t.params, t.metrics) for t in c.study(n).trials()]
            for n in ("a", "b")
        }
    srv.stop()
    srv.start()
    with bc.Client(srv.address) as c:
        assert sorted(s.name for s in c.list_studies()) == ["a", "b"]
        after = {
            n: [(t.id, t.state, t.params, t.metrics) for t in c.study(n).trials()]
            for n in ("a", "b")
        }
        assert after == before
        assert c.study("b").info().constraints == [bc.Constraint("lat", "<=", 5.0)]
        again = c.create_study("a", parameters=[bc.Float("x", 0, 1)], objectives="y", seed=3)
        assert not again.created
        a = c.study("a")
        a.tell(ta[1], {"y": 0.1})  # a trial asked before the restart is told after it
        assert a.best().trial.id == ta[1].id
        new = a.ask(3)
        assert {t.id for t in new}.isdisjoint({t.id for t in ta})


def test_client_retries_while_server_restarts(server_factory):
    srv = server_factory()
    port = srv.port
    with bc.Client(srv.address, retries=10, backoff=0.2) as c:
        s = c.create_study("retry", parameters=[bc.Float("x", 0, 1)], objectives="y")
        srv.kill()
        srv.requested_port = port  # come back on the same address

        def restart():
            srv.start()

        th = threading.Timer(0.5, restart)
        th.start()
        (t,) = s.ask()  # UNAVAILABLE at first, retried with backoff until the server is back
        th.join()
        assert s.tell(t, {"y": 1.0}).trial.state == "COMPLETED"


def test_optimize_rides_out_a_server_restart_longer_than_its_retries(server_factory):
    """The server dies during an evaluation and is back 3 s later; the client's retries alone would
    give up in well under a second, yet optimize stores every result (Ask and Tell use tell_patience)."""
    srv = server_factory()
    port = srv.port
    calls = []

    def fn(p):
        calls.append(p["x"])
        if len(calls) == 2:
            srv.kill()
            srv.requested_port = port
            threading.Timer(3.0, srv.start).start()
        return p["x"]

    with bc.Client(srv.address, retries=1, backoff=0.05, max_backoff=0.2) as c:
        s = c.create_study("outage", parameters=[bc.Float("x", 0, 1)], objectives="y")
        s.optimize(fn, n_trials=4, progress=False, tell_patience=120)
        done = s.trials(["COMPLETED"])
    assert sorted(t.params["x"] for t in done) == sorted(calls) and len(calls) == 4


def test_sigterm_is_graceful(server_factory):
    srv = server_factory()
    with bc.Client(srv.address) as c:
        c.create_study("g", parameters=[bc.Float("x", 0, 1)], objectives="y")
    assert srv.stop() == 0
    assert '"msg": "stopped"' in srv.log_tail()


def test_a_second_server_on_the_same_sqlite_file_is_refused(server_factory):
    """Each server keeps its studies' trials in memory: a second one on the file would hand out
    points the first never hears of, and keep serving a study the other deleted. It is refused at
    start-up, naming the cause; once the first is gone (even SIGKILLed) the file is free."""
    import pytest

    first = server_factory()
    with pytest.raises(RuntimeError, match="served by another bbo serve process"):
        server_factory(db=first.db)
    first.kill()
    again = server_factory(db=first.db)
    with bc.Client(again.address) as c:
        c.create_study("after", parameters=[bc.Float("x", 0, 1)], objectives="y")


def test_an_ask_still_running_past_the_grace_stores_nothing_and_holds_no_exit(server_factory):
    """SIGTERM with an ask computing past --grace-seconds: the client was answered UNAVAILABLE at
    the grace, but the ask then stored its 100 trials PENDING after the log said "stopped", and
    the process (and the SQLite file's lock) waited for it. The cancelled ask now stores nothing
    and the server exits at the grace without waiting for it."""
    import random
    import signal

    srv = server_factory(args=["--grace-seconds", "1", "--torch-threads", "1"])
    rng = random.Random(0)
    with bc.Client(srv.address, retries=0) as c:
        dims = [bc.Float(f"x{i}", 0, 1) for i in range(256)]
        s = c.create_study("slow", parameters=dims, objectives="y")
        for _ in range(25):
            s.add_trial({f"x{i}": rng.random() for i in range(256)}, {"y": rng.random()})
        answer: list = []

        def ask():
            try:
                s.ask(100)
                answer.append("OK")
            except bc.BboError as e:
                answer.append(e.code)

        th = threading.Thread(target=ask)
        th.start()
        threading.Event().wait(1.0)
        srv.proc.send_signal(signal.SIGTERM)
        th.join(120)
        assert srv.proc.wait(120) == 0
    assert answer and answer[0] != "OK"
    log = srv.log_tail()
    assert '"msg": "exiting with calls still running"' in log and '"msg": "ask"' not in log
    srv.start()
    with bc.Client(srv.address) as c:
        assert len(c.study("slow").trials()) == 25
