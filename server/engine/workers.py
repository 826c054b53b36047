"""Worker threads: each claims queued jobs and waits while the batch scheduler decodes
the job's windows together with every other job's (sequential-mode jobs run on a fresh
decoding state of their own). Native calls release the GIL, so the event loop stays free.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from whisperd.server.engine.lifecycle import ModelHost, ModelState, Transition
from whisperd.server.engine.decoder_factory import DecoderFactory, default_decoder_factory, windows_per_job
from whisperd.server.engine.scheduler import BatchScheduler
from whisperd.server.jobs.errors import JobStateError
from whisperd.server.jobs.events import EventHub, FinishedEvent, ProgressEvent, RequeuedEvent, SegmentEvent
from whisperd.server.jobs.health_guard import StorageGuard
from whisperd.server.jobs.model import JobRecord, JobStatus
from whisperd.server.jobs.store import JobStore
from whisperd.audio import AudioDecodeError, DecodeCancelled, decode_audio, decode_chunks
from whisperd.inference import (
    CancelToken,
    OutOfMemoryError,
    TranscribeOptions,
    TranscriptionAborted,
    WhisperError,
    WhisperModel,
)
from whisperd.nonspeech import SpeechOnly, speech_only
from whisperd.transcript import Segment

log = logging.getLogger(__name__)

# Progress is written to the store at most this often (events go out on every change).
_PROGRESS_WRITE_SECS = 1.0


@dataclass
class _Running:
    job_id: str
    token: CancelToken = field(default_factory=CancelToken)
    # Why it was stopped: "cancel" (client), or a reason to put it back in the queue.
    stop_reason: str | None = None


class WorkerPool:
    """PARALLEL_JOBS worker threads sharing one model host."""

    def __init__(
        self,
        *,
        store: JobStore,
        host: ModelHost,
        hub: EventHub,
        workers: int,
        threads_per_job: int,
        bench_tokens_per_window: int = 0,
        batch_size: int = 0,
        batch_max_beams: int = 5,
        cuda_encoder: bool | None = None,
        decoder_threads: int = 0,
        decoder_factory: DecoderFactory | None = None,
        on_finished: Callable[[JobRecord], None] = lambda job: None,
        on_started: Callable[[JobRecord], None] = lambda job: None,
        on_decoder_step: Callable[[int], None] = lambda windows: None,
        localise: Callable[[JobRecord], AbstractContextManager[JobRecord]] = nullcontext,
        storage: StorageGuard | None = None,
    ) -> None:
        self._store = store
        self._host = host
        self._hub = hub
        self._threads_per_job = threads_per_job
        self._bench_tokens = bench_tokens_per_window
        # One window decoder for every job of this model host: the workers only wait on
        # it (BATCH_SIZE windows at once; decoder_threads 0 = every CPU).
        self._scheduler = BatchScheduler(
            decoder_factory
            or default_decoder_factory(
                batch_size=batch_size, threads=decoder_threads, gpu=host.use_gpu, max_beams=batch_max_beams,
                cuda_encoder=cuda_encoder,
            ),
            vad_threads=decoder_threads or (os.cpu_count() or 1),
            on_step=on_decoder_step,
            windows_per_job=windows_per_job(host.use_gpu),
        )
        self._on_finished = on_finished
        self._on_started = on_started  # metrics: a claimed job's wait in the queue
        # The job with its audio as a local file for the length of the job (an upload in
        # an object store is downloaded; a spooled one is already local).
        self._localise = localise
        # A full disk: no claims meanwhile, and job endings that could not be written
        # wait there until they can.
        self._storage = storage
        self._stop = threading.Event()
        self._no_new_jobs = threading.Event()
        self._wake = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._running_lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            for i in range(workers)
        ]
        host.set_before_unload(self._release_for_unload)
        host.set_busy_probe(self.busy)
        host.add_listener(self._on_model_event)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wake(self) -> None:
        """A job was queued."""
        with self._wake:
            self._wake.notify_all()

    def running_count(self) -> int:
        with self._running_lock:
            return len(self._running)

    def running_ids(self) -> list[str]:
        """The jobs running here now (a shared store's heartbeat renews their leases)."""
        with self._running_lock:
            return list(self._running)

    def busy(self) -> bool:
        return self.running_count() > 0 or self._store.queue_depth() > 0

    def cancel(self, job_id: str) -> bool:
        """Stop a job running here; True if it was. The store already says cancelled.
        Under the claim lock, so a job is either registered here or not claimed at all."""
        with self._claim_lock:
            return self._interrupt(job_id, "cancel")

    def _interrupt(self, job_id: str, reason: str) -> bool:
        with self._running_lock:
            running = self._running.get(job_id)
            if running is None:
                return False
            running.stop_reason = reason
            running.token.cancel()
            return True

    def _interrupt_all(self, reason: str) -> None:
        with self._running_lock:
            for running in self._running.values():
                running.stop_reason = reason
                running.token.cancel()

    def _wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running_count() > 0:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _release_for_unload(self, reason: str) -> None:
        """Before the weights go: running jobs back to the head of the queue, states freed."""
        self._no_new_jobs.set()
        with self._claim_lock:
            pass  # a worker between claim and registration finishes registering
        try:
            self._interrupt_all(f"model unloading: {reason}")
            self._wait_idle()
            self._scheduler.release()
        finally:
            self._no_new_jobs.clear()

    def _on_model_event(self, event: Transition) -> None:
        # A load that failed for good (not for lack of VRAM) fails the waiting jobs:
        # accepted jobs must end with a reason, not wait forever.
        if event.state == ModelState.UNLOADED and event.reason.startswith("load failed"):
            threading.Thread(target=self._fail_queued, args=(event.reason,), daemon=True).start()

    def _fail_queued(self, reason: str) -> None:
        while (job := self._store.claim_next(self._host.model_path.name)) is not None:
            self._finish(job, JobStatus.FAILED, error=f"model could not be loaded: {reason}")

    def stop(self, grace: float) -> None:
        """Shutdown: take no new jobs, let running ones finish for `grace` seconds, then
        put them back in the queue for the next start."""
        self._no_new_jobs.set()
        if not self._wait_idle(grace):
            self._interrupt_all("server shutting down")
            self._wait_idle(30)
        self._stop.set()
        self.wake()
        for t in self._threads:
            t.join(timeout=10)
        self._scheduler.close()

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        """A worker outlives every exception (a full disk, a store error): a dead worker
        would leave accepted jobs queued until a restart."""
        while not self._stop.is_set():
            try:
                self._serve_jobs()
            except Exception as exc:
                if not self._storage_failed(exc, "a worker's store access"):
                    log.exception("worker: unexpected error outside a job; carrying on")
                self._stop.wait(1.0)

    def _storage_failed(self, exc: BaseException, what: str) -> bool:
        return self._storage is not None and self._storage.report(exc, what)

    def _serve_jobs(self) -> None:
        while not self._stop.is_set():
            storage_ok = self._storage is None or self._storage.writable
            if self._no_new_jobs.is_set() or not storage_ok or self._store.queue_depth() == 0:
                with self._wake:
                    self._wake.wait(timeout=0.5)
                continue
            model = self._host.wait_ready(self._stop, timeout=0.5)
            if model is None:
                continue
            # Claiming and registering happen under one lock, so an unload that takes
            # the lock after raising _no_new_jobs sees every job that got past it.
            with self._claim_lock:
                if self._no_new_jobs.is_set():
                    continue
                job = self._store.claim_next(self._host.model_path.name)
                if job is None:
                    continue
                running = _Running(job.id)
                with self._running_lock:
                    self._running[job.id] = running
            self._on_started(job)
            try:
                with self._localise(job) as local_job:
                    self._transcribe(local_job, model, running)
            except OutOfMemoryError as exc:
                self._requeue_after_oom(job, exc)
            except Exception as exc:  # never let a worker die; the job ends with a reason
                if self._storage_failed(exc, f"job {job.id}"):
                    # Not the job's fault: it runs again once the disk has room.
                    self._defer(f"job {job.id}: back to the queue", lambda j=job: self._requeue_now(j.id, "the disk was full"))
                else:
                    log.exception("job %s: unexpected error", job.id)
                    self._finish(job, JobStatus.FAILED, error="internal error (see the server log)")
            finally:
                with self._running_lock:
                    self._running.pop(job.id, None)
                self._host.touch()

    def _requeue_after_oom(self, job: JobRecord, exc: Exception) -> None:
        self._store.requeue(job.id, at_head=True, reason=str(exc))
        self._hub.publish_threadsafe(RequeuedEvent(job.id))
        log.warning("job %s: out of memory, requeued; reloading the model: %s", job.id, exc)

        def reload() -> None:
            self._host.unload("out of memory during a job")
            self._host.request_load("reload after running out of memory")

        threading.Thread(target=reload, name="oom-reload", daemon=True).start()

    def _transcribe(self, job: JobRecord, model: WhisperModel, running: _Running) -> None:
        # With several GPUs (GPU_DEVICES) the line says which one took the job.
        where = f" on gpu {self._host.gpu_device}" if self._host.use_gpu else ""
        log.info("job %s: started%s (attempt %d, %.1f s of audio)", job.id, where, job.attempts,
                 job.duration_secs)
        self._hub.publish_threadsafe(ProgressEvent(job.id, 0.0))
        audio = Path(job.audio_path or "")
        opts = job.options
        options = TranscribeOptions(
            language=opts.language,
            task=opts.task,  # type: ignore[arg-type]
            beam_size=opts.beam_size,
            temperature=opts.temperature,
            temperature_increment=opts.temperature_increment,
            initial_prompt=opts.initial_prompt,
            word_timestamps=opts.word_timestamps,
            vad=opts.vad,
            threads=self._threads_per_job,
            forced_tokens_per_window=self._bench_tokens,
        )
        last_write = 0.0

        def on_progress(percent: int) -> None:
            nonlocal last_write
            self._hub.publish_threadsafe(ProgressEvent(job.id, float(percent)))
            now = time.monotonic()
            if now - last_write >= _PROGRESS_WRITE_SECS or percent >= 100:
                last_write = now
                self._store.update_progress(job.id, float(percent))

        speech = SpeechOnly()  # [BLANK_AUDIO] and the like are not transcript text

        def on_segment(raw: Segment) -> None:
            if (segment := speech.keep(raw)) is None:
                return
            self._store.add_segments(job.id, [segment])
            self._hub.publish_threadsafe(SegmentEvent(job.id, segment))

        started = time.monotonic()
        try:
            if opts.condition_on_previous_text:
                # Sequential mode: the whole file on one state, each 30 s window prompted
                # with the previous one's text. A fresh state per job: whisper.cpp 1.8.5's
                # results on a reused state depend on what that state decoded before.
                # It holds the whole file's samples (MAX_AUDIO_SECS bounds them).
                samples = decode_audio(audio, should_stop=lambda: running.token.cancelled)
                with model.new_state() as state:
                    result = state.transcribe(
                        samples, options, cancel=running.token, on_progress=on_progress, on_segment=on_segment
                    )
            else:
                # Decoded chunk by chunk as the windows are needed: memory does not grow
                # with the audio's length.
                result = self._scheduler.transcribe_stream(
                    model, decode_chunks(audio, should_stop=lambda: running.token.cancelled), options,
                    duration_secs=job.duration_secs, cancel=running.token, on_progress=on_progress,
                    on_segment=on_segment,
                )
        except (AudioDecodeError, FileNotFoundError) as exc:
            self._finish(job, JobStatus.FAILED, error=f"audio could not be decoded: {exc}")
            return
        except (TranscriptionAborted, DecodeCancelled):
            self._stopped(job, running)
            return
        except (ValueError, WhisperError) as exc:
            self._finish(job, JobStatus.FAILED, error=str(exc))
            return
        elapsed = time.monotonic() - started
        log.info(
            "job %s: done in %.2f s (%.1fx real time), %d segments, language %s",
            job.id, elapsed, job.duration_secs / max(elapsed, 1e-6), len(result.segments), result.language,
        )
        if result.timings is not None:
            t = result.timings
            log.debug(
                "job %s: encoder %.1f ms x %d, decoder %.2f ms/step x %d (sampling %.1f ms), "
                "prompt %.1f ms, fallbacks %d",
                job.id, t.encode_ms / max(1, t.n_encode), t.n_encode, t.ms_per_step,
                t.decoder_steps, t.sample_ms, t.prompt_ms, t.n_fallbacks,
            )
        self._finish(
            job,
            JobStatus.DONE,
            segments=list(result.segments),
            language=result.language,
            language_probability=result.language_probability,
        )

    def _stopped(self, job: JobRecord, running: _Running) -> None:
        """A running job was stopped: cancelled for good, or back to the queue (unload,
        shutdown)."""
        if running.stop_reason == "cancel":
            log.info("job %s: cancelled while running", job.id)
            self._ended(job.id)
            return
        reason = running.stop_reason or "interrupted"
        try:
            self._requeue_now(job.id, reason)
        except Exception as exc:
            if not self._storage_failed(exc, f"job {job.id}: requeue"):
                raise
            self._defer(f"job {job.id}: back to the queue", lambda: self._requeue_now(job.id, reason))

    def _requeue_now(self, job_id: str, reason: str) -> None:
        try:
            self._store.requeue(job_id, at_head=True, reason=reason)
        except JobStateError:  # a client cancelled it meanwhile: that wins
            self._ended(job_id)
            return
        log.info("job %s: back to the head of the queue (%s)", job_id, reason)
        self._hub.publish_threadsafe(RequeuedEvent(job_id))
        self.wake()

    def _defer(self, what: str, action: Callable[[], None]) -> None:
        assert self._storage is not None  # only after _storage_failed said yes
        self._storage.defer(what, action)

    def _finish(self, job: JobRecord, status: JobStatus, **fields: object) -> None:
        try:
            self._finish_now(job, status, fields)
        except Exception as exc:
            if not self._storage_failed(exc, f"job {job.id}: recording its end"):
                raise
            # The ending is kept and written once the disk has room (the job stays
            # running in the store meanwhile; a restart would requeue it).
            self._defer(f"job {job.id}: record it {status.value}", lambda: self._finish_now(job, status, fields))

    def _finish_now(self, job: JobRecord, status: JobStatus, fields: dict[str, object]) -> None:
        if isinstance(segments := fields.get("segments"), list):
            # Numbered as on_segment streamed them (same filter, same order).
            fields = {**fields, "segments": speech_only(segments)}
        try:
            final = self._store.finish(job.id, status, **fields)  # type: ignore[arg-type]
        except JobStateError:
            # It ended meanwhile (a client cancelled it): the first ending wins.
            self._ended(job.id)
            return
        if status == JobStatus.FAILED:
            log.warning("job %s: failed: %s", job.id, fields.get("error"))
        self._ended(job.id, final)

    def _ended(self, job_id: str, final: JobRecord | None = None) -> None:
        """A job reached a terminal state: drop its audio, tell subscribers and hooks."""
        try:
            record = final or self._store.get(job_id)
        except Exception:
            log.exception("job %s: could not read it back after it ended", job_id)
            record = None
        if record is not None and record.audio_path:
            Path(record.audio_path).unlink(missing_ok=True)
        self._hub.publish_threadsafe(FinishedEvent(job_id))
        if record is not None:
            try:
                self._on_finished(record)
            except Exception:
                log.exception("job %s: finish hook failed", job_id)
