"""The batched encoder computes the log-mel spectrogram itself (a DFT as a matrix product
inside its graph): it must give whisper.cpp's spectrogram, and the same transcripts.
Runs on the GPU with WHISPERD_TEST_GPU=1 (bench/gpu.sh), on the CPU otherwise."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from whisperd import cuda_env
from whisperd.batch_decoder import BatchDecoder
from whisperd.batching import WindowRequest
from whisperd.inference import TranscribeOptions, WhisperModel

SR = 16000


@pytest.fixture(scope="module")
def model(tiny_en_model: Path, use_gpu: bool) -> Iterator[WhisperModel]:
    m = WhisperModel(tiny_en_model, use_gpu=use_gpu)
    yield m
    m.close()


def clips(jfk: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "speech 11 s": jfk,
        # a full window: its last samples reach the frames past 30 s that set the maximum
        "speech 30 s": np.tile(jfk, 3)[: 30 * SR],
        "0.3 s": jfk[SR: SR + SR * 3 // 10],
        "silence": np.zeros(5 * SR, dtype=np.float32),
        "quiet noise": (rng.standard_normal(10 * SR) * 1e-4).astype(np.float32),
    }


def test_the_encoders_mel_is_whisper_cpps(model: WhisperModel, jfk: np.ndarray) -> None:
    dec = model.native.new_batch_decoder(1, 256, 2, 1, 1)
    try:
        assert dec.mel_on_device
        for name, samples in clips(jfk).items():
            ref = np.asarray(dec.mel(samples))
            got = np.asarray(dec.device_mel(samples))
            assert got.shape == ref.shape, name
            # whisper.cpp sums the filterbank in double after a float FFT; the graph's
            # matrix products are float: the values (about -1.5 to 2) agree to ~1e-5.
            assert np.abs(got - ref).max() < 2e-4, name
    finally:
        dec.close()


@pytest.mark.parametrize("beam", [1, 5])
def test_the_same_transcript_with_either_mel(model: WhisperModel, jfk: np.ndarray, beam: int) -> None:
    options = TranscribeOptions(beam_size=beam, threads=2)
    texts = []
    for on_device in (False, True):
        dec = BatchDecoder(model, 2, 2, mel_on_device=on_device)
        try:
            dec.add([WindowRequest(1, jfk, options)])
            results = []
            while dec.active():
                results += dec.step()
        finally:
            dec.close()
        assert len(results) == 1
        texts.append(" ".join(s.text for s in results[0].segments))
    assert texts[0] == texts[1]
    assert normalise(texts[1]) == normalise(EXPECTED_JFK)


def test_cuda_settings_follow_the_gpu_and_never_override_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NVIDIA_TF32_OVERRIDE", "GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F",
                "GGML_CUDA_FORCE_CUBLAS_COMPUTE_16F"):
        monkeypatch.delenv(var, raising=False)
    # an H200: f32 accumulation at full rate, so ggml writes f32 products directly
    assert cuda_env.configure([(9, 0)]) == {
        "NVIDIA_TF32_OVERRIDE": "0", "GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F": "1"}
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    monkeypatch.delenv("GGML_CUDA_FORCE_CUBLAS_COMPUTE_32F")
    # an RTX 2080 (half-rate f32 accumulation) keeps ggml's f16 products
    assert cuda_env.configure([(7, 5)]) == {"NVIDIA_TF32_OVERRIDE": "0"}
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    monkeypatch.setenv("GGML_CUDA_FORCE_CUBLAS_COMPUTE_16F", "1")
    assert cuda_env.configure([(9, 0)]) == {}
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "1"
