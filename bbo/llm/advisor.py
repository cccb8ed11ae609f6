"""The LLM advisor: warm-start candidates, priors and proposals for a study, never at BO's expense.

The GP stays in charge. The LLM only (a) suggests where to start (LLAMBO's zero-shot warm start),
(b) states beliefs about where the optimum lies, which the strategy uses as piBO priors with capped
confidence and a decaying weight, and (c) optionally proposes candidates during the search (OPRO).
Every answer is validated against the search space; every failure (no endpoint, timeout, HTTP
error, refusal, unusable answer) comes back as a ``reason`` and an audit record, never an
exception, and the caller carries on as plain BO.

Interface for the ask path (storage / service layer)::

    advisor = LlmAdvisor(LlmConfig.from_env(), cache=persistent_cache)   # one per process
    advisor.check_model(spec.llm.model)                                 # at create: SpecError
    advisor.prefetch(spec, study_key=key, record=study.log_llm_call)    # at create: background
    plan = advisor.prepare(spec, trials, n, study_key=key)              # bounded by ask_budget_s
    strategy.suggest(trials, n, warmstart=plan.warmstart, proposals=plan.proposals)  # with plan.spec
    store(plan.calls)                                                   # LlmCallRecord -> LlmCall

``cache`` is any object with ``get(key) -> dict | None`` and ``put(key, value: dict)``; keys are
strings ``"<study>|<purpose>|<sha256 of model and prompt>"``, values small JSON-able dicts. An
in-memory LRU sits in front of it, so the same prompt on the same study is sent to the LLM once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bbo.design import sobol_design
from bbo.errors import SpecError
from bbo.llm.cache import prompt_hash
from bbo.llm.client import OK, ChatOutcome, LlmClient
from bbo.llm.config import LlmConfig
from bbo.llm.parse import merge_priors, parse_candidates, parse_priors, parse_related, point_key
from bbo.llm.prompt import (
    Prompt,
    priors_prompt,
    proposal_prompt,
    related_prompt,
    warmstart_prompt,
)
from bbo.space import SearchSpace, Value
from bbo.spec import ParameterPrior, StudySpec
from bbo.storage.base import LlmCallRecord
from bbo.strategy import Suggestion
from bbo.trial import Origin, Trial, TrialState

log = logging.getLogger(__name__)

DISABLED = "llm disabled"
COMPACT_MAX_CANDIDATES = 3  # small models repeat themselves: ask them for few warm-start points
UNUSABLE_RETRIES = 2  # unusable answers to one prompt before the advisor stops asking it


class Cache(Protocol):
    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...


@dataclass
class LlmResult:
    """What one advisor call produced. ``reason`` is empty when everything asked for came back."""

    suggestions: list[Suggestion] = field(default_factory=list)
    priors: list[ParameterPrior] = field(default_factory=list)
    calls: list[LlmCallRecord] = field(default_factory=list)
    reason: str = ""
    issues: list[str] = field(default_factory=list)  # validation notes (repairs and rejections)
    related: dict[str, tuple[float, str]] = field(default_factory=dict)  # study -> (score, why)

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclass
class AskPlan:
    """LLM inputs for one ask: the spec to use (with LLM priors merged), candidates and audit records."""

    spec: StudySpec
    warmstart: list[Suggestion] = field(default_factory=list)
    proposals: list[Suggestion] = field(default_factory=list)
    calls: list[LlmCallRecord] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # purpose -> fallback reason (if any)


class _Lru:
    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def warmstart_count(spec: StudySpec) -> int:
    """How many warm-start candidates a study asks for: its setting, else a third of the initial design."""
    if spec.llm.warmstart_candidates > 0:
        return int(spec.llm.warmstart_candidates)
    return max(1, round(spec.algorithm.initial_size(spec.space.dim) / 3))


def fill_with_sobol(
    space: SearchSpace,
    suggestions: Sequence[Suggestion],
    n: int,
    seed: int,
    *,
    exclude: Iterable[Mapping[str, Value]] = (),
    skip: int = 0,
    reason: str = "",
) -> list[Suggestion]:
    """``n`` suggestions: the given ones first, then distinct Sobol points (origin ``initial_design``).

    ``exclude`` are points that already exist (trials); ``skip`` continues a Sobol sequence already
    in use; ``reason`` is recorded on the filled points (e.g. why the LLM gave fewer).
    """
    out = list(suggestions[:n])
    if len(out) >= n:
        return out
    seen = {point_key(space, s.params) for s in out}
    seen |= {point_key(space, p) for p in exclude}
    need = n - len(out)
    extra = 0
    while len(out) < n and extra < 8:
        pts = sobol_design(space, need + 4 + 16 * extra, seed, skip=skip)
        for p in pts:
            k = point_key(space, p)
            if k in seen:
                continue
            seen.add(k)
            out.append(Suggestion(p, Origin.INITIAL.value, reason=reason))
            if len(out) >= n:
                break
        skip += len(pts)
        extra += 1
    return out


def _tenant_of(key: str) -> str:
    """The tenant of a cache key (its study part is ``tenant/name/uid``, as
    :attr:`bbo.study.Study.llm_key` builds it); "" for a key without one."""
    head, sep, _ = key.partition("/")
    return head if sep else ""


class _Pending:
    """A warm-start or priors call running in the background: its result, once, to whoever takes it.

    With a ``record`` callback (from :meth:`LlmAdvisor.prefetch`) the call's audit records are
    delivered to it as soon as the call ends; otherwise the next :meth:`LlmAdvisor.prepare` of the
    study returns them in its plan."""

    def __init__(self, purpose: str, record: Callable[..., Any] | None):
        self.purpose = purpose
        self.record = record
        self.done = threading.Event()
        self.waited = False  # an ask has waited for it already
        self.result: LlmResult | None = None
        self._taken = False
        self._lock = threading.Lock()

    def finish(self, result: LlmResult) -> None:
        with self._lock:
            self.result = result
            deliver = self.record if not self._taken else None
            if deliver is not None:
                self._taken = True
        if deliver is not None:
            for call in result.calls:
                try:
                    deliver(call)
                except Exception:  # noqa: BLE001 - e.g. the study was deleted meanwhile
                    log.warning("could not store a background LLM call record", exc_info=True)
        self.done.set()

    def take_calls(self) -> list[LlmCallRecord]:
        with self._lock:
            if self._taken or self.result is None:
                return []
            self._taken = True
            return list(self.result.calls)


class LlmAdvisor:
    """Asks an OpenAI-compatible LLM for warm starts, priors and proposals; validates the answers.

    The warm-start and priors calls of a study run in the background (:meth:`prefetch`, or the
    first :meth:`prepare` that needs them), so a slow model costs an ask at most its budget and the
    answer is used by the first ask after it arrives. Each tenant has ``max_pending`` such calls
    waiting at most, and the ``background_workers`` serve the tenants round robin.
    """

    def __init__(
        self,
        config: LlmConfig | None = None,
        *,
        cache: Cache | None = None,
        lru_size: int = 512,
        background_workers: int = 2,
        max_pending: int = 64,
    ):
        self.config = config if config is not None else LlmConfig.from_env()
        self.cache = cache
        self._lru = _Lru(lru_size)
        self._clients: dict[str, LlmClient] = {}
        self._lock = threading.Lock()
        self._unusable: dict[str, int] = {}  # cache key -> unusable answers so far (in memory only)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # cache key -> background call
        # tenant -> its queued background calls; a free worker takes the next tenant's oldest
        self._jobs: OrderedDict[str, collections.deque] = OrderedDict()
        self._work_cv = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self.background_workers = max(1, int(background_workers))
        self.max_pending = max(1, int(max_pending))

    @classmethod
    def from_env(cls, **kwargs) -> LlmAdvisor:
        return cls(LlmConfig.from_env(), **kwargs)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # ---- models a study may name ----------------------------------------------------------------
    def model_allowed(self, name: str) -> bool:
        """Empty (the default model) or one of the configured models."""
        return not name or name in self.config.allowed_models

    def check_model(self, name: str) -> None:
        """Refuse a study spec whose ``llm.model`` the server does not serve (``SpecError``).

        A no-op while the LLM module is off: such a server runs every study as plain BO, and a spec
        that works on another deployment should not be refused here; if the module is turned on
        later, a model that is not allowed is never called (the ask records why and runs plain BO).
        """
        if not self.enabled or self.model_allowed(name or ""):
            return
        raise SpecError("llm.model", self._not_allowed(name))

    def _not_allowed(self, name: str) -> str:
        allowed = self.config.allowed_models
        default = self.config.model or "the endpoint's default"
        names = ", ".join(repr(m) for m in allowed) if allowed else "none by name"
        return (
            f"llm.model {name!r} is not served here: leave it empty for the default model "
            f"({default}) or name one of the allowed models ({names}); "
            "the server's --llm-models (BBO_LLM_MODELS) lists them"
        )

    def client(self, model: str = "") -> LlmClient:
        """The client for a model (a study's ``llm.model`` overrides the configured default).

        Only allowed models get one, so the cache holds at most one client per configured model.
        """
        model = model or self.config.model
        if not self.model_allowed(model):
            raise SpecError("llm.model", self._not_allowed(model))
        with self._lock:
            c = self._clients.get(model)
            if c is None:
                c = self._clients[model] = LlmClient(dataclasses.replace(self.config, model=model))
            return c

    # ---- cache ----------------------------------------------------------------------------------
    @staticmethod
    def cache_key(study_key: str, purpose: str, prompt_text: str) -> str:
        return f"{study_key}|{purpose}|{prompt_hash(prompt_text)}"

    def _cache_get(self, key: str) -> dict | None:
        v = self._lru.get(key)
        if v is None and self.cache is not None:
            try:
                v = self.cache.get(key)
            except Exception as e:  # noqa: BLE001 - a broken cache must not break the ask
                log.warning("LLM cache lookup failed: %s", e)
                v = None
            if isinstance(v, dict) and isinstance(v.get("text"), str):
                self._lru.put(key, v)
            else:
                v = None
        return v

    def _remember(self, key: str, out: ChatOutcome) -> None:
        """Cache a usable answer (``key`` is empty for an answer that came from the cache)."""
        if key:
            self._cache_put(
                key,
                {
                    "text": out.text,
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                    "model": out.model,
                },
            )

    def _cache_put(self, key: str, value: dict) -> None:
        self._lru.put(key, value)
        if self.cache is not None:
            try:
                self.cache.put(key, value)
            except Exception as e:  # noqa: BLE001
                log.warning("LLM cache store failed: %s", e)

    # ---- one exchange -------------------------------------------------------------------------
    def _exchange(
        self, prompt: Prompt, study_key: str, model: str, deadline: float
    ) -> tuple[ChatOutcome, LlmCallRecord, str]:
        """(outcome, record, cache key): from the cache, or one bounded call."""
        model = model or self.config.model
        key = self.cache_key(study_key, prompt.purpose, prompt.text)
        hit = self._cache_get(key)
        if hit is not None:
            out = ChatOutcome(
                text=hit["text"],
                prompt_tokens=int(hit.get("prompt_tokens", 0)),
                completion_tokens=int(hit.get("completion_tokens", 0)),
                model=str(hit.get("model", model)),
            )
            rec = LlmCallRecord(
                prompt.purpose,
                out.model,
                prompt.text,
                out.text,
                OK,
                out.prompt_tokens,
                out.completion_tokens,
                0.0,
                cached=True,
            )
            return out, rec, ""
        left = deadline - time.monotonic()
        if not self.model_allowed(model):
            out = ChatOutcome(reason=f"not asked: {self._not_allowed(model)}")
        elif self._unusable.get(key, 0) >= UNUSABLE_RETRIES:
            out = ChatOutcome(
                reason=f"answers to this prompt were unusable {UNUSABLE_RETRIES} times; not asking again"
            )
        elif left <= 0.05:
            out = ChatOutcome(reason="llm time budget exhausted")
        else:
            out = self.client(model).chat(
                prompt.messages,
                schema=prompt.schema,
                schema_name=prompt.schema_name,
                timeout_s=left,
            )
        rec = LlmCallRecord(
            prompt.purpose,
            out.model or model,
            prompt.text,
            out.text,
            out.reason,
            out.prompt_tokens,
            out.completion_tokens,
            round(out.latency_s, 4),
        )
        if not out.ok:
            log.info("LLM %s call fell back: %s", prompt.purpose, out.reason)
        return out, rec, key

    def _unusable_result(
        self, key: str, rec: LlmCallRecord, reason: str, issues: list[str]
    ) -> LlmResult:
        """The result of an answer that could not be used (counted against its prompt, and the
        reason stored with a call that was not a cache hit)."""
        self._mark_unusable(key)
        if not rec.cached:
            rec.outcome = reason
        return LlmResult(calls=[rec], reason=reason, issues=issues)

    def _mark_unusable(self, key: str) -> None:
        if key:
            with self._lock:
                self._unusable[key] = self._unusable.get(key, 0) + 1
                if len(self._unusable) > 4 * self._lru.size:
                    self._unusable.clear()

    def _deadline(self, budget_s: float | None) -> float:
        b = (
            self.config.ask_budget_s
            if budget_s is None
            else min(budget_s, self.config.ask_budget_s)
        )
        return time.monotonic() + max(0.0, b)

    def _candidates(
        self,
        prompt: Prompt,
        spec: StudySpec,
        trials: Sequence[Trial],
        n: int,
        origin: str,
        study_key: str,
        deadline: float,
    ) -> LlmResult:
        out, rec, key = self._exchange(prompt, study_key, spec.llm.model, deadline)
        if not out.ok:
            return LlmResult(calls=[rec], reason=out.reason)
        parsed = parse_candidates(out.text, spec.space, limit=n, exclude=[t.params for t in trials])
        sugg = [Suggestion(dict(p), origin, rationale=r) for p, r in parsed.points]
        why = parsed.shortfall(n)
        if not sugg:
            if rec.cached:  # an answer that was usable before: its points are all taken by now
                return LlmResult(
                    calls=[rec],
                    reason=f"no new candidates in the cached answer ({why})",
                    issues=parsed.issues,
                )
            reason = f"unusable answer: no valid candidates ({why})"
            self._mark_unusable(key)
            rec.outcome = reason
            return LlmResult(calls=[rec], reason=reason, issues=parsed.issues)
        self._remember(key, out)
        reason = "" if len(sugg) >= n else f"llm gave {len(sugg)} of {n} usable candidates ({why})"
        if reason and not rec.cached:
            rec.outcome = f"partial: {reason}"
        return LlmResult(suggestions=sugg, calls=[rec], reason=reason, issues=parsed.issues)

    def warmstart_n(self, spec: StudySpec) -> int:
        """Warm-start points asked of the LLM: :func:`warmstart_count`, at most
        ``COMPACT_MAX_CANDIDATES`` for a small model (``LlmConfig.compact``)."""
        n = warmstart_count(spec)
        return min(n, COMPACT_MAX_CANDIDATES) if self.config.compact else n

    def _prompt(self, purpose: str, spec: StudySpec, trials: Sequence[Trial] = (), n: int = 0):
        compact = self.config.compact
        if purpose == "priors":
            return priors_prompt(spec, compact=compact)
        if purpose == "warmstart":
            return warmstart_prompt(spec, n, compact=compact)
        return proposal_prompt(spec, trials, n, compact=compact)

    # ---- public API ----------------------------------------------------------------------------
    def warmstart(
        self,
        spec: StudySpec,
        trials: Sequence[Trial] = (),
        n: int | None = None,
        *,
        study_key: str = "",
        budget_s: float | None = None,
    ) -> LlmResult:
        """LLAMBO zero-shot warm start: up to ``n`` promising, diverse points (origin ``llm_warmstart``).

        The prompt has no history, so it is asked once per study and ``n``; ``trials`` only remove
        candidates already evaluated or pending. Fill a shortfall with :func:`fill_with_sobol`.
        """
        return self._warmstart_by(spec, trials, n, study_key, self._deadline(budget_s))

    def _warmstart_by(self, spec, trials, n, study_key, deadline) -> LlmResult:
        n = self.warmstart_n(spec) if n is None else int(n)
        if n <= 0:
            return LlmResult()
        if not self.enabled:
            return LlmResult(reason=DISABLED)
        return self._candidates(
            self._prompt("warmstart", spec, (), n),
            spec,
            trials,
            n,
            Origin.LLM_WARMSTART.value,
            study_key,
            deadline,
        )

    def propose(
        self,
        spec: StudySpec,
        trials: Sequence[Trial],
        k: int,
        *,
        study_key: str = "",
        budget_s: float | None = None,
    ) -> LlmResult:
        """OPRO-style: from the history of solutions and scores, up to ``k`` new points (``llm_proposal``)."""
        if k <= 0:
            return LlmResult()
        if not self.enabled:
            return LlmResult(reason=DISABLED)
        return self._candidates(
            self._prompt("proposal", spec, trials, k),
            spec,
            trials,
            k,
            Origin.LLM_PROPOSAL.value,
            study_key,
            self._deadline(budget_s),
        )

    def priors(
        self, spec: StudySpec, *, study_key: str = "", budget_s: float | None = None
    ) -> LlmResult:
        """piBO priors (``source="llm"``, confidence capped) for the parameters the LLM has beliefs about."""
        return self._priors_by(spec, study_key, self._deadline(budget_s))

    def _priors_by(self, spec: StudySpec, study_key: str, deadline: float) -> LlmResult:
        if not self.enabled:
            return LlmResult(reason=DISABLED)
        prompt = self._prompt("priors", spec)
        out, rec, key = self._exchange(prompt, study_key, spec.llm.model, deadline)
        if not out.ok:
            return LlmResult(calls=[rec], reason=out.reason)
        parsed = parse_priors(out.text, spec.space, confidence_cap=self.config.prior_confidence_cap)
        first_issue = f" ({parsed.issues[0]})" if parsed.issues else ""
        if not parsed.priors:
            reason = f"unusable answer: no valid priors{first_issue}"
            return self._unusable_result(key, rec, reason, parsed.issues)
        kept = []
        for prior in (
            parsed.priors
        ):  # the merged spec must still validate: a prior that does not is dropped alone
            try:
                dataclasses.replace(spec, priors=merge_priors(spec.priors, [prior]))
                kept.append(prior)
            except SpecError as e:
                parsed.issues.append(
                    f"prior on '{prior.parameter}' failed validation ({e.message})"
                )
        if not kept:
            reason = f"unusable answer: priors failed validation ({parsed.issues[-1]})"
            return self._unusable_result(key, rec, reason, parsed.issues)
        parsed.priors = kept
        first_issue = f" ({parsed.issues[0]})" if parsed.issues else ""
        self._remember(key, out)
        n_free = spec.space.dim
        reason = (
            ""
            if len(parsed.priors) >= n_free
            else f"llm gave priors for {len(parsed.priors)} of {n_free} parameters{first_issue}"
        )
        if reason and not rec.cached:
            rec.outcome = f"partial: {reason}"
        return LlmResult(priors=parsed.priors, calls=[rec], reason=reason, issues=parsed.issues)

    def related(
        self,
        spec: StudySpec,
        candidates: Sequence[tuple[str, StudySpec]],
        *,
        study_key: str = "",
        budget_s: float | None = None,
    ) -> LlmResult:
        """How related each stored study ``(name, spec)`` is to a new study ``spec``, judged from
        the descriptions (``related``: name -> (score in [0, 1], why)); for transfer's ``auto``."""
        if not candidates:
            return LlmResult()
        if not self.enabled:
            return LlmResult(reason=DISABLED)
        prompt = related_prompt(spec, candidates, compact=self.config.compact)
        out, rec, key = self._exchange(prompt, study_key, spec.llm.model, self._deadline(budget_s))
        if not out.ok:
            return LlmResult(calls=[rec], reason=out.reason)
        names = [name for name, _ in candidates]
        parsed = parse_related(out.text, names)
        if not parsed.scores:
            reason = f"unusable answer: {parsed.issues[0] if parsed.issues else 'no judgements'}"
            return self._unusable_result(key, rec, reason, parsed.issues)
        self._remember(key, out)
        reason = ""
        if len(parsed.scores) < len(names):
            reason = f"llm judged {len(parsed.scores)} of {len(names)} studies"
            if not rec.cached:
                rec.outcome = f"partial: {reason}"
        return LlmResult(calls=[rec], reason=reason, issues=parsed.issues, related=parsed.scores)

    # ---- ahead of the asks -------------------------------------------------------------------
    def _ahead(
        self, spec: StudySpec, trials: Sequence[Trial], study_key: str
    ) -> dict[str, tuple[str, Callable[..., LlmResult]]]:
        """The calls a study needs before its asks: purpose -> (cache key, run(deadline, trials)),
        ``trials`` being the points a warm-start answer must not repeat."""
        out: dict[str, tuple[str, Callable[..., LlmResult]]] = {}
        with_prior = {p.parameter for p in spec.priors}
        if spec.llm.derive_priors and any(name not in with_prior for name in spec.space.names):
            key = self.cache_key(study_key, "priors", self._prompt("priors", spec).text)
            out["priors"] = (key, lambda d, _t=(): self._priors_by(spec, study_key, d))
        n_ws = self.warmstart_n(spec)
        used_ws = sum(1 for t in trials if t.origin == Origin.LLM_WARMSTART.value)
        if len(trials) < spec.algorithm.initial_size(spec.space.dim) and used_ws < n_ws:
            prompt = self._prompt("warmstart", spec, (), n_ws)
            key = self.cache_key(study_key, "warmstart", prompt.text)
            out["warmstart"] = (
                key,
                lambda d, t=(): self._warmstart_by(spec, t, n_ws, study_key, d),
            )
        return out

    def prefetch(
        self,
        spec: StudySpec,
        *,
        study_key: str,
        trials: Sequence[Trial] = (),
        record: Callable[..., Any] | None = None,
    ) -> list[str]:
        """Start the study's warm-start and priors calls in the background; returns their purposes.

        Call it when a study is created (or first loaded): the calls then run while the client
        gets ready, and the first :meth:`prepare` that needs an answer uses it if it has arrived,
        else waits at most its budget. ``record(call)`` (e.g. ``Study.log_llm_call``) receives
        the calls' audit records when they end. Returns at once; a no-op for studies without
        ``llm.enabled``, a disabled advisor, answers already cached or calls already running.
        """
        if not spec.llm.enabled or not self.enabled:
            return []
        started = []
        for purpose, (key, run) in self._ahead(spec, trials, study_key).items():
            with self._lock:
                running = key in self._pending
            if running or self._lru.get(key) is not None:
                continue
            if self._start(key, purpose, run, record) is not None:
                started.append(purpose)
        return started

    def pending(self) -> int:
        """Background calls queued or running."""
        with self._lock:
            return sum(1 for p in self._pending.values() if not p.done.is_set())

    def _start(
        self,
        key: str,
        purpose: str,
        run: Callable[..., LlmResult],
        record: Callable[..., Any] | None,
    ) -> _Pending | None:
        """The background call for ``key``: the one already there, a new one, or None (its tenant
        has ``max_pending`` calls waiting: one tenant's studies do not take another's places)."""
        tenant = _tenant_of(key)
        with self._lock:
            p = self._pending.get(key)
            if p is not None:
                return p
            mine = [k for k in self._pending if _tenant_of(k) == tenant]
            if len(mine) >= self.max_pending:  # drop finished ones nobody collected
                for k in mine:
                    if self._pending[k].done.is_set():
                        del self._pending[k]
                if sum(1 for k in self._pending if _tenant_of(k) == tenant) >= self.max_pending:
                    return None
            p = self._pending[key] = _Pending(purpose, record)
            while len(self._workers) < self.background_workers:
                t = threading.Thread(target=self._work, name="bbo-llm-ahead", daemon=True)
                self._workers.append(t)
                t.start()
            # under the lock: an idle worker's exit check sees it
            self._jobs.setdefault(tenant, collections.deque()).append((key, p, run))
            self._work_cv.notify()
        return p

    def _next_job(self) -> tuple[str, _Pending, Callable[..., LlmResult]]:
        """The oldest queued call of the tenant whose turn it is (round robin, as
        :class:`bbo.fit_slots.FitSlots`: a tenant's long queue delays another's call by at most
        one call per worker); that tenant goes to the back. Under the lock, with calls queued."""
        tenant, q = next(iter(self._jobs.items()))
        job = q.popleft()
        del self._jobs[tenant]
        if q:
            self._jobs[tenant] = q
        return job

    def _work(self) -> None:
        """A background worker; it exits after a minute without work (a new call starts one)."""
        while True:
            with self._work_cv:
                idle_until = time.monotonic() + 60.0
                while not self._jobs:
                    left = idle_until - time.monotonic()
                    if left <= 0:
                        self._workers.remove(threading.current_thread())
                        return
                    self._work_cv.wait(left)
                key, p, run = self._next_job()
            try:
                # the deadline starts when the call does, not when it was queued
                res = run(time.monotonic() + self.config.timeout_s)
            except Exception as e:  # noqa: BLE001 - the advisor must not raise; say why instead
                log.exception("background LLM %s call failed", p.purpose)
                res = LlmResult(reason=f"advisor error: {type(e).__name__}")
            p.finish(res)
            if p.record is not None:  # delivered; a usable answer is in the cache now
                with self._lock:
                    if self._pending.get(key) is p:
                        del self._pending[key]

    def _collect(self, key: str, p: _Pending) -> LlmResult | None:
        """A finished background call's result (its records once), or None while it runs."""
        if not p.done.is_set():
            return None
        with self._lock:
            if self._pending.get(key) is p:
                del self._pending[key]
        res = p.result if p.result is not None else LlmResult(reason="no result")
        return dataclasses.replace(res, calls=p.take_calls())

    # ---- the ask path ---------------------------------------------------------------------------
    def prepare(
        self,
        spec: StudySpec,
        trials: Sequence[Trial],
        n: int,
        *,
        study_key: str = "",
        budget_s: float | None = None,
        record: Callable[..., Any] | None = None,
    ) -> AskPlan:
        """Everything the LLM contributes to one ask, within one time budget.

        - priors (``spec.llm.derive_priors``, parameters without a user prior): asked once per study
          (cached), merged into ``plan.spec`` (user priors win);
        - warm start, while the initial design is running and the study's warm-start candidates have
          not all been used: the cached zero-shot list minus points already in ``trials``;
        - proposals (``spec.llm.propose_during_search``), after the initial design: ``n`` new points.

        Priors and warm start run in the background (started by :meth:`prefetch` or here): the first
        ask that finds them running waits at most its budget, later asks do not wait, and an answer
        that arrives later is used by the next ask.
        ``record`` (as for :meth:`prefetch`) receives the records of background calls this ask
        starts, when they end, so a call that outlives its ask is still audited; ``plan.calls``
        holds the rest. Studies without ``llm.enabled``, or a disabled advisor, get
        ``AskPlan(spec)`` at no cost.
        """
        plan = AskPlan(spec=spec)
        if not spec.llm.enabled:
            return plan
        if not self.enabled:
            plan.reasons["llm"] = DISABLED
            return plan
        deadline = self._deadline(budget_s)
        results: dict[str, LlmResult] = {}
        waiting: dict[str, tuple[str, _Pending]] = {}
        for purpose, (key, run) in self._ahead(spec, trials, study_key).items():
            with self._lock:
                running = key in self._pending  # or ended, its records not yet taken
            if not running and self._lru.get(key) is not None:  # answered before: at once
                results[purpose] = run(deadline, trials)
                continue
            p = self._start(key, purpose, run, record)
            if p is None:
                results[purpose] = LlmResult(
                    reason=f"llm busy: {self.max_pending} calls of this tenant already waiting"
                )
            else:
                waiting[purpose] = (key, p)
        n_initial = spec.algorithm.initial_size(spec.space.dim)
        completed = sum(1 for t in trials if t.state is TrialState.COMPLETED)
        if spec.llm.propose_during_search and len(trials) >= n_initial and completed > 0 and n > 0:
            results["proposal"] = self._candidates(
                self._prompt("proposal", spec, trials, n),
                spec,
                trials,
                n,
                Origin.LLM_PROPOSAL.value,
                study_key,
                deadline,
            )
        for purpose, (key, p) in waiting.items():
            # only the first ask that finds a call running waits for it (at most its budget): the
            # asks after it go on with the design instead of each waiting again
            if not p.waited:
                p.waited = True
                p.done.wait(max(0.0, deadline - time.monotonic()))
            res = self._collect(key, p)
            if res is None:
                results[purpose] = LlmResult(
                    reason="llm still answering: its answer goes to a later ask"
                )
            elif purpose == "warmstart" and res.suggestions:
                taken = {point_key(spec.space, t.params) for t in trials}
                fresh = [s for s in res.suggestions if point_key(spec.space, s.params) not in taken]
                results[purpose] = dataclasses.replace(res, suggestions=fresh)
            else:
                results[purpose] = res
        for purpose, res in results.items():
            plan.calls += res.calls
            if res.reason:
                plan.reasons[purpose] = res.reason
        if "priors" in results and results["priors"].priors:
            plan.spec = dataclasses.replace(
                spec, priors=merge_priors(spec.priors, results["priors"].priors)
            )
        if "warmstart" in results:
            n_ws = self.warmstart_n(spec)
            used_ws = sum(1 for t in trials if t.origin == Origin.LLM_WARMSTART.value)
            plan.warmstart = results["warmstart"].suggestions[: max(0, n_ws - used_ws)]
        if "proposal" in results:
            plan.proposals = results["proposal"].suggestions
        return plan
