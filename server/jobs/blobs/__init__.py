"""Where uploaded audio lives between Submit and the job's end: `open_blobs` picks the
local spool (BLOB_URL unset) or an S3-compatible object store (BLOB_URL=s3://...)."""
from __future__ import annotations

from pathlib import Path

from .base import BlobStore
from .local import LocalBlobs


def open_blobs(
    blob_url: str, uploads_dir: Path, max_bytes: int = 0, *, endpoint_url: str = ""
) -> BlobStore:
    if not blob_url:
        return LocalBlobs(uploads_dir, max_bytes)
    from .s3 import S3Blobs  # boto3 only where it is used

    return S3Blobs(blob_url, uploads_dir, max_bytes, endpoint_url=endpoint_url)


__all__ = ["BlobStore", "LocalBlobs", "open_blobs"]
