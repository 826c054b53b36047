"""The native core with the real tiny.en model on real speech (CPU)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from whisperd import _native
from whisperd.audio import decode_audio
from whisperd.inference import (
    CancelToken,
    ModelLoadError,
    TranscribeOptions,
    TranscriptionAborted,
    WhisperModel,
)

GREEDY = TranscribeOptions(beam_size=1)


@pytest.fixture(scope="module")
def model(tiny_en_model: Path, use_gpu: bool) -> WhisperModel:
    m = WhisperModel(tiny_en_model, use_gpu=use_gpu)
    yield m
    m.close()


def test_jfk_wav_gives_the_sentence(model: WhisperModel, jfk: np.ndarray) -> None:
    with model.new_state() as state:
        result = state.transcribe(jfk)  # defaults: beam 5, temperature 0
    assert normalise(result.text) == normalise(EXPECTED_JFK)
    assert result.language == "en"
    assert result.duration_secs == pytest.approx(11.0, abs=0.1)
    assert all(0.0 <= s.start < s.end <= 11.1 for s in result.segments)


def test_jfk_mp3_gives_the_sentence(model: WhisperModel, jfk_mp3: Path) -> None:
    pytest.importorskip("av", reason="MP3 needs PyAV (the GPU host may lack it)")
    with model.new_state() as state:
        result = state.transcribe(decode_audio(jfk_mp3), GREEDY)
    assert normalise(result.text) == normalise(EXPECTED_JFK)


def test_word_timestamps_are_ordered_and_inside_their_segment(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    with model.new_state() as state:
        result = state.transcribe(jfk, TranscribeOptions(beam_size=1, word_timestamps=True))
    words = [w for s in result.segments for w in s.words]
    assert normalise(" ".join(w.text for w in words)) == normalise(EXPECTED_JFK)
    for seg in result.segments:
        assert seg.words, f"segment {seg.index} has no words"
        for w in seg.words:
            assert seg.start <= w.start <= w.end <= seg.end, (seg, w)
            assert 0.0 < w.probability <= 1.0
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    # The speech really moves through time: "country" is said near the end, not at 0.
    assert words[-1].start > 5.0
    assert words[0].start < 2.0


def test_progress_reaches_100_and_segments_arrive_during_the_call(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    progress: list[int] = []
    streamed: list[str] = []
    with model.new_state() as state:
        result = state.transcribe(
            np.concatenate([jfk, jfk, jfk]),
            GREEDY,
            on_progress=progress.append,
            on_segment=lambda s: streamed.append(s.text),
        )
    assert progress[-1] == 100
    assert progress == sorted(progress) and len(progress) >= 2
    assert streamed == [s.text for s in result.segments]


def test_two_states_in_two_threads_are_right_and_overlap(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    """Two states transcribe at once on two threads (the GIL released inside the call):
    each gives the transcript it gives alone, and each receives segments while the other
    is still inside its call, which serialised calls cannot do whatever the load (a
    comparison of wall times failed on a busy machine)."""
    one_thread = TranscribeOptions(beam_size=1, threads=1)
    audio = np.concatenate([jfk, jfk, jfk])  # two windows: segments arrive mid-call
    states = [model.new_state(), model.new_state()]
    try:
        alone = states[0].transcribe(audio, one_thread).text
        texts: list[str] = ["", ""]
        first_segment = [0.0, 0.0]
        returned = [0.0, 0.0]

        def work(i: int) -> None:
            def seen(_: object) -> None:
                if not first_segment[i]:
                    first_segment[i] = time.perf_counter()

            texts[i] = states[i].transcribe(audio, one_thread, on_segment=seen).text
            returned[i] = time.perf_counter()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for st in states:
            st.close()
    assert normalise(alone).startswith(normalise(EXPECTED_JFK))
    assert [normalise(t) for t in texts] == [normalise(alone)] * 2
    assert all(first_segment) and all(returned)
    assert first_segment[0] < returned[1] and first_segment[1] < returned[0], (first_segment, returned)


def test_cancel_stops_a_running_transcription_within_a_second(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    long_audio = np.tile(jfk, 60)  # 11 minutes: still running when cancelled, even on an H100
    token = CancelToken()
    started = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with model.new_state() as state:
                state.transcribe(
                    long_audio, GREEDY, cancel=token, on_progress=lambda p: started.set()
                )
            outcome["result"] = "finished"
        except TranscriptionAborted as exc:
            outcome["aborted_at"] = time.perf_counter()
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(60), "transcription never reported progress"
    time.sleep(0.5)
    cancelled_at = time.perf_counter()
    token.cancel()
    worker.join(10)
    assert not worker.is_alive()
    assert "aborted_at" in outcome, outcome
    assert outcome["aborted_at"] - cancelled_at < 1.0  # type: ignore[operator]
    # The model still serves after an abort.
    with model.new_state() as state:
        assert normalise(state.transcribe(jfk, GREEDY).text) == normalise(EXPECTED_JFK)


def test_a_reused_state_does_not_carry_the_previous_job_into_the_next(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    other = jfk[6 * 16000 :]  # "... ask what you can do for your country"
    with model.new_state() as fresh:
        expected = fresh.transcribe(other, GREEDY).text
    with model.new_state() as reused:
        reused.transcribe(jfk, GREEDY)
        again = reused.transcribe(other, GREEDY).text
    assert again == expected


def test_a_raising_callback_propagates_and_the_state_stays_usable(
    model: WhisperModel, jfk: np.ndarray
) -> None:
    def boom(_: int) -> None:
        raise KeyError("from the progress callback")

    with model.new_state() as state:
        with pytest.raises(KeyError, match="from the progress callback"):
            state.transcribe(jfk, GREEDY, on_progress=boom)
        assert normalise(state.transcribe(jfk, GREEDY).text) == normalise(EXPECTED_JFK)


def test_silence_with_vad_yields_no_text(model: WhisperModel) -> None:
    silence = np.zeros(30 * 16000, dtype=np.float32)
    with model.new_state() as state:
        result = state.transcribe(silence, TranscribeOptions(beam_size=1, vad=True))
    assert result.text == ""


def test_vad_keeps_the_speech(model: WhisperModel, jfk: np.ndarray) -> None:
    padded = np.concatenate([np.zeros(10 * 16000, np.float32), jfk, np.zeros(10 * 16000, np.float32)])
    with model.new_state() as state:
        result = state.transcribe(padded, TranscribeOptions(beam_size=1, vad=True))
    assert normalise(result.text) == normalise(EXPECTED_JFK)
    # Times are mapped back onto the original audio, speech starts after the silence.
    assert result.segments[0].start >= 9.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TranscribeOptions(beam_size=0), "beam_size"),
        (TranscribeOptions(language="xx"), "unknown language code 'xx'"),
        (TranscribeOptions(language="de"), "English-only"),
        (TranscribeOptions(task="translate"), "English-only"),
        (TranscribeOptions(language="EN"), "ISO 639-1"),
        (TranscribeOptions(temperature=2.0), "temperature"),
    ],
)
def test_bad_options_raise_value_error(
    model: WhisperModel, jfk: np.ndarray, options: TranscribeOptions, message: str
) -> None:
    with model.new_state() as state:
        with pytest.raises(ValueError, match=message):
            state.transcribe(jfk, options)


def test_empty_or_stereo_audio_is_refused(model: WhisperModel) -> None:
    with model.new_state() as state:
        with pytest.raises(ValueError, match="empty audio"):
            state.transcribe(np.zeros(0, np.float32))
        with pytest.raises(ValueError, match="mono"):
            state.transcribe(np.zeros((2, 16000), np.float32))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        WhisperModel(tmp_path / "nope.bin", use_gpu=False)


def test_foreign_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "random.bin"
    bad.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    with pytest.raises(ModelLoadError, match="not a GGML whisper model"):
        WhisperModel(bad, use_gpu=False)


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_truncated_model_is_refused(tiny_en_model: Path, tmp_path: Path, fraction: float) -> None:
    data = tiny_en_model.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError, match="truncated"):
        WhisperModel(cut, use_gpu=False)


def test_corrupt_tensor_header_is_refused(tiny_en_model: Path, tmp_path: Path) -> None:
    from whisperd.models.ggml_file import GgmlReader

    with GgmlReader(tiny_en_model) as reader:
        tenth = list(reader.tensor_infos())[10]
    data = bytearray(tiny_en_model.read_bytes())
    # The header of the tenth tensor now claims 77 dimensions.
    header_at = tenth.offset - (12 + 4 * len(tenth.ne) + len(tenth.name.encode()))
    data[header_at : header_at + 4] = (77).to_bytes(4, "little")
    bad = tmp_path / "corrupt.bin"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="bad tensor header"):
        WhisperModel(bad, use_gpu=False)


def test_native_logs_go_to_python_logging_not_stderr(
    tiny_en_model: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="whisperd.native"):
        m = WhisperModel(tiny_en_model, use_gpu=False)
        m.close()
    captured = capfd.readouterr()
    assert "whisper_" not in captured.err
    assert any("whisper_" in r.getMessage() for r in caplog.records)


def test_system_info_reports_the_build() -> None:
    info = _native.system_info()
    assert "CPU" in info
    assert _native.whisper_version() == "1.8.5"
    assert isinstance(_native.built_with_cuda(), bool)
    assert any(d.type == "cpu" for d in _native.devices())
