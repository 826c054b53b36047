"""Our Silero VAD forward pass (native/src/silero_vad.cpp) against whisper.cpp's own, the
reference: the same speech probability per 512-sample frame and the same speech spans,
on jfk.wav tiled with pauses and on espeak-ng speech."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_windows import speak, tiled
from whisperd import _native
from whisperd.inference import vad_model_path
from whisperd.windows import VAD_MIN_SILENCE_MS, VAD_MIN_SPEECH_MS, VAD_SPEECH_PAD_MS, VAD_THRESHOLD

SR = 16000


def options(**changes: float) -> _native.Options:
    opts = _native.Options()
    opts.vad_model_path = str(vad_model_path())
    opts.vad_threshold = VAD_THRESHOLD
    opts.vad_min_speech_ms = VAD_MIN_SPEECH_MS
    opts.vad_min_silence_ms = VAD_MIN_SILENCE_MS
    opts.vad_speech_pad_ms = VAD_SPEECH_PAD_MS
    for name, value in changes.items():
        setattr(opts, name, value)
    return opts


def check_same_as_whisper_cpp(audio: np.ndarray, opts: _native.Options) -> list[tuple[int, int]]:
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    ours = np.array(_native.vad_probabilities(audio, opts))
    ref = np.array(_native.vad_probabilities_reference(audio, opts))
    assert len(ours) == len(ref) == -(-len(audio) // 512)
    diff = np.abs(ours - ref) if len(ref) else np.zeros(1)
    # The sums run in another order than ggml's, and every convolution's input is rounded
    # to f16 as ggml does: a last-bit difference sometimes flips an f16 rounding, and the
    # LSTM carries it on. Reversing the order of our own sums moves the probabilities as
    # much (median 3e-7, worst 3e-4 on 120 s of jfk), so this bounds that noise, not a
    # different computation; a wrong weight, padding or gate moves them by far more.
    assert float(np.median(diff)) < 2e-6, float(np.median(diff))
    assert float(np.mean(diff > 1e-4)) < 0.02, float(np.mean(diff > 1e-4))
    assert float(diff.max()) < 2e-3, (float(diff.max()), int(diff.argmax()))
    spans = _native.vad_speech_spans(audio, opts, 1)
    assert spans == _native.vad_speech_spans_reference(audio, opts, 1)
    return spans


def test_tiled_jfk_matches_whisper_cpp(jfk: np.ndarray) -> None:
    audio, copies = tiled(jfk, 5, [1.0, 2.5, 0.3])  # ~60 s, pauses of several lengths
    audio = audio[: len(audio) - 100]  # not a whole number of frames: the last one is padded
    spans = check_same_as_whisper_cpp(audio, options())
    assert len(spans) >= len(copies)
    # Other thresholds and durations take other turns through the post-processing.
    for changes in (
        {"vad_threshold": 0.3, "vad_min_silence_ms": 300, "vad_speech_pad_ms": 200},
        {"vad_threshold": 0.8, "vad_min_speech_ms": 1000, "vad_speech_pad_ms": 0},
    ):
        check_same_as_whisper_cpp(audio, options(**changes))


def test_espeak_speech_matches_whisper_cpp(tmp_path: Path) -> None:
    text = (
        "The quick brown fox jumps over the lazy dog near the river bank. "
        "Yesterday we walked to the market and bought apples, bread and cheese. "
        "In the evening the children played football in the park until it was dark."
    )
    audio = speak(text, tmp_path / "speech.wav")
    # Quiet noise under it: Silero's probabilities between words then hover mid-way.
    noise = np.random.default_rng(7).normal(0.0, 0.003, len(audio)).astype(np.float32)
    assert len(check_same_as_whisper_cpp(audio + noise, options())) >= 1


def test_silence_and_scraps_of_audio() -> None:
    opts = options()
    for n in (0, 100, 512, 5 * SR):
        assert check_same_as_whisper_cpp(np.zeros(n, np.float32), opts) == []


def test_a_truncated_model_is_refused_by_name(tmp_path: Path) -> None:
    data = vad_model_path().read_bytes()
    bad = tmp_path / "silero-cut.bin"
    bad.write_bytes(data[: len(data) // 2])
    opts = options(vad_model_path=str(bad))
    with pytest.raises(_native.WhisperError, match="silero-cut.bin"):
        _native.vad_speech_spans(np.zeros(SR, np.float32), opts, 1)
