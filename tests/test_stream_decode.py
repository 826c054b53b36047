"""Audio decoded in chunks and planned into windows as it comes (the scheduler's
streaming path), on real tiny.en and real speech: the same transcript as the whole-array
path, memory that does not grow with the audio's length, cancel within a second."""
from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from test_scheduler import GREEDY, THREADS, assert_monotone, tile, wer
from whisperd.audio import DecodeCancelled, decode_audio, decode_chunks
from whisperd.inference import CancelToken, TranscribeOptions, TranscriptionAborted, WhisperModel
from whisperd.sequential_decoder import SequentialWindowDecoder
from whisperd.server.engine.scheduler import BatchScheduler
from whisperd.stream_windows import StreamPlanner
from whisperd.transcript import Segment
from whisperd.windows import MAX_WINDOW, VadPool, has_speech, plan

SR = 16000
HOUR = 3600 * SR


def write_flac(path: Path, parts: Iterator[np.ndarray], rate: int = SR) -> Path:
    """Mono FLAC from float pieces, written piece by piece (an hour never sits in memory)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate)
        stream.layout = "mono"
        for part in parts:
            pcm = np.round(np.clip(part, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def model(tiny_en_model: Path) -> Iterator[WhisperModel]:
    m = WhisperModel(tiny_en_model, use_gpu=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def scheduler() -> Iterator[BatchScheduler]:
    s = BatchScheduler(lambda m: SequentialWindowDecoder(m, 2, THREADS), vad_threads=THREADS)
    yield s
    s.close()


@pytest.fixture(scope="module")
def three_minutes_flac(jfk: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 16 x 11 s of speech with 1-4 s pauses (~218 s) at 44.1 kHz: the resampler runs.
    audio = tile(jfk, 16)
    up = np.interp(np.arange(0, len(audio), SR / 44100), np.arange(len(audio)), audio).astype(np.float32)
    return write_flac(tmp_path_factory.mktemp("audio") / "three.flac", iter([up]), rate=44100)


@pytest.fixture(scope="module")
def hour_flac(jfk: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hour of digital silence with the jfk clip at 10 min and at 50 min."""
    minute = np.zeros(60 * SR, np.float32)
    speech = minute.copy()
    speech[SR : SR + len(jfk)] = jfk

    def minutes() -> Iterator[np.ndarray]:
        for m in range(60):
            yield speech if m in (10, 50) else minute

    return write_flac(tmp_path_factory.mktemp("audio") / "hour.flac", minutes())


