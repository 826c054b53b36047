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
class DecodeTimings:
    """Where one transcription's time went, as whisper.cpp counts it (milliseconds)."""

    mel_ms: float
    encode_ms: float
    prompt_ms: float
    decode_ms: float  # single-sequence decoder steps (greedy)
    batchd_ms: float  # batched decoder steps (beam search)
    sample_ms: float  # choosing tokens on the CPU
    n_encode: int
    n_decode: int
    n_batchd: int
    n_sample: int
    n_fallbacks: int

    @property
    def decoder_steps(self) -> int:
        return self.n_decode + self.n_batchd

    @property
    def ms_per_step(self) -> float:
        """Decoder time plus sampling per decoder step."""
        steps = max(1, self.decoder_steps)
        return (self.decode_ms + self.batchd_ms + self.sample_ms) / steps


@dataclass(frozen=True, slots=True)
class Transcript:
    """The whole result of one transcription."""

    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration_secs: float
    # None when the extension was built against a whisper.cpp without per-state counters.
    timings: DecodeTimings | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())
