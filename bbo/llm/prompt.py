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
from dataclasses import dataclass
from typing import Sequence

from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam, SearchSpace
from bbo.spec import MAXIMIZE, StudySpec
from bbo.trial import Trial, TrialState

MAX_HISTORY_ROWS = 30  # completed trials shown (best two thirds, most recent third)
MAX_PENDING_ROWS = 10
MAX_FAILED_ROWS = 5
MAX_DESCRIPTION_CHARS = 4000

SYSTEM = (
    "You are an expert research engineer helping a Bayesian optimization service decide which "
    "configurations of a black-box system to evaluate. You know typical good settings from the "
    "literature and practice. Reply with one JSON object only: no prose, no markdown outside it."
)


@dataclass(frozen=True)
class Prompt:
    """Chat messages plus the JSON schema the answer should follow."""

    purpose: str  # one of bbo.storage.sql.LLM_PURPOSES
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


def describe_param(p) -> str:
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


def describe_space(space: SearchSpace) -> str:
    lines = ["Parameters:"] + [describe_param(p) for p in space.params]
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


def _description(spec: StudySpec) -> str:
    d = (spec.description or "").strip()
    if not d:
        return "Task: (no description given) tune the parameters below."
    if len(d) > MAX_DESCRIPTION_CHARS:
        d = d[:MAX_DESCRIPTION_CHARS] + " [...]"
    return f"Task: {d}"


def rank_completed(spec: StudySpec, trials: Sequence[Trial]) -> list[Trial]:
    """Completed trials best first: feasible before infeasible, Pareto rank, then first objective."""
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

    rank: dict[int, int] = {}
    if len(spec.objectives) > 1:
        pts = [(t.id, score(t)) for t in done]
        remaining = list(pts)
        r = 0
        while remaining:
            front = [
                a
                for a in remaining
                if not any(
                    all(bj >= aj for aj, bj in zip(a[1], b[1]))
                    and any(bj > aj for aj, bj in zip(a[1], b[1]))
                    for b in remaining
                )
            ]
            for a in front:
                rank[a[0]] = r
            ids = {a[0] for a in front}
            remaining = [a for a in remaining if a[0] not in ids]
            r += 1
    return sorted(done, key=lambda t: (not feasible(t), rank.get(t.id, 0), -score(t)[0], t.id))


def history_table(
    spec: StudySpec, trials: Sequence[Trial], max_rows: int = MAX_HISTORY_ROWS
) -> str:
    """A compact text table of what has been evaluated, best first; empty string when nothing yet."""
    names = spec.space.names
    metrics = spec.modeled_metrics
    ranked = rank_completed(spec, trials)
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
def _value_schema(p) -> dict:
    if isinstance(p, FloatParam):
        return {"type": "number"}
    if isinstance(p, IntParam):
        return {"type": "integer"}
    if isinstance(p, CategoricalParam):
        return {"type": "string", "enum": list(p.choices)}
    if isinstance(p, OrdinalParam):
        return {
            "type": "number",
            "enum": [float(v) if isinstance(v, float) else v for v in p.values],
        }
    raise TypeError(type(p))


def candidates_schema(space: SearchSpace) -> dict:
    params = {
        "type": "object",
        "properties": {p.name: _value_schema(p) for p in space.free},
        "required": space.names,
        "additionalProperties": False,
    }
    item = {
        "type": "object",
        "properties": {"rationale": {"type": "string"}, "params": params},
        "required": ["rationale", "params"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"candidates": {"type": "array", "items": item}},
        "required": ["candidates"],
        "additionalProperties": False,
    }


def priors_schema(space: SearchSpace) -> dict:
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
    priors = {
        "type": "object",
        "properties": props,
        "required": space.names,
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"priors": priors},
        "required": ["priors"],
        "additionalProperties": False,
    }


def _example_params(space: SearchSpace) -> dict:
    ex = {}
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
def _context(spec: StudySpec, trials: Sequence[Trial]) -> list[str]:
    parts = [_description(spec), describe_space(spec.space), describe_goals(spec)]
    hist = history_table(spec, trials)
    if hist:
        parts.append(hist)
    return parts


def warmstart_prompt(spec: StudySpec, n: int) -> Prompt:
    """Zero-shot (no history): the same study and ``n`` give the same prompt, so it is cached once."""
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


def proposal_prompt(spec: StudySpec, trials: Sequence[Trial], k: int) -> Prompt:
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
    goal = "lower" if spec.objectives[0].goal != MAXIMIZE else "higher"
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


def priors_prompt(spec: StudySpec) -> Prompt:
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


def _messages(parts: list[str]) -> tuple[dict, ...]:
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)})
