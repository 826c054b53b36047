"""Where whisperd finds fetched source, models and caches.

Defaults are relative to the working directory, which is the repository root for every
Makefile target; each can be moved with an environment variable.
"""
from __future__ import annotations

import os
from pathlib import Path


def models_dir() -> Path:
    """Folder holding GGML model files (WHISPERD_MODELS_DIR, default ./models)."""
    return Path(os.environ.get("WHISPERD_MODELS_DIR", "models")).resolve()


def cache_dir() -> Path:
    """Folder for downloaded wheels and unpacked sources (WHISPERD_CACHE_DIR, default ./.cache)."""
    return Path(os.environ.get("WHISPERD_CACHE_DIR", ".cache")).resolve()


def whisper_cpp_dir() -> Path:
    """whisper.cpp source tree (WHISPER_CPP_DIR, default ./third_party/whisper.cpp)."""
    return Path(os.environ.get("WHISPER_CPP_DIR") or "third_party/whisper.cpp").resolve()


def samples_dir() -> Path:
    """The speech samples that ship with whisper.cpp (jfk.wav, jfk.mp3)."""
    return whisper_cpp_dir() / "samples"
