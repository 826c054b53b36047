"""Nothing stalls: Cancel while the audio is still being decoded, Unload while a load is
in flight, and the bearer scheme in any letter case. Real server, real tiny.en."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import grpc
import numpy as np
import pytest

from server_process import ServerProcess, submit_requests
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as pb


@pytest.fixture(scope="module")
def hour_of_silence(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One hour of FLAC silence: 656 KB that take seconds to decode."""
    path = tmp_path_factory.mktemp("audio") / "silence.flac"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=16000)
        stream.layout = "mono"
        minute = np.zeros((1, 16000 * 60), dtype=np.int16)
        for _ in range(60):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path.read_bytes()


@pytest.fixture(scope="module")
def server(tiny_en_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One job at a time, so that the next job starting shows the cancelled one let go.
    env = {"AUTH_TOKEN": "s3cret", "PARALLEL_JOBS": "1"}
    proc = ServerProcess(tmp_path_factory.mktemp("data"), tiny_en_model, env=env).start()
    yield proc
    proc.stop()


AUTH = (("authorization", "Bearer s3cret"),)


def state(server: ServerProcess) -> str:
    return mpb.ModelState.Name(server.model.Status(mpb.ModelStatusRequest(), metadata=AUTH).state)


def test_the_bearer_scheme_is_case_insensitive(server: ServerProcess) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        server.model.Status(mpb.ModelStatusRequest(), metadata=(("authorization", f"{scheme} s3cret"),))
    for wrong in ("bearer wrong", "Basic s3cret", "s3cret", "bearers3cret"):
        with pytest.raises(grpc.RpcError) as err:
            server.model.Status(mpb.ModelStatusRequest(), metadata=(("authorization", wrong),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, wrong


def test_unload_during_a_load_answers_at_once_and_unloads_when_it_ends(server: ServerProcess) -> None:
    server.model.Unload(mpb.UnloadModelRequest(), metadata=AUTH, timeout=60)
    server.model.Load(mpb.LoadModelRequest(), metadata=AUTH)
    assert state(server) == "MODEL_STATE_LOADING"  # the load and its warm-up take seconds here
    started = time.monotonic()
    server.model.Unload(mpb.UnloadModelRequest(), metadata=AUTH, timeout=60)
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 30
    while state(server) != "MODEL_STATE_UNLOADED":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    time.sleep(1.0)
    assert state(server) == "MODEL_STATE_UNLOADED"  # and it stays so: the load was abandoned


def test_cancel_while_decoding_frees_the_worker_within_a_second(server: ServerProcess, hour_of_silence: bytes, jfk_wav: Path) -> None:
    job = server.jobs.Submit(submit_requests(hour_of_silence, pb.JobOptions(filename="silence.flac")), metadata=AUTH)
    assert job.duration_secs == pytest.approx(3600, abs=1)
    wait_for_status_auth(server, job.id, {pb.JOB_STATUS_RUNNING})
    nxt = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)), metadata=AUTH)
    cancelled = time.monotonic()
    server.jobs.Cancel(pb.CancelJobRequest(id=job.id), metadata=AUTH)
    # One job at a time (PARALLEL_JOBS=1): the next job starts once the decode stops.
    wait_for_status_auth(server, nxt.id, {pb.JOB_STATUS_RUNNING, pb.JOB_STATUS_DONE}, timeout=10)
    assert time.monotonic() - cancelled < 1.5, server.log()
    assert any(f"job {job.id}: cancelled while running" in line for line in server.log_lines)


def wait_for_status_auth(server: ServerProcess, job_id: str, statuses: set[int], timeout: float = 60) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = server.jobs.Get(pb.GetJobRequest(id=job_id), metadata=AUTH)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"{pb.JobStatus.Name(job.status)}\n{server.log()}"
        time.sleep(0.05)
