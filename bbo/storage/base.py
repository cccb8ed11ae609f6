"""The storage interface: the only way the core and the server reach the database.

A study is named in every call by its ``uid``: an opaque random token given when it is created and
never given again, so a call that outlives its study (an Ask, a Tell or an LLM call still in flight
when the study was deleted, a worker holding a trial of a study since re-created under its name)
finds nothing, writes nothing and raises :class:`bbo.errors.NotFoundError`. Integer row ids stay
inside the backends.

Every write is one transaction committed before the call returns (what a caller acknowledges is on
disk). A backend turns a database that is away or busy into
:class:`bbo.errors.StorageUnavailable` (the service answers UNAVAILABLE: retry), never into a raw
driver error.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from bbo.errors import StudyNotFound
from bbo.trial import Metric, Trial, TrialState

LEASE_EXPIRED = "lease expired"  # the reason of a trial ABANDONED because its lease ran out
LLM_PURPOSES = ("warmstart", "priors", "proposal", "related")  # what an LLM call was for


@dataclass(frozen=True)
class StudyRecord:
    """A stored study. ``uid`` is its identity; ``name`` is unique per tenant while it exists."""

    uid: str
    tenant: str
    name: str
    spec: dict
    spec_hash: str
    seed: int
    state: str
    state_reason: str
    trial_counter: int
    created_at: float
    # the study's transfer record (bbo.transfer): its sources, fixed at creation, and their latest
    # weights; None without transfer
    transfer: dict | None = None


@dataclass(frozen=True)
class StudyKey:
    """A stored study's identity and place in creation order, without what it holds."""

    uid: str
    name: str
    created_at: float


@dataclass
class NewTrial:
    """A trial to insert (its number is allocated by storage)."""

    params: dict
    origin: str
    state: TrialState = TrialState.PENDING
    metrics: dict[str, Metric] = field(default_factory=dict)
    reason: str = ""
    rationale: str = ""
    budget: float | None = None  # studies with a fidelity: the budget to run it to
    bracket: int | None = None


@dataclass(frozen=True)
class Continuation:
    """Hand a PAUSED trial out again at a larger budget (a promotion): applied only while the trial
    is still PAUSED at ``from_budget``, so one paused trial is never continued twice."""

    number: int
    from_budget: float
    budget: float
    reason: str = ""


@dataclass(frozen=True)
class CurvePoint:
    """One intermediate value of a trial: its step, value, the budget it was measured at (None
    where none was given) and when it was stored (epoch seconds)."""

    step: int
    value: float
    budget: float | None
    at: float


@dataclass(frozen=True)
class RequestKey:
    """An idempotency key: the stored response of (study, kind, request_id) is replayed."""

    kind: str
    request_id: str
    request_hash: str


@dataclass(frozen=True)
class StoredRequest:
    """What an earlier request with the same key stored: its hash and response."""

    request_hash: str
    response: dict


@dataclass
class LlmCallRecord:
    """One exchange of the LLM module with its endpoint, kept for audit and as its cache.
    ``number`` is the call's position in its study (1, 2, ...), assigned when it is stored;
    ``cached``: answered from the cache, no request sent (stored like any call, latency 0)."""

    purpose: str
    model: str
    prompt: str
    response: str
    outcome: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0
    created_at: float = field(default_factory=time.time)
    number: int = 0
    cached: bool = False


@dataclass(frozen=True)
class ModelState:
    """A study's fitted surrogate state (see :mod:`bbo.model_sharing`)."""

    n_fit: int
    format: int
    blob: bytes
    updated_at: float
    updated_by: str


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    tenant: str
    key_hash: str
    label: str
    created_at: float
    revoked_at: float | None


TrialChange = Callable[[Trial], Trial | None]
"""``change(current) -> new trial to store | None to leave it``; it may raise to refuse."""


