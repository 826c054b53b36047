"""Read and write whisper.cpp's GGML model files.

Layout (little-endian, what whisper.cpp's `models/convert-pt-to-ggml.py` writes and
`whisper_model_load` reads): `int32 magic`; eleven int32 hparams; `int32 n_mel, n_fft`
and float32 mel filters; `int32 n_tokens` and per token `int32 len` + bytes; then
tensors to the end of the file, each `int32 n_dims, name_len, ggml_type`,
`int32 ne[n_dims]` (numpy shape reversed), the name, and the data.

Reading is streaming: the header is parsed up front and tensors are read one at a time,
so a multi-gigabyte file never has to be resident; `check_model_file` walks the
structure without reading the weights at all. Writing goes to a temporary file in
the destination folder that is renamed into place only once complete.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import astuple, dataclass, fields
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Iterator

import numpy as np

from whisperd.models.errors import ModelFormatError

GGML_MAGIC = 0x67676D6C  # "ggml"
# Quantised files carry the quantisation format version in hparams.ftype:
# ftype = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + ggml_ftype.
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000

# Sanity bounds for header fields, so a foreign file fails fast instead of allocating.
_MAX_TOKENS = 1 << 20
_MAX_TOKEN_LEN = 1 << 16
_MAX_FILTER_VALUES = 1 << 22
_MAX_NAME_LEN = 1024
_MAX_DIMS = 4


class GgmlType(IntEnum):
    """ggml_type ids of the tensor types a whisper model file can hold."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8


# ggml_type -> (elements per block, bytes per block), from ggml-common.h.
_BLOCKS: dict[int, tuple[int, int]] = {
    GgmlType.F32: (1, 4),
    GgmlType.F16: (1, 2),
    GgmlType.Q4_0: (32, 2 + 16),
    GgmlType.Q4_1: (32, 2 + 2 + 16),
    GgmlType.Q5_0: (32, 2 + 4 + 16),
    GgmlType.Q5_1: (32, 2 + 2 + 4 + 16),
    GgmlType.Q8_0: (32, 2 + 32),
}
_NUMPY_TYPES: dict[int, np.dtype] = {GgmlType.F32: np.dtype("<f4"), GgmlType.F16: np.dtype("<f2")}


def block_size(ggml_type: int) -> int:
    """Elements per quantisation block (1 for f32 and f16)."""
    return _block(ggml_type)[0]


def tensor_nbytes(ggml_type: int, ne: tuple[int, ...]) -> int:
    """Bytes of data a tensor of this type and ggml shape occupies."""
    per_block, block_bytes = _block(ggml_type)
    if ne and ne[0] % per_block:
        raise ModelFormatError(f"row length {ne[0]} is not a multiple of the block size {per_block}")
    n_elements = int(np.prod(ne, dtype=np.int64))
    return n_elements // per_block * block_bytes


def _block(ggml_type: int) -> tuple[int, int]:
    try:
        return _BLOCKS[ggml_type]
    except KeyError:
        raise ModelFormatError(f"unsupported ggml tensor type {ggml_type}") from None


@dataclass(frozen=True)
class Hparams:
    """The eleven int32 header fields, in file order."""

    n_vocab: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int
    n_mels: int
    ftype: int

    @property
    def is_multilingual(self) -> bool:
        # whisper.cpp's own rule (whisper_vocab::is_multilingual).
        return self.n_vocab >= 51865

    @property
    def base_ftype(self) -> int:
        """ftype without the quantisation version (0 f32, 1 f16, 7 q8_0, ...)."""
        return self.ftype % GGML_QNT_VERSION_FACTOR


_HPARAMS = struct.Struct("<" + "i" * len(fields(Hparams)))


@dataclass(frozen=True)
class GgmlHeader:
    """Everything before the first tensor."""

    hparams: Hparams
    mel_filters: np.ndarray  # float32, shape (n_mel, n_fft)
    tokens: list[bytes]


