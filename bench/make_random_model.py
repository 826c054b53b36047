"""Write a whisper.cpp GGML model file with RANDOM weights of a given geometry.

Why: the GPU benchmarks (issue 6) need a large-v3-sized model, and the GPU host has no
network and no model files. Speed does not depend on the values of the weights, only on
their shapes and types, so a file with the exact layout of the official
`ggml-large-v3.bin` (about 3.1 GB in f16) is generated on the host itself, in seconds.
It transcribes nothing meaningful: never report accuracy from it.

Layout: the tensor names, order, types and header are produced by the same code that
converts real models (`whisperd.models.convert.ggml_tensors` / `storage_array`, the mel
filters of `mel_filters`, `whisperd.models.ggml_file.GgmlWriter`): the converter is fed a
stand-in for a CTranslate2 model whose variables are generated on demand, one tensor at a
time. `--ftype q8_0` quantises each tensor as whisper.cpp's `whisper-quantize` would (the
selection of `whisperd.models.quantize`), with a numpy copy of ggml's q8_0 reference
arithmetic run on all CPUs, so no native extension is needed; the result is byte-identical
to writing f16 and quantising it with `whisperd model quantize`.

Time on the H100 host (16 CPUs): large-v3 f16 (3,095,066,194 bytes) 15 s, q8_0
(1,656,570,994 bytes) 14 s.

Values: linear, conv and embedding weights N(0, 0.02) (GPT-2/Whisper-style init), biases 0,
layer norms weight 1 bias 0, the encoder's positional embedding Whisper's sinusoids. With
layer norms in front of every block this keeps activations well inside f16 range. For
speed the normal values come from a 65,536-entry table of N(0, 0.02) draws indexed by
random uint16 (one cheap lookup per weight instead of a Gaussian draw).

Vocabulary: the header stores the 50,257 regular tokens (whisper.cpp appends the special,
language and timestamp tokens itself and derives their ids from n_vocab: 51866 = large-v3,
100 languages). By default they are synthetic: ids 0..255 are the 256 single bytes in
GPT-2's byte-level order (so id 220 is b" ", which whisper.cpp looks up by text when it
suppresses a leading blank: without a b" " token whisper_full throws std::out_of_range),
ids 256..50255 are b" w<id>", id 50256 is b"" as in the official multilingual files.
`--vocab-from FILE` copies the regular tokens of an existing GGML file instead (an English
file's b"<|endoftext|>" at 50256 is replaced by b"").

Usage:
  python bench/make_random_model.py --out /tmp/ggml-large-v3-random.bin        # f16, ~3.1 GB
  python bench/make_random_model.py --out /tmp/ggml-large-v3-random-q8_0.bin --ftype q8_0
  python bench/make_random_model.py --shape tiny --out /tmp/tiny-random.bin    # quick check
  python bench/make_random_model.py --dry-run                                  # size only
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

try:
    import whisperd  # noqa: F401  (the repository root on PYTHONPATH, as bench/gpu.sh sets it)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whisperd.models.convert import N_REGULAR_TOKENS, ggml_tensors, mel_filters, storage_array
from whisperd.models.ggml_file import (
    GGML_QNT_VERSION,
    GGML_QNT_VERSION_FACTOR,
    GgmlHeader,
    GgmlTensor,
    GgmlType,
    GgmlWriter,
    Hparams,
    read_header,
    tensor_nbytes,
)
from whisperd.models.quantize import QTYPES, should_quantize

SHAPES: dict[str, Hparams] = {
    # openai/whisper-large-v3 (and ggml-large-v3.bin).
    "large-v3": Hparams(
        n_vocab=51866, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
        n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32, n_mels=128, ftype=1,
    ),
    # Whisper tiny's dimensions with large-v3's vocabulary and mel count: a file of a few
    # tens of MB that exercises the same vocabulary / special-token / 128-mel handling.
    "tiny": Hparams(
        n_vocab=51866, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4, n_mels=128, ftype=1,
    ),
    # OpenAI's multilingual base, exactly: for checking the layout against ggml-base.bin.
    "base": Hparams(
        n_vocab=51865, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
        n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6, n_mels=80, ftype=1,
    ),
}

WEIGHT_STD = 0.02
_TABLE_SIZE = 1 << 16
QK8_0 = 32  # values per q8_0 block


# ---------------------------------------------------------------------------------------
# Vocabulary


def gpt2_byte_tokens() -> list[bytes]:
    """The 256 single-byte tokens in GPT-2's id order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    rest = [b for b in range(256) if b not in set(printable)]
    return [bytes([b]) for b in printable + rest]


