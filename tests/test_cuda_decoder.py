"""On a GPU with an f16 model the batched engine's decoder steps run as whisperd's own CUDA
code instead of a ggml graph (native/src/cuda_decoder.hpp): both must give the same
transcripts, greedy and with beams, with a prompt (a step of many rows a window: the
cross-attention kernel takes a window's rows four at a time), with and without recorded
CUDA graphs. Everywhere else the ggml step stays (checked in test_cuda_encoder.py, beside
the encoder).

The GPU tests run under WHISPERD_TEST_GPU=1 with WHISPERD_TEST_F16_MODEL (bench/gpu.sh
makes an f16 tiny.en there)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from test_cuda_encoder import transcribe, windows
from whisperd.batch_decoder import BatchDecoder
from whisperd.inference import TranscribeOptions, WhisperModel


def decode_both(model: WhisperModel, jfk: np.ndarray, options: TranscribeOptions,
                monkeypatch: pytest.MonkeyPatch) -> dict[bool, dict[int, str]]:
    texts = {}
    for cuda in (False, True):
        monkeypatch.setenv("WHISPERD_CUDA_DECODER", "1" if cuda else "0")
        dec = BatchDecoder(model, 4, 5, encode_batch=4)
        try:
            assert dec.cuda_decoder is cuda
            texts[cuda] = transcribe(dec, windows(jfk), options)
        finally:
            dec.close()
    return texts


def assert_same_words(texts: dict[bool, dict[int, str]]) -> None:
    assert normalise(texts[True][1]) == normalise(texts[False][1]) == normalise(EXPECTED_JFK)
    assert normalise(texts[True][3]) == normalise(texts[False][3])
    # The 30 s window ends inside a sentence: where Whisper's last timestamp falls there
    # can move by a word with the last bits of a product (see test_cuda_encoder.py).
    short, long = sorted((normalise(texts[True][2]).split(), normalise(texts[False][2]).split()), key=len)
    assert long[: len(short)] == short and len(long) - len(short) <= 2, (texts[True][2], texts[False][2])


@pytest.mark.parametrize("beam", [1, 5])
def test_cuda_decoder_gives_ggmls_transcripts(f16_model: tuple[WhisperModel, Path], jfk: np.ndarray,
                                              beam: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = f16_model
    assert_same_words(decode_both(model, jfk, TranscribeOptions(beam_size=beam, threads=2), monkeypatch))


def test_cuda_decoder_with_a_prompt_and_without_recorded_graphs(
        f16_model: tuple[WhisperModel, Path], jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt makes the first step of a window many rows; launching the kernels one by
    one must equal replaying them."""
    model, _ = f16_model
    monkeypatch.setenv("WHISPERD_CUDA_GRAPHS", "0")
    prompt = "President Kennedy's inaugural address, January 1961: ask not what your country can do for you."
    options = TranscribeOptions(beam_size=1, threads=2, initial_prompt=prompt)
    assert_same_words(decode_both(model, jfk, options, monkeypatch))


def test_steps_switch_between_the_cuda_code_and_the_graph_mid_window(
        f16_model: tuple[WhisperModel, Path], jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of more slots than WHISPERD_CUDA_DECODER_MAX_BATCH take the ggml graph, smaller
    ones the CUDA code, over the same caches: three windows start on the graph (4 slots)
    and end on the CUDA code once the first ones finish."""
    model, _ = f16_model
    options = TranscribeOptions(beam_size=1, threads=2)
    monkeypatch.setenv("WHISPERD_CUDA_DECODER_MAX_BATCH", "2")
    texts = decode_both(model, jfk, options, monkeypatch)
    assert_same_words(texts)


def test_a_wrong_decoder_setting_names_itself(
        f16_model: tuple[WhisperModel, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = f16_model
    monkeypatch.setenv("WHISPERD_CUDA_DECODER", "fast")
    with pytest.raises(RuntimeError, match="WHISPERD_CUDA_DECODER must be 0, 1 or auto"):
        BatchDecoder(model, 2, 2).close()
