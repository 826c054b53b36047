"""Fan-out of job events to any number of StreamProgress subscribers.

Workers publish from their threads; subscribers are asyncio queues read by the gRPC
handlers on the event loop, so publishing hops onto the loop with call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from whisperd.transcript import Segment


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    job_id: str
    percent: float


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    job_id: str
    segment: Segment


@dataclass(frozen=True, slots=True)
class FinishedEvent:
    """The job reached done, failed or cancelled; subscribers read it from the store."""

    job_id: str


@dataclass(frozen=True, slots=True)
class RequeuedEvent:
    """The job went back to the queue (unload, shutdown) and will run again."""

    job_id: str


JobEvent = ProgressEvent | SegmentEvent | FinishedEvent | RequeuedEvent


class EventHub:
    """Per-job subscriber queues on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = defaultdict(set)

    def subscribe(self, job_id: str) -> asyncio.Queue[JobEvent]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[JobEvent]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[job_id]

    def publish(self, event: JobEvent) -> None:
        """On the loop thread."""
        for queue in tuple(self._subscribers.get(event.job_id, ())):
            queue.put_nowait(event)

    def publish_threadsafe(self, event: JobEvent) -> None:
        """From any thread (workers)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.publish, event)

    def subscriber_count(self, job_id: str) -> int:
        return len(self._subscribers.get(job_id, ()))
