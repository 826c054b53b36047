"""On a GPU with an f16 model the batched engine runs the encoder's layers as whisperd's
own CUDA code instead of a ggml graph: it must write the cross-attention keys and values
ggml's encoder writes (up to f16 rounding) and give the same transcripts. Everywhere
else (a CPU, a quantised model) the ggml encoder stays, whatever is asked.

The GPU tests run under WHISPERD_TEST_GPU=1 with WHISPERD_TEST_F16_MODEL (bench/gpu.sh
makes an f16 tiny.en there from the q8_0 one it carries)."""
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
from whisperd.models.ggml_file import read_header

SR = 16000


def windows(jfk: np.ndarray) -> dict[int, np.ndarray]:
    """Three windows encoded in one group: speech, a full 30 s window, a cut clip."""
    return {1: jfk, 2: np.tile(jfk, 3)[: 30 * SR], 3: jfk[5 * SR:]}


def transcribe(dec: BatchDecoder, clips: dict[int, np.ndarray], options: TranscribeOptions) -> dict[int, str]:
    dec.add([WindowRequest(i, s, options) for i, s in clips.items()])
    texts: dict[int, str] = {}
    while dec.active():
        for r in dec.step():
            texts[r.window_id] = " ".join(s.text for s in r.segments)
    return texts


@pytest.fixture(scope="module")
def f16_model(use_gpu: bool) -> Iterator[tuple[WhisperModel, Path]]:
    path = os.environ.get("WHISPERD_TEST_F16_MODEL")
    if not use_gpu or not path:
        pytest.skip("needs a GPU and an f16 model (WHISPERD_TEST_GPU=1, WHISPERD_TEST_F16_MODEL)")
    m = WhisperModel(Path(path), use_gpu=True)
    yield m, Path(path)
    m.close()


def test_cuda_encoder_writes_ggmls_keys_and_values(f16_model: tuple[WhisperModel, Path], jfk: np.ndarray) -> None:
    model, path = f16_model
    layers = read_header(path).hparams.n_text_layer
    clips = windows(jfk)
    kv: dict[bool, dict[tuple[int, int], np.ndarray]] = {}
    for cuda in (False, True):
        dec = BatchDecoder(model, 4, 2, encode_batch=4, cuda_encoder=cuda)
        try:
            assert dec.cuda_encoder is cuda
            dec.add([WindowRequest(i, s, TranscribeOptions()) for i, s in clips.items()])
            kv[cuda] = {(i, layer): dec.cross_kv(i, layer) for i in clips for layer in range(layers)}
        finally:
            dec.close()
    for key, ref in kv[False].items():
        got = kv[True][key]
        assert np.isfinite(got).all(), key
        for part, name in ((0, "keys"), (1, "values")):
            # f16 activations between the products (ggml keeps f32): ~1e-3 relative
            rel = np.linalg.norm(got[part] - ref[part]) / np.linalg.norm(ref[part])
            assert rel < 1e-2, f"window {key[0]} layer {key[1]} {name}: relative difference {rel:.2e}"


@pytest.mark.parametrize("beam", [1, 5])
def test_cuda_encoder_gives_ggmls_transcripts(f16_model: tuple[WhisperModel, Path], jfk: np.ndarray, beam: int) -> None:
    model, _ = f16_model
    options = TranscribeOptions(beam_size=beam, threads=2)
    texts = {}
    for cuda in (False, True):
        dec = BatchDecoder(model, 4, 2, encode_batch=4, cuda_encoder=cuda)
        try:
            texts[cuda] = transcribe(dec, windows(jfk), options)
        finally:
            dec.close()
    assert texts[True] == texts[False]
    assert normalise(texts[True][1]) == normalise(EXPECTED_JFK)


def test_the_ggml_encoder_stays_where_cuda_cannot_run(tiny_en_model: Path, use_gpu: bool, jfk: np.ndarray) -> None:
    """Asked for on a CPU, or on a GPU with a quantised model (the GPU host's tiny.en is
    q8_0), the CUDA encoder is not used and transcripts are unaffected."""
    model = WhisperModel(tiny_en_model, use_gpu=use_gpu)
    try:
        quantised = read_header(tiny_en_model).hparams.base_ftype not in (0, 1)
        if use_gpu and not quantised:
            pytest.skip("an f16 model on a GPU: the CUDA encoder can run")
        dec = BatchDecoder(model, 2, 2, cuda_encoder=True)
        try:
            assert not dec.cuda_encoder
            texts = transcribe(dec, {7: jfk}, TranscribeOptions(threads=2))
        finally:
            dec.close()
        assert normalise(texts[7]) == normalise(EXPECTED_JFK)
    finally:
        model.close()


def test_cuda_encoder_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in (("", None), ("auto", None), ("1", True), ("on", True), ("0", False), ("off", False)):
        monkeypatch.setenv("WHISPERD_CUDA_ENCODER", raw)
        assert cuda_env.cuda_encoder_choice() is expected
    monkeypatch.delenv("WHISPERD_CUDA_ENCODER")
    assert cuda_env.cuda_encoder_choice() is None
    monkeypatch.setenv("WHISPERD_CUDA_ENCODER", "fast")
    with pytest.raises(ValueError, match="WHISPERD_CUDA_ENCODER must be 0, 1 or auto"):
        cuda_env.cuda_encoder_choice()
