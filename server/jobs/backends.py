"""Which job store this server uses: SQLite in DATA_DIR (DATABASE_URL unset), or the
PostgreSQL store that several replicas share."""
from __future__ import annotations

import os
import socket

from whisperd.server.config import Settings

from whisperd.server.webhooks.outbox import Outbox

from .store import JobStore


def host_id(settings: Settings) -> str:
    """This replica's name in the fleet: HOST_ID, or hostname-pid (unique per process, so
    a restarted replica never inherits the leases of the one that died)."""
    return settings.host_id or f"{socket.gethostname()}-{os.getpid()}"


def open_store(settings: Settings) -> JobStore:
    if not settings.database_url:
        return JobStore(settings.db_path)
    from .pg_store import PgJobStore  # psycopg only where it is used

    # Workers, the loop's to_thread calls and the heartbeat share the pool; every call is
    # a short transaction, so a dozen connections serve many workers, and a fleet stays
    # within PostgreSQL's max_connections (docs/scaling.md).
    return PgJobStore(
        settings.database_url,
        host_id=host_id(settings),
        lease_secs=settings.lease_secs,
        pool_size=min(12, max(4, settings.parallel_jobs + 4)),
    )


def open_outbox(settings: Settings) -> Outbox:
    """Pending webhook deliveries: DATA_DIR/webhooks.db, or beside the shared job store,
    where any replica sends what a stopped one left."""
    if not settings.database_url:
        return Outbox(settings.data_dir / "webhooks.db")
    from whisperd.server.webhooks.pg_outbox import PgOutbox

    return PgOutbox(settings.database_url, host_id=host_id(settings))
