"""Nothing stalls, nothing is left behind: a full disk during a job, kill -9 at every
phase, leftovers of a crash at start-up, SIGTERM with open streams. Real server
processes on the real tiny.en model."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd.audio import decode_audio, write_wav
from whisperd.server.jobs.model import JobOptions, JobStatus
from whisperd.server.jobs.store import JobStore
from whisperd.transcript import Segment
from whisperd.v1 import transcription_pb2 as pb

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


def health(server: ServerProcess) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def wait_health(server: ServerProcess, status: int, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while health(server) != status:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"health never became {status}:\n{server.log()}")
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: DATA_DIR on it can really fill up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Write until the file system refuses another byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_during_a_job_then_space_again(
    small_disk: Path, tiny_en_model: Path, jfk_wav: Path, tmp_path: Path
) -> None:
    long = write_wav(tmp_path / "jfk_x6.wav", np.tile(decode_audio(jfk_wav), 6)).read_bytes()
    server = ServerProcess(small_disk / "data", tiny_en_model).start()
    try:
        first = server.jobs.Submit(submit_requests(long, pb.JobOptions(beam_size=1)))
        wait_for_status(server, first.id, {pb.JOB_STATUS_RUNNING})
        filler = fill(small_disk)
        wait_health(server, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as err:
            server.jobs.Submit(submit_requests(jfk_wav.read_bytes()), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "disk is full" in err.value.details()
        time.sleep(3)  # the running job meets the full disk (its progress writes fail)
        filler.unlink()
        resumed = wait_health(server, health_pb2.HealthCheckResponse.SERVING)
        assert resumed < 5
        # The job is not stuck: it ends (done; requeued first if its writes failed).
        done = wait_for_status(server, first.id, TERMINAL, timeout=300)
        assert done.status == pb.JOB_STATUS_DONE, done.error
        assert normalise(" ".join(s.text for s in done.segments)).startswith(normalise(EXPECTED_JFK))
        # And the workers still take new jobs, with no restart.
        second = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        assert wait_for_status(server, second.id, TERMINAL).status == pb.JOB_STATUS_DONE
        log = "\n".join(server.log_lines)
        assert "Exception in thread" not in log and "Traceback" not in log, server.log()
        assert "storage not writable" in log and "storage writable again" in log
    finally:
        server.stop()


def test_start_up_removes_orphans_and_the_audio_of_jobs_failed_by_recovery(
    tiny_en_model: Path, jfk_wav: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    uploads = data / "uploads"
    uploads.mkdir(parents=True)
    orphan = uploads / "0123456789abcdef.wav"  # renamed into place, then the crash
    orphan.write_bytes(jfk_wav.read_bytes())
    given_up = uploads / "given-up.wav"
    given_up.write_bytes(jfk_wav.read_bytes())
    waiting = uploads / "waiting.wav"
    waiting.write_bytes(jfk_wav.read_bytes())
    with JobStore(data / "whisperd.db") as store:
        crashed = store.create(JobOptions(beam_size=1), str(given_up), 11.0)
        for _ in range(3):  # started three times, each attempt killed part-way
            store.recover_interrupted(max_attempts=99)
            store.claim_next("ggml-tiny.en.bin")
            store.add_segments(crashed.id, [Segment(0, 0.0, 2.0, "And so my", 0.1)])
        queued = store.create(JobOptions(beam_size=1), str(waiting), 11.0)
    server = ServerProcess(data, tiny_en_model).start()
    try:
        failed = server.jobs.Get(pb.GetJobRequest(id=crashed.id))
        assert failed.status == pb.JOB_STATUS_FAILED and "interrupted 3 times" in failed.error
        assert list(failed.segments) == []  # the last attempt's partial transcript is gone
        assert not orphan.exists() and not given_up.exists()
        done = wait_for_status(server, queued.id, TERMINAL)
        assert done.status == pb.JOB_STATUS_DONE
        assert not list(uploads.iterdir())
    finally:
        server.stop()


def test_sigterm_with_open_progress_streams_logs_no_error(tiny_en_model: Path, jfk_wav: Path, tmp_path: Path) -> None:
    long = write_wav(tmp_path / "jfk_x6.wav", np.tile(decode_audio(jfk_wav), 6)).read_bytes()
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"SHUTDOWN_GRACE_SECS": "0"}).start()
    job = server.jobs.Submit(submit_requests(long, pb.JobOptions(beam_size=1)))
    wait_for_status(server, job.id, {pb.JOB_STATUS_RUNNING})
    ended: list[str] = []

    def follow() -> None:
        try:
            for _ in server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=60):
                pass
            ended.append("end")
        except grpc.RpcError as exc:
            ended.append(exc.code().name)

    watchers = [threading.Thread(target=follow) for _ in range(3)]
    for w in watchers:
        w.start()
    time.sleep(1.0)
    server.signal(signal.SIGTERM)
    assert server.wait(60) == 0
    for w in watchers:
        w.join(10)
    assert len(ended) == 3, ended
    bad = [line for line in server.log_lines if " ERROR " in line or "Traceback" in line or "CancelledError" in line]
    assert not bad, "\n".join(server.log_lines[-60:])


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as raw:
        return str(raw.execute("PRAGMA integrity_check").fetchone()[0])


def test_kill_9_at_every_phase_loses_and_duplicates_nothing(
    tiny_en_model: Path, jfk_wav: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    audio = jfk_wav.read_bytes()
    acknowledged: dict[str, str] = {}  # request_id -> job id
    server = ServerProcess(data, tiny_en_model)

    def submit(key: str, chunks: Iterator[bytes] | bytes = audio) -> None:
        job = server.jobs.Submit(submit_requests(chunks, pb.JobOptions(beam_size=1, request_id=key)), timeout=60)
        acknowledged[key] = job.id

    def slow_chunks() -> Iterator[bytes]:
        for i in range(0, len(audio), 16384):
            time.sleep(0.05)
            yield audio[i : i + 16384]

    for round_ in range(2):
        # 1. during an upload (never acknowledged: must leave no job and no file)
        server.start()
        t = threading.Thread(target=lambda: _ignore(lambda: submit(f"upload-{round_}", slow_chunks())))
        t.start()
        time.sleep(0.4)
        server.proc.kill()  # type: ignore[union-attr]
        server.wait()
        t.join(30)
        # 2. just after Submit answered, 3. during transcription
        server.start()
        submit(f"after-submit-{round_}")
        server.proc.kill()  # type: ignore[union-attr]
        server.wait()
        server.start()
        submit(f"running-{round_}")
        wait_for_status(server, acknowledged[f"running-{round_}"], {pb.JOB_STATUS_RUNNING, *TERMINAL})
        server.proc.kill()  # type: ignore[union-attr]
        server.wait()
        # 4. during start-up (before it listens)
        server.start()
        server.stop()
        proc = subprocess.Popen(server.proc.args, env={**os.environ, "IDLE_TIMEOUT_SECS": "0"},  # type: ignore[union-attr]
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
    server.start()
    try:
        # A client retrying with the same request_id gets the same job, never a second one.
        for key in list(acknowledged):
            submit(key)
        for key, job_id in acknowledged.items():
            job = wait_for_status(server, job_id, TERMINAL, timeout=180)
            assert job.status == pb.JOB_STATUS_DONE or job.error, (key, pb.JobStatus.Name(job.status))
        jobs = server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs
        keys = [j.options.request_id for j in jobs]
        assert sorted(keys) == sorted(set(keys)), keys  # no duplicates
        assert set(acknowledged) <= set(keys)  # none lost
        time.sleep(0.5)
        assert not list((data / "uploads").iterdir())  # no orphan files
    finally:
        server.stop()
    assert integrity(data / "whisperd.db") == "ok"


def _ignore(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError:
        pass
