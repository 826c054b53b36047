"""Plain data for transcription results, shared by the engine, the server and the client."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    """One word with its time span (seconds) and the decoder's mean token probability."""

    text: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class Segment:
    """One decoded segment; times in seconds from the start of the audio."""

    index: int
    start: float
    end: float
    text: str
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Transcript:
    """The whole result of one transcription."""

    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration_secs: float

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())
