"""Exceptions → gRPC status codes, in one table, applied to every handler by one decorator.

Only what the table does not know becomes INTERNAL, and that is logged with its
traceback (and the job id, when the request names one).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from whisperd.server.api.lenient import MalformedRequest, check as check_request
from whisperd.server.jobs.errors import InvalidOptions, JobNotFound, JobStateError
from whisperd.server.jobs.health_guard import is_storage_error
from whisperd.server.jobs.spool import UploadTooLarge
from whisperd.server.webhooks import WebhookUrlRefused
from whisperd.audio import AudioDecodeError

log = logging.getLogger(__name__)


class InvalidArgument(ValueError):
    """A request field is wrong; the message names the field."""


class ServiceUnavailable(Exception):
    """Come back later; `retry_after` seconds is the hint sent as RetryInfo."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Checked in order: the first matching type decides.
ERROR_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (JobNotFound, grpc.StatusCode.NOT_FOUND),
    (JobStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (AudioDecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidOptions, grpc.StatusCode.INVALID_ARGUMENT),
    (WebhookUrlRefused, grpc.StatusCode.INVALID_ARGUMENT),
    (UploadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    if is_storage_error(exc):  # disk full, for the spool or the job store
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for kind, code in ERROR_TABLE:
        if isinstance(exc, kind):
            return code
    return None


def _message(exc: BaseException) -> str:
    if is_storage_error(exc):
        log.warning("request refused: the server's storage cannot be written: %s", exc)
        return "the server's disk is full (or failing): no room to store the upload or the job; retry later"
    return str(exc)


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext, request_id: str = "") -> None:
    code = status_for(exc)
    if code is None:
        log.error("internal error%s", f" (job {request_id})" if request_id else "", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
    if isinstance(exc, ServiceUnavailable):
        await context.abort_with_status(unavailable_status(_message(exc), exc.retry_after))
    await context.abort(code, _message(exc))


def unavailable_status(message: str, retry_after: float) -> grpc.Status:
    """UNAVAILABLE with google.rpc.RetryInfo, plus a retry-after trailer for HTTP shims."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=max(1, int(retry_after))))
    detail = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    detail.details.add().Pack(info)
    status = rpc_status.to_status(detail)
    return _Status(
        code=status.code,
        details=status.details,
        trailing_metadata=tuple(status.trailing_metadata) + (("retry-after", str(max(1, int(retry_after)))),),
    )


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


T = TypeVar("T")


def _job_id(request: Any) -> str:
    return getattr(request, "id", "") if not hasattr(request, "__aiter__") else ""


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """For unary and client-streaming handlers."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            check_request(request)
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context, _job_id(request))
            raise  # abort raised already; keeps type checkers content

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """For server-streaming handlers."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
        try:
            check_request(request)
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            # The server is stopping (or the client went away) while the stream waits for
            # events: the call is over, which is not an error to log with a traceback.
            return
        except Exception as exc:
            await abort_for(exc, context, _job_id(request))

    return wrapper
