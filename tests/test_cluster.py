"""Two whisperd replicas on one real PostgreSQL and one real S3-compatible store
(versitygw): jobs submitted through one are shared out, followed from either, and taken
over when a replica dies."""
from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess, submit_requests, wait_for_status
from webhook_receiver import WebhookReceiver
from whisperd.v1 import model_control_pb2 as mpb
from whisperd.v1 import transcription_pb2 as pb

pytestmark = pytest.mark.slow

_STARTED = re.compile(r"job (\S+): started")


def repeated_wav(path: Path, times: int) -> bytes:
    """The WAV file's speech `times` over, as one WAV file."""
    with wave.open(str(path)) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames * times)
    return out.getvalue()


def whisperctl(server: ServerProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "from whisperd.client.cli import main; main()", "--server", f"127.0.0.1:{server.port}", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def started_jobs(server: ServerProcess) -> list[str]:
    return [m.group(1) for line in server.log_lines if (m := _STARTED.search(line))]


class Cluster:
    def __init__(self, tmp: Path, model: Path, db_url: str, bucket: str, s3_env: dict[str, str], s3: object) -> None:
        env = {
            "DATABASE_URL": db_url, "BLOB_URL": f"s3://{bucket}/uploads", "LEASE_SECS": "3",
            "THREADS": "1", "PARALLEL_JOBS": "1", "SHUTDOWN_GRACE_SECS": "1",
            "WEBHOOK_ALLOW_PRIVATE": "true", **s3_env,
        }
        self.db_url = db_url
        self.bucket = bucket
        self.s3 = s3
        self.a = ServerProcess(tmp / "a", model, env={**env, "HOST_ID": "replica-a"})
        self.b = ServerProcess(tmp / "b", model, env={**env, "HOST_ID": "replica-b"})

    def start(self) -> Cluster:
        self.a.start()
        self.b.start()
        return self

    def stop(self) -> None:
        for s in (self.a, self.b):
            if s.proc is not None and s.proc.poll() is None:
                s.stop()

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.db_url) as conn:
            return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def cluster(tmp_path: Path, tiny_en_model: Path, postgres, object_store) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    c = Cluster(
        tmp_path, tiny_en_model, postgres.create_database(), object_store.create_bucket(),
        object_store.env(), object_store.client(),
    )
    try:
        yield c.start()
    finally:
        c.stop()


def follow(server: ServerProcess, job_id: str, seen: dict[str, list[pb.JobEvent]]) -> None:
    seen[job_id] = list(server.jobs.StreamProgress(pb.StreamProgressRequest(id=job_id), timeout=300))


