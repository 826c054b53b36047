"""Pending webhook deliveries and the registry of webhook URLs, in DATA_DIR/webhooks.db.

A delivery is written here before its first attempt and before every later one (with the
time of the retry that follows if this attempt fails), and deleted when it succeeds or is
given up. So whatever moment the process dies at, each delivery not yet acknowledged is
still here with a time to try it next, and the dispatcher resumes it at the next start.

Its own file rather than tables in the job store: deliveries churn (a write per attempt)
and outlive job retention, and the job store's schema stays about jobs.

The API is synchronous and thread-safe; the dispatcher calls it through
asyncio.to_thread, worker threads directly.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from whisperd.server.sqlite_file import SqliteFile


# Applied in order; PRAGMA user_version records how many have run. Append a script to
# change the schema; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE deliveries (
        id              TEXT    PRIMARY KEY,  -- sent as X-Whisperd-Delivery
        url             TEXT    NOT NULL,
        event           TEXT    NOT NULL,     -- job.done, model_ready, ...
        body            TEXT    NOT NULL,     -- JSON, sent byte for byte on every attempt
        job_id          TEXT,                 -- for logs, NULL for model events
        attempt         INTEGER NOT NULL DEFAULT 0,  -- attempts started so far
        next_attempt_at REAL    NOT NULL,     -- epoch seconds
        created_at      REAL    NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at);
    CREATE TABLE webhook_urls (
        url        TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        last_used  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)

_COLUMNS = "id, url, event, body, job_id, attempt, next_attempt_at, created_at, last_error"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    url: str
    event: str
    body: str
    job_id: str | None
    attempt: int  # attempts started so far; 0 = never tried
    next_attempt_at: float
    created_at: float
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class RegisteredUrl:
    url: str
    first_seen: float
    last_used: float


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """What a caller asks to send; the outbox gives it an id and times."""

    url: str
    event: str
    body: str
    job_id: str | None = None


def _row(row: tuple[Any, ...]) -> Delivery:
    return Delivery(*row)


class Outbox(SqliteFile):
    """One SQLite connection guarded by a lock: every call is one or two short indexed
    statements, and a single connection keeps our own threads from meeting SQLITE_BUSY."""

    MIGRATIONS = MIGRATIONS
    SCHEMA = "webhook-outbox"

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ deliveries

    def add(self, url: str, event: str, body: str, *, job_id: str | None = None) -> Delivery:
        """A new delivery, due now."""
        return self.add_many([NewDelivery(url, event, body, job_id)])[0]

    def add_many(self, items: Iterable[NewDelivery]) -> list[Delivery]:
        """New deliveries, due now, in one transaction (a model event to every URL)."""
        now = self._clock()
        made = [
            Delivery(uuid.uuid4().hex, i.url, i.event, i.body, i.job_id, 0, now, now)
            for i in items
        ]
        if made:
            with self._write() as db:
                db.executemany(
                    f"INSERT INTO deliveries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (d.id, d.url, d.event, d.body, d.job_id, d.attempt, d.next_attempt_at,
                         d.created_at, d.last_error)
                        for d in made
                    ],
                )
        return made

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,))
        return _row(rows[0]) if rows else None

    def pending(self) -> list[Delivery]:
        """Every delivery not yet acknowledged or given up, soonest due first."""
        rows = self._query(f"SELECT {_COLUMNS} FROM deliveries ORDER BY next_attempt_at, created_at")
        return [_row(r) for r in rows]

    def record_attempt(self, delivery_id: str, attempt: int, retry_at: float) -> bool:
        """Attempt number `attempt` starts now; if it never reports back (the process
        dies), resume at `retry_at`. False if the delivery is gone."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE deliveries SET attempt = ?, next_attempt_at = ? WHERE id = ?",
                (attempt, retry_at, delivery_id),
            )
            return cur.rowcount == 1

    def reschedule(self, delivery_id: str, retry_at: float, error: str) -> bool:
        """The attempt failed with `error`; try again at `retry_at`."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, last_error = ? WHERE id = ?",
                (retry_at, error, delivery_id),
            )
            return cur.rowcount == 1

    def remove(self, delivery_id: str) -> bool:
        """Delivered or given up."""
        with self._write() as db:
            return db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)).rowcount == 1

    # ------------------------------------------------------------------ URL registry

    def register_url(self, url: str) -> None:
        """Remember that a job used `url` (model events go to every such URL)."""
        now = self._clock()
        with self._write() as db:
            db.execute(
                "INSERT INTO webhook_urls (url, first_seen, last_used) VALUES (?, ?, ?) "
                "ON CONFLICT (url) DO UPDATE SET last_used = excluded.last_used",
                (url, now, now),
            )

    def registered(self) -> list[RegisteredUrl]:
        rows = self._query("SELECT url, first_seen, last_used FROM webhook_urls ORDER BY first_seen, url")
        return [RegisteredUrl(*r) for r in rows]

    def urls(self) -> list[str]:
        return [r.url for r in self.registered()]
