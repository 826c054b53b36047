"""whisperd.client and whisperctl against a real server (subprocess, free port) with the
real tiny.en model and real speech; plus a small in-process fake server for the faults a
real one will not produce on demand (RetryInfo twice then success, bearer metadata, TLS).

The CLI runs as `python -m whisperd.client.cli` in a subprocess, as a user runs it:
stdout and stderr are pipes, so the non-terminal paths are the ones tested (and one test
drives it through a pseudo-terminal for the Ctrl-C prompt).
"""
from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
import srt
import webvtt
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess
from whisperd import formats
from whisperd.audio import decode_audio, write_wav
from whisperd.client import (
    CHUNK_BYTES,
    NO_RETRY,
    AsyncWhisperdClient,
    Done,
    HealthStatus,
    JobStatus,
    ModelState,
    NewSegment,
    RetryEvent,
    RetryPolicy,
    ServerUnreachable,
    Snapshot,
    Unavailable,
    WhisperdClient,
)
from whisperd.v1 import transcription_pb2 as pb
from whisperd.v1 import transcription_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)

SEGMENT_LINE = re.compile(r"^\[(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\]  (.+)$")


# --- fixtures and helpers ---------------------------------------------------------------


# One decoding thread: these tests check the client, not the engine's speed, and on a
# busy shared CI host ggml's spinning worker threads make a 2-thread job up to 10x slower.
SERVER_ENV = {"THREADS": "1"}


@pytest.fixture(scope="module")
def server(tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("data"), tiny_en_model, env=SERVER_ENV).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def address(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture()
def client(address: str) -> Iterator[WhisperdClient]:
    with WhisperdClient(address) as c:
        yield c


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def long_wav(jfk_wav: Path, audio_dir: Path) -> Path:
    """330 s of speech: still running when the tests cancel it."""
    return write_wav(audio_dir / "jfk_x30.wav", np.tile(decode_audio(jfk_wav), 30))


def whisperctl(address: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "whisperd.client.cli", "--server", address, *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def segment_lines(text: str) -> list[str]:
    return [m.group(3) for line in text.splitlines() if (m := SEGMENT_LINE.match(line))]


# --- whisperctl against the real server -------------------------------------------------


def test_transcribe_prints_srt_whose_cues_cover_the_speech(address: str, jfk_wav: Path) -> None:
    run = whisperctl(address, "transcribe", str(jfk_wav), "--format", "srt", "--beam-size", "1")
    assert run.returncode == 0, run.stderr
    cues = list(srt.parse(run.stdout))
    assert cues, run.stdout
    assert normalise(" ".join(c.content for c in cues)) == normalise(EXPECTED_JFK)
    # The speech runs from about 0.3 s to 10.6 s of the 11 s clip.
    assert cues[0].start.total_seconds() <= 0.5
    assert cues[-1].end.total_seconds() >= 10.0
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))
    # stderr: the upload bar with bytes and rate, then the job's bar at 100 %.
    assert "uploading jfk.wav" in run.stderr and "352.1/352.1 kB" in run.stderr and "/s" in run.stderr
    assert re.search(r"100% done", run.stderr), run.stderr


def test_json_output_of_submit_get_and_list_parses(address: str, jfk_wav: Path) -> None:
    run = whisperctl(address, "--json", "submit", str(jfk_wav), "--beam-size", "1", "--wait")
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "JOB_STATUS_DONE" and job["options"]["filename"] == "jfk.wav"
    assert normalise(" ".join(s["text"] for s in job["segments"])) == normalise(EXPECTED_JFK)

    got = whisperctl(address, "get", job["id"], "--json")  # --json after the command works too
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["segments"] == job["segments"]

    listed = whisperctl(address, "--json", "list", "--status", "done")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)["jobs"]
    assert job["id"] in [j["id"] for j in jobs]
    assert {j["status"] for j in jobs} == {"JOB_STATUS_DONE"}

    # Without --json: submit prints the bare id (for $(...)), list a readable table.
    plain = whisperctl(address, "submit", str(jfk_wav), "--beam-size", "1")
    assert plain.returncode == 0, plain.stderr
    new_id = plain.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", new_id), plain.stdout
    table = whisperctl(address, "list", "--limit", "5")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PROGRESS", "AUDIO", "LANG", "CREATED", "FILE"]
    assert any(row.startswith(new_id) for row in rows) and any(row.startswith(job["id"]) for row in rows)
    with WhisperdClient(address) as client:
        assert client.cancel(new_id).status == JobStatus.CANCELLED  # frees the worker


