"""Every mutating call sent again, as the clients send it after a failure that may have come after
the server's work (UNAVAILABLE: a connection cut after the commit; DEADLINE_EXCEEDED): the same
request twice in a row (the first answer lost) and several at once (a retry racing the attempt it
repeats), against a real server on a real port. What each answers and stores is in
docs/operations.md, "Retried calls".

A lost answer is the same request sent twice through the stub, or a real client's own retry behind
:class:`lossy_proxy.LossyProxy`, which cuts the connection once the server has done the work."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from lossy_proxy import LossyProxy

import bbo_client as bc
from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import service_pb2_grpc
from bbo_client.v1 import study_pb2 as pb

AT_ONCE = 6
PROMOTE = dict(
    fidelity=bc.Fidelity("epochs", 1, 9, integer=True), pruning=bc.Pruning("asha", promote=True)
)


@pytest.fixture
def stub(bbo_server):
    with grpc.insecure_channel(bbo_server.address) as ch:
        yield service_pb2_grpc.BboServiceStub(ch)


@pytest.fixture
def db(bbo_server):
    """A read-only look at the server's database (rows, not answers)."""
    path = bbo_server.db.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    yield con
    con.close()


def _send(stub, method: str, request):
    """The answer, or ``(code, details)`` of the refusal."""
    try:
        return getattr(stub, method)(request, timeout=120)
    except grpc.RpcError as e:
        return e.code(), e.details()


def _twice(stub, method: str, request) -> list:
    return [_send(stub, method, request), _send(stub, method, request)]


def _at_once(stub, method: str, request) -> list:
    with ThreadPoolExecutor(AT_ONCE) as ex:
        return list(ex.map(lambda _: _send(stub, method, request), range(AT_ONCE)))


def _count(db, sql: str, *args) -> int:
    return db.execute(sql, args).fetchone()[0]


def _trial_rows(db, study: str) -> int:
    return _count(
        db,
        "SELECT count(*) FROM trials t JOIN studies s ON s.id = t.study_id WHERE s.name = ?",
        study,
    )


def _curve(db, study: str, number: int) -> list[tuple[float, float]]:
    """``[(budget, value)]`` of a trial's stored curve, by step."""
    return db.execute(
        "SELECT v.budget, v.value FROM intermediate_values v JOIN trials t ON t.id = v.trial_id "
        "JOIN studies s ON s.id = t.study_id WHERE s.name = ? AND t.number = ? ORDER BY v.step",
        (study, number),
    ).fetchall()


def _events(db, study: str, number: int) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT e.state FROM trial_events e JOIN trials t ON t.id = e.trial_id "
            "JOIN studies s ON s.id = t.study_id WHERE s.name = ? AND t.number = ? ORDER BY e.id",
            (study, number),
        )
    ]


# ---- the calls that change a study, each sent again -------------------------------------------
def test_create_study_again_returns_the_one_study(stub, db, study_name):
    spec = pb.StudySpec(
        parameters=[pb.ParameterSpec(name="x", float=pb.FloatParameter(low=0, high=1))],
        objectives=[pb.Objective(name="y")],
    )
    first, again = _twice(stub, "CreateStudy", svc.CreateStudyRequest(name=study_name, spec=spec))
    assert (first.created, again.created) == (True, False)  # get-or-create: the same study
    assert first.study.uid == again.study.uid
    racing = _at_once(
        stub, "CreateStudy", svc.CreateStudyRequest(name=study_name + "-r", spec=spec)
    )
    assert sorted(r.created for r in racing) == [False] * (AT_ONCE - 1) + [True]
    assert len({r.study.uid for r in racing}) == 1
    assert _count(db, "SELECT count(*) FROM studies WHERE name LIKE ?", study_name + "%") == 2


def test_delete_study_again_is_not_found_at_the_server(stub, client, study_name, make_study):
    """The server keeps no memory of a deleted name: a repeat is NOT_FOUND, which the clients'
    delete helpers read as done after an attempt whose answer was lost (tests below)."""
    make_study(client, study_name)
    first, again = _twice(stub, "DeleteStudy", svc.DeleteStudyRequest(name=study_name))
    assert first.deleted and again[0] == grpc.StatusCode.NOT_FOUND
    make_study(client, study_name)
    racing = _at_once(stub, "DeleteStudy", svc.DeleteStudyRequest(name=study_name))
    assert sum(not isinstance(r, tuple) for r in racing) == 1
    assert {r[0] for r in racing if isinstance(r, tuple)} == {grpc.StatusCode.NOT_FOUND}


