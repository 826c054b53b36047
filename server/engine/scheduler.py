"""One thread owns the window decoder and keeps its slots full with the windows of every
running job (continuous batching).

A job's caller (a WorkerPool worker) cuts its audio into windows as it is decoded,
chunk by chunk, hands them over and waits, reading ahead only a few windows more than
the decoder can hold, so a job's memory does not grow with its length; the scheduler
thread refills free slots round-robin across jobs, one window of each job in turn, so a
short job submitted behind a long one gets its windows into the batch at the next refill
instead of after the long one. Results go back to the caller's thread, which stitches
them (times offset by each window's start) and feeds its callbacks there, so a slow
store write never holds up the decoder.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np

from whisperd.batching import WindowDecoder, WindowRequest, WindowResult
from whisperd.inference import (
    SAMPLE_RATE,
    CancelToken,
    ProgressCallback,
    SegmentCallback,
    TranscribeOptions,
    TranscriptionAborted,
    WhisperModel,
)
from whisperd.server.engine.decoder_factory import CPU_BATCH_SIZE, DecoderFactory
from whisperd.server.engine.scheduled_job import ScheduledJob, stitch
from whisperd.server.engine.timeline import Timeline
from whisperd.stream_windows import StreamPlanner
from whisperd.transcript import Segment, Transcript
from whisperd.windows import Span, VadPool

log = logging.getLogger(__name__)

# How often a waiting caller looks at its cancel token: the bound on cancel latency.
_CANCEL_POLL_SECS = 0.1
# All jobs together read ahead at most this many times the decoder's slots in windows
# not yet in the decoder (at most 30 s, 1.9 MB each): enough to refill every slot at
# once, and memory that does not grow with the number of jobs admitted.
_READ_AHEAD_PER_SLOT = 2
# Each job may always have this many windows waiting, whatever the others hold: a short
# job's windows are planned at once even behind a long job that filled the budget.
_READ_AHEAD_PER_JOB = 2


class BatchScheduler:
    """Thread-safe; transcribe() blocks its caller until the job's windows are done."""

    def __init__(
        self,
        factory: DecoderFactory,
        *,
        vad_threads: int = 1,
        on_step: Callable[[int], None] = lambda windows: None,
        windows_per_job: int = 0,
    ) -> None:
        self._factory = factory
        # Windows of one job in the decoder at once; 0 = all slots but one. On a CPU one
        # is enough (a step there is compute-bound: more windows of a job only take turns),
        # and then a window's rest can join the job's next window (one encoder pass less).
        self._windows_per_job = windows_per_job
        self._on_step = on_step  # metrics: windows in each decoder step
        self._vad_threads = vad_threads
        # Every job's voice activity detection on one set of threads (windows.VadPool).
        self._vad = VadPool(vad_threads)
        # One lock: the scheduler thread waits on _cond; each job's caller on its own
        # condition of the same lock, so a step wakes only the jobs it gave results to.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.timeline = Timeline(lambda: self._vad.busy_secs)
        self._jobs: deque[ScheduledJob] = deque()  # round-robin order: the head gives the next window
        self._windows: dict[int, ScheduledJob] = {}  # window id in the decoder -> its job
        self._to_drop: list[int] = []
        self._next_id = 0
        self._release_requested = 0
        self._released = 0
        self._stopping = False
        self._decoder: WindowDecoder | None = None
        self._decoder_model: WhisperModel | None = None
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    def transcribe(
        self,
        model: WhisperModel,
        samples: np.ndarray,
        options: TranscribeOptions,
        *,
        cancel: CancelToken,
        on_progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> Transcript:
        """Decode `samples` (16 kHz mono float32) in windows; blocks until done.

        The windows are planned on the whole array at once (windows.plan) and are views
        of it. Raises TranscriptionAborted when `cancel` fires or the decoder is released
        under the job, ValueError on bad options, and the decoder's errors
        (OutOfMemoryError included) as they happened.
        """
        options.validate()
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {samples.shape}")
        planner = StreamPlanner(
            self._vad_threads, lambda: cancel.cancelled, detect_short=options.vad, incremental=False, copy=False,
            pool=self._vad,
        )
        return self._run_job(model, planner, iter([samples]), len(samples), options, cancel, on_progress, on_segment)

    def transcribe_stream(
        self,
        model: WhisperModel,
        chunks: Iterable[np.ndarray],
        options: TranscribeOptions,
        *,
        cancel: CancelToken,
        duration_secs: float = 0.0,
        on_progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> Transcript:
        """transcribe() for audio that arrives in chunks (audio.decode_chunks), in order.

        Windows are planned as the chunks come and copied out of them; the next chunk is
        read only while fewer than _READ_AHEAD_PER_SLOT x the decoder's slots of this
        job's windows wait undecoded, so memory does not grow with the audio's length.
        `duration_secs` (the job's measured length) is the progress denominator.
        Whatever iterating `chunks` raises (a decode error, a cancelled decode) reaches
        the caller as it is.
        """
        options.validate()
        planner = StreamPlanner(self._vad_threads, lambda: cancel.cancelled, detect_short=options.vad, pool=self._vad)
        total = round(duration_secs * SAMPLE_RATE)
        return self._run_job(model, planner, iter(chunks), total, options, cancel, on_progress, on_segment)

    def _run_job(
        self,
        model: WhisperModel,
        planner: StreamPlanner,
        chunks: Iterator[np.ndarray],
        total: int,
        options: TranscribeOptions,
        cancel: CancelToken,
        on_progress: ProgressCallback | None,
        on_segment: SegmentCallback | None,
    ) -> Transcript:
        job = ScheduledJob(model, options, options.language if model.multilingual else "en")
        job.wake = threading.Condition(self._lock)
        with self._cond:
            if self._stopping:
                raise TranscriptionAborted("the scheduler is stopping")
            self.timeline.job_started()
            self._jobs.append(job)
            self._cond.notify_all()
        try:
            return self._wait(job, planner, chunks, total, cancel, on_progress, on_segment)
        finally:
            with self._cond:
                self._forget_locked(job)
                self._cond.notify_all()

    def release(self) -> None:
        """Close the decoder (the model is about to be unloaded); blocks until it is.
        Jobs still waiting end with TranscriptionAborted."""
        with self._cond:
            if self._stopping:
                return
            self._release_requested += 1
            ticket = self._release_requested
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._released >= ticket or not self._thread.is_alive())

    def close(self) -> None:
        """Stop the thread and free the decoder (server shutdown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        self._vad.close()

    # ------------------------------------------------------------------ the caller's side

    def _wait(
        self,
        job: ScheduledJob,
        planner: StreamPlanner,
        chunks: Iterator[np.ndarray],
        total: int,
        cancel: CancelToken,
        on_progress: ProgressCallback | None,
        on_segment: SegmentCallback | None,
    ) -> Transcript:
        emitted = 0  # windows whose segments went out
        segments: list[Segment] = []
        last_progress = -1
        seen = -1
        while True:
            with self._cond:
                read_more = self._may_read_locked(job)
            if read_more:
                # One chunk per turn, so segments and progress go out between chunks.
                if cancel.cancelled:
                    raise TranscriptionAborted("transcription cancelled")
                t0 = time.perf_counter()
                chunk = next(chunks, None)
                t1 = time.perf_counter()
                last = chunk is None
                planned = planner.finish() if chunk is None else planner.feed(chunk)
                del chunk  # the planner copied what it needs
                with self._cond:
                    self.timeline.read(t1 - t0, time.perf_counter() - t1)
                    job.add(planned, complete=last)
                    if planned:
                        self.timeline.planned(planned)
                    self._cond.notify_all()
            with self._cond:
                if not read_more:
                    assert job.wake is not None
                    t0 = time.perf_counter()
                    job.wake.wait_for(
                        lambda: job.error is not None or job.changes != seen, timeout=_CANCEL_POLL_SECS
                    )
                    if not job.complete:
                        self.timeline.waited_for_room(time.perf_counter() - t0)
                seen = job.changes
                error = job.error
                complete = job.complete
                decoded = job.decoded
                planned = len(job.windows)
                finished: list[tuple[Span, list[tuple[int, WindowResult]]]] = []
                while emitted + len(finished) in job.done:
                    index = emitted + len(finished)
                    finished.append((job.windows[index], job.done.pop(index)))
            if cancel.cancelled:
                raise TranscriptionAborted("transcription cancelled")
            if error is not None:
                raise error
            t0 = time.perf_counter()
            ready: list[Segment] = []
            for (_, end), parts in finished:
                before = len(segments)
                for start, result in parts:
                    stitch(segments, result, start / SAMPLE_RATE, (end - start) / SAMPLE_RATE, rest=start in job.seams)
                ready.extend(segments[before:])
            emitted += len(finished)
            if on_segment is not None:
                for segment in ready:
                    on_segment(segment)
            all_done = complete and emitted == planned
            percent = 100 if all_done else min(99, decoded * 100 // max(total, planner.seen, 1))
            # The first report once windows are queued (the worker reported 0 % already).
            if on_progress is not None and percent > last_progress and planned:
                last_progress = percent
                on_progress(percent)
            if finished:
                with self._cond:
                    self.timeline.handed_out(time.perf_counter() - t0)
            if all_done:
                break
        first = job.first
        return Transcript(
            segments=tuple(segments),
            language=job.language or (first.language if first else "") or "en",
            language_probability=first.language_probability if first else (0.0 if job.windows else 1.0),
            duration_secs=planner.seen / SAMPLE_RATE,
        )

    def _may_read_locked(self, job: ScheduledJob) -> bool:
        """Whether the job's caller may read more audio: while the job has fewer than
        _READ_AHEAD_PER_JOB windows waiting for the decoder, or all jobs together fewer
        than _READ_AHEAD_PER_SLOT x the decoder's slots."""
        if job.complete:
            return False
        if job.waiting() < _READ_AHEAD_PER_JOB:
            return True
        decoder = self._decoder
        capacity = decoder.capacity if decoder is not None else CPU_BATCH_SIZE
        return sum(j.waiting() for j in self._jobs) < max(2, _READ_AHEAD_PER_SLOT * capacity)

    # ------------------------------------------------------------------ the scheduler thread

    def _forget_locked(self, job: ScheduledJob) -> None:
        job.gone = True
        job.pieces.clear()
        if job in self._jobs:
            self._jobs.remove(job)
        for window_id in job.in_flight:
            if self._windows.pop(window_id, None) is not None:
                self._to_drop.append(window_id)
        job.in_flight.clear()

    def _fail_locked(self, jobs: list[ScheduledJob], error: BaseException) -> None:
        for job in jobs:
            if job.error is None:
                job.error = error
            self._forget_locked(job)
            if job.wake is not None:
                job.wake.notify_all()
        self._cond.notify_all()

    def _has_work_locked(self) -> bool:
        if self._stopping or self._release_requested > self._released or self._to_drop:
            return True
        if self._decoder is not None and self._decoder.active() > 0:
            return True
        return any(job.can_queue() for job in self._jobs)

    def _run(self) -> None:
        try:
            while self._turn():
                pass
        finally:
            self._close_decoder()
            with self._cond:
                self._fail_locked(list(self._jobs), TranscriptionAborted("the scheduler stopped"))
                self._released = self._release_requested
                self._cond.notify_all()

    def _turn(self) -> bool:
        """One round: honour a release, drop cancelled windows, refill, one decoder step.
        False when the scheduler stops."""
        with self._cond:
            while not self._has_work_locked():
                self.timeline.idle(self._decoder, len(self._jobs))
                self._cond.wait()
            if self._stopping:
                return False
            release = self._release_requested
            drops, self._to_drop = self._to_drop, []
        if release > self._released:
            self._close_decoder()
            with self._cond:
                self._fail_locked(list(self._jobs), TranscriptionAborted("the model is being unloaded"))
                self._released = release
                self._cond.notify_all()
            return True
        decoder = self._decoder
        if decoder is not None:
            for window_id in drops:
                decoder.drop(window_id)
        if not self._ensure_decoder():
            return True
        decoder = self._decoder
        assert decoder is not None
        with self._cond:
            batch = self._pick_locked(decoder.free_slots(), decoder.capacity)
            if batch:  # room in the read-ahead: the jobs still reading may go on
                for job in self._jobs:
                    if not job.complete and job.wake is not None:
                        job.wake.notify_all()
        if batch:
            t = time.perf_counter()
            added = self._add(decoder, batch)
            self.timeline.added(len(batch), time.perf_counter() - t, decoder)
            if not added:
                return True
        if decoder.active() == 0:
            return True
        try:
            active = decoder.active()
            self._on_step(active)
            t = time.perf_counter()
            results = decoder.step()
            self.timeline.stepped(active, decoder.capacity, time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001
            log.warning("window decoder step failed: %s", exc)
            self._decoder_failed(exc)
            return True
        with self._cond:
            for result in results:
                job = self._windows.pop(result.window_id, None)
                if job is not None:  # else its job was cancelled meanwhile
                    job.finished(result.window_id, result)
                    if job.wake is not None:
                        job.wake.notify_all()
            self._cond.notify_all()
        return True

    def _add(self, decoder: WindowDecoder, batch: list[WindowRequest]) -> bool:
        """Hand windows to the decoder; False when it failed (and is gone)."""
        try:
            decoder.add(batch)
            return True
        except ValueError:
            pass  # a window this decoder cannot take (options beyond its limits): find it
        except Exception as exc:  # noqa: BLE001 - out of memory among others: the jobs hear of it
            log.warning("window decoder failed to take %d windows: %s", len(batch), exc)
            self._decoder_failed(exc)
            return False
        for request in batch:
            with self._cond:
                if request.window_id not in self._windows:
                    continue  # its job failed on an earlier window of this batch
            try:
                decoder.add([request])
            except ValueError as exc:
                with self._cond:
                    job = self._windows.pop(request.window_id, None)
                    if job is not None:
                        job.in_flight.pop(request.window_id, None)
                        self._fail_locked([job], exc)
            except Exception as exc:  # noqa: BLE001
                log.warning("window decoder failed to take a window: %s", exc)
                self._decoder_failed(exc)
                return False
        return True

    def _ensure_decoder(self) -> bool:
        """A decoder for the model the waiting jobs were given; False when there is none."""
        with self._cond:
            wanted = next((j.model for j in self._jobs if j.can_queue() or j.in_flight), None)
        if self._decoder is not None and (wanted is None or wanted is self._decoder_model):
            return True
        if self._decoder is not None and self._decoder.active() > 0:
            return True  # the old model's windows finish first
        self._close_decoder()
        if wanted is None:
            return False
        try:
            self._decoder = self._factory(wanted)
        except Exception as exc:  # noqa: BLE001 - out of memory among others
            log.warning("could not make a window decoder: %s", exc)
            with self._cond:
                self._fail_locked([j for j in self._jobs if j.model is wanted], exc)
            return False
        self._decoder_model = wanted
        return True

    def _pick_locked(self, free: int, capacity: int) -> list[WindowRequest]:
        """Up to `free` windows, one per job in turn, starting where the last refill
        stopped. No job holds every slot: one is kept for a job that comes next, so it
        starts at the next step instead of after a window of the running one."""
        most = self._windows_per_job or max(1, capacity - 1)
        batch: list[WindowRequest] = []
        while free > 0:
            progressed = False
            for _ in range(len(self._jobs)):
                if free == 0:
                    break
                job = self._jobs[0]
                self._jobs.rotate(-1)
                if job.model is not self._decoder_model or not job.can_queue() or len(job.in_flight) >= most:
                    continue
                window_id = self._next_id
                self._next_id += 1
                self._windows[window_id] = job
                batch.append(job.request(window_id))
                free -= 1
                progressed = True
            if not progressed:
                break
        return batch

    def _decoder_failed(self, exc: BaseException) -> None:
        """The decoder's state is unknown after an error: every job in it fails, and the
        next window gets a new decoder."""
        self._close_decoder()
        with self._cond:
            self._fail_locked([j for j in self._jobs if j.in_flight], exc)
            self._windows.clear()
            self._to_drop.clear()

    def _close_decoder(self) -> None:
        decoder, self._decoder, self._decoder_model = self._decoder, None, None
        if decoder is not None:
            try:
                decoder.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                log.exception("closing the window decoder failed")
