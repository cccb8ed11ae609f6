"""Faults: the server SIGKILLed at random moments under 16 concurrent workers, 20 times; dead
workers (leases), late tells and retried requests."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import pytest
from sec_helpers import on_a_free_port

import bbo_client as bc

N_STUDIES = 4
N_WORKERS = 16
ROUNDS = 10


def test_sigkill_at_random_moments_under_16_workers(server_factory, tmp_path):
    db_path = tmp_path / "crash.db"
    srv, _ = on_a_free_port(
        lambda p: server_factory(db="sqlite:///" + str(db_path), port=p, args=["--workers", "1"])
    )
    names = [f"crash-{j}" for j in range(N_STUDIES)]
    with bc.Client(srv.address) as c:
        for j, n in enumerate(names):
            c.create_study(
                n,
                parameters=[bc.Float("x", 0, 1), bc.Int("n", 1, 50)],
                objectives="y",
                n_initial=10000,
                seed=j,
            )

    lock = threading.Lock()
    acked: dict[
        tuple[str, int], float
    ] = {}  # (study, trial) -> value, once the server acknowledged the tell
    handed: list[tuple[str, int]] = []  # every trial an Ask call returned
    errors: list[str] = []
    stop = threading.Event()

    def worker(i: int) -> None:
        rnd = random.Random(i)
        # retries ride through restarts: a retried Ask carries the same request_id, a retried Tell is a duplicate
        with bc.Client(srv.address, retries=20, backoff=0.05, max_backoff=1.0, timeout=60) as c:
            s = bc.StudyHandle(c, names[i % N_STUDIES])
            while not stop.is_set():
                try:
                    trials = s.ask(rnd.choice([1, 1, 2]), worker_id=f"w{i}")
                    with lock:
                        handed.extend((s.name, t.id) for t in trials)
                    for t in trials:
                        v = round(t.params["x"] * t.params["n"], 9)
                        r = s.tell(t, {"y": v})
                        if r.trial.state != "COMPLETED" or r.trial.metrics != {"y": v}:
                            errors.append(f"tell answered {r}")
                        with lock:
                            acked[(s.name, t.id)] = v
                except bc.Unavailable:
                    # the server stayed down longer than the client's retries (a slow restart on a
                    # busy machine): not acknowledged, so nothing to check; ask again
                    time.sleep(0.2)
                except bc.BboError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    rnd = random.Random(2026)
    progress = []
    for _r in range(ROUNDS):
        start_n = len(acked)
        deadline = time.time() + 60
        while (
            len(acked) < start_n + 5 and time.time() < deadline and not errors
        ):  # workers are back at work
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.3))  # then a random moment: mid-ask, mid-tell, mid-commit
        srv.kill()
        progress.append(len(acked) - start_n)
        srv.start()
        assert not errors, errors[:5]
    # let the workers make progress on the last incarnation, then stop them
    deadline = time.time() + 60
    n0 = len(acked)
    while len(acked) < n0 + 20 and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:5]
    assert all(p >= 5 for p in progress), progress  # every kill hit a server under load

    # no Ask call ever got a trial another Ask call got
    assert len(handed) == len(set(handed))
    with bc.Client(srv.address) as c:
        for n in names:
            s = c.study(n)
            stored = s.trials()
            ids = [t.id for t in stored]
            assert len(ids) == len(set(ids))
            by_id = {t.id: t for t in stored}
            for (sn, tid), v in acked.items():
                if sn == n:
                    assert by_id[tid].state == "COMPLETED" and by_id[tid].metrics == {"y": v}
            # every study still answers asks
            (t,) = s.ask()
            assert t.id > max(ids)
            assert s.tell(t, {"y": 0.0}).trial.state == "COMPLETED"
    srv.stop()
    # every acknowledged tell was applied exactly once: one COMPLETED event per trial
    con = sqlite3.connect(str(db_path))
    rows = con.execute(
        "SELECT s.name, t.number, COUNT(e.id) FROM trials t JOIN studies s ON s.id = t.study_id "
        "JOIN trial_events e ON e.trial_id = t.id AND e.state = 'COMPLETED' GROUP BY t.id"
    ).fetchall()
    con.close()
    completed_events = {(n, int(num)): k for n, num, k in rows}
    for key in acked:
        assert completed_events.get(key) == 1, (key, completed_events.get(key))


def test_dead_worker_lease_abandon_region_freed_and_late_tell_kept(storage):
    """A trial asked and never told is ABANDONED after its lease; the strategy no longer counts it as
    pending (its region may be suggested again); a late tell still records the result, and the
    trial's state history is kept."""
    from bbo.errors import ConflictError
    from bbo.registry import StudyRegistry
    from bbo.strategy import Suggestion
    from bbo.trial import TrialState

    seen = []

    class Recording:
        def __init__(self, spec):
            self.k = 0

        def suggest(self, trials, n):
            seen.append({t.id: t.state for t in trials})
            self.k += 1
            return [Suggestion({"x": 0.5}, "initial_design") for _ in range(n)]

    reg = StudyRegistry(storage, strategy_factory=Recording)
    study, _ = reg.create_study(
        "dead",
        {
            "parameters": [{"name": "x", "type": "float", "low": 0, "high": 1}],
            "objectives": [{"name": "y"}],
        },
    )
    # the leases' clock is the test's: t1's lease outlives the next ask however slow its commit
    # (a 0.5 s wall-clock lease had to outlast an ask and a heartbeat on a loaded machine), then
    # has ended at the one after
    now = [time.time()]
    storage.clock = lambda: now[0]
    (t1,) = study.ask(lease_seconds=0.5, worker_id="dies").trials
    (t2,) = study.ask(lease_seconds=600, worker_id="lives").trials
    assert seen[-1] == {t1.id: TrialState.PENDING}
    now[0] += 0.1
    hb = study.heartbeat(t2.id, 900)
    assert hb.lease_expires_at > t2.lease_expires_at
    now[0] += 0.6  # past t1's lease, within t2's
    study.ask()
    assert seen[-1][t1.id] is TrialState.ABANDONED and seen[-1][t2.id] is TrialState.PENDING
    assert study.get_trial(t1.id).state is TrialState.ABANDONED
    with pytest.raises(ConflictError, match="only a pending trial has a lease"):
        study.heartbeat(t1.id)  # an abandoned trial has no lease to extend
    late = study.tell(t1.id, {"y": 1.5})
    assert late.trial.state is TrialState.COMPLETED and late.trial.metrics["y"].value == 1.5
    assert [e[0] for e in storage.trial_events(study.uid, t1.id)] == [
        "PENDING",
        "ABANDONED",
        "COMPLETED",
    ]
    again = study.tell(t1.id, {"y": 1.5})  # the same late tell, retried
    assert again.duplicate