def test_ask_again_under_its_request_id_hands_out_the_trials_once(
    stub, db, client, study_name, make_study
):
    make_study(client, study_name)
    req = svc.AskRequest(study=study_name, count=2, worker_id="w", request_id="ask-1")
    first, again = _twice(stub, "Ask", req)
    assert [t.id for t in again.trials] == [t.id for t in first.trials] == [1, 2]
    assert "replayed" in again.note and "replayed" not in first.note
    req.request_id = "ask-2"
    racing = _at_once(stub, "Ask", req)
    assert {tuple(t.id for t in r.trials) for r in racing} == {(3, 4)}
    assert _trial_rows(db, study_name) == 4


@pytest.mark.parametrize("request_id", ["", "tell-1"])
@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "ABANDONED", "PRUNED"])
def test_tell_again_is_a_duplicate_stored_once(
    stub, db, client, study_name, make_study, state, request_id
):
    s = make_study(client, study_name)
    trials = s.ask(2)

    def tell(t: bc.Trial, rid: str) -> svc.TellRequest:
        req = svc.TellRequest(
            study=study_name, trial_id=t.id, state=bc.model.STATE_TO_PB[state], request_id=rid
        )
        if state == "COMPLETED":
            req.metrics["y"].value = 0.25
        return req

    first, again = _twice(stub, "Tell", tell(trials[0], request_id))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.trial == first.trial
    racing = _at_once(stub, "Tell", tell(trials[1], request_id + "-r" if request_id else ""))
    assert sorted(r.duplicate for r in racing) == [False] + [True] * (AT_ONCE - 1)
    for t in trials:  # one change each: created, then the told state
        assert _events(db, study_name, t.id) == ["PENDING", state]


def test_add_trial_again_under_its_request_id_adds_it_once(
    stub, db, client, study_name, make_study
):
    make_study(client, study_name)

    def add(rid: str, x: float) -> svc.AddTrialRequest:
        req = svc.AddTrialRequest(study=study_name, request_id=rid)
        req.parameters["x"].number, req.parameters["k"].category = x, "a"
        req.metrics["y"].value = 1.0
        return req

    first, again = _twice(stub, "AddTrial", add("add-1", 0.25))
    assert again == first and first.id == 1
    racing = _at_once(stub, "AddTrial", add("add-2", 0.5))
    assert {r.id for r in racing} == {2}
    assert _trial_rows(db, study_name) == 2


def test_a_report_or_heartbeat_again_changes_nothing_more(stub, db, client, study_name, make_study):
    s = make_study(client, study_name, pruning=bc.Pruning("median"))
    (t,) = s.ask()
    first, again = _twice(
        stub,
        "ReportIntermediate",
        svc.ReportIntermediateRequest(study=study_name, trial_id=t.id, step=1, value=0.5),
    )
    assert again == first
    racing = _at_once(
        stub,
        "ReportIntermediate",
        svc.ReportIntermediateRequest(study=study_name, trial_id=t.id, step=2, value=0.4),
    )
    assert all(r == racing[0] for r in racing)
    points = db.execute(
        "SELECT v.step, v.value FROM intermediate_values v JOIN trials t ON t.id = v.trial_id "
        "JOIN studies s ON s.id = t.study_id WHERE s.name = ? ORDER BY v.step",
        (study_name,),
    ).fetchall()
    assert points == [(1, 0.5), (2, 0.4)]
    beat = svc.HeartbeatRequest(study=study_name, trial_id=t.id, lease_seconds=300)
    answers = _twice(stub, "Heartbeat", beat) + _at_once(stub, "Heartbeat", beat)
    assert {a.trial.state for a in answers} == {pb.TRIAL_STATE_PENDING}
    assert _events(db, study_name, t.id) == ["PENDING"]


# ---- defect: a repeated tell landing on a continued trial ---------------------------------------
def _paused_best(client, name: str) -> tuple[bc.StudyHandle, bc.Trial]:
    """A promotion study whose best of three first-rung trials is PAUSED at 1 with loss 1.0 (the
    next Ask continues it to 3)."""
    s = client.create_study(name, [bc.Float("x", 0, 1)], "loss", **PROMOTE)
    a, b, best = s.ask(3)
    s.tell(a, 3.0)
    s.tell(b, 2.0)
    assert s.tell(best, 1.0).trial.state == "PAUSED"
    return s, best


def _id_only_tell(name: str, trial_id: int, loss: float) -> svc.TellRequest:
    """A COMPLETED tell naming its trial by id alone: no budget, no request id, no study uid."""
    req = svc.TellRequest(study=name, trial_id=trial_id, state=pb.TRIAL_STATE_COMPLETED)
    req.metrics["loss"].value = loss
    return req


