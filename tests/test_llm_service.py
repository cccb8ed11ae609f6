"""The LLM module inside the running service: `bbo serve` pointed (via BBO_LLM_BASE_URL) at
bbo/testing/chat_server.py, a local chat-completions server with scripted answers (no real LLM), driven
through the real openai client by the server and through the real gRPC client by the test."""

from __future__ import annotations

import json
import os
import socket

import pytest

from bbo.testing.chat_server import ChatServer, Reply

GOOD_POINTS = [{"x": 0.11, "y": 0.22}, {"x": 0.33, "y": 0.44}]


def _responder(body: dict) -> Reply:
    prompt = ChatServer.prompt_of(body)
    if "candidates" in prompt:
        return Reply(
            json.dumps(
                {
                    "candidates": [
                        {"rationale": f"guess {i}", "params": p} for i, p in enumerate(GOOD_POINTS)
                    ]
                }
            )
        )
    return Reply(
        json.dumps(
            {
                "priors": {
                    n: {
                        "rationale": "r",
                        "best_guess": 0.2,
                        "low": 0.1,
                        "high": 0.3,
                        "confidence": 0.9,
                    }
                    for n in ("x", "y")
                }
            }
        )
    )


def _garbage(body: dict) -> Reply:
    return Reply("I think x should be large-ish, y maybe medium. {not json")


def _study(client, name):
    from bbo_client import Float, Llm, Objective

    return client.create_study(
        name,
        parameters=[Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)],
        objectives=[Objective("f")],
        description="A smooth 2-D bowl; the optimum is near x=0.2, y=0.2.",
        llm=Llm(enabled=True, warmstart_candidates=2),
        n_initial=5,
    )


def _server_env(srv) -> dict:
    return {
        **os.environ,
        "BBO_LLM_BASE_URL": srv.url,
        "BBO_LLM_MODEL": "test-model",
        "BBO_LLM_TIMEOUT": "5",
        "BBO_LLM_API_KEY": "test",
    }


def _server(server_factory, srv):
    return server_factory(env=_server_env(srv))


def test_warmstart_candidates_become_trials_and_calls_are_audited(server_factory, study_name):
    from bbo_client import Client

    with ChatServer(_responder) as chat:
        srv = _server(server_factory, chat)
        with Client(srv.address) as c:
            study = _study(c, study_name)
            trials = study.ask(5)
            origins = [t.origin for t in trials]
            assert origins.count("llm_warmstart") == 2
            ws = [t for t in trials if t.origin == "llm_warmstart"]
            assert [dict(t.params) for t in ws] == GOOD_POINTS
            assert all(t.rationale.startswith("guess") for t in ws)
            for t in trials:
                study.tell(t.id, {"f": (t.params["x"] - 0.2) ** 2 + (t.params["y"] - 0.2) ** 2})
            calls = study.llm_calls()
            assert {c.purpose for c in calls} >= {"warmstart"}
            assert all(
                c.outcome in ("ok", "cached") or c.outcome.startswith("partial") for c in calls
            ), [c.outcome for c in calls]
            n_requests = len(chat.requests)
            study.ask(2)  # BO phase: the cached priors prompt is not sent again
            assert len(chat.requests) == n_requests
            assert len(study.trials()) == 7
            # each ask's cache hit is logged without a copy of the prompt and answer it repeats
            hits = [c for c in study.llm_calls() if c.outcome == "cached"]
            assert hits and all(c.prompt == c.response == "" for c in hits), hits
            sent = [c for c in study.llm_calls() if c.outcome != "cached"]
            assert len(sent) == n_requests and all(c.prompt and c.response for c in sent)


