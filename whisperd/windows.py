"""Cutting a job's audio into windows of at most 30 s at silences.

Whisper reads 30 s at a time. Windows cut where nobody speaks can be decoded
independently (in one batch, in any order) and stitched back by offsetting their times:
no word is split between two windows, so none is lost or heard twice. The speech spans
come from Silero VAD (the weights the build installs beside the extension); a build
without them, or without the native call, finds silences by RMS energy instead.

Every offset here is in samples at 16 kHz.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from whisperd import _native
from whisperd.batching import WINDOW_SECS
from whisperd.inference import SAMPLE_RATE, WhisperError, vad_model_path

log = logging.getLogger(__name__)

Span = tuple[int, int]

MAX_WINDOW = int(WINDOW_SECS * SAMPLE_RATE)
# Where a span longer than a window must be cut: the quietest 0.1 s in its last 5 s
# before the limit (a breath, a pause between words), never mid-syllable if avoidable.
_QUIET_FRAME = SAMPLE_RATE // 10
_QUIET_SEARCH = 5 * SAMPLE_RATE
# A window starts this long before its first speech, or in the middle of a shorter pause:
# Whisper tends to put its first timestamp at 0 s, so leading silence makes the first
# segment start early (and on tiny.en it made more word errors).
_LEAD_IN = 3 * SAMPLE_RATE // 10
# A cut in the first half of a window is taken only when the second half has no silence:
# short windows cost a decode each and give the decoder less context.
_PREFERRED_FROM = 0.5
# Among those, a later cut is worth a shorter pause: each cut scores its position plus
# _PAUSE_WORTH times its pause (counted up to _PAUSE_CAP), and the best score wins. Every
# window costs an encoder pass and a decode however short it is (Whisper itself seeks
# 30 s at a time), so windows should end near 30 s; but a long pause is more often a
# sentence's end, and a window that stops mid-sentence leaves a rest to decode again
# (Whisper's last timestamp falls before the cut). At 10 s a second, a 1 s pause beats a
# 0.5 s one up to 5 s later; the weakest pause still ends the window at a word's edge.
_PAUSE_WORTH = 10
_PAUSE_CAP = 2 * SAMPLE_RATE

# Silero runs on pieces of ~30 s, one per thread, each single-threaded (the native
# forward pass batches 128 frames at a time; whisper.cpp's per-frame graphs were too small
# to split: ggml's thread barriers made 4 threads on 2 cores 14x slower than one). Each piece starts 4 s early (Silero misses speech already
# under way where its input starts): its spans count from the middle of that overlap, the
# earlier piece's up to it. The pieces do not depend on the number of threads, so neither
# do the spans; `should_stop` is asked before each piece. Both are whole numbers of
# Silero's 512-sample frames, so every piece reads the frames an unsplit run would (a
# half-frame shift moved a span's start by 10 ms, and tiny.en heard "america" for
# "americans").
_VAD_FRAME = 512
_VAD_PIECE = 960 * _VAD_FRAME  # 30.72 s
_VAD_OVERLAP = 125 * _VAD_FRAME  # 4 s
# Silero parameters: whisper.cpp's defaults, which its VAD option uses as well.
VAD_THRESHOLD = 0.5
VAD_MIN_SPEECH_MS = 250
VAD_MIN_SILENCE_MS = 100
VAD_SPEECH_PAD_MS = 30


def vad_pieces(n_samples: int) -> list[Span]:
    """The pieces Silero runs on (each also reads the _VAD_OVERLAP before it)."""
    return [(a, min(n_samples, a + _VAD_PIECE)) for a in range(0, n_samples, _VAD_PIECE)]


# The detector's threads run this much lower in the CPU's priority than the rest of the
# process: one thread drives the GPU, and with every core busy with Silero (an hour of
# audio was ~22 thread-seconds on an H200 host's 16 cores with whisper.cpp's forward pass;
# whisperd's own is ~5x cheaper) its encoder passes and steps took 20-40 % longer in the
# service than alone (8.5-8.8 instead of 6.9 ms a window).
VAD_NICENESS = 10


def _lower_priority() -> None:
    """Run the calling thread VAD_NICENESS lower (Linux: each thread has its own)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + VAD_NICENESS))
    except (AttributeError, OSError):  # not Linux, or not allowed: the same speed, less fair
        pass


