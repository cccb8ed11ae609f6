"""The client's public data: search-space builders, objectives, constraints, trials, studies.

Plain dataclasses; protobuf stays inside the client.
"""

from __future__ import annotations

import datetime as _dt
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bbo_client.v1 import study_pb2 as pb

Value = float | int | str


def _scale(log: bool) -> int:
    return pb.SCALE_LOG if log else pb.SCALE_LINEAR


def _value_pb(v: Value, field: str = "value") -> pb.ParameterValue:
    """``v`` as a ParameterValue; a bool (an int to protobuf, a point never meant) is refused as
    :class:`~bbo_client.errors.InvalidArgument` naming ``field``."""
    if isinstance(v, str):
        return pb.ParameterValue(category=v)
    if isinstance(v, bool):
        from bbo_client.errors import InvalidArgument

        raise InvalidArgument(
            f"booleans are not parameter values, got {v!r}: use Categorical('x', ['true', "
            "'false'])",
            field=field,
        )
    if isinstance(v, int) and -(2**63) <= v < 2**63:
        return pb.ParameterValue(integer=v)
    try:  # an int past int64 goes as a double (1e20 for a float parameter), as the server takes it
        return pb.ParameterValue(number=float(v))
    except OverflowError:
        from bbo_client.errors import InvalidArgument

        raise InvalidArgument(
            f"an integer of {v.bit_length()} bits is too large for a parameter value", field=field
        ) from None


def _value(v: pb.ParameterValue) -> Value:
    kind = v.WhichOneof("kind")
    return getattr(v, kind) if kind else None


# ---- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Float:
    """A real parameter in [low, high]; ``log=True`` searches it on a log scale."""

    name: str
    low: float
    high: float
    log: bool = False

    def to_pb(self) -> pb.ParameterSpec:
        return pb.ParameterSpec(
            name=self.name,
            float=pb.FloatParameter(low=self.low, high=self.high, scale=_scale(self.log)),
        )


@dataclass(frozen=True)
class Int:
    """An integer parameter in [low, high], both inclusive."""

    name: str
    low: int
    high: int
    log: bool = False

    def to_pb(self) -> pb.ParameterSpec:
        low, high = (_integer(self.name, b, v) for b, v in (("low", self.low), ("high", self.high)))
        return pb.ParameterSpec(
            name=self.name,
            int=pb.IntParameter(low=low, high=high, scale=_scale(self.log)),
        )


def _integer(name: str, bound: str, v: Any) -> int:
    """An Int's bound as an int (``1e3`` is 1000); refused, naming the parameter, if not whole."""
    if not isinstance(v, bool) and isinstance(v, numbers.Real) and float(v).is_integer():
        return int(v)
    from bbo_client.errors import InvalidArgument

    raise InvalidArgument(
        f"Int '{name}' needs whole-number bounds, got {bound}={v!r}: use Float for a real range",
        field=bound,
    )


@dataclass(frozen=True)
class Categorical:
    """An unordered choice among strings."""

    name: str
    choices: Sequence[str]

    def to_pb(self) -> pb.ParameterSpec:
        if isinstance(self.choices, str) or not all(isinstance(c, str) for c in self.choices):
            from bbo_client.errors import InvalidArgument

            raise InvalidArgument(
                f"Categorical '{self.name}' takes a list of strings, got {self.choices!r}: "
                "use Ordinal for ordered numbers, or label each choice with a string",
                field="choices",
            )
        return pb.ParameterSpec(
            name=self.name, categorical=pb.CategoricalParameter(choices=list(self.choices))
        )


