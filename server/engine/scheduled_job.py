"""One job's windows as the batch scheduler sees them: planned, queued for the decoder,
in flight, decoded (with the rest of a window decoded again when Whisper stopped early),
and stitched back into one transcript with times from the start of the audio."""
from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from whisperd.batching import WindowRequest, WindowResult
from whisperd.inference import SAMPLE_RATE, TranscribeOptions, WhisperModel
from whisperd.stream_windows import PlannedWindow
from whisperd.transcript import Segment, Word
from whisperd.windows import MAX_WINDOW, Span, has_speech, speech_samples

# A rest of a window is decoded only when it holds at least this much speech.
_MIN_REST_SPEECH = SAMPLE_RATE // 2
# A rest starts at Whisper's last timestamp, which can fall inside the window's last
# word: the rest then hears that word again at its very start ("Americans ask | ask
# not", tiny.en, beam 5). A rest's first word counts as that repeat only when it starts
# within this many seconds of the seam and the previous word reaches this close to it.
_SEAM_SLACK = 0.5


@dataclass(eq=False)
class ScheduledJob:
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
    # Start samples of the pieces that are such rests (decoded alone or in front of the
    # next window): stitch() looks there for the last word heard twice.
    seams: set[int] = field(default_factory=set)
    # window id -> (window index, start sample of the piece decoded)
    in_flight: dict[int, tuple[int, int]] = field(default_factory=dict)
    parts: dict[int, list[tuple[int, WindowResult]]] = field(default_factory=dict)
    done: dict[int, list[tuple[int, WindowResult]]] = field(default_factory=dict)  # complete windows
    decoded: int = 0  # samples decoded, for progress
    changes: int = 0  # results taken in: the waiting caller looks again
    first: WindowResult | None = None  # the first result: the job's language
    error: BaseException | None = None
    gone: bool = False  # cancelled or failed: its windows leave the decoder
    # Its caller waits on this (the scheduler's lock): notified when results come in or
    # the job fails, so a decoder step wakes only the jobs it finished windows of.
    wake: threading.Condition | None = None

    def waiting(self) -> int:
        """Planned windows not yet handed to the decoder."""
        return len(self.order) - self.next_window

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
        if self.rests:
            # The rest is not prompted with the window's text so far (whisper.cpp would):
            # it ends at the window's cut, not where the speech goes on, and with the text
            # before it Whisper finished the cut sentence from the prompt ("ask not" ->
            # "ask not what your country can do for you", heard again in the next window).
            index, start = self.rests.popleft()
        else:
            index = self.order[self.next_window]
            start = self.windows[index][0]
            self.next_window += 1
        self.in_flight[window_id] = (index, start)
        options = self.options
        if options.language != self.language:
            options = dataclasses.replace(options, language=self.language)
        return WindowRequest(window_id, self.pieces[index][start - self.windows[index][0] :], options)

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
        # rule); so is a rest in which the detector found less than _MIN_REST_SPEECH of
        # speech: Whisper's last timestamp often falls a little before the detector's
        # end of the speech, and a rest of that tail and seconds of silence decoded to
        # a hallucinated word ("to", "[BLANK_AUDIO]") instead of nothing.
        spans = self.spans.get(index)
        speech_left = spans is None or speech_samples(spans, reached, end) >= _MIN_REST_SPEECH
        if end - reached > SAMPLE_RATE and reached > start and speech_left:
            self.decoded += reached - start
            self.seams.add(reached)
            if not self._merge_rest(index, reached):
                self.rests.append((index, reached))
                return
        else:
            self.decoded += end - start
        self.done[index] = self.parts.pop(index)
        self.pieces.pop(index, None)
        self.spans.pop(index, None)

    def _merge_rest(self, index: int, reached: int) -> bool:
        """Put the rest of window `index` (from `reached`) in front of the next window when
        that one has not gone to the decoder yet and both fit in one window: one encoder
        pass instead of two, as whisper.cpp's next window starts at the last timestamp."""
        nxt = index + 1
        if nxt not in self.pieces or nxt not in self.order[self.next_window:]:
            return False
        start, end = self.windows[index]
        n_start, n_end = self.windows[nxt]
        if n_start != end or n_end - reached > MAX_WINDOW:
            return False
        rest = self.pieces[index][reached - start:]
        self.pieces[nxt] = np.concatenate([rest, self.pieces[nxt]])
        self.windows[nxt] = (reached, n_end)
        before, after = self.spans.get(index), self.spans.get(nxt)
        self.spans[nxt] = None if before is None or after is None else (
            [(max(a, reached), b) for a, b in before if b > reached] + list(after)
        )
        return True


def stitch(out: list[Segment], result: WindowResult, offset: float, length: float, *, rest: bool = False) -> None:
    """Append a window's segments with times from the start of the audio, renumbered,
    inside the window and never before the previous segment's end. `rest`: the piece
    starts where Whisper's last timestamp fell in the audio before it (ScheduledJob.seams),
    so a first word that repeats the word before the seam is dropped."""
    segments = list(result.segments)
    if rest and out and segments:
        first = _without_seam_repeat(out[-1], segments[0], offset)
        segments[:1] = [first] if first is not None else []
    for seg in segments:
        floor = out[-1].end if out else 0.0
        start = max(offset + min(max(seg.start, 0.0), length), floor)
        end = max(offset + min(max(seg.end, 0.0), length), start)
        words = tuple(_shift_word(w, offset, start, end) for w in seg.words)
        out.append(dataclasses.replace(seg, index=len(out), start=start, end=end, words=words))


def _without_seam_repeat(prev: Segment, seg: Segment, offset: float) -> Segment | None:
    """`seg` (times from `offset`, the seam) without its first word when that word is
    `prev`'s last one (case and punctuation aside) and the two meet at the seam: the
    previous word reaches it and the repeat starts there. Word times when the segments
    have them, else the segments' own. None when nothing of `seg` is left."""
    before = prev.words[-1].text if prev.words else (prev.text.split() or [""])[-1]
    tokens = seg.text.split()
    if not tokens or not _same_word(before, seg.words[0].text if seg.words else tokens[0]):
        return seg
    prev_end = prev.words[-1].end if prev.words else prev.end
    repeat_start = seg.words[0].start if seg.words else seg.start
    if prev_end < offset - _SEAM_SLACK or repeat_start > _SEAM_SLACK:
        return seg  # a word said again after the seam, not the one cut by it
    if len(tokens) == 1:
        return None
    words = seg.words[1:]
    start = words[0].start if words else seg.start
    return dataclasses.replace(seg, start=start, text=seg.text.split(maxsplit=1)[1], words=words)


def _same_word(a: str, b: str) -> bool:
    a, b = ("".join(c for c in w.lower() if c.isalnum()) for w in (a, b))
    return bool(a) and a == b


def _shift_word(word: Word, offset: float, lo: float, hi: float) -> Word:
    start = min(max(word.start + offset, lo), hi)
    return dataclasses.replace(word, start=start, end=min(max(word.end + offset, start), hi))
