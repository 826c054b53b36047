"""Plain data of a job: its status, the options it was submitted with, its record."""
from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, Mapping

from whisperd.transcript import Segment

from .errors import InvalidOptions

Task = Literal["transcribe", "translate"]
TASKS: tuple[Task, ...] = ("transcribe", "translate")

# Limits documented on JobOptions in proto/whisperd/v1/transcription.proto.
MAX_BEAM_SIZE = 16
MAX_INITIAL_PROMPT_CHARS = 4096


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Done, failed and cancelled are final: nothing moves a job out of them."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})
TERMINAL_STATUSES: tuple[JobStatus, ...] = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How to transcribe one upload. Validated on construction, so an instance is usable.

    The api layer maps the proto's "unset" zero values to these defaults before building
    one (beam_size 0 → 5, empty language → None).
    """

    language: str | None = None  # ISO 639-1; None = detect
    task: Task = "transcribe"
    webhook_url: str | None = None
    beam_size: int = 5
    temperature: float = 0.0
    temperature_increment: float = 0.2  # 0 disables the temperature fallback
    initial_prompt: str | None = None
    word_timestamps: bool = False
    vad: bool = False
    filename: str | None = None
    # Sequential mode: the whole file on one decoding state, each window prompted with the
    # previous one's text (off: windows cut at silences, decoded independently in batches).
    condition_on_previous_text: bool = False
    # The client's idempotency key: a second Submit with it returns the first one's job.
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InvalidOptions("task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InvalidOptions(
                "beam_size",
                f"must be between 1 and {MAX_BEAM_SIZE} (1 = greedy), got {self.beam_size}",
            )
        for name in ("temperature", "temperature_increment"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InvalidOptions(name, f"must be between 0 and 1, got {value}")
        if self.initial_prompt is not None and len(self.initial_prompt) > MAX_INITIAL_PROMPT_CHARS:
            raise InvalidOptions(
                "initial_prompt",
                f"must be at most {MAX_INITIAL_PROMPT_CHARS} characters, "
                f"got {len(self.initial_prompt)}",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobOptions:
        """Missing keys take their defaults and unknown keys are ignored, so rows written by
        an older or a newer whisperd still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def new_job_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class JobRecord:
    """One job as the store holds it; times are epoch seconds."""

    id: str
    status: JobStatus
    options: JobOptions
    audio_path: str | None
    duration_secs: float
    created_at: float
    progress: float = 0.0  # percent, 0..100
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    language: str | None = None  # as given, or as detected once the job has run
    language_probability: float | None = None
    error: str | None = None
    started_at: float | None = None  # when a worker last started it
    completed_at: float | None = None
    model: str | None = None  # the model that last ran it
    attempts: int = 0  # how many times a worker started it
    warnings: tuple[str, ...] = ()  # what a user should know, e.g. the file ends early
