"""The CTranslate2 → GGML conversion, checked against its real source and whisper.cpp's data.

References that are independent of the converter: the CTranslate2 tensors themselves, and
whisper.cpp's own `models/for-tests-ggml-*.bin` files, which are official headers (hparams,
OpenAI's mel filters, the token list) without tensors.
"""
from __future__ import annotations

import re
import shutil
import struct
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from whisperd import paths
from whisperd.models import ct2, ggml_file
from whisperd.models.bundled import ensure_ct2_base, ensure_ct2_tiny_en
from whisperd.models.convert import convert_ct2, mel_filters
from whisperd.models.errors import ModelFormatError
from whisperd.models.ggml_file import GgmlHeader, GgmlTensor, GgmlType, GgmlWriter, Hparams

# Sizes of the official ggml-tiny.en.bin and ggml-base.bin: the layout is fully determined
# by the shapes and the token bytes, so a faithful conversion has exactly these sizes.
OFFICIAL_SIZE = {"tiny.en": 77_704_715, "base": 147_951_465}

HPARAMS = {
    "tiny.en": Hparams(51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1),
    "base": Hparams(51865, 1500, 512, 8, 6, 448, 512, 8, 6, 80, 1),
}

F32_2D = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}


@pytest.fixture(scope="session")
def tiny_en_ct2() -> Path:
    return ensure_ct2_tiny_en()


@pytest.fixture(scope="session", params=["tiny.en", "base"])
def converted(request: pytest.FixtureRequest) -> tuple[str, Path, Path]:
    """(model name, GGML file, CTranslate2 directory) for each bundled model."""
    if request.param == "tiny.en":
        return "tiny.en", request.getfixturevalue("tiny_en_model"), ensure_ct2_tiny_en()
    return "base", request.getfixturevalue("base_model"), ensure_ct2_base()


def official_header(name: str) -> GgmlHeader:
    path = paths.whisper_cpp_dir() / "models" / f"for-tests-ggml-{name}.bin"
    if not path.exists():
        pytest.skip(f"{path} missing: run `make setup` to fetch whisper.cpp")
    return ggml_file.read_header(path)


def test_hparams(converted: tuple[str, Path, Path]) -> None:
    name, model, _ = converted
    header = ggml_file.read_header(model)
    assert header.hparams == HPARAMS[name]
    assert header.hparams == official_header(name).hparams


def test_file_size_matches_official(converted: tuple[str, Path, Path]) -> None:
    name, model, _ = converted
    assert model.stat().st_size == OFFICIAL_SIZE[name]


def test_tokens(converted: tuple[str, Path, Path]) -> None:
    name, model, _ = converted
    tokens = ggml_file.read_header(model).tokens
    # 50257 regular tokens; the last is <|endoftext|> in English models and empty in
    # multilingual ones, as in the official files. whisper.cpp adds the special tokens.
    assert len(tokens) == 50257
    assert tokens[50256] == (b"<|endoftext|>" if name == "tiny.en" else b"")
    assert tokens[0] == b"!"
    assert tokens[220] == b" "  # GPT-2's "Ġ"
    # whisper.cpp's test headers were written through a UTF-8 decode, so their partial
    # UTF-8 sequences (single bytes of multi-byte characters) became U+FFFD.
    official = official_header(name).tokens
    assert len(official) == len(tokens)
    exact = 0
    for ours, theirs in zip(tokens, official):
        assert ours.decode("utf-8", errors="replace").encode("utf-8") == theirs
        exact += ours == theirs
    assert exact > 48000
    assert b"\xa1" in tokens  # a raw byte token the lossy copy lost


