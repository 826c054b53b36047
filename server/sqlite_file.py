"""The SQLite files in DATA_DIR (job store, webhook outbox): opened the same way, with
schemas versioned the same way."""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Self

BUSY_TIMEOUT_MS = 5000


def open_wal(path: Path) -> sqlite3.Connection:
    """One connection in WAL mode, safe to share between threads behind a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; callers open them explicitly.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(
                f"SQLite refused WAL mode for {path} (got {mode!r}); put DATA_DIR on a "
                "local file system (WAL does not work over NFS or SMB)"
            )
        # In WAL mode NORMAL loses no committed transaction when the process dies, only
        # the last few on power loss, and never corrupts the file; FULL would fsync on
        # every progress update.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, path: Path, migrations: Sequence[str], schema: str) -> None:
    """Run the migrations not yet applied, inside the caller's write transaction.

    PRAGMA user_version counts the scripts that have run; append a script to change the
    schema, never edit one that has shipped (existing files have already run it).
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise RuntimeError(
            f"{path} has {schema} schema {version}, newer than this whisperd knows "
            f"({len(migrations)}): run a newer whisperd, or point DATA_DIR elsewhere"
        )
    for number, script in enumerate(migrations[version:], start=version + 1):
        for statement in split_sql(script):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {number}")  # PRAGMA takes no parameters; an int we made


def split_sql(script: str) -> list[str]:
    # executescript() would COMMIT our open transaction first; run statement by statement
    # instead so that a migration and its user_version bump commit together.
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {pending.strip()[:80]}")
    return statements


class SqliteFile:
    """One connection guarded by a lock, with explicit read and write transactions.

    Subclasses name their schema (MIGRATIONS, SCHEMA); a single connection keeps our own
    threads from meeting SQLITE_BUSY, and BEGIN IMMEDIATE keeps another process from
    slipping a write between our read and our update.
    """

    MIGRATIONS: ClassVar[Sequence[str]] = ()
    SCHEMA: ClassVar[str] = "database"

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_wal(self.path)
        try:
            with self._write() as db:
                migrate(db, self.path, self.MIGRATIONS, self.SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the file; idempotent. Any later call raises sqlite3.ProgrammingError."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction under the lock: what it reads comes from one snapshot even
        if another process writes in between."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    _rollback(self._db)
                    raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed on success, rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                # Inside the try: a COMMIT that fails (disk full) must not leave the
                # transaction open, or every later BEGIN on this connection would fail.
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise


def _rollback(db: sqlite3.Connection) -> None:
    """End the open transaction, if any. SQLite may already have rolled it back itself (it
    does on SQLITE_FULL), and that error must not hide the one that caused it."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
