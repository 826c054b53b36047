"""Typed results: what the clients return instead of raw protobuf messages.

Each wrapper keeps the message it came from as `.pb` (for protobuf's JSON mapping, or
for fields added to the proto later). Jobs convert to `whisperd.transcript.Transcript`,
so the client renders transcripts with the same module as the server (`whisperd.formats`)
and gets the same bytes as GetTranscript.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Union

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from whisperd import formats
from whisperd.transcript import Segment, Transcript, Word
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as tpb

# Called as the upload goes: bytes read from the source so far, and its size when known.
UploadProgressCallback = Callable[[int, Union[int, None]], None]


def to_json(message: Message, *, indent: int | None = 2) -> str:
    """Protobuf's JSON mapping of `message`, every field present (also zero values)."""
    return json_format.MessageToJson(
        message, indent=indent, always_print_fields_with_no_presence=True
    )


def _time(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    ts: Timestamp = getattr(message, name)
    return ts.ToDatetime(tzinfo=timezone.utc)


# --- jobs -------------------------------------------------------------------------------


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    @classmethod
    def from_pb(cls, value: int) -> JobStatus:
        return _STATUS_FROM_PB[value]

    def to_pb(self) -> int:
        return _STATUS_TO_PB[self]

    @classmethod
    def parse(cls, text: str) -> JobStatus:
        """"done", "DONE", "JOB_STATUS_DONE" -> JobStatus.DONE; ValueError otherwise."""
        name = text.strip().lower().removeprefix("job_status_")
        try:
            return cls(name)
        except ValueError:
            raise ValueError(
                f"unknown job status {text!r}: use {', '.join(s.value for s in cls)}"
            ) from None


_STATUS_TO_PB: dict[JobStatus, int] = {
    JobStatus.QUEUED: tpb.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: tpb.JOB_STATUS_RUNNING,
    JobStatus.DONE: tpb.JOB_STATUS_DONE,
    JobStatus.FAILED: tpb.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: tpb.JOB_STATUS_CANCELLED,
}
_STATUS_FROM_PB: dict[int, JobStatus] = {v: k for k, v in _STATUS_TO_PB.items()}
_TASK_TO_PB: dict[str, Any] = {"transcribe": tpb.TASK_TRANSCRIBE, "translate": tpb.TASK_TRANSLATE}
_TASK_FROM_PB: dict[int, str] = {tpb.TASK_UNSPECIFIED: "transcribe", tpb.TASK_TRANSCRIBE: "transcribe", tpb.TASK_TRANSLATE: "translate"}

# whisperd.formats names -> the proto's enum (GetTranscript).
FORMAT_TO_PB: dict[str, int] = {
    "txt": tpb.TRANSCRIPT_FORMAT_TEXT,
    "srt": tpb.TRANSCRIPT_FORMAT_SRT,
    "vtt": tpb.TRANSCRIPT_FORMAT_VTT,
    "json": tpb.TRANSCRIPT_FORMAT_JSON,
}


@dataclass(frozen=True)
class JobOptions:
    """Submit's options; None / False = the server's default. See JobOptions in the proto."""

    language: str | None = None
    task: str = "transcribe"
    beam_size: int | None = None
    temperature: float = 0.0
    temperature_increment: float | None = None
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad: bool = False
    webhook_url: str | None = None
    filename: str | None = None
    # Sequential mode: each window prompted with the previous one's text (see the proto).
    condition_on_previous_text: bool = False
    # Idempotency key; None = the client makes one per submit() call, so that a retried
    # upload returns the job the first attempt may already have created.
    request_id: str | None = None

    def to_pb(self) -> tpb.JobOptions:
        if self.task not in _TASK_TO_PB:
            raise ValueError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        msg = tpb.JobOptions(
            language=self.language or "",
            task=_TASK_TO_PB[self.task],
            webhook_url=self.webhook_url or "",
            beam_size=self.beam_size or 0,
            temperature=self.temperature,
            initial_prompt=self.initial_prompt or "",
            word_timestamps=self.word_timestamps,
            vad=self.vad,
            filename=self.filename or "",
            request_id=self.request_id or "",
        )
        if self.temperature_increment is not None:
            msg.temperature_increment = self.temperature_increment
        if self.condition_on_previous_text:
            msg.condition_on_previous_text = True
        return msg

    @classmethod
    def from_pb(cls, msg: tpb.JobOptions) -> JobOptions:
        return cls(
            language=msg.language or None,
            task=_TASK_FROM_PB.get(msg.task, "transcribe"),
            beam_size=msg.beam_size or None,
            temperature=msg.temperature,
            temperature_increment=msg.temperature_increment if msg.HasField("temperature_increment") else None,
            initial_prompt=msg.initial_prompt or None,
            word_timestamps=msg.word_timestamps,
            vad=msg.vad,
            webhook_url=msg.webhook_url or None,
            filename=msg.filename or None,
            condition_on_previous_text=msg.condition_on_previous_text,
            request_id=msg.request_id or None,
        )


def word_from_pb(w: tpb.Word) -> Word:
    return Word(text=w.text, start=w.start, end=w.end, probability=w.probability)


def segment_from_pb(s: tpb.Segment) -> Segment:
    return Segment(
        index=s.index, start=s.start, end=s.end, text=s.text,
        no_speech_prob=s.no_speech_prob, words=tuple(word_from_pb(w) for w in s.words),
    )


def transcript_from_pb(job: tpb.Job) -> Transcript:
    """The job's result in the shape `whisperd.formats.render` takes (as the server's
    GetTranscript builds it from its store)."""
    return Transcript(
        segments=tuple(segment_from_pb(s) for s in job.segments),
        language=job.language,
        language_probability=job.language_probability,
        duration_secs=job.duration_secs,
    )


@dataclass(frozen=True)
class Job:
    """A transcription job as the server reported it."""

    id: str
    status: JobStatus
    language: str
    task: str
    duration_secs: float
    progress: float
    segments: tuple[Segment, ...]
    error: str
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    model: str
    options: JobOptions
    language_probability: float
    attempts: int
    pb: tpb.Job = field(repr=False, compare=False)
    # What the user should know about the input, e.g. that the file ends early.
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_pb(cls, msg: tpb.Job) -> Job:
        return cls(
            id=msg.id,
            status=JobStatus.from_pb(msg.status),
            language=msg.language,
            task=_TASK_FROM_PB.get(msg.task, "transcribe"),
            duration_secs=msg.duration_secs,
            progress=msg.progress,
            segments=tuple(segment_from_pb(s) for s in msg.segments),
            error=msg.error,
            created_at=_time(msg, "created_at"),
            started_at=_time(msg, "started_at"),
            completed_at=_time(msg, "completed_at"),
            model=msg.model,
            options=JobOptions.from_pb(msg.options),
            language_probability=msg.language_probability,
            attempts=msg.attempts,
            pb=msg,
            warnings=tuple(msg.warnings),
        )

    @property
    def terminal(self) -> bool:
        """Done, failed or cancelled: nothing more will happen to it."""
        return self.status.terminal

    @property
    def text(self) -> str:
        return self.transcript().text

    def transcript(self) -> Transcript:
        return transcript_from_pb(self.pb)

    def render(self, fmt: str = "txt") -> str:
        """The transcript in `fmt` (txt, srt, vtt, json), rendered here with
        `whisperd.formats`: the same bytes as the server's GetTranscript."""
        return formats.render(self.transcript(), fmt)

    def to_json(self, indent: int | None = 2) -> str:
        return to_json(self.pb, indent=indent)


# --- job events (StreamProgress) --------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """First event: the job as it stands when the stream opens (also after a reconnect)."""

    job: Job
    pb: tpb.JobEvent = field(repr=False, compare=False)


@dataclass(frozen=True)
class ProgressUpdate:
    """Percent done moved forward."""

    percent: float
    pb: tpb.JobEvent = field(repr=False, compare=False)


@dataclass(frozen=True)
class NewSegment:
    """A segment was decoded."""

    segment: Segment
    pb: tpb.JobEvent = field(repr=False, compare=False)


@dataclass(frozen=True)
class Requeued:
    """The job went back to the queue (server restart, model unload); its segments will
    be sent again from index 0."""

    job: Job
    pb: tpb.JobEvent = field(repr=False, compare=False)


@dataclass(frozen=True)
class Done:
    """Last event: the job ended (done, failed or cancelled); the whole job."""

    job: Job
    pb: tpb.JobEvent = field(repr=False, compare=False)


JobEvent = Union[Snapshot, ProgressUpdate, NewSegment, Requeued, Done]


def event_from_pb(msg: tpb.JobEvent) -> JobEvent:
    kind = msg.WhichOneof("event")
    if kind == "snapshot":
        return Snapshot(Job.from_pb(msg.snapshot), msg)
    if kind == "progress":
        return ProgressUpdate(msg.progress.percent, msg)
    if kind == "segment":
        return NewSegment(segment_from_pb(msg.segment), msg)
    if kind == "requeued":
        return Requeued(Job.from_pb(msg.requeued), msg)
    if kind == "done":
        return Done(Job.from_pb(msg.done), msg)
    raise ValueError(f"JobEvent with no known event set: {msg}")


# --- the model --------------------------------------------------------------------------


class ModelState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    WAITING_FOR_GPU = "waiting_for_gpu"
    UNLOADING = "unloading"
    UNSPECIFIED = "unspecified"

    @classmethod
    def from_pb(cls, value: int) -> ModelState:
        return _MODEL_STATES.get(value, ModelState.UNSPECIFIED)


_MODEL_STATES: dict[int, ModelState] = {
    mpb.MODEL_STATE_UNLOADED: ModelState.UNLOADED,
    mpb.MODEL_STATE_LOADING: ModelState.LOADING,
    mpb.MODEL_STATE_READY: ModelState.READY,
    mpb.MODEL_STATE_WAITING_FOR_GPU: ModelState.WAITING_FOR_GPU,
    mpb.MODEL_STATE_UNLOADING: ModelState.UNLOADING,
}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int


@dataclass(frozen=True)
class ModelStatus:
    state: ModelState
    model: str
    model_path: str
    loaded_at: datetime | None
    last_error: str
    idle_timeout_secs: int
    gpus: tuple[GpuInfo, ...]
    queue_depth: int
    running_jobs: int
    gpu: bool
    pb: mpb.ModelStatus = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, msg: mpb.ModelStatus) -> ModelStatus:
        return cls(
            state=ModelState.from_pb(msg.state),
            model=msg.model,
            model_path=msg.model_path,
            loaded_at=_time(msg, "loaded_at"),
            last_error=msg.last_error,
            idle_timeout_secs=msg.idle_timeout_secs,
            gpus=tuple(
                GpuInfo(g.index, g.name, g.memory_total_bytes, g.memory_used_bytes, g.memory_free_bytes)
                for g in msg.gpus
            ),
            queue_depth=msg.queue_depth,
            running_jobs=msg.running_jobs,
            gpu=msg.gpu,
            pb=msg,
        )

    def to_json(self, indent: int | None = 2) -> str:
        return to_json(self.pb, indent=indent)


@dataclass(frozen=True)
class ModelEvent:
    state: ModelState
    previous: ModelState
    time: datetime | None
    reason: str
    status: ModelStatus
    pb: mpb.ModelEvent = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, msg: mpb.ModelEvent) -> ModelEvent:
        return cls(
            state=ModelState.from_pb(msg.state),
            previous=ModelState.from_pb(msg.previous),
            time=_time(msg, "time"),
            reason=msg.reason,
            status=ModelStatus.from_pb(msg.status),
            pb=msg,
        )


class HealthStatus(str, enum.Enum):
    """grpc.health.v1's answer."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"
