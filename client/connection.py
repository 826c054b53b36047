"""Connections to whisperd: the channel (address, TLS, bearer token), errors as typed
exceptions, and the retry rule for UNAVAILABLE.

`create_channel` / `create_aio_channel` are usable on their own with the generated stubs;
the clients in `sync_client` and `async_client` build on them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger("whisperd.client")

DEFAULT_ADDRESS = "localhost:50051"
ADDRESS_ENV = "WHISPERD_ADDRESS"
TOKEN_ENV = "WHISPERD_TOKEN"

# Answers carry whole jobs with their segments and words; a long recording's job is
# bigger than gRPC's 4 MiB default.
_MAX_MESSAGE_BYTES = 64 << 20
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
)


def resolve_address(address: str | None = None) -> str:
    """`address`, else $WHISPERD_ADDRESS, else localhost:50051."""
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


# --- channels ---------------------------------------------------------------------------


def _credentials(tls: bool, ca_file: str | os.PathLike[str] | None) -> grpc.ChannelCredentials | None:
    if not tls and ca_file is None:
        return None
    roots = Path(ca_file).read_bytes() if ca_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def create_channel(
    address: str | None = None,
    *,
    tls: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to whisperd.

    `tls` uses the system's root certificates; `ca_file` (PEM) implies TLS and trusts that
    CA instead. `token` is sent as `authorization: Bearer <token>` on every call, by an
    interceptor, so it also works on a plaintext channel (for a server behind a
    TLS-terminating proxy); without TLS it travels in the clear.
    """
    target = resolve_address(address)
    opts = list(_CHANNEL_OPTIONS) + list(options)
    creds = _credentials(tls, ca_file)
    channel = grpc.secure_channel(target, creds, opts) if creds else grpc.insecure_channel(target, opts)
    metadata = _auth_metadata(token)
    if metadata:
        channel = grpc.intercept_channel(channel, _MetadataInterceptor(metadata))
    return channel


def create_aio_channel(
    address: str | None = None,
    *,
    tls: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """The asyncio twin of `create_channel` (same arguments, same behaviour)."""
    target = resolve_address(address)
    opts = list(_CHANNEL_OPTIONS) + list(options)
    creds = _credentials(tls, ca_file)
    metadata = _auth_metadata(token)
    interceptors = _aio_interceptors(metadata) if metadata else None
    if creds:
        return grpc.aio.secure_channel(target, creds, opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, opts, interceptors=interceptors)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the bearer token) to every call of a sync channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _ClientCallDetails(
            d.method, d.timeout, tuple(d.metadata or ()) + self._metadata,
            d.credentials, d.wait_for_ready, getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)


