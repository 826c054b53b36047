"""The webhook outbox in the shared PostgreSQL store (DATABASE_URL), so that a delivery
outlives the replica that queued it.

Every replica's dispatcher takes up every pending delivery (at start and on each
heartbeat), and each attempt is claimed in the outbox first: `record_attempt` succeeds
for one replica only, until that replica reports the attempt's outcome or its claim
runs out (it died while sending). So each attempt is sent once, whichever replica sends
it, and a delivery whose replica died is retried by another.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from whisperd.server.postgres import DB_NOW, PgDatabase

from .outbox import MIGRATIONS, Outbox

PG_MIGRATIONS: tuple[str, ...] = (
    """
    ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
    ALTER TABLE deliveries ADD COLUMN claimed_until DOUBLE PRECISION;
    """,
)


class PgOutbox(PgDatabase, Outbox):  # type: ignore[misc]
    MIGRATIONS = MIGRATIONS
    SCHEMA = "webhook-outbox"
    PG_MIGRATIONS = PG_MIGRATIONS
    PG_SCHEMA = "webhook-outbox-cluster"

    def __init__(
        self, url: str, *, host_id: str, claim_secs: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host_id = host_id
        # Longer than one attempt can take (the sender's timeout), so a live sender never
        # loses its claim mid-attempt.
        self.claim_secs = float(claim_secs)
        PgDatabase.__init__(self, url, clock=clock, pool_size=4)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._read() as db:
            return db.execute(sql, params).fetchall()

    def record_attempt(self, delivery_id: str, attempt: int, retry_at: float) -> bool:
        """Claim attempt number `attempt` for this replica; False if the delivery is gone
        or another replica holds it now."""
        with self._write() as db:
            cur = db.execute(
                f"UPDATE deliveries SET attempt = ?, next_attempt_at = ?, claimed_by = ?, "
                f"claimed_until = {DB_NOW} + ? WHERE id = ? AND (claimed_by IS NULL "
                f"OR claimed_by = ? OR claimed_until < {DB_NOW})",
                (attempt, retry_at, self.host_id, self.claim_secs, delivery_id, self.host_id),
            )
            return cur.rowcount == 1

    def reschedule(self, delivery_id: str, retry_at: float, error: str) -> bool:
        """The attempt failed: free the claim, so that any replica may send the next one."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, claimed_by = NULL, "
                "claimed_until = NULL WHERE id = ?",
                (retry_at, error, delivery_id),
            )
            return cur.rowcount == 1
