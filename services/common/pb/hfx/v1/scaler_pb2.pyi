from services.common.pb.hfx.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_STOPPING: _ClassVar[WorkerState]
    WORKER_STATE_EXITED: _ClassVar[WorkerState]
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_STOPPING: WorkerState
WORKER_STATE_EXITED: WorkerState

class ScaleRequest(_message.Message):
    __slots__ = ("decision_id", "role", "replicas", "reason")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    role: _common_pb2.Role
    replicas: int
    reason: str
    def __init__(self, decision_id: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., replicas: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ScaleResponse(_message.Message):
    __slots__ = ("decision_id", "applied", "replicas")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    applied: bool
    replicas: int
    def __init__(self, decision_id: _Optional[str] = ..., applied: _Optional[bool] = ..., replicas: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ManagedWorker(_message.Message):
    __slots__ = ("instance_id", "address", "role", "state", "pid", "restarts", "exit_code")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    role: _common_pb2.Role
    state: WorkerState
    pid: int
    restarts: int
    exit_code: int
    def __init__(self, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., state: _Optional[_Union[WorkerState, str]] = ..., pid: _Optional[int] = ..., restarts: _Optional[int] = ..., exit_code: _Optional[int] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[ManagedWorker]
    def __init__(self, workers: _Optional[_Iterable[_Union[ManagedWorker, _Mapping]]] = ...) -> None: ...

class ScalerSetRoleRequest(_message.Message):
    __slots__ = ("instance_id", "role", "reason")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    role: _common_pb2.Role
    reason: str
    def __init__(self, instance_id: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ScalerSetRoleResponse(_message.Message):
    __slots__ = ("previous", "changed", "inflight", "links", "role_s", "link_s")
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    ROLE_S_FIELD_NUMBER: _ClassVar[int]
    LINK_S_FIELD_NUMBER: _ClassVar[int]
    previous: _common_pb2.Role
    changed: bool
    inflight: int
    links: int
    role_s: float
    link_s: float
    def __init__(self, previous: _Optional[_Union[_common_pb2.Role, str]] = ..., changed: _Optional[bool] = ..., inflight: _Optional[int] = ..., links: _Optional[int] = ..., role_s: _Optional[float] = ..., link_s: _Optional[float] = ...) -> None: ...
