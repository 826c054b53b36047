"""Uploads go to disk as they arrive: memory stays flat whatever the size.

Chunks are gathered into 1 MiB batches and written on a worker thread, so neither the
event loop blocks on disk nor does every 64 KiB chunk pay a thread hop.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import AsyncIterator, BinaryIO

_BATCH_BYTES = 1 << 20


class UploadTooLarge(Exception):
    """The upload passed MAX_UPLOAD_BYTES."""


class Spool:
    def __init__(self, folder: Path, max_bytes: int = 0) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)

    def clean_partials(self) -> int:
        """Uploads cut off by a crash are never jobs: remove them at start-up."""
        removed = 0
        for part in self.folder.glob("*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed

    async def receive(self, chunks: AsyncIterator[bytes], suffix: str = "") -> tuple[Path, int]:
        """Write every chunk to a new file; return its path and size. On any failure the
        partial file is removed."""
        name = uuid.uuid4().hex
        part = self.folder / f"{name}.part"
        final = self.folder / f"{name}{_safe_suffix(suffix)}"
        size = 0
        batch: list[bytes] = []
        batched = 0
        f: BinaryIO = await asyncio.to_thread(part.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if self.max_bytes and size > self.max_bytes:
                    raise UploadTooLarge(
                        f"upload is larger than MAX_UPLOAD_BYTES ({self.max_bytes} bytes)"
                    )
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _BATCH_BYTES:
                    await asyncio.to_thread(f.writelines, batch)
                    batch, batched = [], 0
            if batch:
                await asyncio.to_thread(f.writelines, batch)
            await asyncio.to_thread(_flush, f)
        except BaseException:
            f.close()
            part.unlink(missing_ok=True)
            raise
        f.close()
        await asyncio.to_thread(os.replace, part, final)
        return final, size


def _flush(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _safe_suffix(suffix: str) -> str:
    # Only a short alphanumeric extension survives (it helps FFmpeg guess raw formats).
    ext = suffix.lower().lstrip(".")
    return f".{ext}" if ext.isalnum() and len(ext) <= 8 else ""