def test_watch_shows_progress_to_100_and_each_segment_once(
    address: str, client: WhisperdClient, jfk_wav: Path
) -> None:
    job = client.submit(jfk_wav, beam_size=1)
    run = whisperctl(address, "watch", job.id)
    assert run.returncode == 0, run.stderr
    done = client.get(job.id)
    assert done.status == JobStatus.DONE
    # Segments on stdout as they arrived, each once, in order.
    assert segment_lines(run.stdout) == [s.text.strip() for s in done.segments]
    assert normalise(" ".join(segment_lines(run.stdout))) == normalise(EXPECTED_JFK)
    # Not a terminal: a line at every 10 % step reached, and the bar's final state.
    percents = [int(p) for p in re.findall(r"jfk\.wav: (\d+)% ", run.stderr)]
    assert percents == sorted(percents) and percents[-1] == 100, run.stderr
    assert re.search(r"jfk\.wav\s+━+\s+100% done", run.stderr), run.stderr
    assert f"job {job.id} done" in run.stderr

    # --json: one JobEvent per line, snapshot first and done last.
    events = [json.loads(line) for line in whisperctl(address, "watch", "--json", job.id).stdout.splitlines()]
    assert list(events[0]) == ["snapshot"] and list(events[-1]) == ["done"]
    assert events[-1]["done"]["progress"] == 100


def test_cancel_from_the_cli(address: str, client: WhisperdClient, long_wav: Path) -> None:
    job = client.submit(long_wav, beam_size=1)
    try:
        run = whisperctl(address, "cancel", job.id)
        assert run.returncode == 0, run.stderr
        assert run.stderr.strip() == f"job {job.id} cancelled"
        assert client.get(job.id).status == JobStatus.CANCELLED
        # Again: FAILED_PRECONDITION (9) -> 64 + 9, one line.
        again = whisperctl(address, "cancel", job.id)
        assert again.returncode == 73
        assert again.stderr.count("\n") == 1 and "FAILED_PRECONDITION" in again.stderr
        # Watching a cancelled job ends at once with the "cancelled" exit code.
        assert whisperctl(address, "watch", job.id).returncode == 4
    finally:
        if not client.get(job.id).terminal:
            client.cancel(job.id)


