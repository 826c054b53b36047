"""whisperd's Python client: a library first, with `whisperctl` (whisperd.client.cli) on top.

    from whisperd.client import WhisperdClient

    with WhisperdClient("localhost:50051") as client:
        job = client.submit("meeting.mp3", language="en")
        print(client.wait(job.id).render("srt"))
"""
from whisperd.client.async_client import AsyncWhisperdClient
from whisperd.client.connection import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    NO_RETRY,
    TOKEN_ENV,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryEvent,
    RetryPolicy,
    ServerUnreachable,
    Unauthenticated,
    Unavailable,
    WhisperdError,
    create_aio_channel,
    create_channel,
)
from whisperd.client.sync_client import CHUNK_BYTES, WhisperdClient
from whisperd.client.types import (
    Done,
    GpuInfo,
    HealthStatus,
    Job,
    JobEvent,
    JobOptions,
    JobStatus,
    ModelEvent,
    ModelState,
    ModelStatus,
    NewSegment,
    ProgressUpdate,
    Requeued,
    Snapshot,
    transcript_from_pb,
)

__all__ = [
    "ADDRESS_ENV",
    "CHUNK_BYTES",
    "DEFAULT_ADDRESS",
    "NO_RETRY",
    "TOKEN_ENV",
    "AsyncWhisperdClient",
    "DeadlineExceeded",
    "Done",
    "FailedPrecondition",
    "GpuInfo",
    "HealthStatus",
    "InvalidArgument",
    "Job",
    "JobEvent",
    "JobOptions",
    "JobStatus",
    "ModelEvent",
    "ModelState",
    "ModelStatus",
    "NewSegment",
    "NotFound",
    "PermissionDenied",
    "ProgressUpdate",
    "Requeued",
    "ResourceExhausted",
    "RetryEvent",
    "RetryPolicy",
    "ServerUnreachable",
    "Snapshot",
    "Unauthenticated",
    "Unavailable",
    "WhisperdClient",
    "WhisperdError",
    "create_aio_channel",
    "create_channel",
    "transcript_from_pb",
]
