"""A word cut by Whisper's last timestamp in a window is heard once.

On the batched path a window whose last timestamp falls before its end has the rest
decoded again from there (alone, or in front of the job's next window). That timestamp
can fall inside the window's last word, and the rest then starts by hearing the word
again: "my fellow Americans ask ask not" (tiny.en, beam 5). stitch() drops such a
repeat at a rest's seam and nowhere else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import normalise
from whisperd.batching import WindowResult
from whisperd.inference import CancelToken, TranscribeOptions, WhisperModel
from whisperd.server.engine.scheduled_job import stitch
from whisperd.server.engine.scheduler import BatchScheduler
from whisperd.transcript import Segment, Word
from whisperd.windows import cut_windows, speech_spans

SR = 16000
THREADS = 2


def seg(start: float, end: float, text: str, words: bool = False) -> Segment:
    """A segment; with `words`, its words spread evenly over it."""
    split = text.split()
    step = (end - start) / len(split)
    ws = tuple(Word(w, start + i * step, start + (i + 1) * step, 0.9) for i, w in enumerate(split)) if words else ()
    return Segment(index=0, start=start, end=end, text=text, words=ws)


def result(*segments: Segment) -> WindowResult:
    return WindowResult(window_id=0, segments=segments, language="en", language_probability=1.0)


def stitched(first: Segment, then: tuple[Segment, ...], *, offset: float = 25.38, rest: bool = True) -> list[Segment]:
    """`first` from a window at 0 s, then the piece at `offset` (a rest when `rest`)."""
    out: list[Segment] = []
    stitch(out, result(first), 0.0, 27.07)
    stitch(out, result(*then), offset, 29.63, rest=rest)
    assert [s.index for s in out] == list(range(len(out)))
    for prev, s in zip(out, out[1:]):
        assert prev.end <= s.start, (prev, s)
    for s in out:
        assert s.start <= s.end and all(s.start <= w.start <= w.end <= s.end for w in s.words), s
    return out


def text(out: list[Segment]) -> str:
    return " ".join(s.text for s in out)


# ---------------------------------------------------------------- the rule, no model


@pytest.mark.parametrize("words", [False, True], ids=["segment-times", "word-times"])
def test_the_word_cut_at_a_rest_seam_is_kept_once(words: bool) -> None:
    # As tiny.en decoded it: the window's last segment ends (its last timestamp) inside
    # "ask", and the rest decoded from there starts with "ask" again.
    out = stitched(seg(17.34, 25.38, "and so my fellow Americans ask", words),
                   (seg(0.0, 8.0, "ask not what your country can do for you,", words),
                    seg(8.0, 19.0, "And so my fellow Americans", words)))
    assert text(out) == (
        "and so my fellow Americans ask not what your country can do for you, And so my fellow Americans"
    )
    assert out[1].start >= out[0].end
    if words:
        assert [w.text for w in out[1].words][:2] == ["not", "what"]
        assert out[1].start == pytest.approx(out[1].words[0].start)


def test_case_and_punctuation_do_not_hide_the_repeat() -> None:
    out = stitched(seg(17.0, 25.38, "my fellow Americans, Ask,"), (seg(0.0, 3.0, "ask. Not what"),))
    assert text(out) == "my fellow Americans, Ask, Not what"


def test_a_rest_of_only_the_repeated_word_leaves_no_segment() -> None:
    out = stitched(seg(17.0, 25.38, "fellow Americans ask"), (seg(0.0, 0.4, "Ask."), seg(1.0, 3.0, "not what")))
    assert text(out) == "fellow Americans ask not what"
    assert [s.index for s in out] == [0, 1]


def test_a_different_first_word_stays() -> None:
    out = stitched(seg(17.0, 25.38, "fellow Americans ask"), (seg(0.0, 3.0, "not what your"),))
    assert text(out) == "fellow Americans ask not what your"


@pytest.mark.parametrize("words", [False, True], ids=["segment-times", "word-times"])
def test_a_real_repeat_after_the_seam_stays(words: bool) -> None:
    # The rest's first word starts 1.2 s after the seam: said again, not cut.
    out = stitched(seg(17.0, 25.38, "we said no", words), (seg(1.2, 3.0, "no and no", words),))
    assert text(out) == "we said no no and no"


def test_a_repeat_after_a_pause_inside_the_first_segment_stays() -> None:
    # Segment starts at the seam but its first word only 0.9 s later (word times).
    first = seg(17.0, 25.38, "we said no", True)
    later = Segment(0, 0.0, 2.0, "no more", words=(Word("no", 0.9, 1.3, 0.9), Word("more", 1.3, 2.0, 0.9)))
    out = stitched(first, (later,))
    assert text(out) == "we said no no more"


def test_a_previous_word_that_ends_before_the_seam_keeps_the_repeat() -> None:
    # The last segment heard before the rest ended 3 s before it (its window's rest had
    # silence first): whatever the rest starts with is not that word cut in two.
    out = stitched(seg(17.0, 22.0, "we said no"), (seg(0.0, 2.0, "no and no"),))
    assert text(out) == "we said no no and no"


def test_a_repeat_at_a_window_cut_in_a_silence_stays() -> None:
    # Not a rest: the next window starts at a pause the planner cut at, where nothing
    # was cut in two; a word said on both sides of it is said twice.
    out = stitched(seg(17.0, 27.07, "and they said no"), (seg(0.0, 2.0, "no, never"),), offset=27.07, rest=False)
    assert text(out) == "and they said no no, never"


def test_the_first_piece_has_nothing_to_repeat() -> None:
    out: list[Segment] = []
    stitch(out, result(seg(0.0, 2.0, "ask ask")), 5.0, 20.0, rest=True)
    assert text(out) == "ask ask" and out[0].start == 5.0


# ---------------------------------------------------------------- real model, real speech


@pytest.fixture(scope="module")
def model(tiny_en_model: Path) -> Iterator[WhisperModel]:
    m = WhisperModel(tiny_en_model, use_gpu=False)
    yield m
    m.close()


def test_the_batched_path_hears_the_word_at_a_rest_seam_once(model: WhisperModel, jfk: np.ndarray) -> None:
    """jfk tiled without pauses, from 3 s into a copy, 121 s, beam 5, four windows in
    flight: the window 52.0-79.1 s ends with Whisper's last timestamp (77.4 s) inside
    "ask"; its rest joins the next window and starts with "ask" again, which came out as
    "my fellow Americans ask ask not"."""
    try:
        from whisperd.batch_decoder import BatchDecoder  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("this build has no batched window decoder (whisperd.batch_decoder)")
    audio = np.tile(jfk, 12)[3 * SR : 124 * SR]
    added: list[int] = []

    class Counting(BatchDecoder):  # type: ignore[misc, valid-type]  # the real decoder, counting
        def add(self, windows, cancel=None):  # type: ignore[no-untyped-def]
            added.extend(len(w.samples) for w in windows)
            super().add(windows, cancel)

    s = BatchScheduler(lambda m: Counting(m, 4, THREADS), vad_threads=THREADS)
    try:
        out = s.transcribe(model, audio, TranscribeOptions(beam_size=5, threads=THREADS), cancel=CancelToken())
    finally:
        s.close()
    # Rests were decoded (pieces that are no planned window): the seams are there.
    planned = {b - a for a, b in cut_windows(audio, speech_spans(audio, THREADS))}
    assert set(added) - planned, (added, planned)
    words = normalise(out.text).split()
    doubled = [" ".join(words[max(0, i - 3) : i + 3]) for i in range(1, len(words)) if words[i] == words[i - 1]]
    assert not doubled, out.text
    # Nothing lost with the repeat: ten whole copies and the start of an eleventh.
    assert normalise(out.text).count("fellow americans") == 11, out.text
    for prev, segment in zip(out.segments, out.segments[1:]):
        assert prev.end <= segment.start, (prev, segment)
