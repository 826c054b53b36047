"""Uploads in DATA_DIR/uploads (the embedded default): the spool, as a BlobStore."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import AsyncIterator

from whisperd.server.jobs.model import JobRecord
from whisperd.server.jobs.spool import Spool


class LocalBlobs:
    def __init__(self, folder: Path, max_bytes: int = 0) -> None:
        self.spool = Spool(folder, max_bytes)

    def clean_partials(self) -> int:
        return self.spool.clean_partials()

    async def receive(self, chunks: AsyncIterator[bytes], suffix: str = "") -> tuple[Path, int]:
        return await self.spool.receive(chunks, suffix)

    async def commit(self, local: Path) -> str:
        return str(local)

    async def discard(self, local: Path) -> None:
        local.unlink(missing_ok=True)

    @contextmanager
    def localise(self, job: JobRecord) -> Iterator[JobRecord]:
        yield job  # already a local file

    def delete(self, ref: str | None) -> None:
        if ref and not ref.startswith("s3://"):
            Path(ref).unlink(missing_ok=True)