@dataclass(frozen=True)
class Ordinal:
    """Ordered numeric values, ascending (e.g. batch sizes 16, 32, 64)."""

    name: str
    values: Sequence[float]
    log: bool = False

    def to_pb(self) -> pb.ParameterSpec:
        if isinstance(self.values, str) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in self.values
        ):
            from bbo_client.errors import InvalidArgument

            raise InvalidArgument(
                f"Ordinal '{self.name}' takes a list of numbers, got {self.values!r}: "
                "use Categorical for string labels",
                field="values",
            )
        return pb.ParameterSpec(
            name=self.name,
            ordinal=pb.OrdinalParameter(
                values=[float(v) for v in self.values], scale=_scale(self.log)
            ),
        )


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value (passed to the objective, not searched)."""

    name: str
    value: Value

    def to_pb(self) -> pb.ParameterSpec:
        return pb.ParameterSpec(
            name=self.name, fixed=pb.FixedParameter(value=_value_pb(self.value))
        )


Parameter = Float | Int | Categorical | Ordinal | Fixed


def parameter_from_pb(p: pb.ParameterSpec) -> Parameter:
    kind = p.WhichOneof("kind")
    if kind == "float":
        return Float(p.name, p.float.low, p.float.high, p.float.scale == pb.SCALE_LOG)
    if kind == "int":
        return Int(p.name, p.int.low, p.int.high, p.int.scale == pb.SCALE_LOG)
    if kind == "categorical":
        return Categorical(p.name, tuple(p.categorical.choices))
    if kind == "ordinal":
        return Ordinal(p.name, tuple(p.ordinal.values), p.ordinal.scale == pb.SCALE_LOG)
    return Fixed(p.name, _value(p.fixed.value))


@dataclass(frozen=True)
class LinearConstraint:
    """``sum(coefficients[name] * params[name]) <= bound`` over linear-scale numeric parameters."""

    coefficients: Mapping[str, float]
    bound: float

    def to_pb(self) -> pb.LinearConstraint:
        return pb.LinearConstraint(
            coefficients={k: float(v) for k, v in self.coefficients.items()},
            bound=float(self.bound),
        )


# ---- metrics ------------------------------------------------------------------------------------


_NOISE = {
    "auto": pb.OBSERVATION_NOISE_AUTO,
    "noisy": pb.OBSERVATION_NOISE_NOISY,
    "deterministic": pb.OBSERVATION_NOISE_DETERMINISTIC,
}


@dataclass(frozen=True)
class Objective:
    """A metric to optimize: ``goal`` is "minimize" (default) or "maximize"; ``noise`` says how
    it is observed: "auto" (bbo judges from the data), "noisy" (a cross-validated score, a
    simulation on random seeds: noise handling from the first trial) or "deterministic"."""

    name: str
    goal: str = "minimize"
    noise: str = "auto"

    def to_pb(self) -> pb.Objective:
        from bbo_client.errors import InvalidArgument

        if self.goal not in ("minimize", "maximize"):
            raise InvalidArgument(
                f"goal must be 'minimize' or 'maximize', got {self.goal!r}", field="goal"
            )
        if self.noise not in _NOISE:
            raise InvalidArgument(
                f"noise must be one of {', '.join(_NOISE)}, got {self.noise!r}",
                field="noise",
            )
        return pb.Objective(
            name=self.name,
            goal=pb.GOAL_MAXIMIZE if self.goal == "maximize" else pb.GOAL_MINIMIZE,
            noise=_NOISE[self.noise],
        )

    @classmethod
    def from_pb(cls, o: pb.Objective) -> Objective:
        noise = next((k for k, v in _NOISE.items() if v == o.noise), "auto")
        return cls(o.name, "maximize" if o.goal == pb.GOAL_MAXIMIZE else "minimize", noise)


def Minimize(name: str, noise: str = "auto") -> Objective:
    return Objective(name, "minimize", noise)


def Maximize(name: str, noise: str = "auto") -> Objective:
    return Objective(name, "maximize", noise)


@dataclass(frozen=True)
class Constraint:
    """A black-box constraint on a reported metric: ``Constraint("latency_ms", "<=", 200)``."""

    metric: str
    op: str
    bound: float

    def to_pb(self) -> pb.OutcomeConstraint:
        ops = {"<=": pb.CONSTRAINT_OP_LESS_EQUAL, ">=": pb.CONSTRAINT_OP_GREATER_EQUAL}
        if self.op not in ops:
            from bbo_client.errors import InvalidArgument

            raise InvalidArgument(f"op must be '<=' or '>=', got {self.op!r}", field="op")
        return pb.OutcomeConstraint(metric=self.metric, op=ops[self.op], bound=float(self.bound))


@dataclass(frozen=True)
class Prior:
    """A belief about where the optimum lies: ``mean``/``std`` (numeric) or ``probabilities``."""

    parameter: str
    mean: float | None = None
    std: float | None = None
    probabilities: Mapping[str, float] | None = None
    confidence: float = 0.5

    def to_pb(self) -> pb.ParameterPrior:
        out = pb.ParameterPrior(
            parameter=self.parameter,
            confidence=self.confidence,
            probabilities=dict(self.probabilities or {}),
        )
        if self.mean is not None:
            out.mean = float(self.mean)
        if self.std is not None:
            out.std = float(self.std)
        return out


@dataclass(frozen=True)
class Llm:
    """Opt a study into the LLM module (warm start, priors, proposals)."""

    enabled: bool = True
    warmstart_candidates: int = 0
    derive_priors: bool = True
    propose_during_search: bool = False
    model: str = ""

    def to_pb(self) -> pb.LlmOptions:
        return pb.LlmOptions(
            enabled=self.enabled,
            warmstart_candidates=self.warmstart_candidates,
            derive_priors=self.derive_priors,
            propose_during_search=self.propose_during_search,
            model=self.model,
        )


# ---- budgets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """What a trial's budget counts and its range: ``Fidelity("epochs", 1, 27, integer=True)``.
    Trials are handed a budget (``Trial.budget``); only full-budget (``max``) results complete."""

    name: str
    min: float
    max: float
    integer: bool = False

    def to_pb(self) -> pb.Fidelity:
        return pb.Fidelity(
            name=self.name, min=float(self.min), max=float(self.max), integer=self.integer
        )


_POLICIES = {
    "": pb.PRUNING_POLICY_UNSPECIFIED,
    "median": pb.PRUNING_POLICY_MEDIAN,
    "asha": pb.PRUNING_POLICY_ASHA,
    "hyperband": pb.PRUNING_POLICY_HYPERBAND,
    "none": pb.PRUNING_POLICY_NONE,
}


@dataclass(frozen=True)
class Pruning:
    """How trials are stopped early: ``policy`` "median", "asha", "hyperband" or "none" ("" =
    median without a fidelity, asha with one); ``eta`` the reduction factor between rungs (0 = 3);
    ``promote=True``: Ask hands out trials at their first rung's budget and continues the best
    paused ones (your objective resumes from ``resume_budget``)."""

    policy: str = ""
    eta: float = 0.0
    promote: bool = False

    def to_pb(self) -> pb.Pruning:
        if self.policy not in _POLICIES:
            from bbo_client.errors import InvalidArgument

            raise InvalidArgument(
                f"unknown pruning policy {self.policy!r}: use median, asha, hyperband or none",
                field="policy",
            )
        return pb.Pruning(policy=_POLICIES[self.policy], eta=float(self.eta), promote=self.promote)


@dataclass(frozen=True)
class Transfer:
    """Learn from earlier studies of the same tenant: ``sources`` by name, and with ``auto=True``
    the most related stored studies too (``max_sources`` in all; 0 = 3)."""

    sources: Sequence[str] = ()
    auto: bool = False
    max_sources: int = 0

    def to_pb(self) -> pb.TransferOptions:
        return pb.TransferOptions(
            sources=list(self.sources), auto=self.auto, max_sources=self.max_sources
        )


@dataclass(frozen=True)
class TransferSource:
    """A source study and the weight the study's model gave it (per metric, at the last ask)."""

    name: str
    uid: str
    relatedness: float
    why: str
    named: bool  # named in the spec (else picked by ``auto``)
    state: str  # "used" or "deleted"
    weights: dict[str, float]


