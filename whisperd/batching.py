"""The window decoder contract: what the batch scheduler hands the engine and gets back.

A job's audio is cut into windows of at most 30 s; a window decoder owns a fixed number
of slots and decodes the windows in them together, one decoder step at a time, so the
weights are read once per step for every window in flight (whichever job it belongs to).
The scheduler (whisperd.server.engine.scheduler) keeps the slots full and stitches each
job's windows back together; the decoder knows nothing about jobs.

Two implementations: `whisperd.batch_decoder.BatchDecoder` (one batched graph over all
slots, the engine's path) and `whisperd.sequential_decoder.SequentialWindowDecoder` (one
whisper.cpp state per window, the reference the batched path is checked against).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from whisperd.inference import TranscribeOptions
from whisperd.transcript import Segment

WINDOW_SECS = 30.0


@dataclass(frozen=True, slots=True)
class WindowRequest:
    """One window of at most 30 s of 16 kHz mono float32 audio to decode on its own."""

    window_id: int  # unique among the windows a decoder holds
    samples: np.ndarray
    options: TranscribeOptions  # language None = detect on this window
    # Text to condition on (the previous window's, in sequential mode); None = the
    # options' initial_prompt.
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A decoded window. Segment times are seconds from the window's start."""

    window_id: int
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    no_speech_prob: float = 0.0
    tokens: int = 0  # tokens decoded, fallbacks included
    fallbacks: int = 0  # times decoded again at a higher temperature
    text_tokens: tuple[int, ...] = field(default_factory=tuple)  # for conditioning
    # How far into the window the result reaches (seconds). Whisper may end a window early
    # (its last timestamp well before the window's end): the scheduler decodes the rest
    # as a new window starting there, as sequential whisper.cpp seeks to it.
    end_secs: float = WINDOW_SECS


class WindowDecoder(Protocol):
    """Owned by one scheduler thread; every call blocks and releases the GIL inside."""

    @property
    def capacity(self) -> int:
        """Windows that can be decoded at once."""

    def free_slots(self) -> int:
        """Slots a call to add() can fill now."""

    def add(self, windows: Sequence[WindowRequest]) -> None:
        """Encode the windows (together) and start decoding them; at most free_slots()."""

    def step(self) -> list[WindowResult]:
        """One decoder step for every window in flight; returns the windows that ended."""

    def drop(self, window_id: int) -> None:
        """Forget a window (its job was cancelled); its slot is free at once."""

    def active(self) -> int:
        """Windows in flight."""

    def close(self) -> None:
        """Free the slots' memory; the decoder is unusable afterwards."""