@pytest.fixture
def ctrl_c_reaches_children() -> Iterator[None]:
    """Children start with Ctrl-C as a terminal's shell gives it: a run in a background
    job (SIGINT ignored) would pass SIG_IGN on, and Python then never raises
    KeyboardInterrupt in the client. A handler here resets to the default in a child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_reaches_children")
def test_ctrl_c_without_a_terminal_leaves_the_job_running(
    address: str, client: WhisperdClient, long_wav: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisperd.client.cli", "--server", address, "transcribe", str(long_wav), "--beam-size", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    job_id = None
    try:
        assert proc.stderr is not None
        seen = ""
        while (m := re.search(r"job (\S+) queued", seen)) is None:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        job_id = m.group(1)
        time.sleep(0.3)  # following now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, seen + err
        assert f"job {job_id} keeps running" in err and "Traceback" not in err
        assert out == ""
        assert client.get(job_id).status in (JobStatus.QUEUED, JobStatus.RUNNING)
    finally:
        proc.kill()
        if job_id and not client.get(job_id).terminal:
            client.cancel(job_id)


@pytest.mark.usefixtures("ctrl_c_reaches_children")
def test_ctrl_c_on_a_terminal_asks_and_cancels(address: str, client: WhisperdClient, long_wav: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "whisperd.client.cli", "--server", address, "transcribe", str(long_wav), "--beam-size", "1"],
        stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(slave)
    screen = b""

    def read_until(marker: bytes, timeout: float) -> str:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while marker not in screen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))

    job_id = None
    try:
        text = read_until(b"queued", 30)
        job_id = re.search(r"job (\S+) queued", text).group(1)  # type: ignore[union-attr]
        read_until(b"running", 10)
        proc.send_signal(signal.SIGINT)
        text = read_until(b"[y/n]", 10)
        assert f"cancel job {job_id}?" in text, text
        os.write(master, b"y\n")
        assert proc.wait(20) == 130
        assert f"job {job_id} cancelled" in read_until(b"cancelled\r\n", 5)
        assert client.get(job_id).status == JobStatus.CANCELLED
    finally:
        proc.kill()
        os.close(master)
        if job_id and not client.get(job_id).terminal:
            client.cancel(job_id)


def test_a_server_that_is_down_gives_one_line_and_exit_78() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (("get", "some-id"), ("list",), ("transcribe", __file__)):
        started = time.monotonic()
        run = whisperctl(address, *args)
        assert run.returncode == 78, run.stderr
        assert run.stderr.startswith(f"error: cannot reach whisperd at {address}: "), run.stderr
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
        assert "Connection refused" in run.stderr
        assert time.monotonic() - started < 10
    # --json: the error as JSON, same exit code.
    run = whisperctl(address, "--json", "health")
    assert run.returncode == 78
    assert json.loads(run.stderr)["error"]["code"] == "UNAVAILABLE"


def test_errors_from_the_server_map_to_exit_codes(address: str, tmp_path: Path) -> None:
    missing = whisperctl(address, "get", "no-such-job")
    assert missing.returncode == 69  # NOT_FOUND (5)
    assert missing.stderr.count("\n") == 1 and "no-such-job" in missing.stderr
    garbage = tmp_path / "noise.mp3"
    garbage.write_bytes(np.random.default_rng(1).bytes(50_000))
    bad = whisperctl(address, "submit", str(garbage))
    assert bad.returncode == 67, bad.stderr  # INVALID_ARGUMENT (3)
    assert whisperctl(address, "transcribe", str(tmp_path / "absent.wav")).returncode == 2  # usage
    assert whisperctl(address, "transcript", "x", "--format", "docx").returncode == 2


def test_health_and_model_commands(address: str) -> None:
    run = whisperctl(address, "health")
    assert run.returncode == 0, run.stderr
    assert "SERVING" in run.stdout and "ggml-tiny.en.bin" in run.stdout
    status = whisperctl(address, "model", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["model"] == "ggml-tiny.en.bin"
    loaded = whisperctl(address, "--json", "model", "load", "--wait")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["state"] == "MODEL_STATE_READY"
    # One GPU's model (--gpu) on a server without GPUs: refused, and the model stays.
    one = whisperctl(address, "model", "unload", "--gpu", "1")
    assert one.returncode == 67, one.stderr  # INVALID_ARGUMENT (3)
    assert "cannot unload GPU 1: this server runs on the CPU" in one.stderr
    assert json.loads(whisperctl(address, "model", "status", "--json").stdout)["state"] == "MODEL_STATE_READY"


# --- the library ------------------------------------------------------------------------


class ReadRecorder(io.RawIOBase):
    """A seekable binary file that records the size of every read."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)
        self.reads: list[int] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return self._buffer.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._buffer.seek(offset, whence)

    def tell(self) -> int:
        return self._buffer.tell()


@pytest.fixture(scope="module")
def async_run(address: str, jfk_wav: Path) -> dict[str, Any]:
    """One job through the asyncio client: submitted from a file object (word timestamps
    on), its events streamed to the end; plus health and model state."""

    async def scenario() -> dict[str, Any]:
        async with AsyncWhisperdClient(address) as client:
            source = ReadRecorder(jfk_wav.read_bytes())
            sent: list[tuple[int, int | None]] = []
            job = await client.submit(
                source, beam_size=1, word_timestamps=True, on_upload_progress=lambda *a: sent.append(a)
            )
            events = [event async for event in client.stream_progress(job.id, timeout=90)]
            return {
                "job": job, "events": events, "reads": source.reads, "sent": sent,
                "health": await client.health(), "state": (await client.model_status()).state,
            }

    return asyncio.run(scenario())


def test_async_client_submits_and_streams(async_run: dict[str, Any], jfk_wav: Path) -> None:
    size = jfk_wav.stat().st_size
    assert async_run["job"].status == JobStatus.QUEUED
    # Streamed in 64 KiB chunks, never read whole; progress reported as it went.
    assert max(async_run["reads"]) == CHUNK_BYTES and len(async_run["reads"]) >= 6
    assert async_run["sent"][-1] == (size, size) and len(async_run["sent"]) >= 6
    events = async_run["events"]
    assert isinstance(events[0], Snapshot) and isinstance(events[-1], Done)
    final = events[-1].job
    assert final.status == JobStatus.DONE and final.progress == 100
    assert normalise(final.text) == normalise(EXPECTED_JFK)
    streamed = [e.segment.text for e in events if isinstance(e, NewSegment)]
    already = [s.text for s in events[0].job.segments]
    assert already + streamed == [s.text for s in final.segments]
    assert async_run["health"] == HealthStatus.SERVING and async_run["state"] == ModelState.READY


