"""This replica's part in a fleet sharing one PostgreSQL store: every third of LEASE_SECS
it renews the leases of the jobs it runs and its row in the hosts table, and sweeps the
queue for jobs whose lease ran out (their host died): those go back to the queue, or
fail after MAX_ATTEMPTS, whichever replica notices first."""
from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from whisperd.server.config import Settings
from whisperd.server.engine import gpu_info
from whisperd.server.engine.lifecycle import ModelHost, ModelState
from whisperd.server.engine.workers import WorkerPool
from whisperd.server.jobs.events import FinishedEvent, RequeuedEvent
from whisperd.server.jobs.model import JobRecord
from whisperd.server.jobs.backends import host_id
from whisperd.v1 import model_control_pb2 as mpb

if TYPE_CHECKING:
    from whisperd.server.jobs.pg_events import ClusterHub
    from whisperd.server.jobs.pg_store import PgJobStore

log = logging.getLogger(__name__)


def is_shared(store: Any) -> bool:
    """Whether the store is PostgreSQL, shared by a fleet. psycopg (the `cluster` extra)
    is imported only then: a single server on SQLite runs without it."""
    # A PgJobStore exists only once its module (and psycopg) was imported.
    pg_store = sys.modules.get("whisperd.server.jobs.pg_store")
    return pg_store is not None and isinstance(store, pg_store.PgJobStore)


