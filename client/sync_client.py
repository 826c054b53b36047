"""WhisperdClient: the blocking Python client.

    from whisperd.client import WhisperdClient

    with WhisperdClient("localhost:50051") as client:
        job = client.submit("meeting.mp3", language="en")
        done = client.wait(job.id)
        print(done.render("srt"))

Every call raises a `WhisperdError` subclass on failure (NotFound, InvalidArgument, ...,
ServerUnreachable) and retries UNAVAILABLE as its `RetryPolicy` says.
"""
from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperd.client.connection import (
    RetryPolicy,
    WhisperdError,
    call_with_retry,
    create_channel,
    error_from_rpc,
    resolve_address,
)
from whisperd.client.types import (
    FORMAT_TO_PB,
    Done,
    HealthStatus,
    Job,
    JobEvent,
    JobOptions,
    JobStatus,
    ModelEvent,
    ModelStatus,
    UploadProgressCallback,
    event_from_pb,
)
from whisperd import formats
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import model_control_pb2_grpc as mpb_grpc
from whisperd.v1 import transcription_pb2 as pb
from whisperd.v1 import transcription_pb2_grpc as pb_grpc

CHUNK_BYTES = 64 * 1024

# A path, or a binary file object (anything with read(n) -> bytes).
Source = Union[str, "os.PathLike[str]", IO[bytes]]


class Upload:
    """Reads Submit's audio in CHUNK_BYTES pieces, never the whole file at once.

    A path is opened afresh for every attempt; a file object is read from where it stood
    and, when it is seekable, rewound there for a retry. Each attempt has a generation:
    a superseded attempt's reader (gRPC may still pull one more chunk of a call that has
    ended) stops instead of moving the shared file position.
    """

    def __init__(self, source: Source, on_progress: UploadProgressCallback | None = None) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._on_progress = on_progress
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._start: int | None = None
        self.finished = False  # the current attempt handed every byte to gRPC
        self.idempotent = False  # its options carry a request_id (options_for sets one)
        if isinstance(source, (str, os.PathLike)):
            self._path = Path(source)
            self.total: int | None = self._path.stat().st_size  # FileNotFoundError before any call
            self.name: str | None = self._path.name
        else:
            if not callable(getattr(source, "read", None)) or isinstance(source, io.TextIOBase):
                raise TypeError(f"submit() takes a path or a binary file object, not {type(source).__name__}")
            self._file = source
            self.name = Path(name).name if isinstance(name := getattr(source, "name", None), str) else None
            self.total = None
            try:
                if source.seekable():
                    self._start = source.tell()
                    end = source.seek(0, os.SEEK_END)
                    source.seek(self._start)
                    self.total = end - self._start
            except (AttributeError, OSError, ValueError):
                self._start = None

    @property
    def rewindable(self) -> bool:
        return self._path is not None or self._start is not None

    def may_retry(self, error: WhisperdError) -> bool:
        """A retry re-sends the audio, so the source must go back to its start; and unless
        the server said "come back later" (RetryInfo, no job made), only an upload that did
        not reach its end is known not to have made a job, or one with a request_id: the
        server answers its retry with the job the first attempt made, if it made one."""
        return self.rewindable and (error.retry_after is not None or not self.finished or self.idempotent)

    def _begin(self) -> int:
        with self._lock:
            self._generation += 1
            self.finished = False
            if self._generation > 1 and self._file is not None:
                if self._start is None:
                    raise RuntimeError("cannot re-read a file object that is not seekable")
                self._file.seek(self._start)
            return self._generation

    def _read(self, generation: int, f: IO[bytes]) -> bytes | None:
        with self._lock:
            if generation != self._generation:
                return None
            return f.read(CHUNK_BYTES)

    def _open(self) -> IO[bytes]:
        assert self._path is not None
        return self._path.open("rb")

    def _progress(self, sent: int) -> None:
        if self._on_progress is not None:
            self._on_progress(sent, self.total)

    def requests(self, options: pb.JobOptions) -> Iterator[pb.SubmitRequest]:
        """Submit's request stream for one attempt."""
        generation = self._begin()
        yield pb.SubmitRequest(options=options)
        f: IO[bytes] = self._file if self._file is not None else self._open()
        sent = 0
        self._progress(0)
        try:
            while (data := self._read(generation, f)) is not None and data:
                sent += len(data)
                yield pb.SubmitRequest(chunk=data)
                self._progress(sent)
            if data == b"":
                self.finished = True
        finally:
            if f is not self._file:
                f.close()

    async def arequests(self, options: pb.JobOptions) -> AsyncIterator[pb.SubmitRequest]:
        """requests() for grpc.aio: file reads run on a worker thread, off the event loop."""
        generation = await asyncio.to_thread(self._begin)
        yield pb.SubmitRequest(options=options)
        f: IO[bytes] = self._file if self._file is not None else await asyncio.to_thread(self._open)
        sent = 0
        self._progress(0)
        try:
            while (data := await asyncio.to_thread(self._read, generation, f)) is not None and data:
                sent += len(data)
                yield pb.SubmitRequest(chunk=data)
                self._progress(sent)
            if data == b"":
                self.finished = True
        finally:
            if f is not self._file:
                f.close()

    def options_for(self, options: JobOptions) -> pb.JobOptions:
        """Options with the upload's file name filled in when none was given, and a fresh
        request_id (the same for every retry of this upload) when none was given."""
        if options.filename is None and self.name:
            options = replace(options, filename=self.name)
        if options.request_id is None:
            options = replace(options, request_id=str(uuid.uuid4()))
        self.idempotent = True
        return options.to_pb()