@dataclass(frozen=True)
class TransferInfo:
    """Which studies a study transfers from, and their weights."""

    sources: list[TransferSource]
    target_weights: dict[str, float]  # the study's own model's share, per metric
    weights_at_trials: int  # completed trials when the weights were computed (0: not yet)
    note: str = ""

    @classmethod
    def from_pb(cls, t: pb.TransferInfo) -> TransferInfo:
        return cls(
            sources=[
                TransferSource(
                    s.name, s.uid, s.relatedness, s.why, s.named, s.state, dict(s.weights)
                )
                for s in t.sources
            ],
            target_weights=dict(t.target_weights),
            weights_at_trials=t.weights_at_trials,
            note=t.note,
        )


# ---- trials and studies -------------------------------------------------------------------------

_STATES = {
    pb.TRIAL_STATE_PENDING: "PENDING",
    pb.TRIAL_STATE_COMPLETED: "COMPLETED",
    pb.TRIAL_STATE_FAILED: "FAILED",
    pb.TRIAL_STATE_ABANDONED: "ABANDONED",
    pb.TRIAL_STATE_PAUSED: "PAUSED",
    pb.TRIAL_STATE_PRUNED: "PRUNED",
}
STATE_TO_PB = {v: k for k, v in _STATES.items()}


def _time(ts) -> _dt.datetime | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=_dt.UTC)


