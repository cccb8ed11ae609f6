import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scale(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALE_LINEAR: _ClassVar[Scale]
    SCALE_LOG: _ClassVar[Scale]

class Goal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GOAL_MINIMIZE: _ClassVar[Goal]
    GOAL_MAXIMIZE: _ClassVar[Goal]

class ObservationNoise(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVATION_NOISE_AUTO: _ClassVar[ObservationNoise]
    OBSERVATION_NOISE_NOISY: _ClassVar[ObservationNoise]
    OBSERVATION_NOISE_DETERMINISTIC: _ClassVar[ObservationNoise]

class ConstraintOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSTRAINT_OP_LESS_EQUAL: _ClassVar[ConstraintOp]
    CONSTRAINT_OP_GREATER_EQUAL: _ClassVar[ConstraintOp]

class PruningPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNING_POLICY_UNSPECIFIED: _ClassVar[PruningPolicy]
    PRUNING_POLICY_MEDIAN: _ClassVar[PruningPolicy]
    PRUNING_POLICY_ASHA: _ClassVar[PruningPolicy]
    PRUNING_POLICY_HYPERBAND: _ClassVar[PruningPolicy]
    PRUNING_POLICY_NONE: _ClassVar[PruningPolicy]

class StudyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STUDY_STATE_ACTIVE: _ClassVar[StudyState]
    STUDY_STATE_LIKELY_INFEASIBLE: _ClassVar[StudyState]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_PENDING: _ClassVar[TrialState]
    TRIAL_STATE_COMPLETED: _ClassVar[TrialState]
    TRIAL_STATE_FAILED: _ClassVar[TrialState]
    TRIAL_STATE_ABANDONED: _ClassVar[TrialState]
    TRIAL_STATE_PAUSED: _ClassVar[TrialState]
    TRIAL_STATE_PRUNED: _ClassVar[TrialState]
SCALE_LINEAR: Scale
SCALE_LOG: Scale
GOAL_MINIMIZE: Goal
GOAL_MAXIMIZE: Goal
OBSERVATION_NOISE_AUTO: ObservationNoise
OBSERVATION_NOISE_NOISY: ObservationNoise
OBSERVATION_NOISE_DETERMINISTIC: ObservationNoise
CONSTRAINT_OP_LESS_EQUAL: ConstraintOp
CONSTRAINT_OP_GREATER_EQUAL: ConstraintOp
PRUNING_POLICY_UNSPECIFIED: PruningPolicy
PRUNING_POLICY_MEDIAN: PruningPolicy
PRUNING_POLICY_ASHA: PruningPolicy
PRUNING_POLICY_HYPERBAND: PruningPolicy
PRUNING_POLICY_NONE: PruningPolicy
STUDY_STATE_ACTIVE: StudyState
STUDY_STATE_LIKELY_INFEASIBLE: StudyState
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_PENDING: TrialState
TRIAL_STATE_COMPLETED: TrialState
TRIAL_STATE_FAILED: TrialState
TRIAL_STATE_ABANDONED: TrialState
TRIAL_STATE_PAUSED: TrialState
TRIAL_STATE_PRUNED: TrialState

class FloatParameter(_message.Message):
    __slots__ = ("low", "high", "scale")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    scale: Scale
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., scale: _Optional[_Union[Scale, str]] = ...) -> None: ...

class IntParameter(_message.Message):
    __slots__ = ("low", "high", "scale")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    scale: Scale
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ..., scale: _Optional[_Union[Scale, str]] = ...) -> None: ...

class CategoricalParameter(_message.Message):
    __slots__ = ("choices",)
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, choices: _Optional[_Iterable[str]] = ...) -> None: ...

class OrdinalParameter(_message.Message):
    __slots__ = ("values", "scale")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    scale: Scale
    def __init__(self, values: _Optional[_Iterable[float]] = ..., scale: _Optional[_Union[Scale, str]] = ...) -> None: ...

class ParameterValue(_message.Message):
    __slots__ = ("number", "integer", "category")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    category: str
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., category: _Optional[str] = ...) -> None: ...

