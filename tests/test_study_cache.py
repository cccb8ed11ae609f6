"""The registry's bounded study cache (``bbo serve --max-cached-studies``): least recently used
studies are dropped, a dropped study still in use is never made twice, deleted studies never come
back, and a dropped study's fitted model state is loaded back rather than refit."""

from __future__ import annotations

import gc
import random
import threading

import pytest

from bbo.errors import NotFoundError
from bbo.registry import StudyConfig, StudyRegistry
from bbo.strategy.base import Suggestion
from bbo.trial import TrialState

SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y"}],
    "algorithm": {"n_initial": 1000},
}


def _registry(storage, size, **kw):
    return StudyRegistry(storage, config=StudyConfig(max_cached_studies=size), **kw)


def _live_names(reg):
    gc.collect()
    return sorted(st.name for st in reg.cached())


def test_cache_keeps_the_most_recently_used_studies(storage):
    reg = _registry(storage, 2)
    for n in "abcde":
        reg.create_study(n, SPEC)[0].ask(1)
    assert _live_names(reg) == ["d", "e"]
    reg.get_study("c")  # read back from the database
    reg.get_study("d")  # a hit: now the most recent
    reg.get_study("a")
    assert _live_names(reg) == ["a", "d"]
    # a listing looks at studies without pushing the ones in use out
    assert [s.name for s in reg.list_studies()[0]] == list("abcde")
    assert _live_names(reg) == ["a", "d"]
    # a dropped study comes back with its trials
    assert [t.id for t in reg.get_study("b").trials()] == [1]


def test_a_tenant_cycling_through_studies_drops_its_own_not_another_tenants(storage):
    """Past the bound the least recently used study of the tenant caching the most is dropped: a
    tenant creating many studies made every other tenant's next call read its study back."""
    reg = _registry(storage, 3)
    reg.create_study("x", SPEC, tenant="t1")[0].ask(1)
    for n in "abcde":
        reg.create_study(n, SPEC, tenant="t2")[0].ask(1)
    gc.collect()
    assert sorted((st.tenant, st.name) for st in reg.cached()) == [
        ("t1", "x"),
        ("t2", "d"),
        ("t2", "e"),
    ]
    reg.create_study("y", SPEC, tenant="t1")  # two each: the least recently used of them goes
    gc.collect()
    assert sorted(st.name for st in reg.cached()) == ["d", "e", "y"]


def test_zero_keeps_every_study(storage):
    reg = _registry(storage, 0)
    for n in "abcde":
        reg.create_study(n, SPEC)
    assert _live_names(reg) == list("abcde")


def test_a_dropped_study_still_in_use_is_never_made_twice(storage):
    reg = _registry(storage, 1)
    held, _ = reg.create_study("a", SPEC)
    reg.create_study("b", SPEC)  # drops "a" from the cache; this test still holds it
    assert reg.get_study("a") is held  # the same object, not a second one with its own trials
    assert [t.id for t in held.ask(1).trials] == [1]
    reg.create_study("b", SPEC)
    held_uid = held.uid
    del held
    gc.collect()
    again = reg.get_study("a")  # nothing held it: made again, from the database
    assert again.uid == held_uid and [t.id for t in again.trial_cache.all()] == [1]


def test_a_dropped_study_is_freed_once_its_last_write_is_done(storage):
    """SQLite's writer thread kept its last batch of writes while it waited for the next, and
    each write's function holds the study that made it: the last study told stayed alive after
    the registry dropped it, until some other write came."""
    reg = _registry(storage, 1)
    st, _ = reg.create_study("a", SPEC)
    (t,) = st.ask(1).trials
    st.tell(t.id, {"y": 0.5})  # a write through the writer thread, the last one here
    reg.create_study("b", SPEC)  # the cache of one now holds "b" alone
    del st, t
    assert _live_names(reg) == ["b"]


