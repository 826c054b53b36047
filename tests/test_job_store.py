"""The job store on a real SQLite file and on a real PostgreSQL server (the same tests
for both, through the `store` fixture): lifecycle, queue order, concurrency, restarts."""
from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from whisperd.server.jobs.errors import InvalidCursor, InvalidOptions, JobNotFound, JobStateError
from whisperd.server.jobs.model import JobOptions, JobRecord, JobStatus
from whisperd.server.jobs.pg_store import PgJobStore
from whisperd.server.jobs.store import MIGRATIONS, JobStore
from whisperd.transcript import Segment, Word

MODEL = "ggml-tiny.en.bin"


class FakeClock:
    """Epoch seconds that the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "whisperd.db"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, db_path: Path, clock: FakeClock) -> Iterator[JobStore]:
    if request.param == "sqlite":
        s = JobStore(db_path, clock=clock)
    else:
        server = request.getfixturevalue("postgres")
        s = PgJobStore(server.create_database(), host_id="test-host", clock=clock)
    yield s
    s.close()


def orphan_running_jobs(store: JobStore) -> None:
    """What a dead process leaves: for SQLite nothing to do (recover_interrupted treats
    every running job as orphaned); on PostgreSQL the dead host's leases run out."""
    if isinstance(store, PgJobStore):
        with store._write() as db:
            db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE status = 'running'")


def segment_rows(store: JobStore) -> int:
    with store._read() as db:
        return int(db.execute("SELECT COUNT(*) FROM segments").fetchone()[0])


def submit(store: JobStore, n: int = 1, **options: object) -> list[str]:
    return [
        store.create(JobOptions(**options), f"/uploads/{i}.wav", 11.0).id  # type: ignore[arg-type]
        for i in range(n)
    ]


def claim(store: JobStore) -> JobRecord:
    job = store.claim_next(MODEL)
    assert job is not None, "the queue is empty"
    return job


def fetch(store: JobStore, job_id: str, *, with_segments: bool = True) -> JobRecord:
    job = store.get(job_id, with_segments=with_segments)
    assert job is not None, f"job {job_id} is gone"
    return job


def seg(index: int, text: str = "hello", words: tuple[Word, ...] = ()) -> Segment:
    return Segment(index=index, start=index * 2.0, end=index * 2.0 + 1.5, text=text, words=words)


def test_lifecycle_create_claim_progress_segments_finish(store: JobStore, clock: FakeClock) -> None:
    options = JobOptions(language="en", beam_size=3, word_timestamps=True, filename="jfk.wav")
    created = store.create(options, "/uploads/a.wav", 11.0)
    assert created.status is JobStatus.QUEUED
    assert created.options == options
    assert (created.audio_path, created.duration_secs, created.language) == ("/uploads/a.wav", 11.0, "en")
    assert (created.created_at, created.started_at, created.completed_at) == (clock.now, None, None)
    assert created.attempts == 0 and created.progress == 0 and created.segments == ()
    assert store.queue_depth() == 1

    clock.now += 5
    claimed = claim(store)
    assert claimed.id == created.id
    assert claimed.status is JobStatus.RUNNING
    assert (claimed.attempts, claimed.model, claimed.started_at) == (1, MODEL, clock.now)
    assert store.claim_next(MODEL) is None
    assert store.queue_depth() == 0

    assert store.update_progress(created.id, 40.0)
    assert store.add_segments(created.id, [seg(0)])
    assert store.add_segments(created.id, [seg(1), seg(2)])
    assert store.update_progress(created.id, 250.0)  # clamped
    running = fetch(store, created.id)
    assert running.progress == 100.0
    assert [s.index for s in running.segments] == [0, 1, 2]
    assert fetch(store, created.id, with_segments=False).segments == ()

    clock.now += 10
    done = store.finish(created.id, JobStatus.DONE, language="en", language_probability=0.97)
    assert done.status is JobStatus.DONE and done.status.terminal
    assert (done.completed_at, done.language, done.language_probability) == (clock.now, "en", 0.97)
    assert [s.index for s in done.segments] == [0, 1, 2]
    assert store.get(created.id) == done
    assert store.counts() == {
        JobStatus.QUEUED: 0, JobStatus.RUNNING: 0, JobStatus.DONE: 1,
        JobStatus.FAILED: 0, JobStatus.CANCELLED: 0,
    }


