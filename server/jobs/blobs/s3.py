"""Uploads in an S3-compatible object store (BLOB_URL=s3://bucket/prefix), so that every
replica's workers can read every upload.

An upload streams into a multipart upload as it arrives: each 8 MiB becomes a part sent
while the next chunks come in, so memory stays at one part whatever the file's size. The
same bytes go to a local spool file too, because Submit probes the audio before it
accepts the job (duration, codec); that copy is removed once the job is stored. Workers
download the object to a local file for the decoder and remove it after the job.

Endpoint: S3_ENDPOINT_URL (or boto3's own AWS_ENDPOINT_URL); credentials and region
through boto3's usual chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, ...).
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from whisperd.server.jobs.model import JobRecord
from whisperd.server.jobs.spool import Spool

log = logging.getLogger(__name__)

PART_BYTES = 8 << 20  # S3 wants at least 5 MiB for every part but the last


def parse_blob_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix/")."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Blobs:
    def __init__(
        self, blob_url: str, spool_dir: Path, max_bytes: int = 0, *, endpoint_url: str = ""
    ) -> None:
        self.bucket, self.prefix = parse_blob_url(blob_url)
        self.spool = Spool(spool_dir, max_bytes)
        self.cache_dir = spool_dir / "fetched"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            # Checksums only where S3 demands them: with boto3's default (a CRC32 on every
            # part) S3-compatible stores that do not keep part checksums refuse the
            # completion of a multipart upload.
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._pending: dict[Path, str] = {}  # received, not yet committed: local -> key
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise RuntimeError(
                f"BLOB_URL s3://{self.bucket}: the bucket is not reachable ({exc}); create it "
                "or check S3_ENDPOINT_URL and the AWS_* credentials"
            ) from None

    def _ref(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _key(self, ref: str) -> str | None:
        head = f"s3://{self.bucket}/"
        return ref[len(head):] if ref.startswith(head) else None

    def clean_partials(self) -> int:
        # Multipart uploads a crash left open are aborted by the bucket's lifecycle rule
        # (docs/scaling.md); local spool copies are ours to clean.
        removed = self.spool.clean_partials()
        for stale in self.cache_dir.glob("*"):
            stale.unlink(missing_ok=True)
        return removed

    async def receive(self, chunks: AsyncIterator[bytes], suffix: str = "") -> tuple[Path, int]:
        key = f"{self.prefix}{uuid.uuid4().hex}{suffix.lower() if suffix.isascii() else ''}"
        upload_id = (
            await asyncio.to_thread(self._client.create_multipart_upload, Bucket=self.bucket, Key=key)
        )["UploadId"]
        parts: list[dict[str, Any]] = []
        sending: asyncio.Task[dict[str, Any]] | None = None

        async def send(data: bytes) -> None:
            nonlocal sending
            if sending is not None:  # one part in flight at a time bounds memory
                parts.append(await sending)
            number = len(parts) + 1
            sending = asyncio.create_task(asyncio.to_thread(self._part, key, upload_id, number, data))

        async def tee() -> AsyncIterator[bytes]:
            buffer: list[bytes] = []
            size = 0
            async for chunk in chunks:
                buffer.append(chunk)
                size += len(chunk)
                if size >= PART_BYTES:
                    await send(b"".join(buffer))
                    buffer, size = [], 0
                yield chunk
            if buffer or not parts and sending is None:
                await send(b"".join(buffer))

        try:
            path, size = await self.spool.receive(tee(), suffix)
            if sending is not None:
                parts.append(await sending)
            await asyncio.to_thread(
                self._client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                UploadId=upload_id, MultipartUpload={"Parts": parts},
            )
        except BaseException:
            if sending is not None and not sending.done():
                sending.cancel()
            await asyncio.shield(asyncio.to_thread(self._abort, key, upload_id))
            raise
        self._pending[path] = key
        return path, size

    def _part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        answer = self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            log.warning("could not abort the multipart upload of %s: %s", key, exc)

    async def commit(self, local: Path) -> str:
        key = self._pending.pop(local)
        await asyncio.to_thread(local.unlink, True)
        return self._ref(key)

    async def discard(self, local: Path) -> None:
        key = self._pending.pop(local, None)
        await asyncio.to_thread(local.unlink, True)
        if key is not None:
            await asyncio.to_thread(self._delete_key, key)

    @contextmanager
    def localise(self, job: JobRecord) -> Iterator[JobRecord]:
        key = self._key(job.audio_path or "")
        if key is None:  # a local path (stored before BLOB_URL was set)
            yield job
            return
        fd, name = tempfile.mkstemp(prefix=f"{job.id}-", dir=self.cache_dir)
        os.close(fd)
        local = Path(name)
        try:
            try:
                self._client.download_file(self.bucket, key, str(local))
            except ClientError as exc:
                log.warning("job %s: audio %s could not be read: %s", job.id, job.audio_path, exc)
                local.unlink(missing_ok=True)  # the decoder then reports the file missing
            yield replace(job, audio_path=str(local))
        finally:
            local.unlink(missing_ok=True)

    def delete(self, ref: str | None) -> None:
        if not ref:
            return
        key = self._key(ref)
        if key is None:
            if not ref.startswith("s3://"):
                Path(ref).unlink(missing_ok=True)
            return
        self._delete_key(key)

    def _delete_key(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            log.warning("could not delete s3://%s/%s: %s", self.bucket, key, exc)