def test_a_tell_again_after_its_trial_was_continued_leaves_the_continuation(
    stub, db, client, study_name
):
    """The tell that paused a trial, sent again (its answer lost) after an Ask continued the trial,
    was taken for the continuation's result: it paused the continuation at 3 with the value
    measured at 1 (or completed it, at the full budget). It is a duplicate now, at every later stage
    of the trial, and only the continuation's own result finishes the continuation."""
    s, best = _paused_best(client, study_name)
    (cont,) = s.ask(worker_id="w2")
    assert (cont.id, cont.budget, cont.resume_budget) == (best.id, 3.0, 1.0)
    repeat = _id_only_tell(study_name, best.id, 1.0)
    again = stub.Tell(repeat, timeout=60)
    assert again.duplicate
    assert (again.trial.state, again.trial.budget) == (pb.TRIAL_STATE_PENDING, 3.0)
    assert dict(again.trial.metrics) == {}
    racing = _at_once(stub, "Tell", repeat)
    assert all(r.duplicate and r.trial.state == pb.TRIAL_STATE_PENDING for r in racing)

    paused = stub.Tell(_id_only_tell(study_name, best.id, 0.5), timeout=60)  # its own result
    assert not paused.duplicate
    assert (paused.trial.state, paused.trial.budget) == (pb.TRIAL_STATE_PAUSED, 3.0)
    assert stub.Tell(repeat, timeout=60).duplicate  # paused again: both runs' results repeat
    assert stub.Tell(_id_only_tell(study_name, best.id, 0.5), timeout=60).duplicate
    assert _curve(db, study_name, best.id) == [(1.0, 1.0), (3.0, 0.5)]

    (cont,) = s.ask(worker_id="w3")  # on to the full 9, from 3: either earlier run repeated
    assert (cont.id, cont.resume_budget) == (best.id, 3.0)
    for loss in (1.0, 0.5):
        r = stub.Tell(_id_only_tell(study_name, best.id, loss), timeout=60)
        assert r.duplicate and (r.trial.state, r.trial.budget) == (pb.TRIAL_STATE_PENDING, 9.0)
    done = stub.Tell(_id_only_tell(study_name, best.id, 0.25), timeout=60)
    assert (done.trial.state, done.trial.budget) == (pb.TRIAL_STATE_COMPLETED, 9.0)
    for loss in (1.0, 0.5, 0.25):  # and once it is complete
        assert stub.Tell(_id_only_tell(study_name, best.id, loss), timeout=60).duplicate
    assert s.best().trial.metrics == {"loss": 0.25}


def test_a_continuation_told_without_its_budget_with_its_earlier_result_is_that_result(
    stub, client, study_name
):
    """The limit of a tell naming its trial by id alone: a continuation whose result is exactly
    the one that paused it cannot be told from that tell repeated, and is answered as the repeat;
    with its budget (every client sends the budget of a trial passed whole) it is its own."""
    s, best = _paused_best(client, study_name)
    (cont,) = s.ask(worker_id="w2")
    assert stub.Tell(_id_only_tell(study_name, best.id, 1.0), timeout=60).duplicate
    told = s.tell(cont, 1.0)  # the Python client sends the trial's budget, 3
    assert not told.duplicate and (told.trial.state, told.trial.budget) == ("PAUSED", 3.0)


def test_a_python_tell_retried_after_a_lost_answer_never_lands_on_the_continuation(
    bbo_server, client, study_name
):
    """End to end: the client's Tell of a bare trial id reaches the server, which pauses the trial;
    the answer is lost (the connection cut), another worker's Ask continues the trial meanwhile,
    and the client's retry came back as the continuation's result (PAUSED at 3 with the value
    measured at 1). Now the retry is answered as the duplicate it is."""
    s = client.create_study(study_name, [bc.Float("x", 0, 1)], "loss", **PROMOTE)
    a, b, best = s.ask(3)
    s.tell(a, 3.0)
    s.tell(b, 2.0)
    continued: list[bc.Trial] = []

    def paused_then_continued() -> bool:
        if not continued and s.trial(best.id).state == "PAUSED":
            continued.extend(s.ask(worker_id="w2"))
        return bool(continued)

    out: dict = {}
    with LossyProxy(bbo_server.address) as proxy, bc.Client(proxy.address) as lossy:
        worker = lossy.study(study_name)
        th = threading.Thread(target=lambda: out.setdefault("told", worker.tell(best.id, 1.0)))
        with proxy.losing_answers(paused_then_continued):
            th.start()
        th.join(timeout=120)
    assert [(t.id, t.budget) for t in continued] == [(best.id, 3.0)]
    assert out["told"].duplicate
    t = s.trial(best.id)
    assert (t.state, t.budget, t.metrics) == ("PENDING", 3.0, {})


