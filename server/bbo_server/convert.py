"""Conversions between protobuf messages (bbo.v1) and the core's plain data. The only module that
knows both sides; the servicer calls these and nothing else touches protobuf fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from bbo.errors import SpecError
from bbo.space import PARAM_KINDS, FloatParam, IntParam, OrdinalParam, Param, Value
from bbo.spec import (
    ASHA,
    HYPERBAND,
    MAXIMIZE,
    MEDIAN,
    MINIMIZE,
    NO_PRUNING,
    NOISE_AUTO,
    NOISE_DETERMINISTIC,
    NOISE_NOISY,
    AlgorithmOptions,
    Pruning,
    StudySpec,
)
from bbo.storage import LlmCallRecord
from bbo.study import Study, StudyInfo
from bbo.transfer import source_refs
from bbo.trial import Metric, StudyState, Trial, TrialState
from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import study_pb2 as pb

INT64 = 2**63
INT32_MAX = 2**31 - 1

TRIAL_STATE_TO_PB = {
    TrialState.PENDING: pb.TRIAL_STATE_PENDING,
    TrialState.COMPLETED: pb.TRIAL_STATE_COMPLETED,
    TrialState.FAILED: pb.TRIAL_STATE_FAILED,
    TrialState.ABANDONED: pb.TRIAL_STATE_ABANDONED,
    TrialState.PAUSED: pb.TRIAL_STATE_PAUSED,
    TrialState.PRUNED: pb.TRIAL_STATE_PRUNED,
}
TRIAL_STATE_FROM_PB = {v: k for k, v in TRIAL_STATE_TO_PB.items()}
STUDY_STATE_TO_PB: dict[str, int] = {
    StudyState.ACTIVE: pb.STUDY_STATE_ACTIVE,
    StudyState.LIKELY_INFEASIBLE: pb.STUDY_STATE_LIKELY_INFEASIBLE,
}


def timestamp(t: float | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(round(t * 1e9)))
    return ts


def trial_state_from_pb(v: int, field: str) -> TrialState:
    try:
        return TRIAL_STATE_FROM_PB[v]
    except KeyError:
        raise SpecError(field, f"unknown or unspecified trial state {v}") from None


# ---- parameter values ---------------------------------------------------------------------------


def value_from_pb(v: pb.ParameterValue, field: str) -> Value:
    kind = v.WhichOneof("kind")
    if kind is None:
        raise SpecError(field, "parameter value is empty: set number, integer or category")
    return getattr(v, kind)


def value_to_pb(v: Value, param=None) -> pb.ParameterValue:
    if isinstance(param, IntParam) or (isinstance(param, OrdinalParam) and param.integral):
        return pb.ParameterValue(integer=int(v))
    if isinstance(param, (FloatParam, OrdinalParam)):
        return pb.ParameterValue(number=float(v))
    if isinstance(v, str):
        return pb.ParameterValue(category=v)
    if isinstance(v, bool):
        return pb.ParameterValue(category=str(v).lower())
    if isinstance(v, int) and -INT64 <= v < INT64:
        return pb.ParameterValue(integer=v)
    return pb.ParameterValue(number=float(v))


def params_from_pb(
    m: Mapping[str, pb.ParameterValue], field: str = "parameters"
) -> dict[str, Value]:
    return {k: value_from_pb(v, f"{field}['{k}']") for k, v in m.items()}


# ---- metrics ------------------------------------------------------------------------------------


def metrics_from_pb(m: Mapping[str, pb.MetricValue]) -> dict[str, Metric]:
    """Raw values (validated later by the core, which names the offending field)."""
    return {k: Metric(v.value, v.sem if v.HasField("sem") else None) for k, v in m.items()}


def metrics_to_pb(metrics: Mapping[str, Metric], out) -> None:
    for k, m in metrics.items():
        mv = out[k]
        mv.value = m.value
        if m.sem is not None:
            mv.sem = m.sem


# ---- spec ---------------------------------------------------------------------------------------


def _log(scale: int, field: str) -> bool:
    return _enum(scale, _SCALE_FROM_PB, field) == "log"


def _enum(value: int, table: Mapping[int, str], field: str) -> str:
    """A proto enum's value in the core's words. proto3 enums are open (a client built from a newer
    proto, or a raw integer, sends values this server does not know): those are refused, not read
    as the default."""
    if value not in table:
        known = ", ".join(f"{k} ({v})" for k, v in table.items())
        raise SpecError(field, f"unknown value {value}: use one of {known}")
    return table[value]


def spec_from_pb(s: pb.StudySpec, field: str = "spec") -> StudySpec:
    """Build and validate a core spec; SpecError paths are prefixed with ``field``."""
    with spec_field(field):
        return StudySpec.from_dict(spec_dict_from_pb(s))


class spec_field:
    """Prefix the field path of a SpecError raised inside with ``field`` (``spec.parameters[0]``)."""

    def __init__(self, field: str = "spec"):
        self.field = field

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if isinstance(e, SpecError) and not e.field.startswith(self.field):
            path = f"{self.field}.{e.field}" if e.field != "spec" else self.field
            raise SpecError(path, e.message) from None
        return False


POLICY_FROM_PB = {
    pb.PRUNING_POLICY_UNSPECIFIED: "",
    pb.PRUNING_POLICY_MEDIAN: MEDIAN,
    pb.PRUNING_POLICY_ASHA: ASHA,
    pb.PRUNING_POLICY_HYPERBAND: HYPERBAND,
    pb.PRUNING_POLICY_NONE: NO_PRUNING,
}
POLICY_TO_PB = {v: k for k, v in POLICY_FROM_PB.items()}
_NOISE_FROM_PB = {
    pb.OBSERVATION_NOISE_AUTO: NOISE_AUTO,
    pb.OBSERVATION_NOISE_NOISY: NOISE_NOISY,
    pb.OBSERVATION_NOISE_DETERMINISTIC: NOISE_DETERMINISTIC,
}
_NOISE_TO_PB = {v: k for k, v in _NOISE_FROM_PB.items()}
_GOAL_FROM_PB = {pb.GOAL_MINIMIZE: MINIMIZE, pb.GOAL_MAXIMIZE: MAXIMIZE}
_SCALE_FROM_PB = {pb.SCALE_LINEAR: "linear", pb.SCALE_LOG: "log"}
_OP_FROM_PB = {pb.CONSTRAINT_OP_LESS_EQUAL: "<=", pb.CONSTRAINT_OP_GREATER_EQUAL: ">="}


def _budgets_from_pb(s: pb.StudySpec) -> dict[str, Any]:
    """The spec's fidelity and pruning in dict form, only where set (a spec without them keeps
    the dict it always had)."""
    out: dict[str, Any] = {}
    if s.HasField("fidelity"):
        f = s.fidelity
        out["fidelity"] = {"name": f.name, "min": f.min, "max": f.max, "integer": f.integer}
    if s.HasField("pruning"):
        p = s.pruning
        out["pruning"] = {
            "policy": _enum(p.policy, POLICY_FROM_PB, "pruning.policy"),
            "eta": p.eta or Pruning.eta,
            "promote": p.promote,
        }
    return out


def spec_dict_from_pb(s: pb.StudySpec) -> dict[str, Any]:
    params = [_param_dict_from_pb(p, i) for i, p in enumerate(s.parameters)]
    a = s.algorithm
    algorithm: dict[str, Any] = {
        "n_initial": a.n_initial,
        "seed": a.seed if a.HasField("seed") else None,
        "device": a.device or "auto",
        "max_fit_points": a.max_fit_points or 1000,
        "max_model_points": a.max_model_points or max(3000, a.max_fit_points),
        "prior_exponent": a.prior_exponent or AlgorithmOptions.prior_exponent,
        "exploit_gap": max(0, a.exploit_gap) if a.exploit_gap else AlgorithmOptions.exploit_gap,
        "reference_point": dict(a.reference_point) or None,
    }
    priors = []
    for p in s.priors:
        priors.append(
            {
                "parameter": p.parameter,
                "mean": p.mean if p.HasField("mean") else None,
                "std": p.std if p.HasField("std") else None,
                "probabilities": dict(p.probabilities) or None,
                "confidence": p.confidence or 0.5,
                "source": "user",
            }
        )
    return {
        "parameters": params,
        "parameter_constraints": [
            {"coefficients": dict(c.coefficients), "bound": c.bound}
            for c in s.parameter_constraints
        ],
        "objectives": [
            {
                "name": o.name,
                "goal": _enum(o.goal, _GOAL_FROM_PB, f"objectives[{i}].goal"),
                "noise": _enum(o.noise, _NOISE_FROM_PB, f"objectives[{i}].noise"),
            }
            for i, o in enumerate(s.objectives)
        ],
        "outcome_constraints": [
            {
                "metric": c.metric,
                "op": _enum(c.op, _OP_FROM_PB, f"outcome_constraints[{i}].op"),
                "bound": c.bound,
            }
            for i, c in enumerate(s.outcome_constraints)
        ],
        "tracked_metrics": list(s.tracked_metrics),
        "algorithm": algorithm,
        "description": s.description,
        "priors": priors,
        "llm": {
            "enabled": s.llm.enabled,
            "warmstart_candidates": s.llm.warmstart_candidates,
            "derive_priors": s.llm.derive_priors,
            "propose_during_search": s.llm.propose_during_search,
            "model": s.llm.model,
        },
        **_budgets_from_pb(s),
        "transfer": {
            "sources": list(s.transfer.sources),
            "auto": s.transfer.auto,
            "max_sources": s.transfer.max_sources,
        },
    }


# A parameter kind's proto message is the ``kind`` oneof field named as the kind (``float``,
# ``ordinal``, ...); its fields are the dataclass's, with ``scale`` for ``log`` and a
# ParameterValue for a fixed value: so one pair of functions maps every kind.
def _param_dict_from_pb(p: pb.ParameterSpec, i: int) -> dict[str, Any]:
    kind = p.WhichOneof("kind")
    if kind is None:
        raise SpecError(
            f"parameters[{i}]",
            f"parameter {p.name!r} has no kind: set one of {', '.join(PARAM_KINDS)}",
        )
    msg = getattr(p, kind)
    d: dict[str, Any] = {"type": kind, "name": p.name}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        if f.name == "scale":
            d["log"] = _log(v, f"parameters[{i}].{kind}.scale")
        elif f.message_type is not None and f.message_type.name == "ParameterValue":
            d[f.name] = value_from_pb(v, f"parameters[{i}].{kind}.{f.name}")
        else:
            d[f.name] = list(v) if f.is_repeated else v
    return d


def _param_to_pb(p: Param, ps: pb.ParameterSpec) -> None:
    msg = getattr(ps, p.kind)
    for f in msg.DESCRIPTOR.fields:
        v = getattr(p, "log" if f.name == "scale" else f.name)
        if f.name == "scale":
            msg.scale = _scale(v)
        elif f.message_type is not None and f.message_type.name == "ParameterValue":
            getattr(msg, f.name).CopyFrom(value_to_pb(v))
        elif f.is_repeated:
            getattr(msg, f.name).extend(_as_field(f, x) for x in v)
        else:
            setattr(msg, f.name, _as_field(f, v))
    msg.SetInParent()  # a kind whose fields are all defaults is still set


def _as_field(f, v: Any) -> Any:
    """``v`` as the proto field's scalar type (a float-valued int bound, an int ordinal value)."""
    if f.cpp_type == f.CPPTYPE_DOUBLE:
        return float(v)
    if f.cpp_type == f.CPPTYPE_INT64:
        return int(v)
    return v


