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

import dataclasses
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
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
from whisperd.sequential_decoder import SequentialWindowDecoder
from whisperd.stream_windows import PlannedWindow, StreamPlanner
from whisperd.transcript import Segment, Transcript, Word
from whisperd.windows import Span, has_speech

log = logging.getLogger(__name__)

DecoderFactory = Callable[[WhisperModel], WindowDecoder]

# How often a waiting caller looks at its cancel token: the bound on cancel latency.
_CANCEL_POLL_SECS = 0.1
# BATCH_SIZE 0 on a CPU: enough windows to keep 2-8 cores busy without a long wait for
# the first window's result.
CPU_BATCH_SIZE = 4
# A job reads ahead at most this many times the decoder's slots in windows not yet
# decoded (at most 30 s, 1.9 MB each): enough to refill every slot at once.
_READ_AHEAD_PER_SLOT = 2


def default_decoder_factory(
    *, batch_size: int = 0, threads: int = 0, gpu: bool = False, max_beams: int = 5
) -> DecoderFactory:
    """The batched decoder when this build has it, else the sequential reference.

    batch_size 0 = automatic: on a GPU the batched decoder's own choice from free VRAM
    (`BatchDecoder.auto_capacity(model)` when it has one), CPU_BATCH_SIZE on a CPU. The
    sequential decoder always gets one slot: it decodes one window per step anyway, and
    windows waiting in its slots would only delay a new job's first window.
    """
    try:
        from whisperd.batch_decoder import BatchDecoder  # type: ignore[import-not-found]
    except ImportError:
        BatchDecoder = None  # noqa: N806

    def make(model: WhisperModel) -> WindowDecoder:
        if BatchDecoder is None:
            return SequentialWindowDecoder(model, 1, threads)
        capacity = batch_size
        if capacity == 0:
            auto = getattr(BatchDecoder, "auto_capacity", None)
            capacity = auto(model, max_beams=max_beams) if gpu and auto is not None else CPU_BATCH_SIZE
        log.info("batched window decoder with %d slots of %d beams", capacity, max_beams)
        return BatchDecoder(model, capacity, threads, max_beams=max_beams)

    return make


@dataclass(eq=False)
class _Job:
    model: WhisperModel
    options: TranscribeOptions
    language: str | None  # None until the first window decoded has detected it
    windows: list[Span] = field(default_factory=list)  # planned so far, in order
    complete: bool = False  # every window is planned
    # Window index -> its samples (a copy, so the decoded chunk is freed) and the speech
    # the detector found in it (None = not looked); dropped once the window is done.
    pieces: dict[int, np.ndarray] = field(default_factory=dict)
    spans: dict[int, list[Span] | None] = field(default_factory=dict)
    # The windows to decode, in order (the vad option leaves out those without speech);
    # the first one detects the language.
    order: list[int] = field(default_factory=list)
    next_window: int = 0  # position in `order` of the next window for the decoder
    # Rests of windows the decoder ended early (window index, start sample): Whisper's
    # last timestamp fell well before the window's end, so the rest is decoded again
    # from there, as whisper.cpp seeks within a file. They go before new windows.
    rests: deque[tuple[int, int]] = field(default_factory=deque)
    # window id -> (window index, start sample of the piece decoded)
    in_flight: dict[int, tuple[int, int]] = field(default_factory=dict)
    parts: dict[int, list[tuple[int, WindowResult]]] = field(default_factory=dict)
    done: dict[int, list[tuple[int, WindowResult]]] = field(default_factory=dict)  # complete windows
    decoded: int = 0  # samples decoded, for progress
    changes: int = 0  # results taken in: the waiting caller looks again
    first: WindowResult | None = None  # the first result: the job's language
    error: BaseException | None = None
    gone: bool = False  # cancelled or failed: its windows leave the decoder

    def add(self, planned: list[PlannedWindow], complete: bool) -> None:
        """Windows the planner placed. The vad option: a window in which the detector
        found no speech is done as it is, with no segments, and never decoded."""
        for window in planned:
            index = len(self.windows)
            self.windows.append((window.start, window.end))
            silent = window.spans is not None and not has_speech(window.spans, window.start, window.end)
            if self.options.vad and silent:
                self.done[index] = []
                self.decoded += window.end - window.start
                continue
            self.pieces[index] = window.samples
            self.spans[index] = window.spans
            self.order.append(index)
        self.complete = complete
        self.changes += 1

    def can_queue(self) -> bool:
        if self.gone or self.error is not None:
            return False
        if self.rests:
            return True
        if self.next_window >= len(self.order):
            return False
        # Language detection: the other windows wait for the first one's answer.
        return self.language is not None or self.next_window == 0

    def request(self, window_id: int) -> WindowRequest:
        prompt = None
        if self.rests:
            index, start = self.rests.popleft()
            # whisper.cpp carries the text decoded so far into the rest of a window.
            before = " ".join(seg.text for _, r in self.parts[index] for seg in r.segments)
            prompt = " ".join(p for p in (self.options.initial_prompt, before) if p) or None
        else:
            index = self.order[self.next_window]
            start = self.windows[index][0]
            self.next_window += 1
        self.in_flight[window_id] = (index, start)
        options = self.options
        if options.language != self.language:
            options = dataclasses.replace(options, language=self.language)
        return WindowRequest(window_id, self.pieces[index][start - self.windows[index][0] :], options, prompt)

    def finished(self, window_id: int, result: WindowResult) -> None:
        index, start = self.in_flight.pop(window_id)
        end = self.windows[index][1]
        reached = min(end, start + max(0, round(result.end_secs * SAMPLE_RATE)))
        self.changes += 1
        self.parts.setdefault(index, []).append((start, result))
        if self.first is None:
            self.first = result
        if self.language is None:
            self.language = result.language
        # Less than a second left, or no progress: the window is done (whisper.cpp's
        # rule); so is a rest in which the detector found no speech (decoding silence
        # only invites a hallucination).
        spans = self.spans.get(index)
        speech_left = spans is None or has_speech(spans, reached, end)
        if end - reached > SAMPLE_RATE and reached > start and speech_left:
            self.rests.append((index, reached))
            self.decoded += reached - start
        else:
            self.done[index] = self.parts.pop(index)
            self.decoded += end - start
            self.pieces.pop(index, None)
            self.spans.pop(index, None)


