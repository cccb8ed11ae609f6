"""Trials: one evaluation of the black box, its state and its metrics."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from bbo.errors import SpecError
from bbo.space import Value


class TrialState(str, enum.Enum):
    PENDING = "PENDING"  # asked, being evaluated
    COMPLETED = "COMPLETED"  # told with metrics
    FAILED = "FAILED"  # the evaluation failed (its point is not modeled as an outcome)
    ABANDONED = "ABANDONED"  # the worker went away (lease expired) or the user gave up on it
    PAUSED = "PAUSED"  # told at a rung's budget below the full one (promotion): may be continued
    PRUNED = "PRUNED"  # stopped early by the pruning policy: values kept, never the best trial

    @property
    def finished(self) -> bool:
        """Ended for good (a PAUSED trial may still be continued)."""
        return self not in (TrialState.PENDING, TrialState.PAUSED)


# trials whose metrics the model learns from: a PRUNED one (a study without a fidelity stopped it
# early, its last reported value told) too, else the model never learns why its region was left and
# asks there again and again (a multi-fidelity study hands its own view: no PRUNED trials in it)
MODELED_STATES = (TrialState.COMPLETED, TrialState.PRUNED)


class StudyState(enum.StrEnum):
    """A study's state as the strategy judges it (``str()`` is the bare name, as stored)."""

    ACTIVE = "ACTIVE"  # searching
    LIKELY_INFEASIBLE = "LIKELY_INFEASIBLE"  # no point seems to meet the outcome constraints


class Origin(str, enum.Enum):
    """Where a trial's point came from (kept for audit)."""

    INITIAL = "initial_design"
    BO = "bo"
    PRIOR_BO = "prior_guided_bo"
    BO_EXPLOIT = "bo_exploit"  # the surrogate's predicted best point (bbo.strategy.exploitation)
    BO_LOCAL = (
        "bo_local"  # an exploitation step at a local quadratic model's optimum (bbo.local_model)
    )
    LLM_WARMSTART = "llm_warmstart"
    LLM_PROPOSAL = "llm_proposal"
    TRANSFER_WARMSTART = "transfer_warmstart"  # a source study's best point (bbo.transfer)
    TRANSFER_BO = "transfer_bo"  # an acquisition step on the model stacked on source studies
    REPLICATE = "replicate"  # the best point again, to tell noise (bbo.strategy.replication)
    USER = "user"
    FALLBACK = "fallback"


# design points that come from advice (an LLM's or a source study's best point): the warm-start gate
# and the design-shortening rule of bbo.strategy.initial_design treat them alike
WARMSTART_ORIGINS = (Origin.LLM_WARMSTART.value, Origin.TRANSFER_WARMSTART.value)


@dataclass(frozen=True)
class Metric:
    """An observed metric value with an optional standard error (noise)."""

    value: float
    sem: float | None = None


@dataclass
class Trial:
    """One point of the study and what became of it."""

    id: int
    params: dict[str, Value]
    state: TrialState = TrialState.PENDING
    metrics: dict[str, Metric] = field(default_factory=dict)
    origin: str = Origin.INITIAL.value
    reason: str = ""  # why it failed, or a note from generation (a fallback, a prior set aside)
    rationale: str = ""  # the LLM's reasoning, for LLM-origin trials
    worker_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    lease_expires_at: float | None = None
    # studies with a fidelity (bbo.pruning): the budget to run to (PENDING) or measured at, the
    # Hyperband bracket, and for a continued trial the budget it had already reached
    budget: float | None = None
    bracket: int | None = None
    resume_budget: float | None = None

    def value(self, name: str) -> float:
        return self.metrics[name].value


def check_metrics(
    raw: Mapping[str, object], required: list[str], path: str = "metrics"
) -> dict[str, Metric]:
    """Validate told metrics: finite numbers, sem >= 0, every required metric present."""
    out: dict[str, Metric] = {}
    for name, m in raw.items():
        if not isinstance(name, str) or not name:
            raise SpecError(path, "metric names must be non-empty strings")
        value: object
        sem: object
        if isinstance(m, Metric):
            value, sem = m.value, m.sem
        elif isinstance(m, (tuple, list)) and len(m) == 2:
            value, sem = m
        else:
            value, sem = m, None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}['{name}']", f"metric value must be a number, got {value!r}")
        if not math.isfinite(value):
            raise SpecError(
                f"{path}['{name}']",
                f"metric value must be finite, got {value}: report a failed trial instead",
            )
        if sem is not None:
            if (
                isinstance(sem, bool)
                or not isinstance(sem, (int, float))
                or not math.isfinite(sem)
                or sem < 0
            ):
                raise SpecError(
                    f"{path}['{name}'].sem",
                    f"standard error must be a finite number >= 0, got {sem!r}",
                )
            sem = float(sem)
        out[name] = Metric(float(value), sem)
    missing = [m for m in required if m not in out]
    if missing:
        raise SpecError(
            path,
            f"missing metric(s) {missing}: a completed trial must report every objective and constrained metric",
        )
    return out