def test_twenty_jobs_through_one_replica_run_once_each_on_both(cluster: Cluster, jfk_wav: Path) -> None:
    audio = jfk_wav.read_bytes()
    hooks = WebhookReceiver().start()
    ids = [
        cluster.a.jobs.Submit(submit_requests(audio, pb.JobOptions(filename="jfk.wav", webhook_url=hooks.url()))).id
        for _ in range(20)
    ]
    seen: dict[str, list[pb.JobEvent]] = {}
    watchers = [threading.Thread(target=follow, args=(cluster.a, i, seen)) for i in ids]
    for w in watchers:
        w.start()
    for job_id in ids:
        # Either replica answers for any job.
        done = wait_for_status(cluster.b if ids.index(job_id) % 2 else cluster.a, job_id, {pb.JOB_STATUS_DONE}, 300)
        assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
    for w in watchers:
        w.join(60)

    on_a, on_b = started_jobs(cluster.a), started_jobs(cluster.b)
    assert Counter(on_a + on_b) == Counter(ids), "every job started exactly once, on one replica"
    assert on_a and on_b, f"both replicas worked: {len(on_a)} on A, {len(on_b)} on B"
    assert cluster.rows("SELECT COUNT(*) FROM jobs WHERE status = 'done' AND attempts = 1") == [(20,)]

    # StreamProgress through A of jobs that ran on B: progress, segments, then the result.
    for job_id in on_b:
        events = seen[job_id]
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "snapshot" and kinds[-1] == "done", kinds
        assert events[-1].done.status == pb.JOB_STATUS_DONE
        streamed = [e.segment.text for e in events if e.WhichOneof("event") == "segment"]
        if events[0].snapshot.status == pb.JOB_STATUS_QUEUED:  # followed from its start
            assert "progress" in kinds
            assert streamed == [s.text for s in events[-1].done.segments]

    # Finished jobs' audio is gone from the object store; the fleet shows both replicas.
    assert cluster.rows("SELECT COUNT(*) FROM jobs WHERE audio_path LIKE 's3://%'") == [(20,)]
    assert cluster.s3.list_objects_v2(Bucket=cluster.bucket).get("KeyCount", 0) == 0  # type: ignore[attr-defined]
    hosts = {r[0] for r in cluster.rows("SELECT id FROM hosts")}
    assert hosts == {"replica-a", "replica-b"}
    fleet = json.loads(whisperctl(cluster.b, "cluster", "--json"))
    assert fleet["sharedStore"] is True and fleet["leaseSecs"] == 3
    replicas = {r["hostId"]: r for r in fleet["replicas"]}
    assert set(replicas) == {"replica-a", "replica-b"}
    assert replicas["replica-b"]["self"] and not replicas["replica-a"]["self"]
    assert {r["state"] for r in replicas.values()} == {"MODEL_STATE_READY"}
    assert replicas["replica-a"]["model"] == "ggml-tiny.en.bin"
    table = whisperctl(cluster.a, "cluster")
    assert "replica-a *" in table and "replica-b" in table and "ready" in table

    # One job.done webhook per job, whichever replica ran it.
    deadline = time.monotonic() + 60
    while len(job_hooks := [r for r in hooks.received() if r.headers.get("x-whisperd-event") == "job.done"]) < 20:
        assert time.monotonic() < deadline, f"{len(job_hooks)} of 20 job webhooks arrived"
        time.sleep(0.1)
    time.sleep(2 * 1.0 + 0.5)  # a duplicate would come with the next heartbeats' resume
    job_hooks = [r for r in hooks.received() if r.headers.get("x-whisperd-event") == "job.done"]
    hooks.stop()
    assert Counter(json.loads(r.body)["id"] for r in job_hooks) == Counter(ids)


def test_kill_9_of_a_replica_its_jobs_finish_on_the_other(cluster: Cluster, jfk_wav: Path) -> None:
    audio = repeated_wav(jfk_wav, 3)  # 33 s: long enough to be caught running
    ids = [
        cluster.a.jobs.Submit(submit_requests(audio, pb.JobOptions(filename="jfk3.wav"))).id
        for _ in range(3)
    ]
    deadline = time.monotonic() + 120
    while not started_jobs(cluster.b):
        assert time.monotonic() < deadline, f"replica B never started a job:\n{cluster.b.log()}"
        time.sleep(0.05)
    victim = started_jobs(cluster.b)[0]
    cluster.b.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    cluster.b.wait(10)

    # Still running under B's (now unrenewed) lease, then taken over by A.
    follow_a = cluster.a.jobs.Get(pb.GetJobRequest(id=victim))
    assert follow_a.status == pb.JOB_STATUS_RUNNING
    for job_id in ids:
        done = wait_for_status(cluster.a, job_id, {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED}, 300)
        assert done.status == pb.JOB_STATUS_DONE, done.error
        assert len(done.segments) >= 3  # the whole 33 s, not what B had decoded
    failover = time.monotonic() - killed_at
    on_a = started_jobs(cluster.a)
    assert victim in on_a, "the killed replica's job ran again on A"
    assert Counter(on_a)[victim] == 1
    attempts = dict(cluster.rows("SELECT id, attempts FROM jobs"))  # type: ignore[arg-type]
    assert attempts[victim] == 2
    assert any("lease of host replica-b expired" in line for line in cluster.a.log_lines)
    print(f"failover: B's job done on A {failover:.1f} s after kill -9 (LEASE_SECS=3)")


