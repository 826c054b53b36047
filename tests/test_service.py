"""The gRPC service end to end: a real server process on a free port, the real tiny.en
model, real speech over a real channel."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import srt
import webvtt

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd.audio import decode_audio, write_wav
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as pb

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


@pytest.fixture(scope="module")
def jfk_bytes(jfk_wav: Path) -> bytes:
    return jfk_wav.read_bytes()


@pytest.fixture(scope="module")
def long_wav(jfk_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """66 s of real speech (jfk six times): long enough to be caught running."""
    path = tmp_path_factory.mktemp("audio") / "jfk_x6.wav"
    return write_wav(path, np.tile(decode_audio(jfk_wav), 6))


@pytest.fixture(scope="module")
def server(tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    # One job admitted at a time, so that a second job is seen waiting in the queue.
    proc = ServerProcess(tmp_path_factory.mktemp("data"), tiny_en_model, env={"PARALLEL_JOBS": "1"}).start()
    yield proc
    proc.stop()


def submit(server: ServerProcess, data: bytes, **options: object) -> pb.Job:
    return server.jobs.Submit(submit_requests(data, pb.JobOptions(**options)))


def test_submit_stream_progress_then_done_with_the_sentence(server: ServerProcess, jfk_bytes: bytes) -> None:
    job = submit(server, jfk_bytes, filename="jfk.wav", beam_size=1)
    assert job.status == pb.JOB_STATUS_QUEUED
    assert job.duration_secs == pytest.approx(11.0, abs=0.1)
    events = list(server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "done"
    percents = [e.progress.percent for e in events if e.HasField("progress")]
    assert percents == sorted(percents) and percents[-1] == 100
    segments = [e.segment for e in events if e.HasField("segment")]
    assert segments, kinds
    done = events[-1].done
    assert done.status == pb.JOB_STATUS_DONE
    assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
    assert [s.text for s in segments] == [s.text for s in done.segments]
    assert done.language == "en" and done.model == "ggml-tiny.en.bin"
    assert done.created_at.seconds and done.started_at.seconds and done.completed_at.seconds
    # The upload is deleted once its job has ended.
    assert not list((server.data_dir / "uploads").iterdir())


def test_a_late_subscriber_gets_the_finished_job_at_once(server: ServerProcess, jfk_bytes: bytes) -> None:
    job = submit(server, jfk_bytes, beam_size=1)
    wait_for_status(server, job.id, TERMINAL)
    events = list(server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=10))
    assert [e.WhichOneof("event") for e in events] == ["snapshot", "done"]
    assert normalise(" ".join(s.text for s in events[-1].done.segments)) == normalise(EXPECTED_JFK)


def test_get_list_and_transcripts_in_every_format(server: ServerProcess, jfk_bytes: bytes) -> None:
    job = submit(server, jfk_bytes, beam_size=1, word_timestamps=True)
    done = wait_for_status(server, job.id, TERMINAL)
    assert done.status == pb.JOB_STATUS_DONE
    assert all(s.words for s in done.segments)

    listed = server.jobs.List(pb.ListJobsRequest(statuses=[pb.JOB_STATUS_DONE]))
    assert job.id in [j.id for j in listed.jobs]
    assert all(j.status == pb.JOB_STATUS_DONE for j in listed.jobs)
    assert not server.jobs.List(pb.ListJobsRequest(statuses=[pb.JOB_STATUS_RUNNING])).jobs
    page1 = server.jobs.List(pb.ListJobsRequest(page_size=1, without_segments=True))
    assert len(page1.jobs) == 1 and not page1.jobs[0].segments and page1.next_page_token
    page2 = server.jobs.List(pb.ListJobsRequest(page_size=1, page_token=page1.next_page_token))
    assert page2.jobs[0].id != page1.jobs[0].id

    def transcript(fmt: int) -> pb.Transcript:
        return server.jobs.GetTranscript(pb.GetTranscriptRequest(id=job.id, format=fmt))

    as_json = transcript(pb.TRANSCRIPT_FORMAT_JSON)
    assert as_json.content_type == "application/json"
    doc = json.loads(as_json.content)
    assert normalise(doc["text"]) == normalise(EXPECTED_JFK) and doc["segments"][0]["words"]
    assert normalise(transcript(pb.TRANSCRIPT_FORMAT_TEXT).content) == normalise(EXPECTED_JFK)
    cues = list(srt.parse(transcript(pb.TRANSCRIPT_FORMAT_SRT).content))
    assert normalise(" ".join(c.content for c in cues)) == normalise(EXPECTED_JFK)
    assert cues[0].start.total_seconds() < 1.0 and cues[-1].end.total_seconds() > 9.0
    vtt = webvtt.from_string(transcript(pb.TRANSCRIPT_FORMAT_VTT).content)
    assert normalise(" ".join(c.text for c in vtt)) == normalise(EXPECTED_JFK)


def test_unknown_job_is_not_found(server: ServerProcess) -> None:
    for call in (
        lambda: server.jobs.Get(pb.GetJobRequest(id="no-such-job")),
        lambda: server.jobs.Cancel(pb.CancelJobRequest(id="no-such-job")),
        lambda: list(server.jobs.StreamProgress(pb.StreamProgressRequest(id="no-such-job"))),
        lambda: server.jobs.GetTranscript(pb.GetTranscriptRequest(id="no-such-job")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-job" in err.value.details()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (pb.JobOptions(language="xx"), "options.language"),
        (pb.JobOptions(language="de"), "options.language"),
        (pb.JobOptions(task=pb.TASK_TRANSLATE), "options.task"),
        (pb.JobOptions(beam_size=99), "beam_size"),
        (pb.JobOptions(temperature=3.0), "temperature"),
        (pb.JobOptions(webhook_url="ftp://example"), "options.webhook_url"),
    ],
)
def test_bad_options_are_invalid_argument_naming_the_field(
    server: ServerProcess, jfk_bytes: bytes, options: pb.JobOptions, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.jobs.Submit(submit_requests(jfk_bytes, options))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


def test_undecodable_upload_is_refused_and_leaves_nothing(server: ServerProcess) -> None:
    before = server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs
    garbage = np.random.default_rng(7).bytes(300_000)
    with pytest.raises(grpc.RpcError) as err:
        submit(server, garbage, filename="song.mp3")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio" in err.value.details()
    assert not list((server.data_dir / "uploads").iterdir())
    after = server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs
    assert [j.id for j in after] == [j.id for j in before]
    # The server keeps serving.
    assert server.model.Status(mpb.ModelStatusRequest()).model == "ggml-tiny.en.bin"


def test_options_must_come_first(server: ServerProcess, jfk_bytes: bytes) -> None:
    def chunks_only():
        yield pb.SubmitRequest(chunk=jfk_bytes[:1000])

    with pytest.raises(grpc.RpcError) as err:
        server.jobs.Submit(chunks_only())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options" in err.value.details()


def test_cancel_a_running_and_a_queued_job(server: ServerProcess, long_wav: Path, jfk_bytes: bytes) -> None:
    running = submit(server, long_wav.read_bytes(), beam_size=1)
    queued = submit(server, jfk_bytes, beam_size=1)
    stream = server.jobs.StreamProgress(pb.StreamProgressRequest(id=running.id), timeout=120)
    for event in stream:  # wait until it really runs
        if event.HasField("progress") and event.progress.percent > 0:
            break
    assert server.jobs.Get(pb.GetJobRequest(id=queued.id)).status == pb.JOB_STATUS_QUEUED
    cancelled = server.jobs.Cancel(pb.CancelJobRequest(id=queued.id))
    assert cancelled.status == pb.JOB_STATUS_CANCELLED

    asked = time.monotonic()
    server.jobs.Cancel(pb.CancelJobRequest(id=running.id))
    last = None
    for event in stream:
        last = event
    stopped = time.monotonic() - asked
    assert last is not None and last.HasField("done")
    assert last.done.status == pb.JOB_STATUS_CANCELLED
    assert stopped < 1.0, stopped
    # Cancelling again is a precondition error; nothing was lost or left behind.
    with pytest.raises(grpc.RpcError) as err:
        server.jobs.Cancel(pb.CancelJobRequest(id=running.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert server.jobs.Get(pb.GetJobRequest(id=queued.id)).status == pb.JOB_STATUS_CANCELLED
    time.sleep(0.3)
    assert not list((server.data_dir / "uploads").iterdir())
    # The worker is free again.
    again = submit(server, jfk_bytes, beam_size=1)
    assert wait_for_status(server, again.id, TERMINAL).status == pb.JOB_STATUS_DONE


def test_transcript_of_an_unfinished_job_is_a_precondition_error(
    server: ServerProcess, long_wav: Path
) -> None:
    job = submit(server, long_wav.read_bytes(), beam_size=1)
    with pytest.raises(grpc.RpcError) as err:
        server.jobs.GetTranscript(pb.GetTranscriptRequest(id=job.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    server.jobs.Cancel(pb.CancelJobRequest(id=job.id))


def test_health_reports_serving(server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(server.channel)
    for name in ("", "whisperd.v1.Transcription", "whisperd.v1.ModelControl"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_services(server: ServerProcess) -> None:
    from google.protobuf.descriptor_pb2 import FileDescriptorProto
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    [listing] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in listing.list_services_response.service}
    assert {"whisperd.v1.Transcription", "whisperd.v1.ModelControl", "grpc.health.v1.Health"} <= names
    [described] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="whisperd.v1.Transcription")])
    )
    files = [FileDescriptorProto.FromString(b) for b in described.file_descriptor_response.file_descriptor_proto]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert {"Submit", "Get", "List", "Cancel", "StreamProgress", "GetTranscript"} <= methods


def test_sigkill_mid_job_then_restart_completes_it(
    tiny_en_model: Path, tmp_path: Path, long_wav: Path
) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model).start()
    try:
        job = server.jobs.Submit(submit_requests(long_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        for event in server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=120):
            if event.HasField("progress") and event.progress.percent > 0:
                break
        server.signal(signal.SIGKILL)
        server.wait()
    finally:
        server.stop()
    server = ServerProcess(tmp_path / "data", tiny_en_model).start()
    try:
        done = wait_for_status(server, job.id, TERMINAL, timeout=180)
        assert done.status == pb.JOB_STATUS_DONE, done.error
        assert done.attempts == 2
        text = normalise(" ".join(s.text for s in done.segments))
        assert text.count(normalise("ask what you can do for your country")) >= 5
    finally:
        server.stop()


def test_sigterm_stops_cleanly_and_loses_nothing(
    tiny_en_model: Path, tmp_path: Path, long_wav: Path, jfk_bytes: bytes
) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"SHUTDOWN_GRACE_SECS": "0"}).start()
    try:
        running = server.jobs.Submit(submit_requests(long_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        queued = server.jobs.Submit(submit_requests(jfk_bytes, pb.JobOptions(beam_size=1)))
        for event in server.jobs.StreamProgress(pb.StreamProgressRequest(id=running.id), timeout=120):
            if event.HasField("progress") and event.progress.percent > 0:
                break
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert any("stopped" in line for line in server.log_lines), server.log()
    finally:
        server.stop()
    server = ServerProcess(tmp_path / "data", tiny_en_model).start()
    try:
        for job_id in (running.id, queued.id):
            done = wait_for_status(server, job_id, TERMINAL, timeout=180)
            assert done.status == pb.JOB_STATUS_DONE, done.error
        assert normalise(" ".join(s.text for s in server.jobs.Get(pb.GetJobRequest(id=queued.id)).segments)) == normalise(EXPECTED_JFK)
    finally:
        server.stop()


def test_finished_jobs_are_purged_after_the_retention_time(
    tiny_en_model: Path, tmp_path: Path, jfk_bytes: bytes
) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"JOB_RETENTION_SECS": "2"}).start()
    try:
        job = server.jobs.Submit(submit_requests(jfk_bytes, pb.JobOptions(beam_size=1)))
        wait_for_status(server, job.id, TERMINAL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                server.jobs.Get(pb.GetJobRequest(id=job.id))
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                break
            time.sleep(0.5)
        else:
            pytest.fail("the finished job was not purged")
    finally:
        server.stop()


def test_a_bad_setting_stops_the_start_with_one_clear_line(tiny_en_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"PARALLEL_JOBS": "lots"})
    with pytest.raises(RuntimeError):
        server.start(timeout=30)
    assert server.proc is not None and server.proc.wait(10) == 2
    assert any("PARALLEL_JOBS must be a whole number" in line for line in server.log_lines), server.log()


def _wav_stream(total_bytes: int, chunk: int = 64 * 1024):
    """A valid 16 kHz mono 16-bit WAV of `total_bytes`, generated as it is sent."""
    import struct

    data_bytes = total_bytes - 44
    yield (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )
    tone = (np.sin(np.arange(chunk // 2) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2").tobytes()
    sent = 0
    while sent < data_bytes:
        piece = tone[: min(chunk, data_bytes - sent)]
        sent += len(piece)
        yield piece


def test_a_500_mb_upload_keeps_server_memory_flat(
    tiny_en_model: Path, tmp_path: Path, jfk_bytes: bytes
) -> None:
    # The model never becomes ready (injected out-of-memory, hour-long poll), so the job
    # stays queued and nothing but the upload path touches the audio.
    server = ServerProcess(
        tmp_path / "data", tiny_en_model,
        env={"WHISPERD_FAULT_OOM_LOADS": "1000", "GPU_POLL_INTERVAL_SECS": "3600", "MAX_AUDIO_SECS": "0"},
    ).start()
    try:
        warm = submit(server, jfk_bytes)  # the upload path's imports and buffers, once
        server.jobs.Cancel(pb.CancelJobRequest(id=warm.id))
        before = server.rss_bytes(peak=True)
        size = 500 * 1000 * 1000
        started = time.monotonic()
        job = server.jobs.Submit(submit_requests(_wav_stream(size), pb.JobOptions(filename="big.wav")), timeout=600)
        elapsed = time.monotonic() - started
        growth = server.rss_bytes(peak=True) - before
        print(f"\n500 MB upload in {elapsed:.1f} s ({size / elapsed / 1e6:.0f} MB/s); server peak RSS grew {growth / 2**20:.1f} MiB")
        assert job.status == pb.JOB_STATUS_QUEUED
        assert job.duration_secs == pytest.approx((size - 44) / 32000, rel=1e-3)
        assert growth < 64 * 2**20, growth
        spooled = [f.stat().st_size for f in (server.data_dir / "uploads").iterdir()]
        assert spooled == [size]  # every byte reached the disk
        server.jobs.Cancel(pb.CancelJobRequest(id=job.id))
        time.sleep(0.3)
        assert not list((server.data_dir / "uploads").iterdir())
    finally:
        server.stop()


def test_grpcurl_lists_describes_and_calls_with_no_proto_file(server: ServerProcess) -> None:
    import subprocess

    grpcurl = Path(".cache/gobin/grpcurl").resolve()
    assert grpcurl.exists(), "grpcurl is missing: `make setup` builds it into .cache/gobin"
    target = f"127.0.0.1:{server.port}"

    def run(*args: str) -> str:
        done = subprocess.run([str(grpcurl), "-plaintext", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "whisperd.v1.Transcription" in run(target, "list")
    described = run(target, "describe", "whisperd.v1.Transcription.Cancel")
    assert "rpc Cancel" in described and "stops within a second" in described  # the proto's comment
    status = run(target, "whisperd.v1.ModelControl/Status")
    assert '"model": "ggml-tiny.en.bin"' in status


def test_draining_server_is_not_serving_and_refuses_new_jobs(
    tiny_en_model: Path, tmp_path: Path, long_wav: Path, jfk_bytes: bytes
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"SHUTDOWN_GRACE_SECS": "60"}).start()
    try:
        running = server.jobs.Submit(submit_requests(long_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        stream = server.jobs.StreamProgress(pb.StreamProgressRequest(id=running.id), timeout=120)
        for event in stream:
            if event.HasField("progress") and event.progress.percent > 0:
                break
        server.signal(signal.SIGTERM)  # the running job may take its grace period
        health = health_pb2_grpc.HealthStub(server.channel)
        deadline = time.monotonic() + 10
        while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health never turned NOT_SERVING"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as err:
            submit(server, jfk_bytes)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.value.details()
        # The server still answers for the jobs it holds; cancelling lets it stop now.
        server.jobs.Cancel(pb.CancelJobRequest(id=running.id))
        assert server.wait(30) == 0
    finally:
        server.stop()


def test_the_same_audio_gives_the_same_transcript_whatever_ran_before(
    server: ServerProcess, jfk_bytes: bytes, long_wav: Path
) -> None:
    """whisper.cpp's results on a reused decoding state depend on its history; each job
    must get the answer a fresh state (and whisper-cli) gives."""
    texts = []
    for data in (jfk_bytes, long_wav.read_bytes(), jfk_bytes, jfk_bytes):
        beam = 5 if data is jfk_bytes else 1  # 5 is the default; the long one only stirs
        done = wait_for_status(server, submit(server, data, beam_size=beam).id, TERMINAL, timeout=180)
        if data is jfk_bytes:
            texts.append([(s.start, s.end, s.text) for s in done.segments])
    assert texts[0] == texts[1] == texts[2]


def test_two_jobs_share_the_batch(tiny_en_model: Path, tmp_path: Path, jfk_bytes: bytes) -> None:
    """Two jobs admitted at once (greedy and beam 5) decode in shared batched steps and both
    get the sentence."""
    server = ServerProcess(tmp_path, tiny_en_model, env={"PARALLEL_JOBS": "2", "BATCH_SIZE": "2"}).start()
    try:
        ids = [submit(server, jfk_bytes, beam_size=beam).id for beam in (1, 5)]
        for job_id in ids:
            done = wait_for_status(server, job_id, TERMINAL, timeout=180)
            assert done.status == pb.JOB_STATUS_DONE, done.error
            assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
    finally:
        server.stop()
