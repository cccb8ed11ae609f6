"""Transfer across studies: which stored studies a new study learns from, and how their trials map
into its search space. The model that uses them is :mod:`bbo.transfer_model`.

* **Sources** are studies of the creating tenant only. Named ones (``spec.transfer.sources``) and,
  with ``spec.transfer.auto``, the best-ranked related ones are resolved to their uids when the
  study is created (:func:`resolve_sources`) and kept in the study's record; a source deleted (or
  deleted and re-created under its name) later is recognised by its uid and left out. Sources are
  read through the storage interface, never written.
* **Relatedness** (:func:`relatedness`): a source must have every free parameter of the target
  (same name, numeric for numeric, categorical with a shared choice for categorical; a parameter
  the source held fixed counts at that value), every objective of the target, and report every
  constrained metric. Among compatible studies the score weighs how much of the target's ranges
  the source covered, extra source parameters, matching objective goals, the descriptions' TF-IDF
  cosine similarity and fixed parameters with equal values; ``why`` says each part in words. For
  ``auto`` with the LLM module on (and the study's ``llm.enabled``), the LLM's judgement of how
  related the descriptions are replaces their TF-IDF similarity (a :data:`Judge`).
* **Mapping** (:func:`encode_source_trials`, :func:`map_point`): a source trial keeps its values in
  the parameters' own units (rho = 0.3 stays 0.3), encoded with the *target's* ranges and scales;
  points far outside the target's box are dropped, values of categories the target lacks drop the
  trial. A source's best point opens the target's design mapped the same way, clipped to the
  target's bounds and rounded onto its grid. Where the target fixes a parameter the source varied,
  the source's trials are read at the target's value (:func:`conditioning`: a GP with that
  parameter as an input, :meth:`bbo.transfer_model.Transfer.set_sources`).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np

from bbo.errors import NotFoundError, SpecError
from bbo.space import CategoricalParam, FixedParam, IntParam, OrdinalParam, SearchSpace, Value
from bbo.spec import StudySpec
from bbo.trial import Trial, TrialState

MIN_SCORE = 0.5  # relatedness under which ``auto`` does not pick a study
MIN_AUTO_TRIALS = 3  # completed trials a study needs before ``auto`` picks it
OUTSIDE = 0.25  # source points farther than this (in units of the target's range) are dropped
# completed trials of a source an ask keeps (:func:`kept_source_trials`): as many as its GP
# conditions on (``SOURCE_OPTIONS.max_model_points`` in :mod:`bbo.transfer_model`)
MAX_SOURCE_TRIALS = 1000
MAX_CANDIDATES = 10_000  # stored studies ``auto`` looks at (the tenant's oldest first)
KEY_PAGE = 500  # stored studies ``auto`` lists at once, by their keys (uid, name, created_at)
AUTO_PAGE = 8  # stored studies ``auto`` reads at once with their specs (each to --max-spec-bytes)
MAX_DESCRIPTION_CHARS = 65_536  # of a candidate's description ``auto`` compares (the default limit)
MAX_TEXT_BYTES = 8 << 20  # UTF-8 bytes of candidates' descriptions ``auto`` compares at once
MAX_JUDGED = 20  # candidates a judge (the LLM) is shown: the best by structure and TF-IDF
TEXT_WEIGHT = 0.15  # the descriptions' share of the relatedness score

# ``auto``'s optional judge of descriptions (the LLM module's, :meth:`LlmAdvisor.related`): given the
# new study's spec and ``(name, spec)`` of stored candidates, ``({name: (relatedness, why)}, note)``
Judge = Callable[
    [StudySpec, Sequence[tuple[str, StudySpec]]], tuple[Mapping[str, tuple[float, str]], str]
]


@dataclass(frozen=True)
class Relatedness:
    """How well a stored study fits as a source: ``score`` in [0, 1], ``why`` in words, and for an
    incompatible one ``problems`` (then ``score`` is 0)."""

    score: float
    why: str
    problems: tuple[str, ...] = ()

    @property
    def compatible(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class SourceRef:
    """A resolved source, as the study record keeps it."""

    uid: str
    name: str
    relatedness: float
    why: str
    explicit: bool  # named in the spec (else picked by ``auto``)


@dataclass
class SourceData:
    """What the strategy gets of a source at an ask: its spec and completed trials (read-only)."""

    uid: str
    name: str
    spec: StudySpec
    trials: list[Trial] = field(default_factory=list)


# ---- relatedness ---------------------------------------------------------------------------------
def _unit_range(tp, sp, by_rank: bool = False) -> tuple[float, float]:
    """The source parameter's range in the target parameter's encoding (unit coordinates; an
    ordinal target ``by_rank`` by grid position, clamped to its grid)."""
    if isinstance(sp, FixedParam):
        v = float(sp.value)
        lo = hi = v
    elif isinstance(sp, OrdinalParam):
        lo, hi = float(sp.values[0]), float(sp.values[-1])
    else:
        lo, hi = float(sp.low), float(sp.high)
    try:
        if by_rank:
            return tp.rank_unit(lo), tp.rank_unit(hi)
        return _to_unit(tp, lo), _to_unit(tp, hi)
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan, math.nan


def _to_unit(tp, v: float) -> float:
    """``v`` (in the parameter's units) on the target parameter's unit scale; may lie outside
    [0, 1]. Raises ValueError where the target's log scale cannot hold it."""
    if tp.log:
        if v <= 0:
            raise ValueError("not positive")
        t, lo, hi = math.log(v), math.log(_low(tp)), math.log(_high(tp))
    else:
        t, lo, hi = v, _low(tp), _high(tp)
    return (t - lo) / (hi - lo)


def _low(p) -> float:
    return float(p.values[0]) if isinstance(p, OrdinalParam) else float(p.low)


def _high(p) -> float:
    return float(p.values[-1]) if isinstance(p, OrdinalParam) else float(p.high)


def _coverage(tp, sp, by_rank: bool = False) -> tuple[float, str]:
    """The share of the target parameter's range (or choices) the source parameter covers, and a
    problem where it cannot be mapped at all; ``by_rank``: an ordinal target encoded by grid
    position (:attr:`bbo.space.SearchSpace.by_rank`), whose share is of its positions."""
    if isinstance(tp, CategoricalParam):
        if isinstance(sp, FixedParam):
            ok = isinstance(sp.value, str) and sp.value in tp.choices
            return (1.0 / len(tp.choices), "") if ok else (0.0, "its fixed value is no choice")
        if not isinstance(sp, CategoricalParam):
            return 0.0, "numeric in the source, categorical here"
        shared = set(tp.choices) & set(sp.choices)
        if not shared:
            return 0.0, "no choice in common"
        return len(shared) / len(set(tp.choices) | set(sp.choices)), ""
    if isinstance(sp, CategoricalParam) or (
        isinstance(sp, FixedParam) and isinstance(sp.value, str)
    ):
        return 0.0, "categorical in the source, numeric here"
    lo, hi = _unit_range(tp, sp)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, "the source's values do not fit this parameter's log scale"
    if isinstance(sp, FixedParam):
        return (0.5, "") if -OUTSIDE <= lo <= 1 + OUTSIDE else (0.0, "fixed far outside the range")
    if by_rank:
        lo, hi = _unit_range(tp, sp, by_rank=True)
    overlap = max(0.0, min(hi, 1.0) - max(lo, 0.0))
    return overlap, "" if overlap > 0 else "the source's range does not overlap"


def relatedness(
    target: StudySpec,
    source: StudySpec,
    description_similarity: float | None = None,
    judged: tuple[float, str] | None = None,
) -> Relatedness:
    """How well ``source`` fits as a transfer source for ``target`` (see the module docstring).
    ``judged``: a judge's ``(relatedness, why)`` of the descriptions, used instead of their TF-IDF
    similarity."""
    fit = _fit(target, source)
    if isinstance(fit, Relatedness):
        return fit
    return fit.relatedness(description_similarity, judged)


@dataclass(frozen=True)
class _Fit:
    """What the relatedness of a compatible source is apart from its description: the terms of the
    score and the words of ``why`` (a few hundred bytes, whatever the size of the spec)."""

    head: float  # 0.6 * structure + 0.15 * objectives
    fixed: float  # 0.1 * the share of equal fixed parameters
    why_head: tuple[str, ...]
    why_fixed: str  # "" where the target fixes no parameter

    @property
    def plain(self) -> float:
        """The score without the description's part (which adds at most :data:`TEXT_WEIGHT`)."""
        return self.head + self.fixed

    def relatedness(
        self, description_similarity: float | None = None, judged: tuple[float, str] | None = None
    ) -> Relatedness:
        if judged is not None:
            text = float(judged[0])
        else:
            text = 0.5 if description_similarity is None else float(description_similarity)
        score = self.head + TEXT_WEIGHT * text + self.fixed
        why = list(self.why_head)
        if judged is not None:
            why.append(f"judged related {judged[0]:.2f}" + (f" ({judged[1]})" if judged[1] else ""))
        elif description_similarity is not None:
            why.append(f"description similarity {description_similarity:.2f}")
        if self.why_fixed:
            why.append(self.why_fixed)
        return Relatedness(round(min(1.0, max(0.0, score)), 4), ", ".join(why))


def _fit(target: StudySpec, source: StudySpec) -> _Fit | Relatedness:
    """The description-free part of :func:`relatedness`; an incompatible source's
    :class:`Relatedness` (score 0, its problems)."""
    problems: list[str] = []
    by_name = source.space.by_name
    cover: list[float] = []
    for tp in target.space.free:
        sp = by_name.get(tp.name)
        if sp is None:
            problems.append(f"no parameter '{tp.name}'")
            continue
        c, problem = _coverage(tp, sp, tp.name in target.space.by_rank)
        if problem:
            problems.append(f"parameter '{tp.name}': {problem}")
        cover.append(c)
    source_goals = {o.name: o.goal for o in source.objectives}
    goals_match = 0
    for o in target.objectives:
        if o.name not in source_goals:
            problems.append(f"objective '{o.name}' is not an objective there")
        elif source_goals[o.name] == o.goal:
            goals_match += 1
    reported = set(source.all_metrics)
    for oc in target.outcome_constraints:
        if oc.metric not in reported:
            problems.append(f"metric '{oc.metric}' (a constraint here) is not reported there")
    if problems:
        return Relatedness(0.0, "; ".join(problems), tuple(problems))
    target_names = {p.name for p in target.space.free}
    extra = [p.name for p in source.space.free if p.name not in target_names]
    structure = float(np.mean(cover)) * len(target_names) / (len(target_names) + len(extra))
    objectives = goals_match / len(target.objectives)
    fixed_t = [p for p in target.space.params if isinstance(p, FixedParam)]
    same_fixed = [
        p.name
        for p in fixed_t
        if isinstance(sf := by_name.get(p.name), FixedParam) and sf.value == p.value
    ]
    fixed = len(same_fixed) / len(fixed_t) if fixed_t else 0.5
    why = [
        f"all {len(target_names)} parameters, ranges covered {100 * np.mean(cover):.0f}%",
        f"objectives match{'' if goals_match == len(target.objectives) else ' (another goal)'}",
    ]
    if extra:
        why.append(f"{len(extra)} extra source parameter(s)")
    return _Fit(
        head=0.6 * structure + 0.15 * objectives,
        fixed=0.1 * fixed,
        why_head=tuple(why),
        why_fixed=f"{len(same_fixed)}/{len(fixed_t)} fixed parameters equal" if fixed_t else "",
    )


def description_similarities(target: str, others: Sequence[str]) -> list[float | None]:
    """TF-IDF cosine similarity of ``target`` to each of ``others`` (None where either is empty)."""
    if not target.strip() or not any(o.strip() for o in others):
        return [None] * len(others)
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [target] + [o if o.strip() else "" for o in others]
    try:
        m = TfidfVectorizer(sublinear_tf=True).fit_transform(docs)
    except ValueError:  # no usable words at all
        return [None] * len(others)
    sims = (m[1:] @ m[0].T).toarray().ravel()
    return [float(s) if o.strip() else None for s, o in zip(sims, others, strict=True)]


# ---- resolution (at creation) --------------------------------------------------------------------
def resolve_sources(
    storage,
    tenant: str,
    name: str,
    spec: StudySpec,
    judge: Judge | None = None,
    cap: int | None = None,
) -> dict | None:
    """The transfer record of a study about to be created: its sources, named and automatic, by
    uid, with relatedness and why. Only ``tenant``'s studies are looked at. A named source that
    does not exist (in this tenant) is :class:`NotFoundError`, one that cannot be a source
    :class:`SpecError`; ``auto`` finding nothing related leaves an empty list (plain BO).
    ``judge`` (optional) rates the descriptions of ``auto``'s candidates. ``cap``: the server's
    ``--max-transfer-sources``, which the default ``max_sources`` (3) does not exceed."""
    t = spec.transfer
    if not t.enabled:
        return None
    limit = t.limit if cap is None else min(t.limit, cap)
    chosen: list[SourceRef] = []
    named = []
    for i, src in enumerate(t.sources):
        rec = storage.get_study(tenant, src)
        if rec is None or rec.tenant != tenant:
            raise NotFoundError(
                f"spec.transfer.sources[{i}]: source study '{src}' not found (a source must be "
                "a study of your own tenant)"
            )
        named.append((i, rec, _spec_of(rec)))
    sims = description_similarities(
        spec.description, [s.description if s else "" for *_, s in named]
    )
    for (i, rec, sspec), sim in zip(named, sims, strict=True):
        if sspec is None:
            raise SpecError(f"transfer.sources[{i}]", f"study '{rec.name}' has an unreadable spec")
        r = relatedness(spec, sspec, sim)
        if not r.compatible:
            raise SpecError(
                f"transfer.sources[{i}]",
                f"study '{rec.name}' cannot be a source: {r.why}",
            )
        chosen.append(SourceRef(rec.uid, rec.name, r.score, r.why, True))
    note = ""
    if t.auto and len(chosen) < limit:
        picked, note = _auto(storage, tenant, name, spec, {c.uid for c in chosen}, judge)
        chosen.extend(picked[: limit - len(chosen)])
    return {
        "sources": [asdict(c) for c in chosen],
        "resolved_at": time.time(),
        "note": note,
        "weights": {},
    }


def _spec_of(rec) -> StudySpec | None:
    try:
        return StudySpec.from_dict(rec.spec, strict=False)
    except (SpecError, TypeError, ValueError):
        return None


@dataclass
class _Candidate:
    """A compatible stored study as ``auto`` keeps it while it reads the rest: its identity, the
    description-free part of its relatedness and its description (at most
    :data:`MAX_DESCRIPTION_CHARS`), never its spec."""

    seq: int  # its place in creation order
    uid: str
    name: str
    created_at: float
    fit: _Fit
    description: str
    size: int  # UTF-8 bytes of ``description``


def _candidate(spec: StudySpec, rec, seq: int) -> _Candidate | None:
    """A stored study as a :class:`_Candidate` for ``spec``; None where it is incompatible or its
    spec unreadable."""
    sspec = _spec_of(rec)
    if sspec is None:
        return None
    fit = _fit(spec, sspec)
    if isinstance(fit, Relatedness):
        return None
    desc = sspec.description[:MAX_DESCRIPTION_CHARS]
    size = len(desc.encode("utf-8", "surrogatepass"))
    return _Candidate(seq, rec.uid, rec.name, rec.created_at, fit, desc, size)


def _compatible(
    storage, tenant: str, name: str, spec: StudySpec, taken: set[str]
) -> tuple[list[_Candidate], int, int]:
    """``(candidates, studies seen, compatible)``: the tenant's studies compatible with ``spec``,
    oldest first, their descriptions at most :data:`MAX_TEXT_BYTES` together (see :func:`_auto`)."""
    kept: list[tuple[float, int, _Candidate]] = []  # a heap: the lowest plain score, oldest, first
    floor: tuple[float, int] | None = None  # the best (plain score, seq) left out so far
    text_bytes = 0
    seen = compatible = 0
    after = None
    while seen < MAX_CANDIDATES:
        n = min(KEY_PAGE, MAX_CANDIDATES - seen)
        keys = storage.list_study_keys(tenant, after=after, limit=n)
        if keys:
            after = (keys[-1].created_at, keys[-1].name)
        seen += len(keys)
        uids = [k.uid for k in keys if k.uid not in taken and k.name != name]
        for i in range(0, len(uids), AUTO_PAGE):
            page = storage.studies_by_uid(uids[i : i + AUTO_PAGE])
            page.reverse()
            while page:
                rec = page.pop()  # its spec goes once it is scored
                cand = _candidate(spec, rec, compatible) if rec.tenant == tenant else None
                if cand is None:
                    continue
                compatible += 1
                key = (cand.fit.plain, cand.seq)
                if floor is not None and key < floor:
                    continue  # a better one was left out already
                heapq.heappush(kept, (*key, cand))
                text_bytes += cand.size
                while text_bytes > MAX_TEXT_BYTES and kept:
                    plain, at, out = heapq.heappop(kept)
                    text_bytes -= out.size
                    floor = (plain, at) if floor is None else max(floor, (plain, at))
        if len(keys) < n:
            break
    cands = sorted((c for *_, c in kept), key=lambda c: c.seq)
    return cands, seen, compatible


def _rejudge(storage, tenant: str, spec: StudySpec, scored: list, judge: Judge) -> str:
    """Rescore the best :data:`MAX_JUDGED` of ``scored`` (in place) by ``judge``'s rating of their
    descriptions; its note."""
    if not scored:
        return ""
    scored.sort(key=lambda x: -x[3].score)
    shown = []
    for i, (c, *_) in enumerate(scored[:MAX_JUDGED]):
        rec = storage.get_study_by_uid(c.uid)  # read again: only the judged ones' specs
        sspec = _spec_of(rec) if rec is not None and rec.tenant == tenant else None
        if sspec is not None:
            shown.append((i, c.name, sspec))
    verdicts, note = judge(spec, [(nm, s) for _, nm, s in shown])
    for i, *_ in shown:
        c, sim, completed, _ = scored[i]
        if c.name in verdicts:
            scored[i] = (c, sim, completed, c.fit.relatedness(sim, verdicts[c.name]))
    return note


def _auto(
    storage, tenant: str, name: str, spec: StudySpec, taken: set[str], judge: Judge | None = None
):
    """The tenant's compatible studies with enough completed trials, best first, and a note. With a
    ``judge``, its rating of the descriptions of the best :data:`MAX_JUDGED` replaces their TF-IDF
    similarity in the score (a judge that fails leaves TF-IDF; its note says why).

    Memory is bounded whatever is stored: the tenant's studies (at most :data:`MAX_CANDIDATES`) are
    listed by their keys, :data:`KEY_PAGE` at a time, and read :data:`AUTO_PAGE` at a time with
    their specs, each spec dropped once parsed and scored; a compatible
    study is kept as a :class:`_Candidate` (its description cut to :data:`MAX_DESCRIPTION_CHARS`).
    The descriptions are compared all at once (TF-IDF), so they are held to
    :data:`MAX_TEXT_BYTES` together: past it, the candidates with the lowest score apart from the
    description (the oldest first among equals) are left out, as many as it takes, and the note
    says so. Below it (10,000 studies whose descriptions average 800 bytes, or 128 of the longest
    allowed) every compatible study is compared, as before. The judge is shown the specs of its (at most
    :data:`MAX_JUDGED`) candidates, read again."""
    cands, seen, compatible = _compatible(storage, tenant, name, spec, taken)
    sims = description_similarities(spec.description, [c.description for c in cands])
    scored = []
    reachable = MIN_SCORE - (TEXT_WEIGHT if judge is not None else 0.0)  # a judge may lift a score
    reached = []
    for c, sim in zip(cands, sims, strict=True):
        r = c.fit.relatedness(sim)
        if r.score >= reachable:
            reached.append((c, sim, r))
    # one query per page of candidates (not one per candidate: up to 10,000 round trips)
    counts = storage.completed_counts([c.uid for c, *_ in reached])
    for c, sim, r in reached:
        completed = counts.get(c.uid, 0)  # a study deleted meanwhile has none
        if completed >= MIN_AUTO_TRIALS:
            scored.append((c, sim, completed, r))
    judge_note = _rejudge(storage, tenant, spec, scored, judge) if judge is not None else ""
    ranked = [(r.score, completed, c.created_at, c, r) for c, _, completed, r in scored]
    ranked = [x for x in ranked if x[0] >= MIN_SCORE]
    ranked.sort(key=lambda x: (-x[0], -x[1], -x[2]))
    note = (
        f"auto: {len(ranked)} related of {seen} stored studies"
        f" ({compatible} compatible; at least {MIN_AUTO_TRIALS} completed trials and relatedness"
        f" {MIN_SCORE} needed)"
    )
    if len(cands) < compatible:
        note += (
            f"; the descriptions of {len(cands)} of them compared (the best apart from the"
            f" description; at most {MAX_TEXT_BYTES >> 20} MiB of descriptions at once)"
        )
    if judge_note:
        note += f"; {judge_note}"
    return [SourceRef(c.uid, c.name, r.score, r.why, False) for *_, c, r in ranked], note


def source_refs(record: Mapping[str, Any] | None) -> list[SourceRef]:
    """The sources a stored transfer record names."""
    if not record:
        return []
    out = []
    for s in record.get("sources", []):
        try:
            out.append(SourceRef(**s))
        except TypeError:
            continue
    return out


# ---- mapping -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conditioning:
    """Parameters the target fixes that a source varied. Their value matters to the source's
    outcomes, so its trials are modeled in ``space`` (the target's free parameters, then these as
    the source defines them) and read at ``at``, their columns at the target's fixed values; ``at``
    is None where the source cannot speak for those values (a category it lacks, a value farther
    than :data:`OUTSIDE` beyond its range)."""

    space: SearchSpace
    values: dict[str, Value]  # the target's fixed values of those parameters
    at: np.ndarray | None


def conditioning(target: SearchSpace, source: SearchSpace) -> Conditioning | None:
    """The :class:`Conditioning` of ``source``'s trials for ``target``; None where the target fixes
    no parameter the source varied (a parameter the source lacks or fixed too is left as it is)."""
    fixed = [p for p in target.params if isinstance(p, FixedParam)]
    varied = [
        sp
        for p in fixed
        if (sp := source.by_name.get(p.name)) is not None and not isinstance(sp, FixedParam)
    ]
    if not varied:
        return None
    kept = [p for p in target.params if p.name not in {sp.name for sp in varied}]
    space = SearchSpace((*kept, *varied), target.constraints)
    values = {sp.name: cast(FixedParam, target.by_name[sp.name]).value for sp in varied}
    at = [_column(space, sp, values[sp.name]) for sp in varied]
    ok = all(u is not None for u in at)
    return Conditioning(space, values, np.asarray(at, dtype=float) if ok else None)


def _source_value(tp, sp, params: dict[str, Any]) -> Any:
    if isinstance(sp, FixedParam):
        return sp.value
    return params.get(tp.name)


def encode_source_trials(
    target: SearchSpace, source: SearchSpace, trials: Sequence[Trial], metrics: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[Trial]]:
    """Source trials in the target's encoding: ``(X, Y, trials used)``. Values keep their units;
    trials outside the target's box by more than :data:`OUTSIDE` of a range, with a category the
    target lacks, or without a finite value of every metric in ``metrics`` are left out."""
    by_name = source.by_name
    X, Y, used = [], [], []
    for t in trials:
        if t.state is not TrialState.COMPLETED:
            continue
        try:
            y = [float(t.metrics[k].value) for k in metrics]
        except KeyError:
            continue
        if not all(math.isfinite(v) for v in y):
            continue
        x = _encode(target, by_name, t.params)
        if x is None:
            continue
        X.append(x)
        Y.append(y)
        used.append(t)
    d = target.dim
    return (
        np.asarray(X, dtype=float).reshape(-1, d),
        np.asarray(Y, dtype=float).reshape(-1, len(metrics)),
        used,
    )


def kept_source_trials(
    target: StudySpec, source: StudySpec, uid: str, trials: Sequence[Trial], k: int
) -> list[Trial]:
    """At most ``k`` of the source ``uid``'s ``trials`` (all of them up to ``k``), in their order:
    of those whose every modeled metric is finite and that map into the target's space, the best
    ``k / 2`` by the target's score and a random sample of the rest (seeded by the source and the
    trial), with the best trial :func:`map_point` takes (the design's opening point). Applied again
    to what it kept and more trials, it keeps what it would of all of them (for one objective): a
    large source is read a page at a time (:class:`bbo.study_transfer.StudySources`)."""
    if len(trials) <= k:
        return list(trials)
    from bbo.acquisition import Layout
    from bbo.strategy.model_data import quality

    names = target.modeled_metrics
    cond = conditioning(target.space, source.space)
    space = target.space if cond is None else cond.space  # as the source's GP encodes them
    by_name = source.space.by_name
    rows, Y, inside = [], [], []
    for t in trials:
        try:
            y = [float(t.metrics[n].value) for n in names]
        except KeyError:
            continue
        if t.state is TrialState.COMPLETED and all(math.isfinite(v) for v in y):
            rows.append(t)
            Y.append(y)
            inside.append(_encode(space, by_name, t.params) is not None)
    lay = Layout.of(target)
    Ya = np.asarray(Y, dtype=float).reshape(-1, len(names))
    order = np.argsort(-quality(lay, Ya, lay.feasible(Ya)), kind="stable")
    keep: set[int] = set()
    for i in order:
        if map_point(target.space, source.space, rows[i].params) is not None:
            keep.add(int(i))
            break
    mapped = [int(i) for i in order if inside[i]]
    keep.update(mapped[: k // 2])
    rest = [i for i in mapped if i not in keep]
    keys = [hashlib.blake2b(f"{uid}/{rows[i].id}".encode(), digest_size=8).digest() for i in rest]
    keep.update(rest[j] for j in sorted(range(len(rest)), key=keys.__getitem__)[: k - len(keep)])
    return [rows[i] for i in sorted(keep)]


def _encode(target: SearchSpace, by_name: dict, params: dict) -> np.ndarray | None:
    out = []
    for tp in target.free:
        sp = by_name.get(tp.name)
        if sp is None:
            return None
        u = _column(target, tp, _source_value(tp, sp, params))
        if u is None:
            return None
        out.append(u)
    return np.asarray(out, dtype=float)


def _column(target: SearchSpace, tp, v: Any) -> float | None:
    """A source's value ``v`` on the target parameter ``tp``'s column; None where it has none
    (a category the target lacks, a value farther than :data:`OUTSIDE` beyond the range)."""
    if isinstance(tp, CategoricalParam):
        if not isinstance(v, str) or v not in tp.choices:
            return None
        return float(tp.choices.index(v))
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        u = _to_unit(tp, float(v))  # the value scale, for the box
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    if not (math.isfinite(u) and -OUTSIDE <= u <= 1 + OUTSIDE):
        return None
    # the column as the target encodes its own points: an ordinal by grid position (value
    # 16 of 16..512 at 0, 32 at 0.2), where the value scale put the source's 32 at 0.03
    return target.unit(tp, float(v)) if tp.name in target.by_rank else u


def map_point(target: SearchSpace, source: SearchSpace, params: dict) -> dict[str, Value] | None:
    """A source point as a valid point of the target: each value in its units, clipped to the
    target's bounds and rounded onto its grid (ints, ordinals); None where a category is missing or
    a linear constraint of the target fails."""
    by_name = source.by_name
    out: dict[str, Value] = {}
    for tp in target.params:
        if isinstance(tp, FixedParam):
            out[tp.name] = tp.value
            continue
        sp = by_name.get(tp.name)
        if sp is None:
            return None
        v = _source_value(tp, sp, params)
        if isinstance(tp, CategoricalParam):
            if not isinstance(v, str) or v not in tp.choices:
                return None
            out[tp.name] = v
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        v = min(max(float(v), _low(tp)), _high(tp))
        if isinstance(tp, IntParam):
            out[tp.name] = tp.from_unit(tp.to_unit(round(v)))
        elif isinstance(tp, OrdinalParam):
            out[tp.name] = tp.from_unit(tp.to_unit(v))
        else:
            out[tp.name] = v
    try:
        return target.validate_params(out)
    except SpecError:
        return None
