"""bbo.llm end to end over HTTP: the real ``openai`` client against bbo/testing/chat_server.py, a local
chat-completions server with scripted answers (no real LLM). Every failure mode must end in valid
suggestions (after the Sobol fill) and a recorded reason, never an exception."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import time

import pytest
from test_llm_parse import GOOD, make_spec

from bbo.llm import LlmAdvisor, LlmConfig, fill_with_sobol
from bbo.llm.advisor import UNUSABLE_RETRIES
from bbo.spec import LlmOptions
from bbo.testing.chat_server import ChatServer, Reply
from bbo.trial import Metric, Trial, TrialState

N = 4


def cfg(srv: ChatServer, **kw) -> LlmConfig:
    base = dict(
        base_url=srv.url, api_key="test", model="test-model", timeout_s=2.0, ask_budget_s=5.0
    )
    base.update(kw)
    return LlmConfig(**base)


def candidates(*params, rationale="looks good") -> str:
    return json.dumps({"candidates": [{"rationale": rationale, "params": p} for p in params]})


def distinct_good(k):
    return [{**GOOD, "layers": 1 + i} for i in range(k)]


def finish(spec, res, n=N):
    """What the ask path does: take the LLM's candidates, fill the rest with Sobol, check all valid."""
    out = fill_with_sobol(spec.space, res.suggestions, n, seed=0, reason=res.reason)
    assert len(out) == n
    keys = set()
    for s in out:
        assert spec.space.validate_params(s.params) == s.params
        keys.add(tuple(sorted(s.params.items())))
    assert len(keys) == n
    return out


def test_good_json_with_schema_and_usage():
    spec = make_spec()
    with ChatServer(
        [Reply(candidates(*distinct_good(N)), prompt_tokens=321, completion_tokens=123)]
    ) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
        body = srv.requests[0]
    assert res.reason == "" and len(res.suggestions) == N
    assert all(s.origin == "llm_warmstart" and s.rationale == "looks good" for s in res.suggestions)
    (rec,) = res.calls
    assert rec.outcome == "ok" and rec.purpose == "warmstart" and rec.model == "test-model"
    assert (rec.prompt_tokens, rec.completion_tokens) == (321, 123) and rec.latency_seconds > 0
    assert "ResNet-18" in rec.prompt and rec.response.startswith('{"candidates"')
    assert (
        body["response_format"]["type"] == "json_schema"
        and body["response_format"]["json_schema"]["strict"] is True
    )
    finish(spec, res)


def test_out_of_range_and_wrong_types_are_repaired_or_rejected():
    spec = make_spec()
    bad = [
        {
            "lr": "0.001",
            "layers": 3.0,
            "opt": "ADAM",
            "batch": 60,
            "dropout": 0.52,
            "wd": "0.0",
        },  # all repairable
        {
            "lr": 5.0,
            "layers": 4,
            "opt": "adam",
            "batch": 64,
            "dropout": 0.1,
            "wd": 0.0,
        },  # lr way out: rejected
        {
            "lr": 0.001,
            "layers": "many",
            "opt": "adam",
            "batch": 64,
            "dropout": 0.1,
            "wd": 0.0,
        },  # rejected
    ]
    with ChatServer([Reply(candidates(*bad))]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
    assert len(res.suggestions) == 1
    p = res.suggestions[0].params
    assert (
        p["layers"] == 3
        and p["opt"] == "adam"
        and p["batch"] == 64
        and p["dropout"] == 0.5
        and p["wd"] == 0.0
    )
    assert res.reason.startswith("llm gave 1 of 4 usable candidates")
    assert res.calls[0].outcome.startswith("partial:")
    out = finish(spec, res)
    assert [s.origin for s in out] == ["llm_warmstart"] + ["initial_design"] * 3
    assert out[1].reason == res.reason


def test_prose_around_json():
    spec = make_spec()
    text = (
        "Sure! Based on experience with ResNets, I suggest:\n\n"
        + candidates(*distinct_good(2))
        + "\n\nGood luck!"
    )
    with ChatServer([Reply(text)]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], 2)
    assert res.reason == "" and len(res.suggestions) == 2


