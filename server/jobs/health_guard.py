"""Whether DATA_DIR can be written: the job store and the upload spool live there.

A full disk must not kill anything. While the store cannot be written, the service
reports NOT_SERVING (so a balancer sends work elsewhere), workers claim no jobs, and the
endings that could not be recorded wait here; a probe notices when space is back,
replays them, and the service reports SERVING again, with no restart.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Below this much free space the store is treated as unwritable before a write fails:
# SQLite needs room for a WAL frame per page it changes.
MIN_FREE_BYTES = 1 << 20
# The probe writes (and fsyncs) this much, then deletes it.
_PROBE_BYTES = 64 << 10
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def is_storage_error(exc: BaseException) -> bool:
    """A failure to write DATA_DIR (disk full, quota, I/O error), rather than a bug."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "full" in text or "disk i/o" in text or "readonly" in text
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_storage_error(cause)


class StorageGuard:
    """Tracks whether DATA_DIR is writable and replays deferred work when it is again.

    `on_change(writable)` is called (from the probe thread, or whichever thread reported
    a failure) each time the answer changes.
    """

    def __init__(
        self,
        folder: Path,
        *,
        on_change: Callable[[bool], None] = lambda writable: None,
        probe_every: float = 1.0,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self._folder = folder
        self._on_change = on_change
        self._probe_every = probe_every
        self._min_free = min_free_bytes
        self._lock = threading.Lock()
        self._writable = True
        self._deferred: list[tuple[str, Callable[[], None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-guard", daemon=True)

    @property
    def writable(self) -> bool:
        with self._lock:
            return self._writable

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def report(self, exc: BaseException, what: str = "") -> bool:
        """A write failed; True if it was the storage's fault (then writing stops until
        a probe succeeds), False if it was something else."""
        if not is_storage_error(exc):
            return False
        self._set(False, f"{what or 'a write'} failed: {exc}")
        return True

    def defer(self, what: str, action: Callable[[], None]) -> None:
        """Run `action` once the store can be written again (in the order deferred)."""
        with self._lock:
            self._deferred.append((what, action))
            pending = len(self._deferred)
        log.warning("storage full: %s waits until there is room again (%d waiting)", what, pending)

    def check_now(self) -> bool:
        """Probe at once (tests, start-up); True if writable afterwards."""
        self._tick()
        return self.writable

    # ---------------------------------------------------------------- internals

    def _set(self, writable: bool, reason: str) -> None:
        with self._lock:
            changed = self._writable != writable
            self._writable = writable
        if not changed:
            return
        if writable:
            log.warning("storage writable again: %s", reason)
        else:
            log.error("storage not writable, NOT_SERVING until it is: %s", reason)
        try:
            self._on_change(writable)
        except Exception:
            log.exception("storage guard: state-change hook failed")

    def _run(self) -> None:
        while not self._stop.wait(self._probe_every):
            try:
                self._tick()
            except Exception:  # the guard must outlive anything a probe meets
                log.exception("storage guard: probe failed unexpectedly")

    def _tick(self) -> None:
        free = self._free_bytes()
        if free is not None and free < self._min_free:
            self._set(False, f"{free} bytes free in {self._folder} (under {self._min_free})")
            return
        if self.writable and not self._has_deferred():
            return
        if not self._probe_write():
            return
        if not self._replay():
            return
        self._set(True, f"{free if free is not None else '?'} bytes free in {self._folder}")

    def _has_deferred(self) -> bool:
        with self._lock:
            return bool(self._deferred)

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self._folder)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _probe_write(self) -> bool:
        probe = self._folder / ".write-probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * _PROBE_BYTES)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError as exc:
            self._set(False, f"probe write failed: {exc}")
            return False
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass

    def _replay(self) -> bool:
        """Run the deferred actions; stop (keeping the rest) at the first storage error."""
        while True:
            with self._lock:
                if not self._deferred:
                    return True
                what, action = self._deferred[0]
            try:
                action()
            except Exception as exc:
                if is_storage_error(exc):
                    self._set(False, f"{what} failed again: {exc}")
                    return False
                log.exception("storage guard: %s failed; dropped", what)
            with self._lock:
                self._deferred.pop(0)
            log.info("storage guard: %s done", what)
