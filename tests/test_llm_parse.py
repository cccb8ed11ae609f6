"""bbo.llm parsing, validation and prompts: no network (see test_llm_endpoint.py for the HTTP side)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from bbo.llm.parse import (
    CATEGORICAL_PRIOR_FLOOR,
    MIN_PRIOR_STD,
    coerce_value,
    extract_json,
    merge_priors,
    parse_candidates,
    parse_priors,
    parse_related,
)
from bbo.llm.prompt import (
    candidates_schema,
    history_table,
    priors_prompt,
    priors_schema,
    proposal_prompt,
    warmstart_prompt,
)
from bbo.priors import unit_normal
from bbo.space import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    LinearConstraint,
    OrdinalParam,
    SearchSpace,
)
from bbo.spec import LlmOptions, Objective, OutcomeConstraint, ParameterPrior, StudySpec
from bbo.trial import Metric, Trial, TrialState


def make_space() -> SearchSpace:
    return SearchSpace(
        (
            FloatParam("lr", 1e-5, 1e-1, log=True),
            IntParam("layers", 1, 8),
            CategoricalParam("opt", ("adam", "sgd", "rmsprop")),
            OrdinalParam("batch", (16, 32, 64, 128)),
            FloatParam("dropout", 0.0, 0.5),
            FloatParam("wd", 0.0, 0.1),
            FixedParam("seed", 0),
        ),
        (LinearConstraint({"dropout": 1.0, "wd": 4.0}, 0.6),),
    )


def make_spec(**kw) -> StudySpec:
    return StudySpec(
        make_space(),
        (Objective("val_loss"),),
        outcome_constraints=(OutcomeConstraint("latency_ms", "<=", 50.0),),
        description="Train a ResNet-18 on CIFAR-10 for 20 epochs.",
        llm=LlmOptions(enabled=True),
        **kw,
    )


GOOD = {"lr": 0.001, "layers": 4, "opt": "adam", "batch": 64, "dropout": 0.1, "wd": 0.01}


# ---- JSON extraction ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2]}',
        'Sure! Here you go:\n```json\n{"a": [1, 2]}\n```\nHope it helps.',
        '```\n{"a": [1, 2],}\n```',
        'I think {"a": [1, 2,],} is best because values in [0, 1] work.',
        "{'a': [1, 2]}",
        '<think>maybe {"a": 3}</think>{"a": [1, 2]}',
        '{"a": [1, 2] // two values\n}',
    ],
)
def test_extract_json_variants(text):
    assert extract_json(text) == {"a": [1, 2]}


def test_extract_json_nothing():
    assert extract_json("") is None
    assert extract_json("I cannot help with that.") is None
    assert extract_json('{"a": ') is None


# ---- value repair -------------------------------------------------------------------------------------
def test_coerce_values():
    s = make_space().by_name
    assert coerce_value(s["lr"], "0.01")[0] == 0.01
    assert coerce_value(s["lr"], 1e-6)[0] is None  # a decade below a 4-decade range: rejected
    assert coerce_value(s["lr"], 0.11)[0] == 0.1  # within 5% of the log range: clipped
    assert coerce_value(s["lr"], -1)[0] is None
    assert coerce_value(s["layers"], 4.0) == (4, "")
    assert coerce_value(s["layers"], "3")[0] == 3
    assert coerce_value(s["layers"], 3.4)[0] == 3
    assert coerce_value(s["layers"], 8.2)[0] == 8
    assert coerce_value(s["layers"], 12)[0] is None
    assert coerce_value(s["opt"], " Adam ")[0] == "adam"
    assert coerce_value(s["opt"], "lion")[0] is None
    assert coerce_value(s["batch"], 50)[0] == 64
    assert coerce_value(s["batch"], "128")[0] == 128
    assert coerce_value(s["batch"], 4096)[0] is None
    assert coerce_value(s["dropout"], "0,2")[0] == 0.2
    assert coerce_value(s["dropout"], True)[0] is None
    assert coerce_value(s["dropout"], None)[0] is None
    assert coerce_value(s["dropout"], float("nan"))[0] is None
    assert coerce_value(s["seed"], 5)[0] == 0


def test_parse_candidates_repairs_rejects_and_dedupes():
    space = make_space()
    items = [
        {"rationale": "standard", "params": GOOD},
        {"rationale": "dup", "params": dict(GOOD)},
        {
            "reason": "strings",
            "params": {
                "lr": "3e-4",
                "layers": "6",
                "opt": "SGD",
                "batch": "32",
                "dropout": "0.2",
                "wd": "0",
            },
        },
        {"params": {**GOOD, "opt": "lion"}},  # unknown choice
        {"params": {**GOOD, "dropout": 0.5, "wd": 0.1}},  # violates dropout + 4 wd <= 0.6
        {"params": {k: v for k, v in GOOD.items() if k != "layers"}},  # missing
        {
            "LR": 0.01,
            "Layers": 2,
            "opt": "rmsprop",
            "batch": 16,
            "dropout": 0.0,
            "wd": 0.0,
            "why": "flat form",
        },
    ]
    text = "Here are my picks:\n```json\n" + json.dumps({"candidates": items}) + "\n```"
    out = parse_candidates(text, space, exclude=[])
    assert [r for _, r in out.points] == ["standard", "strings", "flat form"]
    for p, _ in out.points:
        assert space.validate_params(p) == p
        assert p["seed"] == 0
    assert (
        out.points[1][0]["opt"] == "sgd"
        and out.points[1][0]["layers"] == 6
        and out.points[1][0]["batch"] == 32
    )
    assert out.n_offered == 7 and len(out.rejected) == 4
    assert any("duplicate" in r for r in out.rejected) and any(
        "constraint" in r for r in out.rejected
    )
    # existing trials are excluded; limit keeps the first valid ones
    again = parse_candidates(text, space, exclude=[{**GOOD, "seed": 0}], limit=1)
    assert [r for _, r in again.points] == ["strings"]


def test_parse_candidates_salvages_truncated_answer():
    space = make_space()
    full = json.dumps(
        {
            "candidates": [
                {"rationale": "a", "params": GOOD},
                {"rationale": "b", "params": {**GOOD, "layers": 2}},
            ]
        }
    )
    cut = full[: full.index('"layers": 2') + 5]  # cut inside the second candidate
    out = parse_candidates(cut, space)
    assert len(out.points) == 1 and out.points[0][1] == "a"


def test_parse_candidates_garbage():
    out = parse_candidates("As an AI model I cannot run experiments.", make_space())
    assert out.points == [] and out.rejected and out.shortfall(3)
    out = parse_candidates('{"foo": 1}', make_space())
    assert out.points == [] and "no candidate list" in out.rejected[0]


# ---- priors -------------------------------------------------------------------------------------------
def test_parse_priors_intervals_log_and_clamps():
    space = make_space()
    ans = {
        "priors": {
            "lr": {
                "rationale": "Adam default",
                "best_guess": 1e-3,
                "low": 3e-4,
                "high": 3e-3,
                "confidence": 0.9,
            },
            "layers": {"best_guess": "4", "low": 3, "high": 5, "confidence": "70%"},
            "opt": {"probabilities": {"Adam": 0.8, "sgd": 0.2, "lion": 0.5}, "confidence": 0.4},
            "batch": {"best_guess": 64, "low": 64, "high": 64, "confidence": 0.3},
            "dropout": {
                "best_guess": 3.0,
                "low": 2.0,
                "high": 4.0,
            },  # far outside [0, 0.5]: dropped
            "seed": {"best_guess": 1},  # fixed: ignored
        }
    }
    out = parse_priors(json.dumps(ans), space, confidence_cap=0.5)
    by = {p.parameter: p for p in out.priors}
    assert set(by) == {"lr", "layers", "opt", "batch"}
    assert all(p.source == "llm" and 0 < p.confidence <= 0.5 for p in out.priors)
    assert by["lr"].confidence == 0.5 and by["layers"].confidence == 0.5
    assert math.isclose(by["lr"].mean, 1e-3, rel_tol=1e-9)
    # in the unit encoding (bbo.priors), no LLM prior is sharper than MIN_PRIOR_STD of the range
    for name in ("lr", "layers", "batch"):
        mu, sd = unit_normal(space, by[name])
        assert sd >= MIN_PRIOR_STD - 1e-9, (name, sd)
    mu, sd = unit_normal(space, by["lr"])
    assert math.isclose(mu, 0.5, abs_tol=1e-9)  # 1e-3 is the log-midpoint of [1e-5, 1e-1]
    probs = by["opt"].probabilities
    assert math.isclose(sum(probs.values()), 1.0) and probs["adam"] > probs["sgd"] > 0
    assert probs["rmsprop"] >= CATEGORICAL_PRIOR_FLOOR / 3 - 1e-12
    assert any("dropout" in i for i in out.issues) and any(
        "fixed" in i or "seed" in i for i in out.issues
    )
    # the merged spec validates, and user priors win
    spec = make_spec(priors=(ParameterPrior("lr", mean=0.01, std=0.005),))
    merged = merge_priors(spec.priors, out.priors)
    s2 = dataclasses.replace(spec, priors=merged)
    assert [p for p in s2.priors if p.parameter == "lr"][0].source == "user"
    assert len(s2.priors) == 4


def test_an_llm_prior_on_a_grid_is_no_sharper_than_the_floor_where_the_model_reads_it():
    """A grid encoded by position: the floor holds on the grid position, at the top of a geometric
    grid too (a tenth of the value range there spans about half a tenth of the positions)."""
    space = make_space()
    for at in (16, 32, 64, 128):
        ans = json.dumps({"batch": {"best_guess": at, "std": 0.001}})
        out = parse_priors(ans, space)
        (pr,) = out.priors
        mu, sd = unit_normal(space, pr)
        assert pr.mean == at and math.isclose(mu, space.unit(space.by_name["batch"], at))
        assert sd >= MIN_PRIOR_STD - 1e-9, (at, sd)
        if at == 128:  # the value range's tenth spans 0.058 of the grid here: widened to 0.1
            assert math.isclose(sd, MIN_PRIOR_STD) and any("of the grid" in i for i in out.issues)


def test_parse_priors_list_form_and_std():
    ans = '[{"parameter": "dropout", "mean": 0.2, "std": 0.001}, {"name": "opt", "best_guess": "SGD"}]'
    out = parse_priors(ans, make_space())
    by = {p.parameter: p for p in out.priors}
    assert math.isclose(by["dropout"].std, MIN_PRIOR_STD * 0.5)  # widened to 10% of the range
    assert by["opt"].probabilities["sgd"] > 0.8
    assert parse_priors("no idea", make_space()).priors == []


# ---- prompts ------------------------------------------------------------------------------------------
def _trials(spec, n):
    out = []
    for i in range(n):
        p = {**GOOD, "layers": 1 + i % 8, "dropout": 0.01 * i % 0.3, "seed": 0}
        out.append(
            Trial(
                i,
                p,
                TrialState.COMPLETED,
                {"val_loss": Metric(1.0 / (1 + i)), "latency_ms": Metric(10.0 + i)},
            )
        )
    out.append(Trial(n, {**GOOD, "seed": 0}, TrialState.PENDING))
    out.append(Trial(n + 1, {**GOOD, "layers": 7, "seed": 0}, TrialState.FAILED))
    return out


def test_prompts_describe_the_study():
    spec = make_spec()
    ws = warmstart_prompt(spec, 4)
    for s in (
        "ResNet-18",
        "lr: real number in [1e-05, 0.1], log scale",
        "layers: integer in [1, 8]",
        '["adam", "sgd", "rmsprop"]',
        "(ordered)",
        "fixed at 0",
        "1*dropout + 4*wd <= 0.6",
        "minimize val_loss",
        "latency_ms <= 50",
        "4 diverse",
    ):
        assert s in ws.text, s
    pp = proposal_prompt(spec, _trials(spec, 50), 3)
    assert (
        "best first" in pp.text
        and "Being evaluated right now" in pp.text
        and "failed to run" in pp.text
    )
    table = history_table(spec, _trials(spec, 50))
    rows = table.splitlines()
    assert (
        rows[2].split(" | ")[6] == "0.0243902"
    )  # best feasible (latency_ms <= 50: trial 40) first
    assert rows[2].endswith("yes") and any(r.endswith("no") for r in rows)
    assert "showing the best 20 and 10 most recent of 50" in rows[0]
    assert len(rows) < 60
    assert "confidence" in priors_prompt(spec).text


def test_the_history_ranks_several_objectives_by_pareto_fronts():
    """Feasible first, then Pareto rank, then the first objective; peeling only as many fronts
    as the table shows keeps that order for the trials it ranks (checked against peeling every
    front by pairwise comparison)."""
    import random

    from bbo.llm.prompt import rank_completed
    from bbo.space import FloatParam

    spec = StudySpec(
        SearchSpace((FloatParam("x", 0.0, 1.0),)),
        (Objective("a"), Objective("b", goal="maximize")),
        (OutcomeConstraint("c", "<=", 0.5),),
    )
    rng = random.Random(3)
    trials = [
        Trial(
            i,
            {"x": 0.5},
            TrialState.COMPLETED,
            {k: Metric(float(rng.randint(0, 6))) for k in ("a", "b")} | {"c": Metric(rng.random())},
        )
        for i in range(300)
    ]

    def brute(group):
        s = {t.id: (-t.value("a"), t.value("b")) for t in group}
        left, rank, r = set(s), {}, 0
        while left:
            front = {
                i
                for i in left
                if not any(all(q >= p for p, q in zip(s[i], s[j])) and s[i] != s[j] for j in left)
            }
            rank.update(dict.fromkeys(front, r))
            left, r = left - front, r + 1
        return rank

    ok = [t for t in trials if t.value("c") <= 0.5]
    rank = brute(ok) | brute([t for t in trials if t.value("c") > 0.5])
    want = sorted(trials, key=lambda t: (t.value("c") > 0.5, rank[t.id], t.value("a"), t.id))
    assert [t.id for t in rank_completed(spec, trials)] == [t.id for t in want]
    head = rank_completed(spec, trials, top=30)
    cut = next(i for i, t in enumerate(want) if i >= 30 and rank[t.id] != rank[want[i - 1].id])
    assert [t.id for t in head[:cut]] == [t.id for t in want[:cut]]


def _check_strict(schema):
    if schema.get("type") == "object":
        assert schema["additionalProperties"] is False
        assert sorted(schema["required"]) == sorted(schema["properties"])
        for v in schema["properties"].values():
            _check_strict(v)
    if schema.get("type") == "array":
        _check_strict(schema["items"])


def test_schemas_are_strict_mode_compatible():
    space = make_space()
    _check_strict(candidates_schema(space))
    _check_strict(priors_schema(space))
    assert (
        "seed"
        not in candidates_schema(space)["properties"]["candidates"]["items"]["properties"][
            "params"
        ]["properties"]
    )


def test_brackets_are_matched_in_one_pass_and_a_stray_quote_in_prose_does_not_hide_the_json():
    """Thousands of unclosed openers (an endpoint ignoring max_tokens) used to cost a scan to the end
    per opener; one pass now matches them all, and the complete objects inside are still found.
    Prose with an unmatched quote before the JSON falls back to scanning that opener on its own."""
    from bbo.llm.parse import extract_json, salvage_objects

    cut = (
        '{"candidates": [{"params": {"x": 0.25}, "rationale": "a"}, '
        + '{"params": {"x": 0.5, ' * 5000
    )
    got = salvage_objects(cut)
    assert got[0] == {"params": {"x": 0.25}, "rationale": "a"} and len(got) == 1
    assert extract_json("Sure, here's some rock 'n roll: {\"a\": [1, 2]} enjoy") == {"a": [1, 2]}
    assert extract_json('The note says "use {x}" and then {"b": "}{"} ends') == {"b": "}{"}


def test_related_answers_are_read_by_name_clipped_and_unknown_names_dropped():
    names = ["admm-lasso", "admm ridge", "cloud"]
    text = (
        "Sure! ```json\n"
        '{"studies": [{"name": "ADMM-Lasso", "relatedness": 1.7, "why": "same  problem"},'
        ' {"study": "admm_ridge", "score": "0,4"}, {"name": "nope", "relatedness": 1},'
        ' {"name": "cloud", "relatedness": "high"}]}\n```'
    )
    out = parse_related(text, names)
    assert out.scores == {"admm-lasso": (1.0, "same problem"), "admm ridge": (0.4, "")}
    assert any("unknown study 'nope'" in i for i in out.issues)
    assert any("no relatedness number for 'cloud'" in i for i in out.issues)
    by_key = parse_related('{"cloud": {"relatedness": 0.2, "why": "w"}}', names)
    assert by_key.scores == {"cloud": (0.2, "w")}
    assert parse_related("no idea", names).scores == {}


def test_salvaging_a_deeply_nested_answer_parses_no_more_than_a_few_times_its_length(monkeypatch):
    """A block that fails to parse was tried again from each brace inside it: 5,000 nested
    objects (30 KB) took 10 s of an Ask, quadratic in the depth. The work is now bounded by
    SALVAGE_WORK times the answer's length, and a complete candidate before it is still found."""
    import bbo.llm.parse as parse

    loads, seen = parse._loads, []
    monkeypatch.setattr(parse, "_loads", lambda s: seen.append(len(s)) or loads(s))
    text = '[{"lr": 0.001}] and ' + '{"a":' * 5000 + "1" + "}" * 5000
    got = parse.salvage_objects(text)
    assert got[0] == {"lr": 0.001}
    assert sum(seen) <= parse.SALVAGE_WORK * len(text) + 4096


