"""The registry of studies the service calls: create (or reattach), find, list, delete.

It keeps one :class:`bbo.study.Study` (and its generation strategy, with the fitted model) per
live study, keyed by (tenant, name) and checked by uid. A cached entry never outlives its study:
a delete removes it after the delete has committed, and a lookup that raced a delete re-reads
before it caches anything, so a name deleted and created again always finds the new study.

The cache is bounded (``bbo serve --max-cached-studies``, :attr:`StudyConfig.max_cached_studies`):
it holds the most recently used studies and drops the least recently used one past the bound (of
the tenant caching the most: one tenant's many studies never push out another's), so
a server that runs many studies over months does not keep every study it ever touched (its
strategy, trials in memory, kept curves). Dropping costs little: the next call makes the Study
again, reading its trials once and loading its fitted model state from the database
(:mod:`bbo.model_sharing`), as after a restart.

One process never has two Study objects of one study: where it owns the database (SQLite) the
Study's in-memory copy of the trials (:class:`bbo.study_trials.TrialCache`) assumes every write
of the study goes through it. A dropped Study that a call in flight still holds (or the lease
reaper, or an LLM prefetch) stays reachable through a weak map of every live Study by uid, and a
lookup meanwhile gets that very object back instead of a new one; once nothing holds it, it is
gone. The lease reaper writes a study with no live Study through one made for the purpose, never
behind a live one's back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bbo.errors import ConflictError, LimitError, NotFoundError, SpecError
from bbo.fit_slots import FitSlots
from bbo.limits import RequestLimits
from bbo.model_sharing import ModelStateCache
from bbo.paging import cut_page, decode_token, encode_token, read_lazily
from bbo.spec import STUDY_NAME, AlgorithmOptions, StudySpec
from bbo.stopping import MedianRule
from bbo.storage import LlmCallRecord, Storage, StudyRecord
from bbo.study import Study
from bbo.transfer import Judge, resolve_sources, source_refs

log = logging.getLogger("bbo.registry")

DEFAULT_TENANT = "default"
# the part of a CreateStudy deadline kept, after the LLM judges auto's sources, to rank and store:
# a share of it, at least some seconds (2 s alone failed a 6 s create on a loaded 2-core machine)
CREATE_MARGIN_S = 2.0
CREATE_MARGIN_SHARE = 0.3


class AlreadyExistsError(ConflictError):
    """A study of that name exists with a different spec."""


@dataclass
class StudyConfig:
    """What the server decides for every study (``bbo serve`` flags)."""

    default_lease_seconds: float = 600.0
    max_lease_seconds: float = 7 * 24 * 3600.0
    max_ask: int = 100
    # an ask starts no acquisition step for a batch's later points past this many seconds, nor past
    # three quarters of its caller's deadline: the rest are model-guided (bbo serve --max-ask-seconds)
    max_ask_seconds: float = 300.0
    max_studies: int = 10000  # per tenant (0 = unlimited)
    # studies kept in memory, least recently used dropped (bbo serve --max-cached-studies; 0 = all)
    max_cached_studies: int = 1000
    device: str = "auto"  # where fits run for studies whose spec says "auto" (bbo serve --device)
    limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)
    stopping: MedianRule = dataclasses.field(default_factory=MedianRule)
    llm: Any = None  # a bbo.llm.LlmAdvisor; None or a disabled one = plain BO for every study
    on_llm_call: Callable[[LlmCallRecord], None] | None = None  # an observer (metrics)


def default_strategy_factory(spec: StudySpec):
    if spec.fidelity is not None:
        from bbo.strategy.multi_fidelity import MultiFidelityStrategy

        return MultiFidelityStrategy(spec)
    from bbo.strategy import GenerationStrategy

    return GenerationStrategy(spec)


def check_name(name: Any) -> str:
    """A new study's name: STUDY_NAME, but not ``.`` or ``..``, which a URL's path resolves away
    (the dashboard's page of a study so named asked for the list of studies, or for nothing)."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise SpecError(
            "name", f"study name {str(name)[:140]!r} must be 1-128 letters, digits, '_', '-', '.'"
        )
    if name in (".", ".."):
        raise SpecError("name", f"study name {name!r} is a path segment: add a letter or digit")
    return name