def synthetic_tokens() -> list[bytes]:
    tokens = gpt2_byte_tokens()
    tokens += [b" w%d" % i for i in range(len(tokens), N_REGULAR_TOKENS - 1)]
    tokens.append(b"")  # id 50256: empty in the multilingual files
    assert len(tokens) == N_REGULAR_TOKENS and tokens[220] == b" "
    return tokens


def tokens_from_file(path: Path, hparams: Hparams) -> list[bytes]:
    """The regular tokens of another GGML file, fitted to a multilingual header."""
    tokens = list(read_header(path).tokens)[:N_REGULAR_TOKENS]
    if len(tokens) < N_REGULAR_TOKENS - 1:
        raise SystemExit(f"{path}: only {len(tokens)} tokens; need {N_REGULAR_TOKENS - 1} or more")
    if hparams.is_multilingual:
        tokens = tokens[: N_REGULAR_TOKENS - 1] + [b""]
    if b" " not in tokens:
        raise SystemExit(f"{path}: no b' ' token; whisper.cpp's suppress_blank needs one")
    return tokens


# ---------------------------------------------------------------------------------------
# Weights: a stand-in for ct2.Ct2Model whose variables are made when the converter asks.


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's encoder positional embedding (openai/whisper model.py `sinusoids`)."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32))
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def ct2_shape(name: str, hp: Hparams) -> tuple[int, ...]:
    """The CTranslate2 shape of variable `name` for geometry `hp` (KeyError if unknown)."""
    n, v = hp.n_audio_state, hp.n_vocab
    fixed = {
        "encoder/position_encodings/encodings": (hp.n_audio_ctx, n),
        "encoder/conv1/weight": (n, hp.n_mels, 3),
        "encoder/conv1/bias": (n,),
        "encoder/conv2/weight": (n, n, 3),
        "encoder/conv2/bias": (n,),
        "encoder/layer_norm/gamma": (n,),
        "encoder/layer_norm/beta": (n,),
        "decoder/position_encodings/encodings": (hp.n_text_ctx, hp.n_text_state),
        "decoder/embeddings/weight": (v, hp.n_text_state),
        "decoder/layer_norm/gamma": (hp.n_text_state,),
        "decoder/layer_norm/beta": (hp.n_text_state,),
    }
    if name in fixed:
        return fixed[name]
    parts = name.split("/")  # e.g. decoder/layer_3/attention/linear_1/weight
    side, layer, rest = parts[0], parts[1], "/".join(parts[2:])
    if side not in ("encoder", "decoder") or not layer.startswith("layer_"):
        raise KeyError(name)
    n = hp.n_audio_state if side == "encoder" else hp.n_text_state
    outs = {  # output rows of each linear (weights are (out, in))
        "self_attention/linear_0": (3 * n, n),  # Q, K, V fused
        "self_attention/linear_1": (n, n),
        "attention/linear_0": (n, n),
        "attention/linear_1": (2 * n, n),  # K, V fused
        "attention/linear_2": (n, n),
        "ffn/linear_0": (4 * n, n),
        "ffn/linear_1": (n, 4 * n),
    }
    head, _, leaf = rest.rpartition("/")
    if head in outs and leaf == "weight":
        return outs[head]
    if head in outs and leaf == "bias":
        return (outs[head][0],)
    if head.endswith("layer_norm") and leaf in ("gamma", "beta"):
        return (n,)
    raise KeyError(name)