@pytest.mark.parametrize("budget", [None, 1.0])
def test_a_tell_again_racing_the_ask_that_continues_its_trial(tmp_path, monkeypatch, budget):
    """The tell read the trial PAUSED (or PENDING, racing the attempt it repeats) and an Ask
    continued it before the tell's write: checked against that read alone, the repeat paused the
    continuation with the earlier value (no budget) or was refused INVALID_ARGUMENT (its budget,
    1, below the continuation's). The write checks the trial as it finds it."""
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage
    from bbo.testing.strategies import SpaceFilling
    from bbo.trial import TrialState

    reg = StudyRegistry(
        open_storage(f"sqlite:///{tmp_path}/race.db"), strategy_factory=SpaceFilling
    )
    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "loss"}],
        "fidelity": {"name": "epochs", "min": 1, "max": 9, "integer": True},
        "pruning": {"policy": "asha", "promote": True},
    }
    st, _ = reg.create_study("race", spec)
    a, b, best = st.ask(3).trials
    for t, v in ((a, 3.0), (b, 2.0), (best, 1.0)):
        st.tell(t.id, {"loss": v})
    before_tell = st.budgets.before_tell

    def then_an_ask_continues_it(*args, **kwargs):
        out = before_tell(*args, **kwargs)
        (cont,) = st.ask(worker_id="w2").trials
        assert (cont.id, cont.budget) == (best.id, 3.0)
        return out

    monkeypatch.setattr(st.budgets, "before_tell", then_an_ask_continues_it)
    again = st.tell(best.id, {"loss": 1.0}, budget=budget)
    assert again.duplicate
    stored = st.get_trial(best.id)
    assert (stored.state, stored.budget, stored.metrics) == (TrialState.PENDING, 3.0, {})
    reg.storage.close()


# ---- defect: a delete retried after its answer was lost -----------------------------------------
def test_a_python_delete_retried_after_a_lost_answer_returns_true(bbo_server, client, study_name):
    """End to end: the delete reaches the server and deletes the study; the answer is lost (the
    connection cut) and the client's retry was answered NOT_FOUND, raised for a delete that
    worked. A NOT_FOUND answering a retry after an attempt whose answer was lost is that delete."""
    client.create_study(study_name, [bc.Float("x", 0, 1)], "y")
    out: dict = {}

    def delete() -> None:
        try:
            out["deleted"] = lossy.delete_study(study_name)
        except bc.errors.BboError as e:
            out["deleted"] = e

    def gone() -> bool:
        return study_name not in {s.name for s in client.list_studies()}

    with LossyProxy(bbo_server.address) as proxy, bc.Client(proxy.address) as lossy:
        lossy.get_study(study_name)  # connected
        th = threading.Thread(target=delete)
        with proxy.losing_answers(gone):
            th.start()
        th.join(timeout=120)
        assert out["deleted"] is True
        assert proxy.connections >= 2  # the retry went out on a new connection


class _Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "refused"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _FirstDelete:
    """A client's stub whose first DeleteStudy ends as ``first`` says: ``"ran"`` (it runs on the
    server, then fails DEADLINE_EXCEEDED: the deadline passed before its answer came) or a status
    refusing it before it ran; every later call is the real one."""

    def __init__(self, real, first):
        self.real, self.first, self.attempts = real, first, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def DeleteStudy(self, request, **kw):
        self.attempts += 1
        if self.attempts > 1:
            return self.real.DeleteStudy(request, **kw)
        if self.first == "ran":
            self.real.DeleteStudy(request, **kw)
            raise _Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        raise self.first


BUSY = _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, bc.errors.GRPC_CONCURRENCY_REFUSAL)


@pytest.mark.parametrize(
    "first, exists, answer",
    [
        ("ran", True, True),  # its deadline passed while it ran: the retry's NOT_FOUND is done
        (_Refused(grpc.StatusCode.UNAVAILABLE), False, True),  # maybe it ran: gone either way
        (BUSY, False, None),  # refused before it ran: a NOT_FOUND is about the name
        (BUSY, True, True),
    ],
)
def test_a_python_delete_reads_a_retrys_not_found_by_what_came_before(
    bbo_server, study_name, first, exists, answer
):
    with bc.Client(bbo_server.address, backoff=0.01) as c:
        if exists:
            c.create_study(study_name, [bc.Float("x", 0, 1)], "y")
        c._stub = _FirstDelete(c._stub, first)
        if answer is None:
            with pytest.raises(bc.NotFound):
                c.delete_study(study_name)
        else:
            assert c.delete_study(study_name) is answer
        assert c._stub.attempts == 2
        with pytest.raises(bc.NotFound):  # a first attempt's NOT_FOUND is raised as ever
            c.delete_study(study_name)
