import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_UNLOADED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_WAITING_FOR_GPU: _ClassVar[ModelState]
    MODEL_STATE_UNLOADING: _ClassVar[ModelState]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_UNLOADED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_WAITING_FOR_GPU: ModelState
MODEL_STATE_UNLOADING: ModelState

class ModelStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("gpu_indices",)
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, gpu_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("gpu_indices",)
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, gpu_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class WatchModelEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("index", "name", "memory_total_bytes", "memory_used_bytes", "memory_free_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ...) -> None: ...

class DeviceState(_message.Message):
    __slots__ = ("gpu_index", "state", "running_jobs", "last_error", "loaded_at")
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    gpu_index: int
    state: ModelState
    running_jobs: int
    last_error: str
    loaded_at: _timestamp_pb2.Timestamp
    def __init__(self, gpu_index: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., running_jobs: _Optional[int] = ..., last_error: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("state", "model", "model_path", "loaded_at", "last_error", "idle_timeout_secs", "gpus", "queue_depth", "running_jobs", "gpu", "devices")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    state: ModelState
    model: str
    model_path: str
    loaded_at: _timestamp_pb2.Timestamp
    last_error: str
    idle_timeout_secs: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    queue_depth: int
    running_jobs: int
    gpu: bool
    devices: _containers.RepeatedCompositeFieldContainer[DeviceState]
    def __init__(self, state: _Optional[_Union[ModelState, str]] = ..., model: _Optional[str] = ..., model_path: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., idle_timeout_secs: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., running_jobs: _Optional[int] = ..., gpu: _Optional[bool] = ..., devices: _Optional[_Iterable[_Union[DeviceState, _Mapping]]] = ...) -> None: ...

class ClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("host_id", "address", "state", "model", "device", "gpus", "parallel_jobs", "running_job_ids", "started_at", "heartbeat_at", "self")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_JOBS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    address: str
    state: ModelState
    model: str
    device: str
    gpus: _containers.RepeatedScalarFieldContainer[str]
    parallel_jobs: int
    running_job_ids: _containers.RepeatedScalarFieldContainer[str]
    started_at: _timestamp_pb2.Timestamp
    heartbeat_at: _timestamp_pb2.Timestamp
    self: bool
    def __init__(self_, host_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., gpus: _Optional[_Iterable[str]] = ..., parallel_jobs: _Optional[int] = ..., running_job_ids: _Optional[_Iterable[str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., self: _Optional[bool] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("shared_store", "replicas", "queue_depth", "lease_secs")
    SHARED_STORE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECS_FIELD_NUMBER: _ClassVar[int]
    shared_store: bool
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    queue_depth: int
    lease_secs: int
    def __init__(self, shared_store: _Optional[bool] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., lease_secs: _Optional[int] = ...) -> None: ...

class ModelEvent(_message.Message):
    __slots__ = ("state", "previous", "time", "reason", "status")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    state: ModelState
    previous: ModelState
    time: _timestamp_pb2.Timestamp
    reason: str
    status: ModelStatus
    def __init__(self, state: _Optional[_Union[ModelState, str]] = ..., previous: _Optional[_Union[ModelState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...
