"""Language detection and translation with the multilingual base model on spoken German
and Spanish (espeak-ng)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import normalise
from whisperd.audio import decode_audio
from whisperd.inference import TranscribeOptions, WhisperModel

pytestmark = pytest.mark.slow

CLIPS = {
    "de": (
        "Guten Morgen. Heute ist das Wetter sehr schön, deshalb gehen wir in den Park "
        "und trinken einen Kaffee mit unseren Freunden.",
        {"wetter", "park", "kaffee", "freunden", "morgen"},
        {"weather", "park", "coffee", "friends", "morning", "today"},
    ),
    "es": (
        "Buenos días. Hoy hace muy buen tiempo, así que vamos al parque "
        "a tomar un café con nuestros amigos.",
        {"tiempo", "parque", "café", "amigos", "días"},
        {"weather", "park", "coffee", "friends", "morning", "today"},
    ),
}


def speak(text: str, voice: str, out: Path) -> Path:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: `make setup` installs it (Debian package espeak-ng)"
    subprocess.run([espeak, "-v", voice, "-s", "140", "-w", str(out), text], check=True)
    return out


@pytest.fixture(scope="module")
def base(base_model: Path) -> WhisperModel:
    m = WhisperModel(base_model, use_gpu=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    folder = tmp_path_factory.mktemp("speech")
    return {
        lang: decode_audio(speak(text, lang, folder / f"{lang}.wav"))
        for lang, (text, _, _) in CLIPS.items()
    }


@pytest.mark.parametrize("lang", sorted(CLIPS))
def test_language_is_detected_and_transcribed(
    base: WhisperModel, clips: dict[str, np.ndarray], lang: str
) -> None:
    _, native_words, _ = CLIPS[lang]
    with base.new_state() as state:
        result = state.transcribe(clips[lang], TranscribeOptions(beam_size=1))
    assert result.language == lang
    assert result.language_probability > 0.5
    heard = set(normalise(result.text).split())
    assert len(heard & native_words) >= 2, result.text


@pytest.mark.parametrize("lang", sorted(CLIPS))
def test_translate_returns_english(
    base: WhisperModel, clips: dict[str, np.ndarray], lang: str
) -> None:
    _, native_words, english_words = CLIPS[lang]
    with base.new_state() as state:
        result = state.transcribe(clips[lang], TranscribeOptions(beam_size=1, task="translate"))
    heard = set(normalise(result.text).split())
    assert len(heard & english_words) >= 2, result.text
    assert len(heard & (native_words - english_words)) <= 1, result.text


def test_a_given_language_skips_detection(base: WhisperModel, clips: dict[str, np.ndarray]) -> None:
    with base.new_state() as state:
        result = state.transcribe(clips["de"], TranscribeOptions(beam_size=1, language="de"))
    assert result.language == "de"
    assert result.language_probability == 1.0
