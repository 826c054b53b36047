"""The reference window decoder: each window on a fresh whisper.cpp state, one per step.

It implements the WindowDecoder contract with nothing but whisper.cpp's own decoding
(temperature fallback, beam search, timestamps as whisper-cli gives them), so the batched
decoder's output can be checked against it window by window, and a build without the
batched decoder still serves every job through the scheduler. A fresh state per window,
because whisper.cpp's results on a reused state depend on what it decoded before.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Sequence

import numpy as np

from whisperd.batching import WINDOW_SECS, WindowRequest, WindowResult
from whisperd.inference import SAMPLE_RATE, WhisperModel

_MAX_SAMPLES = int(WINDOW_SECS * SAMPLE_RATE)


class SequentialWindowDecoder:
    """Holds up to `capacity` windows; each step() decodes the oldest one completely."""

    def __init__(self, model: WhisperModel, capacity: int, threads: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._model = model
        self._capacity = capacity
        self._threads = threads
        self._windows: OrderedDict[int, WindowRequest] = OrderedDict()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def free_slots(self) -> int:
        return self._capacity - len(self._windows)

    def add(self, windows: Sequence[WindowRequest]) -> None:
        self._check_open()
        if len(windows) > self.free_slots():
            raise ValueError(
                f"{len(windows)} windows do not fit in {self.free_slots()} free slots"
            )
        for w in windows:
            if w.window_id in self._windows:
                raise ValueError(f"window {w.window_id} is already in the decoder")
            if w.samples.ndim != 1 or len(w.samples) > _MAX_SAMPLES:
                raise ValueError(
                    f"window {w.window_id}: want mono audio of at most {WINDOW_SECS:g} s, "
                    f"got shape {w.samples.shape}"
                )
        for w in windows:
            self._windows[w.window_id] = w

    def step(self) -> list[WindowResult]:
        self._check_open()
        if not self._windows:
            return []
        window_id, request = next(iter(self._windows.items()))
        options = request.options
        if request.prompt is not None:
            options = dataclasses.replace(options, initial_prompt=request.prompt or None)
        if self._threads:
            options = dataclasses.replace(options, threads=self._threads)
        samples = np.ascontiguousarray(request.samples, dtype=np.float32)
        try:
            with self._model.new_state() as state:
                result = state.transcribe(samples, options)
        finally:
            # A window that failed is gone either way; the caller hears of it by the error.
            self._windows.pop(window_id, None)
        timings = result.timings
        return [
            WindowResult(
                window_id=window_id,
                segments=result.segments,
                language=result.language,
                language_probability=result.language_probability,
                no_speech_prob=max((s.no_speech_prob for s in result.segments), default=0.0),
                tokens=timings.n_sample if timings is not None else 0,
                fallbacks=timings.n_fallbacks if timings is not None else 0,
            )
        ]

    def drop(self, window_id: int) -> None:
        self._windows.pop(window_id, None)

    def active(self) -> int:
        return len(self._windows)

    def close(self) -> None:
        self._windows.clear()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this window decoder is closed")
