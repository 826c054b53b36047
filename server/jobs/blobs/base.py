"""The one interface both places for uploads offer."""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import AsyncIterator, Protocol

from whisperd.server.jobs.model import JobRecord


class BlobStore(Protocol):
    """Uploads in, audio out to the worker, deleted when the job is done with it.

    A stored upload is named by a reference string kept in the job's audio_path: a local
    path for the spool, s3://bucket/key for an object store.
    """

    def clean_partials(self) -> int:
        """At start-up: remove uploads cut off by a crash; how many."""
        ...

    async def receive(self, chunks: AsyncIterator[bytes], suffix: str = "") -> tuple[Path, int]:
        """Store the chunks as they arrive; a local file of the upload (to probe) and its
        size. Nothing is kept if it fails. Follow with commit() or discard()."""
        ...

    async def commit(self, local: Path) -> str:
        """The upload received as `local` is kept: its reference for the job."""
        ...

    async def discard(self, local: Path) -> None:
        """The upload received as `local` is refused: remove every copy."""
        ...

    def localise(self, job: JobRecord) -> AbstractContextManager[JobRecord]:
        """On a worker thread: the job with audio_path naming a local file to decode, for
        the length of the block. A missing upload gives a path that does not exist."""
        ...

    def delete(self, ref: str | None) -> None:
        """The job is done with its audio (finished, cancelled, purged); idempotent."""
        ...
