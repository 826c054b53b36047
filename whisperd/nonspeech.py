"""Whisper's non-speech markers are not transcript text.

On silence or music Whisper writes annotations such as `[BLANK_AUDIO]`, `[ Silence ]`,
`(music)` or `*unintelligible*` (it learnt them from subtitles). Other Whisper servers
answer "no speech" with an empty transcript, and a user reading a transcript wants what
was said, so whisperd drops segments that hold nothing but such markers and strips
markers from segments that also hold speech. Segments are renumbered so that indexes
stay 0, 1, 2, ... in every format and API.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from whisperd.transcript import Segment

# A bracketed, parenthesised or starred annotation of words (letters, spaces, _ - '),
# up to 40 characters: "(2)" or "3*4*5" are not annotations.
_WORDS = r"[^\W\d][\w \-']{0,40}"
_MARKER = re.compile(rf"\[\s*{_WORDS}\]|\(\s*{_WORDS}\)|\*{_WORDS}\*|♪+")
_ONLY_PUNCTUATION = re.compile(r"^[\s.,!?;:\-–—…\"'♪]*$")


def strip_markers(text: str) -> str:
    """`text` without non-speech annotations; empty if it held nothing else."""
    if not any(c in text for c in "[(*♪"):
        return text
    stripped = " ".join(_MARKER.sub(" ", text).split())
    return "" if _ONLY_PUNCTUATION.match(stripped) else stripped


class SpeechOnly:
    """Filters one transcription's segments as they arrive, renumbering the kept ones."""

    def __init__(self) -> None:
        self._next = 0

    def keep(self, segment: Segment) -> Segment | None:
        text = strip_markers(segment.text)
        if not text:
            return None
        kept = dataclasses.replace(segment, index=self._next, text=text)
        self._next += 1
        return kept


def speech_only(segments: Iterable[Segment]) -> list[Segment]:
    """The segments that hold speech, markers stripped, numbered from 0."""
    speech = SpeechOnly()
    return [s for s in map(speech.keep, segments) if s is not None]
