from services.common.pb.hfx.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerGenerateRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "priority", "slo", "arrival_unix_s", "first_token_unix_s", "kv_transfer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    priority: int
    slo: _common_pb2.Slo
    arrival_unix_s: float
    first_token_unix_s: float
    kv_transfer: KvTransferParams
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., priority: _Optional[int] = ..., slo: _Optional[_Union[_common_pb2.Slo, _Mapping]] = ..., arrival_unix_s: _Optional[float] = ..., first_token_unix_s: _Optional[float] = ..., kv_transfer: _Optional[_Union[KvTransferParams, _Mapping]] = ...) -> None: ...

class KvTransferParams(_message.Message):
    __slots__ = ("do_remote_decode", "do_remote_prefill", "remote_address", "transfer_id", "num_tokens", "num_blocks", "lease_s", "lease_expiry_unix_s")
    DO_REMOTE_DECODE_FIELD_NUMBER: _ClassVar[int]
    DO_REMOTE_PREFILL_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRY_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    do_remote_decode: bool
    do_remote_prefill: bool
    remote_address: str
    transfer_id: str
    num_tokens: int
    num_blocks: int
    lease_s: float
    lease_expiry_unix_s: float
    def __init__(self, do_remote_decode: _Optional[bool] = ..., do_remote_prefill: _Optional[bool] = ..., remote_address: _Optional[str] = ..., transfer_id: _Optional[str] = ..., num_tokens: _Optional[int] = ..., num_blocks: _Optional[int] = ..., lease_s: _Optional[float] = ..., lease_expiry_unix_s: _Optional[float] = ...) -> None: ...

class WorkerChunk(_message.Message):
    __slots__ = ("token_ids", "text", "finished", "finish_reason", "prompt_tokens", "request_id", "error_code", "error_message", "kv_transfer")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finished: bool
    finish_reason: _common_pb2.FinishReason
    prompt_tokens: int
    request_id: str
    error_code: int
    error_message: str
    kv_transfer: KvTransferParams
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., request_id: _Optional[str] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., kv_transfer: _Optional[_Union[KvTransferParams, _Mapping]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("start", "abort_request_id", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    START_FIELD_NUMBER: _ClassVar[int]
    ABORT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    start: WorkerGenerateRequest
    abort_request_id: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, start: _Optional[_Union[WorkerGenerateRequest, _Mapping]] = ..., abort_request_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SessionBatch(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[WorkerChunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[WorkerChunk, _Mapping]]] = ...) -> None: ...

class WorkerAbortRequest(_message.Message):
    __slots__ = ("request_id", "preempt", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    preempt: bool
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., preempt: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkerAbortResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("remaining",)
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    remaining: int
    def __init__(self, remaining: _Optional[int] = ...) -> None: ...

class LoadWeightsRequest(_message.Message):
    __slots__ = ("donor_address",)
    DONOR_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    donor_address: str
    def __init__(self, donor_address: _Optional[str] = ...) -> None: ...

class LoadWeightsResponse(_message.Message):
    __slots__ = ("weights_source", "load_s")
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOAD_S_FIELD_NUMBER: _ClassVar[int]
    weights_source: str
    load_s: float
    def __init__(self, weights_source: _Optional[str] = ..., load_s: _Optional[float] = ...) -> None: ...

class PrepareWeightsRequest(_message.Message):
    __slots__ = ("donor_address",)
    DONOR_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    donor_address: str
    def __init__(self, donor_address: _Optional[str] = ...) -> None: ...

class PrepareWeightsResponse(_message.Message):
    __slots__ = ("prepared", "detail", "seconds")
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    prepared: bool
    detail: str
    seconds: float
    def __init__(self, prepared: _Optional[bool] = ..., detail: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class SetRoleRequest(_message.Message):
    __slots__ = ("role", "reason")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    role: _common_pb2.Role
    reason: str
    def __init__(self, role: _Optional[_Union[_common_pb2.Role, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetRoleResponse(_message.Message):
    __slots__ = ("previous", "changed", "inflight", "changed_unix_s")
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    previous: _common_pb2.Role
    changed: bool
    inflight: int
    changed_unix_s: float
    def __init__(self, previous: _Optional[_Union[_common_pb2.Role, str]] = ..., changed: _Optional[bool] = ..., inflight: _Optional[int] = ..., changed_unix_s: _Optional[float] = ...) -> None: ...
