"""Studies: a stored study plus its generation strategy, and the registry the service calls.

Free of gRPC: ``bbo_server`` maps RPCs onto :class:`StudyRegistry` and :class:`Study`; tests and
embedders can use them directly.

Concurrency: asks on one study serialize on a per-study lock (so concurrent workers are told about
each other's pending points); asks on different studies run in parallel, and tells never wait for
a suggestion being computed. At most ``fit_slots`` suggestions are computed at once, process-wide, on
that many dedicated threads (:class:`FitSlots`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import sqlalchemy as sa

from bbo.errors import ConflictError, LimitError, NotFoundError, SpecError
from bbo.incumbent import is_feasible
from bbo.memory import malloc_trim
from bbo.paging import page_bounds
from bbo.spec import MAXIMIZE, AlgorithmOptions, StudySpec
from bbo.storage import LlmCallRecord, NewTrial, RequestKey, Storage, StudyRecord
from bbo.storage.coordination import cache_for
from bbo.storage.sql import LEASE_EXPIRED, LLM_PURPOSES
from bbo.trial import Metric, Origin, Trial, TrialState, check_metrics

log = logging.getLogger("bbo.study")

DEFAULT_TENANT = "default"
STUDY_ACTIVE = "ACTIVE"
STUDY_LIKELY_INFEASIBLE = "LIKELY_INFEASIBLE"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class AlreadyExistsError(ConflictError):
    """A study of that name exists with a different spec."""


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
    state: str = STUDY_ACTIVE
    state_reason: str = ""


@dataclass
class StudyInfo:
    name: str
    spec: StudySpec
    state: str
    state_reason: str
    created_at: float
    trial_count: int
    completed_count: int
    uid: str = ""  # this incarnation (StudyRecord.uid)


@dataclass
class StoppingRule:
    """Median stopping: stop a trial whose best value so far at step s is worse than the median
    of the best-so-far values (up to s) of completed trials, once ``min_trials`` completed trials
    reported at or before s and s >= ``warmup_steps``."""

    min_trials: int = 3
    warmup_steps: int = 1


@dataclass
class StudyConfig:
    default_lease_seconds: float = 600.0
    max_lease_seconds: float = 7 * 24 * 3600.0
    max_ask: int = 100
    device: str = "auto"  # where fits run for studies whose spec says "auto" (bbo serve --device)
    stopping: StoppingRule = dataclasses.field(default_factory=StoppingRule)
    llm: Any = None  # a bbo.llm.LlmAdvisor; None or a disabled one = plain BO for every study


def _request_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _metrics_key(metrics: Mapping[str, Metric]) -> dict:
    return {k: [m.value, m.sem] for k, m in sorted(metrics.items())}


def default_strategy_factory(spec: StudySpec):
    from bbo.strategy import GenerationStrategy

    return GenerationStrategy(spec)


def best_trials(spec: StudySpec, trials: Sequence[Trial]) -> list[Trial]:
    """Best feasible trial (one objective) or the feasible Pareto front (:mod:`bbo.incumbent`)."""
    try:
        from bbo.incumbent import incumbents
    except ImportError:  # the core without its BO modules: a plain single-objective answer
        incumbents = None
    if incumbents is not None:
        return list(incumbents(spec, trials))
    done = [
        t
        for t in trials
        if t.state is TrialState.COMPLETED and all(m in t.metrics for m in spec.required_metrics)
    ]
    feas = [t for t in done if spec.is_feasible({k: m.value for k, m in t.metrics.items()})]
    if not feas:
        return []
    signs = [(o.name, 1.0 if o.goal == MAXIMIZE else -1.0) for o in spec.objectives]

    def dominates(a: Trial, b: Trial) -> bool:
        va = [s * a.metrics[n].value for n, s in signs]
        vb = [s * b.metrics[n].value for n, s in signs]
        return all(x >= y for x, y in zip(va, vb)) and any(x > y for x, y in zip(va, vb))

    if len(signs) == 1:
        name, s = signs[0]
        return [max(feas, key=lambda t: (s * t.metrics[name].value, -t.id))]
    return [t for t in feas if not any(dominates(o, t) for o in feas if o is not t)]


def _same_study(stored: Mapping[str, Any], requested: StudySpec) -> bool:
    """Whether a create request names the stored study: equal specs once both are read by this version
    (an older server stored fewer keys), algorithm options the request leaves at their defaults taking
    the stored values (a default changed by an upgrade must not lock drivers out of their studies)."""
    try:
        old = StudySpec.from_dict(stored)
    except (SpecError, TypeError, ValueError):
        return json.dumps(stored, sort_keys=True, default=str) == json.dumps(
            requested.to_dict(), sort_keys=True, default=str
        )
    defaults = AlgorithmOptions()
    kept = {
        f.name: getattr(old.algorithm, f.name)
        for f in dataclasses.fields(AlgorithmOptions)
        if getattr(requested.algorithm, f.name) == getattr(defaults, f.name)
    }
    requested = dataclasses.replace(
        requested, algorithm=dataclasses.replace(requested.algorithm, **kept)
    )
    return json.dumps(old.to_dict(), sort_keys=True, default=str) == json.dumps(
        requested.to_dict(), sort_keys=True, default=str
    )


class FitSlots:
    """Runs suggestion computations on ``n`` dedicated threads, so at most ``n`` run at once, process-wide.

    Why threads of their own rather than a semaphore on the RPC threads: glibc gives each thread a
    malloc arena, and a GP fit's temporary buffers, freed, stayed cached in whichever of up to 8 x cores
    arenas the RPC thread had; a soak's RSS grew with no live data behind it. ``n`` threads touch ``n``.
    After each computation the freed pages go back to the OS (glibc ``malloc_trim``, well under 1 ms):
    the acquisition's tens-of-MB temporaries otherwise stay resident as free heap.
    """

    def __init__(self, n: int):
        from concurrent.futures import ThreadPoolExecutor

        self.n = max(1, int(n))
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="bbo-fit")

    def run(self, fn: Callable[[], Any]) -> Any:
        def task():
            try:
                return fn()
            finally:
                malloc_trim()

        return self._pool.submit(task).result()


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
    """Abandoned only because its lease ran out: the worker may still be at it, and its (intermediate)
    results are welcome (a server restart or a network cut outlasting the lease must not lose them)."""
    return t.state is TrialState.ABANDONED and t.reason == LEASE_EXPIRED


class Study:
    """One stored study. Obtain instances from :class:`StudyRegistry`; methods are thread-safe."""

    def __init__(
        self,
        storage: Storage,
        record: StudyRecord,
        spec: StudySpec,
        strategy_factory: Callable,
        config: StudyConfig,
        fit_slots: "FitSlots",
    ):
        self.storage = storage
        self.record = record
        self.spec = spec
        self.config = config
        self._strategy_factory = strategy_factory
        self._strategy = None
        self._lock = threading.Lock()  # serializes asks (suggestion generation) of this study
        # On SQLite one server process owns the file, so this process sees every write of the study and
        # keeps the trials in memory (asks then skip re-reading them); a shared database is re-read.
        self._trials: Optional[dict[int, Trial]] = None
        self._trials_lock = threading.Lock()
        self._fit_slots = fit_slots
        self._model_cache = cache_for(storage)

    # ---- identity -------------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def tenant(self) -> str:
        return self.record.tenant

    @property
    def uid(self) -> str:
        """This incarnation of the study (see :attr:`StudyRecord.uid`)."""
        return self.record.uid

    def _check_uid(self, study_uid: str, trial_id: int) -> None:
        """A worker's call carrying its trial's study uid must not touch a study re-created under the name."""
        if study_uid and study_uid != self.uid:
            raise NotFoundError(
                f"trial {trial_id} belongs to an earlier study '{self.name}' (uid {study_uid}), deleted since; "
                f"the study of that name now is uid {self.uid}: nothing was changed"
            )

    @property
    def strategy(self):
        """The generation strategy, built on first use with the study's stored seed."""
        if self._strategy is None:
            alg = self.spec.algorithm
            device = (
                self.config.device if alg.device == "auto" else alg.device
            )  # the server's --device is the default
            seeded = dataclasses.replace(
                self.spec, algorithm=dataclasses.replace(alg, seed=self.record.seed, device=device)
            )
            self._strategy = self._strategy_factory(seeded)
            setter = getattr(self._strategy, "set_llm_logger", None)
            if callable(setter):
                setter(self.log_llm_call)
        return self._strategy

    def info(self) -> StudyInfo:
        counts = self.storage.trial_counts(self.id)
        rec = self.storage.get_study_by_id(self.id) or self.record
        return StudyInfo(
            self.name,
            self.spec,
            rec.state,
            rec.state_reason,
            rec.created_at,
            sum(counts.values()),
            counts.get(TrialState.COMPLETED.value, 0),
            self.uid,
        )

    # ---- ask ------------------------------------------------------------------------------------
    def ask(
        self, count: int = 1, worker_id: str = "", request_id: str = "", lease_seconds: float = 0.0
    ) -> AskResult:
        """Suggest ``count`` trials, stored as PENDING (with a lease) before they are returned."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SpecError("count", f"count must be a non-negative integer, got {count!r}")
        count = count or 1
        if count > self.config.max_ask:
            raise LimitError(f"count={count} is over the per-ask limit of {self.config.max_ask}")
        lease = self._lease(lease_seconds)
        req = None
        if request_id:
            req = RequestKey(
                self.tenant,
                "ask",
                request_id,
                _request_hash({"count": count, "worker_id": worker_id}),
            )
            replay = self._replay(req)
            if replay is not None:
                return AskResult(replay, note="replayed: this request_id was already answered")
        with self._lock, self.storage.study_lock(self.id):
            if req is not None:  # a retry that raced us while we waited for the lock
                replay = self._replay(req)
                if replay is not None:
                    return AskResult(replay, note="replayed: this request_id was already answered")
            trials = self._all_trials()
            now = time.time()
            if self._trials is None or any(_lease_over(t, now) for t in trials):
                if self.expire_leases(now):
                    trials = self._all_trials()

            plan = self._llm_plan(
                trials, count
            )  # network waits: before taking a fit slot, so other studies' asks go on

            def compute():
                # replicas share the fitted model through the database (bbo.storage.coordination)
                token = self._model_cache.pull(self.id, self.strategy)
                return self._suggest(trials, count, plan), self._update_status(trials), token

            (suggestions, note), status_note, token = self._fit_slots.run(compute)
            new = [
                NewTrial(
                    params=self.spec.space.validate_params(s.params),
                    origin=s.origin,
                    reason=s.reason,
                    rationale=s.rationale,
                )
                for s in suggestions
            ]
            try:
                created, prev = self.storage.insert_trials(
                    self.id,
                    new,
                    worker_id=worker_id,
                    lease_expires_at=time.time() + lease,
                    request=req,
                    created_at=self.record.created_at,
                )
            except NotFoundError:
                raise NotFoundError(
                    f"study '{self.name}' was deleted while this ask was being answered"
                ) from None
            except sa.exc.IntegrityError:  # the same request_id committed by another process
                replay = self._replay(req) if req else None
                if replay is None:
                    raise
                return AskResult(replay, note="replayed: this request_id was already answered")
            if prev is not None:
                self._check_hash(req, prev)
                return AskResult(created, note="replayed: this request_id was already answered")
            # stored only once the trials are: a study deleted meanwhile (its SQLite id perhaps reused) gets no model
            self._model_cache.push(self.id, self.strategy, token)
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

    def expire_leases(self, now: Optional[float] = None) -> list[int]:
        """ABANDON pending trials whose lease ran out (stored, then the in-memory copy); returns
        the trial ids changed here or found already expired by someone else (the server's reaper)."""
        now = time.time() if now is None else now
        expired = self.storage.expire_leases(self.id, now)
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
            self._remember(t for n in ids if (t := self.storage.get_trial(self.id, n)) is not None)
        return ids

    def _all_trials(self) -> list[Trial]:
        """Every trial of the study, by id: from memory on SQLite (see ``__init__``), else read."""
        if self.storage.dialect != "sqlite":
            return self.storage.list_trials(self.id)
        with self._trials_lock:
            if self._trials is None:
                self._trials = {t.id: t for t in self.storage.list_trials(self.id)}
            return sorted(self._trials.values(), key=lambda t: t.id)

    def _remember(self, trials: Iterable[Trial]) -> None:
        """Record committed trial writes in the in-memory copy. Writes of one trial may arrive out of
        order (a heartbeat racing a tell): a finished state is never replaced by PENDING, and
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

    def _llm_plan(self, trials: list[Trial], count: int) -> dict[str, Any]:
        """What the LLM module adds to this ask (warm start, proposals, priors); {} without one.

        Bounded by the advisor's ask budget; every call (or cache hit) is stored for audit; any
        failure leaves plain BO in charge.
        """
        advisor = self.config.llm
        if advisor is None or not self.spec.llm.enabled:
            return {}
        try:
            plan = advisor.prepare(
                self.spec, trials, count, study_key=f"{self.tenant}/{self.name}/{self.id}"
            )
        except Exception as e:  # the advisor is meant never to raise; if it does, BO goes on alone
            log.exception("llm advisor failed", extra={"study": self.name})
            self.log_llm_call(
                purpose="ask",
                model=self.spec.llm.model,
                prompt="",
                response="",
                outcome=f"advisor error: {type(e).__name__}: {e}"[:500],
            )
            return {}
        for call in plan.calls:
            try:
                self.log_llm_call(**call.storage_fields())
            except Exception:
                log.exception("could not store an llm call record", extra={"study": self.name})
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
            from bbo.design import sobol_design
            from bbo.strategy import Suggestion

            pts = sobol_design(self.spec.space, count, self.record.seed + 7919, skip=len(trials))
            reason = f"strategy error: {type(e).__name__}: {e}"[:500]
            return [Suggestion(p, Origin.FALLBACK.value, reason=reason) for p in pts], reason

    def _update_status(self, trials: list[Trial]) -> str:
        status = getattr(self.strategy, "status", None)
        if not callable(status):
            return ""
        try:
            st = status(trials)
        except Exception:
            log.exception("strategy status failed", extra={"study": self.name})
            return ""
        if st is None:
            return ""
        if isinstance(st, tuple):
            state, reason = (list(st) + ["", ""])[:2]
        else:
            state, reason = getattr(st, "state", STUDY_ACTIVE), getattr(st, "reason", "")
        state = str(getattr(state, "value", state) or STUDY_ACTIVE).upper()
        if state not in (STUDY_ACTIVE, STUDY_LIKELY_INFEASIBLE):
            state = STUDY_ACTIVE
        self._set_state(state, str(reason))
        return str(reason) if state != STUDY_ACTIVE else ""

    def _set_state(self, state: str, reason: str) -> None:
        """Store the study's state where it differs from the stored one (not this replica's copy,
        which another replica's write leaves stale)."""
        rec = self.storage.get_study_by_id(self.id) or self.record
        if (state, reason) != (rec.state, rec.state_reason):
            self.storage.set_study_state(self.id, state, reason)
        self.record = dataclasses.replace(self.record, state=state, state_reason=reason)

    def _feasible_arrived(self, trials: Sequence[Trial]) -> None:
        """A feasible result ends LIKELY_INFEASIBLE at once, not at the study's next ask."""
        if self.spec.outcome_constraints and any(is_feasible(self.spec, t) for t in trials):
            rec = self.storage.get_study_by_id(self.id) or self.record
            if rec.state == STUDY_LIKELY_INFEASIBLE:
                self._set_state(STUDY_ACTIVE, "")

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

    def _replay(self, req: RequestKey) -> Optional[list[Trial]]:
        prev = self.storage.lookup_request(self.id, req.kind, req.request_id)
        if prev is None:
            return None
        self._check_hash(req, {"hash": prev[0]})
        return [
            t
            for n in prev[1].get("trials", [])
            if (t := self.storage.get_trial(self.id, int(n))) is not None
        ]

    @staticmethod
    def _check_hash(req: RequestKey, prev: dict) -> None:
        if prev.get("hash") != req.request_hash:
            raise ConflictError(
                f"request_id {req.request_id!r} was already used for a different {req.kind} request"
            )

    # ---- tell -----------------------------------------------------------------------------------
    def tell(
        self,
        trial_id: int,
        metrics: Optional[Mapping[str, Any]] = None,
        *,
        failed: bool = False,
        state: Optional[TrialState] = None,
        reason: str = "",
        request_id: str = "",
        study_uid: str = "",
    ) -> TellResult:
        """Finish a trial: COMPLETED with metrics, FAILED, or ABANDONED. Committed before it returns.

        Repeating the same tell returns ``duplicate=True``; a different tell on a finished trial
        raises :class:`ConflictError`. ``study_uid``: the trial's, checked against this study's.
        """
        self._check_uid(study_uid, trial_id)
        if state is None:
            state = TrialState.FAILED if failed else TrialState.COMPLETED
        if state is TrialState.PENDING:
            raise SpecError("state", "a tell finishes a trial: COMPLETED, FAILED or ABANDONED")
        if state is TrialState.COMPLETED:
            checked = check_metrics(metrics or {}, self.spec.required_metrics)
        else:
            checked = check_metrics(metrics or {}, [])
        reason = str(reason or "")[:4000]
        req = None
        if request_id:
            req = RequestKey(
                self.tenant,
                "tell",
                request_id,
                _request_hash(
                    {"trial": trial_id, "state": state.value, "metrics": _metrics_key(checked)}
                ),
            )
        outcome: dict[str, Any] = {}

        def change(cur: Trial) -> Optional[Trial]:
            if cur.state is TrialState.PENDING or (
                _late(cur) and state is not TrialState.ABANDONED
            ):
                # a tell without a reason keeps the note generation left (a fallback's cause), not "lease expired"
                note = reason or (cur.reason if cur.state is TrialState.PENDING else "")
                return dataclasses.replace(
                    cur, state=state, metrics=checked, reason=note, lease_expires_at=None
                )
            if cur.state is state and _metrics_key(cur.metrics) == _metrics_key(checked):
                outcome["duplicate"] = True
                return None
            raise ConflictError(
                f"trial {trial_id} is already {cur.state.value}"
                + (f" with metrics {_metrics_key(cur.metrics)}" if cur.metrics else "")
                + ": a different tell is refused"
            )

        trial, changed, prev = self.storage.modify_trial(
            self.id, int(trial_id), change, request=req, event_detail=reason or "told"
        )
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        if prev is not None:
            self._check_hash(req, prev)
            return TellResult(trial, duplicate=True)
        if changed:
            self._remember([trial])
            self._feasible_arrived([trial])
        log.debug(
            "tell",
            extra={
                "study": self.name,
                "trial": trial.id,
                "state": trial.state.value,
                "duplicate": not changed,
            },
        )
        return TellResult(trial, duplicate=bool(outcome.get("duplicate")))

    def add_trial(
        self,
        params: Mapping[str, Any],
        metrics: Optional[Mapping[str, Any]] = None,
        *,
        state: TrialState = TrialState.COMPLETED,
        request_id: str = "",
        reason: str = "",
    ) -> Trial:
        """Attach an externally evaluated point (``origin='user'``)."""
        if state not in (TrialState.COMPLETED, TrialState.FAILED):
            raise SpecError("state", "an added trial is COMPLETED or FAILED")
        p = self.spec.space.validate_params(params)
        m = check_metrics(
            metrics or {}, self.spec.required_metrics if state is TrialState.COMPLETED else []
        )
        req = None
        if request_id:
            req = RequestKey(
                self.tenant,
                "add",
                request_id,
                _request_hash({"params": p, "state": state.value, "metrics": _metrics_key(m)}),
            )
        try:
            created, prev = self.storage.insert_trials(
                self.id,
                [NewTrial(p, Origin.USER.value, state=state, metrics=m, reason=reason)],
                request=req,
                created_at=self.record.created_at,
            )
        except (
            sa.exc.IntegrityError
        ):  # the same request_id committed by another replica at the same moment
            replay = self._replay(req) if req else None
            if not replay:
                raise
            return replay[0]
        if prev is not None:
            self._check_hash(req, prev)
        else:
            self._remember(created)
            self._feasible_arrived(created)
        return created[0]

    # ---- reads ----------------------------------------------------------------------------------
    def get_trial(self, trial_id: int) -> Trial:
        t = self.storage.get_trial(self.id, int(trial_id))
        if t is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        return t

    def trials(
        self,
        states: Optional[Iterable[TrialState]] = None,
        after: int = 0,
        limit: Optional[int] = None,
    ) -> list[Trial]:
        return self.storage.list_trials(self.id, states, after=after, limit=limit)

    def best(self) -> BestResult:
        trials = self.storage.list_trials(self.id, [TrialState.COMPLETED])
        rec = self.storage.get_study_by_id(self.id) or self.record
        return BestResult(best_trials(self.spec, trials), rec.state, rec.state_reason)

    # ---- during evaluation ----------------------------------------------------------------------
    def heartbeat(self, trial_id: int, lease_seconds: float = 0.0, study_uid: str = "") -> Trial:
        """Extend a pending trial's lease (from now): by ``lease_seconds``, or with 0 by the length of
        the lease it holds (a worker that asked for 2 h keeps 2 h, not the server's default)."""
        self._check_uid(study_uid, trial_id)
        asked = self._lease(lease_seconds) if lease_seconds else 0.0

        def change(cur: Trial) -> Optional[Trial]:
            if cur.state is not TrialState.PENDING:
                raise ConflictError(
                    f"trial {trial_id} is {cur.state.value}: only a pending trial has a lease"
                )
            lease = asked or _held_lease(cur) or self.config.default_lease_seconds
            return dataclasses.replace(
                cur, lease_expires_at=time.time() + min(lease, self.config.max_lease_seconds)
            )

        trial, _, _ = self.storage.modify_trial(self.id, int(trial_id), change)
        if trial is None:
            raise NotFoundError(f"trial {trial_id} not found in study '{self.name}'")
        self._remember([trial])
        return trial

    def report_intermediate(
        self, trial_id: int, step: int, value: float, study_uid: str = ""
    ) -> tuple[bool, str]:
        """Record the first objective's value at ``step``; answer whether to stop (median rule)."""
        self._check_uid(study_uid, trial_id)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise SpecError("step", f"step must be an integer >= 0, got {step!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value
            or value in (float("inf"), float("-inf"))
        ):
            raise SpecError("value", f"value must be a finite number, got {value!r}")
        cur = self.get_trial(trial_id)
        if cur.state is not TrialState.PENDING and not _late(cur):
            raise ConflictError(
                f"trial {trial_id} is {cur.state.value}: intermediate values are for pending trials"
            )
        self.storage.add_intermediate(self.id, int(trial_id), step, float(value))
        return self._median_rule(int(trial_id), step)

    def _median_rule(self, trial_id: int, step: int) -> tuple[bool, str]:
        rule = self.config.stopping
        if step < rule.warmup_steps:
            return False, ""
        sign = (
            1.0 if self.spec.objectives[0].goal == MAXIMIZE else -1.0
        )  # larger sign*value is better
        curves = self.storage.intermediates(self.id)
        completed = {t.id for t in self.storage.list_trials(self.id, [TrialState.COMPLETED])}

        def best_upto(points: list[tuple[int, float]]) -> Optional[float]:
            vals = [sign * v for s, v in points if s <= step]
            return max(vals) if vals else None

        others = [
            b
            for n, pts in curves.items()
            if n in completed and n != trial_id and (b := best_upto(pts)) is not None
        ]
        if len(others) < rule.min_trials:
            return False, ""
        mine = best_upto(curves.get(trial_id, []))
        med = statistics.median(others)
        if mine is not None and mine < med:
            return True, (
                f"best value so far {sign * mine:g} at step {step} is worse than the median {sign * med:g} "
                f"of {len(others)} completed trials"
            )
        return False, ""

    # ---- LLM audit ------------------------------------------------------------------------------
    def log_llm_call(self, call: LlmCallRecord | None = None, **fields) -> None:
        """Record what the LLM module asked and was answered (``LlmCallRecord`` or its fields)."""
        self.storage.log_llm_call(self.id, call or LlmCallRecord(**fields))

    def llm_calls(
        self, purpose: Optional[str] = None, after: int = 0, limit: Optional[int] = None
    ) -> list[LlmCallRecord]:
        """The study's LLM exchanges in the order they happened (ids above ``after``, at most ``limit``)."""
        if purpose is not None and purpose not in LLM_PURPOSES:
            raise SpecError(
                "purpose",
                f"unknown purpose {purpose!r}: use one of {', '.join(LLM_PURPOSES)} or leave it empty",
            )
        return self.storage.list_llm_calls(self.id, purpose, after=after, limit=limit)


class StudyRegistry:
    """Creates, finds, lists and deletes studies; caches one :class:`Study` (and strategy) each."""

    def __init__(
        self,
        storage: Storage,
        *,
        strategy_factory: Optional[Callable[[StudySpec], Any]] = None,
        config: Optional[StudyConfig] = None,
        fit_slots: int = 1,
    ):
        self.storage = storage
        self.strategy_factory = strategy_factory or default_strategy_factory
        self.config = config or StudyConfig()
        self._fit_slots = FitSlots(fit_slots)
        self._cache: dict[tuple[str, str], Study] = {}
        self._shared = storage.dialect == "postgresql"  # other server processes may change studies
        self._lock = threading.Lock()

    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise SpecError(
                "name", f"study name {name!r} must be 1-128 letters, digits, '_', '-', '.'"
            )

    def create_study(
        self, name: str, spec: StudySpec | Mapping[str, Any], tenant: str = DEFAULT_TENANT
    ) -> tuple[Study, bool]:
        """Get-or-create: the same name and spec returns the stored study (``created=False``);
        the same name with a different spec raises :class:`AlreadyExistsError`."""
        self._check_name(name)
        if not isinstance(spec, StudySpec):
            spec = StudySpec.from_dict(spec)
        spec_dict = spec.to_dict()
        seed = (
            spec.algorithm.seed
            if spec.algorithm.seed is not None
            else int.from_bytes(os.urandom(4), "little")
        )
        rec = self.storage.insert_study(tenant, name, spec_dict, seed)
        created = rec is not None
        if rec is None:
            rec = self.storage.get_study(tenant, name)
            if rec is None:  # deleted in between: try once more
                rec = self.storage.insert_study(tenant, name, spec_dict, seed)
                created = rec is not None
                if rec is None:
                    raise ConflictError(f"study '{name}' is being created and deleted concurrently")
        if not created and not _same_study(rec.spec, spec):
            raise AlreadyExistsError(f"study '{name}' already exists with a different spec")
        if created:
            log.info("study created", extra={"study": name, "tenant": tenant})
        return self._study(rec), created

    def _study(self, rec: StudyRecord) -> Study:
        key = (rec.tenant, rec.name)
        with self._lock:
            st = self._cache.get(key)
            if st is None or st.id != rec.id:
                st = Study(
                    self.storage,
                    rec,
                    StudySpec.from_dict(rec.spec),
                    self.strategy_factory,
                    self.config,
                    self._fit_slots,
                )
                self._cache[key] = st
            return st

    def get_study(self, name: str, tenant: str = DEFAULT_TENANT) -> Study:
        with self._lock:
            st = self._cache.get((tenant, name))
        if st is not None and not self._shared:
            return st
        # A database shared with other replicas: one of them may have deleted (and recreated) the
        # study since it was cached here, so check the cached id (one indexed read).
        rec = self.storage.get_study(tenant, name) if isinstance(name, str) else None
        if rec is None:
            if st is not None:
                with self._lock:
                    if self._cache.get((tenant, name)) is st:
                        del self._cache[(tenant, name)]
            raise NotFoundError(f"study '{name}' not found")
        return self._study(rec)

    def list_studies(
        self, tenant: str = DEFAULT_TENANT, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Study], str]:
        size, after = page_bounds(page_size, page_token, default=100, maximum=1000)
        recs = self.storage.list_studies(tenant, after_id=after, limit=size + 1)
        nxt = str(recs[size - 1].id) if len(recs) > size else ""
        return [self._study(r) for r in recs[:size]], nxt

    def expire_leases(self, now: Optional[float] = None) -> dict[int, list[int]]:
        """ABANDON every expired lease of every study (the server's reaper calls this on a timer, so
        a dead worker's trial does not wait for the next Ask of its study); ``{study_id: [trial ids]}``."""
        from bbo.storage import schema as S

        now = time.time() if now is None else now
        t = S.trials.c
        # per study through the (study_id, state) index: O(studies + pending trials), not a table scan
        over = sa.select(t.id).where(
            t.study_id == S.studies.c.id,
            t.state == TrialState.PENDING.value,
            t.lease_expires_at.is_not(None),
            t.lease_expires_at < now,
        )
        q = sa.select(S.studies.c.id).where(over.exists())
        with self.storage.engine.connect() as conn:
            study_ids = [int(r[0]) for r in conn.execute(q)]
        with self._lock:
            cached = {st.id: st for st in self._cache.values()}
        out: dict[int, list[int]] = {}
        for sid in study_ids:
            st = cached.get(sid)
            ids = st.expire_leases(now) if st is not None else self.storage.expire_leases(sid, now)
            if ids:
                out[sid] = ids
        return out

    def delete_study(self, name: str, tenant: str = DEFAULT_TENANT) -> bool:
        rec = self.storage.get_study(tenant, name)
        if rec is None:
            raise NotFoundError(f"study '{name}' not found")
        with self._lock:
            self._cache.pop((tenant, name), None)
        ok = self.storage.delete_study(rec.id)
        log.info("study deleted", extra={"study": name, "tenant": tenant})
        return ok