@pytest.mark.parametrize(
    "configured, served",
    [("test-model", None), ("test-model", "test-model-2024-07-18"), ("", None)],
    ids=["same-model", "dated-snapshot", "model-from-endpoint"],
)
def test_stored_answers_are_reused_after_a_restart(
    server_factory, study_name, tmp_path, configured, served
):
    """The same prompt on the same study is not sent again after a restart: the advisor's cache is
    the study's stored call log (bbo.llm.StoredAnswers), not process memory. Also when the answer
    names another model than the one asked for, or none was configured (found through /models)."""
    from bbo_client import Client

    db = "sqlite:///" + str(tmp_path / "llm-restart.db")
    with ChatServer(_responder, served_model=served) as chat:
        env = {**_server_env(chat), "BBO_LLM_MODEL": configured}
        srv = server_factory(db=db, env=env)
        with Client(srv.address) as c:
            study = _study(c, study_name)
            for t in study.ask(5):
                study.tell(t.id, {"f": (t.params["x"] - 0.2) ** 2 + (t.params["y"] - 0.2) ** 2})
            study.ask(1)  # BO phase: the priors prompt has been answered
            sent = [ChatServer.prompt_of(b) for b in chat.requests]
            assert any("priors" in p for p in sent), sent
        assert srv.stop() == 0
        srv = server_factory(db=db, env=env)
        with Client(srv.address) as c:
            study = c.study(study_name)
            (t,) = study.ask(1)  # a fresh strategy derives the priors again: from the stored answer
            assert t.origin == "prior_guided_bo"
            assert any(
                call.purpose == "priors" and call.latency_seconds == 0.0
                for call in study.llm_calls()
            )
        assert len(chat.requests) == len(sent)


def test_garbage_llm_answers_fall_back_to_plain_design_with_reason(server_factory, study_name):
    from bbo_client import Client

    with ChatServer(_garbage) as chat:
        srv = _server(server_factory, chat)
        with Client(srv.address) as c:
            study = _study(c, study_name)
            trials = study.ask(3)
            assert len(trials) == 3
            assert all(t.origin == "initial_design" for t in trials)
            assert all(0 <= t.params["x"] <= 1 and 0 <= t.params["y"] <= 1 for t in trials)
            calls = study.llm_calls()
            assert calls and all(c.outcome != "ok" for c in calls)
            assert any("unusable" in c.outcome or "json" in c.outcome.lower() for c in calls), [
                c.outcome for c in calls
            ]


def test_unreachable_endpoint_never_blocks_asks_or_tells(server_factory, study_name):
    from bbo_client import Client

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = server_factory(
        env={
            **os.environ,
            "BBO_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "BBO_LLM_MODEL": "m",
            "BBO_LLM_TIMEOUT": "2",
        }
    )
    with Client(srv.address) as c:
        study = _study(c, study_name)
        t = study.ask(1)[0]
        study.tell(t.id, {"f": 1.0})
        assert study.trials()[0].state == "COMPLETED"
        assert any(call.outcome != "ok" for call in study.llm_calls())


def test_a_slow_llm_does_not_hold_up_other_studies_asks(server_factory, study_name):
    """With one fit slot (--workers 1), an LLM study whose endpoint is still answering must not keep
    a plain study's ask waiting: LLM I/O happens before a fit slot is taken (before, the plain ask
    waited for the LLM). The endpoint holds its answer until the test releases it (or 20 s pass,
    well inside the client timeout and ask budget set here)."""
    import threading

    from bbo_client import Client, Float

    gate = threading.Event()

    def slow(body: dict) -> Reply:
        gate.wait(30)
        return _responder(body)

    latest = threading.Timer(
        20, gate.set
    )  # the latest release, so that a regression fails instead of hanging
    latest.daemon = True
    latest.start()

    with ChatServer(slow) as chat:
        env = {**_server_env(chat), "BBO_LLM_TIMEOUT": "120", "BBO_LLM_ASK_BUDGET": "120"}
        srv = server_factory(env=env, args=["--workers", "1"])
        with Client(srv.address) as c:
            llm_study = _study(c, study_name)
            plain = c.create_study(
                study_name + "-plain", parameters=[Float("x", 0, 1)], objectives="y"
            )
            asked = threading.Thread(target=lambda: llm_study.ask(2), daemon=True)
            asked.start()
            while not chat.requests and asked.is_alive():
                gate.wait(0.01)
            assert chat.requests, "the LLM study never called its endpoint"
            (t,) = plain.ask()
            released_before = gate.is_set()
            gate.set()
            latest.cancel()
            asked.join(60)
            assert not released_before and t.origin
            assert len(llm_study.trials()) == 2