class RandomVariables(Mapping[str, np.ndarray]):
    """CTranslate2-named variables, generated on access (nothing is kept)."""

    def __init__(self, hp: Hparams, seed: int, placeholder: bool = False) -> None:
        self.hp = hp
        self.rng = np.random.default_rng(seed)
        self.table = (self.rng.standard_normal(_TABLE_SIZE, dtype=np.float32) * WEIGHT_STD).astype(np.float16)
        self.placeholder = placeholder  # shapes only, no values (for --dry-run)

    def __getitem__(self, name: str) -> np.ndarray:
        shape = ct2_shape(name, self.hp)
        if self.placeholder:
            return np.broadcast_to(np.zeros((), np.float16), shape)
        if name.endswith("/gamma"):
            return np.ones(shape, np.float32)
        if name.endswith(("/beta", "/bias")):
            return np.zeros(shape, np.float32)
        if name == "encoder/position_encodings/encodings":
            return sinusoids(*shape)
        index = self.rng.integers(0, _TABLE_SIZE, size=shape, dtype=np.uint16)
        return self.table[index]  # float16 N(0, WEIGHT_STD)

    def __iter__(self) -> Iterator[str]:
        raise TypeError("generated on demand; not iterable")

    def __len__(self) -> int:
        return 0


class RandomModel:
    """Duck-typed for whisperd.models.convert.ggml_tensors (it reads .variables, .path)."""

    def __init__(self, hp: Hparams, seed: int, placeholder: bool = False) -> None:
        self.path = Path(f"<random {hp.n_audio_layer}+{hp.n_text_layer} layers, seed {seed}>")
        self.variables = RandomVariables(hp, seed, placeholder)


# ---------------------------------------------------------------------------------------
# q8_0


