"""What only a shared PostgreSQL store does (two stores on one database stand in for two
replicas): leases, their renewal and expiry, fencing of a host that lost its lease, the
fleet table, one migration run for many replicas starting at once."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from whisperd.server.jobs.errors import JobStateError
from whisperd.server.jobs.model import JobOptions, JobStatus
from whisperd.server.jobs.pg_store import PgJobStore
from whisperd.server.postgres import redact_url, translate_ddl
from whisperd.server.webhooks.pg_outbox import PgOutbox
from whisperd.transcript import Segment

MODEL = "ggml-tiny.en.bin"


@pytest.fixture
def url(postgres) -> str:  # type: ignore[no-untyped-def]
    return postgres.create_database()


@pytest.fixture
def pair(url: str) -> Iterator[tuple[PgJobStore, PgJobStore]]:
    a = PgJobStore(url, host_id="host-a", lease_secs=1.0)
    b = PgJobStore(url, host_id="host-b", lease_secs=1.0)
    yield a, b
    a.close()
    b.close()


def seg(i: int) -> Segment:
    return Segment(index=i, start=float(i), end=i + 1.0, text=f"s{i}")


def test_a_lease_expires_and_the_job_moves_to_another_host(pair: tuple[PgJobStore, PgJobStore]) -> None:
    a, b = pair
    job_id = a.create(JobOptions(), "s3://bucket/x.wav", 11.0).id
    assert a.claim_next(MODEL) is not None
    assert b.claim_next(MODEL) is None  # one claim per job
    assert a.owner_of(job_id) == "host-a"

    # Renewed while A works: B's sweep finds nothing to take.
    for _ in range(3):
        assert a.heartbeat([job_id], {"state": "ready"}) == 1
        time.sleep(0.4)
        assert b.recover_interrupted() == ([], [])
    assert a.add_segments(job_id, [seg(0)])

    # A stops renewing (it died, or stalled): after the lease, B requeues and runs it.
    time.sleep(1.2)
    assert b.recover_interrupted() == ([job_id], [])
    requeued = b.get(job_id)
    assert requeued is not None and requeued.status is JobStatus.QUEUED and requeued.segments == ()
    taken = b.claim_next(MODEL)
    assert taken is not None and taken.id == job_id and taken.attempts == 2
    assert b.owner_of(job_id) == "host-b"

    # A wakes up: everything it would write to the job is refused, B's work stands.
    assert a.update_progress(job_id, 80.0) is False
    assert a.add_segments(job_id, [seg(5)]) is False
    with pytest.raises(JobStateError, match="another host"):
        a.finish(job_id, JobStatus.DONE, segments=[seg(9)])
    with pytest.raises(JobStateError, match="another host"):
        a.requeue(job_id)
    assert a.heartbeat([job_id]) == 0  # and it cannot renew B's lease
    assert b.update_progress(job_id, 50.0) and b.add_segments(job_id, [seg(0)])
    done = b.finish(job_id, JobStatus.DONE)
    assert done.status is JobStatus.DONE and [s.text for s in done.segments] == ["s0"]


def test_after_max_attempts_an_expired_job_fails_with_a_reason(pair: tuple[PgJobStore, PgJobStore]) -> None:
    a, b = pair
    job_id = a.create(JobOptions(), None, 1.0).id
    for attempt in (1, 2):
        assert (a if attempt == 1 else b).claim_next(MODEL) is not None
        time.sleep(1.1)
        assert a.recover_interrupted(max_attempts=3) == ([job_id], [])
    assert b.claim_next(MODEL) is not None
    b.add_segments(job_id, [seg(0)])
    time.sleep(1.1)
    assert a.recover_interrupted(max_attempts=3) == ([], [job_id])
    failed = a.get(job_id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert "interrupted 3 times" in (failed.error or "") and failed.segments == ()


def test_the_fleet_table(pair: tuple[PgJobStore, PgJobStore]) -> None:
    a, b = pair
    ids = [a.create(JobOptions(), None, 1.0).id for _ in range(3)]
    a.claim_next(MODEL)
    b.claim_next(MODEL)
    a.heartbeat([ids[0]], {"address": "a:1", "state": "ready"})
    b.heartbeat([ids[1]], {"address": "b:1", "state": "loading"})
    hosts = {h.id: h for h in a.hosts()}
    assert set(hosts) == {"host-a", "host-b"}
    assert hosts["host-a"].running_jobs == (ids[0],) and hosts["host-b"].running_jobs == (ids[1],)
    assert hosts["host-b"].info == {"address": "b:1", "state": "loading"}
    assert abs(hosts["host-a"].heartbeat_at - a.db_time()) < 5
    b.leave()
    assert [h.id for h in a.hosts()] == ["host-a"]


def test_replicas_starting_at_once_migrate_once(url: str) -> None:
    stores: list[PgJobStore] = []
    errors: list[BaseException] = []

    def start(n: int) -> None:
        try:
            stores.append(PgJobStore(url, host_id=f"h{n}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 4
    with psycopg.connect(url) as conn:
        versions = dict(conn.execute("SELECT name, version FROM schema_versions").fetchall())
        kinds = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'jobs'"
        ).fetchall())
    assert versions["job-store-cluster"] == 1 and versions["job-store"] >= 1
    assert kinds["duration_secs"] == "double precision"  # not float4: times round-trip
    for s in stores:
        s.close()


def test_ddl_translation_and_url_redaction() -> None:
    assert translate_ddl("seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL, n INTEGER) WITHOUT ROWID;") == (
        "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, t DOUBLE PRECISION, n BIGINT);"
    )
    assert redact_url("postgresql://u:secret@db:5432/w") == "postgresql://u:***@db:5432/w"
    assert redact_url("postgresql://u@db/w") == "postgresql://u@db/w"
    with pytest.raises(RuntimeError, match="cannot reach PostgreSQL at postgresql://u:\\*\\*\\*@127.0.0.1:1/x"):
        PgJobStore("postgresql://u:secret@127.0.0.1:1/x?connect_timeout=1", host_id="h")


def test_a_shared_webhook_outbox_sends_each_attempt_once(url: str) -> None:
    a = PgOutbox(url, host_id="host-a", claim_secs=1.0)
    b = PgOutbox(url, host_id="host-b", claim_secs=1.0)
    try:
        d = a.add("https://hooks.example/x", "job.done", '{"id": "j"}', job_id="j")
        a.register_url("https://hooks.example/x")
        assert [p.id for p in b.pending()] == [d.id] and b.urls() == ["https://hooks.example/x"]
        # Both replicas resumed it; one claims attempt 1, the other is refused.
        assert a.record_attempt(d.id, 1, time.time() + 1)
        assert not b.record_attempt(d.id, 1, time.time() + 1)
        # A failed it: the claim is free, and B may send attempt 2.
        assert a.reschedule(d.id, time.time(), "HTTP 503")
        assert b.record_attempt(d.id, 2, time.time() + 1)
        assert not a.record_attempt(d.id, 3, time.time() + 1)
        # B died while sending: after its claim runs out, A takes over.
        time.sleep(1.2)
        assert a.record_attempt(d.id, 3, time.time() + 1)
        got = b.get(d.id)
        assert got is not None and got.attempt == 3 and got.last_error == "HTTP 503"
        assert a.remove(d.id) and b.pending() == []
    finally:
        a.close()
        b.close()


def test_the_same_request_id_through_two_replicas_at_once_makes_one_job(pair: tuple[PgJobStore, PgJobStore]) -> None:
    a, b = pair
    made: list[str] = []
    start = threading.Barrier(8)

    def submit(store: PgJobStore, n: int) -> None:
        start.wait()
        made.append(store.create(JobOptions(request_id="retry-me"), f"s3://b/{n}.wav", 11.0).id)

    threads = [threading.Thread(target=submit, args=((a, b)[n % 2], n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(made) == 8 and len(set(made)) == 1
    assert a.counts()[JobStatus.QUEUED] == 1
