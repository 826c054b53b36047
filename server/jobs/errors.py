"""Errors of the job store; the api layer maps each to one gRPC status code."""
from __future__ import annotations


class JobNotFound(KeyError):
    """No job has this id (never created, or purged after JOB_RETENTION_SECS)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument; a sentence reads better in logs
        # and in the gRPC status message.
        return (
            f"no job with id {self.job_id!r}: check the id Submit returned "
            "(finished jobs are purged after JOB_RETENTION_SECS)"
        )


class JobStateError(Exception):
    """The job is not in a state that allows the action (e.g. cancelling a finished job)."""

    def __init__(
        self, job_id: str, status: str, action: str, allowed: str, message: str | None = None
    ) -> None:
        super().__init__(
            message
            or f"cannot {action} job {job_id}: it is {status}, and {action} applies only to "
            f"{allowed} jobs"
        )
        self.job_id = job_id
        self.status = status  # the job's status when the action was refused
        self.action = action


class InvalidOptions(ValueError):
    """A job option is out of range; `field` names it (the api's INVALID_ARGUMENT detail)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidCursor(ValueError):
    """A List page token this store did not issue (or one from an incompatible version)."""

    def __init__(self, cursor: str) -> None:
        super().__init__(
            f"page token {cursor!r} is not one this server issued: pass next_page_token "
            "from the previous List answer unchanged, or none for the first page"
        )
        self.cursor = cursor