@dataclass(frozen=True)
class GgmlTensor:
    """One tensor: ggml type id, ggml dims (fastest-varying first) and raw data."""

    name: str
    ggml_type: int
    ne: tuple[int, ...]
    data: bytes

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy shape: ne reversed."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    def to_numpy(self) -> np.ndarray:
        """The values as an f32 or f16 array of `shape` (quantised tensors cannot)."""
        dtype = _NUMPY_TYPES.get(self.ggml_type)
        if dtype is None:
            raise ValueError(f"{self.name}: ggml type {self.ggml_type} is not a plain float type")
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> GgmlTensor:
        """A tensor holding a float32 or float16 array (stored little-endian)."""
        for ggml_type, dtype in _NUMPY_TYPES.items():
            if array.dtype.type is dtype.type:
                data = np.ascontiguousarray(array, dtype=dtype).tobytes()
                return cls(name, ggml_type, tuple(reversed(array.shape)), data)
        raise ValueError(f"{name}: only float32 and float16 arrays can be stored, not {array.dtype}")


class GgmlReader:
    """Parses the header on open; `tensors()` then yields each tensor in file order."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO = self.path.open("rb")
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self.header_size = self._file.tell()  # where the first tensor starts

    def __enter__(self) -> GgmlReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read(self, n: int, what: str) -> bytes:
        data = self._file.read(n)
        if len(data) != n:
            raise ModelFormatError(
                f"{self.path}: truncated: needed {n} bytes for {what}, got {len(data)}"
            )
        return data

    def _int(self, what: str) -> int:
        return struct.unpack("<i", self._read(4, what))[0]

    def _read_header(self) -> GgmlHeader:
        magic = struct.unpack("<I", self._read(4, "the magic"))[0]
        if magic != GGML_MAGIC:
            raise ModelFormatError(f"{self.path}: not a GGML whisper model (magic {magic:#010x})")
        hparams = Hparams(*_HPARAMS.unpack(self._read(_HPARAMS.size, "the hparams")))
        if min(astuple(hparams)[:10]) <= 0:
            raise ModelFormatError(f"{self.path}: implausible hparams {hparams}")

        n_mel, n_fft = self._int("n_mel"), self._int("n_fft")
        if n_mel < 0 or n_fft < 0 or n_mel * n_fft > _MAX_FILTER_VALUES:
            raise ModelFormatError(f"{self.path}: implausible mel filter shape {n_mel}x{n_fft}")
        filters = np.frombuffer(self._read(4 * n_mel * n_fft, "the mel filters"), dtype="<f4")

        n_tokens = self._int("the token count")
        if not 0 <= n_tokens <= _MAX_TOKENS:
            raise ModelFormatError(f"{self.path}: implausible token count {n_tokens}")
        tokens = []
        for index in range(n_tokens):
            length = self._int(f"the length of token {index}")
            if not 0 <= length <= _MAX_TOKEN_LEN:
                raise ModelFormatError(f"{self.path}: token {index} has length {length}")
            tokens.append(self._read(length, f"token {index}"))
        return GgmlHeader(hparams, filters.reshape(n_mel, n_fft), tokens)

    def tensors(self) -> Iterator[GgmlTensor]:
        """Each tensor in turn, read from disk as it is reached."""
        for info in self._walk(read_data=True):
            data = self._read(info.n_bytes, f"the data of {info.name}")
            yield GgmlTensor(info.name, info.ggml_type, info.ne, data)

    def tensor_infos(self) -> Iterator[TensorInfo]:
        """Each tensor's name, type, dims and place, seeking over the data."""
        return self._walk(read_data=False)

    def _walk(self, read_data: bool) -> Iterator[TensorInfo]:
        # With read_data the caller reads each tensor's bytes before asking for the next.
        self._file.seek(self.header_size)
        size = os.fstat(self._file.fileno()).st_size
        while True:
            head = self._file.read(12)
            if not head:
                return
            if len(head) != 12:
                raise ModelFormatError(f"{self.path}: truncated tensor header at the end")
            n_dims, name_len, ggml_type = struct.unpack("<iii", head)
            if not 1 <= n_dims <= _MAX_DIMS or not 1 <= name_len <= _MAX_NAME_LEN:
                raise ModelFormatError(
                    f"{self.path}: bad tensor header (n_dims {n_dims}, name length {name_len})"
                )
            ne = struct.unpack(f"<{n_dims}i", self._read(4 * n_dims, "tensor dims"))
            name = self._read(name_len, "a tensor name").decode("utf-8", errors="replace")
            if min(ne) <= 0:
                raise ModelFormatError(f"{self.path}: tensor {name} has dims {ne}")
            try:
                n_bytes = tensor_nbytes(ggml_type, ne)
            except ModelFormatError as exc:
                raise ModelFormatError(f"{self.path}: tensor {name}: {exc}") from None
            offset = self._file.tell()
            if offset + n_bytes > size:
                raise ModelFormatError(
                    f"{self.path}: truncated: tensor {name} needs {n_bytes} bytes at offset "
                    f"{offset}, the file ends at {size}"
                )
            yield TensorInfo(name, ggml_type, ne, offset, n_bytes)
            if not read_data:
                self._file.seek(offset + n_bytes)


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lies in the file, without its data."""

    name: str
    ggml_type: int
    ne: tuple[int, ...]
    offset: int
    n_bytes: int


def check_model_file(path: Path) -> GgmlHeader:
    """Walk a GGML file's structure without reading the weights; raise ModelFormatError
    if it is foreign or truncated (whisper.cpp itself trusts the sizes it reads)."""
    with GgmlReader(path) as reader:
        count = sum(1 for _ in reader.tensor_infos())
        if count == 0:
            raise ModelFormatError(f"{path}: no tensors; the file is truncated after its header")
        return reader.header


def read_header(path: Path) -> GgmlHeader:
    """Only the header (hparams, mel filters, tokens) of a GGML file."""
    with GgmlReader(path) as reader:
        return reader.header


def iter_tensors(path: Path) -> Iterator[GgmlTensor]:
    """The tensors of a GGML file, one at a time."""
    with GgmlReader(path) as reader:
        yield from reader.tensors()


def load(path: Path) -> tuple[GgmlHeader, dict[str, GgmlTensor]]:
    """A whole GGML file in memory: for small models and tests."""
    with GgmlReader(path) as reader:
        return reader.header, {t.name: t for t in reader.tensors()}


class GgmlWriter:
    """Writes a GGML file atomically: header on open, tensors one by one, rename on commit.

    Used as a context manager the file is committed when the block ends normally and
    discarded when it raises, so an interrupted run never leaves a half-written model.
    """

    def __init__(self, out: Path, header: GgmlHeader) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".part", dir=self.out.parent)
        self._tmp = Path(tmp)
        os.chmod(fd, 0o644)  # mkstemp makes files private; a model file is not a secret
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._done = False
        try:
            self._write_header(header)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> GgmlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _write_header(self, header: GgmlHeader) -> None:
        filters = np.ascontiguousarray(header.mel_filters, dtype="<f4")
        if filters.ndim != 2:
            raise ValueError(f"mel filters must be 2-D, got shape {filters.shape}")
        f = self._file
        f.write(struct.pack("<I", GGML_MAGIC))
        f.write(_HPARAMS.pack(*astuple(header.hparams)))
        f.write(struct.pack("<ii", *filters.shape))
        f.write(filters.tobytes())
        f.write(struct.pack("<i", len(header.tokens)))
        for token in header.tokens:
            f.write(struct.pack("<i", len(token)))
            f.write(token)

    def write_tensor(self, tensor: GgmlTensor) -> None:
        expected = tensor_nbytes(tensor.ggml_type, tensor.ne)
        if len(tensor.data) != expected:
            raise ValueError(f"{tensor.name}: {len(tensor.data)} bytes of data, expected {expected}")
        name = tensor.name.encode("utf-8")
        f = self._file
        f.write(struct.pack("<iii", len(tensor.ne), len(name), tensor.ggml_type))
        f.write(struct.pack(f"<{len(tensor.ne)}i", *tensor.ne))
        f.write(name)
        f.write(tensor.data)

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Write a float32 or float16 array as a tensor of the matching type."""
        self.write_tensor(GgmlTensor.from_array(name, array))

    def commit(self) -> Path:
        """Flush to disk and move the finished file into place."""
        if self._done:
            return self.out
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.out)
        self._done = True
        return self.out

    def abort(self) -> None:
        """Drop the partial file."""
        if self._done:
            return
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        self._done = True
