"""A study: its stored record, its generation strategy, and what workers do with it (ask, tell,
heartbeat, report intermediate values, read).

:class:`Study` orchestrates each request; the per-study state lives in parts with one job each:
:class:`~bbo.study_trials.TrialCache` (the trials in memory),
:class:`~bbo.study_requests.RequestLog` (idempotent retries),
:class:`~bbo.study_strategy.StudyStrategy` (running the strategy),
:class:`~bbo.study_budgets.StudyBudgets` (fidelity and early stopping),
:class:`~bbo.study_transfer.StudySources` (transfer) and :class:`~bbo.study_llm.StudyLlm` (the LLM).

Free of gRPC: ``bbo_server`` maps RPCs onto :class:`bbo.registry.StudyRegistry` and :class:`Study`;
tests and embedders use them directly. Every storage call names the study by its uid, so a Study
object that outlives its study (deleted, perhaps re-created under the name) writes nothing and
raises NotFoundError.

Concurrency: asks on one study serialize on a per-study lock (so concurrent workers are told about
each other's pending points); asks on different studies run in parallel on the fit slots, and tells
never wait for a suggestion being computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bbo.errors import (
    CallerGone,
    ConflictError,
    LimitError,
    NotFoundError,
    SpecError,
    StudyNotFound,
)
from bbo.incumbent import FrontCache, is_feasible
from bbo.limits import OBJECTIVES_CAP, RUNGS_CAP
from bbo.pruning import ladder
from bbo.spec import HYPERBAND, StudySpec
from bbo.storage import LEASE_EXPIRED, LlmCallRecord, NewTrial, Storage, StudyRecord
from bbo.strategy.base import Estimate, Suggestion
from bbo.study_budgets import StudyBudgets
from bbo.study_llm import StudyLlm
from bbo.study_requests import RequestKey, RequestLog, check_same, metrics_key, request_key
from bbo.study_strategy import StudyStrategy
from bbo.study_transfer import StudySources
from bbo.study_trials import (
    TrialCache,
    accepts_tell,
    apply_tell,
    check_lease,
    held_lease,
    late_state,
    lease_over,
    trial_number,
)
from bbo.trial import MODELED_STATES, Metric, Origin, StudyState, Trial, TrialState, check_metrics

if TYPE_CHECKING:
    from bbo.fit_slots import FitSlots
    from bbo.model_sharing import ModelStateCache
    from bbo.registry import StudyConfig
    from bbo.transfer import SourceData

log = logging.getLogger("bbo.study")

MAX_REASON = 4000  # characters of a failure reason kept


# the note of an Ask answered again under its request_id (its trials were handed out before)
REPLAYED_NOTE = "replayed: this request_id was already answered"


@dataclass
class AskResult:
    """The trials an ask stored (PENDING, leased) and a note (a fallback's cause, the state)."""

    trials: list[Trial]
    note: str = ""


@dataclass
class TellResult:
    """The told trial as stored; ``duplicate`` where the tell repeated an earlier one."""

    trial: Trial
    duplicate: bool = False


@dataclass
class BestResult:
    """The best feasible trial (or the Pareto front) and the study's state."""

    trials: list[Trial]
    state: StudyState = StudyState.ACTIVE
    state_reason: str = ""
    selection: str = ""  # how the trial was chosen where not by its observed value
    estimate: Estimate | None = None  # then the model's estimate of its objective


@dataclass
class StudyInfo:
    """A study's stored description and trial counts, as the API reports them."""

    name: str
    spec: StudySpec
    state: str
    state_reason: str
    created_at: float
    trial_count: int
    completed_count: int
    uid: str = ""
    transfer: dict | None = None  # the transfer record (bbo.transfer), None without transfer


def _check_alive(alive: Callable[[], bool] | None) -> None:
    if alive is not None and not alive():
        raise CallerGone("the caller went away before the ask's trials were stored")


def _study_calls(fn):
    """A storage call on a deleted study surfaces as NotFoundError naming this study."""

    @functools.wraps(fn)
    def wrapper(self: Study, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except StudyNotFound:
            raise StudyNotFound(
                f"study '{self.name}' no longer exists (deleted; uid {self.uid}): "
                "nothing was changed"
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
        self._lock = threading.Lock()  # serializes asks (suggestion generation) of this study
        uid, name, tenant = record.uid, record.name, record.tenant
        self.trial_cache = TrialCache(storage, uid)
        self.requests = RequestLog(storage, uid)
        self.generation = StudyStrategy(
            spec,
            record.seed,
            strategy_factory,
            config,
            fit_slots,
            model_cache,
            self._lock,
            uid,
            name,
            tenant,
        )
        self.budgets = StudyBudgets(spec, storage, uid)
        self.sources = StudySources(storage, spec, uid, tenant)
        self.llm = StudyLlm(storage, spec, config, uid, name, self.llm_key)
        self.pareto = FrontCache(spec)  # the feasible Pareto front, kept between GetBests

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

    @property
    def strategy(self) -> Any:
        """The generation strategy, built on first use with the study's stored seed."""
        return self.generation.strategy

    def _check_uid(self, study_uid: str, trial_id: int) -> None:
        """A worker's call carrying its trial's study uid must not touch a study re-created under
        the name."""
        if study_uid and study_uid != self.uid:
            other = self.storage.get_study_by_uid(study_uid)
            # another tenant's study is answered as a deleted one: its existence is not told
            if other is not None and other.tenant == self.tenant:
                raise NotFoundError(
                    f"trial {trial_id} belongs to study '{other.name}' (uid {study_uid}), not to "
                    f"'{self.name}' (uid {self.uid}): send it to its own study; nothing was changed"
                )
            raise NotFoundError(
                f"trial {trial_id} belongs to an earlier study '{self.name}' (uid {study_uid}), "
                f"deleted since; the study of that name now is uid {self.uid}: nothing was changed"
            )

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
            self.sources.current(rec.transfer),
        )

    def _stored(self) -> StudyRecord:
        rec = self.storage.get_study_by_uid(self.uid)
        if rec is None:
            raise StudyNotFound("deleted")
        return rec

    # ---- ask ------------------------------------------------------------------------------------
    def _check_askable(self) -> None:
        """Refuse the asks this server cannot answer in bounded work for a study an older server
        made under higher limits (--max-objectives, --max-rungs had no cap): its trials can still
        be read, told, added and deleted."""
        n = len(self.spec.objectives)
        if n > OBJECTIVES_CAP:  # the front's box decomposition: over 100 s at 6 and 40 trials
            raise ConflictError(
                f"this study has {n} objectives and this server suggests points for at most "
                f"{OBJECTIVES_CAP}: its trials can still be read, told, added or deleted"
            )
        rungs = len(ladder(self.spec))
        if self.spec.pruning_policy == HYPERBAND and rungs > RUNGS_CAP:  # eta^k overflows
            raise ConflictError(
                f"this study's fidelity spans {rungs} rungs and this server runs Hyperband on at "
                f"most {RUNGS_CAP}: its trials can still be read, told, added or deleted"
            )

    @_study_calls
    def ask(
        self,
        count: int = 1,
        worker_id: str = "",
        request_id: str = "",
        lease_seconds: float = 0.0,
        alive: Callable[[], bool] | None = None,
        wait_s: float | None = None,
    ) -> AskResult:
        """Suggest ``count`` trials, stored as PENDING (with a lease) before they are returned.
        ``alive``: whether the caller still waits (the RPC's ``is_active``); once it is false,
        before the model's work or before the trials are stored, nothing more is done or stored
        (:class:`CallerGone`): an abandoned ask held a fit slot and left trials PENDING for a
        whole lease. ``wait_s``: how long the caller waits (its RPC deadline; None: no bound);
        the LLM's work takes at most half of it, the rest is left to the model; a batch's points
        found past three quarters of it, or past ``config.max_ask_seconds``, are model-guided."""
        count = self._ask_count(count)
        until = time.monotonic() + min(
            self.config.max_ask_seconds, math.inf if wait_s is None else 0.75 * max(0.0, wait_s)
        )
        self._check_askable()
        lease = self._lease(lease_seconds)
        req = request_key("ask", request_id, {"count": count, "worker_id": worker_id})
        if req is not None and (replay := self.requests.replay(req)) is not None:
            return AskResult(replay, note=REPLAYED_NOTE)
        # the LLM's network waits come first, outside the study's lock and the fit slots, so
        # other asks (of this study and of others) go on meanwhile
        plan = self.llm.plan(
            self.trial_cache.all(), count, None if wait_s is None else max(0.0, wait_s) / 2
        )
        with self._ask_exclusion():
            # a retry that raced us while we waited for the lock
            if req is not None and (replay := self.requests.replay(req)) is not None:
                return AskResult(replay, note=REPLAYED_NOTE)
            _check_alive(alive)
            trials = self._live_trials()
            curves, continuations = self.budgets.plan(trials, count, plan, self.strategy)
            sources = self.sources.read(self.record.transfer)
            done = self.generation.compute(trials, count - len(continuations), plan, sources, until)
            status_note = self._set_state(*done.status) if done.status else ""
            if sources is not None:
                self._record_sources(sources)
            new = self._new_trials(done.suggestions, trials, curves)
            _check_alive(alive)
            created, prev = self.storage.insert_trials(
                self.uid,
                new,
                worker_id=worker_id,
                lease_expires_at=self.storage.clock() + lease,
                request=req,
                continuations=continuations,
                max_trials=self.config.limits.max_trials_per_study,
            )
            if prev is not None:
                check_same(req, prev)
                return AskResult(created, note=REPLAYED_NOTE)
            self.generation.keep(done.token)
            self.trial_cache.remember(created)
        log.info(
            "ask",
            extra={
                "study": self.name,
                "trials": [t.id for t in created],
                "origins": [t.origin for t in created],
                "worker": worker_id,
            },
        )
        return AskResult(created, note="; ".join(x for x in (done.note, status_note) if x))

    def _ask_count(self, count: int) -> int:
        """The number of trials an ask of ``count`` hands out (0 asks for one), checked against
        ``--max-ask``."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SpecError("count", f"count must be a non-negative integer, got {count!r}")
        count = count or 1
        if count > self.config.max_ask:
            raise LimitError(
                f"count={count} is over the per-ask limit of {self.config.max_ask} (--max-ask)",
                field="count",
                limit="max_ask",
            )
        return count

    def _live_trials(self) -> list[Trial]:
        """The study's trials as an ask sees them: from memory, once the leases that ran out are
        expired (checked in storage where the trials in memory are not loaded yet)."""
        trials = self.trial_cache.all()
        now = self.storage.clock()
        if not self.trial_cache.loaded or any(lease_over(t, now) for t in trials):
            if self.expire_leases(now):
                trials = self.trial_cache.all()
        return trials

    def _record_sources(self, sources: list[SourceData]) -> None:
        """Store the weights the ask gave the transfer sources, where they changed the study's
        transfer record, and keep the record."""
        transfer = self.sources.record(self.record.transfer, sources, self.strategy)
        if transfer is not None:
            self.record = dataclasses.replace(self.record, transfer=transfer)

    def _new_trials(
        self, suggestions: Sequence[Suggestion], trials: list[Trial], curves: dict | None
    ) -> list[NewTrial]:
        """The ask's suggestions as trials to store, each at the budget (and bracket) the
        study's fidelity places it at (:meth:`StudyBudgets.placements`)."""
        places = self.budgets.placements(trials, curves, suggestions)
        return [
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

    @_study_calls
    def expire_leases(self, now: float | None = None) -> list[int]:
        """ABANDON pending trials whose lease ran out (stored, then the in-memory copy); returns
        the trial ids changed here or found already expired by someone else (the server's
        reaper)."""
        now = self.storage.clock() if now is None else now
        expired = self.storage.expire_leases(self.uid, now)
        if expired:
            log.info("leases expired", extra={"study": self.name, "trials": expired})
        ids = sorted(set(expired) | set(self.trial_cache.lease_over(now)))
        if ids:
            self.trial_cache.reread(ids)
        return ids

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
        cfg = self.config
        return check_lease(lease_seconds, cfg.default_lease_seconds, cfg.max_lease_seconds)

    def _check_metrics(
        self, metrics: Mapping[str, Any] | None, required: list[str]
    ) -> dict[str, Metric]:
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
        state, budget, checked, reason = self._tell_input(metrics, failed, state, reason, budget)
        content: dict[str, Any] = {
            "trial": trial_id,
            "state": state.value,
            "metrics": metrics_key(checked),
        }
        if budget is not None:
            content["budget"] = budget
        req = request_key("tell", request_id, content)
        number = trial_number(trial_id)
        if req is not None and self.spec.fidelity is not None:
            # answered before anything is written: a request id reused for another tell is
            # refused without its value joining the trial's curve (before_tell writes it first;
            # without a fidelity nothing is written before the trial, which checks the id itself)
            prev = self.requests.answered(req)
            if prev is not None:
                check_same(req, prev)
                return TellResult(self._trial_or_missing(number, trial_id), duplicate=True)
        cur = self.budgets.told_trial(number)
        earlier = self.budgets.earlier_run(cur, state, budget, checked)
        if earlier is not None:  # the result that paused the trial, told again
            return TellResult(earlier, duplicate=True)
        return self._store_tell(trial_id, cur, state, budget, checked, reason, req)

    def _tell_input(
        self,
        metrics: Mapping[str, Any] | None,
        failed: bool,
        state: TrialState | None,
        reason: str,
        budget: float | None,
    ) -> tuple[TrialState, float | None, dict[str, Metric], str]:
        """A tell's state, budget, checked metrics and reason, or SpecError naming what to fix."""
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
        if state is TrialState.ABANDONED and reason == LEASE_EXPIRED:
            # the reaper's words mark a trial whose late result is welcome; a worker's own
            # ABANDONED is final, whatever it says
            reason = f"{reason} (told by the worker)"
        return state, budget, checked, reason

    def _trial_or_missing(self, number: int, trial_id: int) -> Trial:
        trial = self.storage.get_trial(self.uid, number)
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        return trial

    def _store_tell(
        self,
        trial_id: int,
        cur: Trial | None,
        state: TrialState,
        budget: float | None,
        checked: dict[str, Metric],
        reason: str,
        req: RequestKey | None,
    ) -> TellResult:
        """Write a checked tell of the trial ``cur`` (as read before: an Ask may continue it
        meanwhile) in one conditional update, with its learning curve's value where it has one."""
        number = trial_number(trial_id)
        outcome: dict[str, Any] = {}
        curve_top, wrote = self.budgets.before_tell(cur, state, budget, checked, accepts_tell)
        # ``cur`` was read before the write: an Ask may continue the trial meanwhile (promotion),
        # so the write checks again on the trial as it finds it
        repeats_earlier_run = self.budgets.run_check(number, state, budget, checked)

        def placed(cur: Trial) -> tuple[TrialState, float | None]:
            return self.budgets.told_state(cur, state, budget, curve_top)

        last = self.budgets.last_reported(number, state, checked)

        def change(cur: Trial) -> Trial | None:
            if repeats_earlier_run is not None and repeats_earlier_run(cur):
                outcome["duplicate"] = True
                return None
            # the tell repeated matches what the first one stored (older versions kept it bare)
            bare = not accepts_tell(cur, state) and metrics_key(cur.metrics) == metrics_key(checked)
            told = checked if last is None or bare else last
            new = apply_tell(cur, state, told, reason, budget, placed)
            outcome["duplicate"] = new is None
            return new

        # a PAUSED trial may be being continued by an Ask (planned, then one conditional update):
        # given up meanwhile, the continuation was lost and Ask(count=1) returned no trial. Such a
        # tell waits for the study's asks, on this replica and on others (a rare path: a worker
        # giving up a paused trial)
        paused = cur is not None and cur.state is TrialState.PAUSED
        try:
            with self._ask_exclusion() if paused else contextlib.nullcontext():
                trial, changed, prev = self.storage.modify_trial(
                    self.uid, number, change, request=req, event_detail=reason or "told"
                )
        except (ConflictError, SpecError):
            if wrote:  # another tell finished the trial meanwhile: its value goes back
                self.budgets.after_refused_tell(number)
            raise
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        if prev is not None:
            try:
                check_same(req, prev)
            except ConflictError:
                if wrote:  # the same request id, another tell, raced it: the value goes back
                    self.budgets.after_refused_tell(number)
                raise
            return TellResult(trial, duplicate=True)
        if changed:
            self.trial_cache.remember([trial])
            self._feasible_arrived([trial])
        return TellResult(trial, duplicate=bool(outcome.get("duplicate")))

    @contextlib.contextmanager
    def _ask_exclusion(self):
        """What an Ask holds while it plans and inserts: this process's lock of the study's asks
        and the storage's study lock (other replicas' asks)."""
        with self._lock, self.storage.study_lock(self.uid):
            yield

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
        budget = self.budgets.check_added(budget)
        p = self.spec.space.validate_params(params)
        required = self.spec.required_metrics if state is TrialState.COMPLETED else []
        m = self._check_metrics(metrics, required)
        req = request_key(
            "add", request_id, {"params": p, "state": state.value, "metrics": metrics_key(m)}
        )
        new = NewTrial(
            p,
            Origin.USER.value,
            state=state,
            metrics=m,
            reason=str(reason)[:MAX_REASON],
            budget=budget,
        )
        created, prev = self.storage.insert_trials(
            self.uid, [new], request=req, max_trials=self.config.limits.max_trials_per_study
        )
        if prev is not None:
            check_same(req, prev)
        else:
            self.trial_cache.remember(created)
            self._feasible_arrived(created)
        if not created:
            raise NotFoundError(f"the trial of request_id {request_id!r} no longer exists")
        return created[0]

    # ---- reads ----------------------------------------------------------------------------------
    @_study_calls
    def get_trial(self, trial_id: int) -> Trial:
        t = self.storage.get_trial(self.uid, trial_number(trial_id))
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
    def best(self, trials: Sequence[Trial] | None = None) -> BestResult:
        """The best feasible trial (one objective) or the Pareto front. On a noisy objective the
        strategy's recommendation, the trial with the best posterior mean, instead of the best
        observed value (which luck inflates): ``selection`` then says so, and ``estimate`` gives
        the model's estimate of its objective. ``trials``: the study's trials as just read by the
        caller (the dashboard's), else they are read."""
        if len(self.spec.objectives) > 1:
            front = self._front(trials)
            rec = self._stored()
            return BestResult(front, StudyState(rec.state), rec.state_reason)
        # the trials the model learns from (pruned ones too); from memory where asks keep them
        if trials is None:
            trials = self.trial_cache.in_states(MODELED_STATES)
        else:
            trials = [t for t in trials if t.state in MODELED_STATES]
        # the best observed trial: the first by id of the one objective's front, kept between calls
        rec = self._stored()
        best = BestResult(self._front(trials)[:1], StudyState(rec.state), rec.state_reason)
        if len(self.spec.objectives) == 1 and best.trials:
            pick = self.generation.recommend(trials)
            if pick is not None:
                trial, why = pick
                best.trials, best.selection, best.estimate = [trial], why.selection, why.estimate
        return best

    def _front(self, trials: Sequence[Trial] | None) -> list[Trial]:
        """The feasible Pareto front (of one objective: the trials of its best value, the first by
        id :func:`~bbo.incumbent.best_trial`), kept between calls
        (:class:`bbo.incumbent.FrontCache`): a call reads the numbers of the completed trials, and
        whole only those completed since the last (all of them on the first call)."""
        if trials is None:
            completed: Collection[int] = self.storage.trial_numbers(self.uid, TrialState.COMPLETED)

            def read(numbers: Collection[int] | None) -> Sequence[Trial]:
                if numbers is None:
                    return self.storage.list_trials(self.uid, [TrialState.COMPLETED])
                return self.storage.trials_by_number(self.uid, numbers)

        else:
            done = {t.id: t for t in trials if t.state is TrialState.COMPLETED}
            completed = done.keys()

            def read(numbers: Collection[int] | None) -> Sequence[Trial]:
                return list(done.values()) if numbers is None else [done[n] for n in numbers]

        return self.pareto.front(completed, read)

    @_study_calls
    def intermediates(self) -> dict[int, list[tuple[int, float]]]:
        """Every trial's reported intermediate values: trial id -> ``[(step, value)]``."""
        return self.storage.intermediates(self.uid)

    @_study_calls
    def intermediate_page(
        self, after: int = 0, after_step: int | None = None, limit: int | None = None
    ) -> list[tuple[int, int, float]]:
        """A page of the reported intermediate values, ``[(trial id, step, value)]`` by trial and
        step: those after step ``after_step`` of trial ``after`` (None: of the trials above
        ``after``), at most ``limit``."""
        return self.storage.intermediate_page(self.uid, after, after_step, limit)

    @_study_calls
    def trial_counts(self) -> dict[str, int]:
        """``{state: number of trials}`` (states without trials left out)."""
        return self.storage.trial_counts(self.uid)

    # ---- during evaluation ----------------------------------------------------------------------
    @_study_calls
    def heartbeat(self, trial_id: int, lease_seconds: float = 0.0, study_uid: str = "") -> Trial:
        """Extend a pending trial's lease (from now): by ``lease_seconds``, or with 0 by the length
        of the lease it holds (a worker that asked for 2 h keeps 2 h, not the server's default).
        A lease that has ended is not renewed (FAILED_PRECONDITION)."""
        self._check_uid(study_uid, trial_id)
        asked = self._lease(lease_seconds) if lease_seconds else 0.0

        def change(cur: Trial) -> Trial | None:
            if cur.state is not TrialState.PENDING:
                raise ConflictError(
                    f"trial {trial_id} is {cur.state.value}: only a pending trial has a lease"
                )
            now = self.storage.clock()
            if cur.lease_expires_at is not None and cur.lease_expires_at < now:
                # abandoned by its lease, whether or not the reaper has been by: its point may
                # be handed out again, so the lease is not renewed (a late tell is still stored)
                raise ConflictError(
                    f"trial {trial_id}'s lease ended {now - cur.lease_expires_at:.1f} s ago: it "
                    "is abandoned and its result, if told, is recorded as late"
                )
            lease = asked or held_lease(cur) or self.config.default_lease_seconds
            return dataclasses.replace(
                cur, lease_expires_at=now + min(lease, self.config.max_lease_seconds)
            )

        trial, _, _ = self.storage.modify_trial(self.uid, trial_number(trial_id), change)
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        self.trial_cache.remember([trial])
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
        budget = self.budgets.check_report(step, value, budget)
        cur = self.get_trial(trial_id)

        def still_open(state: TrialState, reason: str) -> None:
            # checked again under the write's row lock: a tell may finish the trial meanwhile
            if state is not TrialState.PENDING and not late_state(state, reason):
                raise ConflictError(
                    f"trial {trial_id} is {state.value}: intermediate values are for pending trials"
                )

        still_open(cur.state, cur.reason)
        if not self.budgets.add_intermediate(
            cur.id,
            step,
            float(value),
            budget,
            max_steps=self.config.limits.max_steps_per_trial,
            check=still_open,
        ):
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        return self.budgets.should_stop(
            cur, step, budget, self.trial_cache.all, self.config.stopping
        )

    # ---- LLM audit ------------------------------------------------------------------------------
    @_study_calls
    def log_llm_call(self, call: LlmCallRecord) -> None:
        """Record what the LLM module asked and was answered."""
        self.llm.log(call)

    @_study_calls
    def llm_calls(
        self, purpose: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LlmCallRecord]:
        """The study's LLM exchanges in the order they happened (numbers above ``after``, at most
        ``limit``)."""
        return self.llm.calls(purpose, after, limit)
