"""The Transcription service: Submit, Get, List, Cancel, StreamProgress, GetTranscript."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import grpc

from whisperd.server import metrics
from whisperd.server.api import convert, lenient
from whisperd.server.api.errors import InvalidArgument, ServiceUnavailable, streaming, unary
from whisperd.server.api.options import options_from_pb
from whisperd.server.engine.lifecycle import ModelHost, ModelState
from whisperd.server.engine.workers import WorkerPool
from whisperd.server.jobs.errors import InvalidCursor, JobNotFound, JobStateError
from whisperd.server.jobs.events import EventHub, FinishedEvent, ProgressEvent, RequeuedEvent, SegmentEvent
from whisperd.server.jobs.model import JobRecord, JobStatus
from whisperd.server.jobs.blobs import BlobStore
from whisperd.server.jobs.store import JobStore
from whisperd.server.webhooks import WebhookDispatcher, WebhookUrlRefused
from whisperd import formats
from whisperd.audio import probe_audio
from whisperd.v1 import transcription_pb2 as pb
from whisperd.v1 import transcription_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_MAX_PAGE = 500


@dataclass
class Admission:
    """Whether Submit accepts jobs now. `strict` answers UNAVAILABLE while the model is not
    ready (the earlier service's behaviour); the default queues the job meanwhile."""

    strict: bool
    retry_after: float
    draining: Callable[[], bool]


class TranscriptionService(pb_grpc.TranscriptionServicer):
    def __init__(
        self,
        *,
        store: JobStore,
        spool: BlobStore,
        hub: EventHub,
        pool: WorkerPool,
        host: ModelHost,
        admission: Admission,
        multilingual: bool,
        webhooks: WebhookDispatcher,
    ) -> None:
        self._store = store
        self._spool = spool
        self._hub = hub
        self._pool = pool
        self._host = host
        self._admission = admission
        self._multilingual = multilingual
        self._webhooks = webhooks

    # ------------------------------------------------------------------ Submit

    @unary
    async def Submit(
        self, request_iterator: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext
    ) -> pb.Job:
        if self._admission.draining():
            raise ServiceUnavailable("the server is shutting down; submit to another one or retry", 5)
        first = await anext(aiter(request_iterator), None)
        lenient.check(first)
        if first is None or first.WhichOneof("payload") != "options":
            raise InvalidArgument(
                "the first Submit message must carry 'options'; audio 'chunk' messages follow it"
            )
        options = options_from_pb(first.options, multilingual=self._multilingual)
        if options.webhook_url:
            try:
                await self._webhooks.check_url(options.webhook_url)
            except WebhookUrlRefused as exc:
                raise InvalidArgument(f"options.webhook_url: {exc}") from None
        if self._admission.strict and self._host.state != ModelState.READY:
            self._host.request_load("job submitted (strict admission)")
            raise ServiceUnavailable(
                f"the model is not ready ({self._host.state.value}); it is loading now: "
                f"retry in {self._admission.retry_after:g} s",
                self._admission.retry_after,
            )
        if options.request_id and (
            known := await asyncio.to_thread(self._store.find_request, options.request_id)
        ) is not None:
            # A retry of a Submit whose answer was lost: the job exists; the rest of this
            # upload is not needed.
            log.info("job %s: Submit repeated with its request_id; the same job returned", known.id)
            return convert.job_to_pb(known)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                lenient.check(message)
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument("after the first message, every Submit message must carry an audio 'chunk'")
                yield message.chunk

        suffix = Path(options.filename).suffix if options.filename else ""
        path, size = await self._spool.receive(chunks(), suffix)
        metrics.upload_received(size)
        try:
            if size == 0:
                raise InvalidArgument("no audio: the upload had no 'chunk' bytes")
            info = await asyncio.to_thread(probe_audio, path)
        except BaseException:
            await self._spool.discard(path)
            raise
        # The stored upload's reference: the spool path, or s3://... in an object store.
        audio_ref = await self._spool.commit(path)
        try:
            job = await asyncio.to_thread(
                self._store.create, options, audio_ref, info.duration_secs, info.warnings
            )
        except BaseException:
            await asyncio.to_thread(self._spool.delete, audio_ref)  # no job will use it
            raise
        if job.audio_path != audio_ref:
            # The same request_id arrived twice at once; the other one made the job.
            await asyncio.to_thread(self._spool.delete, audio_ref)
            return convert.job_to_pb(job)
        if options.webhook_url:
            # Registered before the load starts, so the model_ready it causes reaches it.
            await self._webhooks.register_url(options.webhook_url)
        log.info(
            "job %s: queued (%s, %d bytes, %.1f s of %s audio)",
            job.id, options.filename or "unnamed upload", size, info.duration_secs, info.codec,
        )
        metrics.job_submitted()
        self._host.request_load("job submitted")
        self._pool.wake()
        return convert.job_to_pb(job)

    # ------------------------------------------------------------------ reading

    async def _job(self, job_id: str) -> JobRecord:
        if not job_id:
            raise InvalidArgument("'id' is required: the job id that Submit returned")
        job = await asyncio.to_thread(self._store.get, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    @unary
    async def Get(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return convert.job_to_pb(await self._job(request.id))

    @unary
    async def List(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        if request.page_size > _MAX_PAGE:
            raise InvalidArgument(f"'page_size' must be at most {_MAX_PAGE}, got {request.page_size}")
        try:
            statuses = [convert.STATUS_FROM_PB[s] for s in request.statuses]
        except KeyError:
            raise InvalidArgument("'statuses' holds an unknown or unspecified status") from None
        try:
            jobs, cursor = await asyncio.to_thread(
                self._store.list,
                statuses,
                request.page_size or 50,
                request.page_token or None,
                not request.without_segments,
            )
        except InvalidCursor as exc:
            raise InvalidArgument(f"'page_token': {exc}") from None
        return pb.ListJobsResponse(
            jobs=[convert.job_to_pb(j, with_segments=not request.without_segments) for j in jobs],
            next_page_token=cursor or "",
        )

    @unary
    async def GetTranscript(
        self, request: pb.GetTranscriptRequest, context: grpc.aio.ServicerContext
    ) -> pb.Transcript:
        job = await self._job(request.id)
        if job.status != JobStatus.DONE:
            raise JobStateError(
                job.id, job.status.value, "render", "done",
                message=f"job {job.id} is {job.status.value}: its transcript exists once it is done",
            )
        fmt = convert.FORMAT_FROM_PB.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"'format' {request.format} is not a known transcript format")
        content = formats.render(convert.transcript_of(job), fmt)
        return pb.Transcript(
            format=request.format or pb.TRANSCRIPT_FORMAT_JSON,
            content_type=convert.CONTENT_TYPES[fmt],
            content=content,
        )

    # ------------------------------------------------------------------ Cancel

    @unary
    async def Cancel(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        await self._job(request.id)
        job = await asyncio.to_thread(self._store.cancel, request.id)
        if not self._pool.cancel(job.id):
            # It was queued: nothing runs it, so clean up here.
            if job.audio_path:
                await asyncio.to_thread(self._spool.delete, job.audio_path)
            self._hub.publish(FinishedEvent(job.id))
            metrics.job_finished(job)
            if job.options.webhook_url:
                await self._webhooks.job_finished(
                    job.id, job.options.webhook_url, convert.job_json(job), job.status.value
                )
        log.info("job %s: cancelled by a client", job.id)
        return convert.job_to_pb(job)

    # ------------------------------------------------------------------ StreamProgress

    def close_streams(self) -> None:
        """Shutdown: end every open StreamProgress with UNAVAILABLE (follow the job again
        elsewhere or later) before the server stops, rather than have grpcio cancel them
        mid-wait and log each as an error."""
        if not self._closing().done():
            self._closing().set_result(None)

    def _closing(self) -> asyncio.Future[None]:
        if getattr(self, "_closed", None) is None:
            self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return self._closed

    async def _next_event(self, queue: asyncio.Queue[object]) -> object:
        getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({getter, self._closing()}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        raise ServiceUnavailable(
            "the server is shutting down: follow the job again in a few seconds (it is kept)",
            self._admission.retry_after,
        )

    @streaming
    async def StreamProgress(
        self, request: pb.StreamProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobEvent]:
        if not request.id:
            raise InvalidArgument("'id' is required: the job id that Submit returned")
        # Subscribe before reading the snapshot, so nothing falls between the two.
        queue = self._hub.subscribe(request.id)
        try:
            job = await self._job(request.id)
            yield pb.JobEvent(snapshot=convert.job_to_pb(job))
            if job.status.terminal:
                yield pb.JobEvent(done=convert.job_to_pb(job))
                return
            next_index = len(job.segments)
            while True:
                event = await self._next_event(queue)
                if isinstance(event, ProgressEvent):
                    yield pb.JobEvent(progress=pb.Progress(percent=event.percent))
                elif isinstance(event, SegmentEvent):
                    if event.segment.index >= next_index:  # already in the snapshot otherwise
                        next_index = event.segment.index + 1
                        yield pb.JobEvent(segment=convert.segment_to_pb(event.segment))
                elif isinstance(event, RequeuedEvent):
                    next_index = 0
                    yield pb.JobEvent(requeued=convert.job_to_pb(await self._job(request.id)))
                elif isinstance(event, FinishedEvent):
                    yield pb.JobEvent(done=convert.job_to_pb(await self._job(request.id)))
                    return
        finally:
            self._hub.unsubscribe(request.id, queue)