def build_options(options: JobOptions | None, fields: dict[str, Any]) -> JobOptions:
    """`options` with keyword overrides (JobOptions field names); TypeError on a typo."""
    base = options or JobOptions()
    return replace(base, **fields) if fields else base


class WhisperdClient:
    """A blocking client for one whisperd server.

    `address` defaults to $WHISPERD_ADDRESS, then localhost:50051. `tls`, `ca_file` and
    `token` are as in `create_channel`; or pass a ready `channel`. `timeout` bounds each
    unary call (seconds; None = no bound); uploads and streams are not bounded by it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        token: str | None = None,
        channel: grpc.Channel | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.address = resolve_address(address)
        self._own_channel = channel is None
        self._channel = channel or create_channel(self.address, tls=tls, ca_file=ca_file, token=token)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._jobs = pb_grpc.TranscriptionStub(self._channel)
        self._model = mpb_grpc.ModelControlStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- lifetime

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> WhisperdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any) -> Any:
        return call_with_retry(lambda: method(request, timeout=self.timeout), self.retry, self.address)

    # -- jobs

    def submit(
        self,
        source: Source,
        options: JobOptions | None = None,
        *,
        on_upload_progress: UploadProgressCallback | None = None,
        **option_fields: Any,
    ) -> Job:
        """Upload audio (a path or a binary file object) and create a job; returns it queued.

        Options come as a JobOptions, or as keywords (`language="en", beam_size=1`), or
        both (keywords win). The file name is sent as `filename` unless given.
        `on_upload_progress(sent_bytes, total_bytes_or_None)` is called from gRPC's
        sending thread as chunks go out (and from 0 again if the upload is retried).
        """
        upload = Upload(source, on_upload_progress)
        request_options = upload.options_for(build_options(options, option_fields))
        msg = call_with_retry(
            lambda: self._jobs.Submit(upload.requests(request_options)),
            self.retry, self.address, may_retry=upload.may_retry,
        )
        return Job.from_pb(msg)

    def get(self, job_id: str) -> Job:
        """One job with its segments so far."""
        return Job.from_pb(self._unary(self._jobs.Get, pb.GetJobRequest(id=job_id)))

    def list(
        self,
        statuses: Iterable[JobStatus | str] = (),
        *,
        limit: int | None = 50,
        without_segments: bool = False,
        page_size: int = 100,
    ) -> builtins.list[Job]:
        """Jobs, newest first, optionally only those in `statuses`; at most `limit` of
        them (None = all, page by page)."""
        return builtins.list(self.iter_jobs(statuses, limit=limit, without_segments=without_segments, page_size=page_size))

    def iter_jobs(
        self,
        statuses: Iterable[JobStatus | str] = (),
        *,
        limit: int | None = None,
        without_segments: bool = False,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Like list(), lazily: fetches the next page only when it is reached."""
        wanted = [s if isinstance(s, JobStatus) else JobStatus.parse(s) for s in statuses]
        token = ""
        count = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - count))
            page = self._unary(
                self._jobs.List,
                pb.ListJobsRequest(
                    statuses=[s.to_pb() for s in wanted], page_size=size,
                    page_token=token, without_segments=without_segments,
                ),
            )
            for msg in page.jobs:
                yield Job.from_pb(msg)
                count += 1
                if limit is not None and count >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (FailedPrecondition if it has ended)."""
        return Job.from_pb(self._unary(self._jobs.Cancel, pb.CancelJobRequest(id=job_id)))

    def stream_progress(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events: Snapshot, then ProgressUpdate / NewSegment / Requeued, then
        Done. If the connection drops (UNAVAILABLE) the stream is opened again as the
        retry policy allows, and starts again with a Snapshot. Closing the iterator (or
        leaving a for loop) ends the call."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def open_call() -> Any:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._jobs.StreamProgress(pb.StreamProgressRequest(id=job_id), timeout=remaining)

        for msg in self._reconnecting(open_call):
            event = event_from_pb(msg)
            yield event
            if isinstance(event, Done):
                return

    def _reconnecting(self, open_call: Any) -> Iterator[Any]:
        """A server stream's messages, opened again after UNAVAILABLE as the retry policy
        allows (the attempt count starts over once a message arrives)."""
        attempt = 1
        while True:
            call = open_call()
            try:
                for msg in call:
                    attempt = 1
                    yield msg
                return
            except grpc.RpcError as rpc:
                error = error_from_rpc(rpc, self.address)
                delay = self.retry.delay(attempt, error)
                if delay is None:
                    raise error from rpc
                self.retry._announce(attempt, delay, error)
                time.sleep(delay)
                attempt += 1
            finally:
                call.cancel()

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Block until the job has ended; returns it (done, failed or cancelled)."""
        for event in self.stream_progress(job_id, timeout=timeout):
            if isinstance(event, Done):
                return event.job
        return self.get(job_id)

    def transcript(self, job_id: str, fmt: str = "txt") -> str:
        """The finished job's transcript as the server renders it (GetTranscript).
        `Job.render(fmt)` gives the same bytes from a Job you already have."""
        name = formats.normalise_format(fmt)
        msg = self._unary(self._jobs.GetTranscript, pb.GetTranscriptRequest(id=job_id, format=FORMAT_TO_PB[name]))
        return str(msg.content)

    def transcript_message(self, job_id: str, fmt: str = "txt") -> pb.Transcript:
        """GetTranscript's whole answer (format, content type, content)."""
        name = formats.normalise_format(fmt)
        return self._unary(self._jobs.GetTranscript, pb.GetTranscriptRequest(id=job_id, format=FORMAT_TO_PB[name]))  # type: ignore[no-any-return]

    # -- the model

    def model_status(self) -> ModelStatus:
        return ModelStatus.from_pb(self._unary(self._model.Status, mpb.ModelStatusRequest()))

    def cluster(self) -> mpb.ClusterStatus:
        """The replicas sharing the server's job store (ModelControl.Cluster's answer)."""
        return self._unary(self._model.Cluster, mpb.ClusterRequest())  # type: ignore[no-any-return]

    def load_model(self, gpus: Sequence[int] = ()) -> ModelStatus:
        """Start loading the model (returns at once; idempotent); `gpus`: only on these
        GPUs of a server that drives several (default: every GPU)."""
        return ModelStatus.from_pb(self._unary(self._model.Load, mpb.LoadModelRequest(gpu_indices=gpus)))

    def unload_model(self, gpus: Sequence[int] = ()) -> ModelStatus:
        """Unload the model now (idempotent; a running job goes back to the queue);
        `gpus`: only on these GPUs, the others keep serving (default: every GPU)."""
        return ModelStatus.from_pb(self._unary(self._model.Unload, mpb.UnloadModelRequest(gpu_indices=gpus)))

    def watch_model(self) -> Iterator[ModelEvent]:
        """Lifecycle events: the current state first, then every transition, until the
        iterator is closed. A dropped connection is re-opened (its first event is then the
        current state again)."""
        for msg in self._reconnecting(lambda: self._model.WatchEvents(mpb.WatchModelEventsRequest())):
            yield ModelEvent.from_pb(msg)

    # -- health

    def health(self, service: str = "") -> HealthStatus:
        """grpc.health.v1 Check: SERVING while the server takes jobs."""
        msg = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return HealthStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status))