def test_rolling_restart_under_a_trickle_of_submissions(cluster: Cluster, jfk_wav: Path) -> None:
    """Each replica in turn is stopped (SIGTERM) and started again while a client keeps
    submitting, going to the other replica when one refuses, as a load balancer would:
    every accepted job ends done, none is lost or run twice at once."""
    audio = jfk_wav.read_bytes()
    accepted: list[str] = []
    stop = threading.Event()

    def trickle() -> None:
        n = 0
        while not stop.is_set():
            for server in ((cluster.a, cluster.b) if n % 2 == 0 else (cluster.b, cluster.a)):
                try:
                    job = server.jobs.Submit(submit_requests(audio, pb.JobOptions(filename="jfk.wav")), timeout=30)
                except (grpc.RpcError, AssertionError, ValueError):  # refused, or restarting
                    continue
                accepted.append(job.id)
                break
            n += 1
            stop.wait(1.0)

    client = threading.Thread(target=trickle)
    client.start()
    try:
        time.sleep(4)
        for replica in (cluster.a, cluster.b):
            replica.stop()  # SIGTERM: stops taking jobs, requeues what runs after 1 s
            replica.start()
            time.sleep(3)
    finally:
        stop.set()
        client.join(60)
    assert len(accepted) >= 8, f"only {len(accepted)} submissions were accepted"
    for job_id in accepted:
        done = wait_for_status(cluster.a, job_id, {pb.JOB_STATUS_DONE, pb.JOB_STATUS_FAILED}, 300)
        assert done.status == pb.JOB_STATUS_DONE, done.error
        assert normalise(" ".join(s.text for s in done.segments)) == normalise(EXPECTED_JFK)
    assert cluster.rows("SELECT COUNT(*) FROM jobs WHERE status <> 'done'") == [(0,)]


def test_cluster_view_of_a_server_on_its_own(tmp_path: Path, tiny_en_model: Path) -> None:
    server = ServerProcess(tmp_path / "alone", tiny_en_model, env={"HOST_ID": "solo"}).start()
    try:
        fleet = json.loads(whisperctl(server, "cluster", "--json"))
    finally:
        server.stop()
    assert fleet["sharedStore"] is False and fleet["leaseSecs"] == 0
    (me,) = fleet["replicas"]
    assert me["hostId"] == "solo" and me["self"] and me["address"].endswith(f":{server.port}")
    assert me["state"] == "MODEL_STATE_UNLOADED" and me["device"] == "cpu"


def test_cancel_through_one_replica_stops_the_job_on_the_other(cluster: Cluster, jfk_wav: Path) -> None:
    audio = repeated_wav(jfk_wav, 6)  # 66 s: still running when cancelled
    ids = [cluster.a.jobs.Submit(submit_requests(audio)).id for _ in range(2)]
    deadline = time.monotonic() + 120
    while not (started_jobs(cluster.a) and started_jobs(cluster.b)):
        assert time.monotonic() < deadline, "both replicas should be running one job"
        time.sleep(0.05)
    on_a, on_b = started_jobs(cluster.a)[0], started_jobs(cluster.b)[0]
    assert sorted([on_a, on_b]) == sorted(ids)
    for runner, other, job_id in ((cluster.b, cluster.a, on_b), (cluster.a, cluster.b, on_a)):
        cancelled = other.jobs.Cancel(pb.CancelJobRequest(id=job_id))
        assert cancelled.status == pb.JOB_STATUS_CANCELLED
        deadline = time.monotonic() + 10
        while not any(f"job {job_id}: cancelled while running" in line for line in runner.log_lines):
            assert time.monotonic() < deadline, f"the running replica never stopped {job_id}:\n{runner.log()}"
            time.sleep(0.05)
        assert runner.jobs.Get(pb.GetJobRequest(id=job_id)).status == pb.JOB_STATUS_CANCELLED
