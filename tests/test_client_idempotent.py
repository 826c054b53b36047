"""The client library makes Submit idempotent: each submit() sends a request_id and reuses
it on retries, so an upload whose answer was lost is retried without a second job.

The lost answer is the one fault injected: a fake server that creates the job and then
drops the call (as a server killed just after its insert would); the real server's half,
that a repeated request_id returns the first job, is in test_edges_input.py and the
kill -9 test."""
from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from whisperd.client import RetryPolicy, WhisperdClient
from whisperd.client.connection import ServerUnreachable
from whisperd.client.types import JobOptions
from whisperd.v1 import transcription_pb2 as pb
from whisperd.v1 import transcription_pb2_grpc as pb_grpc


class LosesFirstAnswer(pb_grpc.TranscriptionServicer):
    """Keeps jobs by request_id like whisperd; the first Submit's answer never arrives."""

    def __init__(self) -> None:
        self.jobs: dict[str, pb.Job] = {}
        self.request_ids: list[str] = []

    def Submit(self, request_iterator: Iterator[pb.SubmitRequest], context: grpc.ServicerContext) -> pb.Job:
        options = next(request_iterator).options
        b"".join(r.chunk for r in request_iterator)
        self.request_ids.append(options.request_id)
        job = self.jobs.get(options.request_id) if options.request_id else None
        if job is None:
            job = pb.Job(id=f"job-{len(self.request_ids)}", status=pb.JOB_STATUS_QUEUED, options=options)
            if options.request_id:
                self.jobs[options.request_id] = job
        if len(self.request_ids) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")  # job made, answer lost
        return job


@pytest.fixture
def lossy() -> Iterator[tuple[LosesFirstAnswer, str]]:
    jobs = LosesFirstAnswer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_TranscriptionServicer_to_server(jobs, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield jobs, f"127.0.0.1:{port}"
    server.stop(0)


def test_a_retried_submit_gets_the_job_the_lost_attempt_made(lossy: tuple[LosesFirstAnswer, str], jfk_wav: Path) -> None:
    jobs, address = lossy
    with WhisperdClient(address, retry=RetryPolicy(initial_backoff=0.05)) as client:
        job = client.submit(jfk_wav)
    assert len(jobs.request_ids) == 2 and jobs.request_ids[0] == jobs.request_ids[1] != ""
    assert job.id == "job-1" and len(jobs.jobs) == 1  # one job, the first one


def test_a_caller_s_own_request_id_is_sent_and_distinct_calls_get_distinct_ids(
    lossy: tuple[LosesFirstAnswer, str], jfk_wav: Path
) -> None:
    jobs, address = lossy
    with WhisperdClient(address, retry=RetryPolicy(initial_backoff=0.05)) as client:
        client.submit(jfk_wav, JobOptions(request_id="mine-1"))
        client.submit(jfk_wav)
    assert jobs.request_ids[:2] == ["mine-1", "mine-1"]
    assert jobs.request_ids[2] not in ("", "mine-1")


def test_without_retries_the_lost_answer_is_an_error_not_a_silent_second_job(
    lossy: tuple[LosesFirstAnswer, str], jfk_wav: Path
) -> None:
    jobs, address = lossy
    with WhisperdClient(address, retry=RetryPolicy(max_attempts=1, connect_attempts=1)) as client:
        with pytest.raises(ServerUnreachable):
            client.submit(jfk_wav)
    assert len(jobs.jobs) == 1


def test_whisperctl_submit_with_a_request_id_returns_the_same_job_twice(tiny_en_model: Path, jfk_wav: Path, tmp_path: Path) -> None:
    """A script that re-runs `whisperctl submit --request-id K` after a failure gets the
    first run's job: the real server keeps the key."""
    import subprocess
    import sys

    from server_process import ServerProcess

    server = ServerProcess(tmp_path / "data", tiny_en_model).start()
    try:
        ids = [
            subprocess.run(
                [sys.executable, "-m", "whisperd.client.cli", "--server", f"127.0.0.1:{server.port}",
                 "submit", str(jfk_wav), "--beam-size", "1", "--request-id", "nightly-batch-17"],
                capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL,
            ).stdout.strip()
            for _ in range(2)
        ]
        assert ids[0] and ids[0] == ids[1]
        assert len(server.jobs.List(pb.ListJobsRequest(without_segments=True)).jobs) == 1
    finally:
        server.stop()
