"""Prompts are tokenized by our own code (whisper.cpp's whisper_tokenize uses std::regex,
which crashed a GPU host's C++ runtime): it must give whisper.cpp's tokens for any text."""
from __future__ import annotations

from pathlib import Path

import pytest

from whisperd.inference import WhisperModel

TEXTS = [
    "",
    " And so my fellow Americans, ask not what your country can do for you.",
    "I'm sure they'll say it's fine; we've won, you're right, he'd go, I've 2 cats.",
    "'s 're 'll 'sam ''m '",
    "Numbers: 1234567890, 3.14159, -42, 1e10 and 0x1F",
    "  two  spaces,\ttabs\t\tand\nnew\n\n  lines   ",
    "...!!! ??? --- (brackets) [more] {braces} <angle> @#$%^&*_+=|\\/~`",
    "Grüße aus Köln, naïve café, 東京で会いましょう, emoji 🙂🎉 done.",
    "   ",
    "a",
    "trailing space ",
    " ¿Dónde está la biblioteca? Ça va très bien, merci.",
]


@pytest.fixture(scope="module", params=["tiny_en_model", "base_model"])
def model(request: pytest.FixtureRequest) -> WhisperModel:
    path: Path = request.getfixturevalue(request.param)
    m = WhisperModel(path, use_gpu=False)
    yield m
    m.close()


@pytest.mark.parametrize("text", TEXTS)
def test_our_tokens_are_whisper_cpps(model: WhisperModel, text: str) -> None:
    ours = model.native.tokenize(text)
    assert ours == model.native.tokenize_reference(text)
    if text.strip():
        assert ours


def test_a_prompt_steers_the_transcript(tiny_en_model: Path, jfk_wav: Path) -> None:
    """The prompt's tokens reach the decoder: its punctuation style carries over."""
    from whisperd.audio import decode_audio
    from whisperd.inference import TranscribeOptions

    audio = decode_audio(jfk_wav)
    prompt = ("JFK's inaugural address, 1961. And so, my fellow Americans, ask not what your "
              "country can do for you -- ask what you can do for your country.")
    with WhisperModel(tiny_en_model, use_gpu=False) as m, m.new_state() as state:
        plain = state.transcribe(audio, TranscribeOptions(beam_size=1, threads=2))
        prompted = state.transcribe(audio, TranscribeOptions(beam_size=1, threads=2, initial_prompt=prompt))
    assert "And so my fellow Americans ask not" in plain.text
    assert "And so, my fellow Americans, ask not" in prompted.text