def test_chunks_add_up_to_the_whole_decode(three_minutes_flac: Path, jfk_wav: Path) -> None:
    for source in (three_minutes_flac, jfk_wav):  # FFmpeg with resampling; plain WAV
        whole = decode_audio(source)
        chunks = list(decode_chunks(source, chunk_secs=7.0))
        assert all(len(c) == 7 * SR for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 7 * SR
        np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_a_cancelled_chunk_decode_stops(three_minutes_flac: Path) -> None:
    seen: list[int] = []
    with pytest.raises(DecodeCancelled):
        for chunk in decode_chunks(three_minutes_flac, chunk_secs=10.0, should_stop=lambda: len(seen) >= 2):
            seen.append(len(chunk))
    assert len(seen) == 2


def test_windows_planned_chunk_by_chunk_are_cut_where_the_whole_array_is_cut(jfk: np.ndarray) -> None:
    audio = tile(jfk, 20)  # ~270 s: speech with 1-4 s pauses
    whole, spans = plan(audio, THREADS)
    assert spans is not None
    planner = StreamPlanner(THREADS)
    planned = []
    for i in range(0, len(audio), 50 * SR):  # 50 s chunks: chunk ends fall mid-speech
        planned += planner.feed(audio[i : i + 50 * SR])
    planned += planner.finish()
    bounds = [(w.start, w.end) for w in planned]
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(a < b <= a + MAX_WINDOW for a, b in bounds)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:]))
    # Every cut is in a pause the whole-array detector found (none where a chunk ended,
    # mid-sentence), though not always the same pause: the detector's spans shift a
    # little with where its input starts, and cut_windows takes the longest pause.
    assert abs(len(bounds) - len(whole)) <= 2, (bounds, whole)
    for _, cut in bounds[:-1]:
        assert not has_speech(spans, cut - SR // 10, cut + SR // 10), (cut / SR, bounds, spans)
    for w in planned:  # each window holds its own samples
        np.testing.assert_array_equal(w.samples, audio[w.start : w.end])
        assert w.samples.base is None


def test_three_minutes_stream_to_the_same_transcript_as_the_whole_array(
    scheduler: BatchScheduler, model: WhisperModel, three_minutes_flac: Path
) -> None:
    samples = decode_audio(three_minutes_flac)
    whole = scheduler.transcribe(model, samples, GREEDY, cancel=CancelToken())
    progress: list[int] = []
    streamed: list[Segment] = []
    # One-minute chunks: windows are planned across chunk boundaries, with a carried tail.
    result = scheduler.transcribe_stream(
        model, decode_chunks(three_minutes_flac, chunk_secs=60.0), GREEDY, cancel=CancelToken(),
        duration_secs=len(samples) / SR, on_progress=progress.append, on_segment=streamed.append,
    )
    reference = " ".join([EXPECTED_JFK] * 16)
    assert wer(reference, result.text) <= wer(reference, whole.text) + 1.0, (result.text, whole.text)
    assert result.duration_secs == pytest.approx(len(samples) / SR)
    assert_monotone(result.segments, result.duration_secs)
    assert result.segments[-1].end > result.duration_secs - 15.0
    assert progress == sorted(set(progress)) and progress[-1] == 100 and len(progress) >= 4
    assert streamed == list(result.segments)


def test_an_hour_streams_in_bounded_memory(scheduler: BatchScheduler, model: WhisperModel, hour_flac: Path) -> None:
    whole_bytes = HOUR * 4  # what decode_audio would hold: 230 MB
    options = TranscribeOptions(beam_size=1, threads=THREADS, vad=True)  # silent windows are not decoded
    progress: list[int] = []
    biggest: list[int] = []

    def chunks() -> Iterator[np.ndarray]:
        for chunk in decode_chunks(hour_flac):
            biggest.append(chunk.nbytes)
            yield chunk

    tracemalloc.start()
    try:
        result = scheduler.transcribe_stream(
            model, chunks(), options, cancel=CancelToken(), duration_secs=3600.0, on_progress=progress.append
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole_bytes / 4, f"peak {peak / 2**20:.1f} MiB while streaming an hour"
    assert max(biggest) <= 120 * SR * 4 and sum(biggest) == HOUR * 4
    assert result.duration_secs == pytest.approx(3600.0)
    assert normalise(result.text) == normalise(" ".join([EXPECTED_JFK] * 2)), result.text
    starts = [seg.start for seg in result.segments]
    assert 600 <= starts[0] < 615 and any(3000 <= s < 3015 for s in starts), starts
    assert progress[-1] == 100 and progress == sorted(set(progress)) and len(progress) >= 10


def test_cancel_mid_stream_stops_within_a_second(
    scheduler: BatchScheduler, model: WhisperModel, hour_flac: Path
) -> None:
    token = CancelToken()
    progress: list[int] = []
    outcome: dict[str, float] = {}
    pulled: list[int] = []

    def chunks() -> Iterator[np.ndarray]:
        for chunk in decode_chunks(hour_flac, should_stop=lambda: token.cancelled):
            pulled.append(len(chunk))
            yield chunk

    def job() -> None:
        try:
            scheduler.transcribe_stream(model, chunks(), GREEDY, cancel=token, duration_secs=3600.0,
                                        on_progress=progress.append)
        except (TranscriptionAborted, DecodeCancelled):
            outcome["at"] = time.monotonic()

    t = threading.Thread(target=job)
    t.start()
    deadline = time.monotonic() + 60
    while not any(p > 0 for p in progress) and time.monotonic() < deadline:
        time.sleep(0.02)
    cancelled = time.monotonic()
    token.cancel()
    t.join(10)
    assert "at" in outcome and outcome["at"] - cancelled < 1.0, outcome
    # It had read only a few minutes ahead of the decoder, not the hour.
    assert 0 < sum(pulled) < 15 * 60 * SR, sum(pulled) / SR


def test_the_detector_runs_behind_the_feeding_and_cuts_the_same_windows(jfk: np.ndarray) -> None:
    """With a VadPool that has a free thread, feed() queues the new audio's detector
    pieces and returns without waiting for them, so the caller reads the next chunk
    while they run (an hour's pieces on every thread, not a chunk's few at a time); the
    windows are those the planner cuts when it waits for each chunk."""
    audio = tile(jfk, 45)  # ~10 minutes of speech with pauses
    chunk = 120 * SR
    pool = VadPool(8)  # more threads than a chunk has pieces (4)
    try:
        behind = StreamPlanner(THREADS, pool=pool)
        planned, running_after_feed = [], []
        for i in range(0, len(audio), chunk):
            planned += behind.feed(audio[i : i + chunk])
            running_after_feed.append(behind.detecting())
        planned += behind.finish()
    finally:
        pool.close()
    assert any(running_after_feed) and not behind.detecting()
    waiting = StreamPlanner(THREADS)
    reference = []
    for i in range(0, len(audio), chunk):
        reference += waiting.feed(audio[i : i + chunk])
    reference += waiting.finish()
    assert [(w.start, w.end) for w in planned] == [(w.start, w.end) for w in reference]
    assert planned[-1].end == len(audio)


def test_the_first_window_is_decoded_before_a_long_file_is_read(model: WhisperModel, jfk: np.ndarray) -> None:
    """A 10-minute file: its first window reaches the decoder while most of the audio is
    still unread (and its speech not yet detected), not after the whole file's planning."""
    audio = tile(jfk, 45)
    chunk = 60 * SR
    read: list[int] = []
    read_at_first_add: list[int] = []

    class Recording(SequentialWindowDecoder):
        def add(self, windows, cancel=None):  # type: ignore[no-untyped-def]
            if not read_at_first_add:
                read_at_first_add.append(len(read))
            super().add(windows)

    def chunks() -> Iterator[np.ndarray]:
        for i in range(0, len(audio), chunk):
            read.append(i)
            yield audio[i : i + chunk]

    s = BatchScheduler(lambda m: Recording(m, 2, THREADS), vad_threads=THREADS)
    token = CancelToken()
    try:
        def stop_after_first_add(percent: int) -> None:
            if read_at_first_add:
                token.cancel()

        with pytest.raises(TranscriptionAborted):
            s.transcribe_stream(model, chunks(), GREEDY, cancel=token, duration_secs=len(audio) / SR,
                                on_progress=stop_after_first_add)
    finally:
        s.close()
    total_chunks = -(-len(audio) // chunk)
    assert read_at_first_add and read_at_first_add[0] <= 4 < total_chunks, (read_at_first_add, total_chunks)