def test_an_answer_of_many_small_blocks_is_read_in_bounded_work(monkeypatch):
    """Every block of an answer was parsed, leniently where JSON failed: a hostile endpoint's
    1 MiB answer of 100,000 small blocks cost 2-7 s of an Ask's thread. Only the first
    PARSE_CHARS characters are read now and at most PARSE_BLOCKS blocks parsed, longest first, so
    the answer's object is the longest one that parses, as before."""
    import bbo.llm.parse as parse

    loads, seen = parse._loads, []
    monkeypatch.setattr(parse, "_loads", lambda s: seen.append(len(s)) or loads(s))
    space = make_space()
    hostile = "{'x': 1} " * (1024 * 1024 // 9)
    for read in (parse_candidates, parse_priors):
        seen.clear()
        read(hostile, space)
        assert len(seen) <= 2 * parse.PARSE_BLOCKS + 2 and sum(seen) <= 20 * parse.PARSE_CHARS
    text = 'see {"a": 1} and [1, 2, 3, 4, 5] then {"lr": 0.01, "layers": 4} or {"b": 2}'
    assert parse.extract_json(text) == {"lr": 0.01, "layers": 4}
    assert parse.extract_json("[1] then [1, 2]") == [1, 2]


def test_numbers_past_a_doubles_range_make_an_answer_unusable_not_an_error():
    """1 followed by 400 zeros is valid JSON and no double: float() raised OverflowError out of
    the parser, so the call failed unrecorded and its prompt was sent on every Ask. A log range
    to 1e300 with a prior at its top overflowed expm1 the same way."""
    huge = "1" + "0" * 400
    space = make_space()
    pri = parse_priors('{"lr": {"best_guess": ' + huge + '}, "layers": {"best_guess": 4}}', space)
    assert [p.parameter for p in pri.priors] == ["layers"]
    cand = parse_candidates(json.dumps([GOOD])[:-2] + ', "wd": ' + huge + "}]", space)
    assert not cand.points and cand.rejected
    rel = parse_related('[{"name": "cloud", "relatedness": ' + huge + "}]", ["cloud"])
    assert rel.scores == {} and rel.issues
    wide = SearchSpace((FloatParam("x", 1e-300, 1e300, log=True),))
    out = parse_priors('{"x": {"best_guess": 1e300, "std": 1e300}}', wide)
    assert all(math.isfinite(p.std) for p in out.priors)


def test_any_error_reading_an_answer_is_an_unusable_answer(monkeypatch):
    """Whatever the parser meets, it never raises on model output: a reader's exception makes
    the answer unusable, saying so, and the call is recorded as such."""
    import bbo.llm.parse as parse

    def broken(*a, **k):
        raise ZeroDivisionError("a case no check foresaw")

    monkeypatch.setattr(parse, "coerce_params", broken)
    monkeypatch.setattr(parse, "_numeric_prior", broken)
    monkeypatch.setattr(parse, "_number", broken)
    cand = parse_candidates(json.dumps([GOOD]), make_space())
    assert not cand.points and "could not be read: ZeroDivisionError" in cand.shortfall(1)
    assert (
        "could not be read" in parse_priors('{"lr": {"best_guess": 0.01}}', make_space()).issues[0]
    )
    assert "could not be read" in parse_related('[{"name": "a", "score": 1}]', ["a"]).issues[0]
