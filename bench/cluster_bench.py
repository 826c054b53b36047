#!/usr/bin/env python3
"""Replicas on a shared store: real whisperd servers on one real PostgreSQL and one real
versitygw object store (tests/cluster_infra.py), on this machine's CPU with tiny.en.

  1. throughput  N jfk jobs (11 s each) submitted at once through replica A; submit of
                 the first to done of the last, with 1 replica and with 2. Each replica
                 runs PARALLEL_JOBS=1 with THREADS=1, so 2 replicas use 2 cores where 1
                 uses one: the row says what a second host adds, not a per-core speed-up.
  2. claim       one job at a time through A on an idle pair: started_at - created_at
                 (both from the server clock), i.e. how long a queued job waits for a
                 worker of any replica.
  3. failover    kill -9 of the replica running a job (jfk tiled to 44 s): seconds from
                 the kill to the job running again on the other replica (its started_at)
                 and to done, for LEASE_SECS 3 and 10.
  4. watchers    200 concurrent clients calling Get in a loop (100 per replica) for 10 s
                 while 2 jobs run: Get latency p50 / p99 and calls per second.

Markdown table on stdout (progress on stderr); figures also in bench/results/cluster_bench.json.

  .venv/bin/python bench/cluster_bench.py [--jobs 12]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cluster_infra import ObjectStore, Postgres  # noqa: E402
from server_process import ServerProcess, submit_requests  # noqa: E402

from whisperd import paths  # noqa: E402
from whisperd.v1 import model_control_pb2 as mpb  # noqa: E402
from whisperd.v1 import transcription_pb2 as pb, transcription_pb2_grpc  # noqa: E402

MODEL = paths.models_dir() / "ggml-tiny.en.bin"
JFK = paths.samples_dir() / "jfk.wav"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tiled(times: int) -> bytes:
    with wave.open(str(JFK)) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames * times)
    return out.getvalue()


class Fleet:
    def __init__(self, pg: Postgres, objects: ObjectStore, tmp: Path, n: int, lease: int = 30) -> None:
        env = {
            "DATABASE_URL": pg.create_database(), "BLOB_URL": f"s3://{objects.create_bucket()}/u",
            "LEASE_SECS": str(lease), "THREADS": "1", "PARALLEL_JOBS": "1", "LOG_LEVEL": "INFO",
            **objects.env(),
        }
        self.servers = [
            ServerProcess(tmp / f"r{i}-{time.monotonic_ns()}", MODEL, env={**env, "HOST_ID": f"r{i}"})
            for i in range(n)
        ]

    def __enter__(self) -> Fleet:
        for s in self.servers:
            s.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.servers:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()


def wait_done(server: ServerProcess, ids: list[str], timeout: float = 900) -> list[pb.Job]:
    deadline = time.monotonic() + timeout
    jobs = []
    for job_id in ids:
        while True:
            job = server.jobs.Get(pb.GetJobRequest(id=job_id))
            if job.status in (pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED):
                jobs.append(job)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not done")
            time.sleep(0.05)
    return jobs


def ts(t) -> float:  # type: ignore[no-untyped-def]
    return t.seconds + t.nanos / 1e9


def throughput(pg: Postgres, objects: ObjectStore, tmp: Path, replicas: int, n: int) -> dict[str, float]:
    audio = JFK.read_bytes()
    with Fleet(pg, objects, tmp, replicas) as fleet:
        a = fleet.servers[0]
        for s in fleet.servers:  # warm: model loaded everywhere before the clock starts
            wait_done(s, [s.jobs.Submit(submit_requests(audio)).id])
        start = time.monotonic()
        ids = [a.jobs.Submit(submit_requests(audio)).id for _ in range(n)]
        jobs = wait_done(a, ids)
        wall = time.monotonic() - start
    assert all(j.status == pb.JOB_STATUS_DONE for j in jobs)
    return {"replicas": replicas, "jobs": n, "wall_s": wall, "jobs_per_min": n / wall * 60,
            "audio_x_realtime": n * 11.0 / wall}


def claim_latency(pg: Postgres, objects: ObjectStore, tmp: Path, runs: int) -> list[float]:
    audio = JFK.read_bytes()
    waits = []
    with Fleet(pg, objects, tmp, 2) as fleet:
        a = fleet.servers[0]
        wait_done(a, [a.jobs.Submit(submit_requests(audio)).id])
        for _ in range(runs):
            (job,) = wait_done(a, [a.jobs.Submit(submit_requests(audio)).id])
            waits.append(ts(job.started_at) - ts(job.created_at))
    return waits


def failover(pg: Postgres, objects: ObjectStore, tmp: Path, lease: int) -> dict[str, float]:
    audio = tiled(4)
    with Fleet(pg, objects, tmp, 2, lease=lease) as fleet:
        a, b = fleet.servers
        for s in (a, b):
            s.model.Load(mpb.LoadModelRequest())
        # One replica takes a long job, the other the victim; the victim's is killed.
        busy = a.jobs.Submit(submit_requests(tiled(2))).id
        while a.jobs.Get(pb.GetJobRequest(id=busy)).status != pb.JOB_STATUS_RUNNING:
            time.sleep(0.05)
        victim = a.jobs.Submit(submit_requests(audio)).id
        deadline = time.monotonic() + 120
        while True:
            runner = next((s for s in (a, b) if any(f"job {victim}: started" in line for line in s.log_lines)), None)
            if runner is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the victim job never started")
            time.sleep(0.02)
        survivor = b if runner is a else a
        time.sleep(1.0)
        runner.signal(signal.SIGKILL)
        killed = time.time()
        runner.wait(10)
        (job,) = wait_done(survivor, [victim])
    assert job.status == pb.JOB_STATUS_DONE, job.error
    return {"lease_s": lease, "to_running_again_s": ts(job.started_at) - killed,
            "to_done_s": ts(job.completed_at) - killed}


async def _watch(address: str, job_ids: list[str], until: float, out: list[float]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = transcription_pb2_grpc.TranscriptionStub(channel)
        i = 0
        while time.monotonic() < until:
            t = time.perf_counter()
            await stub.Get(pb.GetJobRequest(id=job_ids[i % len(job_ids)]))
            out.append(time.perf_counter() - t)
            i += 1


def watchers(pg: Postgres, objects: ObjectStore, tmp: Path, clients: int, secs: float) -> dict[str, float]:
    with Fleet(pg, objects, tmp, 2) as fleet:
        a, b = fleet.servers
        ids = [a.jobs.Submit(submit_requests(tiled(6))).id for _ in range(2)]
        time.sleep(3)
        latencies: list[float] = []

        async def main() -> None:
            until = time.monotonic() + secs
            await asyncio.gather(*[
                _watch(f"127.0.0.1:{(a if i % 2 else b).port}", ids, until, latencies) for i in range(clients)
            ])

        asyncio.run(main())
        running = sum(1 for j in ids if a.jobs.Get(pb.GetJobRequest(id=j)).status == pb.JOB_STATUS_RUNNING)
    latencies.sort()
    return {"clients": clients, "calls": len(latencies), "calls_per_s": len(latencies) / secs,
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3, "jobs_still_running": running}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--claims", type=int, default=8)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    pg = Postgres().start()
    objects = ObjectStore(tmp / "objects").start()
    results: dict[str, object] = {}
    try:
        say("throughput, 1 replica")
        one = throughput(pg, objects, tmp, 1, args.jobs)
        say(f"  {one}")
        say("throughput, 2 replicas")
        two = throughput(pg, objects, tmp, 2, args.jobs)
        say(f"  {two}")
        say("claim latency")
        claims = claim_latency(pg, objects, tmp, args.claims)
        say(f"  {claims}")
        say("failover")
        fails = []
        for lease in (3, 10):
            fails.append(failover(pg, objects, tmp, lease))
            say(f"  {fails[-1]}")
        say("watchers")
        watch = watchers(pg, objects, tmp, args.clients, 10.0)
        say(f"  {watch}")
        results = {"throughput": [one, two], "claim_s": claims, "failover": fails, "watchers": watch}
    finally:
        objects.stop()
        pg.stop()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "cluster_bench.json").write_text(json.dumps(results, indent=2))
    print("| what | figure |\n|---|---|")
    for row in (one, two):
        print(f"| throughput, {row['replicas']} replica(s), {row['jobs']} × jfk 11 s | "
              f"{row['wall_s']:.1f} s, {row['jobs_per_min']:.1f} jobs/min ({row['audio_x_realtime']:.1f}× real time) |")
    print(f"| claim latency (created → started), {len(claims)} jobs | median {statistics.median(claims) * 1e3:.0f} ms, "
          f"max {max(claims) * 1e3:.0f} ms |")
    for f in fails:
        print(f"| failover, kill -9, LEASE_SECS={f['lease_s']} | running again after {f['to_running_again_s']:.1f} s, "
              f"done after {f['to_done_s']:.1f} s |")
    print(f"| Get with {watch['clients']} concurrent clients on 2 replicas (2 jobs running) | "
          f"p50 {watch['p50_ms']:.1f} ms, p99 {watch['p99_ms']:.1f} ms, {watch['calls_per_s']:.0f} calls/s |")


if __name__ == "__main__":
    main()