def test_retried_requests_are_idempotent(storage):
    from bbo.errors import ConflictError
    from bbo.registry import StudyRegistry

    reg = StudyRegistry(storage)
    study, _ = reg.create_study(
        "idem",
        {
            "parameters": [{"name": "x", "type": "float", "low": 0, "high": 1}],
            "objectives": [{"name": "y"}],
        },
    )
    a = study.ask(2, request_id="r1", worker_id="w").trials
    b = study.ask(2, request_id="r1", worker_id="w").trials
    assert [t.id for t in a] == [t.id for t in b] and len(storage.list_trials(study.uid)) == 2
    with pytest.raises(ConflictError):
        study.ask(3, request_id="r1", worker_id="w")  # the same id for a different request
    r1 = study.tell(a[0].id, {"y": 1.0}, request_id="t1")
    r2 = study.tell(a[0].id, {"y": 1.0}, request_id="t1")
    assert not r1.duplicate and r2.duplicate
    with pytest.raises(ConflictError):
        study.tell(a[0].id, {"y": 2.0}, request_id="t1")
    # a different tell on a finished trial, no request id: the message shows what was told
    with pytest.raises(ConflictError, match=r"already COMPLETED with y=1: a different tell"):
        study.tell(a[0].id, {"y": 2.0})
    assert [e[0] for e in storage.trial_events(study.uid, a[0].id)] == ["PENDING", "COMPLETED"]
    x = study.add_trial({"x": 0.25}, {"y": 0.5}, request_id="add1")
    y = study.add_trial({"x": 0.25}, {"y": 0.5}, request_id="add1")
    assert x.id == y.id and len(storage.list_trials(study.uid)) == 3
