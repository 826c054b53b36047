"""On a GPU with an f16 model the batched engine's decoder steps run as whisperd's own CUDA
code instead of a ggml graph (native/src/cuda_decoder.hpp): both must give the same
transcripts, greedy and with beams, with a prompt (a step of many rows a window: the
cross-attention kernel takes a window's rows four at a time), with and without recorded
CUDA graphs. Everywhere else the ggml step stays (checked in test_cuda_encoder.py, beside
the encoder). With WHISPERD_CROSS_KV_INT8=1 (the default) greedy steps read an int8 copy
of the cross K/V: the same transcripts as the f16 step, a moved window included, and the automatic
batch size counts the copy's memory. The step's product choices (Q, K and V as one batched
product, FC1's bias and GELU in its product, cuBLASLt's algorithms timed per shape) give
the same words as each undone.

The GPU tests run under WHISPERD_TEST_GPU=1 with WHISPERD_TEST_F16_MODEL (bench/gpu.sh
makes an f16 tiny.en there)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from test_cuda_encoder import transcribe, windows
from whisperd import cuda_env
from whisperd.batch_decoder import BatchDecoder, slot_cost
from whisperd.batching import WindowRequest
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


@pytest.mark.parametrize("name, value, message", [
    ("WHISPERD_CUDA_DECODER", "fast", "WHISPERD_CUDA_DECODER must be 0, 1 or auto"),
    ("WHISPERD_CROSS_KV_INT8", "yes", "WHISPERD_CROSS_KV_INT8 must be 0 or 1"),
])
def test_a_wrong_decoder_setting_names_itself(
        f16_model: tuple[WhisperModel, Path], monkeypatch: pytest.MonkeyPatch,
        name: str, value: str, message: str) -> None:
    model, _ = f16_model
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=message):
        BatchDecoder(model, 2, 2).close()


def test_a_wrong_int8_setting_is_refused_at_start() -> None:
    """The server checks the switch with its settings, before any model loads; unset
    means on, 0 turns the copy off."""
    assert cuda_env.cross_kv_int8({}) is True
    assert cuda_env.cross_kv_int8({"WHISPERD_CROSS_KV_INT8": "0"}) is False
    cuda_env.check_switches({"WHISPERD_CROSS_KV_INT8": "1"})
    with pytest.raises(ValueError, match="WHISPERD_CROSS_KV_INT8 must be 0 or 1, got 'yes'"):
        cuda_env.check_switches({"WHISPERD_CROSS_KV_INT8": "yes"})


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("switch", ["WHISPERD_CUDA_STEP_FUSION", "WHISPERD_CUDA_STEP_TUNE"])
def test_the_steps_product_choices_give_the_same_words(
        f16_model: tuple[WhisperModel, Path], jfk: np.ndarray, beam: int, switch: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default step (Q, K and V as one batched product, FC1 with its bias and GELU in
    its product, cuBLASLt's algorithms timed per shape) against each choice undone:
    three products and a bias pass (FUSION=0), cuBLAS's own algorithms (TUNE=0)."""
    model, _ = f16_model
    monkeypatch.setenv("WHISPERD_CUDA_DECODER", "1")
    options = TranscribeOptions(beam_size=beam, threads=2)
    texts = {}
    for on in (True, False):
        monkeypatch.setenv(switch, "1" if on else "0")
        dec = BatchDecoder(model, 4, 5, encode_batch=4)
        try:
            assert dec.cuda_decoder
            texts[on] = transcribe(dec, windows(jfk), options)
        finally:
            dec.close()
    assert_same_words(texts)


@pytest.mark.parametrize("switch", ["WHISPERD_CUDA_STEP_FUSION", "WHISPERD_CUDA_STEP_TUNE"])
def test_a_wrong_product_setting_is_refused_at_start(switch: str) -> None:
    cuda_env.check_switches({switch: "0"})
    with pytest.raises(ValueError, match=f"{switch} must be 0 or 1, got 'on'"):
        cuda_env.check_switches({switch: "on"})


def test_int8_cross_kv_gives_the_f16_steps_transcripts(
        f16_model: tuple[WhisperModel, Path], jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy CUDA steps over the int8 copy of the cross K/V against the f16 caches (the
    30 s window's last window moves to slot 0 once the other two finish). The copy's memory
    is what the automatic batch size counts for it."""
    model, _ = f16_model
    monkeypatch.setenv("WHISPERD_CUDA_DECODER", "1")
    options = TranscribeOptions(beam_size=1, threads=2)
    texts, memory, per_slot = {}, {}, {}
    for int8 in (False, True):
        monkeypatch.setenv("WHISPERD_CROSS_KV_INT8", "1" if int8 else "0")
        per_slot[int8] = slot_cost(model, max_beams=5, encode_batch=4).per_slot_bytes
        dec = BatchDecoder(model, 4, 5, encode_batch=4)
        try:
            assert dec.cuda_decoder
            memory[int8] = dec.memory_bytes
            texts[int8] = transcribe(dec, windows(jfk), options)
        finally:
            dec.close()
    assert_same_words(texts)
    copy = 4 * (per_slot[True] - per_slot[False])
    assert copy > 0
    assert copy <= memory[True] - memory[False] <= copy + 2**20
    # Unset, the copy is made: it is the default.
    monkeypatch.delenv("WHISPERD_CROSS_KV_INT8")
    dec = BatchDecoder(model, 4, 5, encode_batch=4)
    try:
        assert dec.memory_bytes == memory[True]
    finally:
        dec.close()


def test_int8_cross_kv_moves_with_its_window(
        f16_model: tuple[WhisperModel, Path], jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three short silent windows take the lowest slots and end within a few steps; jfk in
    the highest slot moves to slot 0, whose int8 copy held a silent window's: it must
    still be heard right."""
    model, _ = f16_model
    monkeypatch.setenv("WHISPERD_CUDA_DECODER", "1")
    monkeypatch.setenv("WHISPERD_CROSS_KV_INT8", "1")
    options = TranscribeOptions(beam_size=1, threads=2)
    quiet = np.zeros(8000, np.float32)
    dec = BatchDecoder(model, 4, 2, encode_batch=4)
    try:
        assert dec.cuda_decoder
        dec.add([WindowRequest(i, quiet, options) for i in range(3)] + [WindowRequest(3, jfk, options)])
        texts: dict[int, str] = {}
        while dec.active():
            for r in dec.step():
                texts[r.window_id] = " ".join(s.text for s in r.segments)
        stats = dec.stats()
    finally:
        dec.close()
    assert stats.moves == 1
    assert normalise(texts[3]) == normalise(EXPECTED_JFK)