def test_deleted_studies_never_come_back(storage):
    reg = _registry(storage, 1)
    held, _ = reg.create_study("a", SPEC)
    old_uid = held.uid
    reg.create_study("b", SPEC)
    reg.delete_study("a")
    with pytest.raises(NotFoundError):
        reg.get_study("a")
    with pytest.raises(NotFoundError):
        held.ask(1)
    assert all(st.uid != old_uid for st in reg.cached())
    new, created = reg.create_study("a", SPEC)
    assert created and new.uid != old_uid and new is not held and new.trials() == []


def test_a_study_deleted_as_it_is_created_is_never_cached(storage, monkeypatch):
    """A delete that commits between CreateStudy's insert and its caching of the study: the count
    of deletes was read after the insert, so the deleted study was cached and GetStudy answered
    for it; a create that finds its study gone starts again and returns a live one."""
    reg = _registry(storage, 0)
    insert = storage.create_study
    raced = []

    def create_then_deleted(tenant, name, *a, **kw):
        rec = insert(tenant, name, *a, **kw)
        if rec is not None and not raced:
            raced.append(rec.uid)
            reg.delete_study(name, tenant)  # another request's delete, committed right after
        return rec

    monkeypatch.setattr(storage, "create_study", create_then_deleted)
    st, created = reg.create_study("raced", SPEC)
    assert created and st.uid != raced[0]
    assert reg.get_study("raced").uid == st.uid == storage.get_study("default", "raced").uid
    assert st.ask(1).trials


def test_lease_reaper_writes_through_the_live_study(storage):
    """The reaper expires a dropped study's leases through the Study a call still holds (so its
    trials in memory see the ABANDON), and through a fresh one where none is alive."""
    reg = _registry(storage, 1)
    held, _ = reg.create_study("a", SPEC)
    t = held.ask(1, lease_seconds=1).trials[0]
    reg.create_study("b", SPEC)[0].ask(1, lease_seconds=1)
    out = reg.expire_leases(now=t.lease_expires_at + 10)
    assert len(out) == 2
    assert {x.id: x.state for x in held.trial_cache.all()} == {t.id: TrialState.ABANDONED}
    del held
    gc.collect()
    assert reg.get_study("a").trials()[0].state is TrialState.ABANDONED


def test_concurrent_asks_and_tells_on_many_studies_through_a_cache_of_two(storage):
    """Eight threads ask and tell on six studies through a cache of two, so studies are dropped
    while calls on them run. Every Study the registry hands out must hold every trial already
    committed (a second object made beside one still in use would miss that one's writes), no
    trial is lost or numbered twice, and each told trial keeps its value."""
    reg = _registry(storage, 2)
    names = [f"s{i}" for i in range(6)]
    for n in names:
        reg.create_study(n, SPEC)
    lock = threading.Lock()
    asked: dict[str, list[int]] = {n: [] for n in names}
    told: dict[tuple[str, int], float] = {}
    errors: list[str] = []

    def worker(seed):
        rnd = random.Random(seed)
        for _ in range(40):
            name = rnd.choice(names)
            st = reg.get_study(name)
            with lock:
                committed = list(asked[name])
            have = {t.id for t in st.trial_cache.all()}
            if not set(committed) <= have:
                errors.append(f"{name}: a Study missing trials {set(committed) - have}")
            ids = [t.id for t in st.ask(rnd.randint(1, 2)).trials]
            with lock:
                asked[name].extend(ids)
            for i in ids:
                v = rnd.random()
                reg.get_study(name).tell(i, {"y": v})
                with lock:
                    told[(name, i)] = v

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:5]
    for n in names:
        assert len(asked[n]) == len(set(asked[n])), f"{n}: a trial number handed out twice"
        uid = reg.get_study(n).uid
        stored = {t.id: t for t in storage.list_trials(uid)}
        assert sorted(stored) == sorted(asked[n])
        for i, t in stored.items():
            assert t.state is TrialState.COMPLETED and t.metrics["y"].value == told[(n, i)]
        mem = {t.id: (t.state, t.metrics) for t in reg.get_study(n).trial_cache.all()}
        assert mem == {i: (t.state, t.metrics) for i, t in stored.items()}


