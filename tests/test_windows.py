"""Cutting audio into windows of at most 30 s at silences (whisperd.windows), on
constructed speech spans and on real speech: jfk.wav tiled with pauses, and espeak-ng."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from whisperd.audio import decode_audio
from whisperd.windows import (
    MAX_WINDOW,
    VAD_NICENESS,
    Span,
    VadPool,
    cut_windows,
    energy_speech_spans,
    merge_spans,
    plan_windows,
    speech_spans,
)

SR = 16000


def check_cover(windows: list[tuple[int, int]], n: int) -> None:
    """Windows tile the audio in order, none longer than 30 s."""
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (a, b), (c, _) in zip(windows, windows[1:]):
        assert b == c
    for a, b in windows:
        assert 0 < b - a <= MAX_WINDOW, (a, b)


def cuts_inside(windows: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    return [b for a, b in windows[:-1] for s, e in spans if s < b < e]


def test_audio_that_fits_is_one_window() -> None:
    samples = np.zeros(29 * SR, np.float32)
    assert plan_windows(samples, 1) == [(0, 29 * SR)]
    assert plan_windows(np.zeros(0, np.float32), 1) == []


def test_cuts_go_in_silences_and_prefer_the_longest_late_one() -> None:
    n = 100 * SR
    # Speech 0-8 s, 8.2-20 s, 22-29 s (a 2 s pause at 20 s, a 0.2 s one at 8 s), then
    # 29.5-55 s, 55.3-80 s, 81-100 s.
    spans = [(0, 8 * SR), (int(8.2 * SR), 20 * SR), (22 * SR, 29 * SR),
             (int(29.5 * SR), 55 * SR), (int(55.3 * SR), 80 * SR), (81 * SR, n)]
    samples = np.zeros(n, np.float32)
    windows = cut_windows(samples, spans)
    check_cover(windows, n)
    assert cuts_inside(windows, spans) == []
    # The first cut: the 2 s pause (20-22 s) beats the later 0.5 s one (29-29.5 s), 0.3 s
    # before the speech resumes.
    assert windows[0] == (0, int(21.7 * SR))
    # A pause shorter than 0.6 s is cut in its middle.
    assert cut_windows(samples, [(0, 25 * SR), (int(25.4 * SR), n)])[0] == (0, int(25.2 * SR))


def test_windows_end_near_30_s_where_speech_pauses_often() -> None:
    """Every window costs a full encoder pass and a decode however short it is, so with a
    pause every 2.5 s the windows run to the last pause before 30 s: a 0.4 s pause 4 s
    later beats a 0.8 s one, and only a much longer pause wins earlier."""
    n = 300 * SR
    # Speech in 2.1 s stretches with 0.4 s pauses, except a 0.8 s pause every 10 s.
    spans, t = [], 0.0
    while t < 300:
        spans.append((int(t * SR), int(min(300, t + 2.1) * SR)))
        t += 2.1 + (0.8 if int(t) % 10 == 7 else 0.4)
    samples = np.zeros(n, np.float32)
    windows = cut_windows(samples, spans)
    check_cover(windows, n)
    assert cuts_inside(windows, spans) == []
    lengths = [(b - a) / SR for a, b in windows[:-1]]
    assert min(lengths) >= 27.0, lengths
    assert len(windows) <= 11  # 300 s: at least 10 windows, whatever the rule

    # A 2 s pause 5 s before the limit still beats a 0.3 s one at the limit.
    spans = [(0, 23 * SR), (25 * SR, int(29.5 * SR)), (int(29.8 * SR), n)]
    assert cut_windows(samples, spans)[0] == (0, int(24.7 * SR))


def test_a_cut_at_the_limit_inside_a_long_silence() -> None:
    n = 90 * SR
    spans = [(0, 10 * SR), (80 * SR, n)]  # 70 s of silence between
    windows = cut_windows(np.zeros(n, np.float32), spans)
    check_cover(windows, n)
    assert cuts_inside(windows, spans) == []
    assert windows[0] == (0, 30 * SR)  # as late as the limit allows, not mid-silence (45 s)


def test_a_span_longer_than_a_window_is_cut_at_its_quietest_frame() -> None:
    rng = np.random.default_rng(1)
    n = 50 * SR
    samples = (0.3 * rng.standard_normal(n)).astype(np.float32)
    dip = int(27.3 * SR)  # a quiet breath 2.7 s before the limit
    samples[dip : dip + SR // 5] *= 0.01
    loud_earlier = int(10 * SR)  # quiet but outside the last 5 s: not chosen
    samples[loud_earlier : loud_earlier + SR // 5] *= 0.001
    windows = cut_windows(samples, [(0, n)])
    check_cover(windows, n)
    cut = windows[0][1]
    assert dip <= cut <= dip + SR // 5, cut / SR
    assert 25 * SR <= cut <= 30 * SR


def test_merge_spans_sorts_clips_and_joins() -> None:
    assert merge_spans([(50, 80), (-5, 10), (5, 20), (20, 30), (90, 200), (40, 40)], 100) == [
        (0, 30), (50, 80), (90, 100)
    ]


def tiled(jfk: np.ndarray, copies: int, gaps_s: list[float]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """jfk `copies` times with the given pauses between; returns the audio and where each
    copy lies."""
    parts, where, cursor = [], [], 0
    for i in range(copies):
        parts.append(jfk)
        where.append((cursor, cursor + len(jfk)))
        cursor += len(jfk)
        gap = np.zeros(int(gaps_s[i % len(gaps_s)] * SR), np.float32)
        parts.append(gap)
        cursor += len(gap)
    return np.concatenate(parts), where


def test_energy_detector_finds_jfk_between_pauses(jfk: np.ndarray) -> None:
    audio, copies = tiled(jfk, 3, [4.0])
    spans = energy_speech_spans(audio)
    assert spans
    # Every span lies within one copy (the pauses are silence) and every copy has speech.
    for a, b in spans:
        assert any(s - SR // 5 <= a and b <= e + SR // 5 for s, e in copies), (a / SR, b / SR)
    for s, e in copies:
        assert any(s - SR // 5 <= a < e for a, _ in spans)


def test_tiled_jfk_is_cut_between_copies(jfk: np.ndarray) -> None:
    audio, copies = tiled(jfk, 9, [1.0, 2.5, 4.0])  # 11 s copies: ~120 s
    windows = plan_windows(audio, 1)
    check_cover(windows, len(audio))
    assert len(windows) >= 4
    # No copy of the speech is split: each cut falls in a pause between copies (or in
    # the first or last 0.2 s of a copy, where jfk.wav is silent).
    speech = [(s + SR // 5, e - SR // 5) for s, e in copies]
    assert cuts_inside(windows, speech) == []
    # With the detector's own spans too (Silero when the build has it).
    assert cuts_inside(cut_windows(audio, speech_spans(audio, 1)), speech) == []


def speak(text: str, out: Path) -> np.ndarray:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: `make setup` installs it (Debian package espeak-ng)"
    subprocess.run([espeak, "-v", "en", "-s", "150", "-w", str(out), text], check=True)
    return decode_audio(out)


def test_espeak_speech_is_cut_in_its_pauses(tmp_path: Path) -> None:
    sentences = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Yesterday we walked to the market and bought apples, bread and cheese.",
        "In the evening the children played football in the park until it was dark.",
        "The train to the city leaves every hour from the station on the hill.",
    ]
    audio = speak(" ".join(sentences * 3), tmp_path / "long.wav")
    assert len(audio) > 45 * SR
    windows = plan_windows(audio, 1)
    check_cover(windows, len(audio))
    # Each cut lands where it is quiet: 40 ms around it far below the speech level.
    speech_rms = float(np.sqrt(np.mean(audio**2)))
    for _, cut in windows[:-1]:
        around = audio[max(0, cut - 320) : cut + 320]
        assert float(np.sqrt(np.mean(around**2))) < 0.1 * speech_rms, cut / SR


def test_speech_spans_do_not_depend_on_the_number_of_threads(jfk: np.ndarray) -> None:
    """Silero runs on pieces in parallel, one thread each: the pieces are fixed, so a
    machine with more CPUs cuts the same audio into the same windows."""
    audio, _ = tiled(jfk, 8, [1.0, 2.5, 4.0])  # ~105 s: four pieces
    one = speech_spans(audio, 1)
    assert len(one) >= 8
    assert speech_spans(audio, 3) == one
    assert speech_spans(audio, 8) == one


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities are a Unix feature")
def test_the_detectors_threads_yield_the_cpu_to_the_decoder() -> None:
    """Silero's pieces run at a lower CPU priority than the thread that drives the decoder,
    so a busy detector does not slow the batch's encoder passes and steps."""
    pool = VadPool(2)
    try:
        def niceness() -> list[Span]:
            return [(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), 0)]

        inside = pool.submit(niceness).result()[0][0]
    finally:
        pool.close()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert inside == min(19, mine + VAD_NICENESS)
    assert inside > mine or mine == 19
