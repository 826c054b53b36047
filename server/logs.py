"""Log output of the server: readable lines (the default) or one JSON object per line
(LOG_FORMAT=json) for log shippers (Loki, Elasticsearch, Cloud Logging).

The JSON form carries the same records with their parts as fields: time, level, logger,
message, and where the record is about a job or the model, `job_id` and `event`. Fields
a call passes with `extra=` (durations, outcome) come along as they are. Job ids are
taken from the messages' own "job %s" convention, so no log call had to change.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What a "job %s: <words>" message is, by its first words; the first match wins.
_JOB_EVENTS: tuple[tuple[str, str], ...] = (
    ("queued", "job.queued"),
    ("started", "job.started"),
    ("done", "job.done"),
    ("failed", "job.failed"),
    ("cancelled", "job.cancelled"),
    ("back to the", "job.requeued"),
    ("requeued", "job.requeued"),
    ("out of memory", "job.out_of_memory"),
    ("unexpected error", "job.error"),
    ("finished", "job.finished"),
)
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_derived(record))
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _derived(record: logging.LogRecord) -> dict[str, Any]:
    """job_id and event from the project's message conventions: "job %s: what happened"
    and the lifecycle's "model %s -> %s: %s"."""
    template = record.msg if isinstance(record.msg, str) else ""
    args = record.args if isinstance(record.args, tuple) else ()
    if template.startswith("job %s") and args:
        found: dict[str, Any] = {"job_id": str(args[0])}
        rest = template[len("job %s"):].lstrip(": ")
        for prefix, event in _JOB_EVENTS:
            if rest.startswith(prefix):
                found["event"] = event
                break
        return found
    if template.startswith("model %s -> %s") and len(args) >= 2:
        return {"event": "model.state", "previous": str(args[0]), "state": str(args[1])}
    return {}


def configure(level: str, fmt: str) -> None:
    """Send the root logger's records to stderr in `fmt` ("text" or "json") at `level`,
    replacing whatever handlers it had."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
