import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from bbo_client.v1 import study_pb2 as _study_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateStudyRequest(_message.Message):
    __slots__ = ("name", "spec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _study_pb2.StudySpec
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_study_pb2.StudySpec, _Mapping]] = ...) -> None: ...

class CreateStudyResponse(_message.Message):
    __slots__ = ("study", "created")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    study: _study_pb2.Study
    created: bool
    def __init__(self, study: _Optional[_Union[_study_pb2.Study, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetStudyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies", "next_page_token")
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[_study_pb2.Study]
    next_page_token: str
    def __init__(self, studies: _Optional[_Iterable[_Union[_study_pb2.Study, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteStudyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteStudyResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("study", "count", "worker_id", "request_id", "lease_seconds")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    study: str
    count: int
    worker_id: str
    request_id: str
    lease_seconds: float
    def __init__(self, study: _Optional[str] = ..., count: _Optional[int] = ..., worker_id: _Optional[str] = ..., request_id: _Optional[str] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("trials", "note")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_study_pb2.Trial]
    note: str
    def __init__(self, trials: _Optional[_Iterable[_Union[_study_pb2.Trial, _Mapping]]] = ..., note: _Optional[str] = ...) -> None: ...

class TellRequest(_message.Message):
    __slots__ = ("study", "trial_id", "metrics", "state", "reason", "request_id", "study_uid", "budget")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _study_pb2.MetricValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_study_pb2.MetricValue, _Mapping]] = ...) -> None: ...
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    study: str
    trial_id: int
    metrics: _containers.MessageMap[str, _study_pb2.MetricValue]
    state: _study_pb2.TrialState
    reason: str
    request_id: str
    study_uid: str
    budget: float
    def __init__(self, study: _Optional[str] = ..., trial_id: _Optional[int] = ..., metrics: _Optional[_Mapping[str, _study_pb2.MetricValue]] = ..., state: _Optional[_Union[_study_pb2.TrialState, str]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., study_uid: _Optional[str] = ..., budget: _Optional[float] = ...) -> None: ...

class TellResponse(_message.Message):
    __slots__ = ("trial", "duplicate")
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    trial: _study_pb2.Trial
    duplicate: bool
    def __init__(self, trial: _Optional[_Union[_study_pb2.Trial, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class AddTrialRequest(_message.Message):
    __slots__ = ("study", "parameters", "metrics", "state", "request_id", "budget")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _study_pb2.ParameterValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_study_pb2.ParameterValue, _Mapping]] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _study_pb2.MetricValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_study_pb2.MetricValue, _Mapping]] = ...) -> None: ...
    STUDY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    study: str
    parameters: _containers.MessageMap[str, _study_pb2.ParameterValue]
    metrics: _containers.MessageMap[str, _study_pb2.MetricValue]
    state: _study_pb2.TrialState
    request_id: str
    budget: float
    def __init__(self, study: _Optional[str] = ..., parameters: _Optional[_Mapping[str, _study_pb2.ParameterValue]] = ..., metrics: _Optional[_Mapping[str, _study_pb2.MetricValue]] = ..., state: _Optional[_Union[_study_pb2.TrialState, str]] = ..., request_id: _Optional[str] = ..., budget: _Optional[float] = ...) -> None: ...

class GetTrialRequest(_message.Message):
    __slots__ = ("study", "trial_id")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    study: str
    trial_id: int
    def __init__(self, study: _Optional[str] = ..., trial_id: _Optional[int] = ...) -> None: ...

class ListTrialsRequest(_message.Message):
    __slots__ = ("study", "states", "page_size", "page_token")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    study: str
    states: _containers.RepeatedScalarFieldContainer[_study_pb2.TrialState]
    page_size: int
    page_token: str
    def __init__(self, study: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_study_pb2.TrialState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrialsResponse(_message.Message):
    __slots__ = ("trials", "next_page_token")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_study_pb2.Trial]
    next_page_token: str
    def __init__(self, trials: _Optional[_Iterable[_Union[_study_pb2.Trial, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBestRequest(_message.Message):
    __slots__ = ("study",)
    STUDY_FIELD_NUMBER: _ClassVar[int]
    study: str
    def __init__(self, study: _Optional[str] = ...) -> None: ...

class GetBestResponse(_message.Message):
    __slots__ = ("trials", "state", "state_reason", "selection", "estimate", "best_count")
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    BEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[_study_pb2.Trial]
    state: _study_pb2.StudyState
    state_reason: str
    selection: str
    estimate: Estimate
    best_count: int
    def __init__(self, trials: _Optional[_Iterable[_Union[_study_pb2.Trial, _Mapping]]] = ..., state: _Optional[_Union[_study_pb2.StudyState, str]] = ..., state_reason: _Optional[str] = ..., selection: _Optional[str] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., best_count: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("value", "lower", "upper")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    value: float
    lower: float
    upper: float
    def __init__(self, value: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class ReportIntermediateRequest(_message.Message):
    __slots__ = ("study", "trial_id", "step", "value", "study_uid", "budget")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    study: str
    trial_id: int
    step: int
    value: float
    study_uid: str
    budget: float
    def __init__(self, study: _Optional[str] = ..., trial_id: _Optional[int] = ..., step: _Optional[int] = ..., value: _Optional[float] = ..., study_uid: _Optional[str] = ..., budget: _Optional[float] = ...) -> None: ...

class ReportIntermediateResponse(_message.Message):
    __slots__ = ("should_stop", "reason")
    SHOULD_STOP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    should_stop: bool
    reason: str
    def __init__(self, should_stop: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("study", "trial_id", "lease_seconds", "study_uid")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    study: str
    trial_id: int
    lease_seconds: float
    study_uid: str
    def __init__(self, study: _Optional[str] = ..., trial_id: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., study_uid: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("trial",)
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    trial: _study_pb2.Trial
    def __init__(self, trial: _Optional[_Union[_study_pb2.Trial, _Mapping]] = ...) -> None: ...

class ListLlmCallsRequest(_message.Message):
    __slots__ = ("study", "page_size", "page_token", "purpose")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    study: str
    page_size: int
    page_token: str
    purpose: str
    def __init__(self, study: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class LlmCall(_message.Message):
    __slots__ = ("purpose", "model", "prompt", "response", "outcome", "prompt_tokens", "completion_tokens", "latency_seconds", "create_time")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    model: str
    prompt: str
    response: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, purpose: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., response: _Optional[str] = ..., outcome: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_seconds: _Optional[float] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListLlmCallsResponse(_message.Message):
    __slots__ = ("calls", "next_page_token")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[LlmCall]
    next_page_token: str
    def __init__(self, calls: _Optional[_Iterable[_Union[LlmCall, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
