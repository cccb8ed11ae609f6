"""What a generation strategy hands back and the seams the service uses, as Protocols.

The service (:mod:`bbo.study`) needs :class:`Strategy` (``suggest``, ``status``); the rest are
optional capabilities it checks for at each use: replicas share a fitted model through
:class:`SharesModelState` (:mod:`bbo.model_sharing`); :class:`TimeBounded` takes the ask's time
bound (``--max-ask-seconds``, three quarters of the caller's deadline); :class:`Recommends` names
the best trial by the model; a strategy that transfers from other studies takes their data through
:class:`UsesSources`, one that models budgets the study's curves through :class:`UsesCurves`;
:class:`DescribesAsks` gives the last ask's timings to metrics. A strategy without a capability
simply does not implement its protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from bbo.space import Value
from bbo.spec import ParameterPrior
from bbo.trial import StudyState, Trial


@dataclass
class Suggestion:
    """A point to evaluate, where it came from, and why (fallback reason or LLM rationale)."""

    params: dict[str, Value]
    origin: str
    reason: str = ""
    rationale: str = ""
    # multi-fidelity studies: start this point at the full budget (a refinement step of the model
    # at the full budget, which low budgets cannot judge); otherwise the pruning policy places it
    full_budget: bool = False


@dataclass
class AskInfo:
    """Diagnostics of the last ``suggest`` call (for logs, metrics and benchmarks)."""

    n_completed: int = 0
    refit: bool = False
    n_model: int = 0
    fit_seconds: float = 0.0
    acq_seconds: float = 0.0
    total_seconds: float = 0.0


class Estimate(NamedTuple):
    """The surrogate's estimate of the objective at a trial, in the objective's units: the
    noise-free value it infers from all the observations (the posterior median) and a central
    68 % credible interval (the posterior mean -/+ one sd, through the outcome warp's inverse)."""

    value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Recommendation:
    """The trial the strategy reports as the study's best, how it chose it, and the model's
    estimate of its objective (the trial's own measurement is one noisy draw)."""

    trial_id: int
    selection: str
    estimate: Estimate | None = None


class StudyStatus(NamedTuple):
    """The strategy's judgement of a study: its state and, unless ACTIVE, why."""

    state: StudyState
    reason: str = ""


ACTIVE_STATUS = StudyStatus(StudyState.ACTIVE, "")


@runtime_checkable
class Strategy(Protocol):
    """Chooses the points to evaluate next from a study's trials; one instance per study."""

    def suggest(
        self,
        trials: Sequence[Trial],
        n: int = 1,
        *,
        warmstart: Sequence[Suggestion] = (),
        proposals: Sequence[Suggestion] = (),
        priors: Sequence[ParameterPrior] | None = None,
    ) -> list[Suggestion]:
        """``n`` valid, distinct points not among the trials'; never raises."""
        ...

    def status(self, trials: Sequence[Trial]) -> StudyStatus:
        """Whether the study still looks solvable (see :class:`~bbo.trial.StudyState`)."""
        ...


@runtime_checkable
class TimeBounded(Protocol):
    """A strategy that bounds an ask's time: once it runs short, a batch's later points come from
    the model's cheap score instead of the acquisition optimizer."""

    def bound_time(self, until: float | None) -> None:
        """The next ``suggest`` starts no acquisition step after its first point that would end
        past ``until`` (``time.monotonic()``); None: no bound."""
        ...


@runtime_checkable
class SharesModelState(Protocol):
    """A strategy whose fitted surrogate state other replicas can adopt."""

    def export_state(self) -> tuple[int, dict] | None:
        """``(n at the last fit, hyperparameters)``, or None before any fit."""
        ...

    def import_state(self, n_fit: int, hyper: dict) -> None:
        """Adopt another replica's fit."""
        ...


@runtime_checkable
class Recommends(Protocol):
    """A strategy that may name the best trial itself (by its model, where the objective is
    noisy and the best observed value is biased upward by luck)."""

    def recommend(self, trials: Sequence[Trial]) -> Recommendation | None:
        """The recommended trial among the completed ``trials``, or None where the best observed
        feasible trial is the answer. Cheap (no fit) and safe to call beside a running ask."""


@runtime_checkable
class UsesSources(Protocol):
    """A strategy that learns from source studies (:mod:`bbo.transfer`): the service hands it the
    sources' current data before each ask and reads back the weights it gave them."""

    def set_sources(self, sources: Sequence) -> None:
        """The study's live sources (:class:`bbo.transfer.SourceData`), best-related first."""
        ...

    def transfer_report(self) -> dict | None:
        """``{"by_metric": {metric: {uid: w}}, "target": {metric: w}, "n": trials}`` of the last
        ask that computed weights, or None before any."""
        ...


@runtime_checkable
class UsesCurves(Protocol):
    """A strategy that models budgets (:mod:`bbo.strategy.multi_fidelity`): the service passes its
    ``suggest`` the study's learning curves (``curves=``): of each, the values at or past each
    rung's budget and at its largest budget (:meth:`bbo.curve_index.CurveSummary.points`)."""

    uses_curves: Literal[True]


@runtime_checkable
class DescribesAsks(Protocol):
    """A strategy that describes its last ``suggest`` call (timings for metrics and benchmarks)."""

    @property
    def last(self) -> AskInfo:
        """Diagnostics of the last ``suggest`` call."""
        ...
