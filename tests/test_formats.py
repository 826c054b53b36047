"""Transcript rendering, checked by parsing the output back with independent parsers."""

from __future__ import annotations

import html
import io
import json
from datetime import timedelta

import pytest
import srt
import webvtt

from whisperd.formats import FORMATS, normalise_format, render
from whisperd.transcript import Segment, Transcript, Word

TRANSCRIPT = Transcript(
    segments=(
        Segment(
            index=0,
            start=0.0,
            end=2.34,
            text=" And so my fellow Americans,",
            no_speech_prob=0.01,
            words=(
                Word(" And", 0.0, 0.32, 0.98),
                Word(" so", 0.32, 0.6, 0.97),
                Word(" my", 0.6, 0.9, 0.99),
                Word(" fellow", 0.9, 1.5, 0.95),
                Word(" Americans,", 1.5, 2.34, 0.91),
            ),
        ),
        Segment(
            index=1, start=2.34, end=7.5, text=" ask not what your country can do for you & me "
        ),
        # Silence the decoder kept: no cue, no line.
        Segment(index=2, start=7.5, end=8.0, text="  "),
        # Past an hour, and with markup-like text that WebVTT must escape.
        Segment(index=3, start=3725.0451, end=3727.999, text=" ask what <you> can do"),
    ),
    language="en",
    language_probability=0.97,
    duration_secs=3728.0,
)

# (start, end, text) of every cue, times in milliseconds.
EXPECTED_CUES = [
    (0, 2340, "And so my fellow Americans,"),
    (2340, 7500, "ask not what your country can do for you & me"),
    (3725045, 3727999, "ask what <you> can do"),
]


def _ms(delta: timedelta) -> int:
    return round(delta.total_seconds() * 1000)


def test_srt_parses_back_to_the_same_cues() -> None:
    text = render(TRANSCRIPT, "srt")
    cues = list(srt.parse(text))
    assert [c.index for c in cues] == [1, 2, 3]
    assert [(_ms(c.start), _ms(c.end), c.content) for c in cues] == EXPECTED_CUES
    assert "01:02:05,045 --> 01:02:07,999" in text


def test_vtt_parses_back_to_the_same_cues() -> None:
    text = render(TRANSCRIPT, "vtt")
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(text))
    got = [
        (round(c.start_in_seconds * 1000), round(c.end_in_seconds * 1000), html.unescape(c.text))
        for c in captions
    ]
    # webvtt-py keeps whole seconds in *_in_seconds; compare the full stamps as well.
    assert [(c.start, c.end) for c in captions] == [
        ("00:00:00.000", "00:00:02.340"),
        ("00:00:02.340", "00:00:07.500"),
        ("01:02:05.045", "01:02:07.999"),
    ]
    assert [t for _, _, t in got] == [t for _, _, t in EXPECTED_CUES]
    assert "&lt;you&gt;" in text and "&amp; me" in text


def test_json_holds_every_field() -> None:
    document = json.loads(render(TRANSCRIPT, "json"))
    assert document["language"] == "en"
    assert document["language_probability"] == pytest.approx(0.97)
    assert document["duration_secs"] == pytest.approx(3728.0)
    assert document["text"] == TRANSCRIPT.text
    assert [s["index"] for s in document["segments"]] == [0, 1, 2, 3]
    first = document["segments"][0]
    assert set(first) == {"index", "start", "end", "text", "no_speech_prob", "words"}
    assert first["end"] == pytest.approx(2.34)
    assert first["no_speech_prob"] == pytest.approx(0.01)
    assert [w["text"] for w in first["words"]] == [" And", " so", " my", " fellow", " Americans,"]
    assert set(first["words"][0]) == {"text", "start", "end", "probability"}
    assert document["segments"][3]["start"] == pytest.approx(3725.045)


def test_txt_is_one_stripped_line_per_segment() -> None:
    text = render(TRANSCRIPT, "txt")
    assert text.splitlines() == [t for _, _, t in EXPECTED_CUES]
    assert render(TRANSCRIPT, "text") == text
    assert render(TRANSCRIPT, " TXT ") == text


def test_same_transcript_same_bytes_from_float32_values() -> None:
    # A client reading float32 proto fields must print what the server prints.
    import numpy as np

    def f32(x: float) -> float:
        return float(np.float32(x))

    through_proto = Transcript(
        segments=tuple(
            Segment(
                index=s.index,
                start=f32(s.start) if s.start < 100 else s.start,
                end=f32(s.end) if s.end < 100 else s.end,
                text=s.text,
                no_speech_prob=f32(s.no_speech_prob),
                words=tuple(
                    Word(w.text, f32(w.start), f32(w.end), f32(w.probability)) for w in s.words
                ),
            )
            for s in TRANSCRIPT.segments
        ),
        language=TRANSCRIPT.language,
        language_probability=f32(TRANSCRIPT.language_probability),
        duration_secs=TRANSCRIPT.duration_secs,
    )
    for fmt in FORMATS:
        assert render(through_proto, fmt) == render(TRANSCRIPT, fmt), fmt


def test_empty_transcript() -> None:
    empty = Transcript(segments=(), language="en", language_probability=1.0, duration_secs=0.0)
    assert render(empty, "txt") == ""
    assert render(empty, "srt") == ""
    assert render(empty, "vtt").strip() == "WEBVTT"
    assert json.loads(render(empty, "json"))["segments"] == []


def test_unknown_format_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"txt, srt, vtt, json"):
        render(TRANSCRIPT, "docx")
    assert normalise_format("Text") == "txt"
    assert FORMATS == ("txt", "srt", "vtt", "json")
