"""Job events between replicas: every event a replica publishes also goes out as a
PostgreSQL NOTIFY, and every replica LISTENs, so StreamProgress on any replica follows a
job running on any other.

The payload is small (job id, kind, a number); a segment is read from the store by the
replicas that have a subscriber for its job, since a segment with word times can pass
NOTIFY's 8000-byte limit. Events of this replica's own jobs reach its subscribers
directly, as in a single process; its own notifications are ignored when they come back.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

import psycopg

from .events import EventHub, FinishedEvent, JobEvent, ProgressEvent, RequeuedEvent, SegmentEvent
from .pg_store import EVENTS_CHANNEL, PgJobStore

log = logging.getLogger(__name__)

_KINDS = {ProgressEvent: "p", SegmentEvent: "s", RequeuedEvent: "r", FinishedEvent: "f"}
_REMEMBER = 10_000  # jobs ended by another replica, remembered for the finish hook


class ClusterHub(EventHub):
    """An EventHub whose events reach the subscribers of every replica."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: PgJobStore,
        *,
        on_remote_finished: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        super().__init__(loop)
        self._store = store
        self._host = store.host_id
        self._on_remote_finished = on_remote_finished
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._ended_elsewhere: OrderedDict[str, None] = OrderedDict()
        self._ended_lock = threading.Lock()
        self._thread = threading.Thread(target=self._listen, name="pg-listen", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._listening.wait(timeout):
            raise RuntimeError(f"could not LISTEN on {self._store.path} within {timeout:g} s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ publishing

    def publish(self, event: JobEvent) -> None:
        """On the loop thread."""
        super().publish(event)
        self._loop.run_in_executor(None, self._send, event)

    def publish_threadsafe(self, event: JobEvent) -> None:
        """From any thread: sent to the other replicas before this returns."""
        if isinstance(event, FinishedEvent) and not self._ended(event.job_id):
            # A worker that lost its lease (it stalled past it) ends its attempt; the job
            # itself runs on under another replica and must not look finished anywhere.
            log.info("job %s: this replica's attempt ended; the job runs on elsewhere", event.job_id)
            return
        self._send(event)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(super().publish, event)

    def ended_elsewhere(self, job_id: str) -> bool:
        """True (once) if another replica ended this job (a client cancelled it there):
        that replica told the webhook and removed the audio, so this one does not."""
        with self._ended_lock:
            return self._ended_elsewhere.pop(job_id, 0) is None

    def _ended(self, job_id: str) -> bool:
        job = self._store.get(job_id, with_segments=False)
        return job is None or job.status.terminal

    def _send(self, event: JobEvent) -> None:
        kind = _KINDS[type(event)]
        value: float | int = 0
        if isinstance(event, ProgressEvent):
            value = round(event.percent, 2)
        elif isinstance(event, SegmentEvent):
            value = event.segment.index
        payload = json.dumps({"h": self._host, "j": event.job_id, "k": kind, "v": value})
        try:
            self._store.notify(EVENTS_CHANNEL, payload)
        except Exception as exc:  # the job's own state is in the store; a lost event is not fatal
            log.warning("job %s: could not send a %s event to other replicas: %s", event.job_id, kind, exc)

    # ------------------------------------------------------------------ listening

    def _listen(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._store.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self._listening.set()
                    backoff = 0.5
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._received(note.payload)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("lost the event connection to PostgreSQL (%s); retrying in %g s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _received(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            host, job_id, kind, value = note["h"], note["j"], note["k"], note["v"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed job event: %.100r", payload)
            return
        if host == self._host:
            return
        event: JobEvent | None = None
        if kind == "p":
            event = ProgressEvent(job_id, float(value))
        elif kind == "s":
            if self.subscriber_count(job_id):
                job = self._store.get(job_id)
                found = [s for s in job.segments if s.index == int(value)] if job else []
                event = SegmentEvent(job_id, found[0]) if found else None
        elif kind == "r":
            event = RequeuedEvent(job_id)
        elif kind == "f" and self._ended(job_id):
            event = FinishedEvent(job_id)
            with self._ended_lock:
                self._ended_elsewhere[job_id] = None
                while len(self._ended_elsewhere) > _REMEMBER:
                    self._ended_elsewhere.popitem(last=False)
            self._on_remote_finished(job_id)
        if event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(EventHub.publish, self, event)