class _Fits:
    """A strategy whose "fit" is counted, and whose fitted state is shared (SharesModelState)."""

    fits = 0

    def __init__(self, spec):
        self.spec, self.state = spec, None

    def suggest(self, trials, n):
        if self.state is None or self.state[0] < len(trials):
            import torch

            _Fits.fits += 1
            self.state = (len(trials), {"w": torch.tensor([float(len(trials))])})
        return [Suggestion({"x": 0.5}, "model") for _ in range(n)]

    def status(self, trials):
        return ("ACTIVE", "")

    def export_state(self):
        return self.state

    def import_state(self, n_fit, hyper):
        self.state = (n_fit, hyper)


def test_a_dropped_study_loads_its_fitted_state_back(storage):
    reg = _registry(storage, 1, strategy_factory=_Fits)
    a, _ = reg.create_study("a", SPEC)
    a.add_trial({"x": 0.1}, {"y": 1.0})
    a.ask(1)
    assert _Fits.fits == 1 and reg.model_cache.pushes == 1
    del a
    reg.create_study("b", SPEC)
    gc.collect()
    assert [st.name for st in reg.cached()] == ["b"]
    again = reg.get_study("a")
    again.ask(1)  # the state stored at n=1 is loaded: one pull, and a fit only for the new point
    assert reg.model_cache.pulls == 1
    assert again.strategy.state[0] == 2


def test_bbo_serve_flag_bounds_the_cache_and_dropped_studies_keep_working(server_factory):
    """``bbo serve --max-cached-studies 2``: five studies take turns; each ask and tell finds its
    study's trials, whether it was still cached or read back."""
    from sec_helpers import small_spec, stub

    from bbo_client.v1 import service_pb2 as svc
    from bbo_client.v1 import study_pb2 as pb

    srv = server_factory(args=["--max-cached-studies", "2", "--workers", "1"])
    ch, st = stub(srv.address)
    try:
        names = [f"s{i}" for i in range(5)]
        for n in names:
            st.CreateStudy(svc.CreateStudyRequest(name=n, spec=small_spec()))
        for round_ in range(2):
            for n in names:
                (t,) = st.Ask(svc.AskRequest(study=n, count=1)).trials
                assert t.id == round_ + 1
                st.Tell(
                    svc.TellRequest(
                        study=n, trial_id=t.id, metrics={"y": pb.MetricValue(value=0.1)}
                    )
                )
        for n in names:
            trials = st.ListTrials(svc.ListTrialsRequest(study=n)).trials
            assert [(t.id, t.state) for t in trials] == [
                (1, pb.TRIAL_STATE_COMPLETED),
                (2, pb.TRIAL_STATE_COMPLETED),
            ]
    finally:
        ch.close()


