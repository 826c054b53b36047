"""The ModelControl service: Status, Load, Unload and the lifecycle event stream."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from whisperd.server.api.convert import timestamp
from whisperd.server.api.errors import InvalidArgument, streaming, unary
from whisperd.server.engine import gpu_info
from whisperd.server.engine.lifecycle import ModelHost, ModelState, Transition
from whisperd.server.engine.devices import MultiHost
from whisperd.server.engine.workers import WorkerPool
from whisperd.server.jobs.store import JobStore
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import model_control_pb2_grpc as mpb_grpc

log = logging.getLogger(__name__)

# Unloads answered before they finish (see Unload); kept referenced until done.
_BACKGROUND: set[asyncio.Future[None]] = set()

STATE_TO_PB = {
    ModelState.UNLOADED: mpb.MODEL_STATE_UNLOADED,
    ModelState.LOADING: mpb.MODEL_STATE_LOADING,
    ModelState.READY: mpb.MODEL_STATE_READY,
    ModelState.WAITING_FOR_GPU: mpb.MODEL_STATE_WAITING_FOR_GPU,
    ModelState.UNLOADING: mpb.MODEL_STATE_UNLOADING,
}


class ModelEvents:
    """Lifecycle transitions fanned out to WatchEvents streams on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: set[asyncio.Queue[Transition]] = set()

    def on_transition(self, event: Transition) -> None:
        """A ModelHost listener: runs on whichever thread made the transition."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._publish, event)

    def _publish(self, event: Transition) -> None:
        for queue in tuple(self._queues):
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[Transition]:
        queue: asyncio.Queue[Transition] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Transition]) -> None:
        self._queues.discard(queue)


class ModelControlService(mpb_grpc.ModelControlServicer):
    def __init__(
        self, *, host: ModelHost, pool: WorkerPool, store: JobStore, events: ModelEvents, gpu: bool,
        cluster: Callable[[], Awaitable[mpb.ClusterStatus]] | None = None,
    ) -> None:
        self._host = host
        self._pool = pool
        self._store = store
        self._events = events
        self._gpu = gpu
        self._cluster = cluster  # server/cluster.py's view of the fleet

    async def status(self) -> mpb.ModelStatus:
        gpus, depth = await asyncio.gather(
            asyncio.to_thread(gpu_info.gpus), asyncio.to_thread(self._store.queue_depth)
        )
        host = self._host
        return mpb.ModelStatus(
            state=STATE_TO_PB[host.state],
            model=host.model_path.name,
            model_path=str(host.model_path),
            loaded_at=timestamp(host.loaded_at),
            last_error=host.last_error,
            idle_timeout_secs=int(host.idle_timeout),
            gpus=[
                mpb.GpuInfo(
                    index=g.index, name=g.name, memory_total_bytes=g.total,
                    memory_used_bytes=g.used, memory_free_bytes=g.free,
                )
                for g in gpus
            ],
            queue_depth=depth,
            running_jobs=self._pool.running_count(),
            gpu=self._gpu,
            devices=[
                mpb.DeviceState(
                    gpu_index=d.gpu_index, state=STATE_TO_PB[d.state], running_jobs=d.running_jobs,
                    last_error=d.last_error, loaded_at=timestamp(d.loaded_at),
                )
                for d in (host.device_status() if isinstance(host, MultiHost) else [])
            ],
        )

    @unary
    async def Status(self, request: mpb.ModelStatusRequest, context: grpc.aio.ServicerContext) -> mpb.ModelStatus:
        return await self.status()

    @unary
    async def Cluster(self, request: mpb.ClusterRequest, context: grpc.aio.ServicerContext) -> mpb.ClusterStatus:
        if self._cluster is None:
            return mpb.ClusterStatus()
        return await self._cluster()

    def _targets(self, gpu_indices: Sequence[int], what: str) -> Sequence[ModelHost | MultiHost]:
        """The model hosts a Load or Unload with these gpu_indices acts on (none: all)."""
        if not gpu_indices:
            return [self._host]
        if isinstance(self._host, MultiHost):
            try:
                return self._host.pick(gpu_indices)
            except ValueError as exc:
                raise InvalidArgument(f"cannot {what}: {exc}") from None
        if not self._host.use_gpu:
            raise InvalidArgument(f"cannot {what} GPU {gpu_indices[0]}: this server runs on the CPU; "
                                  "leave gpu_indices empty")
        if set(gpu_indices) != {self._host.gpu_device}:
            other = next(i for i in gpu_indices if i != self._host.gpu_device)
            raise InvalidArgument(f"cannot {what}: GPU {other} is not this server's GPU "
                                  f"({self._host.gpu_device}; GPU_DEVICES)")
        return [self._host]

    @unary
    async def Load(self, request: mpb.LoadModelRequest, context: grpc.aio.ServicerContext) -> mpb.ModelStatus:
        for host in self._targets(request.gpu_indices, "load"):
            host.request_load("load requested")
        self._pool.wake()
        return await self.status()

    @unary
    async def Unload(self, request: mpb.UnloadModelRequest, context: grpc.aio.ServicerContext) -> mpb.ModelStatus:
        waits = []
        for host in self._targets(request.gpu_indices, "unload"):
            if host.state == ModelState.LOADING:
                # A load in flight is abandoned only when its native call and warm-up
                # return (seconds): answer now; the model is unloaded as soon as the load
                # ends. (Waiting for the GPU stops at once, so that case answers when done.)
                task = asyncio.ensure_future(asyncio.to_thread(host.unload, "unload requested"))
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
            else:
                waits.append(asyncio.to_thread(host.unload, "unload requested"))
        await asyncio.gather(*waits)
        return await self.status()

    @streaming
    async def WatchEvents(
        self, request: mpb.WatchModelEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[mpb.ModelEvent]:
        queue = self._events.subscribe()
        try:
            current = self._host.current_event()
            yield await self._event(current)
            while True:
                yield await self._event(await queue.get())
        finally:
            self._events.unsubscribe(queue)

    async def _event(self, t: Transition) -> mpb.ModelEvent:
        return mpb.ModelEvent(
            state=STATE_TO_PB[t.state],
            previous=STATE_TO_PB[t.previous] if t.previous else mpb.MODEL_STATE_UNSPECIFIED,
            time=timestamp(t.at),
            reason=t.reason,
            status=await self.status(),
        )
