"""The generation strategy of one study as its asks run it: built on first use with the study's
stored seed, its fitted model shared with other replicas (:mod:`bbo.model_sharing`), run on the
fit slots (:mod:`bbo.fit_slots`), a failure answered with space-filling points."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bbo.incumbent import is_feasible
from bbo.spec import StudySpec
from bbo.strategy.base import (
    Recommendation,
    Recommends,
    SharesModelState,
    Strategy,
    Suggestion,
    TimeBounded,
    UsesSources,
)
from bbo.trial import StudyState, Trial, TrialState

if TYPE_CHECKING:
    from bbo.fit_slots import FitSlots
    from bbo.model_sharing import ModelStateCache, Token
    from bbo.registry import StudyConfig
    from bbo.transfer import SourceData

log = logging.getLogger("bbo.study")

FALLBACK_SEED_OFFSET = 7919  # the space-filling fallback's points differ from the design's


@dataclass
class Computed:
    """What the strategy made of one ask: its suggestions (``note``: why they are a fallback, if
    they are), its judgement of the study (None where it makes none), and the model state's token
    for :meth:`StudyStrategy.keep`."""

    suggestions: list[Suggestion]
    note: str
    status: tuple[StudyState, str] | None
    token: Token


class StudyStrategy:
    """The strategy of the study ``uid`` (``name`` in logs, ``tenant`` on the fit slots).
    ``lock`` serializes the study's asks; :meth:`recommend` takes it to load a stored model."""

    def __init__(
        self,
        spec: StudySpec,
        seed: int,
        factory: Callable[[StudySpec], Any],
        config: StudyConfig,
        fit_slots: FitSlots,
        model_cache: ModelStateCache,
        lock: threading.Lock,
        uid: str,
        name: str,
        tenant: str,
    ):
        self.spec, self.seed, self.config = spec, seed, config
        self._factory = factory
        self._fit_slots, self._model_cache, self._lock = fit_slots, model_cache, lock
        self.uid, self.name, self.tenant = uid, name, tenant
        self._strategy: Any = None

    @property
    def strategy(self) -> Any:
        """The generation strategy, built on first use with the study's stored seed."""
        if self._strategy is None:
            alg = self.spec.algorithm
            device = self.config.device if alg.device == "auto" else alg.device
            seeded = dataclasses.replace(
                self.spec, algorithm=dataclasses.replace(alg, seed=self.seed, device=device)
            )
            self._strategy = self._factory(seeded)
        return self._strategy

    def compute(
        self,
        trials: list[Trial],
        count: int,
        plan: Mapping[str, Any],
        sources: list[SourceData] | None,
        until: float | None = None,
    ) -> Computed:
        """``count`` suggestions and the study's status, on a fit slot, the stored model state
        loaded first; a batch's later points past ``until`` (``time.monotonic()``) come cheaply
        (:class:`~bbo.strategy.base.TimeBounded`). Call under the study's ask lock."""

        def run() -> Computed:
            token = self._model_cache.pull(self.uid, self.strategy)
            if sources is not None and isinstance(self.strategy, UsesSources):
                self.strategy.set_sources(sources)
            if isinstance(self.strategy, TimeBounded):
                self.strategy.bound_time(until)
            sugg, note = self._suggest(trials, count, plan) if count else ([], "")
            return Computed(sugg, note, self._status(trials), token)

        return self._fit_slots.run(run, self.tenant)

    def keep(self, token: Token) -> None:
        """Store the model state where the strategy refit since :meth:`compute` (once the ask's
        trials are stored)."""
        self._model_cache.push(self.uid, self.strategy, token)

    def _suggest(
        self, trials: list[Trial], count: int, plan: Mapping[str, Any]
    ) -> tuple[list[Suggestion], str]:
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
            seed = self.seed + FALLBACK_SEED_OFFSET
            return space_filling(self.spec.space, seed, trials, count, reason), reason

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

    def recommend(self, trials: Sequence[Trial]) -> tuple[Trial, Recommendation] | None:
        """The strategy's recommended trial among ``trials`` (feasible) and its recommendation
        (why, the model's estimate); None where it makes none. The strategy first takes the
        study's stored model state where it is newer (another replica fit since, or this one has
        not served the study's asks), so that replicas agree on the pick. A strategy with a state
        does not wait for an ask of this study running here: that ask takes the stored state."""
        strategy = self.strategy
        if not isinstance(strategy, Recommends):
            return None
        try:
            if isinstance(strategy, SharesModelState) and self._lock.acquire(
                blocking=strategy.export_state() is None
            ):
                try:
                    self._model_cache.pull(self.uid, strategy)
                finally:
                    self._lock.release()
            rec = strategy.recommend(trials)
        except Exception:
            log.exception("recommendation failed", extra={"study": self.name})
            return None
        if rec is None:
            return None
        t = next((t for t in trials if t.id == rec.trial_id), None)
        if t is None or t.state is not TrialState.COMPLETED or not is_feasible(self.spec, t):
            return None
        return t, rec
