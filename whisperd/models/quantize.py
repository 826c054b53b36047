"""Quantise a GGML f16/f32 whisper model, with the rules of whisper.cpp's `whisper-quantize`.

As in `examples/quantize/quantize.cpp` and `ggml_common_quantize_0`: every 2-D tensor
is quantised except the conv biases and positional embeddings (whisper.cpp creates those
as f32); 1-D and 3-D tensors are copied unchanged; the header's ftype becomes
`GGML_QNT_VERSION * 1000 + ggml_ftype`. The block arithmetic itself is ggml's
(`ggml_quantize_chunk`), reached through the native extension.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from whisperd.models.ggml_file import (
    GGML_QNT_VERSION,
    GGML_QNT_VERSION_FACTOR,
    GgmlHeader,
    GgmlReader,
    GgmlTensor,
    GgmlType,
    GgmlWriter,
    block_size,
    tensor_nbytes,
)

log = logging.getLogger(__name__)

# whisperd._native.quantize_rows(qtype, float32 (n_rows, n_per_row)) -> bytes
QuantizeRows = Callable[[str, np.ndarray], bytes]


@dataclass(frozen=True)
class QuantType:
    ggml_type: GgmlType  # tensor type id
    ftype: int  # ggml_ftype id written (with the version) into the header


QTYPES: dict[str, QuantType] = {
    "q8_0": QuantType(GgmlType.Q8_0, 7),
    "q5_1": QuantType(GgmlType.Q5_1, 9),
    "q5_0": QuantType(GgmlType.Q5_0, 8),
    "q4_1": QuantType(GgmlType.Q4_1, 3),
    "q4_0": QuantType(GgmlType.Q4_0, 2),
}

# The `to_skip` list of quantize.cpp.
SKIP = frozenset(
    {
        "encoder.conv1.bias",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "decoder.positional_embedding",
    }
)


def should_quantize(tensor: GgmlTensor) -> bool:
    """Whether whisper-quantize would quantise this tensor."""
    return len(tensor.ne) == 2 and tensor.name not in SKIP


def quantize_model(src: Path, out: Path, qtype: str) -> Path:
    """Write `out`, the quantised copy of the GGML model `src`; returns `out`.

    `out` appears only when complete. `qtype` is one of q8_0, q5_1, q5_0, q4_1, q4_0.
    """
    try:
        quant = QTYPES[qtype]
    except KeyError:
        raise ValueError(f"unknown quantisation type {qtype!r}; valid: {', '.join(QTYPES)}") from None
    try:
        from whisperd._native import quantize_rows
    except ImportError as exc:
        raise ImportError(
            f"quantising needs the native extension whisperd._native, which did not import: {exc}"
        ) from exc

    src, out = Path(src), Path(out)
    started = time.monotonic()
    with GgmlReader(src) as reader:
        hparams = reader.header.hparams
        if hparams.base_ftype not in (0, 1):
            raise ValueError(f"{src} is already quantised (ftype {hparams.ftype}); start from f16 or f32")
        ftype = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + quant.ftype
        header = GgmlHeader(replace(hparams, ftype=ftype), reader.header.mel_filters, reader.header.tokens)
        size_in = size_out = 0
        with GgmlWriter(out, header) as writer:
            for tensor in reader.tensors():
                size_in += len(tensor.data)
                if should_quantize(tensor):
                    tensor = _quantize(tensor, qtype, quant.ggml_type, quantize_rows)
                size_out += len(tensor.data)
                writer.write_tensor(tensor)
    log.info(
        "quantised %s → %s (%s): %.1f MB → %.1f MB of tensors in %.1f s",
        src, out, qtype, size_in / 1e6, size_out / 1e6, time.monotonic() - started,
    )
    return out


def _quantize(
    tensor: GgmlTensor, qtype: str, ggml_type: GgmlType, quantize_rows: QuantizeRows
) -> GgmlTensor:
    n_per_row = tensor.ne[0]
    if n_per_row % block_size(ggml_type):
        # ggml_quantize_chunk would abort the process on this; fail as Python instead.
        raise ValueError(
            f"{tensor.name}: rows of {n_per_row} values do not split into blocks of "
            f"{block_size(ggml_type)} for {qtype}"
        )
    rows = np.ascontiguousarray(tensor.to_numpy(), dtype=np.float32).reshape(-1, n_per_row)
    data = bytes(quantize_rows(qtype, rows))
    expected = tensor_nbytes(ggml_type, tensor.ne)
    if len(data) != expected:
        raise RuntimeError(f"{tensor.name}: quantize_rows returned {len(data)} bytes, expected {expected}")
    return GgmlTensor(tensor.name, ggml_type, tensor.ne, data)