class VadPool:
    """Threads that run Silero's pieces for every job that uses the pool: pieces queue
    in the order they came (the first job's windows are ready first) and never run on
    more threads than the pool has. `idle()` says whether a thread is free for one more
    piece: a caller then need not wait for its last pieces before reading more audio."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._executor = ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="vad", initializer=_lower_priority
        )
        self._lock = threading.Lock()
        self._queued = 0  # pieces submitted and not finished
        self.busy_secs = 0.0  # thread seconds the pieces ran (the batch timeline logs it)

    def idle(self) -> bool:
        with self._lock:
            return self._queued < self.threads

    def submit(self, fn: Callable[[], list[Span]]) -> Future[list[Span]]:
        with self._lock:
            self._queued += 1

        def timed() -> list[Span]:
            t = time.perf_counter()
            try:
                return fn()
            finally:
                with self._lock:
                    self.busy_secs += time.perf_counter() - t

        future = self._executor.submit(timed)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[list[Span]]) -> None:
        with self._lock:
            self._queued -= 1

    def close(self) -> None:
        """Pieces not started are dropped (their callers see no speech there)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class PendingSpans:
    """speech_spans under way on a VadPool (or already done): result() waits for it."""

    def __init__(self, samples: np.ndarray, parts: list[Future[list[Span]]] | list[list[Span]]) -> None:
        self._samples = samples
        self._parts = parts

    def done(self) -> bool:
        return all(not isinstance(p, Future) or p.done() for p in self._parts)

    def result(self) -> list[Span]:
        spans: list[Span] = []
        try:
            for part in self._parts:
                spans += part.result() if isinstance(part, Future) else part
        except CancelledError:  # the pool closed under the job, which ends anyway
            return []
        except WhisperError as exc:  # the weights did not load: energy still finds pauses
            log.warning("voice activity detection failed (%s); cutting at low-energy pauses", exc)
            return energy_speech_spans(self._samples)
        # A span cut at a seam continues in the next piece: merged again.
        return merge_spans(spans, len(self._samples))


def _vad_options() -> _native.Options | None:
    """Silero's options, or None when this build cannot run it."""
    model = vad_model_path()
    if not (hasattr(_native, "vad_speech_spans") and model.is_file()):
        return None
    opts = _native.Options()
    opts.vad_model_path = str(model)
    opts.vad_threshold = VAD_THRESHOLD
    opts.vad_min_speech_ms = VAD_MIN_SPEECH_MS
    opts.vad_min_silence_ms = VAD_MIN_SILENCE_MS
    opts.vad_speech_pad_ms = VAD_SPEECH_PAD_MS
    return opts


