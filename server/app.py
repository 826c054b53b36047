"""Wires the service together and runs it until SIGTERM/SIGINT.

Start-up: open the job store and put back jobs a dead process left running; clean
half-written uploads; start the gRPC server (Transcription, ModelControl, health,
reflection) and the workers. Shutdown: stop taking jobs (health NOT_SERVING, Submit
UNAVAILABLE), let running jobs finish for SHUTDOWN_GRACE_SECS, put the rest back in the
queue, free the model, stop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from whisperd import _native
from whisperd.model_resolver import resolve_model
from whisperd.models.ggml_file import read_header
from whisperd.server import metrics
from whisperd.server.api import convert
from whisperd.server.api import lenient
from whisperd.server.api.auth import BearerTokenInterceptor
from whisperd.server.api.model_control import ModelControlService, ModelEvents
from whisperd.server.api.transcription import Admission, TranscriptionService
from whisperd.server import cluster
from whisperd.server.config import Settings
from whisperd.server.engine.lifecycle import ModelHost, ModelState, Transition
from whisperd.server.engine import devices
from whisperd.server.engine.workers import WorkerPool
from whisperd.server.jobs.events import EventHub
from whisperd.server.jobs.health_guard import StorageGuard
from whisperd.server.jobs.orphans import remove_orphan_uploads
from whisperd import audio_limits
from whisperd.server.jobs.model import JobRecord
from whisperd.server.jobs.backends import open_outbox, open_store
from whisperd.server.jobs.blobs import BlobStore, open_blobs
from whisperd.server.jobs.store import JobStore
from whisperd.server.webhooks import WebhookDispatcher
from whisperd.v1 import model_control_pb2, model_control_pb2_grpc, transcription_pb2, transcription_pb2_grpc

log = logging.getLogger("whisperd.server")

_PURGE_EVERY_SECS = 600.0
_MAX_MESSAGE_BYTES = 16 << 20


def gpu_available(settings: Settings) -> bool:
    return (
        settings.use_gpu
        and _native.built_with_cuda()
        and any(d.type == "gpu" for d in _native.devices())
    )


def model_file(settings: Settings) -> Path:
    if settings.whisper_model_path is not None:
        return settings.whisper_model_path.resolve()
    return resolve_model(settings.whisper_model)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """What reflection serves: our protos with their comments, so that `grpcurl describe`
    shows the documentation, plus health and reflection themselves."""
    from grpc_reflection.v1alpha import reflection_pb2

    pool = descriptor_pool.DescriptorPool()
    protos: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    protoset = descriptor_pb2.FileDescriptorSet.FromString(
        (Path(transcription_pb2.__file__).parent / "whisperd.protoset").read_bytes()
    )
    for file in protoset.file:  # imports first, as protoc wrote them
        pool.AddSerializedFile(file.SerializeToString())
        protos[file.name] = file
    for module in (health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return _DocumentedPool(pool, protos)  # type: ignore[return-value]


class _DocumentedFile:
    """A file descriptor that copies out with its comments (SourceCodeInfo), which the
    protobuf runtime drops from the descriptors it builds."""

    def __init__(self, descriptor: Any, protos: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._descriptor = descriptor
        self._protos = protos
        self.name = descriptor.name

    @property
    def dependencies(self) -> list[_DocumentedFile]:
        return [_DocumentedFile(d, self._protos) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:  # noqa: N802
        if self.name in self._protos:
            proto.CopyFrom(self._protos[self.name])
        else:
            self._descriptor.CopyToProto(proto)


class _DocumentedPool:
    """Reflection's view of the pool: files with comments, and methods resolvable by name
    (`grpcurl describe pkg.Service.Method`; the protobuf pool only knows services)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, protos: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._pool = pool
        self._protos = protos

    def FindFileByName(self, name: str) -> _DocumentedFile:  # noqa: N802 (protobuf's naming)
        return _DocumentedFile(self._pool.FindFileByName(name), self._protos)

    def FindFileContainingSymbol(self, symbol: str) -> _DocumentedFile:  # noqa: N802
        try:
            found = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                known = bool(service) and method in self._pool.FindServiceByName(service).methods_by_name
            except KeyError:
                known = False
            if not known:
                raise
            found = self._pool.FindFileContainingSymbol(service)
        return _DocumentedFile(found, self._protos)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


