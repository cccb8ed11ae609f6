"""Lease expiry without a further Ask: the server's reaper ABANDONs a dead worker's trial on its own,
keeps the in-memory trial copy in step, and stops with the server on SIGTERM."""

from __future__ import annotations

import time

from bbo.trial import TrialState


def _wait_for(pred, timeout: float = 120.0, every: float = 0.1):
    """Poll ``pred`` until truthy (returned) or ``timeout`` passes (then None): no timing asserted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None


def test_reaper_abandons_expired_lease_without_another_ask(server_factory, make_study):
    import bbo_client as bc

    srv = server_factory(args=["--workers", "1", "--lease-reap-seconds", "0.2"])
    with bc.Client(srv.address, retries=2) as c:
        s = make_study(c, "reaped")
        (dead,) = s.ask(worker_id="dead", lease_seconds=0.3)
        (alive,) = s.ask(worker_id="alive", lease_seconds=3600)
        # no Ask from here on: only the reaper can change the dead worker's trial
        got = _wait_for(lambda: (t := s.trial(dead.id)).state != "PENDING" and t)
        assert got, f"trial {dead.id} still PENDING; server log:\n{srv.log_tail()}"
        assert got.state == "ABANDONED" and got.reason == "lease expired"
        assert s.trial(alive.id).state == "PENDING"  # an unexpired lease is left alone
        assert s.report_intermediate(dead, 0, 0.6) is False  # so are its late intermediate values
        assert s.tell(dead, {"y": 0.5}).trial.state == "COMPLETED"  # a late result is still welcome
        assert s.tell(alive, {"y": 0.25}).trial.state == "COMPLETED"
        (nxt,) = s.ask()
        assert nxt.id not in (dead.id, alive.id)
    assert srv.stop() == 0  # SIGTERM drain stops the reaper thread too
    assert "lease reaper round failed" not in srv.log_tail(100_000)


def test_reaper_off_leaves_expiry_to_the_next_ask(server_factory, make_study):
    import bbo_client as bc

    srv = server_factory(args=["--workers", "1", "--lease-reap-seconds", "0"])
    with bc.Client(srv.address, retries=2) as c:
        s = make_study(c, "lazy")
        (t,) = s.ask(lease_seconds=0.05)
        time.sleep(1.0)  # well past the lease
        assert s.trial(t.id).state == "PENDING"  # nobody reaped it
        s.ask()
        assert s.trial(t.id).state == "ABANDONED"
    assert srv.stop() == 0


def test_registry_expire_leases_updates_the_in_memory_trials(registry):
    """In-process: the reaper's registry call changes the store and the cached study's trial list,
    so the strategy no longer counts the trial as pending; other studies are untouched."""
    spec = {
        "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "y"}],
    }
    a, _ = registry.create_study("a", spec)
    b, _ = registry.create_study("b", spec)
    (ta,) = a.ask(lease_seconds=10).trials
    (tb,) = b.ask(lease_seconds=10_000).trials
    assert registry.expire_leases(now=ta.lease_expires_at - 1) == {}
    later = ta.lease_expires_at + 1
    assert registry.expire_leases(now=later) == {a.uid: [ta.id]}
    mem = {t.id: t for t in a.trial_cache.all()}
    assert mem[ta.id].state is TrialState.ABANDONED and mem[ta.id].reason == "lease expired"
    assert a.get_trial(ta.id).state is TrialState.ABANDONED
    assert b.get_trial(tb.id).state is TrialState.PENDING
    assert registry.expire_leases(now=later) == {}  # idempotent
    # a study no Ask has touched since the server started (not cached here) is reaped too
    registry._cache.clear()
    assert registry.expire_leases(now=tb.lease_expires_at + 1) == {b.uid: [tb.id]}
    assert registry.get_study("b").get_trial(tb.id).state is TrialState.ABANDONED


def test_a_heartbeat_after_the_lease_ended_does_not_renew_it(registry):
    """Past its lease a trial is abandoned, whether or not the reaper has been by (its point may
    be handed out again): a heartbeat then renewed the lease (before: accepted until the reaper's
    round). It is refused; the trial's late result is still stored."""
    from bbo.errors import ConflictError

    spec = {
        "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "y"}],
    }
    s, _ = registry.create_study("late-beat", spec)
    # the leases' clock is the test's: a 0.2 s wall-clock lease had to outlast the ask's commit
    # and the heartbeat on a loaded machine
    now = [time.time()]
    registry.storage.clock = lambda: now[0]
    (t,) = s.ask(lease_seconds=0.2).trials
    now[0] += 0.1
    assert s.heartbeat(t.id).state is TrialState.PENDING  # within the lease: renewed
    now[0] += 0.5  # past the renewed lease
    try:
        s.heartbeat(t.id)
        raise AssertionError("a lease that had ended was renewed")
    except ConflictError as e:
        assert "lease ended" in str(e)
    assert s.tell(t.id, {"y": 1.0}).trial.state is TrialState.COMPLETED


def test_a_worker_abandoning_in_the_reapers_words_cannot_reopen_its_trial(registry):
    """A trial the reaper abandoned takes a late result; one a worker told ABANDONED does not. The
    two were told apart by the reason's text, so a worker's reason 'lease expired' reopened it."""
    from bbo.errors import ConflictError

    spec = {
        "parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "y"}],
    }
    s, _ = registry.create_study("own-words", spec)
    (t,) = s.ask().trials
    told = s.tell(t.id, state=TrialState.ABANDONED, reason="lease expired").trial
    assert told.state is TrialState.ABANDONED and told.reason.startswith("lease expired")
    try:
        s.tell(t.id, {"y": 1.0})
        raise AssertionError("a worker's own ABANDONED trial took a result")
    except ConflictError:
        pass