def _scale(log: bool) -> int:
    return pb.SCALE_LOG if log else pb.SCALE_LINEAR


def spec_to_pb(spec: StudySpec) -> pb.StudySpec:
    out = pb.StudySpec(description=spec.description, tracked_metrics=list(spec.tracked_metrics))
    for p in spec.space.params:
        _param_to_pb(p, out.parameters.add(name=p.name))
    for c in spec.space.constraints:
        out.parameter_constraints.add(
            coefficients={k: float(v) for k, v in c.coefficients.items()}, bound=float(c.bound)
        )
    for o in spec.objectives:
        out.objectives.add(
            name=o.name,
            goal=pb.GOAL_MAXIMIZE if o.goal == MAXIMIZE else pb.GOAL_MINIMIZE,
            noise=_NOISE_TO_PB[o.noise],
        )
    for oc in spec.outcome_constraints:
        out.outcome_constraints.add(
            metric=oc.metric,
            op=pb.CONSTRAINT_OP_GREATER_EQUAL if oc.op == ">=" else pb.CONSTRAINT_OP_LESS_EQUAL,
            bound=float(oc.bound),
        )
    a = spec.algorithm
    out.algorithm.n_initial = a.n_initial
    if a.seed is not None:
        out.algorithm.seed = int(a.seed)
    out.algorithm.device = a.device
    out.algorithm.max_fit_points = a.max_fit_points
    out.algorithm.max_model_points = a.max_model_points
    out.algorithm.prior_exponent = a.prior_exponent
    out.algorithm.exploit_gap = a.exploit_gap if a.exploit_gap > 0 else -1
    for k, v in (a.reference_point or {}).items():
        out.algorithm.reference_point[k] = float(v)
    for prior in spec.priors:
        pp = out.priors.add(parameter=prior.parameter, confidence=prior.confidence)
        if prior.mean is not None:
            pp.mean = float(prior.mean)
        if prior.std is not None:
            pp.std = float(prior.std)
        for k, v in (prior.probabilities or {}).items():
            pp.probabilities[k] = float(v)
    out.llm.CopyFrom(
        pb.LlmOptions(
            enabled=spec.llm.enabled,
            warmstart_candidates=spec.llm.warmstart_candidates,
            derive_priors=spec.llm.derive_priors,
            propose_during_search=spec.llm.propose_during_search,
            model=spec.llm.model,
        )
    )
    if spec.fidelity is not None:
        f = spec.fidelity
        out.fidelity.CopyFrom(
            pb.Fidelity(name=f.name, min=float(f.min), max=float(f.max), integer=f.integer)
        )
    if spec.pruning != Pruning() or spec.fidelity is not None:
        out.pruning.CopyFrom(
            pb.Pruning(
                policy=POLICY_TO_PB[spec.pruning.policy],
                eta=float(spec.pruning.eta),
                promote=spec.pruning.promote,
            )
        )
    t = spec.transfer
    out.transfer.CopyFrom(
        pb.TransferOptions(sources=list(t.sources), auto=t.auto, max_sources=t.max_sources)
    )
    return out


