"""The lifecycle on a real GPU (bench/gpu.sh): VRAM comes back on unload; another process
holding the VRAM sends the server to waiting_for_gpu, and freeing it brings it to ready
with the queued job done. A CPU build skips this file."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from whisperd import _native
from whisperd.server.engine import gpu_info
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as pb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _native.built_with_cuda(), reason="CPU build: run bench/gpu.sh on a CUDA host"),
]
MiB = 1 << 20
S = mpb.ModelState
TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}

HOG = """
import sys, time, torch
leave = int(sys.argv[1]) << 20
free, _ = torch.cuda.mem_get_info()
hog = torch.empty(free - leave, dtype=torch.uint8, device="cuda")
print("holding", flush=True)
sys.stdin.readline()  # until the test says so
"""


def used_mib() -> float:
    return gpu_info.gpus()[0].used / MiB


def wait_state(server: ServerProcess, state: int, timeout: float = 60) -> mpb.ModelStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = server.model.Status(mpb.ModelStatusRequest())
        if status.state == state:
            return status
        assert time.monotonic() < deadline, (S.Name(status.state), status.last_error, server.log())
        time.sleep(0.1)


def test_load_then_unload_gives_the_vram_back(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, use_gpu=True).start()
    try:
        time.sleep(1.0)
        before = used_mib()
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1, filename="jfk.wav")))
        done = wait_for_status(server, job.id, TERMINAL)
        assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
        status = server.model.Status(mpb.ModelStatusRequest())
        assert status.gpu and status.gpus and status.gpus[0].memory_total_bytes > 0
        loaded = used_mib()
        server.model.Unload(mpb.UnloadModelRequest())
        time.sleep(0.5)
        after = used_mib()
        print(f"\nNVML used VRAM: before load {before:.0f} MiB, loaded {loaded:.0f} MiB, after unload {after:.0f} MiB")
        assert loaded - before > 50, (before, loaded)
        assert abs(after - before) < 100, (before, loaded, after)
    finally:
        server.stop()


def test_another_process_holding_the_vram_means_waiting_for_gpu_until_it_lets_go(
    tiny_en_model: Path, tmp_path: Path, jfk_wav: Path
) -> None:
    pytest.importorskip("torch")
    # The server first, so that its CUDA context exists before the VRAM is taken.
    server = ServerProcess(
        tmp_path / "data", tiny_en_model, use_gpu=True, env={"GPU_POLL_INTERVAL_SECS": "2"}
    ).start()
    hog = subprocess.Popen([sys.executable, "-c", HOG, "64"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "holding"
        job = server.jobs.Submit(submit_requests(jfk_wav.read_bytes(), pb.JobOptions(beam_size=1, filename="jfk.wav")))
        waiting = wait_state(server, S.Value("MODEL_STATE_WAITING_FOR_GPU"))
        assert "out of memory" in waiting.last_error
        assert server.jobs.Get(pb.GetJobRequest(id=job.id)).status == pb.JOB_STATUS_QUEUED
        assert hog.stdin is not None
        hog.stdin.write("go\n")
        hog.stdin.flush()
        hog.wait(30)
        wait_state(server, S.Value("MODEL_STATE_READY"), timeout=30)
        done = wait_for_status(server, job.id, TERMINAL)
        assert done.status == pb.JOB_STATUS_DONE
        assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
    finally:
        if hog.poll() is None:
            hog.kill()
        server.stop()
