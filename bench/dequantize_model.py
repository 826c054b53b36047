"""Write an f16 copy of a q8_0 GGML model (whisperd's CUDA encoder multiplies only f16).

Why: the GPU host has no network, and the f16 tiny.en (78 MB) does not fit beside the
rest of what travels there (64 MiB), while its q8_0 copy (44 MB) does. q8_0 keeps each
block of 32 weights as one f16 scale and 32 int8 values, so w = scale * q exactly; the
f16 copy holds those values rounded to f16 (transcripts equal the q8_0 file's).

Usage: python bench/dequantize_model.py IN-q8_0.bin OUT-f16.bin
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from whisperd.models.ggml_file import (  # noqa: E402
    GgmlHeader, GgmlReader, GgmlTensor, GgmlType, GgmlWriter,
)

_Q8_BLOCK = np.dtype([("d", "<f2"), ("q", "i1", 32)])


def dequantize(tensor: GgmlTensor) -> GgmlTensor:
    """An f16 tensor from a q8_0 one; other types unchanged."""
    if tensor.ggml_type != GgmlType.Q8_0:
        return tensor
    blocks = np.frombuffer(tensor.data, dtype=_Q8_BLOCK)
    values = blocks["d"].astype(np.float32)[:, None] * blocks["q"].astype(np.float32)
    return GgmlTensor.from_array(tensor.name, values.astype(np.float16).reshape(tensor.shape))


def main(src: Path, out: Path) -> None:
    with GgmlReader(src) as reader:
        h = reader.header
        header = GgmlHeader(replace(h.hparams, ftype=1), h.mel_filters, h.tokens)
        with GgmlWriter(out, header) as writer:
            for tensor in reader.tensors():
                writer.write_tensor(dequantize(tensor))
    print(f"{src} -> {out} (f16, {out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