def test_bbo_serve_refuses_a_negative_cache_size(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "bbo_server", "serve", "--max-cached-studies", "-1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode != 0 and "--max-cached-studies must be >= 0" in r.stderr


def test_get_best_reads_the_completed_trials_from_the_studys_memory(storage, monkeypatch):
    """GetBest of one objective read and decoded every completed trial from the database on each
    call (12,000 trials: 0.6-0.9 s, on every progress bar's and dashboard's refresh). Where asks
    keep the trials in memory (SQLite) it now reads them there, and follows each new result."""
    reg = _registry(storage, 2)
    study, _ = reg.create_study("best", SPEC)
    for x in (0.2, 0.4, 0.6):
        study.add_trial({"x": x}, {"y": x})
    assert study.best().trials[0].params["x"] == 0.2
    reads = []
    real = storage.list_trials
    monkeypatch.setattr(storage, "list_trials", lambda *a, **k: reads.append(a) or real(*a, **k))
    assert study.best().trials[0].params["x"] == 0.2
    (t,) = study.ask(1).trials
    study.tell(t.id, {"y": -1.0})
    study.add_trial({"x": 0.9}, {"y": 5.0})
    assert study.best().trials[0].id == t.id
    assert reads == []


def test_get_best_fingerprints_only_the_trials_new_since_the_last_call(storage, monkeypatch):
    """GetBest took the fingerprint of every one of the study's trials on each call (twice once,
    then once: over a third of a GetBest of 20,000 trials). Now a trial is fingerprinted once
    while it is unchanged: none on an unchanged study, the new result after one, and the answer
    follows the new result."""
    import bbo.strategy.model_data as model_data
    import bbo.strategy.recommendation as recommendation

    taken: list[int] = []

    def one(t):
        taken.append(t.id)
        items = tuple((k, m.value, m.sem) for k, m in t.metrics.items())
        return (t.id, t.state, t.origin, tuple(t.params.items()), items)

    def many(trials):
        return tuple(one(t) for t in trials)

    monkeypatch.setattr(model_data, "fingerprint", many)
    monkeypatch.setattr(model_data, "trial_fingerprint", one, raising=False)
    monkeypatch.setattr(recommendation, "fingerprint", many, raising=False)
    reg = _registry(storage, 2)
    spec = {**SPEC, "objectives": [{"name": "y", "noise": "deterministic"}]}  # the best observed
    study, _ = reg.create_study("fp", spec)
    for i in range(12):
        study.add_trial({"x": i / 12}, {"y": (i / 12 - 0.5) ** 2})
    study.best()
    for new, x in ((None, 0.5), (0.3, 0.3), (None, 0.3), (0.35, 0.35)):
        added = [] if new is None else [study.add_trial({"x": new}, {"y": -1.0 - new}).id]
        taken.clear()
        best = study.best()
        assert taken == added
        assert best.trials[0].params["x"] == x
    (t,) = study.ask(1).trials
    study.tell(t.id, {"y": -5.0})  # a pending trial completed: a new object, taken again
    taken.clear()
    assert study.best().trials[0].id == t.id and taken == [t.id]


CONSTRAINED = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y", "goal": "maximize", "noise": "deterministic"}],
    "outcome_constraints": [{"metric": "c", "op": "<=", "bound": 0.5}],
    "algorithm": {"n_initial": 1000},
}


def test_get_best_keeps_the_best_observed_trial_and_follows_every_write(storage, monkeypatch):
    """GetBest searched every completed trial for the best observed one on each call (over half
    of a GetBest of 20,000 trials on an unchanged study). It is now kept between calls and brought
    up to date with the trials completed since: the next read sees a tell, an added trial, a trial
    that ends without a result and an infeasible better one as the search of all of them does."""
    import bbo.incumbent as incumbent
    from bbo.incumbent import best_trial

    reg = _registry(storage, 2)
    study, _ = reg.create_study("kept", CONSTRAINED)
    for i in range(40):
        study.add_trial({"x": i / 40}, {"y": float(i % 7), "c": (i % 3) / 4})
    checked = []
    real = incumbent.is_feasible
    monkeypatch.setattr(incumbent, "is_feasible", lambda s, t: checked.append(t.id) or real(s, t))

    def best_id():
        return study.best().trials[0].id

    def want():
        return best_trial(study.spec, study.trials()).id

    assert best_id() == want()
    checked.clear()
    first = best_id()
    assert checked == [] and first == want()  # unchanged: no trial looked at again
    a, b = study.ask(2).trials
    study.tell(a.id, {"y": 9.0, "c": 0.9})  # better, infeasible
    assert best_id() == want() != a.id
    study.tell(b.id, {"y": 9.0, "c": 0.1})  # better, feasible
    assert best_id() == want() == b.id
    study.add_trial({"x": 0.5123}, {"y": 9.0, "c": 0.0})  # a tie: the earlier trial stays
    assert best_id() == b.id
    (c,) = study.ask(1).trials
    study.tell(c.id, failed=True)
    study.add_trial({"x": 0.7123}, {"y": 9.5, "c": 0.2})
    assert best_id() == want() != b.id
    checked.clear()
    best_id()
    assert checked == []