class Storage(abc.ABC):
    """Durable studies, trials, intermediate values, LLM calls, model states and API keys.

    Thread-safe; one instance per process. ``open_storage(url)`` picks the backend.
    """

    #: "sqlite" or "postgresql"
    dialect: str = ""
    #: whether other processes may write the same database (then cached state must be re-read)
    shared: bool = False

    # ---- lifecycle ------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> dict:
        """Facts for the start-up log line: the URL without password, and backend settings."""

    @abc.abstractmethod
    def schema_revision(self) -> str | None:
        """The database's schema revision, None for an empty (not yet a bbo) database."""

    def clock(self) -> float:
        """Seconds since the epoch by the clock leases are set and judged by: this machine's,
        where one process owns the database; a shared database's own (every replica's leases then
        mean the same, whatever their machines' clocks say)."""
        return time.time()

    # ---- studies --------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_study(
        self,
        tenant: str,
        name: str,
        spec: dict,
        seed: int,
        *,
        max_studies: int = 0,
        transfer: dict | None = None,
    ) -> StudyRecord | None:
        """Insert a study with a fresh uid; None when the tenant already has one of that name.
        With ``max_studies`` > 0 the tenant's count is checked in the same transaction (raises
        :class:`bbo.errors.LimitError`): concurrent creates never overshoot the limit.
        ``transfer``: its transfer record (sources resolved at creation), stored with it."""

    @abc.abstractmethod
    def get_study(self, tenant: str, name: str) -> StudyRecord | None: ...

    @abc.abstractmethod
    def get_study_by_uid(self, uid: str) -> StudyRecord | None: ...

    @abc.abstractmethod
    def list_studies(
        self, tenant: str, *, after: tuple[float, str] | None = None, limit: int = 100
    ) -> list[StudyRecord]:
        """The tenant's studies in creation order (ties by name), those after the
        ``(created_at, name)`` key of the previous page's last study."""

    def list_study_keys(
        self, tenant: str, *, after: tuple[float, str] | None = None, limit: int = 100
    ) -> list[StudyKey]:
        """:meth:`list_studies` without the studies' specs: a page of keys is small whatever
        the specs' size (read the specs a few at a time with :meth:`studies_by_uid`)."""
        page = self.list_studies(tenant, after=after, limit=limit)
        return [StudyKey(r.uid, r.name, r.created_at) for r in page]

    def studies_by_uid(self, uids: Sequence[str]) -> list[StudyRecord]:
        """The studies of these uids, in the order given (those not found left out)."""
        found = (self.get_study_by_uid(u) for u in uids)
        return [r for r in found if r is not None]

    @abc.abstractmethod
    def count_studies(self, tenant: str) -> int: ...

    @abc.abstractmethod
    def delete_study(self, uid: str) -> bool:
        """Delete a study and everything of it; False if it did not exist."""

    @abc.abstractmethod
    def set_study_state(self, uid: str, state: str, reason: str) -> None: ...

    @abc.abstractmethod
    def set_study_transfer(self, uid: str, transfer: dict) -> None:
        """Replace the study's transfer record (its sources' latest weights); StudyNotFound when
        the study is gone. Only the study's own row is written: its sources are never touched."""

    @abc.abstractmethod
    def trial_counts(self, uid: str) -> dict[str, int]:
        """``{state: count}``."""

    def completed_counts(self, uids: Sequence[str]) -> dict[str, int]:
        """``{uid: completed trials}`` of these studies (those not found left out): one query per
        page of uids where the backend can (``transfer: auto`` weighs thousands of candidates)."""
        out: dict[str, int] = {}
        for uid in uids:
            try:
                out[uid] = self.trial_counts(uid).get(TrialState.COMPLETED.value, 0)
            except StudyNotFound:
                continue
        return out

    @abc.abstractmethod
    def trial_numbers(self, uid: str, state: TrialState) -> set[int]:
        """The numbers of the study's trials in ``state``: the ids alone, none of what a trial
        holds (a pruning decision on a shared database asks which trials completed)."""

    # ---- trials ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_trials(
        self,
        uid: str,
        new: Sequence[NewTrial],
        *,
        worker_id: str = "",
        lease_expires_at: float | None = None,
        request: RequestKey | None = None,
        continuations: Sequence[Continuation] = (),
        max_trials: int = 0,
    ) -> tuple[list[Trial], StoredRequest | None]:
        """Insert trials with freshly allocated numbers, in one transaction.

        ``max_trials`` > 0: the study's trials after the insert are counted in the same
        transaction, and over it nothing is stored (:class:`~bbo.limits.LimitExceeded` on
        ``study``, ``--max-trials-per-study``): concurrent asks never overshoot.

        ``continuations``: PAUSED trials handed out again in the same transaction (PENDING, with
        the worker and lease, metrics cleared, ``resume_budget`` = the budget reached); one no
        longer PAUSED at its ``from_budget`` is skipped. They come first in the result.
        With ``request``, the key is recorded with the numbers handed out; if it was recorded
        already, nothing changes and ``(those trials, the stored request)`` comes back (the caller
        compares hashes)."""

    @abc.abstractmethod
    def get_trial(self, uid: str, number: int) -> Trial | None: ...

    def trials_by_number(self, uid: str, numbers: Iterable[int]) -> list[Trial]:
        """The study's trials of these numbers, in the order given (those not found left out)."""
        found = (self.get_trial(uid, n) for n in numbers)
        return [t for t in found if t is not None]

    @abc.abstractmethod
    def list_trials(
        self,
        uid: str,
        states: Iterable[TrialState] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Trial]: ...

    @abc.abstractmethod
    def modify_trial(
        self,
        uid: str,
        number: int,
        change: TrialChange,
        *,
        request: RequestKey | None = None,
        event_detail: str = "",
    ) -> tuple[Trial | None, bool, StoredRequest | None]:
        """Read-modify-write one trial in one write transaction: ``(trial, changed, previous)``;
        ``trial`` is None when the trial does not exist; with ``request`` already recorded nothing
        changes and the stored request comes back as ``previous``."""

    @abc.abstractmethod
    def lookup_request(self, uid: str, kind: str, request_id: str) -> StoredRequest | None: ...

    @abc.abstractmethod
    def expire_leases(self, uid: str, now: float) -> list[int]:
        """ABANDON pending trials whose lease ran out; their numbers."""

    @abc.abstractmethod
    def studies_with_expired_leases(self, now: float) -> list[str]:
        """Uids of the studies (all tenants) with a pending trial whose lease ran out."""

    @abc.abstractmethod
    def trial_events(self, uid: str, number: int) -> list[tuple[str, str, float]]:
        """``[(state, detail, at)]`` of a trial, oldest first."""

    # ---- intermediate values --------------------------------------------------------------------
    @abc.abstractmethod
    def add_intermediate(
        self,
        uid: str,
        number: int,
        step: int,
        value: float,
        budget: float | None = None,
        *,
        max_steps: int = 0,
        check: Callable[[TrialState, str], None] | None = None,
    ) -> bool:
        """Record (or overwrite) a trial's value at ``step`` (measured at ``budget``); False if
        the trial does not exist. Repeating the same value keeps the time it was first stored
        (rung decisions compare those times). With ``max_steps`` > 0, a new step of a trial that
        has that many already is refused (``LimitExceeded`` on ``step``, checked in the same
        transaction); a stored step may still be overwritten. ``check``: called with the trial's
        state and reason under the lock the write holds on its row; whatever it raises aborts the
        write (a tell that finished the trial meanwhile is seen, never written past)."""

    @abc.abstractmethod
    def intermediates(self, uid: str) -> dict[int, list[tuple[int, float]]]:
        """trial number -> ``[(step, value)]`` sorted by step."""

    @abc.abstractmethod
    def intermediate_page(
        self, uid: str, after: int = 0, after_step: int | None = None, limit: int | None = None
    ) -> list[tuple[int, int, float]]:
        """``[(trial number, step, value)]`` in (number, step) order, at most ``limit``: those
        after step ``after_step`` of trial ``after`` (with None, those of the trials numbered above
        ``after``). A page is one indexed range scan; the last point is the next page's cursor."""

    @abc.abstractmethod
    def curves(
        self, uid: str, numbers: Sequence[int] | None = None, *, since: float | None = None
    ) -> dict[int, list[CurvePoint]]:
        """trial number -> its intermediate values with budgets and times, sorted by step; only
        the trials ``numbers`` where given, and only the values stored at or after ``since``
        (their ``at``) where given: on a shared database the study's reports are stamped in
        commit order (:meth:`add_intermediate`), so what a reader saw last plus the values since
        its newest ``at`` is everything stored."""

    # ---- LLM calls ------------------------------------------------------------------------------
    @abc.abstractmethod
    def log_llm_call(self, uid: str, call: LlmCallRecord) -> int:
        """Store a call; its number in the study."""

    @abc.abstractmethod
    def list_llm_calls(
        self, uid: str, purpose: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LlmCallRecord]:
        """Calls numbered above ``after``, oldest first."""

    # ---- the fitted model shared by replicas ----------------------------------------------------
    @abc.abstractmethod
    def model_state_n_fit(self, uid: str) -> int | None:
        """The data size of the stored model state (a cheap read), None without one."""

    @abc.abstractmethod
    def get_model_state(self, uid: str) -> ModelState | None: ...

    @abc.abstractmethod
    def put_model_state(self, uid: str, n_fit: int, fmt: int, blob: bytes, replica: str) -> None:
        """Store (replace) the state; NotFoundError when the study is gone."""

    # ---- coordination ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def study_lock(self, uid: str) -> Iterator[None]:
        """Serialize suggestion generation of one study across processes sharing the database
        (a no-op where one process owns the database). Where it can be lost under the body (a
        database session that ended), the body's :meth:`insert_trials` and :meth:`modify_trial`
        of the study raise :class:`bbo.errors.StorageUnavailable` instead of storing anything."""
        yield

    # ---- API keys -------------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_api_key(self, record: ApiKeyRecord) -> bool:
        """False when the key id is taken."""

    @abc.abstractmethod
    def find_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    @abc.abstractmethod
    def list_api_keys(
        self, tenant: str | None = None, include_revoked: bool = True
    ) -> list[ApiKeyRecord]: ...

    @abc.abstractmethod
    def revoke_api_key(self, *, key_id: str = "", key_hash: str = "") -> bool: ...

    @abc.abstractmethod
    def count_active_api_keys(self) -> int: ...
