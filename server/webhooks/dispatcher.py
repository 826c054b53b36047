"""Runs webhook deliveries on the event loop: one task per delivery, retried with backoff.

Each delivery is a task of its own, so a slow or dead receiver only delays its own
deliveries. Every attempt is recorded in the outbox before it is sent, together with
the time to resume if it never reports back, so a crash loses nothing pending; the cost
is that a receiver may see a delivery twice, which X-Whisperd-Delivery lets it detect.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from whisperd.server import metrics

from .outbox import Delivery, NewDelivery, Outbox
from .sender import Sender
from .urls import redact, resolve_url

log = logging.getLogger(__name__)

DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
JOB_EVENTS = {"done": "job.done", "failed": "job.failed", "cancelled": "job.cancelled"}
MODEL_EVENTS = frozenset({"model_ready", "model_unloaded"})


def _describe(d: Delivery) -> str:
    """Which delivery, for logs: event, job and target, never the query string."""
    job = f" for job {d.job_id}" if d.job_id else ""
    return f"webhook {d.event}{job} to {redact(d.url)} (delivery {d.id})"


class WebhookDispatcher:
    """Sends job and model events to webhook URLs; use from the event loop, except the
    *_threadsafe methods, which any thread may call."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        secret: str | None,
        allow_private: bool,
        timeout: float = 10.0,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"webhook timeout must be positive, got {timeout}")
        if any(b < 0 for b in backoff):
            raise ValueError(f"webhook backoff delays must not be negative, got {tuple(backoff)}")
        self._outbox = outbox
        self._allow_private = allow_private
        self._backoff = tuple(float(b) for b in backoff)
        self._sender = Sender(secret=secret, allow_private=allow_private, timeout=timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one retry per backoff delay."""
        return len(self._backoff) + 1

    @property
    def in_flight(self) -> int:
        """Deliveries with a task now (waiting for their next attempt or sending)."""
        return len(self._tasks)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin sending; resumes every delivery left pending by an earlier run."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        await self._sender.open()
        self._running = True
        pending = await asyncio.to_thread(self._outbox.pending)
        if pending:
            log.info("webhooks: resuming %d pending deliveries", len(pending))
        self._spawn_all(pending)

    async def resume(self) -> None:
        """Take up every pending delivery that has no task here. For an outbox that
        replicas share (pg_outbox.py): deliveries of a replica that stopped are sent by
        the others; the outbox's claim on each attempt keeps it to one sender."""
        if self._running:
            self._spawn_all(await asyncio.to_thread(self._outbox.pending))

    async def stop(self) -> None:
        """Stop sending. Tasks are cancelled; their deliveries stay in the outbox and are
        resumed by the next start()."""
        self._running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self._sender.aclose()

    # ------------------------------------------------------------------ URLs

    async def check_url(self, url: str) -> None:
        """Raise WebhookUrlRefused (a ValueError; its message is for the client) unless
        `url` may be used as a webhook target. Resolves without blocking the loop."""
        await resolve_url(url, allow_private=self._allow_private)

    async def register_url(self, url: str) -> None:
        """Remember `url` for model events (model_ready, model_unloaded)."""
        await asyncio.to_thread(self._outbox.register_url, url)

    # ------------------------------------------------------------------ events

    async def job_finished(self, job_id: str, url: str, body_json: str, status: str) -> Delivery:
        """Queue the finished job's JSON for `url`; `status` is done, failed or cancelled."""
        event = _job_event(status)
        delivery = await asyncio.to_thread(self._store_job_delivery, job_id, url, body_json, event)
        self._spawn_all([delivery])
        return delivery

    def job_finished_threadsafe(self, job_id: str, url: str, body_json: str, status: str) -> None:
        """job_finished for worker threads. The delivery is stored before this returns
        (one short SQLite write on the calling thread), so it survives a crash right
        after; sending then starts on the loop. Never waits for the loop."""
        event = _job_event(status)
        delivery = self._store_job_delivery(job_id, url, body_json, event)
        self._wake([delivery])

    async def model_event(self, name: str, body_json: str) -> list[Delivery]:
        """Queue a model event for every registered webhook URL."""
        _check_model_event(name)
        deliveries = await asyncio.to_thread(self._store_model_deliveries, name, body_json)
        self._spawn_all(deliveries)
        return deliveries

    def model_event_threadsafe(self, name: str, body_json: str) -> None:
        """model_event for any thread (ModelHost listeners): stored before it returns,
        sent from the loop. Never waits for the loop."""
        _check_model_event(name)
        self._wake(self._store_model_deliveries(name, body_json))

    # ------------------------------------------------------------------ internals

    def _store_job_delivery(self, job_id: str, url: str, body: str, event: str) -> Delivery:
        self._outbox.register_url(url)
        return self._outbox.add(url, event, body, job_id=job_id)

    def _store_model_deliveries(self, name: str, body: str) -> list[Delivery]:
        return self._outbox.add_many(NewDelivery(url, name, body) for url in self._outbox.urls())

    def _wake(self, deliveries: list[Delivery]) -> None:
        """Hand stored deliveries to the loop from any thread. Without a running loop
        they wait in the outbox for the next start()."""
        loop = self._loop
        if not deliveries or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._spawn_all, deliveries)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def _spawn_all(self, deliveries: list[Delivery]) -> None:
        """On the loop thread. Skips deliveries that already have a task: start() and a
        thread's _wake may both hand over the same one."""
        if not self._running:
            return
        for d in deliveries:
            if d.id not in self._tasks:
                task = asyncio.get_running_loop().create_task(self._deliver(d), name=f"webhook-{d.id}")
                self._tasks[d.id] = task
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        key = task.get_name().removeprefix("webhook-")
        if self._tasks.get(key) is task:
            del self._tasks[key]

    def _retry_delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based)."""
        return self._backoff[attempt - 1] if attempt <= len(self._backoff) else 0.0

    async def _deliver(self, d: Delivery) -> None:
        # Outbox times are wall-clock epoch seconds: they must mean the same after a restart.
        try:
            while True:
                delay = d.next_attempt_at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                # A delivery whose last allowed attempt was cut off by a crash is sent once
                # more rather than dropped: nobody knows whether that attempt arrived.
                attempt = min(d.attempt + 1, self.max_attempts)
                resume_at = time.time() + self._retry_delay(attempt)
                if not await asyncio.to_thread(self._outbox.record_attempt, d.id, attempt, resume_at):
                    return  # removed meanwhile
                result = await self._sender.send(d, attempt)
                if result.ok:
                    metrics.webhook_attempt("delivered")
                    await asyncio.to_thread(self._outbox.remove, d.id)
                    log.info("%s: delivered on attempt %d", _describe(d), attempt)
                    return
                if result.permanent or attempt >= self.max_attempts:
                    metrics.webhook_attempt("dropped")
                    await asyncio.to_thread(self._outbox.remove, d.id)
                    why = "refused" if result.permanent else f"failed {attempt} attempts"
                    log.warning("%s: dropped, %s; last error: %s", _describe(d), why, result.error)
                    return
                metrics.webhook_attempt("retrying")
                retry_in = self._retry_delay(attempt)
                retry_at = time.time() + retry_in
                await asyncio.to_thread(self._outbox.reschedule, d.id, retry_at, result.error or "")
                log.info(
                    "%s: attempt %d of %d failed (%s); next in %g s",
                    _describe(d), attempt, self.max_attempts, result.error, retry_in,
                )
                d = replace(d, attempt=attempt, next_attempt_at=retry_at, last_error=result.error)
        except Exception:  # not CancelledError: stop() cancels, and that is no failure
            # A bug or a broken outbox: keep the delivery stored for the next start rather
            # than spin on it now.
            log.exception("%s: delivery task failed; it stays pending until the next start", _describe(d))


def _job_event(status: str) -> str:
    event = JOB_EVENTS.get(str(status).lower())
    if event is None:
        raise ValueError(
            f"job webhook status must be one of {', '.join(JOB_EVENTS)} (a finished job), "
            f"got {status!r}"
        )
    return event


def _check_model_event(name: str) -> None:
    if name not in MODEL_EVENTS:
        raise ValueError(f"model event must be one of {', '.join(sorted(MODEL_EVENTS))}, got {name!r}")
