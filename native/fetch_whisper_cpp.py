#!/usr/bin/env python3
"""Fetch the pinned whisper.cpp source (and its samples) without a hub or web download.

whisper.cpp 1.8.5 travels in full inside the PyPI sdist of pywhispercpp 1.5.1, so pip,
the one client every build machine can use, fetches it. Only `whisper.cpp/` is extracted.
Stdlib only: CMake runs this before any of our dependencies exist.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "pywhispercpp"
SDIST_VERSION = "1.5.1"
SDIST_SHA256 = "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5"
WHISPER_CPP_VERSION = "1.8.5"
STAMP = ".whisperd-fetched"
PATCHES = Path(__file__).resolve().parent / "patches"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(workdir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_NAME,
        "--disable-pip-version-check", "-q", "-d", str(workdir),
        f"{SDIST_NAME}=={SDIST_VERSION}",
    ]
    env = dict(os.environ)
    # Inside an isolated build env pip may be hidden; PYTHONNOUSERSITE etc. stay harmless.
    try:
        subprocess.run(cmd, check=True, env=env)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise SystemExit(
            f"could not download {SDIST_NAME}=={SDIST_VERSION} with pip ({exc}). "
            "Check that pip can reach the package index, or point the build at your own "
            "whisper.cpp checkout with WHISPER_CPP_DIR=/path/to/whisper.cpp"
        ) from exc
    files = list(workdir.glob(f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"))
    if not files:
        raise SystemExit(f"pip did not produce {SDIST_NAME}-{SDIST_VERSION}.tar.gz in {workdir}")
    return files[0]


def _patches() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def _fingerprint() -> str:
    """The sdist and our patches: a change in either means a fresh tree."""
    h = hashlib.sha256(SDIST_SHA256.encode())
    for patch in _patches():
        h.update(patch.name.encode())
        h.update(patch.read_bytes())
    return h.hexdigest()


def _apply_patches(tree: Path) -> None:
    # Small fixes to upstream bugs that crash the process (see each patch's header);
    # applied to our own copy only, never to a user's WHISPER_CPP_DIR.
    for patch in _patches():
        try:
            subprocess.run(["git", "apply", "-p1", str(patch)], cwd=tree, check=True,
                           capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"could not apply {patch.name} to whisper.cpp: {exc.stderr.strip()}") from exc


def fetch(dest: Path, sdist: Path | None = None) -> Path:
    """Make `dest` hold whisper.cpp's (patched) source tree; return it. Idempotent."""
    dest = dest.resolve()
    stamp = dest / STAMP
    fingerprint = _fingerprint()
    if stamp.exists() and stamp.read_text().strip() == fingerprint:
        return dest
    with tempfile.TemporaryDirectory(prefix="whisperd-fetch-") as tmp:
        tmpdir = Path(tmp)
        archive = sdist if sdist is not None else _download(tmpdir)
        digest = _sha256(archive)
        if digest != SDIST_SHA256:
            raise SystemExit(
                f"checksum mismatch for {archive.name}: got {digest}, expected {SDIST_SHA256}"
            )
        prefix = f"{SDIST_NAME}-{SDIST_VERSION}/whisper.cpp/"
        staging = tmpdir / "whisper.cpp"
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(f"{SDIST_NAME}-{SDIST_VERSION}/"):]
            tar.extractall(tmpdir, members=members, filter="data")
        _apply_patches(staging)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(dest))
    stamp.write_text(fingerprint + "\n")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to hold whisper.cpp's source")
    parser.add_argument("--sdist", type=Path, help="use this already downloaded sdist")
    args = parser.parse_args()
    path = fetch(args.dest, args.sdist)
    print(f"whisper.cpp {WHISPER_CPP_VERSION} source at {path}")


if __name__ == "__main__":
    main()
