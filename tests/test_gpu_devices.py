"""GPU_DEVICES: one model host and its workers per GPU, sharing one queue. Exercised on the
CPU with two real model hosts (tiny.en) standing in for two GPUs; the out-of-memory
fault switch makes one of them run out of VRAM; ModelControl unloads and loads one
GPU's model while the other serves."""
from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from whisperd.server.api.model_control import ModelControlService, ModelEvents
from whisperd.server.engine.devices import MultiHost, MultiPool, parse_gpu_devices, per_device
from whisperd.server.engine.lifecycle import ModelHost, ModelState
from whisperd.server.engine.workers import WorkerPool
from whisperd.server.jobs.events import EventHub
from whisperd.server.jobs.model import JobOptions, JobRecord, JobStatus
from whisperd.server.jobs.store import JobStore
from whisperd.client import WhisperdClient, WhisperdError
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import model_control_pb2_grpc as mpb_grpc


def pool_maker(
    store: JobStore, hub: EventHub, started: dict[int, list[str]], finished: list[JobRecord]
) -> Callable[[ModelHost], WorkerPool]:
    """One worker per "GPU", recording which device started each job and every job's end."""
    def make_pool(host: ModelHost) -> WorkerPool:
        device = host.gpu_device
        return WorkerPool(
            store=store, host=host, hub=hub, workers=1, threads_per_job=1,
            on_started=lambda job: started[device].append(job.id), on_finished=finished.append,
        )

    return make_pool


def test_gpu_devices_setting() -> None:
    assert parse_gpu_devices("", 4) == [0, 1, 2, 3]
    assert parse_gpu_devices("all", 2) == [0, 1]
    assert parse_gpu_devices(" 2, 0 ", 3) == [2, 0]
    assert parse_gpu_devices("0,1", 0) == []  # no GPU: the CPU, whatever was asked
    with pytest.raises(ValueError, match="has 2 \\(0 to 1\\)"):
        parse_gpu_devices("0,2", 2)
    with pytest.raises(ValueError, match="twice"):
        parse_gpu_devices("1,1", 2)
    with pytest.raises(ValueError, match="indices"):
        parse_gpu_devices("gpu0", 2)


def test_jobs_go_to_whichever_device_is_free_and_one_out_of_memory_stops_no_other(
    tmp_path: Path, tiny_en_model: Path, jfk_wav: Path
) -> None:
    store = JobStore(tmp_path / "whisperd.db")
    hub = EventHub(asyncio.new_event_loop())  # events are queued, nobody reads them here
    started: dict[int, list[str]] = defaultdict(list)
    finished: list[JobRecord] = []

    def make_host(device: int) -> ModelHost:
        # "GPU" 0 is full for its first two loads: it waits for VRAM while 1 works.
        return ModelHost(
            tiny_en_model, use_gpu=False, gpu_poll_interval=1, idle_timeout=0,
            fault_oom_loads=2 if device == 0 else 0, gpu_device=device,
        )

    host, pool = per_device([0, 1], make_host, pool_maker(store, hub, started, finished))
    assert isinstance(host, MultiHost) and isinstance(pool, MultiPool)
    transitions: list[tuple[str, ModelState]] = []
    host.add_listener(lambda t: transitions.append((t.reason, t.state)))
    ids = []
    for i in range(4):
        audio = tmp_path / f"jfk{i}.wav"
        shutil.copy(jfk_wav, audio)
        ids.append(store.create(JobOptions(language="en"), str(audio), 11.0).id)
    pool.start()
    host.request_load("test")
    try:
        deadline = time.monotonic() + 60
        while not started[1]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # GPU 1 runs a job while GPU 0 waits for memory: the whole reads as ready.
        snapshot = {d.gpu_index: d.state for d in host.device_status()}
        assert snapshot[1] is ModelState.READY
        assert snapshot[0] in (ModelState.WAITING_FOR_GPU, ModelState.LOADING)  # retrying
        assert any(r.startswith("gpu 0: ") and s is ModelState.WAITING_FOR_GPU for r, s in transitions)
        assert host.state is ModelState.READY and "gpu 0:" in host.last_error

        deadline = time.monotonic() + 180
        while len(finished) < 4:
            assert time.monotonic() < deadline, f"{len(finished)} of 4 jobs finished"
            time.sleep(0.1)
        # ModelControl.Status lists each GPU's own state.
        service = ModelControlService(
            host=host, pool=pool, store=store, events=ModelEvents(asyncio.new_event_loop()), gpu=True,  # type: ignore[arg-type]
        )
        status = asyncio.run(service.status())
        assert [(d.gpu_index, d.state) for d in status.devices] == [
            (0, mpb.MODEL_STATE_READY), (1, mpb.MODEL_STATE_READY)
        ]
        assert status.state == mpb.MODEL_STATE_READY and status.devices[0].loaded_at.seconds > 0
    finally:
        pool.stop(5)
        host.stop()
    assert sorted(j.id for j in finished) == sorted(ids)
    assert all(j.status is JobStatus.DONE for j in finished)
    assert started[0] and started[1], f"both devices ran jobs: {dict(started)}"
    assert sorted(started[0] + started[1]) == sorted(ids)  # each once
    assert any(r.startswith("gpu 0: ") and s is ModelState.WAITING_FOR_GPU for r, s in transitions)
    assert not any(r.startswith("gpu 1: ") and s is ModelState.WAITING_FOR_GPU for r, s in transitions)
    assert [d.state for d in host.device_status()] == [ModelState.UNLOADED] * 2
    store.close()


