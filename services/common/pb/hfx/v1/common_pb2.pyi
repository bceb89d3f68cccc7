from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_COLOCATED: _ClassVar[Role]
    ROLE_PREFILL: _ClassVar[Role]
    ROLE_DECODE: _ClassVar[Role]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_ABORT: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]
    FINISH_REASON_PREEMPTED: _ClassVar[FinishReason]
ROLE_UNSPECIFIED: Role
ROLE_COLOCATED: Role
ROLE_PREFILL: Role
ROLE_DECODE: Role
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_ABORT: FinishReason
FINISH_REASON_ERROR: FinishReason
FINISH_REASON_PREEMPTED: FinishReason

class Slo(_message.Message):
    __slots__ = ("ttft_ms", "tpot_ms")
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    ttft_ms: float
    tpot_ms: float
    def __init__(self, ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("instance_id", "running_requests", "waiting_requests", "kv_usage", "kv_capacity_tokens", "recent_step_ms", "reported_unix_s", "draining", "recent_steps", "steps_total", "running", "lists_running", "reports_step", "step_in_flight")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WAITING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECENT_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RECENT_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LISTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    REPORTS_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    running_requests: int
    waiting_requests: int
    kv_usage: float
    kv_capacity_tokens: int
    recent_step_ms: _containers.RepeatedScalarFieldContainer[float]
    reported_unix_s: float
    draining: bool
    recent_steps: _containers.RepeatedCompositeFieldContainer[StepSample]
    steps_total: int
    running: _containers.RepeatedCompositeFieldContainer[RunningEntry]
    lists_running: bool
    reports_step: bool
    step_in_flight: StepInFlight
    def __init__(self, instance_id: _Optional[str] = ..., running_requests: _Optional[int] = ..., waiting_requests: _Optional[int] = ..., kv_usage: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ..., recent_step_ms: _Optional[_Iterable[float]] = ..., reported_unix_s: _Optional[float] = ..., draining: _Optional[bool] = ..., recent_steps: _Optional[_Iterable[_Union[StepSample, _Mapping]]] = ..., steps_total: _Optional[int] = ..., running: _Optional[_Iterable[_Union[RunningEntry, _Mapping]]] = ..., lists_running: _Optional[bool] = ..., reports_step: _Optional[bool] = ..., step_in_flight: _Optional[_Union[StepInFlight, _Mapping]] = ...) -> None: ...

class StepInFlight(_message.Message):
    __slots__ = ("started_unix_s", "prefill_tokens", "decode_seqs", "kv_tokens")
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SEQS_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_FIELD_NUMBER: _ClassVar[int]
    started_unix_s: float
    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int
    def __init__(self, started_unix_s: _Optional[float] = ..., prefill_tokens: _Optional[int] = ..., decode_seqs: _Optional[int] = ..., kv_tokens: _Optional[int] = ...) -> None: ...

class RunningEntry(_message.Message):
    __slots__ = ("request_id", "prompt_tokens", "max_tokens", "output_tokens", "slo", "priority", "started_unix_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int
    slo: Slo
    priority: int
    started_unix_s: float
    def __init__(self, request_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., slo: _Optional[_Union[Slo, _Mapping]] = ..., priority: _Optional[int] = ..., started_unix_s: _Optional[float] = ...) -> None: ...

class StepSample(_message.Message):
    __slots__ = ("prefill_tokens", "decode_seqs", "kv_tokens", "step_ms")
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SEQS_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int
    step_ms: float
    def __init__(self, prefill_tokens: _Optional[int] = ..., decode_seqs: _Optional[int] = ..., kv_tokens: _Optional[int] = ..., step_ms: _Optional[float] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("instance_id", "address", "role", "model", "engine", "device", "max_model_len", "load", "registered_unix_s", "weights_address", "weights_source", "startup_s", "role_reason", "role_changed_unix_s")
    class StartupSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STARTUP_S_FIELD_NUMBER: _ClassVar[int]
    ROLE_REASON_FIELD_NUMBER: _ClassVar[int]
    ROLE_CHANGED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    role: Role
    model: str
    engine: str
    device: str
    max_model_len: int
    load: LoadReport
    registered_unix_s: float
    weights_address: str
    weights_source: str
    startup_s: _containers.ScalarMap[str, float]
    role_reason: str
    role_changed_unix_s: float
    def __init__(self, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., model: _Optional[str] = ..., engine: _Optional[str] = ..., device: _Optional[str] = ..., max_model_len: _Optional[int] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., registered_unix_s: _Optional[float] = ..., weights_address: _Optional[str] = ..., weights_source: _Optional[str] = ..., startup_s: _Optional[_Mapping[str, float]] = ..., role_reason: _Optional[str] = ..., role_changed_unix_s: _Optional[float] = ...) -> None: ...
