"""Windows and the batch scheduler through the real server: a file longer than one window
end to end, the sequential mode beside it, and the deprecated BATCH_DECODING setting."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd.audio import decode_audio, write_wav
from whisperd.v1 import transcription_pb2 as pb

pytestmark = pytest.mark.slow
TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}
COPIES = 4


@pytest.fixture(scope="module")
def long_bytes(jfk_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """jfk four times with pauses of 1-4 s: ~52 s, two windows or more."""
    jfk = decode_audio(jfk_wav)
    parts = []
    for gap in (1.0, 4.0, 2.5, 1.5)[:COPIES]:
        parts += [jfk, np.zeros(int(gap * 16000), np.float32)]
    return write_wav(tmp_path_factory.mktemp("audio") / "jfk_x4.wav", np.concatenate(parts)).read_bytes()


@pytest.fixture(scope="module")
def server(tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    proc = ServerProcess(
        tmp_path_factory.mktemp("data"), tiny_en_model, env={"BATCH_DECODING": "1", "BATCH_SIZE": "2"}
    ).start()
    yield proc
    proc.stop()


def test_a_long_file_is_streamed_in_order_and_stitched(server: ServerProcess, long_bytes: bytes) -> None:
    job = server.jobs.Submit(submit_requests(long_bytes, pb.JobOptions(beam_size=1)))
    events = list(server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=180))
    done = events[-1].done
    assert done.status == pb.JOB_STATUS_DONE, done.error
    assert normalise(" ".join(s.text for s in done.segments)) == normalise(" ".join([EXPECTED_JFK] * COPIES))
    # Streamed segments are the final ones, in order; times rise and stay in the audio.
    streamed = [e.segment for e in events if e.HasField("segment")]
    assert [(s.index, s.text) for s in streamed] == [(s.index, s.text) for s in done.segments]
    assert [s.index for s in done.segments] == list(range(len(done.segments)))
    for prev, seg in zip(done.segments, done.segments[1:]):
        assert prev.end <= seg.start + 1e-6
    assert done.segments[-1].end <= done.duration_secs + 1e-6
    assert done.segments[-1].start > done.duration_secs - 15
    percents = [e.progress.percent for e in events if e.HasField("progress")]
    assert percents == sorted(percents) and percents[-1] == 100


def test_sequential_mode_is_kept_and_echoed(server: ServerProcess, long_bytes: bytes) -> None:
    options = pb.JobOptions(beam_size=1, condition_on_previous_text=True)
    job = server.jobs.Submit(submit_requests(long_bytes, options))
    assert job.options.HasField("condition_on_previous_text") and job.options.condition_on_previous_text
    done = wait_for_status(server, job.id, TERMINAL, timeout=180)
    assert done.status == pb.JOB_STATUS_DONE, done.error
    assert normalise(" ".join(s.text for s in done.segments)) == normalise(" ".join([EXPECTED_JFK] * COPIES))


def test_batch_decoding_is_accepted_with_a_warning(server: ServerProcess) -> None:
    assert any("BATCH_DECODING is deprecated and ignored" in line for line in server.log_lines), server.log()
