"""AsyncWhisperdClient: the asyncio twin of WhisperdClient (same methods, awaited).

    async with AsyncWhisperdClient() as client:
        job = await client.submit("meeting.mp3")
        async for event in client.stream_progress(job.id):
            ...
"""
from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperd.client.connection import (
    RetryPolicy,
    acall_with_retry,
    create_aio_channel,
    error_from_rpc,
    resolve_address,
)
from whisperd.client.sync_client import Source, Upload, build_options
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


class AsyncWhisperdClient:
    """An asyncio client for one whisperd server; arguments as WhisperdClient's. Create
    it inside the event loop that uses it."""

    def __init__(
        self,
        address: str | None = None,
        *,
        tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        token: str | None = None,
        channel: grpc.aio.Channel | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.address = resolve_address(address)
        self._own_channel = channel is None
        self._channel = channel or create_aio_channel(self.address, tls=tls, ca_file=ca_file, token=token)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._jobs = pb_grpc.TranscriptionStub(self._channel)
        self._model = mpb_grpc.ModelControlStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- lifetime

    async def close(self) -> None:
        if self._own_channel:
            await self._channel.close(None)

    async def __aenter__(self) -> AsyncWhisperdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any) -> Any:
        return await acall_with_retry(lambda: method(request, timeout=self.timeout), self.retry, self.address)

    # -- jobs

    async def submit(
        self,
        source: Source,
        options: JobOptions | None = None,
        *,
        on_upload_progress: UploadProgressCallback | None = None,
        **option_fields: Any,
    ) -> Job:
        """As WhisperdClient.submit; the callback runs on the event loop."""
        upload = await asyncio.to_thread(Upload, source, on_upload_progress)
        request_options = upload.options_for(build_options(options, option_fields))
        msg = await acall_with_retry(
            lambda: self._jobs.Submit(upload.arequests(request_options)),
            self.retry, self.address, may_retry=upload.may_retry,
        )
        return Job.from_pb(msg)

    async def get(self, job_id: str) -> Job:
        return Job.from_pb(await self._unary(self._jobs.Get, pb.GetJobRequest(id=job_id)))

    async def list(
        self,
        statuses: Iterable[JobStatus | str] = (),
        *,
        limit: int | None = 50,
        without_segments: bool = False,
        page_size: int = 100,
    ) -> builtins.list[Job]:
        return [
            job async for job in self.iter_jobs(
                statuses, limit=limit, without_segments=without_segments, page_size=page_size
            )
        ]

    async def iter_jobs(
        self,
        statuses: Iterable[JobStatus | str] = (),
        *,
        limit: int | None = None,
        without_segments: bool = False,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        wanted = [s if isinstance(s, JobStatus) else JobStatus.parse(s) for s in statuses]
        token = ""
        count = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - count))
            page = await self._unary(
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

    async def cancel(self, job_id: str) -> Job:
        return Job.from_pb(await self._unary(self._jobs.Cancel, pb.CancelJobRequest(id=job_id)))

    async def stream_progress(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """As WhisperdClient.stream_progress."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def open_call() -> Any:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._jobs.StreamProgress(pb.StreamProgressRequest(id=job_id), timeout=remaining)

        async for msg in self._reconnecting(open_call):
            event = event_from_pb(msg)
            yield event
            if isinstance(event, Done):
                return

    async def _reconnecting(self, open_call: Callable[[], Any]) -> AsyncIterator[Any]:
        attempt = 1
        while True:
            call = open_call()
            try:
                async for msg in call:
                    attempt = 1
                    yield msg
                return
            except grpc.RpcError as rpc:
                error = error_from_rpc(rpc, self.address)
                delay = self.retry.delay(attempt, error)
                if delay is None:
                    raise error from rpc
                self.retry._announce(attempt, delay, error)
                await asyncio.sleep(delay)
                attempt += 1
            finally:
                call.cancel()

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        async for event in self.stream_progress(job_id, timeout=timeout):
            if isinstance(event, Done):
                return event.job
        return await self.get(job_id)

    async def transcript(self, job_id: str, fmt: str = "txt") -> str:
        return str((await self.transcript_message(job_id, fmt)).content)

    async def transcript_message(self, job_id: str, fmt: str = "txt") -> pb.Transcript:
        name = formats.normalise_format(fmt)
        request = pb.GetTranscriptRequest(id=job_id, format=FORMAT_TO_PB[name])
        return await self._unary(self._jobs.GetTranscript, request)  # type: ignore[no-any-return]

    # -- the model

    async def model_status(self) -> ModelStatus:
        return ModelStatus.from_pb(await self._unary(self._model.Status, mpb.ModelStatusRequest()))

    async def load_model(self, gpus: Sequence[int] = ()) -> ModelStatus:
        return ModelStatus.from_pb(await self._unary(self._model.Load, mpb.LoadModelRequest(gpu_indices=gpus)))

    async def unload_model(self, gpus: Sequence[int] = ()) -> ModelStatus:
        return ModelStatus.from_pb(await self._unary(self._model.Unload, mpb.UnloadModelRequest(gpu_indices=gpus)))

    async def watch_model(self) -> AsyncIterator[ModelEvent]:
        async for msg in self._reconnecting(lambda: self._model.WatchEvents(mpb.WatchModelEventsRequest())):
            yield ModelEvent.from_pb(msg)

    # -- health

    async def health(self, service: str = "") -> HealthStatus:
        msg = await self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return HealthStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status))