@dataclass
class Trial:
    """One point of a study: ``params`` to evaluate, and what became of it."""

    id: int
    params: dict[str, Value]
    state: str = "PENDING"
    metrics: dict[str, float] = field(default_factory=dict)
    sems: dict[str, float] = field(default_factory=dict)
    origin: str = ""
    reason: str = ""
    rationale: str = ""
    worker_id: str = ""
    created: _dt.datetime | None = None
    updated: _dt.datetime | None = None
    lease_expires: _dt.datetime | None = None
    study_uid: str = (
        ""  # sent back with tell / heartbeat, so they never reach a study re-created under the name
    )
    # studies with a fidelity: the budget to run to (or measured at), the Hyperband bracket, and
    # for a continued trial the budget it already reached (resume from there); None without one
    budget: float | None = None
    bracket: int = 0
    resume_budget: float | None = None

    @classmethod
    def from_pb(cls, t: pb.Trial) -> Trial:
        return cls(
            id=t.id,
            params={k: _value(v) for k, v in t.parameters.items()},
            state=_STATES.get(t.state, "UNSPECIFIED"),
            metrics={k: m.value for k, m in t.metrics.items()},
            sems={k: m.sem for k, m in t.metrics.items() if m.HasField("sem")},
            origin=t.origin,
            reason=t.reason,
            rationale=t.rationale,
            worker_id=t.worker_id,
            created=_time(t.create_time),
            updated=_time(t.update_time),
            lease_expires=_time(t.lease_expire_time) if t.HasField("lease_expire_time") else None,
            study_uid=t.study_uid,
            budget=t.budget or None,
            bracket=t.bracket,
            resume_budget=t.resume_budget or None,
        )


@dataclass
class StopAdvice:
    """The answer to an intermediate report: truthy when the trial should stop (then tell it
    PRUNED), with the pruning policy's reason."""

    should_stop: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.should_stop


@dataclass
class TellResult:
    trial: Trial
    duplicate: bool = False  # this exact tell had already been recorded


@dataclass
class StudyInfo:
    name: str
    parameters: list[Parameter]
    objectives: list[Objective]
    constraints: list[Constraint]
    state: str
    state_reason: str
    trial_count: int
    completed_count: int
    created: _dt.datetime | None
    description: str = ""
    spec: Any = None  # the bbo.v1.StudySpec message, for everything else
    uid: str = ""  # this incarnation: a study deleted and created again under the name has another
    fidelity: Fidelity | None = None
    transfer: TransferInfo | None = None  # sources and their weights, for a transfer study

    @classmethod
    def from_pb(cls, s) -> StudyInfo:
        sp = s.spec
        return cls(
            name=s.name,
            parameters=[parameter_from_pb(p) for p in sp.parameters],
            objectives=[Objective.from_pb(o) for o in sp.objectives],
            constraints=[
                Constraint(
                    c.metric, ">=" if c.op == pb.CONSTRAINT_OP_GREATER_EQUAL else "<=", c.bound
                )
                for c in sp.outcome_constraints
            ],
            state="LIKELY_INFEASIBLE" if s.state == pb.STUDY_STATE_LIKELY_INFEASIBLE else "ACTIVE",
            state_reason=s.state_reason,
            trial_count=s.trial_count,
            completed_count=s.completed_count,
            created=_time(s.create_time),
            description=sp.description,
            spec=sp,
            uid=s.uid,
            fidelity=Fidelity(
                sp.fidelity.name, sp.fidelity.min, sp.fidelity.max, sp.fidelity.integer
            )
            if sp.HasField("fidelity")
            else None,
            transfer=TransferInfo.from_pb(s.transfer) if s.HasField("transfer") else None,
        )


@dataclass(frozen=True)
class Estimate:
    """The server's surrogate's estimate of the objective at a trial, in the objective's units:
    the noise-free value (posterior median) and a central 68 % credible interval."""

    value: float
    lower: float
    upper: float

    @classmethod
    def from_pb(cls, m) -> Estimate:
        return cls(m.value, m.lower, m.upper)


@dataclass
class Best:
    """The best feasible trial (one objective) or the Pareto front; empty when none is feasible."""

    trials: list[Trial]
    state: str = "ACTIVE"
    state_reason: str = ""
    # how the trial was chosen where not by its observed value (a noisy objective: the best
    # posterior mean of the server's surrogate); empty for the best observed trial
    selection: str = ""
    # then the surrogate's estimate of its objective (its observed value is one noisy draw)
    estimate: Estimate | None = None
    # how many trials the answer has: more than ``trials`` holds only for a front too large for
    # one response (about 2 MiB), which then holds its first trials by id
    count: int = 0

    @property
    def trial(self) -> Trial | None:
        return self.trials[0] if self.trials else None


@dataclass
class LlmCall:
    purpose: str
    model: str
    prompt: str
    response: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    created: _dt.datetime | None
