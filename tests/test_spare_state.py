"""The spare decoding state the workers take on a GPU (server/engine/spare.py), here on
the CPU with the real model: a job on a warmed spare gets what a fresh state gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisperd.audio import decode_audio
from whisperd.inference import TranscribeOptions, WhisperModel
from whisperd.server.engine.spare import SpareState


@pytest.fixture(scope="module")
def model(tiny_en_model: Path, use_gpu: bool) -> WhisperModel:
    m = WhisperModel(tiny_en_model, use_gpu=use_gpu)
    yield m
    m.close()


@pytest.fixture(scope="module")
def speech(jfk_wav: Path) -> np.ndarray:
    return np.tile(decode_audio(jfk_wav), 3)  # 33 s: two windows


def segments(state, audio: np.ndarray, beam: int) -> list[tuple[float, float, str]]:
    result = state.transcribe(audio, TranscribeOptions(beam_size=beam, threads=2))
    return [(s.start, s.end, s.text) for s in result.segments]


@pytest.mark.parametrize("beam", [1, 5])
def test_a_job_on_the_spare_gets_what_a_fresh_state_gives(model: WhisperModel, speech: np.ndarray, beam: int) -> None:
    with model.new_state() as fresh:
        expected = segments(fresh, speech, beam)
    spare = SpareState()
    spare.refill(model)
    state = spare.take(model)
    with state:
        assert segments(state, speech, beam) == expected


def test_take_returns_the_spare_once_and_drop_frees_it(model: WhisperModel) -> None:
    spare = SpareState()
    spare.refill(model)
    first = spare.take(model)
    second = spare.take(model)  # the spare is gone: a new state
    assert first is not second
    first.close()
    second.close()
    spare.refill(model)
    spare.drop()
    third = spare.take(model)  # dropped: a new state, the old one closed
    assert not third.closed
    third.close()


def test_a_spare_of_another_model_is_not_used(model: WhisperModel, tiny_en_model: Path) -> None:
    other = WhisperModel(tiny_en_model, use_gpu=False)
    spare = SpareState()
    spare.refill(other)
    other.close()  # its spare still holds the weights until it is closed
    state = spare.take(model)
    with state:
        assert not state.closed


def test_disabled_never_keeps_one(model: WhisperModel) -> None:
    spare = SpareState(enabled=False)
    spare.refill(model)
    a, b = spare.take(model), spare.take(model)
    assert a is not b
    a.close()
    b.close()