def _spec_difference(stored: Mapping[str, Any], requested: StudySpec) -> str:
    """Where the request differs from the stored study, e.g. ``parameters[0].high is 1.0 there,
    2.0 here``; "" where it names that study: equal specs once both are read by this version (an
    older server stored fewer keys), algorithm options the request leaves at their defaults taking
    the stored values (a default changed by an upgrade must not lock drivers out of their studies)."""
    try:
        old = StudySpec.from_dict(stored, strict=False)
    except (SpecError, TypeError, ValueError):
        return _first_difference(_plain(stored), _plain(requested.to_dict()), "spec")
    defaults = AlgorithmOptions()
    kept = {
        f.name: getattr(old.algorithm, f.name)
        for f in dataclasses.fields(AlgorithmOptions)
        if getattr(requested.algorithm, f.name) == getattr(defaults, f.name)
    }
    requested = dataclasses.replace(
        requested, algorithm=dataclasses.replace(requested.algorithm, **kept)
    )
    return _first_difference(_plain(old.to_dict()), _plain(requested.to_dict()), "spec")


def _plain(d: Any) -> Any:
    """``d`` as the JSON it is compared by."""
    return json.loads(_json(d))


def _first_difference(there: Any, here: Any, path: str) -> str:
    """The first place two JSON values differ: ``path is <there> there, <here> here``; "" if equal."""
    if there == here:
        return ""
    if isinstance(there, dict) and isinstance(here, dict):
        for k in sorted(set(there) | set(here)):
            if k not in there or k not in here:
                was, now = ("set" if k in d else "unset" for d in (there, here))
                return f"{path}.{k} is {was} there, {now} here"
            d = _first_difference(there[k], here[k], f"{path}.{k}")
            if d:
                return d
    if isinstance(there, list) and isinstance(here, list) and len(there) == len(here):
        for i, (a, b) in enumerate(zip(there, here)):
            d = _first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
    if isinstance(there, list) and isinstance(here, list):
        return f"{path} has {len(there)} entries there, {len(here)} here"
    return f"{path} is {json.dumps(there)} there, {json.dumps(here)} here"


def _json(d: Any) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def encode_page_token(rec: StudyRecord) -> str:
    """A ListStudies page token: the last study's position in its tenant's creation order."""
    return encode_token([rec.created_at, rec.name])


