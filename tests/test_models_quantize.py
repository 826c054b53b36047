"""Quantising the real tiny.en with whisper-quantize's rules, checked by dequantising in numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisperd.models import ggml_file
from whisperd.models.ggml_file import GgmlTensor, GgmlType, tensor_nbytes
from whisperd.models.quantize import QTYPES, SKIP, quantize_model

# whisper-quantize's q8_0 of the official ggml-tiny.en.bin is about 44 MB.
Q8_SIZE_RANGE = (42e6, 46e6)


@pytest.fixture(scope="module")
def native() -> None:
    pytest.importorskip("whisperd._native", reason="the native extension is not built")


@pytest.fixture(scope="module")
def tiny_en_q8(native: None, tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_model(tiny_en_model, tmp_path_factory.mktemp("q") / "ggml-tiny.en-q8_0.bin", "q8_0")


def dequantize_q8_0(tensor: GgmlTensor) -> tuple[np.ndarray, np.ndarray]:
    """(values, per-block scales): a q8_0 block is an f16 scale and 32 int8 quants."""
    blocks = np.frombuffer(tensor.data, dtype=np.dtype([("d", "<f2"), ("qs", "i1", 32)]))
    scales = blocks["d"].astype(np.float32)
    values = blocks["qs"].astype(np.float32) * scales[:, None]
    return values.reshape(tensor.shape), scales.reshape(tensor.shape[0], -1)


def test_q8_0_file(tiny_en_model: Path, tiny_en_q8: Path) -> None:
    assert Q8_SIZE_RANGE[0] < tiny_en_q8.stat().st_size < Q8_SIZE_RANGE[1]
    src_header, src = ggml_file.load(tiny_en_model)
    header, tensors = ggml_file.load(tiny_en_q8)

    assert header.hparams.ftype == 2 * 1000 + 7  # GGML_QNT_VERSION 2, GGML_FTYPE_MOSTLY_Q8_0
    assert header.hparams.base_ftype == 7
    np.testing.assert_array_equal(header.mel_filters, src_header.mel_filters)
    assert header.tokens == src_header.tokens
    assert list(tensors) == list(src)  # same names, same order

    quantized = 0
    for name, original in src.items():
        tensor = tensors[name]
        assert tensor.ne == original.ne, name
        if len(original.ne) == 2 and name not in SKIP:
            quantized += 1
            assert tensor.ggml_type == GgmlType.Q8_0, name
            values, scales = dequantize_q8_0(tensor)
            reference = original.to_numpy().astype(np.float32)
            # ggml rounds with the float32 step and stores it as f16: at most half a step,
            # plus up to 127 quanta times the f16 rounding of the step (half an f16 ulp;
            # small steps are f16 subnormals, where that is large relative to the step).
            step = np.repeat(scales, 32, axis=1).reshape(reference.shape)
            half_ulp = np.spacing(step.astype(np.float16)).astype(np.float32) / 2
            bound = (0.5 * step + 127 * half_ulp) * 1.001 + 1e-9
            assert (np.abs(values - reference) <= bound).all(), name
            assert np.linalg.norm(values - reference) < 0.02 * np.linalg.norm(reference), name
        else:
            assert tensor == original, name  # copied untouched: f32 vectors, conv weights, skips
    # 4+4 layers: 6 matrices per encoder block, 10 per decoder block, plus the embedding.
    assert quantized == 4 * 6 + 4 * 10 + 1


@pytest.mark.parametrize("qtype", ["q5_1", "q5_0", "q4_1", "q4_0"])
def test_other_types(native: None, qtype: str, tiny_en_model: Path, tmp_path: Path) -> None:
    out = quantize_model(tiny_en_model, tmp_path / f"{qtype}.bin", qtype)
    src_header, src = ggml_file.load(tiny_en_model)
    header, tensors = ggml_file.load(out)
    assert header.hparams.ftype == 2000 + QTYPES[qtype].ftype
    expected_type = QTYPES[qtype].ggml_type
    size = 0
    for name, original in src.items():
        quantize = len(original.ne) == 2 and name not in SKIP
        assert tensors[name].ggml_type == (expected_type if quantize else original.ggml_type), name
        size += len(tensors[name].data)
    assert size == sum(
        tensor_nbytes(expected_type if len(t.ne) == 2 and t.name not in SKIP else t.ggml_type, t.ne)
        for t in src.values()
    )
    assert out.stat().st_size < 0.45 * tiny_en_model.stat().st_size


def test_unknown_type_lists_the_valid_ones(tiny_en_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="q8_0, q5_1, q5_0, q4_1, q4_0"):
        quantize_model(tiny_en_model, tmp_path / "x.bin", "q3_k")
    assert not list(tmp_path.iterdir())


def test_already_quantized_is_refused(tiny_en_q8: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already quantised"):
        quantize_model(tiny_en_q8, tmp_path / "x.bin", "q4_0")
    assert not list(tmp_path.iterdir())