@pytest.mark.parametrize(
    "reply, reason",
    [
        (Reply(""), "empty response"),
        (Reply(None, refusal="I can't help with that."), "refusal: I can't help with that."),
        (Reply(status=429), "error: RateLimitError 429"),
        (Reply(status=500), "error: InternalServerError 500"),
        (Reply(status=503), "error: InternalServerError 503"),
        (
            Reply("Here are some thoughts, but no JSON."),
            "unusable answer: no valid candidates (no JSON candidates in the answer)",
        ),
    ],
)
def test_failures_become_reasons(reply, reason):
    spec = make_spec()
    with ChatServer([reply]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
    assert res.suggestions == [] and res.reason == reason
    assert res.calls[0].outcome == reason
    out = finish(spec, res)
    assert all(s.origin == "initial_design" and s.reason == reason for s in out)


def _held(reply_text: str):
    """A responder that holds every request until released; ``answered`` is set once it replies."""
    import threading

    release, answered = threading.Event(), threading.Event()

    def respond(body):
        release.wait(60)
        answered.set()
        return Reply(reply_text)

    return respond, release, answered


def test_hang_past_timeout_returns_within_the_bound():
    spec = make_spec()
    respond, release, answered = _held(candidates(GOOD))
    with ChatServer(respond) as srv:
        try:
            res = LlmAdvisor(cfg(srv, timeout_s=0.6)).warmstart(spec, [], N)
            # The advisor gave up while the endpoint was still holding its answer.
            assert not answered.is_set()
        finally:
            release.set()
    assert res.reason == "timeout" and res.calls[0].outcome == "timeout"
    finish(spec, res)


def test_ask_budget_bounds_prepare_and_a_late_answer_goes_to_the_next_ask():
    """Priors and warm start run in the background: an ask waits for them at most its budget
    (shorter than the call timeout), and the answer that arrives later is used by the next ask,
    which also hands over the calls' audit records (once)."""
    import threading

    spec = make_spec()
    release = threading.Event()
    answered: list[str] = []

    def respond(body):
        release.wait(30)
        name = body["response_format"]["json_schema"]["name"]
        answered.append(name)
        if name == "parameter_priors":
            return Reply(json.dumps({"priors": {"lr": PRIOR_LR}}))
        return Reply(candidates(*distinct_good(2)))

    with ChatServer(respond) as srv:
        adv = LlmAdvisor(cfg(srv, timeout_s=30.0, ask_budget_s=0.7))
        try:
            plan = adv.prepare(spec, [], 2, study_key="s")
            # Both calls outlived the ask budget, not the (much longer) call timeout.
            assert not answered and adv.pending() == 2
            plan_b = adv.prepare(spec, [], 2, study_key="s")  # does not wait a second time
            assert not answered and plan_b.reasons == plan.reasons
        finally:
            release.set()
        assert plan.spec is spec and plan.warmstart == [] and plan.calls == []
        assert set(plan.reasons) == {"priors", "warmstart"}
        assert all(r.startswith("llm still answering") for r in plan.reasons.values())
        deadline = time.monotonic() + 30
        while adv.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        plan2 = adv.prepare(spec, [], 2, study_key="s")  # the answers have arrived
        plan3 = adv.prepare(spec, [], 2, study_key="s")  # answered from the cache
    assert len(srv.requests) == 2 and plan_b.calls == []
    assert sorted(c.purpose for c in plan2.calls) == ["priors", "warmstart"]
    assert all(not c.cached and c.outcome.startswith(("ok", "partial")) for c in plan2.calls), [
        c.outcome for c in plan2.calls
    ]
    assert [{k: s.params[k] for k in GOOD} for s in plan2.warmstart] == distinct_good(2)
    assert [p.parameter for p in plan2.spec.priors] == ["lr"]
    assert all(c.cached for c in plan3.calls) and plan3.warmstart == plan2.warmstart


PRIOR_LR = {"rationale": "r", "best_guess": 0.001, "low": 1e-4, "high": 1e-2, "confidence": 0.4}


def test_server_rejecting_response_format_falls_back_to_plain_text():
    spec = make_spec()
    with ChatServer([Reply(candidates(*distinct_good(N)))], reject_response_format=True) as srv:
        adv = LlmAdvisor(cfg(srv))
        res = adv.warmstart(spec, [], N)
        assert [("response_format" in b) for b in srv.requests] == [True, False]
        res2 = adv.propose(spec, [], 2)  # remembered: no second rejected attempt
        assert [("response_format" in b) for b in srv.requests] == [True, False, False]
    assert res.reason == "" and len(res.suggestions) == N and res.calls[0].outcome == "ok"
    assert adv.client().structured_supported is False
    assert len(res2.suggestions) == 2 and res2.suggestions[0].origin == "llm_proposal"


def test_server_rejecting_max_tokens_and_temperature():
    spec = make_spec()
    with ChatServer([Reply(candidates(GOOD))], reject_fields=("max_tokens", "temperature")) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], 1)
        last = srv.requests[-1]
    assert res.reason == "" and len(srv.requests) == 3
    assert (
        "max_completion_tokens" in last and "temperature" not in last and "response_format" in last
    )


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = make_spec()
    adv = LlmAdvisor(LlmConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=1.0))
    res = adv.warmstart(spec, [], N)
    assert res.reason == "error: APIConnectionError" and res.calls[0].outcome == res.reason
    finish(spec, res)