class FixedParameter(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: ParameterValue
    def __init__(self, value: _Optional[_Union[ParameterValue, _Mapping]] = ...) -> None: ...

class ParameterSpec(_message.Message):
    __slots__ = ("name", "float", "int", "categorical", "ordinal", "fixed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLOAT_FIELD_NUMBER: _ClassVar[int]
    INT_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FIELD_NUMBER: _ClassVar[int]
    ORDINAL_FIELD_NUMBER: _ClassVar[int]
    FIXED_FIELD_NUMBER: _ClassVar[int]
    name: str
    float: FloatParameter
    int: IntParameter
    categorical: CategoricalParameter
    ordinal: OrdinalParameter
    fixed: FixedParameter
    def __init__(self, name: _Optional[str] = ..., float: _Optional[_Union[FloatParameter, _Mapping]] = ..., int: _Optional[_Union[IntParameter, _Mapping]] = ..., categorical: _Optional[_Union[CategoricalParameter, _Mapping]] = ..., ordinal: _Optional[_Union[OrdinalParameter, _Mapping]] = ..., fixed: _Optional[_Union[FixedParameter, _Mapping]] = ...) -> None: ...

class LinearConstraint(_message.Message):
    __slots__ = ("coefficients", "bound")
    class CoefficientsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    coefficients: _containers.ScalarMap[str, float]
    bound: float
    def __init__(self, coefficients: _Optional[_Mapping[str, float]] = ..., bound: _Optional[float] = ...) -> None: ...

class Objective(_message.Message):
    __slots__ = ("name", "goal", "noise")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    name: str
    goal: Goal
    noise: ObservationNoise
    def __init__(self, name: _Optional[str] = ..., goal: _Optional[_Union[Goal, str]] = ..., noise: _Optional[_Union[ObservationNoise, str]] = ...) -> None: ...

class OutcomeConstraint(_message.Message):
    __slots__ = ("metric", "op", "bound")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    metric: str
    op: ConstraintOp
    bound: float
    def __init__(self, metric: _Optional[str] = ..., op: _Optional[_Union[ConstraintOp, str]] = ..., bound: _Optional[float] = ...) -> None: ...

class AlgorithmOptions(_message.Message):
    __slots__ = ("n_initial", "seed", "device", "max_fit_points", "max_model_points", "reference_point", "prior_exponent", "exploit_gap")
    class ReferencePointEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    N_INITIAL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIT_POINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_POINTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_POINT_FIELD_NUMBER: _ClassVar[int]
    PRIOR_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    EXPLOIT_GAP_FIELD_NUMBER: _ClassVar[int]
    n_initial: int
    seed: int
    device: str
    max_fit_points: int
    max_model_points: int
    reference_point: _containers.ScalarMap[str, float]
    prior_exponent: float
    exploit_gap: int
    def __init__(self, n_initial: _Optional[int] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., max_fit_points: _Optional[int] = ..., max_model_points: _Optional[int] = ..., reference_point: _Optional[_Mapping[str, float]] = ..., prior_exponent: _Optional[float] = ..., exploit_gap: _Optional[int] = ...) -> None: ...

class ParameterPrior(_message.Message):
    __slots__ = ("parameter", "mean", "std", "probabilities", "confidence")
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    parameter: str
    mean: float
    std: float
    probabilities: _containers.ScalarMap[str, float]
    confidence: float
    def __init__(self, parameter: _Optional[str] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., probabilities: _Optional[_Mapping[str, float]] = ..., confidence: _Optional[float] = ...) -> None: ...

class LlmOptions(_message.Message):
    __slots__ = ("enabled", "warmstart_candidates", "derive_priors", "propose_during_search", "model")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    WARMSTART_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DERIVE_PRIORS_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_DURING_SEARCH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    warmstart_candidates: int
    derive_priors: bool
    propose_during_search: bool
    model: str
    def __init__(self, enabled: _Optional[bool] = ..., warmstart_candidates: _Optional[int] = ..., derive_priors: _Optional[bool] = ..., propose_during_search: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class Fidelity(_message.Message):
    __slots__ = ("name", "min", "max", "integer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: float
    max: float
    integer: bool
    def __init__(self, name: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., integer: _Optional[bool] = ...) -> None: ...

class Pruning(_message.Message):
    __slots__ = ("policy", "eta", "promote")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    policy: PruningPolicy
    eta: float
    promote: bool
    def __init__(self, policy: _Optional[_Union[PruningPolicy, str]] = ..., eta: _Optional[float] = ..., promote: _Optional[bool] = ...) -> None: ...

class TransferOptions(_message.Message):
    __slots__ = ("sources", "auto", "max_sources")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    MAX_SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedScalarFieldContainer[str]
    auto: bool
    max_sources: int
    def __init__(self, sources: _Optional[_Iterable[str]] = ..., auto: _Optional[bool] = ..., max_sources: _Optional[int] = ...) -> None: ...

class StudySpec(_message.Message):
    __slots__ = ("parameters", "parameter_constraints", "objectives", "outcome_constraints", "tracked_metrics", "algorithm", "description", "priors", "llm", "fidelity", "pruning", "transfer")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    TRACKED_METRICS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PRIORS_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterSpec]
    parameter_constraints: _containers.RepeatedCompositeFieldContainer[LinearConstraint]
    objectives: _containers.RepeatedCompositeFieldContainer[Objective]
    outcome_constraints: _containers.RepeatedCompositeFieldContainer[OutcomeConstraint]
    tracked_metrics: _containers.RepeatedScalarFieldContainer[str]
    algorithm: AlgorithmOptions
    description: str
    priors: _containers.RepeatedCompositeFieldContainer[ParameterPrior]
    llm: LlmOptions
    fidelity: Fidelity
    pruning: Pruning
    transfer: TransferOptions
    def __init__(self, parameters: _Optional[_Iterable[_Union[ParameterSpec, _Mapping]]] = ..., parameter_constraints: _Optional[_Iterable[_Union[LinearConstraint, _Mapping]]] = ..., objectives: _Optional[_Iterable[_Union[Objective, _Mapping]]] = ..., outcome_constraints: _Optional[_Iterable[_Union[OutcomeConstraint, _Mapping]]] = ..., tracked_metrics: _Optional[_Iterable[str]] = ..., algorithm: _Optional[_Union[AlgorithmOptions, _Mapping]] = ..., description: _Optional[str] = ..., priors: _Optional[_Iterable[_Union[ParameterPrior, _Mapping]]] = ..., llm: _Optional[_Union[LlmOptions, _Mapping]] = ..., fidelity: _Optional[_Union[Fidelity, _Mapping]] = ..., pruning: _Optional[_Union[Pruning, _Mapping]] = ..., transfer: _Optional[_Union[TransferOptions, _Mapping]] = ...) -> None: ...

class TransferSource(_message.Message):
    __slots__ = ("name", "uid", "relatedness", "why", "named", "state", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    RELATEDNESS_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    uid: str
    relatedness: float
    why: str
    named: bool
    state: str
    weights: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., uid: _Optional[str] = ..., relatedness: _Optional[float] = ..., why: _Optional[str] = ..., named: _Optional[bool] = ..., state: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TransferInfo(_message.Message):
    __slots__ = ("sources", "target_weights", "weights_at_trials", "note")
    class TargetWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TARGET_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_AT_TRIALS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[TransferSource]
    target_weights: _containers.ScalarMap[str, float]
    weights_at_trials: int
    note: str
    def __init__(self, sources: _Optional[_Iterable[_Union[TransferSource, _Mapping]]] = ..., target_weights: _Optional[_Mapping[str, float]] = ..., weights_at_trials: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("name", "spec", "state", "state_reason", "create_time", "trial_count", "completed_count", "uid", "transfer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRIAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: StudySpec
    state: StudyState
    state_reason: str
    create_time: _timestamp_pb2.Timestamp
    trial_count: int
    completed_count: int
    uid: str
    transfer: TransferInfo
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[StudySpec, _Mapping]] = ..., state: _Optional[_Union[StudyState, str]] = ..., state_reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trial_count: _Optional[int] = ..., completed_count: _Optional[int] = ..., uid: _Optional[str] = ..., transfer: _Optional[_Union[TransferInfo, _Mapping]] = ...) -> None: ...

class MetricValue(_message.Message):
    __slots__ = ("value", "sem")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SEM_FIELD_NUMBER: _ClassVar[int]
    value: float
    sem: float
    def __init__(self, value: _Optional[float] = ..., sem: _Optional[float] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("id", "parameters", "state", "metrics", "origin", "reason", "rationale", "worker_id", "create_time", "update_time", "lease_expire_time", "study_uid", "budget", "bracket", "resume_budget")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParameterValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParameterValue, _Mapping]] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetricValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    BRACKET_FIELD_NUMBER: _ClassVar[int]
    RESUME_BUDGET_FIELD_NUMBER: _ClassVar[int]
    id: int
    parameters: _containers.MessageMap[str, ParameterValue]
    state: TrialState
    metrics: _containers.MessageMap[str, MetricValue]
    origin: str
    reason: str
    rationale: str
    worker_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    lease_expire_time: _timestamp_pb2.Timestamp
    study_uid: str
    budget: float
    bracket: int
    resume_budget: float
    def __init__(self, id: _Optional[int] = ..., parameters: _Optional[_Mapping[str, ParameterValue]] = ..., state: _Optional[_Union[TrialState, str]] = ..., metrics: _Optional[_Mapping[str, MetricValue]] = ..., origin: _Optional[str] = ..., reason: _Optional[str] = ..., rationale: _Optional[str] = ..., worker_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., study_uid: _Optional[str] = ..., budget: _Optional[float] = ..., bracket: _Optional[int] = ..., resume_budget: _Optional[float] = ...) -> None: ...
