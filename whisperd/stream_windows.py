"""Cutting audio that arrives in chunks into windows, without holding the whole of it.

The decoder hands over a few minutes at a time. Each time enough has arrived, the
detector runs on the new audio (its spans join those already found in the tail left
after the last cut, as speech_spans joins its own pieces), and the windows that
cut_windows would place the same way with the rest of the file present are taken: a
window's cut looks only at the 30 s after its start, and a silence that runs into the
end of what arrived could reach further, so a window is taken only when a full two
windows of analysed audio follow its start. What is left (under a minute, plus what the
detector has not finished) waits for the next chunk. Cuts therefore still fall in
silences and no window exceeds 30 s.

Every offset is in samples at 16 kHz, from the start of the audio.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from whisperd.windows import (
    MAX_WINDOW,
    PendingSpans,
    Span,
    VadPool,
    cut_windows,
    merge_spans,
    speech_spans,
    start_speech_spans,
)

# A window is taken once this much audio follows its start (see the module comment).
_LOOK_AHEAD = 2 * MAX_WINDOW
# The detector misses speech that is already under way where its input starts, so each
# run starts this much before the audio not yet analysed, and its spans replace the
# earlier run's from half-way into that overlap.
_OVERLAP = 4 * MAX_WINDOW // 30
# No detector run on less than this: the tail alone is under _LOOK_AHEAD, so each run
# takes at least half a minute of new audio.
_PLAN_FROM = 3 * MAX_WINDOW


@dataclass(frozen=True, slots=True)
class PlannedWindow:
    start: int
    end: int
    samples: np.ndarray  # the window's audio: its own copy unless the planner was told not to
    spans: list[Span] | None  # speech inside the window; None = no detector ran (one short window)


class StreamPlanner:
    """Feed chunks in order, then call finish(); each call returns the windows it could
    place, in order, each with its own samples, so the chunks can be let go.

    With a VadPool the detector runs behind the feeding: feed() queues the new audio's
    pieces on the pool and returns at once while the pool has a free thread, so the next
    chunk is read (and its pieces queued) while these are analysed, and an hour's pieces
    run on every thread instead of a chunk's few at a time; windows come out as the
    detector's results arrive, in order. With the pool busy, feed() waits for this job's
    oldest run only, so a job holds at most about the pool's threads' worth of pieces
    not analysed (a chunk or two when other jobs' pieces fill the pool).
    """

    def __init__(
        self,
        threads: int,
        should_stop: Callable[[], bool] | None = None,
        *,
        detect_short: bool = False,
        incremental: bool = True,
        copy: bool = True,
        pool: VadPool | None = None,
    ) -> None:
        self._threads = threads
        self._should_stop = should_stop
        self._pool = pool
        # The vad option wants speech spans even for audio that fits in one window.
        self._detect_short = detect_short
        # False: plan everything at finish(), as windows.plan does on a whole array.
        self._incremental = incremental
        # False: windows are views of the chunks (the caller holds the whole array anyway).
        self._copy = copy
        self._pending = np.empty(0, np.float32)  # audio not yet in a window
        self._base = 0  # offset of _pending[0]
        self._placed = False  # a window was already taken
        # Speech found in _pending[:_known], offsets into _pending; the detector was
        # started on _pending[:_analysed].
        self._spans: list[Span] = []
        self._known = 0
        self._analysed = 0
        # Detector runs under way, in order: (start, seam, end) from the start of the
        # audio, and their spans to come (offsets from `start`).
        self._running: deque[tuple[int, int, int, PendingSpans]] = deque()
        self.seen = 0  # samples fed so far

    def feed(self, chunk: np.ndarray) -> list[PlannedWindow]:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self.seen += chunk.size
        self._pending = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        if not self._incremental:
            return []
        if self._pending.size >= _PLAN_FROM:
            self._start_detector()
        # A free pool thread: read on. Else wait for this job's oldest run only, so the
        # pool keeps a queue and its threads stay busy (waiting for every run drained it:
        # on the H200 host an hour's windows then came in 11 groups over the ramp).
        self._collect(wait=self._pool is None or not self._pool.idle(), oldest_only=True)
        n = self._known
        windows = [w for w in cut_windows(self._pending[:n], self._spans) if w[0] + _LOOK_AHEAD <= n]
        return self._take(windows, self._spans, tail=True)

    def finish(self) -> list[PlannedWindow]:
        n = self._pending.size
        if n == 0:
            return []
        if n <= MAX_WINDOW and not self._placed and not self._detect_short and not self._running:
            return self._take([(0, n)], None, tail=False)
        self._start_detector()
        self._collect(wait=True)
        return self._take(cut_windows(self._pending, self._spans), self._spans, tail=False)

    def detecting(self) -> bool:
        """Whether detector runs are still under way (feed or finish collects them)."""
        return bool(self._running)

    def _start_detector(self) -> None:
        """Start the detector on the audio not yet analysed (and a little before it: the
        detector misses speech already under way where its input starts)."""
        if self._analysed >= self._pending.size:
            return
        start = max(0, self._analysed - _OVERLAP)
        seam = max(0, self._analysed - _OVERLAP // 2)
        end = self._pending.size
        audio = self._pending[start:end]
        if self._pool is None:  # on this thread (pieces on up to `threads` of its own)
            found = PendingSpans(audio, [speech_spans(audio, self._threads, self._should_stop)])
        else:
            found = start_speech_spans(audio, self._pool, self._should_stop)
        self._running.append((self._base + start, self._base + seam, self._base + end, found))
        self._analysed = end

    def _collect(self, *, wait: bool, oldest_only: bool = False) -> None:
        """Take in the detector's results in order: those done, and when `wait` all of
        them (or, `oldest_only`, at least the oldest)."""
        while self._running and (wait or self._running[0][3].done()):
            if oldest_only:
                wait = False
            start, seam, end, found = self._running.popleft()
            start, seam, end = start - self._base, seam - self._base, end - self._base
            new = found.result()
            old = [(a, min(b, seam)) for a, b in self._spans if a < seam]
            self._spans = merge_spans(
                old + [(max(seam, start + a), start + b) for a, b in new if start + b > seam], end
            )
            self._known = end

    def _take(self, windows: list[Span], spans: list[Span] | None, *, tail: bool) -> list[PlannedWindow]:
        out: list[PlannedWindow] = []
        for a, b in windows:
            piece = self._pending[a:b]
            inside = None if spans is None else [
                (self._base + max(a, s), self._base + min(b, e)) for s, e in spans if s < b and a < e
            ]
            out.append(PlannedWindow(self._base + a, self._base + b, piece.copy() if self._copy else piece, inside))
        if out:
            self._placed = True
            cut = windows[-1][1]
            # A copy, so the chunk the tail came from is freed.
            self._pending = self._pending[cut:].copy() if tail else np.empty(0, np.float32)
            self._spans = [(max(0, a - cut), b - cut) for a, b in self._spans if b > cut]
            self._known = max(0, self._known - cut)
            self._analysed = max(0, self._analysed - cut)
            self._base += cut
        return out