# ---- trials, studies, LLM calls ----------------------------------------------------------------


def trial_to_pb(t: Trial, study: Study | None = None) -> pb.Trial:
    """A trial of ``study`` (its space types the values; its uid goes along for the worker's calls)."""
    by = study.spec.space.by_name if study is not None else {}
    out = pb.Trial(
        id=t.id,
        state=TRIAL_STATE_TO_PB[t.state],
        origin=t.origin,
        reason=t.reason,
        rationale=t.rationale,
        worker_id=t.worker_id,
        create_time=timestamp(t.created_at),
        update_time=timestamp(t.updated_at),
        study_uid=study.uid if study is not None else "",
        budget=t.budget or 0.0,
        bracket=t.bracket or 0,
        resume_budget=t.resume_budget or 0.0,
    )
    for k, v in t.params.items():
        out.parameters[k].CopyFrom(value_to_pb(v, by.get(k)))
    metrics_to_pb(t.metrics, out.metrics)
    if t.lease_expires_at is not None and t.state is TrialState.PENDING:
        out.lease_expire_time.CopyFrom(timestamp(t.lease_expires_at))
    return out


def study_to_pb(info: StudyInfo) -> pb.Study:
    return pb.Study(
        name=info.name,
        spec=spec_to_pb(info.spec),
        state=STUDY_STATE_TO_PB.get(info.state, pb.STUDY_STATE_ACTIVE),
        state_reason=info.state_reason,
        create_time=timestamp(info.created_at),
        trial_count=info.trial_count,
        completed_count=info.completed_count,
        uid=info.uid,
        transfer=transfer_to_pb(info.transfer) if info.transfer else None,
    )