def test_client_renders_the_same_bytes_as_get_transcript(
    address: str, client: WhisperdClient, async_run: dict[str, Any]
) -> None:
    job_id = async_run["job"].id
    done = client.get(job_id)
    assert done.status == JobStatus.DONE and all(s.words for s in done.segments)
    for fmt in formats.FORMATS:
        assert done.render(fmt) == client.transcript(job_id, fmt), fmt
    # The job from the stream's last event renders the same too.
    assert async_run["events"][-1].job.render("json") == client.transcript(job_id, "json")
    # ...and through the CLI: `transcript` prints the server's bytes exactly.
    run = whisperctl(address, "transcript", job_id, "--format", "vtt")
    assert run.returncode == 0 and run.stdout == done.render("vtt")
    captions = webvtt.from_string(run.stdout).captions
    assert normalise(" ".join(c.text for c in captions)) == normalise(EXPECTED_JFK)
    assert json.loads(done.render("json"))["segments"][0]["words"]


def test_strict_admission_is_retried_as_retry_info_says(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    """ADMISSION=strict: Submit is UNAVAILABLE + RetryInfo(1 s) until the model is ready."""
    env = {**SERVER_ENV, "ADMISSION": "strict", "RETRY_AFTER_SECS": "1"}
    strict = ServerProcess(tmp_path / "data", tiny_en_model, env=env).start()
    address = f"127.0.0.1:{strict.port}"
    try:
        with WhisperdClient(address) as client:
            # The model starts unloaded. Without retries the caller gets the server's
            # answer, RetryInfo included (and the refused Submit starts the load).
            with pytest.raises(Unavailable) as refused:
                WhisperdClient(address, retry=NO_RETRY).submit(jfk_wav)
            assert not isinstance(refused.value, ServerUnreachable)
            assert refused.value.retry_after == 1.0 and refused.value.exit_code == 78

            # With retries: refused while the model loads, waits 1 s each time, then in.
            retries: list[RetryEvent] = []
            started = time.monotonic()
            job = WhisperdClient(address, retry=RetryPolicy(on_retry=retries.append)).submit(jfk_wav, beam_size=1)
            assert time.monotonic() - started >= 1.0
            assert retries and all(r.delay == 1.0 and isinstance(r.error, Unavailable) for r in retries)
            assert job.status == JobStatus.QUEUED and job.duration_secs == pytest.approx(11.0, abs=0.1)
            client.cancel(job.id)

            # The CLI says what it is waiting for, and gets in.
            client.unload_model()
            run = whisperctl(address, "submit", str(jfk_wav), "--beam-size", "1")
            assert run.returncode == 0, run.stderr
            assert "; retrying in 1.0 s (attempt 2 of 8)" in run.stderr, run.stderr
            client.cancel(run.stdout.strip())
    finally:
        strict.stop()


# --- fault injection: a fake server -----------------------------------------------------


class FakeJobs(pb_grpc.TranscriptionServicer):
    """Refuses the first `refusals` Submits with UNAVAILABLE + RetryInfo, as soon as the
    options arrive (as the real strict admission does); then takes the upload."""

    def __init__(self, refusals: int = 0, retry_delay: float = 0.3) -> None:
        self.refusals = refusals
        self.retry_delay = retry_delay
        self.submits: list[float] = []
        self.received: list[bytes] = []
        self.metadata: dict[str, dict[str, str]] = {}

    def _remember(self, name: str, context: grpc.ServicerContext) -> None:
        self.metadata[name] = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}

    def Submit(self, request_iterator: Iterator[pb.SubmitRequest], context: grpc.ServicerContext) -> pb.Job:
        self._remember("Submit", context)
        self.submits.append(time.monotonic())
        first = next(request_iterator)
        if len(self.submits) <= self.refusals:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(datetime.timedelta(seconds=self.retry_delay))
            detail = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="the model is loading")
            detail.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            context.abort_with_status(rpc_status.to_status(detail))
        self.received.append(b"".join(r.chunk for r in request_iterator))
        return pb.Job(id="fake-job", status=pb.JOB_STATUS_QUEUED, options=first.options)

    def Get(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        self._remember("Get", context)
        return pb.Job(id=request.id, status=pb.JOB_STATUS_DONE, progress=100)

    def StreamProgress(self, request: pb.StreamProgressRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        self._remember("StreamProgress", context)
        job = pb.Job(id=request.id, status=pb.JOB_STATUS_DONE, progress=100)
        yield pb.JobEvent(snapshot=job)
        yield pb.JobEvent(done=job)


class FakeServer:
    def __init__(self, jobs: FakeJobs, credentials: grpc.ServerCredentials | None = None) -> None:
        self.jobs = jobs
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_TranscriptionServicer_to_server(jobs, self.server)
        where = "localhost:0" if credentials else "127.0.0.1:0"
        if credentials:
            self.port = self.server.add_secure_port(where, credentials)
        else:
            self.port = self.server.add_insecure_port(where)
        self.server.start()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def test_retry_info_is_honoured_and_a_seekable_upload_resent_from_its_start() -> None:
    payload = np.random.default_rng(3).bytes(5 * CHUNK_BYTES + 123)
    source = ReadRecorder(b"HEADER-NOT-SENT" + payload)
    source.seek(len(b"HEADER-NOT-SENT"))  # a file object is sent from where it stands
    retries: list[RetryEvent] = []
    with FakeServer(FakeJobs(refusals=2, retry_delay=0.3)) as fake:
        with WhisperdClient(f"127.0.0.1:{fake.port}", retry=RetryPolicy(on_retry=retries.append)) as client:
            job = client.submit(source)
    assert job.id == "fake-job"
    assert len(fake.jobs.submits) == 3 and fake.jobs.received == [payload]
    gaps = np.diff(fake.jobs.submits)
    assert all(gap >= 0.3 for gap in gaps), gaps
    assert [(r.attempt, r.delay, r.max_attempts) for r in retries] == [(1, 0.3, 8), (2, 0.3, 8)]
    assert set(source.reads) == {CHUNK_BYTES}  # chunk by chunk, never the whole file


def test_an_upload_that_cannot_be_reread_is_not_retried() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"x" * 1000)
    os.close(write_end)
    with FakeServer(FakeJobs(refusals=1)) as fake, os.fdopen(read_end, "rb", buffering=0) as pipe:
        with WhisperdClient(f"127.0.0.1:{fake.port}") as client, pytest.raises(Unavailable) as err:
            client.submit(pipe)
    assert len(fake.jobs.submits) == 1
    assert err.value.retry_after == pytest.approx(0.3)


def test_a_retry_delay_beyond_max_delay_goes_to_the_caller() -> None:
    with FakeServer(FakeJobs(refusals=1, retry_delay=120)) as fake:
        with WhisperdClient(f"127.0.0.1:{fake.port}") as client, pytest.raises(Unavailable) as err:
            client.submit(io.BytesIO(b"audio"))
    assert err.value.retry_after == 120 and len(fake.jobs.submits) == 1


def test_the_bearer_token_goes_with_every_kind_of_call() -> None:
    with FakeServer(FakeJobs()) as fake:
        address = f"127.0.0.1:{fake.port}"
        with WhisperdClient(address, token="s3cret") as client:
            client.submit(io.BytesIO(b"audio"))  # client-streaming
            client.get("a")  # unary
            list(client.stream_progress("a"))  # server-streaming
        assert {m: md.get("authorization") for m, md in fake.jobs.metadata.items()} == {
            "Submit": "Bearer s3cret", "Get": "Bearer s3cret", "StreamProgress": "Bearer s3cret"
        }
        fake.jobs.metadata.clear()

        async def aio() -> None:
            async with AsyncWhisperdClient(address, token="aio-token") as client:
                await client.submit(io.BytesIO(b"audio"))
                await client.get("b")
                assert [type(e) async for e in client.stream_progress("b")] == [Snapshot, Done]

        asyncio.run(aio())
        assert {m: md.get("authorization") for m, md in fake.jobs.metadata.items()} == {
            "Submit": "Bearer aio-token", "Get": "Bearer aio-token", "StreamProgress": "Bearer aio-token"
        }


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    with FakeServer(FakeJobs(), credentials) as fake:
        address = f"localhost:{fake.port}"
        with WhisperdClient(address, ca_file=cert, token="t") as client:
            assert client.get("tls-job").status == JobStatus.DONE
        assert fake.jobs.metadata["Get"]["authorization"] == "Bearer t"
        run = whisperctl(address, "--ca", str(cert), "--json", "get", "tls-job")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["id"] == "tls-job"
        # Plaintext to a TLS port: no answer, one line.
        run = whisperctl(address, "get", "tls-job")
        assert run.returncode == 78 and run.stderr.startswith(f"error: cannot reach whisperd at {address}")