class BatchScheduler:
    """Thread-safe; transcribe() blocks its caller until the job's windows are done."""

    def __init__(
        self,
        factory: DecoderFactory,
        *,
        vad_threads: int = 1,
        on_step: Callable[[int], None] = lambda windows: None,
    ) -> None:
        self._factory = factory
        self._on_step = on_step  # metrics: windows in each decoder step
        self._vad_threads = vad_threads
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()  # round-robin order: the head gives the next window
        self._windows: dict[int, _Job] = {}  # window id in the decoder -> its job
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
            self._vad_threads, lambda: cancel.cancelled, detect_short=options.vad, incremental=False, copy=False
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
        planner = StreamPlanner(self._vad_threads, lambda: cancel.cancelled, detect_short=options.vad)
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
        job = _Job(model, options, options.language if model.multilingual else "en")
        with self._cond:
            if self._stopping:
                raise TranscriptionAborted("the scheduler is stopping")
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

    # ------------------------------------------------------------------ the caller's side

    def _wait(
        self,
        job: _Job,
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
                read_more = not job.complete and len(job.pieces) < self._read_ahead()
            if read_more:
                # One chunk per turn, so segments and progress go out between chunks.
                if cancel.cancelled:
                    raise TranscriptionAborted("transcription cancelled")
                chunk = next(chunks, None)
                last = chunk is None
                planned = planner.finish() if chunk is None else planner.feed(chunk)
                del chunk  # the planner copied what it needs
                with self._cond:
                    job.add(planned, complete=last)
                    self._cond.notify_all()
            with self._cond:
                if not read_more:
                    self._cond.wait_for(
                        lambda: job.error is not None or job.changes != seen, timeout=_CANCEL_POLL_SECS
                    )
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
            ready: list[Segment] = []
            for (_, end), parts in finished:
                before = len(segments)
                for start, result in parts:
                    _stitch(segments, result, start / SAMPLE_RATE, (end - start) / SAMPLE_RATE)
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
            if all_done:
                break
        first = job.first
        return Transcript(
            segments=tuple(segments),
            language=job.language or (first.language if first else "") or "en",
            language_probability=first.language_probability if first else (0.0 if job.windows else 1.0),
            duration_secs=planner.seen / SAMPLE_RATE,
        )

    def _read_ahead(self) -> int:
        """Windows a job may hold undecoded: a multiple of the decoder's slots."""
        decoder = self._decoder
        capacity = decoder.capacity if decoder is not None else CPU_BATCH_SIZE
        return max(2, _READ_AHEAD_PER_SLOT * capacity)

    # ------------------------------------------------------------------ the scheduler thread

    def _forget_locked(self, job: _Job) -> None:
        job.gone = True
        job.pieces.clear()
        if job in self._jobs:
            self._jobs.remove(job)
        for window_id in job.in_flight:
            if self._windows.pop(window_id, None) is not None:
                self._to_drop.append(window_id)
        job.in_flight.clear()

    def _fail_locked(self, jobs: list[_Job], error: BaseException) -> None:
        for job in jobs:
            if job.error is None:
                job.error = error
            self._forget_locked(job)
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
            self._cond.wait_for(self._has_work_locked)
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
        if batch and not self._add(decoder, batch):
            return True
        if decoder.active() == 0:
            return True
        try:
            self._on_step(decoder.active())
            results = decoder.step()
        except Exception as exc:  # noqa: BLE001
            log.warning("window decoder step failed: %s", exc)
            self._decoder_failed(exc)
            return True
        with self._cond:
            for result in results:
                job = self._windows.pop(result.window_id, None)
                if job is not None:  # else its job was cancelled meanwhile
                    job.finished(result.window_id, result)
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
        most = max(1, capacity - 1)
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


def _stitch(out: list[Segment], result: WindowResult, offset: float, length: float) -> None:
    """Append a window's segments with times from the start of the audio, renumbered,
    inside the window and never before the previous segment's end."""
    for seg in result.segments:
        floor = out[-1].end if out else 0.0
        start = max(offset + min(max(seg.start, 0.0), length), floor)
        end = max(offset + min(max(seg.end, 0.0), length), start)
        words = tuple(_shift_word(w, offset, start, end) for w in seg.words)
        out.append(dataclasses.replace(seg, index=len(out), start=start, end=end, words=words))


def _shift_word(word: Word, offset: float, lo: float, hi: float) -> Word:
    start = min(max(word.start + offset, lo), hi)
    return dataclasses.replace(word, start=start, end=min(max(word.end + offset, start), hi))