def transfer_to_pb(record: Mapping[str, Any]) -> pb.TransferInfo:
    """A study's stored transfer record (:func:`bbo.transfer.resolve_sources`, weights from asks)."""
    weights = record.get("weights") or {}
    by_metric = weights.get("by_metric") or {}
    deleted = set(record.get("deleted") or ())
    out = pb.TransferInfo(
        target_weights={k: float(v) for k, v in (weights.get("target") or {}).items()},
        weights_at_trials=int(weights.get("n") or 0),
        note=str(record.get("note") or ""),
    )
    for ref in source_refs(record):
        out.sources.add(
            name=ref.name,
            uid=ref.uid,
            relatedness=float(ref.relatedness),
            why=ref.why,
            named=bool(ref.explicit),
            state="deleted" if ref.uid in deleted else "used",
            weights={m: float(w[ref.uid]) for m, w in by_metric.items() if ref.uid in w},
        )
    return out


def llm_call_to_pb(c: LlmCallRecord) -> svc.LlmCall:
    return svc.LlmCall(
        purpose=c.purpose,
        model=c.model,
        prompt=c.prompt,
        response=c.response,
        outcome=c.outcome,
        prompt_tokens=min(max(int(c.prompt_tokens), 0), INT32_MAX),
        completion_tokens=min(max(int(c.completion_tokens), 0), INT32_MAX),
        latency_seconds=c.latency_seconds,
        create_time=timestamp(c.created_at),
    )
