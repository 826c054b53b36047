"""What audio whisperd accepts: plausible formats and a bounded length.

A header is only a claim. A 64 KB WAV that says "1 Hz" would be 32,000 s of audio, and
upsampling it to 16 kHz would take gigabytes; one that says "4 GB" may hold 1 KB. So an
upload is judged by what its stream really holds (measured at Submit by walking its
packets), within these bounds, and refused with a reason a client can act on when it
falls outside them. docs/limits.md explains each bound to users.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

# Sample rates below this are not speech recordings (telephony is 8 kHz, old codecs
# 4 kHz); above it no recording format goes (DXD is 352.8 kHz).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
# 22.2 surround is 24 channels and third-order ambisonics 16; 64 leaves room for
# multitrack field recorders while refusing header garbage (255, 65535).
MAX_CHANNELS = 64
# Whisper needs some sound to say anything; below this a file is a fragment.
MIN_AUDIO_SECS = 0.1
# A file whose header promises this much more than its stream holds ends early.
_EARLY_END_SLACK_SECS = 1.0
_EARLY_END_SLACK_RATIO = 0.05


@dataclass(frozen=True, slots=True)
class AudioLimits:
    """The bounds an upload must fall within. max_secs = 0: no maximum length."""

    max_secs: float = 0.0
    min_secs: float = MIN_AUDIO_SECS
    min_rate: int = MIN_SAMPLE_RATE
    max_rate: int = MAX_SAMPLE_RATE
    max_channels: int = MAX_CHANNELS

    def format_problem(self, sample_rate: int, channels: int) -> str | None:
        """Why a stream of this rate and channel count is refused, or None."""
        if not self.min_rate <= sample_rate <= self.max_rate:
            return (
                f"implausible audio sample rate {sample_rate} Hz in the file's header: whisperd "
                f"accepts {self.min_rate}..{self.max_rate} Hz (is the file damaged?)"
            )
        if not 1 <= channels <= self.max_channels:
            return (
                f"implausible audio channel count {channels} in the file's header: whisperd "
                f"accepts 1..{self.max_channels} channels (is the file damaged?)"
            )
        return None

    def too_long(self, secs: float) -> str | None:
        if self.max_secs and secs > self.max_secs:
            return (
                f"the audio is longer than this server's maximum of {self.max_secs:g} s "
                f"(MAX_AUDIO_SECS): split it, or ask the operator to raise the limit"
            )
        return None

    def too_short(self, secs: float, declared: float | None) -> str | None:
        if secs >= self.min_secs:
            return None
        lied = declared is not None and declared > secs + 0.05
        claim = f" although its header declares {declared:.1f} s" if lied else ""
        return (
            f"the file holds only {secs:.3f} s of audio{claim}: too little to transcribe "
            f"(at least {self.min_secs:g} s); is the upload truncated?"
        )

    def early_end_warning(self, secs: float, declared: float | None) -> str | None:
        """A warning for a file that ends well before its header says, else None."""
        if declared is None:
            return None
        if declared - secs <= max(_EARLY_END_SLACK_SECS, _EARLY_END_SLACK_RATIO * declared):
            return None
        return (
            f"the file ends after {secs:.1f} s although its header declares {declared:.1f} s "
            f"(truncated upload?); transcribed what it holds"
        )


_lock = threading.Lock()
_current = AudioLimits()


def current() -> AudioLimits:
    """The limits in force in this process (the server sets them from its settings)."""
    with _lock:
        return _current


def configure(limits: AudioLimits) -> None:
    global _current
    with _lock:
        _current = limits
