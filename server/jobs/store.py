"""The durable job store: SQLite in WAL mode, one file in DATA_DIR.

Every state change of a job is one transaction, so a crash at any moment leaves each job
either before or after the change, and `recover_interrupted` at the next start puts the
jobs that were running back in the queue.

The API is synchronous; the asyncio server calls it through `asyncio.to_thread`, and
worker threads call it directly.
"""
from __future__ import annotations

import base64
import binascii
import builtins
import json
import logging
import math
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from whisperd.transcript import Segment, Word

from whisperd.server.sqlite_file import SqliteFile

from .errors import InvalidCursor, JobNotFound, JobStateError
from .model import TERMINAL_STATUSES, JobOptions, JobRecord, JobStatus, new_job_id

log = logging.getLogger(__name__)

# Migrations, applied in order; PRAGMA user_version records how many have run. Append a
# new script to change the schema (for example the webhook registry); never edit one
# that has shipped, since existing files have already run it.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        -- Insertion order: List pages walk it, so a page token is stable under inserts.
        seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
        id                   TEXT    NOT NULL UNIQUE,
        status               TEXT    NOT NULL,
        options              TEXT    NOT NULL,  -- JobOptions as JSON
        audio_path           TEXT,
        duration_secs        REAL    NOT NULL,
        progress             REAL    NOT NULL DEFAULT 0,
        language             TEXT,
        language_probability REAL,
        error                TEXT,
        created_at           REAL    NOT NULL,
        started_at           REAL,
        completed_at         REAL,
        model                TEXT,
        attempts             INTEGER NOT NULL DEFAULT 0,
        -- Place in the queue, lowest first: a new job takes max + 1 (the tail), a job
        -- requeued at the head min(queued) - 1. Kept after the job leaves the queue so
        -- that max + 1 stays above every queued job.
        queue_pos            INTEGER NOT NULL
    );
    CREATE INDEX jobs_queue_head ON jobs (queue_pos) WHERE status = 'queued';
    CREATE INDEX jobs_queue_pos ON jobs (queue_pos);
    CREATE INDEX jobs_status_seq ON jobs (status, seq);
    CREATE INDEX jobs_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL;

    CREATE TABLE segments (
        job_id         TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx            INTEGER NOT NULL,
        start          REAL    NOT NULL,
        "end"          REAL    NOT NULL,
        text           TEXT    NOT NULL,
        no_speech_prob REAL    NOT NULL,
        words          TEXT,  -- JSON [[text, start, end, probability], ...]; NULL = none
        PRIMARY KEY (job_id, idx)
    ) WITHOUT ROWID;
    """,
    """
    -- JSON list of what a user should know about the job (e.g. the file ends early).
    ALTER TABLE jobs ADD COLUMN warnings TEXT;
    -- The client's idempotency key (JobOptions.request_id): a retried Submit with the
    -- same key gets the same job back, for as long as the job is kept.
    ALTER TABLE jobs ADD COLUMN request_id TEXT;
    CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;
    """,
)

_JOB_COLUMNS = (
    "seq, id, status, options, audio_path, duration_secs, progress, language, "
    "language_probability, error, created_at, started_at, completed_at, model, attempts, "
    "warnings"
)
_CURSOR_PREFIX = "j1:"  # versioned, so a later cursor format can refuse old tokens clearly
_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# Queue positions (see the queue_pos column). Both run inside the write transaction that
# uses them, so no other enqueue can take the same position.
_TAIL = "(SELECT COALESCE(MAX(queue_pos), 0) + 1 FROM jobs)"
_HEAD = "(SELECT COALESCE(MIN(queue_pos), 0) - 1 FROM jobs WHERE status = 'queued')"


class JobStore(SqliteFile):
    """Jobs and their segments in one SQLite file.

    Threads: one connection guarded by a lock. SQLite runs one writer at a time anyway,
    every call here is a short indexed statement or two, and a single connection keeps
    each compound change (claim, recover) atomic without SQLITE_BUSY retries between our
    own threads; a connection per thread would also strand connections in
    asyncio.to_thread's pool that close() could not reach. Transactions still open with
    BEGIN IMMEDIATE, so a second process on the same file (a CLI inspecting it) cannot
    interleave a write between our read and our update.

    (Annotations in this class spell `builtins.list`: the method `list` shadows the type.)
    """

    MIGRATIONS = MIGRATIONS
    SCHEMA = "job-store"

    # ----------------------------------------------------------------- jobs

    def create(
        self,
        options: JobOptions,
        audio_path: str | None,
        duration_secs: float,
        warnings: Sequence[str] = (),
    ) -> JobRecord:
        """A new job at the tail of the queue.

        When options.request_id names a job already stored, that job is returned instead
        and nothing is created (a retried Submit); the caller sees this by its audio_path
        not being the one it passed.
        """
        now = self._clock()
        job_id = new_job_id()
        with self._write() as db:
            if options.request_id and (
                existing := db.execute(
                    "SELECT id FROM jobs WHERE request_id = ?", (options.request_id,)
                ).fetchone()
            ):
                return self._load(db, existing[0], with_segments=True)
            db.execute(
                "INSERT INTO jobs (id, status, options, audio_path, duration_secs, language, "
                f"created_at, warnings, request_id, queue_pos) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {_TAIL})",
                (
                    job_id,
                    JobStatus.QUEUED.value,
                    json.dumps(options.to_dict()),
                    audio_path,
                    float(duration_secs),
                    options.language,
                    now,
                    json.dumps(list(warnings)) if warnings else None,
                    options.request_id,
                ),
            )
            return self._load(db, job_id, with_segments=False)

    def find_request(self, request_id: str) -> JobRecord | None:
        """The job a Submit with this idempotency key created, if it is still kept."""
        with self._read() as db:
            row = db.execute("SELECT id FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            return self._find(db, row[0], with_segments=True) if row else None

    def audio_in_use(self) -> set[str]:
        """Audio files of queued and running jobs: every other upload file is an orphan."""
        with self._read() as db:
            rows = db.execute(
                "SELECT audio_path FROM jobs WHERE status IN (?, ?) AND audio_path IS NOT NULL",
                tuple(s.value for s in _ACTIVE),
            ).fetchall()
        return {r[0] for r in rows}

    def get(self, job_id: str, *, with_segments: bool = True) -> JobRecord | None:
        with self._read() as db:
            return self._find(db, job_id, with_segments=with_segments)

    def list(
        self,
        statuses: Collection[JobStatus] = (),
        limit: int = 50,
        cursor: str | None = None,
        with_segments: bool = True,
    ) -> tuple[builtins.list[JobRecord], str | None]:
        """Jobs newest first, and the cursor of the next page (None on the last page).

        Pass the same statuses with the cursor. Jobs created after the first page never
        appear on later pages: the cursor is a position in insertion order.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if statuses:
            wanted = sorted({JobStatus(s).value for s in statuses})
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if cursor:
            where.append("seq < ?")
            params.append(_decode_cursor(cursor))
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)  # one more than asked tells whether another page exists
        with self._read() as db:
            rows = db.execute(sql, params).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            segments = self._segments_of(db, [r[1] for r in rows]) if with_segments else {}
        jobs = [_job_from_row(r, segments.get(r[1], ())) for r in rows]
        next_cursor = _encode_cursor(rows[-1][0]) if more else None
        return jobs, next_cursor

    def claim_next(self, model: str) -> JobRecord | None:
        """Take the job at the head of the queue and mark it running; None if none waits.

        One UPDATE picks and changes the row inside a write transaction, so two workers
        (threads here, or processes on the same file) never claim the same job.
        """
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = ?, model = ?, "
                "progress = 0 WHERE seq = (SELECT seq FROM jobs WHERE status = ? "
                "ORDER BY queue_pos LIMIT 1) RETURNING id",
                (JobStatus.RUNNING.value, now, model, JobStatus.QUEUED.value),
            ).fetchone()
            if row is None:
                return None
            # Segments of a requeued job were cleared by requeue(); nothing to load.
            return self._load(db, row[0], with_segments=False)

    def requeue(self, job_id: str, at_head: bool = True, reason: str = "") -> JobRecord:
        """Put a running job back in the queue (model unload, shutdown): its progress and
        segments start again from nothing, since the next attempt decodes from the start."""
        with self._write() as db:
            self._require(db, job_id, "requeue", (JobStatus.RUNNING,))
            position = _HEAD if at_head else _TAIL
            db.execute(
                f"UPDATE jobs SET status = ?, progress = 0, queue_pos = {position} WHERE id = ?",
                (JobStatus.QUEUED.value, job_id),
            )
            db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            record = self._load(db, job_id, with_segments=False)
        log.info(
            "job %s requeued at the %s%s", job_id, "head" if at_head else "tail",
            f": {reason}" if reason else "",
        )
        return record

    def update_progress(self, job_id: str, percent: float) -> bool:
        """Record progress of a running job (clamped to 0..100).

        Returns False, changing nothing, when the job is no longer running (cancelled or
        requeued meanwhile): the worker's callback can then stop quietly.
        """
        if math.isnan(percent):
            raise ValueError(f"progress of job {job_id} must be a number, got NaN")
        percent = min(100.0, max(0.0, float(percent)))
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND status = ?",
                (percent, job_id, JobStatus.RUNNING.value),
            ).rowcount
            if not changed:
                self._require_exists(db, job_id)
            return bool(changed)

    def add_segments(self, job_id: str, segments: Iterable[Segment]) -> bool:
        """Append decoded segments to a running job; each is stored under its own index, so
        sending one again replaces it rather than duplicating it.

        Returns False, changing nothing, when the job is no longer running.
        """
        rows = [_segment_row(job_id, s) for s in segments]
        with self._write() as db:
            status = self._status(db, job_id)
            if status is not JobStatus.RUNNING:
                return False
            db.executemany(_INSERT_SEGMENT, rows)
            return True

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        segments: Sequence[Segment] | None = None,
        language: str | None = None,
        language_probability: float | None = None,
        error: str | None = None,
    ) -> JobRecord:
        """End a queued or running job as done, failed or cancelled.

        `segments`, when given, replace those added so far (the whole transcript);
        `language` and `language_probability`, when given, replace the stored ones.
        Raises JobStateError if the job already ended, e.g. a client cancelled it while
        the worker was finishing: the first ending wins.
        """
        status = JobStatus(status)
        if not status.terminal:
            raise ValueError(f"finish() takes done, failed or cancelled, not {status}")
        now = self._clock()
        with self._write() as db:
            self._require(db, job_id, "finish", _ACTIVE)
            db.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, error = ?, "
                "language = COALESCE(?, language), "
                "language_probability = COALESCE(?, language_probability), "
                "progress = CASE WHEN ? THEN 100 ELSE progress END WHERE id = ?",
                (
                    status.value,
                    now,
                    error,
                    language,
                    language_probability,
                    status is JobStatus.DONE,
                    job_id,
                ),
            )
            if segments is not None:
                db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
                db.executemany(_INSERT_SEGMENT, [_segment_row(job_id, s) for s in segments])
            return self._load(db, job_id, with_segments=True)

    def cancel(self, job_id: str, reason: str = "cancelled by a client") -> JobRecord:
        """Cancel a queued or running job. Stopping the decoding of a running one is the
        engine's part; the store only records the decision, which is final."""
        now = self._clock()
        with self._write() as db:
            self._require(db, job_id, "cancel", _ACTIVE)
            db.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, error = ? WHERE id = ?",
                (JobStatus.CANCELLED.value, now, reason, job_id),
            )
            return self._load(db, job_id, with_segments=True)

    def recover_interrupted(
        self, max_attempts: int = 3
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """At start-up: jobs left running by a dead process go back to the head of the
        queue, in their original queue order, unless they have been started
        `max_attempts` times already; those fail. Returns (requeued ids, failed ids).

        Only for a store no other live process is working on (the embedded SQLite case):
        it treats every running job as orphaned.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        now = self._clock()
        requeued: builtins.list[str] = []
        failed: builtins.list[str] = []
        with self._write() as db:
            rows = db.execute(
                "SELECT id, attempts FROM jobs WHERE status = ? ORDER BY queue_pos DESC",
                (JobStatus.RUNNING.value,),
            ).fetchall()
            # Walking from the back and pushing each onto the head leaves them in their
            # original order, ahead of everything that was waiting.
            for job_id, attempts in rows:
                if attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = ?, completed_at = ?, error = ? WHERE id = ?",
                        (
                            JobStatus.FAILED.value,
                            now,
                            f"interrupted {attempts} times (server restarts or crashes); giving up",
                            job_id,
                        ),
                    )
                    # The last attempt's partial transcript is not a result.
                    db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
                    failed.append(job_id)
                else:
                    db.execute(
                        f"UPDATE jobs SET status = 'queued', progress = 0, queue_pos = {_HEAD} "
                        "WHERE id = ?",
                        (job_id,),
                    )
                    db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
                    requeued.append(job_id)
        requeued.reverse()
        failed.reverse()
        if requeued or failed:
            log.warning(
                "jobs interrupted by the last shutdown: %d requeued at the head of the "
                "queue, %d failed after %d starts", len(requeued), len(failed), max_attempts,
            )
        return requeued, failed

    def purge_finished(self, older_than_epoch: float) -> builtins.list[JobRecord]:
        """Delete jobs that ended before `older_than_epoch` and return them (without
        segments), so the caller can delete their files."""
        terminal = [s.value for s in TERMINAL_STATUSES]
        marks = ", ".join("?" * len(terminal))
        with self._write() as db:
            rows = db.execute(
                f"DELETE FROM jobs WHERE completed_at < ? AND status IN ({marks}) "
                f"RETURNING {_JOB_COLUMNS}",
                (older_than_epoch, *terminal),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [_job_from_row(r, ()) for r in rows]

    def counts(self) -> dict[JobStatus, int]:
        """Jobs per status; every status is present, zero when none."""
        with self._read() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = {s: 0 for s in JobStatus}
        for status, n in rows:
            counts[JobStatus(status)] = n
        return counts

    def queue_depth(self) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
            ).fetchone()
        return int(row[0])

    # ----------------------------------------------------------------- helpers
    # These run with the lock held, inside the caller's transaction where there is one.

    def _find(
        self, db: sqlite3.Connection, job_id: str, *, with_segments: bool
    ) -> JobRecord | None:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        segments = self._segments_of(db, [job_id]).get(job_id, ()) if with_segments else ()
        return _job_from_row(row, segments)

    def _load(self, db: sqlite3.Connection, job_id: str, *, with_segments: bool) -> JobRecord:
        record = self._find(db, job_id, with_segments=with_segments)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def _status(self, db: sqlite3.Connection, job_id: str) -> JobStatus:
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return JobStatus(row[0])

    def _require_exists(self, db: sqlite3.Connection, job_id: str) -> None:
        self._status(db, job_id)

    def _require(
        self, db: sqlite3.Connection, job_id: str, action: str, allowed: tuple[JobStatus, ...]
    ) -> None:
        status = self._status(db, job_id)
        if status not in allowed:
            raise JobStateError(job_id, status.value, action, " or ".join(allowed))

    def _segments_of(
        self, db: sqlite3.Connection, job_ids: Sequence[str]
    ) -> dict[str, tuple[Segment, ...]]:
        if not job_ids:
            return {}
        found: dict[str, builtins.list[Segment]] = {}
        # SQLite allows 32766 parameters per statement; list() pages stay far below.
        marks = ", ".join("?" * len(job_ids))
        for row in db.execute(
            f'SELECT job_id, idx, start, "end", text, no_speech_prob, words FROM segments '
            f"WHERE job_id IN ({marks}) ORDER BY job_id, idx",
            tuple(job_ids),
        ):
            found.setdefault(row[0], []).append(_segment_from_row(row))
        return {k: tuple(v) for k, v in found.items()}


# --------------------------------------------------------------------- row codecs

# Plain SQL that PostgreSQL runs too (pg_store.py shares these queries): ON CONFLICT,
# not SQLite's INSERT OR REPLACE.
_INSERT_SEGMENT = (
    'INSERT INTO segments (job_id, idx, start, "end", text, no_speech_prob, words) '
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, idx) DO UPDATE SET "
    'start = excluded.start, "end" = excluded."end", text = excluded.text, '
    "no_speech_prob = excluded.no_speech_prob, words = excluded.words"
)


def _segment_row(job_id: str, s: Segment) -> tuple[Any, ...]:
    # JSON writes floats with repr(), the shortest text that reads back as the same
    # double, so word times round-trip exactly.
    words = (
        json.dumps([[w.text, w.start, w.end, w.probability] for w in s.words]) if s.words else None
    )
    return (job_id, s.index, s.start, s.end, s.text, s.no_speech_prob, words)


def _segment_from_row(row: Sequence[Any]) -> Segment:
    _, index, start, end, text, no_speech_prob, words = row
    return Segment(
        index=index,
        start=start,
        end=end,
        text=text,
        no_speech_prob=no_speech_prob,
        words=tuple(Word(t, ws, we, p) for t, ws, we, p in json.loads(words)) if words else (),
    )


def _job_from_row(row: Sequence[Any], segments: tuple[Segment, ...]) -> JobRecord:
    (
        _seq, job_id, status, options, audio_path, duration_secs, progress, language,
        language_probability, error, created_at, started_at, completed_at, model, attempts,
        warnings,
    ) = row
    return JobRecord(
        id=job_id,
        status=JobStatus(status),
        options=JobOptions.from_dict(json.loads(options)),
        audio_path=audio_path,
        duration_secs=duration_secs,
        progress=progress,
        segments=segments,
        language=language,
        language_probability=language_probability,
        error=error,
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
        model=model,
        attempts=attempts,
        warnings=tuple(json.loads(warnings)) if warnings else (),
    )


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        seq = int(text[len(_CURSOR_PREFIX):])
        if not 0 < seq < 2**63:  # SQLite integers are 64-bit; beyond is no position
            raise ValueError(seq)
        return seq
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(cursor) from None
