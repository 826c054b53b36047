"""Chaos at scale: jobs submitted while the server is killed (-9) over and over, then a
load of watchers and a burst of submits; prints what happened to every acknowledged job.

    .venv/bin/python bench/chaos.py                      # 100 jobs, 20 kills, 300 watchers, 100-submit burst
    .venv/bin/python bench/chaos.py --jobs 30 --kills 6 --watchers 100 --burst 30   # a modest run

Phase 1 (kills): a client submits --jobs jobs, each with its own request_id and retried
with the same one until acknowledged (as whisperd's client library does), while the server
is killed with SIGKILL --kills times at random moments (uploads, transcription, start-up)
and restarted. Then every acknowledged job must end: done, or failed with a reason. Lost
= acknowledged but unknown to the server; duplicated = more than one job for one
request_id. Phase 2 (load, on a fresh start): --watchers StreamProgress streams and a
burst of --burst concurrent submits, while one thread times Get; RSS peak is the
server's VmHWM over the phase. The audio is the first 3 s of jfk.wav (short jobs, so the
CPU transcribes many). The real server, the real model; nothing is mocked.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from server_process import ServerProcess, submit_requests  # noqa: E402

from whisperd import paths  # noqa: E402
from whisperd.audio import decode_audio, write_wav  # noqa: E402
from whisperd.models.bundled import ensure_tiny_en  # noqa: E402
from whisperd.v1 import transcription_pb2 as pb  # noqa: E402
from whisperd.v1 import transcription_pb2_grpc as pb_grpc  # noqa: E402

TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_CANCELLED}


class Target:
    """The server under test; restarts swap its process, clients reconnect by address."""

    def __init__(self, data: Path, model: Path) -> None:
        self.server = ServerProcess(data, model, env={"LOG_LEVEL": "WARNING"})
        self.lock = threading.Lock()
        self.address = ""
        self.rss_peak = 0

    def start(self) -> None:
        with self.lock:
            self.server.start(timeout=120)
            self.address = f"127.0.0.1:{self.server.port}"

    def kill(self) -> None:
        with self.lock:
            assert self.server.proc is not None
            self.server.proc.kill()
            self.server.wait(30)
            self.address = ""

    def stub(self) -> pb_grpc.TranscriptionStub | None:
        with self.lock:
            if not self.address:
                return None
            return pb_grpc.TranscriptionStub(grpc.insecure_channel(self.address))


def submit_until_acknowledged(target: Target, audio: bytes, key: str, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        stub = target.stub()
        if stub is not None:
            try:
                job = stub.Submit(submit_requests(audio, pb.JobOptions(beam_size=1, request_id=key)), timeout=30)
                return str(job.id)
            except grpc.RpcError:
                pass
        time.sleep(0.2)
    return None


def phase_kills(target: Target, audio: bytes, jobs: int, kills: int) -> dict[str, str]:
    acknowledged: dict[str, str] = {}
    keys = [f"chaos-{i}-{uuid.uuid4().hex[:8]}" for i in range(jobs)]
    deadline = time.monotonic() + 600
    done_submitting = threading.Event()

    def submitter() -> None:
        for key in keys:
            job_id = submit_until_acknowledged(target, audio, key, deadline)
            if job_id is not None:
                acknowledged[key] = job_id
        done_submitting.set()

    target.start()
    thread = threading.Thread(target=submitter)
    thread.start()
    for _ in range(kills):
        time.sleep(random.uniform(0.3, 2.5))  # uploads and transcriptions in flight
        target.kill()
        if random.random() < 0.3:  # sometimes during start-up too
            target.server.start(timeout=120)
            time.sleep(random.uniform(0.0, 0.3))
            target.kill()
        target.start()
    thread.join()
    return acknowledged


def settle(target: Target, acknowledged: dict[str, str], timeout: float) -> dict[str, int | list[str]]:
    stub = target.stub()
    assert stub is not None
    deadline = time.monotonic() + timeout
    finals: dict[str, pb.Job] = {}
    lost: list[str] = []
    for key, job_id in acknowledged.items():
        while True:
            try:
                job = stub.Get(pb.GetJobRequest(id=job_id), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    lost.append(key)
                    break
                raise
            if job.status in TERMINAL or time.monotonic() > deadline:
                finals[key] = job
                break
            time.sleep(0.2)
    listed: list[pb.Job] = []
    token = ""
    while True:
        page = stub.List(pb.ListJobsRequest(without_segments=True, page_size=500, page_token=token))
        listed.extend(page.jobs)
        token = page.next_page_token
        if not token:
            break
    per_key: dict[str, int] = {}
    for job in listed:
        if job.options.request_id:
            per_key[job.options.request_id] = per_key.get(job.options.request_id, 0) + 1
    reasons = sorted({j.error for j in finals.values() if j.status == pb.JOB_STATUS_FAILED})
    return {
        "done": sum(j.status == pb.JOB_STATUS_DONE for j in finals.values()),
        "failed": sum(j.status == pb.JOB_STATUS_FAILED for j in finals.values()),
        "failed without a reason": sum(j.status == pb.JOB_STATUS_FAILED and not j.error for j in finals.values()),
        "not ended": sum(j.status not in TERMINAL for j in finals.values()),
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in per_key.values() if n > 1),
        "reasons": reasons,
    }


def phase_load(target: Target, audio: bytes, watchers: int, burst: int) -> dict[str, float]:
    stub = target.stub()
    assert stub is not None
    seed = [stub.Submit(submit_requests(audio, pb.JobOptions(beam_size=1))).id for _ in range(5)]
    stop = threading.Event()
    latencies: list[float] = []
    ids = list(seed)

    def watcher(job_id: str) -> None:
        try:
            for _ in stub.StreamProgress(pb.StreamProgressRequest(id=job_id), timeout=600):
                if stop.is_set():
                    return
        except grpc.RpcError:
            pass

    def getter() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            stub.Get(pb.GetJobRequest(id=random.choice(ids)), timeout=30)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    def burst_one() -> None:
        ids.append(stub.Submit(submit_requests(audio, pb.JobOptions(beam_size=1)), timeout=120).id)

    threads = [threading.Thread(target=watcher, args=(seed[i % len(seed)],), daemon=True) for i in range(watchers)]
    timer = threading.Thread(target=getter, daemon=True)
    for t in threads:
        t.start()
    timer.start()
    started = time.monotonic()
    submitters = [threading.Thread(target=burst_one) for _ in range(burst)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    burst_secs = time.monotonic() - started
    while True:  # until the burst's jobs have run, Get timed all along
        statuses = [stub.Get(pb.GetJobRequest(id=i)).status for i in ids]
        if all(s in TERMINAL for s in statuses) or time.monotonic() - started > 900:
            break
        time.sleep(0.5)
    stop.set()
    timer.join(30)
    latencies.sort()
    return {
        "burst_secs": burst_secs,
        "get_p50_ms": 1000 * statistics.median(latencies),
        "get_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "gets": len(latencies),
        "all_secs": time.monotonic() - started,
        "rss_peak_mib": target.server.rss_bytes(peak=True) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--watchers", type=int, default=300)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()
    random.seed(args.seed)
    model = ensure_tiny_en(paths.models_dir())
    work = Path(tempfile.mkdtemp(prefix="whisperd-chaos-"))
    clip = write_wav(work / "jfk3.wav", decode_audio(paths.samples_dir() / "jfk.wav")[: 3 * 16000]).read_bytes()
    target = Target(work / "data", model)
    started = time.monotonic()
    acknowledged = phase_kills(target, clip, args.jobs, args.kills)
    outcome = settle(target, acknowledged, timeout=900)
    uploads_left = len(list((work / "data" / "uploads").iterdir()))
    target.server.stop()
    kills_secs = time.monotonic() - started
    target.start()
    load = phase_load(target, clip, args.watchers, args.burst)
    target.server.stop()
    rows = [
        ("jobs submitted / kill -9", f"{args.jobs} / {args.kills}"),
        ("acknowledged", f"{len(acknowledged)}"),
        ("done", f"{outcome['done']}"),
        ("failed (with a reason)", f"{outcome['failed']} ({int(outcome['failed']) - int(outcome['failed without a reason'])})"),
        ("not ended", f"{outcome['not ended']}"),
        ("lost", f"{outcome['lost']}"),
        ("duplicated", f"{outcome['duplicated']}"),
        ("uploads left after all ended", f"{uploads_left}"),
        ("kill phase, wall", f"{kills_secs:.0f} s"),
        (f"Get p50 / p99 ({args.watchers} watchers, {args.burst}-submit burst)", f"{load['get_p50_ms']:.1f} / {load['get_p99_ms']:.1f} ms ({load['gets']} Gets)"),
        ("burst accepted in", f"{load['burst_secs']:.1f} s"),
        ("server RSS peak (load phase)", f"{load['rss_peak_mib']:.0f} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{width}}  result")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for reason in outcome["reasons"]:  # type: ignore[union-attr]
        print(f"  failure reason: {reason}")


if __name__ == "__main__":
    main()