def test_one_gpus_model_unloads_and_loads_while_the_other_serves(
    tmp_path: Path, tiny_en_model: Path, jfk_wav: Path
) -> None:
    """ModelControl.Unload/Load with gpu_indices, through a real gRPC server and client:
    only that GPU's model goes, the other keeps running jobs; an index the server does
    not drive is INVALID_ARGUMENT naming it."""
    store = JobStore(tmp_path / "whisperd.db")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    started: dict[int, list[str]] = defaultdict(list)
    finished: list[JobRecord] = []

    host, pool = per_device(
        [0, 1], lambda d: ModelHost(tiny_en_model, use_gpu=False, gpu_poll_interval=1, idle_timeout=0, gpu_device=d),
        pool_maker(store, EventHub(loop), started, finished),
    )
    assert isinstance(host, MultiHost)
    service = ModelControlService(host=host, pool=pool, store=store, events=ModelEvents(loop), gpu=True)  # type: ignore[arg-type]

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        mpb_grpc.add_ModelControlServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    client = WhisperdClient(f"127.0.0.1:{port}")

    def states() -> dict[int, ModelState]:
        return {d.gpu_index: d.state for d in host.device_status()}

    def wait_for(want: dict[int, ModelState]) -> None:
        deadline = time.monotonic() + 60
        while states() != want:
            assert time.monotonic() < deadline, f"states {states()}, wanted {want}"
            time.sleep(0.05)

    pool.start()
    try:
        client.load_model()
        wait_for({0: ModelState.READY, 1: ModelState.READY})
        loaded_at = host.hosts[0].loaded_at
        status = client.unload_model(gpus=[1])
        assert [(d.gpu_index, d.state) for d in status.pb.devices] == [
            (0, mpb.MODEL_STATE_READY), (1, mpb.MODEL_STATE_UNLOADED)
        ]
        ids = []
        for i in range(2):
            audio = tmp_path / f"jfk{i}.wav"
            shutil.copy(jfk_wav, audio)
            ids.append(store.create(JobOptions(language="en"), str(audio), 11.0).id)
        pool.wake()
        deadline = time.monotonic() + 120
        while len(finished) < 2:
            assert time.monotonic() < deadline, f"{len(finished)} of 2 jobs finished"
            time.sleep(0.1)
        assert sorted(started[0]) == sorted(ids) and not started[1]
        assert states() == {0: ModelState.READY, 1: ModelState.UNLOADED}

        with pytest.raises(WhisperdError) as refused:
            client.unload_model(gpus=[5])
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "GPU 5 is not one of this server's GPUs (0, 1" in refused.value.details

        client.load_model(gpus=[1])
        wait_for({0: ModelState.READY, 1: ModelState.READY})
        assert host.hosts[0].loaded_at == loaded_at  # GPU 0's model stayed as it was
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        pool.stop(5)
        host.stop()
        loop.call_soon_threadsafe(loop.stop)
        store.close()
    assert all(j.status is JobStatus.DONE for j in finished)
