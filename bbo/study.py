"""A study: its stored record, its generation strategy, and what workers do with it (ask, tell,
heartbeat, report intermediate values, read).

Free of gRPC: ``bbo_server`` maps RPCs onto :class:`bbo.registry.StudyRegistry` and :class:`Study`;
tests and embedders use them directly. Every storage call names the study by its uid, so a Study
object that outlives its study (deleted, perhaps re-created under the name) writes nothing and
raises NotFoundError.

Concurrency: asks on one study serialize on a per-study lock (so concurrent workers are told about
each other's pending points); asks on different studies run in parallel on the fit slots, and tells
never wait for a suggestion being computed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bbo.errors import ConflictError, LimitError, NotFoundError, SpecError, StudyNotFound
from bbo.incumbent import incumbents, is_feasible
from bbo.spec import MAXIMIZE, MEDIAN, NO_PRUNING, StudySpec
from bbo.storage import (
    LEASE_EXPIRED,
    LLM_PURPOSES,
    LlmCallRecord,
    NewTrial,
    RequestKey,
    Storage,
    StoredRequest,
    StudyRecord,
)
from bbo.strategy.base import Recommends, SharesModelState, Strategy, UsesSources
from bbo.study_budgets import MAX_STEP, StudyBudgets
from bbo.transfer import SourceData, source_refs
from bbo.trial import Metric, Origin, StudyState, Trial, TrialState, check_metrics

if TYPE_CHECKING:
    from bbo.fit_slots import FitSlots
    from bbo.model_sharing import ModelStateCache
    from bbo.registry import StudyConfig

log = logging.getLogger("bbo.study")

MAX_REASON = 4000  # characters of a failure reason kept


@dataclass
class AskResult:
    trials: list[Trial]
    note: str = ""


@dataclass
class TellResult:
    trial: Trial
    duplicate: bool = False


@dataclass
class BestResult:
    trials: list[Trial]
    state: StudyState = StudyState.ACTIVE
    state_reason: str = ""
    selection: str = ""  # how the trial was chosen where not by its observed value


@dataclass
class StudyInfo:
    name: str
    spec: StudySpec
    state: str
    state_reason: str
    created_at: float
    trial_count: int
    completed_count: int
    uid: str = ""
    transfer: dict | None = None  # the transfer record (bbo.transfer), None without transfer


def _json_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _request_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _metrics_key(metrics: Mapping[str, Metric]) -> dict:
    return {k: [m.value, m.sem] for k, m in sorted(metrics.items())}


def _lease_over(t: Trial, now: float) -> bool:
    return (
        t.state is TrialState.PENDING
        and t.lease_expires_at is not None
        and t.lease_expires_at < now
    )


def _held_lease(t: Trial) -> float:
    """The length of the lease a pending trial was last granted (at its ask or last heartbeat: both
    set ``updated_at``), or 0 where it has none."""
    if t.lease_expires_at is None or not t.updated_at:
        return 0.0
    return max(0.0, t.lease_expires_at - t.updated_at)


def _late(t: Trial) -> bool:
    """Abandoned only because its lease ran out: the worker may still be at it, and its
    (intermediate) results are welcome (a server restart or a network cut outlasting the lease must
    not lose them)."""
    return t.state is TrialState.ABANDONED and t.reason == LEASE_EXPIRED


def _study_calls(fn):
    """A storage call on a deleted study surfaces as NotFoundError naming this study."""

    @functools.wraps(fn)
    def wrapper(self: Study, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except StudyNotFound:
            raise StudyNotFound(
                f"study '{self.name}' no longer exists (deleted; uid {self.uid}): nothing was changed"
            ) from None

    return wrapper


class Study:
    """One stored study. Obtain instances from :class:`bbo.registry.StudyRegistry`; thread-safe."""

    def __init__(
        self,
        storage: Storage,
        record: StudyRecord,
        spec: StudySpec,
        strategy_factory: Callable,
        config: StudyConfig,
        fit_slots: FitSlots,
        model_cache: ModelStateCache,
    ):
        self.storage = storage
        self.record = record
        self.spec = spec
        self.config = config
        self._strategy_factory = strategy_factory
        self._strategy = None
        self._lock = threading.Lock()  # serializes asks (suggestion generation) of this study
        # Where one process owns the database (SQLite), it sees every write of the study and keeps
        # the trials in memory (asks skip re-reading them); a shared database is re-read.
        self._trials: dict[int, Trial] | None = None
        self._trials_lock = threading.Lock()
        self._fit_slots = fit_slots
        self._model_cache = model_cache
        self._sources: dict[str, tuple[int, SourceData]] = {}  # uid -> (completed, data)
        self.budgets = StudyBudgets(spec, storage, record.uid)  # the fidelity's bookkeeping

    # ---- identity -------------------------------------------------------------------------------
    @property
    def uid(self) -> str:
        """The study's identity: random, never given to another study."""
        return self.record.uid

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def tenant(self) -> str:
        return self.record.tenant

    @property
    def llm_key(self) -> str:
        """The study's key in the LLM module's caches (its uid keeps studies apart)."""
        return f"{self.tenant}/{self.name}/{self.uid}"

    def _check_uid(self, study_uid: str, trial_id: int) -> None:
        """A worker's call carrying its trial's study uid must not touch a study re-created under
        the name."""
        if study_uid and study_uid != self.uid:
            raise NotFoundError(
                f"trial {trial_id} belongs to an earlier study '{self.name}' (uid {study_uid}), "
                f"deleted since; the study of that name now is uid {self.uid}: nothing was changed"
            )

    @property
    def strategy(self):
        """The generation strategy, built on first use with the study's stored seed."""
        if self._strategy is None:
            alg = self.spec.algorithm
            device = self.config.device if alg.device == "auto" else alg.device
            seeded = dataclasses.replace(
                self.spec,
                algorithm=dataclasses.replace(alg, seed=self.record.seed, device=device),
            )
            self._strategy = self._strategy_factory(seeded)
        return self._strategy

    @_study_calls
    def info(self) -> StudyInfo:
        rec = self._stored()
        counts = self.storage.trial_counts(self.uid)
        return StudyInfo(
            self.name,
            self.spec,
            rec.state,
            rec.state_reason,
            rec.created_at,
            sum(counts.values()),
            counts.get(TrialState.COMPLETED.value, 0),
            self.uid,
            rec.transfer,
        )

    def _stored(self) -> StudyRecord:
        rec = self.storage.get_study_by_uid(self.uid)
        if rec is None:
            raise StudyNotFound("deleted")
        return rec

    # ---- ask ------------------------------------------------------------------------------------
    @_study_calls
    def ask(
        self, count: int = 1, worker_id: str = "", request_id: str = "", lease_seconds: float = 0.0
    ) -> AskResult:
        """Suggest ``count`` trials, stored as PENDING (with a lease) before they are returned."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SpecError("count", f"count must be a non-negative integer, got {count!r}")
        count = count or 1
        if count > self.config.max_ask:
            raise LimitError(
                f"count={count} is over the per-ask limit of {self.config.max_ask} (--max-ask)"
            )
        lease = self._lease(lease_seconds)
        req = None
        if request_id:
            h = _request_hash({"count": count, "worker_id": worker_id})
            req = RequestKey("ask", request_id, h)
            replay = self._replay(req)
            if replay is not None:
                return AskResult(replay, note="replayed: this request_id was already answered")
        # the LLM's network waits come first, outside the study's lock and the fit slots, so
        # other asks (of this study and of others) go on meanwhile
        plan = self._llm_plan(self._all_trials(), count)
        with self._lock, self.storage.study_lock(self.uid):
            if req is not None:  # a retry that raced us while we waited for the lock
                replay = self._replay(req)
                if replay is not None:
                    return AskResult(replay, note="replayed: this request_id was already answered")
            trials = self._all_trials()
            now = time.time()
            if self._trials is None or any(_lease_over(t, now) for t in trials):
                if self.expire_leases(now):
                    trials = self._all_trials()
            curves, continuations = self.budgets.plan(trials, count, plan, self.strategy)
            n_new = count - len(continuations)
            sources = self._transfer_sources()

            def compute():
                token = self._model_cache.pull(self.uid, self.strategy)
                if sources is not None and isinstance(self.strategy, UsesSources):
                    self.strategy.set_sources(sources)
                sugg = self._suggest(trials, n_new, plan) if n_new else ([], "")
                return sugg, self._status(trials), token

            (suggestions, note), status, token = self._fit_slots.run(compute, self.tenant)
            status_note = self._set_state(*status) if status else ""
            if sources is not None:
                self._record_transfer(sources)
            places = self.budgets.placements(trials, curves, suggestions)
            new = [
                NewTrial(
                    params=self.spec.space.validate_params(s.params),
                    origin=s.origin,
                    reason=s.reason,
                    rationale=s.rationale,
                    budget=where.budget,
                    bracket=where.bracket,
                )
                for s, where in zip(suggestions, places, strict=True)
            ]
            created, prev = self.storage.insert_trials(
                self.uid,
                new,
                worker_id=worker_id,
                lease_expires_at=time.time() + lease,
                request=req,
                continuations=continuations,
            )
            if prev is not None:
                self._check_hash(req, prev)
                return AskResult(created, note="replayed: this request_id was already answered")
            self._model_cache.push(self.uid, self.strategy, token)
            self._remember(created)
        log.info(
            "ask",
            extra={
                "study": self.name,
                "trials": [t.id for t in created],
                "origins": [t.origin for t in created],
                "worker": worker_id,
            },
        )
        return AskResult(created, note="; ".join(x for x in (note, status_note) if x))

    @_study_calls
    def expire_leases(self, now: float | None = None) -> list[int]:
        """ABANDON pending trials whose lease ran out (stored, then the in-memory copy); returns
        the trial ids changed here or found already expired by someone else (the server's reaper)."""
        now = time.time() if now is None else now
        expired = self.storage.expire_leases(self.uid, now)
        if expired:
            log.info("leases expired", extra={"study": self.name, "trials": expired})
        with self._trials_lock:
            stale = (
                []
                if self._trials is None
                else [t.id for t in self._trials.values() if _lease_over(t, now)]
            )
        ids = sorted(set(expired) | set(stale))
        if ids and self._trials is not None:
            fresh = (self.storage.get_trial(self.uid, n) for n in ids)
            self._remember(t for t in fresh if t is not None)
        return ids

    def _all_trials(self) -> list[Trial]:
        """Every trial of the study, by id: from memory where this process owns the database,
        else read."""
        if self.storage.shared:
            return self.storage.list_trials(self.uid)
        with self._trials_lock:
            if self._trials is None:
                self._trials = {t.id: t for t in self.storage.list_trials(self.uid)}
            return sorted(self._trials.values(), key=lambda t: t.id)

    def _remember(self, trials: Iterable[Trial]) -> None:
        """Record committed trial writes in the in-memory copy. Writes of one trial may arrive out
        of order (a heartbeat racing a tell): a finished state is never replaced by PENDING, and
        otherwise the later ``updated_at`` wins."""
        with self._trials_lock:
            if self._trials is None:
                return
            for t in trials:
                cur = self._trials.get(t.id)
                if cur is not None and (
                    (cur.state.finished and not t.state.finished)
                    or (cur.state.finished == t.state.finished and t.updated_at < cur.updated_at)
                ):
                    continue
                self._trials[t.id] = t

    def _transfer_sources(self) -> list[SourceData] | None:
        """The live sources' data (None without transfer), read through storage and never written:
        a source is looked up by the uid it had when this study was created, so a deleted one (or
        one deleted and re-created under its name) is left out; its trials are re-read only when
        its number of completed trials changed."""
        refs = source_refs(self.record.transfer)
        if not self.spec.transfer.enabled:
            return None
        out = []
        for ref in refs:
            try:
                rec = self.storage.get_study_by_uid(ref.uid)
                if rec is None or rec.tenant != self.tenant:
                    continue
                done = self.storage.trial_counts(ref.uid).get(TrialState.COMPLETED.value, 0)
                hit = self._sources.get(ref.uid)
                if hit is None or hit[0] != done:
                    trials = self.storage.list_trials(ref.uid, [TrialState.COMPLETED])
                    hit = (
                        done,
                        SourceData(ref.uid, rec.name, StudySpec.from_dict(rec.spec), trials),
                    )
                    self._sources[ref.uid] = hit
                out.append(hit[1])
            except (NotFoundError, SpecError):  # deleted meanwhile, or a spec this cannot read
                continue
        live = {s.uid for s in out}
        self._sources = {k: v for k, v in self._sources.items() if k in live}
        return out

    def _record_transfer(self, sources: list[SourceData]) -> None:
        """Store the weights the strategy gave the sources, and which sources are gone, where they
        changed (one write of this study's row; the sources' rows are never written)."""
        rec = self.record.transfer
        if not rec:
            return
        report = None
        if isinstance(self.strategy, UsesSources):
            report = self.strategy.transfer_report()
        live = {s.uid for s in sources}
        new = dict(rec)
        new["deleted"] = sorted(r.uid for r in source_refs(rec) if r.uid not in live)
        if report is not None:
            new["weights"] = report
        if _json_key(new) == _json_key(rec):
            return
        self.storage.set_study_transfer(self.uid, new)
        self.record = dataclasses.replace(self.record, transfer=new)

    def _llm_plan(self, trials: list[Trial], count: int) -> dict[str, Any]:
        """What the LLM module adds to this ask (warm start, proposals, priors); {} without one.

        Bounded by the advisor's ask budget; every call (or cache hit) is stored for audit; any
        failure leaves plain BO in charge. A study deleted meanwhile ends the ask (NotFoundError):
        nothing of it is stored.
        """
        advisor = self.config.llm
        if advisor is None or not self.spec.llm.enabled:
            return {}
        try:
            plan = advisor.prepare(
                self.spec, trials, count, study_key=self.llm_key, record=self.log_llm_call
            )
        except Exception as e:  # the advisor is meant never to raise; if it does, BO goes on alone
            log.exception("llm advisor failed", extra={"study": self.name})
            error = f"advisor error: {type(e).__name__}"
            self.log_llm_call(LlmCallRecord("ask", self.spec.llm.model, "", "", error))
            return {}
        for call in plan.calls:
            self.log_llm_call(call)
        kw: dict[str, Any] = {}
        if plan.warmstart:
            kw["warmstart"] = plan.warmstart
        if plan.proposals:
            kw["proposals"] = plan.proposals
        if plan.spec.priors != self.spec.priors:
            kw["priors"] = plan.spec.priors
        return kw

    def _suggest(self, trials: list[Trial], count: int, plan: Mapping[str, Any]):
        try:
            sugg = list(self.strategy.suggest(trials, count, **plan))
            if len(sugg) != count:
                raise RuntimeError(f"strategy returned {len(sugg)} suggestions for {count}")
            for s in sugg:
                self.spec.space.validate_params(s.params)
            return sugg, ""
        except Exception as e:  # a broken strategy must not take the study down: keep sampling
            log.exception(
                "strategy failed; falling back to space-filling points", extra={"study": self.name}
            )
            from bbo.strategy import space_filling

            reason = f"strategy error: {type(e).__name__}: {e}"[:500]
            return space_filling(
                self.spec.space, self.record.seed + 7919, trials, count, reason
            ), reason

    def _status(self, trials: list[Trial]) -> tuple[StudyState, str] | None:
        """The strategy's judgement of the study (ACTIVE or LIKELY_INFEASIBLE, and why); None
        where the strategy makes none."""
        if not isinstance(self.strategy, Strategy):
            return None
        try:
            state, reason = self.strategy.status(trials)
            return StudyState(str(getattr(state, "value", state)).upper()), str(reason or "")
        except Exception:
            log.exception("strategy status failed", extra={"study": self.name})
            return None

    def _set_state(self, state: StudyState, reason: str) -> str:
        """Store the study's state where it differs from the stored one (not this replica's copy,
        which another replica's write leaves stale); the note an ask carries for it."""
        rec = self._stored()
        if (state, reason) != (rec.state, rec.state_reason):
            self.storage.set_study_state(self.uid, state, reason)
        self.record = dataclasses.replace(self.record, state=state, state_reason=reason)
        return reason if state != StudyState.ACTIVE else ""

    def _feasible_arrived(self, trials: Sequence[Trial]) -> None:
        """A feasible result ends LIKELY_INFEASIBLE at once, not at the study's next ask."""
        if self.spec.outcome_constraints and any(is_feasible(self.spec, t) for t in trials):
            if self._stored().state == StudyState.LIKELY_INFEASIBLE:
                self._set_state(StudyState.ACTIVE, "")

    def _lease(self, lease_seconds: float) -> float:
        try:
            lease = float(lease_seconds or 0.0)
        except (TypeError, ValueError):
            raise SpecError("lease_seconds", "must be a number") from None
        if lease < 0 or lease != lease or lease > self.config.max_lease_seconds:
            raise SpecError(
                "lease_seconds",
                f"must be in [0, {self.config.max_lease_seconds:g}] seconds (0 = server default)",
            )
        return lease or self.config.default_lease_seconds

    def _replay(self, req: RequestKey) -> list[Trial] | None:
        prev = self.storage.lookup_request(self.uid, req.kind, req.request_id)
        if prev is None:
            return None
        self._check_hash(req, prev)
        numbers = [int(n) for n in prev.response.get("trials", [])]
        return [t for n in numbers if (t := self.storage.get_trial(self.uid, n)) is not None]

    @staticmethod
    def _check_hash(req: RequestKey | None, prev: StoredRequest) -> None:
        """A stored answer came back for ``req``: it must be for the same request."""
        if req is None or prev.request_hash != req.request_hash:
            raise ConflictError(
                f"request_id {req.request_id if req else ''!r} was already used for a different"
                f" {req.kind if req else ''} request"
            )

    def _check_metrics(self, metrics: Mapping[str, Any] | None, required: list[str]):
        metrics = metrics or {}
        self.config.limits.check_metrics(metrics)
        return check_metrics(metrics, required)

    # ---- tell -----------------------------------------------------------------------------------
    @_study_calls
    def tell(
        self,
        trial_id: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        failed: bool = False,
        state: TrialState | None = None,
        reason: str = "",
        request_id: str = "",
        study_uid: str = "",
        budget: float | None = None,
    ) -> TellResult:
        """Finish a trial: COMPLETED with metrics, FAILED, ABANDONED, or PRUNED (stopped early by
        the pruning policy; metrics optional). Committed before it returns.

        Studies with a fidelity: ``budget`` is what the metrics were measured at (default: the
        budget the trial was handed out at); COMPLETED needs the full budget, or with promotion
        the handed-out budget, which pauses the trial (PAUSED). Repeating the same tell returns
        ``duplicate=True``; a different tell on a finished trial raises :class:`ConflictError`.
        ``study_uid``: the trial's, checked against this study's.
        """
        self._check_uid(study_uid, trial_id)
        if state is None:
            state = TrialState.FAILED if failed else TrialState.COMPLETED
        if state in (TrialState.PENDING, TrialState.PAUSED):
            raise SpecError(
                "state",
                "a tell finishes a trial: COMPLETED, FAILED, ABANDONED or PRUNED (a trial is "
                "PAUSED by a COMPLETED tell at the budget Ask handed out, with promotion)",
            )
        budget = self.budgets.check(budget)
        required = self.spec.required_metrics if state is TrialState.COMPLETED else []
        checked = self._check_metrics(metrics, required)
        reason = str(reason or "")[:MAX_REASON]
        req = None
        if request_id:
            h = _request_hash(
                {
                    "trial": trial_id,
                    "state": state.value,
                    "metrics": _metrics_key(checked),
                    **({"budget": budget} if budget is not None else {}),
                }
            )
            req = RequestKey("tell", request_id, h)
        outcome: dict[str, Any] = {}
        number = _trial_number(trial_id)
        curve_top = None
        if self.spec.fidelity is not None and state in (TrialState.COMPLETED, TrialState.PRUNED):
            # the told objective joins the trial's curve first (a tell refused below leaves
            # nothing; one that fails after it leaves a value the retry writes again)
            cur = self.storage.get_trial(self.uid, number)
            if cur is not None and self._accepts(cur, state):
                curve = self.storage.curves(self.uid, [cur.id]).get(cur.id, [])
                curve_top = max((p.budget for p in curve if p.budget is not None), default=None)
                _, at = self.budgets.told_state(cur, state, budget, curve_top)
                obj = self.spec.objectives[0].name
                if at is not None and obj in checked:
                    self.budgets.record_value(cur, at, checked[obj].value)

        def change(cur: Trial) -> Trial | None:
            if self._accepts(cur, state):
                new_state, at = self.budgets.told_state(cur, state, budget, curve_top)
                # a tell without a reason keeps the note generation left (a fallback's cause)
                note = reason or (cur.reason if cur.state is TrialState.PENDING else "")
                return dataclasses.replace(
                    cur,
                    state=new_state,
                    metrics=checked,
                    reason=note,
                    lease_expires_at=None,
                    budget=at,
                )
            told: TrialState = state
            if cur.state is TrialState.PAUSED and state is TrialState.COMPLETED:
                told = TrialState.PAUSED  # a repeated rung result
            if (
                cur.state is told
                and _metrics_key(cur.metrics) == _metrics_key(checked)
                and (budget is None or cur.budget is None or abs(budget - cur.budget) < 1e-9)
            ):
                outcome["duplicate"] = True
                return None
            raise ConflictError(
                f"trial {trial_id} is already {cur.state.value}"
                + (f" with metrics {_metrics_key(cur.metrics)}" if cur.metrics else "")
                + ": a different tell is refused"
            )

        trial, changed, prev = self.storage.modify_trial(
            self.uid, number, change, request=req, event_detail=reason or "told"
        )
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        if prev is not None:
            self._check_hash(req, prev)
            return TellResult(trial, duplicate=True)
        if changed:
            self._remember([trial])
            self._feasible_arrived([trial])
        return TellResult(trial, duplicate=bool(outcome.get("duplicate")))

    @staticmethod
    def _accepts(cur: Trial, state: TrialState) -> bool:
        """Whether a tell of ``state`` may change ``cur``: a pending trial, one whose lease ran out
        (its result is still welcome), or a paused one being given up (PRUNED)."""
        return (
            cur.state is TrialState.PENDING
            or (_late(cur) and state is not TrialState.ABANDONED)
            or (cur.state is TrialState.PAUSED and state is TrialState.PRUNED)
        )

    @_study_calls
    def add_trial(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        *,
        state: TrialState = TrialState.COMPLETED,
        request_id: str = "",
        reason: str = "",
        budget: float | None = None,
    ) -> Trial:
        """Attach an externally evaluated point (``origin='user'``); in a study with a fidelity, a
        result at the full budget (``budget`` unset or the fidelity's max)."""
        if state not in (TrialState.COMPLETED, TrialState.FAILED):
            raise SpecError("state", "an added trial is COMPLETED or FAILED")
        budget = self.budgets.check(budget)
        f = self.spec.fidelity
        if f is not None:
            from bbo.pruning import at_least

            if budget is not None and not at_least(budget, f.max):
                raise SpecError(
                    "budget",
                    f"an added trial is a result at the full budget ({f.name} {f.max:g}); got "
                    f"{budget:g}",
                )
            budget = float(f.max)
        p = self.spec.space.validate_params(params)
        required = self.spec.required_metrics if state is TrialState.COMPLETED else []
        m = self._check_metrics(metrics, required)
        req = None
        if request_id:
            h = _request_hash({"params": p, "state": state.value, "metrics": _metrics_key(m)})
            req = RequestKey("add", request_id, h)
        new = NewTrial(
            p,
            Origin.USER.value,
            state=state,
            metrics=m,
            reason=str(reason)[:MAX_REASON],
            budget=budget,
        )
        created, prev = self.storage.insert_trials(self.uid, [new], request=req)
        if prev is not None:
            self._check_hash(req, prev)
        else:
            self._remember(created)
            self._feasible_arrived(created)
        if not created:
            raise NotFoundError(f"the trial of request_id {request_id!r} no longer exists")
        return created[0]

    # ---- reads ----------------------------------------------------------------------------------
    @_study_calls
    def get_trial(self, trial_id: int) -> Trial:
        t = self.storage.get_trial(self.uid, _trial_number(trial_id))
        if t is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        return t

    @_study_calls
    def trials(
        self,
        states: Iterable[TrialState] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        return self.storage.list_trials(self.uid, states, after=after, limit=limit)

    @_study_calls
    def best(self) -> BestResult:
        """The best feasible trial (one objective) or the Pareto front. On a noisy objective the
        strategy's recommendation, the trial with the best posterior mean, instead of the best
        observed value (which luck inflates): ``selection`` then says so."""
        trials = self.storage.list_trials(self.uid, [TrialState.COMPLETED])
        rec = self._stored()
        front, selection = incumbents(self.spec, trials), ""
        if len(self.spec.objectives) == 1 and front:
            pick = self._recommended(trials)
            if pick is not None:
                front, selection = pick
        return BestResult(front, StudyState(rec.state), rec.state_reason, selection)

    def _recommended(self, trials: list[Trial]) -> tuple[list[Trial], str] | None:
        """The strategy's recommended trial among ``trials`` (feasible) and why; None where it
        makes none. A strategy that has not fit yet (a replica or server that has not served
        this study's asks) first takes the study's stored model state."""
        strategy = self.strategy
        if not isinstance(strategy, Recommends):
            return None
        try:
            if isinstance(strategy, SharesModelState) and strategy.export_state() is None:
                with self._lock:
                    self._model_cache.pull(self.uid, strategy)
            rec = strategy.recommend(trials)
        except Exception:
            log.exception("recommendation failed", extra={"study": self.name})
            return None
        if rec is None:
            return None
        t = next((t for t in trials if t.id == rec.trial_id), None)
        if t is None or not is_feasible(self.spec, t):
            return None
        return [t], rec.selection

    @_study_calls
    def intermediates(self) -> dict[int, list[tuple[int, float]]]:
        """Every trial's reported intermediate values: trial id -> ``[(step, value)]``."""
        return self.storage.intermediates(self.uid)

    # ---- during evaluation ----------------------------------------------------------------------
    @_study_calls
    def heartbeat(self, trial_id: int, lease_seconds: float = 0.0, study_uid: str = "") -> Trial:
        """Extend a pending trial's lease (from now): by ``lease_seconds``, or with 0 by the length
        of the lease it holds (a worker that asked for 2 h keeps 2 h, not the server's default)."""
        self._check_uid(study_uid, trial_id)
        asked = self._lease(lease_seconds) if lease_seconds else 0.0

        def change(cur: Trial) -> Trial | None:
            if cur.state is not TrialState.PENDING:
                raise ConflictError(
                    f"trial {trial_id} is {cur.state.value}: only a pending trial has a lease"
                )
            lease = asked or _held_lease(cur) or self.config.default_lease_seconds
            return dataclasses.replace(
                cur, lease_expires_at=time.time() + min(lease, self.config.max_lease_seconds)
            )

        trial, _, _ = self.storage.modify_trial(self.uid, _trial_number(trial_id), change)
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        self._remember([trial])
        return trial

    @_study_calls
    def report_intermediate(
        self,
        trial_id: int,
        step: int,
        value: float,
        study_uid: str = "",
        budget: float | None = None,
    ) -> tuple[bool, str]:
        """Record the first objective's value at ``step`` (measured at ``budget``: a study with a
        fidelity takes the step for it when unset); answer whether to stop, and why, by the
        study's pruning policy (median rule, ASHA, Hyperband; see :mod:`bbo.pruning`)."""
        self._check_uid(study_uid, trial_id)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            raise SpecError("step", f"step must be an integer from 0 to 2**63 - 1, got {step!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value
            or value in (float("inf"), float("-inf"))
        ):
            raise SpecError("value", f"value must be a finite number, got {value!r}")
        budget = self.budgets.check(budget)
        f = self.spec.fidelity
        if f is not None and budget is None:
            if step > f.max * (1 + 1e-9):
                raise SpecError(
                    "budget",
                    f"step {step} read as the budget is past the full {f.name} {f.max:g}: pass "
                    "the budget the value was measured at",
                )
            budget = float(step)
        cur = self.get_trial(trial_id)
        if cur.state is not TrialState.PENDING and not _late(cur):
            raise ConflictError(
                f"trial {trial_id} is {cur.state.value}: intermediate values are for pending trials"
            )
        if not self.storage.add_intermediate(self.uid, cur.id, step, float(value), budget):
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        policy = self.spec.pruning_policy
        if policy == NO_PRUNING:
            return False, ""
        if policy == MEDIAN:
            sign = 1.0 if self.spec.objectives[0].goal == MAXIMIZE else -1.0
            completed = {t.id for t in self.storage.list_trials(self.uid, [TrialState.COMPLETED])}
            curves = self.storage.intermediates(self.uid)
            return self.config.stopping.should_stop(cur.id, step, sign, curves, completed)
        if self.spec.pruning.promote:
            return False, ""  # promotion: trials run to the budget they were handed
        from bbo.pruning import Rungs

        rungs = Rungs(self.spec, self._all_trials(), self.storage.curves(self.uid))
        return rungs.should_stop(cur, budget if budget is not None else 0.0)

    # ---- LLM audit ------------------------------------------------------------------------------
    @_study_calls
    def log_llm_call(self, call: LlmCallRecord) -> None:
        """Record what the LLM module asked and was answered."""
        self.storage.log_llm_call(self.uid, call)
        if self.config.on_llm_call is not None:
            try:
                self.config.on_llm_call(call)
            except Exception:  # an observer (metrics) never breaks a call
                log.warning("llm call observer failed", exc_info=True)

    @_study_calls
    def llm_calls(
        self, purpose: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LlmCallRecord]:
        """The study's LLM exchanges in the order they happened (numbers above ``after``, at most
        ``limit``)."""
        if purpose is not None and purpose not in LLM_PURPOSES:
            raise SpecError(
                "purpose",
                f"unknown purpose {purpose!r}: use one of {', '.join(LLM_PURPOSES)} or leave it empty",
            )
        return self.storage.list_llm_calls(self.uid, purpose, after=after, limit=limit)


def _trial_number(trial_id: Any) -> int:
    if isinstance(trial_id, bool) or not isinstance(trial_id, int):
        raise SpecError("trial_id", f"must be an integer, got {trial_id!r}")
    if not 0 <= trial_id <= MAX_STEP:
        raise NotFoundError(f"no trial {trial_id}")
    return trial_id
