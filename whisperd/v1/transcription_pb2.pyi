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

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_DONE: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_TRANSCRIBE: _ClassVar[Task]
    TASK_TRANSLATE: _ClassVar[Task]

class TranscriptFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSCRIPT_FORMAT_UNSPECIFIED: _ClassVar[TranscriptFormat]
    TRANSCRIPT_FORMAT_JSON: _ClassVar[TranscriptFormat]
    TRANSCRIPT_FORMAT_TEXT: _ClassVar[TranscriptFormat]
    TRANSCRIPT_FORMAT_SRT: _ClassVar[TranscriptFormat]
    TRANSCRIPT_FORMAT_VTT: _ClassVar[TranscriptFormat]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_DONE: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus
TASK_UNSPECIFIED: Task
TASK_TRANSCRIBE: Task
TASK_TRANSLATE: Task
TRANSCRIPT_FORMAT_UNSPECIFIED: TranscriptFormat
TRANSCRIPT_FORMAT_JSON: TranscriptFormat
TRANSCRIPT_FORMAT_TEXT: TranscriptFormat
TRANSCRIPT_FORMAT_SRT: TranscriptFormat
TRANSCRIPT_FORMAT_VTT: TranscriptFormat

class JobOptions(_message.Message):
    __slots__ = ("language", "task", "webhook_url", "beam_size", "temperature", "temperature_increment", "initial_prompt", "word_timestamps", "vad", "filename", "condition_on_previous_text", "request_id")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_INCREMENT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WORD_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONDITION_ON_PREVIOUS_TEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    language: str
    task: Task
    webhook_url: str
    beam_size: int
    temperature: float
    temperature_increment: float
    initial_prompt: str
    word_timestamps: bool
    vad: bool
    filename: str
    condition_on_previous_text: bool
    request_id: str
    def __init__(self, language: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., webhook_url: _Optional[str] = ..., beam_size: _Optional[int] = ..., temperature: _Optional[float] = ..., temperature_increment: _Optional[float] = ..., initial_prompt: _Optional[str] = ..., word_timestamps: _Optional[bool] = ..., vad: _Optional[bool] = ..., filename: _Optional[str] = ..., condition_on_previous_text: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("options", "chunk")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    options: JobOptions
    chunk: bytes
    def __init__(self, options: _Optional[_Union[JobOptions, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("text", "start", "end", "probability")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    text: str
    start: float
    end: float
    probability: float
    def __init__(self, text: _Optional[str] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("index", "start", "end", "text", "words", "no_speech_prob")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    index: int
    start: float
    end: float
    text: str
    words: _containers.RepeatedCompositeFieldContainer[Word]
    no_speech_prob: float
    def __init__(self, index: _Optional[int] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., text: _Optional[str] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ..., no_speech_prob: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "status", "language", "task", "duration_secs", "progress", "segments", "error", "created_at", "started_at", "completed_at", "model", "options", "language_probability", "attempts", "warnings")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: JobStatus
    language: str
    task: Task
    duration_secs: float
    progress: float
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    error: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    model: str
    options: JobOptions
    language_probability: float
    attempts: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., language: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., duration_secs: _Optional[float] = ..., progress: _Optional[float] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., language_probability: _Optional[float] = ..., attempts: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("statuses", "page_size", "page_token", "without_segments")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[JobStatus]
    page_size: int
    page_token: str
    without_segments: bool
    def __init__(self, statuses: _Optional[_Iterable[_Union[JobStatus, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., without_segments: _Optional[bool] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StreamProgressRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("snapshot", "progress", "segment", "done", "requeued")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    snapshot: Job
    progress: Progress
    segment: Segment
    done: Job
    requeued: Job
    def __init__(self, snapshot: _Optional[_Union[Job, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., segment: _Optional[_Union[Segment, _Mapping]] = ..., done: _Optional[_Union[Job, _Mapping]] = ..., requeued: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("percent",)
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    percent: float
    def __init__(self, percent: _Optional[float] = ...) -> None: ...

class GetTranscriptRequest(_message.Message):
    __slots__ = ("id", "format")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    format: TranscriptFormat
    def __init__(self, id: _Optional[str] = ..., format: _Optional[_Union[TranscriptFormat, str]] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("format", "content_type", "content")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    format: TranscriptFormat
    content_type: str
    content: str
    def __init__(self, format: _Optional[_Union[TranscriptFormat, str]] = ..., content_type: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...
