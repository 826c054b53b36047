"""Uploads in a real S3-compatible store (versitygw): streamed in parts, read back by a
worker, deleted; a refused upload leaves nothing behind."""
from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from whisperd.server.jobs.blobs import LocalBlobs, open_blobs
from whisperd.server.jobs.blobs.s3 import PART_BYTES, S3Blobs
from whisperd.server.jobs.model import JobOptions, JobRecord, JobStatus
from whisperd.server.jobs.spool import UploadTooLarge


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


def job_with(ref: str) -> JobRecord:
    return JobRecord(
        id="j1", status=JobStatus.RUNNING, options=JobOptions(), audio_path=ref, duration_secs=1.0,
        created_at=0.0,
    )


@pytest.fixture
def blobs(object_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Blobs:  # type: ignore[no-untyped-def]
    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    bucket = object_store.create_bucket()
    made = open_blobs(f"s3://{bucket}/audio/in", tmp_path / "uploads", endpoint_url=object_store.endpoint)
    assert isinstance(made, S3Blobs)
    return made


def test_upload_streams_in_parts_and_reads_back(blobs: S3Blobs, object_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * PART_BYTES + 12345)  # three parts: two full, one short
    local, size = asyncio.run(blobs.receive(chunks_of(data), ".WAV"))
    assert size == len(data) and local.read_bytes() == data  # the copy Submit probes
    ref = asyncio.run(blobs.commit(local))
    assert ref.startswith(f"s3://{blobs.bucket}/audio/in/") and ref.endswith(".wav")
    assert not local.exists()

    s3 = object_store.client()
    key = ref.split("/", 3)[3]
    head = s3.head_object(Bucket=blobs.bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts

    with blobs.localise(job_with(ref)) as job:
        fetched = Path(job.audio_path or "")
        assert hashlib.sha256(fetched.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not fetched.exists()  # the worker's copy goes with the job

    blobs.delete(ref)
    blobs.delete(ref)  # idempotent
    assert s3.list_objects_v2(Bucket=blobs.bucket).get("KeyCount", 0) == 0
    with blobs.localise(job_with(ref)) as job:  # a missing upload: a path that is not there
        assert not Path(job.audio_path or "").exists()


def test_refused_uploads_leave_nothing(object_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    bucket = object_store.create_bucket()
    blobs = S3Blobs(f"s3://{bucket}", tmp_path / "up", max_bytes=PART_BYTES + 10, endpoint_url=object_store.endpoint)
    s3 = object_store.client()
    with pytest.raises(UploadTooLarge):
        asyncio.run(blobs.receive(chunks_of(os.urandom(PART_BYTES + 100))))
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list((tmp_path / "up").glob("*.part")) == []

    local, _ = asyncio.run(blobs.receive(chunks_of(b"not audio at all")))
    asyncio.run(blobs.discard(local))  # Submit refused it (probe failed)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0 and not local.exists()

    with pytest.raises(RuntimeError, match="bucket is not reachable"):
        S3Blobs("s3://no-such-bucket", tmp_path / "x", endpoint_url=object_store.endpoint)


def test_local_blobs_keep_the_spool_paths(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "uploads")
    local, size = asyncio.run(blobs.receive(chunks_of(b"abc" * 1000), ".mp3"))
    ref = asyncio.run(blobs.commit(local))
    assert ref == str(local) and Path(ref).read_bytes() == b"abc" * 1000 and size == 3000
    with blobs.localise(job_with(ref)) as job:
        assert job.audio_path == ref
    blobs.delete(ref)
    assert not local.exists()
