"""One decoding state made and warmed up ahead of the next job.

A new state's first call pays for its buffers, its cuBLAS handle and its CUDA graphs:
~0.3 s on an H100 whatever the model, 10 % of a 2-minute job on large-v3. Workers take
this spare when they claim a job and make a new one when they go idle, so a job on an
idle server starts on a warm state. Every spare is warmed the same way (1 s of silence,
greedy), so a job's result does not depend on what ran before it; that warm-up leaves
the results of greedy and beam-search jobs as a fresh state gives them (tested).
Only one spare is kept, and only on a GPU: its memory (one state: ~220 MiB for tiny.en,
~620 MiB for large-v3) is held while the model is loaded.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from whisperd.inference import DecodingState, TranscribeOptions, WhisperModel

log = logging.getLogger(__name__)

_WARM_UP_AUDIO = np.zeros(16000, dtype=np.float32)
_WARM_UP_OPTIONS = TranscribeOptions(beam_size=1, language="en", temperature_increment=0.0)


def warm_up(state: DecodingState) -> None:
    """The one warm-up recipe, also used by the model host after every load."""
    state.transcribe(_WARM_UP_AUDIO, _WARM_UP_OPTIONS)


class SpareState:
    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled  # off: take() always makes a new state, refill() does nothing
        self._lock = threading.Lock()
        self._model: WhisperModel | None = None
        self._state: DecodingState | None = None
        self._generation = 0  # bumped by drop(): a refill that raced it is thrown away

    def take(self, model: WhisperModel) -> DecodingState:
        """The spare if it was made for this model, else a new state."""
        with self._lock:
            state, owner = self._state, self._model
            self._state = self._model = None
        if state is not None and owner is model and not state.closed and not model.closed:
            return state
        if state is not None:
            state.close()
        return model.new_state()

    def refill(self, model: WhisperModel) -> None:
        """Make and warm a spare for `model` unless there is one. Blocks (call it from a
        worker thread); errors only cost the spare."""
        with self._lock:
            if not self._enabled or self._state is not None or model.closed:
                return
            generation = self._generation
        try:
            state = model.new_state()
        except Exception as exc:  # noqa: BLE001 - out of memory, model closing: no spare
            log.debug("no spare decoding state: %s", exc)
            return
        try:
            warm_up(state)
        except Exception as exc:  # noqa: BLE001
            log.debug("spare decoding state failed its warm-up: %s", exc)
            state.close()
            return
        with self._lock:
            if self._state is None and generation == self._generation and not model.closed:
                self._state, self._model = state, model
                return
        state.close()

    def drop(self) -> None:
        """Free the spare now (before an unload, at shutdown)."""
        with self._lock:
            self._generation += 1
            state = self._state
            self._state = self._model = None
        if state is not None:
            state.close()