def test_an_oversized_answer_is_refused_unread_and_unstored():
    """An endpoint that ignores max_tokens (here 2 MiB of prose) is read no further than
    MAX_ANSWER_BYTES: the call fails with that reason, and nothing of the answer is kept (it used
    to be stored whole: a 75 MB answer made the study's ListLlmCalls fail for good)."""
    from bbo.llm.client import MAX_ANSWER_BYTES

    spec = make_spec()
    with ChatServer([Reply("no idea " * (MAX_ANSWER_BYTES // 4))]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
    (rec,) = res.calls
    assert res.reason == rec.outcome == f"error: answer larger than {MAX_ANSWER_BYTES} bytes"
    assert rec.response == ""
    finish(spec, res)


def test_a_compressed_answer_is_refused_unread():
    """bbo asks for answers as they are; a gzip body (a few KiB that decode to far more than
    MAX_ANSWER_BYTES, which counts the bytes before decoding) is refused, nothing of it kept."""
    from bbo.llm.client import MAX_ANSWER_BYTES

    spec = make_spec()
    with ChatServer([Reply("no idea " * MAX_ANSWER_BYTES, gzip=True)]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
    (rec,) = res.calls
    assert (
        res.reason == rec.outcome == "error: answer compressed (gzip) although asked for as it is"
    )
    assert rec.response == ""
    finish(spec, res)


def test_a_trickled_answer_ends_at_the_bound_and_frees_its_thread():
    """An answer that keeps coming a few bytes at a time (each read within the HTTP timeout) is cut
    at the call's bound, and the thread reading it ends too instead of reading on for minutes."""
    import threading

    spec = make_spec()
    answer = candidates(*distinct_good(N), rationale="r" * 2000)  # ~8 KB: 25 s to send in full
    with ChatServer([Reply(answer, trickle_s=0.05)]) as srv:
        res = LlmAdvisor(cfg(srv, timeout_s=0.8)).warmstart(spec, [], N)
        assert res.reason == "timeout"  # unbounded, the whole answer arrives (25 s) and is read
        end = time.monotonic() + 3.0
        while time.monotonic() < end and any(
            t.name == "bbo-llm-call" for t in threading.enumerate()
        ):
            time.sleep(0.05)
        assert not any(t.name == "bbo-llm-call" for t in threading.enumerate())
    finish(spec, res)


def test_calls_an_endpoint_holds_past_their_bound_are_capped():
    """Headers that trickle in (a line within each read timeout, without end) keep a call's thread
    and connection after its caller stopped waiting: past ``max_overdue_calls`` of them nothing is
    sent until one ends (before, each call left one more thread behind), then calls go out again."""
    import threading

    spec = make_spec()
    release = threading.Event()
    with ChatServer([Reply(candidates(GOOD), hold_headers=release)]) as srv:
        adv = LlmAdvisor(cfg(srv, timeout_s=0.5, max_overdue_calls=2))
        try:
            held = [adv.warmstart(spec, [], 1, study_key=f"s{i}").reason for i in range(2)]
            busy = adv.warmstart(spec, [], 1, study_key="s2")
            sent = len(srv.requests)
        finally:
            release.set()
        end = time.monotonic() + 10
        later = adv.warmstart(spec, [], 1, study_key="s3")
        while later.reason.startswith("llm busy") and time.monotonic() < end:
            time.sleep(0.05)
            later = adv.warmstart(spec, [], 1, study_key="s3")
    assert held == ["timeout", "timeout"] and sent == 2
    assert busy.reason == busy.calls[0].outcome
    assert busy.reason == "llm busy: 2 earlier calls still running past their time bound"
    assert later.reason == "" and len(later.suggestions) == 1
    finish(spec, busy)


def test_an_answer_nested_too_deep_for_the_json_parser_is_unusable_not_an_error():
    spec = make_spec()
    with ChatServer([Reply("[" * 100_000 + "]" * 100_000)]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
    assert res.reason == "unusable answer: no valid candidates (no JSON candidates in the answer)"
    assert res.calls[0].outcome == res.reason
    finish(spec, res)


def test_retry_once_after_429():
    spec = make_spec()
    with ChatServer(
        [Reply(status=429, retry_after=0.1), Reply(candidates(*distinct_good(N)))]
    ) as srv:
        res = LlmAdvisor(cfg(srv, max_retries=1)).warmstart(spec, [], N)
        assert len(srv.requests) == 2
    assert res.reason == ""


def test_repeated_failures_stop_calling_for_a_while():
    spec = make_spec()
    with ChatServer([Reply(status=500)]) as srv:
        adv = LlmAdvisor(cfg(srv, failures_before_cooldown=3, cooldown_s=60))
        reasons = [adv.propose(spec, [], 2, study_key=f"s{i}").reason for i in range(5)]
        assert len(srv.requests) == 3
    assert reasons[:3] == ["error: InternalServerError 500"] * 3
    assert reasons[3].startswith("llm unavailable: 3 calls failed in a row")


def test_unusable_answers_are_not_asked_forever():
    spec = make_spec()
    with ChatServer([Reply("no idea")]) as srv:
        adv = LlmAdvisor(cfg(srv))
        reasons = [
            adv.warmstart(spec, [], N, study_key="s").reason for _ in range(UNUSABLE_RETRIES + 2)
        ]
        assert len(srv.requests) == UNUSABLE_RETRIES
    assert reasons[-1].startswith("answers to this prompt were unusable")


def test_cache_same_prompt_same_study_is_asked_once():
    class DictCache:
        def __init__(self):
            self.d = {}

        def get(self, key):
            return self.d.get(key)

        def put(self, key, value):
            self.d[key] = json.loads(json.dumps(value))  # must be JSON-able (persisted by storage)

    spec = make_spec()
    store = DictCache()
    with ChatServer([Reply(candidates(*distinct_good(N)))]) as srv:
        adv = LlmAdvisor(cfg(srv), cache=store)
        r1 = adv.warmstart(spec, [], N, study_key="study-a")
        r2 = adv.warmstart(spec, [], N, study_key="study-a")
        assert len(srv.requests) == 1
        assert r2.calls[0].cached and not r1.calls[0].cached
        assert [s.params for s in r1.suggestions] == [s.params for s in r2.suggestions]
        # a fresh advisor (another process) finds it in the persistent cache
        r3 = LlmAdvisor(cfg(srv), cache=store).warmstart(spec, [], N, study_key="study-a")
        assert len(srv.requests) == 1 and r3.calls[0].cached
        # another study asks again
        LlmAdvisor(cfg(srv), cache=store).warmstart(spec, [], N, study_key="study-b")
        assert len(srv.requests) == 2
        # trials already evaluated are dropped from the cached answer
        t = Trial(
            0,
            dict(r1.suggestions[0].params),
            TrialState.COMPLETED,
            {"val_loss": Metric(0.3), "latency_ms": Metric(1.0)},
        )
        r4 = adv.warmstart(spec, [t], N, study_key="study-a")
        assert len(srv.requests) == 2 and len(r4.suggestions) == N - 1


def test_model_discovered_from_the_server():
    spec = make_spec()
    with ChatServer([Reply(candidates(GOOD))], models=("llama-3.1-8b-instruct", "other")) as srv:
        adv = LlmAdvisor(cfg(srv, model=""))
        res = adv.warmstart(spec, [], 1)
        assert srv.model_requests == 1 and srv.requests[0]["model"] == "llama-3.1-8b-instruct"
    assert res.calls[0].model == "llama-3.1-8b-instruct" and res.reason == ""


@pytest.mark.parametrize(
    "listed, served, model, reason",
    [
        ((123, None, "", "m" * 1000, "listed"), None, "listed", ""),
        ((123, None, "", " "), None, "", "no model configured and the server lists none usable"),
        (("listed",), 123, "listed", ""),
        (("listed",), "s" * 1000, "listed", ""),
    ],
    ids=["skips-unusable", "none-usable", "served-int", "served-long"],
)
def test_model_names_from_the_endpoint_are_strings_of_bounded_length(listed, served, model, reason):
    """A model name the endpoint lists or answers with is stored with every call record: a
    number or null there lost the records (storage refused them), an empty one sent no request
    yet came back as an answer, and a long one was stored again with each ask's cache hit."""
    spec = make_spec()
    with ChatServer([Reply(candidates(GOOD))], models=listed, served_model=served) as srv:
        res = LlmAdvisor(cfg(srv, model="")).warmstart(spec, [], 1)
    (rec,) = res.calls
    assert rec.model == model and res.reason.startswith(reason)
    assert [b["model"] for b in srv.requests] == ([model] if model else [])


def test_truncated_answer_keeps_complete_candidates():
    spec = make_spec()
    full = candidates(*distinct_good(3))
    with ChatServer([Reply(full[: len(full) - 40], finish_reason="length")]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], 3)
    assert len(res.suggestions) == 2 and res.reason.startswith("llm gave 2 of 3")
    finish(spec, res, 3)


def test_disabled_is_plain_bo():
    spec = make_spec()
    adv = LlmAdvisor(LlmConfig.from_env({}))
    assert not adv.enabled
    res = adv.warmstart(spec, [], N)
    assert res.reason == "llm disabled" and res.calls == []
    plan = adv.prepare(spec, [], 3)
    assert plan.spec is spec and plan.calls == [] and plan.warmstart == []


def test_config_from_env():
    c = LlmConfig.from_env(
        {
            "BBO_LLM_BASE_URL": "http://h:8000/v1/",
            "BBO_LLM_MODEL": "m",
            "BBO_LLM_TIMEOUT": "12",
            "BBO_LLM_API_KEY": "k",
            "BBO_LLM_MAX_RETRIES": "5",
        }
    )
    assert (c.base_url, c.model, c.timeout_s, c.api_key, c.max_retries, c.enabled) == (
        "http://h:8000/v1",
        "m",
        12.0,
        "k",
        1,
        True,
    )
    with pytest.raises(ValueError):
        LlmConfig.from_env({"BBO_LLM_TIMEOUT": "soon"})
    assert "k" not in c.describe()


def _route(priors_answer: str, candidates_answer: str):
    def respond(body):
        name = (body.get("response_format") or {}).get("json_schema", {}).get("name", "")
        return Reply(priors_answer if name == "parameter_priors" else candidates_answer)

    return respond


def test_prepare_priors_and_warmstart_feed_the_strategy():
    from bbo.strategy import GenerationStrategy

    spec = make_spec()
    priors = {
        "priors": {
            "lr": {
                "rationale": "r",
                "best_guess": 1e-3,
                "low": 1e-4,
                "high": 1e-2,
                "confidence": 0.8,
            },
            "opt": {
                "rationale": "r",
                "probabilities": {"adam": 0.7, "sgd": 0.2, "rmsprop": 0.1},
                "confidence": 0.3,
            },
        }
    }
    with ChatServer(_route(json.dumps(priors), candidates(*distinct_good(6)))) as srv:
        adv = LlmAdvisor(cfg(srv))
        plan = adv.prepare(spec, [], 3, study_key="s")
        assert len(srv.requests) == 2
        assert plan.reasons.get("warmstart", "") == "" and plan.reasons["priors"].startswith(
            "llm gave priors for 2 of 6"
        )
        assert {p.parameter for p in plan.spec.priors} == {"lr", "opt"} and all(
            p.confidence <= 0.5 for p in plan.spec.priors
        )
        n_ws = 4  # a third of the initial design (12 for 6 parameters)
        assert len(plan.warmstart) == n_ws
        gs = GenerationStrategy(plan.spec)
        out = gs.suggest([], 3, warmstart=plan.warmstart)
        assert [s.origin for s in out] == [
            "llm_warmstart",
            "initial_design",
            "initial_design",
        ]  # the first candidate opens the design
        trials = [
            Trial(i, s.params, TrialState.PENDING, origin=s.origin) for i, s in enumerate(out)
        ]
        plan2 = adv.prepare(spec, trials, 3, study_key="s")
        assert len(srv.requests) == 2  # both answers came from the cache
        assert len(plan2.warmstart) == n_ws - 1 and out[0].params not in [
            w.params for w in plan2.warmstart
        ]
        out2 = gs.suggest(
            trials, 9, warmstart=plan2.warmstart
        )  # nothing measured yet: the other candidates close the design
        assert [s.origin for s in out2] == ["initial_design"] * 6 + ["llm_warmstart"] * 3


def test_absurd_categorical_weights_do_not_void_the_other_priors():
    """Categorical weights near the float limit summed to inf and normalized to nan, which failed the
    merged spec's validation and dropped every prior of the answer; now they are read as equal."""
    spec = make_spec()
    absurd = {
        "opt": {
            "rationale": "r",
            "probabilities": {"adam": 1e308, "Adam": 1e308, "sgd": 1e308},
            "confidence": 0.4,
        }
    }
    good = {
        "lr": {"rationale": "r", "best_guess": 1e-3, "low": 1e-4, "high": 1e-2, "confidence": 0.8}
    }
    with ChatServer([Reply(json.dumps({"priors": {**absurd, **good}}))]) as srv:
        res = LlmAdvisor(cfg(srv)).priors(spec, study_key="s")
    by = {p.parameter: p for p in res.priors}
    assert set(by) == {"lr", "opt"} and all(
        math.isfinite(v) for v in by["opt"].probabilities.values()
    )
    assert (
        by["opt"].probabilities["adam"]
        > by["opt"].probabilities["sgd"]
        > by["opt"].probabilities["rmsprop"]
    )


# ---- issue 21: what tenants may see and name ----------------------------------------------------------
FAKE_KEY = "sk-live-51HxFAKEfakeFAKE0123456789abcdefXYZ"


def test_upstream_error_text_is_neither_stored_nor_logged_above_debug(caplog):
    """An endpoint's error body may echo the key: the stored outcome names the exception class and
    the HTTP status only; the detail is logged at debug level, redacted."""
    import logging

    spec = make_spec()
    body = f"Incorrect API key provided: {FAKE_KEY}. Authorization: Bearer {FAKE_KEY}"
    with ChatServer([Reply(status=401, error_message=body)]) as srv:
        with caplog.at_level(logging.DEBUG, logger="bbo.llm"):
            res = LlmAdvisor(cfg(srv, api_key=FAKE_KEY)).warmstart(spec, [], N)
    (rec,) = res.calls
    assert res.reason == rec.outcome == "error: AuthenticationError 401"
    assert FAKE_KEY not in json.dumps(dataclasses.asdict(rec))
    assert FAKE_KEY not in caplog.text and "[redacted]" in caplog.text
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if "Incorrect" in r.message)


def test_credentials_in_the_endpoint_url_are_neither_logged_nor_stored(caplog):
    """An endpoint URL may carry a credential (``https://user:key@host/v1``, ``?api-key=...``):
    the server's log line about the LLM module and the debug log of a failed call mask it."""
    import logging

    spec = make_spec()
    password, query_key = "Pa55w0rdInTheUrl", "QueryKeyInTheUrl"
    with ChatServer(
        [Reply(status=401, error_message=f"bad key {query_key} for {password}")]
    ) as srv:
        host = srv.url.split("://", 1)[1]
        shown = cfg(
            srv, base_url=f"http://svc-user:{password}@{host}?api-key={query_key}"
        ).describe()
        assert host.split("/")[0] in shown and "api-key=***" in shown, shown
        assert not any(s in shown for s in (password, query_key, "svc-user")), shown
        c = cfg(srv, base_url=f"http://svc-user:{password}@{host}")
        assert password not in c.describe()
        with caplog.at_level(logging.DEBUG, logger="bbo.llm"):
            res = LlmAdvisor(c).warmstart(spec, [], N)
    (rec,) = res.calls
    assert rec.outcome == "error: AuthenticationError 401" and "bad key" in caplog.text
    assert password not in caplog.text
    assert password not in json.dumps(dataclasses.asdict(rec))


def test_models_a_study_may_name():
    from bbo.errors import SpecError

    with ChatServer([Reply(candidates(GOOD))]) as srv:
        adv = LlmAdvisor(cfg(srv, models=("big-model", "test-model")))
        assert adv.config.allowed_models == ("test-model", "big-model")
        for ok in ("", "test-model", "big-model"):
            adv.check_model(ok)
        with pytest.raises(SpecError) as e:
            adv.check_model("gpt-9")
        assert e.value.field == "llm.model"
        assert "'gpt-9'" in e.value.message and "'big-model'" in e.value.message
        # a study spec naming another model (stored while the module was off, say) is not sent
        spec = dataclasses.replace(make_spec(), llm=LlmOptions(enabled=True, model="gpt-9"))
        res = adv.warmstart(spec, [], N)
        assert res.reason.startswith("not asked: llm.model 'gpt-9' is not served here")
        assert srv.requests == [] and res.calls[0].outcome == res.reason
        # one client per allowed model, never one per name a tenant makes up
        adv.warmstart(
            dataclasses.replace(make_spec(), llm=LlmOptions(enabled=True, model="big-model")), [], N
        )
        with pytest.raises(SpecError):
            adv.client("made-up")
        assert set(adv._clients) == {"big-model"}
    assert LlmAdvisor(LlmConfig()).check_model("anything") is None  # module off: nothing to refuse


def test_models_from_the_environment():
    c = LlmConfig.from_env({"BBO_LLM_BASE_URL": "http://x/v1", "BBO_LLM_MODELS": " a, b ,,a"})
    assert c.model == "a" and c.allowed_models == ("a", "b")  # no default: the first listed
    c = LlmConfig.from_env({"BBO_LLM_BASE_URL": "http://x/v1", "BBO_LLM_MODEL": "m"})
    assert c.allowed_models == ("m",)  # default: only the configured model


def test_prefetch_runs_ahead_and_stores_its_calls():
    """prefetch returns at once; the calls run in the background, their records go to the study's
    log when they end, and the first ask finds the answers without sending anything again."""
    import threading

    spec = make_spec()
    release = threading.Event()

    def respond(body):
        release.wait(30)
        if body["response_format"]["json_schema"]["name"] == "parameter_priors":
            return Reply(json.dumps({"priors": {"lr": PRIOR_LR}}))
        return Reply(candidates(*distinct_good(2)))

    stored: list = []
    with ChatServer(respond) as srv:
        adv = LlmAdvisor(cfg(srv, timeout_s=30.0))
        started = adv.prefetch(spec, study_key="t/s/1", record=stored.append)
        assert sorted(started) == ["priors", "warmstart"] and stored == []  # not waited for
        assert adv.prefetch(spec, study_key="t/s/1") == []  # already running: not sent twice
        release.set()
        deadline = time.monotonic() + 30
        while len(stored) < 2 and time.monotonic() < deadline:  # records come when calls end
            time.sleep(0.05)
        plan = adv.prepare(spec, [], 2, study_key="t/s/1")
        assert len(srv.requests) == 2
    assert sorted(c.purpose for c in stored) == ["priors", "warmstart"]
    assert all(c.latency_seconds > 0 and c.outcome.startswith(("ok", "partial")) for c in stored)
    assert [p.parameter for p in plan.spec.priors] == ["lr"] and len(plan.warmstart) == 2
    assert len(plan.calls) == 2 and all(c.cached for c in plan.calls)  # cache hits, not calls
    assert adv.prefetch(spec, study_key="t/s/1") == []  # answered: nothing left to fetch
    off = dataclasses.replace(make_spec(), llm=LlmOptions(enabled=False))
    assert adv.prefetch(off, study_key="t/s/2") == []


# ---- small local models: compact prompts, the schema as a llguidance grammar ----------------------------
def test_compact_prompts_carry_the_shape_in_the_schema_not_in_examples():
    from bbo.llm.prompt import priors_prompt, warmstart_prompt

    spec = make_spec()
    full, small = warmstart_prompt(spec, 3), warmstart_prompt(spec, 3, compact=True)
    assert len(small.text) < 0.6 * len(full.text)
    assert "Reply with JSON like" not in small.text  # no example values for a small model to copy
    arr = small.schema["properties"]["candidates"]
    assert arr["minItems"] == arr["maxItems"] == 3
    params = arr["items"]["properties"]["params"]["properties"]
    assert params["lr"]["minimum"] == 1e-5 and params["layers"]["maximum"] == 8
    assert arr["items"]["properties"]["rationale"]["maxLength"] > 0
    pr = priors_prompt(spec, compact=True)
    assert "rationale" not in json.dumps(pr.schema)
    assert (
        max(
            pr.schema["properties"]["priors"]["properties"]["lr"]["properties"]["confidence"][
                "enum"
            ]
        )
        <= 0.5
    )


def test_llguidance_sends_the_schema_as_a_grammar():
    spec = make_spec()
    with ChatServer([Reply(candidates(*distinct_good(2)))]) as srv:
        adv = LlmAdvisor(cfg(srv, compact=True, llguidance=True))
        res = adv.warmstart(spec, [], 2)
        body = srv.requests[0]
    assert "response_format" not in body
    assert body["grammar"].startswith("%llguidance {}\nstart: %json {")
    assert (
        json.loads(body["grammar"].split("%json ", 1)[1])["properties"]["candidates"]["maxItems"]
        == 2
    )
    assert len(res.suggestions) == 2 and res.calls[0].outcome == "ok"


@pytest.mark.parametrize(
    "body",
    [
        {"choices": [{"message": {"content": "{}"}}], "usage": {"prompt_tokens": "1e999"}},
        {"choices": [{"message": {"content": "{}"}}], "usage": {"completion_tokens": 1e400}},
        {"choices": [{"message": None}]},
        {"choices": [1]},
        {"choices": "x"},
        {"choices": [{"message": {"content": ["a"]}}]},
        {"model": 5, "choices": [{"message": {"content": "hello"}}]},
    ],
)
def test_a_response_body_of_the_wrong_shape_is_an_outcome_not_an_exception(body):
    """The openai package hands a body's fields over unchecked: the client reads them defensively
    (its contract: nothing raises to callers), so the call is recorded and BO goes on."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        spec = make_spec()
        config = LlmConfig(base_url=url, api_key="k", model="test-model", timeout_s=5.0)
        res = LlmAdvisor(config).warmstart(spec, [], N)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.suggestions == [] and res.reason
    assert len(res.calls) == 1 and res.calls[0].outcome == res.reason
    assert isinstance(res.calls[0].model, str) and res.calls[0].model
    assert res.calls[0].prompt_tokens >= 0 and res.calls[0].completion_tokens >= 0
    finish(spec, res)


def test_a_bad_max_retries_variable_is_named():
    with pytest.raises(ValueError, match="BBO_LLM_MAX_RETRIES='abc'"):
        LlmConfig.from_env({"BBO_LLM_BASE_URL": "http://h/v1", "BBO_LLM_MAX_RETRIES": "abc"})


def test_values_an_answer_repeats_are_quoted_short_in_the_stored_outcome():
    """The outcome names why a candidate was dropped with the value the model gave: quoted in
    full, 60,000 invisible characters (each ``\\U000e0001`` in a repr) or a categorical's 1,000
    choices made an outcome of megabytes, stored with the call and shown by ListLlmCalls beside
    the answer it was read from."""
    spec = make_spec()
    huge = "\U000e0001" * 60_000
    text = json.dumps(
        {"candidates": [{"rationale": "r", "params": {**GOOD, "opt": huge}}]}, ensure_ascii=False
    )
    with ChatServer([Reply(text)]) as srv:
        res = LlmAdvisor(cfg(srv)).warmstart(spec, [], N)
    (rec,) = res.calls
    assert rec.outcome.startswith("unusable answer: no valid candidates (candidate 0: opt: ")
    assert len(rec.outcome) < 1000 and all(len(i) < 1000 for i in res.issues)


def test_a_tenant_filling_the_background_calls_leaves_another_tenant_its_own():
    """The background calls (priors, warm start) were one FIFO queue under one bound for every
    tenant: a tenant that created enough LLM studies held every place, and another tenant's new
    study got no warm start ("llm busy"), or waited behind that whole queue. Now each tenant has
    ``max_pending`` places of its own, and the workers serve the tenants round robin."""
    import threading

    spec = make_spec()
    release = threading.Event()
    done: list[str] = []

    def respond(body):
        release.wait(30)
        return Reply("{}")

    with ChatServer(respond) as srv:
        adv = LlmAdvisor(cfg(srv, timeout_s=30.0), background_workers=1, max_pending=4)
        try:
            for i in range(3):  # two studies fill tenant b's places, the third finds none
                started = adv.prefetch(
                    spec, study_key=f"b/s{i}/u{i}", record=lambda c: done.append("b")
                )
                assert len(started) == (2 if i < 2 else 0), (i, started)
            started = adv.prefetch(spec, study_key="a/s/ua", record=lambda c: done.append("a"))
            assert sorted(started) == ["priors", "warmstart"]
        finally:
            release.set()
        deadline = time.monotonic() + 30
        while len(done) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    # a's calls took turns with b's queued ones (b's last call ends last), not after all of them
    assert len(done) == 6 and done.count("a") == 2 and done[-1] == "b", done


def test_calls_cut_short_by_their_callers_budget_do_not_turn_the_llm_off_for_everyone():
    """A call that ran out of its caller's budget (an ask or a CreateStudy with a short deadline)
    counted as an endpoint failure: one tenant's three asks with a deadline of a second turned the
    LLM off for every tenant for ``cooldown_s``, again whenever it liked. Only a call that had the
    configured timeout and timed out says the endpoint is failing."""
    spec = make_spec()
    with ChatServer(lambda body: Reply(candidates(*distinct_good(2)), delay_s=0.6)) as srv:
        adv = LlmAdvisor(cfg(srv, timeout_s=2.0, failures_before_cooldown=3, cooldown_s=60))
        short = [
            adv.propose(spec, [], 2, study_key=f"b/s{i}/u{i}", budget_s=0.2).reason
            for i in range(4)
        ]
        assert short == ["timeout"] * 4, short
        res = adv.propose(spec, [], 2, study_key="a/s/ua")
    assert res.reason == "" and len(res.suggestions) == 2, res.reason


def _a_huge_prompt_refused_then_an_ordinary_one(message: str):
    """Tenant b's warm start with a prompt the endpoint refuses (HTTP 400 saying ``message``),
    then tenant a's ordinary one: (the advisor, every request body sent, a's result)."""
    import dataclasses as dc

    def respond(body):
        if "HUGE" in ChatServer.prompt_of(body):
            return Reply(status=400, error_message=message)
        return Reply(candidates(*distinct_good(N)))

    spec = make_spec()
    with ChatServer(respond) as srv:
        adv = LlmAdvisor(cfg(srv))
        huge = dc.replace(spec, description="HUGE " + spec.description)
        assert adv.warmstart(huge, [], N, study_key="b/s/u").reason.startswith("error:")
        res = adv.warmstart(spec, [], N, study_key="a/s/u")
    return adv, srv.requests, res


def test_a_request_refused_with_and_without_the_schema_keeps_strict_json_for_everyone():
    """A 400 to a request with a JSON schema made the client ask in plain text from then on, for
    every study of every tenant, even where the plain-text retry was refused too (a prompt over
    the model's context: one tenant's long description). Only a refusal that the plain-text retry
    does not repeat says the endpoint does not do JSON schemas."""
    adv, requests, res = _a_huge_prompt_refused_then_an_ordinary_one(
        "maximum context length exceeded"
    )
    assert len(requests) == 3 and "response_format" not in requests[1]
    assert res.reason == "" and "response_format" in requests[-1]
    assert adv.client().structured_supported is True


def test_an_error_naming_a_parameter_changes_later_requests_only_where_the_retry_went_through():
    """A 400 whose message named max_tokens or temperature (a prompt past the context on vLLM
    says both) switched the shared client to max_completion_tokens and no temperature for every
    later call of every tenant, though the adjusted retry was refused the same way. As the JSON
    schema's, the switch is kept only once an adjusted request goes through."""
    _, requests, res = _a_huge_prompt_refused_then_an_ordinary_one(
        "max_tokens plus the prompt exceed the context; temperature ignored"
    )
    assert any("max_completion_tokens" in r for r in requests[:-1])
    last = requests[-1]
    assert res.reason == "" and "max_tokens" in last and "temperature" in last
