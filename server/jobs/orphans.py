"""Start-up clean-up of uploads that no job will ever use.

Submit spools an upload, renames it into place, then inserts its job. A crash between
the rename and the insert, or a job whose ending could not delete its audio, leaves a
file that nothing references; retention only deletes the files of jobs it purges. At
start-up, before any Submit, every upload file that no queued or running job names is
such a file.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)


def remove_orphan_uploads(folder: Path, in_use: Collection[str]) -> int:
    """Delete the files in `folder` that `in_use` (audio paths of queued and running jobs)
    does not name; returns how many went. Only for start-up: an upload being received
    has no job yet."""
    if not folder.is_dir():
        return 0
    keep = {str(Path(p).resolve()) for p in in_use if p and "://" not in p}
    removed = 0
    for entry in folder.iterdir():
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if str(entry.resolve()) in keep:
            continue
        try:
            entry.unlink()
            removed += 1
        except OSError as exc:
            log.warning("could not remove orphaned upload %s: %s", entry.name, exc)
    return removed