def test_finish_replaces_segments_and_records_failure(store: JobStore) -> None:
    a, b = submit(store, 2)
    store.claim_next(MODEL)
    store.add_segments(a, [seg(0, "draft"), seg(1, "draft")])
    done = store.finish(a, JobStatus.DONE, segments=[seg(0, "final")])
    assert [(s.index, s.text) for s in done.segments] == [(0, "final")]

    failed = store.finish(b, JobStatus.FAILED, error="audio file missing")  # straight from queued
    assert (failed.status, failed.error) == (JobStatus.FAILED, "audio file missing")
    with pytest.raises(JobStateError):
        store.finish(a, JobStatus.FAILED, error="too late")
    with pytest.raises(ValueError, match="done, failed or cancelled"):
        store.finish(b, JobStatus.RUNNING)


def test_fifo_order_and_requeue_at_head_or_tail(store: JobStore) -> None:
    a, b, c, d = submit(store, 4)
    assert (claim(store).id, claim(store).id) == (a, b)
    store.add_segments(a, [seg(0)])
    store.update_progress(a, 30)

    requeued = store.requeue(a, reason="model unloaded")  # head by default: goes before c
    assert requeued.status is JobStatus.QUEUED
    assert requeued.progress == 0 and fetch(store, a).segments == ()
    store.requeue(b, at_head=False, reason="shutdown")  # tail: after d
    e = submit(store)[0]  # created after b went to the tail, so after b

    order = [claim(store).id for _ in range(5)]
    assert order == [a, c, d, b, e]
    assert fetch(store, a).attempts == 2
    with pytest.raises(JobStateError, match="requeue"):
        store.requeue(store.finish(a, JobStatus.DONE).id)
    with pytest.raises(JobStateError):
        store.requeue(submit(store)[0])  # queued, not running


def test_eight_threads_claim_200_jobs_each_exactly_once(store: JobStore) -> None:
    ids = submit(store, 200)
    claimed: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        while (job := store.claim_next(f"worker-{n}")) is not None:
            claimed[n].append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    every = [job_id for mine in claimed for job_id in mine]
    assert Counter(every) == Counter(ids)  # each exactly once
    assert all(fetch(store, i, with_segments=False).attempts == 1 for i in ids)
    assert store.counts()[JobStatus.RUNNING] == 200


def test_two_connections_on_one_file_never_double_claim(db_path: Path) -> None:
    # Two stores on one file stand in for two processes: BEGIN IMMEDIATE must serialise
    # their claims, since the in-process lock does not span them.
    with JobStore(db_path) as one, JobStore(db_path) as two:
        ids = submit(one, 100)
        got: list[str] = []
        lock = threading.Lock()

        def worker(s: JobStore) -> None:
            while (job := s.claim_next(MODEL)) is not None:
                with lock:
                    got.append(job.id)

        threads = [threading.Thread(target=worker, args=(s,)) for s in (one, two, one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert Counter(got) == Counter(ids)


def test_restart_keeps_everything_and_recovers_running_jobs(db_path: Path, clock: FakeClock) -> None:
    store = JobStore(db_path, clock=clock)
    behind, interrupted, finished, waiting = submit(store, 4)
    assert claim(store).id == behind
    store.requeue(behind, at_head=False)  # now behind `waiting`
    assert claim(store).id == interrupted
    store.add_segments(interrupted, [seg(0)])
    store.update_progress(interrupted, 55)
    assert claim(store).id == finished
    store.finish(finished, JobStatus.DONE, segments=[seg(0, "kept")])
    before = {r.id: r for r in store.list(limit=100)[0]}
    store.close()  # the process dies here, `interrupted` still running

    store = JobStore(db_path, clock=clock)
    assert {r.id: r for r in store.list(limit=100)[0]} == before
    assert store.recover_interrupted() == ([interrupted], [])
    job = fetch(store, interrupted)
    assert job.status is JobStatus.QUEUED and job.progress == 0 and job.segments == ()
    assert fetch(store, finished).segments == (seg(0, "kept"),)
    # The interrupted job goes first, then the queue as it was.
    order = [claim(store) for _ in range(3)]
    assert [j.id for j in order] == [interrupted, waiting, behind]
    assert order[0].attempts == 2
    store.close()  # dies again, with all three running

    store = JobStore(db_path, clock=clock)
    assert store.recover_interrupted(max_attempts=3) == ([interrupted, waiting, behind], [])
    assert claim(store).attempts == 3
    store.close()  # and a third time: `interrupted` has had its three starts

    store = JobStore(db_path, clock=clock)
    assert store.recover_interrupted(max_attempts=3) == ([], [interrupted])
    job = fetch(store, interrupted)
    assert job.status is JobStatus.FAILED
    assert job.error == "interrupted 3 times (server restarts or crashes); giving up"
    assert job.completed_at == clock.now
    assert [claim(store).id for _ in range(2)] == [waiting, behind]
    store.close()


def test_recover_keeps_the_order_of_several_interrupted_jobs(store: JobStore) -> None:
    a, b, c = submit(store, 3)
    waiting = submit(store)[0]
    for _ in range(3):
        store.claim_next(MODEL)
    orphan_running_jobs(store)
    assert store.recover_interrupted() == ([a, b, c], [])
    assert [claim(store).id for _ in range(4)] == [a, b, c, waiting]


def test_cancel_rules(store: JobStore, clock: FakeClock) -> None:
    finished, running, queued = submit(store, 3)
    assert claim(store).id == finished
    store.finish(finished, JobStatus.DONE)
    assert claim(store).id == running

    cancelled = store.cancel(queued)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.completed_at == clock.now
    assert cancelled.error == "cancelled by a client"
    assert store.claim_next(MODEL) is None  # left the queue at once

    store.add_segments(running, [seg(0)])
    cancelled = store.cancel(running)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.segments == (seg(0),)  # what was decoded stays readable
    # The worker notices late: its writes are refused without an error, its finish is.
    assert store.update_progress(running, 90) is False
    assert store.add_segments(running, [seg(1)]) is False
    with pytest.raises(JobStateError) as refused:
        store.finish(running, JobStatus.DONE)
    assert refused.value.status == "cancelled"
    assert fetch(store, running).segments == (seg(0),)

    for terminal in (finished, running):
        with pytest.raises(JobStateError, match="cancel"):
            store.cancel(terminal)
    with pytest.raises(JobNotFound, match="no job with id"):
        store.cancel("no-such-job")
    with pytest.raises(JobNotFound):
        store.update_progress("no-such-job", 1)
    with pytest.raises(JobNotFound):
        store.add_segments("no-such-job", [seg(0)])
    with pytest.raises(JobNotFound):
        store.requeue("no-such-job")
    assert store.get("no-such-job") is None


def test_list_pages_newest_first_with_status_filter(store: JobStore) -> None:
    ids = submit(store, 7)  # oldest first
    store.claim_next(MODEL)
    store.finish(ids[0], JobStatus.DONE, segments=[seg(0)])
    store.claim_next(MODEL)
    store.claim_next(MODEL)

    page, cursor = store.list(limit=3)
    assert [j.id for j in page] == ids[6:3:-1]
    assert cursor is not None
    late = submit(store, 2)  # inserted between pages: must not shift later pages
    page2, cursor2 = store.list(limit=3, cursor=cursor)
    assert [j.id for j in page2] == ids[3:0:-1]
    page3, cursor3 = store.list(limit=3, cursor=cursor2)
    assert [j.id for j in page3] == [ids[0]] and cursor3 is None
    assert page3[0].segments == (seg(0),)
    assert store.list(limit=3, cursor=cursor2, with_segments=False)[0][0].segments == ()

    fresh, _ = store.list(limit=2)
    assert [j.id for j in fresh] == late[::-1]

    queued = [j.id for j in store.list(statuses=[JobStatus.QUEUED], limit=100)[0]]
    assert queued == (ids[3:] + late)[::-1]
    active, cur = store.list(statuses={JobStatus.RUNNING, JobStatus.DONE}, limit=2)
    assert [j.id for j in active] == [ids[2], ids[1]]
    rest, cur = store.list(statuses={JobStatus.RUNNING, JobStatus.DONE}, limit=2, cursor=cur)
    assert [j.id for j in rest] == [ids[0]] and cur is None
    assert store.list(limit=9) == (store.list(limit=100)[0], None)  # exactly one page

    with pytest.raises(InvalidCursor, match="next_page_token"):
        store.list(cursor="not-a-cursor")
    with pytest.raises(ValueError):
        store.list(limit=0)


def test_purge_finished_by_age(store: JobStore, clock: FakeClock) -> None:
    old_done, old_failed, recent, running, queued = submit(store, 5)
    store.claim_next(MODEL)
    store.claim_next(MODEL)
    store.finish(old_done, JobStatus.DONE, segments=[seg(0)])
    store.finish(old_failed, JobStatus.FAILED, error="boom")
    clock.now += 3600
    store.cancel(recent)
    store.claim_next(MODEL)  # recent was cancelled, so this takes `running`
    clock.now += 3600

    purged = store.purge_finished(older_than_epoch=clock.now - 3600)
    assert [j.id for j in purged] == [old_done, old_failed]
    assert purged[0].audio_path == "/uploads/0.wav"
    assert store.get(old_done) is None and store.get(old_failed) is None
    assert store.get(recent) is not None
    # Running and queued jobs are never purged, however old.
    assert [j.id for j in store.purge_finished(older_than_epoch=clock.now + 10**9)] == [recent]
    assert {j.id for j in store.list(limit=100)[0]} == {running, queued}
    # Their segments went with them (ON DELETE CASCADE).
    assert segment_rows(store) == 0


def test_wal_mode_and_schema_version(db_path: Path) -> None:
    JobStore(db_path).close()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        raw.execute("PRAGMA user_version = 99")
    finally:
        raw.close()
    with pytest.raises(RuntimeError, match="newer whisperd"):
        JobStore(db_path)


def test_segments_with_words_round_trip_exactly(store: JobStore) -> None:
    job = submit(store)[0]
    store.claim_next(MODEL)
    awkward = 0.1 + 0.2  # 0.30000000000000004: any text round trip that rounds breaks it
    segments = [
        Segment(
            index=0, start=0.0, end=awkward, text=" And so, my fellow Americans…",
            no_speech_prob=1 / 3,
            words=(
                Word("And", 0.0, 1 / 7, 0.987654321012345),
                Word("so,", 1 / 7, awkward, 5e-324),
                Word("Grüße 🎙", 1e300, 1e300 + 1, 1.0),
            ),
        ),
        Segment(index=1, start=awkward, end=11.0, text="", words=()),
    ]
    store.add_segments(job, segments[:1])
    store.add_segments(job, segments[1:])
    assert fetch(store, job).segments == tuple(segments)
    assert store.finish(job, JobStatus.DONE).segments == tuple(segments)
    assert store.list()[0][0].segments == tuple(segments)


def test_options_round_trip_and_validation() -> None:
    options = JobOptions(
        language="de", task="translate", webhook_url="http://hooks/x", beam_size=1,
        temperature=0.4, temperature_increment=0.0, initial_prompt="Kubernetes, gRPC",
        word_timestamps=True, vad=True, filename="talk.mp3",
    )
    assert JobOptions.from_dict(options.to_dict()) == options
    # Rows written by another version: missing keys take defaults, unknown keys are ignored.
    assert JobOptions.from_dict({"language": "fr", "diarize": True}) == JobOptions(language="fr")
    for field, bad in [
        ("task", {"task": "summarise"}),
        ("beam_size", {"beam_size": 0}),
        ("beam_size", {"beam_size": 17}),
        ("temperature", {"temperature": 1.5}),
        ("temperature_increment", {"temperature_increment": float("nan")}),
        ("initial_prompt", {"initial_prompt": "x" * 4097}),
    ]:
        with pytest.raises(InvalidOptions) as refused:
            JobOptions(**bad)  # type: ignore[arg-type]
        assert refused.value.field == field
    assert [s for s in JobStatus if s.terminal] == [JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED]


def test_closed_store_refuses_calls(db_path: Path) -> None:
    store = JobStore(db_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        store.get("anything")
