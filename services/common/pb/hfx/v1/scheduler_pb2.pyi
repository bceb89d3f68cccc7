from services.common.pb.hfx.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ADMIT: _ClassVar[Verdict]
    VERDICT_BEST_EFFORT: _ClassVar[Verdict]
    VERDICT_REJECT: _ClassVar[Verdict]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_FINISHED: _ClassVar[Outcome]
    OUTCOME_ABORTED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
VERDICT_UNSPECIFIED: Verdict
VERDICT_ADMIT: Verdict
VERDICT_BEST_EFFORT: Verdict
VERDICT_REJECT: Verdict
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_FINISHED: Outcome
OUTCOME_ABORTED: Outcome
OUTCOME_FAILED: Outcome

class PlaceRequest(_message.Message):
    __slots__ = ("request_id", "prompt_tokens", "max_tokens", "slo", "priority", "task_class", "tenant", "arrival_unix_s", "resumed_tokens", "trace_context", "ticket_id")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TASK_CLASS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    RESUMED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_tokens: int
    max_tokens: int
    slo: _common_pb2.Slo
    priority: int
    task_class: str
    tenant: str
    arrival_unix_s: float
    resumed_tokens: int
    trace_context: _containers.ScalarMap[str, str]
    ticket_id: str
    def __init__(self, request_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., slo: _Optional[_Union[_common_pb2.Slo, _Mapping]] = ..., priority: _Optional[int] = ..., task_class: _Optional[str] = ..., tenant: _Optional[str] = ..., arrival_unix_s: _Optional[float] = ..., resumed_tokens: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., ticket_id: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("verdict", "instance_id", "address", "reason", "policy", "retry_after_ms", "predicted_ttft_ms", "slack_ms", "request_id", "error_code", "error_message", "legs")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    SLACK_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    instance_id: str
    address: str
    reason: str
    policy: str
    retry_after_ms: float
    predicted_ttft_ms: float
    slack_ms: float
    request_id: str
    error_code: int
    error_message: str
    legs: _containers.RepeatedCompositeFieldContainer[Leg]
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., instance_id: _Optional[str] = ..., address: _Optional[str] = ..., reason: _Optional[str] = ..., policy: _Optional[str] = ..., retry_after_ms: _Optional[float] = ..., predicted_ttft_ms: _Optional[float] = ..., slack_ms: _Optional[float] = ..., request_id: _Optional[str] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[Leg, _Mapping]]] = ...) -> None: ...

class Leg(_message.Message):
    __slots__ = ("role", "instance_id", "address")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    role: _common_pb2.Role
    instance_id: str
    address: str
    def __init__(self, role: _Optional[_Union[_common_pb2.Role, str]] = ..., instance_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("places", "completes", "cancel_request_ids")
    PLACES_FIELD_NUMBER: _ClassVar[int]
    COMPLETES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    places: _containers.RepeatedCompositeFieldContainer[PlaceRequest]
    completes: _containers.RepeatedCompositeFieldContainer[CompleteRequest]
    cancel_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, places: _Optional[_Iterable[_Union[PlaceRequest, _Mapping]]] = ..., completes: _Optional[_Iterable[_Union[CompleteRequest, _Mapping]]] = ..., cancel_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LinkResponse(_message.Message):
    __slots__ = ("placements", "tickets")
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    tickets: TicketSet
    def __init__(self, placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., tickets: _Optional[_Union[TicketSet, _Mapping]] = ...) -> None: ...

class TicketSet(_message.Message):
    __slots__ = ("tickets",)
    TICKETS_FIELD_NUMBER: _ClassVar[int]
    tickets: _containers.RepeatedCompositeFieldContainer[Ticket]
    def __init__(self, tickets: _Optional[_Iterable[_Union[Ticket, _Mapping]]] = ...) -> None: ...

class Ticket(_message.Message):
    __slots__ = ("ticket_id", "instance_id", "address", "max_prompt_tokens", "max_tokens", "min_ttft_ms", "min_tpot_ms", "predicted_ttft_ms", "rank", "reason", "policy")
    TICKET_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ticket_id: str
    instance_id: str
    address: str
    max_prompt_tokens: int
    max_tokens: int
    min_ttft_ms: float
    min_tpot_ms: float
    predicted_ttft_ms: float
    rank: int
    reason: str
    policy: str
    def __init__(self, ticket_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., address: _Optional[str] = ..., max_prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., min_ttft_ms: _Optional[float] = ..., min_tpot_ms: _Optional[float] = ..., predicted_ttft_ms: _Optional[float] = ..., rank: _Optional[int] = ..., reason: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("request_id", "instance_id", "outcome", "ttft_ms", "tpot_ms", "output_tokens", "slo_met", "task_class", "trace_context", "leg")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SLO_MET_FIELD_NUMBER: _ClassVar[int]
    TASK_CLASS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LEG_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    instance_id: str
    outcome: Outcome
    ttft_ms: float
    tpot_ms: float
    output_tokens: int
    slo_met: bool
    task_class: str
    trace_context: _containers.ScalarMap[str, str]
    leg: _common_pb2.Role
    def __init__(self, request_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ..., output_tokens: _Optional[int] = ..., slo_met: _Optional[bool] = ..., task_class: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., leg: _Optional[_Union[_common_pb2.Role, str]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportLoadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterState(_message.Message):
    __slots__ = ("instances", "policy", "inflight_requests")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_common_pb2.Instance]
    policy: str
    inflight_requests: int
    def __init__(self, instances: _Optional[_Iterable[_Union[_common_pb2.Instance, _Mapping]]] = ..., policy: _Optional[str] = ..., inflight_requests: _Optional[int] = ...) -> None: ...