def start_speech_spans(
    samples: np.ndarray, pool: VadPool | None, should_stop: Callable[[], bool] | None = None
) -> PendingSpans:
    """speech_spans with its pieces queued on `pool` (None: run now, on this thread)."""
    opts = _vad_options()
    if opts is None:
        return PendingSpans(samples, [energy_speech_spans(samples)])

    def detect(piece: Span) -> list[Span]:
        if should_stop is not None and should_stop():
            return []
        a, b = piece
        start = max(0, a - _VAD_OVERLAP)
        seam = max(0, a - _VAD_OVERLAP // 2)
        data = np.ascontiguousarray(samples[start:b], dtype=np.float32)
        found = [(start + int(x), start + int(y)) for x, y in _native.vad_speech_spans(data, opts, 1)]
        # From the seam with the piece before (if any) to this piece's own seam with the next.
        end_seam = b if b == len(samples) else b - _VAD_OVERLAP // 2
        return [(max(x, seam), min(y, end_seam)) for x, y in found if y > seam and x < end_seam]

    pieces = vad_pieces(len(samples))
    if pool is None:
        try:
            return PendingSpans(samples, [detect(p) for p in pieces])
        except WhisperError as exc:
            log.warning("voice activity detection failed (%s); cutting at low-energy pauses", exc)
            return PendingSpans(samples, [energy_speech_spans(samples)])
    return PendingSpans(samples, [pool.submit(lambda p=p: detect(p)) for p in pieces])


def speech_spans(
    samples: np.ndarray, threads: int, should_stop: Callable[[], bool] | None = None
) -> list[Span]:
    """Where someone speaks: Silero VAD when the build has it, else RMS energy.

    Pieces run on up to `threads` threads (see _VAD_PIECE); once `should_stop` says stop,
    pieces not yet started are skipped and what was found is returned.
    """
    if threads <= 1 or len(samples) <= _VAD_PIECE:
        return start_speech_spans(samples, None, should_stop).result()
    pool = VadPool(min(threads, len(vad_pieces(len(samples)))))
    try:
        return start_speech_spans(samples, pool, should_stop).result()
    finally:
        pool.close()


def energy_speech_spans(
    samples: np.ndarray,
    *,
    frame_ms: int = 20,
    min_speech_ms: int = 250,
    min_silence_ms: int = 300,
    pad_ms: int = 100,
) -> list[Span]:
    """Speech spans by frame RMS against a threshold set from the audio's own levels.

    The threshold sits above the noise floor (the 10th percentile of frame levels, digital
    silence left out) by a fifth of the distance to the loud frames, at least 6 dB, and
    never below -60 dBFS: a recording's hiss then counts as silence, and digital silence
    always does.
    """
    frame = SAMPLE_RATE * frame_ms // 1000
    n_frames = len(samples) // frame
    if n_frames == 0:
        return []
    x = np.asarray(samples[: n_frames * frame], dtype=np.float32).reshape(n_frames, frame)
    db = 20.0 * np.log10(np.sqrt(np.mean(x * x, axis=1)) + 1e-10)
    # Digital silence (padding, gaps a tool inserted) says nothing about the noise floor.
    live = db[db > -100.0]
    if len(live) == 0:
        return []
    floor, loud = float(np.percentile(live, 10)), float(np.percentile(live, 99))
    threshold = max(-60.0, floor + max(6.0, 0.2 * (loud - floor)))
    voiced = db > threshold
    spans: list[list[int]] = []
    for i in np.flatnonzero(voiced):
        if spans and i - spans[-1][1] <= min_silence_ms // frame_ms:
            spans[-1][1] = int(i) + 1
        else:
            spans.append([int(i), int(i) + 1])
    pad = SAMPLE_RATE * pad_ms // 1000
    out = [
        (max(0, a * frame - pad), min(len(samples), b * frame + pad))
        for a, b in spans
        if (b - a) * frame_ms >= min_speech_ms
    ]
    return merge_spans(out, len(samples))


def merge_spans(spans: Sequence[Span], n_samples: int) -> list[Span]:
    """Sorted, clipped to the audio, overlapping or touching spans joined, empty ones gone."""
    out: list[list[int]] = []
    for a, b in sorted((max(0, int(a)), min(n_samples, int(b))) for a, b in spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def silences(spans: Sequence[Span], n_samples: int) -> list[Span]:
    """The gaps around and between merged speech spans."""
    gaps: list[Span] = []
    cursor = 0
    for a, b in merge_spans(spans, n_samples):
        if a > cursor:
            gaps.append((cursor, a))
        cursor = b
    if cursor < n_samples:
        gaps.append((cursor, n_samples))
    return gaps


def quietest_frame(samples: np.ndarray, lo: int, hi: int) -> int:
    """The centre of the 0.1 s frame with the least RMS energy in [lo, hi)."""
    n = (hi - lo) // _QUIET_FRAME
    if n <= 0:
        return hi
    x = np.asarray(samples[lo : lo + n * _QUIET_FRAME], dtype=np.float32).reshape(n, _QUIET_FRAME)
    energy = np.mean(x * x, axis=1)
    # Ties (digital silence) go to the latest frame: the longest window.
    best = n - 1 - int(np.argmin(energy[::-1]))
    return lo + best * _QUIET_FRAME + _QUIET_FRAME // 2


def cut_windows(
    samples: np.ndarray, spans: Sequence[Span], *, max_samples: int = MAX_WINDOW
) -> list[Span]:
    """Windows (start, end) covering all the audio, each at most max_samples long.

    Each cut goes into a silence in the second half of the window (or, without one there,
    in the first half): the one whose position plus _PAUSE_WORTH times its length scores
    best (late cuts and long pauses both count), 0.3 s before the speech after it (or in
    the middle of a shorter pause); only a span of speech longer than a window is cut, at
    its quietest 0.1 s frame in the last 5 s before the limit.
    """
    n = len(samples)
    if n == 0:
        return []
    gaps = silences(spans, n)
    windows: list[Span] = []
    start = 0
    while n - start > max_samples:
        limit = start + max_samples
        preferred_from = start + int(max_samples * _PREFERRED_FROM)
        candidates: list[tuple[bool, int, int]] = []  # (in second half, score, cut)
        for g0, g1 in gaps:
            lo, hi = max(g0, start + 1), min(g1, limit)
            if lo > hi or g1 <= start:
                continue
            cut = min(max((g0 + g1) // 2, g1 - _LEAD_IN, lo), hi)
            candidates.append((cut >= preferred_from, cut + _PAUSE_WORTH * min(hi - lo, _PAUSE_CAP), cut))
        if candidates:
            cut = max(candidates)[2]
        else:
            cut = quietest_frame(samples, max(start + 1, limit - _QUIET_SEARCH), limit)
        windows.append((start, cut))
        start = cut
    windows.append((start, n))
    return windows


def plan(
    samples: np.ndarray, threads: int, should_stop: Callable[[], bool] | None = None
) -> tuple[list[Span], list[Span] | None]:
    """The windows a job's audio is decoded in, and the speech spans they were cut by
    (None when the audio fits in one window: no detector ran)."""
    if len(samples) <= MAX_WINDOW:
        return ([(0, len(samples))] if len(samples) else []), None
    spans = speech_spans(samples, threads, should_stop)
    windows = cut_windows(samples, spans)
    log.debug(
        "%.1f s of audio: %d speech spans, %d windows", len(samples) / SAMPLE_RATE, len(spans), len(windows)
    )
    return windows, spans


def plan_windows(samples: np.ndarray, threads: int) -> list[Span]:
    """The windows alone (a single window when the audio fits in one)."""
    return plan(samples, threads)[0]


def has_speech(spans: Sequence[Span], start: int, end: int) -> bool:
    """Whether any speech span overlaps [start, end)."""
    return any(a < end and start < b for a, b in spans)


def speech_samples(spans: Sequence[Span], start: int, end: int) -> int:
    """Samples of [start, end) inside speech spans (overlapping spans counted once)."""
    total, cursor = 0, start
    for a, b in sorted(spans):
        lo, hi = max(a, cursor), min(b, end)
        if hi > lo:
            total += hi - lo
            cursor = hi
    return total
