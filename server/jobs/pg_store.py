"""The job store on PostgreSQL, shared by many replicas (DATABASE_URL).

Same schema and the same queries as the SQLite store (store.py), run through
server/postgres.py; what differs is what several live processes on one queue need:

- a claim takes the queue's head with FOR UPDATE SKIP LOCKED, so replicas never wait
  on each other's claims and never take the same job;
- a claimed job carries a lease (owner, expiry on the database's clock) that the owner's
  heartbeat renews; `recover_interrupted` returns jobs whose lease ran out (their host
  died) to the head of the queue with attempts + 1, or fails them after max_attempts;
- a worker's writes to a running job (progress, segments, finish, requeue) are fenced
  by the lease: a host that lost its lease (paused past it, then woke) cannot overwrite
  the job another host now runs;
- the `hosts` table is the fleet: each replica's heartbeat with what it runs.
"""
from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from whisperd.server.postgres import DB_NOW, PgConnection, PgDatabase
from whisperd.transcript import Segment

from .errors import JobStateError
from .model import JobOptions, JobRecord, JobStatus
from .store import MIGRATIONS, JobStore

log = logging.getLogger(__name__)

# PostgreSQL only: append, never edit one that has shipped.
PG_MIGRATIONS: tuple[str, ...] = (
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION;
    CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';
    CREATE TABLE hosts (
        id           TEXT PRIMARY KEY,
        started_at   DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        info         TEXT NOT NULL  -- JSON: address, model, model state, GPUs, running jobs
    );
    """,
)

# Where job events go between replicas (pg_events.py listens).
EVENTS_CHANNEL = "whisperd_job_events"


@dataclass(frozen=True, slots=True)
class HostRecord:
    id: str
    started_at: float
    heartbeat_at: float
    info: dict[str, Any]
    running_jobs: tuple[str, ...] = ()


class PgJobStore(PgDatabase, JobStore):  # type: ignore[misc]
    """JobStore's interface on PostgreSQL, for one replica (`host_id`) of many."""

    MIGRATIONS = MIGRATIONS
    SCHEMA = "job-store"
    PG_MIGRATIONS = PG_MIGRATIONS
    PG_SCHEMA = "job-store-cluster"

    def __init__(
        self,
        url: str,
        *,
        host_id: str,
        lease_secs: float = 30.0,
        clock: Callable[[], float] = time.time,
        pool_size: int = 8,
    ) -> None:
        if lease_secs <= 0:
            raise ValueError(f"lease_secs must be positive, got {lease_secs}")
        self.host_id = host_id
        self.lease_secs = float(lease_secs)
        self.started_at = clock()
        PgDatabase.__init__(self, url, clock=clock, pool_size=pool_size)

    # ------------------------------------------------------------------ the queue

    def create(self, options: JobOptions, audio_path: str | None, duration_secs: float, *args: Any, **kw: Any) -> JobRecord:
        """As JobStore.create. Two replicas that take the same request_id at once both
        pass the existence check (row locks cannot lock a row not yet there); the unique
        index refuses the second insert, which then returns the first one's job."""
        try:
            return super().create(options, audio_path, duration_secs, *args, **kw)
        except psycopg.errors.UniqueViolation:
            request_id = getattr(options, "request_id", None)
            if not request_id:
                raise
            with self._read() as db:
                row = db.execute("SELECT id FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
                if row is None:
                    raise
                return self._load(db, row[0], with_segments=True)  # type: ignore[arg-type]

    def claim_next(self, model: str) -> JobRecord | None:
        """The head of the queue, now running here under a fresh lease; None if none
        waits. SKIP LOCKED: a row another replica is claiming right now is passed over
        rather than waited for."""
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                f"model = ?, progress = 0, lease_owner = ?, lease_expires_at = {DB_NOW} + ? "
                "WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' "
                "ORDER BY queue_pos, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
                (now, model, self.host_id, self.lease_secs),
            ).fetchone()
            if row is None:
                return None
            return self._load(db, row[0], with_segments=False)  # type: ignore[arg-type]

    def heartbeat(self, running: Collection[str], info: dict[str, Any] | None = None) -> int:
        """Renew the leases of the jobs `running` here and this host's row in `hosts`;
        returns how many leases were renewed. By id, not by owner: a replica restarted
        under the same HOST_ID must not keep alive the jobs its dead predecessor held."""
        with self._write() as db:
            renewed = db.execute(
                f"UPDATE jobs SET lease_expires_at = {DB_NOW} + ? "
                "WHERE status = 'running' AND lease_owner = ? AND id = ANY(?)",
                (self.lease_secs, self.host_id, list(running)),
            ).rowcount
            db.execute(
                f"INSERT INTO hosts (id, started_at, heartbeat_at, info) VALUES (?, ?, {DB_NOW}, ?) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "info = excluded.info",
                (self.host_id, self.started_at, json.dumps(info or {})),
            )
            # Rows of replicas that died without leaving: kept a day for the record.
            db.execute(f"DELETE FROM hosts WHERE heartbeat_at < {DB_NOW} - 86400")
        return renewed

    def recover_interrupted(
        self, max_attempts: int = 3
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Jobs whose lease ran out (their host died or lost the database) go back to the
        head of the queue in their queue order, or fail once started `max_attempts`
        times. Any replica may call it at any time: live leases are never touched, and
        SKIP LOCKED lets two replicas sweep at once without taking the same job."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        now = self._clock()
        requeued: builtins.list[str] = []
        failed: builtins.list[str] = []
        with self._write() as db:
            rows = db.execute(
                "SELECT id, attempts, lease_owner FROM jobs WHERE status = 'running' "
                f"AND (lease_expires_at IS NULL OR lease_expires_at < {DB_NOW}) "
                "ORDER BY queue_pos DESC FOR UPDATE SKIP LOCKED"
            ).fetchall()
            for job_id, attempts, owner in rows:
                if attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET status = 'failed', completed_at = ?, error = ?, "
                        "lease_owner = NULL WHERE id = ?",
                        (now, f"interrupted {attempts} times (its server stopped: restarts, "
                              "crashes or a lost lease); giving up", job_id),
                    )
                    # As in the SQLite store: the last attempt's partial transcript is not a result.
                    db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
                    failed.append(job_id)
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', progress = 0, lease_owner = NULL, "
                        "queue_pos = (SELECT COALESCE(MIN(queue_pos), 0) - 1 FROM jobs "
                        "WHERE status = 'queued') WHERE id = ?",
                        (job_id,),
                    )
                    db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
                    requeued.append(job_id)
                log.warning(
                    "job %s: lease of host %s expired; %s", job_id, owner or "?",
                    "failed" if job_id in failed else "back to the head of the queue",
                )
        requeued.reverse()
        failed.reverse()
        return requeued, failed

    # ------------------------------------------------------------------ fenced writes

    def _not_mine(self, db: PgConnection, job_id: str) -> bool:
        """Lock the job's row; True if it runs under another host's lease."""
        row = db.execute(
            "SELECT status, lease_owner FROM jobs WHERE id = ? FOR UPDATE", (job_id,)
        ).fetchone()
        return row is not None and row[0] == "running" and row[1] != self.host_id

    def update_progress(self, job_id: str, percent: float) -> bool:
        with self._write() as db:
            if self._not_mine(db, job_id):
                return False
            return super().update_progress(job_id, percent)

    def add_segments(self, job_id: str, segments: Iterable[Segment]) -> bool:
        with self._write() as db:
            if self._not_mine(db, job_id):
                return False
            return super().add_segments(job_id, segments)

    def finish(self, job_id: str, status: JobStatus, **fields: Any) -> JobRecord:
        with self._write() as db:
            if self._not_mine(db, job_id):
                raise JobStateError(
                    job_id, "running", "finish", "", message=f"job {job_id} now runs on another host"
                )
            return super().finish(job_id, status, **fields)

    def requeue(self, job_id: str, at_head: bool = True, reason: str = "") -> JobRecord:
        with self._write() as db:
            if self._not_mine(db, job_id):
                raise JobStateError(
                    job_id, "running", "requeue", "", message=f"job {job_id} now runs on another host"
                )
            record = super().requeue(job_id, at_head=at_head, reason=reason)
            db.execute("UPDATE jobs SET lease_owner = NULL WHERE id = ?", (job_id,))
            return record

    # ------------------------------------------------------------------ the fleet

    def hosts(self, max_age_secs: float = 3600.0) -> builtins.list[HostRecord]:
        """Replicas whose last heartbeat is at most `max_age_secs` old, with the jobs each
        holds a lease on; oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id, started_at, heartbeat_at, info FROM hosts "
                f"WHERE heartbeat_at >= {DB_NOW} - ? ORDER BY started_at, id",
                (max_age_secs,),
            ).fetchall()
            running: dict[str, builtins.list[str]] = {}
            for owner, job_id in db.execute(
                "SELECT lease_owner, id FROM jobs WHERE status = 'running' ORDER BY seq"
            ).fetchall():
                running.setdefault(owner, []).append(job_id)
        return [
            HostRecord(r[0], r[1], r[2], json.loads(r[3]), tuple(running.get(r[0], ())))
            for r in rows
        ]

    def leave(self) -> None:
        """This host stops (gracefully): drop its row from the fleet."""
        with self._write() as db:
            db.execute("DELETE FROM hosts WHERE id = ?", (self.host_id,))

    def db_time(self) -> float:
        with self._read() as db:
            return float(db.execute(f"SELECT {DB_NOW}").fetchone()[0])

    def owner_of(self, job_id: str) -> str | None:
        """The host holding the job's lease while it runs; None otherwise."""
        with self._read() as db:
            row = db.execute(
                "SELECT lease_owner FROM jobs WHERE id = ? AND status = 'running'", (job_id,)
            ).fetchone()
        return row[0] if row else None