def test_stored_answer_lookups_read_only_the_calls_logged_since_the_last(storage):
    """A study whose priors never come (a dead endpoint, unusable answers) logs a priors call on
    every ask, and every ask looks the prompt up again: each lookup reads the calls logged since
    the previous one, a page at a time, not the study's whole log (which grows with its asks)."""
    from bbo.llm import LlmAdvisor, StoredAnswers
    from bbo.storage import LlmCallRecord

    uid = storage.create_study("t", "s", {"parameters": []}, 1).uid
    key = LlmAdvisor.cache_key(f"t/s/{uid}", "priors", "the prompt")
    read: list[int] = []
    real = storage.list_llm_calls

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        read.append(len(out))
        return out

    storage.list_llm_calls = counted
    answers = StoredAnswers(storage)
    for _ in range(40):
        storage.log_llm_call(uid, LlmCallRecord("priors", "m", "the prompt", "", "timeout"))
    assert answers.get(key) is None and sum(read) == 40
    read.clear()
    storage.log_llm_call(uid, LlmCallRecord("priors", "m", "the prompt", "", "timeout"))
    assert answers.get(key) is None and sum(read) == 1
    storage.log_llm_call(uid, LlmCallRecord("priors", "m", "the prompt", "{}", "ok", 3, 4))
    storage.log_llm_call(uid, LlmCallRecord("priors", "m", "other prompt", "{}", "ok"))
    read.clear()
    hit = answers.get(key)
    assert hit is not None and hit["text"] == "{}" and hit["completion_tokens"] == 4
    assert sum(read) == 2 and max(read) <= 16
    assert answers.get(key) == hit  # found again (evicted from the advisor's memory, say)


def test_an_ask_waits_for_the_llm_within_its_own_deadline(server_factory, study_name):
    """An endpoint that does not answer costs an ask at most half of what is left of its deadline
    (and at most the ask budget): the ask then goes on with the plain design instead of failing
    DEADLINE_EXCEEDED while the server still waits for the LLM (60 s by default)."""
    import threading
    import time

    from bbo_client import Client

    gate = threading.Event()

    def hung(body: dict) -> Reply:
        gate.wait(30)
        return _responder(body)

    with ChatServer(hung) as chat:
        env = {**_server_env(chat), "BBO_LLM_TIMEOUT": "60", "BBO_LLM_ASK_BUDGET": "60"}
        srv = server_factory(env=env)
        try:
            with Client(srv.address, ask_timeout=6.0) as c:
                study = _study(c, study_name)
                t0 = time.monotonic()
                trials = study.ask(2)
                assert time.monotonic() - t0 < 6.0
                assert [t.origin for t in trials] == ["initial_design"] * 2
        finally:
            gate.set()


def test_lone_surrogates_in_an_answer_neither_fail_the_ask_nor_lose_the_call(
    server_factory, study_name
):
    """JSON may escape half a surrogate pair (``"\\ud800"``): in the answer's body or in the JSON
    the model wrote. Such text cannot be stored as UTF-8 or sent in a protobuf string, and a
    warm-start rationale holding it failed every ask of the initial design INTERNAL (and the call
    went unstored); it is stored and shown with U+FFFD instead."""
    from bbo_client import Client

    def respond(body: dict) -> Reply:
        reply = _responder(body)
        text = reply.content.replace(
            '"guess 0"', '"guess \\ud800 0"'
        )  # escaped in the model's JSON
        return Reply(text.replace('"rationale": "r"', '"rationale": "\udfff"') + " \udbff")

    with ChatServer(respond) as chat:
        srv = _server(server_factory, chat)
        with Client(srv.address) as c:
            study = _study(c, study_name)
            trials = study.ask(5)
            ws = [t for t in trials if t.origin == "llm_warmstart"]
            assert [t.rationale for t in ws] == ["guess \ufffd 0", "guess 1"]
            calls = {call.purpose: call for call in study.llm_calls()}
            assert calls["warmstart"].outcome == "ok" and calls["priors"].outcome == "ok"
            assert calls["warmstart"].response.endswith(" \ufffd")