def quantize_rows_q8_0(data: np.ndarray) -> bytes:
    """ggml's `quantize_row_q8_0_ref` in numpy: per 32 values, f16 scale d = amax/127 and
    32 int8 round(x / d), rounding halves away from zero like C's roundf."""
    x = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, QK8_0)
    amax = np.abs(x).max(axis=1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    y = x * inv[:, None]
    q = np.trunc(y)
    q += np.where(np.abs(y - q) >= 0.5, np.sign(y), 0)
    blocks = np.empty(len(x), dtype=[("d", "<f2"), ("qs", "i1", (QK8_0,))])
    blocks["d"] = d.astype(np.float16)
    blocks["qs"] = q.astype(np.int8)
    return blocks.tobytes()


def to_q8_0(tensor: GgmlTensor, pool: ThreadPoolExecutor) -> GgmlTensor:
    """The tensor in q8_0; numpy releases the GIL, so slices are quantised in parallel."""
    if tensor.ne[0] % QK8_0:
        raise ValueError(f"{tensor.name}: rows of {tensor.ne[0]} values do not split into q8_0 blocks")
    blocks = tensor.to_numpy().reshape(-1, QK8_0)
    step = max(4096, -(-len(blocks) // (4 * (os.cpu_count() or 1))))
    data = b"".join(pool.map(quantize_rows_q8_0, (blocks[i : i + step] for i in range(0, len(blocks), step))))
    assert len(data) == tensor_nbytes(GgmlType.Q8_0, tensor.ne)
    return GgmlTensor(tensor.name, GgmlType.Q8_0, tensor.ne, data)


# ---------------------------------------------------------------------------------------


class SizeCounter:
    """Stands in for GgmlWriter in --dry-run: counts the bytes that would be written."""

    def __init__(self, header: GgmlHeader) -> None:
        self.header_bytes = (
            4 + 4 * 11 + 8 + 4 * header.mel_filters.size + 4 + sum(4 + len(t) for t in header.tokens)
        )
        self.bytes = self.header_bytes

    def add(self, name: str, ne: tuple[int, ...], n_bytes: int) -> None:
        self.bytes += 12 + 4 * len(ne) + len(name.encode()) + n_bytes


def header_for(hp: Hparams, ftype: str, vocab_from: Path | None) -> GgmlHeader:
    if ftype == "f16":
        hp = replace(hp, ftype=1)
    else:
        hp = replace(hp, ftype=GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + QTYPES[ftype].ftype)
    tokens = tokens_from_file(vocab_from, hp) if vocab_from else synthetic_tokens()
    return GgmlHeader(hp, mel_filters(hp.n_mels), tokens)


def planned_type(name: str, array: np.ndarray, ftype: str) -> tuple[GgmlType, tuple[int, ...]]:
    """The ggml type and dims `write_model` gives this tensor, without making its values."""
    stored = storage_array(name, np.zeros((1,) * array.ndim, array.dtype))
    shape = (array.shape[0], 1) if stored.ndim > array.ndim else array.shape  # conv biases
    ggml_type = GgmlType.F32 if stored.dtype == np.float32 else GgmlType.F16
    ne = tuple(reversed(shape))
    if ftype == "q8_0" and should_quantize(GgmlTensor(name, ggml_type, ne, b"")):
        ggml_type = GgmlType.Q8_0
    return ggml_type, ne


def write_model(header: GgmlHeader, seed: int, ftype: str, writer: GgmlWriter) -> int:
    """Generate every tensor in the converter's order and write it; returns the count."""
    model = RandomModel(header.hparams, seed)
    count = 0
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for name, array in ggml_tensors(model, header.hparams):  # type: ignore[arg-type]
            tensor = GgmlTensor.from_array(name, storage_array(name, array))
            if ftype == "q8_0" and should_quantize(tensor):
                tensor = to_q8_0(tensor, pool)
            writer.write_tensor(tensor)
            count += 1
    return count


def planned_size(header: GgmlHeader, ftype: str) -> tuple[int, SizeCounter]:
    """(tensor count, byte counter) of the file write_model would write."""
    model = RandomModel(header.hparams, 0, placeholder=True)
    counter = SizeCounter(header)
    count = 0
    for name, array in ggml_tensors(model, header.hparams):  # type: ignore[arg-type]
        ggml_type, ne = planned_type(name, array, ftype)
        counter.add(name, ne, tensor_nbytes(ggml_type, ne))
        count += 1
    return count, counter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("ggml-large-v3-random.bin"))
    ap.add_argument("--ftype", choices=["f16", "q8_0"], default="f16")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="large-v3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-from", type=Path, help="copy the regular tokens of this GGML file")
    ap.add_argument("--dry-run", action="store_true", help="print the file size; write nothing")
    args = ap.parse_args(argv)

    started = time.monotonic()
    header = header_for(SHAPES[args.shape], args.ftype, args.vocab_from)
    hp = header.hparams
    what = (
        f"{args.shape} ({hp.n_audio_layer}+{hp.n_text_layer} layers, state {hp.n_audio_state}, "
        f"n_vocab {hp.n_vocab}, {hp.n_mels} mels), {args.ftype}, seed {args.seed}"
    )
    if args.dry_run:
        count, counter = planned_size(header, args.ftype)
        print(f"{what}: {count} tensors, {counter.bytes} bytes ({counter.bytes / 1e9:.3f} GB, "
              f"{counter.bytes / 2**30:.3f} GiB), of which header {counter.header_bytes} bytes")
        return 0
    with GgmlWriter(args.out, header) as writer:
        count = write_model(header, args.seed, args.ftype, writer)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {what}: {count} tensors, {size} bytes ({size / 1e9:.3f} GB) "
          f"in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