def decode_page_token(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        at, name = decode_token(token)
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not isinstance(name, str):
            raise ValueError
        # only what a token we issue can hold, a creation time and a study name the database can
        # compare: a 400-digit time is no float (OverflowError), nor NaN / inf a time, and a
        # lone surrogate ("\ud800") cannot be encoded to be bound (UnicodeEncodeError, a
        # ValueError); each was INTERNAL
        at = float(at)
        if not math.isfinite(at) or len(name) > 128:
            raise ValueError
        name.encode("utf-8")
        return at, name
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise SpecError(
            "page_token",
            f"malformed page token {token[:40]!r}: pass back a next_page_token unchanged",
        ) from None


class StudyRegistry:
    """Creates, finds, lists and deletes studies; caches one :class:`Study` each."""

    def __init__(
        self,
        storage: Storage,
        *,
        strategy_factory: Callable[[StudySpec], Any] | None = None,
        config: StudyConfig | None = None,
        fit_slots: int = 1,
    ):
        self.storage = storage
        self.strategy_factory = strategy_factory or default_strategy_factory
        self.config = config or StudyConfig()
        self.fit_slots = FitSlots(fit_slots)
        self.model_cache = ModelStateCache(storage)
        # the most recently used studies, least recent first (bounded: see the module docstring)
        self._cache: OrderedDict[tuple[str, str], Study] = OrderedDict()
        # every Study object alive in this process, by uid: cached, or dropped but still held
        self._live: weakref.WeakValueDictionary[str, Study] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._deletes = 0  # bumped (under the lock) after each delete commits: see _adopt

    def close(self) -> None:
        self.fit_slots.close()

    # ---- create ---------------------------------------------------------------------------------
    def create_study(
        self,
        name: str,
        spec: StudySpec | Mapping[str, Any],
        tenant: str = DEFAULT_TENANT,
        *,
        wait_s: float | None = None,
    ) -> tuple[Study, bool]:
        """Get-or-create: the same name and spec returns the stored study (``created=False``); the
        same name with a different spec raises :class:`AlreadyExistsError`. A spec given as a dict
        is checked against the request limits before it is parsed. ``wait_s``: how long the caller
        waits (its RPC deadline); the LLM's judgement of ``auto``'s sources ends before it."""
        check_name(name)
        if not isinstance(spec, StudySpec):
            self.config.limits.check_spec(spec)
            spec = StudySpec.from_dict(spec)
        else:
            self.config.limits.check_spec(spec.to_dict())
        spec.space.check_encodable()
        spec.space.check_reachable()
        spec.check_outcome_window()
        self._check_llm_model(spec)
        spec_dict = spec.to_dict()
        seed = spec.algorithm.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        llm_calls: list = []  # the LLM's judgement of auto's candidates, logged once created
        for _ in range(3):  # a concurrent delete of the name can make every step miss
            created = False
            # counted before the study is read: a delete that commits after the read is seen by
            # _adopt, which never caches a deleted study
            deletes = self._deletes_seen()
            transfer = None
            rec = None
            if spec.transfer.enabled:
                # sources are resolved (by name, in this tenant only) only for a study that does
                # not exist yet: reattaching never depends on the sources still being there
                rec = self.storage.get_study(tenant, name)
                if rec is None:
                    judge = self._judge(spec, tenant, name, llm_calls, wait_s)
                    cap = self.config.limits.max_transfer_sources
                    transfer = resolve_sources(self.storage, tenant, name, spec, judge, cap)
            if rec is None:
                rec = self._insert(tenant, name, spec_dict, seed, transfer)
                created = rec is not None
            if rec is None:
                rec = self.storage.get_study(tenant, name)
            if rec is None:
                continue
            if not created and (differs := _spec_difference(rec.spec, spec)):
                raise AlreadyExistsError(
                    f"study '{name}' already exists with a different spec ({differs}): create "
                    "this one under another name, or delete that study first"
                )
            try:
                st = self._adopt(rec, deletes)
            except NotFoundError:  # deleted since it was read: the create starts again
                continue
            break
        else:
            raise ConflictError(f"study '{name}' is being created and deleted concurrently: retry")
        if created:
            log.info("study created", extra={"study": name, "tenant": tenant, "uid": rec.uid})
            for call in llm_calls:
                st.log_llm_call(call)
            if (
                self.config.llm is not None
            ):  # warm-start and priors calls start now, in the background
                self.config.llm.prefetch(st.spec, study_key=st.llm_key, record=st.log_llm_call)
            if rec.transfer is not None:
                log.info(
                    "transfer sources",
                    extra={
                        "study": name,
                        "sources": [
                            (r.name, r.uid, r.relatedness) for r in source_refs(rec.transfer)
                        ],
                    },
                )
        return st, created

    def _insert(self, tenant, name, spec_dict, seed, transfer=None) -> StudyRecord | None:
        try:
            return self.storage.create_study(
                tenant,
                name,
                spec_dict,
                seed,
                max_studies=self.config.max_studies,
                transfer=transfer,
            )
        except LimitError as e:
            if e.limit != "max_studies":  # a full disk, with its own retry delay
                raise
            raise LimitError(f"{e.message} (--max-studies)", field=e.field, limit=e.limit) from None

    def _judge(
        self, spec: StudySpec, tenant: str, name: str, calls: list, wait_s: float | None
    ) -> Judge | None:
        """The LLM's rating of ``auto``'s candidate sources (:meth:`LlmAdvisor.related`, bounded
        by its ask budget and by what is left of ``wait_s`` less its margin, :data:`CREATE_MARGIN_S`
        or :data:`CREATE_MARGIN_SHARE` of it, whichever is longer), where
        the module is on and the study enables it; its calls go to ``calls``."""
        advisor = self.config.llm
        if advisor is None or not advisor.enabled or not spec.llm.enabled or not spec.transfer.auto:
            return None

        if wait_s is None:
            ends = None
        else:
            ends = time.monotonic() + wait_s - max(CREATE_MARGIN_S, CREATE_MARGIN_SHARE * wait_s)
        # the LLM caches' key of this creation (the study has no uid yet): under the name alone, a
        # study deleted and created again got the deleted one's exchange back from the cache
        key = f"{tenant}/{name}/new-{os.urandom(8).hex()}"

        def judge(target: StudySpec, candidates):
            left = None if ends is None else max(0.0, ends - time.monotonic())
            try:
                res = advisor.related(target, candidates, study_key=key, budget_s=left)
            except Exception as e:  # the advisor is meant never to raise; creation goes on
                log.exception("llm advisor failed", extra={"study": name})
                return {}, f"no LLM judgement (advisor error: {type(e).__name__}): TF-IDF used"
            calls.extend(res.calls)
            if res.related:
                return res.related, (
                    f"the LLM judged the descriptions of {len(res.related)} of "
                    f"{len(candidates)} candidates"
                )
            return {}, f"no LLM judgement ({res.reason}): TF-IDF similarity used"

        return judge

    def _check_llm_model(self, spec: StudySpec) -> None:
        """A study may name only the models the server offers (``--llm-models``)."""
        if self.config.llm is not None:
            self.config.llm.check_model(spec.llm.model)

    # ---- find -----------------------------------------------------------------------------------
    def _deletes_seen(self) -> int:
        with self._lock:
            return self._deletes

    def _adopt(self, rec: StudyRecord, deletes_before: int, keep: bool = True) -> Study:
        """The Study of ``rec``: the cached or otherwise live one, made if there is none, unless a
        delete committed since ``rec`` was read (``deletes_before``): then ``rec`` is read again
        first, so a deleted study is never put back into the cache. ``keep``: cache it as the
        most recently used (a listing or the reaper only looks at a study: it does not push the
        studies in use out)."""
        key = (rec.tenant, rec.name)
        while True:
            with self._lock:
                if self._deletes == deletes_before:
                    st = self._cache.get(key)
                    if st is None or st.uid != rec.uid:
                        st = self._live.get(rec.uid)
                    if st is None:
                        st = Study(
                            self.storage,
                            rec,
                            StudySpec.from_dict(rec.spec, strict=False),
                            self.strategy_factory,
                            self.config,
                            self.fit_slots,
                            self.model_cache,
                        )
                        self._live[rec.uid] = st
                    if keep:
                        self._keep(key, st)
                    return st
                deletes_before = self._deletes
            fresh = self.storage.get_study_by_uid(rec.uid)
            if fresh is None:
                raise NotFoundError(f"study '{rec.name}' not found")
            rec = fresh

    def _keep(self, key: tuple[str, str], st: Study) -> None:
        """Cache ``st`` as the most recently used study; past the bound drop the least recently
        used study of the tenant caching the most, so a tenant cycling through many studies
        pushes out its own, not the other tenants' (a dropped one still in use stays in ``_live``
        until its users let go). Under the lock."""
        self._cache[key] = st
        self._cache.move_to_end(key)
        bound = self.config.max_cached_studies
        while bound > 0 and len(self._cache) > bound:
            counts = Counter(tenant for tenant, _ in self._cache)
            most = max(counts.values())
            del self._cache[next(k for k in self._cache if counts[k[0]] == most)]

    def get_study(self, name: str, tenant: str = DEFAULT_TENANT) -> Study:
        if not isinstance(name, str) or not name:
            raise SpecError("study", "study name is required")
        with self._lock:
            st = self._cache.get((tenant, name))
            deletes = self._deletes
            if st is not None and not self.storage.shared:
                # one process owns the database: every delete went through this registry
                self._cache.move_to_end((tenant, name))
                return st
        # a shared database: another replica may have deleted (and re-created) the study
        rec = self.storage.get_study(tenant, name)
        if rec is None:
            with self._lock:
                if st is not None and self._cache.get((tenant, name)) is st:
                    del self._cache[(tenant, name)]
            raise NotFoundError(f"study '{name[:140]}' not found")
        return self._adopt(rec, deletes)

    def cached(self) -> list[Study]:
        """Every Study alive in this process: the cached ones and any dropped one still in use."""
        with self._lock:
            return list(self._live.values())

    # ---- list -----------------------------------------------------------------------------------
    def list_studies(
        self, tenant: str = DEFAULT_TENANT, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Study], str]:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
            raise SpecError("page_size", "must be >= 0")
        size = min(page_size or 100, 1000)
        after = decode_page_token(page_token)
        deletes = self._deletes_seen()
        # a page ends at ``size`` studies or once their specs pass PAGE_BYTES (at least one), as
        # the page sent does: reading ``size`` whole records first read up to 1,000 specs of up to
        # --max-spec-bytes each (a GiB) for a reply of 2 MiB
        records = read_lazily(
            lambda a, n: self.storage.list_studies(tenant, after=a, limit=n),
            after,
            size + 1,
            key=lambda r: (r.created_at, r.name),
        )
        recs, more = cut_page(records, size, lambda r: r, lambda r: len(_json(r.spec)))
        nxt = encode_page_token(recs[-1]) if more else ""
        out = []
        for r in recs:
            try:
                out.append(self._adopt(r, deletes, keep=False))
            except NotFoundError:  # deleted while listing
                continue
        return out, nxt

    # ---- leases ---------------------------------------------------------------------------------
    def expire_leases(self, now: float | None = None) -> dict[str, list[int]]:
        """ABANDON every expired lease of every study (the server's reaper calls this on a timer,
        so a dead worker's trial does not wait for its study's next Ask); ``{uid: [trial ids]}``."""
        now = self.storage.clock() if now is None else now
        out: dict[str, list[int]] = {}
        for uid in self.storage.studies_with_expired_leases(now):
            try:
                st = self._live_study(uid)
                ids = (
                    st.expire_leases(now)
                    if st is not None
                    else self.storage.expire_leases(uid, now)
                )
            except NotFoundError:  # deleted meanwhile
                continue
            if ids:
                out[uid] = ids
        return out

    def _live_study(self, uid: str) -> Study | None:
        """The Study to write the study ``uid`` through: the live one, or where this process owns
        the database one made now (not cached), so that no live Study's trials in memory miss the
        write; None on a shared database with no live one (nothing here keeps its trials)."""
        deletes = self._deletes_seen()
        with self._lock:
            st = self._live.get(uid)
        if st is not None or self.storage.shared:
            return st
        rec = self.storage.get_study_by_uid(uid)
        if rec is None:
            raise NotFoundError(f"study {uid} not found")
        return self._adopt(rec, deletes, keep=False)

    # ---- delete ---------------------------------------------------------------------------------
    def delete_study(self, name: str, tenant: str = DEFAULT_TENANT) -> bool:
        if not isinstance(name, str) or not name:
            raise SpecError("name", "study name is required")
        rec = self.storage.get_study(tenant, name)
        if rec is None:
            raise NotFoundError(f"study '{name[:140]}' not found")
        ok = self.storage.delete_study(rec.uid)
        with self._lock:  # after the commit: a lookup from before it re-reads (see _adopt)
            self._deletes += 1
            st = self._cache.get((tenant, name))
            if st is not None and st.uid == rec.uid:
                del self._cache[(tenant, name)]
            self._live.pop(rec.uid, None)
        if not ok:  # another delete of the name committed first
            raise NotFoundError(f"study '{name[:140]}' not found")
        log.info("study deleted", extra={"study": name, "tenant": tenant, "uid": rec.uid})
        return ok
