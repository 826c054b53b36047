"""Convert a CTranslate2 Whisper model directory into a whisper.cpp GGML f16 file.

The output matches what whisper.cpp's `models/convert-pt-to-ggml.py` writes from the
original PyTorch checkpoint: same tensor names, order, types and header, so whisper.cpp
and its `whisper-quantize` treat it like an official file.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from whisperd.models import ct2
from whisperd.models.errors import ModelFormatError
from whisperd.models.ggml_file import GgmlHeader, GgmlWriter, Hparams

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 400

# OpenAI's tokenizers have 50257 regular tokens; id 50256 is `<|endoftext|>` in the
# English one and an empty string in the multilingual one. The official GGML files keep
# that last entry (whisper.cpp then adds the special tokens after it).
N_REGULAR_TOKENS = 50257
_LAST_REGULAR = {False: b"<|endoftext|>", True: b""}

# Kept in float32 although they are 2-D, as convert-pt-to-ggml.py does (whisper.cpp
# creates these tensors as GGML_TYPE_F32).
F32_TENSORS = frozenset(
    {
        "encoder.conv1.bias",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "decoder.positional_embedding",
    }
)

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def convert_ct2(src_dir: Path, out: Path) -> Path:
    """Write `out` (a GGML f16 whisper model) from the CTranslate2 directory `src_dir`.

    The file appears only when complete: it is written beside `out` and renamed.
    """
    src_dir, out = Path(src_dir), Path(out)
    started = time.monotonic()
    model = ct2.read_model(src_dir / "model.bin")
    if model.spec_name != "WhisperSpec":
        raise ModelFormatError(f"{src_dir}: spec {model.spec_name!r} is not a Whisper model")
    if any(name.endswith("weight_scale") for name in model.variables):
        raise ModelFormatError(
            f"{src_dir}: int8-quantised CTranslate2 weights cannot be converted; "
            "use a float16 or float32 model"
        )

    hparams = whisper_hparams(model)
    tokens = whisper_tokens(src_dir, hparams)
    header = GgmlHeader(hparams, mel_filters(hparams.n_mels), tokens)
    log.info(
        "converting %s → %s (%d+%d layers, state %d, n_vocab %d, %d tokens, %d mels)",
        src_dir, out, hparams.n_audio_layer, hparams.n_text_layer, hparams.n_audio_state,
        hparams.n_vocab, len(tokens), hparams.n_mels,
    )
    with GgmlWriter(out, header) as writer:
        for index, (name, array) in enumerate(ggml_tensors(model, hparams)):
            writer.write_array(name, storage_array(name, array))
            log.debug("tensor %3d %-45s %s", index, name, array.shape)
    log.info("wrote %s (%.1f MB) in %.1f s", out, out.stat().st_size / 1e6, time.monotonic() - started)
    return out


def whisper_hparams(model: ct2.Ct2Model) -> Hparams:
    """The GGML header fields, read off the CTranslate2 tensor shapes."""
    v = model.variables
    try:
        embeddings = v["decoder/embeddings/weight"]
        audio_pe = v["encoder/position_encodings/encodings"]
        text_pe = v["decoder/position_encodings/encodings"]
        conv1 = v["encoder/conv1/weight"]
        n_audio_head = int(model.scalar("encoder/num_heads"))
        n_text_head = int(model.scalar("decoder/num_heads"))
    except KeyError as exc:
        raise ModelFormatError(f"{model.path}: not a Whisper model, {exc} missing") from None
    layers = {"encoder": set(), "decoder": set()}
    for name in v:
        match = _LAYER.match(name)
        if match:
            layers[match[1]].add(int(match[2]))
    for side, found in layers.items():
        if found != set(range(len(found))):
            raise ModelFormatError(f"{model.path}: {side} layers {sorted(found)} are not 0..n-1")
    return Hparams(
        n_vocab=embeddings.shape[0],
        n_audio_ctx=audio_pe.shape[0],
        n_audio_state=audio_pe.shape[1],
        n_audio_head=n_audio_head,
        n_audio_layer=len(layers["encoder"]),
        n_text_ctx=text_pe.shape[0],
        n_text_state=embeddings.shape[1],
        n_text_head=n_text_head,
        n_text_layer=len(layers["decoder"]),
        n_mels=conv1.shape[1],
        ftype=1,  # mostly f16
    )


def whisper_tokens(src_dir: Path, hparams: Hparams) -> list[bytes]:
    """The regular tokens to store, completed to the official count where short."""
    tokens = ct2.load_token_bytes(src_dir)
    if len(tokens) == N_REGULAR_TOKENS - 1:
        # Tokenizers that keep <|endoftext|> only among the added tokens.
        tokens.append(_LAST_REGULAR[hparams.is_multilingual])
    if len(tokens) > hparams.n_vocab:
        raise ModelFormatError(
            f"{src_dir}: {len(tokens)} tokens in tokenizer.json but n_vocab is {hparams.n_vocab}"
        )
    return tokens


def ggml_tensors(model: ct2.Ct2Model, hparams: Hparams) -> Iterator[tuple[str, np.ndarray]]:
    """(whisper.cpp name, array in the source dtype) in the order of OpenAI's state dict.

    Fused CTranslate2 projections are split: self-attention `linear_0` is Q,K,V stacked
    along dim 0 and cross-attention `linear_1` is K,V. Whisper's key projection has no
    bias; CTranslate2 stores zeros there, which are dropped (a key bias would shift every
    score of a query equally and vanish in the softmax anyway).
    """
    v = model.variables

    def get(name: str) -> np.ndarray:
        try:
            return v[name]
        except KeyError:
            raise ModelFormatError(f"{model.path}: variable {name} missing") from None

    def linear(src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
        yield f"{dst}.weight", get(f"{src}/weight")
        yield f"{dst}.bias", get(f"{src}/bias")

    def norm(src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
        yield f"{dst}.weight", get(f"{src}/gamma")
        yield f"{dst}.bias", get(f"{src}/beta")

    def split(src: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        weight, bias = get(f"{src}/weight"), get(f"{src}/bias")
        if weight.shape[0] % parts or weight.shape[0] != bias.shape[0]:
            raise ModelFormatError(f"{model.path}: {src} of shape {weight.shape} is not {parts} fused")
        return np.split(weight, parts), np.split(bias, parts)

    def self_attention(src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
        (wq, wk, wv), (bq, _, bv) = split(f"{src}/linear_0", 3)
        yield from [(f"{dst}.query.weight", wq), (f"{dst}.query.bias", bq)]
        yield f"{dst}.key.weight", wk
        yield from [(f"{dst}.value.weight", wv), (f"{dst}.value.bias", bv)]
        yield from linear(f"{src}/linear_1", f"{dst}.out")

    def cross_attention(src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
        yield from linear(f"{src}/linear_0", f"{dst}.query")
        (wk, wv), (_, bv) = split(f"{src}/linear_1", 2)
        yield f"{dst}.key.weight", wk
        yield from [(f"{dst}.value.weight", wv), (f"{dst}.value.bias", bv)]
        yield from linear(f"{src}/linear_2", f"{dst}.out")

    def mlp(src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
        yield from linear(f"{src}/linear_0", f"{dst}.mlp.0")
        yield from linear(f"{src}/linear_1", f"{dst}.mlp.2")
        yield from norm(f"{src}/layer_norm", f"{dst}.mlp_ln")

    yield "encoder.positional_embedding", get("encoder/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        yield from linear(f"encoder/{conv}", f"encoder.{conv}")
    for i in range(hparams.n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        yield from self_attention(f"{src}/self_attention", f"{dst}.attn")
        yield from norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        yield from mlp(f"{src}/ffn", dst)
    yield from norm("encoder/layer_norm", "encoder.ln_post")

    yield "decoder.positional_embedding", get("decoder/position_encodings/encodings")
    # Also the output projection: CTranslate2 aliases decoder/projection/weight to it.
    yield "decoder.token_embedding.weight", get("decoder/embeddings/weight")
    for i in range(hparams.n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        yield from self_attention(f"{src}/self_attention", f"{dst}.attn")
        yield from norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        yield from cross_attention(f"{src}/attention", f"{dst}.cross_attn")
        yield from norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        yield from mlp(f"{src}/ffn", dst)
    yield from norm("decoder/layer_norm", "decoder.ln")


def storage_array(name: str, array: np.ndarray) -> np.ndarray:
    """The array as the GGML file stores it: f16 for 2-D and 3-D weights, else f32."""
    if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
        # whisper.cpp adds the conv bias as a (1, n_state) ggml tensor.
        array = array.reshape(array.shape[0], 1)
    if array.ndim < 2 or name in F32_TENSORS:
        return array.astype(np.float32)
    return array.astype(np.float16)


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa, htk=False)."""
    f_sp = 200.0 / 3
    mels = freqs / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = freqs >= min_log_hz
    mels[above] = min_log_mel + np.log(freqs[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = mels >= min_log_mel
    freqs[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return freqs


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, shape (n_mels, n_fft // 2 + 1), float32.

    The same arithmetic as `librosa.filters.mel(sr, n_fft, n_mels)` with its defaults
    (fmin 0, fmax sr/2, Slaney scale and norm), step for step and in the same dtypes,
    so the values are bit-identical to OpenAI's `mel_filters.npz`.
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_edges = np.linspace(
        _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2
    )
    mel_f = _mel_to_hz(mel_edges)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)

    weights = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    # Slaney normalisation: each triangle has unit area in Hz.
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights
