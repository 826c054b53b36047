"""The job store's answers to the edge cases: idempotent Submit keys, hostile page tokens,
what recovery leaves behind, warnings kept with the job."""
from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from whisperd.server.jobs.errors import InvalidCursor
from whisperd.server.jobs.model import JobOptions, JobStatus
from whisperd.server.jobs.store import JobStore
from whisperd.transcript import Segment

MODEL = "ggml-tiny.en.bin"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "whisperd.db")
    yield s
    s.close()


def test_a_request_id_creates_one_job_however_often_it_is_sent(store: JobStore) -> None:
    first = store.create(JobOptions(request_id="retry-me"), "/uploads/a.wav", 11.0)
    again = store.create(JobOptions(request_id="retry-me"), "/uploads/b.wav", 11.0)
    assert again.id == first.id and again.audio_path == "/uploads/a.wav"
    other = store.create(JobOptions(request_id="another"), "/uploads/c.wav", 11.0)
    plain = [store.create(JobOptions(), f"/uploads/{i}.wav", 1.0) for i in range(2)]
    assert len({first.id, other.id, *(j.id for j in plain)}) == 4
    found = store.find_request("retry-me")
    assert found is not None and found.id == first.id
    assert store.find_request("never-sent") is None
    assert store.counts()[JobStatus.QUEUED] == 4


def test_request_ids_are_unique_even_past_the_store_api(store: JobStore) -> None:
    store.create(JobOptions(request_id="k"), "/uploads/a.wav", 1.0)
    raw = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO jobs (id, status, options, duration_secs, created_at, queue_pos, request_id) "
            "VALUES ('x', 'queued', '{}', 1, 0, 99, 'k')"
        )
    raw.close()


@pytest.mark.parametrize("seq", ["99999999999999999999999999", "-5", "0", str(2**63)])
def test_a_page_token_with_an_impossible_position_is_an_invalid_cursor(store: JobStore, seq: str) -> None:
    token = base64.urlsafe_b64encode(f"j1:{seq}".encode()).decode().rstrip("=")
    with pytest.raises(InvalidCursor):
        store.list(cursor=token)


def test_a_job_failed_by_recovery_keeps_no_partial_transcript(store: JobStore) -> None:
    job = store.create(JobOptions(), "/uploads/a.wav", 11.0)
    for _ in range(3):
        store.recover_interrupted()
        store.claim_next(MODEL)
        store.add_segments(job.id, [Segment(0, 0.0, 1.0, "half a sentence", 0.1)])
    requeued, failed = store.recover_interrupted(max_attempts=3)
    assert (requeued, failed) == ([], [job.id])
    ended = store.get(job.id)
    assert ended is not None and ended.status == JobStatus.FAILED
    assert ended.segments == ()


def test_warnings_are_kept_with_the_job_and_audio_in_use_names_live_uploads(store: JobStore) -> None:
    warned = store.create(JobOptions(), "/uploads/a.mp3", 0.9, warnings=["the file ends early"])
    done = store.create(JobOptions(), "/uploads/b.wav", 1.0)
    store.claim_next(MODEL)
    store.claim_next(MODEL)
    store.finish(done.id, JobStatus.DONE, segments=[])
    again = store.get(warned.id)
    assert again is not None and again.warnings == ("the file ends early",)
    assert store.get(done.id).warnings == ()  # type: ignore[union-attr]
    assert store.audio_in_use() == {"/uploads/a.mp3"}
