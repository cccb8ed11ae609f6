"""Prompts for the three things the LLM is asked, and the JSON schemas of the answers.

Everything the LLM sees comes from the study: its natural-language description, the search space
(types, ranges, log scales, choices, fixed values, linear constraints), the objectives and outcome
constraints, and a compact table of the trials so far (best first, capped).

- warm start (LLAMBO's zero-shot warm start): N diverse, promising configurations with a rationale;
- priors (piBO): per parameter, where the optimum likely is and how sure the model is;
- proposals (OPRO): the history of solutions and scores, then k new points to try.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam, SearchSpace
from bbo.spec import MAXIMIZE, StudySpec
from bbo.trial import Trial, TrialState

MAX_HISTORY_ROWS = 30  # completed trials shown (best two thirds, most recent third)
MAX_PENDING_ROWS = 10
MAX_FAILED_ROWS = 5
MAX_DESCRIPTION_CHARS = 4000
# compact prompts (LlmConfig.compact: small local models, a CPU engine): fewer tokens to read and
# write, no example values to copy, and the JSON schema (enforced by the engine's grammar) carries
# the shape, the value ranges, the number of candidates and a bound on every free-text field
COMPACT_DESCRIPTION_CHARS = 1200
COMPACT_HISTORY_ROWS = 12
COMPACT_RATIONALE_CHARS = 80
# llguidance (llama.cpp's grammar engine) option: JSON without optional whitespace, which small
# models otherwise spend a third of their tokens on
COMPACT_JSON = {"x-guidance": {"whitespace_flexible": False}}

SYSTEM = (
    "You are an expert research engineer helping a Bayesian optimization service decide which "
    "configurations of a black-box system to evaluate. You know typical good settings from the "
    "literature and practice. Reply with one JSON object only: no prose, no markdown outside it."
)
SYSTEM_COMPACT = (
    "You pick settings for a black-box optimization task from what you know about such tasks. "
    "Reply with JSON only."
)


@dataclass(frozen=True)
class Prompt:
    """Chat messages plus the JSON schema the answer should follow."""

    purpose: str  # one of bbo.storage.LLM_PURPOSES
    messages: tuple[dict, ...]
    schema: dict
    schema_name: str

    @property
    def text(self) -> str:
        """The whole prompt as one string (what is recorded and hashed for the cache)."""
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.messages)


# ---- formatting ---------------------------------------------------------------------------------
def fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v == 0 or (1e-4 <= abs(v) < 1e6):
            return f"{v:.6g}"
        return f"{v:.4g}"
    return str(v)


def describe_param(p, compact: bool = False) -> str:
    if compact and isinstance(p, (FloatParam, IntParam)):
        kind = "number" if isinstance(p, FloatParam) else "integer"
        lo, hi = (fmt(float(p.low)), fmt(float(p.high))) if kind == "number" else (p.low, p.high)
        return f"- {p.name}: {kind} from {lo} to {hi}" + (" (log scale)" if p.log else "")
    if isinstance(p, FloatParam):
        return f"- {p.name}: real number in [{fmt(float(p.low))}, {fmt(float(p.high))}]" + (
            ", log scale" if p.log else ""
        )
    if isinstance(p, IntParam):
        return f"- {p.name}: integer in [{p.low}, {p.high}]" + (", log scale" if p.log else "")
    if isinstance(p, CategoricalParam):
        return f"- {p.name}: one of {json.dumps(list(p.choices))} (unordered)"
    if isinstance(p, OrdinalParam):
        return f"- {p.name}: one of {json.dumps([fmt(v) if isinstance(v, float) else v for v in p.values]).replace(chr(34), '')} (ordered)"
    if isinstance(p, FixedParam):
        return f"- {p.name}: fixed at {json.dumps(p.value)} (not searched; leave it out)"
    raise TypeError(type(p))


def describe_space(space: SearchSpace, compact: bool = False) -> str:
    params = [p for p in space.params if not (compact and isinstance(p, FixedParam))]
    lines = ["Parameters:"] + [describe_param(p, compact) for p in params]
    if space.constraints:
        lines.append("Every configuration must satisfy:")
        lines += [f"- {c}" for c in space.constraints]
    return "\n".join(lines)


def describe_goals(spec: StudySpec) -> str:
    objs = ", ".join(f"{o.goal} {o.name}" for o in spec.objectives)
    lines = [f"Objective{'s' if len(spec.objectives) > 1 else ''}: {objs}"]
    if len(spec.objectives) > 1:
        lines[0] += " (a set of good trade-offs is wanted)"
    if spec.outcome_constraints:
        lines.append(
            "Results only count when: " + "; ".join(str(c) for c in spec.outcome_constraints)
        )
    return "\n".join(lines)


def _description(spec: StudySpec, compact: bool = False) -> str:
    d = (spec.description or "").strip()
    if not d:
        return "Task: (no description given) tune the parameters below."
    cap = COMPACT_DESCRIPTION_CHARS if compact else MAX_DESCRIPTION_CHARS
    if len(d) > cap:
        d = d[:cap] + " [...]"
    return f"Task: {d}"


def rank_completed(spec: StudySpec, trials: Sequence[Trial], top: int | None = None) -> list[Trial]:
    """Completed trials best first: feasible before infeasible, Pareto rank (among the feasible,
    then among the rest), then first objective. ``top``: fronts are peeled
    (:func:`bbo.incumbent.nondominated`) only until that many trials are ranked; the rest follow
    by first objective (a table shows a few best rows: peeling every front of 100,000 trials cost
    minutes)."""
    done = [
        t
        for t in trials
        if t.state is TrialState.COMPLETED and all(o.name in t.metrics for o in spec.objectives)
    ]

    def feasible(t: Trial) -> bool:
        try:
            return spec.is_feasible({k: m.value for k, m in t.metrics.items()})
        except KeyError:
            return False

    def score(t: Trial) -> tuple[float, ...]:
        return tuple(o.sign * t.value(o.name) for o in spec.objectives)

    ok = {t.id: feasible(t) for t in done}
    rank: dict[int, int] = {}
    if len(spec.objectives) > 1 and done:
        import numpy as np

        from bbo.incumbent import nondominated

        for group in ([t for t in done if ok[t.id]], [t for t in done if not ok[t.id]]):
            F = np.array([score(t) for t in group], dtype=float).reshape(len(group), -1)
            left, r = np.arange(len(group)), 0
            while left.size and (top is None or len(rank) < top):
                on = nondominated(F[left])
                rank.update((group[i].id, r) for i in left[on])
                left, r = left[~on], r + 1
            rank.update((group[i].id, r) for i in left)  # past ``top``: after every front
    return sorted(done, key=lambda t: (not ok[t.id], rank.get(t.id, 0), -score(t)[0], t.id))


def history_table(
    spec: StudySpec, trials: Sequence[Trial], max_rows: int = MAX_HISTORY_ROWS
) -> str:
    """A compact text table of what has been evaluated, best first; empty string when nothing yet."""
    names = spec.space.names
    metrics = spec.modeled_metrics
    ranked = rank_completed(spec, trials, top=max_rows)
    lines: list[str] = []
    if ranked:
        shown = ranked
        note = ""
        if len(ranked) > max_rows:
            n_best = max(1, (2 * max_rows) // 3)
            best = ranked[:n_best]
            best_ids = {t.id for t in best}
            recent = sorted((t for t in ranked if t.id not in best_ids), key=lambda t: -t.id)[
                : max_rows - n_best
            ]
            shown = best + sorted(recent, key=lambda t: ranked.index(t))
            note = f" (showing the best {n_best} and {len(recent)} most recent of {len(ranked)})"
        header = names + metrics + (["feasible"] if spec.outcome_constraints else [])
        lines.append(f"Evaluated configurations, best first{note}:")
        lines.append(" | ".join(header))
        for t in shown:
            row = [fmt(t.params.get(n)) for n in names]
            row += [fmt(t.metrics[m].value) if m in t.metrics else "?" for m in metrics]
            if spec.outcome_constraints:
                try:
                    row.append(
                        "yes"
                        if spec.is_feasible({k: m.value for k, m in t.metrics.items()})
                        else "no"
                    )
                except KeyError:
                    row.append("?")
            lines.append(" | ".join(row))
    failed = [t for t in trials if t.state is TrialState.FAILED][-MAX_FAILED_ROWS:]
    if failed:
        lines.append("These configurations failed to run (avoid similar ones):")
        lines += ["- " + ", ".join(f"{n}={fmt(t.params.get(n))}" for n in names) for t in failed]
    pending = [t for t in trials if t.state is TrialState.PENDING][-MAX_PENDING_ROWS:]
    if pending:
        lines.append("Being evaluated right now (do not repeat):")
        lines += ["- " + ", ".join(f"{n}={fmt(t.params.get(n))}" for n in names) for t in pending]
    return "\n".join(lines)


# ---- JSON schemas (strict-mode compatible: every object closed, every property required) ----------
def _value_schema(p, compact: bool = False) -> dict:
    if isinstance(p, FloatParam):
        if compact:  # engines that enforce number bounds keep values in range (bbo clips anyway)
            return {"type": "number", "minimum": float(p.low), "maximum": float(p.high)}
        return {"type": "number"}
    if isinstance(p, IntParam):
        if compact:
            return {"type": "integer", "minimum": int(p.low), "maximum": int(p.high)}
        return {"type": "integer"}
    if isinstance(p, CategoricalParam):
        return {"type": "string", "enum": list(p.choices)}
    if isinstance(p, OrdinalParam):
        return {
            "type": "number",
            "enum": [float(v) if isinstance(v, float) else v for v in p.values],
        }
    raise TypeError(type(p))


def candidates_schema(space: SearchSpace, n: int = 0, compact: bool = False) -> dict:
    """``{"candidates": [{"rationale", "params"}]}``; compact: params first (the values matter,
    the text does not), a short rationale, exactly ``n`` candidates, value ranges."""
    params = {
        "type": "object",
        "properties": {p.name: _value_schema(p, compact) for p in space.free},
        "required": space.names,
        "additionalProperties": False,
    }
    if compact:
        rationale = {"type": "string", "maxLength": COMPACT_RATIONALE_CHARS}
        item = {
            "type": "object",
            "properties": {"params": params, "rationale": rationale},
            "required": ["params", "rationale"],
            "additionalProperties": False,
        }
        arr: dict[str, Any] = {"type": "array", "items": item}
        if n > 0:
            arr.update(minItems=n, maxItems=n)
    else:
        item = {
            "type": "object",
            "properties": {"rationale": {"type": "string"}, "params": params},
            "required": ["rationale", "params"],
            "additionalProperties": False,
        }
        arr = {"type": "array", "items": item}
    out = {
        "type": "object",
        "properties": {"candidates": arr},
        "required": ["candidates"],
        "additionalProperties": False,
    }
    return {**out, **COMPACT_JSON} if compact else out


def priors_schema(space: SearchSpace, compact: bool = False) -> dict:
    """Per parameter: best guess, 80 % interval and confidence (numeric) or choice probabilities;
    compact: no rationale, value ranges and ``confidence`` in [0, 1] in the schema."""
    if compact:
        return _compact_priors_schema(space)
    props = {}
    for p in space.free:
        if isinstance(p, CategoricalParam):
            props[p.name] = {
                "type": "object",
                "properties": {
                    "rationale": {"type": "string"},
                    "probabilities": {
                        "type": "object",
                        "properties": {c: {"type": "number"} for c in p.choices},
                        "required": list(p.choices),
                        "additionalProperties": False,
                    },
                    "confidence": {"type": "number"},
                },
                "required": ["rationale", "probabilities", "confidence"],
                "additionalProperties": False,
            }
        else:
            props[p.name] = {
                "type": "object",
                "properties": {
                    "rationale": {"type": "string"},
                    "best_guess": {"type": "number"},
                    "low": {"type": "number"},
                    "high": {"type": "number"},
                    "confidence": {"type": "number"},
                },
                "required": ["rationale", "best_guess", "low", "high", "confidence"],
                "additionalProperties": False,
            }
    return _strict_object({"priors": _strict_object(props, space.names)}, ["priors"])


def _compact_priors_schema(space: SearchSpace) -> dict:
    unit = {"type": "number", "minimum": 0.0, "maximum": 1.0}
    # a few levels, not 60 digits (bbo caps the confidence of LLM priors at 0.5 anyway)
    conf = {"type": "number", "enum": [0.1, 0.2, 0.3, 0.4, 0.5]}
    props = {}
    for p in space.free:
        if isinstance(p, CategoricalParam):
            probs = {
                "type": "object",
                "properties": {c: unit for c in p.choices},
                "required": list(p.choices),
                "additionalProperties": False,
            }
            fields = {"probabilities": probs, "confidence": conf}
        else:
            v = _value_schema(p, True)
            fields = {"best_guess": v, "low": v, "high": v, "confidence": conf}
        props[p.name] = {
            "type": "object",
            "properties": fields,
            "required": list(fields),
            "additionalProperties": False,
        }
    schema = _strict_object({"priors": _strict_object(props, space.names)}, ["priors"])
    return {**schema, **COMPACT_JSON}


def _strict_object(properties: dict, required: Sequence[str]) -> dict:
    """A JSON-schema object with exactly these properties (what strict structured output needs)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _example_params(space: SearchSpace) -> dict:
    ex: dict[str, Any] = {}
    for p in space.free:
        if isinstance(p, CategoricalParam):
            ex[p.name] = p.choices[0]
        elif isinstance(p, OrdinalParam):
            ex[p.name] = p.values[len(p.values) // 2]
        elif isinstance(p, IntParam):
            ex[p.name] = p.from_unit(0.5)
        else:
            v = p.from_unit(0.5)
            ex[p.name] = float(f"{v:.3g}")
    return ex


# ---- the three prompts ------------------------------------------------------------------------------
def _context(spec: StudySpec, trials: Sequence[Trial], compact: bool = False) -> list[str]:
    parts = [
        _description(spec, compact),
        describe_space(spec.space, compact),
        describe_goals(spec),
    ]
    hist = history_table(spec, trials, COMPACT_HISTORY_ROWS if compact else MAX_HISTORY_ROWS)
    if hist:
        parts.append(hist)
    return parts


def warmstart_prompt(spec: StudySpec, n: int, *, compact: bool = False) -> Prompt:
    """Zero-shot (no history): the same study and ``n`` give the same prompt, so it is cached once."""
    if compact:
        ask = (
            f"Give {n} different settings that you expect to do well on this task, each with a "
            "short reason. Use values inside the ranges; do not just take the middle of each range."
        )
        return Prompt(
            "warmstart",
            _messages(_context(spec, (), True) + [ask], compact=True),
            candidates_schema(spec.space, n, compact=True),
            "warmstart_candidates",
        )
    example = json.dumps(
        {
            "candidates": [
                {"rationale": "why this is promising", "params": _example_params(spec.space)}
            ]
        }
    )
    ask = (
        f"Propose {n} diverse, promising configurations to evaluate first. Put most of them where you "
        "expect the best results from what you know about this task, and spread the others so they "
        "cover different plausible regions; do not repeat a configuration. Every value must lie in its "
        "range or be one of its listed values, and the configurations must satisfy the constraints above.\n"
        f"Reply with JSON like {example} with exactly {n} candidates, each with a one-sentence rationale."
    )
    return Prompt(
        "warmstart",
        _messages(_context(spec, ()) + [ask]),
        candidates_schema(spec.space),
        "warmstart_candidates",
    )


def proposal_prompt(
    spec: StudySpec, trials: Sequence[Trial], k: int, *, compact: bool = False
) -> Prompt:
    goal = "lower" if spec.objectives[0].goal != MAXIMIZE else "higher"
    if compact:
        ask = (
            f"The table shows the settings tried so far, best first ({goal} "
            f"{spec.objectives[0].name} is better). Give {k} new settings, not in the table, "
            "that could beat the best one, each with a short reason."
        )
        return Prompt(
            "proposal",
            _messages(_context(spec, trials, True) + [ask], compact=True),
            candidates_schema(spec.space, k, compact=True),
            "proposal_candidates",
        )
    example = json.dumps(
        {
            "candidates": [
                {
                    "rationale": "why this should beat the best so far",
                    "params": _example_params(spec.space),
                }
            ]
        }
    )
    ask = (
        f"Above are the solutions evaluated so far with their scores ({goal} {spec.objectives[0].name} is better). "
        f"Propose {k} new configurations, different from all of the above, that you expect to do better than "
        "the best so far: refine around the best ones, and use at most one to explore a region the table "
        "does not cover yet. Values must lie in their ranges and satisfy the constraints.\n"
        f"Reply with JSON like {example} with exactly {k} candidates, each with a one-sentence rationale."
    )
    return Prompt(
        "proposal",
        _messages(_context(spec, trials) + [ask]),
        candidates_schema(spec.space),
        "proposal_candidates",
    )


def priors_prompt(spec: StudySpec, *, compact: bool = False) -> Prompt:
    if compact:
        ask = (
            "For each parameter, where is its best value? Give best_guess, and low and high around "
            "it; confidence from 0.1 (a guess) to 0.5 (well known). For a list of choices, give each "
            "choice's probability of being best."
        )
        return Prompt(
            "priors",
            _messages(
                [
                    _description(spec, True),
                    describe_space(spec.space, True),
                    describe_goals(spec),
                    ask,
                ],
                compact=True,
            ),
            priors_schema(spec.space, compact=True),
            "parameter_priors",
        )
    ex: dict = {}
    numeric = [p for p in spec.space.free if not isinstance(p, CategoricalParam)]
    categorical = [p for p in spec.space.free if isinstance(p, CategoricalParam)]
    for p in (numeric[:1] + categorical[:1]) if categorical else numeric[:2]:
        if isinstance(p, CategoricalParam):
            k = len(p.choices)
            ex[p.name] = {
                "rationale": "...",
                "probabilities": {c: round(1 / k, 2) for c in p.choices},
                "confidence": 0.3,
            }
        else:
            ex[p.name] = {
                "rationale": "...",
                "best_guess": "<number>",
                "low": "<number>",
                "high": "<number>",
                "confidence": 0.3,
            }
    ask = (
        "Before any evaluation: for each parameter, say where you believe the best value lies.\n"
        "- numeric parameters: best_guess (your single best value), and low/high: an interval that you "
        "are about 80% sure contains the best value (inside the parameter's range; for log-scale "
        "parameters think in orders of magnitude);\n"
        "- unordered choices: a probability for each choice of being the best one (they sum to 1);\n"
        "- confidence between 0 and 1: how much the task description and common knowledge really tell "
        "you (0.1 = a guess, 0.5 = well established). Be honest: a confident wrong belief slows the search.\n"
        f'Reply with JSON like {{"priors": {json.dumps(ex)}}} covering every parameter: {", ".join(spec.space.names)}.'
    )
    return Prompt(
        "priors",
        _messages([_description(spec), describe_space(spec.space), describe_goals(spec), ask]),
        priors_schema(spec.space),
        "parameter_priors",
    )


RELATED_DESCRIPTION_CHARS = 600  # of each stored study's description (compact: a third)


def related_schema(names: Sequence[str]) -> dict:
    """``{"studies": [{"name", "relatedness", "why"}]}``, names from ``names``."""
    item = _strict_object(
        {
            "name": {"type": "string", "enum": list(names)},
            "relatedness": {"type": "number", "minimum": 0, "maximum": 1},
            "why": {"type": "string"},
        },
        ["name", "relatedness", "why"],
    )
    return _strict_object({"studies": {"type": "array", "items": item}}, ["studies"])


def _fixed_values(space: SearchSpace) -> str:
    """`` (fixed: name=value, ...)`` of the space's fixed parameters (which instance it is), or
    nothing."""
    fixed = [f"{p.name}={fmt(p.value)}" for p in space.params if isinstance(p, FixedParam)]
    return f" (fixed: {', '.join(fixed)})" if fixed else ""


def related_prompt(
    spec: StudySpec, candidates: Sequence[tuple[str, StudySpec]], *, compact: bool = False
) -> Prompt:
    """Which stored studies (name, spec) tune the same system as ``spec`` on a similar task, so
    that their results carry over (transfer's ``auto``: :func:`bbo.transfer.resolve_sources`)."""
    cap = RELATED_DESCRIPTION_CHARS // 3 if compact else RELATED_DESCRIPTION_CHARS
    rows = []
    for name, other in candidates:
        d = " ".join((other.description or "(no description)").split())
        d = d[:cap] + " [...]" if len(d) > cap else d
        rows.append(f"- {json.dumps(name)}: {d}{_fixed_values(other.space)}")
    new = _description(spec, compact) + _fixed_values(spec.space)
    ask = (
        "A new study is about to start. The stored studies below have the same parameters and "
        "objectives. For each, judge from the descriptions how related its task is to the new one: "
        "would its good settings likely be good here too? relatedness 1 = the same system on a very "
        "similar task, 0.5 = the same system on a different task, 0 = unrelated. "
        'Reply with JSON like {"studies": [{"name": "...", "relatedness": 0.5, "why": "..."}]} '
        "covering every stored study."
    )
    return Prompt(
        "related",
        _messages(
            [new, describe_goals(spec), "Stored studies:\n" + "\n".join(rows), ask],
            compact=compact,
        ),
        related_schema([n for n, _ in candidates]),
        "related_studies",
    )


def _messages(parts: list[str], compact: bool = False) -> tuple[dict, ...]:
    system = SYSTEM_COMPACT if compact else SYSTEM
    return ({"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)})