def _aio_interceptors(metadata: tuple[tuple[str, str], ...]) -> list[grpc.aio.ClientInterceptor]:
    def details(d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        merged = grpc.aio.Metadata(*tuple(d.metadata or ()), *metadata)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, merged, d.credentials, d.wait_for_ready)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
            return await continuation(details(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
            return await continuation(details(client_call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
            return await continuation(details(client_call_details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
            return await continuation(details(client_call_details), request_iterator)

    interceptors: list[Any] = [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]
    return interceptors


# --- errors -----------------------------------------------------------------------------


class WhisperdError(Exception):
    """A call to whisperd failed with a gRPC status.

    `code` is the grpc.StatusCode, `details` the server's message, `retry_after` the
    delay the server asked for (google.rpc.RetryInfo) or None.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str, *, address: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.address = address
        self.retry_after = retry_after

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this error: 64 + the gRPC status number (as grpcurl)."""
        return 64 + int(self.code.value[0])

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgument(WhisperdError):
    """A bad option or undecodable audio; the message names which."""


class NotFound(WhisperdError):
    """No job with that id."""


class FailedPrecondition(WhisperdError):
    """The job is not in a state that allows the call (for example cancelling a finished job)."""


class ResourceExhausted(WhisperdError):
    """The upload is too large or the server's disk is full."""


class Unauthenticated(WhisperdError):
    """The server wants a (valid) bearer token."""


class PermissionDenied(WhisperdError):
    """The token may not do that."""


class DeadlineExceeded(WhisperdError):
    """The call ran past its timeout."""


class Unavailable(WhisperdError):
    """The server answered "come back later" (retry_after says when)."""


class ServerUnreachable(Unavailable):
    """No answer from the server at all: it is down, the address is wrong, TLS failed."""

    def __str__(self) -> str:
        return f"cannot reach whisperd at {self.address}: {_short_reason(self.details)}"


_ERROR_TYPES: dict[grpc.StatusCode, type[WhisperdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def _short_reason(details: str) -> str:
    """gRPC's transport messages nest ("failed to connect to all addresses; last error:
    UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused");
    keep the part a person needs."""
    text = details.strip()
    if "last error:" in text:
        text = text.split("last error:", 1)[1].strip()
        text = text.removeprefix("UNKNOWN:").removeprefix("UNAVAILABLE:").strip()
    # "ipv4:127.0.0.1:1: Failed to connect..." - the address is in the message already.
    text = re.sub(r"^(ipv4|ipv6|unix|dns):\S+?: ", "", text)
    return text or "no answer"


def rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status the server attached to `err`, if any."""
    try:
        return rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        return None


def retry_delay_of(err: grpc.RpcError) -> float | None:
    """Seconds from the google.rpc.RetryInfo in the status details, or None."""
    status = rich_status(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def error_from_rpc(err: grpc.RpcError, address: str = "") -> WhisperdError:
    """The typed exception for a failed call."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (err.details() if callable(getattr(err, "details", None)) else None) or str(code.name)
    retry_after = retry_delay_of(err)
    kind = _ERROR_TYPES.get(code, WhisperdError)
    if code == grpc.StatusCode.UNAVAILABLE and retry_after is None and rich_status(err) is None:
        # The server itself always explains an UNAVAILABLE (RetryInfo); a bare one comes
        # from the transport: nothing is listening, the name does not resolve, TLS failed.
        kind = ServerUnreachable
    return kind(code, details, address=address, retry_after=retry_after)


# --- retries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryEvent:
    """Passed to RetryPolicy.on_retry before each wait."""

    attempt: int  # the attempt that failed, 1-based
    max_attempts: int
    delay: float  # seconds until the next attempt
    error: WhisperdError


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a call again: only on UNAVAILABLE, and a bounded number of times.

    A server that answers UNAVAILABLE with google.rpc.RetryInfo ("the model is loading,
    come back in 5 s") is waited for exactly as long as it asks, up to `max_attempts`
    attempts in all; an answer asking for more than `max_delay` seconds is not retried
    (the error reaches the caller with `retry_after` set). A server that does not answer
    at all (ServerUnreachable) is tried `connect_attempts` times in all, the waits growing
    from `initial_backoff` by `multiplier` up to `max_backoff`, with a little jitter.
    """

    max_attempts: int = 8
    connect_attempts: int = 3
    initial_backoff: float = 0.25
    multiplier: float = 2.0
    max_backoff: float = 4.0
    max_delay: float = 60.0
    on_retry: Callable[[RetryEvent], None] | None = None

    def delay(self, attempt: int, error: WhisperdError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if not isinstance(error, Unavailable):
            return None
        if error.retry_after is not None:
            if attempt >= self.max_attempts or error.retry_after > self.max_delay:
                return None
            return error.retry_after
        if attempt >= min(self.connect_attempts, self.max_attempts):
            return None
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return backoff * random.uniform(0.8, 1.0)

    def limit(self, error: WhisperdError) -> int:
        """How many attempts in all this kind of error gets."""
        return self.max_attempts if error.retry_after is not None else min(self.connect_attempts, self.max_attempts)

    def _announce(self, attempt: int, delay: float, error: WhisperdError) -> None:
        limit = self.limit(error)
        log.info("%s; retrying in %.1f s (attempt %d of %d)", error, delay, attempt + 1, limit)
        if self.on_retry is not None:
            self.on_retry(RetryEvent(attempt, limit, delay, error))


NO_RETRY = RetryPolicy(max_attempts=1, connect_attempts=1)

T = TypeVar("T")


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    address: str,
    *,
    may_retry: Callable[[WhisperdError], bool] = lambda _: True,
) -> T:
    """fn() until it succeeds, or the policy (or may_retry) gives up; raises WhisperdError."""
    attempt = 1
    while True:
        try:
            return fn()
        except grpc.RpcError as rpc:
            error = error_from_rpc(rpc, address)
            cause: BaseException = rpc
        delay = policy.delay(attempt, error) if may_retry(error) else None
        if delay is None:
            raise error from cause
        policy._announce(attempt, delay, error)
        time.sleep(delay)
        attempt += 1


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    address: str,
    *,
    may_retry: Callable[[WhisperdError], bool] = lambda _: True,
) -> T:
    """The asyncio twin of call_with_retry."""
    attempt = 1
    while True:
        try:
            return await fn()
        except grpc.RpcError as rpc:
            error = error_from_rpc(rpc, address)
            cause: BaseException = rpc
        delay = policy.delay(attempt, error) if may_retry(error) else None
        if delay is None:
            raise error from cause
        policy._announce(attempt, delay, error)
        await asyncio.sleep(delay)
        attempt += 1
