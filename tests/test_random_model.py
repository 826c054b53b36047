"""bench/make_random_model.py: the random-weight GGML files for the GPU benchmarks have
the official layout, load in whisper.cpp, and its q8_0 matches whisperd's quantiser."""
from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from whisperd.models.ggml_file import GgmlReader

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mrm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_random_model", ROOT / "bench" / "make_random_model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layout(path: Path) -> tuple[object, list[tuple[str, int, tuple[int, ...]]]]:
    with GgmlReader(path) as reader:
        return reader.header, [(t.name, t.ggml_type, t.ne) for t in reader.tensor_infos()]


def test_base_shape_matches_the_converted_base_model(mrm: ModuleType, base_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "base-random.bin"
    assert mrm.main(["--shape", "base", "--vocab-from", str(base_model), "--out", str(out)]) == 0
    ref_header, ref_tensors = _layout(base_model)
    header, tensors = _layout(out)
    assert tensors == ref_tensors  # names, order, types, dims
    assert header.hparams == ref_header.hparams
    assert header.tokens == ref_header.tokens
    assert np.array_equal(header.mel_filters, ref_header.mel_filters)
    assert out.stat().st_size == base_model.stat().st_size


def test_large_v3_size_without_writing(mrm: ModuleType, base_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # With the multilingual vocabulary, the size of the official ggml-large-v3.bin.
    assert mrm.main(["--dry-run", "--vocab-from", str(base_model)]) == 0
    assert " 3095033483 bytes" in capsys.readouterr().out


def test_tiny_dry_run_size_is_the_written_size(mrm: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for ftype in ("f16", "q8_0"):
        out = tmp_path / f"tiny-{ftype}.bin"
        mrm.main(["--shape", "tiny", "--ftype", ftype, "--dry-run"])
        mrm.main(["--shape", "tiny", "--ftype", ftype, "--out", str(out)])
        assert f" {out.stat().st_size} bytes" in capsys.readouterr().out


def test_q8_0_equals_whisperd_quantize(mrm: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("whisperd._native")
    from whisperd.models.quantize import quantize_model

    f16, q8 = tmp_path / "f16.bin", tmp_path / "q8.bin"
    mrm.main(["--shape", "tiny", "--seed", "3", "--out", str(f16)])
    mrm.main(["--shape", "tiny", "--seed", "3", "--ftype", "q8_0", "--out", str(q8)])
    quantize_model(f16, tmp_path / "q8-native.bin", "q8_0")
    assert filecmp.cmp(q8, tmp_path / "q8-native.bin", shallow=False)


def test_synthetic_vocab_has_the_blank_token(mrm: ModuleType) -> None:
    # whisper.cpp looks up b" " by text (suppress_blank); without it whisper_full throws.
    tokens = mrm.synthetic_tokens()
    assert len(tokens) == 50257 and tokens[220] == b" " and tokens[-1] == b""


def test_random_tiny_loads_and_transcribes(mrm: ModuleType, jfk_wav: Path, tmp_path: Path) -> None:
    pytest.importorskip("whisperd._native")
    from whisperd.audio import decode_audio
    from whisperd.inference import TranscribeOptions, WhisperModel

    out = tmp_path / "tiny-random.bin"
    mrm.main(["--shape", "tiny", "--out", str(out)])
    model = WhisperModel(out, use_gpu=False)
    try:
        assert model.multilingual and model.type_name == "tiny"
        with model.new_state() as state:
            result = state.transcribe(
                decode_audio(jfk_wav)[: 16000 * 3],
                TranscribeOptions(language="en", beam_size=1, temperature_increment=0.0, threads=2),
            )
        assert result.language == "en"
    finally:
        model.close()