class Heartbeat:
    def __init__(
        self,
        store: PgJobStore,
        hub: ClusterHub,
        *,
        max_attempts: int,
        info: Callable[[], dict[str, Any]],
        running: Callable[[], list[str]],
        on_requeued: Callable[[], None],
        on_failed: Callable[[JobRecord], None],
        on_waiting: Callable[[], None] = lambda: None,
        on_beat: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._max_attempts = max_attempts
        self._info = info
        self._running = running
        self._on_requeued = on_requeued
        self._on_failed = on_failed
        self._on_waiting = on_waiting
        self._on_beat = on_beat
        self.interval = max(1.0, store.lease_secs / 3)

    async def beat(self) -> None:
        """One round: renew, sweep, and load the model if others' jobs wait (jobs
        submitted through another replica never asked this one to load)."""
        await asyncio.to_thread(self._store.heartbeat, self._running(), self._info())
        if await asyncio.to_thread(self._store.queue_depth):
            self._on_waiting()
        if self._on_beat is not None:
            await self._on_beat()
        requeued, failed = await asyncio.to_thread(self._store.recover_interrupted, self._max_attempts)
        for job_id in requeued:
            self._hub.publish(RequeuedEvent(job_id))
        if requeued:
            log.warning("took over %d jobs whose host stopped renewing its lease", len(requeued))
            self._on_requeued()
        for job_id in failed:
            record = await asyncio.to_thread(self._store.get, job_id)
            self._hub.publish(FinishedEvent(job_id))
            if record is not None:
                self._on_failed(record)

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: keep trying, leases may lapse
                log.warning("heartbeat failed (%s); next try in %g s", exc, self.interval)
            await asyncio.sleep(self.interval)


def make_hub(
    loop: asyncio.AbstractEventLoop, store: Any, *, cancel: Callable[[str], object]
) -> ClusterHub | None:
    """The cross-replica event hub, listening already; None for a SQLite store. `cancel`
    stops a job here that a client cancelled through another replica."""
    if not is_shared(store):
        return None
    from whisperd.server.jobs.pg_events import ClusterHub

    hub = ClusterHub(loop, store, on_remote_finished=cancel)
    hub.start()
    return hub


def fleet_info(*, settings: Settings, port: int, host: ModelHost, pool: WorkerPool, gpu: bool) -> dict[str, Any]:
    """What this replica's row in the hosts table says about it."""
    return {
        "address": f"{socket.gethostname()}:{port}",
        "model": host.model_path.name,
        "state": host.state.value,
        "device": "gpu" if gpu else "cpu",
        "gpus": [g.name for g in gpu_info.gpus()] if gpu else [],
        "parallel_jobs": settings.parallel_jobs,
        "running_jobs": pool.running_count(),
    }


def start_heartbeat(
    store: Any,
    hub: ClusterHub | None,
    *,
    settings: Settings,
    port: int,
    host: ModelHost,
    pool: WorkerPool,
    gpu: bool,
    on_failed: Callable[[JobRecord], None],
    on_beat: Callable[[], Awaitable[None]] | None = None,
) -> asyncio.Task[None] | None:
    if hub is None or not is_shared(store):
        return None

    def requeued() -> None:
        host.request_load("jobs taken over from a stopped replica")
        pool.wake()

    def waiting() -> None:
        if host.state == ModelState.UNLOADED:
            host.request_load("jobs waiting in the shared queue")
        pool.wake()

    beat = Heartbeat(
        store, hub, max_attempts=settings.max_attempts,
        info=lambda: fleet_info(settings=settings, port=port, host=host, pool=pool, gpu=gpu),
        running=pool.running_ids,
        on_requeued=requeued, on_failed=on_failed, on_waiting=waiting, on_beat=on_beat,
    )
    log.info(
        "replica %s on the shared store %s (lease %d s, renewed every %g s)",
        store.host_id, store.path, settings.lease_secs, beat.interval,
    )
    if not settings.blob_url:
        log.warning(
            "DATABASE_URL without BLOB_URL: uploads stay in this replica's DATA_DIR, where no "
            "other replica can read them; set BLOB_URL=s3://... before starting a second one"
        )
    return asyncio.get_running_loop().create_task(beat.run(), name="heartbeat")


async def stop_heartbeat(task: asyncio.Task[None] | None, store: Any, hub: ClusterHub | None) -> None:
    """After the workers stopped: leave the fleet (the jobs left running were requeued)."""
    if task is None or hub is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    try:
        await asyncio.to_thread(store.leave)
    except Exception as exc:
        log.warning("could not leave the hosts table: %s", exc)
    await asyncio.to_thread(hub.stop)


class ClusterView:
    """Answers ModelControl.Cluster: the hosts table on a shared store, or this server
    alone on SQLite. `port` is set once the server listens."""

    def __init__(
        self, store: Any, *, settings: Settings, host: ModelHost, pool: WorkerPool, gpu: bool
    ) -> None:
        self._store = store
        self._settings = settings
        self._host = host
        self._pool = pool
        self._gpu = gpu
        self.port = 0
        self.started_at = time.time()

    def _self_id(self) -> str:
        return self._store.host_id if is_shared(self._store) else host_id(self._settings)

    async def status(self) -> mpb.ClusterStatus:
        from whisperd.server.api.convert import timestamp
        from whisperd.server.api.model_control import STATE_TO_PB

        me = self._self_id()
        depth = await asyncio.to_thread(self._store.queue_depth)
        if is_shared(self._store):
            lease = self._store.lease_secs
            hosts = await asyncio.to_thread(self._store.hosts, 3 * lease)
            rows = [(h.id, h.info, h.running_jobs, h.started_at, h.heartbeat_at) for h in hosts]
        else:
            lease = 0
            info = fleet_info(settings=self._settings, port=self.port, host=self._host, pool=self._pool, gpu=self._gpu)
            rows = [(me, info, tuple(self._pool.running_ids()), self.started_at, time.time())]
        replicas = []
        for replica_id, info, running, started, beat in rows:
            try:
                state = STATE_TO_PB[ModelState(info.get("state", ""))]
            except ValueError:
                state = mpb.MODEL_STATE_UNSPECIFIED
            replicas.append(mpb.ReplicaStatus(
                host_id=replica_id, address=str(info.get("address", "")), state=state,
                model=str(info.get("model", "")), device=str(info.get("device", "")),
                gpus=[str(g) for g in info.get("gpus", [])],
                parallel_jobs=int(info.get("parallel_jobs", 0)), running_job_ids=list(running),
                started_at=timestamp(started), heartbeat_at=timestamp(beat), self=replica_id == me,
            ))
        return mpb.ClusterStatus(
            shared_store=is_shared(self._store), replicas=replicas,
            queue_depth=depth, lease_secs=int(lease),
        )
