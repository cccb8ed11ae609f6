"""Conversions between protobuf messages (bbo.v1) and the core's plain data. The only module that
knows both sides; the servicer calls these and nothing else touches protobuf fields."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from google.protobuf import timestamp_pb2

from bbo.errors import SpecError
from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam, Value
from bbo.spec import MAXIMIZE, MINIMIZE, AlgorithmOptions, StudySpec
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
}
TRIAL_STATE_FROM_PB = {v: k for k, v in TRIAL_STATE_TO_PB.items()}
STUDY_STATE_TO_PB = {
    StudyState.ACTIVE: pb.STUDY_STATE_ACTIVE,
    StudyState.LIKELY_INFEASIBLE: pb.STUDY_STATE_LIKELY_INFEASIBLE,
}


def timestamp(t: Optional[float]) -> Optional[timestamp_pb2.Timestamp]:
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


def _log(scale: int) -> bool:
    return scale == pb.SCALE_LOG


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


def spec_dict_from_pb(s: pb.StudySpec) -> dict[str, Any]:
    params = []
    for i, p in enumerate(s.parameters):
        kind = p.WhichOneof("kind")
        if kind == "float":
            params.append(
                {
                    "type": "float",
                    "name": p.name,
                    "low": p.float.low,
                    "high": p.float.high,
                    "log": _log(p.float.scale),
                }
            )
        elif kind == "int":
            params.append(
                {
                    "type": "int",
                    "name": p.name,
                    "low": p.int.low,
                    "high": p.int.high,
                    "log": _log(p.int.scale),
                }
            )
        elif kind == "categorical":
            params.append(
                {"type": "categorical", "name": p.name, "choices": list(p.categorical.choices)}
            )
        elif kind == "ordinal":
            params.append(
                {
                    "type": "ordinal",
                    "name": p.name,
                    "values": list(p.ordinal.values),
                    "log": _log(p.ordinal.scale),
                }
            )
        elif kind == "fixed":
            params.append(
                {
                    "type": "fixed",
                    "name": p.name,
                    "value": value_from_pb(p.fixed.value, f"parameters[{i}].fixed.value"),
                }
            )
        else:
            raise SpecError(
                f"parameters[{i}]",
                f"parameter {p.name!r} has no kind: set float, int, categorical, ordinal or fixed",
            )
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
            {"name": o.name, "goal": MAXIMIZE if o.goal == pb.GOAL_MAXIMIZE else MINIMIZE}
            for o in s.objectives
        ],
        "outcome_constraints": [
            {
                "metric": c.metric,
                "op": ">=" if c.op == pb.CONSTRAINT_OP_GREATER_EQUAL else "<=",
                "bound": c.bound,
            }
            for c in s.outcome_constraints
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
        "transfer": {
            "sources": list(s.transfer.sources),
            "auto": s.transfer.auto,
            "max_sources": s.transfer.max_sources,
        },
    }


def _scale(log: bool) -> int:
    return pb.SCALE_LOG if log else pb.SCALE_LINEAR


def spec_to_pb(spec: StudySpec) -> pb.StudySpec:
    out = pb.StudySpec(description=spec.description, tracked_metrics=list(spec.tracked_metrics))
    for p in spec.space.params:
        ps = out.parameters.add(name=p.name)
        if isinstance(p, FloatParam):
            ps.float.CopyFrom(
                pb.FloatParameter(low=float(p.low), high=float(p.high), scale=_scale(p.log))
            )
        elif isinstance(p, IntParam):
            ps.int.CopyFrom(pb.IntParameter(low=int(p.low), high=int(p.high), scale=_scale(p.log)))
        elif isinstance(p, CategoricalParam):
            ps.categorical.CopyFrom(pb.CategoricalParameter(choices=list(p.choices)))
        elif isinstance(p, OrdinalParam):
            ps.ordinal.CopyFrom(
                pb.OrdinalParameter(values=[float(v) for v in p.values], scale=_scale(p.log))
            )
        elif isinstance(p, FixedParam):
            ps.fixed.CopyFrom(pb.FixedParameter(value=value_to_pb(p.value)))
    for c in spec.space.constraints:
        out.parameter_constraints.add(
            coefficients={k: float(v) for k, v in c.coefficients.items()}, bound=float(c.bound)
        )
    for o in spec.objectives:
        out.objectives.add(
            name=o.name, goal=pb.GOAL_MAXIMIZE if o.goal == MAXIMIZE else pb.GOAL_MINIMIZE
        )
    for c in spec.outcome_constraints:
        out.outcome_constraints.add(
            metric=c.metric,
            op=pb.CONSTRAINT_OP_GREATER_EQUAL if c.op == ">=" else pb.CONSTRAINT_OP_LESS_EQUAL,
            bound=float(c.bound),
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
    for p in spec.priors:
        pp = out.priors.add(parameter=p.parameter, confidence=p.confidence)
        if p.mean is not None:
            pp.mean = float(p.mean)
        if p.std is not None:
            pp.std = float(p.std)
        for k, v in (p.probabilities or {}).items():
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
    t = spec.transfer
    out.transfer.CopyFrom(
        pb.TransferOptions(sources=list(t.sources), auto=t.auto, max_sources=t.max_sources)
    )
    return out


# ---- trials, studies, LLM calls ----------------------------------------------------------------


def trial_to_pb(t: Trial, study: Optional[Study] = None) -> pb.Trial:
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