def test_mel_filters_match_openai(converted: tuple[str, Path, Path]) -> None:
    name, model, _ = converted
    filters = ggml_file.read_header(model).mel_filters
    assert filters.shape == (80, 201) and filters.dtype == np.float32
    np.testing.assert_array_equal(filters, official_header(name).mel_filters)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filter_properties(n_mels: int) -> None:
    filters = mel_filters(n_mels)
    assert filters.shape == (n_mels, 201) and filters.dtype == np.float32
    assert (filters >= 0).all()
    assert (filters.max(axis=1) > 0).all()
    # Triangles march up the spectrum: peaks never move down and the last reaches high.
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()
    assert peaks[0] <= 2 and peaks[-1] > 180
    # Slaney normalisation: equal area in Hz, so the peak height falls as the bands widen
    # in the logarithmic range (the narrowest low bands fall between FFT bins).
    assert filters[-1].max() < filters[3 * n_mels // 4].max() < filters[n_mels // 2].max()


# --- tensor by tensor --------------------------------------------------------------------

_RENAMES = [
    (r"^(encoder|decoder)/layer_(\d+)/", r"\1.blocks.\2."),
    (r"self_attention/linear_0", "attn.QKV"),
    (r"self_attention/linear_1", "attn.out"),
    (r"self_attention/layer_norm", "attn_ln"),
    (r"attention/linear_0", "cross_attn.query"),
    (r"attention/linear_1", "cross_attn.KV"),
    (r"attention/linear_2", "cross_attn.out"),
    (r"attention/layer_norm", "cross_attn_ln"),
    (r"ffn/linear_0", "mlp.0"),
    (r"ffn/linear_1", "mlp.2"),
    (r"ffn/layer_norm", "mlp_ln"),
    (r"^encoder/layer_norm", "encoder.ln_post"),
    (r"^decoder/layer_norm", "decoder.ln"),
    (r"embeddings/weight", "token_embedding.weight"),
    (r"position_encodings/encodings", "positional_embedding"),
    (r"gamma$", "weight"),
    (r"beta$", "bias"),
    (r"/", "."),
]


def expected_pieces(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    """The GGML tensors one CTranslate2 variable should become (key biases: none)."""
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    for fused, parts in (("QKV", ("query", "key", "value")), ("KV", ("key", "value"))):
        if f".{fused}." in name:
            pieces = dict(zip(parts, np.split(value, len(parts))))
            if name.endswith(".bias"):
                # Whisper's key projection has no bias; CTranslate2 stores zeros there.
                assert not pieces.pop("key").any()
            return {name.replace(fused, part): piece for part, piece in pieces.items()}
    return {name: value}


def test_every_ct2_variable_becomes_equal_ggml_tensors(converted: tuple[str, Path, Path]) -> None:
    name, model, ct2_dir = converted
    source = ct2.read_model(ct2_dir)
    header, tensors = ggml_file.load(model)
    hp = header.hparams

    assert source.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert source.variables["decoder/projection/weight"] is source.variables["decoder/embeddings/weight"]

    seen: set[str] = set()
    for ct2_name, value in source.variables.items():
        if value.ndim == 0 or ct2_name in source.aliases:
            continue  # settings such as num_heads, and the tied output projection
        assert value.dtype == np.float16, ct2_name
        for ggml_name, expected in expected_pieces(ct2_name, value).items():
            assert ggml_name in tensors, f"{ct2_name} → {ggml_name} missing"
            tensor = tensors[ggml_name]
            seen.add(ggml_name)
            if ggml_name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                expected = expected.reshape(-1, 1)
            assert tensor.shape == expected.shape, ggml_name
            assert tensor.ne == tuple(reversed(expected.shape)), ggml_name
            if expected.ndim >= 2 and ggml_name not in F32_2D:
                assert tensor.ggml_type == GgmlType.F16, ggml_name
            else:
                assert tensor.ggml_type == GgmlType.F32, ggml_name
            np.testing.assert_array_equal(
                tensor.to_numpy().astype(np.float32), expected.astype(np.float32), err_msg=ggml_name
            )
    assert seen == set(tensors), f"GGML tensors with no source: {set(tensors) - seen}"
    per_block = {"encoder": 15, "decoder": 24}
    assert len(tensors) == (1 + 4 + hp.n_audio_layer * per_block["encoder"] + 2) + (
        2 + hp.n_text_layer * per_block["decoder"] + 2
    )
    # The shapes whisper.cpp's loader asks for.
    s = hp.n_audio_state
    assert tensors["encoder.conv1.weight"].ne == (3, hp.n_mels, s)
    assert tensors["encoder.conv1.bias"].ne == (1, s)
    assert tensors["encoder.positional_embedding"].ne == (s, hp.n_audio_ctx)
    assert tensors["decoder.token_embedding.weight"].ne == (s, hp.n_vocab)
    assert tensors["decoder.blocks.0.mlp.0.weight"].ne == (s, 4 * s)


def test_scalars(tiny_en_ct2: Path) -> None:
    source = ct2.read_model(tiny_en_ct2)
    assert (source.binary_version, source.spec_name, source.revision) == (6, "WhisperSpec", 3)
    assert source.scalar("encoder/num_heads") == 6
    assert source.scalar("decoder/num_heads") == 6


# --- broken input ------------------------------------------------------------------------

def test_truncated_model_bin_raises(tiny_en_ct2: Path, tmp_path: Path) -> None:
    data = (tiny_en_ct2 / "model.bin").read_bytes()
    for cut in (2, 40, len(data) // 2, len(data) - 1):
        broken = tmp_path / f"model-{cut}.bin"
        broken.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError, match="truncated"):
            ct2.read_model(broken)


def test_foreign_files_raise(tiny_en_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        ct2.read_model(empty)
    # A GGML file is not a CTranslate2 one, and vice versa.
    with pytest.raises(ModelFormatError, match="not a CTranslate2 model"):
        ct2.read_model(tiny_en_model)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n" * 10)
    with pytest.raises(ModelFormatError, match="not a GGML"):
        ggml_file.read_header(text)


def test_truncated_ggml_raises(tiny_en_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ggml.bin"
    with tiny_en_model.open("rb") as f:
        broken.write_bytes(f.read(5_000_000))
    ggml_file.read_header(broken)  # the header is intact
    with pytest.raises(ModelFormatError, match="truncated"):
        for _ in ggml_file.iter_tensors(broken):
            pass
    # The cheap structural check (run before whisper.cpp loads a file) sees it too.
    assert ggml_file.check_model_file(tiny_en_model).hparams == HPARAMS["tiny.en"]
    with pytest.raises(ModelFormatError, match="truncated"):
        ggml_file.check_model_file(broken)
    header_only = tmp_path / "header.bin"
    with ggml_file.GgmlReader(tiny_en_model) as reader, tiny_en_model.open("rb") as f:
        header_only.write_bytes(f.read(reader.header_size))  # like whisper.cpp's for-tests files
    with pytest.raises(ModelFormatError, match="no tensors"):
        ggml_file.check_model_file(header_only)


def _write_ct2(path: Path, model: ct2.Ct2Model, drop: str) -> None:
    """Serialise `model` again without one variable (binary version 6 layout)."""
    dtypes = {np.dtype("float16"): 4, np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2}

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    kept = {n: v for n, v in model.variables.items() if n != drop and n not in model.aliases}
    with path.open("wb") as f:
        f.write(struct.pack("<I", 6) + string(model.spec_name) + struct.pack("<II", 3, len(kept)))
        for name, value in kept.items():
            f.write(string(name) + struct.pack(f"<B{value.ndim}I", value.ndim, *value.shape))
            f.write(struct.pack("<BI", dtypes[value.dtype], value.nbytes) + value.tobytes())
        f.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            f.write(string(alias) + string(target))


def test_failed_conversion_leaves_no_file(tiny_en_ct2: Path, tmp_path: Path) -> None:
    src = tmp_path / "ct2"
    src.mkdir()
    shutil.copy(tiny_en_ct2 / "tokenizer.json", src)
    # The last tensor written: the failure comes after most of the file is out.
    _write_ct2(src / "model.bin", ct2.read_model(tiny_en_ct2), drop="decoder/layer_norm/gamma")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ModelFormatError, match="decoder/layer_norm/gamma"):
        convert_ct2(src, out_dir / "ggml.bin")
    assert list(out_dir.iterdir()) == []


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    hparams = Hparams(10, 2, 4, 1, 1, 3, 4, 1, 1, 2, 1)
    filters = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = GgmlHeader(hparams, filters, [b"a", b"", b"\xff\xfe"])
    weight = np.linspace(-1, 1, 32 * 3, dtype=np.float32).reshape(3, 32).astype(np.float16)
    bias = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    q8 = GgmlTensor("q", GgmlType.Q8_0, (32, 2), bytes(range(68)))
    out = tmp_path / "m.bin"
    with GgmlWriter(out, header) as writer:
        writer.write_array("w", weight)
        writer.write_array("b", bias)
        writer.write_tensor(q8)
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]

    got, tensors = ggml_file.load(out)
    assert astuple(got.hparams) == astuple(hparams) and got.tokens == header.tokens
    np.testing.assert_array_equal(got.mel_filters, filters)
    assert list(tensors) == ["w", "b", "q"]
    assert tensors["w"].ne == (32, 3) and tensors["w"].ggml_type == GgmlType.F16
    np.testing.assert_array_equal(tensors["w"].to_numpy(), weight)
    np.testing.assert_array_equal(tensors["b"].to_numpy(), bias)
    assert tensors["q"] == q8

    with pytest.raises(ValueError, match="bytes of data"):
        with GgmlWriter(tmp_path / "bad.bin", header) as writer:
            writer.write_tensor(GgmlTensor("q", GgmlType.Q8_0, (32, 2), b"short"))
    assert not (tmp_path / "bad.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]
