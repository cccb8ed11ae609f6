"""Turn an LLM's free-form answer into valid points and priors for a search space.

Small local models (8B-class) return JSON wrapped in prose, in code fences, with trailing commas,
numbers as strings, values a little out of range, category names in the wrong case, or nothing
usable at all. Everything here is defensive: it never raises on model output, keeps what can be
repaired, rejects the rest, and says why in ``issues``.

Repairs, per value:

* float / int: numbers or numeric strings (``"0.01"``, ``"1e-3"``); out of range by at most
  ``CLIP_TOLERANCE`` of the range (in the search scale, so log units for log parameters) is clipped,
  further is rejected; ints are rounded;
* categorical: exact, then case- and space-insensitive match, else rejected;
* ordinal: snapped to the nearest listed value (in the search scale) within the same tolerance;
* fixed: always set to the fixed value.

A candidate missing a parameter, violating a parameter constraint, or duplicating another candidate
or an existing trial is dropped. The caller fills a shortfall with Sobol points (:func:`fill_with_sobol`).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bbo.errors import SpecError
from bbo.priors import unit_normal
from bbo.space import CategoricalParam, FixedParam, IntParam, OrdinalParam, SearchSpace, Value
from bbo.spec import ParameterPrior

log = logging.getLogger(__name__)

CLIP_TOLERANCE = (
    0.05  # fraction of a parameter's range (search scale) that is clipped rather than rejected
)
PRIOR_MEAN_TOLERANCE = (
    0.10  # a prior's location may sit this far outside the range before it is rejected
)
MIN_PRIOR_STD = 0.10  # fraction of the range (of the positions, on a grid encoded by position): no LLM prior is sharper
MAX_PRIOR_STD = 1.0  # ... or wider than this (wider is flat anyway)
DEFAULT_PRIOR_CONFIDENCE = 0.3  # when the model gives none
MIN_PRIOR_CONFIDENCE = 0.05
CATEGORICAL_PRIOR_FLOOR = 0.2  # mixed with uniform: no choice is ever ruled out by an LLM prior
INTERVAL_Z = 1.2816  # low/high are an 80% interval: +-1.28 sigma

_PARAM_KEYS = (
    "params",
    "parameters",
    "config",
    "configuration",
    "values",
    "point",
    "hyperparameters",
    "x",
)
_RATIONALE_KEYS = (
    "rationale",
    "reason",
    "reasoning",
    "why",
    "explanation",
    "justification",
    "comment",
)
_LIST_KEYS = (
    "candidates",
    "configurations",
    "configs",
    "suggestions",
    "points",
    "proposals",
    "results",
    "trials",
)


def _unusable_on_error(empty: Callable[[str], Any]):
    """The module's promise made structural for a parser of whole answers: an exception while
    reading one (an int past a double's range met where no check looked) makes the answer
    unusable, ``empty(why)``, logged, rather than failing the call whose answer it was (the call
    then went unrecorded and its prompt was sent again on every Ask)."""

    def wrap(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - model output must not fail the caller
                log.exception("reading an LLM answer failed (%s)", fn.__name__)
                return empty(f"the answer could not be read: {type(e).__name__}")

        return guarded

    return wrap


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(s: str) -> str:
    """``s`` with each lone surrogate (what a JSON ``"\\ud800"`` escape decodes to) replaced by
    U+FFFD: UTF-8 storage and protobuf strings refuse them, and model output must not fail the
    ask that stores or returns it."""
    return _SURROGATE.sub("\ufffd", s)


# ---- JSON extraction ---------------------------------------------------------------------------------
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_LINE_COMMENT = re.compile(r"(?m)(^|[\s,\[{])//[^\n]*")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def _loads(s: str) -> Any:
    """json.loads, then progressively more lenient readings; raises ValueError if none works."""
    s = s.strip()
    try:
        return json.loads(s)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        pass
    t = _BLOCK_COMMENT.sub("", s)
    t = _LINE_COMMENT.sub(r"\1", t)
    t = _TRAILING_COMMA.sub(r"\1", t)
    try:
        return json.loads(t)
    except (ValueError, RecursionError):
        pass
    # Python-literal style: single quotes, True/False/None.
    py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", t)))
    try:
        v = ast.literal_eval(py)
        if isinstance(v, (dict, list)):
            return v
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        pass
    raise ValueError("not JSON")


def _scan(text: str, i: int, stop_at_close: bool) -> tuple[int, dict[int, int]]:
    """Bracket matching from ``i`` on, skipping strings: (end of the block opening at ``i`` or -1,
    {opener position: its block's end, -1 if it never closes} for every opener met outside strings)."""
    ends: dict[int, int] = {}
    stack: list[int] = []
    in_str, quote, esc = False, "", False
    for j in range(i, len(text)):
        ch = text[j]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
        elif ch == '"' or (ch == "'" and (j == 0 or not text[j - 1].isalnum())):
            in_str, quote = True, ch
        elif ch in "{[":
            stack.append(j)
            ends[j] = -1
        elif ch in "}]" and stack:
            ends[stack.pop()] = j + 1
            if stop_at_close and not stack:
                return j + 1, ends
    return ends.get(i, -1), ends


def _balanced_at(text: str, i: int) -> int:
    """End (exclusive) of the balanced {...} / [...] block opening at ``i``, or -1 if it never closes."""
    return _scan(text, i, True)[0] if text[i : i + 1] in ("{", "[") else -1


class _Blocks:
    """Block ends for every opener of a text in one pass (an answer of n unclosed braces used to cost
    n scans to its end). An opener the pass saw inside a string (prose with a stray quote before the
    JSON) is scanned on its own, at most ``MAX_RESCANS`` of them."""

    MAX_RESCANS = 64

    def __init__(self, text: str):
        self.text = text
        self.ends = _scan(text, 0, False)[1]
        self.rescans = 0

    def end(self, i: int) -> int:
        e = self.ends.get(i)
        if e is not None:
            return e
        if self.rescans >= self.MAX_RESCANS:
            return -1
        self.rescans += 1
        return _balanced_at(self.text, i)


def _balanced_spans(text: str) -> Iterable[tuple[int, int]]:
    """(start, end) of each outermost balanced block; a block that never closes (a truncated answer)
    is skipped, so complete blocks inside it are still found."""
    blocks = _Blocks(text)
    i, n = 0, len(text)
    while i < n:
        if text[i] in "{[":
            end = blocks.end(i)
            if end > 0:
                yield i, end
                i = end
                continue
        i += 1


# Reading an answer costs time linear in its length and per block it holds (each block that fails
# JSON is tried again leniently), and a hostile endpoint's 1 MiB answer of small blocks cost 2-7 s
# of an Ask. An answer of max_tokens (2,048) tokens is a few KiB: only its first PARSE_CHARS
# characters are read, and at most PARSE_BLOCKS blocks of them parsed.
PARSE_CHARS = 128 * 1024
PARSE_BLOCKS = 256


def extract_json(text: str) -> Any | None:
    """The JSON value an answer most likely meant, or None.

    Tries: the whole text; each fenced code block; then the balanced blocks in the prose, longest
    first (the longest that parses, objects preferred over arrays). Reads at most
    :data:`PARSE_CHARS` of the answer and parses at most :data:`PARSE_BLOCKS` blocks.
    """
    if not text:
        return None
    text = _THINK.sub("", text[:PARSE_CHARS]).strip()
    try:
        return _loads(text)
    except ValueError:
        pass
    tries = PARSE_BLOCKS
    for m in _FENCE.finditer(text):
        tries -= 1
        if tries < 0:
            return None
        try:
            return _loads(m.group(1))
        except ValueError:
            continue
    array = None
    for a, b in sorted(_balanced_spans(text), key=lambda s: s[0] - s[1]):
        tries -= 1
        if tries < 0:
            break
        try:
            v = _loads(text[a:b])
        except ValueError:
            continue
        if isinstance(v, dict):
            return v  # the longest object that parses
        if array is None:
            array = v
    return array


# characters salvage_objects may hand the parser, per character of the answer (plus a floor): a
# block that fails to parse is tried again from each brace inside it, and 5,000 nested braces
# (30 KB) took 10 s of an Ask, n^2 in the depth; the budget keeps the work linear in the answer
SALVAGE_WORK = 8


def salvage_objects(text: str) -> list[dict]:
    """Every parseable {...} object, innermost-complete first where an outer one is cut off
    (for truncated answers). Objects nested in an object already taken are not repeated. Stops
    once it has parsed :data:`SALVAGE_WORK` times the answer's length or :data:`PARSE_BLOCKS`
    blocks, and reads :data:`PARSE_CHARS` of it at most."""
    text = _THINK.sub("", (text or "")[:PARSE_CHARS])
    blocks = _Blocks(text)
    out: list[dict] = []
    i, n = 0, len(text)
    budget = SALVAGE_WORK * n + 4096
    tries = PARSE_BLOCKS
    while i < n:
        if text[i] == "{":
            end = blocks.end(i)
            if end > 0:
                budget -= end - i
                tries -= 1
                if budget < 0 or tries < 0:
                    break
                try:
                    v = _loads(text[i:end])
                except ValueError:
                    v = None
                if isinstance(v, dict):
                    out.append(v)
                    i = end
                    continue
        i += 1
    return out


# ---- single values ----------------------------------------------------------------------------------
def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        try:
            v = float(raw)
        except OverflowError:  # an int past a double's range (1 and 400 zeros is valid JSON)
            return None
    elif isinstance(raw, str):
        s = raw.strip().replace("_", "").replace(" ", "")
        if s.count(",") == 1 and "." not in s and len(s.split(",")[1]) != 3:
            s = s.replace(",", ".")  # decimal comma, "0,01"
        else:
            s = s.replace(",", "")  # thousands separators, "1,000"
        try:
            v = float(s)
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def _t(p, x: float) -> float:
    return math.log(x) if p.log else x


def _range_t(p) -> tuple[float, float]:
    if isinstance(p, OrdinalParam):
        return _t(p, float(p.values[0])), _t(p, float(p.values[-1]))
    return _t(p, float(p.low)), _t(p, float(p.high))


QUOTE_CHARS = 80  # of a value quoted in a note (notes end up in stored outcomes and logs)


def _quote(v: Any) -> str:
    """``repr(v)``, cut to :data:`QUOTE_CHARS` (a model's value may be 100,000 characters, each
    ten in a repr, and a categorical may have 1,000 choices)."""
    r = repr(v[: QUOTE_CHARS + 1] if isinstance(v, (str, list)) else v)
    return r if len(r) <= QUOTE_CHARS else r[: QUOTE_CHARS - 3] + "..."


def coerce_value(p, raw: Any) -> tuple[Value | None, str]:
    """(value or None, note): ``raw`` repaired into a valid value of parameter ``p``."""
    if isinstance(p, FixedParam):
        return p.value, (
            ""
            if raw is None or raw == p.value
            else f"{p.name}: fixed at {_quote(p.value)}, ignored {_quote(raw)}"
        )
    if isinstance(p, CategoricalParam):
        if isinstance(raw, bool):
            raw = str(raw).lower()
        if isinstance(raw, (int, float)):
            raw = str(raw) if not (isinstance(raw, float) and raw.is_integer()) else str(int(raw))
        if not isinstance(raw, str):
            return None, f"{p.name}: {_quote(raw)} is not one of {_quote(list(p.choices))}"
        if raw in p.choices:
            return raw, ""
        key = " ".join(raw.split()).casefold()
        for c in p.choices:
            if " ".join(c.split()).casefold() == key:
                return c, f"{p.name}: {_quote(raw)} read as {_quote(c)}"
        return None, f"{p.name}: {_quote(raw)} is not one of {_quote(list(p.choices))}"
    v = _number(raw)
    if v is None:
        return None, f"{p.name}: {_quote(raw)} is not a number"
    note = "" if isinstance(raw, (int, float)) else f"{p.name}: {_quote(raw)} read as {v:g}"
    lo_t, hi_t = _range_t(p)
    if p.log and v <= 0:
        return None, f"{p.name}: {v:g} is not positive (log scale)"
    vt = _t(p, v)
    tol = CLIP_TOLERANCE * (hi_t - lo_t)
    if vt < lo_t - tol or vt > hi_t + tol:
        lo, hi = (p.values[0], p.values[-1]) if isinstance(p, OrdinalParam) else (p.low, p.high)
        return None, f"{p.name}: {v:g} is outside [{lo}, {hi}]"
    if isinstance(p, OrdinalParam):
        best = min(p.values, key=lambda x: abs(_t(p, float(x)) - vt))
        if float(best) != v:
            note = f"{p.name}: {v:g} snapped to {best}"
        return best, note
    if vt < lo_t or vt > hi_t:
        note = f"{p.name}: {v:g} clipped into [{p.low}, {p.high}]"
        v = float(p.low) if vt < lo_t else float(p.high)
    if isinstance(p, IntParam):
        r = int(round(v))
        if abs(r - v) > 1e-6:
            note = f"{p.name}: {v:g} rounded to {r}"
        return int(min(max(r, int(p.low)), int(p.high))), note
    return float(min(max(v, float(p.low)), float(p.high))), note


def _norm_key(k: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(k).strip()).casefold()


def coerce_params(
    space: SearchSpace, raw: Mapping[str, Any]
) -> tuple[dict[str, Value] | None, list[str]]:
    """A full, valid assignment from a model's mapping of names to values, or (None, why)."""
    notes: list[str] = []
    by_key = {_norm_key(k): v for k, v in raw.items()}
    out: dict[str, Value] = {}
    for p in space.params:
        if p.name in raw:
            val = raw[p.name]
        elif _norm_key(p.name) in by_key:
            val = by_key[_norm_key(p.name)]
        elif isinstance(p, FixedParam):
            out[p.name] = p.value
            continue
        else:
            return None, notes + [f"missing parameter '{p.name}'"]
        v, note = coerce_value(p, val)
        if note:
            notes.append(note)
        if v is None:
            return None, notes
        out[p.name] = v
    known = {_norm_key(p.name) for p in space.params}
    extra = [k for k in raw if _norm_key(k) not in known]
    if extra:
        notes.append(f"ignored unknown key(s) {extra[:5]}")
    if not space.is_feasible(out):
        return None, notes + ["violates a parameter constraint"]
    try:
        return space.validate_params(out), notes
    except SpecError as e:  # should not happen after coercion; never trust it blindly
        return None, notes + [e.message]


def point_key(space: SearchSpace, params: Mapping[str, Value]) -> tuple:
    """Identity of a point for de-duplication (floats compared to 10 significant digits)."""
    return tuple(
        float(f"{params[p.name]:.10g}")
        if isinstance(params.get(p.name), float)
        else params.get(p.name)
        for p in space.free
    )


# ---- candidates ----------------------------------------------------------------------------------------
@dataclass
class ParsedCandidates:
    points: list[tuple[dict[str, Value], str]] = field(default_factory=list)  # (params, rationale)
    issues: list[str] = field(default_factory=list)  # everything noted: repairs and rejections
    rejected: list[str] = field(
        default_factory=list
    )  # why candidates (or the whole answer) were dropped
    n_offered: int = 0  # candidate-like objects found in the answer

    def shortfall(self, n: int) -> str:
        """Why fewer than ``n`` points came out ("" if none missing)."""
        if len(self.points) >= n:
            return ""
        if self.rejected:
            more = f" (+{len(self.rejected) - 1} more)" if len(self.rejected) > 1 else ""
            return f"{self.rejected[0]}{more}"
        return f"the answer held {self.n_offered} candidate(s)"


def _candidate_list(data: Any, names: set[str]) -> list | None:
    if isinstance(data, list):
        return [x for x in data if isinstance(x, dict)] or None
    if not isinstance(data, dict):
        return None
    lowered = {_norm_key(k): v for k, v in data.items()}
    for k in _LIST_KEYS:
        if isinstance(lowered.get(k), list):
            return [x for x in lowered[k] if isinstance(x, dict)]
    for v in data.values():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            return v
    if _looks_like_candidate(data, names):
        return [data]
    return None


def _looks_like_candidate(d: dict, names: set[str]) -> bool:
    keys = {_norm_key(k) for k in d}
    return any(k in keys for k in _PARAM_KEYS) or bool(keys & names)


def _split_candidate(d: dict) -> tuple[Mapping[str, Any], str]:
    lowered = {_norm_key(k): k for k in d}
    rationale = ""
    for k in _RATIONALE_KEYS:
        if k in lowered and isinstance(d[lowered[k]], str):
            rationale = d[lowered[k]].strip()
            break
    for k in _PARAM_KEYS:
        if k in lowered and isinstance(d[lowered[k]], dict):
            return d[lowered[k]], rationale
    return {k: v for k, v in d.items() if _norm_key(k) not in _RATIONALE_KEYS}, rationale


@_unusable_on_error(lambda why: ParsedCandidates(issues=[why], rejected=[why]))
def parse_candidates(
    text: str,
    space: SearchSpace,
    *,
    limit: int | None = None,
    exclude: Iterable[Mapping[str, Value]] = (),
) -> ParsedCandidates:
    """Valid, distinct points from an answer; ``exclude``: points that already exist (trials)."""
    out = ParsedCandidates()
    names = {_norm_key(n) for n in space.names}
    data = extract_json(text)
    items = _candidate_list(data, names) if data is not None else None
    # A truncated answer (cut at max_tokens) is no JSON document: collect its complete candidates.
    salvaged = [d for d in salvage_objects(text) if _looks_like_candidate(d, names)]
    if len(salvaged) > len(items or []):
        items = salvaged
        out.issues.append("answer was not one JSON document; salvaged candidate objects from it")
    if not items:
        why = "no JSON candidates in the answer" if data is None else "JSON has no candidate list"
        out.issues.append(why)
        out.rejected.append(why)
        return out
    seen = {point_key(space, p) for p in exclude if all(q.name in p for q in space.free)}
    for i, item in enumerate(items):
        raw, rationale = _split_candidate(item)
        if not isinstance(raw, Mapping):
            continue
        out.n_offered += 1
        params, notes = coerce_params(space, raw)
        out.issues += [f"candidate {i}: {n}" for n in notes]
        if params is None:
            out.rejected.append(f"candidate {i}: {notes[-1] if notes else 'invalid'}")
            continue
        key = point_key(space, params)
        if key in seen:
            out.issues.append(f"candidate {i}: duplicate")
            out.rejected.append(f"candidate {i}: duplicate")
            continue
        seen.add(key)
        out.points.append((params, valid_text(rationale[:1000])))
        if limit is not None and len(out.points) >= limit:
            if len(items) > i + 1:
                out.issues.append(f"kept the first {limit} valid candidates of {len(items)}")
            break
    return out


# ---- priors -------------------------------------------------------------------------------------------
@dataclass
class ParsedPriors:
    priors: list[ParameterPrior] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)


def _first(d: Mapping[str, Any], keys: Sequence[str]) -> Any:
    low = {_norm_key(k): v for k, v in d.items()}
    for k in keys:
        if k in low and low[k] is not None:
            return low[k]
    return None


def _confidence(raw: Any, cap: float) -> float:
    c = _number(raw.strip().rstrip("%") if isinstance(raw, str) else raw)
    if c is None:
        c = DEFAULT_PRIOR_CONFIDENCE
    elif c > 1 and c <= 100:
        c = c / 100.0  # "70" or "70%"
    return float(min(max(c, MIN_PRIOR_CONFIDENCE), cap))


def _numeric_prior(p, d: Mapping[str, Any], cap: float, issues: list[str]) -> ParameterPrior | None:
    lo_t, hi_t = _range_t(p)
    span = hi_t - lo_t
    log = p.log

    def tv(raw) -> float | None:
        v = _number(raw)
        if v is None or (log and v <= 0):
            return None
        return _t(p, v)

    best = tv(
        _first(d, ("best_guess", "mean", "mode", "value", "location", "center", "centre", "best"))
    )
    low = tv(_first(d, ("low", "lower", "min", "lo")))
    high = tv(_first(d, ("high", "upper", "max", "hi")))
    interval = _first(d, ("interval", "range", "likely_range"))
    if (low is None or high is None) and isinstance(interval, (list, tuple)) and len(interval) == 2:
        low, high = tv(interval[0]), tv(interval[1])
    if low is not None and high is not None and low > high:
        low, high = high, low
    if best is None and low is not None and high is not None:
        best = 0.5 * (low + high)
    if best is None:
        issues.append(f"prior on '{p.name}': no location given")
        return None
    tol = PRIOR_MEAN_TOLERANCE * span
    if best < lo_t - tol or best > hi_t + tol:
        issues.append(f"prior on '{p.name}': location is far outside the range; ignored")
        return None
    best = min(max(best, lo_t), hi_t)
    if low is not None and high is not None:
        sd = max(high - best, best - low, 0.5 * (high - low)) / INTERVAL_Z
    else:
        raw_std = _number(_first(d, ("std", "stddev", "sigma", "spread", "scale", "sd")))
        if raw_std is not None and raw_std > 0:
            sd = math.log1p(raw_std / math.exp(best)) if log else raw_std
        else:
            sd = 0.25 * span
    sd_clamped = min(max(sd, MIN_PRIOR_STD * span), MAX_PRIOR_STD * span)
    if sd_clamped > sd * 1.0001:
        issues.append(f"prior on '{p.name}': spread widened to {MIN_PRIOR_STD:g} of the range")
    conf = _confidence(_first(d, ("confidence", "certainty", "weight")), cap)
    # ParameterPrior units (bbo.priors): mean in the parameter's own units; on a log scale, std is the
    # distance from mean to the point one log-sd above it.
    if log:
        mean = math.exp(best)
        std = mean * math.expm1(min(sd_clamped, 700.0))  # expm1 raises past 709.78
        if not math.isfinite(std):
            issues.append(f"prior on '{p.name}': its spread overflows a double; left out")
            return None
    else:
        mean, std = best, sd_clamped
    return ParameterPrior(
        parameter=p.name, mean=float(mean), std=float(std), confidence=conf, source="llm"
    )


def _grid_floor(
    space: SearchSpace, p: OrdinalParam, pr: ParameterPrior, issues: list[str]
) -> ParameterPrior:
    """A grid encoded by position (:attr:`bbo.space.SearchSpace.by_rank`): the prior acts on the
    grid position, so the spread floor :data:`MIN_PRIOR_STD` holds there too (a std of a tenth of
    the value range spans less than that on a geometric grid's upper steps)."""
    assert pr.mean is not None  # a numeric prior (_numeric_prior) always has one
    mu, sd = unit_normal(space, pr)
    if sd >= MIN_PRIOR_STD:
        return pr
    u = mu + MIN_PRIOR_STD if mu + MIN_PRIOR_STD <= 1.0 else mu - MIN_PRIOR_STD
    std = abs(p.rank_value(u) - float(pr.mean))
    issues.append(f"prior on '{p.name}': spread widened to {MIN_PRIOR_STD:g} of the grid")
    return replace(pr, std=std)


def _categorical_prior(
    p: CategoricalParam, d: Mapping[str, Any], cap: float, issues: list[str]
) -> ParameterPrior | None:
    probs_raw = _first(d, ("probabilities", "probs", "weights", "distribution"))
    probs = {c: 0.0 for c in p.choices}
    matched = False
    if isinstance(probs_raw, list):  # [{"choice": "adam", "probability": 0.7}, ...]
        probs_raw = {
            str(_first(x, ("choice", "value", "name"))): _first(
                x, ("probability", "p", "prob", "weight")
            )
            for x in probs_raw
            if isinstance(x, dict)
        }
    if isinstance(probs_raw, dict):
        weights = [
            (c, x)
            for k, v in probs_raw.items()
            if (c := coerce_value(p, k)[0]) is not None and (x := _number(v)) is not None and x > 0
        ]
        top = max(
            (x for _, x in weights), default=1.0
        )  # scaled first: weights near the float limit must not sum to inf
        for c, x in weights:
            probs[str(c)] += x / top
            matched = True
    if not matched:
        guess = _first(d, ("best_guess", "best", "mode", "value", "choice"))
        c, _ = coerce_value(p, guess) if guess is not None else (None, "")
        if c is None:
            issues.append(f"prior on '{p.name}': no usable probabilities")
            return None
        probs[str(c)] = 1.0
    total = sum(probs.values())
    k = len(p.choices)
    mixed = {
        c: (1 - CATEGORICAL_PRIOR_FLOOR) * v / total + CATEGORICAL_PRIOR_FLOOR / k
        for c, v in probs.items()
    }
    conf = _confidence(_first(d, ("confidence", "certainty", "weight")), cap)
    return ParameterPrior(parameter=p.name, probabilities=mixed, confidence=conf, source="llm")


@_unusable_on_error(lambda why: ParsedPriors(issues=[why]))
def parse_priors(text: str, space: SearchSpace, *, confidence_cap: float = 0.5) -> ParsedPriors:
    """Validated ``ParameterPrior(source="llm")`` objects from an answer (possibly fewer than params)."""
    out = ParsedPriors()
    data = extract_json(text)
    if not isinstance(data, (dict, list)):
        out.issues.append("no JSON priors in the answer")
        return out
    container: Any = data
    if isinstance(data, dict):
        inner = _first(data, ("priors", "parameters", "beliefs"))
        if isinstance(inner, (dict, list)):
            container = inner
    entries: dict[str, Mapping[str, Any]] = {}
    if isinstance(container, list):
        for x in container:
            if isinstance(x, dict):
                name = _first(x, ("parameter", "name", "param"))
                if isinstance(name, str):
                    entries[name] = x
    else:
        entries = {k: v for k, v in container.items() if isinstance(v, dict)}
    by_norm = {_norm_key(k): v for k, v in entries.items()}
    for p in space.free:
        d = entries.get(p.name) or by_norm.get(_norm_key(p.name))
        if d is None:
            out.issues.append(f"no prior for '{p.name}'")
            continue
        pr = (
            _categorical_prior(p, d, confidence_cap, out.issues)
            if isinstance(p, CategoricalParam)
            else _numeric_prior(p, d, confidence_cap, out.issues)
        )
        if pr is not None and isinstance(p, OrdinalParam) and p.name in space.by_rank:
            pr = _grid_floor(space, p, pr, out.issues)
        if pr is not None:
            out.priors.append(pr)
    known = {_norm_key(p.name) for p in space.free}
    extra = [k for k in entries if _norm_key(k) not in known]
    if extra:
        out.issues.append(f"ignored priors on unknown or fixed parameter(s) {extra[:5]}")
    return out


def merge_priors(
    user: Sequence[ParameterPrior], llm: Sequence[ParameterPrior]
) -> tuple[ParameterPrior, ...]:
    """The user's priors, plus LLM priors on parameters the user said nothing about."""
    have = {p.parameter for p in user}
    return tuple(user) + tuple(p for p in llm if p.parameter not in have)


@dataclass
class ParsedRelated:
    scores: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (score, why)
    issues: list[str] = field(default_factory=list)


@_unusable_on_error(lambda why: ParsedRelated(issues=[why]))
def parse_related(text: str, names: Sequence[str]) -> ParsedRelated:
    """The relatedness (in [0, 1], clipped) and reason the answer gives each of ``names``; other
    names and entries without a number are noted and left out."""
    out = ParsedRelated()
    data = extract_json(text)
    container: Any = data
    if isinstance(data, dict):
        container = _first(data, ("studies", "related", "results"))
        if container is None:  # {"name": {"relatedness": ...}, ...}
            container = [{"name": k, **v} for k, v in data.items() if isinstance(v, dict)]
    if not isinstance(container, list):
        out.issues.append("no JSON list of studies in the answer")
        return out
    known = {_norm_key(n): n for n in names}
    for x in container:
        if not isinstance(x, dict):
            continue
        raw = _first(x, ("name", "study"))
        name = known.get(_norm_key(raw)) if isinstance(raw, str) else None
        if name is None:
            out.issues.append(f"ignored an entry for an unknown study {str(raw)[:40]!r}")
            continue
        v = _number(_first(x, ("relatedness", "score", "similarity")))
        if v is None or not math.isfinite(v):
            out.issues.append(f"no relatedness number for {name!r}")
            continue
        why = _first(x, ("why", "reason", "rationale"))
        why = valid_text(" ".join(str(why).split())[:200]) if why is not None else ""
        out.scores[name] = (min(1.0, max(0.0, v)), why)
    missing = [n for n in names if n not in out.scores]
    if missing:
        out.issues.append(f"no judgement for {len(missing)} stud(ies), e.g. {missing[0]!r}")
    return out