async def _purge_loop(store: JobStore, retention: int, spool: BlobStore) -> None:
    while True:
        cutoff = time.time() - retention
        purged = await asyncio.to_thread(store.purge_finished, cutoff)
        for job in purged:
            if job.audio_path:
                await asyncio.to_thread(spool.delete, job.audio_path)
        if purged:
            log.info("purged %d finished jobs older than %d s", len(purged), retention)
        await asyncio.sleep(min(_PURGE_EVERY_SECS, max(1.0, retention / 2)))


async def serve(settings: Settings, *, on_listening: Callable[[int], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    # Uploads and transcripts are private: files this process creates (the store, the
    # spool) are readable by its user only, whatever the umask it was started with.
    os.umask(0o077)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    audio_limits.configure(audio_limits.AudioLimits(max_secs=float(settings.max_audio_secs)))
    path = model_file(settings)
    multilingual = read_header(path).hparams.is_multilingual
    store = open_store(settings)  # SQLite in DATA_DIR, or PostgreSQL (DATABASE_URL)
    # On PostgreSQL only jobs whose lease ran out: other replicas' running jobs are alive.
    requeued, failed = store.recover_interrupted(settings.max_attempts)
    if requeued or failed:
        log.info("start-up: %d interrupted jobs back in the queue, %d failed after %d attempts",
                 len(requeued), len(failed), settings.max_attempts)
    spool = open_blobs(
        settings.blob_url, settings.uploads_dir, settings.max_upload_bytes,
        endpoint_url=settings.s3_endpoint_url,
    )
    if (removed := spool.clean_partials()):
        log.info("start-up: removed %d half-written uploads", removed)
    # A crash between an upload's rename and its job's insert leaves a file no job
    # references; nothing else would ever delete it.
    if (orphans := remove_orphan_uploads(settings.uploads_dir, store.audio_in_use())):
        log.info("start-up: removed %d uploads that no waiting job references", orphans)

    outbox = open_outbox(settings)  # DATA_DIR/webhooks.db, or the shared PostgreSQL
    webhooks = WebhookDispatcher(
        outbox, secret=settings.webhook_secret or None, allow_private=settings.webhook_allow_private
    )
    await webhooks.start()

    # On PostgreSQL: job events to and from the other replicas (None with SQLite).
    cluster_hub = cluster.make_hub(loop, store, cancel=lambda job_id: pool.cancel(job_id))

    def job_finished(job: JobRecord) -> None:  # on a worker thread
        if cluster_hub is not None and cluster_hub.ended_elsewhere(job.id):
            return  # cancelled through another replica, which told the webhook
        if not job.status.terminal:
            return  # this replica lost the job's lease; it runs on elsewhere
        if job.audio_path:
            spool.delete(job.audio_path)  # an object store's copy (the spool's is gone already)
        metrics.job_finished(job)
        if job.options.webhook_url:
            webhooks.job_finished_threadsafe(
                job.id, job.options.webhook_url, convert.job_json(job), job.status.value
            )

    for job_id in failed:  # never reach a worker: tell their webhooks here
        if (record := store.get(job_id)) is not None:
            job_finished(record)

    gpu = gpu_available(settings)
    settings = settings.with_device(gpu)
    if settings.batch_decoding:
        log.warning("BATCH_DECODING is deprecated and ignored: every job's windows share one batch (BATCH_SIZE)")
    hub = cluster_hub or EventHub(loop)
    events = ModelEvents(loop)
    # GPU_DEVICES: a model host and workers per GPU, all on the one queue (engine/devices.py).
    gpu_indices = devices.parse_gpu_devices(
        settings.gpu_devices, sum(1 for d in _native.devices() if d.type == "gpu")
    ) if gpu else []
    host = devices.make_hosts(gpu_indices, lambda device: ModelHost(
        path,
        use_gpu=gpu,
        gpu_poll_interval=settings.gpu_poll_interval_secs,
        idle_timeout=settings.idle_timeout_secs,
        fault_oom_loads=settings.fault_oom_loads,
        gpu_device=device,
    ))
    host.add_listener(events.on_transition)

    def model_webhook(t: Transition) -> None:  # on whichever thread made the transition
        if t.state == ModelState.READY:
            name = "model_ready"
        elif t.state == ModelState.UNLOADED and t.previous == ModelState.UNLOADING:
            name = "model_unloaded"
        else:
            return
        body = json.dumps({
            "event": name, "model": path.name, "state": t.state.value,
            "reason": t.reason, "time": t.at,
        })
        webhooks.model_event_threadsafe(name, body)

    host.add_listener(model_webhook)
    host.add_listener(metrics.ModelMetrics())
    def storage_changed(writable: bool) -> None:  # on the guard's or a worker's thread
        def apply() -> None:
            if not draining:
                status = health_pb2.HealthCheckResponse.SERVING if writable else health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ("",) + services:
                    loop.create_task(health_servicer.set(name, status))
            if writable:
                pool.wake()

        loop.call_soon_threadsafe(apply)

    storage = StorageGuard(settings.data_dir, on_change=storage_changed)
    pool = devices.make_pools(host, lambda one_host: WorkerPool(
        store=store, host=one_host, hub=hub, storage=storage,
        workers=settings.parallel_jobs, threads_per_job=settings.threads_per_job,
        bench_tokens_per_window=settings.bench_tokens_per_window,
        batch_size=settings.batch_size, decoder_threads=settings.threads,
        batch_max_beams=settings.batch_max_beams,
        cuda_encoder=None if settings.cuda_encoder == "auto" else settings.cuda_encoder == "1",
        on_finished=job_finished,
        on_started=metrics.job_started,
        on_decoder_step=metrics.observe_batch,
        localise=spool.localise,
    ))
    metrics.bind(metrics.Sources(
        queued=store.queue_depth, running=pool.running_count, model_state=lambda: host.state,
        model=path.name, device="gpu" if gpu else "cpu",
    ))
    cluster_view = cluster.ClusterView(store, settings=settings, host=host, pool=pool, gpu=gpu)
    draining = False
    admission = Admission(
        strict=settings.admission == "strict",
        retry_after=float(settings.retry_after_secs),
        draining=lambda: draining,
    )

    server = grpc.aio.server(
        interceptors=[BearerTokenInterceptor(settings.auth_token)] if settings.auth_token else [],
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
    )
    # Registered with deserializers that turn a malformed message into INVALID_ARGUMENT.
    transcription = TranscriptionService(
        store=store, spool=spool, hub=hub, pool=pool, host=host,
        admission=admission, multilingual=multilingual, webhooks=webhooks,
    )
    lenient.add_servicer(transcription_pb2_grpc.add_TranscriptionServicer_to_server, transcription, server)
    lenient.add_servicer(
        model_control_pb2_grpc.add_ModelControlServicer_to_server,
        ModelControlService(
            host=host, pool=pool, store=store, events=events, gpu=gpu, cluster=cluster_view.status
        ), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = (
        transcription_pb2.DESCRIPTOR.services_by_name["Transcription"].full_name,
        model_control_pb2.DESCRIPTOR.services_by_name["ModelControl"].full_name,
    )
    reflection.enable_server_reflection(
        services + (health.SERVICE_NAME, reflection.SERVICE_NAME), server, pool=_reflection_pool()
    )
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {settings.host}:{settings.port} (port in use?)")
    metrics_server = None
    if settings.metrics_port:
        try:
            metrics_server = metrics.serve(settings.host, settings.metrics_port)
        except OSError as exc:
            raise OSError(
                f"could not serve metrics on {settings.host}:{settings.metrics_port} ({exc.strerror or exc}); "
                "set METRICS_PORT to a free port, or 0 for none"
            ) from None
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    cluster_view.port = port
    await server.start()
    pool.start()
    storage.start()
    heartbeat = cluster.start_heartbeat(
        store, cluster_hub, settings=settings, port=port, host=host, pool=pool, gpu=gpu,
        on_failed=job_finished, on_beat=webhooks.resume,
    )
    for name in ("",) + services:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if store.queue_depth() > 0:
        host.request_load("queued jobs at start-up")
        pool.wake()
    log.info(
        "whisperd listening on %s:%d (%s%s; model %s, %s, %d parallel jobs, data in %s)",
        settings.host, port, "TLS" if settings.tls_cert else "plaintext",
        ", bearer token required" if settings.auth_token else "",
        path.name, "GPU" if gpu else "CPU", settings.parallel_jobs, settings.data_dir,
    )
    if on_listening is not None:
        on_listening(port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    purge = asyncio.create_task(_purge_loop(store, settings.job_retention_secs, spool))
    try:
        await stop.wait()
    finally:
        log.info("shutting down: no new jobs; running jobs get %d s to finish", settings.shutdown_grace_secs)
        draining = True
        for name in ("",) + services:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        purge.cancel()
        await asyncio.to_thread(pool.stop, settings.shutdown_grace_secs)
        await asyncio.to_thread(storage.stop)
        await cluster.stop_heartbeat(heartbeat, store, cluster_hub)
        await asyncio.to_thread(host.stop)
        transcription.close_streams()
        await server.stop(grace=2)
        await webhooks.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        outbox.close()
        store.close()
        log.info("stopped")
