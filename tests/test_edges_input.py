"""What gets in: hostile and damaged uploads and requests against a real server, each
answered with the right status and a message naming the problem, no traceback in the log,
and the server still transcribing a good file afterwards."""
from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import EXPECTED_JFK, normalise
from malformed import CORRUPT_SUBMIT, NON_UTF8_ID, corpus, tone, wav_bytes
from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd.audio import decode_audio, write_wav
from whisperd.v1 import transcription_pb2 as pb

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}
MAX_SECS = 40


@pytest.fixture(scope="module")
def server(tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    proc = ServerProcess(
        tmp_path_factory.mktemp("data"), tiny_en_model, env={"MAX_AUDIO_SECS": str(MAX_SECS)}
    ).start()
    yield proc
    proc.stop()


def submit(server: ServerProcess, data: bytes, **options: object) -> pb.Job:
    return server.jobs.Submit(submit_requests(data, pb.JobOptions(**options)), timeout=60)


def refused(server: ServerProcess, data: bytes, **options: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        submit(server, data, **options)
    return err.value


def test_malformed_uploads_are_refused_with_the_reason(server: ServerProcess, jfk_mp3: Path) -> None:
    before = len(server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs)
    wrong: list[str] = []
    for name, filename, data, code, words in corpus(jfk_mp3):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            submit(server, data, filename=filename)
        answer = f"{err.value.code().name}: {err.value.details()}"
        if err.value.code().name != code or words not in err.value.details() or time.monotonic() - started > 5:
            wrong.append(f"{name}: {answer}")
    assert not wrong, "\n".join(wrong)
    assert len(server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs) == before
    assert not list((server.data_dir / "uploads").iterdir())  # nothing left behind
    log = "\n".join(server.log_lines)
    assert "Traceback" not in log and "internal error" not in log, server.log()


def test_requests_that_do_not_parse_are_invalid_argument(server: ServerProcess) -> None:
    submit_raw = server.channel.stream_unary("/whisperd.v1.Transcription/Submit")
    with pytest.raises(grpc.RpcError) as err:
        submit_raw(iter([CORRUPT_SUBMIT]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid whisperd.v1.SubmitRequest" in err.value.details()
    get_raw = server.channel.unary_unary("/whisperd.v1.Transcription/Get")
    with pytest.raises(grpc.RpcError) as err:
        get_raw(NON_UTF8_ID, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetJobRequest" in err.value.details()
    # A good options message, then a chunk message that does not parse.
    good = pb.SubmitRequest(options=pb.JobOptions()).SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        submit_raw(iter([good, CORRUPT_SUBMIT]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    huge = "ajE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"  # "j1:" + 30 nines
    with pytest.raises(grpc.RpcError) as err:
        server.jobs.List(pb.ListJobsRequest(page_token=huge), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.value.details()
    log = "\n".join(server.log_lines)
    assert "Traceback" not in log and "Exception" not in log, server.log()


def test_a_language_name_is_an_unknown_language_not_an_error_in_the_log(server: ServerProcess, jfk_wav: Path) -> None:
    for language in ("english", "xx"):
        err = refused(server, jfk_wav.read_bytes(), language=language)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a language whisper knows" in err.details()
    assert not [line for line in server.log_lines if "ERROR" in line and "language" in line]


def test_audio_past_max_audio_secs_is_refused_naming_the_setting(server: ServerProcess, jfk_wav: Path) -> None:
    long = np.tile(decode_audio(jfk_wav), 4)  # 44 s
    err = refused(server, wav_bytes(data=(long * 32767).astype("<i2").tobytes()), filename="long.wav")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "MAX_AUDIO_SECS" in err.details()


def test_a_truncated_file_is_transcribed_for_what_it_holds_with_a_warning(
    server: ServerProcess, jfk_wav: Path, tmp_path: Path
) -> None:
    # An mp3 whose header (Xing frame count) declares 11 s, cut after about 4 s.
    import av

    path = tmp_path / "jfk.mp3"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libmp3lame", rate=16000)
        stream.layout = "mono"
        samples = decode_audio(jfk_wav)
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = path.read_bytes()
    job = submit(server, data[: len(data) * 4 // 11], filename="cut.mp3", beam_size=1)
    assert 3.0 < job.duration_secs < 5.0, job.duration_secs
    assert len(job.warnings) == 1 and "header declares 11" in job.warnings[0], job.warnings
    done = wait_for_status(server, job.id, TERMINAL)
    assert done.status == pb.JOB_STATUS_DONE and done.warnings == job.warnings
    assert normalise(" ".join(s.text for s in done.segments)).startswith("and so my fellow")
    assert json.loads(server.jobs.GetTranscript(pb.GetTranscriptRequest(id=job.id)).content)


def test_silence_is_an_empty_transcript_in_every_format(server: ServerProcess, tmp_path: Path) -> None:
    quiet = np.random.default_rng(0).normal(0, 0.0005, 16000 * 12).astype(np.float32)
    job = submit(server, write_wav(tmp_path / "quiet.wav", quiet).read_bytes(), beam_size=1)
    done = wait_for_status(server, job.id, TERMINAL)
    assert done.status == pb.JOB_STATUS_DONE
    assert list(done.segments) == [], [s.text for s in done.segments]
    for fmt in (pb.TRANSCRIPT_FORMAT_TEXT, pb.TRANSCRIPT_FORMAT_SRT, pb.TRANSCRIPT_FORMAT_VTT):
        content = server.jobs.GetTranscript(pb.GetTranscriptRequest(id=job.id, format=fmt)).content
        assert "BLANK" not in content and "[" not in content, content
    body = json.loads(server.jobs.GetTranscript(pb.GetTranscriptRequest(id=job.id)).content)
    assert body["segments"] == [] and body["text"] == ""


def test_a_repeated_request_id_returns_the_same_job(server: ServerProcess, jfk_wav: Path) -> None:
    before = len(server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs)
    first = submit(server, jfk_wav.read_bytes(), request_id="retry-5d1c", beam_size=1)
    again = submit(server, jfk_wav.read_bytes(), request_id="retry-5d1c", beam_size=1)
    assert again.id == first.id
    assert len(server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs) == before + 1
    done = wait_for_status(server, first.id, TERMINAL)
    # Still the same job once it has ended, and no stray upload from the second Submit.
    assert submit(server, jfk_wav.read_bytes(), request_id="retry-5d1c").id == first.id
    assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
    assert done.options.request_id == "retry-5d1c"
    time.sleep(0.3)
    assert not list((server.data_dir / "uploads").iterdir())


def test_data_dir_files_are_private(server: ServerProcess, jfk_wav: Path) -> None:
    job = submit(server, wav_bytes(data=tone(30)), filename="tone.wav")
    uploads = list((server.data_dir / "uploads").iterdir())
    modes = {p.name: p.stat().st_mode & 0o777 for p in [server.data_dir, server.data_dir / "uploads", *uploads]}
    modes.update({p.name: p.stat().st_mode & 0o777 for p in server.data_dir.glob("*.db")})
    server.jobs.Cancel(pb.CancelJobRequest(id=job.id))
    assert all(mode & 0o077 == 0 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}


def test_the_server_still_serves_a_good_job(server: ServerProcess, jfk_wav: Path) -> None:
    job = submit(server, jfk_wav.read_bytes(), beam_size=1)
    done = wait_for_status(server, job.id, TERMINAL)
    assert done.status == pb.JOB_STATUS_DONE
    assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
