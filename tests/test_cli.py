"""`whisperd transcribe`: offline transcription from the command line, as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import srt

from conftest import EXPECTED_JFK, normalise


def whisperd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "whisperd.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_transcribe_prints_the_sentence(tiny_en_model: Path, jfk_mp3: Path) -> None:
    done = whisperd("transcribe", str(jfk_mp3), "--model", str(tiny_en_model), "--cpu")
    assert done.returncode == 0, done.stderr
    assert normalise(done.stdout) == normalise(EXPECTED_JFK)


def test_transcribe_writes_srt_and_json(tiny_en_model: Path, jfk_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "jfk.srt"
    done = whisperd("transcribe", str(jfk_wav), "--model", str(tiny_en_model), "--cpu",
                    "--format", "srt", "-o", str(out), "--beam-size", "1")
    assert done.returncode == 0, done.stderr
    cues = list(srt.parse(out.read_text()))
    assert normalise(" ".join(c.content for c in cues)) == normalise(EXPECTED_JFK)
    done = whisperd("transcribe", str(jfk_wav), "--model", str(tiny_en_model), "--cpu",
                    "--format", "json", "--word-timestamps", "--beam-size", "1")
    doc = json.loads(done.stdout)
    assert doc["language"] == "en" and doc["segments"][0]["words"]


def test_bad_input_exits_2_with_one_clear_line(tiny_en_model: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 100)
    done = whisperd("transcribe", str(text), "--model", str(tiny_en_model))
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    done = whisperd("transcribe", str(tmp_path / "missing.wav"))
    assert done.returncode == 2 and "no such file" in done.stderr
    done = whisperd("transcribe", str(text), "--model", str(tmp_path / "nope.bin"))
    assert done.returncode == 2 and "not found" in done.stderr
