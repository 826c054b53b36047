"""Read a CTranslate2 model directory: `model.bin`, `config.json` and `tokenizer.json`.

The binary layout (little-endian) is the one CTranslate2's `model_spec.py` writes:
`uint32 version`, `string spec`, `uint32 revision`, `uint32 n_vars`, per variable
`string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 n_bytes, data`, then
`uint32 n_aliases` and (alias, target) string pairs. A string is `uint16 length`
(counting a trailing NUL) followed by its bytes.
"""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisperd.models.errors import ModelFormatError

# Versions 2-3 stored an item size instead of a dtype; 4 and later store the dtype.
# Version 1 had no spec name, which no Whisper model was ever written with.
_MIN_VERSION = 2
_MAX_VERSION = 6

# CTranslate2's DataType enum. bfloat16 (5) has no numpy dtype and is widened to float32.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BF16 = 5
_ITEM_SIZE_DTYPES = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}

# Names longer than this are not CTranslate2 variable names; a foreign file would
# otherwise send the reader chasing a random length.
_MAX_NAME = 4096
_MAX_RANK = 8


@dataclass(frozen=True)
class Ct2Model:
    """The variables of one CTranslate2 `model.bin`.

    `variables` maps every name, aliases included, to an array of the stored dtype
    (float16 stays float16; bfloat16 becomes float32). Arrays are read-only views of a
    memory map, so a large file is paged in only as its tensors are touched; the file
    must therefore not be rewritten in place while they are in use (replace it by
    renaming, as `whisperd.models.bundled` does).
    """

    path: Path
    binary_version: int
    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def scalar(self, name: str) -> int | float:
        """The value of a rank-0 variable such as `encoder/num_heads`."""
        value = self.variables[name]
        if value.ndim != 0:
            raise ModelFormatError(f"{self.path}: {name} is not a scalar (shape {value.shape})")
        return value.item()


class _Cursor:
    """Bounds-checked sequential reads over a buffer, naming what was being read."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelFormatError(
                f"{self.path}: truncated or not a CTranslate2 model: needed {n} bytes for "
                f"{what} at offset {self.pos}, the file has {len(self.buf)}"
            )
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"the length of {what}")
        if length == 0 or length > _MAX_NAME:
            raise ModelFormatError(f"{self.path}: bad string length {length} for {what}")
        raw = bytes(self.take(length, what))
        if raw[-1] != 0:
            raise ModelFormatError(f"{self.path}: {what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{self.path}: {what} is not UTF-8") from exc


def read_model(path: Path) -> Ct2Model:
    """Parse a CTranslate2 `model.bin` (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    with path.open("rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # mmap refuses an empty file
            raise ModelFormatError(f"{path}: empty file, not a CTranslate2 model") from exc
    cur = _Cursor(memoryview(mapped), path)

    version = cur.unpack("I", "the binary version")
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        raise ModelFormatError(
            f"{path}: not a CTranslate2 model this reader knows (binary version {version}, "
            f"expected {_MIN_VERSION} to {_MAX_VERSION})"
        )
    spec_name = cur.string("the spec name")
    revision = cur.unpack("I", "the spec revision")
    n_vars = cur.unpack("I", "the variable count")

    variables: dict[str, np.ndarray] = {}
    for index in range(n_vars):
        name = cur.string(f"the name of variable {index}")
        variables[name] = _read_variable(cur, name, version)

    aliases: dict[str, str] = {}
    if version >= 3:
        n_aliases = cur.unpack("I", "the alias count")
        for index in range(n_aliases):
            alias = cur.string(f"alias {index}")
            target = cur.string(f"the target of alias {alias}")
            if target not in variables:
                raise ModelFormatError(f"{path}: alias {alias} names a missing variable {target}")
            aliases[alias] = target
    if cur.pos != len(cur.buf):
        raise ModelFormatError(
            f"{path}: {len(cur.buf) - cur.pos} unexpected bytes after the last alias; "
            "not a CTranslate2 model this reader knows"
        )
    for alias, target in aliases.items():
        variables[alias] = variables[target]
    return Ct2Model(path, version, spec_name, revision, variables, aliases)


def _read_variable(cur: _Cursor, name: str, version: int) -> np.ndarray:
    rank = cur.unpack("B", f"the rank of {name}")
    if rank > _MAX_RANK:
        raise ModelFormatError(f"{cur.path}: variable {name} has rank {rank}")
    shape = tuple(cur.unpack("I", f"the dimensions of {name}") for _ in range(rank))
    if version >= 4:
        dtype_id = cur.unpack("B", f"the dtype of {name}")
        if dtype_id not in _DTYPES:
            raise ModelFormatError(f"{cur.path}: variable {name} has unknown dtype {dtype_id}")
        dtype = _DTYPES[dtype_id]
        n_bytes = cur.unpack("I", f"the size of {name}")
    else:
        item_size = cur.unpack("B", f"the item size of {name}")
        if item_size not in _ITEM_SIZE_DTYPES:
            raise ModelFormatError(f"{cur.path}: variable {name} has item size {item_size}")
        dtype_id = -1
        dtype = _ITEM_SIZE_DTYPES[item_size]
        n_bytes = cur.unpack("I", f"the size of {name}") * item_size
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n_bytes != expected:
        raise ModelFormatError(
            f"{cur.path}: variable {name} of shape {shape} holds {n_bytes} bytes, expected {expected}"
        )
    array = np.frombuffer(cur.take(n_bytes, f"the data of {name}"), dtype=dtype).reshape(shape)
    if dtype_id == _BF16:
        # bfloat16 is the top half of a float32, so widening is exact.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def load_config(model_dir: Path) -> dict[str, Any]:
    """`config.json` of a CTranslate2 directory, or an empty dict where there is none."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON: {exc}") from exc


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_token_bytes(model_dir: Path) -> list[bytes]:
    """The regular BPE tokens of `tokenizer.json` as raw bytes, in id order.

    Special tokens (`added_tokens`) are left out: whisper.cpp makes its own.
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.exists():
        raise ModelFormatError(f"{path} missing: the converter needs the Hugging Face tokenizer")
    try:
        vocab: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path}: no BPE vocabulary (model.vocab): {exc}") from exc

    decoder = {char: byte for byte, char in bytes_to_unicode().items()}
    tokens: list[bytes | None] = [None] * len(vocab)
    for text, index in vocab.items():
        if not 0 <= index < len(tokens) or tokens[index] is not None:
            raise ModelFormatError(f"{path}: token ids are not 0..{len(vocab) - 1} without gaps")
        try:
            tokens[index] = bytes(decoder[char] for char in text)
        except KeyError as exc:
            raise ModelFormatError(f"{path}: token {index} {text!r} is not byte-level BPE") from exc
    return [t for t in tokens if t is not None]
