"""The model lifecycle through the real server: lazy load, load/unload at any moment,
idle unload, strict admission, waiting for the GPU (injected out-of-memory), events."""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd.audio import decode_audio, write_wav
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as pb

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}
S = mpb.ModelState


class EventLog:
    """Collects WatchEvents in a background thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.events: queue.Queue[mpb.ModelEvent] = queue.Queue()
        self.seen: list[mpb.ModelEvent] = []
        self._call = server.model.WatchEvents(mpb.WatchModelEventsRequest())
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for event in self._call:
                self.events.put(event)
        except grpc.RpcError:
            pass

    def wait_for(self, state: int, timeout: float = 60.0) -> mpb.ModelEvent:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {S.Name(state)} event; saw {self.states()}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if event.state == state:
                return event

    def states(self) -> list[str]:
        return [S.Name(e.state) for e in self.seen]

    def close(self) -> None:
        self._call.cancel()


@pytest.fixture(scope="module")
def long_wav(jfk_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("audio") / "jfk_x6.wav", np.tile(decode_audio(jfk_wav), 6))


def start(tiny_en_model: Path, tmp_path: Path, **env: str) -> ServerProcess:
    return ServerProcess(tmp_path / "data", tiny_en_model, env=env).start()


def test_lazy_load_state_machine_and_events_in_order(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    server = start(tiny_en_model, tmp_path)
    try:
        assert server.model.Status(mpb.ModelStatusRequest()).state == S.Value("MODEL_STATE_UNLOADED")
        log = EventLog(server)
        first = log.wait_for(S.Value("MODEL_STATE_UNLOADED"))
        assert first.previous == S.Value("MODEL_STATE_UNSPECIFIED")
        # The first job starts the load and is accepted at once (no failed first call).
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        assert job.status == pb.JOB_STATUS_QUEUED
        log.wait_for(S.Value("MODEL_STATE_LOADING"))
        ready = log.wait_for(S.Value("MODEL_STATE_READY"))
        assert ready.previous == S.Value("MODEL_STATE_LOADING") and ready.status.loaded_at.seconds
        done = wait_for_status(server, job.id, TERMINAL)
        assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
        # Load is idempotent: no new transition when already ready.
        assert server.model.Load(mpb.LoadModelRequest()).state == S.Value("MODEL_STATE_READY")
        status = server.model.Unload(mpb.UnloadModelRequest())
        assert status.state == S.Value("MODEL_STATE_UNLOADED")
        log.wait_for(S.Value("MODEL_STATE_UNLOADING"))
        log.wait_for(S.Value("MODEL_STATE_UNLOADED"))
        assert log.states() == [
            "MODEL_STATE_UNLOADED", "MODEL_STATE_LOADING", "MODEL_STATE_READY",
            "MODEL_STATE_UNLOADING", "MODEL_STATE_UNLOADED",
        ]
        # Unload is idempotent too.
        assert server.model.Unload(mpb.UnloadModelRequest()).state == S.Value("MODEL_STATE_UNLOADED")
        log.close()
    finally:
        server.stop()


def test_idle_unload(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    server = start(tiny_en_model, tmp_path, IDLE_TIMEOUT_SECS="2")
    try:
        log = EventLog(server)
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        wait_for_status(server, job.id, TERMINAL)
        finished = time.monotonic()
        event = log.wait_for(S.Value("MODEL_STATE_UNLOADED"), timeout=15)
        while event.previous != S.Value("MODEL_STATE_UNLOADING"):
            event = log.wait_for(S.Value("MODEL_STATE_UNLOADED"), timeout=15)
        waited = time.monotonic() - finished
        assert "idle" in event.reason
        assert 1.5 <= waited <= 6.0, waited
        assert server.model.Status(mpb.ModelStatusRequest()).idle_timeout_secs == 2
        log.close()
    finally:
        server.stop()


def test_unload_during_a_job_requeues_it_and_it_completes_after_the_next_load(
    tiny_en_model: Path, tmp_path: Path, long_wav: Path
) -> None:
    server = start(tiny_en_model, tmp_path)
    try:
        job = server.jobs.Submit(submit_requests(long_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        stream = server.jobs.StreamProgress(pb.StreamProgressRequest(id=job.id), timeout=300)
        for event in stream:
            if event.HasField("progress") and event.progress.percent > 0:
                break
        asked = time.monotonic()
        assert server.model.Unload(mpb.UnloadModelRequest()).state == S.Value("MODEL_STATE_UNLOADED")
        assert time.monotonic() - asked < 3.0
        requeued = next(e for e in stream if e.WhichOneof("event") in ("requeued", "done"))
        assert requeued.HasField("requeued"), requeued
        # Never lost, and the model stays unloaded until asked.
        time.sleep(1.5)
        assert server.jobs.Get(pb.GetJobRequest(id=job.id)).status == pb.JOB_STATUS_QUEUED
        status = server.model.Status(mpb.ModelStatusRequest())
        assert status.state == S.Value("MODEL_STATE_UNLOADED") and status.queue_depth == 1
        server.model.Load(mpb.LoadModelRequest())
        done = wait_for_status(server, job.id, TERMINAL, timeout=180)
        assert done.status == pb.JOB_STATUS_DONE and done.attempts == 2
        text = normalise(" ".join(s.text for s in done.segments))
        assert text.count(normalise("ask what you can do for your country")) >= 5
    finally:
        server.stop()


def test_unload_while_waiting_for_the_gpu_and_load_right_after_unload(
    tiny_en_model: Path, tmp_path: Path
) -> None:
    server = start(tiny_en_model, tmp_path, WHISPERD_FAULT_OOM_LOADS="1", GPU_POLL_INTERVAL_SECS="30")
    try:
        log = EventLog(server)
        server.model.Load(mpb.LoadModelRequest())
        log.wait_for(S.Value("MODEL_STATE_WAITING_FOR_GPU"))
        asked = time.monotonic()
        assert server.model.Unload(mpb.UnloadModelRequest()).state == S.Value("MODEL_STATE_UNLOADED")
        assert time.monotonic() - asked < 2.0  # it did not sit out the 30 s poll interval
        # Load then Unload back to back, then Load: each is defined, the end state is ready.
        # Unload during the load answers at once; the load is abandoned when it ends.
        server.model.Load(mpb.LoadModelRequest())
        server.model.Unload(mpb.UnloadModelRequest())
        deadline = time.monotonic() + 30
        while server.model.Status(mpb.ModelStatusRequest()).state != S.Value("MODEL_STATE_UNLOADED"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        server.model.Load(mpb.LoadModelRequest())
        log.wait_for(S.Value("MODEL_STATE_READY"))
        log.close()
    finally:
        server.stop()


def test_out_of_memory_waits_for_the_gpu_then_runs_the_queued_job(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    server = start(tiny_en_model, tmp_path, WHISPERD_FAULT_OOM_LOADS="2", GPU_POLL_INTERVAL_SECS="1")
    try:
        log = EventLog(server)
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        waiting = log.wait_for(S.Value("MODEL_STATE_WAITING_FOR_GPU"))
        assert "out of GPU memory" in waiting.reason
        assert "injected fault" in server.model.Status(mpb.ModelStatusRequest()).last_error
        first_wait = time.monotonic()
        log.wait_for(S.Value("MODEL_STATE_WAITING_FOR_GPU"))
        assert 0.7 <= time.monotonic() - first_wait <= 3.0  # retried after the poll interval
        log.wait_for(S.Value("MODEL_STATE_READY"), timeout=30)
        done = wait_for_status(server, job.id, TERMINAL)
        assert done.status == pb.JOB_STATUS_DONE
        assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
        assert log.states() == [
            "MODEL_STATE_UNLOADED", "MODEL_STATE_LOADING", "MODEL_STATE_WAITING_FOR_GPU",
            "MODEL_STATE_LOADING", "MODEL_STATE_WAITING_FOR_GPU", "MODEL_STATE_LOADING",
            "MODEL_STATE_READY",
        ]
        log.close()
    finally:
        server.stop()


def test_strict_admission_answers_unavailable_with_retry_info_and_starts_the_load(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    server = start(tiny_en_model, tmp_path, ADMISSION="strict", RETRY_AFTER_SECS="3")
    try:
        call = server.jobs.Submit.with_call
        with pytest.raises(grpc.RpcError) as err:
            call(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(err.value)
        assert status is not None
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.seconds == 3
        assert ("retry-after", "3") in tuple(err.value.trailing_metadata())
        assert not server.jobs.List(pb.ListJobsRequest()).jobs  # no job was created
        # The refused call started the load; once ready the same call is accepted.
        deadline = time.monotonic() + 60
        while server.model.Status(mpb.ModelStatusRequest()).state != S.Value("MODEL_STATE_READY"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        job, _ = call(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        assert wait_for_status(server, job.id, TERMINAL).status == pb.JOB_STATUS_DONE
    finally:
        server.stop()


def test_a_model_that_cannot_load_fails_the_queued_job_with_the_reason(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    broken = tmp_path / "broken.bin"
    data = tiny_en_model.read_bytes()
    broken.write_bytes(data)
    server = ServerProcess(tmp_path / "data", broken).start()
    try:
        broken.write_bytes(data[: len(data) // 2])  # damaged after the start-up check
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1)))
        failed = wait_for_status(server, job.id, TERMINAL)
        assert failed.status == pb.JOB_STATUS_FAILED
        assert "model could not be loaded" in failed.error and "truncated" in failed.error
        assert "truncated" in server.model.Status(mpb.ModelStatusRequest()).last_error
    finally:
        server.stop()
